"""The run cache: ended runs of one tracking store and project, kept between plans under ``.mantik/cache/``.

An ended run (FINISHED, FAILED, KILLED) that nobody edits keeps its outcome, so a plan need not read it again.
``TrackingStore.observe(cache=...)`` reads from MLflow only what can have changed since the last plan:

- live runs (one search per live status), which also catches an ended run made live again, and the runs
  that were live at the last plan, by id, whatever their times say;
- runs created or ended since the watermark: the newest start or end time seen in the store, less
  ``MARGIN_MS`` (clocks of login and compute nodes differ: the margin only sets how much is read again);
- the ids of deleted runs: a cached run that is deleted leaves the cache, a deleted run that is no longer
  deleted (restored) is read again by id.

What an incremental read cannot see: tags edited by hand on an ended run, and a run created and ended
between two plans by a machine whose clock lags the store's newest time by more than the margin. A full scan
sees both; it happens when the cache is missing, unreadable or older than ``FULL_SCAN_AFTER_S``, when the
project has an experiment the cache does not know, with ``mantik plan --refresh``, and in every ``apply``.
The cache is safe to delete. It holds tags and metrics already in MLflow, never credentials.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path

from ..files import write_atomically
from ..reconcile.identity import ObservedRun

CACHE_VERSION = 3  # 2: runs carry cost_node_hours; 3: and their provenance signatures
MARGIN_MS = 10 * 60 * 1000  # re-read runs whose times fall within ten minutes before the newest seen
FULL_SCAN_AFTER_S = 24 * 3600  # a cache older than a day is rebuilt from a full scan


@dataclasses.dataclass
class RunCache:
    """The ended runs of ``experiments`` as of the last plan.

    ``runs``: run id -> ObservedRun; ``deleted``: ids of the project's deleted runs; ``live``: ids of the runs
    live at the last read; ``newest_ms``: the newest start or end time (ms since the epoch) of any run read;
    ``full_scan_at``: when the last full scan was (seconds since the epoch, this machine's clock, only used to
    decide when to scan fully again)."""

    path: Path
    experiments: list[str] = dataclasses.field(default_factory=list)
    runs: dict[str, ObservedRun] = dataclasses.field(default_factory=dict)
    deleted: set[str] = dataclasses.field(default_factory=set)
    live: set[str] = dataclasses.field(default_factory=set)
    newest_ms: int = 0
    full_scan_at: float = 0.0
    loaded: bool = False  # whether it was read from a cache file that fits

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
            cache.deleted = set(data["deleted"])
            cache.live = set(data["live"])
            cache.newest_ms = int(data["newest_ms"])
            cache.full_scan_at = float(data["full_scan_at"])
            cache.loaded = True
        except (OSError, ValueError, KeyError, TypeError):
            return cls(cache.path)  # missing or damaged: a full scan rebuilds it
        return cache

    def usable_for(self, experiments: list[str]) -> bool:
        """Whether an incremental read from this cache sees what a full scan would (see the module doc)."""
        return (
            self.loaded
            and sorted(experiments) == sorted(self.experiments)
            and 0 <= time.time() - self.full_scan_at < FULL_SCAN_AFTER_S
        )

    @property
    def since_ms(self) -> int:
        """Runs started or ended at or after this time (ms) are read again."""
        return max(0, self.newest_ms - MARGIN_MS)

    def record(self, experiments: list[str], runs: list[ObservedRun], deleted: set[str], full_scan: bool) -> None:
        """Keep what was read: the ended runs among ``runs`` (all the project's active runs after a full scan,
        the changed ones otherwise) and the deleted ids; then write the file (failures to write are ignored:
        the next plan scans fully)."""
        before = (self.experiments, self.newest_ms, self.deleted, self.live, len(self.runs))
        self.experiments = sorted(experiments)
        changed = full_scan or not self.loaded
        if full_scan:
            self.runs = {}
            self.full_scan_at = time.time()
        for run in runs:
            if run.run_id in deleted or run.status.live:
                self.runs.pop(run.run_id, None)
            elif self.runs.get(run.run_id) != run:
                self.runs[run.run_id] = run
                changed = True
            self.newest_ms = max(self.newest_ms, run.start_time or 0, run.end_time or 0)
        for run_id in deleted:
            self.runs.pop(run_id, None)
        self.deleted = set(deleted)
        self.live = {run.run_id for run in runs if run.status.live and run.run_id not in deleted}
        self.loaded = True
        if not changed and before == (self.experiments, self.newest_ms, self.deleted, self.live, len(self.runs)):
            return  # nothing new: the file on disk says the same
        data = {
            "version": CACHE_VERSION,
            "experiments": self.experiments,
            "newest_ms": self.newest_ms,
            "full_scan_at": self.full_scan_at,
            "deleted": sorted(self.deleted),
            "live": sorted(self.live),
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
