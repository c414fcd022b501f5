"""Benchmark: expanding a 10^5-job sweep and rendering every job's argv.

Compares caliban's streaming expansion (validate once, then a generator of
jobs rendered one at a time) with a straightforward eager implementation
measured in the same run: every job dict built in a list with
itertools.product, then every argv rendered into another list. Prints one
JSON object with wall time (best of several runs), peak traced memory, and
the ratios (eager / streaming, so above 1 means streaming wins).

Run: .venv/bin/python benchmarks/expansion.py [--jobs-exponent 5] [--repeat 5]
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import platform
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from caliban.core import experiment


def sweep(exponent: int) -> dict[str, Any]:
    """A config of 10**exponent jobs mixing the usual kinds of keys."""
    assert exponent >= 2
    config: dict[str, Any] = {
        "[depth,width]": [[d, 64 * d] for d in range(1, 6)],
        "use_bn": [True, False],
        "dataset": "imagenet",
    }
    names = ["learning_rate", "batch_size", "seed", "optimizer", "warmup", "decay"]
    for i in range(exponent - 1):
        name = names[i] if i < len(names) else f"knob{i}"
        config[name] = [round(0.001 * (j + 1), 6) if i == 0 else j for j in range(10)]
    return config


# -- the eager baseline: what one would write without thinking about scale --


def eager_expand(config: dict[str, Any]) -> list[dict[str, Any]]:
    keys = list(config)
    members = {k: [m.strip() for m in k[1:-1].split(",")] for k in keys if k.startswith("[")}
    columns = [v if isinstance(v, list) else [v] for v in config.values()]
    jobs = []
    # Reversed so the first key varies fastest, the same order as caliban.
    for combo in itertools.product(*columns[::-1]):
        job: dict[str, Any] = {}
        for key, value in zip(keys, combo[::-1], strict=True):
            if key in members:
                job.update(zip(members[key], value, strict=True))
            else:
                job[key] = value
        jobs.append(job)
    return jobs


def eager_render(job: dict[str, Any]) -> list[str]:
    argv: list[str] = []
    for key, value in job.items():
        if value is True:
            argv.append("--" + key)
        elif value is not False:
            argv += ["--" + key, str(value)]
    return argv


def run_eager(config: dict[str, Any]) -> int:
    argvs = [eager_render(job) for job in eager_expand(config)]
    return sum(map(len, argvs))


def run_streaming(config: dict[str, Any]) -> int:
    tokens = 0
    for job in experiment.expand(experiment.validate(config)):
        tokens += len(experiment.to_argv(job))
    return tokens


# -- measurement --


def best_time(fn: Callable[[], int], repeat: int) -> tuple[float, int]:
    times, result = [], 0
    for _ in range(repeat):
        gc.collect()
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def peak_memory(fn: Callable[[], int]) -> int:
    gc.collect()
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def first_job_latency(exponent: int) -> dict[str, float]:
    config = sweep(exponent)
    start = time.perf_counter()
    validated = experiment.validate(config)
    total = experiment.count(validated)
    counted = time.perf_counter()
    experiment.to_argv(next(experiment.expand(validated)))
    first = time.perf_counter()
    return {
        "jobs": total,
        "validate_and_count_ms": round((counted - start) * 1000, 3),
        "first_job_ms": round((first - start) * 1000, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs-exponent", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    config = sweep(args.jobs_exponent)
    n_jobs = experiment.count(experiment.validate(config))
    assert [eager_render(j) for j in eager_expand(config)] == [
        experiment.to_argv(j) for j in experiment.expand(experiment.validate(config))
    ], "the baseline must produce the same argv in the same order"

    stream_s, stream_tokens = best_time(lambda: run_streaming(config), args.repeat)
    eager_s, eager_tokens = best_time(lambda: run_eager(config), args.repeat)
    assert stream_tokens == eager_tokens
    stream_peak = peak_memory(lambda: run_streaming(config))
    eager_peak = peak_memory(lambda: run_eager(config))
    # Memory must not grow with the sweep: a tenth of the jobs, same peak.
    smaller = sweep(args.jobs_exponent - 1)
    stream_peak_small = peak_memory(lambda: run_streaming(smaller))

    result = {
        "benchmark": "expansion",
        "python": platform.python_version(),
        "jobs": n_jobs,
        "argv_tokens": stream_tokens,
        "streaming": {
            "seconds": round(stream_s, 4),
            "jobs_per_second": round(n_jobs / stream_s),
            "peak_bytes": stream_peak,
            "peak_bytes_at_a_tenth_of_the_jobs": stream_peak_small,
        },
        "baseline_eager": {
            "seconds": round(eager_s, 4),
            "jobs_per_second": round(n_jobs / eager_s),
            "peak_bytes": eager_peak,
        },
        "ratios": {
            "time_eager_over_streaming": round(eager_s / stream_s, 3),
            "memory_eager_over_streaming": round(eager_peak / stream_peak, 1),
        },
        "first_job_of_a_larger_sweep": first_job_latency(args.jobs_exponent + 1),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
