"""Long-lived responses of the fake apiserver: watches and ``follow=true`` pod logs.

Both subscribe to changes before they read the current state, so nothing that happens in
between is lost, and both end promptly when the fake closes (the store wakes every watch
queue, the log signal wakes every follower) instead of holding up the server's shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import TYPE_CHECKING

from aiohttp import web

from .k8s_admission import PODS
from .k8s_store import (
    Event,
    FieldSelector,
    Gone,
    JsonObj,
    KubeError,
    LabelSelector,
    ResourceType,
    bool_param,
    int_param,
    status_body,
)

if TYPE_CHECKING:
    from .k8s import FakeKubernetes


async def serve_watch(
    kube: FakeKubernetes,
    request: web.Request,
    rtype: ResourceType,
    ns: str | None,
    labels: LabelSelector,
    fields: FieldSelector,
) -> web.StreamResponse:
    timeout = int_param(request.query, "timeoutSeconds")
    since = request.query.get("resourceVersion", "")
    if since not in ("", "0") and not since.isdigit():
        raise KubeError.of(400, "BadRequest", f'invalid resource version "{since}"')
    loop = asyncio.get_running_loop()
    deadline = loop.time() + (timeout if timeout is not None else kube.watch_timeout)

    def line(payload: JsonObj) -> bytes:
        return json.dumps(payload).encode() + b"\n"

    # Subscribe before reading current state so no change can fall between the two, and
    # serialise that state before the first await so it is one consistent snapshot.
    queue = kube.store.subscribe()
    try:
        last = kube.store.rv
        expired = False
        if since in ("", "0"):
            # No version: "get state and start at most recent", as synthetic ADDEDs.
            first = [
                line({"type": "ADDED", "object": obj})
                for obj in kube.store.list_objects(rtype.resource, ns)
                if labels.matches(obj["metadata"].get("labels")) and fields.matches(obj)
            ]
        else:
            try:
                first = [
                    line(out)
                    for past in kube.store.events_after(int(since))
                    if (out := visible_event(past, rtype, ns, labels, fields))
                ]
            except Gone as gone:
                # Like the apiserver's watch cache: 200, then a single ERROR event, then EOF.
                expired = True
                first = [line({"type": "ERROR", "object": status_body(410, "Expired", str(gone))})]
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        try:
            for chunk in first:
                await response.write(chunk)
            while not expired and (remaining := deadline - loop.time()) > 0:
                try:
                    event = await asyncio.wait_for(queue.get(), remaining)
                except TimeoutError:
                    break
                if event is None:  # server closing
                    break
                if event.rv > last and (out := visible_event(event, rtype, ns, labels, fields)):
                    await response.write(line(out))
            await response.write_eof()
        except ConnectionError:
            pass  # the client went away; nothing to tell it
        return response
    finally:
        kube.store.unsubscribe(queue)


def visible_event(
    event: Event,
    rtype: ResourceType,
    ns: str | None,
    labels: LabelSelector,
    fields: FieldSelector,
) -> JsonObj | None:
    """The event as this watcher sees it: an object that starts or stops matching the
    selectors arrives as ADDED / DELETED, like the apiserver's watch filter does."""
    if event.resource != rtype.resource or (ns is not None and event.namespace != ns):
        return None

    def match(obj: JsonObj | None) -> bool:
        return (
            obj is not None
            and labels.matches(obj["metadata"].get("labels"))
            and fields.matches(obj)
        )

    new, old = match(event.obj), match(event.old)
    if event.type != "MODIFIED":
        return {"type": event.type, "object": event.obj} if new else None
    if new and old:
        return {"type": "MODIFIED", "object": event.obj}
    if new:
        return {"type": "ADDED", "object": event.obj}
    if old:
        return {"type": "DELETED", "object": event.obj}
    return None


async def serve_pod_log(kube: FakeKubernetes, request: web.Request) -> web.StreamResponse:
    kube.calls["log pods"] += 1
    ns, name = request.match_info["ns"], request.match_info["name"]
    pod = kube.store.require(PODS, ns, name)
    uid = pod["metadata"]["uid"]
    names = [str(c.get("name")) for c in pod["spec"].get("containers", [])]
    container = request.query.get("container")
    if container is None:
        if len(names) != 1:
            raise KubeError.of(
                400,
                "BadRequest",
                f"a container name must be specified for "
                f"pod {name}, choose one of: [{' '.join(names)}]",
            )
        container = names[0]
    elif container not in names:
        raise KubeError.of(400, "BadRequest", f"container {container} is not valid for pod {name}")
    if pod["status"].get("phase") == "Pending":
        raise KubeError.of(
            400,
            "BadRequest",
            f'container "{container}" in pod "{name}" is waiting to start: ContainerCreating',
        )
    text = kube.logs.text(pod, container)
    tail = int_param(request.query, "tailLines")
    shown = text
    if tail is not None:
        lines = text.splitlines(keepends=True)
        shown = "".join(lines[-tail:]) if tail > 0 else ""
    limit = int_param(request.query, "limitBytes")
    if limit is not None:
        shown = shown.encode()[:limit].decode(errors="ignore")
    if not bool_param(request.query.get("follow")):
        return web.Response(text=shown, content_type="text/plain")
    response = web.StreamResponse(headers={"Content-Type": "text/plain"})
    response.enable_chunked_encoding()
    await response.prepare(request)
    sent = len(text)
    with contextlib.suppress(ConnectionError):
        if shown:
            await response.write(shown.encode())
        while True:
            # Take the change signal before looking, so a change made right after the
            # look still wakes us.
            changed = kube.logs.changed()
            live = kube.store.get("pods", ns, name)
            current = kube.logs.text(live or pod, container)
            if len(current) > sent:
                await response.write(current[sent:].encode())
                sent = len(current)
            finished = (
                live is None
                or live["metadata"]["uid"] != uid
                or live["status"].get("phase") in ("Succeeded", "Failed")
            )
            if finished or kube.logs.closed:
                break
            await changed.wait()
        await response.write_eof()
    return response
