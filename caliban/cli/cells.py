"""Cells of the job listings that the plain and the rich table both show."""

from __future__ import annotations

from caliban.spec import JobRecord


def platform_cell(job: JobRecord) -> str:
    """The platform, and for a job of a capacity ladder (docs/capacity.md) which
    attempt it is and where it went: ``vertex #2 europe-west4 standard``."""
    d = job.details
    if "attempt" not in d:
        return job.platform.value
    where = " ".join(str(d[k]) for k in ("region", "rung") if d.get(k))
    return f"{job.platform.value} #{d['attempt']} {where}".rstrip()
