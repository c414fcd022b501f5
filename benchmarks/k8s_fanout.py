"""Benchmark: a 500-job sweep to a Kubernetes API server, one Job each and as one Indexed Job.

The local Kubernetes API server of the tests (tests/fakes) runs in a child process, so its
work does not share the client's event loop, and takes 20 ms per create. In the same run:

- baseline: the original's approach, one ``create_namespaced_job`` at a time with
  kubernetes-asyncio, the same manifests, nothing recorded;
- caliban: ``Session.cluster_submit`` through a kubeconfig with ``--image_tag`` (no build),
  at the default in-flight bound: validation, planning in the store, the fan-out engine,
  recording every job;
- caliban --indexed: the same sweep as one Indexed Job plus its ConfigMap;
- for context, the server's own limit: bare aiohttp POSTs at the same in-flight bound
  (no client library, no retries, nothing recorded). On a small machine the fake server's
  CPU (about 1 ms per create, sharing the cores with the client) sets this floor.

Figures: wall times, speedups against the baseline, Jobs created, duplicates (Jobs carrying
the same caliban job id), create requests. The floor and caliban run in ``--rounds``
alternating pairs (default 3), reported as min/median/max, with caliban's wall time over the
floor's of the same round. Targets: at least 10x faster than sequential at the default
in-flight bound, within 1.5x of the bare aiohttp floor (median ratio), 0 duplicates.

Run: .venv/bin/python benchmarks/k8s_fanout.py [--jobs 500] [--latency 0.02] [--faults]
[--with-controller] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

NAMESPACES = ("seq", "raw", "cal", "idx")
IMAGE = "registry.example/bench/caliban-bench@sha256:" + "b" * 64


# -- the server process ---------------------------------------------------------------------


def _json_copy(obj: Any, memo: Any = None) -> Any:
    """A deep copy for JSON-shaped data, several times cheaper than copy.deepcopy."""
    if isinstance(obj, dict):
        return {k: _json_copy(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_json_copy(v) for v in obj]
    return obj


async def serve(latency: float, faults: bool, kubeconfig: str, controller: bool) -> None:
    """Run the fake API server until stdin closes; answer "stats" lines with JSON.

    The fake copies every object it stores, serves and publishes with copy.deepcopy,
    about 3 ms of CPU per Job create: on a small machine that, not the client, would set
    the pace. A real API server spends its time elsewhere (etcd, admission) and scales
    across cores; here its time per create is the ``latency`` knob. So this process
    swaps in a cheaper copy for JSON data (same results) before serving. Likewise the
    fake's Job controller makes each Job's pod inside the create request, where a real
    cluster's controller runs in another process (kube-controller-manager): it is off
    unless ``controller``.
    """
    import types

    from tests.fakes import k8s, k8s_http, k8s_jobs, k8s_store
    from tests.fakes.k8s import FakeKubernetes

    for module in (k8s, k8s_http, k8s_jobs, k8s_store):
        module.copy = types.SimpleNamespace(deepcopy=_json_copy)  # type: ignore[attr-defined]
    if not controller:
        k8s_jobs.JobController.job_created = lambda self, job: None  # type: ignore[method-assign]

    async with FakeKubernetes(seed=3, namespaces=("default", *NAMESPACES)) as kube:
        kube.create_latency = latency
        kube.validate_schemas = False  # the server's own CPU, not the client's; tested elsewhere
        if faults:
            kube.error_rate, kube.error_status = 0.03, 503
            kube.lost_response_rate = 0.01
        kube.kubeconfig(kubeconfig)
        print("ready", flush=True)
        loop = asyncio.get_running_loop()
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            if line.strip() == "stats":
                per_ns: dict[str, Any] = {}
                for ns in NAMESPACES:
                    jobs = kube.jobs(ns)
                    ids = Counter(j["metadata"]["labels"].get("caliban.dev/job") for j in jobs)
                    per_ns[ns] = {
                        "jobs": len(jobs),
                        "duplicates": sum(n - 1 for n in ids.values() if n > 1),
                        "configmaps": len(kube.configmaps(ns)),
                    }
                creates = Counter(
                    "/".join(r.path.split("/")[-2:])
                    for r in kube.requests
                    if r.method == "POST" and "/namespaces/" in r.path
                )
                print(
                    json.dumps(
                        {
                            "namespaces": per_ns,
                            "create_requests": dict(creates),
                            "conflicts": kube.conflicts,
                        }
                    ),
                    flush=True,
                )


class Server:
    def __init__(
        self, latency: float, faults: bool, kubeconfig: Path, controller: bool = False
    ) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--serve",
                "--latency",
                str(latency),
                "--kubeconfig",
                str(kubeconfig),
                *(["--faults"] if faults else []),
                *(["--with-controller"] if controller else []),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        assert self.proc.stdout is not None and self.proc.stdin is not None
        if self.proc.stdout.readline().strip() != "ready":
            raise SystemExit("the fake API server did not start")

    def stats(self) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("stats\n")
        self.proc.stdin.flush()
        result: dict[str, Any] = json.loads(self.proc.stdout.readline())
        return result

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


# -- the three runs -------------------------------------------------------------------------


def manifests(n: int) -> list[dict[str, Any]]:
    from caliban.core import names
    from caliban.platforms.kubernetes import spec as k8sspec

    shape = k8sspec.JobShape(image=IMAGE, xgroup="seq")
    out = []
    for i in range(n):
        job_id = names.new_job_id()
        labels = k8sspec.labels_for(user={}, xgroup="seq", store_id="bench", job_id=job_id)
        out.append(
            k8sspec.job_manifest(
                shape,
                name=k8sspec.job_name("seq", job_id),
                job_id=job_id,
                args=["--seed", str(i)],
                labels=labels,
            )
        )
    return out


async def sequential(kubeconfig: Path, n: int) -> float:
    from kubernetes_asyncio import client, config

    bodies = manifests(n)
    api = await config.new_client_from_config(config_file=str(kubeconfig), persist_config=False)
    async with api:
        batch = client.BatchV1Api(api)
        start = time.perf_counter()
        for body in bodies:
            # The client takes plain dicts as well as its models (it serialises either).
            await batch.create_namespaced_job("seq", body)  # type: ignore[arg-type]
        return time.perf_counter() - start


@dataclass(frozen=True)
class Run:
    wall_s: float  # the whole call: checks, plan in the store, submission, recording
    submit_s: float  # from "every job is planned" to the end
    accepted: int


async def raw_floor(kubeconfig: Path, n: int, inflight: int) -> float:
    """The server's own limit: bare aiohttp POSTs, ``inflight`` at a time, no client library,
    no retries, nothing recorded. No client can beat this on the same machine."""
    import aiohttp
    import yaml

    config = yaml.safe_load(kubeconfig.read_text())
    url = config["clusters"][0]["cluster"]["server"] + "/apis/batch/v1/namespaces/raw/jobs"
    token = config["users"][0]["user"]["token"]
    bodies = manifests(n)
    limit = asyncio.Semaphore(inflight)
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http:

        async def create(body: dict[str, Any]) -> None:
            async with limit, http.post(url, json=body) as response:
                await response.read()

        start = time.perf_counter()
        await asyncio.gather(*(create(b) for b in bodies))
        return time.perf_counter() - start


async def with_caliban(
    kubeconfig: Path, home: Path, n: int, *, namespace: str, indexed: bool
) -> Run:
    from caliban import ClusterJobRequest, ProjectOptions, Session
    from caliban.events import JobsPlanned
    from caliban.options import ClusterOptions
    from caliban.spec import JobState

    project = home / "project"
    project.mkdir(parents=True, exist_ok=True)
    (project / "train.py").write_text("print('hello')\n")
    request = ClusterJobRequest(
        project=ProjectOptions(folder=project, entry="train.py", use_gpu=False),
        cluster=ClusterOptions(kubeconfig=str(kubeconfig), namespace=namespace),
        experiments={"seed": list(range(n))},
        image_tag=IMAGE,
        xgroup=namespace,
        indexed=indexed,
        max_sweep=max(n, 1),  # --jobs is the sweep asked for
    )
    environ = {"HOME": str(home), "CALIBAN_HOME": str(home / "caliban")}
    planned_at: list[float] = []

    def sink(event: object) -> None:
        if isinstance(event, JobsPlanned):
            planned_at.append(time.perf_counter())

    start = time.perf_counter()
    async with Session(home=home / "caliban", environ=environ, sink=sink) as session:
        result = await session.cluster_submit(request)
        end = time.perf_counter()
    return Run(
        end - start, end - planned_at[0], sum(j.state is JobState.SUBMITTED for j in result.jobs)
    )


def spread(times: list[float]) -> dict[str, float]:
    return {
        "min_s": round(min(times), 3),
        "median_s": round(statistics.median(times), 3),
        "max_s": round(max(times), 3),
    }


async def main(n: int, latency: float, faults: bool, controller: bool, rounds: int) -> None:
    from _common import report

    from caliban.options import ClusterJobRequest

    default_inflight = int(ClusterJobRequest.__dataclass_fields__["max_inflight"].default)  # type: ignore[arg-type]
    # Import everything both sides use before any clock starts: the figures are about
    # submitting, not about interpreter start-up.
    import caliban.platforms.kubernetes.jobs
    import caliban.platforms.kubernetes.plan
    import caliban.session  # noqa: F401

    floors: list[float] = []
    ours: list[Run] = []
    ratios: list[float] = []
    with tempfile.TemporaryDirectory(prefix="caliban-bench-") as tmp:
        home = Path(tmp)
        kubeconfig = home / "kubeconfig"
        server = Server(latency, faults, kubeconfig, controller)
        try:
            seq = await sequential(kubeconfig, n) if not faults else None
            # Rounds alternate the floor and caliban, so both see the same machine load;
            # each ratio compares the two runs of one round.
            for i in range(rounds):
                # Bare POSTs cannot survive injected faults: no floor then.
                floor = None if faults else await raw_floor(kubeconfig, n, default_inflight)
                run = await with_caliban(
                    kubeconfig, home / f"a{i}", n, namespace="cal", indexed=False
                )
                ours.append(run)
                if floor is not None:
                    floors.append(floor)
                    ratios.append(run.wall_s / floor)
            indexed = await with_caliban(kubeconfig, home / "b", n, namespace="idx", indexed=True)
            stats = server.stats()
        finally:
            server.close()
    ns = stats["namespaces"]
    walls = [r.wall_s for r in ours]
    figures: dict[str, Any] = {
        "jobs": n,
        "rounds": rounds,
        "create_latency_s": latency,
        "faults": faults,
        "job_controller_in_server": controller,
        "max_inflight": default_inflight,
        "caliban": {
            "wall": spread(walls),
            "submit_phase": spread([r.submit_s for r in ours]),
            "accepted": sum(r.accepted for r in ours),
            "jobs_created": ns["cal"]["jobs"],
            "duplicates": ns["cal"]["duplicates"],
        },
        "caliban_indexed": {
            "wall_s": round(indexed.wall_s, 3),
            "submit_phase_s": round(indexed.submit_s, 3),
            "accepted": indexed.accepted,
            "jobs_created": ns["idx"]["jobs"],
            "configmaps_created": ns["idx"]["configmaps"],
        },
        "server_floor_raw_aiohttp": spread(floors) if floors else None,
        "caliban_over_raw": (
            {
                "per_round": [round(r, 2) for r in ratios],
                "min": round(min(ratios), 2),
                "median": round(statistics.median(ratios), 2),
                "max": round(max(ratios), 2),
                # Steadier on a shared machine than any one round's ratio.
                "of_medians": round(statistics.median(walls) / statistics.median(floors), 2),
                "of_minimums": round(min(walls) / min(floors), 2),
            }
            if ratios
            else None
        ),
        "create_requests": stats["create_requests"],
        "conflicts_409": stats["conflicts"],
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }
    targets: dict[str, bool] = {
        "no_duplicates": ns["cal"]["duplicates"] == 0,
        "all_created": ns["cal"]["jobs"] == n * rounds
        and sum(r.accepted for r in ours) == n * rounds,
    }
    if ratios:
        targets["within_1_5x_raw_median"] = statistics.median(ratios) <= 1.5
    if seq is not None:
        median_wall = statistics.median(walls)
        figures["baseline_sequential"] = {
            "wall_s": round(seq, 3),
            "jobs_created": ns["seq"]["jobs"],
        }
        figures["speedup_vs_sequential"] = round(seq / median_wall, 1)
        figures["submit_phase_speedup_vs_sequential"] = round(
            seq / statistics.median(r.submit_s for r in ours), 1
        )
        figures["indexed_speedup_vs_sequential"] = round(seq / indexed.wall_s, 1)
        targets["at_least_10x_sequential"] = seq / median_wall >= 10
    figures["targets"] = targets
    report("k8s_fanout", figures)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--latency", type=float, default=0.02, help="seconds per create")
    parser.add_argument(
        "--faults",
        action="store_true",
        help="3%% 503s and 1%% lost responses (no sequential baseline)",
    )
    parser.add_argument(
        "--with-controller",
        action="store_true",
        help="let the fake make each Job's pod inside the create request",
    )
    parser.add_argument("--rounds", type=int, default=3, help="raw/caliban pairs to run")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--kubeconfig", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve(args.latency, args.faults, args.kubeconfig, args.with_controller))
    else:
        asyncio.run(main(args.jobs, args.latency, args.faults, args.with_controller, args.rounds))
