"""The run cache: ended runs of one tracking store and project, kept between plans under ``.mantik/cache/``.

An ended run (FINISHED, FAILED, KILLED) that nobody edits keeps its outcome, so a plan need not read it again.
``TrackingStore.observe(cache=...)`` reads from MLflow only what can have changed since the last plan:

- live runs (one search per live status), which also catches an ended run made live again, and the runs
  that were live at the last plan, by id, whatever their times say;
- runs created or ended since the watermark: the newest start or end time seen in the store, less
  ``MARGIN_MS`` (clocks of login and compute nodes differ: the margin only sets how much is read again);
- the ids of deleted runs: a cached run that is deleted leaves the cache, a deleted run that is no longer
  deleted (restored) is read again by id.

The cache is bound to the store it describes, not only to its URI: the ended runs it took in last
(``SENTINELS`` of them, in the order it saw them change, whatever their clocks say) are read again by id on
every incremental read, and one that is gone or differs means the store is not the one the cache saw (a
``.mantik/mlflow.db`` restored from a backup, another server behind the same URI, a status edited by hand):
the read becomes a full scan. No time beyond the reading machine's clock is trusted: a compute node whose
clock runs hours ahead stamps runs in the future, and the watermark never moves past now.

What an incremental read cannot see: tags edited by hand on an ended run that is not a sentinel, and a run
created and ended between two plans by a machine whose clock lags the store's newest time by more than the
margin. A full scan sees both; it happens when the cache is missing, unreadable or older than
``FULL_SCAN_AFTER_S``, when the project has an experiment the cache does not know, when a sentinel differs,
with ``mantik plan --refresh``, and in every ``apply``. The cache is safe to delete. It holds tags and
metrics already in MLflow, never credentials or provenance verdicts (checked on every read).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path

from ..files import write_atomically
from ..reconcile.identity import ObservedRun
from . import provenance

CACHE_VERSION = 4  # 2: runs carry cost_node_hours; 3: their provenance signatures, and sentinels; 4: job_started
MARGIN_MS = 10 * 60 * 1000  # re-read runs whose times fall within ten minutes before the newest seen
FULL_SCAN_AFTER_S = 24 * 3600  # a cache older than a day is rebuilt from a full scan
SENTINELS = 4  # ended runs read again by id on every incremental read, to tell the store is the one cached


@dataclasses.dataclass
class RunCache:
    """The ended runs of ``experiments`` as of the last plan.

    ``runs``: run id -> ObservedRun; ``deleted``: ids of the project's deleted runs; ``live``: ids of the runs
    live at the last read; ``newest_ms``: the newest start or end time (ms since the epoch) of any run read;
    ``full_scan_at``: when the last full scan was (seconds since the epoch, this machine's clock, only used to
    decide when to scan fully again); ``sentinels``: ids of the ended runs the cache took in last, newest first
    (see the module doc); ``clock``: this machine's time in seconds (no stamp beyond it is trusted)."""

    path: Path
    experiments: list[str] = dataclasses.field(default_factory=list)
    runs: dict[str, ObservedRun] = dataclasses.field(default_factory=dict)
    deleted: set[str] = dataclasses.field(default_factory=set)
    live: set[str] = dataclasses.field(default_factory=set)
    newest_ms: int = 0
    full_scan_at: float = 0.0
    sentinels: list[str] = dataclasses.field(default_factory=list)
    loaded: bool = False  # whether it was read from a cache file that fits
    clock: Callable[[], float] = time.time

    @classmethod
    def for_store(cls, state_dir: Path, uri: str, project: str) -> RunCache:
        """The cache of this store and project (an empty one when there is none, or it cannot be read)."""
        name = hashlib.sha256(f"{uri}\n{project}".encode()).hexdigest()[:16]
        cache = cls(state_dir / "cache" / f"runs-{name}.json")
        try:
            data = json.loads(cache.path.read_text())
            if data.get("version") != CACHE_VERSION:
                return cache
            cache.experiments = list(data["experiments"])
            cache.runs = {run["run_id"]: ObservedRun(**run) for run in data["runs"]}
            provenance.checked(cache.runs.values())  # a verdict under this process's key, never one kept
            cache.deleted = set(data["deleted"])
            cache.live = set(data["live"])
            cache.newest_ms = int(data["newest_ms"])
            cache.full_scan_at = float(data["full_scan_at"])
            cache.sentinels = [str(run_id) for run_id in data["sentinels"]]
            cache.loaded = True
        except (OSError, ValueError, KeyError, TypeError):
            return cls(cache.path)  # missing or damaged: a full scan rebuilds it
        return cache

    def usable_for(self, experiments: list[str]) -> bool:
        """Whether an incremental read from this cache sees what a full scan would (see the module doc)."""
        return (
            self.loaded
            and sorted(experiments) == sorted(self.experiments)
            and 0 <= self.clock() - self.full_scan_at < FULL_SCAN_AFTER_S
        )

    @property
    def since_ms(self) -> int:
        """Runs started or ended at or after this time (ms) are read again."""
        return max(0, min(self.newest_ms, int(self.clock() * 1000)) - MARGIN_MS)

    def holds(self, found: dict[str, ObservedRun], deleted: set[str]) -> bool:
        """Whether the store read now is the one cached: each sentinel is deleted since, or ``found`` (the runs
        read now, by id) has it as the cache does."""
        return all(run_id in deleted or found.get(run_id) == self.runs.get(run_id) for run_id in self.sentinels)

    def record(self, experiments: list[str], runs: list[ObservedRun], deleted: set[str], full_scan: bool) -> None:
        """Keep what was read: the ended runs among ``runs`` (all the project's active runs after a full scan,
        the changed ones otherwise) and the deleted ids; then write the file (failures to write are ignored:
        the next plan scans fully)."""
        before = (self.experiments, self.newest_ms, self.deleted, self.live, len(self.runs), self.sentinels)
        self.experiments = sorted(experiments)
        changed = full_scan or not self.loaded
        now_ms = int(self.clock() * 1000)
        if full_scan:
            self.runs = {}
            self.newest_ms = 0
            self.full_scan_at = self.clock()
            runs = sorted(runs, key=lambda r: (max(r.start_time or 0, r.end_time or 0), r.run_id))
        taken_in = []
        for run in runs:
            if run.run_id in deleted or run.status.live:
                self.runs.pop(run.run_id, None)
            elif self.runs.get(run.run_id) != run:
                self.runs[run.run_id] = run
                taken_in.append(run.run_id)
                changed = True
            # a stamp beyond this machine's clock (a node whose clock runs ahead) moves the watermark to now only
            self.newest_ms = max(self.newest_ms, min(now_ms, max(run.start_time or 0, run.end_time or 0)))
        for run_id in deleted:
            self.runs.pop(run_id, None)
        recent = [*reversed(taken_in), *self.sentinels]
        self.sentinels = [run_id for run_id in dict.fromkeys(recent) if run_id in self.runs][:SENTINELS]
        self.deleted = set(deleted)
        self.live = {run.run_id for run in runs if run.status.live and run.run_id not in deleted}
        self.loaded = True
        after = (self.experiments, self.newest_ms, self.deleted, self.live, len(self.runs), self.sentinels)
        if not changed and before == after:
            return  # nothing new: the file on disk says the same
        data = {
            "version": CACHE_VERSION,
            "experiments": self.experiments,
            "newest_ms": self.newest_ms,
            "full_scan_at": self.full_scan_at,
            "deleted": sorted(self.deleted),
            "live": sorted(self.live),
            "sentinels": self.sentinels,
            "runs": [_as_json(run) for run in self.runs.values()],
        }
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(self.path, json.dumps(data))
        except OSError:
            pass


# provenance is checked on every read, under the key of the process reading (never kept)
FIELDS = [field.name for field in dataclasses.fields(ObservedRun) if field.name != "provenance"]


def _as_json(run: ObservedRun) -> dict:
    data = {name: getattr(run, name) for name in FIELDS}  # shallow: its dicts are plain JSON already
    data["status"] = run.status.value
    data["failure_kind"] = run.failure_kind.value if run.failure_kind else None
    return data
