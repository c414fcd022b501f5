"""The ``caliban`` command's quick exit: the code, what was written and what the
exit handlers do are all kept; only the interpreter's teardown is skipped."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap


def _run(body: str) -> subprocess.CompletedProcess[str]:
    script = "from caliban.cli.main import exit_now\n" + textwrap.dedent(body)
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )


def test_output_and_exit_handlers_are_kept() -> None:
    done = _run(
        """
        import atexit, sys, tempfile
        left = tempfile.TemporaryDirectory()  # removed by its exit handler
        print(left.name)
        atexit.register(lambda: print("handler", file=sys.stderr))
        sys.stdout.write("no newline")
        exit_now(3)
        """
    )
    assert done.returncode == 3
    name, rest = done.stdout.split("\n", 1)
    assert rest == "no newline"
    assert done.stderr == "handler\n"
    assert not os.path.exists(name)


def test_a_running_thread_is_waited_for() -> None:
    done = _run(
        """
        import threading, time
        def late():
            time.sleep(0.3)
            print("thread done", flush=True)
        threading.Thread(target=late).start()
        exit_now(0)
        """
    )
    assert done.returncode == 0
    assert done.stdout == "thread done\n"
