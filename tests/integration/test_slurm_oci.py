"""`caliban slurm submit --runtime oci` on the real cluster of scripts/slurm-cluster.sh:
tasks run in an OCI bundle exported from the image, started by Slurm's own
`--container` with runc (its oci.conf), not by `docker run`."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from tests.conftest import MakeProject, job_reports

from .slurm_support import (  # noqa: F401  (fixtures)
    all_ended,
    caliban,
    slurm_cluster,
    wait_until,
)

pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("slurm_cluster")]

# runc's state folder in the oci.conf of scripts/slurm-cluster.sh.
RUNC_ROOT = Path(os.environ.get("CALIBAN_SLURM_DIR", "/tmp/caliban-slurm")) / "runc"

# Prints what the task sees of its process: environment, folder, user, and
# whether the image's files can be changed.
ENV_JOB = """\
import json, os, sys
try:
    open("/usr/app/scribble", "w")
    root_writable = True
except OSError:
    root_writable = False
print(json.dumps({"start": 0, "env": dict(os.environ), "cwd": os.getcwd(), "uid": os.getuid(),
                  "pid": os.getpid(), "argv": sys.argv[1:], "root_writable": root_writable}),
      flush=True)
sys.exit(int(sys.argv[-1]))
"""


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One bundle folder for the module (a bundle is the whole image, ~1 GB)."""
    folder = tmp_path_factory.mktemp("bundles")
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def write_config(folder: Path, **values: list[object]) -> Path:
    path = folder / "exp.json"
    path.write_text(json.dumps(values))
    return path


def submit(config: Path, xgroup: str, *extra: str, module: str = "job.py") -> list[str]:
    return [
        "slurm",
        "submit",
        "--nogpu",
        "--experiment_config",
        str(config),
        "--xgroup",
        xgroup,
        *extra,
        module,
    ]


async def logs_of(folder: Path, env: dict[str, str], job_id: str) -> str:
    code, out, err = await caliban(["logs", job_id], cwd=folder, env=env)
    assert code == 0, err
    return out


async def test_an_oci_sweep_runs_as_an_array_and_a_failing_task_keeps_its_code(
    make_project: MakeProject, env: dict[str, str], bundles: Path
) -> None:
    # The runtime from .calibanconfig.json, the bundle folder from the flag.
    folder = make_project(
        {".calibanconfig.json": json.dumps({"default_mode": "cpu", "slurm": {"runtime": "oci"}})}
    )
    config = write_config(folder, exit=[0, 3, 0, 0], tag=["it's a b"])
    code, out, err = await caliban(
        submit(config, "oci-arr", "--bundle_dir", str(bundles), "--max_parallel", "2"),
        cwd=folder,
        env=env,
    )
    assert code == 0, err + out
    assert err.count("exporting the image to the OCI bundle") == 1, err
    jobs = await wait_until(folder, env, "oci-arr", all_ended)
    assert [j["state"] for j in jobs] == ["SUCCEEDED", "FAILED", "SUCCEEDED", "SUCCEEDED"]
    assert jobs[1]["exit_code"] == 3
    assert len({str(j["platform_id"]).split("_")[0] for j in jobs}) == 1  # one array
    for job in jobs:
        (report,) = job_reports(await logs_of(folder, env, str(job["job_id"])))
        assert report["job"] == job["job_id"] and report["tag"] == "it's a b"
    # Slurm ran it in the bundle: the batch script asks for it, runc has the container.
    (script,) = (Path(env["CALIBAN_HOME"]) / "slurm" / "oci-arr").glob("*/batch.sh")
    (bundle,) = (bundles / "bundles").iterdir()
    assert f"#SBATCH --container={bundle}\n" in script.read_text()
    assert "docker run" not in script.read_text()


async def test_the_task_sees_the_image_environment_and_nothing_of_the_submitter(
    make_project: MakeProject, env: dict[str, str], bundles: Path
) -> None:
    folder = make_project({"envjob.py": ENV_JOB})
    config = write_config(folder, code=["0"])
    leaky = {**env, "CALIBAN_OCI_LEAK": "should not be seen", "PATH": f"/leak:{env['PATH']}"}
    code, out, err = await caliban(
        submit(
            config,
            "oci-env",
            "--runtime",
            "oci",
            "--bundle_dir",
            str(bundles),
            # Relative: made absolute, as the task reads its arguments in the bundle.
            "--slurm_dir",
            "rel-slurm",
            module="envjob.py",
        ),
        cwd=folder,
        env=leaky,
    )
    assert code == 0, err + out
    (job,) = await wait_until(folder, leaky, "oci-env", all_ended)
    assert job["state"] == "SUCCEEDED", job
    (report,) = job_reports(await logs_of(folder, leaky, str(job["job_id"])))
    image = (bundles / "bundles").glob("*/caliban.json")
    processes = [json.loads(p.read_text()) for p in image]
    process = next(p for p in processes if "envjob.py" in p["entrypoint"])
    seen: dict[str, str] = report["env"]  # type: ignore[assignment]
    expected = dict(e.split("=", 1) for e in process["env"])
    expected.update(
        PYTHONUNBUFFERED="1",
        CALIBAN_JOB_ID=str(job["job_id"]),
        CALIBAN_XGROUP="oci-env",
        SLURM_JOB_ID=seen["SLURM_JOB_ID"],
        SLURM_ARRAY_JOB_ID=str(job["platform_id"]).split("_")[0],
        SLURM_ARRAY_TASK_ID="0",
    )
    assert seen == expected
    assert seen["SLURM_JOB_ID"].isdigit() and "/leak" not in seen["PATH"]
    assert report["cwd"] == process["cwd"] == "/usr/app"
    assert report["argv"] == ["--code", "0"] and report["uid"] == 0
    # The bundle's root is shared by every task: read-only.
    assert report["root_writable"] is False
    assert report["pid"] != 1  # the program is a child of the PID-1 wrapper
    assert list((folder / "rel-slurm" / "oci-env").glob("*/logs/0.log"))


async def test_the_bundle_is_exported_once_for_two_submits_of_the_same_image(
    make_project: MakeProject, env: dict[str, str], bundles: Path, tmp_path: Path
) -> None:
    folder = make_project()
    config = write_config(folder, tag=["one"])
    args = ["--runtime", "oci", "--bundle_dir", str(bundles)]
    code, out, err = await caliban(submit(config, "oci-once-1", *args), cwd=folder, env=env)
    assert code == 0, err + out
    first = [p for p in (bundles / "bundles").iterdir()]
    marker = {p: (p / "rootfs" / ".caliban-bundle").stat().st_mtime_ns for p in first}
    # The same image again, with another Slurm folder: the bundle is used as it is
    # (its config.json gains the new folder's mount).
    other = tmp_path / "other-slurm"
    code, out, err = await caliban(
        submit(config, "oci-once-2", *args, "--slurm_dir", str(other)), cwd=folder, env=env
    )
    assert code == 0, err + out
    assert "exporting the image" not in err, err
    assert sorted((bundles / "bundles").iterdir()) == sorted(first)  # no new folder, no temp
    assert {p: (p / "rootfs" / ".caliban-bundle").stat().st_mtime_ns for p in first} == marker
    for xgroup in ("oci-once-1", "oci-once-2"):
        (job,) = await wait_until(folder, env, xgroup, all_ended)
        assert job["state"] == "SUCCEEDED", job
        (report,) = job_reports(await logs_of(folder, env, str(job["job_id"])))
        assert report["tag"] == "one"


@pytest.mark.parametrize(
    ("extra", "calibanconfig", "message"),
    [
        (("--runtime", "podman"), None, "invalid choice: 'podman'"),
        ((), {"slurm": {"runtime": "podman"}}, "'slurm.runtime' must be one of docker, oci"),
        ((), {"slurm": {"bundle": "/x"}}, "unknown key 'bundle' in 'slurm'"),
        (
            ("--runtime", "oci", "--docker_run_args=--ipc=host"),
            None,
            "--docker_run_args cannot be used with --runtime oci",
        ),
        (("--runtime", "oci", "--bundle_dir", "/proc/caliban"), None, "is not writable"),
        (("--bundle_dir", "/tmp/b"), None, "--bundle_dir is for --runtime oci"),
    ],
)
async def test_bad_runtime_input_exits_2_and_records_nothing(
    make_project: MakeProject,
    env: dict[str, str],
    extra: tuple[str, ...],
    calibanconfig: dict[str, object] | None,
    message: str,
) -> None:
    files = {}
    if calibanconfig is not None:
        files[".calibanconfig.json"] = json.dumps({"default_mode": "cpu", **calibanconfig})
    folder = make_project(files)
    config = write_config(folder, tag=["a"])
    code, out, err = await caliban(submit(config, "oci-bad", *extra), cwd=folder, env=env)
    assert code == 2, err + out
    assert message in err, err
    assert "Traceback" not in err, err
    code, out, _ = await caliban(["status", "--json"], cwd=folder, env=env)
    assert json.loads(out) == []
    assert not os.path.exists("/proc/caliban")


async def test_stop_ends_a_running_oci_task_and_its_container(
    make_project: MakeProject, env: dict[str, str], bundles: Path
) -> None:
    folder = make_project()
    config = write_config(folder, tag=["long"])
    args = submit(config, "oci-stop", "--runtime", "oci", "--bundle_dir", str(bundles))
    code, out, err = await caliban([*args, "--", "--sleep", "300"], cwd=folder, env=env)
    assert code == 0, err + out
    (job,) = await wait_until(folder, env, "oci-stop", lambda js: js[0]["state"] == "RUNNING")
    array = str(job["platform_id"]).split("_")[0]
    code, out, err = await caliban(["stop", "--xgroup", "oci-stop", "--yes"], cwd=folder, env=env)
    assert code == 0, err + out
    (job,) = await wait_until(folder, env, "oci-stop", all_ended, timeout=120)
    assert job["state"] == "STOPPED", job
    # The container went with the task: runc knows no container of that array.
    with anyio.fail_after(60):
        while True:
            listed = await anyio.run_process(
                ["runc", f"--root={RUNC_ROOT}", "list", "-q"], check=False
            )
            names = listed.stdout.decode().split()
            if not any(f".{array}." in n for n in names):
                break
            await anyio.sleep(0.5)


async def test_two_submits_at_once_leave_one_whole_bundle(
    make_project: MakeProject, env: dict[str, str], tmp_path: Path
) -> None:
    # Its own bundle folder, so both submits find no bundle and export at once.
    own = tmp_path / "race"
    folder = make_project()
    config = write_config(folder, tag=["x"])
    args = ["--runtime", "oci", "--bundle_dir", str(own)]
    results: dict[str, tuple[int, str, str]] = {}

    async def one(xgroup: str) -> None:
        results[xgroup] = await caliban(submit(config, xgroup, *args), cwd=folder, env=env)

    # Build first, so the two submits race on the export, not on the build.
    code, out, err = await caliban(["build", "job.py", "--nogpu"], cwd=folder, env=env)
    assert code == 0, err + out
    async with anyio.create_task_group() as tg:
        tg.start_soon(one, "oci-race-1")
        tg.start_soon(one, "oci-race-2")
    for code, out, err in results.values():
        assert code == 0, err + out
    # One bundle, complete, and no temporary folder left behind.
    (bundle,) = (own / "bundles").iterdir()
    assert (bundle / "rootfs" / ".caliban-bundle").is_file()
    assert json.loads((bundle / "caliban.json").read_text())["entrypoint"][-1] == "job.py"
    for xgroup in results:
        (job,) = await wait_until(folder, env, xgroup, all_ended)
        assert job["state"] == "SUCCEEDED", job
    shutil.rmtree(own, ignore_errors=True)


async def test_resubmit_reruns_failed_oci_tasks_and_a_removed_bundle_fails_them_at_once(
    make_project: MakeProject, env: dict[str, str], tmp_path: Path
) -> None:
    own = tmp_path / "resubmit"
    folder = make_project()
    config = write_config(folder, exit=[0, 3])
    args = ["--runtime", "oci", "--bundle_dir", str(own)]
    code, out, err = await caliban(submit(config, "oci-re", *args), cwd=folder, env=env)
    assert code == 0, err + out
    jobs = await wait_until(folder, env, "oci-re", all_ended)
    assert [(j["state"], j["exit_code"]) for j in jobs] == [("SUCCEEDED", 0), ("FAILED", 3)]
    code, out, err = await caliban(["resubmit", "--xgroup", "oci-re", "--yes"], cwd=folder, env=env)
    assert code == 0, err + out
    again = await wait_until(folder, env, "oci-re", lambda js: len(js) == 3 and all_ended(js))
    (rerun,) = [j for j in again if j["job_id"] not in {x["job_id"] for x in jobs}]
    assert (rerun["index"], rerun["state"], rerun["exit_code"]) == (1, "FAILED", 3)
    # The bundle removed: the next resubmit fails at once, not held pending by Slurm.
    shutil.rmtree(own / "bundles")
    await caliban(["resubmit", "--xgroup", "oci-re", "--yes"], cwd=folder, env=env)
    last = await wait_until(folder, env, "oci-re", lambda js: len(js) == 4 and all_ended(js))
    (gone,) = [j for j in last if j["job_id"] not in {x["job_id"] for x in again}]
    assert gone["state"] == "FAILED" and "is gone" in str(gone["message"]), gone
    assert not gone["platform_id"] or "_" not in str(gone["platform_id"])
