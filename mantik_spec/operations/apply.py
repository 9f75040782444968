"""``mantik apply``: carry out a plan under the project lock, without double submission.

For each run to start: the MLflow run is created first (SCHEDULED, carrying its
key: the intent record), then the job is submitted (its directory or name
carries the run id and key), then the job id is recorded. A crash between any
two steps leaves an intent the next apply either adopts (the backend finds the
job) or resubmits (no job exists), always under the lock.
"""

from __future__ import annotations

import getpass
import json
import shlex
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..backends.base import BackendError, JobRequest, SubmissionFailed
from ..faults import checkpoint
from ..reconcile.identity import DesiredRun
from ..reconcile.plan import Action, Plan, PlannedRun
from ..reconcile.planfile import SavedPlan
from ..reconcile.planner import REFUSED
from ..spec.experiments import format_value
from ..spec.model import Environment
from ..state.git import CodeVersion
from ..state.lock import project_lock
from ..state.tracking import Tag
from ..state.versions import UNPINNED
from .errors import UserError
from .project import Observation, Project, build_plan


@dataclass
class ApplyResult:
    plan: Plan
    applied: bool
    started: list[str]  # run ids of the runs started by this apply


def refuse_dirty(observation: Observation) -> None:
    if observation.code.dirty:
        raise UserError(
            f"uncommitted changes in code or data files: {observation.code.dirty_summary()}; "
            "commit or stash them (only committed code runs)"
        )


def apply(
    project: Project,
    *,
    confirm: Callable[[Plan], bool],
    show: Callable[[Plan], None],
    saved: SavedPlan | None = None,
    prune: bool = False,
    lock_timeout: float = 0.0,
    on_lock_wait=None,
) -> ApplyResult:
    with project_lock(project.store, "apply", lock_timeout, on_wait=on_lock_wait):
        plan, observation = build_plan(project, prune=saved.prune if saved else prune)
        refuse_dirty(observation)
        if saved is not None:
            saved.check_current(plan)
        show(plan)
        if not plan.has_changes:
            return ApplyResult(plan, False, [])
        if saved is None and not confirm(plan):
            return ApplyResult(plan, False, [])
        started = execute(project, plan, observation)
    return ApplyResult(plan, True, started)


def execute(project: Project, plan: Plan, observation: Observation) -> list[str]:
    store = project.store
    desired = {d.key: d for d in observation.desired}

    cancels: dict[str, list[PlannedRun]] = defaultdict(list)
    for entry in plan.changes():
        if entry.action is Action.CANCEL:
            cancels[entry.backend].append(entry)
    for backend_name, entries in cancels.items():
        project.backend(backend_name).cancel([e.job_id for e in entries])
        for entry in entries:
            store.terminate(entry.run_id, "KILLED", {Tag.FAILURE: "cancelled: " + entry.reason})

    for entry in plan.changes():
        if entry.action is not Action.REPAIR:
            continue
        tags = {Tag.JOB_ID: entry.job_id} if entry.record_job and entry.job_id else {}
        if entry.mark_status and entry.mark_status != "FINISHED":
            tags[Tag.FAILURE] = entry.reason
        if entry.mark_status:
            store.terminate(entry.run_id, entry.mark_status, tags)
        elif tags:
            store.set_tags(entry.run_id, tags)

    to_start = [e for e in plan.changes() if e.next_attempt is not None]
    context = Submission(code=observation.code, data_root=project.root)
    return submit(project, context, [(desired[e.run_key], e) for e in to_start])


@dataclass(frozen=True)
class Submission:
    """What the runs of one apply (or one reproduce) share: the code version, where data is, extra tags."""

    code: CodeVersion
    data_root: Path  # where DVC-tracked data paths are, as the job sees them
    extra_tags: dict = field(default_factory=dict)

    def data_locations(self, project: Project, want: DesiredRun, sources=None) -> dict[str, str]:
        sources = sources if sources is not None else project.spec.data
        return {
            name: str(self.data_root / sources[name].path) if sources[name].path else sources[name].url
            for name in want.point.data
        }


def in_environment(command: str, environment: Environment | None) -> str:
    """The command as it runs in its declared environment: modules, then the venv, inside the image."""
    if environment is None:
        return command
    if environment.apptainer:
        command = f"apptainer exec {shlex.quote(environment.apptainer)} sh -c {shlex.quote(command)}"
    if environment.venv:
        command = f". {shlex.quote(environment.venv.rstrip('/') + '/bin/activate')} && {command}"
    if environment.modules:
        command = f"module load {' '.join(shlex.quote(m) for m in environment.modules)} && {command}"
    return command


def data_variable(name: str) -> str:
    return "MANTIK_DATA_" + "".join(c if c.isalnum() else "_" for c in name.upper())


def submit(
    project: Project, context: Submission, starts: list[tuple[DesiredRun, PlannedRun]], sources=None
) -> list[str]:
    """Intent records first, then one submission per backend, then the job ids."""
    store = project.store
    experiment_ids = store.experiment_ids() if starts else {}
    by_backend: dict[str, list[JobRequest]] = defaultdict(list)
    started = []
    for want, entry in starts:
        experiment_id = store.ensure_experiment(want.point.experiment, experiment_ids)
        tags = run_tags(project, context.code, want, entry) | context.extra_tags
        run_id = store.create_run(experiment_id, want.point.point_id, tags, run_params(want))
        checkpoint("after-intent")
        started.append(run_id)
        locations = context.data_locations(project, want, sources)
        declared = project.spec.environments.get(want.point.environment) if want.point.environment else None
        environment = {"MANTIK_RUN_KEY": want.key, **{data_variable(n): loc for n, loc in locations.items()}}
        if declared is not None:
            environment.update(declared.variables)
        if want.point.seed is not None:
            environment["MANTIK_SEED"] = str(want.point.seed)
        by_backend[want.point.backend].append(
            JobRequest(
                run_id=run_id,
                run_key=want.key,
                point_id=want.point.point_id,
                command=in_environment(want.point.command(locations), declared),
                code_dir=project.code_dir(context.code.commit),
                tracking_uri=store.uri,
                experiment_id=experiment_id,
                group=want.point.experiment,
                environment=environment,
            )
        )
    errors = []
    for backend_name, requests in by_backend.items():
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
        for run_id, job_id in job_ids.items():
            store.set_tags(run_id, {Tag.JOB_ID: job_id})
            checkpoint("after-job-recorded")
        for run_id in refused:  # never ran: closed now, resubmitted by the next apply without spending a retry
            store.terminate(run_id, "FAILED", {Tag.FAILURE: f"{REFUSED}: {message}"})
    if errors:
        raise UserError("; ".join(errors))
    return started


def run_params(want: DesiredRun) -> dict[str, str]:
    return {name: format_value(value) for name, value in want.point.values.items()}


def run_tags(project: Project, code: CodeVersion, want: DesiredRun, entry: PlannedRun) -> dict[str, str]:
    identity = want.identity
    tags = {
        Tag.PROJECT: project.spec.project,
        Tag.EXPERIMENT: want.point.experiment,
        Tag.POINT: want.point.point_id,
        Tag.RUN_KEY: want.key,
        Tag.ATTEMPT: str(entry.next_attempt),
        Tag.COMMIT: code.commit,
        Tag.CODE: identity.code,
        Tag.COMMAND: identity.command,
        Tag.PARAMETERS: json.dumps(identity.parameters, sort_keys=True),
        Tag.DATA: json.dumps(identity.data, sort_keys=True),
        Tag.ENVIRONMENT: identity.environment,
        Tag.BACKEND: want.point.backend,
        "mlflow.source.git.commit": code.commit,
        "mlflow.source.name": code.repo_url or str(project.repo.root),
        "mlflow.source.type": "PROJECT",
        "mlflow.project.entryPoint": want.point.entry_point,
        "mlflow.project.backend": project.spec.backends[want.point.backend].type,
        "mlflow.user": getpass.getuser(),
    }
    if want.point.seed is not None:
        tags[Tag.SEED] = str(want.point.seed)
    unpinned = sorted(name for name, version in identity.data.items() if version == UNPINNED)
    if unpinned:  # the data may change under the same key: say so where the run is looked at
        tags[Tag.NOT_REPRODUCIBLE] = "unpinned data: " + ", ".join(unpinned)
    if code.repo_url:
        tags["mlflow.source.git.repoURL"] = code.repo_url
    if code.branch:
        tags["mlflow.source.git.branch"] = code.branch
    if entry.run_id and entry.action is not Action.SUBMIT:
        tags[Tag.PREVIOUS_RUN] = entry.run_id
    return tags
