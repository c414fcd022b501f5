"""Values of ``docker run`` flags (sizes, volumes, mounts, ports, devices,
ulimits, GPUs, ...) parsed the way the docker CLI 20.10 parses them, into the
shapes the Engine API (v1.41) expects. Pure; used by :mod:`caliban.core.dockerargs`.
"""

from __future__ import annotations

import csv
import ipaddress
import json
import posixpath
import re
from collections.abc import Mapping
from fractions import Fraction
from typing import Any, NamedTuple

from caliban.errors import ValidationError

OPTION = "--docker_run_args"


def error(message: str, hint: str | None = None) -> ValidationError:
    return ValidationError(f"{OPTION}: {message}", hint=hint)


class PortBinding(NamedTuple):
    """One published port: ``container_port`` is ``"80/tcp"``; empty host fields mean any."""

    container_port: str
    host_ip: str = ""
    host_port: str = ""


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


def go_bool(flag: str, text: str) -> bool:
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise error(f"{flag}={text}: expected true or false")


def _csv_fields(flag: str, text: str) -> list[str]:
    """Split a comma-separated option value, honouring double quotes as docker does."""
    try:
        rows = list(csv.reader([text], strict=True))
    except csv.Error as err:
        raise error(f"{flag} {text}: {err}") from None
    if not rows or not rows[0]:
        raise error(f"{flag}: needs a value")
    return rows[0]


def require_absolute(flag: str, value: str, what: str, *, on_host: bool = False) -> None:
    if not value.startswith("/"):
        hint = f"for example $PWD/{value.removeprefix('./')}" if on_host else None
        raise error(f"{flag} {value}: the {what} must be an absolute path", hint=hint)


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


def parse_volume(flag: str, spec: str) -> tuple[str | None, str | None]:
    """Return ``(bind, None)`` for a bind or named volume, ``(None, path)`` for an anonymous one."""
    parts = spec.split(":")
    if len(parts) > 3 or not all(parts[:2]):
        raise error(f"{flag} {spec}: expected [host-path|volume-name:]container-path[:options]")
    if len(parts) == 1:
        require_absolute(flag, spec, "container path")
        if posixpath.normpath(spec) == "/":
            raise error(f"{flag} {spec}: cannot mount over /")
        return None, spec
    if len(parts) == 2 and _valid_mode(parts[1]):
        # "/path:ro" would be an anonymous volume with options, which docker refuses.
        raise error(f"{flag} {spec}: an anonymous volume takes no options")
    source, target = parts[0], parts[1]
    if len(parts) == 3 and not _valid_mode(parts[2]):
        raise error(
            f"{flag} {spec}: invalid options {parts[2]!r}",
            hint="use a comma-separated mix of ro|rw, z|Z, [r]shared|[r]slave|[r]private, "
            "nocopy, consistent|cached|delegated",
        )
    require_absolute(flag, target, "container path")
    if posixpath.normpath(target) == "/":
        raise error(f"{flag} {spec}: cannot mount over /")
    if not source.startswith("/"):
        if not _VOLUME_NAME.fullmatch(source):
            # Docker 20.10 reads anything else as an invalid volume name and
            # says to use an absolute path if a host directory was meant.
            raise error(
                f"{flag} {spec}: {source!r} is neither an absolute host path nor a volume name",
                hint="use an absolute path for a host directory, for example "
                f"$PWD/{source.removeprefix('./')}:{target}",
            )
    elif len(parts) == 3 and "nocopy" in parts[2].split(","):
        raise error(f"{flag} {spec}: nocopy applies to named volumes only")
    return spec, None


_MOUNT_TYPES = frozenset({"bind", "volume", "tmpfs"})


def parse_mount(flag: str, value: str) -> dict[str, Any]:
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
                raise error(f"{flag} {value}: field {item!r} must be a key=value pair")
            continue
        try:
            if key == "type":
                mount["Type"] = val.lower()
            elif key in ("source", "src"):
                mount["Source"] = val
            elif key in ("target", "dst", "destination"):
                mount["Target"] = val
            elif key in ("readonly", "ro"):
                mount["ReadOnly"] = go_bool(f"{flag} {key}", val)
            elif key == "consistency":
                mount["Consistency"] = val.lower()
            elif key == "bind-propagation":
                section("BindOptions")["Propagation"] = val.lower()
            elif key == "bind-nonrecursive":
                section("BindOptions")["NonRecursive"] = go_bool(f"{flag} {key}", val)
            elif key == "volume-nocopy":
                section("VolumeOptions")["NoCopy"] = go_bool(f"{flag} {key}", val)
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
                raise error(f"{flag} {value}: unexpected key {key!r}")
        except ValueError:
            raise error(f"{flag} {value}: invalid value for {key}: {val!r}") from None

    kind = mount["Type"]
    if kind not in _MOUNT_TYPES:
        raise error(f"{flag} {value}: type must be bind, volume or tmpfs, not {kind!r}")
    target = mount.get("Target")
    if not target:
        raise error(f"{flag} {value}: target is required")
    require_absolute(flag, target, "target")
    for prefix, owner in (("Volume", "volume"), ("Bind", "bind"), ("Tmpfs", "tmpfs")):
        if f"{prefix}Options" in mount and kind != owner:
            raise error(f"{flag} {value}: cannot mix {owner}-* options with type={kind}")
    source = mount.get("Source")
    if kind == "bind":
        if not source:
            raise error(f"{flag} {value}: a bind mount needs a source")
        require_absolute(flag, source, "source", on_host=True)
    elif kind == "tmpfs" and source:
        raise error(f"{flag} {value}: a tmpfs mount takes no source")
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
        raise error(f"{flag} {spec}: invalid IP address {ip!r}") from None
    return ip


def _long_publish(flag: str, spec: str) -> str:
    """``published=8080,target=80[,protocol=udp]`` in the short ``8080:80/udp`` form."""
    params = {"protocol": "tcp"}
    for param in spec.split(","):
        key, has_value, value = param.partition("=")
        if not has_value:
            raise error(f"{flag} {spec}: expected name=value, got {param!r}")
        params[key] = value
    return f"{params.get('published', '')}:{params.get('target', '')}/{params['protocol']}"


def parse_publish(flag: str, spec: str) -> list[PortBinding]:
    """``[ip:][host-port:]container-port[/proto]``, ranges allowed, as docker's nat package."""
    raw = _long_publish(flag, spec) if "=" in spec else spec
    parts = raw.split(":")
    container_text = parts[-1]
    host_text = parts[-2] if len(parts) >= 2 else ""
    ip_text = ":".join(parts[:-2])
    container_text, proto = _split_proto(container_text)
    ip = _parse_ip(flag, spec, ip_text) if ip_text else ""
    if proto not in _PROTOCOLS:
        raise error(f"{flag} {spec}: protocol must be tcp, udp or sctp")
    try:
        start, end = _port_range(container_text)
    except ValueError:
        raise error(f"{flag} {spec}: invalid container port {container_text!r}") from None
    host_start = host_end = 0
    if host_text:
        try:
            host_start, host_end = _port_range(host_text)
        except ValueError:
            raise error(f"{flag} {spec}: invalid host port {host_text!r}") from None
        if end - start != host_end - host_start and end != start:
            raise error(f"{flag} {spec}: the host and container port ranges differ in size")
    bindings = []
    for offset in range(end - start + 1):
        host_port = str(host_start + offset) if host_text else ""
        if start == end and host_start != host_end:
            # One container port with a host range: the daemon picks a free one.
            host_port = f"{host_start}-{host_end}"
        bindings.append(PortBinding(f"{start + offset}/{proto}", ip, host_port))
    return bindings


def parse_expose(flag: str, spec: str) -> list[str]:
    port, proto = _split_proto(spec)
    if proto not in _PROTOCOLS:
        raise error(f"{flag} {spec}: protocol must be tcp, udp or sctp")
    try:
        start, end = _port_range(port)
    except ValueError:
        raise error(f"{flag} {spec}: invalid port {port!r}") from None
    return [f"{p}/{proto}" for p in range(start, end + 1)]


def _valid_device_mode(mode: str) -> bool:
    return bool(mode) and len(set(mode)) == len(mode) and set(mode) <= set("rwm")


def parse_device(flag: str, spec: str) -> dict[str, str]:
    """``/dev/host[:/dev/container][:rwm]`` as an Engine API ``DeviceMapping``."""
    parts = spec.split(":")
    if len(parts) > 3 or not parts[0]:
        raise error(f"{flag} {spec}: expected /dev/host[:/dev/container][:permissions]")
    host, container, mode = parts[0], parts[0], "rwm"
    if len(parts) == 2:
        if _valid_device_mode(parts[1]):
            mode = parts[1]
        else:
            container = parts[1]
    elif len(parts) == 3:
        container, mode = parts[1], parts[2]
        if not _valid_device_mode(mode):
            raise error(f"{flag} {spec}: permissions must combine r, w and m")
    require_absolute(flag, host, "device path", on_host=True)
    require_absolute(flag, container, "container path")
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


def parse_ulimit(flag: str, spec: str) -> dict[str, Any]:
    name, has_value, limits = spec.partition("=")
    if not has_value:
        raise error(f"{flag} {spec}: expected name=soft[:hard]")
    if name not in _ULIMITS:
        raise error(f"{flag} {spec}: unknown limit {name!r} (one of {', '.join(sorted(_ULIMITS))})")
    values = limits.split(":")
    if len(values) > 2:
        raise error(f"{flag} {spec}: expected name=soft[:hard]")
    try:
        soft = _go_int(values[0])
        hard = _go_int(values[1]) if len(values) == 2 else soft
    except ValueError:
        raise error(f"{flag} {spec}: limits must be integers") from None
    if hard != -1 and soft > hard:
        raise error(f"{flag} {spec}: the soft limit is above the hard limit")
    return {"Name": name, "Soft": soft, "Hard": hard}


def _gpu_count(flag: str, spec: str, text: str) -> int:
    if text == "all":
        return -1
    try:
        return _go_int(text)
    except ValueError:
        raise error(f"{flag} {spec}: count must be 'all' or an integer, not {text!r}") from None


def parse_gpus(flag: str, spec: str) -> dict[str, Any]:
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
            raise error(f"{flag} {spec}: {key!r} given twice")
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
            raise error(f"{flag} {spec}: unexpected key {key!r}")
    if "count" not in seen and request["DeviceIDs"] is None:
        request["Count"] = 1
    if request["Capabilities"] is None:
        request["Capabilities"] = [["gpu"]]
    if request["Count"] != 0 and request["DeviceIDs"]:
        # Usually "device=0,1" without inner quotes: the comma made "1" a count.
        raise error(
            f"{flag} {spec}: a GPU request takes a count or device ids, not both",
            hint="quote a device list inside the value, for example --gpus '\"device=0,1\"'",
        )
    return request


def parse_cpus(flag: str, text: str) -> int:
    try:
        cpus = Fraction(text)
    except (ValueError, ZeroDivisionError):
        raise error(f"{flag} {text}: expected a number of CPUs such as 1.5") from None
    nano = cpus * 1_000_000_000
    if nano.denominator != 1:
        raise error(f"{flag} {text}: too precise (at most 9 decimal places)")
    if nano < 0:
        raise error(f"{flag} {text}: must not be negative")
    return int(nano)


def parse_add_host(flag: str, spec: str) -> str:
    name, has_value, address = spec.partition(":")
    if not has_value or not name:
        raise error(f"{flag} {spec}: expected host:ip")
    if address != "host-gateway":
        try:
            ipaddress.ip_address(address.strip())
        except ValueError:
            raise error(f"{flag} {spec}: invalid IP address {address!r}") from None
    return spec


def normalize_capability(cap: str) -> str:
    # Docker accepts "sys_admin", "SYS_ADMIN" and "CAP_SYS_ADMIN" alike.
    upper = cap.strip().upper()
    return upper if upper == "ALL" or upper.startswith("CAP_") else "CAP_" + upper


def parse_security_opt(flag: str, spec: str) -> str:
    key, has_value, value = spec.partition("=")
    if not has_value:
        if spec == "no-new-privileges":
            return spec
        # The legacy "label:disable" spelling.
        key, has_value, value = spec.partition(":")
        if not has_value:
            raise error(f"{flag} {spec}: expected key=value")
    if key == "seccomp" and value != "unconfined":
        # The CLI sends the profile itself, not its path: the daemon may be elsewhere.
        try:
            with open(value, encoding="utf-8") as f:
                profile = json.load(f)
        except OSError as err:
            raise error(f"{flag} {spec}: cannot read {value}: {err.strerror or err}") from None
        except ValueError as err:
            raise error(f"{flag} {spec}: {value} is not JSON: {err}") from None
        return "seccomp=" + json.dumps(profile, separators=(",", ":"))
    return f"{key}={value}"


def parse_label(flag: str, spec: str) -> tuple[str, str]:
    key, _, value = spec.partition("=")
    if not key.strip():
        raise error(f"{flag} {spec}: expected key=value")
    return key, value


def read_env_file(flag: str, path: str, environ: Mapping[str, str]) -> list[str]:
    """Read docker's ``--env-file`` format: ``K=V`` verbatim, bare ``K`` from the host."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as err:
        raise error(f"{flag} {path}: {err.strerror or err}") from None
    try:
        text = data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError:
        raise error(f"{flag} {path}: not UTF-8") from None
    env: list[str] = []
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.removesuffix("\r").lstrip()
        if not line or line.startswith("#"):
            continue
        name, has_value, value = line.partition("=")
        name = name.lstrip(" \t")
        if not name or any(c in name for c in " \t"):
            raise error(f"{flag} {path} line {number}: bad variable name {name!r}")
        if has_value:
            env.append(f"{name}={value}")
        elif name in environ:
            # Unlike -e, a variable missing from the host is left out entirely.
            env.append(f"{name}={environ[name]}")
    return env


IPC_MODES = frozenset({"", "none", "private", "shareable", "host"})


def namespace_mode(flag: str, value: str, allowed: frozenset[str]) -> str:
    if value in allowed or (value.startswith("container:") and len(value) > len("container:")):
        return value
    choices = ", ".join(sorted(m for m in allowed if m)) + ", container:<name|id>"
    raise error(f"{flag} {value}: expected one of {choices}")
