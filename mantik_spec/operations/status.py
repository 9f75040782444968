"""``mantik status`` and ``apply --wait``: where each declared run stands."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..backends.base import JobState, JobStatus
from ..state.tags import ObservedRun, RunStatus
from .project import Project, observe, poll_jobs, unreachable

POLL_SECONDS = 2.0


@dataclass
class StatusRow:
    experiment: str
    point_id: str
    state: str
    attempt: int | None = None
    run_id: str | None = None
    job_id: str | None = None
    started_ms: int | None = None
    metrics: dict = field(default_factory=dict)
    parameters: dict = field(default_factory=dict)  # the point's values (and seed), as declared

    def to_json(self) -> dict:
        return self.__dict__.copy()


def run_state(run: ObservedRun, job: JobStatus | None) -> str:
    """MLflow's status for ended runs; the backend's word for live ones (it wins when they disagree)."""
    if not run.live:
        return run.status.value.lower()
    if run.job_id is None:
        return "submitting"
    return (job or JobStatus(JobState.UNKNOWN)).state.value


def status_rows(project: Project, errors: list[str] | None = None) -> list[StatusRow]:
    """The rows of `mantik status`; backends that could not report are added to ``errors``."""
    observation = observe(project)
    if errors is not None:
        errors.extend(unreachable(observation))
    latest: dict[str, ObservedRun] = {}
    for run in observation.runs:
        if run.run_key not in latest or (run.attempt, run.start_time or 0) >= (
            latest[run.run_key].attempt,
            latest[run.run_key].start_time or 0,
        ):
            latest[run.run_key] = run
    rows = []
    for want in observation.desired:
        last = latest.get(want.key)
        parameters = want.point.values
        if last is None:
            state = "suspended" if want.point.suspended else "not submitted"
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
            )
        )
    return rows


def follow(
    project: Project, run_ids: list[str], on_update: Callable[[dict[str, str]], None], interval: float = POLL_SECONDS
) -> dict[str, str]:
    """Poll until every run in ``run_ids`` has ended; returns run id -> final state."""
    wanted = set(run_ids)
    while True:
        runs = [r for r in project.store.observe() if r.run_id in wanted]
        jobs = poll_jobs(project, runs)
        states = {}
        for run in runs:
            job = jobs.get((run.backend, run.job_id)) if run.job_id else None
            states[run.run_id] = run_state(run, job)
        on_update(states)
        if all(state in ENDED for state in states.values()) and len(states) == len(wanted):
            return states
        time.sleep(project.poll_pause(interval))


# the states of a status row (MLflow's status for ended runs, the job's for live ones) that are final,
# and of those the ones that mean success
ENDED = {s.value.lower() for s in RunStatus if s.ended} | {s.value for s in JobState if s.ended}
SUCCEEDED = {RunStatus.FINISHED.value.lower(), JobState.COMPLETED.value}
