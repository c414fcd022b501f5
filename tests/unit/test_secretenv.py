"""Secret -e values: recorded by name, put back at launch."""

from __future__ import annotations

import pytest

from caliban.core import secretenv
from caliban.core.dockerargs import parse_docker_run_args


@pytest.mark.parametrize(
    ("name", "value", "secret"),
    [
        ("DB_PASSWORD", "hunter2", True),
        ("db_passwd", "x", True),
        ("GITHUB_TOKEN", "ghp_x", True),
        ("API_KEY", "k", True),
        ("AWS_SECRET_ACCESS_KEY", "k", True),
        ("GOOGLE_APPLICATION_CREDENTIALS", "/k.json", True),
        ("HF_AUTH", "x", True),
        ("SESSION_COOKIE", "x", True),
        ("DATABASE_URL", "postgres://me:pw@db:5432/x", True),
        ("DATABASE_URL", "postgres://db:5432/x", False),
        ("LEARNING_RATE", "0.1", False),
        ("OMP_NUM_THREADS", "4", False),
        ("CALIBAN_JOB_ID", "01J", False),
    ],
)
def test_is_secret(name: str, value: str, secret: bool) -> None:
    assert secretenv.is_secret(name, value) is secret


def test_redact_then_restore_round_trips() -> None:
    options = parse_docker_run_args(
        ["-e", "DB_PASSWORD=hunter2", "-e", "MODE=fast", "-e", "UNSET_ME", "-e", "HOME_TOKEN"],
        environ={"HOME_TOKEN": "from-env"},
    )
    spec = options.apply({"Env": ["PYTHONUNBUFFERED=1"]})
    stored, values = secretenv.redact(spec)
    assert stored["Env"] == [
        "PYTHONUNBUFFERED=1",
        "DB_PASSWORD",
        "MODE=fast",
        "UNSET_ME",
        "HOME_TOKEN",
    ]
    assert values == {"DB_PASSWORD": "hunter2", "HOME_TOKEN": "from-env"}
    assert "hunter2" not in repr(stored) and "from-env" not in repr(stored)
    # A deliberate bare "-e UNSET_ME" (unset in the container) is not a secret to fill.
    back = secretenv.restore(stored, sorted(values), values, {})
    assert back == spec


def test_restore_takes_the_first_source_and_names_what_is_missing() -> None:
    stored = {"Env": ["A=1", "DB_PASSWORD"]}
    assert secretenv.restore(stored, ["DB_PASSWORD"], {}, {"DB_PASSWORD": "env"})["Env"] == [
        "A=1",
        "DB_PASSWORD=env",
    ]
    with pytest.raises(secretenv.MissingSecret) as err:
        secretenv.restore(stored, ["DB_PASSWORD"], {}, {"OTHER": "x"})
    assert err.value.name == "DB_PASSWORD"


def test_names_of_and_shown() -> None:
    assert secretenv.names_of({"secret_env": ["A", "B"]}) == ["A", "B"]
    assert secretenv.names_of({}) == []
    assert secretenv.shown(["DB_PASSWORD=x", "MODE=1", "TOKEN"]) == [
        "DB_PASSWORD=***",
        "MODE=1",
        "TOKEN",
    ]


@pytest.mark.parametrize(
    ("argv", "kept"),
    [
        (
            ["run", "--docker_run_args", "-e DB_PASSWORD=hunter2 -e MODE=plain", "job.py"],
            ["run", "--docker_run_args", "-e DB_PASSWORD -e MODE=plain", "job.py"],
        ),
        (["--docker_run_args=--env=API_TOKEN=abc"], ["--docker_run_args=--env=API_TOKEN"]),
        (["-e 'AUTH_KEY=x y' -e A=1"], ["-e AUTH_KEY -e A=1"]),
        (["-e 'AUTH_KEY=x y"], ["<not recorded: holds a secret>"]),
        (["-e", "DB_URL=postgres://u:pw@h/db"], ["-e", "DB_URL"]),
        (
            ["--lr=0.1", "CALIBAN_TOKEN=keep", "MODE=plain"],
            ["--lr=0.1", "CALIBAN_TOKEN=keep", "MODE=plain"],
        ),
    ],
)
def test_a_recorded_command_line_keeps_no_secret_value(argv: list[str], kept: list[str]) -> None:
    assert secretenv.redact_argv(argv) == kept
