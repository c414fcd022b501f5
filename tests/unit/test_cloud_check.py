"""`caliban cloud` input checks: everything is validated before any network call, with
messages that say what would work."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from caliban.core.accelerators import AcceleratorSpec
from caliban.core.config import CalibanConfig, GcloudConfig
from caliban.errors import ConfigError, ValidationError
from caliban.options import CloudRequest, ProjectOptions
from caliban.platforms.vertex import plan as cloud_run
from caliban.spec import JobMode

CONFIG = CalibanConfig()


def _check(
    mode: JobMode = JobMode.GPU,
    environ: dict[str, str] | None = None,
    config: CalibanConfig = CONFIG,
    **kw: object,
) -> cloud_run.CloudPlan:
    kw.setdefault("project_id", "my-proj")
    req = CloudRequest(project=ProjectOptions(folder=Path("/project")), **kw)  # type: ignore[arg-type]
    return cloud_run.check(req, mode=mode, config=config, user="ada", environ=environ or {})


def test_defaults() -> None:
    plan = _check()
    assert plan.machine_type == "n1-standard-8" and plan.accelerator == AcceleratorSpec(1, "T4")
    assert plan.regions == ("us-central1",) and plan.name == "caliban_ada"
    assert plan.key_file is None and plan.endpoint is None
    cpu = _check(JobMode.CPU)
    assert cpu.machine_type == "n1-highcpu-32" and cpu.accelerator is None


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        (
            {"machine_type": "n1-standrd-8"},
            "unknown machine type 'n1-standrd-8'; did you mean n1-standard-8",
        ),
        ({"gpu_spec": "1xT5"}, "unknown GPU type 'T5'; did you mean T4?"),
        ({"gpu_spec": "2xV3"}, "V3 is a TPU: use --tpu_spec"),
        ({"gpu_spec": "3xT4"}, "T4 is available in counts 1, 2, 4"),
        (
            {"gpu_spec": "1xA100", "machine_type": "n1-standard-8"},
            "machine type n1-standard-8 cannot take 1xA100; try one of a2-highgpu-1g",
        ),
        ({"gpu_spec": "1xK80"}, "K80 GPUs are end-of-life on Vertex AI"),
        ({"regions": ("us-centrl1",)}, "unknown region 'us-centrl1'; did you mean us-central1"),
        ({"regions": ("us-central1", "mars-north1")}, "unknown region 'mars-north1'"),
        (
            {"gpu_spec": "8xH100", "regions": ("us-west2",)},
            "H100 is not offered in us-west2; try one of",
        ),
        ({"machine_type": "a2-highgpu-1g", "gpu_spec": "1xT4"}, "cannot take 1xT4"),
        ({"tpu_spec": "8xV3", "gpu_spec": "1xT4"}, "GPUs or TPUs, not both"),
        ({"rate_limit": 0}, "--rate_limit must be positive"),
        ({"max_inflight": 0}, "--max_inflight must be positive"),
        ({"labels": (("", "x"),)}, "no usable key"),
    ],
)
def test_bad_input_is_refused_with_a_suggestion(kw: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        _check(**kw)
    assert message in str(caught.value)


def test_force_skips_the_catalog_checks() -> None:
    plan = _check(machine_type="n9-future-1", gpu_spec="3xT4", force=True, regions=("moon-1",))
    assert plan.machine_type == "n9-future-1" and plan.accelerator == AcceleratorSpec(3, "T4")


def test_tpus() -> None:
    plan = _check(JobMode.CPU, tpu_spec="8xV3")
    assert plan.machine_type == "cloud-tpu" and plan.accelerator == AcceleratorSpec(8, "V3")
    assert plan.gpu is None
    # GPU mode asked for explicitly, with only a TPU spec: no default GPU sneaks in.
    gpu_mode = _check(JobMode.GPU, tpu_spec="8xV3")
    assert gpu_mode.gpu is None and gpu_mode.machine_type == "cloud-tpu"


@pytest.mark.parametrize(
    ("tpu_spec", "machine", "topology"),
    [
        ("4xV5E", "ct5lp-hightpu-4t", "2x2"),
        ("8xV5E", "ct5lp-hightpu-8t", "2x4"),
        ("4xV6E", "ct6e-standard-4t", "2x2"),
        ("1xV6E", "ct6e-standard-1t", "1x1"),
        ("4xV4", "ct4p-hightpu-4t", "2x2x1"),
        ("4xV5P", "ct5p-hightpu-4t", "2x2x1"),
        ("8xV3", "cloud-tpu", None),
    ],
)
def test_tpu_vms_get_their_topology(tpu_spec: str, machine: str, topology: str | None) -> None:
    region = "us-central2" if machine.startswith("ct4p") else "europe-west4"
    plan = _check(JobMode.CPU, tpu_spec=tpu_spec, regions=(region,))
    assert (plan.machine_type, plan.tpu_topology) == (machine, topology)


def test_a_tpu_shape_without_a_known_topology_is_refused_even_with_force() -> None:
    with pytest.raises(ValidationError, match=r"no known TPU topology for 16xV6E"):
        _check(JobMode.CPU, tpu_spec="16xV6E", force=True)
    with pytest.raises(ValidationError, match=r"a V5_LITEPOD host has 1, 4, 8 chips"):
        _check(JobMode.CPU, tpu_spec="2xV5E", machine_type="ct5lp-hightpu-2t", force=True)
    # A machine the catalog knows decides the chips, whatever the forced spec says.
    forced = _check(JobMode.CPU, tpu_spec="8xV6E", machine_type="ct6e-standard-4t", force=True)
    assert forced.tpu_topology == "2x2"


def test_regions_from_flags_and_environment() -> None:
    assert _check(regions=("us-central1,europe-west4", "asia-east1", "us-central1")).regions == (
        "us-central1",
        "europe-west4",
        "asia-east1",
    )
    assert _check(environ={"REGION": "europe-west4"}).regions == ("europe-west4",)
    assert _check(environ={"REGION": " "}).regions == ("us-central1",)


def test_project_and_endpoint_precedence(tmp_path: Path) -> None:
    key = tmp_path / "key.json"
    key.write_text(
        json.dumps(
            {
                "type": "service_account",
                "project_id": "from-key",
                "private_key": "k",
                "client_email": "e",
            }
        )
    )
    env = {"GOOGLE_APPLICATION_CREDENTIALS": str(key), "CALIBAN_VERTEX_ENDPOINT": "http://x"}
    plan = _check(project_id=None, environ=env)
    assert plan.project_id == "from-key" and plan.key_file == str(key)
    assert plan.endpoint == "http://x"
    assert _check(project_id=None, environ={**env, "PROJECT_ID": "env-proj"}).project_id == (
        "env-proj"
    )
    assert _check(environ=env, endpoint="http://flag").endpoint == "http://flag"
    configured = CalibanConfig(gcloud=GcloudConfig(project_id="cfg-proj"))
    assert _check(project_id=None, config=configured).project_id == "cfg-proj"
    with pytest.raises(ValidationError, match="no Google Cloud project: pass --project_id"):
        _check(project_id=None)
    with pytest.raises(ConfigError, match="does not exist"):
        _check(project_id=None, cloud_key=str(tmp_path / "missing.json"))


def test_key_files_are_recorded_as_absolute_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert _check(cloud_key="keys/k.json").key_file == str(tmp_path / "keys" / "k.json")
    # A key named in .calibanconfig.json is relative to the project.
    configured = CalibanConfig(gcloud=GcloudConfig(cloud_key="k.json"))
    assert _check(config=configured).key_file == "/project/k.json"


def test_rebind_gives_a_recorded_body_a_new_job_id() -> None:
    body = {
        "labels": {"caliban_job": "old", "lr": "0_1"},
        "jobSpec": {
            "workerPoolSpecs": [
                {
                    "containerSpec": {
                        "env": [
                            {"name": "CALIBAN_JOB_ID", "value": "old"},
                            {"name": "X", "value": "old"},
                        ]
                    }
                }
            ]
        },
    }
    new = cloud_run.rebind(body, "new")
    assert new["labels"] == {"caliban_job": "new", "lr": "0_1"}
    env = new["jobSpec"]["workerPoolSpecs"][0]["containerSpec"]["env"]
    assert env == [{"name": "CALIBAN_JOB_ID", "value": "new"}, {"name": "X", "value": "old"}]
    assert body["labels"]["caliban_job"] == "old"  # type: ignore[index]  # a copy


def test_user_file_supplies_project_region_and_key_after_flags_env_and_project() -> None:
    from caliban.core.userconfig import UserConfig

    user = UserConfig(
        {
            "gcloud.project_id": "user-proj",
            "gcloud.region": "europe-west4,us-east1",
            "gcloud.cloud_key": "/keys/user.json",
        },
        "/u/config.json",
    )
    req = CloudRequest(project=ProjectOptions(folder=Path("/project")))

    def plan(environ: dict[str, str], config: CalibanConfig = CONFIG) -> cloud_run.CloudPlan:
        return cloud_run.check(
            req, mode=JobMode.GPU, config=config, user="ada", environ=environ, user_config=user
        )

    mine = plan({})
    assert mine.project_id == "user-proj"
    assert mine.regions == ("europe-west4", "us-east1")
    assert mine.key_file == "/keys/user.json"
    overridden = plan(
        {
            "PROJECT_ID": "env-proj",
            "REGION": "asia-east1",
            "GOOGLE_APPLICATION_CREDENTIALS": "/e.json",
        }
    )
    assert (overridden.project_id, overridden.regions, overridden.key_file) == (
        "env-proj",
        ("asia-east1",),
        "/e.json",
    )
    project_file = CalibanConfig(gcloud=GcloudConfig(project_id="cfg-proj", cloud_key="k.json"))
    from_project = plan({}, project_file)
    assert (from_project.project_id, from_project.key_file) == ("cfg-proj", "/project/k.json")
