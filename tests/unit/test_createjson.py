"""--docker_create_json: fragments checked against the Engine API schema."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from caliban.core import createjson
from caliban.errors import ValidationError

SCHEMA = createjson.schema_for("1.41")


def _refused(fragment: dict[str, Any]) -> str:
    with pytest.raises(ValidationError) as caught:
        createjson.validate(fragment, SCHEMA)
    message = caught.value.message
    assert message.startswith("--docker_create_json: ")
    assert "\n" not in message
    return message


def test_the_daemons_version_is_known() -> None:
    assert "1.41" in createjson.known_versions()
    assert SCHEMA.exact and SCHEMA.version == "1.41"


@pytest.mark.parametrize(
    "fragment",
    [
        {},
        {"HostConfig": {"CpusetCpus": "0", "MemorySwap": -1, "GroupAdd": ["100"]}},
        {"HostConfig": {"Sysctls": {"net.ipv4.ip_unprivileged_port_start": "0"}}},
        {"HostConfig": {"Ulimits": [{"Name": "nofile", "Soft": 1024, "Hard": 2048}]}},
        {"HostConfig": {"LogConfig": {"Type": "json-file", "Config": {"max-size": "1m"}}}},
        {"Env": ["A=1"], "Labels": {"team": "ml"}, "StopTimeout": 5, "Healthcheck": None},
        {"NetworkingConfig": {"EndpointsConfig": {"net1": {"Aliases": ["a"]}}}},
        {"HostConfig": {"Mounts": [{"Type": "tmpfs", "Target": "/x"}]}},
    ],
)
def test_valid_fragments_pass(fragment: dict[str, Any]) -> None:
    createjson.validate(fragment, SCHEMA)


@pytest.mark.parametrize(
    ("fragment", "message"),
    [
        ({"Bogus": 1}, "unknown field Bogus for Engine API 1.41"),
        ({"HostConfig": {"CpuSetCpus": "0"}}, "unknown field HostConfig.CpuSetCpus for"),
        (
            {"HostConfig": {"Ulimits": [{"Name": "nofile", "Limit": 1}]}},
            "unknown field HostConfig.Ulimits[0].Limit",
        ),
        ({"HostConfig": {"Memory": "1g"}}, "HostConfig.Memory must be an integer"),
        ({"HostConfig": {"Memory": True}}, "HostConfig.Memory must be an integer"),
        ({"HostConfig": {"Sysctls": {"a.b": 1}}}, "HostConfig.Sysctls.a.b must be a string"),
        ({"HostConfig": {"Dns": "1.1.1.1"}}, "HostConfig.Dns must be a list"),
        ({"HostConfig": {"CgroupnsMode": "shared"}}, "HostConfig.CgroupnsMode must be one of"),
        ({"HostConfig": "x"}, "HostConfig must be an object"),
        ({"Image": "alpine"}, "Image cannot be set: caliban runs the image it built"),
        ({"Cmd": ["sh"]}, "Cmd cannot be set"),
        ({"Tty": True}, "Tty cannot be set"),
        ({"HostConfig": {"AutoRemove": True}}, "HostConfig.AutoRemove cannot be set"),
        ({"HostConfig": {"RestartPolicy": {"Name": "always"}}}, "RestartPolicy cannot be set"),
        ({"HostConfig": {"DeviceRequests": []}}, "HostConfig.DeviceRequests cannot be set"),
        ({"HostConfig": {"Privileged": True}}, "HostConfig.Privileged cannot be set"),
        ({"Labels": {"caliban.job": "x"}}, "Labels.caliban.job: labels under 'caliban.'"),
    ],
)
def test_bad_fragments_are_refused(fragment: dict[str, Any], message: str) -> None:
    assert message in _refused(fragment)


def test_an_unknown_version_uses_the_nearest_known_one() -> None:
    newer = createjson.schema_for("1.45")
    assert not newer.exact
    assert newer.version == createjson.known_versions()[-1]
    with pytest.raises(ValidationError, match="cannot read"):
        createjson.schema_for("latest")


def test_read_fragment(tmp_path: Path) -> None:
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"HostConfig": {"CpusetCpus": "0"}}))
    assert createjson.read_fragment(str(good)) == {"HostConfig": {"CpusetCpus": "0"}}
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    with pytest.raises(ValidationError, match="is not JSON"):
        createjson.read_fragment(str(bad))
    listed = tmp_path / "list.json"
    listed.write_text("[1]")
    with pytest.raises(ValidationError, match="expected a JSON object"):
        createjson.read_fragment(str(listed))
    with pytest.raises(ValidationError, match="No such file"):
        createjson.read_fragment(str(tmp_path / "missing.json"))
