"""MLflow as the only state store: observing the project's runs and writing run records.

Runs are read in pages (one call per page, never one per run). Each run carries
its run key, point id and identity inputs as ``mantik.*`` tags beside MLflow's
own ``mlflow.source.*`` system tags, so the MLflow UI shows where it came from.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse

from ..errors import MantikError
from ..files import write_atomically
from ..reconcile.identity import ObservedRun
from ..spec.model import Tracking
from ..vocab import RunStatus
from . import provenance
from .runcache import RunCache
from .tags import LIVE, TERMINAL, MlflowTag, Tag, decode_run

# the run record's tag schema lives in .tags; its names are re-exported here for callers of the store
__all__ = ["LIVE", "TERMINAL", "Tag", "TrackingError", "TrackingStore"]

DELETED_RUN_ATTEMPTS = 5  # updates of a run deleted while live, racing its runner (see TrackingStore._update)
ID_CHUNK = 200  # run ids per `run_id IN (...)` search
PAGE_SIZE = 1000
OUTPUT_ARTIFACT = "mantik/output.log"  # where the in-job runner keeps the run's output
# MLflow's HTTP client retries an unreachable server for minutes by default (7 retries, backoff factor 2,
# 120 s a request: mlflow/environment_variables.py); a CI job should fail within seconds with one line,
# and the next apply repairs. Users' own settings win.
HTTP_RETRY_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",  # a page of 1,000 runs from a busy server may take a while
}
# How long a command waits for a tracking server to answer at all before it stops (seconds)
TIMEOUT_VARIABLE = "MANTIK_TRACKING_TIMEOUT"
DEFAULT_TIMEOUT = 15.0
# the database stores MLflow opens with SQLAlchemy (mlflow/store/db/db_types.py), besides sqlite
DATABASE_SCHEMES = ("postgresql", "mysql", "mssql")
# How many run records apply writes side by side: a server's round trips overlap (each request waits on the
# network, not on this machine); MLflow's sqlite store gains nothing from threads (its Python holds the
# interpreter; bench/bench_record.py). MLflow's HTTP connection pool keeps 10 connections (MLFLOW_HTTP_POOL_MAXSIZE).
THREADS_VARIABLE = "MANTIK_TRACKING_THREADS"
DEFAULT_HTTP_THREADS = 8

# the database stores MLflow opens with SQLAlchemy (mlflow/store/db/db_types.py), besides sqlite
DATABASE_SCHEMES = ("postgresql", "mysql", "mssql")

T = TypeVar("T")
R = TypeVar("R")


class TrackingError(MantikError):
    """The tracking store could not be reached or refused a request."""


def resolve_tracking_uri(tracking: Tracking, project_root: Path) -> str:
    """``MLFLOW_TRACKING_URI`` wins; a relative sqlite path is taken from the project root."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or tracking.uri
    parsed = urlparse(uri)
    if parsed.password:
        # the URI is handed to every job and written into its job description: keep secrets out of it
        raise TrackingError("the tracking URI carries a password: set MLFLOW_TRACKING_USERNAME/_PASSWORD instead")
    if parsed.username is not None and parsed.scheme.lower() in ("http", "https"):  # http://TOKEN@host
        raise TrackingError(
            "the tracking URI carries a user name or token before '@': set MLFLOW_TRACKING_TOKEN "
            "or MLFLOW_TRACKING_USERNAME/_PASSWORD instead"
        )
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        database = (project_root / uri[len("sqlite:///") :]).resolve()
        database.parent.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{database}"
    return uri


def tracking_credentials(tracking: Tracking) -> dict[str, str]:
    """MLflow's client variables, filled from the variables the spec names (never from the spec)."""
    mapping = {
        "MLFLOW_TRACKING_TOKEN": tracking.token_env,
        "MLFLOW_TRACKING_USERNAME": tracking.username_env,
        "MLFLOW_TRACKING_PASSWORD": tracking.password_env,
    }
    return {target: os.environ[source] for target, source in mapping.items() if source and source in os.environ}


def _silence_mlflow_logging() -> None:
    import logging

    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # MLflow logs every SQL error with its traceback before raising it; mantik reports it in one line
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
    logging.getLogger("mlflow.store.tracking.sqlalchemy_store").setLevel(logging.CRITICAL)


# the local sqlite store ------------------------------------------------------------------------

_SCHEMA: tuple[str, frozenset[str]] | None = None  # (head revision, every revision) of the installed MLflow


def schema_revisions() -> tuple[str, frozenset[str]]:
    """(head revision, every revision) of the installed MLflow's alembic migrations (mlflow/store/db_migrations).

    Read once per process: alembic executes each of its ~130 revision scripts to build the map (about 0.2 s).
    """
    global _SCHEMA
    if _SCHEMA is None:
        from alembic.script import ScriptDirectory
        from mlflow.store.db.utils import _get_alembic_config

        script = ScriptDirectory.from_config(_get_alembic_config(db_url=""))
        _SCHEMA = (script.get_current_head() or "", frozenset(r.revision for r in script.walk_revisions()))
    return _SCHEMA


@contextmanager
def _store_file_lock(database: Path):
    """Serialise creating and checking a local store between processes (the project lock lives inside it).

    ``flock`` is released by the kernel when its holder dies, so a killed command never leaves it held.
    """
    import fcntl

    path = database.with_name(database.name + ".lock")
    try:
        handle = open(path, "a")  # noqa: SIM115 - closed below
    except OSError:
        try:  # a read-only directory: lock the existing file if there is one (flock needs no write access)
            handle = open(path)  # noqa: SIM115
        except OSError:
            yield  # nobody can create or change a store here either
            return
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def prepare_local_store(database: Path) -> None:
    """Make sure ``database`` is a complete MLflow store of the installed MLflow's schema.

    A missing store is built under a temporary name beside it and renamed into place, so a command
    killed while MLflow creates the tables leaves no half-built store behind. An existing store is
    checked with sqlite alone before MLflow opens it (MLflow would otherwise try to migrate an older
    or incomplete store by itself). Raises TrackingError with one line saying what is wrong and what to do.
    """
    database.parent.mkdir(parents=True, exist_ok=True)  # the lock file lives there: every process must find it
    schema_revisions()  # read MLflow's migration scripts before taking the lock, not while others wait
    with _store_file_lock(database):
        for leftover in database.parent.glob(f".{database.name}.building-*"):
            leftover.unlink(missing_ok=True)  # a builder killed mid-way: builders hold the file lock
        if database.exists():
            if _check_store(database) == "empty":
                _build_store(database)
        else:
            _build_store(database)


def _build_store(database: Path) -> None:
    from mlflow.exceptions import MlflowException
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
    from sqlalchemy.exc import SQLAlchemyError

    building = database.with_name(f".{database.name}.building-{os.getpid()}")
    building.unlink(missing_ok=True)
    uri = f"sqlite:///{building}"
    try:
        store = SqlAlchemyStore(uri, (database.parent / "artifacts").as_uri())
        store.engine.dispose()
        SqlAlchemyStore._engine_map.pop(uri, None)
        os.replace(building, database)
    except (MlflowException, SQLAlchemyError, OSError) as exc:
        building.unlink(missing_ok=True)
        hint = _sqlite_hint(exc) or _first_line(exc)
        raise TrackingError(f"could not create the tracking store {database}: {hint}") from None


def _check_store(database: Path) -> str:
    """'ok', or 'empty' (a file holding no MLflow tables: build the store there); else TrackingError."""
    import sqlite3

    where = f"the tracking store {database}"
    try:
        connection = sqlite3.connect(f"{database.as_uri()}?mode=ro", uri=True, timeout=30)
    except sqlite3.Error as exc:
        raise TrackingError(f"{where} cannot be opened ({exc}): check its permissions") from None
    try:
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        revision = None
        if "alembic_version" in tables:
            row = connection.execute("SELECT version_num FROM alembic_version").fetchone()
            revision = row[0] if row else None
        runs = connection.execute("SELECT count(*) FROM runs").fetchone()[0] if "runs" in tables else 0
    except sqlite3.Error as exc:
        raise TrackingError(
            f"{where} is damaged ({exc}): restore it from a backup, or move it away to start a new store"
        ) from None
    finally:
        connection.close()
    if not tables:
        return "empty"
    head, known = schema_revisions()
    if revision == head:
        return "ok"
    if revision is None or not {"experiments", "runs", "registered_models"} <= tables:
        if runs == 0:
            # left by a command killed while MLflow created the tables (before stores were built aside)
            aside = database.with_name(f"{database.name}.incomplete-{os.getpid()}")
            os.replace(database, aside)
            sys.stderr.write(
                f"Note: the tracking store {database} was left incomplete by an interrupted command and held no "
                f"runs: it is rebuilt (the old file is kept as {aside.name})\n"
            )
            return "empty"
        raise TrackingError(
            f"{where} is incomplete (no schema version) but holds {runs} run(s): restore it from a backup"
        )
    if revision in known:
        raise TrackingError(
            f"{where} was written by an older MLflow (schema {revision}, this MLflow needs {head}): back it up, "
            f"then run `mlflow db upgrade sqlite:///{database}`"
        )
    raise newer_schema(where, revision)


def installed_mlflow() -> dict[str, str]:
    """The installed MLflow distributions and their versions: ``mlflow-skinny`` (the client mantik needs) and
    ``mlflow`` (the server and UI, with the ``[server]`` extra), each when installed."""
    from importlib import metadata

    found = {}
    for name in ("mlflow-skinny", "mlflow"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def newer_schema(where: str, revision: str) -> TrackingError:
    """One line for a store whose alembic revision the installed MLflow does not know: a newer MLflow wrote it
    (or upgraded it), and opening it with this one fails in every command and in ``mlflow ui``. The fix is
    the version that wrote it: MLflow's own message would advise ``mlflow db upgrade``, which cannot go back."""
    versions = installed_mlflow()
    installed = versions.get("mlflow-skinny") or versions.get("mlflow") or "?"
    upgrade = " ".join(f"'{name}>{version}'" for name, version in versions.items())
    return TrackingError(
        f"{where} was written by a newer MLflow than the {installed} installed here (schema {revision} is "
        f"unknown to it): upgrade (`pip install -U {upgrade or 'mlflow-skinny'}`), or install the version that "
        "wrote it (`pip install 'mlflow==VERSION'`, which brings its mlflow-skinny)"
    )


def check_database_schema(uri: str) -> None:
    """Refuse, in one line, a database store (``postgresql://``, ``mysql://``, ``sqlite://``...) that a newer
    MLflow wrote, before MLflow opens it. What else is wrong with it (unreachable, an older schema) MLflow
    reports itself when it opens it."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import SQLAlchemyError

    try:
        engine = create_engine(uri)
    except (SQLAlchemyError, ImportError, ValueError):  # a driver missing: MLflow says so when it opens it
        return
    try:
        with engine.connect() as connection:
            revision = connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
    except SQLAlchemyError:  # no such table (a new store), or unreachable
        return
    finally:
        engine.dispose()
    if revision is None:
        return
    head, known = schema_revisions()
    if revision != head and revision not in known:
        raise newer_schema(f"the tracking store {_safe_uri(uri)}", revision)


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "message", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


_SQLITE_HINTS = {  # primary result codes of sqlite3 errors -> what to do
    8: "the store is read-only: make it writable, or use plan/status/show only",  # SQLITE_READONLY
    13: "the disk holding the store is full: free space; nothing was written",  # SQLITE_FULL
    11: "the store is damaged: restore it from a backup",  # SQLITE_CORRUPT
    26: "the store is damaged (not a database): restore it from a backup",  # SQLITE_NOTADB
    10: "the store could not be written (I/O error, a full disk or a file-size limit): nothing was written",
    14: "the store cannot be opened: check the permissions of its directory",  # SQLITE_CANTOPEN
    5: "the store stayed busy (another process holds a write lock on it): try again",  # SQLITE_BUSY
}


def _sqlite_hint(exc: BaseException | None) -> str | None:
    """What to do about the sqlite error behind ``exc``, read from its result code."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        code = getattr(exc, "sqlite_errorcode", None)
        if isinstance(code, int):
            return _SQLITE_HINTS.get(code & 0xFF)
        exc = getattr(exc, "orig", None) or exc.__cause__ or exc.__context__
    return None


def server_timeout() -> float:
    """Seconds to wait for a tracking server: ``MANTIK_TRACKING_TIMEOUT``, else 15; TrackingError when the
    variable is no positive number."""
    text = os.environ.get(TIMEOUT_VARIABLE, "").strip()
    if not text:
        return DEFAULT_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):
        raise TrackingError(f"{TIMEOUT_VARIABLE}={text!r}: expected a positive number of seconds")
    return value


def write_threads(uri: str) -> int:
    """How many run records are written at a time to the store at ``uri``: ``MANTIK_TRACKING_THREADS``, else 8
    for an http(s) server and 1 for a database; TrackingError when the variable is no positive integer."""
    text = os.environ.get(THREADS_VARIABLE, "").strip()
    if not text:
        return DEFAULT_HTTP_THREADS if urlparse(uri).scheme.lower() in ("http", "https") else 1
    if not text.isdigit() or int(text) < 1:
        raise TrackingError(f"{THREADS_VARIABLE}={text!r}: expected a positive whole number")
    return int(text)


def wait_for_server(uri: str, timeout: float) -> None:
    """Return once the MLflow server at ``uri`` answers HTTP; TrackingError naming the URI after ``timeout`` s.

    Asks ``GET {uri}/health`` (MLflow's server answers it without credentials; a proxy's 401 or 404 is an
    answer too) with backoff, so a server that is restarting gets its few seconds. Refused connections,
    unreachable hosts, 5xx answers (a proxy in front of a stopped server) and silence count as no answer. The
    question carries no credential, so its TLS certificate is not checked here, and a TLS handshake the server
    refuses (a client certificate it wants) is an answer: MLflow's own requests check both, as configured
    (``MLFLOW_TRACKING_INSECURE_TLS``, ``..._SERVER_CERT_PATH``, ``REQUESTS_CA_BUNDLE``), and report them.
    """
    import ssl
    import time
    import urllib.error
    import urllib.request

    context = ssl._create_unverified_context()  # reachability only: nothing secret is sent or trusted
    url = uri.rstrip("/") + "/health"
    deadline = time.monotonic() + timeout
    pause = 0.25
    while True:
        remaining = deadline - time.monotonic()
        try:
            with urllib.request.urlopen(url, timeout=max(0.05, min(5.0, remaining)), context=context):
                return
        except urllib.error.HTTPError as exc:
            if exc.code < 500:
                return
            reason = f"HTTP {exc.code} {exc.reason}"
        except (urllib.error.URLError, OSError) as exc:  # refused, unreachable, timed out
            cause = getattr(exc, "reason", exc)
            if isinstance(cause, ssl.SSLError):
                return  # the server spoke TLS: it is there; MLflow's requests say what it wants
            reason = "no answer" if isinstance(cause, TimeoutError) else str(cause)
        if time.monotonic() + pause >= deadline:
            raise TrackingError(
                f"MLflow at {_safe_uri(uri)} unreachable: {reason} (waited {timeout:g} s; "
                f"{TIMEOUT_VARIABLE} sets how long)"
            )
        time.sleep(pause)
        pause = min(pause * 2, 2.0)


class TrackingStore:
    """The project's view of one MLflow tracking server or database."""

    def __init__(self, uri: str, project: str):
        if urlparse(uri).scheme.lower() in ("http", "https"):
            wait_for_server(uri, server_timeout())  # before importing mlflow: a server that is down costs no import
        self.uri = uri
        self.project = project
        self.calls = 0  # requests made, printed with -v and by the bench
        self._counting = threading.Lock()
        # of those, the ones that recorded started runs (intent records and job ids), and how many runs
        self.recording_calls = 0
        self.recorded_runs = 0
        self.deleted_live: set[str] = set()  # ids of runs deleted in MLflow whose jobs were live when observed
        self.threads = write_threads(uri)
        self._client = None
        self._opening = threading.Lock()

    @property
    def client(self):
        """MLflow's client, made at the first call that needs it: importing mlflow takes about a second, and a
        command answered from the run cache (see ``observe``) needs none. A local sqlite store is created or
        checked first (``prepare_local_store``)."""
        with self._opening:
            if self._client is None:
                from mlflow.tracking import MlflowClient

                _silence_mlflow_logging()  # after the import: mlflow configures its loggers when imported
                for name, value in HTTP_RETRY_DEFAULTS.items():
                    os.environ.setdefault(name, value)
                database = self._database()
                if database is not None:
                    try:
                        prepare_local_store(database)
                    except OSError as exc:
                        raise TrackingError(f"the tracking store {database}: {exc}") from None
                elif urlparse(self.uri).scheme.split("+")[0].lower() in DATABASE_SCHEMES:
                    check_database_schema(self.uri)
                self._client = MlflowClient(tracking_uri=self.uri)
            return self._client

    def _database(self) -> Path | None:
        """The file of a local sqlite store, else None."""
        return Path(self.uri[len("sqlite:///") :]) if self.uri.startswith("sqlite:///") else None

    def side_by_side(self, function: Callable[[T], R], items: Iterable[T]) -> list[R]:
        """``[function(item) for item in items]``, up to ``threads`` calls at a time, results in the order of
        ``items``. Returns once every call has ended. When one raises, the calls not started yet are not made
        and the first error (in the order of ``items``) is raised once the running ones have ended, so nothing
        this store writes is still under way when the caller goes on."""
        items = list(items)
        if self.threads <= 1 or len(items) <= 1:
            return [function(item) for item in items]
        from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

        pool = ThreadPoolExecutor(min(self.threads, len(items)), thread_name_prefix="mantik-record")
        try:
            futures = [pool.submit(function, item) for item in items]
            wait(futures, return_when=FIRST_EXCEPTION)
        finally:  # on an error (or Ctrl-C): the calls not started are dropped, the running ones end first
            pool.shutdown(wait=True, cancel_futures=True)
        for future in futures:
            if not future.cancelled() and future.exception() is not None:
                raise future.exception()  # type: ignore[misc]
        return [future.result() for future in futures]

    def _call(self, function, *args, **kwargs):
        from mlflow.exceptions import MlflowException

        with self._counting:  # the project lock's renewal thread calls the store beside the command
            self.calls += 1
        try:
            return function(*args, **kwargs)
        except MlflowException as exc:
            raise self._error(exc) from exc
        except OSError as exc:
            raise TrackingError(f"MLflow at {_safe_uri(self.uri)} unreachable: {exc}") from exc
        except Exception as exc:  # a database error MLflow let through (sqlalchemy's, sqlite3's)
            if type(exc).__module__.split(".")[0] not in ("sqlalchemy", "sqlite3"):
                raise
            raise self._error(exc) from exc

    call = _call  # one request, counted, its failures as TrackingError: for state/'s other modules (journal sync)

    def paged(self, function: Callable[..., Any], *args, **kwargs) -> Iterator[Any]:
        """Every item of a paged MLflow search: ``function(*args, page_token=..., **kwargs)`` called until a
        page has no next token, each page one counted request (as :meth:`call`, raising TrackingError)."""
        token = None
        while True:
            page = self._call(function, *args, page_token=token, **kwargs)
            yield from page
            token = page.token
            if not token:
                return

    def _error(self, exc: BaseException) -> TrackingError:
        hint = _sqlite_hint(exc)
        if hint:
            return TrackingError(f"MLflow at {_safe_uri(self.uri)}: {hint}")
        return TrackingError(f"MLflow at {_safe_uri(self.uri)}: {_first_line(exc)}")

    # experiments -------------------------------------------------------------------------------

    def experiment_name(self, experiment: str) -> str:
        return f"{self.project}/{experiment}"

    def experiment_ids(self) -> dict[str, str]:
        """MLflow experiment id -> mantik experiment name, for this project."""
        experiments = self.paged(
            self.client.search_experiments,
            filter_string=f"tags.`{Tag.PROJECT}` = '{_quote(self.project)}'",
            max_results=PAGE_SIZE,
        )
        return {e.experiment_id: e.tags.get(Tag.EXPERIMENT, e.name) for e in experiments}

    def ensure_experiment(self, experiment: str, known: dict[str, str]) -> str:
        for experiment_id, name in known.items():
            if name == experiment:
                return experiment_id
        name = self.experiment_name(experiment)
        existing = self._call(self.client.get_experiment_by_name, name)
        if existing is not None and existing.lifecycle_stage == "deleted":
            raise TrackingError(
                f"the MLflow experiment '{name}' was deleted; restore it (`mlflow experiments restore`) "
                "or permanently delete it before applying again"
            )
        if existing is not None:  # made by hand or by an older version: adopt it
            experiment_id = existing.experiment_id
            self._call(self.client.set_experiment_tag, experiment_id, Tag.PROJECT, self.project)
            self._call(self.client.set_experiment_tag, experiment_id, Tag.EXPERIMENT, experiment)
        else:  # apply holds the project lock: nobody else creates it meanwhile
            experiment_id = self._call(
                self.client.create_experiment,
                name,
                artifact_location=self._artifact_location(),
                tags={Tag.PROJECT: self.project, Tag.EXPERIMENT: experiment},
            )
        known[experiment_id] = experiment
        return experiment_id

    def _artifact_location(self) -> str | None:
        # sqlite stores default to ./mlruns under whatever directory the CLI ran in: keep artifacts beside the db
        if self.uri.startswith("sqlite:///"):
            return (Path(self.uri[len("sqlite:///") :]).parent / "artifacts").as_uri()
        return None

    # runs --------------------------------------------------------------------------------------

    def observe(
        self, cache: RunCache | None = None, incremental: bool = True, settled: bool = False
    ) -> list[ObservedRun]:
        """Every active run of the project, plus deleted runs still live (see ``deleted_live``).

        Without ``cache``: one paged scan. With it: the cached ended runs plus what can have changed since
        (see :mod:`.runcache`), or, when it cannot be used or ``incremental`` is false, a full scan that
        rebuilds it. A local sqlite store not written since the read that left the cache, when that read found
        no live run, is not read again: its runs are the cache's (see ``_unchanged_runs``); with ``incremental``
        any such read counts, with ``settled`` (a verb that reads in full, about ended runs) only a full scan.
        Each run's ``provenance`` is checked under this process's signing key (:mod:`.provenance`)."""
        runs = self._observe(cache, incremental, settled)
        provenance.checked(runs)
        return runs

    def _observe(self, cache: RunCache | None, incremental: bool, settled: bool) -> list[ObservedRun]:
        database = self._database()
        if cache is not None and database is not None and (incremental or settled):
            unchanged = self._unchanged_runs(cache, database, full_only=not incremental)
            if unchanged is not None:
                self.deleted_live = set()
                return unchanged
        before = _store_state(database) if cache is not None and database is not None else None
        experiment_ids = list(self.experiment_ids())
        if not experiment_ids:
            self.deleted_live = set()
            return []
        changes = None
        if cache is not None and incremental and cache.usable_for(experiment_ids):
            changes = self._observe_changes(experiment_ids, cache)  # None: the store is not the one cached
        full = changes is None
        if changes is not None:
            runs = changes
        else:
            runs = self._search(experiment_ids)
            deleted = self._deleted(experiment_ids)
            if cache is not None:
                cache.record(experiment_ids, runs, {r.run_id for r in deleted}, full_scan=True)
            runs += self._still_live(deleted)
        if before is not None and cache is not None and not self.deleted_live:
            state_dir = cache.path.parent.parent  # RunCache.for_store keeps it under STATE_DIR/cache/
            _stamp(cache, before, full, runs, lambda: RunCache.for_store(state_dir, self.uri, self.project))
        return runs

    def _unchanged_runs(self, cache: RunCache, database: Path, full_only: bool) -> list[ObservedRun] | None:
        """The cache's runs when nothing was written to ``database`` since the read whose result the cache holds
        (full, with ``full_only``) and that read found no live run, else None. Reads the stamp written after that
        read and the store file's header; imports no mlflow."""
        try:
            stamp = json.loads(_stamp_path(cache).read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(stamp, dict) or stamp.get("store") != _store_state(database) or stamp["store"] is None:
            return None
        if (full_only and not stamp.get("full")) or cache.live:
            return None
        if not cache.usable_for(cache.experiments):  # not loaded, or due for its daily full scan
            return None
        if stamp.get("cache") != _file_digest(cache.path):
            return None  # the cache was written by another read since
        if stamp.get("runs") != _ids_digest(cache.runs):
            return None  # that read returned runs the cache does not keep
        return list(cache.runs.values())

    def _observe_changes(self, experiment_ids: list[str], cache: RunCache) -> list[ObservedRun] | None:
        """The cached runs brought up to date; None when the store is not the one cached (a sentinel differs)."""
        fresh: dict[str, ObservedRun] = {}
        for status in sorted(LIVE):
            fresh.update((r.run_id, r) for r in self._search(experiment_ids, f"attributes.status = '{status}'"))
        for moment in ("start_time", "end_time"):
            changed = self._search(experiment_ids, f"attributes.{moment} >= {cache.since_ms}")
            fresh.update((r.run_id, r) for r in changed)
        deleted = self._deleted(experiment_ids)
        deleted_ids = {r.run_id for r in deleted}
        # live at the last plan and not seen now: ended, whatever the clock that stamped the end says
        # (or deleted); restored: deleted at the last plan, not now
        # and the sentinels, in the same search: the store is the one cached only if they read as cached
        unseen = sorted(
            (cache.live | (cache.deleted - deleted_ids) | set(cache.sentinels)) - fresh.keys() - deleted_ids
        )
        for chunk in range(0, len(unseen), ID_CHUNK):
            ids = ", ".join(f"'{_quote(run_id)}'" for run_id in unseen[chunk : chunk + ID_CHUNK])
            fresh.update((r.run_id, r) for r in self._search(experiment_ids, f"attributes.run_id IN ({ids})"))
        if not cache.holds(fresh, deleted_ids):
            return None
        runs = {run_id: run for run_id, run in cache.runs.items() if run_id not in deleted_ids}
        runs.update(fresh)
        cache.record(experiment_ids, list(fresh.values()), deleted_ids, full_scan=False)
        return list(runs.values()) + self._still_live(deleted)

    def _search(self, experiment_ids: list[str], filter_string: str = "", deleted: bool = False) -> list[ObservedRun]:
        """The runs a paged search finds (active, or deleted), decoded; runs without a key are left out."""
        from mlflow.entities import ViewType

        found = self.paged(
            self.client.search_runs,
            experiment_ids,
            filter_string=filter_string,
            run_view_type=ViewType.DELETED_ONLY if deleted else ViewType.ACTIVE_ONLY,
            max_results=PAGE_SIZE,
        )
        return [observed for run in found if (observed := _observed(run)) is not None]

    def _deleted(self, experiment_ids: list[str]) -> list[ObservedRun]:
        return self._search(experiment_ids, deleted=True)

    def _still_live(self, deleted: list[ObservedRun]) -> list[ObservedRun]:
        """A run deleted in MLflow while its job runs still holds its key: without it, apply would submit the
        key again beside the live job."""
        live = [run for run in deleted if run.status.live]
        self.deleted_live = {run.run_id for run in live}
        return live

    def create_run(self, experiment_id: str, run_name: str, tags: dict[str, str], params: dict[str, str]) -> str:
        """The intent record: created SCHEDULED, with its key, before anything is submitted.

        Three requests, MLflow's least: ``create_run`` carries every tag (it takes neither params nor a status),
        one ``log_batch`` the params (and the intent's signature tags), and the status is set through the store's
        ``update_run_info``, which ``MlflowClient.update_run`` calls only after reading the whole run back (a
        fourth round trip)."""
        from mlflow.entities import Param, RunTag
        from mlflow.entities import RunStatus as MlflowRunStatus

        run = self._call(
            self.client.create_run, experiment_id, tags={**tags, MlflowTag.RUN_NAME: run_name}, run_name=run_name
        )
        run_id = run.info.run_id
        signed = provenance.intent_signature_tags(run_id, tags)
        if params or signed:
            self._call(
                self.client.log_batch,
                run_id,
                params=[Param(k, v) for k, v in params.items()],
                tags=[RunTag(k, v) for k, v in signed.items()],
            )
        self._call(
            self.client._tracking_client.store.update_run_info,
            run_id,
            run_status=MlflowRunStatus.from_string(RunStatus.SCHEDULED.value),
            end_time=None,  # just created: it has none
            run_name=None,  # keeps the name it was created with
        )
        return run_id

    def run_status(self, run_id: str) -> RunStatus:
        return RunStatus(self._call(self.client.get_run, run_id).info.status)

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        self._update(run_id, self.client.log_batch, run_id, tags=[RunTag(k, v) for k, v in tags.items()])

    def delete_tags(self, run_id: str, keys: list[str]) -> None:
        """Remove tags this process wrote that turned out not to hold (one call per tag: MLflow has no batch)."""
        for key in keys:
            self._update(run_id, self.client.delete_tag, run_id, key)

    def _update(self, run_id: str, function, *args, **kwargs) -> None:
        """An update of the run. MLflow refuses updates to a deleted run: one deleted while live is restored
        for the update and deleted again. The job's runner may do the same at the same moment and delete it
        between our restore and our update: then it is tried again."""
        if run_id not in self.deleted_live:
            self._call(function, *args, **kwargs)
            return
        for attempt in range(DELETED_RUN_ATTEMPTS):
            self._call(self.client.restore_run, run_id)
            try:
                self._call(function, *args, **kwargs)
                return
            except TrackingError:
                if (
                    attempt == DELETED_RUN_ATTEMPTS - 1
                    or self._call(self.client.get_run, run_id).info.lifecycle_stage != "deleted"
                ):
                    raise
            finally:
                self._call(self.client.delete_run, run_id)

    def keep_deleted(self, run_ids: list[str]) -> None:
        """Runs this process updated while deleted end deleted, as their user left them, even when the job's
        runner restored one for its own update at the same moment (see ``_update``)."""
        for run_id in run_ids:
            if (
                run_id in self.deleted_live
                and self._call(self.client.get_run, run_id).info.lifecycle_stage != "deleted"
            ):
                self._call(self.client.delete_run, run_id)

    def log_output(self, run_id: str, output: bytes) -> None:
        """Keep a job's output as the run's log artifact, where the runner would have put it."""
        self._call(self.client.log_text, run_id, output.decode(errors="replace"), OUTPUT_ARTIFACT)

    def terminate(self, run_id: str, status: RunStatus, tags: dict[str, str] | None = None) -> None:
        if tags:
            self.set_tags(run_id, tags)
        self.end_run(run_id, status)

    def end_run(self, run_id: str, status: RunStatus | str, end_time: int | None = None) -> None:
        """End the run: ``status`` an ended RunStatus, ``end_time`` in ms since the epoch (None: now). Through
        the store's ``update_run_info``, as ``MlflowClient.set_terminated`` ends it, without what that adds
        against a server (mlflow/tracking/_tracking_service/client.py ``_log_url``): a second request reading
        the run back, and the run's URL printed to stdout, where it would break ``plan --json``."""
        from mlflow.entities import RunStatus as MlflowRunStatus

        self._update(
            run_id,
            self.client._tracking_client.store.update_run_info,
            run_id,
            run_status=MlflowRunStatus.from_string(RunStatus(status).value),
            end_time=end_time if end_time is not None else int(time.time() * 1000),
            run_name=None,  # keeps its name
        )

    # the project lock uses registered-model names: the one create-if-absent primitive every store has

    def create_lock_record(self, name: str, tags: dict[str, str]) -> bool:
        from mlflow.exceptions import MlflowException

        def create() -> bool:
            try:
                self.client.create_registered_model(name, tags=tags, description="mantik-spec project lock")
                return True
            except MlflowException as exc:
                # Taken. MLflow's sqlite store, on finding the name taken, reads the holder's record; when the
                # holder released it in between, that read fails as "does not exist": taken then, free now.
                if exc.error_code in ("RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST"):
                    return False
                raise

        return self._call(create)

    def read_lock_record(self, name: str) -> dict[str, str] | None:
        from mlflow.exceptions import MlflowException

        def read() -> dict[str, str] | None:
            try:
                return dict(self.client.get_registered_model(name).tags)
            except MlflowException as exc:
                if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                    return None
                raise

        return self._call(read)

    def set_lock_tag(self, name: str, key: str, value: str) -> None:
        self._call(self.client.set_registered_model_tag, name, key, value)

    def delete_lock_record(self, name: str) -> None:
        self._call(self.client.delete_registered_model, name)


# the store's state at a read, kept beside the run cache --------------------------------------------------


def _store_state(database: Path | None) -> list[int] | None:
    """What changes whenever a sqlite database file is written: its inode, size and modification time and the
    header's file change counter (bytes 24-27, which every write transaction increments in rollback-journal mode:
    https://www.sqlite.org/fileformat2.html#file_change_counter). None when it cannot tell: the file cannot be
    read, is no sqlite database, or a journal or write-ahead log beside it holds writes the file does not show."""
    if database is None:
        return None
    try:
        if any(database.with_name(database.name + suffix).exists() for suffix in ("-journal", "-wal")):
            return None
        with open(database, "rb") as handle:
            header = handle.read(100)
            status = os.fstat(handle.fileno())
    except OSError:
        return None
    if len(header) < 100 or not header.startswith(b"SQLite format 3\x00"):
        return None
    return [status.st_ino, status.st_size, status.st_mtime_ns, int.from_bytes(header[24:28], "big")]


def _stamp_path(cache: RunCache) -> Path:
    return cache.path.with_suffix(".stamp")


def _file_digest(path: Path) -> str | None:
    import hashlib

    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def _cache_contents(cache: RunCache) -> tuple:
    """What a run cache holds (what a command using it would see)."""
    return (list(cache.experiments), dict(cache.runs), set(cache.deleted), set(cache.live))


def _ids_digest(run_ids: Iterable[str]) -> str:
    import hashlib

    return hashlib.sha256("\n".join(sorted(run_ids)).encode()).hexdigest()


def _stamp(
    cache: RunCache, before: list[int], full: bool, runs: list[ObservedRun], reload: Callable[[], RunCache]
) -> None:
    """Note beside the cache the store's state taken before the read it holds (``before``), so that a later
    command finding the store in that state may use the cache without reading (``_unchanged_runs``), with the
    ids of the runs that read returned (the cache keeps ended runs only). Written only when the cache file holds
    that read (``reload()`` reads it back): not when it could not be written,
    nor when another command's read replaced it meanwhile."""
    path = _stamp_path(cache)
    try:
        digest = _file_digest(cache.path)
        if digest is None or _cache_contents(reload()) != _cache_contents(cache) or _file_digest(cache.path) != digest:
            path.unlink(missing_ok=True)
            return
        stamp = {"store": before, "cache": digest, "full": full, "runs": _ids_digest(r.run_id for r in runs)}
        write_atomically(path, json.dumps(stamp))
    except OSError:
        pass


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\'")


def _safe_uri(uri: str) -> str:
    parsed = urlparse(uri)
    if parsed.password or parsed.username:
        return uri.replace(parsed.netloc, parsed.hostname or "", 1)
    return uri


def _observed(run) -> ObservedRun | None:
    return decode_run(
        run_id=run.info.run_id,
        experiment_id=run.info.experiment_id,
        status=run.info.status,
        tags=run.data.tags,
        start_time=run.info.start_time,
        end_time=run.info.end_time,
        metrics=run.data.metrics,
    )
