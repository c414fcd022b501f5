"""Reduce the Engine API swagger to the container-create body caliban validates.

The schema is the moby ``api/swagger.yaml`` that Debian ships in
golang-github-docker-docker-dev (the same source package as the daemon):

    apt-get download golang-github-docker-docker-dev
    dpkg-deb -x golang-github-docker-docker-dev_*.deb deb
    python3 scripts/gen_engine_schema.py \
        deb/usr/share/gocode/src/github.com/docker/docker/api/swagger.yaml

It writes caliban/data/engine_api/<version>.json: every definition reachable
from the ``POST /containers/create`` body, keeping only what validation needs
(types, properties, items, map values, refs), with ``allOf`` flattened.
Needs PyYAML (a dev tool, not a caliban dependency).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

REF = "#/definitions/"


def reduce(node: dict[str, Any], defs: dict[str, Any], seen: set[str]) -> dict[str, Any]:
    if "$ref" in node:
        name = node["$ref"].removeprefix(REF)
        seen.add(name)
        return {"$ref": name}
    if "allOf" in node:
        merged: dict[str, Any] = {"type": "object", "properties": {}}
        for part in node["allOf"]:
            if "$ref" in part:
                part = defs[part["$ref"].removeprefix(REF)]
            sub = reduce(part, defs, seen)
            merged["properties"].update(sub.get("properties", {}))
        return merged
    out: dict[str, Any] = {}
    kind = node.get("type")
    if kind is None and "properties" in node:
        kind = "object"
    if kind is not None:
        out["type"] = kind
    if "properties" in node:
        out["properties"] = {k: reduce(v, defs, seen) for k, v in node["properties"].items()}
    if "items" in node:
        out["items"] = reduce(node["items"], defs, seen)
    extra = node.get("additionalProperties")
    if isinstance(extra, dict):
        out["additionalProperties"] = reduce(extra, defs, seen)
    if "enum" in node:
        out["enum"] = node["enum"]
    return out


def main(path: str) -> None:
    doc = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    version = str(doc["info"]["version"])
    defs = doc["definitions"]
    op = doc["paths"]["/containers/create"]["post"]
    body = next(p["schema"] for p in op["parameters"] if p["in"] == "body")
    seen: set[str] = set()
    out_defs = {"ContainerCreateBody": reduce(body, defs, seen)}
    done: set[str] = set()
    while seen - done:
        name = sorted(seen - done)[0]
        done.add(name)
        out_defs[name] = reduce(defs[name], defs, seen)
    target = Path(__file__).resolve().parent.parent / "caliban/data/engine_api" / f"{version}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "api_version": version,
        "source": "moby api/swagger.yaml, Debian golang-github-docker-docker-dev",
        "root": "ContainerCreateBody",
        "definitions": dict(sorted(out_defs.items())),
    }
    target.write_text(json.dumps(data, indent=1, sort_keys=False) + "\n", encoding="utf-8")
    print(f"{target}: {len(out_defs)} definitions")


if __name__ == "__main__":
    main(sys.argv[1])
