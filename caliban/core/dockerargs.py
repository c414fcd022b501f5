"""``--docker_run_args``: ``docker run`` flags turned into Engine API fields.

The original caliban handed this string to the docker CLI. We create containers
through the Engine API instead, so the flags are parsed here, the way the
docker CLI (20.10) parses them, into the JSON fields of ``POST
/containers/create`` (API v1.41). Flags that control what caliban itself
manages (``--rm``, ``-d``, ``-i``, ``-t``, ``--name``) are refused.
"""

from __future__ import annotations

import copy
import os
import posixpath
import shlex
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from caliban.core.docker_values import (
    IPC_MODES,
    PortBinding,
    error,
    go_bool,
    namespace_mode,
    normalize_capability,
    parse_add_host,
    parse_cpus,
    parse_device,
    parse_expose,
    parse_gpus,
    parse_label,
    parse_mount,
    parse_publish,
    parse_security_opt,
    parse_size,
    parse_ulimit,
    parse_volume,
    read_env_file,
    require_absolute,
)
from caliban.core.runflags import MappedFlag, deep_merge, flag_table, parse_mapped, set_field
from caliban.errors import ValidationError

__all__ = ["SUPPORTED_FLAGS", "PortBinding", "RunOptions", "parse_docker_run_args", "parse_size"]


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
    # Create-body fields of the flags in the table's "mapped" group, and the
    # --docker_create_json fragment: deep-merged last, over everything else.
    extra: Mapping[str, Any] = field(default_factory=dict)

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
        return deep_merge(out, copy.deepcopy(dict(self.extra))) if self.extra else out


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
            raise error(f"{flag}: {cleaned} is already mounted in the container")
        taken.add(cleaned)


# --------------------------------------------------------------------------- flags

# Short forms of the flags the table refuses (owned by caliban or client-only).
_MANAGED_SHORT = {"d": "--detach", "i": "--interactive", "t": "--tty", "a": "--attach"}


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
_MAPPED = flag_table().mapped
_MAPPED_SHORT = {f.short: f for f in _MAPPED.values() if f.short}

#: Every accepted flag, long form first then the short one, for help texts.
SUPPORTED_FLAGS: tuple[str, ...] = tuple(
    sorted(
        [f"{f.long} (-{f.short})" if f.short else f.long for f in _FLAGS]
        + [f"{f.long} (-{f.short})" if f.short else f.long for f in _MAPPED.values()]
    )
)


def _unsupported(flag: str) -> ValidationError:
    return error(
        f"unknown docker run flag {flag!r}",
        hint="docs/docker-run-flags.md lists the supported flags",
    )


def _managed(flag: str, canonical: str) -> ValidationError:
    return error(f"{flag!r} cannot be used: {flag_table().refusal(canonical)}")


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
        self.extra: dict[str, Any] = {}
        # (flag, field below the endpoint, kind, value): the network is known at the end.
        self.endpoint: list[tuple[str, str, str, Any]] = []

    def mapped(self, flag: str, spec: MappedFlag, value: str | bool) -> None:
        parsed = parse_mapped(flag, spec, value)
        if spec.kind.startswith("endpoint"):
            self.endpoint.append((flag, spec.field.split(".*.", 1)[1], spec.kind, parsed))
            return
        if spec.field == "Labels":
            for key in parsed:
                _check_label(flag, key)
        set_field(self.extra, spec.field, spec.kind, parsed)

    def _endpoint_fields(self) -> None:
        if not self.endpoint:
            return
        network = self.scalars.get("network")
        if network in (None, "", "default", "bridge", "host", "none") or network.startswith(
            "container:"
        ):
            raise error(f"{self.endpoint[0][0]} needs --network with a user-defined network")
        for _, path, kind, value in self.endpoint:
            set_field(self.extra, f"NetworkingConfig.EndpointsConfig.{network}.{path}", kind, value)

    def value(self, flag: str, canonical: str, value: str) -> None:
        handler = self._handlers[canonical]
        handler(self, flag, value)

    def _env(self, flag: str, value: str) -> None:
        name, has_value, _ = value.partition("=")
        if not name:
            raise error(f"{flag} {value}: no variable name")
        if has_value:
            self.env.append(value)
        elif name in self.environ:
            self.env.append(f"{name}={self.environ[name]}")
        else:
            # Docker sends the bare name, which unsets the variable in the container.
            self.env.append(name)

    def _env_file(self, flag: str, value: str) -> None:
        self.env_files.extend(read_env_file(flag, value, self.environ))

    def _volume(self, flag: str, value: str) -> None:
        bind, anonymous = parse_volume(flag, value)
        if bind is not None:
            self.binds.append(bind)
        if anonymous is not None:
            self.volumes.append(anonymous)

    def _mount(self, flag: str, value: str) -> None:
        self.mounts.append(parse_mount(flag, value))

    def _tmpfs(self, flag: str, value: str) -> None:
        path, _, options = value.partition(":")
        require_absolute(flag, path, "container path")
        self.tmpfs[path] = options

    def _publish(self, flag: str, value: str) -> None:
        self.ports.extend(parse_publish(flag, value))

    def _expose(self, flag: str, value: str) -> None:
        self.expose.extend(parse_expose(flag, value))

    def _size(self, flag: str, value: str, key: str) -> None:
        try:
            self.scalars[key] = parse_size(value)
        except ValueError:
            raise error(
                f"{flag} {value}: expected a size such as 512m or 2g",
                hint="a number with an optional b, k, m, g, t or p suffix (powers of 1024)",
            ) from None

    def _shm_size(self, flag: str, value: str) -> None:
        self._size(flag, value, "shm_size")

    def _memory(self, flag: str, value: str) -> None:
        self._size(flag, value, "memory")

    def _cpus(self, flag: str, value: str) -> None:
        self.scalars["nano_cpus"] = parse_cpus(flag, value)

    def _network(self, flag: str, value: str) -> None:
        if not value:
            raise error(f"{flag}: needs a network name")
        self.scalars["network"] = value

    def _ipc(self, flag: str, value: str) -> None:
        self.scalars["ipc"] = namespace_mode(flag, value, IPC_MODES)

    def _pid(self, flag: str, value: str) -> None:
        self.scalars["pid"] = namespace_mode(flag, value, frozenset({"", "host"}))

    def _user(self, flag: str, value: str) -> None:
        self.scalars["user"] = value

    def _workdir(self, flag: str, value: str) -> None:
        require_absolute(flag, value, "working directory")
        self.scalars["workdir"] = value

    def _cap_add(self, flag: str, value: str) -> None:
        self.cap_add.append(normalize_capability(value))

    def _cap_drop(self, flag: str, value: str) -> None:
        self.cap_drop.append(normalize_capability(value))

    def _security_opt(self, flag: str, value: str) -> None:
        self.security_opt.append(parse_security_opt(flag, value))

    def _device(self, flag: str, value: str) -> None:
        self.devices.append(parse_device(flag, value))

    def _ulimit(self, flag: str, value: str) -> None:
        limit = parse_ulimit(flag, value)
        # Docker keeps one value per resource; the last flag wins.
        self.ulimits[limit["Name"]] = limit

    def _label(self, flag: str, value: str) -> None:
        key, text = parse_label(flag, value)
        _check_label(flag, key)
        self.labels[key] = text

    def _runtime(self, flag: str, value: str) -> None:
        self.scalars["runtime"] = value

    def _gpus(self, flag: str, value: str) -> None:
        self.gpus.append(parse_gpus(flag, value))

    def _hostname(self, flag: str, value: str) -> None:
        self.scalars["hostname"] = value

    def _add_host(self, flag: str, value: str) -> None:
        self.add_host.append(parse_add_host(flag, value))

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
        self._endpoint_fields()
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
            extra=self.extra,
            **self.scalars,
        )


def _tokens(text: str | Sequence[str]) -> list[str]:
    if not isinstance(text, str):
        return list(text)
    try:
        return shlex.split(text)
    except ValueError as err:
        raise error(f"cannot split {text!r}: {err}") from None


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
            if flag_table().refusal(canonical):
                raise _managed(name, canonical)
            mapped = _MAPPED.get(canonical)
            if mapped is not None:
                i = _mapped_long(collected, mapped, name, bool(has_value), inline, args, i)
                continue
            flag = _BY_LONG.get(canonical)
            if flag is None:
                raise _unsupported(name)
            if not flag.takes_value:
                collected.switch(canonical, go_bool(name, inline) if has_value else True)
                continue
            if not has_value:
                # Like pflag, the next word is the value even if it starts with "-".
                if i >= len(args):
                    raise error(f"{name} needs a value")
                inline = args[i]
                i += 1
            collected.value(name, canonical, inline)
        elif arg.startswith("-") and len(arg) > 1 and arg != "--":
            i = _short_flags(collected, arg, args, i)
        else:
            raise error(
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
        mapped = _MAPPED_SHORT.get(letter)
        if mapped is not None:
            rest = letters[j + 1 :]
            value = rest[1:] if rest.startswith("=") else rest
            return _mapped_long(collected, mapped, shown, bool(rest), value, args, i)
        flag = _BY_SHORT.get(letter)
        if flag is None:
            raise _unsupported(shown)
        rest = letters[j + 1 :]
        if not flag.takes_value:
            if len(rest) > 1 and rest.startswith("="):
                collected.switch(flag.long, go_bool(shown, rest[1:]))
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
            raise error(f"{shown} needs a value")
        collected.value(shown, flag.long, value)
        return i
    return i


def _mapped_long(
    collected: _Collector,
    spec: MappedFlag,
    name: str,
    has_value: bool,
    inline: str,
    args: list[str],
    i: int,
) -> int:
    """One use of a table-mapped flag; returns the index of the next word."""
    if not spec.takes_value:
        collected.mapped(name, spec, go_bool(name, inline) if has_value else True)
        return i
    if not has_value:
        if i >= len(args):
            raise error(f"{name} needs a value")
        inline = args[i]
        i += 1
    collected.mapped(name, spec, inline)
    return i


# Labels under this prefix are how caliban finds, cleans up and attributes its
# containers; a user value would hide a job from it.
CALIBAN_LABEL_PREFIX = "caliban."


def _check_label(flag: str, key: str) -> None:
    if key.startswith(CALIBAN_LABEL_PREFIX):
        raise error(f"{flag} {key}: labels under {CALIBAN_LABEL_PREFIX!r} are caliban's to set")
