"""``.dockerignore`` semantics, checked case by case against what Docker sends.

Every row of ``CASES`` was compared with the files a BuildKit build on Docker
20.10 actually received (``docker build -o type=local`` of ``FROM scratch``
plus ``COPY . /``), except where a comment says otherwise.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from caliban.core.dockerignore import DockerIgnore, go_clean, walk_context
from caliban.errors import ConfigError

# (dockerignore text, relative path, excluded?)
CASES: list[tuple[str, str, bool]] = [
    # Comments only count when "#" is the very first character of the line.
    ("# comment\n*.pyc", "a.pyc", True),
    ("# comment\n*.pyc", "# comment", False),
    ("  # not a comment\n#data", "data/keep.txt", False),
    ("  # not a comment", "# not a comment", True),
    # "*" stays inside one directory; "**" crosses them.
    ("*.pyc", "a.pyc", True),
    ("*.pyc", "b/c.pyc", False),
    ("**/*.pyc", "a.pyc", True),
    ("**/*.pyc", "b/d/__pycache__/n.pyc", True),
    ("**/*.pyc", "b/c.py", False),
    ("*/*.pyc", "b/c.pyc", True),
    ("*/*.pyc", "b/d/__pycache__/n.pyc", False),
    ("b/**/*.pyc", "b/c.pyc", True),
    ("b/**/*.pyc", "b/d/__pycache__/n.pyc", True),
    # Trailing and leading slashes, "./" and other cleaning all vanish.
    ("data/", "data", True),
    ("data/", "data/sub/deep.txt", True),
    ("data/", "src/data/file", False),
    ("/data", "data/x.bin", True),
    ("./data", "data/keep.txt", True),
    (" data ", "data/keep.txt", True),
    ("data/./sub", "data/sub/deep.txt", True),
    ("data/./sub", "data/keep.txt", False),
    ("data/sub/..", "data/keep.txt", True),
    ("data", "data.txt", False),
    ("data", "ndata/q", False),
    ("**/data", "src/data/file", True),
    ("**/data", "data/keep.txt", True),
    # Directory patterns exclude what is below them.
    ("**/__pycache__", "b/__pycache__/m.pyc", True),
    ("**/__pycache__", "b/d/__pycache__", True),
    ("**/__pycache__", "b/d/e.py", False),
    ("b/*/__pycache__", "b/d/__pycache__/n.pyc", True),
    ("b/*/__pycache__", "b/__pycache__/m.pyc", False),
    ("data/**", "data/keep.txt", True),
    ("data/**", "data", False),
    # "?" is exactly one character, never a slash.
    ("temp?", "temp1", True),
    ("temp?", "tempA/f", True),
    ("temp?", "temp12", False),
    ("d?t?", "data/keep.txt", True),
    ("d?t?", "date", True),
    ("a.py?", "a.pyc", True),
    ("a.py?", "a.py", False),
    # Character classes, Go style: "^" negates, "!" is an ordinary character.
    ("[a-c]*", "apple", True),
    ("[a-c]*", "cherry", True),
    ("[a-c]*", "date", False),
    ("[^a-c]*", "date", True),
    ("[^a-c]*", "banana", False),
    ("[!a]*", "!bang", True),
    ("[!a]*", "apple", True),
    ("[!a]*", "banana", False),
    ("\\!bang", "!bang", True),
    # The last matching pattern wins.
    ("*.txt\n!keep.txt", "keep.txt", False),
    ("*.txt\n!keep.txt", "data.txt", True),
    ("*.txt\n!keep.txt\n*.txt", "keep.txt", True),
    ("!keep.txt\n*", "keep.txt", True),
    ("data\n!data", "data/x.bin", False),
    ("**/*.txt\n!data", "data/keep.txt", False),
    ("**/*.txt\n!data", "src/keep.txt", True),
    ("**/keep.txt\n!src/**", "src/keep.txt", False),
    # Exceptions reach into excluded directories.
    ("data\n!data/keep.txt", "data/keep.txt", False),
    ("data\n!data/keep.txt", "data/x.bin", True),
    ("data\n!data/keep.txt", "data", True),
    ("data\n!data/sub", "data/sub/deep.txt", False),
    ("data/*\n!data/sub/deep.txt", "data/sub/deep.txt", False),
    ("data/*\n!data/sub/deep.txt", "data/x.bin", True),
    ("*\n!b", "b/d/e.py", False),
    ("*\n!b", "a.py", True),
    ("*.py\n!b/d", "b/d/e.py", False),
    ("*.py\n!b/d", "a.py", True),
    ("src\n!src/keep.txt\nsrc/keep.txt", "src/keep.txt", True),
    # Docker 20.10's sender pruned "data" here despite the exception; current
    # BuildKit (and this module) look inside when an exception has wildcards.
    ("data\n!**/keep.txt", "data/keep.txt", False),
    ("data\n!**/keep.txt", "data/x.bin", True),
    # Version control and friends.
    (".git", ".git/objects/ab", True),
    (".git", ".gitignore", False),
    ("**", "b/d/e.py", True),
    # Windows line endings are just line endings.
    ("data\r\n!data/x.bin\r\n", "data/x.bin", False),
    ("data\r\n!data/x.bin\r\n", "data/keep.txt", True),
    # A leading byte order mark is not part of the first pattern.
    ("\ufeffdata", "data/x.bin", True),
]


@pytest.mark.parametrize(("text", "path", "expected"), CASES)
def test_excluded_matches_docker(text: str, path: str, expected: bool) -> None:
    assert DockerIgnore.parse(text).excluded(path) is expected


def test_root_is_never_excluded() -> None:
    ignore = DockerIgnore.parse("*\n**")
    assert not ignore.excluded(".")
    assert not ignore.can_prune(".")


def test_relpath_spelling_does_not_matter() -> None:
    ignore = DockerIgnore.parse("data")
    assert ignore.excluded("./data/", is_dir=True)
    assert ignore.excluded("data//x.bin")


def test_patterns_are_cleaned() -> None:
    ignore = DockerIgnore.parse("# c\n/data/\n! ./keep.txt\n\n  \n**/x/../y\n")
    assert ignore.patterns == ("data", "!keep.txt", "**/y")
    assert not DockerIgnore.parse("# only a comment\n\n")


@pytest.mark.parametrize("text", ["!", "data\n!  ", "[", "a[]", "[a-]", "[b-a]", "foo\\", "[\\"])
def test_bad_patterns_are_config_errors(text: str) -> None:
    with pytest.raises(ConfigError):
        DockerIgnore.parse(text)


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("", "."),
        ("a//b/", "a/b"),
        ("./a/./b", "a/b"),
        ("a/../../b", "../b"),
        ("/../a", "/a"),
        ("//a", "/a"),
        ("a/..", "."),
    ],
)
def test_go_clean(path: str, expected: str) -> None:
    assert go_clean(path) == expected


@pytest.mark.parametrize(
    ("text", "directory", "expected"),
    [
        ("data", "data", True),
        ("data\n!data/keep.txt", "data", False),
        ("data\n!data/keep.txt", "data/sub", True),
        ("data\n!data/*/deep.txt", "data/sub", False),
        ("data\n!data/*/deep.txt", "data/sub/deeper", True),
        ("data\n!**/keep.txt", "data/sub", False),
        # An exception before the excluding pattern cannot bring anything back.
        ("!data/keep.txt\ndata", "data", True),
        ("*\n!b", "data", True),
        ("*\n!b", "b", False),  # not excluded at all
        ("*.py\n!b/d", "b", False),
        ("other", "data", False),
    ],
)
def test_can_prune(text: str, directory: str, expected: bool) -> None:
    assert DockerIgnore.parse(text).can_prune(directory) is expected


_SEGMENTS = st.sampled_from(["a", "b", "ab", "*", "?", "**", "[ab]", "a*", "[^a]"])
_PATTERNS = st.builds(
    lambda bang, parts: ("!" if bang else "") + "/".join(parts),
    st.booleans(),
    st.lists(_SEGMENTS, min_size=1, max_size=4),
)
_PATHS = st.lists(st.sampled_from(["a", "b", "ab", "ba"]), min_size=1, max_size=5).map("/".join)


@settings(max_examples=300, deadline=None)
@given(st.lists(_PATTERNS, min_size=1, max_size=5), _PATHS)
def test_pruning_never_hides_an_included_path(patterns: list[str], path: str) -> None:
    """If can_prune says a directory may be skipped, nothing below it is sent."""
    ignore = DockerIgnore.parse("\n".join(patterns))
    fresh = DockerIgnore.parse("\n".join(patterns))
    parts = path.split("/")
    for depth in range(1, len(parts)):
        directory = "/".join(parts[:depth])
        if ignore.can_prune(directory):
            assert ignore.excluded(path), (directory, path)
    # Answers do not depend on what was asked before (the per-directory memo).
    assert ignore.excluded(path) == fresh.excluded(path)


def test_load_reads_the_folder_file(tmp_path: Path) -> None:
    assert not DockerIgnore.load(tmp_path)
    (tmp_path / ".dockerignore").write_text("*.pyc\n")
    assert DockerIgnore.load(str(tmp_path)).excluded("a.pyc")


def test_load_reports_an_unreadable_file(tmp_path: Path) -> None:
    (tmp_path / ".dockerignore").mkdir()
    with pytest.raises(ConfigError, match=r"\.dockerignore"):
        DockerIgnore.load(tmp_path)


def _tree(root: Path) -> None:
    for rel in [
        "a.py",
        "a.pyc",
        "b/c.py",
        "b/__pycache__/m.pyc",
        "data/keep.txt",
        "data/x.bin",
        "data/sub/deep.txt",
        "trainer/train.py",
        "trainer/util/io.py",
    ]:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(rel)
    (root / "empty").mkdir()
    (root / "outside").mkdir()
    (root / "trainer" / "link").symlink_to(root / "outside")
    (root / "dangling").symlink_to(root / "missing")
    os.mkfifo(root / "fifo")


def test_walk_context_whole_folder(tmp_path: Path) -> None:
    _tree(tmp_path)
    ignore = DockerIgnore.parse("**/*.pyc\n**/__pycache__\ndata\n!data/sub/deep.txt\noutside")
    walked = list(walk_context(tmp_path, ["."], ignore))
    assert [rel for rel, _ in walked] == [
        "a.py",
        "b",
        "b/c.py",
        "dangling",
        # "data" itself is excluded, but is sent ahead of what is re-included.
        "data",
        "data/sub",
        "data/sub/deep.txt",
        "empty",
        "trainer",
        "trainer/link",
        "trainer/train.py",
        "trainer/util",
        "trainer/util/io.py",
    ]
    stats = dict(walked)
    # Symlinks are reported, not followed, whether or not their target exists.
    assert stat.S_ISLNK(stats["trainer/link"].st_mode)
    assert stat.S_ISLNK(stats["dangling"].st_mode)
    assert stat.S_ISDIR(stats["data"].st_mode)
    assert stat.S_ISREG(stats["a.py"].st_mode)


def test_walk_context_includes_are_deduplicated(tmp_path: Path) -> None:
    _tree(tmp_path)
    ignore = DockerIgnore.parse("*.pyc")
    once = [rel for rel, _ in walk_context(tmp_path, ["."], ignore)]
    twice = [rel for rel, _ in walk_context(tmp_path, ["trainer", ".", "./a.py"], ignore)]
    assert once == twice
    assert len(set(once)) == len(once)


def test_walk_context_subset_and_parents(tmp_path: Path) -> None:
    _tree(tmp_path)
    walked = [
        rel
        for rel, _ in walk_context(
            tmp_path,
            ["trainer/util/", "a.py", "trainer/util/io.py", "data/keep.txt"],
            DockerIgnore(),
        )
    ]
    # Parents of an included path come first, each once; order is by path parts.
    assert walked == [
        "a.py",
        "data",
        "data/keep.txt",
        "trainer",
        "trainer/util",
        "trainer/util/io.py",
    ]


def test_walk_context_excluded_include_yields_nothing(tmp_path: Path) -> None:
    _tree(tmp_path)
    assert list(walk_context(tmp_path, ["data"], DockerIgnore.parse("data"))) == []


@pytest.mark.parametrize("bad", ["missing", "trainer/nope.py", "../elsewhere", "/etc"])
def test_walk_context_rejects_bad_includes(tmp_path: Path, bad: str) -> None:
    _tree(tmp_path)
    with pytest.raises(ConfigError, match="build context path"):
        list(walk_context(tmp_path, ["a.py", bad], DockerIgnore()))


def test_walk_context_does_not_reach_through_symlinks(tmp_path: Path) -> None:
    _tree(tmp_path)
    (tmp_path / "outside" / "secret").write_text("x")
    with pytest.raises(ConfigError, match="not a directory"):
        list(walk_context(tmp_path, ["trainer/link/secret"], DockerIgnore()))


def test_walk_context_prunes_without_reading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _tree(tmp_path)
    (tmp_path / "data" / "locked").mkdir()
    real_scandir = os.scandir

    def scandir(path: str) -> os._ScandirIterator[str]:
        # Stand-in for an unreadable directory (the tests may run as root).
        if os.fspath(path).endswith("locked"):
            raise PermissionError(13, "Permission denied")
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    # A prunable directory is never opened, so it cannot fail the walk...
    walked = [rel for rel, _ in walk_context(tmp_path, ["."], DockerIgnore.parse("data"))]
    assert not any(rel.startswith("data") for rel in walked)
    # ...but one that must be searched for exceptions is opened, and fails clearly.
    with pytest.raises(ConfigError, match="data/locked"):
        list(walk_context(tmp_path, ["."], DockerIgnore.parse("data\n!**/keep.txt")))
