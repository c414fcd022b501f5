"""Bad input refused by the pure checks, each with one message naming what is wrong."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from caliban.cli import expansion
from caliban.cli.args import positive_float
from caliban.core import experiment, names, project
from caliban.errors import ExperimentConfigError, ValidationError
from caliban.sweep.engine import safe_path_part as _safe_path_part

# -- experiment configs ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('{"lr": [1, 2], "lr": [3]}', "key 'lr' appears twice"),
        ('[{"a": 1}, {"b": {"c": 1, "c": 2}}]', "key 'c' appears twice"),
        ('{"lr": NaN}', "NaN is not a JSON number"),
        ('{"lr": [1, Infinity]}', "Infinity is not a JSON number"),
        ('{"lr": -Infinity}', "-Infinity is not a JSON number"),
        ('{"lr": 1e999}', "number 1e999 is too large"),
        ('{"name": "a\\u0000b"}', "contains a NUL byte"),
        ('{"na\\u0000me": 1}', "contains a NUL byte"),
        ('{"[a,b]": [["x\\u0000", 1]]}', "contains a NUL byte"),
    ],
)
def test_configs_that_json_would_take_are_refused(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "exp.json"
    path.write_text(text)
    with pytest.raises(ExperimentConfigError) as caught:
        experiment.load(str(path))
    assert needle in str(caught.value)
    assert str(path) in str(caught.value)


def test_non_finite_values_from_python_are_refused_too() -> None:
    with pytest.raises(ExperimentConfigError, match="not a finite number"):
        experiment.validate({"lr": [0.1, float("nan")]})


def test_spacing_variants_of_compound_keys_still_merge_as_before() -> None:
    # Not duplicates as JSON sees them: the original's merge rule applies.
    config = experiment.validate({"[a,b]": [1, 2], "[a, b]": [3, 4]})
    assert experiment.expand_all(config) == [{"a": 1, "b": 2}]


# -- sweep size -----------------------------------------------------------------------------


def test_a_huge_sweep_is_refused_by_arithmetic() -> None:
    # 40 keys of 10 values: 10**40 jobs, counted without expanding one.
    config = experiment.validate({f"k{i}": list(range(10)) for i in range(40)})
    with pytest.raises(ExperimentConfigError) as caught:
        experiment.check_size(config)
    message = str(caught.value)
    assert "about 10^40 jobs" in message and "--max_sweep" in message
    assert str(experiment.DEFAULT_MAX_SWEEP) in message


def test_sweep_size_sums_the_objects_of_a_list() -> None:
    config = experiment.validate([{"a": [1, 2, 3], "b": [1, 2]}, {"c": [1, 2, 3, 4]}])
    assert experiment.check_size(config, 10) == 10
    with pytest.raises(ExperimentConfigError, match=r"expands to 10 jobs.*--max_sweep 10"):
        experiment.check_size(config, 9)


def test_default_limit_lets_ten_thousand_through() -> None:
    config = experiment.validate({"a": list(range(100)), "b": list(range(100))})
    assert experiment.check_size(config) == 10_000
    config = experiment.validate({"a": list(range(100)), "b": list(range(101))})
    with pytest.raises(ExperimentConfigError, match="10100 jobs"):
        experiment.check_size(config)


# -- names ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["..", ".", ".hidden", "a/b", "a\nb", "a b", "x" * 129, "$(touch pwned)", "-x", ""]
)
def test_bad_xgroups(name: str) -> None:
    with pytest.raises(ValidationError, match="--xgroup"):
        names.check_xgroup(name)


@pytest.mark.parametrize(
    "name", ["sweep-1", "alice-xgroup-2026-01-02-03-04-05", "a.b_c", "x" * 128]
)
def test_good_xgroups(name: str) -> None:
    assert names.check_xgroup(name) == name


def test_a_default_xgroup_passes_the_rule() -> None:
    from datetime import datetime

    name = names.default_xgroup_name("caliban_user-1", datetime(2026, 1, 2, 3, 4, 5))
    assert names.check_xgroup(name) == name


@pytest.mark.parametrize(
    "ref",
    [
        "BAD REF!!",
        "BAD TAG",
        "Upper:case",
        "repo:tag with space",
        "repo:",
        "repo@sha256:short",
        "-repo",
        "a" * 300,
    ],
)
def test_bad_image_refs(ref: str) -> None:
    with pytest.raises(ValidationError, match=r"--image_id.*not a Docker image reference"):
        names.check_image_ref(ref, "--image_id")


@pytest.mark.parametrize(
    "ref",
    [
        "ubuntu",
        "caliban-local/base:bookworm",
        "127.0.0.1:5000/caliban/app:abc123",
        "us-central1-docker.pkg.dev/my-proj/caliban/app@sha256:" + "a" * 64,
        "localhost:5000/a__b/c-d.e:Tag_1.0",
        "sha256:" + "0" * 64,
        "3f2a1b",
    ],
)
def test_good_image_refs(ref: str) -> None:
    assert names.check_image_ref(ref, "--image_tag") == ref


@pytest.mark.parametrize(
    "project_id", ["bad id!", "Upper-case", "short", "1starts-digit", "ends-", ""]
)
def test_bad_project_ids(project_id: str) -> None:
    with pytest.raises(ValidationError, match="not a Google Cloud project id"):
        names.check_project_id(project_id)


@pytest.mark.parametrize("project_id", ["my-project", "test-proj", "example.com:my-proj"])
def test_good_project_ids(project_id: str) -> None:
    assert names.check_project_id(project_id) == project_id


@pytest.mark.parametrize("region", ["", "US-central1", "us central1", "us/central1", "uscentral"])
def test_bad_regions(region: str) -> None:
    with pytest.raises(ValidationError, match="--region"):
        names.check_region(region)


@pytest.mark.parametrize(
    "url",
    ["notaurl", "ftp://host", "http://", "https://host:99999", "https://h/x?y=1", "http://a b"],
)
def test_bad_urls(url: str) -> None:
    with pytest.raises(ValidationError, match="--api_endpoint"):
        names.check_url(url, "--api_endpoint")


def test_good_urls() -> None:
    for url in ("https://us-central1-aiplatform.googleapis.com", "http://127.0.0.1:8080/v1"):
        assert names.check_url(url, "--api_endpoint") == url


def test_log_folders_never_climb_out_of_logs() -> None:
    assert _safe_path_part("..") == "_"
    assert _safe_path_part(".") == "_"
    assert _safe_path_part("../../etc") == ".._.._etc"


# -- flag values ----------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["nan", "inf", "-inf", "NaN"])
def test_positive_float_refuses_non_finite(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="not a finite number"):
        positive_float(text)


def test_expansion_refuses_two_output_forms(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "exp.json"
    path.write_text('{"a": [1, 2]}')
    assert expansion.main(["--pprint", "--print_flags", str(path)]) == 2
    err = capsys.readouterr().err
    assert "not allowed with argument" in err
    assert expansion.main(["--print_flags", str(path)]) == 0


# -- project folders ------------------------------------------------------------------------


def test_a_script_linking_out_of_the_folder_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "proj"
    folder.mkdir()
    (tmp_path / "outside.py").write_text("print(1)\n")
    (folder / "train.py").symlink_to(tmp_path / "outside.py")
    with pytest.raises(ValidationError, match="outside the project folder"):
        project.resolve_entrypoint("train.py", folder)
    (folder / "pkg").symlink_to(tmp_path, target_is_directory=True)
    with pytest.raises(ValidationError, match="outside the project folder"):
        project.resolve_entrypoint("pkg.outside", folder)


def test_a_link_inside_the_folder_is_fine(tmp_path: Path) -> None:
    (tmp_path / "real.py").write_text("print(1)\n")
    (tmp_path / "train.py").symlink_to(tmp_path / "real.py")
    assert project.resolve_entrypoint("train.py", tmp_path).target == "train.py"


@pytest.mark.parametrize(
    ("ignore", "entry"),
    [("train.py", "train.py"), ("trainer\n", "trainer.train"), ("*.py", "train.py")],
)
def test_a_script_dockerignore_leaves_out_is_refused(
    tmp_path: Path, ignore: str, entry: str
) -> None:
    (tmp_path / "train.py").write_text("")
    (tmp_path / "trainer").mkdir()
    (tmp_path / "trainer" / "train.py").write_text("")
    (tmp_path / ".dockerignore").write_text(ignore)
    with pytest.raises(ValidationError, match=r"excluded by .*dockerignore"):
        project.resolve_entrypoint(entry, tmp_path)


def test_a_dockerignore_exception_brings_the_script_back(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text("")
    (tmp_path / ".dockerignore").write_text("*.py\n!train.py\n")
    assert project.resolve_entrypoint("train.py", tmp_path).target == "train.py"


def test_a_dir_linking_out_of_the_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "etc").symlink_to("/etc", target_is_directory=True)
    with pytest.raises(ValidationError, match="--dir 'etc' leads to /etc, outside"):
        project.inspect(tmp_path, ("etc",))
    (tmp_path / "data").mkdir()
    assert project.inspect(tmp_path, ("data",)).setup_py is False


SETUP = """
from setuptools import setup
EXTRAS = {"dev": ["pytest"], "Big_Data": []}
setup(name="x", extras_require=EXTRAS)
"""


def test_extras_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match=r"no setup\.py"):
        project.check_extras(tmp_path, ("dev",), setup_py=False)
    (tmp_path / "setup.py").write_text(SETUP)
    project.check_extras(tmp_path, ("dev", "big-data"), setup_py=True)
    with pytest.raises(ValidationError) as caught:
        project.check_extras(tmp_path, ("dev", "nope"), setup_py=True)
    assert "'nope'" in str(caught.value) and "big-data, dev" in str(caught.value)
    project.check_extras(tmp_path, (), setup_py=False)


def test_extras_computed_at_run_time_are_not_second_guessed(tmp_path: Path) -> None:
    (tmp_path / "setup.py").write_text(
        "from setuptools import setup\nsetup(extras_require=make_extras())\n"
    )
    project.check_extras(tmp_path, ("anything",), setup_py=True)
    assert project.declared_extras(tmp_path) is None


def test_no_extras_require_means_no_extras(tmp_path: Path) -> None:
    (tmp_path / "setup.py").write_text("import setuptools\nsetuptools.setup(name='x')\n")
    assert project.declared_extras(tmp_path) == frozenset()
    with pytest.raises(ValidationError, match="declares: none"):
        project.check_extras(tmp_path, ("gpu",), setup_py=True)


def test_unreadable_setup_py_is_not_a_verdict(tmp_path: Path) -> None:
    (tmp_path / "setup.py").write_text("def broken(:\n")
    assert project.declared_extras(tmp_path) is None
    project.check_extras(tmp_path, ("dev",), setup_py=True)  # pip will have its say
