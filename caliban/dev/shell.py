"""``caliban shell``, and what it shares with ``caliban notebook``: the project image, live.

Both use the image ``caliban run`` would build, minus the code and the
entrypoint (same :meth:`Session.prepare` / :meth:`Session.build_prepared`, so
an unchanged project skips the build by content hash). Instead of the code
being copied in, the project folder is mounted live at ``/usr/app``, so edits
on the host show up at once. The container runs as the host uid:gid, so files
written to mounted folders belong to the person who ran caliban (root stays
root). The home folder is mounted at the container user's home unless
``bare``, which brings the user's dotfiles and caches along.

Containers are created through the Engine API with the same labels as jobs
(``caliban.managed``, ``caliban.store``, the session's labels) plus
``caliban.kind``, and are removed when the session ends, however it ends: the
shell exits, Ctrl-C, an error, or the terminal hanging up.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
from aiodocker.exceptions import DockerError

from caliban.adapters import docker as engine
from caliban.core import dockerargs, names
from caliban.core.dockerfile import APP_DIR, ImageUser
from caliban.dev import shellrc
from caliban.dev.terminal import (
    HANGUP_GRACE,
    converse,
    flush_stdout,
    hang_up_and_remove,
    raw_terminal,
)
from caliban.errors import BackendError, ValidationError
from caliban.events import Notice
from caliban.options import ProjectOptions, ShellRequest
from caliban.platforms.local.containers import STORE_LABEL, managed_config, with_gpus
from caliban.platforms.local.gpus import detect as detect_gpus
from caliban.spec import JobMode

if TYPE_CHECKING:
    import aiodocker

    from caliban.dev.host import DevHost as Session
    from caliban.platforms.base import Prepared

KIND_LABEL = "caliban.kind"
# Who owns a shell or notebook container: the caliban process and its host.
# A TTY shell outlives a caliban killed with SIGKILL (its stdin never reaches
# EOF), and so does a notebook server; the next session removes such orphans.
PID_LABEL = "caliban.pid"
HOST_LABEL = "caliban.host"
SHELLS: Mapping[str, str] = {"bash": "/bin/bash", "zsh": "/bin/zsh"}
NO_TTY = "caliban shell needs an interactive terminal (stdin is not a TTY)"


# -- pure pieces -------------------------------------------------------------------------------


def choose_shell(
    requested: str | None, login_shell: str | None, *, home_mounted: bool, building: bool = True
) -> str:
    """The shell to run: the one asked for, else zsh for zsh users whose home
    (and so ``.zshrc``) is mounted, else bash. ``$SHELL`` may be unset. An
    image given as is (not ``building``) may lack zsh: bash unless asked."""
    if requested is not None:
        if requested not in SHELLS:
            raise ValidationError(f"--shell {requested!r}: choose one of {', '.join(SHELLS)}")
        return requested
    wants_zsh = "zsh" in (login_shell or "")
    return "zsh" if wants_zsh and home_mounted and building else "bash"


def mounts(folder: Path, home: Path | None, user: ImageUser) -> list[dict[str, Any]]:
    """The project folder at /usr/app and, unless None, the home folder at the
    container user's home. ``Mounts`` rather than ``Binds``: a path with a colon
    stays one path, and a missing source is an error instead of a new root-owned
    folder on the host."""
    out: list[dict[str, Any]] = [{"Type": "bind", "Source": str(folder), "Target": APP_DIR}]
    if home is not None:
        out.append({"Type": "bind", "Source": str(home), "Target": user.home})
    return out


def interactive_config(
    *,
    image: str,
    entrypoint: Sequence[str],
    argv: Sequence[str],
    kind: str,
    user: ImageUser,
    folder: Path,
    home: Path | None,
    store_id: str,
    labels: Mapping[str, str],
    env: Sequence[str],
    tty: bool,
) -> dict[str, Any]:
    config = managed_config(
        image=image,
        argv=argv,
        store_id=store_id,
        labels={**labels, KIND_LABEL: kind, **owner_labels()},
        env=env,
        tty=tty,
    )
    # Whatever the base image's entrypoint does, a shell is a shell.
    config["Entrypoint"] = list(entrypoint)
    # The image already says USER uid:gid; saying it here too keeps an image
    # given with --image_id (built for someone else, or as root) honest.
    config["User"] = user.chown
    config["WorkingDir"] = APP_DIR
    config["HostConfig"]["Mounts"] = mounts(folder, home, user)
    return config


def shell_config(
    *,
    image: str,
    shell: str,
    user: ImageUser,
    folder: Path,
    home: Path | None,
    store_id: str,
    labels: Mapping[str, str] | None = None,
    term: str | None = None,
    options: dockerargs.RunOptions | None = None,
) -> dict[str, Any]:
    """The Engine API body of a shell container: a TTY with stdin kept open
    for the attach, closed when the client detaches (StdinOnce), so a shell
    whose caliban died reads EOF and exits."""
    config = interactive_config(
        image=image,
        entrypoint=shellrc.entrypoint(shell),
        argv=[],
        kind="shell",
        user=user,
        folder=folder,
        home=home,
        store_id=store_id,
        labels=labels or {},
        # The host terminal's type, so colours and key bindings match it.
        env=[f"TERM={term or 'xterm'}"],
        tty=True,
    )
    config.update(
        OpenStdin=True, StdinOnce=True, AttachStdin=True, AttachStdout=True, AttachStderr=True
    )
    # The user's --docker_run_args go last: they may override the user, the
    # working dir or the entrypoint, and clashing mounts are refused by name.
    return options.apply(config) if options is not None else config


def owner_labels() -> dict[str, str]:
    return {PID_LABEL: str(os.getpid()), HOST_LABEL: socket.gethostname()}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def is_orphan(labels: Mapping[str, str], *, host: str) -> bool:
    """A shell or notebook container whose caliban process on this host is gone.

    Only ever true for containers made on this host by a process that no
    longer exists, so a live session's container is never taken.
    """
    if labels.get(KIND_LABEL) not in ("shell", "notebook") or labels.get(HOST_LABEL) != host:
        return False
    try:
        pid = int(labels.get(PID_LABEL, ""))
    except ValueError:
        return False
    return pid > 0 and not _alive(pid)


def host_home(environ: Mapping[str, str], uid: int) -> Path | None:
    """The host home folder to mount: ``$HOME``, else the password database's."""
    text = environ.get("HOME", "")
    if not text:
        import pwd

        try:
            text = pwd.getpwuid(uid).pw_dir
        except KeyError:
            return None
    path = Path(text)
    return path if path.is_absolute() and path.is_dir() else None


def banner(
    *,
    what: str,
    image: str,
    user: ImageUser,
    folder: Path,
    home: Path | None,
    bare: bool,
    gpu_ids: Sequence[str] = (),
) -> str:
    gpus = f", GPUs {','.join(gpu_ids)}" if gpu_ids else ""
    first = f"{what} in {image} as {user.name} ({user.chown}){gpus}"
    mounted = f"mounted: {folder} at {APP_DIR}"
    if home is not None:
        mounted += f", {home} at {user.home}"
    elif bare:
        mounted += " (home folder not mounted: --bare)"
    else:
        mounted += " (no home folder to mount)"
    return f"{first}\n{mounted}"


# -- shared steps ------------------------------------------------------------------------------


def with_gpu_mode(project: ProjectOptions, gpu_ids: Sequence[str] | None) -> ProjectOptions:
    # Naming GPUs asks for GPU mode, whatever default_mode says (as for run).
    if gpu_ids and project.use_gpu is None:
        return replace(project, use_gpu=True)
    return project


async def gpus_for(
    session: Session, mode: JobMode, gpu_ids: Sequence[str] | None
) -> tuple[tuple[str, ...], bool]:
    """All the GPUs caliban may use (a shell is not scheduled: it gets them all)."""
    if mode is JobMode.CPU:
        if gpu_ids:
            raise ValidationError("--gpu_ids needs GPU mode; drop --nogpu or --gpu_ids")
        return (), False
    inventory = await detect_gpus(gpu_ids, session.environ)
    if not inventory.ids:
        raise ValidationError(
            "GPU mode (the default) but no GPU was found on this machine",
            hint='pass --nogpu, set "default_mode": "cpu" in .calibanconfig.json, '
            "or name GPUs with --gpu_ids",
        )
    return inventory.ids, inventory.simulated


async def image_for(session: Session, prepared: Prepared, project: ProjectOptions) -> str:
    if project.image_id:
        if not await engine.image_exists(await session.docker(), project.image_id):
            raise ValidationError(f"--image_id {project.image_id!r}: no such image on the engine")
        return project.image_id
    built = await session.build_prepared(prepared, no_cache=project.no_cache)
    return built.tag


async def home_mount(session: Session, bare: bool) -> Path | None:
    if bare:
        return None
    home = await anyio.to_thread.run_sync(host_home, session.environ, session.user.uid)
    if home is None:
        session.sink(
            Notice("no home folder found ($HOME is unset or missing); not mounting one", "warning")
        )
    return home


def start_failure(exc: DockerError, what: str, *, port: int | None = None) -> Exception:
    text = engine.error_text(exc)
    if "could not select device driver" in text:
        return BackendError(
            f"the Docker engine cannot give containers GPUs ({text})",
            hint="install the NVIDIA container toolkit, or pass --nogpu",
        )
    if port is not None and ("already allocated" in text or "address already in use" in text):
        return ValidationError(f"port {port} is already in use", hint="pick another with -p/--port")
    if "executable file not found" in text or "no such file or directory" in text:
        return BackendError(
            f"cannot start the {what}: {text}",
            hint="the image lacks the program; with --image_id, pick an image that has it",
        )
    return BackendError(f"cannot start the {what}: {text}", status=exc.status)


async def remove_orphans(session: Session, store_id: str) -> None:
    docker = await session.docker()
    host = socket.gethostname()
    try:
        found = await docker.containers.list(
            all=True, filters=engine.label_filter(**{STORE_LABEL: store_id})
        )
    except DockerError:
        return  # housekeeping only
    removed = 0
    for container in found:
        if is_orphan(container._container.get("Labels") or {}, host=host):
            with contextlib.suppress(DockerError):
                await container.delete(force=True, v=True)
                removed += 1
    if removed:
        session.sink(
            Notice(f"removed {removed} shell/notebook container(s) of a killed caliban", "debug")
        )


async def create_container(
    docker: aiodocker.Docker, config: dict[str, Any], name: str, what: str
) -> aiodocker.docker.DockerContainer:
    try:
        return await docker.containers.create(config, name=name)
    except DockerError as exc:
        raise BackendError(
            f"cannot create the {what} container: {engine.error_text(exc)}", status=exc.status
        ) from exc


# -- shell -------------------------------------------------------------------------------------


async def shell(
    session: Session, req: ShellRequest, *, stdin_fd: int = 0, stdout_fd: int = 1
) -> int:
    """Open an interactive shell in the project's image; return the shell's exit code.

    ``stdin_fd`` must be a terminal: it is put in raw mode for the session (so
    Ctrl-C, Ctrl-D and arrow keys go to the container's shell) and restored
    afterwards in every case.
    """
    if not os.isatty(stdin_fd):
        raise ValidationError(NO_TTY)
    if req.shell is not None:
        choose_shell(req.shell, None, home_mounted=False)  # refuse bad names before anything
    options = await session.container_options(req.docker_run_args, req.docker_create_json)
    home = await home_mount(session, req.bare)
    chosen = choose_shell(
        req.shell,
        session.environ.get("SHELL"),
        home_mounted=home is not None,
        building=req.project.image_id is None,
    )
    project = replace(
        with_gpu_mode(req.project, req.gpu_ids), entry=None, jupyter=None, shell=chosen
    )
    prepared = await session.prepare(project)
    gpu_ids, simulated = await gpus_for(session, prepared.mode, req.gpu_ids)
    image = await image_for(session, prepared, project)
    store = await session.store()
    await remove_orphans(session, store.store_id)
    config = shell_config(
        image=image,
        shell=chosen,
        user=session.user,
        folder=prepared.folder,
        home=home,
        store_id=store.store_id,
        labels=session.labels,
        term=session.environ.get("TERM"),
        options=options,
    )
    config = with_gpus(config, gpu_ids, simulated=simulated)
    session.sink(
        Notice(
            banner(
                what=f"{chosen} shell",
                image=image,
                user=session.user,
                folder=prepared.folder,
                home=home,
                bare=req.bare,
                gpu_ids=gpu_ids,
            )
        )
    )
    name = f"caliban-shell-{names.new_job_id()}"
    return await run_tty(await session.docker(), config, name, stdin_fd, stdout_fd)


async def run_tty(
    docker: aiodocker.Docker,
    config: dict[str, Any],
    name: str,
    stdin_fd: int = 0,
    stdout_fd: int = 1,
) -> int:
    """Create a TTY container, wire this terminal to it until it exits, remove it.

    Attached before it starts, so not a byte of the first prompt is lost.
    Returns the container's exit code.
    """
    container: aiodocker.docker.DockerContainer | None = None
    try:
        container = await create_container(docker, config, name, "shell")
        stream = container.attach(stdin=True, stdout=True, stderr=True)
        async with stream:
            flush_stdout()
            with raw_terminal(stdin_fd):
                try:
                    await container.start()
                except DockerError as exc:
                    raise start_failure(exc, "shell") from exc
                await converse(container, stream, stdin_fd, stdout_fd)
        result = await container.wait()
        return int(result.get("StatusCode", 1))
    finally:
        if container is not None:
            with anyio.CancelScope(shield=True), anyio.move_on_after(HANGUP_GRACE + 20):
                await hang_up_and_remove(container)
