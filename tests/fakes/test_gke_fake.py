"""The fake GKE + Compute API, driven with raw aiohttp as production code will drive it."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from kubernetes_asyncio import client, config

from . import k8s_fixtures
from .gke import FakeGke
from .k8s import FakeKubernetes
from .k8s_fixtures import GKE_TOKEN, make_job

# Fixtures, bound here so this module works whether or not a conftest imports them too.
fake_gke = k8s_fixtures.fake_gke
fake_k8s_tls = k8s_fixtures.fake_k8s_tls

P, ZONE = "test-proj", "us-central1-a"
AUTH = {"Authorization": f"Bearer {GKE_TOKEN}"}

# The shape of the body the original caliban sent (caliban-behavior.md §6.2), with real JSON
# booleans and without the output-only "zone": the discovery check refuses both.
CALIBAN_BODY: dict[str, Any] = {
    "cluster": {
        "name": "caliban-test",
        "ipAllocationPolicy": {"useIpAliases": True},
        "enable_tpu": True,
        "autoscaling": {
            "enableNodeAutoprovisioning": True,
            "autoprovisioningNodePoolDefaults": {
                "oauthScopes": [
                    "https://www.googleapis.com/auth/compute",
                    "https://www.googleapis.com/auth/cloud-platform",
                ]
            },
            "resourceLimits": [
                {"resourceType": "cpu", "maximum": "24"},
                {"resourceType": "memory", "maximum": "1536"},
                {"resourceType": "nvidia-tesla-t4", "minimum": 0, "maximum": 4},
            ],
        },
        "nodePools": [
            {
                "name": "default-pool",
                "initialNodeCount": "3",
                "config": {"oauthScopes": ["https://www.googleapis.com/auth/devstorage.read_only"]},
            }
        ],
        "releaseChannel": {"channel": "REGULAR"},
        "locations": [ZONE],
    },
    "parent": f"projects/{P}/locations/{ZONE}",
}


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(headers=AUTH) as session:
        yield session


def clusters_url(gke: FakeGke, location: str = ZONE) -> str:
    return f"{gke.url}/v1/projects/{P}/locations/{location}/clusters"


async def get_json(http: aiohttp.ClientSession, url: str, status: int = 200) -> dict[str, Any]:
    async with http.get(url) as resp:
        assert resp.status == status, await resp.text()
        body: dict[str, Any] = await resp.json()
        return body


async def wait_done(
    http: aiohttp.ClientSession, gke: FakeGke, op: dict[str, Any]
) -> dict[str, Any]:
    url = f"{gke.url}/v1/projects/{P}/locations/{op['location']}/operations/{op['name']}"
    for _ in range(200):
        polled = await get_json(http, url)
        if polled["status"] == "DONE":
            return polled
        assert polled["status"] in ("PENDING", "RUNNING")
        await asyncio.sleep(0.01)
    raise AssertionError("operation never finished")


async def test_list_is_empty_object_then_lists_clusters(
    fake_gke: FakeGke, http: aiohttp.ClientSession
) -> None:
    # proto3 JSON drops empty repeated fields: no clusters is "{}", not {"clusters": []}.
    assert await get_json(http, clusters_url(fake_gke)) == {}
    fake_gke.add_cluster(P, ZONE, "a")
    fake_gke.add_cluster(P, "europe-west4", "b")
    fake_gke.add_cluster("other-proj", ZONE, "c")
    here = await get_json(http, clusters_url(fake_gke))
    assert [c["name"] for c in here["clusters"]] == ["a"]
    everywhere = await get_json(http, clusters_url(fake_gke, "-"))
    assert sorted(c["name"] for c in everywhere["clusters"]) == ["a", "b"]
    # The legacy zonal path serves the same data.
    legacy = await get_json(http, f"{fake_gke.url}/v1/projects/{P}/zones/{ZONE}/clusters")
    assert [c["name"] for c in legacy["clusters"]] == ["a"]


async def test_cluster_points_at_the_fake_apiserver_over_verified_tls(
    fake_gke: FakeGke, fake_k8s_tls: FakeKubernetes, http: aiohttp.ClientSession
) -> None:
    fake_gke.add_cluster(
        P,
        ZONE,
        "gpu",
        nodePools=[
            {
                "name": "t4-pool",
                "config": {
                    "machineType": "n1-standard-8",
                    "accelerators": [{"acceleratorCount": 2, "acceleratorType": "nvidia-tesla-t4"}],
                },
                "autoscaling": {"enabled": True, "minNodeCount": 0, "maxNodeCount": 5},
            }
        ],
        autoscaling={
            "enableNodeAutoprovisioning": True,
            "resourceLimits": [{"resourceType": "nvidia-tesla-t4", "maximum": 8}],
        },
    )
    cluster = await get_json(http, f"{clusters_url(fake_gke)}/gpu")
    assert cluster["status"] == "RUNNING" and cluster["location"] == cluster["zone"] == ZONE
    assert cluster["currentMasterVersion"] and cluster["releaseChannel"] == {"channel": "REGULAR"}
    [pool] = cluster["nodePools"]
    assert pool["config"]["accelerators"] == [
        {"acceleratorCount": "2", "acceleratorType": "nvidia-tesla-t4"}  # int64 -> string
    ]
    assert pool["autoscaling"]["maxNodeCount"] == 5 and pool["status"] == "RUNNING"
    assert cluster["autoscaling"]["resourceLimits"] == [
        {"resourceType": "nvidia-tesla-t4", "maximum": "8"}
    ]
    pools = await get_json(http, f"{clusters_url(fake_gke)}/gpu/nodePools")
    assert [p["name"] for p in pools["nodePools"]] == ["t4-pool"]

    # What production code does next: a kubeconfig from endpoint + CA + the Google token.
    ca = cluster["masterAuth"]["clusterCaCertificate"]
    assert base64.b64decode(ca).decode() == fake_k8s_tls.ca_cert_pem
    kcfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "gke",
        "clusters": [
            {
                "name": "gke",
                "cluster": {
                    "server": f"https://{cluster['endpoint']}",
                    "certificate-authority-data": ca,
                },
            }
        ],
        "users": [{"name": "u", "user": {"token": fake_k8s_tls.token}}],
        "contexts": [{"name": "gke", "context": {"cluster": "gke", "user": "u"}}],
    }
    api = await config.new_client_from_config_dict(kcfg)
    async with api:
        jobs: Any = client.BatchV1Api(api)  # plain-dict bodies are fine at runtime
        await jobs.create_namespaced_job("default", make_job("on-gke"))
    assert fake_k8s_tls.job("default", "on-gke") is not None


async def test_create_operation_then_running(
    fake_gke: FakeGke, http: aiohttp.ClientSession
) -> None:
    async with http.post(clusters_url(fake_gke), json=CALIBAN_BODY) as resp:
        assert resp.status == 200
        op = await resp.json()
    assert op["operationType"] == "CREATE_CLUSTER" and op["status"] == "RUNNING"
    assert op["name"].startswith("operation-") and op["targetLink"].endswith("/caliban-test")
    assert op["selfLink"].endswith(f"/operations/{op['name']}") and op["startTime"]

    provisioning = await get_json(http, f"{clusters_url(fake_gke)}/caliban-test")
    assert provisioning["status"] == "PROVISIONING" and "endpoint" not in provisioning

    done = await wait_done(http, fake_gke, op)
    assert "error" not in done and done["endTime"]
    cluster = await get_json(http, f"{clusters_url(fake_gke)}/caliban-test")
    assert cluster["status"] == "RUNNING" and cluster["endpoint"]
    assert cluster["enableTpu"] is True and cluster["ipAllocationPolicy"]["useIpAliases"] is True
    assert cluster["autoscaling"]["enableNodeAutoprovisioning"] is True
    assert cluster["autoscaling"]["resourceLimits"] == [
        {"resourceType": "cpu", "maximum": "24"},
        {"resourceType": "memory", "maximum": "1536"},
        {"resourceType": "nvidia-tesla-t4", "maximum": "4"},
    ]
    assert cluster["nodePools"][0]["initialNodeCount"] == 3
    assert cluster["locations"] == [ZONE]
    assert fake_gke.create_bodies == [CALIBAN_BODY]


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ({"cluster": {"name": "Bad_Name"}}, 400, "Must be a match of regex"),
        ({"cluster": {"name": "x" * 41}}, 400, "no longer than 40 characters"),
        ({"cluster": {"name": "ok", "bogusField": 1}}, 400, 'Unknown name "bogusField"'),
        ({"cluster": {}}, 400, "Cluster.name must be provided"),
        ({}, 400, "Cluster.name must be provided"),
        ({"cluster": {"name": "ok"}, "extra": 1}, 400, 'Unknown name "extra"'),
        (
            {"cluster": {"name": "ok", "enableTpu": "yes"}},
            400,
            "Invalid value at 'cluster.enable_tpu' (TYPE_BOOL)",
        ),
    ],
)
async def test_create_errors(
    fake_gke: FakeGke,
    http: aiohttp.ClientSession,
    body: dict[str, Any],
    status: int,
    fragment: str,
) -> None:
    async with http.post(clusters_url(fake_gke), json=body) as resp:
        assert resp.status == status
        error = (await resp.json())["error"]
    assert error["code"] == status and error["status"] == "INVALID_ARGUMENT"
    assert fragment in error["message"]
    assert fake_gke.clusters == {}


async def test_duplicate_and_missing(fake_gke: FakeGke, http: aiohttp.ClientSession) -> None:
    fake_gke.add_cluster(P, ZONE, "taken")
    async with http.post(clusters_url(fake_gke), json={"cluster": {"name": "taken"}}) as resp:
        assert resp.status == 409
        assert (await resp.json())["error"] == {
            "code": 409,
            "message": f"Already exists: projects/{P}/locations/{ZONE}/clusters/taken.",
            "status": "ALREADY_EXISTS",
        }
    missing = await get_json(http, f"{clusters_url(fake_gke)}/nope", status=404)
    assert missing["error"]["status"] == "NOT_FOUND"
    async with http.delete(f"{clusters_url(fake_gke)}/nope") as resp:
        assert resp.status == 404
    bad_op = f"{fake_gke.url}/v1/projects/{P}/locations/{ZONE}/operations/operation-1"
    assert (await get_json(http, bad_op, status=404))["error"]["status"] == "NOT_FOUND"


async def test_delete(fake_gke: FakeGke, http: aiohttp.ClientSession) -> None:
    fake_gke.add_cluster(P, ZONE, "doomed")
    async with http.delete(f"{clusters_url(fake_gke)}/doomed") as resp:
        assert resp.status == 200
        op = await resp.json()
    assert op["operationType"] == "DELETE_CLUSTER"
    stopping = await get_json(http, f"{clusters_url(fake_gke)}/doomed")
    assert stopping["status"] == "STOPPING"
    await wait_done(http, fake_gke, op)
    await get_json(http, f"{clusters_url(fake_gke)}/doomed", status=404)


async def test_delete_while_provisioning_is_refused(
    fake_gke: FakeGke, http: aiohttp.ClientSession
) -> None:
    async with http.post(clusters_url(fake_gke), json={"cluster": {"name": "young"}}) as resp:
        op = await resp.json()
    async with http.delete(f"{clusters_url(fake_gke)}/young") as resp:
        assert resp.status == 400
        assert (await resp.json())["error"]["status"] == "FAILED_PRECONDITION"
    fake_gke.complete_operations()
    assert (await wait_done(http, fake_gke, op))["status"] == "DONE"


async def test_failed_operation(fake_gke: FakeGke, http: aiohttp.ClientSession) -> None:
    fake_gke.fail_next_operation("Insufficient regional quota: CPUS")
    async with http.post(clusters_url(fake_gke), json={"cluster": {"name": "unlucky"}}) as resp:
        op = await resp.json()
    done = await wait_done(http, fake_gke, op)
    # Operation.error is a google.rpc.Status with the gRPC code (8), not an HTTP status.
    assert done["error"] == {"code": 8, "message": "Insufficient regional quota: CPUS"}
    cluster = await get_json(http, f"{clusters_url(fake_gke)}/unlucky")
    assert cluster["status"] == "ERROR" and "quota" in cluster["statusMessage"]


async def test_auth(fake_gke: FakeGke) -> None:
    async with aiohttp.ClientSession() as anonymous:
        body = await get_json(anonymous, clusters_url(fake_gke), status=401)
    assert body["error"]["status"] == "UNAUTHENTICATED"
    async with aiohttp.ClientSession(headers={"Authorization": "Bearer nope"}) as wrong:
        await get_json(wrong, clusters_url(fake_gke), status=401)
        await get_json(wrong, f"{fake_gke.url}/compute/v1/projects/{P}/regions/us-central1", 401)


async def test_token_validator_and_project_allow_list() -> None:
    async with (
        FakeGke(token_validator=lambda t: t == "ya29.ok", projects={P}) as gke,
        aiohttp.ClientSession(headers={"Authorization": "Bearer ya29.ok"}) as http,
    ):
        await get_json(http, clusters_url(gke))
        other = f"{gke.url}/v1/projects/not-mine/locations/-/clusters"
        assert (await get_json(http, other, 403))["error"]["status"] == "PERMISSION_DENIED"


async def test_injected_faults(fake_gke: FakeGke, http: aiohttp.ClientSession) -> None:
    fake_gke.fail_next(1, 429, "/v1/")
    fake_gke.fail_next(1, 503, "/v1/")
    limited = await get_json(http, clusters_url(fake_gke), status=429)
    assert limited["error"]["status"] == "RESOURCE_EXHAUSTED"
    assert limited["error"]["details"][0]["retryDelay"] == "1s"
    unavailable = await get_json(http, clusters_url(fake_gke), status=503)
    assert unavailable["error"]["status"] == "UNAVAILABLE"
    await get_json(http, clusters_url(fake_gke))


async def test_compute_quotas_and_accelerators(
    fake_gke: FakeGke, http: aiohttp.ClientSession
) -> None:
    fake_gke.set_quota(P, "us-central1", "CPUS", 1)
    fake_gke.set_quota(P, "us-central1", "NVIDIA_P100_GPUS", 2, usage=1)
    fake_gke.set_quota(P, "us-central1", "BOGUS", 5)
    region = await get_json(
        http, f"{fake_gke.compute_url}/compute/v1/projects/{P}/regions/us-central1"
    )
    quotas = {q["metric"]: (q["limit"], q["usage"]) for q in region["quotas"]}
    assert quotas["CPUS"] == (1, 0) and quotas["NVIDIA_P100_GPUS"] == (2, 1)
    assert quotas["BOGUS"] == (5, 0) and "NVIDIA_T4_GPUS" in quotas
    assert region["zones"][0].endswith("/zones/us-central1-a")

    url = f"{fake_gke.compute_url}/compute/v1/projects/{P}/zones/{ZONE}/acceleratorTypes"
    catalogue = await get_json(http, url)
    cards = {a["name"]: a["maximumCardsPerInstance"] for a in catalogue["items"]}
    assert cards["nvidia-tesla-t4"] == 4 and cards["nvidia-tesla-v100"] == 8
    fake_gke.set_accelerator_types(ZONE, {"nvidia-tesla-t4": 2})
    assert [a["name"] for a in (await get_json(http, url))["items"]] == ["nvidia-tesla-t4"]
    fake_gke.set_accelerator_types(ZONE, {})
    assert "items" not in await get_json(http, url)

    # Compute's own error shape: errors[] with a reason, no "status".
    missing = await get_json(
        http, f"{fake_gke.compute_url}/compute/v1/projects/{P}/zones/nowhere/acceleratorTypes", 404
    )
    assert missing["error"]["errors"][0]["reason"] == "notFound"


async def test_snake_case_fields_and_map_keys(
    fake_gke: FakeGke, http: aiohttp.ClientSession
) -> None:
    """Proto field names work like their lowerCamel JSON names; map keys stay as sent."""
    body = {
        "cluster": {
            "name": "snake",
            "initial_node_count": "2",
            "node_config": {"machine_type": "n1-standard-4"},
            "resource_labels": {"my_team": "ml"},
        }
    }
    async with http.post(clusters_url(fake_gke), json=body) as resp:
        assert resp.status == 200, await resp.text()
    fake_gke.complete_operations()
    cluster = await get_json(http, f"{clusters_url(fake_gke)}/snake")
    assert cluster["resourceLabels"] == {"my_team": "ml"}
    [pool] = cluster["nodePools"]
    assert pool["name"] == "default-pool" and pool["initialNodeCount"] == 2
    assert pool["config"]["machineType"] == "n1-standard-4"
    assert cluster["status"] == "RUNNING"


async def test_node_pool_create_is_checked_against_the_discovery_document(
    fake_gke: FakeGke, http: aiohttp.ClientSession
) -> None:
    fake_gke.add_cluster(P, ZONE, "lab")
    url = f"{clusters_url(fake_gke)}/lab/nodePools"
    bad = {"nodePool": {"name": "gpus", "initialNodeCount": 1, "status": "RUNNING", "gpus": 2}}
    async with http.post(url, json=bad) as resp:
        assert resp.status == 400
        error = (await resp.json())["error"]
    assert error["status"] == "INVALID_ARGUMENT" and error["code"] == 400
    (detail,) = error["details"]
    assert detail["@type"] == "type.googleapis.com/google.rpc.BadRequest"
    assert sorted(v["field"] for v in detail["fieldViolations"]) == [
        "node_pool",
        "node_pool.status",
    ]
    pools = fake_gke.clusters[(P, ZONE, "lab")].get("nodePools", [])
    assert "gpus" not in [p["name"] for p in pools]

    good = {
        "nodePool": {
            "name": "gpus",
            "initialNodeCount": 1,
            "config": {"machineType": "g2-standard-8"},
        }
    }
    async with http.post(url, json=good) as resp:
        assert resp.status == 200, await resp.text()
        op = await resp.json()
    await wait_done(http, fake_gke, op)
    pool = await get_json(http, f"{url}/gpus")
    assert pool["status"] == "RUNNING" and pool["config"]["machineType"] == "g2-standard-8"
