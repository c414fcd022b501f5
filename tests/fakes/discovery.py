"""Request bodies checked against Google's own API discovery documents.

The documents are the ones ``google-api-python-client`` ships
(``googleapiclient/discovery_cache/documents/``), so the fakes refuse what the real front end
refuses without anyone copying a schema by hand: unknown fields, fields the API marks
``Output only.``, enum values the API does not have, JSON values of the wrong type, and
missing fields whose description starts with ``Required.``. The answer is a 400
INVALID_ARGUMENT google.rpc.Status whose details hold a google.rpc.BadRequest with one
``fieldViolations`` entry per problem, field paths spelled as Google spells them (proto
snake_case names, ``[i]`` for list items, ``[key]`` for map entries).

proto3 JSON rules kept: int64/uint64 travel as strings or numbers, int32 as numbers or decimal
strings, ``null`` means "not set", and both the lowerCamelCase and the proto field name are
accepted. ``REVISIONS`` records the document revisions the suite was written against; a test
fails when the pinned client brings others, so a schema change is looked at, not absorbed.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

# The API revisions caliban's request bodies are checked against (docs/cloud.md says so too).
REVISIONS = {
    "aiplatform.v1": "20261106",
    "container.v1": "20261027",
    "logging.v2": "20260911",
}

_DURATION = re.compile(r"^-?\d+(\.\d{1,9})?s$")
_DATETIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?(Z|[+-]\d\d:\d\d)$")
_SIGNED = re.compile(r"^-?\d+$")
_UNSIGNED = re.compile(r"^\d+$")
_RANGES = {
    "int32": (-(2**31), 2**31 - 1),
    "uint32": (0, 2**32 - 1),
    "int64": (-(2**63), 2**63 - 1),
    "uint64": (0, 2**64 - 1),
}
_SCHEMA_PREFIXES = ("GoogleCloudAiplatformV1", "GoogleRpc", "GoogleProtobuf")
_PACKAGES = {
    "aiplatform.v1": "google.cloud.aiplatform.v1",
    "container.v1": "google.container.v1",
    "logging.v2": "google.logging.v2",
}


@dataclass(frozen=True)
class Violation:
    """One google.rpc.BadRequest.FieldViolation."""

    field: str
    description: str


def snake(name: str) -> str:
    """A JSON (lowerCamelCase) field name as the proto names it."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


class Discovery:
    """One discovery document: its schemas and the request schema of each method."""

    def __init__(self, name: str) -> None:
        self.name = name
        folder = resources.files("googleapiclient") / "discovery_cache" / "documents"
        self.doc: dict[str, Any] = json.loads((folder / f"{name}.json").read_text("utf-8"))
        self.revision = str(self.doc["revision"])
        self.schemas: dict[str, dict[str, Any]] = self.doc["schemas"]
        self.package = _PACKAGES.get(name, name)

    def request_schema(self, method: str) -> str:
        """The request body schema of ``projects.locations.customJobs.create`` and the like."""
        node: dict[str, Any] = self.doc
        *resource_path, verb = method.split(".")
        for part in resource_path:
            node = node["resources"][part]
        return str(node["methods"][verb]["request"]["$ref"])

    def check(self, schema: str, body: Any, root: str = "") -> list[Violation]:
        """Every violation of ``body`` against ``schema``; empty when Google would parse it."""
        out: list[Violation] = []
        self._value({"$ref": schema}, body, root, out, owner=schema, prop="")
        return out

    # ------------------------------------------------------------------------ the walk
    def _value(
        self,
        spec: dict[str, Any],
        value: Any,
        path: str,
        out: list[Violation],
        owner: str,
        prop: str,
    ) -> None:
        if value is None:  # proto3 JSON: null is the default value, i.e. not set
            return
        if "$ref" in spec:
            name = str(spec["$ref"])
            self._object(name, self.schemas[name], value, path, out)
            return
        kind = spec.get("type")
        if kind == "any":
            return
        if kind == "array":
            if not isinstance(value, list):
                out.append(_invalid(path, "TYPE_LIST", value))
                return
            for i, item in enumerate(value):
                if item is None:  # proto3 JSON refuses null inside a list
                    out.append(_invalid(f"{path}[{i}]", _kind(spec["items"]), item))
                else:
                    self._value(spec["items"], item, f"{path}[{i}]", out, owner, prop)
            return
        if kind == "object":
            if not isinstance(value, dict):
                out.append(_invalid(path, "TYPE_MESSAGE", value))
                return
            if "additionalProperties" in spec:  # a map<string, V>
                for key, item in value.items():
                    self._value(
                        spec["additionalProperties"], item, f"{path}[{key}]", out, owner, prop
                    )
            elif "properties" in spec:
                self._object(owner, spec, value, path, out)
            return
        if "enum" in spec:
            if not isinstance(value, str) or value not in spec["enum"]:
                out.append(_invalid(path, self._enum_name(owner, prop), value))
            return
        problem = _scalar_problem(kind, spec.get("format"), value)
        if problem is not None:
            out.append(_invalid(path, problem, value))

    def _object(
        self, name: str, schema: dict[str, Any], value: Any, path: str, out: list[Violation]
    ) -> None:
        if not isinstance(value, dict):
            out.append(_invalid(path, f"type.googleapis.com/{self._message_name(name)}", value))
            return
        props: dict[str, dict[str, Any]] = schema.get("properties") or {}
        present = set()
        for key, item in value.items():
            json_name = key if key in props else _camel(key)
            spec = props.get(json_name)
            where = f"{path}.{snake(json_name)}" if path else snake(json_name)
            if spec is None:
                out.append(
                    Violation(
                        path,
                        f"Invalid JSON payload received. Unknown name \"{key}\" at '{path}': "
                        "Cannot find field.",
                    )
                )
                continue
            if item is not None:
                present.add(json_name)
            if _says(spec, "Output only."):
                if item is not None:
                    out.append(Violation(where, "Output only field: it cannot be set."))
                continue
            self._value(spec, item, where, out, owner=name, prop=json_name)
        for json_name, spec in props.items():
            if json_name not in present and _says(spec, "Required."):
                where = f"{path}.{snake(json_name)}" if path else snake(json_name)
                out.append(Violation(where, "Required field is not set."))

    def _message_name(self, schema: str) -> str:
        short = schema
        for prefix in _SCHEMA_PREFIXES:
            short = short.removeprefix(prefix)
        return f"{self.package}.{short}"

    def _enum_name(self, owner: str, prop: str) -> str:
        return f"type.googleapis.com/{self._message_name(owner)}.{prop[:1].upper() + prop[1:]}"


def _says(spec: dict[str, Any], marker: str) -> bool:
    return str(spec.get("description", "")).lstrip().startswith(marker)


def _kind(spec: dict[str, Any]) -> str:
    if "$ref" in spec:
        return "TYPE_MESSAGE"
    kind, fmt = spec.get("type"), spec.get("format")
    if fmt in _RANGES:
        return f"TYPE_{str(fmt).upper()}"
    return {"string": "TYPE_STRING", "boolean": "TYPE_BOOL", "number": "TYPE_DOUBLE"}.get(
        str(kind), "TYPE_MESSAGE"
    )


def _scalar_problem(kind: Any, fmt: Any, value: Any) -> str | None:
    """None when ``value`` is a valid proto3 JSON ``kind``/``fmt``, else the type to name."""
    if fmt in _RANGES:  # integers: numbers, or decimal strings (int64 is a string on the wire)
        name = f"TYPE_{str(fmt).upper()}"
        pattern = _UNSIGNED if str(fmt).startswith("u") else _SIGNED
        if isinstance(value, bool):
            return name
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, str) and pattern.match(value):
            value = int(value)
        if not isinstance(value, int):
            return name
        lo, hi = _RANGES[str(fmt)]
        return None if lo <= value <= hi else name
    if kind == "boolean":
        return None if isinstance(value, bool) else "TYPE_BOOL"
    if kind == "number":
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return None if ok or value in ("NaN", "Infinity", "-Infinity") else "TYPE_DOUBLE"
    if kind == "string":
        if not isinstance(value, str):
            return "TYPE_STRING"
        if fmt == "google-duration" and not _DURATION.match(value):
            return "type.googleapis.com/google.protobuf.Duration"
        if fmt == "google-datetime" and not _DATETIME.match(value):
            return "type.googleapis.com/google.protobuf.Timestamp"
        return None
    return None


def _invalid(path: str, what: str, value: Any) -> Violation:
    return Violation(path, f"Invalid value at '{path}' ({what}), {json.dumps(value)}")


def bad_request(violations: list[Violation]) -> tuple[str, dict[str, Any]]:
    """The message and the google.rpc.BadRequest detail of a 400 INVALID_ARGUMENT."""
    # A parse error stands alone, as Google's JSON parser stops at the first one; the
    # service's own checks (required, output only) come as a numbered list.
    if len(violations) == 1 and violations[0].description.startswith("Invalid"):
        message = violations[0].description
    else:
        parts = [
            f"{i}.Field: {v.field}; Message: {v.description}" for i, v in enumerate(violations, 1)
        ]
        message = "List of found errors:\t" + "\t".join(parts) + "\t"
    detail = {
        "@type": "type.googleapis.com/google.rpc.BadRequest",
        "fieldViolations": [{"field": v.field, "description": v.description} for v in violations],
    }
    return message, detail


@functools.cache
def document(name: str) -> Discovery:
    """``aiplatform.v1`` or ``container.v1``, read once."""
    return Discovery(name)


def aiplatform() -> Discovery:
    return document("aiplatform.v1")


def container() -> Discovery:
    return document("container.v1")


def logging_v2() -> Discovery:
    return document("logging.v2")
