"""Plain data shared by every layer: modes, platforms, job states, entrypoints.

Standard library only. Everything here is immutable and cheap to build, so the
pure modules (experiment, dockerfile, labels, ...) can pass it around freely.
"""

from __future__ import annotations

import enum
import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

from caliban.core.names import short_id

if sys.version_info >= (3, 11):
    from enum import StrEnum
else:  # Python 3.10 (Ubuntu 22.04): the same behaviour, spelled out

    class StrEnum(str, enum.Enum):
        """An enum whose members are their string values in every context."""

        def __str__(self) -> str:
            return str(self.value)

        def __format__(self, spec: str) -> str:
            return str(self.value).__format__(spec)


class JobMode(StrEnum):
    """Whether a job's image and container are set up for GPUs."""

    CPU = "cpu"
    GPU = "gpu"

    @classmethod
    def parse(cls, text: str) -> JobMode:
        """Accept any case and surrounding whitespace, as the original did."""
        try:
            return cls(text.strip().lower())
        except ValueError:
            raise ValueError(f"unknown job mode {text!r}: use 'cpu' or 'gpu'") from None


class Platform(StrEnum):
    """Where a job runs: this machine's Docker engine, Vertex AI, or a Kubernetes cluster."""

    LOCAL = "local"
    VERTEX = "vertex"
    GKE = "gke"
    SLURM = "slurm"


class JobState(StrEnum):
    """One state machine for every platform.

    PLANNED is written before any side effect: a PLANNED job may or may not exist
    on its platform and is reconciled (looked up by its job id) before it is
    sent again. UNKNOWN means the last lookup failed; it is *not* terminal and
    the next refresh tries again. CANCELLING: a cancel was accepted but the
    platform ends jobs asynchronously (Vertex), so the job may still finish; it
    is refreshed until the platform says how it ended. QUEUED: accepted by the
    platform but held by its queue (a Kubernetes Job that Kueue has not admitted:
    suspended, no pods), as opposed to SUBMITTED, whose pods exist and wait for
    a node or an image.
    """

    PLANNED = "PLANNED"
    SUBMITTED = "SUBMITTED"
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    STOPPED = "STOPPED"
    UNKNOWN = "UNKNOWN"
    CANCELLING = "CANCELLING"

    @property
    def terminal(self) -> bool:
        return self in _TERMINAL

    @property
    def active(self) -> bool:
        """Submitted to (or running on) a platform and not finished."""
        return self in (
            JobState.SUBMITTED,
            JobState.QUEUED,
            JobState.RUNNING,
            JobState.UNKNOWN,
            JobState.CANCELLING,
        )


_TERMINAL = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.STOPPED})


class EntryKind(StrEnum):
    MODULE = "module"  # python3 -m pkg.mod
    SCRIPT = "script"  # python3 path/to/file.py
    FILE = "file"  # /bin/bash path/to/file


@dataclass(frozen=True)
class Entrypoint:
    """What the image runs, and which part of the project folder it needs.

    ``package_path`` is the first path component of the target (``trainer`` for
    ``trainer/train.py`` or ``trainer.train``), or ``.`` for a file at the root
    of the project, in which case the whole folder is copied.
    """

    kind: EntryKind
    target: str
    package_path: str

    @property
    def command(self) -> tuple[str, ...]:
        if self.kind is EntryKind.MODULE:
            return ("python3", "-m", self.target)
        if self.kind is EntryKind.SCRIPT:
            return ("python3", self.target)
        return ("/bin/bash", self.target)

    @property
    def display(self) -> str:
        return self.target


class _SpecJSON:
    """A spec not decoded yet."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


class _DecodedOnRead:
    """The ``spec`` field of :class:`JobRecord`: decoded from JSON when first read.

    A data descriptor, so it sees every read and write of the attribute; the value
    lives in the instance ``__dict__`` under the same name. Reading it on the class
    raises AttributeError, which tells dataclasses the field has no default.
    """

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: object, owner: type | None = None) -> dict[str, object]:
        if obj is None:
            raise AttributeError(self.name)
        value = obj.__dict__[self.name]
        if isinstance(value, _SpecJSON):
            # Two threads may both decode: harmless, the results are equal.
            value = obj.__dict__[self.name] = json.loads(value.text)
        return value  # type: ignore[no-any-return]

    def __set__(self, obj: object, value: dict[str, object]) -> None:
        obj.__dict__[self.name] = value
        # Any text kept for the old value no longer says the same.
        obj.__dict__.pop(_SPEC_TEXT, None)


# Where a JobRecord keeps its spec's JSON text, when it has it (see JobRecord.spec_json).
_SPEC_TEXT = "_spec_json"


@dataclass(frozen=True)
class JobRecord:
    """One job as the store knows it.

    ``spec`` is what the platform was (or will be) asked to run: the container
    config for local jobs, the CustomJob body for Vertex, the Job manifest for
    Kubernetes. ``details`` holds where it went (region, cluster, namespace)
    and what the platform called it (``platform_id``).
    """

    job_id: str
    platform: Platform
    state: JobState
    xgroup: str
    experiment_id: int
    index: int
    args: tuple[str, ...]
    kwargs: dict[str, object]
    image: str
    if TYPE_CHECKING:
        spec: dict[str, object]
    else:
        spec: dict[str, object] = _DecodedOnRead()
    details: dict[str, object]
    platform_id: str | None
    exit_code: int | None
    message: str | None
    log_path: str | None
    user: str
    created: str
    updated: str
    container_spec_id: int = 0
    provenance_id: int | None = None
    #: Where the job's code came from (caliban.adapters.provenance.record), if recorded.
    provenance: dict[str, object] | None = None

    @classmethod
    def with_spec_json(
        cls, spec_json: str, *, spec: dict[str, object] | None = None, **fields: Any
    ) -> JobRecord:
        """A record whose spec is ``spec_json``, JSON text, and stays so until something
        reads it; or, given ``spec`` (the object that text was made from), that object.

        The store lists thousands of jobs for ``status``, which never looks at their
        specs; decoding them all cost more than the query. Either way the record keeps
        the text for :meth:`spec_json`.
        """
        record = cls(spec={}, **fields)
        record.__dict__["spec"] = _SpecJSON(spec_json) if spec is None else spec
        record.__dict__[_SPEC_TEXT] = spec_json
        return record

    @classmethod
    def from_row(cls, spec_json: str, fields: dict[str, Any]) -> JobRecord:
        """:meth:`with_spec_json` for a row the store wrote, ``fields`` every field but
        ``spec``, already of the right types.

        Fills the instance dict directly: a frozen dataclass's ``__init__`` sets each of
        the 21 fields through ``object.__setattr__``, which was half the cost of listing
        10,000 jobs. The record is the same as the constructor's (fields, equality, hash).
        """
        record = object.__new__(cls)
        fields["spec"] = _SpecJSON(spec_json)
        fields[_SPEC_TEXT] = spec_json
        record.__dict__.update(fields)
        return record

    def with_changes(self, **changes: Any) -> JobRecord:
        """This record with ``changes`` to fields other than its spec, made by copying
        its fields rather than running the constructor again (a sweep's end makes
        hundreds). The copy's spec is this record's JSON text, decoded when first
        read, like the spec of a record read from the store."""
        unknown = changes.keys() - _CHANGEABLE
        if unknown:
            raise TypeError(f"not a field of JobRecord other than spec: {sorted(unknown)}")
        kept = {k: v for k, v in self.__dict__.items() if k not in ("spec", _SPEC_TEXT)}
        return type(self).from_row(self.spec_json(), {**kept, **changes})

    def spec_json(self) -> str:
        """The spec as compact JSON text: the store's own text when this record was
        read from it or made along with writing it (a remote platform sends it as the
        request body, unchanged and without serialising it again), else serialised now.
        """
        text = self.__dict__.get(_SPEC_TEXT)
        if text is None:
            text = json.dumps(self.spec, separators=(",", ":"))
        return str(text)

    @property
    def short_id(self) -> str:
        return short_id(self.job_id)


_CHANGEABLE = frozenset(f.name for f in fields(JobRecord)) - {"spec"}


@dataclass(frozen=True)
class Update:
    """One change of a job's state, as a platform reports it and the store records it.

    Every platform answers launches, lookups, refreshes and cancels with these.
    ``details`` are merged into the job's recorded details (where it went, a
    console link); ``url`` is only shown to the user.
    """

    job_id: str
    state: JobState
    exit_code: int | None = None
    message: str | None = None
    platform_id: str | None = None
    details: Mapping[str, object] = field(default_factory=dict)
    url: str | None = None

    def row(
        self,
    ) -> tuple[str, JobState, int | None, str | None, str | None, dict[str, object] | None]:
        """The store's transition row for this update."""
        return (
            self.job_id,
            self.state,
            self.exit_code,
            self.message,
            self.platform_id,
            dict(self.details) if self.details else None,
        )
