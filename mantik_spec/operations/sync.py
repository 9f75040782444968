"""``mantik sync``: upload the offline journals of live runs into their runs (docs/offline.md), and of ended runs
until their journal is known uploaded whole.

``plan``, ``status`` and ``apply`` do the same on the way (:func:`mantik_spec.operations.project.observe`), so a
run recorded offline shows its metrics, and ends, as soon as any of them has looked. The upload of one run is
:func:`mantik_spec.state.journal.sync_run`; this module picks the runs and their journals' backends.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from ..backends.base import BackendError
from ..reconcile.identity import ObservedRun
from ..reconcile.planner import JobStates
from ..state.journal import Damage, SyncResult, sync_run
from ..state.tags import Tag
from ..vocab import JobState
from .project import Project

# How long after its run was closed a journal without the runner's end is still read. A cancel, a time limit or a
# preemption closes the record (or ends the job) while the signalled runner still writes its last points, its
# output and its end; a scheduler kills what is left only after its grace (Slurm's KillWait, 30 s by default,
# slurm.conf(5)). A journal still without its end after this is one whose runner was killed first: final as it is.
JOURNAL_GRACE_MS = 5 * 60 * 1000


@dataclass
class SyncReport:
    """What one sync pass did: one result per run whose journal was read, and backends that could not be read."""

    results: list[SyncResult] = field(default_factory=list)
    unreadable: dict[str, str] = field(default_factory=dict)  # run id -> why its journal could not be read
    point_of: dict[str, str] = field(default_factory=dict)  # run id -> point id, for people
    completed: list[str] = field(default_factory=list)  # runs this pass marked synced whole (Tag.SYNC_COMPLETE)

    @property
    def changed(self) -> bool:
        """Whether any run's status changed: what was observed before is stale."""
        return any(r.status for r in self.results)

    def problems(self) -> list[str]:
        """One line per run whose journal was not synced whole, with the reason (plan shows them as drift)."""
        lines = []
        for result in self.results:
            point = self.point_of.get(result.run_id, "?")
            for skipped in result.skipped:
                what = {
                    Damage.UNREADABLE: "the journal is not a readable database",
                    Damage.INCOMPLETE: "the job ended while its journal was being created",
                    Damage.NO_RUN: "the journal holds no record of the run",
                    Damage.TABLE_CUT: f"{skipped.part} damaged, synced up to the damage",
                    Damage.CONFLICT: f"param {skipped.part} differs from the recorded one, not synced",
                    Damage.REFUSED: f"{skipped.part} refused by the tracking store",
                    Damage.NOT_READ: f"{skipped.part} could not be read, read again on the next pass",
                }[skipped.damage]
                lines.append(f"run {result.run_id} ({point}): offline journal not synced whole: {what} ({skipped.detail})")
        for run_id, why in sorted(self.unreadable.items()):
            lines.append(f"run {run_id} ({self.point_of.get(run_id, '?')}): offline journal not synced: {why}")
        return lines


def candidates(project: Project, runs: Iterable[ObservedRun]) -> list[ObservedRun]:
    """The runs whose jobs may have recorded offline, on a declared backend not set to ``online``: live runs, and
    ended runs with a job whose journal is not known synced whole (no ``Tag.SYNC_COMPLETE``) and that did not
    record online. A job offline tags its run ``offline`` in its journal only, so a run the scheduler's state
    closed before a sync has no tracking tag yet: it is read once, then marked."""
    backends = project.spec.backends
    return [
        r
        for r in runs
        if r.backend in backends
        and backends[r.backend].tracking != "online"
        and (r.live or (r.job_id and not r.journal_synced and r.tracking != "online"))
    ]


def sync_journals(project: Project, runs: Iterable[ObservedRun], jobs: JobStates | None = None) -> SyncReport:
    """Upload the journals of ``runs`` (see :func:`candidates`); ``jobs``: their job states, when known (an
    ended job's journal and artifacts are final). A run whose job ended gets ``Tag.SYNC_COMPLETE`` once its
    journal was uploaded without a part skipped, or when it has none, and either it holds the runner's end or the
    run was closed :data:`JOURNAL_GRACE_MS` ago: a job that never ran its runner is not looked for again, and a
    runner still ending after a cancel loses nothing; a damaged journal is read, and reported, until it is
    repaired or removed. Raises TrackingError when the store cannot be reached."""
    report = SyncReport()
    for run in candidates(project, runs):
        report.point_of[run.run_id] = run.point_id
        job = (jobs or {}).get((run.backend, run.job_id)) if run.job_id else None
        if run.live and job is not None and job.state is JobState.PENDING:
            continue  # not started: no journal yet, and no read of the cluster's files for it
        # the scheduler's word where it was asked: a record is closed by a cancel while its job still ends, and can
        # be by anyone who can write to the store while it still runs; its runner may still write then
        job_ended = job.state.ended if job is not None else not run.live
        backend = project.backend(run.backend)
        now = time.monotonic()
        if not job_ended and now - project.journal_read_at.get(run.run_id, -math.inf) < backend.live_journal_interval:
            continue  # read moments ago in this command, and reading it again costs the site a job
        project.journal_read_at[run.run_id] = now
        try:
            files = backend.journal(run.run_id, run.job_id)  # None: no job directory to read
            result = sync_run(project.store, run.run_id, files, job_ended=job_ended) if files is not None else None
        except BackendError as exc:
            report.unreadable[run.run_id] = str(exc)
            continue
        if result is not None:
            report.results.append(result)
        if job_ended and run.job_id and (result is None or not result.skipped) and _final(run, result):
            # final: the job can no longer write its journal, and what it holds is in the run (or it left none)
            project.store.set_tags(run.run_id, {Tag.SYNC_COMPLETE: "none" if result is None else "journal"})
            run.journal_synced = True
            report.completed.append(run.run_id)
    return report


def _final(run: ObservedRun, result: SyncResult | None, now_ms: int | None = None) -> bool:
    """Whether an ended job's journal can hold no more than was synced: it holds the runner's end, or the run
    was closed over :data:`JOURNAL_GRACE_MS` ago (a runner still ending writes within that)."""
    if result is not None and result.final:
        return True
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    return run.end_time is not None and now_ms - run.end_time > JOURNAL_GRACE_MS


def sync(project: Project) -> SyncReport:
    """``mantik sync``: every run of the project whose journal may hold what its run lacks (:func:`candidates`),
    with the live runs' job states asked once per backend."""
    from .project import poll_jobs

    runs = candidates(project, project.store.observe())
    jobs = poll_jobs(project, [r for r in runs if r.live], explain=closed(runs)) if runs else {}
    return sync_journals(project, runs, jobs)


def closed(runs: Iterable[ObservedRun]) -> list[ObservedRun]:
    """The closed runs among :func:`candidates`: their jobs are asked too (``poll_jobs``'s ``explain``), so a
    journal is final only once the scheduler says its job ended, whoever closed the record."""
    return [r for r in runs if not r.live and r.job_id]
