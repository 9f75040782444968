"""The in-job runner: wraps the user's command inside a job, on any backend.

It needs only the Python standard library and mlflow (HPC nodes rarely have
more), so backends copy this one file next to the job. It reads ``job.json``
from the job directory, attaches the user's command to the declared MLflow run
(``MLFLOW_RUN_ID``), marks it RUNNING, keeps the combined output as the
``mantik/output.log`` artifact and ends the run FINISHED, FAILED or KILLED with
the exit code as a tag. The exit code is also written to ``exit_code`` so the
backend can settle the run's status when the tracking store was unreachable.

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
RUNNING, FINISHED, FAILED, KILLED = "RUNNING", "FINISHED", "FAILED", "KILLED"  # RunStatus values


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
    tracking = Tracking(job["tracking_uri"], job["run_id"])
    if not cancelled:
        tracking.do("update_run", status=RUNNING)

    environment = {name: value for name, value in os.environ.items() if name not in PRIVATE_VARIABLES}
    environment.update(job.get("environment", {}))
    environment.update(
        MLFLOW_RUN_ID=job["run_id"],
        MLFLOW_TRACKING_URI=job["tracking_uri"],
        MLFLOW_EXPERIMENT_ID=job["experiment_id"],
    )
    if job.get("path_prepend"):
        environment["PATH"] = job["path_prepend"] + os.pathsep + environment.get("PATH", "")

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
