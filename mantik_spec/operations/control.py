"""``mantik cancel`` and ``mantik logs``: acting on runs that are already submitted."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterator

from ..backends.base import BackendError
from ..errors import UserError
from ..state.lock import project_lock
from ..state.tags import failure_tags
from ..vocab import FailureKind, RunStatus
from .project import Project, poll_jobs, recorded_runs
from .runref import find_run, matching_runs, refuse_ambiguous


def cancel(project: Project, targets: list[str], lock_timeout: float = 0.0) -> list[str]:
    """Cancel the live runs of the named experiments or run ids, one scheduler call per backend."""
    with project_lock(project.store, "cancel", lock_timeout):
        runs = project.store.observe()
        named: dict[str, list] = {t: matching_runs(runs, t) for t in targets if t not in project.spec.experiments}
        unknown = [t for t, found in named.items() if not found]
        if unknown:
            raise UserError(f"no experiment, run, job or point named {', '.join(unknown)}")
        for target, found in named.items():  # a prefix that names several points cancels nothing
            refuse_ambiguous(found, target, project.spec.project)
        chosen_ids = {r.run_id for found in named.values() for r in found}
        chosen = [r for r in runs if r.live and (r.run_id in chosen_ids or r.experiment in targets)]
        poll_jobs(project, chosen)  # an intent whose job exists unrecorded gets its job id: cancel that too
        cancelled = failure_tags(FailureKind.USER_CANCELLED, "cancelled by `mantik cancel`")
        by_backend: dict[str, list[tuple[str, str, dict[str, str]]]] = defaultdict(list)
        for run in chosen:
            if run.job_id and run.backend in project.spec.backends:
                by_backend[run.backend].append((run.run_id, run.job_id, cancelled))
        with_jobs = {run_id for jobs in by_backend.values() for run_id, _, _ in jobs}
        not_stopped: set[str] = set()
        errors = []
        for backend_name, jobs in by_backend.items():
            try:
                cancel_jobs(project, backend_name, jobs)
            except BackendError as exc:
                not_stopped.update(run_id for run_id, _, _ in jobs)
                errors.append(f"backend {backend_name}: {exc}")
        for run in chosen:  # runs without a job to stop (intents, backends no longer declared) are only closed
            if run.run_id not in not_stopped:
                why = None if run.run_id in with_jobs else cancelled  # the others have it from cancel_jobs
                project.store.terminate(run.run_id, RunStatus.KILLED, why)
        project.store.keep_deleted([run.run_id for run in chosen])
        if errors:
            raise BackendError(f"{'; '.join(errors)}; those runs are left running as they were")
    return [run.run_id for run in chosen]


def cancel_jobs(project: Project, backend_name: str, jobs: list[tuple[str, str, dict[str, str]]]) -> None:
    """Stop ``jobs`` (run id, job id, why: its failure tags) on one backend, in one call. Why is recorded
    first, so the runner that sees its job stopped keeps that reason; when the backend cannot cancel, those
    tags are removed again and the runs are left as they were. Raises the backend's BackendError."""
    for run_id, _, why in jobs:
        project.store.set_tags(run_id, why)
    try:
        project.backend(backend_name).cancel([job_id for _, job_id, _ in jobs])
    except BackendError:
        for run_id, _, why in jobs:
            project.store.delete_tags(run_id, list(why))
        raise


def follow_log(
    project: Project, run_id: str, follow: bool, interval: float = 1.0, sleep: Callable[[float], None] = time.sleep
) -> Iterator[bytes]:
    """The run's output; with ``follow``, more as it arrives until the run has ended."""
    run = find_run(recorded_runs(project, settled=True), run_id, project.spec.project)
    run_id = run.run_id
    if run.backend not in project.spec.backends:
        raise UserError(f"run {run_id} ran on backend '{run.backend}', which mantik.yaml no longer declares")
    backend = project.backend(run.backend)
    offset = 0
    while True:
        chunk = backend.read_log(run_id, run.job_id, offset)
        if chunk:
            offset += len(chunk)
            yield chunk
        if not follow:
            if offset == 0 and chunk is None:
                raise UserError(f"run {run_id} has no output yet")
            return
        if project.store.run_status(run_id).ended:
            tail = backend.read_log(run_id, run.job_id, offset)
            if tail:
                yield tail
            return
        sleep(interval)
