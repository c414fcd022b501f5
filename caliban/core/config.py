"""``.calibanconfig.json``: the per-project settings file.

``from_mapping`` validates parsed data into a frozen :class:`CalibanConfig`
(pure); ``load`` reads the file from a project folder (``#``/``//`` comments
allowed, a missing file means defaults). Unknown keys and wrong types are
refused with a one-line message naming the key. ``docs/calibanconfig.md``
documents every key and how this differs from the original tool.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, TypeVar
from urllib.parse import urlsplit

from caliban.core.dockerignore import DockerIgnore
from caliban.core.experiment import parse_json
from caliban.errors import CalibanConfigError, ConfigError
from caliban.spec import JobMode

CONFIG_FILE = ".calibanconfig.json"
T = TypeVar("T")

# Debian package names, optionally pinned (pkg=1.2-3) or from a release
# (pkg/bookworm-backports). Anything else would be pasted into a shell line of
# the Dockerfile, so it is refused rather than quoted.
_APT_PACKAGE = re.compile(r"[a-z0-9][a-z0-9+.-]*(?:[=/][A-Za-z0-9.+~:_-]+)?")
_LEGACY_DLVM = re.compile(r"dlvm:(pytorch|tf|tf2)-(cpu|gpu|\{\})(?:-([0-9.]+))?")
_DLVM_REGISTRY = "gcr.io/deeplearning-platform-release"
_CURRENT_DLC = "us-docker.pkg.dev/deeplearning-platform-release/gcr.io"


@dataclass(frozen=True)
class PerMode(Generic[T]):
    """One value per job mode."""

    cpu: T
    gpu: T

    def get(self, mode: JobMode) -> T:
        return self.gpu if mode is JobMode.GPU else self.cpu


@dataclass(frozen=True)
class GcloudConfig:
    """Defaults for Google Cloud commands (flags and environment win)."""

    project_id: str | None = None
    cloud_key: str | None = None


@dataclass(frozen=True)
class MlflowConfig:
    """Accepted for compatibility; caliban does not use it (see the docs)."""

    project: str
    region: str
    db: str
    user: str
    password: str = field(repr=False)
    artifact_root: str
    debug: bool = False


@dataclass(frozen=True)
class UvConfig:
    """The original's ``uv.mlflow`` settings; accepted, unused."""

    pubsub_project: str | None = None
    pubsub_topic: str = "mlflow"


@dataclass(frozen=True)
class BuildEnv:
    """How builds reach a package index: behind a proxy or a TLS-inspecting gateway.

    Nothing here is left in the image (see ``dockerfile.py``). URLs may carry
    credentials, hence ``repr=False``. ``ca_bundle`` is the path as written;
    relative paths are relative to the project folder.
    """

    index_url: str | None = field(default=None, repr=False)
    extra_index_urls: tuple[str, ...] = field(default=(), repr=False)
    ca_bundle: str | None = None
    http_proxy: str | None = field(default=None, repr=False)
    https_proxy: str | None = field(default=None, repr=False)
    no_proxy: str | None = None

    def proxies(self) -> dict[str, str]:
        """The proxy variables as Docker build args, in both spellings tools read."""
        out: dict[str, str] = {}
        for name, value in (
            ("HTTP_PROXY", self.http_proxy),
            ("HTTPS_PROXY", self.https_proxy),
            ("NO_PROXY", self.no_proxy),
        ):
            if value is not None:
                out[name] = out[name.lower()] = value
        return out


# How `caliban slurm submit` runs the image on a node: `docker run`, or an OCI
# bundle handed to Slurm's own `--container` (clusters without Docker).
SLURM_RUNTIMES = ("docker", "oci")


@dataclass(frozen=True)
class SlurmConfig:
    """Defaults for ``caliban slurm submit`` (its flags win); None: not set."""

    runtime: str | None = None
    bundle_dir: str | None = None


@dataclass(frozen=True)
class CalibanConfig:
    """A validated ``.calibanconfig.json``; the defaults are an absent file."""

    apt_packages: PerMode[tuple[str, ...]] = PerMode((), ())
    base_image: PerMode[str | None] = PerMode(None, None)
    build_time_credentials: bool = False
    julia_version: str | None = None
    default_mode: JobMode | None = None
    gcloud: GcloudConfig = GcloudConfig()
    mlflow_config: MlflowConfig | None = None
    uv: UvConfig = UvConfig()
    include_in_image: tuple[str, ...] = ()
    build_env: BuildEnv = BuildEnv()
    slurm: SlurmConfig = SlurmConfig()

    def apt_packages_for(self, mode: JobMode) -> tuple[str, ...]:
        """The apt packages of an image in ``mode``, sorted and without repeats."""
        return tuple(sorted(set(self.apt_packages.get(mode))))

    def base_image_for(self, mode: JobMode) -> str | None:
        """The configured base image for ``mode``, or None to use the default."""
        return self.base_image.get(mode)


def resolve_project_id(
    flag: str | None, environ: Mapping[str, str], config: CalibanConfig
) -> str | None:
    """``--project_id``, else ``$PROJECT_ID``, else ``gcloud.project_id``."""
    return flag or environ.get("PROJECT_ID") or config.gcloud.project_id


def resolve_cloud_key(
    flag: str | None, environ: Mapping[str, str], config: CalibanConfig
) -> str | None:
    """``--cloud_key``, else ``$GOOGLE_APPLICATION_CREDENTIALS``, else ``gcloud.cloud_key``."""
    return flag or environ.get("GOOGLE_APPLICATION_CREDENTIALS") or config.gcloud.cloud_key


# --------------------------------------------------------------------------
# Validation


class _Reader:
    """Error helpers bound to the file name, so every message starts with it."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, message: str) -> CalibanConfigError:
        return CalibanConfigError(f"{self.source}: {message}")

    def mapping(self, value: object, key: str, allowed: tuple[str, ...]) -> dict[str, object]:
        if not isinstance(value, dict):
            raise self.fail(f"key {key!r} must be an object, not {_kind(value)}")
        for sub in value:
            if sub not in allowed:
                raise self.fail(f"unknown key {sub!r} in {key!r}{_did_you_mean(sub, allowed)}")
        return value

    def string(self, value: object, key: str) -> str:
        if not isinstance(value, str):
            raise self.fail(f"key {key!r} must be a string, not {_kind(value)}")
        if not value.strip():
            raise self.fail(f"key {key!r} must not be empty")
        if "\0" in value:
            raise self.fail(f"key {key!r} contains a NUL byte")
        return value

    def optional_string(self, value: object, key: str) -> str | None:
        return None if value is None else self.string(value, key)

    def boolean(self, value: object, key: str) -> bool:
        if not isinstance(value, bool):
            raise self.fail(f"key {key!r} must be true or false, not {_kind(value)}")
        return value


def _kind(value: object) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    if isinstance(value, int | float) and not isinstance(value, bool):
        return "a number"
    return names.get(type(value), type(value).__name__)


def _did_you_mean(word: str, options: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(word, options, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"{hint} (known keys: {', '.join(options)})"


def _apt_packages(r: _Reader, value: object) -> PerMode[tuple[str, ...]]:
    def names(items: object, key: str) -> tuple[str, ...]:
        if not isinstance(items, list):
            raise r.fail(
                f"key {key!r} must be a list of package names "
                f'or an object like {{"cpu": [...], "gpu": [...]}}, not {_kind(items)}'
            )
        for item in items:
            if not isinstance(item, str) or not _APT_PACKAGE.fullmatch(item):
                raise r.fail(f"key {key!r}: {item!r} is not a Debian package name")
        return tuple(items)

    if isinstance(value, dict):
        modes = r.mapping(value, "apt_packages", ("cpu", "gpu"))
        cpu = names(modes.get("cpu") or [], "apt_packages.cpu")
        gpu = names(modes.get("gpu") or [], "apt_packages.gpu")
        return PerMode(cpu, gpu)
    both = names(value, "apt_packages")
    return PerMode(both, both)


def _image(r: _Reader, value: object, key: str, mode: JobMode) -> str | None:
    text = r.optional_string(value, key)
    if text is None:
        return None
    written = text.strip()
    text = written.replace("{}", mode.value)
    if text.startswith("dlvm:"):
        raise r.fail(_dlvm_message(key, written, text))
    if any(c.isspace() for c in text):
        raise r.fail(f"key {key!r}: {written!r} is not an image name")
    return text


def _dlvm_message(key: str, written: str, text: str) -> str:
    # The shorthands named Deep Learning Container images (PyTorch <= 1.4,
    # TensorFlow <= 2.2) that Google stopped maintaining years ago; resolving
    # them silently would hand users an unpatched, CUDA-10 era image.
    match = _LEGACY_DLVM.fullmatch(text)
    legacy = ""
    if match:
        lib, mode, version = match.groups()
        name = f"{_DLVM_REGISTRY}/{lib}-{mode}"
        if version:
            name += "." + version.replace(".", "-")
        legacy = f" (it used to mean {name})"
    return (
        f"key {key!r}: the 'dlvm:' shorthand {written!r} is no longer supported{legacy}; "
        f"write the full name of a current image, such as one from {_CURRENT_DLC}"
    )


def _base_image(r: _Reader, value: object) -> PerMode[str | None]:
    if isinstance(value, dict):
        modes = r.mapping(value, "base_image", ("cpu", "gpu"))
        return PerMode(
            _image(r, modes.get("cpu"), "base_image.cpu", JobMode.CPU),
            _image(r, modes.get("gpu"), "base_image.gpu", JobMode.GPU),
        )
    if not isinstance(value, str):
        raise r.fail(
            f"key 'base_image' must be an image name or an object with "
            f"'cpu'/'gpu' image names, not {_kind(value)}"
        )
    return PerMode(
        _image(r, value, "base_image", JobMode.CPU), _image(r, value, "base_image", JobMode.GPU)
    )


def _default_mode(r: _Reader, value: object) -> JobMode:
    text = r.string(value, "default_mode")
    try:
        return JobMode.parse(text)
    except ValueError:
        raise r.fail(f"key 'default_mode' must be 'cpu' or 'gpu', not {text!r}") from None


def _gcloud(r: _Reader, value: object) -> GcloudConfig:
    data = r.mapping(value, "gcloud", ("project_id", "cloud_key"))
    return GcloudConfig(
        project_id=r.optional_string(data.get("project_id"), "gcloud.project_id"),
        cloud_key=r.optional_string(data.get("cloud_key"), "gcloud.cloud_key"),
    )


_MLFLOW_KEYS = ("project", "region", "db", "user", "password", "artifact_root")


def _mlflow(r: _Reader, value: object) -> MlflowConfig:
    data = r.mapping(value, "mlflow_config", (*_MLFLOW_KEYS, "debug"))
    for key in _MLFLOW_KEYS:
        if key not in data:
            raise r.fail(f"key 'mlflow_config' lacks {key!r}")
    s = {key: r.string(data[key], f"mlflow_config.{key}") for key in _MLFLOW_KEYS}
    debug = r.boolean(data.get("debug", False), "mlflow_config.debug")
    return MlflowConfig(
        project=s["project"],
        region=s["region"],
        db=s["db"],
        user=s["user"],
        password=s["password"],
        artifact_root=s["artifact_root"],
        debug=debug,
    )


def _uv(r: _Reader, value: object) -> UvConfig:
    data = r.mapping(value, "uv", ("mlflow",))
    if data.get("mlflow") is None:
        return UvConfig()
    mlflow = r.mapping(data["mlflow"], "uv.mlflow", ("pubsub_project", "pubsub_topic"))
    topic = r.optional_string(mlflow.get("pubsub_topic"), "uv.mlflow.pubsub_topic")
    return UvConfig(
        pubsub_project=r.optional_string(mlflow.get("pubsub_project"), "uv.mlflow.pubsub_project"),
        pubsub_topic=topic or "mlflow",
    )


def _include_in_image(r: _Reader, value: object) -> tuple[str, ...]:
    # Same syntax as .dockerignore lines, so a path or a pattern both work.
    key = "include_in_image"
    if not isinstance(value, list):
        raise r.fail(f"key {key!r} must be a list of paths or patterns, not {_kind(value)}")
    out: list[str] = []
    for item in value:
        text = r.string(item, key).strip()
        if text.startswith("!"):
            raise r.fail(f"key {key!r}: {item!r} starts with '!'; list only what to include")
        try:
            DockerIgnore.parse(text)
        except ConfigError as exc:
            raise r.fail(f"key {key!r}: {item!r} is not a valid pattern ({exc.message})") from None
        out.append(text)
    return tuple(out)


_BUILD_ENV_KEYS = (
    "index_url",
    "extra_index_urls",
    "ca_bundle",
    "http_proxy",
    "https_proxy",
    "no_proxy",
)
_PROXY_SCHEMES = ("http", "https", "socks4", "socks5", "socks5h")


def _url(r: _Reader, value: object, key: str, schemes: tuple[str, ...]) -> str:
    # The message never repeats the URL: it may hold a password.
    text = r.string(value, key).strip()
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        raise r.fail(f"key {key!r} is not a valid URL") from None
    if any(c.isspace() for c in text) or parts.scheme not in schemes or not parts.hostname:
        raise r.fail(f"key {key!r} must be a URL like {schemes[0]}://host[:port]/...")
    return text


def build_env_from_mapping(value: object, source: str = CONFIG_FILE) -> BuildEnv:
    """Validate a ``build_env`` object (from the project file or the user config)."""
    r = _Reader(source)
    data = r.mapping(value, "build_env", _BUILD_ENV_KEYS)
    extra = data.get("extra_index_urls")
    if extra is None:
        extra = []
    if isinstance(extra, str):
        extra = [extra]
    if not isinstance(extra, list):
        raise r.fail(f"key 'build_env.extra_index_urls' must be a list of URLs, not {_kind(extra)}")

    def proxy(name: str) -> str | None:
        got = data.get(name)
        return None if got is None else _url(r, got, f"build_env.{name}", _PROXY_SCHEMES)

    no_proxy = r.optional_string(data.get("no_proxy"), "build_env.no_proxy")
    if no_proxy is not None and any(c.isspace() for c in no_proxy.replace(" ", "")):
        raise r.fail("key 'build_env.no_proxy' must be one line of comma-separated hosts")
    index = data.get("index_url")
    ca = r.optional_string(data.get("ca_bundle"), "build_env.ca_bundle")
    return BuildEnv(
        index_url=None if index is None else _url(r, index, "build_env.index_url", _WEB),
        extra_index_urls=tuple(_url(r, u, "build_env.extra_index_urls", _WEB) for u in extra),
        ca_bundle=None if ca is None else ca.strip(),
        http_proxy=proxy("http_proxy"),
        https_proxy=proxy("https_proxy"),
        no_proxy=None if no_proxy is None else no_proxy.replace(" ", ""),
    )


_WEB = ("https", "http")


def _slurm(r: _Reader, value: object) -> SlurmConfig:
    data = r.mapping(value, "slurm", ("runtime", "bundle_dir"))
    runtime = r.optional_string(data.get("runtime"), "slurm.runtime")
    if runtime is not None and runtime not in SLURM_RUNTIMES:
        raise r.fail(
            f"key 'slurm.runtime' must be one of {', '.join(SLURM_RUNTIMES)}, not {runtime!r}"
        )
    bundle_dir = r.optional_string(data.get("bundle_dir"), "slurm.bundle_dir")
    if bundle_dir is not None and any(c in bundle_dir for c in "\n\r"):
        raise r.fail("key 'slurm.bundle_dir' must be one line")
    return SlurmConfig(
        runtime=runtime, bundle_dir=None if bundle_dir is None else bundle_dir.strip()
    )


def _julia(r: _Reader, value: object) -> str:
    return r.string(value, "julia_version").strip()


_KEYS: dict[str, Callable[[_Reader, object], object]] = {
    "apt_packages": _apt_packages,
    "base_image": _base_image,
    "build_time_credentials": lambda r, v: r.boolean(v, "build_time_credentials"),
    "julia_version": _julia,
    "default_mode": _default_mode,
    "gcloud": _gcloud,
    "mlflow_config": _mlflow,
    "uv": _uv,
    "include_in_image": _include_in_image,
    "build_env": lambda r, v: build_env_from_mapping(v, r.source),
    "slurm": _slurm,
}


def from_mapping(data: object, source: str = CONFIG_FILE) -> CalibanConfig:
    """Validate parsed JSON into a config; a null value means "not set"."""
    r = _Reader(source)
    if not isinstance(data, dict):
        raise r.fail(f"must contain a JSON object, not {_kind(data)}")
    known = tuple(_KEYS)
    values: dict[str, object] = {}
    for key, value in data.items():
        parse = _KEYS.get(key)
        if parse is None:
            raise r.fail(f"unknown key {key!r}{_did_you_mean(key, known)}")
        if value is not None:
            values[key] = parse(r, value)
    return CalibanConfig(**values)  # type: ignore[arg-type]


def load(folder: str | os.PathLike[str]) -> CalibanConfig:
    """Read ``.calibanconfig.json`` from a project folder; absent means defaults."""
    path = Path(folder) / CONFIG_FILE
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        return CalibanConfig()
    except OSError as exc:
        raise CalibanConfigError(
            f"{path}: cannot read: {exc.strerror or type(exc).__name__}"
        ) from None
    except UnicodeDecodeError:
        raise CalibanConfigError(f"{path}: cannot read: not UTF-8 text") from None
    return from_mapping(parse_json(text, str(path), error=CalibanConfigError), str(path))
