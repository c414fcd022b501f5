"""The local Vertex AI stand-in as a program: try `caliban cloud` or the batch tutorial
without a Google account.

    .venv/bin/python -m tests.fakes.local_vertex /tmp/vertex-standin &
    . /tmp/vertex-standin/env

starts the token server, the Vertex REST stand-in the tests use (jobs move on by
themselves: queued, pending, running, succeeded) and the Cloud Logging stand-in (each
job "prints" its arguments when it is created, so `caliban logs JOB` has something to
show), writes a service-account key file
whose token endpoint is the local one, and writes to DIR/env the variables that point
caliban at them. It serves until interrupted. Nothing is pushed or pulled: submit with
`--image_tag` (any image reference).
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import sys
from pathlib import Path

from tests.fakes.cloudlogging import FakeLogging
from tests.fakes.oauth import FakeOAuth, write_credentials
from tests.fakes.vertex import FakeVertex
from tests.fakes.vertex_jobs import FakeJob, Lifecycle


async def serve(folder: Path, *, queued: float, running: float) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    async with FakeOAuth() as oauth:
        lifecycle = Lifecycle(queued=queued, pending=queued, running=running)
        async with (
            FakeVertex(token_validator=oauth.valid_token, lifecycle=lifecycle) as vertex,
            FakeLogging(vertex=vertex, token_validator=oauth.valid_token) as logging,
        ):

            def printed(job: FakeJob) -> None:
                pools = job.spec.get("jobSpec", {}).get("workerPoolSpecs", [{}])
                args = pools[0].get("containerSpec", {}).get("args", [])
                logging.add(job, f"started with arguments {' '.join(map(str, args))}", "done")

            vertex.on_create.append(printed)
            key = write_credentials(folder / "key.json", oauth.add_service_account()[0])
            env = {
                "PROJECT_ID": "test-proj",
                "GOOGLE_APPLICATION_CREDENTIALS": str(key),
                "CALIBAN_VERTEX_ENDPOINT": vertex.url,
                "CALIBAN_LOGGING_ENDPOINT": logging.url,
                # Where a machine without Google Cloud would look for metadata: nowhere.
                "GCE_METADATA_HOST": "127.0.0.1:9",
            }
            text = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items())
            (folder / "env").write_text(text)
            print(f"local Vertex AI stand-in at {vertex.url}; variables in {folder / 'env'}:")
            print(text, end="", flush=True)
            await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folder", type=Path, help="where to write key.json and env")
    p.add_argument("--queued", type=float, default=1.0, help="seconds queued and pending")
    p.add_argument("--running", type=float, default=5.0, help="seconds running")
    ns = p.parse_args(argv)
    try:
        asyncio.run(serve(ns.folder, queued=ns.queued, running=ns.running))
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
