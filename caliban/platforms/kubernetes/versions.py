"""Which Kubernetes versions caliban's Jobs need, and the check against a server. Pure.

A feature an API server does not have is not refused: an unknown field of a create is
dropped (with at most a warning header), so a Job asking for a newer behaviour quietly
gets an older one. caliban therefore reads the server's version (``/version``) once per
cluster and refuses, before anything is built or recorded, to send a Job that uses a
field its server would drop. The table says which field needs which minor version, and
why it matters to caliban.

``SUPPORTED`` is the range the manifests are checked against (the tests validate every
manifest against the OpenAPI schema of its oldest and newest minor). A server outside
it that has every feature a submission uses is accepted with a warning.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from caliban.errors import ValidationError

# Oldest and newest minor versions of Kubernetes 1.x caliban is tested against.
SUPPORTED = (27, 37)
OLDEST, NEWEST = SUPPORTED
# An Indexed sweep needs more than a Job per experiment (see FEATURES).
OLDEST_INDEXED = 29


def _spec(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    spec = obj.get("spec") if obj.get("kind") == "Job" else None
    return spec if isinstance(spec, Mapping) else {}


def _ignores_disruptions(obj: Mapping[str, Any]) -> bool:
    rules = (_spec(obj).get("podFailurePolicy") or {}).get("rules") or []
    return any(
        c.get("type") == "DisruptionTarget"
        for r in rules
        if isinstance(r, Mapping)
        for c in r.get("onPodConditions") or []
        if isinstance(c, Mapping)
    )


def _indexed(obj: Mapping[str, Any]) -> bool:
    return _spec(obj).get("completionMode") == "Indexed"


@dataclass(frozen=True)
class Feature:
    name: str
    minor: int  # first 1.x release where it is on by default
    why: str  # what goes wrong on an older server
    used: Callable[[Mapping[str, Any]], bool]
    indexed_only: bool = False  # only --indexed sweeps use it


FEATURES: tuple[Feature, ...] = (
    Feature(
        "podFailurePolicy",
        26,
        "older servers drop spec.podFailurePolicy (alpha, off by default in 1.25), so a "
        "pod killed by a spot reclaim or a node drain counts as a failed experiment",
        lambda obj: "podFailurePolicy" in _spec(obj),
    ),
    Feature(
        "the DisruptionTarget pod condition",
        26,
        "before 1.26 pods evicted by a disruption carry no DisruptionTarget condition, so "
        "the rule that ignores them never matches",
        _ignores_disruptions,
    ),
    Feature(
        "the batch.kubernetes.io/job-completion-index pod label",
        28,
        "caliban finds each experiment's pod (status, logs, stop) by this label, which "
        "older servers only put in an annotation",
        _indexed,
        indexed_only=True,
    ),
    Feature(
        "backoffLimitPerIndex",
        OLDEST_INDEXED,
        "older servers drop spec.backoffLimitPerIndex (alpha, off by default in 1.28): a "
        "failed experiment is retried under the Job-wide backoffLimit, one failure can end "
        "the whole sweep, and status.failedIndexes, from which each experiment's state is "
        "read, stays empty",
        lambda obj: "backoffLimitPerIndex" in _spec(obj),
        indexed_only=True,
    ),
)


@dataclass(frozen=True, order=True)
class ServerVersion:
    major: int
    minor: int
    git_version: str = ""

    def __str__(self) -> str:
        return self.git_version or f"v{self.major}.{self.minor}"


_DIGITS = re.compile(r"[0-9]+")
_GIT = re.compile(r"v?([0-9]+)\.([0-9]+)")


def parse_version(body: Mapping[str, Any]) -> ServerVersion:
    """The ``/version`` answer of an API server as numbers.

    Managed clusters report minors like ``"31+"`` (GKE, EKS); ``gitVersion`` is the
    fallback when major/minor are missing or empty.
    """
    git = str(body.get("gitVersion") or "")
    major = _DIGITS.match(str(body.get("major") or ""))
    minor = _DIGITS.match(str(body.get("minor") or ""))
    if major and minor:
        return ServerVersion(int(major.group()), int(minor.group()), git)
    found = _GIT.match(git)
    if found:
        return ServerVersion(int(found.group(1)), int(found.group(2)), git)
    raise ValueError(f"not a Kubernetes version: {dict(body)!r}")


def features_of(objects: Iterable[Mapping[str, Any]]) -> list[Feature]:
    """The features of :data:`FEATURES` the objects use, in table order."""
    objs = list(objects)
    return [f for f in FEATURES if any(f.used(o) for o in objs)]


def check_server(
    version: ServerVersion, objects: Iterable[Mapping[str, Any]], *, where: str
) -> str | None:
    """Refuse (ValidationError) objects that use a feature ``version`` lacks.

    Returns a warning to show when the server is outside :data:`SUPPORTED` but has
    every feature used, else None.
    """
    if version.major != 1:
        raise ValidationError(f"{where} runs Kubernetes {version}; caliban only knows 1.x")
    used = features_of(objects)
    missing = [f for f in used if version.minor < f.minor]
    if missing:
        # The newest requirement is the one to name: meeting it meets the others.
        first = max(missing, key=lambda f: f.minor)
        only_indexed = all(f.indexed_only for f in missing)
        raise ValidationError(
            f"{where} runs Kubernetes {version}; "
            + ("an Indexed Job needs" if only_indexed else "these Jobs need")
            + f" 1.{first.minor} or newer ({first.name})",
            hint="submit without --indexed: one Job per experiment works there"
            if only_indexed
            else "upgrade the cluster",
        )
    if not OLDEST <= version.minor <= NEWEST:
        return f"{where} runs Kubernetes {version}; caliban is tested with 1.{OLDEST} to 1.{NEWEST}"
    return None


__all__ = [
    "FEATURES",
    "NEWEST",
    "OLDEST",
    "OLDEST_INDEXED",
    "SUPPORTED",
    "Feature",
    "ServerVersion",
    "check_server",
    "features_of",
    "parse_version",
]
