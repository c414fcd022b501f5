"""Drive caliban from Python: build once, run a sweep, read the results back.

Run from the repository root:

    .venv/bin/python tutorials/library/sweep.py

It runs the digits tutorial with a sweep made in code (a list comprehension
instead of a JSON file), prints the accuracy each job reported (the metrics line
`caliban results` reads, see docs/results.md), and exits 1 if any job failed.
"""

from __future__ import annotations

import sys
from pathlib import Path

import anyio

import caliban
from caliban.events import Event, JobStateChanged

HERE = Path(__file__).resolve().parent
PROJECT = HERE.parent / "basic"


def on_event(event: Event) -> None:
    # The library never prints: this program decides what to show.
    if isinstance(event, JobStateChanged) and event.state.terminal:
        print(f"job {event.label}: {event.state.value}")


async def main() -> int:
    sweep = [{"learning_rate": lr, "epochs": 10} for lr in (0.003, 0.03, 0.3)]
    async with caliban.Session(sink=on_event) as session:
        result = await session.run(
            caliban.RunRequest(
                project=caliban.ProjectOptions(folder=PROJECT, entry="train.py", use_gpu=False),
                experiments=sweep,
                max_parallel=3,
            )
        )
        # What each job reported (its last JSON line), read once and kept in the history.
        for row in await session.results(xgroup=result.xgroup):
            accuracy = (row.metrics or {}).get("accuracy")
            print(f"{' '.join(row.job.args):40} {row.job.state.value:10} accuracy={accuracy}")
        print(f"experiment group: {result.xgroup}")
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(anyio.run(main))
