"""The in-job runner: wraps the user's command inside a job, on any backend.

It needs only the Python standard library and mlflow (HPC nodes rarely have
more), so backends copy this one file next to the job. It reads ``job.json``
from the job directory, attaches the user's command to the declared MLflow run
(``MLFLOW_RUN_ID``), marks it RUNNING, keeps the combined output as the
``mantik/output.log`` artifact and ends the run FINISHED, FAILED or KILLED with
the exit code as a tag. The exit code is also written to ``exit_code`` so the
backend can settle the run's status when the tracking store was unreachable.

With ``tracking: offline`` in ``job.json`` (or ``auto`` when a probe at start finds the store unreachable) nothing
in the job touches the network: the runner gives the run a journal, an MLflow sqlite store in ``journal/`` of the
job directory with the same run id (artifacts in ``journal/artifacts/``), and points the command at it, so the
command's own ``mlflow`` calls work unchanged; ``mantik sync`` uploads the journal later (docs/offline.md).

Usage: python runner.py JOB_DIR
"""

import json
import os
import signal
import subprocess
import sys

EXIT_CODE_FILE = "exit_code"
OUTPUT_FILE = "output.log"
CANCEL_FILE = "cancel"
SIGNALLED = "stopped by a signal"  # the failure message of a run the runner saw terminated (for people)

# Copies of mantik_spec.state.tags, which this file cannot import (a test holds them equal)
EXIT_CODE_TAG = "mantik.exit_code"
FAILURE_TAG = "mantik.failure"
FAILURE_KIND_TAG = "mantik.failure_kind"
END_SIGNATURE_TAG = "mantik.end_signature"
SEAL_VARIABLE = "MANTIK_RUN_SEAL"  # mantik_spec.state.provenance: opens job.json's sealed run secret
PRIVATE_VARIABLES = ("MANTIK_SIGNING_KEY", SEAL_VARIABLE)  # never in the user's command's environment
SIGNALLED_KIND = "signalled"  # FailureKind.SIGNALLED: the scheduler knows why (time limit, preemption, cancel)
TRACKING_TAG = "mantik.tracking"  # how the job recorded: online, or offline (to its journal)
STARTED_TAG = "mantik.started"  # when the job started running, in ms since the epoch (the run's start_time is apply's)
RUNNING, FINISHED, FAILED, KILLED = "RUNNING", "FINISHED", "FAILED", "KILLED"  # RunStatus values

# The offline journal: an MLflow sqlite store in the job directory (mantik_spec.state.journal reads it)
JOURNAL_DIR = "journal"
JOURNAL_DB = "mlflow.db"
JOURNAL_ARTIFACTS = "artifacts"
PROBE_TIMEOUT = 5.0  # seconds the auto mode waits for the store at job start
PYTHON_HOOK_DIR = ".mantik-python"  # in the job directory: the sitecustomize below, first on the command's PYTHONPATH

# Scripts written for MLflow call mlflow.set_experiment(NAME) before start_run(); MLflow then refuses the run
# the job was given ("active experiment ID does not match environment run ID", mlflow/tracking/fluent.py),
# because mantik names the run's experiment PROJECT/EXPERIMENT. This hook, loaded by every Python the command
# starts, makes the run's experiment the active one whatever the script names while MLFLOW_RUN_ID is set,
# then loads the sitecustomize it shadows (a site's or a venv's own).
PYTHON_HOOK = '''"""mantik: mlflow.set_experiment(NAME) keeps the job's run in its experiment (written by mantik's runner)."""
import importlib.machinery
import importlib.util
import os
import sys


def _keep_the_runs_experiment(fluent):
    original = fluent.set_experiment

    def set_experiment(experiment_name=None, experiment_id=None, *args, **kwargs):
        run_experiment = os.environ.get("MLFLOW_EXPERIMENT_ID")
        if os.environ.get("MLFLOW_RUN_ID") and run_experiment and str(experiment_id) != run_experiment:
            sys.stderr.write(
                f"mantik: set_experiment({experiment_name or experiment_id!r}): this job's run is recorded in "
                f"experiment {run_experiment}, which stays the active one\\n"
            )
            return original(experiment_id=run_experiment)
        return original(experiment_name, experiment_id, *args, **kwargs)

    set_experiment.__doc__ = original.__doc__
    fluent.set_experiment = set_experiment


class _Finder:
    def find_spec(self, name, path=None, target=None):
        if name != "mlflow.tracking.fluent":
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
            execute = spec.loader.exec_module

            def exec_module(module):
                execute(module)
                _keep_the_runs_experiment(module)

            spec.loader.exec_module = exec_module
        return spec


sys.meta_path.insert(0, _Finder())
_here = os.path.dirname(os.path.abspath(__file__))
_shadowed = importlib.machinery.PathFinder.find_spec(
    "sitecustomize", [p for p in sys.path if os.path.abspath(p or ".") != _here]
)
if _shadowed is not None and _shadowed.loader is not None:
    _module = importlib.util.module_from_spec(_shadowed)
    _shadowed.loader.exec_module(_module)
'''

DATABASE_PORTS = {"postgresql": 5432, "mysql": 3306, "mssql": 1433}


class _CancelledBeforeStart(Exception):
    pass


def _warn(message):
    sys.stderr.write(f"mantik runner: {message}\n")
    sys.stderr.flush()


class Tracking:
    """Best effort: a job whose store is unreachable still runs; the reconciler settles its status."""

    def __init__(self, uri, run_id):
        self.run_id = run_id
        self.client = None
        self.restored = False  # whether this runner restored the run (deleted in MLflow) to update it
        try:
            import logging

            from mlflow.tracking import MlflowClient

            logging.getLogger("mlflow").setLevel(logging.WARNING)
            logging.getLogger("alembic").setLevel(logging.WARNING)

            self.client = MlflowClient(tracking_uri=uri)
        except Exception as exc:  # noqa: BLE001 - any failure here must not stop the job
            _warn(f"tracking unavailable: {exc}")

    def do(self, what, *args, **kwargs):
        """Make one client call about the run; True when it succeeded."""
        if self.client is None:
            return False
        call = getattr(self.client, what)
        try:
            call(self.run_id, *args, **kwargs)
            return True
        except Exception as exc:  # noqa: BLE001
            problem = exc
        # MLflow refuses updates to a deleted run: restore it for this one and delete it again, as apply does;
        # apply or cancel may do the same at once and delete it between our restore and our call: try again
        for _ in range(5):
            if not self._deleted():
                break
            try:
                self.client.restore_run(self.run_id)
                self.restored = True
                try:
                    call(self.run_id, *args, **kwargs)
                    return True
                finally:
                    self.client.delete_run(self.run_id)
            except Exception as exc:  # noqa: BLE001
                problem = exc
        _warn(
            f"tracking call {what} failed: {str(problem).splitlines()[0] if str(problem) else type(problem).__name__}"
        )
        return False

    def set_tags(self, tags):
        """Set ``tags`` (name -> value) on the run in one call; True when it succeeded."""
        if self.client is None:
            return False
        from mlflow.entities import RunTag

        return self.do("log_batch", tags=[RunTag(name, value) for name, value in tags.items()])

    def keep_deleted(self):
        """A run this runner restored for an update ends deleted, as its user left it: apply or cancel may have
        restored it at the same moment and deleted it before this runner's own update."""
        if self.restored and not self._deleted():
            try:
                self.client.delete_run(self.run_id)
            except Exception as exc:  # noqa: BLE001
                _warn(f"could not delete the run again: {exc}")

    def has_tag(self, name):
        run = self._run()
        return run is not None and name in run.data.tags

    def _deleted(self):
        run = self._run()
        return run is not None and run.info.lifecycle_stage == "deleted"

    def _run(self):
        """The run as the store has it now; None when there is no store or it cannot be read."""
        if self.client is None:
            return None
        try:
            return self.client.get_run(self.run_id)
        except Exception:  # noqa: BLE001 - unreachable: callers treat it as nothing to know
            return None


def reachable(uri, timeout=PROBE_TIMEOUT):
    """Whether the tracking store at ``uri`` answers within ``timeout`` seconds: a server that answers HTTP at
    all (an error status too), a database that accepts a connection, a sqlite file that is there."""
    from urllib.parse import urlparse

    parsed = urlparse(uri)
    scheme = parsed.scheme.lower().split("+")[0]
    if scheme in ("http", "https"):
        import urllib.error
        import urllib.request

        try:
            urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout).close()
        except urllib.error.HTTPError:
            return True  # it answered
        except Exception:  # noqa: BLE001 - refused, unreachable, timed out, no name: no route
            return False
        return True
    if scheme == "sqlite":
        path = uri[len("sqlite:///") :] if uri.startswith("sqlite:///") else ""
        return bool(path) and os.path.exists(path)
    if parsed.hostname and scheme in DATABASE_PORTS:
        import socket

        try:
            socket.create_connection((parsed.hostname, parsed.port or DATABASE_PORTS[scheme]), timeout=timeout).close()
        except OSError:
            return False
        return True
    return True  # a store this runner cannot probe (databricks, a plugin's): as asked


def open_journal(job_dir, job):
    """The run's journal, made on first use: an MLflow sqlite store holding the run under its own id, in its
    experiment (id and name as mantik recorded them, so ``MLFLOW_RUN_ID`` and ``MLFLOW_EXPERIMENT_ID`` hold).
    Returns (tracking URI, experiment id) for the command."""
    import getpass
    import sqlite3
    import time

    journal = os.path.join(os.path.abspath(job_dir), JOURNAL_DIR)
    artifacts = os.path.join(journal, JOURNAL_ARTIFACTS)
    os.makedirs(artifacts, exist_ok=True)
    database = os.path.join(journal, JOURNAL_DB)
    uri = "sqlite:///" + database
    experiment_id = str(job["experiment_id"])
    experiment_id = experiment_id if experiment_id.isdigit() else "1"  # a sqlite store numbers its experiments
    import logging

    from mlflow.tracking import MlflowClient

    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    if not os.path.exists(database) or not os.path.getsize(database):
        # 1 KiB pages (set before the first table, kept for the file's life): MLflow's empty store is 290 KiB
        # instead of 930 KiB in sqlite's default 4 KiB pages, and a sync reads the journal whole on each pass,
        # over SSH, UNICORE's storage or FirecREST (whose reads from 1 MiB on are transfer jobs)
        fresh = sqlite3.connect(database)
        try:
            fresh.execute("PRAGMA page_size = 1024")
            fresh.execute("CREATE TABLE mantik_page_size (x)")  # the first write fixes the page size
            fresh.execute("DROP TABLE mantik_page_size")
            fresh.commit()
        finally:
            fresh.close()
    MlflowClient(tracking_uri=uri).search_experiments(max_results=1)  # creates the store's tables
    now = int(time.time() * 1000)
    try:
        user = getpass.getuser()
    except Exception:  # noqa: BLE001 - no name for this uid in the node's passwd
        user = ""
    connection = sqlite3.connect(database, timeout=30)
    try:
        with connection:
            connection.execute(
                "INSERT OR IGNORE INTO experiments (experiment_id, name, artifact_location, lifecycle_stage, "
                "creation_time, last_update_time) VALUES (?, ?, ?, 'active', ?, ?)",
                (int(experiment_id), job.get("experiment_name") or f"mantik-{experiment_id}", artifacts, now, now),
            )
            connection.execute(
                "INSERT OR IGNORE INTO runs (run_uuid, name, source_type, source_name, entry_point_name, user_id, "
                "status, start_time, source_version, lifecycle_stage, artifact_uri, experiment_id) "
                "VALUES (?, ?, 'PROJECT', '', '', ?, 'SCHEDULED', ?, '', 'active', ?, ?)",
                (job["run_id"], job.get("point", ""), user, now, artifacts, int(experiment_id)),
            )
    finally:
        connection.close()
    return uri, experiment_id


def _write_atomically(path, text):
    """A copy of mantik_spec.files.write_atomically (durable), which this file cannot import."""
    import tempfile

    handle, temporary = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=os.path.dirname(path))
    try:
        with os.fdopen(handle, "w") as output:
            output.write(text)
            output.flush()
            os.fsync(output.fileno())
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def _unpack(archive, workdir):
    """Unpack the code sent as an archive: no member may land outside ``workdir``; the repository's
    own links (to /p/scratch/data, say) are kept as they are."""
    import tarfile

    os.makedirs(workdir, exist_ok=True)
    with tarfile.open(archive) as tar:
        if hasattr(tarfile, "tar_filter"):
            tar.extractall(workdir, filter="tar")
            return
        root = os.path.realpath(workdir)  # Pythons before the extraction filters: check by hand
        for member in tar.getmembers():
            target = os.path.realpath(os.path.join(workdir, member.name))
            if os.path.commonpath([root, target]) != root:
                raise ValueError(f"archive member {member.name} would land outside the working directory")
        tar.extractall(workdir)


def _end_signature(job, status):
    """The provenance signature of the run's end (mantik_spec.state.provenance); None when the job has none."""
    seal = job.get("seal") or os.environ.get(SEAL_VARIABLE)  # in the job file on the local backend only
    if not job.get("signing") or not seal:
        return None
    import hashlib
    import hmac

    pad = hmac.new(seal.encode(), job["run_id"].encode(), hashlib.sha256).digest()
    try:
        sealed = bytes.fromhex(job["signing"])
    except (TypeError, ValueError):
        sealed = b""
    if len(sealed) != len(pad):
        _warn("job.json's signing entry is not a sealed run secret: the run's end is not signed")
        return None
    secret = (int.from_bytes(sealed, "big") ^ int.from_bytes(pad, "big")).to_bytes(len(pad), "big")
    return hmac.new(secret, f"end\0{status}".encode(), hashlib.sha256).hexdigest()


def main(job_dir):
    import time

    started = int(time.time() * 1000)  # the job left the queue: before seconds go to importing mlflow
    cancelled = []

    def on_signal(signum, _frame):
        cancelled.append(signum)  # the child shares our process group and got the signal too

    # First of all: a cancel that arrives while mlflow is still being imported (seconds) must end the
    # job as cancelled, with its exit code written, not kill the runner before it can say so.
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if os.path.exists(os.path.join(job_dir, CANCEL_FILE)):  # a cancel that came before there was a pid to signal
        cancelled.append("cancel requested")

    with open(os.path.join(job_dir, "job.json")) as handle:
        job = json.load(handle)
    workdir = os.path.join(job_dir, job.get("workdir", "work"))
    if job.get("archive"):
        _unpack(os.path.join(job_dir, job["archive"]), workdir)
    mode = job.get("tracking") or "online"
    if mode == "auto":
        mode = "online" if reachable(job["tracking_uri"]) else "offline"
        if mode == "offline":
            _warn(f"the tracking store did not answer within {PROBE_TIMEOUT:g} s: recording to the journal")
    uri, experiment_id = job["tracking_uri"], job["experiment_id"]
    if mode == "offline":
        try:
            uri, experiment_id = open_journal(job_dir, job)
        except Exception as exc:  # noqa: BLE001 - the command runs all the same; its exit code settles the run
            _warn(f"cannot open the journal: {exc}")
    tracking = Tracking(uri, job["run_id"])
    # when the job started (MLflow's start_time is the submission and cannot be moved) and, in a mode that could
    # go either way, which way this job chose: for people, and offline for sync, which uploads them from the journal.
    # Not after a RUNNING update that failed: each call to a store that does not answer waits out MLflow's retries.
    tags = {STARTED_TAG: str(started)}
    if job.get("tracking") in ("offline", "auto"):
        tags[TRACKING_TAG] = mode
    if cancelled or tracking.do("update_run", status=RUNNING):
        tracking.set_tags(tags)

    environment = {name: value for name, value in os.environ.items() if name not in PRIVATE_VARIABLES}
    environment.update(job.get("environment", {}))
    environment.update(
        MLFLOW_RUN_ID=job["run_id"],
        MLFLOW_TRACKING_URI=uri,
        MLFLOW_EXPERIMENT_ID=experiment_id,
    )
    if job.get("path_prepend"):
        environment["PATH"] = job["path_prepend"] + os.pathsep + environment.get("PATH", "")
    try:
        hook = os.path.join(os.path.abspath(job_dir), PYTHON_HOOK_DIR)
        os.makedirs(hook, exist_ok=True)
        _write_atomically(os.path.join(hook, "sitecustomize.py"), PYTHON_HOOK)
        environment["PYTHONPATH"] = os.pathsep.join(filter(None, [hook, environment.get("PYTHONPATH")]))
    except OSError as exc:  # a read-only job directory: scripts that name no experiment still run
        _warn(f"cannot write the set_experiment hook: {exc}")

    log_path = os.path.join(job_dir, OUTPUT_FILE)
    with open(log_path, "ab", buffering=0) as log:
        try:
            if cancelled:
                raise _CancelledBeforeStart
            # bash, as `mlflow run` runs an entry point (mlflow/projects/backend/local.py): `source`, `[[`
            # and arrays work on every backend, where /bin/sh may be dash (Debian, Ubuntu)
            child = subprocess.Popen(
                ["bash", "-c", job["command"]],
                cwd=workdir,
                env=environment,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            if cancelled:  # arrived between the check and the start: the new child missed it
                child.send_signal(signal.SIGTERM)
            while True:
                try:
                    code = child.wait()
                    break
                except InterruptedError:  # pragma: no cover - PEP 475 retries for us
                    continue
        except _CancelledBeforeStart:
            log.write(b"mantik runner: cancelled before the command started\n")
            code = 128 + signal.SIGTERM
        except OSError as exc:
            log.write(f"mantik runner: cannot start the command: {exc}\n".encode())
            code = 127
    if code < 0:
        code = 128 - code  # killed by a signal: report it the way shells do
    # A scheduler's cancel, time limit and preemption all arrive as SIGTERM, to us or only to the
    # command (whose shell then exits 128+15); the backend's job state tells them apart.
    if not cancelled and code in (128 + signal.SIGTERM, 128 + signal.SIGINT):
        cancelled.append(code - 128)
    if cancelled and not tracking.has_tag(FAILURE_KIND_TAG):  # mantik's cancel says why before it signals
        tracking.do("set_tag", FAILURE_KIND_TAG, SIGNALLED_KIND)
        why = signal.Signals(cancelled[0]).name if isinstance(cancelled[0], int) else cancelled[0]
        tracking.do("set_tag", FAILURE_TAG, f"{SIGNALLED} ({why})")
    if os.path.exists(os.path.join(job_dir, CANCEL_FILE)):
        cancelled.append("cancel requested")
    status = KILLED if cancelled else (FINISHED if code == 0 else FAILED)
    # the command has exited: from here on only the runner talks to MLflow, whose set_terminated would read the run
    # back from a server only to print its URL into the job's output (mlflow/tracking/_tracking_service/client.py)
    os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
    tracking.do("log_artifact", log_path, "mantik")
    # An ended status always comes with its exit code: without the tag the run stays open, and the next
    # apply closes it from the backend's job state, exit code included.
    signature = _end_signature(job, status)
    if tracking.do("set_tag", EXIT_CODE_TAG, str(code)) and (
        signature is None or tracking.do("set_tag", END_SIGNATURE_TAG, signature)
    ):
        tracking.do("set_terminated", status)
    tracking.keep_deleted()
    _write_atomically(os.path.join(job_dir, EXIT_CODE_FILE), f"{code}\n")
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
