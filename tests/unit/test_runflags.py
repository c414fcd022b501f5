"""The docker run flag table: checked against the Engine API schema and the docker CLI."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from caliban.core import createjson
from caliban.core.dockerargs import parse_docker_run_args
from caliban.core.runflags import deep_merge, flag_table, parse_duration
from caliban.errors import ValidationError

DOCKER = "/usr/bin/docker"
ROOT = Path(__file__).resolve().parents[2]


def _field_exists(schema: createjson.Schema, path: str) -> bool:
    node: Any = schema.definitions[schema.root]
    for part in path.split("."):
        node = schema.resolve(node)
        props = node.get("properties") or {}
        if part in props:
            node = props[part]
        elif part == "*" and "additionalProperties" in node:
            node = node["additionalProperties"]
        else:
            return False
    return True


@pytest.mark.parametrize("version", createjson.known_versions())
def test_every_field_in_the_table_is_in_the_schema(version: str) -> None:
    schema = createjson.schema_for(version)
    table = flag_table()
    fields = [f.field for f in table.mapped.values()] + list(table.handled.values())
    missing = [f for f in fields if not _field_exists(schema, f)]
    assert missing == []
    # The walk itself can fail: a field the API lacks is reported.
    assert not _field_exists(schema, "HostConfig.NoSuchField")


def _help_flags() -> set[str]:
    text = subprocess.run(
        [DOCKER, "run", "--help"], capture_output=True, text=True, check=True
    ).stdout
    return set(re.findall(r"^\s+(?:-\w, )?(--[a-z0-9-]+)", text, re.MULTILINE))


@pytest.mark.skipif(not shutil.which(DOCKER), reason="no docker client at /usr/bin/docker")
def test_every_docker_run_flag_is_placed_exactly_once() -> None:
    table = flag_table()
    groups = [set(table.mapped), set(table.handled), set(table.owned), set(table.client_only)]
    listed = set().union(*groups)
    assert sum(len(g) for g in groups) == len(listed), "a flag is in two groups"
    cli = _help_flags()
    assert "--cpuset-cpus" in cli  # the help text was parsed at all
    assert sorted(cli - listed) == []
    assert sorted(listed - cli) == []


def test_owned_and_client_only_flags_each_have_a_reason() -> None:
    table = flag_table()
    for flag, reason in {**table.owned, **table.client_only}.items():
        assert len(reason) > 20, flag


BODY_CASES = [
    ("--cpuset-cpus 0-1", {"HostConfig": {"CpusetCpus": "0-1"}}),
    ("--cpuset-mems=0", {"HostConfig": {"CpusetMems": "0"}}),
    ("--memory-swap 1g", {"HostConfig": {"MemorySwap": 1 << 30}}),
    ("--memory-swap -1", {"HostConfig": {"MemorySwap": -1}}),
    ("--memory-reservation 512m", {"HostConfig": {"MemoryReservation": 512 << 20}}),
    ("--group-add 100 --group-add audio", {"HostConfig": {"GroupAdd": ["100", "audio"]}}),
    (
        "--sysctl net.core.somaxconn=1024 --sysctl kernel.msgmax=65536",
        {"HostConfig": {"Sysctls": {"net.core.somaxconn": "1024", "kernel.msgmax": "65536"}}},
    ),
    (
        "--dns 1.1.1.1 --dns-search example.org --dns-option ndots:2",
        {
            "HostConfig": {
                "Dns": ["1.1.1.1"],
                "DnsSearch": ["example.org"],
                "DnsOptions": ["ndots:2"],
            }
        },
    ),
    ("-c 512", {"HostConfig": {"CpuShares": 512}}),
    ("-c512", {"HostConfig": {"CpuShares": 512}}),
    ("--cpu-quota -1", {"HostConfig": {"CpuQuota": -1}}),
    (
        "--pids-limit 100 --oom-score-adj -500",
        {"HostConfig": {"PidsLimit": 100, "OomScoreAdj": -500}},
    ),
    ("--oom-kill-disable", {"HostConfig": {"OomKillDisable": True}}),
    ("--oom-kill-disable=false", {"HostConfig": {"OomKillDisable": False}}),
    ("--blkio-weight 300", {"HostConfig": {"BlkioWeight": 300}}),
    (
        "--blkio-weight-device /dev/sda:200",
        {"HostConfig": {"BlkioWeightDevice": [{"Path": "/dev/sda", "Weight": 200}]}},
    ),
    (
        "--device-read-bps /dev/sda:1mb",
        {"HostConfig": {"BlkioDeviceReadBps": [{"Path": "/dev/sda", "Rate": 1 << 20}]}},
    ),
    (
        "--device-write-iops /dev/sda:1000",
        {"HostConfig": {"BlkioDeviceWriteIOps": [{"Path": "/dev/sda", "Rate": 1000}]}},
    ),
    (
        "--health-cmd 'curl -f localhost' --health-interval 1m30s --health-retries 3",
        {
            "Healthcheck": {
                "Test": ["CMD-SHELL", "curl -f localhost"],
                "Interval": 90 * 10**9,
                "Retries": 3,
            }
        },
    ),
    ("--no-healthcheck", {"Healthcheck": {"Test": ["NONE"]}}),
    (
        "--log-driver json-file --log-opt max-size=10m",
        {"HostConfig": {"LogConfig": {"Type": "json-file", "Config": {"max-size": "10m"}}}},
    ),
    ("--stop-signal SIGINT --stop-timeout 30", {"StopSignal": "SIGINT", "StopTimeout": 30}),
    (
        "--domainname example.org --mac-address 92:d0:c6:0a:29:33",
        {"Domainname": "example.org", "MacAddress": "92:d0:c6:0a:29:33"},
    ),
    (
        "--uts host --userns host --cgroupns private",
        {"HostConfig": {"UTSMode": "host", "UsernsMode": "host", "CgroupnsMode": "private"}},
    ),
    ("--device-cgroup-rule 'c 1:3 mr'", {"HostConfig": {"DeviceCgroupRules": ["c 1:3 mr"]}}),
    (
        "--volumes-from other:ro --link db:db",
        {"HostConfig": {"VolumesFrom": ["other:ro"], "Links": ["db:db"]}},
    ),
    ("--storage-opt size=10G", {"HostConfig": {"StorageOpt": {"size": "10G"}}}),
    (
        "--network net1 --ip 172.30.0.5 --network-alias a --network-alias b",
        {
            "HostConfig": {"NetworkMode": "net1"},
            "NetworkingConfig": {
                "EndpointsConfig": {
                    "net1": {"IPAMConfig": {"IPv4Address": "172.30.0.5"}, "Aliases": ["a", "b"]}
                }
            },
        },
    ),
]


@pytest.mark.parametrize(("args", "body"), BODY_CASES)
def test_mapped_flags_set_their_fields(args: str, body: dict[str, Any]) -> None:
    assert parse_docker_run_args(args, environ={}).apply({}) == body


def test_mapped_fields_join_what_caliban_set() -> None:
    base: dict[str, Any] = {"HostConfig": {"Dns": ["8.8.8.8"], "Memory": 1}, "Env": ["A=1"]}
    out = parse_docker_run_args("--dns 1.1.1.1 --sysctl a.b=1 -e B=2", environ={}).apply(base)
    assert out["HostConfig"] == {
        "Dns": ["8.8.8.8", "1.1.1.1"],
        "Memory": 1,
        "Sysctls": {"a.b": "1"},
    }
    assert out["Env"] == ["A=1", "B=2"]
    assert base["HostConfig"]["Dns"] == ["8.8.8.8"]  # the base is not changed


def test_label_file(tmp_path: Path) -> None:
    path = tmp_path / "labels"
    path.write_text("# team labels\nteam=ml\n\nstage=dev\n")
    out = parse_docker_run_args(f"--label-file {path} -l x=1", environ={}).apply({})
    assert out["Labels"] == {"x": "1", "team": "ml", "stage": "dev"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ("--cpu-shares lots", "--cpu-shares lots: expected an integer"),
        ("--memory-swap huge", "--memory-swap huge: expected a size"),
        ("--health-interval soon", "--health-interval soon: expected a duration"),
        ("--sysctl net.core.somaxconn", "expected key=value"),
        ("--blkio-weight 70000", "must be between 0 and 65535"),
        ("--blkio-weight-device /dev/sda:5", "must be between 10 and 1000"),
        ("--device-read-bps sda:1mb", "expected /dev/<device>:<value>"),
        ("--ip 10.1.2.3", "--ip needs --network with a user-defined network"),
        ("--network bridge --network-alias x", "--network-alias needs --network"),
        ("--cpuset-cpus", "--cpuset-cpus needs a value"),
        ("--restart always", "'--restart' cannot be used: caliban waits"),
        ("--cidfile /tmp/x", "'--cidfile' cannot be used"),
        ("-a stdout", "'-a' cannot be used"),
        ("--name x", "'--name' cannot be used: caliban names"),
        ("--pull always", "'--pull' cannot be used"),
        ("--platform linux/arm64", "'--platform' cannot be used"),
        ("-l caliban.job=1", "labels under 'caliban.' are caliban's to set"),
        ("--label-file /no/such/file", "--label-file /no/such/file: No such file"),
    ],
)
def test_bad_flag_values(args: str, message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        parse_docker_run_args(args, environ={})
    assert caught.value.message.startswith("--docker_run_args: ")
    assert "\n" not in caught.value.message
    assert message in caught.value.message


def test_caliban_labels_refused_from_a_label_file(tmp_path: Path) -> None:
    path = tmp_path / "labels"
    path.write_text("caliban.managed=false\n")
    with pytest.raises(ValidationError, match="caliban's to set"):
        parse_docker_run_args(["--label-file", str(path)], environ={})


@pytest.mark.parametrize(
    ("text", "nanos"),
    [
        ("0", 0),
        ("30s", 30 * 10**9),
        ("1m30s", 90 * 10**9),
        ("1.5h", 5400 * 10**9),
        ("250ms", 250 * 10**6),
        ("-2us", -2000),
    ],
)
def test_go_durations(text: str, nanos: int) -> None:
    assert parse_duration(text) == nanos


@pytest.mark.parametrize("text", ["", "5", "s", "1x", "1m 30s"])
def test_bad_go_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_deep_merge() -> None:
    base = {"A": {"B": [1], "C": 1}, "D": "x"}
    assert deep_merge(base, {"A": {"B": [2], "E": 3}, "D": "y"}) == {
        "A": {"B": [1, 2], "C": 1, "E": 3},
        "D": "y",
    }
    assert base == {"A": {"B": [1], "C": 1}, "D": "x"}


def test_the_flags_page_is_generated_from_the_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = importlib.util.spec_from_file_location(
        "gen_flags_doc", ROOT / "scripts/gen_flags_doc.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "PAGE", tmp_path / "page.md")
    module.main()
    fresh = (tmp_path / "page.md").read_text()
    assert "| `--sysctl` | `HostConfig.Sysctls` | map |" in fresh
    assert (ROOT / "docs/docker-run-flags.md").read_text() == fresh, "run scripts/gen_flags_doc.py"
