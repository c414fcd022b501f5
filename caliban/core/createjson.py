"""``--docker_create_json``: a fragment of the container-create body, checked
against the Engine API schema of the daemon's version before anything is built.

The schemas are in ``caliban/data/engine_api/<version>.json``, reduced from
moby's ``api/swagger.yaml`` by ``scripts/gen_engine_schema.py``. A daemon
speaking a version with no schema here is checked against the nearest known
version, and :func:`schema_for` says so, so the caller can warn. Pure apart
from reading the fragment's file in :func:`read_fragment`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from caliban.core.dockerargs import CALIBAN_LABEL_PREFIX
from caliban.errors import ValidationError

OPTION = "--docker_create_json"

# Fields caliban sets for every container: the image and command it built,
# how it attaches, when the container goes away, and which GPUs it holds.
OWNED_FIELDS: Mapping[str, str] = {
    "Image": "caliban runs the image it built (or --image_id)",
    "Cmd": "caliban runs the project's entry point with the sweep's arguments",
    "Entrypoint": "caliban runs the project's entry point with the sweep's arguments",
    "AttachStdin": "caliban attaches to the container itself",
    "AttachStdout": "caliban attaches to the container itself",
    "AttachStderr": "caliban attaches to the container itself",
    "Tty": "caliban attaches to the container itself",
    "OpenStdin": "caliban attaches to the container itself",
    "StdinOnce": "caliban attaches to the container itself",
    "HostConfig.AutoRemove": "caliban decides when its containers are removed",
    "HostConfig.RestartPolicy": "caliban waits for each job to exit and records how it ended",
    "HostConfig.ContainerIDFile": "caliban records every container id in its history",
    "HostConfig.DeviceRequests": "caliban assigns GPUs from its own pool",
    "HostConfig.Privileged": "a privileged job sees every GPU; GPUs would not be exclusive",
}


def error(message: str) -> ValidationError:
    return ValidationError(f"{OPTION}: {message}")


def _version_key(version: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in version.split("."))
    except ValueError:
        raise error(f"the daemon reports an API version caliban cannot read: {version!r}") from None


@cache
def known_versions() -> tuple[str, ...]:
    folder = resources.files("caliban").joinpath("data/engine_api")
    found = [p.name.removesuffix(".json") for p in folder.iterdir() if p.name.endswith(".json")]
    return tuple(sorted(found, key=_version_key))


@cache
def _load(version: str) -> Mapping[str, Any]:
    path = resources.files("caliban").joinpath(f"data/engine_api/{version}.json")
    data: Mapping[str, Any] = json.loads(path.read_text("utf-8"))
    return data


@dataclass(frozen=True)
class Schema:
    version: str  # the version checked against
    exact: bool  # False: the daemon's version has no schema here; the nearest one is used
    definitions: Mapping[str, Any]
    root: str

    def resolve(self, node: Mapping[str, Any]) -> Mapping[str, Any]:
        while "$ref" in node:
            node = self.definitions[node["$ref"]]
        return node


def schema_for(api_version: str) -> Schema:
    """The schema of ``api_version``, or of the nearest version caliban knows."""
    wanted = _version_key(api_version)
    versions = known_versions()
    if api_version in versions:
        chosen = api_version
    else:
        # Nearest by minor version; on a tie the older one, whose fields a newer daemon keeps.
        chosen = min(
            versions, key=lambda v: (abs(_version_key(v)[-1] - wanted[-1]), _version_key(v))
        )
    data = _load(chosen)
    return Schema(chosen, chosen == api_version, data["definitions"], data["root"])


_TYPES: Mapping[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "array": (list,),
    "object": (dict,),
}
_NAMES = {
    str: "a string",
    int: "an integer",
    bool: "true or false",
    list: "a list",
    dict: "an object",
}


def _check(schema: Schema, node: Mapping[str, Any], value: Any, path: str) -> None:
    node = schema.resolve(node)
    if value is None:
        return  # Go decodes null as the zero value, which the daemon accepts everywhere.
    kind = node.get("type")
    if kind is not None:
        allowed = _TYPES[kind]
        # bool is an int in Python but not in JSON.
        if not isinstance(value, allowed) or (kind in ("integer", "number") and value is True):
            raise error(
                f"{path} must be {_NAMES.get(allowed[0], kind)} in Engine API {schema.version}"
            )
    if "enum" in node and value not in node["enum"]:
        choices = ", ".join(json.dumps(c) for c in node["enum"])
        raise error(f"{path} must be one of {choices}")
    if isinstance(value, dict):
        props = node.get("properties")
        extra = node.get("additionalProperties")
        for key, item in value.items():
            where = f"{path}.{key}" if path else key
            if props is not None and key in props:
                _check(schema, props[key], item, where)
            elif extra is not None:
                _check(schema, extra, item, where)
            elif props is not None:
                raise error(f"unknown field {where} for Engine API {schema.version}")
    elif isinstance(value, list) and "items" in node:
        for n, item in enumerate(value):
            _check(schema, node["items"], item, f"{path}[{n}]")


def check_owned(fragment: Mapping[str, Any]) -> None:
    """Refuse a field caliban sets itself; needs no schema, so no daemon."""
    for owned, reason in OWNED_FIELDS.items():
        node: Any = fragment
        for part in owned.split("."):
            node = node.get(part) if isinstance(node, Mapping) else None
        if node is not None:
            raise error(f"{owned} cannot be set: {reason}")
    for key in fragment.get("Labels") or {}:
        if str(key).startswith(CALIBAN_LABEL_PREFIX):
            raise error(f"Labels.{key}: labels under {CALIBAN_LABEL_PREFIX!r} are caliban's to set")


def validate(fragment: Mapping[str, Any], schema: Schema) -> None:
    """Refuse a field caliban owns, a field the schema lacks, or a value of the wrong type."""
    check_owned(fragment)
    _check(schema, schema.definitions[schema.root], dict(fragment), "")


def read_fragment(path: str) -> dict[str, Any]:
    """The JSON object in ``path``; ``ValidationError`` for anything else."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as err:
        raise error(f"{path}: {err.strerror or err}") from None
    except (ValueError, UnicodeDecodeError) as err:
        raise error(f"{path} is not JSON: {err}") from None
    if not isinstance(data, dict):
        raise error(f"{path}: expected a JSON object (a fragment of the create body)")
    return data
