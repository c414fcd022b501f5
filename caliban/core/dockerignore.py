"""``.dockerignore`` matching and a build-context walker that honours it.

We send the build context to the Engine API ourselves, so the filtering the
docker CLI would do has to happen here, with the same results:

* each line is a pattern; a line whose *first* character is ``#`` is a comment
  (``  # x`` is a pattern, as in Docker), blank lines are skipped;
* patterns are trimmed, cleaned like Go's ``filepath.Clean`` and lose one
  leading ``/``, so ``/data``, ``data/`` and ``./data`` all mean ``data``;
* the syntax is Go's ``filepath.Match`` (``*``, ``?``, ``[a-c]``, ``[^a]``,
  ``\\`` escapes) plus ``**``, which spans any number of directories;
* a path is excluded when the last pattern matching it, or matching one of its
  parent directories, is not a ``!`` exception.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from caliban.errors import ConfigError

__all__ = ["ContextRules", "DockerIgnore", "walk_context"]

IGNORE_FILE = ".dockerignore"

# Bound on the per-directory match memo, so a long-lived matcher stays small.
_MAX_REMEMBERED = 50_000


def go_clean(path: str) -> str:
    """Lexically clean a slash path exactly as Go's ``path.Clean`` does.

    ``posixpath.normpath`` is close but keeps a leading ``//``, which Go folds.
    """
    if not path:
        return "."
    rooted = path.startswith("/")
    parts: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if parts and parts[-1] != "..":
                parts.pop()
            elif not rooted:
                # A relative path may climb above its start; a rooted one cannot.
                parts.append(part)
            continue
        parts.append(part)
    cleaned = "/".join(parts)
    if rooted:
        return "/" + cleaned
    return cleaned or "."


# One token of a translated pattern: its regex text, and whether it is a path
# separator or a "**" (the two things can_prune needs to see).
@dataclass(frozen=True, slots=True)
class _Token:
    regex: str
    separator: bool = False
    globstar: bool = False


def _translate_class(pattern: str, start: int) -> tuple[str, int]:
    """Translate the ``[...]`` class opening at ``pattern[start]``.

    Follows Go's ``filepath.Match`` grammar: an optional ``^`` negates, the class
    must hold at least one item, and ``-`` or ``]`` must be escaped to be literal.
    Returns the Python regex for it and the index just past the closing ``]``.
    """
    i = start + 1
    negated = i < len(pattern) and pattern[i] == "^"
    if negated:
        i += 1
    items: list[str] = []

    def read_char(j: int) -> tuple[str, int]:
        if j >= len(pattern) or pattern[j] in "-]":
            raise _bad(pattern)
        if pattern[j] == "\\":
            j += 1
            if j >= len(pattern):
                raise _bad(pattern)
        return pattern[j], j + 1

    while True:
        if i < len(pattern) and pattern[i] == "]" and items:
            return "[" + ("^" if negated else "") + "".join(items) + "]", i + 1
        low, i = read_char(i)
        high = low
        if i < len(pattern) and pattern[i] == "-":
            high, i = read_char(i + 1)
        if i >= len(pattern):
            # Go rejects a class that runs to the end of the pattern.
            raise _bad(pattern)
        if high < low:
            raise _bad(pattern)
        items.append(re.escape(low) if low == high else f"{re.escape(low)}-{re.escape(high)}")


def _bad(pattern: str) -> ConfigError:
    return ConfigError(
        f"{IGNORE_FILE}: malformed pattern {pattern!r}",
        hint="patterns use Go filepath.Match syntax: check '[...]' classes and '\\' escapes",
    )


def _tokenize(pattern: str) -> list[_Token]:
    """Turn a cleaned pattern into regex tokens, the way Docker's matcher does."""
    tokens: list[_Token] = []
    i = 0
    n = len(pattern)
    while i < n:
        ch = pattern[i]
        if ch == "*":
            if i + 1 < n and pattern[i + 1] == "*":
                i += 2
                # "**/" is the same as "**": the slash is swallowed.
                if i < n and pattern[i] == "/":
                    i += 1
                # At the end "**" takes everything; elsewhere it stands for
                # zero or more whole directories.
                tokens.append(_Token(".*" if i >= n else "(?:.*/)?", globstar=True))
                continue
            tokens.append(_Token("[^/]*"))
        elif ch == "?":
            tokens.append(_Token("[^/]"))
        elif ch == "[":
            regex, i = _translate_class(pattern, i)
            tokens.append(_Token(regex))
            continue
        elif ch == "\\":
            if i + 1 >= n:
                # Go's filepath.Match refuses a dangling escape.
                raise _bad(pattern)
            i += 1
            escaped = pattern[i]
            tokens.append(_Token(re.escape(escaped), separator=escaped == "/"))
        elif ch == "/":
            tokens.append(_Token("/", separator=True))
        else:
            tokens.append(_Token(re.escape(ch)))
        i += 1
    return tokens


class _Pattern:
    """One ``.dockerignore`` line, compiled."""

    __slots__ = ("exception", "regex", "segments", "text")

    def __init__(self, text: str, exception: bool) -> None:
        self.text = text
        self.exception = exception
        tokens = _tokenize(text)
        self.regex = re.compile("".join(t.regex for t in tokens))
        # Per path component: None when the component holds a "**" (it may span
        # any number of components), else a regex for exactly one component.
        self.segments: list[re.Pattern[str] | None] = []
        current: list[_Token] = []
        for token in [*tokens, _Token("", separator=True)]:
            if token.separator:
                if any(t.globstar for t in current):
                    self.segments.append(None)
                else:
                    self.segments.append(re.compile("".join(t.regex for t in current)))
                current = []
            else:
                current.append(token)

    def could_match_below(self, parts: list[str]) -> bool:
        """Could this pattern match some path strictly inside directory ``parts``?

        Conservative: a ``**`` reached before any mismatch answers yes.
        """
        for index, segment in enumerate(self.segments):
            if segment is None or index >= len(parts):
                return True
            if not segment.fullmatch(parts[index]):
                return False
        # The pattern matches the directory itself or one of its parents, so it
        # matches everything inside as well.
        return True


def _normalize_relpath(relpath: str) -> str:
    cleaned = go_clean(relpath.replace(os.sep, "/"))
    return cleaned.lstrip("/") or "."


class DockerIgnore:
    """A parsed ``.dockerignore``: which context paths the daemon never sees."""

    def __init__(self, patterns: Sequence[_Pattern] = ()) -> None:
        self._patterns = tuple(patterns)
        # Per directory, which patterns match it or one of its parents: a walk
        # asks about every entry of a directory, so the parents' answers repeat.
        self._dir_hits: dict[str, tuple[bool, ...]] = {}
        self._union: re.Pattern[str] | None = None

    @property
    def patterns(self) -> tuple[str, ...]:
        """The cleaned patterns, ``!`` exceptions included, in file order."""
        return tuple(("!" if p.exception else "") + p.text for p in self._patterns)

    def __bool__(self) -> bool:
        return bool(self._patterns)

    def __repr__(self) -> str:
        return f"DockerIgnore({list(self.patterns)!r})"

    @classmethod
    def parse(cls, text: str) -> DockerIgnore:
        """Parse the text of a ``.dockerignore`` file.

        Raises ``ConfigError`` for a lone ``!`` or a malformed pattern, which
        Docker refuses too.
        """
        patterns: list[_Pattern] = []
        # Go's line scanner splits on "\n" only and drops one trailing "\r";
        # str.splitlines would also split on form feeds and the like.
        for number, raw in enumerate(text.split("\n"), start=1):
            line = raw.removesuffix("\r")
            if number == 1:
                line = line.removeprefix("\ufeff")
            # The comment test comes before trimming, as in Docker: an indented
            # "#" is an ordinary pattern character.
            if line.startswith("#"):
                continue
            line = line.strip()
            if not line:
                continue
            exception = line.startswith("!")
            if exception:
                line = line[1:].strip()
                if not line:
                    raise ConfigError(
                        f"{IGNORE_FILE} line {number}: illegal exclusion pattern '!'",
                        hint="a '!' must be followed by the pattern to re-include",
                    )
            line = go_clean(line)
            if len(line) > 1 and line.startswith("/"):
                line = line[1:]
            patterns.append(_Pattern(line, exception))
        return cls(patterns)

    @classmethod
    def load(cls, folder: os.PathLike[str] | str) -> DockerIgnore:
        """Read ``folder/.dockerignore``; a folder without one excludes nothing."""
        path = Path(folder) / IGNORE_FILE
        try:
            # Undecodable bytes survive as surrogates, like file names from os.scandir.
            text = path.read_text(encoding="utf-8", errors="surrogateescape")
        except FileNotFoundError:
            return cls()
        except OSError as err:
            raise ConfigError(f"cannot read {path}: {err.strerror or err}") from err
        return cls.parse(text)

    def _hits(self, path: str, remember: bool = False) -> tuple[bool, ...]:
        """For each pattern, whether it matches ``path`` or one of its parents.

        That "or a parent" is how a directory pattern excludes what is inside.
        """
        known = self._dir_hits.get(path)
        if known is not None:
            return known
        parent = path.rpartition("/")[0]
        inherited = self._hits(parent, True) if parent else (False,) * len(self._patterns)
        hits = tuple(
            hit or pattern.regex.fullmatch(path) is not None
            for hit, pattern in zip(inherited, self._patterns, strict=True)
        )
        if remember:
            if len(self._dir_hits) >= _MAX_REMEMBERED:
                self._dir_hits.clear()
            self._dir_hits[path] = hits
        return hits

    def _last_match(self, path: str) -> int | None:
        """Index of the last pattern that matches ``path`` (or a parent of it)."""
        hits = self._hits(path)
        for index in range(len(hits) - 1, -1, -1):
            if hits[index]:
                return index
        return None

    def excluded(self, relpath: str, is_dir: bool = False) -> bool:
        """Whether Docker leaves ``relpath`` (relative to the context root) out.

        ``is_dir`` does not change the answer: Docker strips trailing slashes from
        patterns, so ``data/`` excludes a file called ``data`` too. It is accepted
        so callers can say what they have without caring.
        """
        del is_dir
        path = _normalize_relpath(relpath)
        if path == ".":
            # The context root itself is always sent.
            return False
        index = self._last_match(path)
        return index is not None and not self._patterns[index].exception

    def matches(self, relpath: str) -> bool:
        """Whether a (non ``!``) pattern matches ``relpath`` itself, parents aside.

        The credential rules use this: re-including a folder must not bring
        back the key file inside it, only naming the file (or a pattern for it) does.
        """
        if self._union is None:
            plain = [p.regex.pattern for p in self._patterns if not p.exception]
            # One alternation instead of a loop: the walk asks this of every entry.
            self._union = re.compile("|".join(f"(?:{r})" for r in plain) if plain else "(?!)")
        return self._union.fullmatch(_normalize_relpath(relpath)) is not None

    def could_match_below(self, reldir: str) -> bool:
        """Whether a (non ``!``) pattern could match something strictly inside ``reldir``."""
        parts = _normalize_relpath(reldir).split("/")
        return any(not p.exception and p.could_match_below(parts) for p in self._patterns)

    def can_prune(self, reldir: str) -> bool:
        """True when nothing under the excluded directory ``reldir`` can be sent.

        Every path below a directory is matched by the pattern that excluded the
        directory, so only ``!`` exceptions *after* that pattern can bring
        something back; if none of them could match inside, the walk may skip it.
        """
        path = _normalize_relpath(reldir)
        if path == ".":
            return False
        index = self._last_match(path)
        if index is None or self._patterns[index].exception:
            return False
        parts = path.split("/")
        return not any(
            p.exception and p.could_match_below(parts) for p in self._patterns[index + 1 :]
        )


class ContextRules(Protocol):
    """What :func:`walk_context` asks: a :class:`DockerIgnore`, or rules layered on one."""

    def excluded(self, relpath: str, is_dir: bool = False) -> bool: ...

    def can_prune(self, reldir: str) -> bool: ...


def _include_roots(base: str, include: Sequence[str]) -> list[tuple[str, os.stat_result]]:
    """Validate and de-overlap the include list, in walk order."""
    found: dict[str, os.stat_result] = {}
    for given in include:
        if os.path.isabs(given):
            raise ConfigError(f"build context path {given!r} must be relative to {base}")
        rel = _normalize_relpath(given)
        if rel == ".." or rel.startswith("../"):
            raise ConfigError(f"build context path {given!r} is outside {base}")
        if rel != ".":
            # Refuse to reach the path through a symlinked directory: that would
            # send files from outside the folder.
            parts = rel.split("/")
            for k in range(1, len(parts)):
                parent = os.path.join(base, *parts[:k])
                try:
                    mode = os.lstat(parent).st_mode
                except FileNotFoundError:
                    break
                if not stat.S_ISDIR(mode):
                    raise ConfigError(
                        f"build context path {given!r} goes through "
                        f"{'/'.join(parts[:k])!r}, which is not a directory"
                    )
        try:
            found[rel] = os.lstat(os.path.join(base, rel))
        except FileNotFoundError:
            raise ConfigError(f"build context path {given!r} does not exist in {base}") from None
    # A path under another included path is already covered by it.
    kept = [
        rel
        for rel in found
        if rel == "."
        or not any(other == "." or rel.startswith(other + "/") for other in found if other != rel)
    ]
    kept.sort(key=lambda rel: [] if rel == "." else rel.split("/"))
    return [(rel, found[rel]) for rel in kept]


def _children(base: str, rel: str) -> list[tuple[str, os.stat_result]]:
    """Entries of directory ``rel``, sorted by name, with their lstat."""
    directory = base if rel == "." else os.path.join(base, rel)
    try:
        with os.scandir(directory) as entries:
            listed = [(entry.name, entry.stat(follow_symlinks=False)) for entry in entries]
    except OSError as err:
        # Docker fails the build on an unreadable directory it has to send; say which.
        raise ConfigError(
            f"cannot read {rel!r} in the build context: {err.strerror or err}",
            hint=f"fix its permissions or add it to {IGNORE_FILE}",
        ) from err
    listed.sort(key=lambda item: item[0])
    prefix = "" if rel == "." else rel + "/"
    return [(prefix + name, st) for name, st in listed]


def walk_context(
    root: str | os.PathLike[str], include: Sequence[str], ignore: ContextRules
) -> Iterator[tuple[str, os.stat_result]]:
    """Yield ``(relpath, lstat)`` for everything of ``include`` Docker would send.

    Directories, regular files and symlinks are yielded depth first with each
    directory's entries sorted by name; other file types are skipped. Symlinks
    are never followed. An excluded directory is still descended into when a
    ``!`` exception may re-include something inside it, and is then yielded
    just before the first such entry (as BuildKit does), so a tar built from
    this output always has a parent entry with the real permissions. The same
    holds for the parent directories of an included path such as
    ``trainer/sub``. The context root itself is never yielded.

    Raises ``ConfigError`` naming an ``include`` path that does not exist or
    lies outside ``root``, or a directory that has to be read and cannot be.
    """
    base = os.fspath(root)
    yielded_dirs: set[str] = set()
    for start, start_stat in _include_roots(base, include):
        # Directories above the include path, waiting to be yielded if (and only
        # if) something below them is.
        pending: list[tuple[str, os.stat_result]] = []
        if start == ".":
            stack = list(reversed(_children(base, ".")))
        else:
            stack = [(start, start_stat)]
            parts = start.split("/")
            for k in range(1, len(parts)):
                parent = "/".join(parts[:k])
                pending.append((parent, os.lstat(os.path.join(base, parent))))
        # An explicit stack, not recursion, so deep trees cannot hit the
        # interpreter's recursion limit.
        while stack:
            rel, st = stack.pop()
            # Leaving a subtree: its pending parents no longer apply.
            while pending and not rel.startswith(pending[-1][0] + "/"):
                pending.pop()
            is_dir = stat.S_ISDIR(st.st_mode)
            if not (is_dir or stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)):
                continue
            if ignore.excluded(rel, is_dir):
                if is_dir and not ignore.can_prune(rel):
                    pending.append((rel, st))
                    stack.extend(reversed(_children(base, rel)))
                continue
            for parent, parent_stat in pending:
                if parent not in yielded_dirs:
                    yielded_dirs.add(parent)
                    yield parent, parent_stat
            pending.clear()
            if is_dir:
                if rel not in yielded_dirs:
                    yielded_dirs.add(rel)
                    yield rel, st
                stack.extend(reversed(_children(base, rel)))
            else:
                yield rel, st
