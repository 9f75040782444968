"""The local backend: runs as detached processes on this machine.

Each run gets a job directory ``.mantik/local/<backend>/jobs/<run id>/`` (the
job id is the MLflow run id) holding ``job.json``, a copy of the committed
tree, and, once started, ``pid`` (pid plus the process start time from
``/proc``, so a reused pid is never mistaken for the job) and ``exit_code``.
Queued runs wait as markers in ``queue/``; a detached scheduler
(:mod:`mantik_spec.backends.local_scheduler`) starts them as slots free, so
``max_parallel`` holds after the CLI has exited.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from .. import runner
from ..files import write_atomically
from ..spec.model import LocalConfig
from ..state.provenance import SEAL_VARIABLE
from ..vocab import JobState, JobStatus
from .base import BackendBase, BackendError, JobRequest, SubmissionFailed
from .hosts import HostJournal, LocalHost, read_from

JOB_FILE = "job.json"
JOB_ID = re.compile(r"[A-Za-z0-9_-]+")  # a run id (MLflow's are 32 hex digits), matched whole: one name in the queue
PID_FILE = "pid"
SCHEDULER_LOCK = "scheduler.lock"
SCHEDULER_CONFIG = "scheduler.json"


def process_start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (clock ticks since boot), None when it is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    if fields[0] in ("Z", "X"):  # zombies linger where the container's init does not reap
        return None
    return fields[19]


class LocalQueue:
    """The on-disk layout shared by the backend (writer of jobs) and the scheduler (starter of jobs)."""

    def __init__(self, state_dir: Path):
        self.state_dir = state_dir
        self.jobs = state_dir / "jobs"
        self.queue = state_dir / "queue"
        self.active = state_dir / "active"

    def create(self) -> None:
        for directory in (self.jobs, self.queue, self.active):
            directory.mkdir(parents=True, exist_ok=True)

    def job_dir(self, job_id: str) -> Path:
        return self.jobs / job_id

    def scheduler_alive(self) -> bool:
        lock_path = self.state_dir / SCHEDULER_LOCK
        if not lock_path.exists():
            return False
        with open(lock_path, "a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(handle, fcntl.LOCK_UN)
            return False

    def status(self, job_id: str, scheduler_alive=None) -> JobStatus:
        job_dir = self.job_dir(job_id)
        if not (job_dir / JOB_FILE).exists():
            return JobStatus(JobState.LOST, detail="no such job")
        cancelled = (job_dir / runner.CANCEL_FILE).exists()
        exit_status = self._exit_status(job_dir, cancelled)
        if exit_status is not None:
            return exit_status
        pid_file = job_dir / PID_FILE
        if pid_file.exists():
            pid, started = pid_file.read_text().split()
            if process_start_time(int(pid)) == started:
                return JobStatus(JobState.RUNNING)
            # the runner writes exit_code just before it exits: look once more
            return self._exit_status(job_dir, cancelled) or JobStatus(
                JobState.LOST, detail="process ended without an exit code"
            )
        if cancelled:
            return JobStatus(JobState.CANCELLED, detail="cancelled before it started")
        if (self.queue / job_id).exists():
            return JobStatus(JobState.PENDING)
        alive = scheduler_alive() if scheduler_alive else self.scheduler_alive()
        if (self.active / job_id).exists() and alive:
            return JobStatus(JobState.PENDING, detail="starting")
        return JobStatus(JobState.LOST, detail="never started")

    @staticmethod
    def _exit_status(job_dir: Path, cancelled: bool) -> JobStatus | None:
        try:
            code = int((job_dir / runner.EXIT_CODE_FILE).read_text())
        except (OSError, ValueError):
            return None
        if code == 0:
            return JobStatus(JobState.COMPLETED, 0)
        return JobStatus(JobState.CANCELLED if cancelled else JobState.FAILED, code)


class LocalBackend(BackendBase):
    min_poll_interval = 0.0  # polling reads a few files: no load to spare anyone
    shares_files = True  # jobs see this machine's files: nothing uncommitted needs sending
    sends_inputs = False  # nothing to send: see shares_files
    host = None  # jobs are this machine's processes, started without commands

    def __init__(self, name: str, config: LocalConfig, state_root: Path):
        self.name = name
        self.calls: Counter[str] = Counter()  # no scheduler to call: stays empty
        self.config = config
        self.queue = LocalQueue(state_root / "local" / name)

    def submit(self, requests: list[JobRequest]) -> dict[str, str]:
        self.queue.create()
        write_atomically(
            self.queue.state_dir / SCHEDULER_CONFIG, json.dumps({"max_parallel": self.config.max_parallel})
        )
        submitted: dict[str, str] = {}
        try:
            for request in requests:
                job_id = request.run_id
                self._write_job(job_id, request)
                (self.queue.queue / f"{job_id}").write_text(str(time.time_ns()))
                submitted[request.run_id] = job_id
        except OSError as exc:  # a full disk: what was queued runs, the rest is refused
            refused = [r.run_id for r in requests if r.run_id not in submitted]
            raise SubmissionFailed(f"cannot queue runs in {self.queue.state_dir}: {exc}", submitted, refused) from None
        finally:
            if submitted:
                self._ensure_scheduler()
        return submitted

    def _write_job(self, job_id: str, request: JobRequest) -> None:
        """The job directory appears whole or not at all (built aside, then renamed)."""
        final = self.queue.job_dir(job_id)
        if final.exists():
            return  # defensive: run ids are new for every submission, but a job is never written twice
        building = self.queue.jobs / f".building-{job_id}"
        shutil.rmtree(building, ignore_errors=True)
        shutil.copytree(request.code_dir, building / "work", symlinks=True)  # OSError: reported by submit
        shutil.copy2(runner.__file__, building / "runner.py")
        # `python` in a command means the interpreter mantik runs on (like `mlflow run --env-manager local`)
        job = request.runner_job("work", path_prepend=str(Path(sys.executable).parent), python=sys.executable)
        if request.signing:  # the scheduler's environment is that of the apply that started it: the seal of this
            job["seal"] = os.environ.get(SEAL_VARIABLE, "")  # one goes in the job file, readable by you alone
        (building / JOB_FILE).write_text(json.dumps(job, indent=2))
        (building / JOB_FILE).chmod(0o600)
        os.rename(building, final)

    def _ensure_scheduler(self) -> None:
        # A running scheduler re-reads the queue after releasing its lock, so starting
        # a second one that exits at once on the held lock is harmless.
        log = open(self.queue.state_dir / "scheduler.log", "ab")
        subprocess.Popen(
            [sys.executable, "-m", "mantik_spec.backends.local_scheduler", str(self.queue.state_dir)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
            close_fds=True,
        )
        log.close()

    def poll(self, jobs: dict[str, str]) -> dict[str, JobStatus]:
        alive: list[bool] = []

        def scheduler_alive() -> bool:  # asked at most once per poll
            if not alive:
                alive.append(self.queue.scheduler_alive())
            return alive[0]

        # a job is its run (job id = run id, a directory of this project's queue); a record naming anything
        # else names no job of ours, whoever wrote it
        states = {
            job_id: self.queue.status(job_id, scheduler_alive)
            if job_id == run_id and JOB_ID.fullmatch(job_id)
            else JobStatus(JobState.UNKNOWN, detail=f"job {job_id!r} is not run {run_id}'s: not asked")
            for job_id, run_id in jobs.items()
        }
        if any(s.state is JobState.PENDING for s in states.values()) and not scheduler_alive():
            self._ensure_scheduler()  # it died (killed, logged out): queued runs must not wait forever
        return states

    def find(self, run_ids: list[str]) -> dict[str, str]:
        return {run_id: run_id for run_id in run_ids if (self.queue.job_dir(run_id) / JOB_FILE).exists()}

    def cancel(self, job_ids: list[str]) -> None:
        foreign = [job_id for job_id in job_ids if not JOB_ID.fullmatch(job_id)]
        if foreign:  # a path, not a run id: it would reach outside this project's queue
            raise BackendError(f"job {', '.join(map(repr, foreign))} is not a run of this queue: left alone")
        for job_id in job_ids:
            job_dir = self.queue.job_dir(job_id)
            if not job_dir.exists():
                continue
            (job_dir / runner.CANCEL_FILE).write_text("")
            (self.queue.queue / job_id).unlink(missing_ok=True)
            pid_file = job_dir / PID_FILE
            if pid_file.exists():
                pid, started = pid_file.read_text().split()
                if process_start_time(int(pid)) == started:
                    try:
                        os.killpg(int(pid), signal.SIGTERM)  # the runner leads its group: the command gets it too
                    except ProcessLookupError:
                        pass

    def read_log(self, run_id: str, job_id: str | None = None, offset: int = 0) -> bytes | None:
        return read_from(str(self.queue.job_dir(run_id) / runner.OUTPUT_FILE), offset)

    def journal(self, run_id: str, job_id: str | None) -> HostJournal | None:
        if not JOB_ID.fullmatch(run_id):
            return None  # a record's id that is no run of this queue: nothing outside it is read
        return HostJournal(LocalHost(), str(self.queue.job_dir(run_id) / runner.JOURNAL_DIR))
