"""The Dockerfile caliban builds, as text, from a :class:`BuildSpec`.

Pure: the spec says everything (base image, user, packages, what to copy), this
module only writes it down. Order matters for Docker's layer cache: what
changes rarely (system packages, the user, dependencies) comes before what
changes on every edit (the code), so editing ``train.py`` only rebuilds the
last layers. No credentials are ever copied in: jobs get theirs from the
platform (Vertex service account, Workload Identity) or from a mount.
"""

from __future__ import annotations

import hashlib
import json
import shlex
from dataclasses import dataclass, field

from caliban.spec import Entrypoint, JobMode

APP_DIR = "/usr/app"

# Names the generated Dockerfile and build context use for what it copies.
REQUIREMENTS = "requirements.txt"
SETUP_PY = "setup.py"

# The builder stage of a build with a PipSource: pip installs under ROOT there,
# and only ROOT is copied into the final stage.
DEPS_STAGE = "caliban-deps"
DEPS_ROOT = "/caliban-root"
_CA_FILE = "/tmp/caliban-ca.pem"
_CA_ARG = "CALIBAN_CA_"
# One build arg becomes one environment string of the RUN, which Linux caps at
# 128 KiB (MAX_ARG_STRLEN); a system bundle is bigger, so it comes in pieces.
_CA_CHUNK = 96 * 1024


@dataclass(frozen=True)
class PipSource:
    """Where pip gets packages during the build, and which CA it trusts there.

    Lives only in the builder stage: the CA and the URLs (which may hold a
    token) reach the RUN as build args, which the final image's layers,
    history and environment never see.
    """

    index_url: str | None = field(default=None, repr=False)
    extra_index_urls: tuple[str, ...] = field(default=(), repr=False)
    ca_pem: str | None = field(default=None, repr=False)

    def fingerprint(self) -> str:
        """Changes with any setting, so the image tag does; reveals none of them."""
        data = json.dumps([self.index_url, list(self.extra_index_urls), self.ca_pem])
        return hashlib.sha256(data.encode()).hexdigest()[:16]

    def ca_chunks(self) -> list[str]:
        pem = self.ca_pem or ""
        return [pem[i : i + _CA_CHUNK] for i in range(0, len(pem), _CA_CHUNK)]

    def build_args(self) -> dict[str, str]:
        args: dict[str, str] = {}
        if self.index_url is not None:
            args["PIP_INDEX_URL"] = self.index_url
        if self.extra_index_urls:
            args["PIP_EXTRA_INDEX_URL"] = " ".join(self.extra_index_urls)
        for i, chunk in enumerate(self.ca_chunks()):
            args[f"{_CA_ARG}{i}"] = chunk
        return args


@dataclass(frozen=True)
class ImageUser:
    """The user jobs and shells run as: the host user's uid/gid and name.

    Matching the host uid means files written to a mounted folder belong to
    the person who ran caliban. When that person is root, the container runs
    as root too (the original tried to ``useradd -u 0`` and failed).
    """

    uid: int
    gid: int
    name: str

    @property
    def is_root(self) -> bool:
        return self.uid == 0

    @property
    def home(self) -> str:
        return "/root" if self.is_root else f"/home/{self.name}"

    @property
    def chown(self) -> str:
        return f"{self.uid}:{self.gid}"


@dataclass(frozen=True)
class Jupyter:
    lab: bool = False
    version: str | None = None

    @property
    def requirement(self) -> str:
        name = "jupyterlab" if self.lab else "notebook"
        return f"{name}=={self.version}" if self.version else name


@dataclass(frozen=True)
class BuildSpec:
    """Everything that decides the content of an image."""

    base_image: str
    user: ImageUser
    mode: JobMode
    apt_packages: tuple[str, ...] = ()
    requirements: bool = False
    setup_py: bool = False
    extras: tuple[str, ...] = ()
    extra_dirs: tuple[str, ...] = ()
    entry: Entrypoint | None = None
    jupyter: Jupyter | None = None
    env: tuple[tuple[str, str], ...] = field(default=())
    pip: PipSource | None = None
    # HTTP(S)_PROXY/NO_PROXY: Docker's predefined build args, kept out of the
    # image by the daemon. How the build reaches the network, not what the
    # image holds, so they neither enter the Dockerfile nor change the tag.
    proxies: tuple[tuple[str, str], ...] = field(default=(), repr=False, compare=False)

    @property
    def installs(self) -> bool:
        return self.setup_py or self.requirements or self.jupyter is not None

    def build_args(self) -> dict[str, str]:
        """The build args the daemon needs for this spec's Dockerfile."""
        args = dict(self.proxies)
        if self.pip is not None and self.installs:
            args.update(self.pip.build_args())
        return args

    def context_paths(self) -> list[str]:
        """Paths (relative to the project folder) the build context must hold."""
        paths: list[str] = []
        if self.setup_py:
            paths.append(SETUP_PY)
        if self.requirements:
            paths.append(REQUIREMENTS)
        paths.extend(self.extra_dirs)
        if self.entry is not None:
            paths.append(self.entry.package_path)
        return paths


def _run(*commands: str) -> str:
    return "RUN " + " \\\n && ".join(commands)


def _copy(src: str, dst: str, user: ImageUser | None) -> str:
    chown = f"--chown={user.chown} " if user is not None and not user.is_root else ""
    return f"COPY {chown}{json.dumps([src, dst])}"


def _user_block(user: ImageUser) -> list[str]:
    if user.is_root:
        return []
    name = shlex.quote(user.name)
    # getent first: the base image may already have this uid or gid (uid 1000
    # is common), and useradd refuses duplicates. A name clash with a
    # different uid falls back to a neutral name; HOME is what programs use.
    return [
        "# The host user, so files written to mounted folders belong to them.",
        _run(
            f"(getent group {user.gid} >/dev/null || groupadd --gid {user.gid} caliban)",
            f"(getent passwd {user.uid} >/dev/null"
            f' || {{ n={name}; getent passwd "$n" >/dev/null && n=caliban-{user.uid};'
            f" useradd --no-log-init --no-create-home --uid {user.uid} --gid {user.gid}"
            f' --shell /bin/bash "$n"; }})',
            f"mkdir -p {shlex.quote(user.home)} {APP_DIR}",
            f"chown {user.chown} {shlex.quote(user.home)} {APP_DIR}",
        ),
    ]


def _system_lines(spec: BuildSpec) -> list[str]:
    """Base image, Python and apt packages: the same in both stages, so cached once."""
    lines = [
        "USER root",
        "ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \\",
        "    PIP_ROOT_USER_ACTION=ignore DEBIAN_FRONTEND=noninteractive",
        "# CUDA runtime images come without Python.",
        _run(
            "command -v python3 >/dev/null 2>&1 || { apt-get update"
            " && apt-get install --yes --no-install-recommends python3 python3-pip"
            " && rm -rf /var/lib/apt/lists/*; }"
        ),
    ]
    if spec.apt_packages:
        packages = " ".join(shlex.quote(p) for p in sorted(set(spec.apt_packages)))
        lines.append(
            _run(
                "apt-get update",
                f"apt-get install --yes --no-install-recommends {packages}",
                "apt-get clean",
                "rm -rf /var/lib/apt/lists/*",
            )
        )
    return lines


def _deps_stage(spec: BuildSpec, pip: PipSource) -> list[str]:
    # One pip run installs everything under DEPS_ROOT (``--root``), so the final
    # stage copies exactly what was installed and nothing of the CA or config.
    lines = [f"FROM {spec.base_image} AS {DEPS_STAGE}", *_system_lines(spec)]
    lines.append(f"WORKDIR {APP_DIR}")
    lines += [f"ARG {name}" for name in pip.build_args()]
    targets: list[str] = []
    if spec.setup_py:
        lines.append(_copy(SETUP_PY, f"{APP_DIR}/{SETUP_PY}", None))
        targets.append("." + (f"[{','.join(spec.extras)}]" if spec.extras else ""))
    if spec.requirements:
        lines.append(_copy(REQUIREMENTS, f"{APP_DIR}/{REQUIREMENTS}", None))
        targets += ["-r", REQUIREMENTS]
    if spec.jupyter is not None:
        targets.append(spec.jupyter.requirement)
    install = f"python3 -m pip install --root {DEPS_ROOT} " + " ".join(
        shlex.quote(t) for t in targets
    )
    commands = [f"mkdir -p {DEPS_ROOT}"]
    if pip.ca_pem is not None:
        pieces = " ".join(f'"${_CA_ARG}{i}"' for i in range(len(pip.ca_chunks())))
        commands.append(f"printf '%s' {pieces} > {_CA_FILE}")
        install = (
            f"PIP_CERT={_CA_FILE} REQUESTS_CA_BUNDLE={_CA_FILE} SSL_CERT_FILE={_CA_FILE} " + install
        )
    commands.append(install)
    if pip.ca_pem is not None:
        commands.append(f"rm -f {_CA_FILE}")
    lines.append(_run(*commands))
    return lines


def render(spec: BuildSpec) -> str:
    user = spec.user
    pip = spec.pip if spec.installs else None
    lines: list[str] = [
        "# Generated by caliban; change .calibanconfig.json or the command line instead."
    ]
    if pip is not None:
        lines.append(f"# build_env {pip.fingerprint()}: pip runs in the {DEPS_STAGE} stage.")
        lines += _deps_stage(spec, pip)
    lines.append(f"FROM {spec.base_image}")
    lines += _system_lines(spec)
    lines += _user_block(user)
    lines.append(f"WORKDIR {APP_DIR}")
    if pip is not None:
        lines.append(f"COPY --from={DEPS_STAGE} {DEPS_ROOT}/ /")
    else:
        lines += _install_lines(spec)
    lines += _code_lines(spec)
    return "\n".join(lines) + "\n"


def _install_lines(spec: BuildSpec) -> list[str]:
    # Dependencies are installed system-wide as root, each from its own file
    # copied alone, so the layers survive edits to the code.
    lines: list[str] = []
    if spec.setup_py:
        target = "." + (f"[{','.join(spec.extras)}]" if spec.extras else "")
        lines += [
            _copy(SETUP_PY, f"{APP_DIR}/{SETUP_PY}", None),
            _run(f"python3 -m pip install {shlex.quote(target)}"),
        ]
    if spec.requirements:
        lines += [
            _copy(REQUIREMENTS, f"{APP_DIR}/{REQUIREMENTS}", None),
            _run(f"python3 -m pip install -r {REQUIREMENTS}"),
        ]
    if spec.jupyter is not None:
        lines.append(_run(f"python3 -m pip install {shlex.quote(spec.jupyter.requirement)}"))
    return lines


def _code_lines(spec: BuildSpec) -> list[str]:
    user = spec.user
    lines: list[str] = []
    for folder in spec.extra_dirs:
        lines.append(_copy(folder, f"{APP_DIR}/{folder}", user))
    if spec.entry is not None:
        path = spec.entry.package_path
        dst = APP_DIR if path == "." else f"{APP_DIR}/{path}"
        lines.append(_copy(path, dst, user))
    if not user.is_root:
        lines.append(f"USER {user.chown}")
    env = [("HOME", user.home), *spec.env]
    lines.append("ENV " + " ".join(f"{k}={json.dumps(v)}" for k, v in env))
    if spec.entry is not None:
        lines.append(f"ENTRYPOINT {json.dumps(list(spec.entry.command))}")
    return lines
