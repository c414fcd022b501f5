"""Every real platform class has every member of the ``Platform`` protocol, with
the protocol's parameter names and kinds, so a platform cannot drift from the
seam unnoticed (mypy only sees what a call site happens to use)."""

from __future__ import annotations

import importlib
import inspect

import pytest

from caliban.platforms import base

# Named here, not read from base._REGISTRY: the conformance cases re-point the
# registry at the in-memory platform.
REAL = {
    "local": "caliban.platforms.local.platform:LocalPlatform",
    "vertex": "caliban.platforms.vertex.platform:VertexPlatform",
    "kubernetes": "caliban.platforms.kubernetes.platform:KubernetesPlatform",
}


def _load(path: str) -> type:
    module, _, name = path.partition(":")
    cls: type = getattr(importlib.import_module(module), name)
    return cls


def protocol_members(proto: type) -> tuple[set[str], dict[str, object]]:
    """The data members (annotated) and methods a protocol declares itself."""
    attributes = set(inspect.get_annotations(proto))
    methods: dict[str, object] = {
        name: value
        for name, value in proto.__dict__.items()
        if inspect.isfunction(value) and (name == "__init__" or not name.startswith("_"))
    }
    return attributes, methods


def _shape(fn: object) -> list[tuple[str, inspect._ParameterKind]]:
    return [(p.name, p.kind) for p in inspect.signature(fn).parameters.values()]  # type: ignore[arg-type]


def _flavour(fn: object) -> str:
    if inspect.iscoroutinefunction(fn):
        return "coroutine"
    # An async generator matches a plain `def ... -> AsyncIterator` of the protocol.
    return "plain"


def drift(cls: type, proto: type = base.Platform) -> list[str]:
    """How ``cls`` differs from ``proto``: one line per missing or changed member."""
    attributes, methods = protocol_members(proto)
    problems = [
        f"{name}: missing attribute" for name in sorted(attributes) if not hasattr(cls, name)
    ]
    for name, declared in sorted(methods.items()):
        given = inspect.getattr_static(cls, name, None)
        if given is None or not callable(given):
            problems.append(f"{name}: missing method")
            continue
        if isinstance(given, (staticmethod, classmethod)):
            problems.append(f"{name}: is a {type(given).__name__}, the protocol has a method")
            continue
        if _shape(given) != _shape(declared):
            problems.append(f"{name}: parameters {_shape(given)} != protocol's {_shape(declared)}")
        if _flavour(given) != _flavour(declared):
            problems.append(
                f"{name}: {_flavour(given)} function, the protocol's is {_flavour(declared)}"
            )
    return problems


@pytest.mark.parametrize("path", REAL.values(), ids=REAL.keys())
def test_each_real_platform_matches_the_protocol(path: str) -> None:
    assert drift(_load(path)) == []


def test_the_protocol_lists_what_the_engine_calls() -> None:
    attributes, methods = protocol_members(base.Platform)
    assert {"kind", "remote", "keeps_logs"} <= attributes
    assert {"__init__", "check", "launch", "refresh", "cancel", "rebind"} <= set(methods)


def test_drift_is_caught() -> None:
    """The check itself can fail: renamed, reordered, missing and sync-for-async members."""

    class Drifted:
        kind = base.Kind.LOCAL
        remote = False

        def __init__(self, ctx: object) -> None: ...

        async def refresh(self, records: object) -> list[object]:  # renamed parameter
            return []

        def cancel(self, jobs: object) -> list[object]:  # no longer async
            return []

        async def launch(self, settings: object, planned: object, run: object) -> None: ...

    problems = drift(Drifted)
    assert "keeps_logs: missing attribute" in problems
    assert "check: missing method" in problems
    assert any(p.startswith("refresh: parameters") for p in problems)
    assert any(p.startswith("launch: parameters") for p in problems)
    assert "cancel: plain function, the protocol's is coroutine" in problems
