"""Commands that need neither aiodocker/aiohttp nor rich do not import them.

Each command runs in a fresh interpreter with its output piped (so rich is not
needed); the modules it loaded are read from ``sys.modules`` when it ends.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("aiodocker", "aiohttp", "rich")

_PROBE = """
import json, sys
sys.argv = ["caliban", *json.loads(sys.argv[1])]
from caliban.cli.main import main
code = None
try:
    code = main()
except SystemExit as exc:
    code = exc.code
finally:
    loaded = sorted({m.split(".")[0] for m in sys.modules})
    with open(OUT, "w") as f:
        json.dump({"code": code, "modules": loaded}, f)
"""


def loaded_by(
    args: list[str], tmp_path: Path, env: dict[str, str] | None = None, cwd: Path | None = None
) -> dict[str, object]:
    """Run ``caliban ARGS`` piped in ``cwd``; its exit code and the top-level modules it
    imported (written under ``tmp_path``)."""
    out = tmp_path / "modules.json"
    probe = f"OUT = {str(out)!r}\n" + _PROBE
    subprocess.run(
        [sys.executable, "-c", probe, json.dumps(args)],
        env=env,
        cwd=cwd or tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    result: dict[str, object] = json.loads(out.read_text())
    return result


@pytest.fixture
def quiet_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "TTY_COMPATIBLE")}
    env.update(
        CALIBAN_HOME=str(tmp_path / "home"), XDG_CONFIG_HOME=str(tmp_path / "xdg"), COLUMNS="120"
    )
    env.pop("CALIBAN_CONFIG", None)
    return env


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["--help"], 0),
        (["build", "--help"], 0),
        (["status"], 0),
        (["status", "--json"], 0),
        (["stop", "--yes"], 0),
        (["logs", "abcdef12"], 2),
    ],
)
def test_quick_commands_import_no_engine_client_and_no_rich(
    args: list[str], code: int, tmp_path: Path, quiet_env: dict[str, str]
) -> None:
    seen = loaded_by(args, tmp_path, quiet_env)
    assert seen["code"] == code, seen
    modules = seen["modules"]
    assert isinstance(modules, list) and "caliban" in modules
    assert [m for m in HEAVY if m in modules] == [], args


def test_the_probe_sees_what_a_command_imports(tmp_path: Path, quiet_env: dict[str, str]) -> None:
    # A command that does need rich (a forced terminal) shows up as such, so an
    # empty answer above is not the probe missing everything.
    seen = loaded_by(["status"], tmp_path, {**quiet_env, "TTY_COMPATIBLE": "1"})
    assert "rich" in seen["modules"]  # type: ignore[operator]


def test_the_local_platform_loads_no_engine_client() -> None:
    # status, stop and logs load the platform to ask it about local jobs; aiodocker
    # comes with a run's launch only.
    probe = (
        "import sys, caliban.platforms.local.platform, caliban.platforms.local.quick\n"
        "print(sorted(m for m in ('aiodocker', 'aiohttp', 'rich') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "[]"
