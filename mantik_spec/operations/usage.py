"""What ended runs really used, and what the sites say is left of their allocations.

Usage: a run that ended is charged what its job used, as the site's accounting says (Slurm: sacct's elapsed
time x allocated nodes); where no accounting answers, its time limit stands (nodes x limit, recorded at
submission), an upper bound labelled ``limit``. ``apply`` records the figure on the run
(``mantik.cost.used_node_hours`` and ``mantik.cost.used_source``, :mod:`..state.tags`), so plan against actual
is a query in MLflow, and budgets count it. Each backend is asked once for all its ended runs.

Allocation: what a site says is left (sshare's association limits, a UNICORE site's compute budget), kept in
``.mantik/cache/allocation.json`` (by backend and config) with the time it was asked, asked again when older than
:data:`ALLOCATION_MAX_AGE`. It is shown beside a plan, never in its way: a site that cannot say is left out.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections import defaultdict
from collections.abc import Iterable
from typing import TYPE_CHECKING

from ..backends.base import BackendError
from ..files import write_atomically
from ..reconcile.identity import ObservedRun
from ..spec.cost import LIMIT, Allocation, Used
from ..state.tags import usage_tags
from ..state.tracking import TrackingError
from ..vocab import RunStatus

if TYPE_CHECKING:
    from .project import Project

ALLOCATION_MAX_AGE = 600.0  # seconds an answer is shown before the site is asked again
ALLOCATION_FILE = "allocation.json"


def unrecorded(project: Project, runs: Iterable[ObservedRun]) -> list[ObservedRun]:
    """Ended runs that got a job on a backend of this spec that costs an allocation, with no usage recorded."""
    return [
        run
        for run in runs
        if run.status.ended
        and run.job_id
        and run.used is None
        and run.backend in project.spec.backends
        and not project.spec.backends[run.backend].run_cost().free
    ]


def ended_usage(project: Project, runs: Iterable[ObservedRun]) -> dict[str, Used]:
    """What each of ``runs`` (ended, with a job) used, asked of each backend in one call: run id -> usage. A run
    the accounting has no record of counts at the limit recorded at its submission; a run whose job still holds
    its nodes, a run without a recorded limit, and the runs of a backend whose accounting cannot be asked now
    are left out (asked again next time; their limit counts meanwhile)."""
    by_backend: dict[str, list[ObservedRun]] = defaultdict(list)
    for run in unrecorded(project, runs):
        by_backend[run.backend].append(run)
    found: dict[str, Used] = {}
    for name, ended in by_backend.items():
        try:
            answered = project.backend(name).usage(sorted({run.job_id for run in ended if run.job_id}))
        except BackendError:
            continue
        for run in ended:
            if run.job_id in answered:
                used = answered[run.job_id]
                if used is not None:
                    found[run.run_id] = used
            elif run.cost_node_hours is not None:
                found[run.run_id] = Used(run.cost_node_hours, LIMIT)
    return found


def record_usage(project: Project, usage: dict[str, Used]) -> int:
    """Write each run's usage as its tags; returns how many runs were written. A run that cannot be written
    (deleted meanwhile) is left: the next apply asks again."""
    written = 0
    for run_id, used in usage.items():
        try:
            project.store.set_tags(run_id, usage_tags(used))
        except TrackingError:
            continue
        written += 1
    return written


def closed_now(runs: Iterable[ObservedRun], statuses: dict[str, RunStatus]) -> list[ObservedRun]:
    """``runs`` as they stand after this process closed some (run id -> the status it gave them)."""
    return [dataclasses.replace(run, status=statuses[run.run_id]) for run in runs if run.run_id in statuses]


# -- allocations ----------------------------------------------------------------------------------------


def allocations(project: Project, names: Iterable[str], now: float | None = None) -> dict[str, Allocation]:
    """What the sites of backends ``names`` say is left, each from the cache when younger than
    :data:`ALLOCATION_MAX_AGE`, else asked (time-boxed by the backend). A site that says nothing, or cannot be
    asked, is left out, and that too is kept for the same time: a plan never waits on it twice."""
    now = time.time() if now is None else now
    path = project.state_dir / "cache" / ALLOCATION_FILE
    try:
        cached = json.loads(path.read_text())
        cached = cached if isinstance(cached, dict) else {}
    except (OSError, ValueError):
        cached = {}
    found: dict[str, Allocation] = {}
    changed = False
    for name in names:
        # the backend's config is part of the key: another account or site is another answer
        config = json.dumps(project.spec.backends[name].model_dump(mode="json"), sort_keys=True)
        key = f"{name} {hashlib.sha256(config.encode()).hexdigest()[:12]}"
        entry = cached.get(key)
        if isinstance(entry, dict) and 0 <= now - float(entry.get("asked", 0)) < ALLOCATION_MAX_AGE:
            try:
                if entry.get("allocation"):
                    found[name] = Allocation.from_json(entry["allocation"])
                continue
            except (KeyError, TypeError, ValueError):
                pass
        try:
            allocation = project.backend(name).allocation()
        except BackendError:
            allocation = None
        cached[key] = {"asked": now, "allocation": allocation.to_json() if allocation else None}
        changed = True
        if allocation is not None:
            found[name] = allocation
    if changed:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(path, json.dumps(cached, indent=1, sort_keys=True))
        except OSError:
            pass  # a cache that cannot be written is asked again next time
    return found


def estimated_starts(project: Project, names: Iterable[str]) -> dict[str, str]:
    """When the sites of backends ``names`` estimate a job of each one's shape would start (one time-boxed
    question per backend, nothing submitted): backend -> the site's time. A site that makes no estimate, or
    cannot be asked, is left out."""
    found = {}
    for name in names:
        try:
            start = project.backend(name).estimated_start()
        except BackendError:
            continue
        if start:
            found[name] = start
    return found
