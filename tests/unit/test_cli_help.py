"""The CLI helps: suggestions, unknown flags named, help text with examples that parse,
global -v/-q anywhere, completion scripts, and a table of every environment variable."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from caliban.cli import helptext
from caliban.cli.flags import split_script_args, suggest
from caliban.cli.main import build_parser, main

ROOT = Path(__file__).resolve().parents[2]


def _fails(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    return err


def test_suggest_picks_the_closest_choice_or_none() -> None:
    assert suggest("statsu", ["status", "stop", "run"]) == "status"
    assert suggest("--max_paralel", ["--max_parallel", "--max_sweep"]) == "--max_parallel"
    assert suggest("--frobnicate", ["--max_parallel", "--nogpu"]) is None
    assert suggest("x", []) is None


def test_a_misspelt_subcommand_gets_a_suggestion(capsys: pytest.CaptureFixture[str]) -> None:
    assert "unknown command 'statsu'; did you mean 'status'?" in _fails(["statsu"], capsys)
    err = _fails(["cluster", "job", "sumbit"], capsys)
    assert "did you mean 'submit'?" in err and "caliban cluster job" in err


def test_an_unknown_subcommand_far_from_all_lists_them(capsys: pytest.CaptureFixture[str]) -> None:
    err = _fails(["zzzzqqq"], capsys)
    assert "invalid choice" in err and "did you mean" not in err


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "--max_paralel", "4", "train.py"],
        ["run", "train.py", "--max_paralel", "4"],
        ["run", "--max_paralel=4", "train.py"],
    ],
)
def test_an_unknown_flag_is_named_with_the_flag_it_resembles(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    err = _fails(argv, capsys)
    assert "unknown flag --max_paralel; did you mean --max_parallel?" in err
    assert "unexpected" not in err and "'4'" not in err


def test_a_flag_for_the_script_after_it_still_points_at_the_separator(
    capsys: pytest.CaptureFixture[str],
) -> None:
    err = _fails(["run", "train.py", "--learning_rate", "0.1"], capsys)
    assert "caliban run ... train.py -- --learning_rate 0.1" in err


def test_an_unknown_flag_of_a_nested_command_is_checked_against_its_own_flags(
    capsys: pytest.CaptureFixture[str],
) -> None:
    err = _fails(["cluster", "job", "ls", "--namespce", "x"], capsys)
    assert "caliban cluster job ls: unknown flag --namespce; did you mean --namespace?" in err
    err = _fails(["status", "--frobnicate"], capsys)
    assert "unknown flag --frobnicate" in err and "did you mean" not in err


@pytest.mark.parametrize(
    ("argv", "verbose", "quiet"),
    [
        (["-v", "status"], True, False),
        (["status", "--verbose"], True, False),
        (["--quiet", "stop"], False, True),
        (["stop", "-q"], False, True),
        (["-v", "cluster", "job", "ls"], True, False),
        (["cluster", "job", "ls", "-q"], False, True),
        (["-v", "run", "train.py"], True, False),
        (["run", "train.py", "-v"], True, False),
        (["slurm", "submit", "-v", "train.py"], True, False),
    ],
)
def test_global_flags_work_before_and_after_the_subcommand(
    argv: list[str], verbose: bool, quiet: bool
) -> None:
    ns = build_parser().parse_args(argv)
    assert getattr(ns, "verbose", False) is verbose
    assert getattr(ns, "quiet", False) is quiet


def test_verbose_and_quiet_together_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert "contradict" in _fails(["-v", "status", "-q"], capsys)


def test_every_subcommand_has_a_description_and_examples() -> None:
    found = helptext.subcommands(build_parser())
    assert {"run", "status", "stop", "resubmit", "logs", "completion"} <= {p for p, _, _ in found}
    for path, sub, _ in found:
        assert sub.description, f"`caliban {path} --help` has no description"
        assert sub.epilog and "examples:" in sub.epilog, f"`caliban {path} --help`: no example"
        assert path in helptext.HELP, f"{path}: add its examples to caliban/cli/helptext.py"


def test_every_example_in_help_parses() -> None:
    parser = build_parser()
    commands = {p for p, _, _ in helptext.subcommands(parser)}
    for path, (_, examples) in helptext.HELP.items():
        if path not in commands:
            continue  # a command another branch adds
        for example in examples:
            words = shlex.split(re.split(r" [|>] ", example)[0])
            if words[0] != "caliban":
                continue
            own, _ = split_script_args(words[1:])
            assert " ".join(own).startswith(path), example
            try:
                _ns, extra = parser.parse_known_args(own)
            except SystemExit:  # pragma: no cover - the message is on stderr
                pytest.fail(f"example does not parse: {example}")
            assert not extra, (example, extra)


def test_help_keeps_example_lines_and_wraps_prose(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["stop", "--help"])
    out = capsys.readouterr().out
    assert "\nexamples:\n  caliban stop --xgroup my-sweep\n  caliban stop --dry_run\n" in out
    assert all(len(line) <= 100 for line in out.splitlines())


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_scripts_name_the_commands_and_their_flags(
    shell: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["completion", shell]) == 0
    script = capsys.readouterr().out
    for word in ("resubmit", "--max_parallel", "--xgroup", "submit_file"):
        assert word in script, (shell, word)
    binary = shutil.which(shell)
    if binary is not None and shell in ("bash", "zsh"):
        check = subprocess.run([binary, "-n"], input=script, text=True, capture_output=True)
        assert check.returncode == 0, check.stderr


def test_completion_refuses_an_unknown_shell(capsys: pytest.CaptureFixture[str]) -> None:
    _fails(["completion", "powershell"], capsys)


def test_every_environment_variable_the_code_names_is_in_the_reference() -> None:
    doc = (ROOT / "docs" / "environment.md").read_text()
    source = "\n".join(p.read_text() for p in (ROOT / "caliban").rglob("*.py"))
    named = set(re.findall(r"\b(CALIBAN_[A-Z][A-Z_]*[A-Z])\b", source))
    # Names that are prefixes of build args and labels, not variables.
    named -= {"CALIBAN_LABEL_PREFIX"}
    read = set(re.findall(r"environ(?:\.get)?\(\s*[\"']([A-Z_][A-Z0-9_]*)[\"']", source))
    read |= set(re.findall(r"environ\[[\"']([A-Z_][A-Z0-9_]*)[\"']\]", source))
    missing = sorted(v for v in named | read if f"`{v}`" not in doc)
    assert not missing, f"add to docs/environment.md: {missing}"
