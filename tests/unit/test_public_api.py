"""``caliban.__all__`` is the library's API: every request a ``Session`` method
takes and every error caliban raises is there, documented, and resolves."""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import sys
import types
import typing
from collections.abc import Iterator
from pathlib import Path

import pytest

import caliban
from caliban import errors, options
from caliban.session import Session


def _type_checking_names(module: types.ModuleType) -> dict[str, object]:
    """The module's globals plus what its ``if TYPE_CHECKING:`` blocks import, so
    that annotations naming type-only imports resolve."""
    namespace = dict(vars(module))
    assert module.__file__ is not None
    tree = ast.parse(Path(module.__file__).read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.If) and ast.unparse(node.test) in (
            "TYPE_CHECKING",
            "typing.TYPE_CHECKING",
        ):
            block = ast.Module(body=node.body, type_ignores=[])
            exec(compile(block, module.__file__, "exec"), namespace)
    return namespace


def _classes(hint: object) -> Iterator[type]:
    """Every class named in an annotation (through unions, Optional, generics)."""
    if isinstance(hint, type):
        yield hint
    for arg in typing.get_args(hint):
        yield from _classes(arg)


def _session_request_types() -> set[type]:
    namespace = _type_checking_names(sys.modules[Session.__module__])
    found: set[type] = set()
    for name, member in inspect.getmembers(Session, inspect.isfunction):
        if name.startswith("_"):
            continue
        hints = typing.get_type_hints(member, globalns=namespace)
        hints.pop("return", None)
        for hint in hints.values():
            found.update(c for c in _classes(hint) if c.__module__ == options.__name__)
    return found


def _error_types() -> set[type]:
    return {
        cls
        for name, cls in vars(errors).items()
        if isinstance(cls, type)
        and issubclass(cls, errors.CalibanError)
        and cls.__module__ == errors.__name__
        and not name.startswith("_")
    }


def _own_docstring(obj: object) -> str | None:
    """``obj``'s docstring if someone wrote one: not inherited, and not the
    signature a dataclass puts there when there is none."""
    doc = vars(obj).get("__doc__") if isinstance(obj, type) else getattr(obj, "__doc__", None)
    if not isinstance(doc, str) or not doc.strip():
        return None
    if (
        isinstance(obj, type)
        and dataclasses.is_dataclass(obj)
        and doc.startswith(f"{obj.__name__}(")
    ):
        return None
    return doc


def test_every_session_request_type_is_exported() -> None:
    requests = _session_request_types()
    # The collection itself works: the requests the commands take are found.
    assert {options.RunRequest, options.CloudRequest, options.ClusterJobRequest} <= requests
    missing = sorted(cls.__name__ for cls in requests if cls.__name__ not in caliban.__all__)
    assert not missing, f"Session takes these, caliban.__all__ lacks them: {missing}"


def test_every_error_type_is_exported() -> None:
    found = _error_types()
    assert {errors.CalibanError, errors.ConfigError, errors.OutcomeUnknown} <= found
    missing = sorted(cls.__name__ for cls in found if cls.__name__ not in caliban.__all__)
    assert not missing, f"errors.py defines these, caliban.__all__ lacks them: {missing}"


@pytest.mark.parametrize("name", caliban.__all__)
def test_exported_name_resolves_lazily_and_is_documented(name: str) -> None:
    value = getattr(caliban, name)
    assert value is getattr(importlib.import_module(caliban._EXPORTS[name]), name)
    assert _own_docstring(value), f"caliban.{name} has no docstring"


def test_exports_are_sorted_and_unknown_names_raise() -> None:
    assert caliban.__all__ == sorted(set(caliban.__all__))
    with pytest.raises(AttributeError):
        caliban.NoSuchName  # noqa: B018
    assert set(caliban.__all__) <= set(dir(caliban))
