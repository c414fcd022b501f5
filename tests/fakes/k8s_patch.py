"""PATCH for the fake apiserver: JSON merge patches (RFC 7386), validated like a create.

Strategic merge patches are applied as merge patches: for the objects served here (a
ConfigMap's data and metadata) they differ only in how lists with merge keys combine,
which callers here do not rely on. JSON patches (RFC 6902) get 415, as an unsupported
content type does on a real server.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .k8s_store import JsonObj, KubeError, ResourceType, invalid_error

if TYPE_CHECKING:
    from .k8s_http import KubeApi

MERGE_TYPES = ("application/merge-patch+json", "application/strategic-merge-patch+json")
_SERVER_OWNED = ("uid", "resourceVersion", "creationTimestamp", "namespace", "name")


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge key by key, ``null`` deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def patch_handler(
    api: KubeApi, rtype: ResourceType
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handler(request: web.Request) -> web.StreamResponse:
        kube = api.kube
        kube.calls[f"patch {rtype.resource}"] += 1
        ns = request.match_info["ns"]
        name = request.match_info["name"]
        if request.content_type not in MERGE_TYPES:
            raise KubeError.of(
                415,
                "UnsupportedMediaType",
                f"the body of the request was in an unknown "
                f"format - accepted media types include: {', '.join(MERGE_TYPES)}",
            )
        try:
            patch = json.loads(await request.read())
        except ValueError as err:
            raise KubeError.of(400, "BadRequest", f"invalid patch body: {err}") from None
        live = kube.store.require(rtype, ns, name)
        result: JsonObj = merge_patch(live, patch)
        meta = result.setdefault("metadata", {})
        for key in _SERVER_OWNED:  # a patch cannot rename or re-own an object
            if key in live["metadata"]:
                meta[key] = live["metadata"][key]
        causes = api._validate(rtype, result)
        if causes:
            raise invalid_error(rtype.kind, rtype.group, name, causes)
        with kube.store.modify(rtype.resource, ns, name) as obj:
            obj.clear()
            obj.update(result)
        return web.json_response(copy.deepcopy(kube.store.require(rtype, ns, name)))

    return handler


__all__ = ["merge_patch", "patch_handler"]
