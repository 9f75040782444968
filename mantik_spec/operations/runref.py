"""Naming a run on the command line: what ``status`` shows must be accepted wherever a run is named.

A reference is, in this order: a full MLflow run id; a backend job id; a declared point id
(``sweep[lr=0.1,seed=0]``: its latest run), or a unique subset of its values (``sweep[lr=0.1]``); the
job id as ``status`` shows it (the last part of a UNICORE job URL); or a unique prefix, at least
:data:`MIN_PREFIX` characters, of any of these.
"""

from __future__ import annotations

from ..errors import UserError
from ..reconcile.identity import ObservedRun
from ..spec.experiments import SEED_PARAMETER, point_reference, values_match

MIN_PREFIX = 4


def job_label(job_id: str | None) -> str:
    """A job id as ``status`` shows it: a UNICORE job id is its URL, whose last part names the job."""
    return (job_id or "").rstrip("/").rsplit("/", 1)[-1]


def latest(runs: list[ObservedRun]) -> ObservedRun:
    return max(runs, key=lambda r: (r.attempt, r.start_time or 0))


def matching_runs(runs: list[ObservedRun], reference: str) -> list[ObservedRun]:
    """Every run the reference can mean: one run, all runs of one point, or several (ambiguous). A run id
    names its run alone, whatever job id other records carry (a record may name any job)."""
    by_id = [r for r in runs if r.run_id == reference]
    if by_id:
        return by_id
    exact = [r for r in runs if reference in (r.job_id, job_label(r.job_id))]
    if exact:
        return exact
    of_point = [r for r in runs if r.point_id == reference]
    if of_point:
        return of_point
    read = point_reference(reference)
    if read is not None:  # a unique subset of a point's values: `sweep[lr=0.1]` with defaults left out
        experiment, wanted = read
        subset = [r for r in runs if r.experiment == experiment and values_match(_values(r), wanted)]
        if subset:
            return subset
    if len(reference) < MIN_PREFIX:
        return []
    return [
        r
        for r in runs
        if r.run_id.startswith(reference) or (r.job_id and job_label(r.job_id).startswith(reference))
    ]


def _values(run: ObservedRun) -> dict:
    return run.parameters | ({SEED_PARAMETER: run.seed} if run.seed is not None else {})


def find_run(runs: list[ObservedRun], reference: str, project: str) -> ObservedRun:
    """The one run a reference names (the latest attempt, for a point id).

    Raises :class:`UserError` when nothing matches, or when a prefix matches runs of several points."""
    found = matching_runs(runs, reference)
    if not found:
        raise UserError(
            f"no run {reference} in project {project} "
            f"(give a run id, a job id or a point id as `mantik status` shows them; prefixes of {MIN_PREFIX}+ "
            "characters are enough)"
        )
    points = {r.point_id for r in found}
    if len(points) > 1:
        shown = ", ".join(f"{r.run_id[:12]} ({r.point_id})" for r in sorted(found, key=lambda r: r.point_id)[:5])
        raise UserError(f"'{reference}' names runs of {len(points)} points: {shown}; give more of the id")
    return latest(found)


def refuse_ambiguous(found: list[ObservedRun], reference: str, project: str) -> None:
    """A prefix that matches runs of several points names none of them (raises :class:`UserError`, naming the
    candidates); a full run or job id, or a point id, may name several runs (all attempts, an array)."""
    exact = any(reference in (r.run_id, r.job_id, job_label(r.job_id)) for r in found)
    if not exact and len({r.point_id for r in found}) > 1:
        find_run(found, reference, project)
