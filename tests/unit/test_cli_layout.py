"""The command-line package imports one way: main assembles, the rest never reach back.

Read from the source (AST), not by importing, so that an import hidden in a
function body or an ``if TYPE_CHECKING:`` block counts as much as a top-level
one: either is a cycle waiting for the day someone moves it.
"""

from __future__ import annotations

import ast
import graphlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

CLI_DIR = Path(__file__).resolve().parents[2] / "caliban" / "cli"
PACKAGE = "caliban.cli"
ENTRY = f"{PACKAGE}.main"
MAY_IMPORT_ENTRY = {PACKAGE, ENTRY}  # the package re-exports main(); main is main
HEAVY = ["aiohttp", "aiodocker", "aiosqlite", "kubernetes_asyncio", "rich", "anyio"]

Edge = tuple[str, str, int]  # importer, imported, line


def module_names(root: Path, package: str) -> dict[str, Path]:
    names: dict[str, Path] = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join([package, *parts])] = path
    return names


def _package_of(module: str, path: Path) -> str:
    return module if path.name == "__init__.py" else module.rpartition(".")[0]


def _targets(node: ast.AST, module: str, path: Path, known: set[str]) -> list[str]:
    """The modules of ``known`` that one AST node imports."""
    found: list[str] = []
    if isinstance(node, ast.Import):
        found = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
        if node.level:
            base = _package_of(module, path)
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            base = f"{base}.{node.module}" if node.module else base
        else:
            base = node.module or ""
        for alias in node.names:
            sub = f"{base}.{alias.name}"
            # `from pkg import mod` imports the module; `from mod import name` the module
            found.append(sub if sub in known else base)
    elif (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute | ast.Name)
        and (node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id)
        == "import_module"
        and node.args
        and isinstance(node.args[0], ast.Constant)
        and isinstance(node.args[0].value, str)
    ):
        found = [node.args[0].value]
    return [name for name in found if name in known]


def import_edges(root: Path, package: str) -> list[Edge]:
    names = module_names(root, package)
    known = set(names)
    edges: list[Edge] = []
    for module, path in names.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):  # every node: function bodies and TYPE_CHECKING too
            for target in _targets(node, module, path, known):
                if target != module:
                    edges.append((module, target, getattr(node, "lineno", 0)))
    return edges


def entry_importers(edges: list[Edge], entry: str, allowed: set[str]) -> list[str]:
    return sorted({f"{a}:{line}" for a, b, line in edges if b == entry and a not in allowed})


def find_cycle(edges: list[Edge]) -> list[str] | None:
    graph: dict[str, set[str]] = {}
    for a, b, _ in edges:
        graph.setdefault(a, set()).add(b)
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as exc:
        cycle: list[str] = exc.args[1]
        return cycle
    return None


# -- the real package ----------------------------------------------------------------------


def test_the_scan_sees_the_package() -> None:
    # Guards the checks below against passing because they read nothing.
    edges = import_edges(CLI_DIR, PACKAGE)
    assert f"{PACKAGE}.cloud" in module_names(CLI_DIR, PACKAGE)
    assert (PACKAGE, ENTRY) in {(a, b) for a, b, _ in edges}
    assert any(a == f"{PACKAGE}.cloud" for a, _, _ in edges)


def test_no_subcommand_module_imports_main() -> None:
    offenders = entry_importers(import_edges(CLI_DIR, PACKAGE), ENTRY, MAY_IMPORT_ENTRY)
    assert offenders == [], f"these import {ENTRY}; move what they need to a shared module"


def test_cli_modules_import_without_cycles() -> None:
    cycle = find_cycle(import_edges(CLI_DIR, PACKAGE))
    assert cycle is None, f"import cycle: {' -> '.join(cycle or [])}"


# -- the checker itself, on packages written for the purpose ---------------------------------


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).write_text(text, encoding="utf-8")
    return root


@pytest.mark.parametrize(
    "source",
    [
        "from pkg.main import helper\n",
        "import pkg.main as m\n",
        "from pkg import main\n",
        "from . import main\n",
        "from .main import helper\n",
        "def f():\n    from pkg.main import helper\n",
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.main import T\n",
        "import importlib\nm = importlib.import_module('pkg.main')\n",
    ],
)
def test_checker_catches_each_way_of_importing_main(tmp_path: Path, source: str) -> None:
    root = _write(
        tmp_path,
        {"__init__.py": "from pkg.main import main\n", "main.py": "", "sub.py": source},
    )
    edges = import_edges(root, "pkg")
    line = source.count("\n")  # each sample ends with its import
    assert entry_importers(edges, "pkg.main", {"pkg", "pkg.main"}) == [f"pkg.sub:{line}"]


def test_checker_allows_the_package_and_main(tmp_path: Path) -> None:
    root = _write(
        tmp_path,
        {
            "__init__.py": "from pkg.main import main\n",
            "main.py": "def main():\n    from pkg import sub\n",
            "sub.py": "from pkg.shared import helper\nimport argparse\n",
            "shared.py": "import os\n",
        },
    )
    edges = import_edges(root, "pkg")
    assert entry_importers(edges, "pkg.main", {"pkg", "pkg.main"}) == []
    assert find_cycle(edges) is None
    assert {(a, b) for a, b, _ in edges} == {
        ("pkg", "pkg.main"),
        ("pkg.main", "pkg.sub"),
        ("pkg.sub", "pkg.shared"),
    }


def test_checker_finds_a_cycle_hidden_in_a_function(tmp_path: Path) -> None:
    root = _write(
        tmp_path,
        {
            "__init__.py": "",
            "a.py": "from pkg.b import x\n",
            "b.py": "def f():\n    from pkg import c\n",
            "c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import y\n",
        },
    )
    cycle = find_cycle(import_edges(root, "pkg"))
    assert cycle is not None
    assert set(cycle) == {"pkg.a", "pkg.b", "pkg.c"}


def test_building_the_parser_loads_no_io_library() -> None:
    # `caliban --help` builds every subcommand's parser: the modules it imports
    # for that must leave anyio, rich and the clients to the command that runs.
    code = (
        "import json, sys\n"
        "from caliban.cli.main import build_parser\n"
        "build_parser()\n"
        f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert json.loads(result.stdout) == []
