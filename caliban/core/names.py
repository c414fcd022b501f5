"""Identifiers and names: caliban job ids, Kubernetes and Vertex names.

A job id is a ULID written in lowercase Crockford base32: 26 characters of
``[0-9a-z]``, 48 bits of milliseconds then 80 random bits. Ids sort by
creation time, are unique across processes without coordination, and are
usable unchanged as a Google label value, a Docker container name and inside
a DNS-1123 label.
"""

from __future__ import annotations

import re
import secrets
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from urllib.parse import urlsplit

from caliban.errors import ValidationError

JOB_ID_LENGTH = 26
DNS1123_MAX = 63
VERTEX_DISPLAY_NAME_MAX = 128

_CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"
_JOB_ID_RE = re.compile(rf"[0-7][{_CROCKFORD}]{{25}}")
_RANDOM_BITS = 80
# A short id is the last 8 characters: 40 bits, all of them random.
SHORT_ID_LENGTH = 8
_SHORT_BITS = SHORT_ID_LENGTH * 5
_DNS_INVALID = re.compile(r"[^a-z0-9-]")
_DOCKER_SEPARATOR = re.compile(r"[^a-z0-9]+")


# Every pair of digits, indexed by the 10 bits they stand for: a job id is 13 look-ups
# instead of 26 divisions (a 500-job sweep makes its ids while it plans).
_PAIRS = [a + b for a in _CROCKFORD for b in _CROCKFORD]


def _encode(number: int, length: int) -> str:
    """The low ``5 * length`` bits of ``number`` as ``length`` Crockford digits."""
    parts = []
    for _ in range(length // 2):
        parts.append(_PAIRS[number & 0x3FF])
        number >>= 10
    if length % 2:
        parts.append(_CROCKFORD[number & 31])
    return "".join(reversed(parts))


class JobIdFactory:
    """Makes job ids that strictly increase within one process.

    Within a millisecond (or if the clock steps back) the high half of the
    previous id's random part is incremented and the low half drawn again, so
    ids made in a burst still sort in creation order, and their short ids (the
    last :data:`SHORT_ID_LENGTH` characters, which are that low half) differ
    everywhere rather than only in the last character. The clock and random
    source are injectable for tests.
    """

    def __init__(
        self,
        clock_ms: Callable[[], int] | None = None,
        random_bits: Callable[[int], int] = secrets.randbits,
    ) -> None:
        self._clock_ms = clock_ms or (lambda: time.time_ns() // 1_000_000)
        self._random_bits = random_bits
        self._lock = threading.Lock()
        self._last_ms = -1
        self._last_random = 0

    def __call__(self) -> str:
        with self._lock:
            now = self._clock_ms()
            if now > self._last_ms:
                self._last_ms, self._last_random = now, self._random_bits(_RANDOM_BITS)
            else:
                high = (self._last_random >> _SHORT_BITS) + 1
                self._last_random = (high << _SHORT_BITS) | self._random_bits(_SHORT_BITS)
                if self._last_random >> _RANDOM_BITS:
                    # The high half ran out (2**40 ids in a millisecond, or it was
                    # drawn near its top): borrow the next millisecond.
                    self._last_ms = self._last_ms + 1
                    self._last_random = self._random_bits(_SHORT_BITS)
            value = (self._last_ms << _RANDOM_BITS) | self._last_random
        return _encode(value, JOB_ID_LENGTH)


_new_id = JobIdFactory()


def new_job_id() -> str:
    """A fresh job id, greater than every id made before it in this process."""
    return _new_id()


def short_id(job_id: str) -> str:
    """The part of a job id people type: its last characters, drawn at random."""
    return job_id[-SHORT_ID_LENGTH:]


def is_job_id(s: str) -> bool:
    """Whether ``s`` has the shape of a job id."""
    return _JOB_ID_RE.fullmatch(s) is not None


def job_id_time(job_id: str) -> datetime:
    """When a job id was made (UTC, millisecond precision)."""
    if not is_job_id(job_id):
        raise ValueError(f"not a caliban job id: {job_id!r}")
    ms = 0
    for char in job_id[:10]:
        ms = ms * 32 + _CROCKFORD.index(char)
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc)


def dns1123_name(s: str) -> str:
    """A valid DNS-1123 label (as Kubernetes names want) made from ``s``.

    Lowercases; when the first character is not a letter or digit, prefixes
    ``job-``; when the last is not, appends ``-0``; turns every other invalid
    character into ``-``; cuts to 63 characters. Valid names come back
    unchanged, so applying it twice changes nothing.
    """
    name = s.lower()
    if not name:
        return "job"
    if not _alnum(name[0]):
        name = "job-" + name
    if not _alnum(name[-1]):
        name += "-0"
    name = _DNS_INVALID.sub("-", name)
    if len(name) > DNS1123_MAX:
        # The first character is alphanumeric, so something always remains.
        name = name[:DNS1123_MAX].rstrip("-")
    return name


def _alnum(char: str) -> bool:
    return "a" <= char <= "z" or "0" <= char <= "9"


def k8s_job_name(prefix: str, job_id: str) -> str:
    """A Kubernetes Job name: the sanitised prefix, ``-``, then the whole job id.

    Deterministic, so a retried create after a lost response hits the same
    name (and a 409) instead of making a duplicate.
    """
    if not re.fullmatch(r"[a-z0-9]+", job_id) or len(job_id) > DNS1123_MAX - 2:
        raise ValueError(f"job id {job_id!r} cannot be part of a Kubernetes name")
    room = DNS1123_MAX - len(job_id) - 1
    head = dns1123_name(prefix)[:room].rstrip("-")
    return f"{head}-{job_id}"


def vertex_display_name(name: str, index: int) -> str:
    """The display name of the ``index``-th job of a submission, <= 128 chars.

    ``<name>_<index>`` like the original's job names (without their
    timestamp: Vertex assigns unique job names itself). Control characters
    are replaced and the name is cut so the index always survives.
    """
    suffix = f"_{index}"
    clean = "".join(c if c.isprintable() else "_" for c in name) or "caliban"
    return clean[: VERTEX_DISPLAY_NAME_MAX - len(suffix)] + suffix


def default_xgroup_name(user: str, now: datetime) -> str:
    """The experiment group of a command run without ``--xgroup``."""
    return f"{user}-xgroup-{now:%Y-%m-%d-%H-%M-%S}"


def docker_repo_name(folder_name: str) -> str:
    """A Docker repository path component made from a project folder name.

    Docker allows ``[a-z0-9]`` runs joined by ``.``, ``_``, ``__`` or dashes;
    any other run of characters becomes one ``-``.
    """

    def separator(match: re.Match[str]) -> str:
        run = match.group(0)
        ok = run in (".", "_", "__") or set(run) == {"-"}
        return run if ok else "-"

    name = _DOCKER_SEPARATOR.sub(separator, folder_name.lower()).strip("._-")
    return name[:128].rstrip("._-") or "caliban-project"


# -- checks of user-given names ------------------------------------------------------------
#
# Each returns the name unchanged or raises ValidationError naming the flag, so a bad
# name is refused in one line before it reaches a path, a URL or a shell hint.

XGROUP_MAX = 128
_XGROUP = re.compile(rf"[A-Za-z0-9_][A-Za-z0-9._-]{{0,{XGROUP_MAX - 1}}}")

# The Docker reference grammar (distribution/reference): [host[:port]/]path[:tag][@digest].
_REF_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REF_HOST_PART = r"(?:[A-Za-z0-9]|[A-Za-z0-9][A-Za-z0-9-]*[A-Za-z0-9])"
_REF_HOST = rf"(?:{_REF_HOST_PART}(?:\.{_REF_HOST_PART})*|\[[0-9A-Fa-f:]+\])(?::[0-9]+)?"
_REF_TAG = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
_REF_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9A-Fa-f]{32,}"
_IMAGE_REF = re.compile(
    rf"(?:{_REF_HOST}/)?{_REF_COMPONENT}(?:/{_REF_COMPONENT})*(?::{_REF_TAG})?(?:@{_REF_DIGEST})?"
)
_IMAGE_NAME_MAX = 255  # the repository part, without tag and digest

# Google Cloud project ids: 6-30 characters, lowercase letters, digits and hyphens,
# a letter first and no hyphen last; old domain-scoped ids carry "domain:" in front.
_PROJECT_ID = re.compile(r"(?:[a-z0-9][a-z0-9.-]*[a-z0-9]:)?[a-z][a-z0-9-]{4,28}[a-z0-9]")
_REGION = re.compile(r"[a-z][a-z0-9]*(?:-[a-z0-9]+)+")


def _bad(flag: str, value: str, rule: str) -> ValidationError:
    shown = value if len(value) <= 80 else value[:79] + "…"
    return ValidationError(f"{flag} {shown!r}: {rule}")


def check_xgroup(name: str, flag: str = "--xgroup") -> str:
    """An experiment group name: 1-128 of ``[A-Za-z0-9._-]``, the first one a letter,
    a digit or ``_``.

    The name becomes a folder under ``logs/`` and is pasted into printed commands,
    so it may hold neither path separators, ``..``, spaces, newlines nor shell
    syntax, and must not start like a flag.
    """
    if not _XGROUP.fullmatch(name):
        raise _bad(
            flag,
            name,
            f"use 1 to {XGROUP_MAX} letters, digits, '.', '_' or '-', starting with a "
            "letter, digit or '_'",
        )
    return name


def check_image_ref(ref: str, flag: str) -> str:
    """A Docker image reference (``repo[:tag][@digest]``, or an image id)."""
    name = ref.partition("@")[0]
    if ":" in name.rpartition("/")[2]:
        name = name.rpartition(":")[0]
    if len(name) > _IMAGE_NAME_MAX or not _IMAGE_REF.fullmatch(ref):
        raise _bad(
            flag,
            ref,
            "not a Docker image reference (like registry.example/team/image:tag, lowercase "
            "path, no spaces)",
        )
    return ref


def check_project_id(project: str, flag: str = "--project_id") -> str:
    """A Google Cloud project id, which caliban puts into API URLs."""
    if not _PROJECT_ID.fullmatch(project):
        raise _bad(
            flag,
            project,
            "not a Google Cloud project id (6 to 30 lowercase letters, digits or hyphens, "
            "starting with a letter)",
        )
    return project


def check_region(region: str, flag: str = "--region") -> str:
    """A Google Cloud region or zone name (``us-central1``, ``europe-west4-a``)."""
    if not _REGION.fullmatch(region):
        raise _bad(flag, region, "not a Google Cloud region (like us-central1)")
    return region


def check_url(url: str, flag: str) -> str:
    """An http(s) base URL with a host."""
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        raise _bad(flag, url, "has an invalid port") from None
    if (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        or any(c.isspace() or not c.isprintable() for c in url)
    ):
        raise _bad(flag, url, "not an http(s) URL (like https://host[:port][/path])")
    if parts.query or parts.fragment:
        raise _bad(flag, url, "a base URL takes no query or fragment")
    return url
