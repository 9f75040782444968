"""The planner: a pure function of (desired runs, observed runs, job states) to a plan.

No I/O happens here, so every rule can be tested with plain data. The rules,
per declared run point, in order:

* a FINISHED run has its key                        -> ``=`` up to date
* a live run has its key and its job is live         -> ``…`` running
* a live run has its key but its job ended or is gone -> ``!`` repair (record the
  job's outcome; resubmit when it failed and retries are left)
* only failed attempts, retries left                 -> ``~`` retry
* only failed attempts, none left                    -> ``x`` failed (unless the environment
  or the backend's setup changed since the last attempt: ``~`` one more)
* no run has its key                                 -> ``+`` submit, saying which
  input changed against the latest run of the same point

A failed run spends a retry unless its failure kind says it never ran
(``interrupted``, ``refused``). Decisions read statuses and kinds; every reason
is for people, and is recorded with the kind when a run is closed.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Collection, Iterable

from ..vocab import FailureKind, JobState, JobStatus, RunStatus
from .identity import INPUTS, DesiredRun, ObservedRun, recorded_identity
from .plan import Action, Plan, PlannedRun

JobStates = dict[tuple[str, str], JobStatus]  # (backend name, job id) -> status

# the messages recorded with these failure kinds (for people: decisions read the kind)
INTERRUPTED = "submission interrupted before a job was recorded"
REFUSED = "submission refused by the backend"
KILLED_STATES = (JobState.CANCELLED, JobState.PREEMPTED)
ENDED_KINDS = {  # how a job that ended unsuccessfully is recorded
    JobState.COMPLETED: FailureKind.JOB_FAILED,  # with a failure exit code
    JobState.FAILED: FailureKind.JOB_FAILED,
    JobState.CANCELLED: FailureKind.CANCELLED,
    JobState.TIMEOUT: FailureKind.TIMEOUT,
    JobState.OUT_OF_MEMORY: FailureKind.OUT_OF_MEMORY,
    JobState.NODE_FAIL: FailureKind.NODE_FAIL,
    JobState.PREEMPTED: FailureKind.PREEMPTED,
    JobState.LOST: FailureKind.LOST,
}


def make_plan(
    desired: Iterable[DesiredRun],
    observed: Iterable[ObservedRun],
    jobs: JobStates,
    *,
    commit: str,
    spec_digest: str,
    prune: bool = False,
    changed_files: dict[str, list[str]] | None = None,
    replace: Collection[str] = (),
) -> Plan:
    """``replace``: point ids to run again whatever their runs say (Terraform's ``-replace``); a point
    with a live run is not replaced (it says so) until that run has ended."""
    desired = list(desired)
    by_key: dict[str, list[ObservedRun]] = defaultdict(list)
    by_point: dict[str, list[ObservedRun]] = defaultdict(list)
    for run in observed:
        by_key[run.run_key].append(run)
        by_point[run.point_id].append(run)
    for runs in (*by_key.values(), *by_point.values()):
        runs.sort(key=lambda r: (r.attempt, r.start_time or 0))

    entries = []
    warnings = []
    planned: dict[str, str] = {}  # run key -> the point it is planned under
    for want in desired:
        if want.key in planned:  # e.g. an experiment that extends another without changing its runs
            warnings.append(f"{want.point.point_id} is the same run as {planned[want.key]}: planned once")
            continue
        planned[want.key] = want.point.point_id
        runs = by_key.get(want.key, [])
        entry = _plan_point(want, runs, by_point.get(want.point.point_id, []), jobs, changed_files or {}, commit)
        if want.point.point_id in replace:
            entry = _replaced(want, runs, entry)
        entries.append(entry)
        entries.extend(_close_duplicates(want, runs, entry.run_id, jobs))
    declared = {want.key for want in desired}
    for key, runs in by_key.items():
        if key not in declared:
            entries.extend(_plan_undeclared(runs, jobs, prune))
    return Plan(entries=entries, commit=commit, spec_digest=spec_digest, warnings=warnings)


def _entry(want: DesiredRun, action: Action, reason: str, **fields) -> PlannedRun:
    return PlannedRun(
        action=action,
        experiment=want.point.experiment,
        point_id=want.point.point_id,
        run_key=want.key,
        backend=want.point.backend,
        parameters=want.point.values,
        reason=reason,
        **fields,
    )


def _about(run: ObservedRun) -> dict:
    """The fields of an entry that name the existing run it is about."""
    return {"run_id": run.run_id, "job_id": run.job_id, "attempt": run.attempt}


def _final_status(status: JobStatus) -> RunStatus:
    """The MLflow status that records how a job ended."""
    if status.state is JobState.COMPLETED and status.exit_code in (0, None):
        return RunStatus.FINISHED
    return RunStatus.KILLED if status.state in KILLED_STATES else RunStatus.FAILED


def _closing(status: JobStatus) -> dict:
    """The fields of a repair entry that close a run from its ended job: the status and why."""
    final = _final_status(status)
    kind = None if final is RunStatus.FINISHED else ENDED_KINDS.get(status.state, FailureKind.LOST)
    return {"mark_status": final, "failure_kind": kind, "exit_code": status.exit_code}


def counts_as_attempt(run: ObservedRun) -> bool:
    """A failed run spends a retry unless it never got to run (interrupted or refused submission)."""
    return run.status.unsuccessful and (run.failure_kind is None or run.failure_kind.spends_retry)


def _plan_point(
    want: DesiredRun, runs: list[ObservedRun], history: list[ObservedRun], jobs: JobStates, changed_files, commit: str
) -> PlannedRun:
    finished = [r for r in runs if r.status is RunStatus.FINISHED]
    if finished:
        return _entry(want, Action.UP_TO_DATE, "a finished run has this key", **_about(finished[-1]))

    live = [r for r in runs if r.live]
    if live:
        return _plan_live(want, live[-1], jobs)

    failed_attempts = sum(1 for r in runs if counts_as_attempt(r))
    if runs and want.point.suspended:
        return _entry(want, Action.SUSPENDED, "experiment is suspended (its last run failed)", **_about(runs[-1]))
    if runs and runs[-1].failure_kind is FailureKind.USER_CANCELLED:
        reason = f"cancelled with `mantik cancel`; `mantik apply --replace '{want.point.point_id}'` runs it again"
        return _entry(want, Action.CANCELLED, reason, **_about(runs[-1]))
    if runs:  # only failed attempts
        last = runs[-1]
        ended = jobs.get((last.backend, last.job_id)) if last.job_id else None
        if last.job_id and ended is not None and ended.state.ended:
            why = _describe_end(last.job_id, ended)
        else:
            why = last.failure or f"run {last.run_id} {last.status.value}"
        if failed_attempts <= want.point.retries:
            reason = f"attempt {failed_attempts + 1} of {want.point.retries + 1}: {why}"
            return _entry(want, Action.RETRY, reason, **_about(last), next_attempt=failed_attempts + 1)
        if last.setup and want.setup and last.setup != want.setup:  # the fix is in the environment, not the code
            reason = f"environment or backend setup changed since attempt {last.attempt} failed: {why}"
            return _entry(want, Action.RETRY, reason, **_about(last), next_attempt=failed_attempts + 1)
        reason = f"{failed_attempts} attempt(s) failed, no retries left: {why}"
        return _entry(want, Action.FAILED, reason, **_about(last))

    if want.point.suspended:
        return _entry(want, Action.SUSPENDED, "experiment is suspended")
    return _entry(want, Action.SUBMIT, _why_new(want, history, changed_files, commit), next_attempt=1)


def _replaced(want: DesiredRun, runs: list[ObservedRun], planned: PlannedRun) -> PlannedRun:
    """A point asked to run again: a new attempt of the same key, unless one is still live."""
    if planned.action in (Action.RUNNING, Action.REPAIR) and any(r.live for r in runs):
        # replacing what runs would double it
        return dataclasses.replace(planned, reason=planned.reason + "; not replaced: it is live (cancel it first)")
    attempt = max((r.attempt for r in runs), default=0) + 1
    return _entry(
        want,
        Action.SUBMIT,
        "replaced on request (--replace)" + (f"; was: {planned.reason}" if runs else ""),
        **(_about(runs[-1]) if runs else {}),
        next_attempt=attempt,
    )


def _plan_live(want: DesiredRun, run: ObservedRun, jobs: JobStates) -> PlannedRun:
    """A live run of the key: the backend's word on its job decides."""
    suspended = want.point.suspended
    if run.job_id is None:
        reason = INTERRUPTED + ("; not resubmitted: the experiment is suspended" if suspended else "; resubmitting")
        return _entry(
            want,
            Action.REPAIR,
            reason,
            **_about(run),
            mark_status=RunStatus.FAILED,
            failure_kind=FailureKind.INTERRUPTED,
            next_attempt=None if suspended else run.attempt,
        )
    status = jobs.get((run.backend, run.job_id), JobStatus(JobState.UNKNOWN))
    note = f"job {run.job_id} {status.state.value}"
    if status.state is JobState.UNKNOWN and status.detail:  # why the backend could not say
        note += f": {status.detail}"
    if status.state.live or status.state is JobState.UNKNOWN:
        if run.adopted_job:
            reason = f"{note}, found on the backend but not recorded; adopting it"
            return _entry(want, Action.REPAIR, reason, **_about(run), record_job=True)
        return _entry(want, Action.RUNNING, note, **_about(run))
    if _final_status(status) is RunStatus.FINISHED:
        reason = f"job {run.job_id} completed but the run was not closed; recording FINISHED"
        return _entry(want, Action.REPAIR, reason, **_about(run), **_closing(status), record_job=run.adopted_job)
    retry_allowed = run.attempt <= want.point.retries and not suspended
    if suspended:
        follow = "; not retried: the experiment is suspended"
    else:
        follow = f"; retrying (attempt {run.attempt + 1})" if retry_allowed else "; no retries left"
    return _entry(
        want,
        Action.REPAIR,
        _describe_end(run.job_id, status) + follow,
        **_about(run),
        **_closing(status),
        record_job=run.adopted_job,
        next_attempt=run.attempt + 1 if retry_allowed else None,
    )


def _close_duplicates(want: DesiredRun, runs: list[ObservedRun], kept: str | None, jobs: JobStates) -> list[PlannedRun]:
    """Other live runs of the same key (a double submission, or a stale record) are closed once their job ended."""
    entries = []
    for run in runs:
        if not run.live or run.run_id == kept:
            continue
        if run.job_id is None:
            interrupted = _entry(
                want,
                Action.REPAIR,
                INTERRUPTED,
                **_about(run),
                mark_status=RunStatus.FAILED,
                failure_kind=FailureKind.INTERRUPTED,
            )
            entries.append(interrupted)
            continue
        status = jobs.get((run.backend, run.job_id), JobStatus(JobState.UNKNOWN))
        if status.state.ended:
            reason = _describe_end(run.job_id, status) + " (duplicate run)"
            entries.append(_entry(want, Action.REPAIR, reason, **_about(run), **_closing(status)))
    return entries


def _describe_end(job_id: str, status: JobStatus) -> str:
    text = f"job {job_id} ended {status.state.name}"
    if status.exit_code not in (None, 0):
        text += f" (exit {status.exit_code})"
    if status.detail:
        text += f": {status.detail}"
    return text


def _why_new(want: DesiredRun, history: list[ObservedRun], changed_files: dict[str, list[str]], commit: str) -> str:
    """Which inputs differ from the latest run of the same grid point."""
    if not history:
        return "new run point"
    previous = history[-1]
    was, now = recorded_identity(previous), want.identity
    files = changed_files.get(previous.commit) or []
    shown = ", ".join(files[:5]) + (f" and {len(files) - 5} more" if len(files) > 5 else "")
    code = {"files": shown + ", " if shown else "", "was": previous.commit[:7], "now": commit[:7]}
    changes = []
    for part in INPUTS:
        old, new = getattr(was, part.name), getattr(now, part.name)
        if part.changed is None or old == new:
            continue
        if isinstance(new, dict):
            for name in sorted(set(old) | set(new)):
                if old.get(name) != new.get(name):
                    changes.append(part.changed.format(name=name, old=_show(old.get(name)), new=_show(new.get(name))))
        else:
            changes.append(part.changed.format(old=_show(old), new=_show(new), **code))
    return "; ".join(changes) or "inputs changed"


def _show(value) -> str:
    if value is None or value == "":
        return "none"
    text = str(value)
    if len(text) <= 24:
        return text
    kind, _, digest = text.rpartition(":")  # "requirements:sha256:3f2a…": keep the kind, shorten the digest
    return f"{kind}:{digest[:12]}…" if kind else text[:12] + "…"


def _plan_undeclared(runs: list[ObservedRun], jobs: JobStates, prune: bool) -> list[PlannedRun]:
    """Live runs whose key the spec no longer declares: cancelled only with --prune."""
    entries = []
    for run in runs:
        if not run.live or run.job_id is None:
            continue
        status = jobs.get((run.backend, run.job_id), JobStatus(JobState.UNKNOWN))
        common = {
            "experiment": run.experiment,
            "point_id": run.point_id,
            "run_key": run.run_key,
            "backend": run.backend,
            "parameters": run.parameters,
            **_about(run),
        }
        if status.state.live and prune:
            entries.append(
                PlannedRun(
                    Action.CANCEL,
                    reason="no longer declared",
                    mark_status=RunStatus.KILLED,
                    failure_kind=FailureKind.CANCELLED,
                    **common,
                )
            )
        elif status.state.ended:
            reason = f"{_describe_end(run.job_id, status)} (no longer declared)"
            entries.append(PlannedRun(Action.REPAIR, reason=reason, **_closing(status), **common))
    return entries
