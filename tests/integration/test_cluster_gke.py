"""GKE: clusters through the local GKE API server, jobs on its cluster over TLS verified
with the cluster's own CA, with OAuth tokens from the local token server."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from caliban.errors import BackendError, ValidationError
from caliban.options import ClusterJobRequest, ClusterOptions, ProjectOptions
from caliban.session import Session
from caliban.spec import JobState
from tests.conftest import MakeProject
from tests.fakes.gke import FakeGke
from tests.fakes.k8s import FakeKubernetes
from tests.fakes.k8s_tls import make_certificates
from tests.fakes.oauth import FakeOAuth
from tests.integration.conftest import OpenSession

from .cluster_support import IMAGE, JOB_LABEL, caliban, cli_env

P, ZONE = "test-proj", "us-central1-a"


@pytest.fixture
async def kube(oauth_server: FakeOAuth) -> AsyncIterator[FakeKubernetes]:
    """The cluster's API server: HTTPS only counts, and only Google tokens get in."""
    async with FakeKubernetes(
        token=None, token_validator=oauth_server.valid_token, tls=True, seed=0
    ) as server:
        yield server


@pytest.fixture
async def gke(oauth_server: FakeOAuth, kube: FakeKubernetes) -> AsyncIterator[FakeGke]:
    async with FakeGke(
        token_validator=oauth_server.valid_token, kubernetes=kube, operation_delay=0.1
    ) as server:
        server.add_cluster(P, ZONE, "blueshift")
        yield server


@pytest.fixture
def genv(tmp_path: Path, gke: FakeGke) -> dict[str, str]:
    return {
        "CALIBAN_HOME": str(tmp_path / "home"),
        "HOME": str(tmp_path),
        "CALIBAN_GKE_ENDPOINT": gke.url,
        "CALIBAN_COMPUTE_ENDPOINT": gke.compute_url,
    }


@pytest.fixture
def gke_session(tmp_path: Path, genv: dict[str, str]) -> OpenSession:
    return lambda: Session(home=tmp_path / "home", environ=genv)


@pytest.fixture
def env(tmp_path: Path, gke: FakeGke, service_account_file: Path) -> dict[str, str]:
    """What the ``caliban`` processes under test see: the fake GKE and the fake key."""
    return cli_env(
        tmp_path,
        CALIBAN_GKE_ENDPOINT=gke.url,
        CALIBAN_COMPUTE_ENDPOINT=gke.url,
        GOOGLE_APPLICATION_CREDENTIALS=str(service_account_file),
    )


def gke_request(folder: Path, key: Path, **kw: object) -> ClusterJobRequest:
    base: dict[str, object] = {
        "project": ProjectOptions(folder=folder, entry="job.py", use_gpu=True),
        "cluster": ClusterOptions(cluster_name="blueshift", zone=ZONE, cloud_key=str(key)),
        "image_tag": IMAGE,
    }
    base.update(kw)
    return ClusterJobRequest(**base)  # type: ignore[arg-type]


GkeRequest = Callable[..., ClusterJobRequest]


@pytest.fixture
def new_gke_request(make_project: MakeProject, service_account_file: Path) -> GkeRequest:
    """``gke_request`` for a new project, with the fake key."""
    return lambda **kw: gke_request(make_project(), service_account_file, **kw)


async def test_jobs_go_to_the_gke_cluster_over_verified_tls(
    gke: FakeGke,
    kube: FakeKubernetes,
    service_account_file: Path,
    gke_session: OpenSession,
    new_gke_request: GkeRequest,
) -> None:
    async with gke_session() as s:
        result = await s.cluster_submit(
            new_gke_request(
                xgroup="g",
                experiments={"i": [1, 2, 3]},
                spot=True,
            )
        )
        assert result.ok and len(result.jobs) == 3
        for job in kube.jobs("default"):
            pod = job["spec"]["template"]["spec"]
            assert pod["nodeSelector"] == {
                "cloud.google.com/gke-accelerator": "nvidia-tesla-t4",
                "cloud.google.com/gke-spot": "true",
            }
            assert pod["containers"][0]["resources"]["requests"] == {
                "cpu": "1500m",
                "memory": "7000M",
            }
        record = result.jobs[0]
        assert record.details["cluster"] == {  # how status reconnects later
            "kind": "gke",
            "namespace": "default",
            "project": P,
            "location": ZONE,
            "cluster": "blueshift",
            "cloud_key": str(service_account_file),
            "endpoint": gke.url,
        }
        assert str(record.details["console_url"]).startswith(
            "https://console.cloud.google.com/kubernetes/job/us-central1-a/blueshift/default/"
        )
        kube.fail_job("default", str(record.platform_id))
        states = [j.state for j in await s.status(xgroup="g", max_jobs=0)]
        assert states == [JobState.FAILED, JobState.SUBMITTED, JobState.SUBMITTED]
    # Every API server request carried a token the OAuth server issued (else 401).
    assert kube.requests and all(r.status and r.status < 400 for r in kube.requests)
    assert gke.calls["get cluster"] >= 1


async def test_a_cluster_certificate_from_another_ca_is_refused(
    gke: FakeGke, kube: FakeKubernetes, gke_session: OpenSession, new_gke_request: GkeRequest
) -> None:
    other = make_certificates().ca_cert_pem
    gke.clusters[(P, ZONE, "blueshift")]["masterAuth"]["clusterCaCertificate"] = base64.b64encode(
        other.encode()
    ).decode()
    async with gke_session() as s:
        with pytest.raises(BackendError, match="cannot be verified"):
            await s.cluster_submit(new_gke_request(experiments={"i": [1]}))
    assert kube.requests == [] and kube.creates_received == 0


async def test_gpus_beyond_the_autoprovisioning_limits_are_refused(
    make_project: MakeProject,
    gke: FakeGke,
    kube: FakeKubernetes,
    service_account_file: Path,
    gke_session: OpenSession,
) -> None:
    gke.add_cluster(
        P,
        "us-central1-b",
        "nap",
        autoscaling={
            "enableNodeAutoprovisioning": True,
            "resourceLimits": [
                {"resourceType": "cpu", "maximum": "24"},
                {"resourceType": "nvidia-tesla-t4", "maximum": "4"},
            ],
        },
    )
    folder = make_project()
    cluster = ClusterOptions(
        cluster_name="nap", zone="us-central1-b", cloud_key=str(service_account_file)
    )
    async with gke_session() as s:
        with pytest.raises(ValidationError, match=r"cannot provision nodes with 1xV100.*4xnvidia"):
            await s.cluster_submit(
                gke_request(
                    folder, service_account_file, cluster=cluster, gpu_spec="1xV100", xgroup="g"
                )
            )
        assert kube.creates_received == 0
        ok = await s.cluster_submit(
            gke_request(folder, service_account_file, cluster=cluster, gpu_spec="4xT4", xgroup="g")
        )
        # Other resources in the same group are other jobs, not a resumption.
        forced = await s.cluster_submit(
            gke_request(
                folder,
                service_account_file,
                cluster=cluster,
                gpu_spec="8xT4",
                force=True,
                xgroup="g",
            )
        )
    assert ok.ok and forced.ok and kube.creates_accepted == 2


@pytest.mark.slow
async def test_cluster_commands(
    make_project: MakeProject, gke: FakeGke, kube: FakeKubernetes, env: dict[str, str]
) -> None:
    folder = make_project()

    code, out, err = await caliban(["cluster", "ls"], cwd=folder, env=env)
    assert code == 0, err
    assert out.splitlines()[1].split()[:3] == ["blueshift", ZONE, "RUNNING"]
    code, out, err = await caliban(["cluster", "ls", "--json"], cwd=folder, env=env)
    assert code == 0, err
    assert [(c["name"], c["location"], c["status"]) for c in json.loads(out)] == [
        ("blueshift", ZONE, "RUNNING")
    ]

    new = ["--cluster_name", "lab", "--zone", "us-central1-b"]
    code, out, err = await caliban(["cluster", "create", *new, "--dry_run"], cwd=folder, env=env)
    assert code == 0, err
    body = json.loads(out)
    limits = {
        r["resourceType"]: r["maximum"] for r in body["cluster"]["autoscaling"]["resourceLimits"]
    }
    # From the region's default quotas: 24 CPUs, 4 T4, 1 P100, 8 L4; no V100 (0),
    # nothing for preemptible quotas.
    assert limits == {
        "cpu": "24",
        "memory": "1536",
        "nvidia-tesla-t4": "4",
        "nvidia-tesla-p100": "1",
        "nvidia-l4": "8",
    }
    assert sorted(body["cluster"]["locations"]) == [f"us-central1-{z}" for z in "abcf"]
    assert gke.calls["create cluster"] == 0

    code, out, err = await caliban(
        ["cluster", "create", *new, "--single_zone", "--release_channel", "rapid"],
        cwd=folder,
        env=env,
    )
    assert code == 0, err
    created = gke.clusters[(P, "us-central1-b", "lab")]
    assert created["status"] == "RUNNING" and created["locations"] == ["us-central1-b"]
    assert created["releaseChannel"] == {"channel": "RAPID"}
    assert gke.calls["get operation"] >= 1

    code, _, err = await caliban(["cluster", "create", *new], cwd=folder, env=env)
    assert code == 2 and "already exists" in err

    code, out, err = await caliban(["cluster", "node_pool", "ls", *new], cwd=folder, env=env)
    assert code == 0, err
    assert out.splitlines()[1].split()[:2] == ["default-pool", "e2-medium"]

    code, _, err = await caliban(["cluster", "pod", "ls"], cwd=folder, env=env)
    assert code == 2 and "several GKE clusters" in err and "lab" in err

    code, _, err = await caliban(
        [
            "cluster",
            "job",
            "submit",
            "--cluster_name",
            "blueshift",
            "--image_tag",
            IMAGE,
            "--nogpu",
            "job.py",
        ],
        cwd=folder,
        env=env,
    )
    assert code == 0, err
    (job,) = kube.jobs("default")
    code, out, err = await caliban(
        ["cluster", "job", "ls", "--cluster_name", "blueshift"], cwd=folder, env=env
    )
    assert code == 0 and f"default/{job['metadata']['name']}" in out, err
    code, out, err = await caliban(
        ["cluster", "pod", "ls", "--cluster_name", "blueshift"], cwd=folder, env=env
    )
    assert code == 0 and job["metadata"]["name"] in out, err
    assert job["metadata"]["labels"][JOB_LABEL]

    code, out, err = await caliban(["cluster", "delete", *new], cwd=folder, env=env)
    assert code == 0 and "not deleted" in out and (P, "us-central1-b", "lab") in gke.clusters
    code, out, err = await caliban(["cluster", "delete", *new, "--yes"], cwd=folder, env=env)
    assert code == 0, err
    assert (P, "us-central1-b", "lab") not in gke.clusters


async def test_cluster_creation_failures(
    make_project: MakeProject, gke: FakeGke, env: dict[str, str]
) -> None:
    folder = make_project()
    gke.fail_next_operation()
    code, _, err = await caliban(
        ["cluster", "create", "--cluster_name", "a", "--zone", ZONE], cwd=folder, env=env
    )
    assert code == 1 and "create cluster failed: Insufficient regional quota" in err
    gke.operation_delay = 60
    code, _, err = await caliban(
        ["cluster", "create", "--cluster_name", "b", "--zone", ZONE, "--timeout", "1"],
        cwd=folder,
        env=env,
    )
    assert code == 1 and "did not finish within 1s" in err
    for bad, message in (
        (["--zone", "moon"], "neither a zone"),
        (["--zone", ZONE, "--cluster_name", "Bad_Name"], "is not valid"),
        (["--zone", "us-central1", "--single_zone"], "--single_zone needs"),
    ):
        code, _, err = await caliban(["cluster", "create", *bad], cwd=folder, env=env)
        assert code == 2 and message in err, err


async def test_an_unknown_gke_cluster_is_bad_input(
    tmp_path: Path,
    gke: FakeGke,
    kube: FakeKubernetes,
    service_account_file: Path,
    gke_session: OpenSession,
    new_gke_request: GkeRequest,
) -> None:
    cluster = ClusterOptions(cluster_name="nope", zone=ZONE, cloud_key=str(service_account_file))
    async with gke_session() as s:
        with pytest.raises(ValidationError, match="no GKE cluster nope in us-central1-a"):
            await s.cluster_submit(new_gke_request(cluster=cluster))
        without_name = ClusterOptions(cloud_key=str(service_account_file))
        gke.add_cluster(P, "europe-west4", "second")
        with pytest.raises(ValidationError, match="several GKE clusters"):
            await s.cluster_submit(new_gke_request(cluster=without_name))
    assert kube.requests == [] and not (tmp_path / "home" / "caliban.db").exists()
