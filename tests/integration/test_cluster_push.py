"""A real build, a real push to a local docker-registry, and Jobs pinned to the pushed digest."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from caliban.options import ClusterJobRequest, ClusterOptions, ProjectOptions
from caliban.session import Session
from tests.conftest import MakeProject
from tests.fakes.k8s import FakeKubernetes

pytestmark = [pytest.mark.docker, pytest.mark.registry]


@pytest.mark.slow
async def test_a_built_image_is_pushed_and_every_job_pins_its_digest(
    tmp_path: Path,
    make_project: MakeProject,
    kube: FakeKubernetes,
    kubeconfig: Path,
    env: dict[str, str],
    home: Path,
    docker_registry: str,
) -> None:
    folder = make_project(name="pushed")
    req = ClusterJobRequest(
        project=ProjectOptions(folder=folder, entry="job.py", use_gpu=False),
        cluster=ClusterOptions(kubeconfig=str(kubeconfig)),
        image_registry=f"{docker_registry}/team",
        experiments={"i": [1, 2, 3]},
        xgroup="pushed",
    )
    async with Session(home=home, environ=env) as s:
        result = await s.cluster_submit(req)
    assert result.ok and len(result.jobs) == 3
    image = result.jobs[0].image
    repository, digest = image.split("@")
    assert repository == f"{docker_registry}/team/caliban-pushed" and digest.startswith("sha256:")
    images = {j["spec"]["template"]["spec"]["containers"][0]["image"] for j in kube.jobs()}
    assert images == {image}
    # The registry serves exactly that digest.
    async with (
        aiohttp.ClientSession() as http,
        http.head(
            f"http://{docker_registry}/v2/team/caliban-pushed/manifests/{digest}",
            headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"},
        ) as response,
    ):
        assert response.status == 200
        assert response.headers["Docker-Content-Digest"] == digest
