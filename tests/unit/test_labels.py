"""Google label rules: sanitising, labels from arguments, merging, limits."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from caliban.core.labels import (
    KEY_RE,
    MAX_LABELS,
    VALUE_RE,
    args_to_labels,
    is_valid_label,
    job_labels,
    parse_label_flag,
    sanitize_key,
    sanitize_labels,
    sanitize_value,
)
from caliban.errors import ValidationError


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("--face", "face"),
        ("------fA.!! ce", "fa_ce"),
        ("--0helper", "k0helper"),
        ("2x.Y", "k2x_y"),
        ("", ""),
        ("!!", ""),
        ("A" * 70, "a" * 63),
        ("Team", "team"),
    ],
)
def test_sanitize_key(text: str, key: str) -> None:
    assert sanitize_key(text) == key


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("--0helper", "0helper"),
        ("--_helper", "_helper"),
        ("", ""),
        (None, ""),
        ("A" * 70, "a" * 63),
        ("Research.AI", "research_ai"),
        ("0.01", "0_01"),
    ],
)
def test_sanitize_value(text: str | None, value: str) -> None:
    assert sanitize_value(text) == value


@pytest.mark.parametrize(
    ("argv", "labels"),
    [
        ("--lr 1 --!!! 2 --face 3", {"lr": "1", "face": "3"}),
        ("--lr 1 --lr 2", {"lr": "2"}),
        (
            "--LR 1 --item-label --fa!!ce cake --a",
            {"lr": "1", "item-label": "", "face": "cake", "a": ""},
        ),
        (
            "--lr 1 2 3 --item_underscoRE!! --face cake --a",
            {"lr": "1", "item_underscore": "", "face": "cake", "a": ""},
        ),
        ("--face", {"face": ""}),
        ("face", {}),
        ("", {}),
    ],
)
def test_args_to_labels_reference_cases(argv: str, labels: dict[str, str]) -> None:
    assert args_to_labels(argv.split()) == labels


def test_args_to_labels_improvements() -> None:
    # Negative numbers are values, and --key=value is split.
    assert args_to_labels(["--lr", "-0.5", "--shift", "-3"]) == {"lr": "0_5", "shift": "3"}
    assert args_to_labels(["--lr=0.1", "--flag"]) == {"lr": "0_1", "flag": ""}


def test_sanitize_labels_drops_empty_keys_and_last_wins() -> None:
    assert sanitize_labels([("--!!", "face")]) == {}
    assert sanitize_labels([("A", "1"), ("a", "2")]) == {"a": "2"}
    assert sanitize_labels([("gpu", True), ("tpu", False), ("n", None), ("x", 1.5)]) == {
        "gpu": "true",
        "tpu": "false",
        "n": "",
        "x": "1_5",
    }


def test_reference_example() -> None:
    key, value = parse_label_flag("Team=Research.AI")
    labels = job_labels(
        base={"gpu_enabled": "true", "job_name": "caliban_me"},
        user={key: value},
        args=["--seed", "1", "--learning_rate", "0.01", "--epochs", "2", "--toggle"],
        reserved={"caliban_job_id": "01hx"},
    )
    assert labels == {
        "gpu_enabled": "true",
        "job_name": "caliban_me",
        "team": "research_ai",
        "seed": "1",
        "learning_rate": "0_01",
        "epochs": "2",
        "toggle": "",
        "caliban_job_id": "01hx",
    }


def test_precedence_base_user_args_reserved() -> None:
    labels = job_labels(
        base={"a": "base", "b": "base", "c": "base"},
        user={"b": "user", "c": "user", "caliban_job_id": "user"},
        args=["--c", "arg", "--caliban_job_id", "arg"],
        reserved={"caliban_job_id": "id"},
    )
    assert labels == {"a": "base", "b": "user", "c": "arg", "caliban_job_id": "id"}


def test_limit_drops_extra_argument_labels_in_order() -> None:
    argv = [tok for i in range(100) for tok in (f"--f{i}", str(i))]
    labels = job_labels(
        base={"gpu_enabled": "true"},
        user={"team": "x"},
        args=argv,
        reserved={"caliban_job_id": "id"},
    )
    assert len(labels) == MAX_LABELS
    assert labels["caliban_job_id"] == "id"
    assert labels["team"] == "x"
    assert "f60" in labels and "f61" not in labels
    # An argument overriding an existing key still applies when full.
    full = job_labels(base={"f0": "base"}, user={}, args=argv, reserved={})
    assert full["f0"] == "0" and len(full) == MAX_LABELS


def test_too_many_user_labels_is_an_error() -> None:
    user = {f"l{i}": "v" for i in range(MAX_LABELS)}
    with pytest.raises(ValidationError, match="too many labels: 65"):
        job_labels(base={}, user=user, args=[], reserved={"caliban_job_id": "x"})


@pytest.mark.parametrize(
    ("text", "pair"),
    [
        ("k=v", ("k", "v")),
        (" key =a=b", ("key", "a=b")),
        ("k=", ("k", "")),
        ("k= spaced ", ("k", " spaced ")),
    ],
)
def test_parse_label_flag(text: str, pair: tuple[str, str]) -> None:
    assert parse_label_flag(text) == pair


@pytest.mark.parametrize(("text", "message"), [("k:v", "no '='"), ("=v", "no usable key")])
def test_parse_label_flag_errors(text: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        parse_label_flag(text)


# --------------------------------------------------------------------------
# Properties


@given(st.text())
def test_sanitized_keys_are_valid_or_empty(text: str) -> None:
    key = sanitize_key(text)
    assert key == "" or KEY_RE.fullmatch(key)
    assert sanitize_key(key) == key


@given(st.one_of(st.none(), st.text()))
def test_sanitized_values_are_valid(text: str | None) -> None:
    value = sanitize_value(text)
    assert VALUE_RE.fullmatch(value)
    assert sanitize_value(value) == value
    assert len(value.encode()) < 128


argv_tokens = st.lists(
    st.one_of(st.text(max_size=8), st.text(max_size=8).map(lambda s: "--" + s)), max_size=200
)


@settings(deadline=None)
@given(
    st.dictionaries(st.text(max_size=10), st.text(max_size=10), max_size=20),
    st.dictionaries(st.text(max_size=10), st.text(max_size=10), max_size=20),
    argv_tokens,
)
def test_every_job_label_is_valid_and_within_the_limit(
    base: dict[str, str], user: dict[str, str], argv: list[str]
) -> None:
    labels = job_labels(base=base, user=user, args=argv, reserved={"caliban_job_id": "01abc"})
    assert len(labels) <= MAX_LABELS
    assert labels["caliban_job_id"] == "01abc"
    assert all(is_valid_label(k, v) for k, v in labels.items())


@settings(deadline=None)
@given(argv_tokens)
def test_argument_labels_are_valid(argv: list[str]) -> None:
    assert all(is_valid_label(k, v) for k, v in args_to_labels(argv).items())
