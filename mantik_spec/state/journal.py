"""Offline journals: what a job recorded without a route to the tracking store, and its upload into the run.

A journal (written by :mod:`mantik_spec.runner` with ``tracking: offline`` or ``auto``) is an MLflow sqlite store
in the job directory holding one run, under the same run id as the run mantik recorded, and its artifacts beside
it. It is read here with plain :mod:`sqlite3` on the tables MLflow's SQL store has kept since 1.x (``runs``,
``params``, ``tags``, ``metrics``), never opened with MLflow, which would migrate or refuse a database written by
another MLflow version.

:func:`sync_run` uploads a journal into its run (docs/offline.md states the guarantees):

- the run is the one mantik created: nothing else is ever created;
- params and tags the run lacks, or holds with another value (params are write-once in MLflow: a conflicting
  one is skipped and reported);
- metric points after the cursor (tag ``mantik.sync.metrics``: the journal's ``metrics`` rowid last uploaded),
  with their own steps and timestamps, in ``log_batch`` calls within MLflow's limits, each carrying the cursor it
  advances to. MLflow's SQL store drops points it already holds (their primary key is the whole point), so a
  batch sent again after a crash adds nothing: a sync killed at any instant and run again completes without a
  duplicate point;
- artifacts (once the job has ended) whose path and size the run lacks, then a digest of the listing as tag
  ``mantik.sync.artifacts``, so a second sync lists nothing;
- the journal's status last: RUNNING while the job runs; its end (status, end time) once the runner wrote the
  exit code beside it and either its end signature (its last word) is there too or the job is gone.

A journal copied while the job writes it (a rollback journal beside it) is read as sqlite would after a crash:
the transaction in progress is rolled back. A damaged journal is read as far as it is valid; what could not be
read comes back as :class:`Skipped` values, never as an exception.
"""

from __future__ import annotations

import enum
import hashlib
import math
import os
import sqlite3
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from ..errors import MantikError
from ..faults import checkpoint
from ..vocab import RunStatus
from .tags import RUNNER_TAGS, Tag

if TYPE_CHECKING:
    from .tracking import TrackingStore

JOURNAL_DB = "mlflow.db"  # in the journal directory; a copy of mantik_spec.runner's names
ROLLBACK_JOURNAL = JOURNAL_DB + "-journal"  # sqlite's rollback journal while a transaction is under way
ARTIFACTS = "artifacts"
# MLflow's log_batch limits (mlflow/utils/validation.py): 1000 entities, of which 100 params or tags, 1 MB
MAX_ENTITIES = 1000
MAX_PARAMS_TAGS = 100
MAX_REQUEST_BYTES = 500_000  # half of MLflow's 1 MB, for the JSON around the values
READ_ATTEMPTS = 3  # copies of a journal taken while it changed, before one is read as it stands
ENDED = {RunStatus.FINISHED.value, RunStatus.FAILED.value, RunStatus.KILLED.value}
TABLES = ("runs", "params", "tags", "metrics")  # MLflow's SQL store's, read here
# Tags whose server value wins: mantik's cancel says why before it signals, which a job offline cannot see
SERVER_KEEPS = (Tag.FAILURE, Tag.FAILURE_KIND)


class JournalFiles(Protocol):
    """A run's journal directory where its job wrote it (:meth:`mantik_spec.backends.base.Backend.journal`)."""

    def read_bytes(self, name: str) -> bytes | None:
        """A file of the journal directory by its path in it (``mlflow.db``); None when there is none. Raises the
        backend's :class:`~mantik_spec.errors.MantikError` when the file is there but could not be read."""
        ...

    def read_together(self, names: list[str]) -> list[bytes | None]:
        """The files ``names`` (a name may repeat), read in that order back to back: over a connection in one
        exchange, so that they are as close to one moment as the host allows; None for a file there is none."""
        ...

    def files(self, directory: str) -> list[tuple[str, int]]:
        """Every file below ``directory`` of the journal directory, as (path relative to it, size in bytes)."""
        ...


class Damage(enum.Enum):
    """What kept part of a journal from being synced."""

    UNREADABLE = "unreadable"  # not a database (cut short before its header, overwritten): nothing synced
    INCOMPLETE = "incomplete"  # empty, or without MLflow's tables: being created, or its job died creating it
    NO_RUN = "no_run"  # the database holds no such run (the job died before it began recording)
    TABLE_CUT = "table_cut"  # a table is damaged: its rows up to the damage were synced, the rest skipped
    CONFLICT = "conflict"  # a param the run holds with another value (params are write-once)
    REFUSED = "refused"  # the tracking store refused the upload (the detail says why)
    NOT_READ = "not_read"  # the backend could not read a file of the journal this time (the detail says why)


# What a journal is while its runner creates it (an empty file, then MLflow's tables, then the run's row):
# nothing to sync yet while its job runs, damage once the job has ended
NOT_YET = frozenset({Damage.INCOMPLETE, Damage.NO_RUN})


@dataclass(frozen=True)
class Skipped:
    """One part of a journal not synced: ``part`` is a table (``metrics``), a param's name, or ``artifacts``."""

    part: str
    damage: Damage
    detail: str = ""  # for people


@dataclass(frozen=True)
class Point:
    row: int  # the journal's rowid: the sync cursor
    key: str
    value: float
    timestamp: int  # ms since the epoch
    step: int


@dataclass
class Journal:
    """What one journal holds about one run, as far as it could be read."""

    status: str | None = None  # RunStatus value; None when the run's row could not be read
    start_time: int | None = None
    end_time: int | None = None
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    metrics: list[Point] = field(default_factory=list)  # in rowid order
    skipped: list[Skipped] = field(default_factory=list)


@dataclass
class SyncResult:
    """What one sync of one run wrote, in entities, and what it skipped."""

    run_id: str
    params: int = 0
    tags: int = 0
    metrics: int = 0
    artifacts: int = 0
    status: str | None = None  # the status it set, if any
    skipped: list[Skipped] = field(default_factory=list)
    calls: int = 0  # requests to the tracking store
    final: bool = False  # the journal holds the runner's end (its exit code, the run ended): nothing more will come

    @property
    def written(self) -> int:
        return self.params + self.tags + self.metrics + self.artifacts + (self.status is not None)


def read_snapshot(files: JournalFiles) -> tuple[bytes, bytes | None] | None:
    """The journal database and its rollback journal as one consistent copy, or None when there is no journal.

    Each attempt reads the database, its rollback journal and the database again, back to back (one exchange
    over a connection); the copy is taken when both reads of the database agree. One that changes through
    :data:`READ_ATTEMPTS` attempts (a job writing it) is taken as its last attempt read it, with the rollback
    journal read after it: sqlite writes a transaction's rollback journal before it touches the database and
    deletes it at the commit (https://www.sqlite.org/atomiccommit.html), so that rollback journal is the one of
    the transaction the database was caught in, if any still ran; one read before the database may belong to
    an older transaction, whose rollback over a newer database mixes the pages of two moments."""
    database: bytes | None = None
    rollback: bytes | None = None
    for _ in range(READ_ATTEMPTS):
        database, rollback, again = files.read_together([JOURNAL_DB, ROLLBACK_JOURNAL, JOURNAL_DB])
        if database is None:
            return None
        if again == database:
            break
    return (database, rollback) if database is not None else None


def read_journal(database: bytes, rollback: bytes | None, run_id: str, after_row: int = 0) -> Journal:
    """The run ``run_id`` as the journal ``database`` holds it (metric rows after ``after_row`` only). A hot
    ``rollback`` journal is applied as sqlite applies it after a crash. Damage is reported in ``skipped``."""
    journal = Journal()
    with tempfile.TemporaryDirectory(prefix="mantik-journal-") as directory:
        path = os.path.join(directory, JOURNAL_DB)
        with open(path, "wb") as handle:
            handle.write(database)
        if rollback:
            with open(path + "-journal", "wb") as handle:
                handle.write(rollback)
        connection = sqlite3.connect(path)
        try:
            _read(connection, run_id, after_row, journal)
        finally:
            connection.close()
    return journal


def _rows(connection: sqlite3.Connection, sql: str, args: Sequence) -> tuple[list[tuple], str | None]:
    """The rows a query yields up to the first damaged page, and what stopped it (None: read whole)."""
    rows: list[tuple] = []
    try:
        for row in connection.execute(sql, args):
            rows.append(tuple(row))
    except sqlite3.DatabaseError as exc:
        return rows, str(exc)
    return rows, None


def _read(connection: sqlite3.Connection, run_id: str, after_row: int, journal: Journal) -> None:
    tables, problem = _rows(connection, "SELECT name FROM sqlite_master WHERE type = 'table'", ())
    if problem is not None:  # its header or schema is not sqlite's: not a database
        journal.skipped.append(Skipped("database", Damage.UNREADABLE, problem))
        return
    lacking = sorted(set(TABLES) - {name for (name,) in tables})
    if lacking:  # sqlite reads an empty file as a database without tables
        journal.skipped.append(Skipped("database", Damage.INCOMPLETE, f"no table {', '.join(lacking)}"))
        return
    runs, problem = _rows(
        connection, "SELECT status, start_time, end_time FROM runs NOT INDEXED WHERE run_uuid = ?", (run_id,)
    )
    if problem is not None and not runs:
        journal.skipped.append(Skipped("database", Damage.UNREADABLE, problem))
        return
    if not runs:
        journal.skipped.append(Skipped("runs", Damage.NO_RUN, f"no run {run_id} in the journal"))
        return
    journal.status, journal.start_time, journal.end_time = runs[0]
    for table in ("params", "tags"):
        rows, problem = _rows(connection, f"SELECT key, value, run_uuid FROM {table} NOT INDEXED", ())  # noqa: S608
        getattr(journal, table).update((key, value) for key, value, run in rows if run == run_id and value is not None)
        if problem is not None:
            journal.skipped.append(Skipped(table, Damage.TABLE_CUT, problem))
    rows, problem = _rows(
        connection,
        "SELECT rowid, key, value, timestamp, step, is_nan, run_uuid FROM metrics NOT INDEXED "
        "WHERE rowid > ? ORDER BY rowid",
        (after_row,),
    )
    journal.metrics = [
        Point(row, key, math.nan if is_nan else float(value), int(timestamp), int(step or 0))
        for row, key, value, timestamp, step, is_nan, run in rows
        if run == run_id
    ]
    if problem is not None:
        last = rows[-1][0] if rows else after_row
        journal.skipped.append(Skipped("metrics", Damage.TABLE_CUT, f"after row {last}: {problem}"))


def _journal_may_write(key: str) -> bool:
    """Whether a journal's tag is uploaded: the script's own, and the runner's (RUNNER_TAGS). The other ``mantik.*``
    tags are apply's (the run's key and what it was made of) and this module's (the sync's cursor and its marks):
    a journal holding one (the script set it) would change how the run plans, or stop its journal being read."""
    return not key.startswith("mantik.") or key in RUNNER_TAGS


def _chunks(items: list, count: int, size=None) -> list[list]:
    """``items`` in lists of at most ``count`` and, with ``size`` (an item's bytes), at most MAX_REQUEST_BYTES."""
    chunks: list[list] = []
    current: list = []
    total = 0
    for item in items:
        weight = size(item) if size else 0
        if current and (len(current) >= count or total + weight > MAX_REQUEST_BYTES):
            chunks.append(current)
            current, total = [], 0
        current.append(item)
        total += weight
    if current:
        chunks.append(current)
    return chunks


def sync_run(store: TrackingStore, run_id: str, files: JournalFiles, job_ended: bool = False) -> SyncResult | None:
    """Upload the journal in ``files`` into run ``run_id`` of ``store`` (the rules are in the module's
    docstring); ``job_ended``: the job is gone, so its journal and artifacts are final. None when there is no
    journal, or while the job runs none yet (:data:`NOT_YET`: an empty file, no tables, no run).
    Raises :class:`mantik_spec.errors.TrackingError` when the store cannot be reached."""
    from mlflow.entities import Metric, Param, RunTag

    snapshot = read_snapshot(files)
    if snapshot is None:
        return None
    result = SyncResult(run_id)
    calls_before = store.calls
    run = store.call(store.client.get_run, run_id)
    recorded_tags = dict(run.data.tags)
    cursor = int(recorded_tags.get(Tag.SYNC_METRICS, "0") or 0)
    journal = read_journal(*snapshot, run_id, after_row=cursor)
    if journal.status is None and not job_ended and {s.damage for s in journal.skipped} <= NOT_YET:
        return None  # its runner is still creating it: nothing to sync yet
    result.skipped.extend(journal.skipped)
    if journal.status is None:
        result.calls = store.calls - calls_before
        return result

    params = []
    for key, value in sorted(journal.params.items()):
        if key not in run.data.params:
            params.append(Param(key, value))
        elif run.data.params[key] != value:
            result.skipped.append(Skipped(key, Damage.CONFLICT, f"the run holds {key}={run.data.params[key]!r}"))
    tags = [
        RunTag(key, value)
        for key, value in sorted(journal.tags.items())
        if recorded_tags.get(key) != value
        and not (key in SERVER_KEEPS and key in recorded_tags)
        and _journal_may_write(key)
    ]
    for chunk in _chunks(params, MAX_PARAMS_TAGS, lambda p: len(p.key) + len(p.value)):
        store.call(store.client.log_batch, run_id, params=chunk)
        result.params += len(chunk)
    for chunk in _chunks(tags, MAX_PARAMS_TAGS, lambda t: len(t.key) + len(t.value)):
        store.call(store.client.log_batch, run_id, tags=chunk)
        result.tags += len(chunk)
    for points in _chunks(journal.metrics, MAX_ENTITIES - 1):
        metrics = [Metric(p.key, p.value, p.timestamp, p.step) for p in points]
        store.call(store.client.log_batch, run_id, metrics=metrics, tags=[RunTag(Tag.SYNC_METRICS, str(points[-1].row))])
        result.metrics += len(points)
        checkpoint("journal-batch")

    # the command's own mlflow ends the run as it exits (its atexit end_run), before the runner writes the exit
    # code, its end signature, the output and the status it decides: the journal's end is final once the exit
    # code is there and the runner's last word too (its end signature) or its job is gone
    ended = (
        journal.status in ENDED and Tag.EXIT_CODE in journal.tags and (job_ended or Tag.END_SIGNATURE in journal.tags)
    )
    result.final = ended
    if ended or job_ended:
        result.artifacts = _sync_artifacts(store, run_id, files, recorded_tags.get(Tag.SYNC_ARTIFACTS), result)

    recorded = run.info.status
    if ended and recorded not in ENDED:
        store.end_run(run_id, journal.status, end_time=journal.end_time)
        result.status = journal.status
    elif journal.status == RunStatus.RUNNING.value and recorded == RunStatus.SCHEDULED.value and not job_ended:
        store.call(store.client.update_run, run_id, status=RunStatus.RUNNING.value)
        result.status = RunStatus.RUNNING.value
    result.calls = store.calls - calls_before
    return result


def _sync_artifacts(store: TrackingStore, run_id: str, files: JournalFiles, digest: str | None, result) -> int:
    """Upload the journal's artifacts the run lacks (by path and size); the number uploaded."""
    # the backend's errors reading them skip the artifacts for this pass only: the run's end is set all the same
    try:
        listing = sorted(files.files(ARTIFACTS))
    except MantikError as exc:
        result.skipped.append(Skipped(ARTIFACTS, Damage.NOT_READ, str(exc)))
        return 0
    if not listing:
        return 0
    current = hashlib.sha256(repr(listing).encode()).hexdigest()[:32]
    if digest == current:
        return 0
    recorded = _recorded_artifacts(store, run_id)
    uploaded = 0
    skipped_before = len(result.skipped)
    with tempfile.TemporaryDirectory(prefix="mantik-artifacts-") as directory:
        for path, size in listing:
            if recorded.get(path) == size:
                continue
            try:
                content = files.read_bytes(f"{ARTIFACTS}/{path}")
            except MantikError as exc:
                result.skipped.append(Skipped(path, Damage.NOT_READ, str(exc)))
                continue
            if content is None:
                result.skipped.append(Skipped(path, Damage.TABLE_CUT, "listed but gone when read"))
                continue
            folder, name = os.path.split(path)
            local = os.path.join(directory, str(uploaded), name)
            os.makedirs(os.path.dirname(local))
            with open(local, "wb") as handle:
                handle.write(content)
            store.call(store.client.log_artifact, run_id, local, folder or None)
            uploaded += 1
    if len(result.skipped) > skipped_before:
        return uploaded  # no digest: the next pass lists them again and reads what this one could not
    from mlflow.entities import RunTag

    store.call(store.client.log_batch, run_id, tags=[RunTag(Tag.SYNC_ARTIFACTS, current)])
    return uploaded


def _recorded_artifacts(store: TrackingStore, run_id: str) -> dict[str, int]:
    """The run's artifacts as its store lists them: path -> size."""
    found: dict[str, int] = {}
    pending = [None]
    while pending:
        directory = pending.pop()
        for info in store.call(store.client.list_artifacts, run_id, directory):
            if info.is_dir:
                pending.append(info.path)
            else:
                found[info.path] = info.file_size or 0
    return found
