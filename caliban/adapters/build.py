"""Building the project image with the Docker engine, skipping it when nothing changed.

The image tag is a content hash of the Dockerfile text and of every file the
build context holds (path, mode, bytes; not timestamps). If an image with that
tag exists, the build is skipped without sending anything to the daemon. The
context is a tar made off the event loop, honouring ``.dockerignore``, and the
daemon's output is streamed as :class:`~caliban.events.BuildLog` events.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import os
import re
import ssl
import stat
import tarfile
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import anyio

from caliban.adapters.docker import MANAGED_LABEL, error_text, image_labels
from caliban.core import dockerfile, secretfiles
from caliban.core.config import BuildEnv
from caliban.core.dockerignore import DockerIgnore, walk_context
from caliban.errors import BuildError, CalibanConfigError, ConfigError
from caliban.events import (
    BuildFailed,
    BuildFinished,
    BuildLog,
    BuildSkipped,
    BuildStarted,
    BuildStep,
    ContextLeftOut,
    Notice,
    Sink,
)

if TYPE_CHECKING:
    import aiodocker

# Inside the tar; the daemon drops both before COPY because the generated
# .dockerignore lists them, so `COPY .` never ships them into the image.
DOCKERFILE_NAME = "Dockerfile.caliban"
_CONTEXT_IGNORE = f"{DOCKERFILE_NAME}\n.dockerignore\n".encode()

# Contexts bigger than this spill from memory to a temporary file.
_SPOOL_BYTES = 256 << 20

_CHUNK = 1 << 20

_STEP = re.compile(r"^Step (\d+)/(\d+) : (.*)$")
# What the classic builder prints under a step whose layer came from the cache.
_CACHE_HIT = "---> Using cache"


@dataclass(frozen=True)
class BuiltImage:
    tag: str
    image_id: str
    digest: str
    skipped: bool


@dataclass(frozen=True)
class Context:
    digest: str
    files: int
    size: int
    # What the credential rules kept out, and key material found in files that are sent.
    left_out: tuple[str, ...] = ()
    secrets: tuple[tuple[str, str], ...] = ()


class _Selection:
    """One walk of the build context: ``.dockerignore``, then the credential rules.

    ``keep`` decides on each regular file from its first bytes, so one read
    serves the content rules, the scan and the hash.
    """

    def __init__(
        self,
        folder: Path,
        spec: dockerfile.BuildSpec,
        include: Sequence[str] = (),
        key_files: Sequence[str] = (),
    ) -> None:
        self.folder = folder
        self.spec = spec
        self.rules = secretfiles.CredentialRules(DockerIgnore.load(folder), include)
        # The named key file is recognised by inode, so a copy under another
        # name or a hard link in the folder is caught as well.
        self.keys: set[tuple[int, int]] = set()
        for key in key_files:
            try:
                st = os.stat(Path(key).expanduser())
            except OSError:
                continue
            self.keys.add((st.st_dev, st.st_ino))
        self.secrets: list[tuple[str, str]] = []

    def entries(self) -> Iterator[tuple[str, os.stat_result]]:
        return walk_context(self.folder, self.spec.context_paths(), self.rules)

    def keep(self, rel: str, st: os.stat_result, head: bytes) -> bool:
        """False for a file that is a credential; a kept file holding a key is noted."""
        if not self.rules.included_on_purpose(rel) and (
            (st.st_dev, st.st_ino) in self.keys or secretfiles.credential_file(head)
        ):
            self.rules.leave_out(rel)
            return False
        kind = secretfiles.secret_in(head)
        if kind is not None:
            self.secrets.append((rel, kind))
        return True


def _read_head(path: str, size: int) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.read(fd, size)
    finally:
        os.close(fd)


def find_secrets(
    folder: Path,
    spec: dockerfile.BuildSpec,
    include: Sequence[str] = (),
    key_files: Sequence[str] = (),
) -> list[tuple[str, str]]:
    """``(path, kind)`` of every file the context would send that holds a key.

    Reads only the first :data:`~caliban.core.secretfiles.HEAD_BYTES` of each file.
    Blocking: run it in a thread.
    """
    selection = _Selection(folder, spec, include, key_files)
    try:
        for rel, st in selection.entries():
            if stat.S_ISREG(st.st_mode):
                head = _read_head(os.path.join(folder, rel), secretfiles.HEAD_BYTES)
                selection.keep(rel, st, head)
    except FileNotFoundError as exc:
        raise ConfigError(f"build context changed while reading it: {exc}") from exc
    return selection.secrets


def refuse_secrets(found: Sequence[tuple[str, str]]) -> None:
    """Stop a push whose image would hold a key: one line naming the file."""
    if found:
        rel, kind = found[0]
        more = f" (and {len(found) - 1} more file(s))" if len(found) > 1 else ""
        raise ConfigError(
            f"refusing to push: {rel} holds a {kind}{more}; remove it from the folder "
            f"or list it in .dockerignore (see {secretfiles.DOCS})"
        )


def scan_context(
    folder: Path,
    spec: dockerfile.BuildSpec,
    text: str,
    out: IO[bytes] | None = None,
    *,
    include: Sequence[str] = (),
    key_files: Sequence[str] = (),
) -> Context:
    """Hash (and, given ``out``, tar) the build context. Blocking: run it in a thread.

    What the credential rules leave out is neither hashed nor sent.
    """
    h = hashlib.sha256()
    h.update(text.encode())
    files = size = 0
    selection = _Selection(folder, spec, include, key_files)
    tar = tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) if out else None  # noqa: SIM115
    try:
        for rel, st in selection.entries():
            path = folder / rel
            with contextlib.ExitStack() as stack:
                f: IO[bytes] | None = None
                first = b""
                if stat.S_ISREG(st.st_mode):
                    f = stack.enter_context(path.open("rb"))
                    first = f.read(_CHUNK)
                    if not selection.keep(rel, st, first[: secretfiles.HEAD_BYTES]):
                        continue
                # Only the executable bit of the mode matters to the image's behaviour.
                h.update(
                    f"\0{rel}\0{stat.S_IFMT(st.st_mode)}\0{bool(st.st_mode & 0o100)}\0".encode()
                )
                if stat.S_ISLNK(st.st_mode):
                    h.update(os.readlink(path).encode())
                elif f is not None:
                    h.update(first)
                    while chunk := f.read(_CHUNK):
                        h.update(chunk)
                    files += 1
                    size += st.st_size
                if tar is not None:
                    info = tar.gettarinfo(str(path), arcname=rel)
                    info.uid = info.gid = 0
                    info.uname = info.gname = ""
                    if f is not None and info.isreg():
                        f.seek(0)
                        tar.addfile(info, f)
                    else:
                        tar.addfile(info)
        if tar is not None:
            for name, data in (
                (DOCKERFILE_NAME, text.encode()),
                (".dockerignore", _CONTEXT_IGNORE),
            ):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                info.mtime = int(time.time())
                tar.addfile(info, io.BytesIO(data))
    except FileNotFoundError as exc:
        raise ConfigError(f"build context changed while reading it: {exc}") from exc
    finally:
        if tar is not None:
            tar.close()
    return Context(
        h.hexdigest(), files, size, tuple(selection.rules.left_out), tuple(selection.secrets)
    )


class _StepTracker:
    """Follows the classic builder's output: the step being run (so a failure can
    name it), how many steps there are, and how many were layer cache hits."""

    def __init__(self) -> None:
        self.step: str | None = None
        self.number = 0
        self.total = 0
        self.cached = 0
        self._instruction = ""
        self._partial = ""
        self.tls_failed = False

    def note(self, line: str) -> BuildStep | None:
        """Take in one whole line; the progress it reports, if it reports any."""
        if "CERTIFICATE_VERIFY_FAILED" in line:
            self.tls_failed = True
        text = line.strip()
        m = _STEP.match(text)
        if m:
            self.number, self.total = int(m[1]), int(m[2])
            self._instruction = m[3].strip()
            self.step = f"step {m[1]}/{m[2]} ({self._instruction})"
            return self.progress()
        if text == _CACHE_HIT and self.number:
            self.cached += 1
            return self.progress()
        return None

    def progress(self) -> BuildStep:
        return BuildStep(self.number, self.total, self.cached, self._instruction)

    def feed(self, text: str) -> list[str]:
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()
        return lines

    def flush(self) -> list[str]:
        rest, self._partial = self._partial, ""
        return [rest] if rest else []


def _strip_ansi(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


async def build(
    docker: Callable[[], Awaitable[aiodocker.Docker]],
    spec: dockerfile.BuildSpec,
    folder: Path,
    *,
    repo: str,
    no_cache: bool = False,
    sink: Sink,
    labels: dict[str, str] | None = None,
    include: Sequence[str] = (),
    key_files: Sequence[str] = (),
    find_image: Callable[[str], Awaitable[dict[str, Any] | None]] | None = None,
) -> BuiltImage:
    """Build ``spec`` from ``folder`` as ``repo:<content hash>`` unless it exists.

    ``docker`` opens (or returns) the engine connection, called only when the
    image must be built; ``find_image`` is the one inspect that decides it
    (by default through that connection), so a no-change build can skip
    connecting at all.

    ``include``: paths the credential rules would leave out that the project
    wants in the image (``include_in_image``); ``key_files``: key files that
    stay out wherever they are in the folder.
    """
    text = dockerfile.render(spec)
    scan = functools.partial(scan_context, include=include, key_files=key_files)
    ctx = await anyio.to_thread.run_sync(scan, folder, spec, text)
    tag = f"{repo}:{ctx.digest[:16]}"
    if ctx.left_out:
        sink(ContextLeftOut(ctx.left_out, secretfiles.left_out_text(ctx.left_out)))
    for rel, kind in ctx.secrets:
        # Local images stay on this machine, which already holds the file;
        # cloud and cluster refuse before pushing (find_secrets).
        sink(
            Notice(
                f"{rel} holds a {kind} and goes into the image; fine on this machine, "
                "but `caliban cloud` and `caliban cluster` will refuse to push it",
                level="warning",
            )
        )
    if not no_cache:
        if find_image is None:
            from caliban.adapters.docker import inspect_image

            info = await inspect_image(await docker(), tag)
        else:
            info = await find_image(tag)
        if info is not None:
            sink(BuildSkipped(tag))
            return BuiltImage(tag, str(info["Id"]), ctx.digest, skipped=True)

    from aiodocker.exceptions import DockerError

    engine = await docker()

    started = time.monotonic()
    with tempfile.SpooledTemporaryFile(max_size=_SPOOL_BYTES) as buf:
        ctx = await anyio.to_thread.run_sync(scan, folder, spec, text, buf)
        tag = f"{repo}:{ctx.digest[:16]}"
        buf.seek(0)
        sink(BuildStarted(tag, ctx.files, ctx.size))
        tracker = _StepTracker()
        image_id: str | None = None
        try:
            stream = engine.images.build(
                fileobj=buf,
                encoding="identity",
                path_dockerfile=DOCKERFILE_NAME,
                tag=tag,
                rm=True,
                forcerm=True,
                nocache=no_cache,
                buildargs=spec.build_args() or None,
                labels={
                    MANAGED_LABEL: "true",
                    "caliban.digest": ctx.digest,
                    **image_labels(labels or {}),
                },
                stream=True,
            )
            async for chunk in stream:
                if "stream" in chunk:
                    for line in tracker.feed(_strip_ansi(str(chunk["stream"]))):
                        _log_line(line, tracker, sink)
                elif "aux" in chunk and isinstance(chunk["aux"], dict):
                    image_id = chunk["aux"].get("ID", image_id)
                elif "status" in chunk:
                    # Pull progress of the base image.
                    status = str(chunk["status"])
                    if "id" not in chunk or status.startswith(("Pulling from", "Digest", "Status")):
                        sink(BuildLog(status))
                elif "error" in chunk:
                    _flush(tracker, sink)
                    sink(BuildFailed(tag, tracker.step))
                    raise BuildError(
                        _failure(str(chunk["error"]), tracker, spec), step=tracker.step
                    )
        except DockerError as exc:
            _flush(tracker, sink)
            sink(BuildFailed(tag, tracker.step))
            raise BuildError(_failure(error_text(exc), tracker, spec), step=tracker.step) from exc
        finally:
            _flush(tracker, sink)
    if image_id is None:
        image_id = str((await engine.images.inspect(tag))["Id"])
    sink(
        BuildFinished(
            tag, image_id, time.monotonic() - started, steps=tracker.total, cached=tracker.cached
        )
    )
    return BuiltImage(tag, image_id, ctx.digest, skipped=False)


def _log_line(line: str, tracker: _StepTracker, sink: Sink) -> None:
    step = tracker.note(line)
    sink(BuildLog(line))
    if step is not None:
        sink(step)


def _flush(tracker: _StepTracker, sink: Sink) -> None:
    for line in tracker.flush():
        _log_line(line, tracker, sink)


def _failure(message: str, tracker: _StepTracker, spec: dockerfile.BuildSpec) -> str:
    where = f" at {tracker.step}" if tracker.step else ""
    text = f"image build failed{where}: {message.strip()}"
    if tracker.tls_failed:
        text += (
            "\nthe build could not verify a server's TLS certificate (CERTIFICATE_VERIFY_FAILED): "
            "behind a TLS-inspecting proxy, set build_env.ca_bundle in .calibanconfig.json "
            f"to its CA ({CA_DOCS})"
        )
    lowered = message.lower()
    if (tracker.step is None or "step 1/" in tracker.step) and any(
        s in lowered for s in ("pull access denied", "dial tcp", "no such host", "not found")
    ):
        text += (
            f"\nthe base image {spec.base_image} is not available locally and could not "
            "be pulled: set CALIBAN_BASE_IMAGE or base_image in .calibanconfig.json"
        )
    return text


CA_DOCS = "see docs/calibanconfig.md, 'Builds behind a proxy'"


def read_ca_bundle(folder: Path, written: str) -> str:
    """The PEM text of ``build_env.ca_bundle``, checked to hold certificates.

    Relative paths are relative to the project folder. Blocking: run it in a thread.
    """
    path = folder / Path(written).expanduser()
    where = f".calibanconfig.json: build_env.ca_bundle {written!r}"
    try:
        data = path.read_bytes()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise CalibanConfigError(f"{where}: cannot read it: {reason}") from None
    try:
        text = data.decode("ascii")
        # The ssl module parses every certificate the way OpenSSL will in the build.
        ssl.create_default_context(cadata=text)
    except (UnicodeDecodeError, ssl.SSLError, ValueError):
        text = ""
    if "-----BEGIN CERTIFICATE-----" not in text:
        raise CalibanConfigError(
            f"{where} is not a PEM file of CA certificates (-----BEGIN CERTIFICATE-----)"
        )
    return text


def pip_source(folder: Path, env: BuildEnv) -> dockerfile.PipSource | None:
    """What pip needs from ``build_env``, the CA read and checked. Blocking."""
    if env.index_url is None and not env.extra_index_urls and env.ca_bundle is None:
        return None
    ca = None if env.ca_bundle is None else read_ca_bundle(folder, env.ca_bundle)
    return dockerfile.PipSource(env.index_url, env.extra_index_urls, ca)


async def notice_conda(folder: Path, sink: Sink) -> None:
    if await anyio.Path(folder / "environment.yml").is_file():
        sink(
            Notice(
                "environment.yml is ignored: caliban installs requirements.txt and setup.py "
                "with pip",
                level="warning",
            )
        )
