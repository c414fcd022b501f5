"""Write docs/docker-run-flags.md from caliban/data/docker_run_flags.json.

tests/unit/test_runflags.py checks the page is up to date, so run this after
changing the table: python3 scripts/gen_flags_doc.py
"""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TABLE = ROOT / "caliban/data/docker_run_flags.json"
PAGE = ROOT / "docs/docker-run-flags.md"

HEAD = """\
# `docker run` flags in `--docker_run_args`

caliban creates containers through the Docker Engine API, not the docker CLI,
so `--docker_run_args` is parsed by caliban into the fields of the
`POST /containers/create` body. Every flag of `docker run` (docker CLI 20.10)
is listed below. The table is generated from
`caliban/data/docker_run_flags.json` by `scripts/gen_flags_doc.py`; a test
checks that every field exists in the Engine API schema caliban ships
(`caliban/data/engine_api/`) and that every flag `docker run --help` prints is
in exactly one group here.

A flag caliban owns, a client-only flag or an unknown flag is refused with one
line saying why, exit 2, before anything is built or recorded. `caliban run`
also refuses `--privileged`, `--gpus` and `--entrypoint` (GPUs come from
caliban's own pool; each job runs the project's entry point).

## `--docker_create_json FILE`

For anything the flags cannot say, `caliban run`, `caliban shell` and
`caliban notebook` take `--docker_create_json FILE`: a JSON object
deep-merged into the create body after the flags (objects merged key by key,
lists appended, other values replaced), for example

```json
{"HostConfig": {"CpusetCpus": "0", "Sysctls": {"net.core.somaxconn": "1024"}},
 "NetworkingConfig": {"EndpointsConfig": {"mynet": {"Aliases": ["trainer"]}}}}
```

It is checked against the schema of the Engine API version the daemon reports
(`docker version`, "API version"): an unknown field, a value of the wrong type
or a field caliban owns (`Image`, `Cmd`, `Entrypoint`, the attach and TTY
fields, `HostConfig.AutoRemove`, `RestartPolicy`, `ContainerIDFile`,
`DeviceRequests`, `Privileged`, labels under `caliban.`) is one line, exit 2,
nothing built or recorded. caliban ships the schema of API 1.41 (Docker 20.10,
Debian 12's daemon). A daemon speaking another version is checked against the
nearest version caliban has, with a warning saying so; fields that version
lacks are refused, and fields it has but the daemon dropped reach the daemon,
which ignores or refuses them. To add a version, run
`scripts/gen_engine_schema.py` on that version's moby `api/swagger.yaml`.

"""


def main() -> None:
    table = json.loads(TABLE.read_text(encoding="utf-8"))
    lines = [
        HEAD,
        "## Accepted flags\n",
        "| flag | create-body field | value |",
        "| --- | --- | --- |",
    ]
    rows = {name: (e["field"], e["kind"], e.get("short")) for name, e in table["mapped"].items()}
    rows.update({name: (field, "see docker run", None) for name, field in table["handled"].items()})
    short = {
        "--env": "e",
        "--hostname": "h",
        "--label": "l",
        "--memory": "m",
        "--publish": "p",
        "--publish-all": "P",
        "--user": "u",
        "--volume": "v",
        "--workdir": "w",
    }
    for name in sorted(rows):
        field, kind, letter = rows[name]
        letter = letter or short.get(name)
        shown = f"`{name}` (`-{letter}`)" if letter else f"`{name}`"
        lines.append(f"| {shown} | `{field}` | {kind} |")
    lines += ["", "## Refused flags\n", "| flag | why |", "| --- | --- |"]
    for name, reason in sorted({**table["owned"], **table["client_only"]}.items()):
        lines.append(f"| `{name}` | {reason} |")
    PAGE.write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
