"""Opening a project: the spec, its git repository, its tracking store and backends,
and observing them into the planner's inputs."""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..backends import make_backend
from ..backends.base import Backend, BackendError
from ..errors import UserError
from ..reconcile.identity import DesiredRun, ObservedRun, identify, recorded_identity
from ..reconcile.plan import Action, BackendCost, Plan, PlanCost
from ..reconcile.planner import JobStates, make_plan
from ..spec.cost import Used
from ..spec.experiments import expand, points_named, resolve_extends
from ..spec.includes import mlproject_notes
from ..spec.load import SPEC_FILE, LoadedSpec, included_files, load_spec
from ..spec.model import Spec
from ..state.git import SCRATCH_REFS, STATE_DIR, CodeVersion, ProjectRepo
from ..state.runcache import RunCache
from ..state.tracking import TrackingStore, resolve_tracking_uri, tracking_credentials
from ..vocab import FailureKind, JobState, JobStatus, Provenance, RunStatus
from .models import plan_registry


@dataclass
class Project:
    loaded: LoadedSpec
    repo: ProjectRepo
    store: TrackingStore
    state_dir: Path
    backends: dict[str, Backend] = field(default_factory=dict)  # built on first use
    journal_read_at: dict[str, float] = field(default_factory=dict)  # run id -> time.monotonic() of its last sync

    @property
    def spec(self):
        return self.loaded.spec

    @property
    def root(self) -> Path:
        return self.loaded.root

    def backend(self, name: str) -> Backend:
        if name not in self.backends:
            self.backends[name] = make_backend(name, self.spec.backends[name], self.state_dir)
        return self.backends[name]

    def poll_pause(self, wanted: float) -> float:
        """How long a polling loop sleeps: never shorter than any backend in use allows."""
        return max([wanted, *(backend.min_poll_interval for backend in self.backends.values())])

    def code_dir(self, commit: str) -> Path:
        """The committed tree at ``commit``, exported once and shared by that commit's runs."""
        target = self.state_dir / "code" / commit
        if target.exists():
            return target
        building = target.with_name(f".building-{commit}-{os.getpid()}")
        self.repo.export(commit, building)
        try:
            os.rename(building, target)
        except OSError:  # exported meanwhile by a parallel process
            shutil.rmtree(building, ignore_errors=True)
        return target


def open_project(directory: Path | str, scratch: bool = False) -> Project:
    """``scratch``: the working tree as it stands, snapshotted as a commit that stands where HEAD stands
    (:meth:`ProjectRepo.take_snapshot`); the spec read is the working tree's, which the snapshot holds."""
    loaded = load_spec(directory)
    repo = ProjectRepo(loaded.root)
    state_dir = loaded.root / STATE_DIR
    state_dir.mkdir(exist_ok=True)
    ignore = state_dir / ".gitignore"
    if not ignore.exists():
        ignore.write_text("# local state of mantik-spec: never commit it\n*\n")
    if scratch:  # after the state directory ignores itself: it never enters a snapshot
        spec = loaded.spec
        code_files = [*(spec.code.paths or []), SPEC_FILE, *included_files(spec), *pinning_files(spec, loaded.root)]
        repo.take_snapshot(code_files if spec.code.paths else None)
    os.environ.update(tracking_credentials(loaded.spec.tracking))
    store = TrackingStore(resolve_tracking_uri(loaded.spec.tracking, loaded.root), loaded.spec.project)
    return Project(loaded, repo, store, state_dir)


def input_versions(project: Project) -> tuple[dict[str, str], dict[str, str]]:
    """The versions of every data source and environment: the key's inputs besides code and parameters."""
    from ..state.versions import FileDigests, data_version, environment_identity

    data = {name: data_version(project.root, name, source) for name, source in project.spec.data.items()}
    digests = FileDigests(project.state_dir)
    environments = {
        name: environment_identity(project.root, name, environment, digests)
        for name, environment in project.spec.environments.items()
    }
    digests.save()
    return data, environments


@dataclass
class Observation:
    code: CodeVersion
    desired: list[DesiredRun]
    runs: list[ObservedRun]
    jobs: JobStates
    changed_files: dict[str, list[str]]
    untrusted: list[ObservedRun] = field(default_factory=list)  # FINISHED runs whose inputs contradict their key
    asked_backends: bool = True  # False: no backend was asked (plan --no-backends); live jobs are unknown
    journal_problems: list[str] = field(default_factory=list)  # offline journals not synced whole, and why
    usage: dict[str, Used] = field(default_factory=dict)  # run id -> what an ended run used, not yet recorded


def pinning_files(spec: Spec, root: Path) -> list[str]:
    """The files that pin each data version, relative to the project: a source's ``.dvc`` file (for a path
    inside a tracked directory, that directory's) and ``dvc.lock``."""
    from ..dvcfiles import dvc_tracking_file

    files = [dvc_tracking_file(root, s.path) or f"{s.path.rstrip('/')}.dvc" for s in spec.data.values() if s.path]
    return files + (["dvc.lock"] if spec.data else [])


def recorded_runs(project: Project, cached: bool = False, settled: bool = False) -> list[ObservedRun]:
    """The project's runs in its store, through the run cache (see ``TrackingStore.observe``): ``cached``, read
    incrementally; ``settled``, a full read that an unchanged local store need not repeat."""
    cache = RunCache.for_store(project.state_dir, project.store.uri, project.spec.project)
    return project.store.observe(cache, incremental=cached, settled=settled)


def observe(project: Project, cached: bool = False, ask_backends: bool = True, settled: bool = False) -> Observation:
    """The desired runs, the recorded runs and their jobs. ``cached``: read the recorded runs through the run
    cache (:mod:`..state.runcache`), as plan and watch do; apply and the other verbs read MLflow in full, and
    that full read renews the cache (``settled``: unless the local store was not written since the last full
    read, see ``TrackingStore.observe``). ``ask_backends=False``: contact no backend (no login, no credential sent
    anywhere); every live run's job is unknown, so nothing is decided about it."""
    spec = project.spec
    code = project.repo.code_version(spec.code.paths, pinning_files(spec, project.root))
    # the spec anchors runs as the code does: an edited but uncommitted grid would run points whose
    # recorded commit does not declare them
    spec_files = project.repo.uncommitted([SPEC_FILE, *included_files(spec)])
    if spec_files:
        code = dataclasses.replace(code, dirty=tuple(sorted({*code.dirty, *spec_files})))
    experiments, _ = resolve_extends(spec)
    data, environments = input_versions(project)
    points = expand(spec, experiments)
    # one digest per (environment, backend) pair, not per point: a grid has thousands of points and a few pairs
    setups = {pair: setup_digest(project, *pair) for pair in {(p.environment, p.backend) for p in points}}
    desired = [
        identify(point, code.identity, data, environments, setups[(point.environment, point.backend)])
        for point in points
    ]
    runs = recorded_runs(project, cached, settled)
    journal_problems: list[str] = []
    if ask_backends:
        from .sync import candidates, closed, sync_journals

        jobs = poll_jobs(project, runs, explain=[*_unexplained_kills(runs), *closed(candidates(project, runs))])
        synced = sync_journals(project, runs, jobs)  # runs recorded offline: their journals first
        journal_problems = synced.problems()
        if synced.completed:  # tags on ended runs: an incremental read would keep their cached copies
            runs = recorded_runs(project)
        elif synced.changed:
            runs = recorded_runs(project, cached=True)
    else:
        not_asked = JobStatus(JobState.UNKNOWN, detail="not asked: --no-backends")
        jobs = {(run.backend, run.job_id): not_asked for run in runs if run.live and run.job_id}
    untrusted = _untrusted(runs)
    changed = _changed_files(project, code, desired, runs)
    from .usage import ended_usage

    usage = ended_usage(project, runs) if ask_backends else {}
    return Observation(
        code, desired, runs, jobs, changed, untrusted, asked_backends=ask_backends, usage=usage,
        journal_problems=journal_problems,
    )


def setup_digest(project: Project, environment: str | None, backend: str) -> str:
    """What prepares a run without entering its key, as a digest: the environment's definition (modules,
    pre- and post-run lines, variables, image options; a relative venv as the absolute path the job gets and
    whether a venv is there, so creating it retries the runs that could not activate it) and
    the backend's setup fields (``SETUP_FIELDS`` of its config: modules, setup lines, resources...). A point
    whose runs failed is tried again when it changes."""
    import hashlib
    import json

    declared = project.spec.environments.get(environment) if environment else None
    config = project.spec.backends.get(backend)
    prepared = {
        "environment": declared.model_dump(mode="json") if declared is not None else None,
        "backend": config.model_dump(mode="json", include=set(config.SETUP_FIELDS)) if config is not None else None,
    }
    if declared is not None and declared.venv_is_relative:  # the project's venv: where it is, and whether it is
        location = declared.venv_location(project.root) or ""
        prepared["venv"] = [location, os.path.isfile(os.path.join(location, "bin", "activate"))]
    return hashlib.sha256(json.dumps(prepared, sort_keys=True).encode()).hexdigest()[:16]


def _untrusted(runs: list[ObservedRun]) -> list[ObservedRun]:
    """FINISHED runs whose recorded identity inputs do not hash to the key they carry (a key tag edited by
    hand, or written by another tool), or whose end signature does not hold under the project's signing key
    (:mod:`..state.provenance`): they prove nothing about the point that key names."""
    return [
        r
        for r in runs
        if r.status == "FINISHED" and (recorded_identity(r).key != r.run_key or r.provenance is Provenance.UNVERIFIED)
    ]


def _unexplained_kills(runs: list[ObservedRun]) -> list[ObservedRun]:
    """Runs the runner closed as KILLED on a signal: the scheduler knows why (time limit, preemption, cancel)."""
    finished_keys = {r.run_key for r in runs if r.status is RunStatus.FINISHED}
    return [
        r
        for r in runs
        if r.status is RunStatus.KILLED
        and r.job_id
        and r.run_key not in finished_keys
        and r.failure_kind is FailureKind.SIGNALLED
    ]


def poll_jobs(project: Project, runs: list[ObservedRun], explain: Sequence[ObservedRun] = ()) -> JobStates:
    """One poll per backend for every live run (and the ended runs in ``explain``);
    intents with no job id are looked up for adoption."""
    live_jobs: dict[str, dict[str, str]] = defaultdict(dict)  # backend -> job id -> run id
    intents: dict[str, list[ObservedRun]] = defaultdict(list)
    for run in explain:
        if run.backend in project.spec.backends and run.job_id:
            live_jobs[run.backend][run.job_id] = run.run_id
    for run in runs:
        if not run.live or run.backend not in project.spec.backends:
            continue
        if run.job_id:
            live_jobs[run.backend][run.job_id] = run.run_id
        else:
            intents[run.backend].append(run)
    for backend_name, orphans in intents.items():
        found = project.backend(backend_name).find([run.run_id for run in orphans])
        for run in orphans:
            if run.run_id in found:
                run.job_id, run.adopted_job = found[run.run_id], True
                live_jobs[backend_name][run.job_id] = run.run_id
    jobs: dict[tuple[str, str], JobStatus] = {}
    for backend_name, backend_jobs in live_jobs.items():
        for job_id, status in project.backend(backend_name).poll(backend_jobs).items():
            jobs[(backend_name, job_id)] = status
    return jobs


def _changed_files(project, code: CodeVersion, desired, runs) -> dict[str, list[str]]:
    """Files of code.paths changed since each earlier commit whose code differs, for plan reasons."""
    wanted_points = {d.point.point_id for d in desired}
    commits = {r.commit for r in runs if r.point_id in wanted_points and r.code != code.identity and r.commit}
    changed = {}
    for commit in commits:
        files = project.repo.changed_files(commit, code.commit, project.spec.code.paths)
        if files is not None:
            changed[commit] = files
    return changed


def unreachable(observation: Observation) -> list[str]:
    """One line per backend that could not report on its jobs (they count as unknown: never acted upon)."""
    if not observation.asked_backends:
        return []  # not asked on purpose: said once, as a warning (build_plan)
    reasons: dict[str, str] = {}
    for (backend, _), status in sorted(observation.jobs.items()):
        if status.state is JobState.UNKNOWN and backend not in reasons:
            reasons[backend] = status.detail or "no answer"
    return [
        f"backend {backend} could not report on its jobs ({reason}); they are left as they were"
        for backend, reason in reasons.items()
    ]


def in_ci() -> bool:
    """Whether this runs in a CI job: every major CI service sets ``CI`` (GitHub, GitLab, Jenkins' plugins...)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def throwaway_store(project: Project) -> str | None:
    """Why the store would be lost after this CI job, or None: a CI job whose tracking URI was not set
    records its runs in a sqlite file inside a checkout that is thrown away, so every merge would submit
    every run again."""
    if not in_ci() or os.environ.get("MLFLOW_TRACKING_URI") or not project.store.uri.startswith(("sqlite:", "file:")):
        return None
    return (
        "CI is set and MLFLOW_TRACKING_URI is not: runs would be recorded in a sqlite store inside this checkout, "
        "which the CI job throws away, and every merge would submit every run again; set MLFLOW_TRACKING_URI "
        "(from a CI secret) to your MLflow server, or set it to the sqlite URI explicitly on a runner that keeps it"
    )


def _not_offered(project: Project, plan: Plan) -> list[str]:
    """What the backends that would start runs say they do not offer (a queue, a resource, a storage), asked
    before anything is submitted. A backend that cannot be asked here (no credentials, unreachable) is skipped:
    apply's submission reports that itself, before any job exists."""
    problems = []
    starting = sorted({e.backend for e in plan.changes() if e.next_attempt is not None})
    for name in starting:
        if name not in project.spec.backends:
            continue
        try:
            problems += [f"backend {name}: {problem}" for problem in project.backend(name).preflight()]
        except BackendError:
            continue
    return problems


def replaced_points(project: Project, observation: Observation, replace: tuple[str, ...]) -> list[str]:
    """The declared point ids that ``--replace`` references name: a point id, or a unique subset of its values
    (``sweep[lr=0.1]``); an experiment's name is resolved by the caller. UserError naming the candidates when a
    reference names none, or several."""
    points = [want.point for want in observation.desired]
    named = []
    for reference in replace:
        if reference in project.spec.experiments:
            continue
        found = points_named(points, reference)
        if not found:
            examples = ", ".join(sorted(p.point_id for p in points)[:3]) or "none"
            raise UserError(f"--replace {reference}: no such declared point (points look like: {examples})")
        if len(found) > 1:
            shown = ", ".join(sorted(p.point_id for p in found)[:4])
            raise UserError(
                f"--replace {reference} names {len(found)} points ({shown}{', ...' if len(found) > 4 else ''}); give more values"
            )
        named.append(found[0].point_id)
    return named


def plan_cost(
    project: Project,
    plan: Plan,
    runs: list[ObservedRun],
    usage: dict[str, Used] | None = None,
    ask: bool = False,
    estimate: bool = False,
) -> PlanCost:
    """The node-hours of the runs ``plan`` starts, per backend (each config says what one run costs), beside
    what this spec's recorded runs used: for an ended run, what is recorded on it or found now (``usage``: run
    id -> usage, :func:`.usage.ended_usage`), measured by the site's accounting or at its limit; for a live
    run, the node-hours recorded at its submission (nodes x time limit, an upper bound); a run refused before
    any job existed used nothing. ``ask``: also ask the sites of the backends it starts runs on what is left
    of their allocations (cached, time-boxed, never an error); ``estimate``: and when a job would start there
    (:func:`.usage.estimated_starts`)."""
    used: dict[str, float] = defaultdict(float)
    measured: dict[str, float] = defaultdict(float)
    for run in runs:
        if not run.job_id:
            continue
        spent = run.used or (usage or {}).get(run.run_id)
        if spent is not None:
            used[run.backend] += spent.node_hours
            measured[run.backend] += spent.node_hours if spent.measured else 0.0
        elif run.cost_node_hours:
            used[run.backend] += run.cost_node_hours
    starting: dict[str, int] = defaultdict(int)
    for entry in plan.changes():
        if entry.next_attempt is not None:
            starting[entry.backend] += 1
    by_backend = {}
    for name, config in project.spec.backends.items():
        if starting[name] or used[name]:
            budget = getattr(config, "budget", None)
            by_backend[name] = BackendCost(
                starting[name], config.run_cost(), used[name], budget.node_hours if budget else None, measured[name]
            )
    budget = project.spec.budget
    charged = sorted(name for name, cost in by_backend.items() if cost.runs and not cost.run.free)
    from .usage import allocations, estimated_starts

    return PlanCost(
        by_backend,
        sum(used.values()),
        budget.node_hours if budget else None,
        sum(measured.values()),
        allocations(project, charged) if ask else {},
        estimated_starts(project, charged) if ask and estimate else {},
    )


def build_plan(
    project: Project,
    prune: bool = False,
    replace: tuple[str, ...] = (),
    cached: bool = False,
    ask_backends: bool = True,
    estimate: bool = False,
) -> tuple[Plan, Observation]:
    """Observe and plan. ``replace``: declared point ids to run again (raises :class:`UserError` for others);
    ``cached``: read recorded runs through the run cache; ``ask_backends=False``: from MLflow alone, contacting
    no backend (see :func:`observe`); ``estimate``: ask the backends that would start runs when a job would
    start (``plan`` does; apply and watch do not: it is for people deciding)."""
    observation = observe(project, cached, ask_backends)
    untrusted = {r.run_id for r in observation.untrusted}

    def plan_with(replaced: tuple[str, ...]) -> Plan:
        return make_plan(
            observation.desired,
            [r for r in observation.runs if r.run_id not in untrusted],
            observation.jobs,
            commit=observation.code.commit,
            spec_digest=project.loaded.digest,
            prune=prune,
            changed_files=observation.changed_files,
            replace=replaced,
        )

    named = replaced_points(project, observation, replace)
    if any(reference in project.spec.experiments for reference in replace):  # its failed and cancelled points
        experiments = {reference for reference in replace if reference in project.spec.experiments}
        ended = (Action.FAILED, Action.CANCELLED)
        named += [e.point_id for e in plan_with(()).entries if e.experiment in experiments and e.action in ended]
    plan = plan_with(tuple(dict.fromkeys(named)))
    plan.errors.extend(unreachable(observation))
    plan.warnings.extend(f"drift: {problem}" for problem in observation.journal_problems)
    plan_registry(project, observation, plan, untrusted)  # the spec's models: beside the runs, after them
    plan.cost = plan_cost(project, plan, observation.runs, observation.usage, ask=ask_backends, estimate=estimate)
    plan.warnings += [f"{problem}: apply will refuse" for problem in plan.cost.over_budget()]
    if ask_backends:
        plan.errors.extend(_not_offered(project, plan))
    else:
        plan.warnings.append(
            "no backend was asked (--no-backends): live runs are shown as MLflow last recorded them, and what the "
            "sites offer is not checked; apply asks them"
        )
    for name in sorted({e.backend for e in plan.changes() if e.next_attempt is not None}):
        if name in project.spec.backends:
            plan.warnings += [f"backend {name}: {note}" for note in project.backend(name).notes()]
    for run in observation.untrusted:
        if recorded_identity(run).key != run.run_key:
            plan.warnings.append(
                f"run {run.run_id} ({run.point_id or '?'}) carries key {run.run_key[:12]} but its recorded inputs hash "
                f"to {recorded_identity(run).key[:12]}: not counted as a result (see `mantik explain {run.run_id}`)"
            )
        else:
            plan.warnings.append(
                f"run {run.run_id} ({run.point_id or '?'}) is FINISHED but unverified: its end carries no signature that "
                "holds under MANTIK_SIGNING_KEY; not counted as a result (`mantik adopt` vouches for a run you trust)"
            )
    for run in observation.runs:
        if run.run_id in project.store.deleted_live:
            plan.warnings.append(
                f"run {run.run_id} ({run.point_id or '?'}) was deleted in MLflow while its job is {run.status.lower()}: "
                "its key is not submitted again; `mantik cancel` reaches it, `mlflow runs restore` brings it back"
            )
    plan.warnings.extend(mlproject_notes(project.spec, project.root))
    if observation.code.dirty:
        plan.warnings.append(
            f"uncommitted changes in code, data or spec files ({observation.code.dirty_summary()}): "
            "the plan uses the last commit; apply will refuse (`--scratch` runs the working tree as a snapshot)"
        )
    if project.repo.unsnapshotted:
        changed = project.repo.unsnapshotted
        plan.warnings.append(
            f"scratch: no snapshot, as only files outside the code changed ({', '.join(changed[:3])}"
            f"{', ...' if len(changed) > 3 else ''}): the runs are of commit {observation.code.commit[:12]}"
        )
    if observation.code.scratch:
        plan.warnings.append(
            f"scratch: the working tree as it stands, snapshot {observation.code.commit[:12]} on no branch "
            f"(apply keeps it as {SCRATCH_REFS}{observation.code.commit}); commit the same tree and its runs count"
        )
    scratch_runs = {r.run_id for r in observation.runs if r.scratch}
    counted = sorted({e.point_id for e in plan.entries if e.run_id in scratch_runs and e.action is Action.UP_TO_DATE})
    if counted:
        plan.warnings.append(
            f"{len(counted)} point(s) are done by runs of a scratch snapshot ({', '.join(counted[:3])}"
            f"{', ...' if len(counted) > 3 else ''}): their recorded commit is on no branch, kept by {SCRATCH_REFS}"
        )
    throwaway = throwaway_store(project)
    if throwaway:
        plan.warnings.append(throwaway + "; apply will refuse")
    if observation.code.lfs_pointers:
        pointers = observation.code.lfs_pointers
        plan.warnings.append(
            f"{len(pointers)} committed file(s) are Git LFS pointers ({', '.join(pointers[:3])}"
            f"{', ...' if len(pointers) > 3 else ''}): jobs get the pointers, not the content; declare the content as data"
        )
    remote = sorted({d.point.backend for d in observation.desired if not project.backend(d.point.backend).shares_files})
    if remote and project.store.uri.startswith(("sqlite:", "file:", "/")):
        plan.warnings.append(
            f"jobs on {', '.join(remote)} may not reach the tracking store on this machine: each apply closes "
            "their runs from the backend's job state and keeps their output (an MLflow server shows them live)"
        )
    return plan, observation
