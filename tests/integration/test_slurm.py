"""`caliban slurm submit` on a real slurmctld + slurmd (scripts/slurm-cluster.sh):
array throttling, GPU ids, exit codes, stop, resubmit, logs, kill -9 and re-run."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import stat
from pathlib import Path

import anyio
import pytest

from caliban.core.names import short_id
from tests.conftest import (
    CALIBAN,
    ROOT,
    MakeProject,
    copy_tree,
    job_reports,
    labelled_containers,
)

from .slurm_support import (  # noqa: F401  (fixtures)
    all_ended,
    caliban,
    ours,
    overlap,
    slurm_cluster,
    status,
    wait_until,
)

pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("slurm_cluster")]


def write_config(folder: Path, **values: list[object]) -> Path:
    path = folder / "exp.json"
    path.write_text(json.dumps(values))
    return path


def submit(config: Path, xgroup: str, *extra: str, script: tuple[str, ...] = ()) -> list[str]:
    return [
        "slurm",
        "submit",
        "--experiment_config",
        str(config),
        "--xgroup",
        xgroup,
        *extra,
        "job.py",
        *(("--", *script) if script else ()),
    ]


async def logs_of(folder: Path, env: dict[str, str], job_id: str) -> str:
    code, out, err = await caliban(["logs", job_id], cwd=folder, env=env)
    assert code == 0, err
    return out


async def test_an_array_of_12_never_runs_more_than_3_at_once(
    make_project: MakeProject, env: dict[str, str]
) -> None:
    folder = make_project()
    config = write_config(folder, tag=[f"t{i}" for i in range(12)])
    code, out, err = await caliban(
        submit(config, "arr12", "--nogpu", "--max_parallel", "3", script=("--sleep", "1.5")),
        cwd=folder,
        env=env,
    )
    assert code == 0, err + out
    jobs = await wait_until(folder, env, "arr12", all_ended)
    assert [j["state"] for j in jobs] == ["SUCCEEDED"] * 12
    # One submission for the whole sweep: every job is a task of one array.
    arrays = {str(j["platform_id"]).split("_")[0] for j in jobs}
    assert len(arrays) == 1
    assert sorted(int(str(j["platform_id"]).split("_")[1]) for j in jobs) == list(range(12))
    reports = []
    for job in jobs:
        (report,) = job_reports(await logs_of(folder, env, str(job["job_id"])))
        assert report["job"] == job["job_id"]
        reports.append(report)
    assert sorted(str(r["tag"]) for r in reports) == sorted(f"t{i}" for i in range(12))
    # The tasks' own clocks: never more than 3 running at one instant.
    assert overlap([(float(str(r["start"])), float(str(r["end"]))) for r in reports]) <= 3


async def test_gpu_tasks_never_share_a_gpu(make_project: MakeProject, env: dict[str, str]) -> None:
    folder = make_project(cpu=False)
    config = write_config(folder, tag=[f"g{i}" for i in range(8)])
    code, out, err = await caliban(
        submit(config, "gpus", "--gpus_per_job", "1", script=("--sleep", "1.5")),
        cwd=folder,
        env=env,
    )
    assert code == 0, err + out
    jobs = await wait_until(folder, env, "gpus", all_ended)
    assert [j["state"] for j in jobs] == ["SUCCEEDED"] * 8
    reports = [job_reports(await logs_of(folder, env, str(j["job_id"])))[0] for j in jobs]
    assert all(r["gpus"] in ("0", "1", "2", "3") and r["cuda"] == "0" for r in reports)
    for a in reports:
        for b in reports:
            a0, a1 = float(str(a["start"])), float(str(a["end"]))
            b0, b1 = float(str(b["start"])), float(str(b["end"]))
            both = a0 < b1 and b0 < a1
            if a is not b and both:
                assert a["gpus"] != b["gpus"], (a, b)


async def test_a_failing_task_is_failed_with_its_code_and_resubmit_reruns_only_it(
    make_project: MakeProject, env: dict[str, str]
) -> None:
    folder = make_project()
    config = write_config(folder, exit=[0, 3, 0])
    code, out, err = await caliban(submit(config, "fails", "--nogpu"), cwd=folder, env=env)
    assert code == 0, err + out
    jobs = await wait_until(folder, env, "fails", all_ended)
    assert [(j["state"], j["exit_code"]) for j in jobs] == [
        ("SUCCEEDED", 0),
        ("FAILED", 3),
        ("SUCCEEDED", 0),
    ]
    code, out, err = await caliban(["resubmit", "--xgroup", "fails", "--yes"], cwd=folder, env=env)
    assert code == 0, err + out
    again = await wait_until(folder, env, "fails", lambda js: len(js) == 4 and all_ended(js))
    reruns = [j for j in again if j["job_id"] not in {x["job_id"] for x in jobs}]
    assert [(r["index"], r["state"], r["exit_code"]) for r in reruns] == [(1, "FAILED", 3)]
    # The re-run went as an array of its own, not into the first one.
    assert str(reruns[0]["platform_id"]).split("_")[0] != str(jobs[1]["platform_id"]).split("_")[0]


async def test_per_job_sends_one_slurm_job_per_experiment(
    make_project: MakeProject, env: dict[str, str]
) -> None:
    folder = make_project()
    config = write_config(folder, tag=["p", "q", "r"])
    code, out, err = await caliban(
        submit(config, "perjob", "--nogpu", "--per_job"), cwd=folder, env=env
    )
    assert code == 0, err + out
    jobs = await wait_until(folder, env, "perjob", all_ended)
    assert [j["state"] for j in jobs] == ["SUCCEEDED"] * 3
    ids = [str(j["platform_id"]) for j in jobs]
    assert all(i.isdigit() for i in ids) and len(set(ids)) == 3
    tags = [job_reports(await logs_of(folder, env, str(j["job_id"])))[0]["tag"] for j in jobs]
    assert sorted(map(str, tags)) == ["p", "q", "r"]


async def test_stop_cancels_running_and_pending_tasks(
    make_project: MakeProject, env: dict[str, str]
) -> None:
    folder = make_project()
    config = write_config(folder, tag=["a", "b", "c"])
    code, out, err = await caliban(
        submit(config, "stopme", "--nogpu", "--max_parallel", "1", script=("--sleep", "300")),
        cwd=folder,
        env=env,
    )
    assert code == 0, err + out
    await wait_until(folder, env, "stopme", lambda js: any(j["state"] == "RUNNING" for j in js))
    code, out, err = await caliban(["stop", "--xgroup", "stopme", "--yes"], cwd=folder, env=env)
    assert code == 0, err + out
    jobs = await status(folder, env, "stopme")
    assert [j["state"] for j in jobs] == ["STOPPED"] * 3
    ids = {str(j["platform_id"]) for j in jobs}

    def tasks() -> dict[str, str]:
        return {f"{t['array_job_id']}_{t['array_task_id']}": str(t["job_state"]) for t in ours()}

    # Slurm ends a signalled task on its own time: wait until it says so.
    with anyio.fail_after(120):
        while {tasks().get(i) for i in ids} - {"CANCELLED", None}:  # noqa: ASYNC110
            await anyio.sleep(0.5)
    assert {tasks().get(i) for i in ids} <= {"CANCELLED", None}
    # The running task's container went down with it.
    for job in jobs:
        assert labelled_containers(**{"caliban.job": str(job["job_id"])}) == []
    # The two tasks cancelled while pending never wrote an output file: `results`
    # says so (and reads again next time) rather than keeping "no metrics".
    code, out, err = await caliban(["results", "--xgroup", "stopme", "--json"], cwd=folder, env=env)
    assert code == 0, err + out
    assert err.count("output not available") == 2, err
    assert err.count("has no output file") == 2, err


async def test_the_submitters_secrets_stay_out_of_the_job_slurm_keeps(
    make_project: MakeProject, env: dict[str, str]
) -> None:
    """sbatch hands its environment to the job (slurmctld stores it, the batch script
    runs in it): only Slurm's settings, paths and locale get there."""
    folder = make_project()
    config = write_config(folder, tag=["a"])
    secret = "caliban-test-secret-7f3c9e"
    leaky = {**env, "WANDB_API_KEY": secret, "MY_SERVICE_TOKEN": secret}
    code, out, err = await caliban(
        submit(config, "noleak", "--nogpu", "--sbatch_args=--hold"), cwd=folder, env=leaky
    )
    assert code == 0, err + out
    [job] = await status(folder, env, "noleak")
    array_id = int(str(job["platform_id"]).split("_")[0])
    state = Path(os.environ.get("CALIBAN_SLURM_DIR", "/tmp/caliban-slurm")) / "ctld"
    stored = (state / f"hash.{array_id % 10}" / f"job.{array_id}" / "environment").read_bytes()
    names = {item.split(b"=", 1)[0].decode() for item in stored.split(b"\0") if item}
    assert "PATH" in names and "SLURM_CONF" in names, names
    assert secret.encode() not in stored
    assert not names & {"WANDB_API_KEY", "MY_SERVICE_TOKEN", "CALIBAN_HOME"}, names
    code, out, err = await caliban(["stop", "--xgroup", "noleak", "--yes"], cwd=folder, env=env)
    assert code == 0, err + out


def _wrapper(bin_dir: Path, marker: Path, *, before: bool = False) -> dict[str, str]:
    """An sbatch that says in ``marker`` it was called and never answers: after
    submitting (caliban killed then has sent the array without knowing its id) or,
    with ``before``, without submitting anything."""
    bin_dir.mkdir()
    real = next(
        p / "sbatch" for p in map(Path, os.environ["PATH"].split(":")) if (p / "sbatch").exists()
    )
    script = bin_dir / "sbatch"
    call = "echo none" if before else f'"{real}" "$@"'
    script.write_text(
        "#!/bin/sh\n"
        f'case " $* " in *" --test-only "*) exec "{real}" "$@" ;; esac\n'
        f'echo $$ >"{marker}.pid"\n'
        f'{call} >"{marker}.tmp" && mv "{marker}.tmp" "{marker}"\n'
        "exec sleep 600\n"  # the pid written above is the sleep: one kill ends it
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}"}


async def _kill_in_sbatch(
    folder: Path, env: dict[str, str], args: list[str], marker: Path, *, before: bool
) -> None:
    killed_env = {**env, **_wrapper(marker.parent / "bin", marker, before=before)}
    process = await anyio.open_process([CALIBAN, *args], cwd=folder, env=killed_env)
    try:
        with anyio.fail_after(300):
            while not marker.exists():  # noqa: ASYNC110
                await anyio.sleep(0.2)
    finally:
        process.send_signal(signal.SIGKILL)
        await process.wait()
        await process.aclose()
        # The hanging sbatch outlives the caliban that started it: it is ours to end.
        pid_file = marker.parent / f"{marker.name}.pid"
        if pid_file.exists():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid_file.read_text()), signal.SIGKILL)


@pytest.mark.parametrize("before", [False, True], ids=["answer-lost", "never-sent"])
async def test_a_rerun_after_kill_9_during_sbatch_submits_nothing_twice(
    make_project: MakeProject, env: dict[str, str], tmp_path: Path, before: bool
) -> None:
    folder = make_project()
    config = write_config(folder, tag=["x", "y", "z", "w"])
    marker = tmp_path / "submitted"
    args = submit(config, "k9", "--nogpu", script=("--sleep", "1"))
    await _kill_in_sbatch(folder, env, args, marker, before=before)
    # No `caliban status` in between: it would adopt the array itself.
    code, out, err = await caliban(args, cwd=folder, env=env)
    assert code == 0, err + out
    jobs = await wait_until(folder, env, "k9", all_ended)
    assert [j["state"] for j in jobs] == ["SUCCEEDED"] * 4
    arrays = {str(j["platform_id"]).split("_")[0] for j in jobs}
    if not before:  # adopted, not sent again: the array the killed run submitted
        assert arrays == {marker.read_text().strip()}
    # Every job went in exactly one array (a second sbatch would carry the same name).
    names = {f"caliban-{j['details']['batch']}" for j in jobs}  # type: ignore[index]
    assert len(names) == 1 and len(arrays) == 1
    assert {str(t["array_job_id"]) for t in ours() if t["name"] in names} == arrays


def _metrics(text: str) -> dict[str, float]:
    """The last JSON object a task printed on a line of its own."""
    objects = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    assert objects, text
    found: dict[str, float] = objects[-1]
    return found


async def test_the_basic_tutorial_sweep_runs_on_slurm(env: dict[str, str], tmp_path: Path) -> None:
    folder = copy_tree(ROOT / "tutorials" / "basic", tmp_path / "basic")
    code, out, err = await caliban(
        [*submit(Path("experiment.json"), "tut", "--max_parallel", "3")[:-1], "train.py"],
        cwd=folder,
        env=env,
    )
    assert code == 0, err + out
    jobs = await wait_until(folder, env, "tut", all_ended, timeout=600)
    assert [j["state"] for j in jobs] == ["SUCCEEDED"] * 6
    logs = [await logs_of(folder, env, str(j["job_id"])) for j in jobs]
    assert all("test accuracy" in text for text in logs)
    code, out, err = await caliban(["status", "--xgroup", "tut"], cwd=folder, env=env)
    assert code == 0 and out.count("SUCCEEDED") == 6, err + out
    # `results` reads each task's output file on the cluster: the metrics line
    # each task printed, with the flags of its experiment.
    printed = {str(j["job_id"]): _metrics(text) for j, text in zip(jobs, logs, strict=True)}
    code, out, err = await caliban(["results", "--json"], cwd=folder, env=env)
    assert code == 0, err + out
    rows = json.loads(out)
    assert sorted((r["learning_rate"], r["epochs"]) for r in rows) == sorted(
        (lr, ep) for lr in (0.001, 0.01, 0.1) for ep in (5, 20)
    )
    assert {r["job_id"]: r["accuracy"] for r in rows} == {
        k: v["accuracy"] for k, v in printed.items()
    }
    code, out, err = await caliban(
        ["results", "--xgroup", "tut", "--best", "accuracy", "--json"], cwd=folder, env=env
    )
    assert code == 0, err + out
    (best,) = json.loads(out)
    assert best["accuracy"] == printed[best["job_id"]]["accuracy"]
    assert best["accuracy"] == max(v["accuracy"] for v in printed.values())
    code, out, err = await caliban(["results", "--best", "accuracy"], cwd=folder, env=env)
    assert code == 0, err + out
    assert out.splitlines()[1].split()[:2] == [short_id(str(best["job_id"])), "SUCCEEDED"], out


async def test_dry_run_prints_the_batch_script_and_records_nothing(
    make_project: MakeProject, env: dict[str, str]
) -> None:
    folder = make_project()
    config = write_config(folder, tag=["a", "b"])
    code, out, err = await caliban(
        submit(
            config, "dry", "--dry_run", "--nogpu", "--max_parallel", "1", "--partition", "short"
        ),
        cwd=folder,
        env=env,
    )
    assert code == 0, err
    assert "#SBATCH --array=0-1%1" in out and "#SBATCH --partition=short" in out
    code, out, err = await caliban(["status", "--json"], cwd=folder, env=env)
    assert json.loads(out) == []


@pytest.mark.parametrize(
    ("extra", "message", "exit_code"),
    [
        (("--partition", "gpu"), "unknown partition 'gpu'; this cluster has: debug, short", 2),
        (("--partition", "short", "--time", "60"), "more than partition short allows", 2),
        (("--gpus_per_job", "9"), "more than any node has (4)", 2),
        (("--qos", "high"), "unknown QOS 'high'", 2),
        (("--mem", "100000G"), "no node of the partition has what each task asks for", 2),
        (("--host", "nobody@127.0.0.1", "--ssh_option", "Port=1"), "cannot reach", 1),
        (
            ("--image_tag", "caliban-test/absent:1"),
            "image 'caliban-test/absent:1' is not on this machine",
            2,
        ),
        (
            ("--image_tag", "caliban-test/absent:1", "--runtime", "oci"),
            "image 'caliban-test/absent:1' is not on this machine",
            2,
        ),
    ],
)
async def test_bad_input_is_one_line_and_records_nothing(
    make_project: MakeProject,
    env: dict[str, str],
    extra: tuple[str, ...],
    message: str,
    exit_code: int,
) -> None:
    folder = make_project(cpu=False)
    config = write_config(folder, tag=["a"])
    code, out, err = await caliban(submit(config, "bad", *extra), cwd=folder, env=env)
    assert code == exit_code, err + out
    assert message in err and len(err.strip().splitlines()) == 1, err
    code, out, _ = await caliban(["status", "--json"], cwd=folder, env=env)
    assert json.loads(out) == []
