"""OpenAPI schema validation for the fake apiserver, with kubernetes-validate's schemas.

kubernetes-validate ships, per minor version 1.25-1.37, the JSON schemas of every built-in
kind, as a plain and a "-strict" set (the strict one says ``additionalProperties: false``
everywhere, as ``kubectl --validate=strict`` does). Its own ``validate()`` is not used:

* it re-reads the 1.8 MB ``_definitions.json`` on every call (a second or so per object
  here), so validators are built once per (version, kind) and cached;
* it raises only the best-matching error; the apiserver lists every cause;
* it picks the schema directory by comparing version strings ("1.3" > "1.29"); the
  directory is named exactly here.

Quirks of the schemas themselves: every type is nullable (``["string", "null"]``), so a
``null`` passes where the apiserver would default or reject it; ``int-or-string`` and
``Quantity`` are ``oneOf`` string/number; the ``x-kubernetes-*`` keywords (list map keys,
int-or-string, group-version-kind) are ignored by jsonschema. Strict mode is used: an
unknown field is an error here, where a real server (``fieldValidation=Warn``, the
default) drops it with a warning header - which is exactly how a field too new for a
server silently disappears, so the fake refuses it instead.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import Any

import jsonschema
from kubernetes_validate.utils import schema_contents
from referencing import Registry, Resource

from .k8s_store import Cause, JsonObj

SCHEMA_MINORS = range(25, 38)  # what kubernetes-validate 1.37.0 ships


def schema_dir(minor: int) -> str:
    if minor not in SCHEMA_MINORS:
        raise ValueError(
            f"no OpenAPI schema for Kubernetes 1.{minor} "
            f"(kubernetes-validate has 1.{SCHEMA_MINORS[0]}-1.{SCHEMA_MINORS[-1]})"
        )
    return f"kubernetes-json-schema/v1.{minor}.0-local-strict"


@functools.cache
def _definitions(minor: int) -> Resource[Any]:
    return Resource.from_contents(
        schema_contents(f"{schema_dir(minor)}/_definitions.json", f"1.{minor}")
    )


@functools.cache
def validator(minor: int, kind: str, api_version: str) -> jsonschema.Draft202012Validator:
    """The (cached) validator of one kind at one minor version."""
    # rbac.authorization.k8s.io/v1 -> rbac-v1; v1 stays v1 (the file naming of the package)
    group_version = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    path = f"{schema_dir(minor)}/{kind.lower()}-{group_version}.json"
    schema = schema_contents(path, f"1.{minor}")
    registry: Registry[Any] = Resource.from_contents(schema) @ Registry()
    registry = _definitions(minor) @ registry
    return jsonschema.Draft202012Validator(schema, registry=registry)


def _path(parts: Any) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _causes_of(error: jsonschema.ValidationError) -> list[Cause]:
    where = _path(error.absolute_path)
    join = (lambda name: f"{where}.{name}") if where else (lambda name: name)
    if error.validator == "required":
        missing = [k for k in error.validator_value if k not in (error.instance or {})]
        return [Cause(join(k), "FieldValueRequired", "Required value") for k in missing]
    if error.validator == "additionalProperties":
        known = set((error.schema.get("properties") or {}).keys())
        extra = sorted(set(error.instance or {}) - known)
        return [Cause(join(k), "FieldValueNotFound", f'unknown field "{k}"') for k in extra]
    if error.validator == "enum":
        allowed = ", ".join(f'"{v}"' for v in error.validator_value)
        return [
            Cause(
                where,
                "FieldValueNotSupported",
                f'Unsupported value: "{error.instance}": supported values: {allowed}',
            )
        ]
    if error.validator in ("type", "oneOf"):
        return [Cause(where, "FieldValueTypeInvalid", f"Invalid value: {error.message}")]
    return [Cause(where, "FieldValueInvalid", f"Invalid value: {error.message}")]


def schema_causes(obj: Mapping[str, Any], minor: int) -> list[Cause]:
    """Every way ``obj`` breaks the strict schema of its kind at ``1.<minor>``, as the
    ``details.causes`` of a 422 (field paths like ``spec.template.spec.containers[0]``)."""
    try:
        check = validator(minor, str(obj.get("kind")), str(obj.get("apiVersion")))
    except FileNotFoundError:
        return [Cause("kind", "FieldValueNotSupported", f"no schema for {obj.get('kind')}")]
    causes: list[Cause] = []
    for error in sorted(check.iter_errors(obj), key=lambda e: list(map(str, e.absolute_path))):
        causes += _causes_of(error)
    return causes


def validate(obj: JsonObj, minor: int) -> None:
    """Raise AssertionError naming every cause (for tests checking manifests directly)."""
    causes = schema_causes(obj, minor)
    if causes:
        kind, name = obj.get("kind"), (obj.get("metadata") or {}).get("name")
        lines = "\n".join(f"  {c.field}: {c.message}" for c in causes)
        raise AssertionError(f"{kind} {name} is invalid for Kubernetes 1.{minor}:\n{lines}")


__all__ = ["SCHEMA_MINORS", "schema_causes", "validate", "validator"]
