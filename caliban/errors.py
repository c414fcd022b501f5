"""The one error tree of caliban.

Every failure the tool can explain is a :class:`CalibanError`; foreign exceptions
(aiohttp, aiodocker, kubernetes-asyncio, sqlite3) are translated into it at the
adapter edge, so callers of the library API only ever catch these::

    CalibanError                      exit 1 unless stated
    ├── ConfigError                   exit 2: bad input, nothing was written
    │   ├── ExperimentConfigError       an experiment config (names the key or value)
    │   ├── CalibanConfigError          .calibanconfig.json
    │   ├── ValidationError             flags, specs, machine/accelerator/region
    │   └── MissingExtra                an optional dependency (pip extra) is not installed
    ├── EngineUnavailable             no Docker engine answers
    ├── BuildError                    a Dockerfile step failed (carries step, exit code)
    ├── BackendError                  a platform call failed (retryable? retry_after?)
    │   ├── AuthError                   credentials missing, rejected or unusable
    │   ├── QuotaError                  429 / RESOURCE_EXHAUSTED
    │   ├── PushError                   the image registry refused the image
    │   ├── OutcomeUnknown              a create was sent and its answer lost
    │   └── NotFound                    the platform does not know the object
    └── StoreError                    the SQLite history could not be read or written
        └── StoreUnwritable             exit 2: found read-only before anything ran

Cancellation (Ctrl-C) is never a CalibanError: it stays a BaseException so
``except CalibanError`` can never swallow it.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class CalibanError(Exception):
    """Base of every error caliban explains to its user.

    ``str(err)`` is a one or two line message that says what is wrong and, where
    possible, what to do about it.
    """

    exit_code: int = EXIT_FAILURE

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}\n{self.hint}" if self.hint else self.message


class ConfigError(CalibanError):
    """Bad input: flags, configs or specs. Raised before any side effect."""

    exit_code = EXIT_USAGE


class ExperimentConfigError(ConfigError):
    """An experiment config that cannot be loaded, validated or expanded."""


class CalibanConfigError(ConfigError):
    """A ``.calibanconfig.json`` that cannot be read or does not fit the schema."""


class ValidationError(ConfigError):
    """A flag value or combination of flags that cannot work."""


class MissingExtra(ConfigError):
    """A command needs an optional dependency group that is not installed.

    Raised where the foreign library is imported, so the core install (local runs,
    ``expansion``, ``status``) never needs it and the command that does fails
    before it builds or records anything.
    """

    DISTRIBUTION = "caliban-async"

    def __init__(self, extra: str, *, feature: str, package: str) -> None:
        super().__init__(
            f"{feature} needs {package}, which is not installed: "
            f"pip install '{self.DISTRIBUTION}[{extra}]'"
        )
        self.extra = extra
        self.package = package


class EngineUnavailable(CalibanError):
    """No Docker engine answered."""

    def __init__(self, detail: str) -> None:
        super().__init__(
            f"cannot reach a Docker engine ({detail})",
            hint="start one (for example `sudo systemctl start docker`, or `make docker` "
            "in a caliban checkout), or point DOCKER_HOST at one",
        )


class BuildError(CalibanError):
    """The image build failed; ``step`` names the Dockerfile step when known."""

    def __init__(self, message: str, *, step: str | None = None, code: int | None = None) -> None:
        super().__init__(message)
        self.step = step
        self.code = code


class BackendError(CalibanError):
    """A call to a platform (Docker, Vertex, Kubernetes, GKE) failed.

    ``retryable`` says whether the same call may succeed later; ``retry_after``
    is the server's own hint in seconds when it gave one. ``status`` is the HTTP
    status where there was one.
    """

    def __init__(
        self,
        message: str,
        *,
        retryable: bool = False,
        retry_after: float | None = None,
        status: int | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.retryable = retryable
        self.retry_after = retry_after
        self.status = status


class AuthError(BackendError):
    """Credentials are missing, rejected or unusable."""


class QuotaError(BackendError):
    """The platform refused for quota or rate reasons (HTTP 429)."""


class PushError(BackendError):
    """The image registry refused a push."""


class NotFound(BackendError):
    """The platform does not know the requested object."""


class OutcomeUnknown(BackendError):
    """A create request was sent but its answer was lost.

    The job may or may not exist: callers must look it up by its caliban job id
    before sending the request again, or risk a duplicate.
    """

    def __init__(self, message: str, *, settle: float | None = None) -> None:
        # ``settle``: how long to wait before the lookup, when the server may
        # still be working on the request (it timed out rather than failed).
        super().__init__(message, retryable=True, retry_after=settle)


class StoreError(CalibanError):
    """The history store could not be opened, migrated, read or written."""


class StoreUnwritable(StoreError):
    """The history store cannot be written: found before anything is built or run,
    so it is reported as bad set-up (exit 2) like any other input."""

    exit_code = EXIT_USAGE
