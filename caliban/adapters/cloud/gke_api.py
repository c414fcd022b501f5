"""The GKE REST API (container.googleapis.com v1) and the two Compute reads it needs.

Every call goes through :class:`caliban.adapters.cloud.http.GoogleApi` (bearer token from
gcloud-aio-auth, google.rpc.Status errors translated). Base URLs can be replaced
with ``CALIBAN_GKE_ENDPOINT`` / ``CALIBAN_COMPUTE_ENDPOINT`` (private endpoints, and
the local servers the tests run). Long-running operations are polled with a
growing interval, report progress, and give up after a timeout.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import anyio

from caliban.adapters.cloud.http import GoogleApi
from caliban.errors import BackendError
from caliban.events import Notice, Sink, discard
from caliban.limits import RetryPolicy, with_retries

GKE_ENV = "CALIBAN_GKE_ENDPOINT"
COMPUTE_ENV = "CALIBAN_COMPUTE_ENDPOINT"
GKE_DEFAULT = "https://container.googleapis.com"
COMPUTE_DEFAULT = "https://compute.googleapis.com"

_READS = RetryPolicy(attempts=4, initial=0.5, max_delay=8, deadline=60)


class GkeApi:
    def __init__(
        self, api: GoogleApi, environ: Mapping[str, str], endpoint: str | None = None
    ) -> None:
        self.api = api
        self.base = (endpoint or environ.get(GKE_ENV) or GKE_DEFAULT).rstrip("/")
        self.compute = (environ.get(COMPUTE_ENV) or COMPUTE_DEFAULT).rstrip("/")

    async def _get(self, url: str, what: str) -> dict[str, Any]:
        async def call() -> dict[str, Any]:
            result: dict[str, Any] = await self.api.call("GET", url, what=what)
            return result

        return await with_retries(call, _READS)

    def _loc(self, project: str, location: str) -> str:
        return f"{self.base}/v1/projects/{project}/locations/{location}"

    # -- clusters ------------------------------------------------------------------------

    async def clusters(self, project: str, location: str = "-") -> list[dict[str, Any]]:
        page = await self._get(
            f"{self._loc(project, location)}/clusters", f"listing GKE clusters of {project}"
        )
        return list(page.get("clusters") or [])

    async def cluster(self, project: str, location: str, name: str) -> dict[str, Any]:
        return await self._get(
            f"{self._loc(project, location)}/clusters/{name}", f"reading GKE cluster {name}"
        )

    async def node_pools(self, project: str, location: str, name: str) -> list[dict[str, Any]]:
        page = await self._get(
            f"{self._loc(project, location)}/clusters/{name}/nodePools",
            f"listing the node pools of {name}",
        )
        return list(page.get("nodePools") or [])

    async def create(self, project: str, location: str, body: dict[str, Any]) -> dict[str, Any]:
        # Not retried blindly: a second create would answer ALREADY_EXISTS, and the
        # caller checks for the cluster before creating it anyway.
        result: dict[str, Any] = await self.api.call(
            "POST",
            f"{self._loc(project, location)}/clusters",
            body=body,
            idempotent=False,
            what=f"creating GKE cluster {body['cluster']['name']}",
        )
        return result

    async def delete(self, project: str, location: str, name: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.api.call(
            "DELETE",
            f"{self._loc(project, location)}/clusters/{name}",
            what=f"deleting GKE cluster {name}",
        )
        return result

    async def operation(self, project: str, location: str, name: str) -> dict[str, Any]:
        return await self._get(
            f"{self._loc(project, location)}/operations/{name}", f"reading operation {name}"
        )

    async def wait(
        self,
        project: str,
        op: Mapping[str, Any],
        *,
        within: float,
        sink: Sink = discard,
        first_poll: float = 0.2,
        max_poll: float = 5.0,
    ) -> dict[str, Any]:
        """Poll an operation until DONE; raise BackendError on its error or a timeout."""
        name = str(op["name"])
        location = str(op.get("location") or op.get("zone"))
        what = str(op.get("operationType", "operation")).lower().replace("_", " ")
        current: dict[str, Any] = dict(op)
        delay = first_poll
        started = anyio.current_time()
        last_report = started
        with anyio.move_on_after(within) as scope:
            while current.get("status") != "DONE":
                await anyio.sleep(delay)
                delay = min(max_poll, delay * 2)
                current = await self.operation(project, location, name)
                now = anyio.current_time()
                if now - last_report >= 15:
                    last_report = now
                    sink(
                        Notice(
                            f"{what}: {current.get('status', '?').lower()} ({now - started:.0f}s)"
                        )
                    )
        if scope.cancelled_caught:
            raise BackendError(
                f"{what} did not finish within {within:.0f}s (operation {name})",
                hint="it goes on in the background; see `caliban cluster ls` or the Cloud console",
            )
        error = current.get("error")
        if isinstance(error, dict) and error.get("message"):
            raise BackendError(f"{what} failed: {error['message']}")
        return current

    # -- compute ---------------------------------------------------------------------------

    async def region(self, project: str, region: str) -> dict[str, Any]:
        return await self._get(
            f"{self.compute}/compute/v1/projects/{project}/regions/{region}",
            f"reading the quotas of {region}",
        )

    async def accelerator_types(self, project: str, zone: str) -> dict[str, int]:
        """GKE accelerator name -> maximum cards per machine, in ``zone``."""
        url = f"{self.compute}/compute/v1/projects/{project}/zones/{zone}/acceleratorTypes"
        page = await self._get(url, f"listing accelerator types of {zone}")
        return {
            str(i["name"]): int(i.get("maximumCardsPerInstance") or 0)
            for i in page.get("items") or []
        }
