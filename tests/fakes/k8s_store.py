"""Objects, selectors, validation and watch history for the fake Kubernetes API server.

Nothing here speaks HTTP: :mod:`tests.fakes.k8s` turns these pieces into the REST surface that
kubernetes_asyncio talks to. Keeping the store separate lets the Job "controller" in
:mod:`tests.fakes.k8s_jobs` change objects through the same path as API writes, so every change
(whoever makes it) bumps the global resourceVersion and reaches watchers the same way.
"""

from __future__ import annotations

import asyncio
import copy
import re
import secrets
import uuid
from collections import deque
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Literal

JsonObj = dict[str, Any]
EventType = Literal["ADDED", "MODIFIED", "DELETED"]

# --- Validation rules, copied from k8s.io/apimachinery/pkg/util/validation -------------------

_DNS1123_LABEL_FMT = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS1123_SUBDOMAIN_FMT = _DNS1123_LABEL_FMT + r"(\." + _DNS1123_LABEL_FMT + r")*"
_QUALIFIED_NAME_FMT = r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
_LABEL_VALUE_FMT = r"(" + _QUALIFIED_NAME_FMT + r")?"

DNS1123_LABEL_RE = re.compile(_DNS1123_LABEL_FMT)
DNS1123_SUBDOMAIN_RE = re.compile(_DNS1123_SUBDOMAIN_FMT)
QUALIFIED_NAME_RE = re.compile(_QUALIFIED_NAME_FMT)
LABEL_VALUE_RE = re.compile(_LABEL_VALUE_FMT)

# The apiserver's own wording, so tests (and error translation in production code) see the
# messages a real cluster would send.
MSG_SUBDOMAIN = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or "
    "'.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used "
    f"for validation is '{_DNS1123_SUBDOMAIN_FMT}')"
)
MSG_DNS_LABEL = (
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and "
    "must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex "
    f"used for validation is '{_DNS1123_LABEL_FMT}')"
)
MSG_QUALIFIED_NAME = (
    "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end "
    "with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used "
    f"for validation is '{_QUALIFIED_NAME_FMT}')"
)
MSG_LABEL_VALUE = (
    "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or "
    "'.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or "
    f"'my_value',  or '12345', regex used for validation is '{_LABEL_VALUE_FMT}')"
)

# k8s.io/apimachinery/pkg/util/rand: consonants and digits only, so generated names never
# spell words; the names this fake invents look like a real cluster's.
_RAND_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
# generateName is cut so that prefix + 5 random characters still fits in 63.
MAX_GENERATE_NAME_PREFIX = 58


def rand_suffix(n: int = 5) -> str:
    """``n`` characters from the apiserver's name-generation alphabet."""
    return "".join(secrets.choice(_RAND_ALPHABET) for _ in range(n))


def new_uid() -> str:
    return str(uuid.uuid4())


def now_rfc3339() -> str:
    """Kubernetes timestamps: RFC 3339 in UTC with second precision and a ``Z``."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- Status objects and the error that carries one --------------------------------------------


def status_body(code: int, reason: str, message: str, details: JsonObj | None = None) -> JsonObj:
    """A failure ``meta/v1 Status`` as the apiserver renders it."""
    body: JsonObj = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if details is not None:
        body["details"] = details
    return body


def success_status(name: str, group: str, resource: str, uid: str) -> JsonObj:
    """What a DELETE answers when the object is gone at once."""
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "details": {"name": name, "group": group, "kind": resource, "uid": uid},
    }


class KubeError(Exception):
    """Raised anywhere below the HTTP layer; the server turns it into a Status response."""

    def __init__(self, code: int, body: JsonObj, headers: Mapping[str, str] | None = None):
        super().__init__(body.get("message", ""))
        self.code = code
        self.body = body
        self.headers = dict(headers or {})

    @classmethod
    def of(cls, code: int, reason: str, message: str, details: JsonObj | None = None) -> KubeError:
        return cls(code, status_body(code, reason, message, details))


def qualified_resource(resource: str, group: str) -> str:
    """``jobs.batch`` / ``pods``: how the apiserver names a resource in messages."""
    return f"{resource}.{group}" if group else resource


def not_found(resource: str, group: str, name: str) -> KubeError:
    return KubeError.of(
        404,
        "NotFound",
        f'{qualified_resource(resource, group)} "{name}" not found',
        {"name": name, "group": group, "kind": resource}
        if group
        else {"name": name, "kind": resource},
    )


def already_exists(resource: str, group: str, name: str) -> KubeError:
    details: JsonObj = {"name": name, "kind": resource}
    if group:
        details = {"name": name, "group": group, "kind": resource}
    return KubeError.of(
        409,
        "AlreadyExists",
        f'{qualified_resource(resource, group)} "{name}" already exists',
        details,
    )


@dataclass(frozen=True)
class Cause:
    """One ``details.causes[]`` entry of a 422 Invalid Status."""

    field: str
    reason: str  # FieldValueInvalid | FieldValueRequired | FieldValueNotSupported
    message: str


def invalid_value(field: str, value: object, why: str) -> Cause:
    shown = f'"{value}"' if isinstance(value, str) else str(value)
    return Cause(field, "FieldValueInvalid", f"Invalid value: {shown}: {why}")


def required_value(field: str, why: str = "") -> Cause:
    return Cause(field, "FieldValueRequired", "Required value" + (f": {why}" if why else ""))


def unsupported_value(field: str, value: object, supported: list[str]) -> Cause:
    shown = ", ".join(f'"{s}"' for s in supported)
    return Cause(
        field, "FieldValueNotSupported", f'Unsupported value: "{value}": supported values: {shown}'
    )


def invalid_error(kind: str, group: str, name: str, causes: list[Cause]) -> KubeError:
    """422 with the apiserver's message layout (bracketed when there are several causes)."""
    parts = [f"{c.field}: {c.message}" for c in causes]
    joined = parts[0] if len(parts) == 1 else "[" + ", ".join(parts) + "]"
    qualified = f"{kind}.{group}" if group else kind
    details: JsonObj = {
        "name": name,
        "kind": kind,
        "causes": [{"reason": c.reason, "message": c.message, "field": c.field} for c in causes],
    }
    if group:
        details["group"] = group
    return KubeError.of(422, "Invalid", f'{qualified} "{name}" is invalid: {joined}', details)


# --- Query parameters -----------------------------------------------------------------------

_TRUE = {"1", "t", "T", "TRUE", "true", "True"}  # Go's strconv.ParseBool, as the apiserver uses
_FALSE = {"0", "f", "F", "FALSE", "false", "False"}


def bool_param(value: str | None) -> bool:
    """A boolean query parameter: ``watch=True`` (Python's spelling) is as good as ``true``."""
    if value is None or value == "":
        return False
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise KubeError.of(400, "BadRequest", f'strconv.ParseBool: parsing "{value}": invalid syntax')


def int_param(query: Mapping[str, str], name: str) -> int | None:
    value = query.get(name)
    if value in (None, ""):
        return None
    try:
        return int(str(value))
    except ValueError:
        raise KubeError.of(400, "BadRequest", f"invalid {name}: {value!r}") from None


# --- Name and label validation --------------------------------------------------------------


def check_name(name: str, field: str, max_len: int, *, label_only: bool = False) -> list[Cause]:
    """DNS-1123 subdomain (or label) with a length cap, as for metadata.name."""
    causes: list[Cause] = []
    if len(name) > max_len:
        causes.append(invalid_value(field, name, f"must be no more than {max_len} characters"))
    pattern, msg = (
        (DNS1123_LABEL_RE, MSG_DNS_LABEL) if label_only else (DNS1123_SUBDOMAIN_RE, MSG_SUBDOMAIN)
    )
    if not pattern.fullmatch(name):
        causes.append(invalid_value(field, name, msg))
    return causes


def check_qualified_name(key: str, field: str) -> list[Cause]:
    """A label or annotation key: optional ``prefix/`` (DNS subdomain <= 253) + name <= 63."""
    causes: list[Cause] = []
    prefix, sep, name = key.rpartition("/")
    if sep and key.count("/") > 1:
        return [
            invalid_value(
                field,
                key,
                "a qualified name must consist of alphanumeric characters, '-', '_' or '.', and "
                "must start and end with an alphanumeric character with an optional DNS subdomain "
                "prefix and '/' (e.g. 'example.com/MyName')",
            )
        ]
    if sep:
        if not prefix:
            causes.append(invalid_value(field, key, "prefix part must be non-empty"))
        elif len(prefix) > 253:
            causes.append(invalid_value(field, key, "prefix part must be no more than 253 chars"))
        elif not DNS1123_SUBDOMAIN_RE.fullmatch(prefix):
            causes.append(invalid_value(field, key, "prefix part " + MSG_SUBDOMAIN))
    if not name:
        causes.append(invalid_value(field, key, "name part must be non-empty"))
    elif len(name) > 63:
        causes.append(invalid_value(field, key, "name part must be no more than 63 characters"))
    elif not QUALIFIED_NAME_RE.fullmatch(name):
        causes.append(invalid_value(field, key, MSG_QUALIFIED_NAME))
    return causes


def check_label_value(value: object, field: str) -> list[Cause]:
    if not isinstance(value, str):
        return [invalid_value(field, value, "label values must be strings")]
    causes: list[Cause] = []
    if len(value) > 63:
        causes.append(invalid_value(field, value, "must be no more than 63 characters"))
    if not LABEL_VALUE_RE.fullmatch(value):
        causes.append(invalid_value(field, value, MSG_LABEL_VALUE))
    return causes


def check_labels(labels: object, field: str) -> list[Cause]:
    if labels is None:
        return []
    if not isinstance(labels, dict):
        return [invalid_value(field, str(labels), "must be a map of string to string")]
    causes: list[Cause] = []
    for key, value in labels.items():
        causes += check_qualified_name(str(key), field)
        causes += check_label_value(value, field)
    return causes


def check_annotations(annotations: object, field: str) -> list[Cause]:
    if annotations is None:
        return []
    if not isinstance(annotations, dict):
        return [invalid_value(field, str(annotations), "must be a map of string to string")]
    causes: list[Cause] = []
    for key, value in annotations.items():
        causes += check_qualified_name(str(key), field)
        if not isinstance(value, str):
            causes.append(invalid_value(field, value, "annotation values must be strings"))
    return causes


# --- Label and field selectors --------------------------------------------------------------

SelectorOp = Literal["=", "!=", "in", "notin", "exists", "!", "gt", "lt"]


@dataclass(frozen=True)
class Requirement:
    """One comma-separated term of a label selector."""

    key: str
    op: SelectorOp
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        value = labels.get(self.key)
        if self.op == "=" or self.op == "in":
            return present and value in self.values
        if self.op == "!=" or self.op == "notin":
            # Like the apiserver: "k!=v" also selects objects that have no label k at all.
            return not present or value not in self.values
        if self.op == "exists":
            return present
        if self.op == "!":
            return not present
        # gt / lt compare integers; a non-integer label value never matches.
        try:
            number = int(value) if value is not None else None
        except ValueError:
            return False
        if number is None:
            return False
        bound = int(self.values[0])
        return number > bound if self.op == "gt" else number < bound


_KEY = r"[A-Za-z0-9][-A-Za-z0-9_./]*"
_SET_TERM = re.compile(rf"^({_KEY})\s+(in|notin)\s+\(([^()]*)\)$")
_EQ_TERM = re.compile(rf"^({_KEY})\s*(==|=|!=)\s*([^=!,\s]*)$")
_CMP_TERM = re.compile(rf"^({_KEY})\s*([<>])\s*(-?\d+)$")
_NOT_TERM = re.compile(rf"^!\s*({_KEY})$")
_EXISTS_TERM = re.compile(rf"^({_KEY})$")


def _split_terms(text: str) -> list[str]:
    """Split on commas that are not inside ``( )`` (set-based values contain commas)."""
    terms, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "," and depth == 0:
            terms.append(text[start:i])
            start = i + 1
    terms.append(text[start:])
    return [t.strip() for t in terms]


def _bad_selector(message: str) -> KubeError:
    return KubeError.of(400, "BadRequest", f"unable to parse requirement: {message}")


@dataclass(frozen=True)
class LabelSelector:
    """A parsed ``labelSelector`` query parameter; the empty selector matches everything."""

    requirements: tuple[Requirement, ...] = ()

    @classmethod
    def parse(cls, text: str | None) -> LabelSelector:
        if text is None or not text.strip():
            return cls()
        reqs: list[Requirement] = []
        for term in _split_terms(text):
            if not term:
                raise _bad_selector("found '', expected: identifier")
            req = _parse_term(term)
            if causes := check_qualified_name(req.key, "key"):
                raise _bad_selector(f"key: {causes[0].message}")
            if req.op not in ("gt", "lt"):
                for i, value in enumerate(req.values):
                    if causes := check_label_value(value, "values"):
                        raise _bad_selector(f"values[{i}][{req.key}]: {causes[0].message}")
            reqs.append(req)
        return cls(tuple(reqs))

    def matches(self, labels: Mapping[str, str] | None) -> bool:
        labels = labels or {}
        return all(r.matches(labels) for r in self.requirements)


def _parse_term(term: str) -> Requirement:
    if m := _SET_TERM.match(term):
        values = tuple(v.strip() for v in m.group(3).split(","))
        if values == ("",):
            raise _bad_selector(f"for '{m.group(2)}' operator, values set can't be empty")
        op: SelectorOp = "in" if m.group(2) == "in" else "notin"
        return Requirement(m.group(1), op, values)
    if m := _NOT_TERM.match(term):
        return Requirement(m.group(1), "!")
    if m := _CMP_TERM.match(term):
        return Requirement(m.group(1), "gt" if m.group(2) == ">" else "lt", (m.group(3),))
    if m := _EQ_TERM.match(term):
        return Requirement(m.group(1), "!=" if m.group(2) == "!=" else "=", (m.group(3),))
    if m := _EXISTS_TERM.match(term):
        return Requirement(m.group(1), "exists")
    raise _bad_selector(f"unable to parse '{term}'")


def lookup_path(obj: Mapping[str, Any], path: str) -> str | None:
    """Dotted-path lookup for field selectors; scalars are compared as their string form."""
    node: Any = obj
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    if isinstance(node, bool):
        return "true" if node else "false"
    return None if node is None else str(node)


@dataclass(frozen=True)
class FieldSelector:
    """A parsed ``fieldSelector``: ``path=v``, ``path==v`` or ``path!=v`` terms, ANDed."""

    terms: tuple[tuple[str, bool, str], ...] = ()  # (path, equal?, value)

    @classmethod
    def parse(cls, text: str | None, supported: frozenset[str]) -> FieldSelector:
        if text is None or not text.strip():
            return cls()
        terms: list[tuple[str, bool, str]] = []
        for raw in text.split(","):
            raw = raw.strip()
            m = re.fullmatch(r"([A-Za-z0-9_.]+)\s*(==|=|!=)\s*(.*)", raw)
            if not m:
                raise KubeError.of(400, "BadRequest", f"invalid selector: '{raw}'")
            path = m.group(1)
            if path not in supported:
                raise KubeError.of(400, "BadRequest", f"field label not supported: {path}")
            terms.append((path, m.group(2) != "!=", m.group(3)))
        return cls(tuple(terms))

    def matches(self, obj: Mapping[str, Any]) -> bool:
        for path, equal, value in self.terms:
            actual = lookup_path(obj, path)
            # The apiserver exposes a few computed fields; map them onto stored ones.
            if path == "status.successful":
                actual = str((obj.get("status") or {}).get("succeeded") or 0)
            if (actual == value) != equal:
                return False
        return True


# --- The store itself -----------------------------------------------------------------------


@dataclass(frozen=True)
class ResourceType:
    """Static facts about one resource the fake serves."""

    resource: str  # plural path segment, e.g. "jobs"
    kind: str  # "Job"
    api_version: str  # "batch/v1"
    group: str  # "batch", or "" for core
    name_max: int = 253
    field_paths: frozenset[str] = frozenset({"metadata.name", "metadata.namespace"})

    @property
    def list_kind(self) -> str:
        return self.kind + "List"


@dataclass(frozen=True)
class Event:
    """One change, kept in the bounded history so watches can resume from a resourceVersion."""

    rv: int
    resource: str
    type: EventType
    obj: JsonObj  # snapshot after the change
    old: JsonObj | None = None  # snapshot before it (MODIFIED only)

    @property
    def namespace(self) -> str:
        return str(self.obj["metadata"].get("namespace", ""))


class Gone(Exception):
    """The requested resourceVersion is older than the retained history."""

    def __init__(self, requested: int, oldest: int):
        super().__init__(f"too old resource version: {requested} ({oldest})")


Key = tuple[str, str]  # (namespace, name); namespace "" for cluster-scoped objects


class Store:
    """All objects, one global resourceVersion counter, a bounded event history, watchers.

    Objects are plain JSON dicts, exactly what goes over the wire. Every write path goes through
    :meth:`insert`, :meth:`modify` or :meth:`remove`, which stamp a new resourceVersion and
    publish an :class:`Event` to every subscriber queue.
    """

    def __init__(self, history_size: int = 1000, first_rv: int = 1000):
        self.rv = first_rv
        self.objects: dict[str, dict[Key, JsonObj]] = {}
        self.history: deque[Event] = deque(maxlen=history_size)
        # Highest resourceVersion whose event is no longer in the history: a watch from below it
        # cannot be served without gaps, so it gets 410 Gone.
        self.compacted_rv = first_rv
        self._subscribers: set[asyncio.Queue[Event | None]] = set()

    # reads ---------------------------------------------------------------------------------

    def get(self, resource: str, namespace: str, name: str) -> JsonObj | None:
        return self.objects.get(resource, {}).get((namespace, name))

    def require(self, rtype: ResourceType, namespace: str, name: str) -> JsonObj:
        obj = self.get(rtype.resource, namespace, name)
        if obj is None:
            raise not_found(rtype.resource, rtype.group, name)
        return obj

    def list_objects(self, resource: str, namespace: str | None = None) -> list[JsonObj]:
        """Live objects ordered by (namespace, name), the apiserver's key order."""
        items = self.objects.get(resource, {})
        return [items[key] for key in sorted(items) if namespace is None or key[0] == namespace]

    # writes --------------------------------------------------------------------------------

    def _bump(self) -> int:
        self.rv += 1
        return self.rv

    def _publish(self, event: Event) -> None:
        if len(self.history) == self.history.maxlen and self.history:
            self.compacted_rv = self.history[0].rv
        self.history.append(event)
        for queue in self._subscribers:
            queue.put_nowait(event)

    def insert(self, resource: str, obj: JsonObj) -> JsonObj:
        """Add a new object (caller has checked it does not exist); returns a snapshot."""
        meta = obj["metadata"]
        meta["resourceVersion"] = str(self._bump())
        self.objects.setdefault(resource, {})[(meta.get("namespace", ""), meta["name"])] = obj
        snapshot = copy.deepcopy(obj)
        self._publish(Event(self.rv, resource, "ADDED", snapshot))
        return snapshot

    @contextmanager
    def modify(self, resource: str, namespace: str, name: str) -> Iterator[JsonObj]:
        """Mutate the live object inside the block; a real change publishes MODIFIED."""
        obj = self.objects[resource][(namespace, name)]
        old = copy.deepcopy(obj)
        yield obj
        if obj != old:
            obj["metadata"]["resourceVersion"] = str(self._bump())
            self._publish(Event(self.rv, resource, "MODIFIED", copy.deepcopy(obj), old))

    def remove(self, resource: str, namespace: str, name: str) -> JsonObj | None:
        """Delete an object; the DELETED event carries its final state at a new version."""
        obj = self.objects.get(resource, {}).pop((namespace, name), None)
        if obj is None:
            return None
        obj["metadata"]["resourceVersion"] = str(self._bump())
        snapshot = copy.deepcopy(obj)
        self._publish(Event(self.rv, resource, "DELETED", snapshot))
        return snapshot

    def compact(self) -> None:
        """Forget all history, as etcd compaction does: older watches now get 410."""
        self.history.clear()
        self.compacted_rv = self.rv

    # watch plumbing ------------------------------------------------------------------------

    def events_after(self, rv: int) -> list[Event]:
        if rv < self.compacted_rv:
            raise Gone(rv, self.compacted_rv)
        return [e for e in self.history if e.rv > rv]

    def subscribe(self) -> asyncio.Queue[Event | None]:
        queue: asyncio.Queue[Event | None] = asyncio.Queue()
        self._subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[Event | None]) -> None:
        self._subscribers.discard(queue)

    def close_subscribers(self) -> None:
        """Wake every watch so its handler ends (used when the server shuts down)."""
        for queue in self._subscribers:
            queue.put_nowait(None)
