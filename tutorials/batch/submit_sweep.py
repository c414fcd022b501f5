"""Submit a several-hundred-job sweep to Vertex AI from Python, wait, and tabulate outcomes.

Builds the digits tutorial's image once (tutorials/basic), pushes it, submits one custom job
per point of a sweep generated here in code, polls until every job has finished, and prints
a table of outcomes. Run it again with the same --xgroup after an interruption and only the
missing jobs are sent. See README.md next to this file.

    .venv/bin/python tutorials/batch/submit_sweep.py --project_id my-proj --region us-central1

Every flag can come from the environment instead: PROJECT_ID, REGION,
GOOGLE_APPLICATION_CREDENTIALS, CALIBAN_VERTEX_ENDPOINT, CALIBAN_IMAGE_REGISTRY.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
from collections import Counter
from pathlib import Path

import anyio

import caliban
from caliban.events import Event, JobsPlanned, JobStateChanged, Notice

PROJECT = Path(__file__).resolve().parent.parent / "basic"


def sweep() -> list[dict[str, object]]:
    """12 learning rates x 5 widths x 5 seeds = 300 jobs."""
    rates = [round(0.0005 * 1.5**i, 6) for i in range(12)]
    return [
        {"learning_rate": lr, "hidden": width, "seed": seed, "epochs": 30}
        for lr, width, seed in itertools.product(rates, [16, 32, 64, 128, 256], range(5))
    ]


def parse(argv: list[str]) -> argparse.Namespace:
    env = os.environ.get
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--project_id", default=env("PROJECT_ID"), help="Google Cloud project")
    p.add_argument(
        "--region",
        action="append",
        dest="regions",
        default=[],
        help="region(s) to spread the jobs over (default $REGION or us-central1)",
    )
    p.add_argument(
        "--cloud_key",
        default=env("GOOGLE_APPLICATION_CREDENTIALS"),
        help="service account key file",
    )
    p.add_argument(
        "--api_endpoint",
        default=env("CALIBAN_VERTEX_ENDPOINT"),
        help="Vertex API base URL (a private endpoint or a test server)",
    )
    p.add_argument(
        "--image_registry",
        default=env("CALIBAN_IMAGE_REGISTRY"),
        help="push here instead of Artifact Registry",
    )
    p.add_argument("--image_tag", help="submit this image; skip building and pushing")
    p.add_argument("--xgroup", default=f"digits-sweep-{time.strftime('%Y%m%d-%H%M%S')}")
    p.add_argument("--rate_limit", type=float, default=60.0, help="creates per minute per region")
    p.add_argument("--jobs", type=int, default=0, help="submit only the first N (0: all 300)")
    p.add_argument("--poll", type=float, default=30.0, help="seconds between status checks")
    p.add_argument("--timeout", type=float, default=4 * 3600, help="give up waiting after this")
    return p.parse_args(argv)


def show(event: Event) -> None:
    # The library prints nothing; this script picks what to show.
    if isinstance(event, Notice) and event.level in ("info", "warning", "error"):
        print(event.text, flush=True)
    elif isinstance(event, JobsPlanned):
        print(f"{event.total} jobs, {event.to_run} to submit, {event.skipped} already there")
    elif isinstance(event, JobStateChanged) and event.state is caliban.JobState.FAILED:
        print(f"job {event.label} refused: {event.detail}", flush=True)


def table(jobs: list[caliban.JobRecord]) -> str:
    """Outcomes by learning rate: how many jobs ended in each state."""
    states = sorted({j.state.value for j in jobs})
    by_rate: dict[object, Counter[str]] = {}
    for job in jobs:
        by_rate.setdefault(job.kwargs["learning_rate"], Counter())[job.state.value] += 1
    rows = [["learning_rate", *states, "total"]]
    for rate in sorted(by_rate, key=float):  # type: ignore[arg-type]
        counts = by_rate[rate]
        rows.append([str(rate), *(str(counts[s]) for s in states), str(sum(counts.values()))])
    totals = Counter(j.state.value for j in jobs)
    rows.append(["all", *(str(totals[s]) for s in states), str(len(jobs))])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows)


async def main(argv: list[str]) -> int:
    args = parse(argv)
    experiments = sweep()[: args.jobs or None]
    request = caliban.CloudRequest(
        project=caliban.ProjectOptions(folder=PROJECT, entry="train.py", use_gpu=False),
        experiments=experiments,
        xgroup=args.xgroup,
        project_id=args.project_id,
        regions=tuple(args.regions),
        cloud_key=args.cloud_key,
        endpoint=args.api_endpoint,
        image_registry=args.image_registry,
        image_tag=args.image_tag,
        rate_limit=args.rate_limit,
    )
    async with caliban.Session(sink=show) as session:
        result = await session.cloud(request)  # builds and pushes once, then fans out
        print(
            f"submitted {sum(j.platform_id is not None for j in result.jobs)} of "
            f"{len(experiments)} jobs to experiment group {result.xgroup}",
            flush=True,
        )
        deadline = time.monotonic() + args.timeout
        while True:
            jobs = await session.status(xgroup=result.xgroup, max_jobs=0)
            done = sum(j.state.terminal for j in jobs)
            print(f"{done}/{len(jobs)} finished", flush=True)
            if done == len(jobs) or time.monotonic() > deadline:
                break
            await anyio.sleep(args.poll)
    print(table(jobs))
    unfinished = len(jobs) - done
    if unfinished:
        print(f"{unfinished} job(s) still running; see `caliban status --xgroup {result.xgroup}`")
    failed = [j for j in jobs if j.state is caliban.JobState.FAILED]
    for job in failed[:10]:
        print(f"failed: {' '.join(job.args)}: {job.message}")
    return 0 if not failed and not unfinished else 1


def run(argv: list[str]) -> int:
    """``main``, with caliban's errors said in one line (as the CLI does), not a traceback."""
    try:
        return anyio.run(main, argv)
    except caliban.CalibanError as exc:
        print(f"submit_sweep: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
