"""``caliban notebook``: a Jupyter server in the project's image.

The server runs as the host user with the project folder (and the home folder
unless ``--bare``) mounted, behind a token caliban generates, published on
127.0.0.1 only: a Jupyter server runs any code as the user, and tokens leak
into scrollback. caliban polls the server until it answers before printing
the URL, and removes the container however the session ends.
"""

from __future__ import annotations

import contextlib
import re
import secrets
import socket
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import anyio
from aiodocker.exceptions import DockerError

from caliban.core import dockerargs, names
from caliban.core.dockerfile import ImageUser, Jupyter
from caliban.dev.shell import (
    banner,
    create_container,
    gpus_for,
    home_mount,
    image_for,
    interactive_config,
    remove_orphans,
    start_failure,
    with_gpu_mode,
)
from caliban.errors import BackendError, ValidationError
from caliban.events import Notice
from caliban.options import NotebookRequest
from caliban.platforms.local.containers import LocalBackend, with_gpus

if TYPE_CHECKING:
    import aiodocker

    from caliban.dev.host import DevHost as Session

FIRST_PORT = 8888
# How many ports from FIRST_PORT to try before giving up.
PORT_SEARCH = 200
# Published on the loopback interface only (see docs/shell-and-notebook.md).
PUBLISH_IP = "127.0.0.1"
# One readiness probe; the server is on this machine.
_PROBE = aiohttp.ClientTimeout(total=5)
_VERSION = re.compile(r"[0-9A-Za-z][0-9A-Za-z.*+!_-]{0,63}")


def notebook_argv(*, lab: bool, port: int, allow_root: bool) -> list[str]:
    """Arguments of ``python3``. ``-m notebook`` runs Notebook 6 and 7 alike and
    ``-m jupyterlab`` JupyterLab 3 and 4; neither needs the ``jupyter`` launcher
    to be on PATH. The server listens on all interfaces *inside* the container
    so Docker's port forwarding reaches it; the host side is loopback only."""
    argv = ["-m", "jupyterlab" if lab else "notebook", "--ip=0.0.0.0", f"--port={port}"]
    argv.append("--no-browser")
    if allow_root:
        # Both Notebook and Jupyter Server refuse to run as root without it.
        argv.append("--allow-root")
    return argv


def notebook_config(
    *,
    image: str,
    lab: bool,
    port: int,
    token: str,
    user: ImageUser,
    folder: Path,
    home: Path | None,
    store_id: str,
    labels: Mapping[str, str] | None = None,
    options: dockerargs.RunOptions | None = None,
) -> dict[str, Any]:
    """The Engine API body of a Jupyter server container.

    The token goes in ``JUPYTER_TOKEN``, which Notebook 6, Notebook 7 and
    JupyterLab (Jupyter Server 1 and 2) all read, without the deprecation
    warnings the ``--NotebookApp.token`` / ``--ServerApp.token`` flags give on
    one or the other.
    """
    config = interactive_config(
        image=image,
        entrypoint=["python3"],
        argv=notebook_argv(lab=lab, port=port, allow_root=user.is_root),
        kind="notebook",
        user=user,
        folder=folder,
        home=home,
        store_id=store_id,
        labels=labels or {},
        env=[f"JUPYTER_TOKEN={token}"],
        tty=False,
    )
    key = f"{port}/tcp"
    config["ExposedPorts"] = {key: {}}
    config["HostConfig"]["PortBindings"] = {key: [{"HostIp": PUBLISH_IP, "HostPort": str(port)}]}
    if options is None:
        return config
    config = options.apply(config)
    if _runs_as_root(config) and "--allow-root" not in config["Cmd"]:
        config["Cmd"].append("--allow-root")  # --docker_run_args "--user 0"
    return config


def _runs_as_root(config: Mapping[str, Any]) -> bool:
    return str(config.get("User") or "0").split(":", 1)[0] in ("0", "root")


def notebook_url(port: int, token: str | None, *, lab: bool) -> str:
    path = "lab" if lab else "tree"
    query = f"?token={token}" if token else ""
    return f"http://{PUBLISH_IP}:{port}/{path}{query}"


def check_jupyter_version(version: str | None) -> None:
    if version is not None and not _VERSION.fullmatch(version):
        raise ValidationError(
            f"--jupyter_version {version!r} is not a version", hint="for example 6.5.7 or 4.2.*"
        )


def port_free(port: int, host: str = PUBLISH_IP) -> bool:
    """Whether Docker could publish ``port`` on ``host``: a bind test with the
    SO_REUSEADDR that Docker's proxy sets too, so ports in TIME_WAIT count as
    free and ports someone listens on (on this or on every address) do not."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def first_free_port(start: int = FIRST_PORT, *, count: int = PORT_SEARCH) -> int:
    for port in range(start, min(start + count, 65536)):
        if port_free(port):
            return port
    raise ValidationError(
        f"no free port between {start} and {start + count - 1}", hint="name one with -p/--port"
    )


def check_port(port: int) -> None:
    if not 1 <= port <= 65535:
        raise ValidationError(f"--port {port}: a port is a number from 1 to 65535")
    if not port_free(port):
        raise ValidationError(
            f"port {port} is already in use on {PUBLISH_IP}",
            hint=f"pick another with -p/--port, or leave it out to use the first free one "
            f"from {FIRST_PORT}",
        )


async def notebook(session: Session, req: NotebookRequest) -> int:
    """Run a Jupyter server in the project's image until it stops or is cancelled.

    Announces the URL (with its token) once the server answers; returns the
    server's exit code when it stops by itself (Quit in the web UI: 0). The
    container is stopped and removed however it ends.
    """
    check_jupyter_version(req.jupyter_version)
    if req.port is not None:
        check_port(req.port)
    options = await session.container_options(req.docker_run_args, req.docker_create_json)
    home = await home_mount(session, req.bare)
    project = replace(
        with_gpu_mode(req.project, req.gpu_ids),
        entry=None,
        jupyter=Jupyter(lab=req.lab, version=req.jupyter_version),
        shell=None,
    )
    prepared = await session.prepare(project)
    gpu_ids, simulated = await gpus_for(session, prepared.mode, req.gpu_ids)
    image = await image_for(session, prepared, project)
    store = await session.store()
    await remove_orphans(session, store.store_id)
    # Chosen after the build (which may take minutes) to keep the window in
    # which another program could take it short.
    port = req.port or first_free_port()
    token = secrets.token_urlsafe(24)
    config = notebook_config(
        image=image,
        lab=req.lab,
        port=port,
        token=token,
        user=session.user,
        folder=prepared.folder,
        home=home,
        store_id=store.store_id,
        labels=session.labels,
        options=options,
    )
    config = with_gpus(config, gpu_ids, simulated=simulated)
    what = "JupyterLab" if req.lab else "Jupyter Notebook"
    session.sink(
        Notice(
            banner(
                what=what,
                image=image,
                user=session.user,
                folder=prepared.folder,
                home=home,
                bare=req.bare,
                gpu_ids=gpu_ids,
            )
        )
    )
    docker = await session.docker()
    backend = LocalBackend(docker, store_id=store.store_id, sink=session.sink, force=session.force)
    name = f"caliban-notebook-{names.new_job_id()}"
    container: aiodocker.docker.DockerContainer | None = None
    try:
        container = await create_container(docker, config, name, "notebook")
        try:
            await container.start()
        except DockerError as exc:
            raise start_failure(exc, "notebook server", port=port) from exc
        session.sink(Notice(f"waiting for {what} on port {port} ...", level="debug"))
        async with anyio.create_task_group() as tg:
            tg.start_soon(_server_log, session, container)
            accepted = await _wait_ready(
                await session.http(), container, port, token, req.start_timeout
            )
            if accepted:
                session.sink(Notice(f"{what} is ready: {notebook_url(port, token, lab=req.lab)}"))
            else:
                session.sink(
                    Notice(
                        "the server does not accept caliban's token: your Jupyter configuration "
                        "sets its own token or password; log in with that",
                        level="warning",
                    )
                )
                session.sink(Notice(f"{what} is ready: {notebook_url(port, None, lab=req.lab)}"))
            session.sink(Notice("press Ctrl-C to stop it (its container is then removed)"))
            result = await container.wait()
            tg.cancel_scope.cancel()
        code = int(result.get("StatusCode", 1))
        if code != 0:
            session.sink(
                Notice(
                    f"the {what} server exited with code {code}{await _tail(container)}", "warning"
                )
            )
        return code
    finally:
        if container is not None:
            with anyio.CancelScope(shield=True), anyio.move_on_after(60):
                await backend.remove(container)


async def _server_log(session: Session, container: aiodocker.docker.DockerContainer) -> None:
    """The server's own log, as debug notices (shown with --verbose)."""
    partial = ""
    with contextlib.suppress(DockerError, aiohttp.ClientError):
        async for chunk in container.log(stdout=True, stderr=True, follow=True):
            lines = (partial + chunk).split("\n")
            partial = lines.pop()
            for line in lines:
                session.sink(Notice(line.rstrip("\r"), level="debug"))
    if partial:
        session.sink(Notice(partial, level="debug"))


async def _tail(container: aiodocker.docker.DockerContainer, lines: int = 15) -> str:
    """The server's last log lines, to explain why it failed."""
    try:
        chunks = await container.log(stdout=True, stderr=True, tail=lines)
    except DockerError:
        return ""
    text = "".join(chunks).rstrip()
    return f"; its last output:\n{text}" if text else ""


async def _wait_ready(
    http: aiohttp.ClientSession,
    container: aiodocker.docker.DockerContainer,
    port: int,
    token: str,
    within: float,
) -> bool:
    """Poll ``/api`` until the server answers; then tell whether it takes our token.

    ``/api`` answers without authentication on every Jupyter server;
    ``/api/status`` needs it, so a 403 there means the user's own Jupyter
    configuration replaced the token.
    """
    base = f"http://{PUBLISH_IP}:{port}"
    try:
        with anyio.fail_after(within):
            while not await _answers(http, f"{base}/api"):
                info = await container.show()
                state = info["State"]
                if not state["Running"]:
                    raise BackendError(
                        f"the Jupyter server exited with code {state['ExitCode']} before "
                        f"answering{await _tail(container)}"
                    )
                await anyio.sleep(0.2)
    except TimeoutError:
        raise BackendError(
            f"the Jupyter server did not answer on port {port} within {within:.0f}s"
            f"{await _tail(container)}"
        ) from None
    headers = {"Authorization": f"token {token}"}
    try:
        async with http.get(f"{base}/api/status", headers=headers, timeout=_PROBE) as resp:
            return resp.status == 200
    except (aiohttp.ClientError, TimeoutError):
        return True  # it answered /api a moment ago; do not cry wolf


async def _answers(http: aiohttp.ClientSession, url: str) -> bool:
    try:
        async with http.get(url, timeout=_PROBE) as resp:
            return resp.status == 200
    except (aiohttp.ClientError, TimeoutError, OSError):
        # Before the server listens, Docker's proxy accepts and drops the connection.
        return False
