"""``mantik sync``: upload the offline journals of live runs into their runs (docs/offline.md).

``plan``, ``status`` and ``apply`` do the same on the way (:func:`mantik_spec.operations.project.observe`), so a
run recorded offline shows its metrics, and ends, as soon as any of them has looked. The upload of one run is
:func:`mantik_spec.state.journal.sync_run`; this module picks the runs and their journals' backends.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from ..backends.base import BackendError
from ..reconcile.identity import ObservedRun
from ..reconcile.planner import JobStates
from ..state.journal import Damage, SyncResult, sync_run
from ..vocab import JobState
from .project import Project


@dataclass
class SyncReport:
    """What one sync pass did: one result per run whose journal was read, and backends that could not be read."""

    results: list[SyncResult] = field(default_factory=list)
    unreadable: dict[str, str] = field(default_factory=dict)  # run id -> why its journal could not be read
    point_of: dict[str, str] = field(default_factory=dict)  # run id -> point id, for people

    @property
    def closed(self) -> list[str]:
        """Runs this pass ended (their journal said how)."""
        return [r.run_id for r in self.results if r.status and r.status != "RUNNING"]

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
                    Damage.NO_RUN: "the journal holds no record of the run",
                    Damage.TABLE_CUT: f"{skipped.part} damaged, synced up to the damage",
                    Damage.CONFLICT: f"param {skipped.part} differs from the recorded one, not synced",
                    Damage.REFUSED: f"{skipped.part} refused by the tracking store",
                }[skipped.damage]
                lines.append(f"run {result.run_id} ({point}): offline journal not synced whole: {what} ({skipped.detail})")
        for run_id, why in sorted(self.unreadable.items()):
            lines.append(f"run {run_id} ({self.point_of.get(run_id, '?')}): offline journal not synced: {why}")
        return lines


def candidates(project: Project, runs: Iterable[ObservedRun]) -> list[ObservedRun]:
    """The runs whose jobs may have recorded offline: live, on a declared backend not set to ``online``."""
    backends = project.spec.backends
    return [r for r in runs if r.live and r.backend in backends and backends[r.backend].tracking != "online"]


def sync_journals(project: Project, runs: Iterable[ObservedRun], jobs: JobStates | None = None) -> SyncReport:
    """Upload the journals of ``runs`` (see :func:`candidates`); ``jobs``: their job states, when known (an
    ended job's artifacts are final). Raises TrackingError when the store cannot be reached."""
    report = SyncReport()
    for run in candidates(project, runs):
        report.point_of[run.run_id] = run.point_id
        job = (jobs or {}).get((run.backend, run.job_id)) if run.job_id else None
        if job is not None and job.state is JobState.PENDING:
            continue  # not started: no journal yet, and no read of the cluster's files for it
        try:
            files = project.backend(run.backend).journal(run.run_id, run.job_id)
            if files is None:
                continue
            result = sync_run(project.store, run.run_id, files, job_ended=bool(job and job.state.ended))
        except BackendError as exc:
            report.unreadable[run.run_id] = str(exc)
            continue
        if result is not None:
            report.results.append(result)
    return report


def sync(project: Project) -> SyncReport:
    """``mantik sync``: every live run of the project, with its job's state asked once per backend."""
    from .project import poll_jobs

    runs = project.store.observe()
    live = candidates(project, runs)
    jobs = poll_jobs(project, live) if live else {}
    return sync_journals(project, live, jobs)
