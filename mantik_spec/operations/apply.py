"""``mantik apply``: carry out a plan under the project lock, without double submission.

For each run to start: the MLflow run is created first (SCHEDULED, carrying its
key: the intent record), then the job is submitted (its directory or name
carries the run id and key), then the job id is recorded. A crash between any
two steps leaves an intent the next apply either adopts (the backend finds the
job) or resubmits (no job exists), always under the lock.
"""

from __future__ import annotations

import getpass
import re
import shlex
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..backends.base import Backend, BackendError, JobRequest, SubmissionFailed
from ..faults import checkpoint
from ..reconcile.identity import DesiredRun
from ..reconcile.plan import Action, Plan, PlannedRun
from ..reconcile.planfile import SavedPlan
from ..reconcile.planner import REFUSED
from ..spec.load import SPEC_FILE
from ..spec.model import Environment
from ..state.git import CodeVersion
from ..state.lock import LockHandle, project_lock
from ..state.tags import FailureKind, MlflowTag, RunStatus, Tag, failure_tags, identity_tags
from ..state.versions import UNPINNED
from .errors import UserError
from .project import Observation, Project, build_plan, throwaway_store


@dataclass
class ApplyResult:
    plan: Plan
    applied: bool
    started: list[str]  # run ids of the runs started by this apply


def refuse_dirty(observation: Observation) -> None:
    if observation.code.dirty:
        raise UserError(
            f"uncommitted changes in code, data or spec files: {observation.code.dirty_summary()}; "
            "commit or stash them (only committed code runs)"
        )


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
        show(plan)
        if not plan.has_changes:
            return ApplyResult(plan, False, [])
        if saved is None and not confirm(plan):
            return ApplyResult(plan, False, [])
        started = execute(project, plan, observation, lock)
    return ApplyResult(plan, True, started)


def execute(project: Project, plan: Plan, observation: Observation, lock: LockHandle | None = None) -> list[str]:
    store = project.store
    desired = {d.key: d for d in observation.desired}

    cancels: dict[str, list[PlannedRun]] = defaultdict(list)
    for entry in plan.changes():
        if entry.action is Action.CANCEL:
            cancels[entry.backend].append(entry)
    for backend_name, entries in cancels.items():
        project.backend(backend_name).cancel([e.job_id for e in entries if e.job_id])
        for entry in entries:
            assert entry.run_id is not None  # a cancel is always about an existing run
            store.terminate(
                entry.run_id, RunStatus.KILLED, failure_tags(FailureKind.CANCELLED, "cancelled: " + entry.reason)
            )

    for entry in plan.changes():
        if entry.action is not Action.REPAIR:
            continue
        assert entry.run_id is not None  # a repair is always about an existing run
        tags = {Tag.JOB_ID: entry.job_id} if entry.record_job and entry.job_id else {}
        if entry.mark_status and entry.mark_status is not RunStatus.FINISHED:
            tags.update(failure_tags(entry.failure_kind or FailureKind.LOST, entry.reason))
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


@dataclass(frozen=True)
class Submission:
    """What the runs of one apply (or one reproduce) share: the code version, where data is, extra tags."""

    code: CodeVersion
    data_root: Path  # where DVC-tracked data paths are, as the job sees them
    extra_tags: dict = field(default_factory=dict)

    def data_locations(self, want: DesiredRun, sources, remote: dict[str, str] | None = None) -> dict[str, str]:
        """Where the run finds each data source: the local path, or with ``remote`` (for backends that
        cannot see this machine) the DVC remote's location of that path's version."""

        def location(source) -> str:
            if not source.path:
                return source.url
            return remote[source.path] if remote is not None else str(self.data_root / source.path)

        return {name: location(sources[name]) for name in want.point.data}


def refuse_unsendable_images(project: Project, starts) -> None:
    """A local image a backend would have to copy for every run, but does not send (Slurm over SSH)."""
    for want, _ in starts:
        backend = project.backend(want.point.backend)
        declared = project.spec.environments.get(want.point.environment) if want.point.environment else None
        _, inputs = image_for(project, declared, backend)
        if inputs and not backend.sends_inputs:
            raise UserError(
                f"environments.{want.point.environment}: the image {', '.join(inputs)} is on this machine, which "
                f"backend {want.point.backend} cannot see: put it on the cluster and give its absolute path"
            )


def remote_data(project: Project, context: Submission, starts, sources) -> dict[str, str]:
    """DVC-tracked data for backends that cannot see this machine must be in the DVC remote: checked with
    dvc's own API before anything is submitted (a run that cannot find its data only fails on the cluster)."""
    names_of: dict[str, dict[str, str]] = defaultdict(dict)  # path -> data source name -> version
    for want, _ in starts:
        if project.backend(want.point.backend).shares_files:
            continue
        for name in want.point.data:
            path = sources[name].path
            if path and (context.data_root / path).is_dir():
                raise UserError(
                    f"data.{name}: {path} is a directory, and a job on {want.point.backend} gets one location "
                    "per data source: track an archive of it with DVC, or give the data a url"
                )
            if path:
                names_of[path][name] = want.identity.data.get(name, "")
    if not names_of:
        return {}
    from ..state.dvcdata import remote_urls, unpushed
    from ..state.versions import VersionError

    try:
        missing, remote = unpushed(context.data_root, sorted(names_of))
        if missing:
            problems = [
                f"data.{name}: version {version.removeprefix('md5:')[:8]}… is not in remote '{remote}'"
                for path in missing
                for name, version in sorted(names_of[path].items())
            ]
            raise UserError("; ".join(problems) + "; run dvc push")
        return remote_urls(context.data_root, sorted(names_of))
    except VersionError as exc:
        raise UserError(str(exc)) from None


BATCH_BACKENDS = ("slurm", "unicore", "firecrest")  # where a job holds an allocation srun can start tasks in


def launches_with_srun(environment: Environment | None, backend_type: str) -> bool:
    """Whether the command starts through ``srun``: as Mantik did (``srun apptainer run``) for Apptainer
    environments on batch backends, unless the environment says otherwise; never on the local backend."""
    if environment is None or backend_type not in BATCH_BACKENDS:
        return False
    return environment.srun if environment.srun is not None else bool(environment.apptainer)


SHELL_SYNTAX = re.compile(r"[$`\\]")
VARIABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def in_environment(
    command: str, environment: Environment | None, image: str | None = None, srun: bool = False
) -> str:
    """The command as it runs in its declared environment: modules, the venv and the pre-run lines,
    then the command (through ``srun`` when asked) inside the image (found at ``image``), then the
    post-run lines. With ``shell_expansion`` the image path and Apptainer options are written as given
    and variables holding shell syntax are exported in double quotes, so the job's shell expands them."""
    if environment is None:
        return f"srun {command}" if srun else command
    raw = environment.shell_expansion
    if environment.apptainer:
        if raw:
            options = list(environment.apptainer_options)
            path = environment.apptainer if image is None else shlex.quote(image)
        else:
            options = [shlex.quote(word) for option in environment.apptainer_options for word in shlex.split(option)]
            path = shlex.quote(image or environment.apptainer)
        words = [*(["srun"] if srun else []), "apptainer", "exec", *options, path]
        command = f"{' '.join(words)} sh -c {shlex.quote(command)}"
    elif srun:
        command = f"srun {command}"
    steps = []
    if raw:  # NAME="value", as UNICORE wrote Mantik's Variables into the batch script; the rest stay literal
        for name, value in environment.variables.items():
            if SHELL_SYNTAX.search(value) and VARIABLE_NAME.fullmatch(name):
                # $ and backquotes stay live; a backslash before a quote or at the end is doubled so that
                # no value can close the quotes and run the rest as commands
                escaped = re.sub(r'\\(?=")|\\$', r"\\\\", value).replace('"', '\\"')
                steps.append(f'export {name}="{escaped}"')
    if environment.modules:
        steps.append(f"module load {' '.join(shlex.quote(m) for m in environment.modules)}")
    if environment.venv:
        steps.append(f". {shlex.quote(environment.venv.rstrip('/') + '/bin/activate')}")
    if not environment.pre_run and not environment.post_run:
        return " && ".join([*steps, command])
    # lines written by the user run as given, each in a group of its own: a comment or a `;` in one
    # cannot swallow or regroup the command
    return " && ".join([*steps, *(f"{{ {line}\n}}" for line in [*environment.pre_run, command, *environment.post_run])])


def image_for(
    project: Project, environment: Environment | None, backend: Backend
) -> tuple[str | None, dict[str, Path]]:
    """Where the job finds its Apptainer image, and the local file to send when the backend cannot see it."""
    if environment is None or not environment.apptainer or environment.image_is_remote:
        return None, {}
    local = project.root / environment.apptainer
    if backend.shares_files:
        return str(local), {}
    return environment.apptainer, {environment.apptainer: local}


def data_variable(name: str) -> str:
    return "MANTIK_DATA_" + "".join(c if c.isalnum() else "_" for c in name.upper())


def submit(
    project: Project,
    context: Submission,
    starts: list[tuple[DesiredRun, PlannedRun]],
    sources=None,
    lock: LockHandle | None = None,
) -> list[str]:
    """Intent records first, then one submission per backend, then the job ids. With ``lock``, nothing more
    is submitted once another process broke it (this one was paused past its lease): the intent records
    left open are resubmitted by whichever apply holds the lock."""
    if not starts:
        return []
    store = project.store
    sources = sources if sources is not None else project.spec.data
    # refusals come before any intent is recorded: they leave nothing behind
    refuse_unsendable_images(project, starts)
    remote = remote_data(project, context, starts, sources)
    # the job's tree is written before any record names it: a tree that cannot be written leaves no run behind
    code_dir = project.code_dir(context.code.commit)
    experiment_ids = store.experiment_ids()
    by_backend: dict[str, list[JobRequest]] = defaultdict(list)
    started = []
    for want, entry in starts:
        experiment_id = store.ensure_experiment(want.point.experiment, experiment_ids)
        tags = run_tags(project, context.code, want, entry) | context.extra_tags
        run_id = store.create_run(experiment_id, run_name(want.point.point_id, entry.next_attempt), tags, run_params(want))
        checkpoint("after-intent")
        started.append(run_id)
        backend = project.backend(want.point.backend)
        locations = context.data_locations(want, sources, None if backend.shares_files else remote)
        declared = project.spec.environments.get(want.point.environment) if want.point.environment else None
        environment = {"MANTIK_RUN_KEY": want.key, **{data_variable(n): loc for n, loc in locations.items()}}
        if declared is not None:
            environment.update(declared.variables)
        if want.point.seed is not None:
            environment["MANTIK_SEED"] = str(want.point.seed)
        image, inputs = image_for(project, declared, backend)
        srun = launches_with_srun(declared, project.spec.backends[want.point.backend].type)
        by_backend[want.point.backend].append(
            JobRequest(
                run_id=run_id,
                run_key=want.key,
                point_id=want.point.point_id,
                command=in_environment(want.point.command(locations), declared, image, srun),
                code_dir=code_dir,
                tracking_uri=store.uri,
                experiment_id=experiment_id,
                group=want.point.experiment,
                environment=environment,
                inputs=inputs,
            )
        )
    errors = []
    for backend_name, requests in by_backend.items():
        if lock is not None and lock.lost:
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
        for run_id, job_id in job_ids.items():
            store.set_tags(run_id, {Tag.JOB_ID: job_id})
            checkpoint("after-job-recorded")
        for run_id in refused:  # never ran: closed now, resubmitted by the next apply without spending a retry
            store.terminate(run_id, RunStatus.FAILED, failure_tags(FailureKind.REFUSED, f"{REFUSED}: {message}"))
    if errors:
        raise UserError("; ".join(errors))
    return started


def run_name(point_id: str, attempt: int | None) -> str:
    """The MLflow run name: the point, and which attempt when it is not the first (the UI lists them apart)."""
    return point_id if not attempt or attempt == 1 else f"{point_id} (attempt {attempt})"


def run_params(want: DesiredRun) -> dict[str, str]:
    return want.point.arguments  # as MLflow logs them: the values the command got


def run_tags(project: Project, code: CodeVersion, want: DesiredRun, entry: PlannedRun) -> dict[str, str]:
    identity = want.identity
    tags = identity_tags(
        project=project.spec.project,
        experiment=want.point.experiment,
        point_id=want.point.point_id,
        run_key=want.key,
        attempt=entry.next_attempt or 1,
        commit=code.commit,
        code=identity.code,
        command=identity.command,
        parameters=identity.parameters,
        data=identity.data,
        environment=identity.environment,
        backend=want.point.backend,
        seed=want.point.seed,
    )
    tags |= {
        MlflowTag.GIT_COMMIT: code.commit,
        MlflowTag.SOURCE_NAME: code.repo_url or str(project.repo.root),
        MlflowTag.SOURCE_TYPE: "PROJECT",
        MlflowTag.ENTRY_POINT: want.point.entry_point,
        MlflowTag.PROJECT_BACKEND: project.spec.backends[want.point.backend].type,
        MlflowTag.USER: getpass.getuser(),
    }
    tags[Tag.SPEC] = project.repo.prefix + SPEC_FILE  # apply refuses an uncommitted spec: COMMIT holds this one
    unpinned = sorted(name for name, version in identity.data.items() if version == UNPINNED)
    if unpinned:  # the data may change under the same key: say so where the run is looked at
        tags[Tag.NOT_REPRODUCIBLE] = "unpinned data: " + ", ".join(unpinned)
    if code.repo_url:
        tags[MlflowTag.GIT_REPO_URL] = code.repo_url
    if code.branch:
        tags[MlflowTag.GIT_BRANCH] = code.branch
    if entry.run_id and entry.action is not Action.SUBMIT:
        tags[Tag.PREVIOUS_RUN] = entry.run_id
    return tags
