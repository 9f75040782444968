"""``mantik apply``: carry out a plan under the project lock, without double submission.

For each run to start: the MLflow run is created first (SCHEDULED, carrying its
key: the intent record), then the job is submitted (its directory or name
carries the run id and key), then the job id is recorded. Every intent of an
apply is recorded before its first submission, and on a tracking server the
records of one step are written side by side (8 at a time: a server's round
trips overlap), never across steps. A crash between any
two steps leaves an intent the next apply either adopts (the backend finds the
job) or resubmits (no job exists), always under the lock.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from functools import partial

from ..backends.base import BackendError, JobRequest, SubmissionFailed
from ..errors import UserError
from ..faults import checkpoint
from ..reconcile.identity import DesiredRun
from ..reconcile.plan import Action, Plan, PlannedRun
from ..reconcile.planfile import SavedPlan
from ..reconcile.planner import REFUSED
from ..spec.checks import unseen_venvs
from ..spec.yamlload import SpecError
from ..state.lock import LockHandle, project_lock
from ..state.provenance import end_signature_tags, sealed_run_secret
from ..state.tags import Tag, failure_tags
from ..vocab import FailureKind, RowState, RunStatus
from .control import cancel_jobs
from .jobs import Submission, job_request, refuse_unsendable_images, remote_data, run_tags
from .models import execute_models
from .project import Observation, Project, build_plan, throwaway_store
from .status import Unsuccessful, follow, unsuccessful
from .usage import closed_now, ended_usage, record_usage


@dataclass
class ApplyResult:
    plan: Plan
    applied: bool
    started: list[str]  # run ids of the runs started by this apply
    promoted: list[str] = field(default_factory=list)  # what it did to the model registry, one line each


def refuse_dirty(observation: Observation) -> None:
    if observation.code.dirty:
        raise UserError(
            f"uncommitted changes in code, data or spec files: {observation.code.dirty_summary()}; "
            "commit or stash them (only committed code runs), or run the working tree as a snapshot commit "
            "with `mantik apply --scratch`"
        )


def refuse_over_budget(plan: Plan) -> None:
    """Before anything is written: a plan that would spend more than a budget of the spec allows."""
    over = plan.cost.over_budget() if plan.cost else []
    if over:
        raise UserError("; ".join(over))


def apply(
    project: Project,
    *,
    confirm: Callable[[Plan], bool],
    show: Callable[[Plan], None],
    saved: SavedPlan | None = None,
    prune: bool = False,
    replace: tuple[str, ...] = (),
    lock_timeout: float = 0.0,
    on_lock_wait=None,
) -> ApplyResult:
    throwaway = throwaway_store(project)
    if throwaway:  # before the lock: the lock itself would be created in the throwaway store
        raise UserError(throwaway)
    with project_lock(project.store, "apply", lock_timeout, on_wait=on_lock_wait) as lock:
        plan, observation = build_plan(
            project, prune=saved.prune if saved else prune, replace=saved.replace if saved else replace
        )
        if saved is not None:  # first: "the plan is stale" says more than what made it so
            saved.check_current(plan)
        refuse_dirty(observation)
        refuse_over_budget(plan)
        show(plan)
        if not plan.has_changes:
            record_usage(project, observation.usage)
            return ApplyResult(plan, False, [])
        if saved is None and not confirm(plan):
            return ApplyResult(plan, False, [])
        project.repo.keep_snapshot()  # before any run records the snapshot's commit
        started = execute(project, plan, observation, lock)
        record_usage(project, observation.usage | ended_usage(project, closed_now(observation.runs, closed(plan))))
        promoted = execute_models(project, plan, observation)
    return ApplyResult(plan, True, started, promoted)


def promote(project: Project, *, lock_timeout: float = 0.0, on_lock_wait=None) -> ApplyResult:
    """``apply --wait``, once the runs it followed have ended: the registry actions of a fresh plan, and no
    other change (a new commit's runs are the next apply's), under the project lock."""
    with project_lock(project.store, "apply", lock_timeout, on_wait=on_lock_wait):
        plan, observation = build_plan(project)
        if not plan.model_changes():
            return ApplyResult(plan, False, [])
        return ApplyResult(plan, True, [], execute_models(project, plan, observation))


def closed(plan: Plan) -> dict[str, RunStatus]:
    """The runs this plan closes (repairs marking a status, cancels): run id -> the status they end in."""
    statuses = {e.run_id: e.mark_status for e in plan.changes() if e.action is Action.REPAIR and e.mark_status}
    statuses.update({e.run_id: RunStatus.KILLED for e in plan.changes() if e.action is Action.CANCEL})
    return {run_id: status for run_id, status in statuses.items() if run_id and status}


def execute(project: Project, plan: Plan, observation: Observation, lock: LockHandle | None = None) -> list[str]:
    store = project.store
    desired = {d.key: d for d in observation.desired}

    cancels: dict[str, list[PlannedRun]] = defaultdict(list)
    for entry in plan.changes():
        if entry.action is Action.CANCEL:
            cancels[entry.backend].append(entry)
    for backend_name, entries in cancels.items():
        why = {e.run_id: failure_tags(FailureKind.CANCELLED, "cancelled: " + e.reason) for e in entries if e.run_id}
        # a backend that cannot cancel raises: its runs stay as they were, and the next plan shows them again
        cancel_jobs(
            project, backend_name, [(e.run_id, e.job_id, why[e.run_id]) for e in entries if e.run_id and e.job_id]
        )
        for entry in entries:
            assert entry.run_id is not None  # a cancel is always about an existing run
            store.terminate(entry.run_id, RunStatus.KILLED, None if entry.job_id else why[entry.run_id])

    observed = {run.run_id: run for run in observation.runs}
    for entry in plan.changes():
        if entry.action is not Action.REPAIR:
            continue
        assert entry.run_id is not None  # a repair is always about an existing run
        tags = {Tag.JOB_ID: entry.job_id} if entry.record_job and entry.job_id else {}
        if entry.mark_status and entry.mark_status is not RunStatus.FINISHED:
            tags.update(failure_tags(entry.failure_kind or FailureKind.LOST, entry.reason))
        if entry.mark_status and entry.exit_code is not None:  # as the runner records it, when it could not
            tags[Tag.EXIT_CODE] = str(entry.exit_code)
        if entry.mark_status is RunStatus.FINISHED and entry.run_id in observed:  # signed as the runner would
            tags.update(end_signature_tags(observed[entry.run_id], RunStatus.FINISHED))
        if entry.mark_status and entry.job_id:
            keep_output(project, entry)
        if entry.mark_status:
            store.terminate(entry.run_id, entry.mark_status, tags)
        elif tags:
            store.set_tags(entry.run_id, tags)

    to_start = [e for e in plan.changes() if e.next_attempt is not None]
    context = Submission(code=observation.code, data_root=project.root)
    return submit(project, context, [(desired[e.run_key], e) for e in to_start], lock=lock)


def keep_output(project: Project, entry: PlannedRun) -> None:
    """A run closed from its job's state never heard from its runner (often: compute nodes cannot reach
    the tracking server), so its output is fetched from the backend and kept as its log artifact."""
    if entry.backend not in project.spec.backends or entry.run_id is None:
        return
    try:
        output = project.backend(entry.backend).read_log(entry.run_id, entry.job_id)
        if output:
            project.store.log_output(entry.run_id, output)
    except Exception:  # noqa: BLE001 - best effort (an artifact store without credentials here, a site
        return  # that is down): the run is still closed, and `mantik logs` can fetch the output later


def submit(
    project: Project,
    context: Submission,
    starts: list[tuple[DesiredRun, PlannedRun]],
    sources=None,
    lock: LockHandle | None = None,
) -> list[str]:
    """Intent records first, then one submission per backend, then the job ids (each step's records side by
    side on a tracking server, see ``TrackingStore.side_by_side``). With ``lock``, nothing more
    is submitted once another process broke it (this one was paused past its lease): the intent records
    left open are resubmitted by whichever apply holds the lock."""
    if not starts:
        return []
    store = project.store
    sources = sources if sources is not None else project.spec.data
    # refusals come before any intent is recorded: they leave nothing behind
    refuse_unsendable_images(project, starts)
    # the spec's experiments are checked when it loads; a run reproduced on another backend is checked here
    unseen = unseen_venvs(project.spec, [(want.point.environment, want.point.backend) for want, _ in starts])
    problems = [project.loaded.document.problem(path, message) for path, message in unseen]
    if problems:
        raise SpecError(problems)
    remote = remote_data(project, context, starts, sources)
    # the job's tree is written before any record names it: a tree that cannot be written leaves no run behind
    code_dir = project.code_dir(context.code.commit)
    experiment_ids = store.experiment_ids()
    intents = []
    for want, entry in starts:
        experiment_id = store.ensure_experiment(want.point.experiment, experiment_ids)
        tags = run_tags(project, context.code, want, entry) | context.extra_tags
        intents.append((want, entry, experiment_id, tags))

    def record_intent(intent) -> str:
        want, entry, experiment_id, tags = intent
        run_id = store.create_run(
            experiment_id, run_name(want.point.point_id, entry.next_attempt), tags, run_params(want)
        )
        checkpoint("after-intent")
        return run_id

    def record_job(ids: tuple[str, str]) -> None:
        store.set_tags(ids[0], {Tag.JOB_ID: ids[1]})
        checkpoint("after-job-recorded")

    # every intent is recorded (a server's records side by side) before anything is submitted; the first
    # failure stops the recording and submits nothing: the intents made so far are the next apply's to settle
    before = store.calls
    started = store.side_by_side(record_intent, intents)
    store.recording_calls += store.calls - before
    store.recorded_runs += len(started)
    by_backend: dict[str, list[JobRequest]] = defaultdict(list)
    for (want, _, experiment_id, tags), run_id in zip(intents, started, strict=True):
        request = job_request(project, context, want, run_id, experiment_id, code_dir, sources, remote)
        by_backend[want.point.backend].append(dataclasses.replace(request, signing=sealed_run_secret(run_id, tags)))
    errors = []
    for backend_name, requests in by_backend.items():
        checkpoint("before-submit")
        # fencing: the lock is asked for right before the scheduler call, after the intents exist, so an apply
        # that was paused past its lease (and broken) submits nothing the apply now holding it also submits
        if lock is not None and not lock.still_held(store):
            errors.append(
                f"backend {backend_name}: {len(requests)} run(s) not submitted: this apply lost the project lock "
                "(paused longer than its lease); the apply holding it now submits them"
            )
            continue
        refused: list[str] = []
        try:
            job_ids = project.backend(backend_name).submit(requests)
        except SubmissionFailed as exc:
            job_ids, refused = exc.submitted, exc.refused
            message = f"backend {backend_name}: {exc}"
            errors.append(message)
            if exc.unknown:
                errors.append(
                    f"{len(exc.unknown)} run(s) may have been submitted: the next plan adopts or resubmits them"
                )
        except BackendError as exc:  # nothing was accepted
            job_ids, refused = {}, [r.run_id for r in requests]
            message = f"backend {backend_name}: {exc}"
            errors.append(message)
        checkpoint("after-submit")
        before = store.calls
        store.side_by_side(record_job, job_ids.items())  # job ids only after the scheduler's answer
        store.recording_calls += store.calls - before
        # never ran: closed now, resubmitted by the next apply without spending a retry
        closing = failure_tags(FailureKind.REFUSED, f"{REFUSED}: {message}") if refused else {}
        store.side_by_side(partial(store.terminate, status=RunStatus.FAILED, tags=closing), refused)
    if errors:
        raise UserError("; ".join(errors))
    return started


def run_name(point_id: str, attempt: int | None) -> str:
    """The MLflow run name: the point, and which attempt when it is not the first (the UI lists them apart)."""
    return point_id if not attempt or attempt == 1 else f"{point_id} (attempt {attempt})"


def run_params(want: DesiredRun) -> dict[str, str]:
    return want.point.arguments  # as MLflow logs them: the values the command got


def follow_and_retry(
    project: Project,
    started: list[str],
    *,
    on_progress: Callable[[int], AbstractContextManager[Callable[[dict[str, RowState]], None]]],
    on_retry: Callable[[ApplyResult], None],
    retry: bool = True,
    lock_timeout: float = 0.0,
    on_lock_wait=None,
) -> list[Unsuccessful]:
    """``apply --wait``: follow the ``started`` runs to their end and, with ``retry``, start new attempts of those
    that failed while their retries allow (spent now, as Slurm's requeue would). ``on_progress(n)`` is entered
    while n runs are followed and told each poll's states (run id -> state); ``on_retry`` is told of each
    retry's apply. Returns the runs that did not finish successfully."""

    def follow_all(run_ids: list[str]) -> list[Unsuccessful]:
        with on_progress(len(run_ids)) as update:
            final = follow(project, run_ids, update)
        return unsuccessful(project, final)

    failures = follow_all(started)
    while failures and retry:
        retried = apply(
            project,
            confirm=partial(_only_retries_of, failures=failures),
            show=lambda plan: None,
            lock_timeout=lock_timeout,
            on_lock_wait=on_lock_wait,
        )
        if not retried.applied or not retried.started:
            break  # no retries left (or the plan holds more than retries: that is the next apply's)
        on_retry(retried)
        failures = follow_all(retried.started)
    return failures


def _only_retries_of(plan: Plan, failures: list[Unsuccessful]) -> bool:
    """Whether ``plan`` only starts new attempts of points that just failed: `apply --wait` carries those out
    without asking again; anything else (a new commit meanwhile) waits for the next apply."""
    failed = {f.point_id for f in failures}
    changes = plan.changes()
    return bool(changes) and all(
        e.action in (Action.RETRY, Action.REPAIR) and e.point_id in failed and e.next_attempt for e in changes
    )
