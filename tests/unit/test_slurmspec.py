"""The Slurm batch script, argument file, and the reading of Slurm's answers."""

from __future__ import annotations

import json
import subprocess

import pytest

from caliban.errors import ValidationError
from caliban.platforms.slurm import limits, spec, states
from caliban.platforms.slurm.limits import Partition
from caliban.platforms.slurm.spec import Batch, Resources, Task
from caliban.spec import JobState

JOB = "0AAAAAAAAAAAAAAAAAAAAAAAAA"


def _batch(n: int = 3, **kw: object) -> Batch:
    tasks = tuple(Task(f"0{i:025d}", ("--lr", str(i))) for i in range(n))
    args: dict[str, object] = {
        "batch_id": tasks[0].job_id,
        "workdir": "/shared/caliban/b1",
        "tasks": tasks,
        "store_id": "store123",
        "xgroup": "grp",
        "image": "caliban-local/img:abc",
        "max_parallel": 3,
    }
    args.update(kw)
    return Batch(**args)  # type: ignore[arg-type]


def _sbatch_lines(script: str) -> list[str]:
    return [
        line.removeprefix("#SBATCH ") for line in script.splitlines() if line.startswith("#SBATCH ")
    ]


def test_array_script_throttles_names_and_routes_output() -> None:
    script = spec.batch_script(_batch(12, max_parallel=3), Resources())
    opts = _sbatch_lines(script)
    assert "--array=0-11%3" in opts
    assert f"--job-name=caliban-{'0' * 26}" in opts
    assert "--comment=caliban:store=store123" in opts

    assert "--output=/shared/caliban/b1/logs/%a.log" in opts


def test_comment_carries_store_and_labels_in_one_word() -> None:
    text = spec.comment("s1", {"caliban.test": "run 1"})
    assert text == "caliban:store=s1;caliban.test=run_1"
    assert spec.comment_labels(text) == {"store": "s1", "caliban.test": "run_1"}
    assert spec.comment_labels("someone else's") is None


def test_unthrottled_array_has_no_percent() -> None:
    opts = _sbatch_lines(spec.batch_script(_batch(4, max_parallel=None), Resources()))
    assert "--array=0-3" in opts


def test_resources_become_directives() -> None:
    res = Resources(
        partition="gpu",
        time="1:00:00",
        mem="4G",
        cpus_per_job=2,
        gpus_per_job=1,
        account="lab",
        qos="high",
        sbatch_args=("--exclusive",),
    )
    opts = _sbatch_lines(spec.batch_script(_batch(), res))
    for want in (
        "--partition=gpu",
        "--time=1:00:00",
        "--mem=4G",
        "--cpus-per-task=2",
        "--gres=gpu:1",
        "--account=lab",
        "--qos=high",
        "--exclusive",
    ):
        assert want in opts
    gpus = _sbatch_lines(spec.batch_script(_batch(), Resources(gpus_per_job=2, gpu_flag="gpus")))
    assert "--gpus=2" in gpus and not any(o.startswith("--gres") for o in gpus)


def test_per_job_script_is_a_single_job() -> None:
    script = spec.batch_script(_batch(1, array=False), Resources())
    opts = _sbatch_lines(script)
    assert not any(o.startswith("--array") for o in opts)
    assert "--output=/shared/caliban/b1/logs/0.log" in opts
    assert 'sed -n "$((0 + 1))p"' in script


def test_container_is_labelled_like_local_jobs() -> None:
    from caliban.platforms.local import containers

    assert spec.JOB_LABEL == containers.JOB_LABEL
    assert spec.STORE_LABEL == containers.STORE_LABEL
    assert spec.XGROUP_LABEL == containers.XGROUP_LABEL
    script = spec.batch_script(_batch(labels={"caliban.test": "run1"}), Resources())
    assert "--label 'caliban.test=run1'" in script
    assert "--label 'caliban.store=store123'" in script
    assert '--label "caliban.job=$job_id"' in script
    assert "'caliban-local/img:abc'" in script


@pytest.mark.parametrize(
    "argv",
    [
        ("--lr", "0.1"),
        ("it's", "a b", "new\nline", "tab\there", "back\\slash", "$HOME", "`x`", '"q"'),
        ("--flag", ""),
        ("\x01ctl", "ünï"),
    ],
)
def test_args_line_round_trips_in_python_and_bash(argv: tuple[str, ...]) -> None:
    task = Task(JOB, argv)
    line = spec.args_line(task)
    assert "\n" not in line
    assert spec.parse_args_line(line) == task
    # The batch script reads it with `eval "set -- $line"`: bash must agree.
    out = subprocess.run(
        ["bash", "-c", 'eval "set -- $1"; printf "%s\\0" "$@"', "_", line],
        capture_output=True,
        check=True,
    ).stdout
    assert out.decode().split("\0")[:-1] == [JOB, *argv]


def test_args_file_has_one_line_per_task_in_order() -> None:
    batch = _batch(3)
    text = spec.args_file(batch.tasks)
    lines = text.splitlines()
    assert [spec.parse_args_line(x) for x in lines] == list(batch.tasks)


def test_parse_sbatch() -> None:
    assert spec.parse_sbatch("1234\n") == "1234"
    assert spec.parse_sbatch("1234;cluster\n") == "1234"
    with pytest.raises(ValueError):
        spec.parse_sbatch("sbatch: error: nope")
    with pytest.raises(ValueError):
        spec.parse_sbatch("")


@pytest.mark.parametrize(
    ("raw", "code"), [(0, 0), (768, 3), (256, 1), (9, 137), (15, 143), (36608, 143)]
)
def test_exit_from_wait_status(raw: int, code: int) -> None:
    assert states.exit_from_wait_status(raw) == code


def test_exit_from_pair() -> None:
    assert states.exit_from_pair("3:0") == 3
    assert states.exit_from_pair("0:9") == 137
    assert states.exit_from_pair("junk") is None


@pytest.mark.parametrize(
    ("word", "exit_code", "state"),
    [
        ("PENDING", None, JobState.SUBMITTED),
        ("REQUEUED", None, JobState.SUBMITTED),
        ("RUNNING", None, JobState.RUNNING),
        ("COMPLETING", None, JobState.RUNNING),
        ("COMPLETED", 0, JobState.SUCCEEDED),
        ("FAILED", 3, JobState.FAILED),
        ("CANCELLED by 0", 143, JobState.STOPPED),
        ("TIMEOUT", 0, JobState.FAILED),
        ("OUT_OF_MEMORY", 137, JobState.FAILED),
        ("PREEMPTED", 0, JobState.FAILED),
        ("NODE_FAIL", 0, JobState.FAILED),
        ("WHATEVER", None, JobState.UNKNOWN),
    ],
)
def test_status_of(word: str, exit_code: int | None, state: JobState) -> None:
    assert states.status_of(word, exit_code).state is state


def test_failed_keeps_its_code_and_slurm_ends_are_named() -> None:
    failed = states.status_of("FAILED", 3)
    assert (failed.exit_code, failed.message) == (3, "exited with code 3")
    assert "TIMEOUT" in (states.status_of("TIMEOUT", 0).message or "")
    assert "memory" in (states.status_of("OUT_OF_MEMORY", 0).message or "")


@pytest.mark.parametrize(
    ("text", "tasks"),
    [("2-3%2", [2, 3]), ("5", [5]), ("0,4-6", [0, 4, 5, 6]), ("1-7:3%1", [1, 4, 7])],
)
def test_expand_tasks(text: str, tasks: list[int]) -> None:
    assert states.expand_tasks(text) == tasks


# Trimmed from squeue --json of Slurm 22.05 on this machine.
SQUEUE = {
    "meta": {},
    "errors": [],
    "jobs": [
        {"job_id": 2, "array_job_id": 1, "array_task_id": 0, "array_task_string": "",
         "job_state": "RUNNING", "exit_code": 0, "name": "caliban-B", "comment": "caliban:store=s",
         "state_reason": "None"},
        {"job_id": 1, "array_job_id": 1, "array_task_id": None, "array_task_string": "2-3%2",
         "job_state": "PENDING", "exit_code": 0, "name": "caliban-B", "comment": "caliban:store=s",
         "state_reason": "JobArrayTaskLimit"},
        {"job_id": 3, "array_job_id": 1, "array_task_id": 1, "array_task_string": "",
         "job_state": "FAILED", "exit_code": 768, "name": "caliban-B", "comment": "caliban:store=s",
         "state_reason": "NonZeroExitCode"},
        {"job_id": 12, "array_job_id": 0, "array_task_id": None, "array_task_string": "",
         "job_state": "CANCELLED", "exit_code": 36608, "name": "wrap", "comment": "",
         "state_reason": "None"},
    ],
}  # fmt: skip


def test_parse_squeue_json_expands_pending_tasks_and_reads_raw_exit_codes() -> None:
    seen = {s.key: s for s in states.parse_squeue_json(json.dumps(SQUEUE))}
    assert sorted(seen) == ["12", "1_0", "1_1", "1_2", "1_3"]
    assert seen["1_0"].status.state is JobState.RUNNING
    assert seen["1_2"].status.state is JobState.SUBMITTED
    assert seen["1_2"].task == 2 and seen["1_2"].array_job_id == "1"
    assert (seen["1_1"].status.state, seen["1_1"].status.exit_code) == (JobState.FAILED, 3)
    assert seen["12"].status.state is JobState.STOPPED
    assert seen["1_0"].name == "caliban-B" and seen["1_0"].comment == "caliban:store=s"


def test_parse_squeue_json_newer_number_objects() -> None:
    def num(n: int) -> object:
        return {"set": True, "number": n}

    job: dict[str, object] = {"job_id": num(9), "array_job_id": num(8), "array_task_id": num(1)}
    job |= {"job_state": ["FAILED"], "exit_code": num(512), "name": "n", "comment": ""}
    doc = {"jobs": [job]}
    (seen,) = states.parse_squeue_json(json.dumps(doc))
    assert seen.key == "8_1" and seen.status.exit_code == 2


def test_parse_squeue_json_refuses_garbage() -> None:
    with pytest.raises(ValueError):
        list(states.parse_squeue_json("squeue: error: x"))


JOBCOMP = (
    "JobId=3 UserId=root(0) GroupId=root(0) Name=caliban-B JobState=FAILED Partition=debug "
    "ArrayJobId=1 ArrayTaskId=1 DerivedExitCode=0:0 ExitCode=3:0 \n"
    "JobId=13 UserId=root(0) Name=wrap JobState=COMPLETED Partition=debug DerivedExitCode=0:0 "
    "ExitCode=0:0 \n"
    "JobId=14 Name=caliban-C JobState=TIMEOUT ExitCode=0:15 \n"
)


def test_parse_jobcomp_lines() -> None:
    seen = {s.key: s for s in states.parse_records(JOBCOMP)}
    assert (seen["1_1"].status.state, seen["1_1"].status.exit_code) == (JobState.FAILED, 3)
    assert seen["1_1"].name == "caliban-B"
    assert seen["13"].status.state is JobState.SUCCEEDED
    assert seen["14"].status.state is JobState.FAILED and seen["14"].status.slurm_state == "TIMEOUT"


def test_parse_scontrol_show_job() -> None:
    line = (
        "JobId=1 ArrayJobId=1 ArrayTaskId=2-3%2 ArrayTaskThrottle=2 JobName=caliban-B "
        "JobState=PENDING Reason=JobArrayTaskLimit ExitCode=0:0 Comment=caliban:store=s"
    )
    seen = list(states.parse_records(line))
    assert [s.key for s in seen] == ["1_2", "1_3"]
    assert all(s.status.state is JobState.SUBMITTED for s in seen)


PARTITIONS = (
    "PartitionName=debug AllowQos=ALL Default=YES MaxTime=UNLIMITED Nodes=vm State=UP\n"
    "PartitionName=short AllowQos=normal,high Default=NO MaxTime=00:10:00 Nodes=vm State=UP\n"
)


@pytest.mark.parametrize(
    ("text", "minutes"),
    [
        ("10", 10),
        ("5:30", 5.5),
        ("1:00:00", 60),
        ("2-0", 2880),
        ("1-02:03", 1563),
        ("UNLIMITED", None),
    ],
)
def test_parse_minutes(text: str, minutes: float | None) -> None:
    assert limits.parse_minutes(text) == minutes


def test_parse_minutes_refuses_garbage() -> None:
    with pytest.raises(ValidationError, match="not a Slurm time"):
        limits.parse_minutes("an hour")


def test_partitions_and_gpus_are_read() -> None:
    parts = limits.parse_partitions(PARTITIONS)
    assert parts["short"] == Partition("short", False, 10, ("normal", "high"), "vm")
    assert parts["debug"].default and parts["debug"].max_minutes is None
    nodes = "NodeName=a Gres=gpu:4 CPUTot=8\nNodeName=b Gres=gpu:a100:8(S:0-1),tmp:1 CPUTot=8\n"
    assert limits.max_gpus_per_node(nodes) == 8
    assert limits.max_gpus_per_node("NodeName=c Gres=(null)\n") == 0


def _check(res: Resources, qos: list[str] | None = None) -> Partition:
    return limits.check_resources(
        res, limits.parse_partitions(PARTITIONS), max_gpus=4, qos_names=qos
    )


def test_check_resources_accepts_and_picks_default() -> None:
    assert _check(Resources()).name == "debug"
    assert (
        _check(Resources(partition="short", time="5", qos="high"), ["normal", "high"]).name
        == "short"
    )


@pytest.mark.parametrize(
    ("res", "qos", "message"),
    [
        (
            Resources(partition="gpu"),
            None,
            "unknown partition 'gpu'; this cluster has: debug, short",
        ),
        (
            Resources(partition="short", time="60"),
            None,
            "more than partition short allows (00:10:00)",
        ),
        (Resources(gpus_per_job=5), None, "more than any node has (4)"),
        (Resources(qos="x"), ["normal"], "unknown QOS 'x'; this cluster has: normal"),
        (Resources(qos="x"), None, "no accounting"),
        (Resources(partition="short", qos="low"), ["low", "high"], "does not allow QOS 'low'"),
        (Resources(mem="lots"), None, "not a Slurm size"),
    ],
)
def test_check_resources_refuses_with_names(
    res: Resources, qos: list[str] | None, message: str
) -> None:
    with pytest.raises(ValidationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        _check(res, qos)


def test_parse_sacct_lines() -> None:
    text = "12_3|caliban-B|FAILED|3:0\n12_4|caliban-B|CANCELLED by 0|0:15\n13|other|COMPLETED|0:0\n"
    seen = {s.key: s for s in states.parse_sacct(text)}
    assert (seen["12_3"].task, seen["12_3"].status.exit_code) == (3, 3)
    assert seen["12_4"].status.state is JobState.STOPPED
    assert seen["13"].task is None and seen["13"].status.state is JobState.SUCCEEDED


@pytest.mark.parametrize("arg", ["--array=0-3", "-J", "--output=x", "--comment=x"])
def test_sbatch_args_may_not_take_what_caliban_owns(arg: str) -> None:
    with pytest.raises(ValidationError, match="caliban sets it"):
        limits.check_syntax(Resources(sbatch_args=(arg,)))
    limits.check_syntax(Resources(sbatch_args=("--exclusive", "--nice=10")))
