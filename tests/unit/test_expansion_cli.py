"""The ``expansion`` command: output formats, stdin, and errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from caliban.cli.expansion import main

from .test_experiment import CASE_10, CASE_11, CASES


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "caliban.cli.expansion", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def write(tmp_path: Path, config: object, name: str = "exp.json") -> str:
    path = tmp_path / name
    path.write_text(json.dumps(config))
    return str(path)


# --------------------------------------------------------------------------
# As a subprocess


def test_subprocess_file_default_output(tmp_path: Path) -> None:
    result = run(write(tmp_path, {"a": [1, 2], "b": "x"}))
    assert result.returncode == 0, result.stderr
    assert result.stdout == '[{"a": 1, "b": "x"}, {"a": 2, "b": "x"}]\n'
    assert result.stderr == ""


def test_subprocess_stdin_with_comments() -> None:
    result = run("stdin", stdin='// sweep\n{"[a,b]": [[1, 2], [3, 4]], "c": [5, 6]}  # end\n')
    assert result.returncode == 0, result.stderr
    expected = [
        {"a": 1, "b": 2, "c": 5},
        {"a": 3, "b": 4, "c": 5},
        {"a": 1, "b": 2, "c": 6},
        {"a": 3, "b": 4, "c": 6},
    ]
    assert result.stdout == json.dumps(expected) + "\n"


def test_subprocess_print_flags_quotes_for_the_shell() -> None:
    result = run("--print_flags", "STDIN", stdin='{"d": "x y", "t": [true, false], "e": [[1, 2]]}')
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["--d 'x y' --t --e '[1, 2]'", "--d 'x y' --e '[1, 2]'"]


def test_subprocess_error_exit_2_names_the_key() -> None:
    result = run("stdin", stdin='{"ok": 1, "[a,,b]": [1, 2]}')
    assert result.returncode == 2
    assert result.stdout == ""
    assert "'[a,,b]'" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_subprocess_empty_compound_list_is_an_error() -> None:
    result = run("stdin", stdin='{"[a,b]": []}')
    assert (result.returncode, result.stdout) == (2, "")
    assert "'[a,b]'" in result.stderr


def test_subprocess_pipeline_feeds_back(tmp_path: Path) -> None:
    first = run(write(tmp_path, CASE_11))
    second = run("stdin", stdin=first.stdout)
    assert second.returncode == 0
    assert second.stdout == first.stdout


# --------------------------------------------------------------------------
# Through main()


@pytest.mark.parametrize(("name", "config", "expected"), CASES, ids=[c[0] for c in CASES])
def test_outputs_for_every_case(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    name: str,
    config: object,
    expected: list[dict[str, Any]],
) -> None:
    path = write(tmp_path, config)
    assert main([path]) == 0
    assert capsys.readouterr().out == json.dumps(expected) + "\n"
    assert main(["--pprint", path]) == 0
    assert capsys.readouterr().out == json.dumps(expected, indent=2) + "\n"
    assert main(["--print_flags", path]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(expected)


def test_print_flags_case_10(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--print_flags", write(tmp_path, CASE_10)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[:3] == [
        "--epochs 2 --batch_size 64 --constant_arg something --important_toggle",
        "--epochs 3 --batch_size 64 --constant_arg something --important_toggle",
        "--epochs 2 --batch_size 128 --constant_arg something --important_toggle",
    ]
    assert lines[-1] == "--epochs 3 --batch_size 128 --constant_arg something"
    assert len(lines) == 8


def test_print_flags_case_11_last_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--print_flags", write(tmp_path, CASE_11)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 21
    assert lines[-1] == "--epochs 1000 --batch_size 1"


def test_print_flags_empty_job_prints_an_empty_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--print_flags", write(tmp_path, {})]) == 0
    assert capsys.readouterr().out == "\n"


@pytest.mark.parametrize(
    ("config", "named"),
    [
        ({"[": 1}, "'['"),
        ({"a": None}, "'a'"),
        ({"key": [{"1": 2}, "face"]}, "'key'"),
        ([{"a": 1}, [{"b": {"c": 1}}]], "'b'"),
        ({"[a,b]": [1, 2, 3]}, "'[a,b]'"),
    ],
)
def test_errors_exit_2_and_print_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], config: object, named: str
) -> None:
    assert main([write(tmp_path, config)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("expansion: error: ")
    assert named in err


def test_missing_file_and_bad_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path / "nope.json")]) == 2
    assert "nope.json" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text('{"a": [1, 2')
    assert main([str(bad)]) == 2
    assert "not valid JSON" in capsys.readouterr().err


def test_usage(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "experiment_config" in capsys.readouterr().err
    assert main(["--help"]) == 0
    assert "--print_flags" in capsys.readouterr().out


def test_version_is_the_installed_distribution() -> None:
    from caliban.version import __version__

    result = run("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"expansion {__version__}"
