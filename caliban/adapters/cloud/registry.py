"""Pushing the project image to a registry, once per content.

Jobs on Vertex and Kubernetes pull the image by digest
(``HOST/PATH/NAME@sha256:...``), so they run exactly what was built. The push
goes through the Docker engine (aiodocker) with the ``oauth2accesstoken`` login
for Google registries. It is skipped when the registry already holds this tag
with the digest this machine pushed before: the image tag is a content hash,
so an unchanged project is pushed once.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urljoin

import aiodocker
import aiohttp
from aiodocker.exceptions import DockerError

from caliban.adapters.cloud.auth import Credentials
from caliban.adapters.docker import error_text
from caliban.errors import BackendError, PushError, ValidationError
from caliban.events import Notice, PushProgress, Sink

# Where images go when not to Artifact Registry (same as --image_registry).
REGISTRY_ENV = "CALIBAN_IMAGE_REGISTRY"

_MANIFEST_TYPES = ", ".join(
    [
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
    ]
)
_LOCAL_HOSTS = re.compile(r"^(localhost|127\.\d+\.\d+\.\d+|\[::1\])(:\d+)?$")


@dataclass(frozen=True)
class Target:
    """Where an image goes: ``host/path/name`` and a tag."""

    repository: str
    tag: str

    @property
    def host(self) -> str:
        return self.repository.split("/", 1)[0]

    @property
    def path(self) -> str:
        return self.repository.split("/", 1)[1]

    @property
    def scheme(self) -> str:
        # dockerd talks plain HTTP to registries on the loopback, so do we.
        return "http" if _LOCAL_HOSTS.match(self.host) else "https"

    @property
    def is_google(self) -> bool:
        return self.host.endswith((".pkg.dev", "gcr.io"))


def artifact_registry(region: str, project: str, repository: str, image: str, tag: str) -> Target:
    """``REGION-docker.pkg.dev/PROJECT/REPOSITORY/IMAGE:TAG`` (Container Registry is gone)."""
    return Target(f"{region}-docker.pkg.dev/{project.replace(':', '/')}/{repository}/{image}", tag)


def custom_registry(prefix: str, image: str, tag: str) -> Target:
    prefix = prefix.strip().rstrip("/")
    if "/" not in prefix and "." not in prefix and ":" not in prefix and prefix != "localhost":
        raise ValidationError(
            f"--image_registry {prefix!r} must start with a registry host, e.g. "
            "registry.example.com/team or 127.0.0.1:5000/caliban"
        )
    return Target(f"{prefix}/{image}", tag)


REGION_FIELD = "{region}"
"""In ``--image_registry``, replaced by each job's region: one push per region."""


def region_targets(
    regions: tuple[str, ...],
    *,
    prefix: str | None,
    project: str,
    repository: str,
    image: str,
    tag: str,
) -> dict[str, Target]:
    """Where the image goes for the jobs of each region.

    Artifact Registry repositories are regional and a job pulls from the registry it
    is given, so by default each region gets its own
    ``REGION-docker.pkg.dev/PROJECT/REPOSITORY``. ``prefix`` (``--image_registry``)
    replaces that: one registry for every region, or one per region when it holds
    ``{region}``.
    """
    if prefix and REGION_FIELD in prefix:
        return {r: custom_registry(prefix.replace(REGION_FIELD, r), image, tag) for r in regions}
    if prefix:
        shared = custom_registry(prefix, image, tag)
        return {r: shared for r in regions}
    return {r: artifact_registry(r, project, repository, image, tag) for r in regions}


async def _auth(credentials: Credentials | None, target: Target) -> dict[str, str] | None:
    if credentials is None or not target.is_google:
        return None
    return {"username": "oauth2accesstoken", "password": await credentials.token()}


def _challenge(header: str) -> tuple[str, dict[str, str]]:
    scheme, _, rest = header.partition(" ")
    params = dict(re.findall(r'(\w+)="([^"]*)"', rest))
    return scheme.lower(), params


async def remote_digest(
    session: aiohttp.ClientSession, target: Target, auth: Mapping[str, str] | None
) -> str | None:
    """The digest the registry holds for the tag, or None when it has none."""
    url = f"{target.scheme}://{target.host}/v2/{target.path}/manifests/{target.tag}"
    headers = {"Accept": _MANIFEST_TYPES}
    basic = aiohttp.encode_basic_auth(auth["username"], auth["password"]) if auth else None
    try:
        for _ in range(2):
            async with session.head(url, headers=headers) as response:
                if response.status == 200:
                    return response.headers.get("Docker-Content-Digest")
                if response.status == 404:
                    return None
                if response.status != 401 or "Authorization" in headers:
                    return None  # cannot tell: push, and let the engine report problems
                scheme, params = _challenge(response.headers.get("WWW-Authenticate", ""))
            if scheme == "basic" and basic is not None:
                headers["Authorization"] = basic
            elif scheme == "bearer" and "realm" in params:
                query = {k: v for k, v in params.items() if k in ("service", "scope")}
                query.setdefault("scope", f"repository:{target.path}:pull")
                login = {"Authorization": basic} if basic else None
                async with session.get(params["realm"], params=query, headers=login) as resp:
                    if resp.status != 200:
                        return None
                    data = await resp.json(content_type=None)
                token = data.get("token") or data.get("access_token")
                if not token:
                    return None
                headers["Authorization"] = f"Bearer {token}"
            else:
                return None
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return None
    return None


async def check_access(
    session: aiohttp.ClientSession, target: Target, auth: Mapping[str, str] | None
) -> None:
    """Ask the registry for push access the way dockerd will, and fail at once when
    it is refused: dockerd retries a refused login or upload for about a minute
    before it reports "denied". The check logs in for push, then opens a blob
    upload and cancels it, which is where a missing repository (404) or a
    read-only account (403) shows. Anything inconclusive is left to the push."""
    base = f"{target.scheme}://{target.host}"
    basic = aiohttp.encode_basic_auth(auth["username"], auth["password"]) if auth else None
    headers: dict[str, str] = {}
    try:
        async with session.get(f"{base}/v2/") as response:
            if response.status == 401:
                scheme, params = _challenge(response.headers.get("WWW-Authenticate", ""))
            elif response.status == 200:
                scheme, params = "", {}
            else:
                return
        if scheme == "basic" and basic is not None:
            headers["Authorization"] = basic
        elif scheme == "bearer" and "realm" in params:
            query = {"scope": f"repository:{target.path}:push,pull"}
            if "service" in params:
                query["service"] = params["service"]
            login = {"Authorization": basic} if basic else None
            async with session.get(params["realm"], params=query, headers=login) as response:
                if response.status in (401, 403):
                    raise _push_error(
                        _registry_message(await response.text(), response.status), target
                    )
                if response.status != 200:
                    return
                data = await response.json(content_type=None)
            token = data.get("token") or data.get("access_token")
            if not token:
                return
            headers["Authorization"] = f"Bearer {token}"
        elif scheme:
            return
        upload = f"{base}/v2/{target.path}/blobs/uploads/"
        async with session.post(upload, headers=headers) as response:
            if response.status in (401, 403, 404):
                raise _push_error(_registry_message(await response.text(), response.status), target)
            location = response.headers.get("Location") if response.status == 202 else None
        if location:
            # Cancel the empty upload we opened; the registry expires it anyway.
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.delete(urljoin(upload, location), headers=headers):
                    pass
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return


def _registry_message(body: str, status: int) -> str:
    """A registry error body as dockerd words it: ``denied: <message>``."""
    try:
        first = json.loads(body)["errors"][0]
        return f"{str(first['code']).lower().replace('_', ' ')}: {first['message']}"
    except (ValueError, LookupError, TypeError):
        return {401: "unauthorized", 403: "denied"}.get(status, f"HTTP {status}")


async def push(
    docker: aiodocker.Docker,
    session: aiohttp.ClientSession,
    *,
    image: str,
    target: Target,
    credentials: Credentials | None,
    sink: Sink,
) -> str:
    """Push ``image`` as ``target`` and return the pinned reference ``repo@digest``."""
    try:
        await docker.images.tag(image, target.repository, tag=target.tag)
    except DockerError as exc:
        raise BackendError(f"cannot tag {image} as {target.repository}: {error_text(exc)}") from exc
    auth = await _auth(credentials, target)
    info = await docker.images.inspect(f"{target.repository}:{target.tag}")
    pushed_before = {
        d.split("@", 1)[1]
        for d in info.get("RepoDigests") or []
        if d.startswith(target.repository + "@")
    }
    if pushed_before:
        remote = await remote_digest(session, target, auth)
        if remote in pushed_before:
            sink(
                Notice(f"{target.repository}:{target.tag} is already in the registry; push skipped")
            )
            return f"{target.repository}@{remote}"
    await check_access(session, target, auth)
    sink(Notice(f"pushing {target.repository}:{target.tag}"))
    digest: str | None = None
    layers: dict[str, str] = {}
    try:
        async for chunk in docker.images.push(
            target.repository, tag=target.tag, auth=auth, stream=True
        ):
            if "aux" in chunk and isinstance(chunk["aux"], dict):
                digest = chunk["aux"].get("Digest", digest)
            elif "error" in chunk:
                raise _push_error(str(chunk["error"]), target)
            elif "status" in chunk:
                status, layer = str(chunk["status"]), chunk.get("id")
                # Byte counts come many times a second: report each layer's
                # changes of state (Preparing, Pushing, Pushed...), not each chunk.
                if layer is not None and layers.get(str(layer)) == status:
                    continue
                if layer is not None:
                    layers[str(layer)] = status
                sink(PushProgress(target.repository, status, layer))
    except DockerError as exc:
        raise _push_error(error_text(exc), target) from exc
    if digest is None:
        raise PushError(f"the push of {target.repository}:{target.tag} reported no digest")
    return f"{target.repository}@{digest}"


def _push_error(message: str, target: Target) -> PushError:
    lowered = message.lower()
    if "denied" in lowered or "unauthorized" in lowered or "403" in lowered:
        hint = (
            "check that the repository exists (gcloud artifacts repositories create ...) "
            "and that the account may write to it (roles/artifactregistry.writer)"
            if target.is_google
            else "check the registry's credentials and permissions"
        )
        return PushError(
            f"the registry refused the push of {target.repository}: {message}", hint=hint
        )
    if "name unknown" in lowered or "not found" in lowered:
        return PushError(
            f"the registry has no repository for {target.repository}: {message}",
            hint="create the repository first",
        )
    return PushError(
        f"cannot push {target.repository}:{target.tag}: {message}",
        retryable="connection" in lowered or "timeout" in lowered,
    )
