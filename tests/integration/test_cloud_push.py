"""Pushing the built image: to Debian's docker-registry on 127.0.0.1 through the real engine
(pinned by digest, skipped when the registry already has it), and the errors a user sees when a
registry refuses. Google's Artifact Registry is not reachable here: its naming and the
``oauth2accesstoken`` login are checked without it."""

from __future__ import annotations

import base64
import json
import re
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from caliban.adapters.cloud import registry
from caliban.errors import ValidationError
from tests.conftest import MakeProject, docker_cli
from tests.fakes.google_http import FakeServer
from tests.fakes.vertex import FakeVertex
from tests.integration.cloud_helpers import caliban, cli_env, db_jobs

MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"


class FakeRegistry(FakeServer):
    """The Docker registry v2 calls dockerd makes for a push, refusing them as told.

    ``mode``: "token" - the token endpoint answers 403 DENIED (bad credentials);
    "upload" - a token is granted, the first blob upload answers 403 DENIED (no write
    permission); "unknown" - the upload answers 404 NAME_UNKNOWN (no such repository).
    """

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode
        self.calls: list[str] = []
        self.basic_auth: list[str] = []

    def build_app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._any)
        return app

    def _challenge(self) -> web.Response:
        realm = f"{self.url}/v2/token"
        return web.json_response(
            {"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]},
            status=401,
            headers={"WWW-Authenticate": f'Bearer realm="{realm}",service="{self.host}"'},
        )

    @staticmethod
    def _error(status: int, code: str, message: str) -> web.Response:
        return web.json_response({"errors": [{"code": code, "message": message}]}, status=status)

    async def _any(self, request: web.Request) -> web.Response:
        self.calls.append(f"{request.method} {request.path}")
        if request.path == "/v2/token":
            self.basic_auth.append(request.headers.get("Authorization", ""))
            if self.mode == "token":
                return self._error(403, "DENIED", "requested access to the resource is denied")
            return web.json_response({"token": "registry-token"})
        if request.headers.get("Authorization") != "Bearer registry-token":
            return self._challenge()
        if request.path == "/v2/":
            return web.json_response({})
        if self.mode == "unknown":
            return self._error(404, "NAME_UNKNOWN", "repository name not known to registry")
        if request.method in ("HEAD", "GET"):
            return web.Response(status=404)
        return self._error(403, "DENIED", "requested access to the resource is denied")


# -- naming and the Google login (no network) -----------------------------------------------


def test_artifact_registry_names() -> None:
    target = registry.artifact_registry("europe-west4", "my-proj", "team", "caliban-app", "t1")
    assert target.repository == "europe-west4-docker.pkg.dev/my-proj/team/caliban-app"
    assert target.tag == "t1" and target.host == "europe-west4-docker.pkg.dev"
    assert target.path == "my-proj/team/caliban-app"
    assert target.is_google and target.scheme == "https"
    # Domain-scoped projects ("example.com:proj") become a path in the registry.
    scoped = registry.artifact_registry("us-central1", "example.com:proj", "r", "i", "t")
    assert scoped.repository == "us-central1-docker.pkg.dev/example.com/proj/r/i"


def test_each_region_gets_a_registry_it_can_pull_from() -> None:
    regions = ("us-central1", "europe-west4", "asia-northeast1")
    targets = registry.region_targets(
        regions, prefix=None, project="p", repository="caliban", image="caliban-app", tag="t1"
    )
    assert {r: t.repository for r, t in targets.items()} == {
        r: f"{r}-docker.pkg.dev/p/caliban/caliban-app" for r in regions
    }
    shared = registry.region_targets(
        regions, prefix="registry.example/ml", project="p", repository="r", image="i", tag="t"
    )
    assert {t.repository for t in shared.values()} == {"registry.example/ml/i"}
    per_region = registry.region_targets(
        regions[:2],
        prefix="reg.example/{region}/ml",
        project="p",
        repository="r",
        image="i",
        tag="t",
    )
    assert [t.repository for t in per_region.values()] == [
        "reg.example/us-central1/ml/i",
        "reg.example/europe-west4/ml/i",
    ]


def test_custom_registry_names() -> None:
    local = registry.custom_registry("127.0.0.1:5000/caliban/", "app", "t")
    assert local.repository == "127.0.0.1:5000/caliban/app"
    assert local.scheme == "http" and not local.is_google
    assert registry.custom_registry("localhost", "app", "t").scheme == "http"
    remote = registry.custom_registry("registry.example.com/team", "app", "t")
    assert remote.scheme == "https" and not remote.is_google
    assert registry.custom_registry("gcr.io/proj", "app", "t").is_google
    with pytest.raises(ValidationError, match="must start with a registry host"):
        registry.custom_registry("caliban", "app", "t")


class _Creds:
    def __init__(self) -> None:
        self.calls = 0

    async def token(self) -> str:
        self.calls += 1
        return "ya29.fresh"


async def test_google_registries_get_the_oauth2accesstoken_login() -> None:
    creds = _Creds()
    google = registry.artifact_registry("us-central1", "p", "r", "i", "t")
    auth = await registry._auth(creds, google)  # type: ignore[arg-type]
    assert auth == {"username": "oauth2accesstoken", "password": "ya29.fresh"}
    other = registry.custom_registry("127.0.0.1:5000/x", "i", "t")
    assert await registry._auth(creds, other) is None  # type: ignore[arg-type]
    assert await registry._auth(None, google) is None
    assert creds.calls == 1


async def test_remote_digest_follows_the_bearer_challenge_with_the_google_login() -> None:
    """What `push` asks before pushing: the registry's digest for the tag, through the token
    dance Artifact Registry uses (Basic oauth2accesstoken:<token> -> Bearer)."""
    seen: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(f"{request.method} {request.path_qs}")
        if request.path == "/v2/token":
            assert (
                request.headers["Authorization"]
                == "Basic " + base64.b64encode(b"oauth2accesstoken:ya29.fresh").decode()
            )
            return web.json_response({"token": "t0k"})
        if request.headers.get("Authorization") != "Bearer t0k":
            realm = f"http://{request.host}/v2/token"
            return web.Response(
                status=401, headers={"WWW-Authenticate": f'Bearer realm="{realm}",service="s"'}
            )
        assert MANIFEST in request.headers["Accept"]
        return web.Response(headers={"Docker-Content-Digest": "sha256:" + "c" * 64})

    class Fake(FakeServer):
        def build_app(self) -> web.Application:
            app = web.Application()
            app.router.add_route("*", "/{tail:.*}", handler)
            return app

    async with Fake() as server, aiohttp.ClientSession() as http:
        target = registry.custom_registry(f"127.0.0.1:{server.port}/p/r", "img", "v1")
        auth = {"username": "oauth2accesstoken", "password": "ya29.fresh"}
        assert await registry.remote_digest(http, target, auth) == "sha256:" + "c" * 64
    assert seen[0] == "HEAD /v2/p/r/img/manifests/v1"
    assert seen[1] == "GET /v2/token?service=s&scope=repository:p/r/img:pull"


# -- real pushes through dockerd ------------------------------------------------------------


@pytest.fixture
async def push_env(
    tmp_path: Path, env: dict[str, str], service_account_file: Path, vertex_server: FakeVertex
) -> AsyncIterator[dict[str, str]]:
    yield cli_env(tmp_path, service_account_file, vertex_server, base=env)


def _image_uris(vertex: FakeVertex) -> list[str]:
    return [
        j.body["jobSpec"]["workerPoolSpecs"][0]["containerSpec"]["imageUri"] for j in vertex.jobs
    ]


@pytest.mark.docker
@pytest.mark.registry
@pytest.mark.slow  # the first push sends the whole base image (about 1 GB) to a fresh registry
async def test_build_push_and_submit_by_digest_then_skip_the_push(
    tmp_path: Path,
    make_project: MakeProject,
    vertex_server: FakeVertex,
    docker_registry: str,
    push_env: dict[str, str],
) -> None:
    folder = make_project({"sweep.json": json.dumps({"seed": [1, 2]})}, name="pushme")
    prefix = f"{docker_registry}/caliban"
    args = [
        "cloud",
        "--image_registry",
        prefix,
        "--experiment_config",
        "sweep.json",
        "--xgroup",
        "pushed",
        "job.py",
    ]
    first = await caliban(args, cwd=folder, env=push_env, timeout=600)
    assert first.returncode == 0, first.stdout + first.stderr
    assert f"pushing {prefix}/caliban-pushme:" in first.stdout
    assert "2 job(s): 2 submitted" in first.stdout

    # The registry holds the tag, and the jobs run exactly that manifest, by digest.
    uris = _image_uris(vertex_server)
    assert len(uris) == 2 and len(set(uris)) == 1
    repo, digest = uris[0].split("@")
    assert repo == f"{prefix}/caliban-pushme" and re.fullmatch(r"sha256:[0-9a-f]{64}", digest)
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://{docker_registry}/v2/caliban/caliban-pushme/tags/list") as r:
            tags = (await r.json())["tags"]
        assert len(tags) == 1
        url = f"http://{docker_registry}/v2/caliban/caliban-pushme/manifests/{tags[0]}"
        async with http.head(url, headers={"Accept": MANIFEST}) as r:
            assert r.headers["Docker-Content-Digest"] == digest
    assert all(j[2] for j in db_jobs(tmp_path / "home", "pushed"))

    # Same content: no build, no push, same image for the new job.
    second = await caliban([*args[:-2], "again", "job.py"], cwd=folder, env=push_env)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "build skipped" in second.stdout
    assert "already in the registry; push skipped" in second.stdout
    assert "pushing" not in second.stdout
    assert set(_image_uris(vertex_server)) == {uris[0]} and len(vertex_server.jobs) == 4


@pytest.mark.docker
@pytest.mark.registry
@pytest.mark.slow
async def test_a_multi_region_sweep_pushes_to_each_regions_registry(
    tmp_path: Path,
    make_project: MakeProject,
    vertex_server: FakeVertex,
    docker_registry: str,
    push_env: dict[str, str],
) -> None:
    """Artifact Registry is regional: each job must name an image in a registry of its own
    region. ``{region}`` in --image_registry takes the same per-region path as the default
    REGION-docker.pkg.dev naming, here against the local registry."""
    folder = make_project({"sweep.json": json.dumps({"seed": [1, 2, 3, 4]})}, name="regions")
    regions = ("us-central1", "europe-west4")
    done = await caliban(
        [
            "cloud",
            "--image_registry",
            f"{docker_registry}/{{region}}",
            "--region",
            ",".join(regions),
            "--experiment_config",
            "sweep.json",
            "--xgroup",
            "regions",
            "job.py",
        ],
        cwd=folder,
        env=push_env,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    for region in regions:
        assert f"pushing {docker_registry}/{region}/caliban-regions:" in done.stdout
    digests = set()
    for job in vertex_server.jobs:
        uri = job.body["jobSpec"]["workerPoolSpecs"][0]["containerSpec"]["imageUri"]
        repo, digest = uri.split("@")
        assert repo == f"{docker_registry}/{job.location}/caliban-regions", (job.location, uri)
        digests.add(digest)
    assert sorted(j.location for j in vertex_server.jobs) == sorted(regions * 2)
    assert len(digests) == 1  # the same image, in two registries
    async with aiohttp.ClientSession() as http:
        for region in regions:
            name = f"{region}/caliban-regions"
            async with http.get(f"http://{docker_registry}/v2/{name}/tags/list") as r:
                (tag,) = (await r.json())["tags"]
            url = f"http://{docker_registry}/v2/{name}/manifests/{tag}"
            async with http.head(url, headers={"Accept": MANIFEST}) as r:
                assert r.headers["Docker-Content-Digest"] in digests
    # What the store recorded for each job is the image its body names.
    with sqlite3.connect(tmp_path / "home" / "caliban.db") as db:
        rows = db.execute("SELECT image, spec, details FROM jobs").fetchall()
    assert len(rows) == 4
    for image, spec, details in rows:
        pool = json.loads(spec)["jobSpec"]["workerPoolSpecs"][0]
        assert image == pool["containerSpec"]["imageUri"]
        assert image.startswith(f"{docker_registry}/{json.loads(details)['region']}/")


# dockerd retries a refused upload for about 50 s before it reports it (with the message
# cut to "denied"); a refused login is caught before the push starts, by caliban itself.
SLOW = pytest.mark.slow


@pytest.mark.docker
@pytest.mark.parametrize(
    ("mode", "needle"),
    [
        pytest.param(
            "token",
            "the registry refused the push of {repo}: denied: requested access to the resource "
            "is denied",
            id="login-denied",
        ),
        pytest.param(
            "upload",
            "the registry refused the push of {repo}: denied",
            id="upload-denied",
        ),
        pytest.param(
            "unknown",
            "the registry has no repository for {repo}: name unknown",
            id="no-repository",
        ),
    ],
)
async def test_a_refused_push_is_one_clear_error(
    tmp_path: Path,
    make_project: MakeProject,
    vertex_server: FakeVertex,
    push_env: dict[str, str],
    mode: str,
    needle: str,
) -> None:
    folder = make_project(name="refused")
    async with FakeRegistry(mode) as fake:
        prefix = f"127.0.0.1:{fake.port}/team"
        done = await caliban(
            ["cloud", "--image_registry", prefix, "job.py"], cwd=folder, env=push_env, timeout=600
        )
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 2 and "Traceback" not in done.stderr, done.stderr
    assert lines[0].startswith("caliban: " + needle.format(repo=f"{prefix}/caliban-refused"))
    hint = "create the repository first" if mode == "unknown" else "credentials and permissions"
    assert hint in lines[1]
    assert vertex_server.counters()["creates_received"] == 0
    assert not (tmp_path / "home" / "caliban.db").exists() or db_jobs(tmp_path / "home", "x") == []
    assert any(c.startswith("GET /v2/") for c in fake.calls)
    if mode == "token":  # refused before dockerd was asked to push anything
        assert not any("/blobs/" in c for c in fake.calls)
    # The image was built and tagged for the registry; nothing else happened.
    assert docker_cli("images", "-q", f"{prefix}/caliban-refused").strip()
