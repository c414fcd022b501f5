"""Benchmark: fanning 1,000 jobs out to Vertex AI at the quota limit, under faults.

Runs the local Vertex server (tests/fakes, the same one the tests use) in-process with a
create quota of 600 per minute per region (a sliding window), 100 ms per create, 5% of
creates answered 503 and 1% created but with the response lost. Then:

- caliban: ``Session.cloud(...)`` through the library API with ``--image_tag`` (no build),
  ``rate_limit=600``: the production fan-out engine (token bucket, bounded in-flight
  requests, retries, lookup before re-sending an uncertain create);
- baseline: the original's approach on a fresh server with the same faults: one create at a
  time, retried with exponential backoff on 429 / 5xx / connection errors, never looked up.

Figures: wall time against the quota bound (N / rate), duplicates, lost jobs, 429s received
(and as a share of requests). Targets: within 1.1x of the quota bound, 0 duplicates, 0 lost,
429s under 2% of requests.

Run: .venv/bin/python benchmarks/cloud_fanout.py [--jobs 1000] [--rate 600] [--no-baseline]
[--clean]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import report

from caliban import CloudRequest, ProjectOptions, Session
from caliban.spec import JobState
from tests.fakes.oauth import CLOUD_PLATFORM, FakeOAuth, write_credentials
from tests.fakes.vertex import FakeVertex

IMAGE = "us-central1-docker.pkg.dev/bench-proj/caliban/bench@sha256:" + "b" * 64
PROJECT = "bench-proj"
REGION = "us-central1"
CREATE_LATENCY = 0.1
ERROR_RATE_5XX = 0.05
LOST_RATE = 0.01


FAULTS = True


def fake_vertex(oauth: FakeOAuth, quota: int, seed: int) -> FakeVertex:
    server = FakeVertex(token_validator=oauth.valid_token, seed=seed)
    server.quota_per_minute = quota
    server.create_latency = CREATE_LATENCY
    if FAULTS:
        server.error_rate_5xx = ERROR_RATE_5XX
        server.lost_response_rate = LOST_RATE
    return server


def outcome(server: FakeVertex, jobs: int, elapsed: float, rate: float) -> dict[str, Any]:
    counters = server.counters()
    labelled = {j.labels.get("caliban_job") for j in server.jobs}
    dups = server.duplicates("caliban_job")
    requests = counters["creates_received"]
    bound = jobs / (rate / 60.0)
    return {
        "wall_s": round(elapsed, 2),
        "quota_bound_s": round(bound, 2),
        "vs_quota_bound": round(elapsed / bound, 3),
        "jobs_created": len(server.jobs),
        "distinct_jobs": len(labelled),
        "duplicates": sum(len(v) - 1 for v in dups.values()),
        "create_requests": requests,
        "received_429": counters["rejected_429"],
        "share_429": round(counters["rejected_429"] / max(1, requests), 4),
        "received_5xx": counters["rejected_5xx"],
        "lost_responses": counters["lost_responses"],
        "list_calls": counters["list_calls"],
    }


async def run_caliban(
    oauth: FakeOAuth, key: Path, home: Path, jobs: int, rate: float
) -> dict[str, Any]:
    project = home / "project"
    project.mkdir(parents=True)
    (project / "train.py").write_text("print('hello')\n")
    async with fake_vertex(oauth, int(rate), seed=1) as server:
        request = CloudRequest(
            project=ProjectOptions(folder=project, entry="train.py", use_gpu=False),
            experiments={"seed": list(range(jobs))},
            image_tag=IMAGE,
            project_id=PROJECT,
            regions=(REGION,),
            cloud_key=str(key),
            endpoint=server.url,
            rate_limit=rate,
            xgroup="bench",
            max_sweep=max(jobs, 1),  # --jobs is the sweep asked for
        )
        environ = {"HOME": str(home), "CALIBAN_HOME": str(home / "caliban")}
        start = time.perf_counter()
        async with Session(home=home / "caliban", environ=environ) as session:
            result = await session.cloud(request)
        elapsed = time.perf_counter() - start
        figures = outcome(server, jobs, elapsed, rate)
        names = {j.name for j in server.jobs}
        recorded = [j.platform_id for j in result.jobs]
        figures["accepted"] = sum(j.state is JobState.SUBMITTED for j in result.jobs)
        figures["lost"] = jobs - len({p for p in recorded if p in names})
    return figures


async def run_sequential(oauth: FakeOAuth, key: Path, jobs: int, rate: float) -> dict[str, Any]:
    """The original's way: one create at a time, retried on errors, never looked up."""
    from gcloud.aio.auth import Token

    rng = random.Random(7)
    async with fake_vertex(oauth, int(rate), seed=1) as server, aiohttp.ClientSession() as http:
        token = Token(service_file=str(key), session=http, scopes=[CLOUD_PLATFORM])
        url = f"{server.url}/v1/projects/{PROJECT}/locations/{REGION}/customJobs"
        created = 0
        start = time.perf_counter()
        for index in range(jobs):
            body = {
                "displayName": f"bench_{index + 1}",
                "labels": {"caliban_job": f"seq{index:06d}"},
                "jobSpec": {
                    "workerPoolSpecs": [
                        {
                            "machineSpec": {"machineType": "n1-highcpu-32"},
                            "replicaCount": "1",
                            "containerSpec": {"imageUri": IMAGE, "args": ["--seed", str(index)]},
                        }
                    ]
                },
            }
            for attempt in range(1, 7):
                headers = {"Authorization": f"Bearer {await token.get()}"}
                try:
                    async with http.post(url, json=body, headers=headers) as response:
                        await response.read()
                        if response.status == 200:
                            created += 1
                            break
                        if response.status not in (429, 500, 502, 503, 504):
                            break
                        delay = float(response.headers.get("Retry-After", 0) or 0)
                except (aiohttp.ClientError, TimeoutError):
                    delay = 0.0
                await asyncio.sleep(max(delay, rng.uniform(0, min(32.0, 2.0 ** (attempt - 1)))))
        elapsed = time.perf_counter() - start
        await token.close()
        figures = outcome(server, jobs, elapsed, rate)
        labelled = {j.labels.get("caliban_job") for j in server.jobs}
        figures["lost"] = jobs - len(labelled)
    return figures


async def main(jobs: int, rate: float, baseline: bool) -> None:
    with tempfile.TemporaryDirectory(prefix="caliban-bench-") as tmp:
        home = Path(tmp)
        async with FakeOAuth() as oauth:
            info, _ = oauth.add_service_account(PROJECT)
            key = write_credentials(home / "key.json", info)
            ours = await run_caliban(oauth, key, home, jobs, rate)
            seq = await run_sequential(oauth, key, jobs, rate) if baseline else None
    figures: dict[str, Any] = {
        "jobs": jobs,
        "rate_per_minute": rate,
        "create_latency_s": CREATE_LATENCY,
        "error_rate_5xx": ERROR_RATE_5XX if FAULTS else 0.0,
        "lost_response_rate": LOST_RATE if FAULTS else 0.0,
        "caliban": ours,
        "targets": {
            "within_1_1x_of_quota_bound": ours["vs_quota_bound"] <= 1.1,
            "no_duplicates": ours["duplicates"] == 0,
            "no_lost": ours["lost"] == 0,
            "429s_under_2pct": ours["share_429"] < 0.02,
        },
    }
    if seq is not None:
        figures["baseline_sequential"] = seq
        figures["speedup_vs_sequential"] = round(seq["wall_s"] / ours["wall_s"], 2)
    report("cloud_fanout", figures)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=600.0, help="quota, creates per minute")
    parser.add_argument("--no-baseline", action="store_true", help="skip the sequential run")
    parser.add_argument("--clean", action="store_true", help="no 503s and no lost responses")
    args = parser.parse_args()
    FAULTS = not args.clean
    asyncio.run(main(args.jobs, args.rate, not args.no_baseline))
