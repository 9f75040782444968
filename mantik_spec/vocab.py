"""The words every floor shares: how a job stands, how a run record stands, why it failed, and what a status
row says.

The backends report :class:`JobState`; MLflow records :class:`RunStatus` and :class:`FailureKind`; the
planner maps one onto the other; ``mantik status`` shows a :class:`RowState`. Job state (is the job
healthy?) is deliberately a separate vocabulary from plan actions (does the world match the spec?). Plain
types without I/O: this module imports nothing of the package, so every layer can use it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class JobState(enum.Enum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMEOUT = "timeout"
    OUT_OF_MEMORY = "out_of_memory"
    NODE_FAIL = "node_fail"
    PREEMPTED = "preempted"
    LOST = "lost"  # the job is gone and left no exit status behind
    UNKNOWN = "unknown"  # the backend could not say (unreachable): never acted upon

    @property
    def live(self) -> bool:
        return self in (JobState.PENDING, JobState.RUNNING)

    @property
    def ended(self) -> bool:
        return not self.live and self is not JobState.UNKNOWN


@dataclass(frozen=True)
class JobStatus:
    state: JobState
    exit_code: int | None = None
    detail: str = ""


class Provenance(enum.StrEnum):
    """Whether a run record's end is mantik's own (:mod:`mantik_spec.state.provenance`): ``verified``, its
    signature holds under the project's signing key; ``unverified``, it does not (forged, edited, or written
    before signing began); ``unchecked``, no key is set (or the run has not ended), so nothing can be told."""

    VERIFIED = "verified"
    UNVERIFIED = "unverified"
    UNCHECKED = "unchecked"


class RunStatus(enum.StrEnum):
    """MLflow's run statuses (``mlflow.entities.RunStatus``), as the store reports them."""

    SCHEDULED = "SCHEDULED"  # an intent record: created before its job was submitted
    RUNNING = "RUNNING"
    FINISHED = "FINISHED"
    FAILED = "FAILED"
    KILLED = "KILLED"

    @property
    def live(self) -> bool:
        return self in (RunStatus.SCHEDULED, RunStatus.RUNNING)

    @property
    def ended(self) -> bool:
        return not self.live

    @property
    def unsuccessful(self) -> bool:
        return self in (RunStatus.FAILED, RunStatus.KILLED)


class FailureKind(enum.StrEnum):
    """Why a run record was closed unsuccessfully: the value of the ``mantik.failure_kind`` tag."""

    INTERRUPTED = "interrupted"  # an apply stopped between the intent record and recording a job
    REFUSED = "refused"  # the backend refused the submission (or it was never sent)
    SIGNALLED = "signalled"  # the runner saw its command stopped by a signal: the scheduler knows why
    CANCELLED = "cancelled"  # by `apply --prune`, or outside the tool (scancel, an admin): retried if allowed
    USER_CANCELLED = "user_cancelled"  # by `mantik cancel`: the user's choice, never resubmitted on its own
    JOB_FAILED = "job_failed"  # the job ended with a failure exit code
    TIMEOUT = "timeout"
    OUT_OF_MEMORY = "out_of_memory"
    NODE_FAIL = "node_fail"
    PREEMPTED = "preempted"
    LOST = "lost"  # the job is gone and left no exit status behind

    @property
    def ran(self) -> bool:
        """Whether the run got to run: only runs that did spend a retry."""
        return self not in (FailureKind.INTERRUPTED, FailureKind.REFUSED)

    @property
    def spends_retry(self) -> bool:
        """Whether this outcome uses up one of the point's retries: not when it never ran, nor when the
        user stopped it on purpose."""
        return self.ran and self is not FailureKind.USER_CANCELLED


class RowState(enum.StrEnum):
    """Where a declared run stands in ``mantik status`` and ``apply --wait``: MLflow's status (in lower case)
    for an ended run, its job's state for a live one, or why it has neither."""

    NOT_SUBMITTED = "not submitted"
    SUSPENDED = "suspended"  # not submitted: its experiment is suspended
    SUBMITTING = "submitting"  # an intent record without a job yet
    # a job's state (JobState's values)
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"  # also MLflow's FAILED
    CANCELLED = "cancelled"  # also an ended run whose failure kind says it was cancelled
    TIMEOUT = "timeout"
    OUT_OF_MEMORY = "out_of_memory"
    NODE_FAIL = "node_fail"
    PREEMPTED = "preempted"
    LOST = "lost"
    UNKNOWN = "unknown"
    # MLflow's status of an ended run
    FINISHED = "finished"
    KILLED = "killed"

    @classmethod
    def of_job(cls, state: JobState) -> RowState:
        return cls(state.value)

    @classmethod
    def of_run(cls, status: RunStatus) -> RowState:
        return cls(status.value.lower())

    @property
    def ended(self) -> bool:
        """Final: MLflow's status of an ended run, or the state of an ended job."""
        return self in _ENDED_ROWS

    @property
    def succeeded(self) -> bool:
        return self in (RowState.FINISHED, RowState.COMPLETED)


_ENDED_ROWS = frozenset(
    {RowState.of_run(s) for s in RunStatus if s.ended} | {RowState.of_job(s) for s in JobState if s.ended}
)
