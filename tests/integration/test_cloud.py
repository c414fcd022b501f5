"""`caliban cloud` through the production code path against the local Vertex and OAuth servers:
what is sent, where, and what is recorded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from caliban.errors import AuthError, ValidationError
from caliban.events import Document
from caliban.options import ProjectOptions
from caliban.session import Session
from caliban.spec import JobState, Platform
from tests.conftest import MakeProject
from tests.fakes.oauth import FakeOAuth, make_service_account, write_credentials
from tests.fakes.vertex import FakeVertex
from tests.integration.cloud_helpers import IMAGE, assert_exactly_once, cloud_request
from tests.integration.conftest import OpenSession, VertexRequest


async def test_sweep_is_submitted_once_each(
    make_project: MakeProject,
    service_account_file: Path,
    vertex_server: FakeVertex,
    cloud_session: OpenSession,
) -> None:
    folder = make_project()
    async with cloud_session() as s:
        result = await s.cloud(
            cloud_request(
                folder,
                service_account_file,
                vertex_server,
                experiments={"lr": [0.1, 0.2, 0.3], "big": [True, False]},
                script_args=("--seed", "1"),
                xgroup="vx",
            )
        )
    assert result.ok and len(result.jobs) == 6 and result.platform is Platform.VERTEX
    assert all(j.state is JobState.SUBMITTED for j in result.jobs)
    assert vertex_server.counters()["creates_accepted"] == 6
    assert_exactly_once(vertex_server, result.jobs, 6)
    by_id = {j.labels["caliban_job"]: j for j in vertex_server.jobs}
    for job in result.jobs:
        remote = by_id[job.job_id]
        spec = remote.body["jobSpec"]["workerPoolSpecs"][0]
        assert spec["containerSpec"]["args"] == list(job.args)
        assert spec["containerSpec"]["imageUri"] == IMAGE
        assert spec["machineSpec"] == {"machineType": "n1-highcpu-32"}
        assert spec["replicaCount"] == "1"
        assert job.platform_id == remote.name
        assert job.details["project"] == "test-proj" and job.details["region"] == "us-central1"
        assert job.details["endpoint"] == vertex_server.url
        assert job.details["cloud_key"] == str(service_account_file)
        assert str(job.details["console_url"]).startswith("https://console.cloud.google.com/")
        assert job.spec == remote.body  # the store holds exactly the body that was sent
    assert list(result.jobs[0].args) == ["--seed", "1", "--lr", "0.1", "--big"]


async def test_the_body_carries_accelerators_labels_env_and_scheduling(
    make_project: MakeProject,
    vertex_server: FakeVertex,
    vertex_request: VertexRequest,
    cloud_session: OpenSession,
) -> None:
    async with cloud_session() as s:
        result = await s.cloud(
            vertex_request(
                project=ProjectOptions(folder=make_project(), entry="job.py", use_gpu=True),
                gpu_spec="2xV100",
                experiments={"learning_rate": [0.01]},
                labels=(("team", "Vision"), ("cost.center", "q3")),
                name="resnet",
                spot=True,
                service_account="trainer@test-proj.iam.gserviceaccount.com",
                timeout_s=3600,
                xgroup="My.Group",
            )
        )
    (job,) = result.jobs
    (remote,) = vertex_server.jobs
    pool = remote.body["jobSpec"]["workerPoolSpecs"][0]
    assert pool["machineSpec"] == {
        "machineType": "n1-standard-8",
        "acceleratorType": "NVIDIA_TESLA_V100",
        "acceleratorCount": 2,
    }
    env = {e["name"]: e["value"] for e in pool["containerSpec"]["env"]}
    assert env == {
        "PYTHONUNBUFFERED": "1",
        "CALIBAN_JOB_ID": job.job_id,
        "CALIBAN_XGROUP": "My.Group",
    }
    assert remote.body["jobSpec"]["scheduling"] == {"strategy": "SPOT", "timeout": "3600s"}
    assert remote.body["jobSpec"]["serviceAccount"] == "trainer@test-proj.iam.gserviceaccount.com"
    assert remote.display_name == "resnet_1"
    labels = remote.labels
    assert labels["caliban_job"] == job.job_id
    assert labels["caliban_xgroup"] == "my_group"
    assert labels["caliban_store"] and labels["gpu_enabled"] == "true"
    assert labels["tpu_enabled"] == "false" and labels["job_name"] == "resnet"
    assert labels["team"] == "vision" and labels["cost_center"] == "q3"
    assert labels["learning_rate"] == "0_01"  # derived from the arguments


async def test_tpu_jobs_run_on_their_host_machine(
    vertex_server: FakeVertex, vertex_request: VertexRequest, cloud_session: OpenSession
) -> None:
    async with cloud_session() as s:
        await s.cloud(vertex_request(tpu_spec="8xV3"))
    (remote,) = vertex_server.jobs
    machine = remote.body["jobSpec"]["workerPoolSpecs"][0]["machineSpec"]
    assert machine == {
        "machineType": "cloud-tpu",
        "acceleratorType": "TPU_V3",
        "acceleratorCount": 8,
    }
    assert remote.labels["tpu_enabled"] == "true" and remote.labels["gpu_enabled"] == "false"


@pytest.mark.parametrize(
    ("tpu_spec", "region", "machine"),
    [
        (
            "4xV5E",
            "us-central1",
            {
                "machineType": "ct5lp-hightpu-4t",
                "acceleratorType": "TPU_V5_LITEPOD",
                "acceleratorCount": 4,
                "tpuTopology": "2x2",
            },
        ),
        ("8xV6E", "europe-west4", {"machineType": "ct6e-standard-8t", "tpuTopology": "2x4"}),
        (
            "4xV4",
            "us-central2",
            {
                "machineType": "ct4p-hightpu-4t",
                "acceleratorType": "TPU_V4_POD",
                "acceleratorCount": 4,
                "tpuTopology": "2x2x1",
            },
        ),
    ],
)
async def test_tpu_vm_jobs_are_sent_with_their_topology(
    vertex_server: FakeVertex,
    vertex_request: VertexRequest,
    cloud_session: OpenSession,
    tpu_spec: str,
    region: str,
    machine: dict[str, object],
) -> None:
    """The fake refuses a TPU VM job without tpuTopology, as Vertex does."""
    async with cloud_session() as s:
        result = await s.cloud(
            vertex_request(
                tpu_spec=tpu_spec,
                regions=(region,),
            )
        )
    assert result.ok and vertex_server.rejected_invalid == 0
    (remote,) = vertex_server.jobs
    assert remote.location == region
    assert remote.body["jobSpec"]["workerPoolSpecs"][0]["machineSpec"] == machine


async def test_regions_share_the_jobs_each_with_its_own_bucket(
    vertex_server: FakeVertex, vertex_request: VertexRequest, cloud_session: OpenSession
) -> None:
    """Jobs go round-robin to the regions; each region is paced by its own bucket, so the
    regions are submitted to side by side, each within its own quota."""
    rate = 600  # per minute and region: at most 2 (the burst) + 10 per second
    vertex_server.create_latency = 0.01
    n = 30
    async with cloud_session() as s:
        result = await s.cloud(
            vertex_request(
                regions=("us-central1,europe-west4", "asia-east1"),
                experiments={"i": list(range(n))},
                rate_limit=rate,
            )
        )
    assert result.ok
    assert_exactly_once(vertex_server, result.jobs, n)
    regions = ["us-central1", "europe-west4", "asia-east1"]
    for job in result.jobs:
        assert job.details["region"] == regions[job.index % 3]
        assert f"/locations/{regions[job.index % 3]}/" in str(job.platform_id)
    log = vertex_server.create_log
    for region in regions:
        assert sum(1 for a in log if a.location == region) == n // 3
    # Pacing itself is checked on a virtual clock in tests/unit/test_limits.py: arrival
    # times at the server are bunched by load, so they cannot prove it here.
    # Side by side, not one region after the other.
    firsts = [min(a.at for a in log if a.location == r) for r in regions]
    lasts = [max(a.at for a in log if a.location == r) for r in regions]
    assert max(firsts) < min(lasts)


async def test_dry_run_touches_neither_network_nor_store(
    tmp_path: Path,
    vertex_server: FakeVertex,
    vertex_request: VertexRequest,
    oauth_server: FakeOAuth,
    session_env: dict[str, str],
) -> None:
    documents: list[str] = []

    def sink(event: object) -> None:
        if isinstance(event, Document):
            documents.append(event.text)

    home = tmp_path / "home"
    async with Session(home=home, environ=session_env, sink=sink) as s:
        result = await s.cloud(
            vertex_request(
                experiments={"i": [1, 2, 3]},
                regions=("us-central1,europe-west4",),
                dry_run=True,
                xgroup="dry",
            )
        )
    assert result.dry_run and result.jobs == []
    assert all(v == 0 for v in vertex_server.counters().values())
    assert oauth_server.token_requests == 0
    assert not home.exists()
    [document] = documents
    requests = json.loads(document)
    assert [r["parent"].rsplit("/", 1)[1] for r in requests] == [
        "us-central1",
        "europe-west4",
        "us-central1",
    ]
    pool = requests[2]["customJob"]["jobSpec"]["workerPoolSpecs"][0]
    assert pool["containerSpec"]["imageUri"] == IMAGE and "--i" in pool["containerSpec"]["args"]


async def test_bad_credentials_are_one_clear_error(
    tmp_path: Path,
    make_project: MakeProject,
    vertex_server: FakeVertex,
    oauth_server: FakeOAuth,
    session_env: dict[str, str],
) -> None:
    # A well-formed key the token server never registered: refused at once (a 4xx is not
    # worth gcloud-aio-auth's five attempts), before anything is built or recorded.
    info, _ = make_service_account(oauth_server.token_url)
    bad = write_credentials(tmp_path / "bad.json", info)

    home = tmp_path / "home"
    async with Session(home=home, environ=session_env) as s:
        with pytest.raises(AuthError, match="refused the credentials") as caught:
            await s.cloud(cloud_request(make_project(), bad, vertex_server))
    assert str(bad) in str(caught.value)
    assert oauth_server.token_requests == 1
    assert vertex_server.counters()["creates_received"] == 0
    assert not (home / "caliban.db").exists()


async def test_vertex_refusing_the_token_stops_the_submission(
    vertex_server: FakeVertex,
    vertex_request: VertexRequest,
    oauth_server: FakeOAuth,
    cloud_session: OpenSession,
) -> None:
    """A 401/403 from Vertex is not retried and not worth trying on the other jobs: the
    submission stops with one error; jobs not sent stay PLANNED for the next attempt."""
    vertex_server.deny("test-proj", "aiplatform.customJobs.create")
    async with cloud_session() as s:
        with pytest.raises(AuthError, match=r"Permission 'aiplatform\.customJobs\.create' denied"):
            await s.cloud(
                vertex_request(
                    experiments={"i": list(range(20))},
                    xgroup="denied",
                    max_inflight=2,
                )
            )
        jobs = await s.status(xgroup="denied", max_jobs=0, refresh=False)
    assert vertex_server.jobs == []
    assert vertex_server.permission_denied <= 2
    assert {j.state for j in jobs} == {JobState.PLANNED}


async def test_validation_fails_before_any_network_call(
    tmp_path: Path,
    make_project: MakeProject,
    service_account_file: Path,
    vertex_server: FakeVertex,
    oauth_server: FakeOAuth,
    session_env: dict[str, str],
) -> None:
    folder = make_project()
    cases: list[tuple[dict[str, object], str]] = [
        ({"machine_type": "n1-standrd-8"}, "did you mean n1-standard-8"),
        ({"gpu_spec": "1xT5"}, "unknown GPU type 'T5'"),
        ({"regions": ("us-centrl1",)}, "did you mean us-central1"),
        ({"gpu_spec": "1xA100", "machine_type": "n1-standard-8"}, "cannot take 1xA100"),
        ({"gpu_spec": "3xT4"}, "T4 is available in counts 1, 2, 4"),
        ({"regions": ("us-central1,mars-north1",)}, "unknown region 'mars-north1'"),
    ]
    home = tmp_path / "home"
    for overrides, message in cases:
        async with Session(home=home, environ=session_env) as s:
            with pytest.raises(ValidationError, match=message):
                await s.cloud(
                    cloud_request(folder, service_account_file, vertex_server, **overrides)
                )
    assert oauth_server.token_requests == 0
    assert all(v == 0 for v in vertex_server.counters().values())
    assert not home.exists()


async def test_no_project_is_a_clear_error(
    make_project: MakeProject,
    vertex_server: FakeVertex,
    authorized_user_file: Path,
    cloud_session: OpenSession,
) -> None:
    # An authorized_user key names no project; nothing else does either.
    async with cloud_session() as s:
        with pytest.raises(ValidationError, match="no Google Cloud project"):
            await s.cloud(cloud_request(make_project(), authorized_user_file, vertex_server))
