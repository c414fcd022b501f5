"""Benchmark: `caliban status` of a 10,000-job experiment group, against the bare query.

A real SQLite store in a temporary folder holds one finished group of JOBS local jobs
(each with a container spec of about 1.5 kB, as `caliban run` records). In the same run:

- bare query: the SELECT status makes, with sqlite3, rows fetched and nothing decoded;
- status: `caliban status --xgroup X` through the CLI entry point in this process
  (imports done), stdout a file: what a script or `| less` gets;
- status --json: the same, as JSON;
- status on a terminal (rich sees a terminal): more than joblist.LARGE rows, so plain too;
- status --max_jobs 0 of a group whose experiments ran twice (2 x JOBS jobs, all shown);
- status in a fresh interpreter (`caliban status ...` as a user types it): start-up included,
  for context (imports are another item's business).

Each figure is min/median/max of REPEAT runs. Target: status of 10,000 jobs within 1 s.
Before this change the same status took about 12.5 s (a rich table at 1.4 ms a row, and
every row's spec decoded); `--rich-table` times that table alone on 1,000 rows, to compare.

Run: .venv/bin/python benchmarks/status_scale.py [--jobs 10000] [--repeat 3] [--rich-table]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import CALIBAN, report  # noqa: E402

XGROUP = "bench-status"
TWICE = "bench-status-twice"


def container_spec(i: int) -> dict[str, object]:
    """About what a local job's recorded container config weighs."""
    return {
        "Image": "caliban-local/bench@sha256:" + "c" * 64,
        "Cmd": ["python3", "job.py", "--seed", str(i), "--lr", "0.01"],
        "Env": [f"CALIBAN_JOB_ID=job{i:06d}", "PYTHONUNBUFFERED=1", "HOME=/home/caliban"]
        + [f"EXTRA_{k}=value-{k}" for k in range(8)],
        "Labels": {f"caliban.dev/{k}": f"label-value-{k}-{i}" for k in range(10)},
        "WorkingDir": "/usr/app",
        "User": "1000:1000",
        "HostConfig": {
            "AutoRemove": False,
            "Binds": [f"/home/user/.caliban/logs/{XGROUP}:/logs:rw"],
            "DeviceRequests": [],
            "CpusetCpus": "",
            "ShmSize": 67108864,
            "Ulimits": [{"Name": "nofile", "Soft": 65536, "Hard": 65536}],
        },
        "Tty": False,
        "AttachStdout": True,
        "AttachStderr": True,
    }


async def fill(db: Path, n: int) -> None:
    from caliban.adapters.store import PlanItem, Store
    from caliban.core import names
    from caliban.spec import JobState, Platform

    async with Store(db) as store:
        for xgroup, attempts in ((XGROUP, 1), (TWICE, 2)):
            xid = await store.xgroup(xgroup, "bench")
            sid = await store.container_spec(
                f"local:{xgroup}", "img", {"image": "img", "cmd": ["python3", "job.py"]}, "bench"
            )
            for _attempt in range(attempts):
                items = [
                    PlanItem(
                        index=i,
                        args=("--seed", str(i), "--lr", "0.01"),
                        kwargs={"seed": i, "lr": 0.01},
                        job_id=names.new_job_id(),
                        image="caliban-local/bench:latest",
                        spec=container_spec(i),
                        details={"mode": "cpu", "gpus": [], "container": f"caliban-{i}"},
                        log_path=f"/home/user/.caliban/logs/{xgroup}/{i}.log",
                    )
                    for i in range(n)
                ]
                planned = await store.plan(
                    xgroup_id=xid,
                    container_spec_id=sid,
                    platform=Platform.LOCAL,
                    user="bench",
                    items=items,
                )
                # Finished jobs: status asks no platform about them.
                await store.transitions(
                    [
                        (
                            p.job.job_id,
                            JobState.SUCCEEDED if p.job.index % 7 else JobState.FAILED,
                            0 if p.job.index % 7 else 1,
                            None,
                            None,
                            None,
                        )
                        for p in planned
                    ]
                )


def bare_query(db: Path) -> int:
    from caliban.adapters.store import _JOB_COLUMNS, _JOB_FROM

    with contextlib.closing(sqlite3.connect(db)) as conn:
        rows = conn.execute(
            f"SELECT {_JOB_COLUMNS} {_JOB_FROM} WHERE x.name = ?"
            " ORDER BY j.created DESC, j.rowid DESC",
            (XGROUP,),
        ).fetchall()
    return len(rows)


def in_process(args: list[str], out: Path, *, terminal: bool = False) -> str:
    from caliban.cli.main import main

    with out.open("w") as stream, contextlib.redirect_stdout(stream):
        if terminal:
            os.environ["TTY_COMPATIBLE"] = "1"  # rich: treat stdout as a terminal
        try:
            code = main(args)
        finally:
            os.environ.pop("TTY_COMPATIBLE", None)
    if code != 0:
        raise SystemExit(f"caliban {' '.join(args)} exited {code}")
    return out.read_text()


def fresh_interpreter(args: list[str], env: dict[str, str]) -> str:
    result = subprocess.run(
        [CALIBAN, *args], env=env, capture_output=True, text=True, check=False, timeout=300
    )
    if result.returncode != 0:
        raise SystemExit(f"caliban {' '.join(args)} failed:\n{result.stderr}")
    return result.stdout


def spread(fn: Callable[[], object], repeat: int) -> dict[str, float]:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return {
        "min_s": round(min(times), 4),
        "median_s": round(statistics.median(times), 4),
        "max_s": round(max(times), 4),
    }


def rich_table_1000() -> float:
    from caliban.adapters.store import Store
    from caliban.cli.ui import jobs_table, make_console

    async def load() -> list[object]:
        async with Store(Path(os.environ["CALIBAN_HOME"]) / "caliban.db") as store:
            return list(await store.jobs(xgroup=XGROUP, limit=1000))

    jobs = asyncio.run(load())
    start = time.perf_counter()
    make_console(io.StringIO()).print(jobs_table(jobs))  # type: ignore[arg-type]
    return time.perf_counter() - start


def main(n: int, repeat: int, rich_table: bool) -> None:
    with tempfile.TemporaryDirectory(prefix="caliban-bench-") as tmp:
        home = Path(tmp) / "home"
        home.mkdir()
        os.environ["CALIBAN_HOME"] = str(home)
        env = {**os.environ, "CALIBAN_HOME": str(home)}
        db = home / "caliban.db"
        start = time.perf_counter()
        asyncio.run(fill(db, n))
        fill_s = time.perf_counter() - start
        out = Path(tmp) / "out.txt"
        status = ["status", "--xgroup", XGROUP]
        # Warm: imports and the page cache, not what is measured.
        in_process(status, out)
        rows = bare_query(db)
        listed = in_process(status, out)
        shown = listed.count("SUCCEEDED") + listed.count("FAILED")
        as_json = in_process([*status, "--json"], out)
        import json

        json_jobs = len(json.loads(as_json))
        figures: dict[str, object] = {
            "jobs": n,
            "store_fill_s": round(fill_s, 2),
            "rows_listed": shown,
            "json_jobs": json_jobs,
            "bare_query": spread(lambda: bare_query(db), repeat),
            "status_piped": spread(lambda: in_process(status, out), repeat),
            "status_json": spread(lambda: in_process([*status, "--json"], out), repeat),
            "status_terminal": spread(lambda: in_process(status, out, terminal=True), repeat),
            "status_all_of_2x_history": spread(
                lambda: in_process(["status", "--xgroup", TWICE, "--max_jobs", "0"], out),
                repeat,
            ),
            "status_fresh_interpreter": spread(lambda: fresh_interpreter(status, env), repeat),
        }
        if rich_table:
            figures["rich_table_1000_rows_s"] = round(rich_table_1000(), 3)
        median = figures["status_piped"]["median_s"]  # type: ignore[index]
        figures["status_over_bare_query"] = round(
            median / figures["bare_query"]["median_s"],  # type: ignore[index]
            1,
        )
        figures["load_average"] = [round(x, 2) for x in os.getloadavg()]
        figures["targets"] = {
            "status_10k_within_1s": median <= 1.0,
            "every_job_listed": shown == n == rows == json_jobs,
        }
    report("status_scale", figures)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--rich-table", action="store_true", help="time the old table too")
    args = parser.parse_args()
    main(args.jobs, args.repeat, args.rich_table)
