"""``mantik status`` and ``apply --wait``: where each declared run stands."""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field

from ..errors import UserError
from ..reconcile.identity import ObservedRun
from ..vocab import FailureKind, JobState, JobStatus, Provenance, RowState
from .project import Project, observe, poll_jobs, unreachable
from .usage import ended_usage, record_usage

POLL_SECONDS = 2.0


@dataclass(frozen=True)
class RunTimes:
    """How long a run's job waited and ran, from the time its runner recorded as it started (tag
    ``mantik.started``): MLflow's start_time is the submission, which its API cannot move."""

    queued_s: float  # seconds from the submission (the run's MLflow start_time) to the job's start
    ran_s: float  # seconds from the job's start to the run's end, or to now while it has none
    running: bool  # no end yet: ``ran_s`` is so far


def run_times(submitted_ms: int | None, started_ms: int | None, ended_ms: int | None, now_ms: float) -> RunTimes | None:
    """The queue wait and run time of a run submitted, started and ended at these moments (ms since the epoch;
    ``ended_ms`` None while it runs); None for a run without a recorded start, which reads as before. Spans a
    clock between the submitting machine and the node makes negative read as 0."""
    if started_ms is None or submitted_ms is None:
        return None
    end = ended_ms if ended_ms is not None else now_ms
    return RunTimes(max(started_ms - submitted_ms, 0) / 1000, max(end - started_ms, 0) / 1000, ended_ms is None)


@dataclass
class StatusRow:
    experiment: str
    point_id: str
    state: RowState
    attempt: int | None = None
    run_id: str | None = None
    job_id: str | None = None
    started_ms: int | None = None
    metrics: dict = field(default_factory=dict)
    parameters: dict = field(default_factory=dict)  # the point's values (and seed), as declared
    unverified: bool = False  # an ended run whose signature does not hold under MANTIK_SIGNING_KEY (..state.provenance)
    job_started_ms: int | None = None  # when its job started running, as its runner recorded (tag mantik.started)
    ended_ms: int | None = None  # the run's MLflow end_time; None while it runs

    def times(self, now_ms: float) -> RunTimes | None:
        """Its queue wait and run time (:func:`run_times`); None when its runner recorded no start."""
        return run_times(self.started_ms, self.job_started_ms, self.ended_ms if self.state.ended else None, now_ms)

    def to_json(self) -> dict:
        return self.__dict__.copy()


def run_state(run: ObservedRun, job: JobStatus | None) -> RowState:
    """MLflow's status for ended runs (a KILLED run says whether it was cancelled); the backend's word for
    live ones (it wins when they disagree)."""
    if not run.live:
        if run.failure_kind in (FailureKind.CANCELLED, FailureKind.USER_CANCELLED):
            return RowState.CANCELLED  # the word plan and the scheduler use for it
        return RowState.of_run(run.status)
    if run.job_id is None:
        return RowState.SUBMITTING
    return RowState.of_job((job or JobStatus(JobState.UNKNOWN)).state)


def status_rows(
    project: Project, errors: list[str] | None = None, experiments: Collection[str] = ()
) -> list[StatusRow]:
    """The rows of `mantik status` (of ``experiments`` only, when named: UserError for one mantik.yaml does
    not declare); backends that could not report are added to ``errors``."""
    unknown = [name for name in experiments if name not in project.spec.experiments]
    if unknown:
        declared = ", ".join(sorted(project.spec.experiments)) or "none"
        raise UserError(f"no experiment {unknown[0]!r} in mantik.yaml (declared: {declared})")
    observation = observe(project, settled=True)  # ended runs from the run cache while the store is unchanged
    if errors is not None:
        errors.extend(unreachable(observation))
    latest: dict[str, ObservedRun] = {}

    def rank(run: ObservedRun) -> tuple:  # a record whose signature fails never hides one of mantik's own runs
        return (run.provenance is not Provenance.UNVERIFIED, run.attempt, run.start_time or 0)

    for run in observation.runs:
        if run.run_key not in latest or rank(run) >= rank(latest[run.run_key]):
            latest[run.run_key] = run
    rows = []
    for want in observation.desired:
        if experiments and want.point.experiment not in experiments:
            continue
        last = latest.get(want.key)
        parameters = want.point.values
        if last is None:
            state = RowState.SUSPENDED if want.point.suspended else RowState.NOT_SUBMITTED
            rows.append(StatusRow(want.point.experiment, want.point.point_id, state, parameters=parameters))
            continue
        job = observation.jobs.get((last.backend, last.job_id)) if last.job_id else None
        rows.append(
            StatusRow(
                want.point.experiment,
                want.point.point_id,
                run_state(last, job),
                last.attempt,
                last.run_id,
                last.job_id,
                last.start_time,
                last.metrics,
                parameters,
                unverified=last.provenance is Provenance.UNVERIFIED,
                job_started_ms=last.job_started,
                ended_ms=last.end_time,
            )
        )
    return rows


def watch_rows(project: Project, interval: float, experiments: Collection[str] = ()) -> Iterator[list[StatusRow]]:
    """The rows of ``status --watch``, read again every ``interval`` seconds until every run has ended (or was
    never submitted)."""
    while True:
        rows = status_rows(project, experiments=experiments)
        yield rows
        if all(row.state.ended or row.state in (RowState.NOT_SUBMITTED, RowState.SUSPENDED) for row in rows):
            return
        time.sleep(project.poll_pause(interval))


def follow(
    project: Project,
    run_ids: list[str],
    on_update: Callable[[dict[str, RowState]], None],
    interval: float = POLL_SECONDS,
) -> dict[str, RowState]:
    """Poll until every run in ``run_ids`` has ended, and with it the job's runner; returns run id -> final
    state. A command using MLflow's fluent API ends the run FINISHED itself when it exits (mlflow's atexit
    ``end_run``), before the runner records the exit code, the output and the status it decides: such a run
    counts as ended once its job has. Then what each used is recorded on it (:mod:`.usage`)."""
    wanted = set(run_ids)
    settled: set[str] = set()  # ended in MLflow, and their jobs too: the record is final
    while True:
        runs = [r for r in project.store.observe() if r.run_id in wanted]
        closing = [r for r in runs if not r.live and r.job_id and r.run_id not in settled]
        jobs = poll_jobs(project, runs, explain=closing)
        from .sync import sync_journals

        if sync_journals(project, runs, jobs).changed:  # runs recorded offline end when their journal is synced
            fresh = {r.run_id: r for r in project.store.observe() if r.run_id in wanted}
            runs = [fresh.get(r.run_id, r) for r in runs]
        ended_while_read = [
            r for r in runs if r.live and r.job_id and (job := jobs.get((r.backend, r.job_id))) and job.state.ended
        ]
        if ended_while_read:  # the runner records the end before its job ends: read those records again
            fresh = {r.run_id: r for r in project.store.observe() if r.run_id in wanted}
            runs = [fresh.get(r.run_id, r) for r in runs]
        closing_ids = {r.run_id for r in closing}
        states = {}
        for run in runs:
            job = jobs.get((run.backend, run.job_id)) if run.job_id else None
            if run.run_id in closing_ids:
                if job is not None and job.state.live:
                    states[run.run_id] = RowState.of_job(job.state)  # the runner is still writing the record
                    continue
                settled.add(run.run_id)
            states[run.run_id] = run_state(run, job)
        on_update(states)
        if all(state.ended for state in states.values()) and len(states) == len(wanted):
            # what they used, now that their jobs ended (the poll just asked the accounting about them)
            record_usage(project, ended_usage(project, [r for r in runs if r.run_id in settled]))
            return states
        time.sleep(project.poll_pause(interval))


@dataclass(frozen=True)
class Unsuccessful:
    run_id: str
    point_id: str
    state: RowState
    last_line: str  # the last line of the recorded failure, else of the run's output


def unsuccessful(project: Project, final: dict[str, RowState]) -> list[Unsuccessful]:
    """The runs of ``final`` (run id -> state, from :func:`follow`) that did not finish, and why in one line."""
    failed = {run_id for run_id, state in final.items() if not state.succeeded}
    result = []
    for run in project.store.observe():
        if run.run_id not in failed:
            continue
        why = _last_line(run.failure or "") or _last_output_line(project, run) or "no output"
        result.append(Unsuccessful(run.run_id, run.point_id, final[run.run_id], why))
    return sorted(result, key=lambda f: f.point_id)


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _last_output_line(project: Project, run) -> str:
    if run.backend not in project.spec.backends:
        return ""
    try:
        output = project.backend(run.backend).read_log(run.run_id, run.job_id)
    except Exception:  # noqa: BLE001 - a reason line is best effort; `mantik logs` reports its own errors
        return ""
    return _last_line((output or b"")[-4096:].decode(errors="replace"))
