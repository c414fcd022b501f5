"""The history of every build, experiment and job, in one SQLite file.

aiosqlite runs each connection on its own thread, and every task using a
connection shares its transaction. So the store keeps exactly one connection
and one lock: every write is a short ``BEGIN IMMEDIATE ... COMMIT`` under that
lock, with COMMIT/ROLLBACK shielded from cancellation so a Ctrl-C can never
leave a transaction half open. Other processes (a second ``caliban status``)
are fine: WAL lets them read while we write, and BEGIN IMMEDIATE plus the busy
timeout makes writers queue instead of failing.

The schema is versioned with ``PRAGMA user_version``; :data:`MIGRATIONS` only
ever grows.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import socket
import sqlite3
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Literal

import aiosqlite
import anyio

from caliban.adapters import filemodes
from caliban.errors import StoreError, StoreUnwritable
from caliban.spec import JobRecord, JobState, Platform, Update

MIGRATIONS: list[list[str]] = [
    # 1: the first schema.
    [
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        """CREATE TABLE xgroups (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            user TEXT NOT NULL,
            created TEXT NOT NULL)""",
        """CREATE TABLE container_specs (
            id INTEGER PRIMARY KEY,
            key TEXT NOT NULL UNIQUE,
            image TEXT NOT NULL,
            spec TEXT NOT NULL,
            user TEXT NOT NULL,
            created TEXT NOT NULL)""",
        """CREATE TABLE experiments (
            id INTEGER PRIMARY KEY,
            xgroup_id INTEGER NOT NULL REFERENCES xgroups(id),
            container_spec_id INTEGER NOT NULL REFERENCES container_specs(id),
            idx INTEGER NOT NULL,
            args TEXT NOT NULL,
            kwargs TEXT NOT NULL,
            key TEXT NOT NULL,
            created TEXT NOT NULL,
            UNIQUE (xgroup_id, container_spec_id, key))""",
        """CREATE TABLE jobs (
            id TEXT PRIMARY KEY,
            experiment_id INTEGER NOT NULL REFERENCES experiments(id),
            platform TEXT NOT NULL,
            state TEXT NOT NULL,
            image TEXT NOT NULL,
            spec TEXT NOT NULL,
            details TEXT NOT NULL DEFAULT '{}',
            platform_id TEXT,
            exit_code INTEGER,
            message TEXT,
            log_path TEXT,
            user TEXT NOT NULL,
            created TEXT NOT NULL,
            updated TEXT NOT NULL)""",
        "CREATE INDEX jobs_by_experiment ON jobs (experiment_id, platform, created)",
        "CREATE INDEX jobs_by_state ON jobs (state)",
        "CREATE INDEX jobs_by_created ON jobs (created)",
        """CREATE TABLE job_events (
            id INTEGER PRIMARY KEY,
            job_id TEXT NOT NULL REFERENCES jobs(id),
            at TEXT NOT NULL,
            state TEXT NOT NULL,
            detail TEXT)""",
        "CREATE INDEX job_events_by_job ON job_events (job_id, id)",
    ],
    # 2: runs own the jobs they launch, so two processes never run the same job.
    [
        """CREATE TABLE runs (
            id TEXT PRIMARY KEY,
            pid INTEGER NOT NULL,
            host TEXT NOT NULL,
            started TEXT NOT NULL,
            lease_until TEXT NOT NULL,
            ended TEXT)""",
        "ALTER TABLE jobs ADD COLUMN claimed_by TEXT REFERENCES runs(id)",
        "CREATE INDEX jobs_by_claim ON jobs (claimed_by)",
    ],
    # 3: where each job's code came from (git, image digests, command line), kept
    # once per distinct record and referenced by the jobs planned with it.
    [
        """CREATE TABLE provenance (
            id INTEGER PRIMARY KEY,
            key TEXT NOT NULL UNIQUE,
            data TEXT NOT NULL,
            created TEXT NOT NULL)""",
        "ALTER TABLE jobs ADD COLUMN provenance_id INTEGER REFERENCES provenance(id)",
    ],
    # 4: the metrics each ended job reported, read from its output once
    # (`caliban results`); metrics NULL: the job printed none.
    [
        """CREATE TABLE job_metrics (
            job_id TEXT PRIMARY KEY REFERENCES jobs(id),
            metrics TEXT,
            read TEXT NOT NULL)""",
    ],
]

SCHEMA_VERSION = len(MIGRATIONS)


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def _later(seconds: float) -> str:
    return (datetime.now(timezone.utc) + timedelta(seconds=seconds)).isoformat(
        timespec="microseconds"
    )


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    return True


def default_home() -> Path:
    home = os.environ.get("CALIBAN_HOME")
    return Path(home).expanduser() if home else Path.home() / ".caliban"


# json.dumps with any option builds a new encoder per call: planning 500 jobs dumps
# five values each, and the encoder's construction was a third of that time.
_ENCODER = json.JSONEncoder(separators=(",", ":"), default=str)


def _dumps(value: object) -> str:
    return _ENCODER.encode(value)


@dataclass(frozen=True)
class PlanItem:
    """One expanded experiment and the job that would run it."""

    index: int
    args: tuple[str, ...]
    kwargs: dict[str, object]
    job_id: str
    image: str
    spec: dict[str, object]
    details: dict[str, object]
    log_path: str | None = None
    provenance_id: int | None = None

    @classmethod
    def again(
        cls,
        old: JobRecord,
        *,
        job_id: str,
        spec: dict[str, object],
        details: dict[str, object],
        log_path: str | None = None,
    ) -> PlanItem:
        """A new job for the experiment ``old`` ran (resubmit), with its spec
        re-addressed to ``job_id``."""
        return cls(
            index=old.index,
            args=old.args,
            kwargs=old.kwargs,
            job_id=job_id,
            image=old.image,
            spec=spec,
            details=details,
            log_path=log_path,
            # The same image and arguments: the code came from where it did then.
            provenance_id=old.provenance_id,
        )


Action = Literal["new", "reconcile", "active", "done"]


@dataclass(frozen=True)
class Planned:
    """What planning decided for one experiment.

    ``new``: a fresh PLANNED job to launch. ``reconcile``: a PLANNED job left by
    an earlier run that may or may not exist on its platform. ``active`` and
    ``done``: already submitted or succeeded, nothing to do.
    """

    action: Action
    job: JobRecord


@dataclass(frozen=True)
class RunOwner:
    """A live process that holds claims on jobs: who, where, since when."""

    run_id: str
    pid: int
    host: str
    started: str


@dataclass(frozen=True)
class Claim:
    """What :meth:`Store.claim` got: the jobs now ours, and the live owners of the rest."""

    claimed: frozenset[str]
    held: dict[str, RunOwner]


_JOB_COLUMNS = """
    j.id, j.platform, j.state, x.name, e.id, e.idx, e.args, e.kwargs, j.image, j.spec,
    j.details, j.platform_id, j.exit_code, j.message, j.log_path, j.user, j.created,
    j.updated, e.container_spec_id, j.provenance_id, p.data
"""
_JOB_FROM = """
    FROM jobs j JOIN experiments e ON e.id = j.experiment_id JOIN xgroups x ON x.id = e.xgroup_id
    LEFT JOIN provenance p ON p.id = j.provenance_id
"""


@functools.lru_cache(maxsize=64)
def _provenance(text: str) -> dict[str, object]:
    # A sweep's jobs share one provenance record: a 10,000-job listing decodes it once.
    # The dict is shared between those records; nothing modifies it.
    data: dict[str, object] = json.loads(text)
    return data


_PLATFORMS = {p.value: p for p in Platform}
_STATES = {s.value: s for s in JobState}
_loads = json.JSONDecoder().decode


def _record(row: Sequence[Any]) -> JobRecord:
    # The spec is the biggest column and listing jobs rarely needs it: decoded on first
    # read. Enum members by dict lookup: ``JobState(value)`` costs a function call chain.
    return JobRecord.from_row(
        row[9],
        {
            "job_id": row[0],
            "platform": _PLATFORMS[row[1]],
            "state": _STATES[row[2]],
            "xgroup": row[3],
            "experiment_id": row[4],
            "index": row[5],
            "args": tuple(_loads(row[6])),
            "kwargs": dict(_loads(row[7])),
            "image": row[8],
            "details": _loads(row[10]),
            "platform_id": row[11],
            "exit_code": row[12],
            "message": row[13],
            "log_path": row[14],
            "user": row[15],
            "created": row[16],
            "updated": row[17],
            "container_spec_id": row[18],
            "provenance_id": row[19],
            "provenance": _provenance(row[20]) if row[20] else None,
        },
    )


# SQLite caps a statement's bound parameters: id lists are looked up this many at a time.
_IN_CHUNK = 500


async def _rows_in(db: aiosqlite.Connection, sql: str, ids: Sequence[str]) -> list[Sequence[Any]]:
    """The rows of ``sql`` (whose ``{ids}`` is replaced by the placeholders) for every
    id of ``ids``, asked :data:`_IN_CHUNK` ids at a time."""
    rows: list[Sequence[Any]] = []
    for first in range(0, len(ids), _IN_CHUNK):
        chunk = ids[first : first + _IN_CHUNK]
        async with db.execute(sql.format(ids=",".join("?" * len(chunk))), chunk) as cur:
            rows += await cur.fetchall()
    return rows


# How long opening the store waits for other processes that hold it.
OPEN_WAIT_SECONDS = 30.0


class Store:
    """Async context manager around the history database."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._db: aiosqlite.Connection | None = None
        self._lock = anyio.Lock()
        self.store_id = ""

    async def __aenter__(self) -> Store:
        try:
            await anyio.to_thread.run_sync(filemodes.secure_store, self.path)
            self._db = await aiosqlite.connect(self.path, isolation_level=None, timeout=30)
            for pragma in ("busy_timeout=30000", "synchronous=NORMAL", "foreign_keys=ON"):
                await self._db.execute(f"PRAGMA {pragma}")
            await self._enter_wal()
            await self._migrate()
            self.store_id = await self._ensure_store_id()
        except (sqlite3.Error, OSError) as exc:
            await self.aclose()
            raise StoreError(f"cannot open the history store {self.path}: {exc}") from exc
        except BaseException:
            await self.aclose()
            raise
        return self

    async def _enter_wal(self) -> None:
        """Switch a new store to WAL, waiting out other processes doing the same.

        The switch needs a write lock on a file still in rollback mode, and
        SQLite answers "database is locked" at once instead of calling the busy
        handler when another connection holds it (waiting could deadlock). Two
        caliban processes opening a brand-new store race exactly here, so the
        loser retries for as long as the busy timeout would have waited.
        """
        deadline = anyio.current_time() + OPEN_WAIT_SECONDS
        delay = 0.005
        while True:
            try:
                await self.db.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or anyio.current_time() >= deadline:
                    raise
            await anyio.sleep(delay)
            delay = min(delay * 2, 0.2)

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._db is not None:
            db, self._db = self._db, None
            with anyio.CancelScope(shield=True):
                await db.close()

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise StoreError("the history store is not open")
        return self._db

    @asynccontextmanager
    async def _tx(self) -> AsyncIterator[aiosqlite.Connection]:
        async with self._lock:
            db = self.db
            try:
                # Shielded: a cancelled await would not stop the statement on
                # aiosqlite's thread, and the transaction would stay open with
                # nobody to end it. The cancellation lands right after instead,
                # inside the body, where ROLLBACK handles it.
                with anyio.CancelScope(shield=True):
                    await db.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise StoreError(f"cannot write to {self.path}: {exc}") from exc
            try:
                yield db
            except BaseException as exc:
                with anyio.CancelScope(shield=True), contextlib.suppress(sqlite3.Error):
                    await db.execute("ROLLBACK")
                # A statement that fails mid-transaction (disk full, the file made
                # read-only under a running sweep) is the store's error, not a traceback.
                if isinstance(exc, sqlite3.Error):
                    raise StoreError(f"cannot write to {self.path}: {exc}") from exc
                raise
            else:
                with anyio.CancelScope(shield=True):
                    try:
                        await db.execute("COMMIT")
                    except sqlite3.Error as exc:
                        await db.execute("ROLLBACK")
                        raise StoreError(f"cannot write to {self.path}: {exc}") from exc

    async def _migrate(self) -> None:
        async with self.db.execute("PRAGMA user_version") as cur:
            row = await cur.fetchone()
        version = int(row[0]) if row else 0
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path} was written by a newer caliban (schema {version}, "
                f"this one knows {SCHEMA_VERSION}); upgrade caliban"
            )
        if version == SCHEMA_VERSION:
            return
        # Every step left in one transaction: a new store is made in one go (each
        # transaction's statements are round trips to aiosqlite's thread), and a
        # failed step leaves the store as it was.
        async with self._tx() as db:
            # Read again under the write lock: two caliban processes opening a new
            # store at once both saw the old version, and only the first may migrate
            # (the second would find its tables already made).
            async with db.execute("PRAGMA user_version") as cur:
                row = await cur.fetchone()
            now_at = int(row[0]) if row else 0
            if now_at >= SCHEMA_VERSION:
                return
            for number in range(now_at, SCHEMA_VERSION):
                for statement in MIGRATIONS[number]:
                    await db.execute(statement)
            # PRAGMA takes no parameters; the value is our own integer.
            await db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    async def _ensure_store_id(self) -> str:
        async with self._tx() as db:
            async with db.execute("SELECT value FROM meta WHERE key = 'store_id'") as cur:
                row = await cur.fetchone()
            if row:
                return str(row[0])
            store_id = uuid.uuid4().hex[:12]
            await db.execute("INSERT INTO meta (key, value) VALUES ('store_id', ?)", (store_id,))
            return store_id

    # -- writes -------------------------------------------------------------------------

    async def xgroup(self, name: str, user: str) -> int:
        async with self._tx() as db:
            await db.execute(
                "INSERT OR IGNORE INTO xgroups (name, user, created) VALUES (?, ?, ?)",
                (name, user, now()),
            )
            async with db.execute("SELECT id FROM xgroups WHERE name = ?", (name,)) as cur:
                row = await cur.fetchone()
        assert row is not None
        return int(row[0])

    async def container_spec(self, key: str, image: str, spec: dict[str, object], user: str) -> int:
        async with self._tx() as db:
            await db.execute(
                "INSERT OR IGNORE INTO container_specs (key, image, spec, user, created)"
                " VALUES (?, ?, ?, ?, ?)",
                (key, image, json.dumps(spec, sort_keys=True), user, now()),
            )
            async with db.execute("SELECT id FROM container_specs WHERE key = ?", (key,)) as cur:
                row = await cur.fetchone()
        assert row is not None
        return int(row[0])

    async def provenance(self, data: dict[str, object]) -> int:
        """The id of this provenance record, stored once however many sweeps share it."""
        text = json.dumps(data, sort_keys=True)
        key = hashlib.sha256(text.encode()).hexdigest()
        async with self._tx() as db:
            await db.execute(
                "INSERT OR IGNORE INTO provenance (key, data, created) VALUES (?, ?, ?)",
                (key, text, now()),
            )
            async with db.execute("SELECT id FROM provenance WHERE key = ?", (key,)) as cur:
                row = await cur.fetchone()
        assert row is not None
        return int(row[0])

    async def plan(
        self,
        *,
        xgroup_id: int,
        container_spec_id: int,
        platform: Platform,
        user: str,
        items: Iterable[PlanItem],
        batch: int = 500,
        claim_for: str | None = None,
    ) -> list[Planned]:
        """Record intent for every experiment before anything is launched.

        Re-planning the same experiments in the same group is how a crashed or
        interrupted sweep resumes: succeeded and active jobs are left alone,
        failed and stopped ones get a new job, PLANNED ones are handed back for
        reconciliation. Batches are written one transaction each, and a
        cancellation (Ctrl-C, SIGTERM) lands between them; whatever stops the
        planning, the jobs it recorded become STOPPED, not PLANNED jobs that
        nothing would launch, so resubmit (or the same command) runs them.

        ``claim_for``: the open run (:meth:`open_run`) that will launch the new
        jobs holds them from the start, as :meth:`claim` would make them its own,
        so its claim does not write each of them again.
        """
        seen: list[str] = []

        def noted(source: Iterable[PlanItem]) -> Iterator[PlanItem]:
            for item in source:
                seen.append(item.job_id)
                yield item

        try:
            return await self._plan_items(
                xgroup_id=xgroup_id,
                container_spec_id=container_spec_id,
                platform=platform,
                user=user,
                items=noted(items),
                batch=batch,
                claim_for=claim_for,
            )
        except BaseException:
            if seen:
                # Ids never written match no row: harmless.
                stopped = [
                    (job_id, JobState.STOPPED, None, "interrupted while planning", None, None)
                    for job_id in seen
                ]
                # A store too broken to record this must not hide the first error.
                with anyio.CancelScope(shield=True), suppress(StoreError, sqlite3.Error):
                    await self.transitions(stopped)
            raise

    async def _plan_items(
        self,
        *,
        xgroup_id: int,
        container_spec_id: int,
        platform: Platform,
        user: str,
        items: Iterable[PlanItem],
        batch: int = 500,
        claim_for: str | None = None,
    ) -> list[Planned]:
        """:meth:`plan` without the clean-up when interrupted."""
        out: list[Planned] = []
        pending: list[tuple[str, PlanItem]] = []
        # A config may list the same experiment twice on purpose (repeats):
        # the n-th copy is its own experiment, and stays so on a re-run.
        occurrences: Counter[str] = Counter()
        for item in items:
            base = hashlib.sha256(
                _dumps([list(item.args), list(item.kwargs.items())]).encode()
            ).hexdigest()
            occurrences[base] += 1
            n = occurrences[base]
            pending.append((base if n == 1 else f"{base}#{n}", item))
            if len(pending) >= batch:
                out.extend(
                    await self._plan_batch(
                        xgroup_id, container_spec_id, platform, user, pending, claim_for
                    )
                )
                pending = []
        if pending:
            out.extend(
                await self._plan_batch(
                    xgroup_id, container_spec_id, platform, user, pending, claim_for
                )
            )
        return out

    async def check_writable(self) -> None:
        """Fail now, before a long build, if the history cannot be written later."""
        async with self._lock:
            db = self.db
            with anyio.CancelScope(shield=True):
                try:
                    await db.execute("BEGIN IMMEDIATE")
                except sqlite3.Error as exc:
                    raise StoreUnwritable(
                        f"cannot write to the history store {self.path}: {exc}"
                    ) from None
                try:
                    # BEGIN alone succeeds on a read-only file; a real write does not.
                    await db.execute("UPDATE meta SET value = value WHERE key = 'store_id'")
                except sqlite3.Error as exc:
                    raise StoreUnwritable(
                        f"cannot write to the history store {self.path}: {exc}",
                        hint="make it writable, or point $CALIBAN_HOME at a writable folder",
                    ) from None
                finally:
                    await db.execute("ROLLBACK")

    async def _plan_batch(
        self,
        xgroup_id: int,
        container_spec_id: int,
        platform: Platform,
        user: str,
        items: list[tuple[str, PlanItem]],
        claim_for: str | None,
    ) -> list[Planned]:
        # Set-based: a handful of statements per batch instead of several per
        # job, since every statement is a round trip to aiosqlite's thread.
        stamp = now()
        keys = [key for key, _ in items]
        marks = ",".join("?" * len(keys))
        scope = (xgroup_id, container_spec_id)
        async with self._tx() as db:
            await db.executemany(
                "INSERT OR IGNORE INTO experiments"
                " (xgroup_id, container_spec_id, idx, args, kwargs, key, created)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (*scope, item.index, _dumps(list(item.args)), _dumps(item.kwargs), key, stamp)
                    for key, item in items
                ],
            )
            async with db.execute(
                "SELECT key, id, idx, args, kwargs FROM experiments"
                " WHERE xgroup_id = ? AND container_spec_id = ?"
                f" AND key IN ({marks})",
                (*scope, *keys),
            ) as cur:
                stored = {str(row[0]): row[1:] for row in await cur.fetchall()}
            experiment_of = {key: int(row[0]) for key, row in stored.items()}
            # The latest job of each experiment on this platform, if any.
            latest: dict[int, tuple[str, JobState]] = {}
            async with db.execute(
                "SELECT experiment_id, id, state FROM jobs"
                f" WHERE platform = ? AND experiment_id IN ({marks})"
                " ORDER BY created, rowid",
                (platform.value, *experiment_of.values()),
            ) as cur:
                for experiment_id, job_id, state in await cur.fetchall():
                    latest[int(experiment_id)] = (str(job_id), JobState(state))
            decided: list[tuple[Action, str]] = []
            fresh: list[tuple[PlanItem, int]] = []
            fresh_keys: list[str] = []
            for key, item in items:
                experiment_id = experiment_of[key]
                job_id, state = latest.get(experiment_id, (item.job_id, None))
                if state is None or state in (JobState.FAILED, JobState.STOPPED):
                    fresh.append((item, experiment_id))
                    fresh_keys.append(key)
                    decided.append(("new", item.job_id))
                elif state is JobState.PLANNED:
                    decided.append(("reconcile", job_id))
                elif state is JobState.SUCCEEDED:
                    decided.append(("done", job_id))
                else:
                    decided.append(("active", job_id))
            texts = await self._insert_jobs(db, fresh, platform, user, stamp, claim_for)
            context = await self._record_context(db, xgroup_id, {i.provenance_id for i, _ in fresh})
        # The new jobs are made from what was just written, as _record would read them
        # back (the experiment's own columns, the details decoded from their text), with
        # the platform's spec object and its text: reading 500 rows back cost more than
        # writing them. Jobs of earlier runs are read.
        xgroup_name, provenance_of = context
        records: dict[str, JobRecord] = {}
        for (item, experiment_id), key, (spec_text, details_text) in zip(
            fresh, fresh_keys, texts, strict=True
        ):
            _, idx, args, kwargs = stored[key]
            records[item.job_id] = JobRecord.with_spec_json(
                spec_text,
                spec=item.spec,
                job_id=item.job_id,
                platform=platform,
                state=JobState.PLANNED,
                xgroup=xgroup_name,
                experiment_id=experiment_id,
                index=int(idx),
                args=tuple(json.loads(args)),
                kwargs=dict(json.loads(kwargs)),
                image=item.image,
                details=json.loads(details_text),
                platform_id=None,
                exit_code=None,
                message=None,
                log_path=item.log_path,
                user=user,
                created=stamp,
                updated=stamp,
                container_spec_id=container_spec_id,
                provenance_id=item.provenance_id,
                provenance=provenance_of.get(item.provenance_id),
            )
        earlier = [job_id for _, job_id in decided if job_id not in records]
        if earlier:
            records.update({r.job_id: r for r in await self.jobs(job_ids=earlier)})
        return [Planned(action, records[job_id]) for action, job_id in decided]

    @staticmethod
    async def _insert_jobs(
        db: aiosqlite.Connection,
        jobs: Sequence[tuple[PlanItem, int]],
        platform: Platform,
        user: str,
        stamp: str,
        claimed_by: str | None = None,
    ) -> list[tuple[str, str]]:
        """Insert PLANNED jobs; returns the JSON text of each one's spec and details."""
        if not jobs:
            return []
        texts = [(_dumps(item.spec), _dumps(item.details)) for item, _ in jobs]
        await db.executemany(
            "INSERT INTO jobs (id, experiment_id, platform, state, image, spec, details,"
            " log_path, user, created, updated, provenance_id, claimed_by)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    item.job_id,
                    experiment_id,
                    platform.value,
                    JobState.PLANNED.value,
                    item.image,
                    spec_text,
                    details_text,
                    item.log_path,
                    user,
                    stamp,
                    stamp,
                    item.provenance_id,
                    claimed_by,
                )
                for (item, experiment_id), (spec_text, details_text) in zip(
                    jobs, texts, strict=True
                )
            ],
        )
        await db.executemany(
            "INSERT INTO job_events (job_id, at, state, detail) VALUES (?, ?, ?, ?)",
            [(item.job_id, stamp, JobState.PLANNED.value, None) for item, _ in jobs],
        )
        return texts

    @staticmethod
    async def _record_context(
        db: aiosqlite.Connection, xgroup_id: int, provenance_ids: Iterable[int | None]
    ) -> tuple[str, dict[int | None, dict[str, object]]]:
        """The group's name and the provenance records new jobs of it carry."""
        async with db.execute("SELECT name FROM xgroups WHERE id = ?", (xgroup_id,)) as cur:
            row = await cur.fetchone()
        if row is None:
            raise StoreError(f"no experiment group {xgroup_id} in the history store")
        provenance: dict[int | None, dict[str, object]] = {}
        for provenance_id in provenance_ids:
            if provenance_id is None:
                continue
            async with db.execute(
                "SELECT data FROM provenance WHERE id = ?", (provenance_id,)
            ) as cur:
                found = await cur.fetchone()
            if found is not None and found[0]:
                provenance[provenance_id] = _provenance(found[0])
        return str(row[0]), provenance

    async def add_jobs(
        self, jobs: Iterable[tuple[JobRecord, PlanItem]], *, user: str
    ) -> list[JobRecord]:
        """Record new PLANNED jobs for existing experiments (used by resubmit)."""
        stamp = now()
        by_platform: dict[Platform, list[tuple[PlanItem, int]]] = {}
        ids: list[str] = []
        for old, item in jobs:
            by_platform.setdefault(old.platform, []).append((item, old.experiment_id))
            ids.append(item.job_id)
        async with self._tx() as db:
            for platform, group in by_platform.items():
                await self._insert_jobs(db, group, platform, user, stamp)
        by_id = {r.job_id: r for r in await self.jobs(job_ids=ids)}
        return [by_id[i] for i in ids]

    async def transition(
        self,
        job_id: str,
        state: JobState,
        *,
        exit_code: int | None = None,
        message: str | None = None,
        platform_id: str | None = None,
        details: dict[str, object] | None = None,
        force: bool = False,
    ) -> bool:
        """Move a job to ``state`` and append the change to its event log.

        A terminal state is sticky unless ``force``: when ``caliban stop`` has
        recorded STOPPED, the exit code the killed container reports afterwards
        must not turn it into FAILED. Returns whether anything changed.
        """
        return (
            await self.transitions(
                [(job_id, state, exit_code, message, platform_id, details)], force=force
            )
        ) == 1

    async def record(self, updates: Sequence[Update], *, force: bool = False) -> int:
        """Record what platforms reported (see :meth:`transitions`); how many changed."""
        if not updates:
            return 0
        return await self.transitions([u.row() for u in updates], force=force)

    async def transitions(
        self,
        changes: Sequence[
            tuple[str, JobState, int | None, str | None, str | None, dict[str, object] | None]
        ],
        *,
        force: bool = False,
    ) -> int:
        """Apply many transitions in one transaction (status refreshes of big sweeps).

        A handful of statements per call, not two per job: each statement is a
        round trip to aiosqlite's thread, and during a fast fan-out those hand-offs
        of the GIL slowed every request of the event loop. Which rows change is
        decided from one read inside the write transaction (nobody else can write
        meanwhile), by the same rule the UPDATE itself checks.
        """
        stamp = now()
        terminal = {s.value for s in JobState if s.terminal}
        async with self._tx() as db:
            ids = list(dict.fromkeys(c[0] for c in changes))
            found = await _rows_in(db, "SELECT id, state FROM jobs WHERE id IN ({ids})", ids)
            current = {str(r[0]): str(r[1]) for r in found}
            updates: list[tuple[object, ...]] = []
            events: list[tuple[str, str, str, str | None]] = []
            for job_id, state, exit_code, message, platform_id, details in changes:
                was = current.get(job_id)
                if was is None or (not force and was in terminal):
                    continue
                if was == state.value and platform_id is None and exit_code is None:
                    continue
                patch = None if details is None else _dumps(details)
                updates.append(
                    (state.value, stamp, exit_code, message, platform_id, patch, patch, job_id)
                )
                events.append((job_id, stamp, state.value, message))
                current[job_id] = state.value  # a later change of the same job sees this one
            if updates:
                await db.executemany(
                    "UPDATE jobs SET state = ?, updated = ?,"
                    " exit_code = COALESCE(?, exit_code), message = COALESCE(?, message),"
                    " platform_id = COALESCE(?, platform_id),"
                    " details = CASE WHEN ? IS NULL THEN details ELSE json_patch(details, ?) END"
                    " WHERE id = ?",
                    updates,
                )
                await db.executemany(
                    "INSERT INTO job_events (job_id, at, state, detail) VALUES (?, ?, ?, ?)",
                    events,
                )
        return len(updates)

    # -- reads --------------------------------------------------------------------------

    async def jobs(
        self,
        *,
        xgroup: str | None = None,
        job_ids: Sequence[str] | None = None,
        platform: Platform | None = None,
        states: Iterable[JobState] | None = None,
        limit: int | None = None,
        per_experiment: int | None = None,
    ) -> list[JobRecord]:
        """Jobs, oldest first; ``limit`` keeps the most recent ones, ``per_experiment``
        the most recent ones of each experiment (both in the query, so a group of
        10,000 experiments with a long history is never loaded whole)."""
        where: list[str] = []
        params: list[object] = []
        if per_experiment is not None and per_experiment > 0:
            # Ranked over the group's jobs only, not the whole history.
            scope = (
                " WHERE experiment_id IN (SELECT e2.id FROM experiments e2"
                " JOIN xgroups x2 ON x2.id = e2.xgroup_id WHERE x2.name = ?)"
                if xgroup is not None
                else ""
            )
            where.append(
                "j.rowid IN (SELECT rowid FROM (SELECT rowid, ROW_NUMBER() OVER ("
                "PARTITION BY experiment_id ORDER BY created DESC, rowid DESC) AS rank"
                f" FROM jobs{scope}) WHERE rank <= ?)"
            )
            params += [xgroup, int(per_experiment)] if xgroup is not None else [per_experiment]
        if xgroup is not None:
            where.append("x.name = ?")
            params.append(xgroup)
        if platform is not None:
            where.append("j.platform = ?")
            params.append(platform.value)
        if states is not None:
            wanted = [s.value for s in states]
            where.append(f"j.state IN ({','.join('?' * len(wanted))})")
            params += wanted
        if job_ids is not None:
            job_ids = list(dict.fromkeys(job_ids))
            if not job_ids:
                return []
            # SQLite caps bound parameters; look big id lists up in chunks.
            if len(job_ids) > _IN_CHUNK:
                out: list[JobRecord] = []
                for start in range(0, len(job_ids), _IN_CHUNK):
                    out += await self.jobs(
                        xgroup=xgroup,
                        job_ids=job_ids[start : start + _IN_CHUNK],
                        platform=platform,
                        states=states,
                        per_experiment=per_experiment,
                    )
                return out
            where.append(f"j.id IN ({','.join('?' * len(job_ids))})")
            params += list(job_ids)
        sql = f"SELECT {_JOB_COLUMNS} {_JOB_FROM}"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY j.created DESC, j.rowid DESC"
        if limit is not None and limit > 0:
            sql += f" LIMIT {int(limit)}"
        async with self.db.execute(sql, params) as cur:
            rows = await cur.fetchall()
        return [_record(r) for r in reversed(list(rows))]

    async def current(self, records: Sequence[JobRecord]) -> list[JobRecord]:
        """``records`` as the store has them now, listed as :meth:`jobs` would list them
        (oldest first, unknown ids left out).

        Only what changes after planning is read (state, exit code, message, platform
        id, details, when): the other columns of a job are written once, when it is
        planned, so the rest of each record is the one given. A sweep's end reads its
        500 jobs back this way in a fraction of a full read, which decodes every
        experiment's arguments and joins three tables again.
        """
        given = {r.job_id: r for r in records}
        ids = list(given)
        rows = await _rows_in(
            self.db,
            "SELECT id, state, exit_code, message, platform_id, details, updated, created,"
            " rowid FROM jobs WHERE id IN ({ids})",
            ids,
        )
        rows.sort(key=lambda row: (row[7], row[8]))
        return [
            given[job_id].with_changes(
                state=_STATES[state],
                exit_code=exit_code,
                message=message,
                platform_id=platform_id,
                details=_loads(details),
                updated=updated,
            )
            for job_id, state, exit_code, message, platform_id, details, updated, _, _ in rows
        ]

    async def job(self, job_id: str) -> JobRecord | None:
        """A job by its full id or by a unique suffix of it (the short id)."""
        found = await self.jobs(job_ids=[job_id])
        if found:
            return found[0]
        async with self.db.execute(
            "SELECT id FROM jobs WHERE id LIKE ? LIMIT 2", (f"%{job_id}",)
        ) as cur:
            rows = list(await cur.fetchall())
        if len(rows) == 1:
            return (await self.jobs(job_ids=[str(rows[0][0])]))[0]
        return None

    async def latest_per_experiment(self, xgroup: str) -> list[JobRecord]:
        """The most recent job of every experiment of a group (what resubmit acts on)."""
        sql = f"""
            SELECT {_JOB_COLUMNS} {_JOB_FROM}
            WHERE x.name = ? AND j.rowid = (
                SELECT j2.rowid FROM jobs j2 WHERE j2.experiment_id = e.id
                ORDER BY j2.created DESC, j2.rowid DESC LIMIT 1)
            ORDER BY e.idx, e.id
        """
        async with self.db.execute(sql, (xgroup,)) as cur:
            rows = await cur.fetchall()
        return [_record(r) for r in rows]

    async def has_xgroup(self, name: str) -> bool:
        async with self.db.execute("SELECT 1 FROM xgroups WHERE name = ?", (name,)) as cur:
            return await cur.fetchone() is not None

    async def container_spec_of(self, spec_id: int) -> dict[str, Any] | None:
        async with self.db.execute(
            "SELECT spec, image FROM container_specs WHERE id = ?", (spec_id,)
        ) as cur:
            row = await cur.fetchone()
        if row is None:
            return None
        spec: dict[str, Any] = json.loads(row[0])
        spec.setdefault("image", row[1])
        return spec

    async def metrics(self, job_ids: Sequence[str]) -> dict[str, dict[str, Any] | None]:
        """The metrics kept for those of ``job_ids`` whose output was read (None:
        it reported none); jobs not read yet are absent."""
        out: dict[str, dict[str, Any] | None] = {}
        ids = list(dict.fromkeys(job_ids))
        sql = "SELECT job_id, metrics FROM job_metrics WHERE job_id IN ({ids})"
        for job_id, metrics in await _rows_in(self.db, sql, ids):
            out[str(job_id)] = None if metrics is None else json.loads(metrics)
        return out

    async def keep_metrics(self, found: Mapping[str, Mapping[str, Any] | None]) -> None:
        """Keep what ended jobs reported, so their output is never read again."""
        if not found:
            return
        stamp = now()
        async with self._tx() as db:
            await db.executemany(
                "INSERT OR REPLACE INTO job_metrics (job_id, metrics, read) VALUES (?, ?, ?)",
                [
                    (job_id, None if m is None else json.dumps(dict(m), default=str), stamp)
                    for job_id, m in found.items()
                ],
            )

    async def events(self, job_id: str) -> list[tuple[str, str, str | None]]:
        async with self.db.execute(
            "SELECT at, state, detail FROM job_events WHERE job_id = ? ORDER BY id", (job_id,)
        ) as cur:
            rows = await cur.fetchall()
        return [(r[0], r[1], r[2]) for r in rows]

    # -- runs and claims ----------------------------------------------------------------
    #
    # A run claims the jobs it is about to launch; a job claimed by a live run is
    # never launched by another. Liveness is a lease the run renews while it works,
    # and on this host also its pid: a run killed with -9 releases its jobs at
    # once here, and after its lease elsewhere (the store may be on a shared disk).

    async def open_run(self, *, lease: float) -> str:
        run_id = uuid.uuid4().hex
        stamp = now()
        async with self._tx() as db:
            await db.execute(
                "INSERT INTO runs (id, pid, host, started, lease_until) VALUES (?, ?, ?, ?, ?)",
                (run_id, os.getpid(), socket.gethostname(), stamp, _later(lease)),
            )
        return run_id

    async def renew_run(self, run_id: str, *, lease: float) -> None:
        async with self._tx() as db:
            await db.execute(
                "UPDATE runs SET lease_until = ? WHERE id = ? AND ended IS NULL",
                (_later(lease), run_id),
            )

    async def close_run(self, run_id: str) -> None:
        """The run is over: whatever it still holds is free (it is recorded STOPPED)."""
        async with self._tx() as db:
            await db.execute("UPDATE runs SET ended = ? WHERE id = ?", (now(), run_id))

    @staticmethod
    async def _live_owners(db: aiosqlite.Connection, run_ids: Iterable[str]) -> dict[str, RunOwner]:
        ids = list(dict.fromkeys(run_ids))
        if not ids:
            return {}
        here = socket.gethostname()
        stamp = now()
        async with db.execute(
            "SELECT id, pid, host, started FROM runs WHERE ended IS NULL AND lease_until > ?"
            f" AND id IN ({','.join('?' * len(ids))})",
            (stamp, *ids),
        ) as cur:
            rows = await cur.fetchall()
        return {
            str(r[0]): RunOwner(str(r[0]), int(r[1]), str(r[2]), str(r[3]))
            for r in rows
            if r[2] != here or _pid_exists(int(r[1]))
        }

    async def claim(
        self, run_id: str, job_ids: Sequence[str], *, lease: float | None = None
    ) -> Claim:
        """Make ``job_ids`` this run's, except those a live run holds, in one
        transaction: of two runs claiming the same job, exactly one gets it. With
        ``lease``, the run's lease is renewed in it (a run opened before a long
        planning claims with a fresh one)."""
        claimed: set[str] = set()
        held: dict[str, RunOwner] = {}
        ids = list(dict.fromkeys(job_ids))
        async with self._tx() as db:
            if lease is not None:
                await db.execute(
                    "UPDATE runs SET lease_until = ? WHERE id = ? AND ended IS NULL",
                    (_later(lease), run_id),
                )
            for start in range(0, len(ids), _IN_CHUNK):
                chunk = ids[start : start + _IN_CHUNK]
                marks = ",".join("?" * len(chunk))
                async with db.execute(
                    f"SELECT id, claimed_by FROM jobs WHERE id IN ({marks})", chunk
                ) as cur:
                    current = {str(r[0]): r[1] for r in await cur.fetchall()}
                others = {str(o) for o in current.values() if o is not None and o != run_id}
                live = await self._live_owners(db, others)
                free = [j for j, owner in current.items() if owner not in live]
                held.update({j: live[o] for j, o in current.items() if o in live})
                # Jobs planned for this run (plan's claim_for) are its own already.
                taken = [j for j in free if current[j] != run_id]
                if taken:
                    marks = ",".join("?" * len(taken))
                    await db.execute(
                        f"UPDATE jobs SET claimed_by = ? WHERE id IN ({marks})", (run_id, *taken)
                    )
                claimed.update(free)
        return Claim(frozenset(claimed), held)

    async def owners(self, job_ids: Sequence[str]) -> dict[str, RunOwner]:
        """The live run holding each of ``job_ids``, for those a live run holds."""
        out: dict[str, RunOwner] = {}
        ids = list(dict.fromkeys(job_ids))
        sql = "SELECT id, claimed_by FROM jobs WHERE claimed_by IS NOT NULL AND id IN ({ids})"
        current = {str(r[0]): str(r[1]) for r in await _rows_in(self.db, sql, ids)}
        live = await self._live_owners(self.db, set(current.values()))
        out.update({j: live[o] for j, o in current.items() if o in live})
        return out

    async def holds(self, run_id: str, job_id: str) -> bool:
        async with self.db.execute(
            "SELECT 1 FROM jobs WHERE id = ? AND claimed_by = ?", (job_id, run_id)
        ) as cur:
            return await cur.fetchone() is not None
