"""``--docker_run_args`` parsing into Engine API container-create fields.

The shapes here were also sent to a Docker 20.10 daemon (``POST
/containers/create``, then ``GET /containers/{id}/json``) and came back unchanged.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from caliban.core.dockerargs import (
    SUPPORTED_FLAGS,
    PortBinding,
    RunOptions,
    parse_docker_run_args,
    parse_size,
)
from caliban.errors import ValidationError

ENVIRON = {"HOME": "/home/me", "EMPTY": ""}

GPU_ALL = {"Driver": "", "Count": -1, "DeviceIDs": None, "Capabilities": [["gpu"]], "Options": {}}

# (docker run flags, expected RunOptions fields)
CASES: list[tuple[str, dict[str, Any]]] = [
    ("", {}),
    (
        "-e FOO=bar --env A=1 --env=B=2 -eC=3 -e=D=4",
        {"env": ("FOO=bar", "A=1", "B=2", "C=3", "D=4")},
    ),
    ("-e HOME -e EMPTY", {"env": ("HOME=/home/me", "EMPTY=")}),
    # Not set on the host: docker sends the bare name, which unsets it in the container.
    ("-e MISSING", {"env": ("MISSING",)}),
    ("-e 'MSG=hello world'", {"env": ("MSG=hello world",)}),
    ("--volume /data:/data:ro -v /tmp:/tmp", {"binds": ("/data:/data:ro", "/tmp:/tmp")}),
    ("-v cache:/root/.cache:rw,z", {"binds": ("cache:/root/.cache:rw,z",)}),
    ("-v /scratch", {"volumes": ("/scratch",), "binds": ()}),
    (
        "--mount type=bind,source=/data,target=/data,readonly",
        {"mounts": ({"Type": "bind", "Source": "/data", "Target": "/data", "ReadOnly": True},)},
    ),
    (
        "--mount src=/d,dst=/d,ro=false,type=bind,bind-propagation=rslave",
        {
            "mounts": (
                {
                    "Type": "bind",
                    "Source": "/d",
                    "Target": "/d",
                    "ReadOnly": False,
                    "BindOptions": {"Propagation": "rslave"},
                },
            )
        },
    ),
    (
        "--mount target=/v,volume-nocopy,volume-label=a=b,volume-driver=local,volume-opt=o=x",
        {
            "mounts": (
                {
                    "Type": "volume",
                    "Target": "/v",
                    "VolumeOptions": {
                        "NoCopy": True,
                        "Labels": {"a": "b"},
                        "DriverConfig": {"Name": "local", "Options": {"o": "x"}},
                    },
                },
            )
        },
    ),
    (
        "--mount type=tmpfs,destination=/scratch,tmpfs-size=64m,tmpfs-mode=1777",
        {
            "mounts": (
                {
                    "Type": "tmpfs",
                    "Target": "/scratch",
                    "TmpfsOptions": {"SizeBytes": 64 << 20, "Mode": 0o1777},
                },
            )
        },
    ),
    ("--tmpfs /run:rw,size=64m --tmpfs /tmp", {"tmpfs": {"/run": "rw,size=64m", "/tmp": ""}}),
    ("-p 8080:80", {"ports": (PortBinding("80/tcp", "", "8080"),)}),
    ("--publish 127.0.0.1:8080:80/udp", {"ports": (PortBinding("80/udp", "127.0.0.1", "8080"),)}),
    ("-p 127.0.0.1::80", {"ports": (PortBinding("80/tcp", "127.0.0.1", ""),)}),
    ("-p [::1]:8080:80", {"ports": (PortBinding("80/tcp", "::1", "8080"),)}),
    ("-p 80", {"ports": (PortBinding("80/tcp"),)}),
    (
        "-p 9000-9001:8000-8001",
        {"ports": (PortBinding("8000/tcp", "", "9000"), PortBinding("8001/tcp", "", "9001"))},
    ),
    # A host range for one container port lets the daemon pick a free host port.
    ("-p 9000-9010:80", {"ports": (PortBinding("80/tcp", "", "9000-9010"),)}),
    ("-p published=8080,target=80,protocol=udp", {"ports": (PortBinding("80/udp", "", "8080"),)}),
    ("--expose 80 --expose 7000-7001/udp", {"expose": ("80/tcp", "7000/udp", "7001/udp")}),
    ("-P", {"publish_all": True}),
    ("--shm-size 2g", {"shm_size": 2 << 30}),
    ("--shm-size=512M", {"shm_size": 512 << 20}),
    ("-m 1.5GiB", {"memory": int(1.5 * (1 << 30))}),
    ("--memory 1024", {"memory": 1024}),
    ("--cpus 1.5", {"nano_cpus": 1_500_000_000}),
    ("--cpus=0.000000001", {"nano_cpus": 1}),
    ("--network host", {"network": "host"}),
    ("--net=none", {"network": "none"}),
    ("--ipc host", {"ipc": "host"}),
    ("--ipc container:other", {"ipc": "container:other"}),
    ("--pid=host", {"pid": "host"}),
    ("-u 1000:1000", {"user": "1000:1000"}),
    ("--user=root", {"user": "root"}),
    ("-w /work", {"workdir": "/work"}),
    ("--privileged", {"privileged": True}),
    ("--privileged=false", {"privileged": False}),
    ("--read-only", {"read_only": True}),
    ("--init", {"init": True}),
    ("--init=0", {"init": False}),
    (
        "--cap-add sys_ptrace --cap-add CAP_SYS_ADMIN --cap-add SYS_PTRACE --cap-drop all",
        {"cap_add": ("CAP_SYS_PTRACE", "CAP_SYS_ADMIN"), "cap_drop": ("ALL",)},
    ),
    (
        "--security-opt seccomp=unconfined --security-opt no-new-privileges "
        "--security-opt label:disable",
        {"security_opt": ("seccomp=unconfined", "no-new-privileges", "label=disable")},
    ),
    (
        "--device /dev/fuse",
        {
            "devices": (
                {
                    "PathOnHost": "/dev/fuse",
                    "PathInContainer": "/dev/fuse",
                    "CgroupPermissions": "rwm",
                },
            )
        },
    ),
    (
        "--device /dev/sda:r --device /dev/nvidia0:/dev/gpu0/:rw",
        {
            "devices": (
                {"PathOnHost": "/dev/sda", "PathInContainer": "/dev/sda", "CgroupPermissions": "r"},
                {
                    "PathOnHost": "/dev/nvidia0",
                    "PathInContainer": "/dev/gpu0",
                    "CgroupPermissions": "rw",
                },
            )
        },
    ),
    (
        "--ulimit nofile=1024:2048 --ulimit memlock=-1 --ulimit nofile=4096",
        {
            "ulimits": (
                {"Name": "nofile", "Soft": 4096, "Hard": 4096},
                {"Name": "memlock", "Soft": -1, "Hard": -1},
            )
        },
    ),
    ("-l team=ml --label=empty= --label bare", {"labels": {"team": "ml", "empty": "", "bare": ""}}),
    ("--runtime nvidia", {"runtime": "nvidia"}),
    ("--gpus all", {"gpus": (GPU_ALL,)}),
    ("--gpus 2", {"gpus": ({**GPU_ALL, "Count": 2},)}),
    ("--gpus count=all", {"gpus": (GPU_ALL,)}),
    ("--gpus device=1", {"gpus": ({**GPU_ALL, "Count": 0, "DeviceIDs": ["1"]},)}),
    # The inner quotes keep the comma inside the device list, as with docker.
    ("--gpus '\"device=0,1\"'", {"gpus": ({**GPU_ALL, "Count": 0, "DeviceIDs": ["0", "1"]},)}),
    (
        "--gpus driver=nvidia,capabilities=compute",
        {
            "gpus": (
                {**GPU_ALL, "Driver": "nvidia", "Count": 1, "Capabilities": [["compute", "gpu"]]},
            )
        },
    ),
    (
        "--gpus '2,\"options=a=1,b\"'",
        {"gpus": ({**GPU_ALL, "Count": 2, "Options": {"a": "1", "b": ""}},)},
    ),
    ("-h box --hostname=node1", {"hostname": "node1"}),
    (
        "--add-host db:10.0.0.1 --add-host v6:::1 --add-host gw:host-gateway",
        {"add_host": ("db:10.0.0.1", "v6:::1", "gw:host-gateway")},
    ),
    ("--entrypoint /bin/bash", {"entrypoint": ("/bin/bash",)}),
    ("--entrypoint 'python -u'", {"entrypoint": ("python -u",)}),
    ("--entrypoint ''", {"entrypoint": ("",)}),
    # Bundled short flags, pflag style.
    ("-Pe X=1", {"publish_all": True, "env": ("X=1",)}),
    # A value that looks like a flag is still the value.
    (
        "--ulimit nofile=-1 -e -x=1",
        {"ulimits": ({"Name": "nofile", "Soft": -1, "Hard": -1},), "env": ("-x=1",)},
    ),
]


@pytest.mark.parametrize(("args", "expected"), CASES)
def test_parse(args: str, expected: dict[str, Any]) -> None:
    options = parse_docker_run_args(args, environ=ENVIRON)
    assert {name: getattr(options, name) for name in expected} == expected
    # Everything not mentioned keeps its default.
    defaults = RunOptions()
    for name in RunOptions.__dataclass_fields__:
        if name not in expected:
            assert getattr(options, name) == getattr(defaults, name), name


def test_words_are_not_split_again() -> None:
    options = parse_docker_run_args(["-e", "MSG=a b", "--volume=/d:/d"], environ={})
    assert options.env == ("MSG=a b",)
    assert options.binds == ("/d:/d",)


def test_dash_e_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CALIBAN_TEST_VAR", "42")
    assert parse_docker_run_args("-e CALIBAN_TEST_VAR").env == ("CALIBAN_TEST_VAR=42",)


def test_env_file(tmp_path: Path) -> None:
    env_file = tmp_path / "vars.env"
    env_file.write_text("\ufeff# comment\n\nA=1\n  B= spaced \nHOME\nMISSING\r\nC=x=y\n")
    options = parse_docker_run_args(
        ["-e", "LAST=1", "--env-file", str(env_file)], environ={"HOME": "/h"}
    )
    # File entries first (as docker orders them), bare missing names dropped.
    assert options.env == ("A=1", "B= spaced ", "HOME=/h", "C=x=y", "LAST=1")


def test_seccomp_profile_is_inlined(tmp_path: Path) -> None:
    profile = tmp_path / "seccomp.json"
    profile.write_text('{\n  "defaultAction": "SCMP_ACT_ALLOW",\n  "syscalls": []\n}\n')
    options = parse_docker_run_args(["--security-opt", f"seccomp={profile}"])
    assert options.security_opt == ('seccomp={"defaultAction":"SCMP_ACT_ALLOW","syscalls":[]}',)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", 0),
        ("512", 512),
        ("512b", 512),
        ("512B", 512),
        ("1k", 1024),
        ("1K", 1024),
        ("1kb", 1024),
        ("1KiB", 1024),
        ("2g", 2 << 30),
        ("2 g", 2 << 30),
        # go-units drops one space before the (here empty) unit.
        ("1 ", 1),
        ("1.5m", int(1.5 * (1 << 20))),
        ("1t", 1 << 40),
        ("1p", 1 << 50),
        (".5k", 512),
    ],
)
def test_parse_size(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "g", "-1g", "1x", "1gbb", "1ib", "1  g", "1,5g", "1bb"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


# (flags, a piece of the one-line message)
ERRORS: list[tuple[str, str]] = [
    ("--rm", "'--rm' cannot be used"),
    ("-d", "'-d' cannot be used"),
    ("--detach", "'--detach' cannot be used"),
    ("-it", "'-i' cannot be used"),
    ("-ti", "'-t' cannot be used"),
    ("-i", "caliban shell"),
    ("--tty", "'--tty' cannot be used"),
    ("--name job", "caliban names its containers"),
    ("--foo", "unknown docker run flag '--foo'"),
    ("--foo=1", "unknown docker run flag '--foo'"),
    ("-x", "unknown docker run flag '-x'"),
    ("-Px", "unknown docker run flag '-x'"),
    ("ubuntu", "unexpected argument 'ubuntu'"),
    ("-e A=1 -- ls", "unexpected argument '--'"),
    ("-e", "-e needs a value"),
    ("--volume", "--volume needs a value"),
    ("'-e A", "cannot split"),
    ("-e =x", "no variable name"),
    ("-v ./data:/data", "neither an absolute host path nor a volume name"),
    ("-v data/sub:/data", "neither an absolute host path nor a volume name"),
    ("-v ~/data:/data", "neither an absolute host path nor a volume name"),
    ("-v /data:data", "container path must be an absolute path"),
    ("-v /data:/data:bogus", "invalid options"),
    ("-v /data:/data:ro,rw", "invalid options"),
    ("-v /data:/data:nocopy", "nocopy applies to named volumes only"),
    ("-v /data:ro", "anonymous volume takes no options"),
    ("-v /a:/b:ro:x", "expected [host-path|volume-name:]container-path"),
    ("-v /:/", "cannot mount over /"),
    ("--mount type=bind,source=data,target=/data", "source must be an absolute path"),
    ("--mount type=bind,target=/data", "a bind mount needs a source"),
    ("--mount type=bind,source=/d", "target is required"),
    ("--mount type=tmpfs,source=/d,target=/d", "a tmpfs mount takes no source"),
    ("--mount type=npipe,source=/d,target=/d", "type must be bind, volume or tmpfs"),
    ("--mount type=bind,source=/d,target=/d,volume-nocopy", "cannot mix volume-* options"),
    ("--mount type=volume,target=/d,tmpfs-size=1m", "cannot mix tmpfs-* options"),
    ("--mount type=bind,source=/d,target=/d,readonly=maybe", "expected true or false"),
    ("--mount type=bind,source=/d,target=/d,color=red", "unexpected key 'color'"),
    ("--mount type=bind,source=/d,target=/d,writable", "must be a key=value pair"),
    ("--mount type=tmpfs,target=/d,tmpfs-mode=999", "invalid value for tmpfs-mode"),
    ("--mount type=tmpfs,target=/d,tmpfs-size=lots", "invalid value for tmpfs-size"),
    ("--tmpfs run", "container path must be an absolute path"),
    ("-p 70000:80", "invalid host port"),
    ("-p 80:http", "invalid container port"),
    ("-p 8080:80/icmp", "protocol must be tcp, udp or sctp"),
    ("-p 1.2.3:8080:80", "invalid IP address"),
    ("-p 9000-9002:8000-8001", "ranges differ in size"),
    ("-p 81-80", "invalid container port"),
    ("--expose 80/quic", "protocol must be tcp, udp or sctp"),
    ("--shm-size 2x", "expected a size such as 512m or 2g"),
    ("-m lots", "expected a size"),
    ("--cpus many", "expected a number of CPUs"),
    ("--cpus 0.0000000001", "too precise"),
    ("--cpus -1", "must not be negative"),
    ("--ipc bogus", "expected one of host, none, private, shareable, container:<name|id>"),
    ("--pid container:", "expected one of"),
    ("--network ''", "needs a network name"),
    ("-w work", "working directory must be an absolute path"),
    ("--privileged=maybe", "expected true or false"),
    ("-P=maybe", "expected true or false"),
    ("--device sda", "device path must be an absolute path"),
    ("--device /dev/sda:/dev/sdb:rx", "permissions must combine r, w and m"),
    ("--device /dev/sda:sdb", "container path must be an absolute path"),
    ("--device /a:/b:r:x", "expected /dev/host"),
    ("--ulimit nofile", "expected name=soft[:hard]"),
    ("--ulimit files=1", "unknown limit 'files'"),
    ("--ulimit nofile=a", "limits must be integers"),
    ("--ulimit nofile=1:2:3", "expected name=soft[:hard]"),
    ("--ulimit nofile=20:10", "soft limit is above the hard limit"),
    ("-l =x", "expected key=value"),
    ("--gpus device=0,1", "takes a count or device ids, not both"),
    ("--gpus some", "count must be 'all' or an integer"),
    ("--gpus 1,count=2", "'count' given twice"),
    ("--gpus color=red", "unexpected key 'color'"),
    ("--gpus ''", "--gpus: needs a value"),
    ("--add-host db", "expected host:ip"),
    ("--add-host :1.2.3.4", "expected host:ip"),
    ("--add-host db:not-an-ip", "invalid IP address"),
    ("--security-opt bogus", "expected key=value"),
    ("--security-opt seccomp=/nonexistent/profile.json", "cannot read"),
    ("--env-file /nonexistent/vars.env", "--env-file /nonexistent/vars.env"),
]


@pytest.mark.parametrize(("args", "message"), ERRORS)
def test_errors(args: str, message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        parse_docker_run_args(args, environ=ENVIRON)
    assert caught.value.message.startswith("--docker_run_args: ")
    assert "\n" not in caught.value.message
    assert message in caught.value.message


def test_unknown_flag_points_to_the_flag_table() -> None:
    with pytest.raises(ValidationError) as caught:
        parse_docker_run_args("--foo")
    # About 80 flags are accepted: the line names where they are listed instead.
    assert caught.value.hint is not None and "docs/docker-run-flags.md" in caught.value.hint
    assert "--env (-e)" in SUPPORTED_FLAGS
    assert "--cpu-shares (-c)" in SUPPORTED_FLAGS
    assert "--sysctl" in SUPPORTED_FLAGS


def test_gpu_conflict_hints_at_quoting() -> None:
    with pytest.raises(ValidationError) as caught:
        parse_docker_run_args("--gpus device=0,1")
    assert caught.value.hint is not None
    assert "'\"device=0,1\"'" in caught.value.hint


def test_relative_volume_hint_names_an_absolute_path() -> None:
    with pytest.raises(ValidationError) as caught:
        parse_docker_run_args("-v ./data:/data")
    assert caught.value.hint is not None
    assert "absolute path" in caught.value.hint
    assert "$PWD/data:/data" in caught.value.hint


BASE: dict[str, Any] = {
    "Image": "img",
    "Env": ["CALIBAN=1", "FOO=base"],
    "Labels": {"caliban.job": "1", "team": "base"},
    "ExposedPorts": {"22/tcp": {}},
    "User": "base",
    "HostConfig": {
        "Binds": ["/creds:/creds:ro"],
        "Mounts": [{"Type": "tmpfs", "Target": "/scratch"}],
        "PortBindings": {"80/tcp": [{"HostIp": "", "HostPort": "8000"}]},
        "IpcMode": "private",
        "ShmSize": 64,
        "CapAdd": ["CAP_NET_ADMIN"],
        "DeviceRequests": [GPU_ALL],
        "Ulimits": [
            {"Name": "nofile", "Soft": 1, "Hard": 1},
            {"Name": "core", "Soft": 0, "Hard": 0},
        ],
        "Privileged": True,
    },
}


def test_apply_merges_onto_the_base() -> None:
    options = parse_docker_run_args(
        "-e FOO=user -v /data:/data -p 8001:80 -p 9000:90 --ipc host --shm-size 1g "
        "-l team=user --cap-add SYS_PTRACE --ulimit nofile=10:20 -u me -w /work "
        "--privileged=false --gpus 1 --add-host db:10.0.0.1 --entrypoint /bin/sh "
        "--mount type=bind,src=/in,dst=/in -h node --tmpfs /run -v /anon --expose 7000",
        environ={},
    )
    before = json.dumps(BASE, sort_keys=True)
    out = options.apply(BASE)
    assert json.dumps(BASE, sort_keys=True) == before, "apply must not modify its argument"

    # Lists keep the base's entries first; the user's last entry for a variable wins.
    assert out["Env"] == ["CALIBAN=1", "FOO=base", "FOO=user"]
    assert out["Labels"] == {"caliban.job": "1", "team": "user"}
    assert out["ExposedPorts"] == {"22/tcp": {}, "80/tcp": {}, "90/tcp": {}, "7000/tcp": {}}
    assert out["Volumes"] == {"/anon": {}}
    assert out["User"] == "me"
    assert out["WorkingDir"] == "/work"
    assert out["Hostname"] == "node"
    assert out["Entrypoint"] == ["/bin/sh"]
    assert out["Image"] == "img"
    host = out["HostConfig"]
    assert host["Binds"] == ["/creds:/creds:ro", "/data:/data"]
    assert host["Mounts"] == [
        {"Type": "tmpfs", "Target": "/scratch"},
        {"Type": "bind", "Source": "/in", "Target": "/in"},
    ]
    assert host["Tmpfs"] == {"/run": ""}
    assert host["PortBindings"] == {
        "80/tcp": [{"HostIp": "", "HostPort": "8000"}, {"HostIp": "", "HostPort": "8001"}],
        "90/tcp": [{"HostIp": "", "HostPort": "9000"}],
    }
    assert host["IpcMode"] == "host"
    assert host["ShmSize"] == 1 << 30
    assert host["CapAdd"] == ["CAP_NET_ADMIN", "CAP_SYS_PTRACE"]
    assert host["DeviceRequests"] == [GPU_ALL, {**GPU_ALL, "Count": 1}]
    assert host["Ulimits"] == [
        {"Name": "core", "Soft": 0, "Hard": 0},
        {"Name": "nofile", "Soft": 10, "Hard": 20},
    ]
    assert host["Privileged"] is False
    assert host["ExtraHosts"] == ["db:10.0.0.1"]


def test_apply_without_options_is_a_copy() -> None:
    out = RunOptions().apply(BASE)
    assert out == BASE
    assert out is not BASE
    assert out["HostConfig"]["Binds"] is not BASE["HostConfig"]["Binds"]
    assert RunOptions().apply({}) == {}


def test_apply_onto_an_empty_config() -> None:
    out = parse_docker_run_args("--shm-size 2g -e A=1", environ={}).apply({})
    assert out == {"Env": ["A=1"], "HostConfig": {"ShmSize": 2 << 30}}


def test_apply_tolerates_null_lists() -> None:
    base = {"Env": None, "HostConfig": {"Binds": None, "PortBindings": None, "Ulimits": None}}
    out = parse_docker_run_args("-e A=1 -v /d:/d -p 80 --ulimit core=0", environ={}).apply(base)
    assert out["Env"] == ["A=1"]
    assert out["HostConfig"]["Binds"] == ["/d:/d"]
    assert out["HostConfig"]["PortBindings"] == {"80/tcp": [{"HostIp": "", "HostPort": ""}]}
    assert out["HostConfig"]["Ulimits"] == [{"Name": "core", "Soft": 0, "Hard": 0}]


@pytest.mark.parametrize(
    "args",
    [
        "-v /other:/creds",
        "-v /other:/creds/",
        "--mount type=bind,src=/o,dst=/scratch",
        "--tmpfs /creds",
        "-v /a:/x -v /b:/x",
        "-v /a:/x --mount type=tmpfs,dst=/x",
    ],
)
def test_apply_refuses_a_second_mount_on_one_path(args: str) -> None:
    # The daemon would answer "Duplicate mount point" for the whole container.
    options = parse_docker_run_args(args, environ={})
    with pytest.raises(ValidationError, match="already mounted"):
        options.apply(BASE)


def test_port_helpers() -> None:
    options = parse_docker_run_args("-p 80 -p 8080:80 --expose 81", environ={})
    assert options.exposed_ports == {"80/tcp": {}, "81/tcp": {}}
    assert options.port_bindings == {
        "80/tcp": [{"HostIp": "", "HostPort": ""}, {"HostIp": "", "HostPort": "8080"}]
    }
