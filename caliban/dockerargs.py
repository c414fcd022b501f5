"""``--docker_run_args``: ``docker run`` flags turned into Engine API fields.

The original caliban handed this string to the docker CLI. We create containers
through the Engine API instead, so the flags are parsed here, the way the
docker CLI (20.10) parses them, into the JSON fields of ``POST
/containers/create`` (API v1.41). Flags that control what caliban itself
manages (``--rm``, ``-d``, ``-i``, ``-t``, ``--name``) are refused.
"""

from __future__ import annotations

import copy
import csv
import ipaddress
import json
import os
import posixpath
import re
import shlex
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, NamedTuple

from caliban.errors import ValidationError

__all__ = ["SUPPORTED_FLAGS", "PortBinding", "RunOptions", "parse_docker_run_args", "parse_size"]

_OPTION = "--docker_run_args"


def _error(message: str, hint: str | None = None) -> ValidationError:
    return ValidationError(f"{_OPTION}: {message}", hint=hint)


class PortBinding(NamedTuple):
    """One published port: ``container_port`` is ``"80/tcp"``; empty host fields mean any."""

    container_port: str
    host_ip: str = ""
    host_port: str = ""


@dataclass(frozen=True)
class RunOptions:
    """The container settings a ``--docker_run_args`` string asks for.

    ``None`` (or an empty collection) means the flag was not given, so
    :meth:`apply` leaves the base config alone for it. Dict-valued entries are
    already in Engine API shape.
    """

    env: tuple[str, ...] = ()
    binds: tuple[str, ...] = ()
    # Container paths of anonymous volumes (``-v /path``).
    volumes: tuple[str, ...] = ()
    mounts: tuple[dict[str, Any], ...] = ()
    tmpfs: Mapping[str, str] = field(default_factory=dict)
    ports: tuple[PortBinding, ...] = ()
    # ``--expose``: ports opened without publishing them, as ``"80/tcp"``.
    expose: tuple[str, ...] = ()
    publish_all: bool | None = None
    shm_size: int | None = None
    memory: int | None = None
    nano_cpus: int | None = None
    network: str | None = None
    ipc: str | None = None
    pid: str | None = None
    user: str | None = None
    workdir: str | None = None
    privileged: bool | None = None
    read_only: bool | None = None
    cap_add: tuple[str, ...] = ()
    cap_drop: tuple[str, ...] = ()
    security_opt: tuple[str, ...] = ()
    devices: tuple[dict[str, str], ...] = ()
    ulimits: tuple[dict[str, Any], ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    runtime: str | None = None
    gpus: tuple[dict[str, Any], ...] = ()
    init: bool | None = None
    hostname: str | None = None
    add_host: tuple[str, ...] = ()
    entrypoint: tuple[str, ...] | None = None

    @property
    def exposed_ports(self) -> dict[str, dict[str, Any]]:
        """``Config.ExposedPorts``: published and ``--expose`` ports alike."""
        ports = [p.container_port for p in self.ports] + list(self.expose)
        return {port: {} for port in ports}

    @property
    def port_bindings(self) -> dict[str, list[dict[str, str]]]:
        """``HostConfig.PortBindings``: one list of host bindings per container port."""
        bindings: dict[str, list[dict[str, str]]] = {}
        for p in self.ports:
            bindings.setdefault(p.container_port, []).append(
                {"HostIp": p.host_ip, "HostPort": p.host_port}
            )
        return bindings

    def apply(self, config: Mapping[str, Any]) -> dict[str, Any]:
        """Return a copy of the container-create body ``config`` with these options on it.

        Lists (``Env``, ``Binds``, ``Mounts``, ``CapAdd``, ...) keep what the base
        set and get the user's entries appended; maps (``Labels``,
        ``ExposedPorts``, ``Tmpfs``) are merged with the user winning; scalars set
        by the user replace the base's. Two mounts on one container path are a
        ``ValidationError`` here rather than a daemon error later.
        """
        out: dict[str, Any] = copy.deepcopy(dict(config))
        host: dict[str, Any] = dict(out.get("HostConfig") or {})

        # Later Env entries win inside the container, so appending lets the
        # user's values override caliban's for the same variable.
        _extend(out, "Env", self.env)
        _merge(out, "Labels", self.labels)
        _merge(out, "ExposedPorts", self.exposed_ports)
        _merge(out, "Volumes", {path: {} for path in self.volumes})
        _set(out, "User", self.user)
        _set(out, "WorkingDir", self.workdir)
        _set(out, "Hostname", self.hostname)
        if self.entrypoint is not None:
            out["Entrypoint"] = list(self.entrypoint)

        _check_mount_targets(host, self)
        _extend(host, "Binds", self.binds)
        _extend(host, "Mounts", self.mounts)
        _merge(host, "Tmpfs", self.tmpfs)
        if self.ports:
            bindings = {k: list(v or []) for k, v in (host.get("PortBindings") or {}).items()}
            for port, extra in self.port_bindings.items():
                bindings.setdefault(port, []).extend(extra)
            host["PortBindings"] = bindings
        _set(host, "PublishAllPorts", self.publish_all)
        _set(host, "ShmSize", self.shm_size)
        _set(host, "Memory", self.memory)
        _set(host, "NanoCpus", self.nano_cpus)
        _set(host, "NetworkMode", self.network)
        _set(host, "IpcMode", self.ipc)
        _set(host, "PidMode", self.pid)
        _set(host, "Privileged", self.privileged)
        _set(host, "ReadonlyRootfs", self.read_only)
        _set(host, "Runtime", self.runtime)
        _set(host, "Init", self.init)
        _extend(host, "CapAdd", self.cap_add)
        _extend(host, "CapDrop", self.cap_drop)
        _extend(host, "SecurityOpt", self.security_opt)
        _extend(host, "Devices", self.devices)
        _extend(host, "DeviceRequests", self.gpus)
        _extend(host, "ExtraHosts", self.add_host)
        if self.ulimits:
            # One limit per resource: the user's replaces the base's of that name.
            names = {u["Name"] for u in self.ulimits}
            kept = [u for u in host.get("Ulimits") or [] if u.get("Name") not in names]
            host["Ulimits"] = kept + [dict(u) for u in self.ulimits]
        if host != (out.get("HostConfig") or {}):
            out["HostConfig"] = host
        return out


def _extend(target: dict[str, Any], key: str, values: Iterable[Any]) -> None:
    extra = [copy.deepcopy(v) for v in values]
    if extra:
        target[key] = list(target.get(key) or []) + extra


def _merge(target: dict[str, Any], key: str, values: Mapping[str, Any]) -> None:
    if values:
        target[key] = {**(target.get(key) or {}), **copy.deepcopy(dict(values))}


def _set(target: dict[str, Any], key: str, value: object) -> None:
    if value is not None:
        target[key] = value


def _bind_target(bind: str) -> str | None:
    parts = bind.split(":")
    return parts[1] if len(parts) >= 2 else None


def _check_mount_targets(host: Mapping[str, Any], options: RunOptions) -> None:
    """Refuse a user mount on a container path that is already mounted.

    The daemon would refuse the whole container with "Duplicate mount point";
    naming the flag is more useful. Conflicts inside the base are not ours to judge.
    """
    taken: set[str] = set()
    for bind in host.get("Binds") or []:
        target = _bind_target(str(bind))
        if target:
            taken.add(posixpath.normpath(target))
    for mount in host.get("Mounts") or []:
        if mount.get("Target"):
            taken.add(posixpath.normpath(str(mount["Target"])))
    taken.update(posixpath.normpath(str(path)) for path in host.get("Tmpfs") or {})

    wanted = [(t, f"--volume {b}") for b in options.binds if (t := _bind_target(b))]
    wanted += [(str(m["Target"]), f"--mount target={m['Target']}") for m in options.mounts]
    wanted += [(path, f"--tmpfs {path}") for path in options.tmpfs]
    for target, flag in wanted:
        cleaned = posixpath.normpath(target)
        if cleaned in taken:
            raise _error(f"{flag}: {cleaned} is already mounted in the container")
        taken.add(cleaned)


# --------------------------------------------------------------------------- values

_SIZE = re.compile(r"(\d+(?:\.\d*)?|\.\d+) ?(?:(b)|([kmgtp])(?:i?b)?)?", re.IGNORECASE)
_BINARY = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}


def parse_size(text: str) -> int:
    """Bytes in a docker memory size such as ``2g``, ``512MiB`` or ``1.5G``.

    Docker's rules (go-units ``RAMInBytes``): a number, one optional space, then
    an optional ``b`` or ``k/m/g/t/p`` optionally followed by ``b`` or ``ib``, any
    case, all powers of 1024. Raises ``ValueError``.
    """
    m = _SIZE.fullmatch(text)
    if m is None:
        raise ValueError(f"invalid size: {text!r}")
    number = float(m[1])
    unit = m[3]
    # Go truncates the float product towards zero; int() does the same.
    return int(number * _BINARY[unit.lower()]) if unit else int(number)


_GO_INT = re.compile(r"[+-]?\d+")
_DIGITS = re.compile(r"\d+")


def _go_int(text: str) -> int:
    """An integer as Go's strconv parses one: no spaces, no underscores."""
    if not _GO_INT.fullmatch(text):
        raise ValueError(text)
    return int(text)


_TRUE = {"1", "t", "T", "true", "TRUE", "True"}
_FALSE = {"0", "f", "F", "false", "FALSE", "False"}


def _go_bool(flag: str, text: str) -> bool:
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise _error(f"{flag}={text}: expected true or false")


def _csv_fields(flag: str, text: str) -> list[str]:
    """Split a comma-separated option value, honouring double quotes as docker does."""
    try:
        rows = list(csv.reader([text], strict=True))
    except csv.Error as err:
        raise _error(f"{flag} {text}: {err}") from None
    if not rows or not rows[0]:
        raise _error(f"{flag}: needs a value")
    return rows[0]


def _absolute(flag: str, value: str, what: str, *, on_host: bool = False) -> None:
    if not value.startswith("/"):
        hint = f"for example $PWD/{value.removeprefix('./')}" if on_host else None
        raise _error(f"{flag} {value}: the {what} must be an absolute path", hint=hint)


_VOLUME_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]+")
_MODE_GROUPS = (
    frozenset({"rw", "ro"}),
    frozenset({"z", "Z"}),
    frozenset({"shared", "rshared", "slave", "rslave", "private", "rprivate"}),
    frozenset({"nocopy"}),
    frozenset({"consistent", "cached", "delegated"}),
)


def _valid_mode(mode: str) -> bool:
    used: set[int] = set()
    for option in mode.split(","):
        group = next((i for i, g in enumerate(_MODE_GROUPS) if option in g), None)
        if group is None or group in used:
            return False
        used.add(group)
    return True


def _parse_volume(flag: str, spec: str) -> tuple[str | None, str | None]:
    """Return ``(bind, None)`` for a bind or named volume, ``(None, path)`` for an anonymous one."""
    parts = spec.split(":")
    if len(parts) > 3 or not all(parts[:2]):
        raise _error(f"{flag} {spec}: expected [host-path|volume-name:]container-path[:options]")
    if len(parts) == 1:
        _absolute(flag, spec, "container path")
        if posixpath.normpath(spec) == "/":
            raise _error(f"{flag} {spec}: cannot mount over /")
        return None, spec
    if len(parts) == 2 and _valid_mode(parts[1]):
        # "/path:ro" would be an anonymous volume with options, which docker refuses.
        raise _error(f"{flag} {spec}: an anonymous volume takes no options")
    source, target = parts[0], parts[1]
    if len(parts) == 3 and not _valid_mode(parts[2]):
        raise _error(
            f"{flag} {spec}: invalid options {parts[2]!r}",
            hint="use a comma-separated mix of ro|rw, z|Z, [r]shared|[r]slave|[r]private, "
            "nocopy, consistent|cached|delegated",
        )
    _absolute(flag, target, "container path")
    if posixpath.normpath(target) == "/":
        raise _error(f"{flag} {spec}: cannot mount over /")
    if not source.startswith("/"):
        if not _VOLUME_NAME.fullmatch(source):
            # Docker 20.10 reads anything else as an invalid volume name and
            # says to use an absolute path if a host directory was meant.
            raise _error(
                f"{flag} {spec}: {source!r} is neither an absolute host path nor a volume name",
                hint="use an absolute path for a host directory, for example "
                f"$PWD/{source.removeprefix('./')}:{target}",
            )
    elif len(parts) == 3 and "nocopy" in parts[2].split(","):
        raise _error(f"{flag} {spec}: nocopy applies to named volumes only")
    return spec, None


_MOUNT_TYPES = frozenset({"bind", "volume", "tmpfs"})


def _parse_mount(flag: str, value: str) -> dict[str, Any]:
    """One ``--mount`` value as an Engine API ``Mount`` object (docker CLI rules)."""
    mount: dict[str, Any] = {"Type": "volume"}

    def section(name: str) -> dict[str, Any]:
        entry: dict[str, Any] = mount.setdefault(name, {})
        return entry

    def key_value(target: dict[str, str], text: str) -> None:
        key, _, val = text.partition("=")
        if key:
            target[key] = val

    for item in _csv_fields(flag, value):
        key, has_value, val = item.partition("=")
        if not has_value:
            if key in ("readonly", "ro"):
                mount["ReadOnly"] = True
            elif key == "volume-nocopy":
                section("VolumeOptions")["NoCopy"] = True
            elif key == "bind-nonrecursive":
                section("BindOptions")["NonRecursive"] = True
            else:
                raise _error(f"{flag} {value}: field {item!r} must be a key=value pair")
            continue
        try:
            if key == "type":
                mount["Type"] = val.lower()
            elif key in ("source", "src"):
                mount["Source"] = val
            elif key in ("target", "dst", "destination"):
                mount["Target"] = val
            elif key in ("readonly", "ro"):
                mount["ReadOnly"] = _go_bool(f"{flag} {key}", val)
            elif key == "consistency":
                mount["Consistency"] = val.lower()
            elif key == "bind-propagation":
                section("BindOptions")["Propagation"] = val.lower()
            elif key == "bind-nonrecursive":
                section("BindOptions")["NonRecursive"] = _go_bool(f"{flag} {key}", val)
            elif key == "volume-nocopy":
                section("VolumeOptions")["NoCopy"] = _go_bool(f"{flag} {key}", val)
            elif key == "volume-label":
                key_value(section("VolumeOptions").setdefault("Labels", {}), val)
            elif key == "volume-driver":
                section("VolumeOptions").setdefault("DriverConfig", {})["Name"] = val
            elif key == "volume-opt":
                driver = section("VolumeOptions").setdefault("DriverConfig", {})
                key_value(driver.setdefault("Options", {}), val)
            elif key == "tmpfs-size":
                section("TmpfsOptions")["SizeBytes"] = parse_size(val)
            elif key == "tmpfs-mode":
                if not re.fullmatch(r"[0-7]+", val):
                    raise ValueError(val)
                section("TmpfsOptions")["Mode"] = int(val, 8)
            else:
                raise _error(f"{flag} {value}: unexpected key {key!r}")
        except ValueError:
            raise _error(f"{flag} {value}: invalid value for {key}: {val!r}") from None

    kind = mount["Type"]
    if kind not in _MOUNT_TYPES:
        raise _error(f"{flag} {value}: type must be bind, volume or tmpfs, not {kind!r}")
    target = mount.get("Target")
    if not target:
        raise _error(f"{flag} {value}: target is required")
    _absolute(flag, target, "target")
    for prefix, owner in (("Volume", "volume"), ("Bind", "bind"), ("Tmpfs", "tmpfs")):
        if f"{prefix}Options" in mount and kind != owner:
            raise _error(f"{flag} {value}: cannot mix {owner}-* options with type={kind}")
    source = mount.get("Source")
    if kind == "bind":
        if not source:
            raise _error(f"{flag} {value}: a bind mount needs a source")
        _absolute(flag, source, "source", on_host=True)
    elif kind == "tmpfs" and source:
        raise _error(f"{flag} {value}: a tmpfs mount takes no source")
    return mount


_PROTOCOLS = frozenset({"tcp", "udp", "sctp"})


def _port_range(text: str) -> tuple[int, int]:
    """``"80"`` or ``"8000-8010"`` as an inclusive range; ``ValueError`` when invalid."""
    low_text, dash, high_text = text.partition("-")
    if not _DIGITS.fullmatch(low_text) or (dash and not _DIGITS.fullmatch(high_text)):
        raise ValueError(text)
    low = int(low_text)
    high = int(high_text) if dash else low
    if not low <= high <= 65535:
        raise ValueError(text)
    return low, high


def _split_proto(text: str) -> tuple[str, str]:
    port, _, proto = text.partition("/")
    return port, (proto or "tcp").lower()


def _parse_ip(flag: str, spec: str, ip: str) -> str:
    if ip.startswith("[") and ip.endswith("]"):
        ip = ip[1:-1]
    try:
        ipaddress.ip_address(ip)
    except ValueError:
        raise _error(f"{flag} {spec}: invalid IP address {ip!r}") from None
    return ip


def _long_publish(flag: str, spec: str) -> str:
    """``published=8080,target=80[,protocol=udp]`` in the short ``8080:80/udp`` form."""
    params = {"protocol": "tcp"}
    for param in spec.split(","):
        key, has_value, value = param.partition("=")
        if not has_value:
            raise _error(f"{flag} {spec}: expected name=value, got {param!r}")
        params[key] = value
    return f"{params.get('published', '')}:{params.get('target', '')}/{params['protocol']}"


def _parse_publish(flag: str, spec: str) -> list[PortBinding]:
    """``[ip:][host-port:]container-port[/proto]``, ranges allowed, as docker's nat package."""
    raw = _long_publish(flag, spec) if "=" in spec else spec
    parts = raw.split(":")
    container_text = parts[-1]
    host_text = parts[-2] if len(parts) >= 2 else ""
    ip_text = ":".join(parts[:-2])
    container_text, proto = _split_proto(container_text)
    ip = _parse_ip(flag, spec, ip_text) if ip_text else ""
    if proto not in _PROTOCOLS:
        raise _error(f"{flag} {spec}: protocol must be tcp, udp or sctp")
    try:
        start, end = _port_range(container_text)
    except ValueError:
        raise _error(f"{flag} {spec}: invalid container port {container_text!r}") from None
    host_start = host_end = 0
    if host_text:
        try:
            host_start, host_end = _port_range(host_text)
        except ValueError:
            raise _error(f"{flag} {spec}: invalid host port {host_text!r}") from None
        if end - start != host_end - host_start and end != start:
            raise _error(f"{flag} {spec}: the host and container port ranges differ in size")
    bindings = []
    for offset in range(end - start + 1):
        host_port = str(host_start + offset) if host_text else ""
        if start == end and host_start != host_end:
            # One container port with a host range: the daemon picks a free one.
            host_port = f"{host_start}-{host_end}"
        bindings.append(PortBinding(f"{start + offset}/{proto}", ip, host_port))
    return bindings


def _parse_expose(flag: str, spec: str) -> list[str]:
    port, proto = _split_proto(spec)
    if proto not in _PROTOCOLS:
        raise _error(f"{flag} {spec}: protocol must be tcp, udp or sctp")
    try:
        start, end = _port_range(port)
    except ValueError:
        raise _error(f"{flag} {spec}: invalid port {port!r}") from None
    return [f"{p}/{proto}" for p in range(start, end + 1)]


def _valid_device_mode(mode: str) -> bool:
    return bool(mode) and len(set(mode)) == len(mode) and set(mode) <= set("rwm")


def _parse_device(flag: str, spec: str) -> dict[str, str]:
    """``/dev/host[:/dev/container][:rwm]`` as an Engine API ``DeviceMapping``."""
    parts = spec.split(":")
    if len(parts) > 3 or not parts[0]:
        raise _error(f"{flag} {spec}: expected /dev/host[:/dev/container][:permissions]")
    host, container, mode = parts[0], parts[0], "rwm"
    if len(parts) == 2:
        if _valid_device_mode(parts[1]):
            mode = parts[1]
        else:
            container = parts[1]
    elif len(parts) == 3:
        container, mode = parts[1], parts[2]
        if not _valid_device_mode(mode):
            raise _error(f"{flag} {spec}: permissions must combine r, w and m")
    _absolute(flag, host, "device path", on_host=True)
    _absolute(flag, container, "container path")
    return {
        "PathOnHost": host,
        "PathInContainer": posixpath.normpath(container),
        "CgroupPermissions": mode,
    }


_ULIMITS = frozenset(
    {
        "core",
        "cpu",
        "data",
        "fsize",
        "locks",
        "memlock",
        "msgqueue",
        "nice",
        "nofile",
        "nproc",
        "rss",
        "rtprio",
        "rttime",
        "sigpending",
        "stack",
    }
)


def _parse_ulimit(flag: str, spec: str) -> dict[str, Any]:
    name, has_value, limits = spec.partition("=")
    if not has_value:
        raise _error(f"{flag} {spec}: expected name=soft[:hard]")
    if name not in _ULIMITS:
        raise _error(
            f"{flag} {spec}: unknown limit {name!r} (one of {', '.join(sorted(_ULIMITS))})"
        )
    values = limits.split(":")
    if len(values) > 2:
        raise _error(f"{flag} {spec}: expected name=soft[:hard]")
    try:
        soft = _go_int(values[0])
        hard = _go_int(values[1]) if len(values) == 2 else soft
    except ValueError:
        raise _error(f"{flag} {spec}: limits must be integers") from None
    if hard != -1 and soft > hard:
        raise _error(f"{flag} {spec}: the soft limit is above the hard limit")
    return {"Name": name, "Soft": soft, "Hard": hard}


def _gpu_count(flag: str, spec: str, text: str) -> int:
    if text == "all":
        return -1
    try:
        return _go_int(text)
    except ValueError:
        raise _error(f"{flag} {spec}: count must be 'all' or an integer, not {text!r}") from None


def _parse_gpus(flag: str, spec: str) -> dict[str, Any]:
    """``--gpus`` as an Engine API ``DeviceRequest``, field for field as the docker CLI."""
    request: dict[str, Any] = {
        "Driver": "",
        "Count": 0,
        "DeviceIDs": None,
        "Capabilities": None,
        "Options": {},
    }
    seen: set[str] = set()
    for item in _csv_fields(flag, spec):
        key, has_value, value = item.partition("=")
        if key in seen:
            raise _error(f"{flag} {spec}: {key!r} given twice")
        seen.add(key)
        if not has_value:
            # A bare value ("all", "2") is the count.
            seen.add("count")
            request["Count"] = _gpu_count(flag, spec, key)
        elif key == "driver":
            request["Driver"] = value
        elif key == "count":
            request["Count"] = _gpu_count(flag, spec, value)
        elif key == "device":
            request["DeviceIDs"] = value.split(",")
        elif key == "capabilities":
            request["Capabilities"] = [[*value.split(","), "gpu"]]
        elif key == "options":
            options = _csv_fields(flag, value)
            request["Options"] = dict(o.partition("=")[::2] for o in options)
        else:
            raise _error(f"{flag} {spec}: unexpected key {key!r}")
    if "count" not in seen and request["DeviceIDs"] is None:
        request["Count"] = 1
    if request["Capabilities"] is None:
        request["Capabilities"] = [["gpu"]]
    if request["Count"] != 0 and request["DeviceIDs"]:
        # Usually "device=0,1" without inner quotes: the comma made "1" a count.
        raise _error(
            f"{flag} {spec}: a GPU request takes a count or device ids, not both",
            hint="quote a device list inside the value, for example --gpus '\"device=0,1\"'",
        )
    return request


def _parse_cpus(flag: str, text: str) -> int:
    try:
        cpus = Fraction(text)
    except (ValueError, ZeroDivisionError):
        raise _error(f"{flag} {text}: expected a number of CPUs such as 1.5") from None
    nano = cpus * 1_000_000_000
    if nano.denominator != 1:
        raise _error(f"{flag} {text}: too precise (at most 9 decimal places)")
    if nano < 0:
        raise _error(f"{flag} {text}: must not be negative")
    return int(nano)


def _parse_add_host(flag: str, spec: str) -> str:
    name, has_value, address = spec.partition(":")
    if not has_value or not name:
        raise _error(f"{flag} {spec}: expected host:ip")
    if address != "host-gateway":
        try:
            ipaddress.ip_address(address.strip())
        except ValueError:
            raise _error(f"{flag} {spec}: invalid IP address {address!r}") from None
    return spec


def _normalize_capability(cap: str) -> str:
    # Docker accepts "sys_admin", "SYS_ADMIN" and "CAP_SYS_ADMIN" alike.
    upper = cap.strip().upper()
    return upper if upper == "ALL" or upper.startswith("CAP_") else "CAP_" + upper


def _parse_security_opt(flag: str, spec: str) -> str:
    key, has_value, value = spec.partition("=")
    if not has_value:
        if spec == "no-new-privileges":
            return spec
        # The legacy "label:disable" spelling.
        key, has_value, value = spec.partition(":")
        if not has_value:
            raise _error(f"{flag} {spec}: expected key=value")
    if key == "seccomp" and value != "unconfined":
        # The CLI sends the profile itself, not its path: the daemon may be elsewhere.
        try:
            with open(value, encoding="utf-8") as f:
                profile = json.load(f)
        except OSError as err:
            raise _error(f"{flag} {spec}: cannot read {value}: {err.strerror or err}") from None
        except ValueError as err:
            raise _error(f"{flag} {spec}: {value} is not JSON: {err}") from None
        return "seccomp=" + json.dumps(profile, separators=(",", ":"))
    return f"{key}={value}"


def _parse_label(flag: str, spec: str) -> tuple[str, str]:
    key, _, value = spec.partition("=")
    if not key.strip():
        raise _error(f"{flag} {spec}: expected key=value")
    return key, value


def _read_env_file(flag: str, path: str, environ: Mapping[str, str]) -> list[str]:
    """Read docker's ``--env-file`` format: ``K=V`` verbatim, bare ``K`` from the host."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as err:
        raise _error(f"{flag} {path}: {err.strerror or err}") from None
    try:
        text = data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError:
        raise _error(f"{flag} {path}: not UTF-8") from None
    env: list[str] = []
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.removesuffix("\r").lstrip()
        if not line or line.startswith("#"):
            continue
        name, has_value, value = line.partition("=")
        name = name.lstrip(" \t")
        if not name or any(c in name for c in " \t"):
            raise _error(f"{flag} {path} line {number}: bad variable name {name!r}")
        if has_value:
            env.append(f"{name}={value}")
        elif name in environ:
            # Unlike -e, a variable missing from the host is left out entirely.
            env.append(f"{name}={environ[name]}")
    return env


_IPC_MODES = frozenset({"", "none", "private", "shareable", "host"})


def _namespace_mode(flag: str, value: str, allowed: frozenset[str]) -> str:
    if value in allowed or (value.startswith("container:") and len(value) > len("container:")):
        return value
    choices = ", ".join(sorted(m for m in allowed if m)) + ", container:<name|id>"
    raise _error(f"{flag} {value}: expected one of {choices}")


# --------------------------------------------------------------------------- flags

# Flags that would fight caliban for control of the container, and why.
_MANAGED = {
    "--rm": "caliban decides when its containers are removed",
    "--detach": "caliban decides whether to wait for a job",
    "--interactive": "caliban attaches to the container itself (use `caliban shell` for a shell)",
    "--tty": "caliban attaches to the container itself (use `caliban shell` for a shell)",
    "--name": "caliban names its containers itself",
}
_MANAGED_SHORT = {"d": "--detach", "i": "--interactive", "t": "--tty"}


@dataclass(frozen=True)
class _Flag:
    long: str
    short: str | None
    takes_value: bool


_FLAGS: tuple[_Flag, ...] = (
    _Flag("--add-host", None, True),
    _Flag("--cap-add", None, True),
    _Flag("--cap-drop", None, True),
    _Flag("--cpus", None, True),
    _Flag("--device", None, True),
    _Flag("--entrypoint", None, True),
    _Flag("--env", "e", True),
    _Flag("--env-file", None, True),
    _Flag("--expose", None, True),
    _Flag("--gpus", None, True),
    _Flag("--hostname", "h", True),
    _Flag("--init", None, False),
    _Flag("--ipc", None, True),
    _Flag("--label", "l", True),
    _Flag("--memory", "m", True),
    _Flag("--mount", None, True),
    _Flag("--network", None, True),
    _Flag("--pid", None, True),
    _Flag("--privileged", None, False),
    _Flag("--publish", "p", True),
    _Flag("--publish-all", "P", False),
    _Flag("--read-only", None, False),
    _Flag("--runtime", None, True),
    _Flag("--security-opt", None, True),
    _Flag("--shm-size", None, True),
    _Flag("--tmpfs", None, True),
    _Flag("--ulimit", None, True),
    _Flag("--user", "u", True),
    _Flag("--volume", "v", True),
    _Flag("--workdir", "w", True),
)
_ALIASES = {"--net": "--network"}
_BY_LONG = {f.long: f for f in _FLAGS}
_BY_SHORT = {f.short: f for f in _FLAGS if f.short}

#: Every accepted flag, long form first then the short one, for help texts.
SUPPORTED_FLAGS: tuple[str, ...] = tuple(
    f"{f.long} (-{f.short})" if f.short else f.long for f in _FLAGS
)


def _unsupported(flag: str) -> ValidationError:
    return _error(f"unsupported docker run flag {flag!r} (supported: {', '.join(SUPPORTED_FLAGS)})")


def _managed(flag: str, canonical: str) -> ValidationError:
    return _error(f"{flag!r} cannot be used: {_MANAGED[canonical]}")


class _Collector:
    """Accumulates flag values in command-line order, then freezes them."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = environ
        self.env_files: list[str] = []
        self.env: list[str] = []
        self.binds: list[str] = []
        self.volumes: list[str] = []
        self.mounts: list[dict[str, Any]] = []
        self.tmpfs: dict[str, str] = {}
        self.ports: list[PortBinding] = []
        self.expose: list[str] = []
        self.scalars: dict[str, Any] = {}
        self.cap_add: list[str] = []
        self.cap_drop: list[str] = []
        self.security_opt: list[str] = []
        self.devices: list[dict[str, str]] = []
        self.ulimits: dict[str, dict[str, Any]] = {}
        self.labels: dict[str, str] = {}
        self.gpus: list[dict[str, Any]] = []
        self.add_host: list[str] = []
        self.entrypoint: tuple[str, ...] | None = None

    def value(self, flag: str, canonical: str, value: str) -> None:
        handler = self._handlers[canonical]
        handler(self, flag, value)

    def _env(self, flag: str, value: str) -> None:
        name, has_value, _ = value.partition("=")
        if not name:
            raise _error(f"{flag} {value}: no variable name")
        if has_value:
            self.env.append(value)
        elif name in self.environ:
            self.env.append(f"{name}={self.environ[name]}")
        else:
            # Docker sends the bare name, which unsets the variable in the container.
            self.env.append(name)

    def _env_file(self, flag: str, value: str) -> None:
        self.env_files.extend(_read_env_file(flag, value, self.environ))

    def _volume(self, flag: str, value: str) -> None:
        bind, anonymous = _parse_volume(flag, value)
        if bind is not None:
            self.binds.append(bind)
        if anonymous is not None:
            self.volumes.append(anonymous)

    def _mount(self, flag: str, value: str) -> None:
        self.mounts.append(_parse_mount(flag, value))

    def _tmpfs(self, flag: str, value: str) -> None:
        path, _, options = value.partition(":")
        _absolute(flag, path, "container path")
        self.tmpfs[path] = options

    def _publish(self, flag: str, value: str) -> None:
        self.ports.extend(_parse_publish(flag, value))

    def _expose(self, flag: str, value: str) -> None:
        self.expose.extend(_parse_expose(flag, value))

    def _size(self, flag: str, value: str, key: str) -> None:
        try:
            self.scalars[key] = parse_size(value)
        except ValueError:
            raise _error(
                f"{flag} {value}: expected a size such as 512m or 2g",
                hint="a number with an optional b, k, m, g, t or p suffix (powers of 1024)",
            ) from None

    def _shm_size(self, flag: str, value: str) -> None:
        self._size(flag, value, "shm_size")

    def _memory(self, flag: str, value: str) -> None:
        self._size(flag, value, "memory")

    def _cpus(self, flag: str, value: str) -> None:
        self.scalars["nano_cpus"] = _parse_cpus(flag, value)

    def _network(self, flag: str, value: str) -> None:
        if not value:
            raise _error(f"{flag}: needs a network name")
        self.scalars["network"] = value

    def _ipc(self, flag: str, value: str) -> None:
        self.scalars["ipc"] = _namespace_mode(flag, value, _IPC_MODES)

    def _pid(self, flag: str, value: str) -> None:
        self.scalars["pid"] = _namespace_mode(flag, value, frozenset({"", "host"}))

    def _user(self, flag: str, value: str) -> None:
        self.scalars["user"] = value

    def _workdir(self, flag: str, value: str) -> None:
        _absolute(flag, value, "working directory")
        self.scalars["workdir"] = value

    def _cap_add(self, flag: str, value: str) -> None:
        self.cap_add.append(_normalize_capability(value))

    def _cap_drop(self, flag: str, value: str) -> None:
        self.cap_drop.append(_normalize_capability(value))

    def _security_opt(self, flag: str, value: str) -> None:
        self.security_opt.append(_parse_security_opt(flag, value))

    def _device(self, flag: str, value: str) -> None:
        self.devices.append(_parse_device(flag, value))

    def _ulimit(self, flag: str, value: str) -> None:
        limit = _parse_ulimit(flag, value)
        # Docker keeps one value per resource; the last flag wins.
        self.ulimits[limit["Name"]] = limit

    def _label(self, flag: str, value: str) -> None:
        key, text = _parse_label(flag, value)
        self.labels[key] = text

    def _runtime(self, flag: str, value: str) -> None:
        self.scalars["runtime"] = value

    def _gpus(self, flag: str, value: str) -> None:
        self.gpus.append(_parse_gpus(flag, value))

    def _hostname(self, flag: str, value: str) -> None:
        self.scalars["hostname"] = value

    def _add_host(self, flag: str, value: str) -> None:
        self.add_host.append(_parse_add_host(flag, value))

    def _entrypoint(self, flag: str, value: str) -> None:
        # Docker does not split the value; an empty one clears the image's entrypoint.
        self.entrypoint = (value,)

    _handlers: Mapping[str, Callable[[_Collector, str, str], None]] = {
        "--add-host": _add_host,
        "--cap-add": _cap_add,
        "--cap-drop": _cap_drop,
        "--cpus": _cpus,
        "--device": _device,
        "--entrypoint": _entrypoint,
        "--env": _env,
        "--env-file": _env_file,
        "--expose": _expose,
        "--gpus": _gpus,
        "--hostname": _hostname,
        "--ipc": _ipc,
        "--label": _label,
        "--memory": _memory,
        "--mount": _mount,
        "--network": _network,
        "--pid": _pid,
        "--publish": _publish,
        "--runtime": _runtime,
        "--security-opt": _security_opt,
        "--shm-size": _shm_size,
        "--tmpfs": _tmpfs,
        "--ulimit": _ulimit,
        "--user": _user,
        "--workdir": _workdir,
        "--volume": _volume,
    }

    def switch(self, canonical: str, value: bool) -> None:
        key = {
            "--init": "init",
            "--privileged": "privileged",
            "--publish-all": "publish_all",
            "--read-only": "read_only",
        }[canonical]
        self.scalars[key] = value

    def freeze(self) -> RunOptions:
        return RunOptions(
            # The docker CLI puts --env-file entries before -e ones, whatever the order.
            env=(*self.env_files, *self.env),
            binds=tuple(self.binds),
            volumes=tuple(self.volumes),
            mounts=tuple(self.mounts),
            tmpfs=dict(self.tmpfs),
            ports=tuple(self.ports),
            expose=tuple(self.expose),
            cap_add=tuple(dict.fromkeys(self.cap_add)),
            cap_drop=tuple(dict.fromkeys(self.cap_drop)),
            security_opt=tuple(self.security_opt),
            devices=tuple(self.devices),
            ulimits=tuple(self.ulimits.values()),
            labels=dict(self.labels),
            gpus=tuple(self.gpus),
            add_host=tuple(self.add_host),
            entrypoint=self.entrypoint,
            **self.scalars,
        )


def _tokens(text: str | Sequence[str]) -> list[str]:
    if not isinstance(text, str):
        return list(text)
    try:
        return shlex.split(text)
    except ValueError as err:
        raise _error(f"cannot split {text!r}: {err}") from None


def parse_docker_run_args(
    text: str | Sequence[str], *, environ: Mapping[str, str] | None = None
) -> RunOptions:
    """Parse ``docker run`` flags (a shell-quoted string, or already split words).

    ``-e NAME`` without a value takes ``NAME`` from ``environ`` (default
    ``os.environ``) now, as the docker CLI does when it runs. Raises
    ``ValidationError`` naming the flag for anything docker would refuse, for
    flags caliban manages itself and for flags this module does not know.
    """
    collected = _Collector(os.environ if environ is None else environ)
    args = _tokens(text)
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg.startswith("--") and len(arg) > 2:
            name, has_value, inline = arg.partition("=")
            canonical = _ALIASES.get(name, name)
            if canonical in _MANAGED:
                raise _managed(name, canonical)
            flag = _BY_LONG.get(canonical)
            if flag is None:
                raise _unsupported(name)
            if not flag.takes_value:
                collected.switch(canonical, _go_bool(name, inline) if has_value else True)
                continue
            if not has_value:
                # Like pflag, the next word is the value even if it starts with "-".
                if i >= len(args):
                    raise _error(f"{name} needs a value")
                inline = args[i]
                i += 1
            collected.value(name, canonical, inline)
        elif arg.startswith("-") and len(arg) > 1 and arg != "--":
            i = _short_flags(collected, arg, args, i)
        else:
            raise _error(
                f"unexpected argument {arg!r}: only docker run flags go here",
                hint="the image and its command are caliban's to choose",
            )
    return collected.freeze()


def _short_flags(collected: _Collector, arg: str, args: list[str], i: int) -> int:
    """Handle ``-e X``, ``-eX``, ``-e=X`` and bundles such as ``-Pe X``; return the next index."""
    letters = arg[1:]
    j = 0
    while j < len(letters):
        letter = letters[j]
        shown = f"-{letter}"
        if letter in _MANAGED_SHORT:
            raise _managed(shown, _MANAGED_SHORT[letter])
        flag = _BY_SHORT.get(letter)
        if flag is None:
            raise _unsupported(shown)
        rest = letters[j + 1 :]
        if not flag.takes_value:
            if len(rest) > 1 and rest.startswith("="):
                collected.switch(flag.long, _go_bool(shown, rest[1:]))
                return i
            collected.switch(flag.long, True)
            j += 1
            continue
        if len(rest) > 1 and rest.startswith("="):
            value = rest[1:]
        elif rest:
            value = rest
        elif i < len(args):
            value = args[i]
            i += 1
        else:
            raise _error(f"{shown} needs a value")
        collected.value(shown, flag.long, value)
        return i
    return i
