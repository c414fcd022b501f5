"""A deliberately thin raw-aiohttp client for the fake Vertex API, for tests of the fakes.

It does no retrying and no error translation, so tests see exactly what the wire carried.
"""

from __future__ import annotations

import copy
import json as json_module
from dataclasses import dataclass
from typing import Any

import aiohttp
from multidict import CIMultiDictProxy

VALID_BODY: dict[str, Any] = {
    "displayName": "exp-1",
    "labels": {"caliban_job": "j1"},
    "jobSpec": {
        "workerPoolSpecs": [
            {
                "machineSpec": {
                    "machineType": "n1-standard-8",
                    "acceleratorType": "NVIDIA_TESLA_T4",
                    "acceleratorCount": 1,
                },
                "replicaCount": 1,
                "containerSpec": {
                    "imageUri": "us-central1-docker.pkg.dev/p/repo/img@sha256:" + "0" * 64,
                    "args": ["--lr", "0.01"],
                },
            }
        ],
        "scheduling": {"timeout": "86400s", "strategy": "STANDARD"},
    },
}


def job_body(display_name: str = "exp-1", **labels: str) -> dict[str, Any]:
    """A valid CustomJob create body (a fresh copy) with the given name and labels."""
    body = copy.deepcopy(VALID_BODY)
    body["displayName"] = display_name
    body["labels"] = labels or {"caliban_job": "j1"}
    return body


@dataclass
class Reply:
    """What came back: HTTP status, decoded JSON body (or None) and headers."""

    status: int
    body: Any
    headers: CIMultiDictProxy[str]

    @property
    def error(self) -> dict[str, Any]:
        """The google.rpc.Status inside an error reply."""
        error: dict[str, Any] = self.body["error"]
        return error


class VertexRest:
    """Calls the fake's REST endpoints with a bearer token, one request per call."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        token: str | None = "ya29.test",
        *,
        project: str = "test-proj",
        location: str = "us-central1",
    ) -> None:
        self.session, self.base_url, self.token = session, base_url, token
        self.project, self.location = project, location

    @property
    def parent(self) -> str:
        """``projects/{project}/locations/{location}``."""
        return f"projects/{self.project}/locations/{self.location}"

    async def call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> Reply:
        """One request to ``/v1/{path}``; returns the reply whatever its status."""
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        kwargs: dict[str, Any] = {"headers": headers, "params": params}
        if json is not None:
            kwargs["json"] = json
        if timeout is not None:
            kwargs["timeout"] = aiohttp.ClientTimeout(total=timeout)
        async with self.session.request(method, f"{self.base_url}/v1/{path}", **kwargs) as resp:
            text = await resp.text()
            try:
                body = json_module.loads(text) if text else None
            except ValueError:  # aiohttp's own plain-text 404/405 pages
                body = text
            return Reply(resp.status, body, resp.headers)

    async def create(self, body: dict[str, Any], *, timeout: float | None = None) -> Reply:
        """customJobs.create."""
        return await self.call("POST", f"{self.parent}/customJobs", json=body, timeout=timeout)

    async def get(self, name: str) -> Reply:
        """customJobs.get by full resource name."""
        return await self.call("GET", name)

    async def list_jobs(self, **params: str) -> Reply:
        """customJobs.list with query parameters (filter, pageSize, pageToken...)."""
        return await self.call("GET", f"{self.parent}/customJobs", params=params)

    async def list_all(self, filter_text: str = "", page_size: int = 100) -> list[dict[str, Any]]:
        """Every job matching ``filter_text``, following nextPageToken."""
        jobs: list[dict[str, Any]] = []
        token = ""
        while True:
            params = {"filter": filter_text, "pageSize": str(page_size)}
            if token:
                params["pageToken"] = token
            reply = await self.list_jobs(**params)
            assert reply.status == 200, reply.body
            jobs.extend(reply.body.get("customJobs", []))
            token = reply.body.get("nextPageToken", "")
            if not token:
                return jobs

    async def cancel(self, name: str, body: dict[str, Any] | None = None) -> Reply:
        """customJobs.cancel (empty body unless given)."""
        return await self.call("POST", f"{name}:cancel", json=body)

    async def delete(self, name: str) -> Reply:
        """customJobs.delete."""
        return await self.call("DELETE", name)
