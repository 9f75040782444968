"""``mantik cancel`` and ``mantik logs``: acting on runs that are already submitted."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterator

from ..errors import UserError
from ..state.lock import project_lock
from ..state.tags import FailureKind, RunStatus, failure_tags
from .project import Project, poll_jobs
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
        by_backend = defaultdict(list)
        for run in chosen:
            if run.job_id and run.backend in project.spec.backends:
                by_backend[run.backend].append(run.job_id)
        cancelled = failure_tags(FailureKind.USER_CANCELLED, "cancelled by `mantik cancel`")
        for run in chosen:  # before the signal: the runner then sees why it was stopped and keeps that
            project.store.set_tags(run.run_id, cancelled)
        for backend_name, job_ids in by_backend.items():
            project.backend(backend_name).cancel(job_ids)
        for run in chosen:
            project.store.terminate(run.run_id, RunStatus.KILLED)
        project.store.keep_deleted([run.run_id for run in chosen])
    return [run.run_id for run in chosen]


def follow_log(
    project: Project, run_id: str, follow: bool, interval: float = 1.0, sleep: Callable[[float], None] = time.sleep
) -> Iterator[bytes]:
    """The run's output; with ``follow``, more as it arrives until the run has ended."""
    run = find_run(project.store.observe(), run_id, project.spec.project)
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
