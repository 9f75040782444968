"""``mantik reproduce RUN_ID``: re-create a run from its MLflow record alone.

The record names the commit, the point, the code identity and the data and
environment versions. The point is re-created as ``mantik.yaml`` at that
commit declares it (the record's command and parameters must hash, with those
versions, to the record's key: a record is evidence, not what runs), in a
checkout of that commit with its data at the recorded versions, and submitted
as a new run with the same key, linked to the original.
"""

from __future__ import annotations

import dataclasses

from ..dvcfiles import VersionError, dvc_md5
from ..errors import UserError
from ..reconcile.identity import DesiredRun, identify, recorded_identity
from ..reconcile.plan import Action, PlannedRun
from ..spec.experiments import RunPoint, expand, resolve_extends
from ..spec.load import load_spec
from ..spec.yamlload import SpecError
from ..state.git import CodeVersion
from ..state.lock import project_lock
from ..state.tracking import Tag
from .apply import submit
from .jobs import Submission
from .project import Project
from .runref import find_run


def reproduce(
    project: Project, run_id: str, backend: str | None = None, lock_timeout: float = 0.0
) -> tuple[str, str]:
    """Submit a new run re-creating the run ``run_id`` names (see :mod:`.runref`): (new run id, original run id)."""
    run = find_run(project.store.observe(), run_id, project.spec.project)
    run_id = run.run_id
    backend = backend or run.backend
    if backend not in project.spec.backends:
        raise UserError(f"backend '{backend}' is not declared in mantik.yaml (use --backend NAME)")
    if not project.repo.has_commit(run.commit):
        raise UserError(
            f"run {run_id} was made at commit {run.commit[:7]}, which is not in this repository: fetch it first"
        )
    if not project.repo.in_history(run.commit):  # a record may name any commit, a fetched pull request's too
        raise UserError(
            f"run {run_id} was made at commit {run.commit[:7]}, which is not in the history of the checked-out "
            "branch: check out a branch that contains it to reproduce it"
        )

    identity = recorded_identity(run)
    if identity.key != run.run_key:
        raise UserError(f"run {run_id}'s record does not hash to its run key: it cannot be re-created exactly")

    checkout_dir = project.repo.worktree(run.commit, project.state_dir / "reproduce" / run.commit)
    declared = _declared_point(run, checkout_dir)
    sources = _data_at_commit(project, run, checkout_dir)
    # what runs is what the commit declares for the point; the record only says which point and versions
    point = dataclasses.replace(declared, backend=backend, environment=None, retries=0, suspended=False)
    entry = PlannedRun(
        Action.SUBMIT,
        run.experiment,
        run.point_id,
        run.run_key,
        backend,
        run.parameters,
        f"reproduces {run_id}",
        next_attempt=1,
    )
    code = CodeVersion(commit=run.commit, identity=run.code, branch=None, repo_url=None, dirty=())
    context = Submission(code=code, data_root=checkout_dir, extra_tags={Tag.REPRODUCES: run_id})
    with project_lock(project.store, "reproduce", lock_timeout) as lock:
        started = submit(project, context, [(DesiredRun(point, identity), entry)], sources=sources, lock=lock)
    return started[0], run_id


def _declared_point(run, checkout_dir) -> RunPoint:
    """The point ``run`` records, as ``mantik.yaml`` at the run's commit declares it, once the record's identity
    is shown to be what that declaration hashes to: the command and parameters of a run record are evidence
    (anyone who can write to the tracking store can write one), never what runs. UserError otherwise."""
    commit = run.commit[:7]
    try:
        spec = load_spec(checkout_dir).spec
    except SpecError as exc:
        raise UserError(f"mantik.yaml at commit {commit} no longer loads: {exc.problems[0]}") from None
    experiments, _ = resolve_extends(spec)
    found = [p for p in expand(spec, experiments) if p.point_id == run.point_id and p.experiment == run.experiment]
    if not found:
        raise UserError(f"run {run.run_id}: commit {commit} declares no point {run.point_id}; not re-created")
    point = found[0]
    environments = {point.environment: run.environment} if point.environment else {}
    if identify(point, run.code, run.data, environments).key != run.run_key:
        raise UserError(
            f"run {run.run_id}'s record (command, parameters, seed or data) is not what commit {commit} declares "
            f"for {run.point_id}: not re-created (a record is not proof of what ran; `mantik explain` compares)"
        )
    return point


def dvc_cache(project: Project):
    """The project's DVC cache: ``.dvc/cache`` of the nearest directory up from the project that has ``.dvc``."""
    for directory in (project.root, *project.root.parents):
        if (directory / ".dvc").is_dir():
            return directory / ".dvc" / "cache"
        if directory == project.repo.root:
            break
    raise UserError("no DVC repository around the project (run `dvc init`)")


def _data_at_commit(project: Project, run, checkout_dir) -> dict:
    """The run's data sources as declared at its commit, checked out at the recorded versions."""
    if not run.data:
        return {}
    try:
        declared = load_spec(checkout_dir).spec.data
    except SpecError as exc:
        raise UserError(f"mantik.yaml at commit {run.commit[:7]} no longer loads: {exc.problems[0]}") from None
    dvc_paths = []
    for name, version in run.data.items():
        if name not in declared:
            raise UserError(f"data.{name} is not declared in mantik.yaml at commit {run.commit[:7]}")
        source = declared[name]
        if source.path is None:
            continue  # a pinned URL: the job fetches the version itself
        recorded = version.removeprefix("md5:")
        at_commit = dvc_md5(checkout_dir, source.path)
        if at_commit != recorded:
            raise UserError(
                f"data.{name}: the run used md5:{recorded[:12]}…, but commit {run.commit[:7]} records "
                f"{'md5:' + at_commit[:12] + '…' if at_commit else 'no DVC version'} (was the .dvc file committed?)"
            )
        dvc_paths.append(source.path)
    if dvc_paths:
        from ..state.dvcdata import checkout

        try:
            checkout(checkout_dir, dvc_paths, dvc_cache(project))
        except VersionError as exc:
            raise UserError(f"data of run {run.run_id} at {', '.join(dvc_paths)}: {exc}") from None
    return declared
