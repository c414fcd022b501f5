"""Imports inside ``caliban/`` form no cycle and only point down the layers.

Every ``import`` statement counts: at module level, inside functions and under
``if TYPE_CHECKING:`` (a type-only import still ties two modules together for
mypy, for readers and for the next person who moves it out of the guard).
Modules loaded by name through ``importlib`` (the lazy platform registry, the
package's lazy exports) are not statements and are not counted.
"""

from __future__ import annotations

import ast
import fnmatch
import itertools
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

# The layers, lowest first. A module may import modules of its own layer and of
# the layers listed before it, never one listed after. The first pattern that
# matches a module places it, so the platform seam sits above the platforms.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "vocabulary",
        (
            "caliban.errors",
            "caliban.events",
            "caliban.spec",
            "caliban.options",
            "caliban.core",
            "caliban.core.*",
        ),
    ),
    ("limits", ("caliban.limits",)),
    ("adapters", ("caliban.adapters", "caliban.adapters.*")),
    ("platform seam", ("caliban.platforms", "caliban.platforms.base")),
    ("platforms", ("caliban.platforms.*",)),
    ("sweep", ("caliban.sweep", "caliban.sweep.*")),
    ("dev", ("caliban.dev", "caliban.dev.*")),
    ("session", ("caliban.session",)),
    ("cli", ("caliban.cli", "caliban.cli.*")),
)
# Packages under this prefix are islands: each may import its own modules and
# lower layers, never another package beside it (vertex never imports local).
ISLANDS = "caliban.platforms"
# The public face: lazy by design, so exempt from the layer order (it may name
# anything) but not from the cycle check.
PUBLIC_FACE = frozenset({"caliban", "caliban.__main__"})

ROOT = Path(__file__).resolve().parents[2] / "caliban"


@dataclass(frozen=True)
class Source:
    path: str
    text: str
    is_package: bool


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    line: int


def discover(root: Path = ROOT) -> dict[str, Source]:
    """Every module of the package under ``root``, by dotted name."""
    modules: dict[str, Source] = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts.pop()
        shown = str(path.relative_to(root.parent))
        modules[".".join(parts)] = Source(shown, path.read_text(encoding="utf-8"), is_package)
    return modules


def _absolute(module: str, is_package: bool, level: int, name: str | None) -> str:
    """The absolute name a (possibly relative) ``from`` import refers to."""
    if level == 0:
        return name or ""
    package = module.split(".") if is_package else module.split(".")[:-1]
    base = package[: len(package) - (level - 1)]
    return ".".join([*base, name] if name else base)


def _known(name: str, modules: Mapping[str, Source]) -> str | None:
    """``name`` or its nearest ancestor that is one of ``modules``."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in modules:
            return candidate
        parts.pop()
    return None


def edges(modules: Mapping[str, Source], package: str = "caliban") -> Iterator[Edge]:
    """Every import statement of ``modules`` that names a module of ``package``."""
    for name, src in modules.items():
        seen: set[tuple[str, int]] = set()
        tree = ast.parse(src.text, filename=src.path)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                targets = []
                base = _absolute(name, src.is_package, node.level, node.module)
                for alias in node.names:
                    # `from pkg import mod` names the submodule when there is one,
                    # else an attribute of `pkg` itself.
                    sub = f"{base}.{alias.name}"
                    targets.append(sub if sub in modules else base)
            else:
                continue
            for target in targets:
                if target != package and not target.startswith(package + "."):
                    continue
                known = _known(target, modules)
                if known is not None and known != name and (known, node.lineno) not in seen:
                    seen.add((known, node.lineno))
                    yield Edge(name, known, node.lineno)


def layer_of(module: str) -> int | None:
    for index, (_, patterns) in enumerate(LAYERS):
        if any(fnmatch.fnmatchcase(module, p) for p in patterns):
            return index
    return None


def island_of(module: str) -> str | None:
    """``caliban.platforms.<name>`` for a module of a platform package."""
    parts = module.split(".")
    prefix = ISLANDS.split(".")
    if parts[: len(prefix)] != prefix or len(parts) <= len(prefix):
        return None
    if layer_of(module) != layer_of(f"{ISLANDS}.*"):
        return None  # the seam itself (base.py) is no island
    return ".".join(parts[: len(prefix) + 1])


def layer_violations(modules: Mapping[str, Source]) -> list[str]:
    found: list[str] = []
    for name in sorted(modules):
        if name not in PUBLIC_FACE and layer_of(name) is None:
            found.append(f"{modules[name].path}: {name} is in no layer; add it to LAYERS")
    for edge in sorted(edges(modules), key=lambda e: (e.source, e.line, e.target)):
        if edge.source in PUBLIC_FACE:
            continue
        where = f"{modules[edge.source].path}:{edge.line}"
        if edge.target in PUBLIC_FACE:
            found.append(
                f"{where}: {edge.source} imports {edge.target}, the public face; "
                "import the module that defines the name"
            )
            continue
        low, high = layer_of(edge.source), layer_of(edge.target)
        if low is None or high is None:
            continue  # reported above
        if high > low:
            found.append(
                f"{where}: {edge.source} ({LAYERS[low][0]}) imports "
                f"{edge.target} ({LAYERS[high][0]}), a higher layer"
            )
            continue
        mine, theirs = island_of(edge.source), island_of(edge.target)
        if mine is not None and theirs is not None and mine != theirs:
            found.append(
                f"{where}: {edge.source} imports {edge.target}: platform packages "
                "do not import one another"
            )
    return found


def _components(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (iterative Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    result: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                members: list[str] = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    members.append(top)
                    if top == node:
                        break
                if len(members) > 1:
                    result.append(sorted(members))
    return sorted(result)


def _shortest_cycle(graph: Mapping[str, set[str]], start: str, within: set[str]) -> list[str]:
    """The shortest path ``start -> ... -> start`` inside one component."""
    previous: dict[str, str] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for child in sorted(graph.get(node, ())):
            if child not in within:
                continue
            if child == start:
                path = [node]
                while path[-1] != start:
                    path.append(previous[path[-1]])
                return [*reversed(path), start]
            if child not in previous:
                previous[child] = node
                queue.append(child)
    raise AssertionError(f"{start} is on no cycle")


def cycles(modules: Mapping[str, Source]) -> list[str]:
    """One line per import cycle: the shortest one through each module of each
    strongly connected component, each cycle once, with the lines that make it."""
    graph: dict[str, set[str]] = {name: set() for name in modules}
    lines: dict[tuple[str, str], int] = {}
    for edge in edges(modules):
        graph[edge.source].add(edge.target)
        lines.setdefault((edge.source, edge.target), edge.line)
    found: list[str] = []
    for component in _components(graph):
        within = set(component)
        seen: set[frozenset[tuple[str, str]]] = set()
        for start in component:
            chain = _shortest_cycle(graph, start, within)
            steps = frozenset(itertools.pairwise(chain))
            if steps in seen:
                continue
            seen.add(steps)
            shown = chain[0] + "".join(
                f" -> {b} ({modules[a].path}:{lines[(a, b)]})" for a, b in itertools.pairwise(chain)
            )
            found.append(f"cycle among {len(component)} modules: {shown}")
    return found


def _report(title: str, problems: Iterable[str]) -> str:
    return "\n".join([title, *(f"  {p}" for p in problems)])


def test_no_import_cycle() -> None:
    modules = discover()
    assert "caliban.session" in modules  # the walk found the package
    found = cycles(modules)
    assert not found, _report("import cycles inside caliban/:", found)


def test_imports_follow_the_layers() -> None:
    modules = discover()
    found = layer_violations(modules)
    assert not found, _report("imports against the layer order (see LAYERS):", found)


# -- the checker itself ------------------------------------------------------------------


def _synthetic(**texts: str) -> dict[str, Source]:
    """Modules from ``name=source`` pairs; ``__`` in a name stands for a dot and a
    trailing ``__init`` makes it a package."""
    modules: dict[str, Source] = {}
    for key, text in texts.items():
        name = key.replace("__", ".")
        is_package = name.endswith(".init")
        if is_package:
            name = name[: -len(".init")]
        modules[name] = Source(name.replace(".", "/") + ".py", text, is_package)
    return modules


def test_checker_reports_a_two_module_cycle_with_its_chain() -> None:
    modules = _synthetic(
        caliban__core__a="import caliban.core.b\n",
        caliban__core__b="def f() -> None:\n    from . import a\n",
        caliban__core__c="from caliban.core import a\n",
    )
    assert cycles(modules) == [
        "cycle among 2 modules: caliban.core.a -> caliban.core.b (caliban/core/a.py:1)"
        " -> caliban.core.a (caliban/core/b.py:2)"
    ]


def test_checker_reports_upward_and_sideways_imports() -> None:
    modules = _synthetic(
        caliban__spec="from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from caliban.session import Session\n",
        caliban__session="",
        caliban__platforms__init="",
        caliban__platforms__base="",
        caliban__platforms__vertex__init="",
        caliban__platforms__vertex__submit="from ..local import run\nfrom .. import base\n",
        caliban__platforms__local__init="",
        caliban__platforms__local__run="from caliban.platforms.local import gpus\n",
        caliban__platforms__local__gpus="",
        caliban__sweep__engine="import caliban.platforms.local.run\n",
        caliban__stray="",
    )
    assert layer_violations(modules) == [
        "caliban/stray.py: caliban.stray is in no layer; add it to LAYERS",
        "caliban/platforms/vertex/submit.py:1: caliban.platforms.vertex.submit imports "
        "caliban.platforms.local.run: platform packages do not import one another",
        "caliban/spec.py:3: caliban.spec (vocabulary) imports caliban.session (session), "
        "a higher layer",
    ]
    assert cycles(modules) == []


def test_checker_resolves_relative_imports_from_packages_and_modules() -> None:
    modules = _synthetic(
        caliban__init="",
        caliban__adapters__init="from . import store\n",
        caliban__adapters__store="from ..errors import StoreError\nfrom . import missing\n",
        caliban__errors="",
    )
    # `from . import missing` names an attribute of the package, so it depends
    # on the package's __init__: a real cycle with `from . import store` there.
    assert sorted((e.source, e.target) for e in edges(modules)) == [
        ("caliban.adapters", "caliban.adapters.store"),
        ("caliban.adapters.store", "caliban.adapters"),
        ("caliban.adapters.store", "caliban.errors"),
    ]
