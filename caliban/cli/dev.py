"""``caliban shell`` and ``caliban notebook``: their flags, and the calls they make.

Kept apart from :mod:`caliban.cli.main` so the interactive commands can change
without touching the batch ones. Nothing beyond argparse is imported until a
command runs, so ``caliban --help`` stays fast.
"""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING, Any

from caliban.cli import inputs, running
from caliban.cli.args import port
from caliban.cli.flags import base_flags
from caliban.errors import EXIT_FAILURE, EXIT_USAGE

if TYPE_CHECKING:
    from caliban.session import Session


def _common(p: argparse.ArgumentParser) -> None:
    base_flags(p)
    p.add_argument(
        "--docker_run_args",
        metavar="ARGS",
        help="extra `docker run` flags, e.g. --docker_run_args='--shm-size 2g'",
    )
    p.add_argument(
        "--docker_create_json",
        metavar="FILE",
        help="a JSON fragment deep-merged into the Engine API container-create body",
    )
    p.add_argument("--bare", action="store_true", help="do not mount your home folder")
    p.add_argument(
        "--gpu_ids",
        metavar="IDS",
        help="GPUs to give the container, e.g. 0,1 (default: all that nvidia-smi lists)",
    )


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add the ``shell`` and ``notebook`` subcommands to caliban's parser."""
    p = sub.add_parser(
        "shell",
        help="open a shell in the project's image, with the folder mounted live",
        description="Open a shell in the image `caliban run` uses (without the code: the "
        "current folder is mounted at /usr/app instead), as your own user.",
    )
    _common(p)
    p.add_argument("--image_id", help="use this image instead of building one")
    p.add_argument(
        "--shell",
        choices=["bash", "zsh"],
        help="shell to run (default: zsh if $SHELL is zsh and your home is mounted, else bash)",
    )
    p.add_argument(
        "-d",
        "--dir",
        action="append",
        default=[],
        dest="dirs",
        metavar="DIR",
        help="extra folder of the project to copy into the image; repeatable",
    )
    p.set_defaults(handler=cmd_shell)

    p = sub.add_parser(
        "notebook",
        help="start Jupyter in the project's image, with the folder mounted live",
        description="Start Jupyter Notebook (or JupyterLab) in the project's image and print "
        "its URL once it answers. Ctrl-C stops it.",
    )
    _common(p)
    p.add_argument(
        "-p",
        "--port",
        type=port,
        help="port on 127.0.0.1 to serve on (default: the first free one from 8888)",
    )
    p.add_argument(
        "-jv",
        "--jupyter_version",
        metavar="VERSION",
        help="version of notebook (or jupyterlab with --lab) to install, e.g. 7.2.2",
    )
    p.add_argument("--lab", action="store_true", help="JupyterLab instead of Jupyter Notebook")
    p.set_defaults(handler=cmd_notebook)


def _gpu_ids(ns: argparse.Namespace) -> tuple[str, ...] | None:
    if not ns.gpu_ids:
        return None
    from caliban.platforms.local.gpus import parse_ids

    return parse_ids(ns.gpu_ids)


def cmd_shell(ns: argparse.Namespace) -> int:
    from caliban.dev.shell import NO_TTY
    from caliban.options import ShellRequest

    if not os.isatty(0):
        # Before anything else: no engine, no build, one line.
        from caliban.cli.ui import print_error

        print_error(NO_TTY)
        return EXIT_USAGE
    request = ShellRequest(
        project=inputs.project_options(ns, entry=None),
        shell=ns.shell,
        bare=ns.bare,
        gpu_ids=_gpu_ids(ns),
        docker_run_args=inputs.docker_run_args(ns.docker_run_args),
        docker_create_json=inputs.docker_create_json(ns.docker_create_json),
    )

    async def work(session: Session) -> int:
        return await session.shell(request)

    code, failed = running.execute(ns, work, running.make_sink(ns))
    if failed is not None:
        return failed
    return code if code is not None else EXIT_FAILURE


def cmd_notebook(ns: argparse.Namespace) -> int:
    from caliban.options import NotebookRequest

    request = NotebookRequest(
        project=inputs.project_options(ns, entry=None),
        port=ns.port,
        lab=ns.lab,
        jupyter_version=ns.jupyter_version,
        bare=ns.bare,
        gpu_ids=_gpu_ids(ns),
        docker_run_args=inputs.docker_run_args(ns.docker_run_args),
        docker_create_json=inputs.docker_create_json(ns.docker_create_json),
    )

    async def work(session: Session) -> int:
        return await session.notebook(request)

    code, failed = running.execute(ns, work, running.make_sink(ns))
    if failed is not None:
        return failed
    return code if code is not None else EXIT_FAILURE
