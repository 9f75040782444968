"""An in-memory compute backend: every member of the Backend protocol, jobs as entries of a dict, no process.

For apply's rules without a scheduler: a test makes submissions fail part-way or lose their answer, ends jobs
in the states it chooses, makes the backend unreachable or refuse a cancel, and reads what was asked of it.
The type check (``mypy``, run by tests/test_house.py; pyproject.toml names this file) proves it implements the
protocol.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mantik_spec.backends.base import BackendError, Host, JobRequest, SubmissionFailed
from mantik_spec.spec.cost import Allocation, Used
from mantik_spec.vocab import JobState, JobStatus


@dataclass
class FakeJob:
    request: JobRequest  # carries the run id and key, as a real job's name or directory does
    state: JobState = JobState.PENDING
    exit_code: int | None = None
    output: bytes = b""


@dataclass
class _Stop:
    """How the next submission stops (see :meth:`FakeBackend.stop_next_submit`)."""

    after: int
    message: str
    lost_answer: bool
    queued: bool


class FakeBackend:
    """A backend named ``name`` whose jobs are :class:`FakeJob` entries of :attr:`jobs`, by job id."""

    def __init__(self, name: str = "local", *, shares_files: bool = True, sends_inputs: bool = True) -> None:
        self.name = name
        self.shares_files = shares_files
        self.sends_inputs = sends_inputs
        self.min_poll_interval = 0.0
        self.live_journal_interval = 0.0
        self.launches_in_allocation = False  # its jobs are entries of a dict: no allocation to start tasks in
        self.jobs: dict[str, FakeJob] = {}
        self.submissions: list[list[JobRequest]] = []  # the requests of each submit call
        self.cancelled: list[str] = []  # job ids, in the order cancel was asked for them
        # knobs
        self.before_submit: Callable[[list[JobRequest]], None] | None = None  # called before any job exists
        self.unreachable = ""  # when set: poll answers UNKNOWN with this detail, find and cancel raise it
        self.cancel_refusal = ""  # when set: cancel raises BackendError with this message and stops nothing
        self.not_offered: list[str] = []  # what preflight reports
        self.config_notes: list[str] = []  # what notes reports
        self.accounted: dict[str, Used | None] = {}  # what usage reports, by job id (the site's accounting)
        self.left: Allocation | None = None  # what allocation reports
        self.start: str | None = None  # what estimated_start reports
        self._calls: Counter[str] = Counter()
        self._stop: _Stop | None = None

    # -- knobs that act on the next call or on jobs ---------------------------------------------------------

    def stop_next_submit(
        self,
        after: int,
        message: str = "the scheduler refused the job",
        *,
        lost_answer: bool = False,
        queued: bool = False,
    ) -> None:
        """The next submission accepts ``after`` runs, then stops: the next run is refused (with every later
        one), or with ``lost_answer`` its answer is lost (a timeout: it is reported unknown, as the batch
        backends report a :class:`~mantik_spec.backends.base.SubmissionInDoubt`) and ``queued`` says whether
        its job exists all the same (find then finds it). Later submissions go through."""
        self._stop = _Stop(after, message, lost_answer, queued)

    def end(self, job_id: str, state: JobState, exit_code: int | None = None, output: bytes = b"") -> None:
        """The job reaches ``state`` (RUNNING, or any state a job ends in), having written ``output``."""
        job = self.jobs[job_id]
        job.state, job.exit_code, job.output = state, exit_code, job.output + output

    def job_of(self, run_id: str) -> str:
        """The id of the (last) job started for ``run_id``."""
        return [job_id for job_id, job in self.jobs.items() if job.request.run_id == run_id][-1]

    # -- the Backend protocol -------------------------------------------------------------------------------

    @property
    def calls(self) -> Mapping[str, int]:
        return self._calls

    @property
    def host(self) -> Host | None:
        return None  # no commands: jobs are entries of a dict

    def submit(self, requests: list[JobRequest]) -> dict[str, str]:
        self._calls["submit"] += 1
        self.submissions.append(list(requests))
        if self.before_submit is not None:
            self.before_submit(list(requests))
        stop, self._stop = self._stop, None
        submitted: dict[str, str] = {}
        for position, request in enumerate(requests):
            if stop is not None and position == stop.after:
                if stop.lost_answer and stop.queued:
                    self._queue(request)
                rest = [r.run_id for r in requests[position + 1 :]]
                if stop.lost_answer:
                    raise SubmissionFailed(stop.message, submitted, rest, [request.run_id])
                raise SubmissionFailed(stop.message, submitted, [request.run_id, *rest])
            submitted[request.run_id] = self._queue(request)
        return submitted

    def _queue(self, request: JobRequest) -> str:
        job_id = f"{self.name}-{len(self.jobs) + 1}"
        self.jobs[job_id] = FakeJob(request)
        return job_id

    def poll(self, jobs: dict[str, str]) -> dict[str, JobStatus]:
        self._calls["poll"] += 1
        if self.unreachable:
            return {job_id: JobStatus(JobState.UNKNOWN, detail=self.unreachable) for job_id in jobs}
        return {
            job_id: JobStatus(self.jobs[job_id].state, self.jobs[job_id].exit_code)
            if job_id in self.jobs
            else JobStatus(JobState.LOST, detail="no such job")
            for job_id in jobs
        }

    def find(self, run_ids: list[str]) -> dict[str, str]:
        self._calls["find"] += 1
        if self.unreachable:
            raise BackendError(self.unreachable)
        wanted = set(run_ids)
        return {job.request.run_id: job_id for job_id, job in self.jobs.items() if job.request.run_id in wanted}

    def cancel(self, job_ids: list[str]) -> None:
        self._calls["cancel"] += 1
        if self.unreachable or self.cancel_refusal:
            raise BackendError(self.unreachable or self.cancel_refusal)
        self.cancelled.extend(job_ids)
        for job_id in job_ids:
            job = self.jobs.get(job_id)
            if job is not None and job.state.live:
                job.state = JobState.CANCELLED

    def read_log(self, run_id: str, job_id: str | None, offset: int = 0) -> bytes | None:
        self._calls["read_log"] += 1
        job = self.jobs.get(job_id) if job_id else None
        return job.output[offset:] if job is not None and job.output else None

    def journal(self, run_id: str, job_id: str | None) -> None:
        return None  # its jobs write no files

    def preflight(self) -> list[str]:
        return list(self.not_offered)

    def notes(self) -> list[str]:
        return list(self.config_notes)

    def stats(self) -> dict[str, int]:
        return {"submit call(s)": len(self.submissions)}

    def usage(self, job_ids: list[str]) -> dict[str, Used | None]:
        self._calls["usage"] += 1
        if self.unreachable:
            raise BackendError(self.unreachable)
        return {job_id: self.accounted[job_id] for job_id in job_ids if job_id in self.accounted}

    def allocation(self) -> Allocation | None:
        self._calls["allocation"] += 1
        if self.unreachable:
            raise BackendError(self.unreachable)
        return self.left

    def estimated_start(self) -> str | None:
        self._calls["estimated_start"] += 1
        if self.unreachable:
            raise BackendError(self.unreachable)
        return self.start


if TYPE_CHECKING:  # the type check proves the fake implements the protocol (never run)
    from mantik_spec.backends.base import Backend

    CHECKED: Backend = FakeBackend()
