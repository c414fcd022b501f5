"""Experiment configs: the original's conformance cases, grammar, and properties."""

from __future__ import annotations

import io
import itertools
import json
import math
import shlex
from collections import ChainMap
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from caliban.core import experiment as ex
from caliban.errors import EXIT_USAGE, ExperimentConfigError


def jobs(config: object) -> list[dict[str, Any]]:
    return ex.expand_all(ex.validate(config))


def same(actual: list[dict[str, Any]], expected: list[dict[str, Any]]) -> None:
    """Equal including job order and key order inside each job."""
    assert [list(e.items()) for e in actual] == [list(e.items()) for e in expected]


# --------------------------------------------------------------------------
# A model of the original algorithm, to compare orders against. It follows
# the original's steps: compound keys become tuples inside a ChainMap (which
# reverses key order on CPython >= 3.9), a plain itertools.product in that
# order, then each point is unzipped through another ChainMap.


def original_expand(config: Any) -> list[dict[str, Any]]:
    if isinstance(config, list):
        return [job for item in config for job in original_expand(item)]

    def compound(key: str) -> bool:
        return len(key) > 2 and key[0] == "[" and key[-1] == "]"

    def as_tuple_value(value: Any) -> Any:
        if isinstance(value[0], list):
            return [tuple(v) for v in value]
        return tuple(value)

    parts = [
        {tuple(p.strip() for p in k[1:-1].split(",")): as_tuple_value(v)} if compound(k) else {k: v}
        for k, v in config.items()
    ]
    tupled = dict(ChainMap(*parts))
    keys = list(tupled)
    columns = [v if isinstance(v, list) else [v] for v in tupled.values()]
    out = []
    for combo in itertools.product(*columns):
        unzipped = [
            dict(zip(k, v, strict=True)) if isinstance(k, tuple) else {k: v}
            for k, v in zip(keys, combo, strict=True)
        ]
        out.append(dict(ChainMap(*unzipped)))
    return out


# --------------------------------------------------------------------------
# Section 2.6 of the behaviour reference, cases 1-20.

CASES: list[tuple[str, object, list[dict[str, Any]]]] = [
    ("1 empty object", {}, [{}]),
    (
        "2 compound list of lists",
        {"[a,b]": [["c", "d"], ["e", "f"]]},
        [{"a": "c", "b": "d"}, {"a": "e", "b": "f"}],
    ),
    ("3 compound flat", {"[a,b]": ["c", "d"]}, [{"a": "c", "b": "d"}]),
    (
        "4 plain and compound",
        {"hi": "there", "[k1,k2]": [["v1a", "v2a"], ["v1b", "v2b"]]},
        [
            {"hi": "there", "k1": "v1a", "k2": "v2a"},
            {"hi": "there", "k1": "v1b", "k2": "v2b"},
        ],
    ),
    (
        "5 plain and flat compound",
        {"hi": "there", "[a,b]": ["c", "d"]},
        [{"hi": "there", "a": "c", "b": "d"}],
    ),
    ("6 numbers flat", {"[a,b]": [0, 1]}, [{"a": 0, "b": 1}]),
    ("7 numbers nested", {"[a,b]": [[0, 1]]}, [{"a": 0, "b": 1}]),
    (
        "8 scalar and nested",
        {"hi": "blueshift", "[a,b]": [[0, 1]]},
        [{"hi": "blueshift", "a": 0, "b": 1}],
    ),
    (
        "9 compound pairs",
        {"[a,b]": [["a1", "b1"], ["a2", "b2"]]},
        [{"a": "a1", "b": "b1"}, {"a": "a2", "b": "b2"}],
    ),
    (
        "9 two plain lists",
        {"a": ["a1", "a2"], "b": ["b1", "b2"]},
        [
            {"a": "a1", "b": "b1"},
            {"a": "a2", "b": "b1"},
            {"a": "a1", "b": "b2"},
            {"a": "a2", "b": "b2"},
        ],
    ),
    ("17 empty list value", {"a": []}, []),
    ("17 one empty list among others", {"a": [1, 2], "b": []}, []),
    ("17 empty top-level list", [], []),
    ("17 list of objects", [{}, {"a": 1}], [{}, {"a": 1}]),
    (
        "19 compound and plain order",
        {"[a,b]": [[1, 2], [3, 4]], "c": [5, 6]},
        [
            {"a": 1, "b": 2, "c": 5},
            {"a": 3, "b": 4, "c": 5},
            {"a": 1, "b": 2, "c": 6},
            {"a": 3, "b": 4, "c": 6},
        ],
    ),
    (
        "20 first key fastest",
        {"a": [1, 2, 3], "b": [4, 5], "c": "d"},
        [
            {"a": 1, "b": 4, "c": "d"},
            {"a": 2, "b": 4, "c": "d"},
            {"a": 3, "b": 4, "c": "d"},
            {"a": 1, "b": 5, "c": "d"},
            {"a": 2, "b": 5, "c": "d"},
            {"a": 3, "b": 5, "c": "d"},
        ],
    ),
]


@pytest.mark.parametrize(("name", "config", "expected"), CASES, ids=[c[0] for c in CASES])
def test_conformance_cases(name: str, config: object, expected: list[dict[str, Any]]) -> None:
    same(jobs(config), expected)
    same(original_expand(config), expected)
    assert ex.count(ex.validate(config)) == len(expected)


def test_case_9_compound_renders_pairs() -> None:
    argvs = [ex.to_argv(e) for e in jobs({"[a,b]": [["a1", "b1"], ["a2", "b2"]]})]
    assert argvs == [["--a", "a1", "--b", "b1"], ["--a", "a2", "--b", "b2"]]


CASE_10 = {
    "epochs": [2, 3],
    "batch_size": [64, 128],
    "constant_arg": "something",
    "important_toggle": [True, False],
}


def test_case_10_booleans_and_script_args() -> None:
    expanded = jobs(CASE_10)
    assert len(expanded) == 8
    for job in expanded:
        argv = ex.to_argv(job)
        assert ("--important_toggle" in argv) is job["important_toggle"]
        if job["important_toggle"]:
            assert argv[-1] == "--important_toggle"
        assert ex.to_argv(job, ["--key", "value"])[:2] == ["--key", "value"]
    assert ex.to_argv(expanded[0]) == [
        "--epochs",
        "2",
        "--batch_size",
        "64",
        "--constant_arg",
        "something",
        "--important_toggle",
    ]


CASE_11 = [
    {
        "epochs": [1, 2, 3, 4],
        "batch_size": [64, 128],
        "constant_arg": "something",
        "important_toggle": [True, False],
    },
    {"epochs": [9, 10], "batch_size": [512, 1024], "constant_arg": "something"},
    {"epochs": 1000, "batch_size": 1},
]


def test_case_11_list_of_configs() -> None:
    expanded = jobs(CASE_11)
    assert len(expanded) == 21 == ex.count(ex.validate(CASE_11))
    assert ex.to_argv(expanded[-1]) == ["--epochs", "1000", "--batch_size", "1"]
    same(expanded, original_expand(CASE_11))


def test_case_12_nested_lists_flatten() -> None:
    valid = {"a": [1, 2]}
    same(jobs([valid, [valid]]), jobs(valid) * 2)
    with pytest.raises(ExperimentConfigError, match=r"item \[2\]\[0\]: key 1 is not a string"):
        ex.validate([valid, valid, [{1: "face"}]])


@pytest.mark.parametrize(
    ("config", "named"),
    [
        ({1: "face", "2": "3"}, "key 1"),
        ({"key": [{1: 2}, "face"]}, "key 'key'"),
        ({"key": None}, "key 'key'"),
        ({"key": [1, None]}, "null"),
        ({"key": {"a": 1}}, '{"a": 1}'),
    ],
)
def test_case_13_invalid_keys_and_values(config: object, named: str) -> None:
    with pytest.raises(ExperimentConfigError, match=named.replace("[", r"\[")) as info:
        ex.validate(config)
    assert info.value.exit_code == EXIT_USAGE


@pytest.mark.parametrize(
    "key",
    [
        "[",
        "eh[",
        "[test,,fail]",
        "[,test,fail]",
        "[I,will,fail,]",
        "[I,,will,fail]",
        "]I,will,fail]",
    ],
)
def test_case_14_invalid_compound_keys(key: str) -> None:
    with pytest.raises(ExperimentConfigError, match="is not a valid compound key") as info:
        ex.validate({key: [1, 2]})
    assert repr(key) in str(info.value)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("[batch_size,learning_rate]", [1, 2]),
        ("[batch_size, learning_rate, dataset_size]", [[1, 2, 3]]),
        ("[batch_size , learning_rate,dataset_size]", [1, 2, 3]),
        ("[batch_size ,learning_rate]", [[1, 2], [3, 4]]),
    ],
)
def test_case_14_valid_compound_keys(key: str, value: list[Any]) -> None:
    expanded = jobs({key: value})
    assert all("batch_size" in job and "learning_rate" in job for job in expanded)


@pytest.mark.parametrize("key", ["a b", "a,b", "", "x]"])
def test_invalid_plain_keys(key: str) -> None:
    with pytest.raises(ExperimentConfigError, match="is not a valid"):
        ex.validate({key: 1})


def test_case_15_valid_config_is_kept(tmp_path: Path) -> None:
    config = {"a": [1.0, 2, 3], "b": True, "c": 1, "d": "e", "f": 1.2}
    assert ex.validate(config).raw == config
    path = tmp_path / "exp.json"
    path.write_text(json.dumps({"key": ["a", "b"], "random": [True, False]}))
    assert ex.load(str(path)).raw == {"key": ["a", "b"], "random": [True, False]}
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ExperimentConfigError, match=r"bad\.json: not valid JSON.*line 1"):
        ex.load(str(bad))


def test_case_16_rendering() -> None:
    job: ex.Experiment = {"a": 1.0, "b": False, "c": True, "d": "x y", "e": [1, 2]}
    assert ex.to_argv(job) == ["--a", "1.0", "--c", "--d", "x y", "--e", "[1, 2]"]
    assert ex.to_argv({"lr": 0.01, "n": 10**20}) == ["--lr", "0.01", "--n", str(10**20)]


@pytest.mark.parametrize("config", [{"[a,b]": []}, {"[a]": []}])
def test_case_18_empty_compound_value_is_an_error(config: object) -> None:
    with pytest.raises(ExperimentConfigError, match=r"compound key '\[a(,b)?\]' has an empty list"):
        ex.validate(config)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"[a,b]": [1, 2, 3]}, "names 2 flags but value"),
        ({"[a,b]": [[1, 2], [3]]}, r"value \[3\] has 1"),
        ({"[a,b]": [[1, 2], 3]}, "mixes lists and single values"),
        ({"[a,b]": [[1, 2], "xy"]}, "mixes lists and single values"),
        ({"[a,b]": 3}, "needs a list"),
        ({"[a,b]": [[]]}, "has 0"),
        ({"[a,b]": [[1, {"x": 1}]]}, "is not allowed"),
        ("just a string", "must be a JSON object or a list"),
        (3, "must be a JSON object or a list"),
        ([{}, "x"], r"item \[1\]: list items must be"),
    ],
)
def test_invalid_configs_name_the_problem(config: object, message: str) -> None:
    with pytest.raises(ExperimentConfigError, match=message):
        ex.validate(config)


def test_flat_compound_may_hold_a_list_value() -> None:
    same(jobs({"[a,b]": [1, [2, 3]]}), [{"a": 1, "b": [2, 3]}])
    assert ex.to_argv(jobs({"[a,b]": [1, [2, 3]]})[0]) == ["--a", "1", "--b", "[2, 3]"]


def test_overlapping_keys_merge_like_the_original() -> None:
    for config in [
        {"a": 1, "[a,b]": [2, 3]},
        {"[a,b]": [2, 3], "a": [1, 5]},
        {"[a,b]": [1, 2], "[a, b]": [3, 4], "c": [1, 2]},
        {"[a, b]": [[1, 2], [5, 6]], "c": [7, 8], "[ a,b ]": [[3, 4]]},
    ]:
        same(jobs(config), original_expand(config))


# --------------------------------------------------------------------------
# Comments and loading


def test_parse_json_comments_outside_strings_only() -> None:
    text = """
    # a full-line comment
    // another one
    {
      "url": "http://example.com/#frag", // trailing
      "hash": "#not a comment",  # trailing too
      "quote": "say \\"hi\\" // still text"
    }
    """
    assert ex.parse_json(text, "t") == {
        "url": "http://example.com/#frag",
        "hash": "#not a comment",
        "quote": 'say "hi" // still text',
    }


def test_parse_json_reports_source_and_line() -> None:
    with pytest.raises(ExperimentConfigError, match=r"^cfg: not valid JSON: .*\(line 3, column"):
        ex.parse_json('# c\n{"a": 1,\n "b" 2}', "cfg")
    with pytest.raises(ExperimentConfigError, match="cfg: is empty"):
        ex.parse_json("  // nothing\n", "cfg")


@pytest.mark.parametrize("word", ["stdin", "STDIN", "Stdin"])
def test_load_from_stdin(word: str) -> None:
    config = ex.load(word, stdin=io.StringIO('{"a": [1, 2]} # comment'))
    assert ex.expand_all(config) == [{"a": 1}, {"a": 2}]


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(ExperimentConfigError, match="cannot read: No such file"):
        ex.load(str(tmp_path / "missing.json"))
    with pytest.raises(ExperimentConfigError, match="cannot read"):
        ex.load(str(tmp_path))
    (tmp_path / "latin.json").write_bytes(b'{"a": "\xe9"}')
    with pytest.raises(ExperimentConfigError, match="not UTF-8"):
        ex.load(str(tmp_path / "latin.json"))
    (tmp_path / "bad.json").write_text('{"[a,b]": []}')
    with pytest.raises(ExperimentConfigError, match=r"bad\.json: compound key"):
        ex.load(str(tmp_path / "bad.json"))


# --------------------------------------------------------------------------
# Laziness


def test_count_does_not_expand() -> None:
    config = ex.validate({f"k{i}": list(range(10)) for i in range(12)})
    assert ex.count(config) == 10**12
    first = next(ex.expand(config))
    assert first == {f"k{i}": 0 for i in range(12)}


def test_validated_config_is_a_private_copy() -> None:
    data = {"a": [1, 2]}
    config = ex.validate(data)
    data["a"].append(3)
    assert ex.count(config) == 2


# --------------------------------------------------------------------------
# Properties

names = st.sampled_from(["a", "b", "c", "lr", "x.y", "-n"])
scalars = st.one_of(
    st.booleans(),
    st.integers(-5, 5),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.text("abc xy", max_size=4),
)


@st.composite
def compound_entries(draw: st.DrawFn) -> tuple[str, Any]:
    members = draw(st.lists(names, min_size=1, max_size=3))
    pad = draw(st.sampled_from(["", " "]))
    key = "[" + f"{pad},{pad}".join(members) + "]"
    row = st.lists(scalars, min_size=len(members), max_size=len(members))
    if draw(st.booleans()):
        flat = draw(row)
        if isinstance(flat[0], list):  # pragma: no cover - scalars are never lists
            flat[0] = 0
        return key, flat
    return key, draw(st.lists(row, min_size=1, max_size=3))


plain_entries = st.tuples(
    names,
    st.one_of(scalars, st.lists(st.one_of(scalars, st.lists(scalars, max_size=2)), max_size=3)),
)
blocks = st.lists(st.one_of(plain_entries, compound_entries()), max_size=4).map(dict)
configs = st.one_of(blocks, st.lists(st.one_of(blocks, st.lists(blocks, max_size=2)), max_size=3))


def list_lengths_product(block: dict[str, Any]) -> int:
    n = 1
    for key, value in block.items():
        if key.startswith("["):
            n *= len(value) if isinstance(value[0], list) else 1
        elif isinstance(value, list):
            n *= len(value)
    return n


@given(configs)
@settings(max_examples=300, deadline=None)
def test_same_jobs_in_the_same_order_as_the_original(config: Any) -> None:
    same(jobs(config), original_expand(config))


@settings(deadline=None)
@given(blocks)
def test_count_is_the_product_of_list_lengths(block: dict[str, Any]) -> None:
    # Repeated compound keys ("[a,b]", "[a, b]") collapse to one, so compare
    # against the product over distinct ones.
    distinct: dict[object, Any] = {}
    for key, value in block.items():
        ident = tuple(p.strip() for p in key[1:-1].split(",")) if key.startswith("[") else key
        distinct.setdefault(ident, (key, value))
    expected = list_lengths_product(dict(distinct.values()))
    config = ex.validate(block)
    assert ex.count(config) == expected == len(ex.expand_all(config))


@settings(deadline=None)
@given(configs)
def test_count_of_lists_is_the_sum(config: Any) -> None:
    config_ = ex.validate(config)
    assert ex.count(config_) == len(ex.expand_all(config_)) == len(original_expand(config))


@given(st.dictionaries(names, scalars, max_size=4))
def test_expanding_a_job_gives_the_job_back(job: dict[str, Any]) -> None:
    for expanded in jobs(job):
        same(jobs(expanded), [expanded])


@settings(deadline=None)
@given(configs)
def test_validating_the_raw_copy_changes_nothing(config: Any) -> None:
    once = ex.validate(config)
    same(ex.expand_all(ex.validate(once.raw)), ex.expand_all(once))


@settings(deadline=None)
@given(configs, st.sampled_from([None, 2]))
def test_streamed_json_equals_json_dumps(config: Any, indent: int | None) -> None:
    expanded = jobs(config)
    streamed = "".join(ex.iter_json(iter(expanded), indent=indent))
    assert streamed == json.dumps(expanded, indent=indent)


@given(st.dictionaries(names, st.one_of(scalars, st.lists(scalars, max_size=2)), max_size=4))
def test_flags_line_splits_back_into_argv(job: dict[str, Any]) -> None:
    assert shlex.split(ex.flags_line(job)) == ex.to_argv(job)


def test_floats_render_with_python_repr() -> None:
    assert ex.to_argv({"a": 1e-7, "b": math.pi}) == ["--a", "1e-07", "--b", str(math.pi)]
