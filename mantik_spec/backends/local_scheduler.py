"""The detached scheduler of the local backend: starts queued runs as slots free.

One per backend state directory, guarded by an flock. It exits when the queue
is empty; the runs it started go on without it. To never strand a run queued
while it was exiting, it re-reads the queue after releasing its lock.

A run whose interpreter is the scheduler's own is forked from the scheduler,
which imported mlflow and the queued runs' tracking store once (as
``multiprocessing``'s forkserver does it): the job's ``runner.py`` then runs as
``python runner.py JOB_DIR`` would, in its own session, without paying seconds
of imports per run. Any other interpreter is started as a new process.

Usage: python -m mantik_spec.backends.local_scheduler STATE_DIR
"""

from __future__ import annotations

import fcntl
import json
import os
import runpy
import subprocess
import sys
import time
import traceback
from pathlib import Path

from .. import runner
from ..faults import checkpoint
from ..files import write_atomically
from .local import (
    JOB_FILE,
    PID_FILE,
    SCHEDULER_CONFIG,
    SCHEDULER_LOCK,
    LocalQueue,
    process_start_time,
)

POLL_SECONDS = 0.2


def _forked(job: dict) -> bool:
    """Whether a job's runner is forked from the scheduler: it runs on the scheduler's own interpreter."""
    return (job.get("python") or sys.executable) == sys.executable


class Scheduler:
    def __init__(self, state_dir: Path):
        self.queue = LocalQueue(state_dir)
        self.children: list[subprocess.Popen] = []
        self.forked: set[int] = set()  # pids of runners forked from this process, reaped in ``running``

    def max_parallel(self) -> int:
        try:
            return int(json.loads((self.queue.state_dir / SCHEDULER_CONFIG).read_text())["max_parallel"])
        except (OSError, ValueError, KeyError):
            return 1

    def queued(self) -> list[str]:
        entries = []
        for marker in self.queue.queue.iterdir():
            if marker.name.endswith(".tmp"):
                continue
            try:
                entries.append((int(marker.read_text() or 0), marker.name))
            except (OSError, ValueError):
                continue
        return [name for _, name in sorted(entries)]

    def forked_tracking_uris(self, job_ids: list[str]) -> set[str]:
        """The tracking URIs of those of ``job_ids`` whose runner will be forked (it runs on our interpreter)."""
        uris = set()
        for job_id in job_ids:
            try:
                job = json.loads((self.queue.job_dir(job_id) / JOB_FILE).read_text())
            except (OSError, ValueError):
                continue  # started or cancelled meanwhile
            if _forked(job) and job.get("tracking_uri"):
                uris.add(str(job["tracking_uri"]))
        return uris

    def running(self) -> int:
        """Active jobs still alive; markers of ended ones are removed."""
        self.children = [child for child in self.children if child.poll() is None]  # reap our own
        for child_pid in list(self.forked):
            try:
                if os.waitpid(child_pid, os.WNOHANG)[0]:
                    self.forked.discard(child_pid)
            except ChildProcessError:
                self.forked.discard(child_pid)
        count = 0
        for marker in self.queue.active.iterdir():
            pid_file = self.queue.job_dir(marker.name) / PID_FILE
            if pid_file.exists():
                pid, started = pid_file.read_text().split()
                if process_start_time(int(pid)) == started:
                    count += 1
                    continue
            marker.unlink(missing_ok=True)
        return count

    def start(self, job_id: str) -> None:
        try:
            (self.queue.queue / job_id).rename(self.queue.active / job_id)
        except FileNotFoundError:
            return  # cancelled meanwhile
        job_dir = self.queue.job_dir(job_id)
        if (job_dir / runner.CANCEL_FILE).exists():
            (self.queue.active / job_id).unlink(missing_ok=True)
            return
        job = json.loads((job_dir / JOB_FILE).read_text())
        if _forked(job):
            pid, go = self.fork_runner(job_dir)
            self.forked.add(pid)
            checkpoint("scheduler-before-pid-file")
            write_atomically(job_dir / PID_FILE, f"{pid} {process_start_time(pid)}\n")
            checkpoint("scheduler-before-go")
            os.write(go, b"g")  # the runner starts once its pid file is there (see fork_runner)
            os.close(go)
            return
        with open(job_dir / "runner.err", "ab") as errors:
            child = subprocess.Popen(
                [job["python"], str(job_dir / "runner.py"), str(job_dir)],
                cwd=job_dir,
                stdin=subprocess.DEVNULL,
                stdout=errors,
                stderr=errors,
                start_new_session=True,
                close_fds=True,
            )
        self.children.append(child)
        write_atomically(job_dir / PID_FILE, f"{child.pid} {process_start_time(child.pid)}\n")

    def fork_runner(self, job_dir: Path) -> tuple[int, int]:
        """Fork a child that will run ``python JOB_DIR/runner.py JOB_DIR``; its pid, and the descriptor to write
        one byte to (then close) once its pid file is written: the runner starts only then.

        The child gets what ``subprocess.Popen(..., start_new_session=True, close_fds=True)`` would give it: its
        own session, the job directory as working directory, stdin from /dev/null, stdout and stderr appended
        to ``runner.err``, and no other descriptor (the scheduler's flock above all: a runner holding it would
        make every later scheduler think the queue is served). Ordering, so that a cancel never slips between:
        the child leads its own process group before this returns (a cancel that reads the pid file signals
        the group), and the runner, which reads the cancel file first, starts after the pid file exists."""
        errors = os.open(job_dir / "runner.err", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        nothing = os.open(os.devnull, os.O_RDONLY)
        in_session, told = os.pipe()
        wait_for_go, go = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid:
            for fd in (errors, nothing, told, wait_for_go):
                os.close(fd)
            os.read(in_session, 1)
            os.close(in_session)
            return pid, go
        code = 1
        try:
            for fd in (in_session, go):  # the scheduler's ends: with ours of ``go`` open, its death would block us
                os.close(fd)
            os.setsid()
            os.write(told, b"s")
            os.read(wait_for_go, 1)  # b"" too when the scheduler died: the runner then starts as it would have
            os.chdir(job_dir)
            os.dup2(nothing, 0)
            os.dup2(errors, 1)
            os.dup2(errors, 2)
            os.closerange(3, os.sysconf("SC_OPEN_MAX"))
            sys.argv = [str(job_dir / "runner.py"), str(job_dir)]
            try:
                runpy.run_path(sys.argv[0], run_name="__main__")
                code = 0
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
        except BaseException:  # noqa: BLE001 - the child must never return into the scheduler's loop
            traceback.print_exc()
        finally:
            try:  # as the interpreter ends: exit handlers, then the buffered streams
                import atexit

                atexit._run_exitfuncs()
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)

    def drain(self) -> None:
        while True:
            waiting = self.queued()
            if not waiting:
                return
            free = self.max_parallel() - self.running()
            for job_id in waiting[: max(free, 0)]:
                self.start(job_id)
            time.sleep(POLL_SECONDS)


def preload(tracking_uris: set[str]) -> None:
    """Import what every forked runner imports (a no-op once imported): mlflow's client, and the store for each
    tracking URI the queued runs record to (SQLAlchemy's for a database, ≈1.2 s of imports for every run that
    would do it on its own; the REST client for a server). Done before the first start, never between a
    start's look at the cancel file and the fork: seconds there would let a cancel slip. A runner that cannot
    import it says so in its own runner.err."""
    import importlib

    schemes = {uri.split(":", 1)[0].split("+", 1)[0].lower() for uri in tracking_uris}
    try:
        import mlflow.tracking  # noqa: F401
        from mlflow.store.db.db_types import DATABASE_ENGINES  # the schemes of its SQLAlchemy-backed stores

        if schemes & {"http", "https"}:
            import mlflow.store.tracking.rest_store  # noqa: F401
        for scheme in sorted(schemes & set(DATABASE_ENGINES)):
            import mlflow.store.tracking.sqlalchemy_store  # noqa: F401

            importlib.import_module(f"sqlalchemy.dialects.{scheme}")
    except Exception:  # noqa: BLE001, S110 - the runner reports it
        pass


def main(state_dir: str) -> int:
    scheduler = Scheduler(Path(state_dir))
    lock_path = Path(state_dir) / SCHEDULER_LOCK
    with open(lock_path, "a") as lock:
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return 0  # another scheduler holds the queue; it re-reads it before leaving
            waiting = scheduler.queued()
            if waiting:  # else the scheduler before this one started them all while it held the lock
                # with the lock only (a scheduler that finds it held leaves at once), before any start
                preload(scheduler.forked_tracking_uris(waiting))
                scheduler.drain()
            fcntl.flock(lock, fcntl.LOCK_UN)
            if not scheduler.queued():
                return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
