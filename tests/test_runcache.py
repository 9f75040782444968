"""The run cache: a plan read through it equals a plan read from a full scan, over random histories.

Histories are written to a real MLflow sqlite store through MLflow's own client, stamped by a simulated
clock that moves minutes at a step (the cache reads the same clock as its own), so that most cached runs fall
outside the window a cached plan reads again and the cache itself must be right about them. Each history
mixes: runs created by this machine and by another client, runs ended (by a compute node whose clock may lag
or run ahead by hours), ended runs made live again and ended again, statuses of ended runs edited, deletions
and restores, a second experiment appearing, the cache file deleted or damaged, the store's file restored
from a backup taken earlier, and another (empty) store behind the same URI.
"""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mantik_spec.reconcile.planner import make_plan
from mantik_spec.state.runcache import MARGIN_MS, RunCache
from mantik_spec.state.tracking import TrackingStore
from mantik_spec.vocab import RunStatus

from .conftest import examples
from .support.planning import desired, point

PROJECT = "cached"
WANTS = [desired(point(lr=lr, experiment=experiment)) for experiment in ("sweep", "other") for lr in (0.1, 0.2, 0.3)]
HOUR_MS = 3600 * 1000

operation = st.one_of(
    st.tuples(st.just("create"), st.integers(0, len(WANTS) - 1), st.booleans()),  # want, by another client
    st.tuples(st.just("end"), st.integers(0, 50), st.sampled_from(["FINISHED", "FAILED", "KILLED"]), st.booleans()),
    st.tuples(st.just("end ahead"), st.integers(0, 50)),  # by a compute node whose clock runs two hours ahead
    st.tuples(st.just("edit"), st.integers(0, 50), st.sampled_from(["FINISHED", "FAILED", "KILLED"])),
    st.tuples(st.just("backup")),
    st.tuples(st.just("restore the backup")),
    st.tuples(st.just("another store")),  # the same URI, another (empty) store behind it
    st.tuples(st.just("revive"), st.integers(0, 50)),
    st.tuples(st.just("delete"), st.integers(0, 50)),
    st.tuples(st.just("restore"), st.integers(0, 50)),
    st.tuples(st.just("tick"), st.integers(0, 3 * HOUR_MS)),
    st.tuples(st.just("plan"), st.sampled_from(["cached", "cached", "cached", "lose the cache", "damage it"])),
)


class History:
    """A store, two clients writing to it, and a simulated clock (ms)."""

    def __init__(self, directory: Path, store_template: Path):
        database = directory / "mlflow.db"
        database.write_bytes(store_template.read_bytes())
        self.database, self.empty, self.backup = database, store_template, directory / "backup.db"
        self.store = TrackingStore(f"sqlite:///{database}", PROJECT)
        self.other = TrackingStore(self.store.uri, PROJECT).client  # another machine's apply or runner
        self.state_dir = directory / "state"
        self.now = 1_800_000_000_000
        self.runs: list[str] = []  # ids in creation order
        self.revived: set[str] = set()
        self.experiments = self.store.experiment_ids()

    def client(self, other: bool):
        return self.other if other else self.store.client

    def pick(self, index: int) -> str | None:
        return self.runs[index % len(self.runs)] if self.runs else None

    def apply(self, op) -> None:
        kind = op[0]
        self.now += 1000
        if kind == "create":
            want = WANTS[op[1]]
            experiment_id = self.store.ensure_experiment(want.point.experiment, self.experiments)
            tags = {"mantik.run_key": want.key, "mantik.point": want.point.point_id, "mantik.backend": "local",
                    "mantik.experiment": want.point.experiment, "mantik.job_id": f"job-{len(self.runs)}"}  # fmt: skip
            run = self.client(op[2]).create_run(experiment_id, start_time=self.now, tags=tags)
            self.client(op[2]).update_run(run.info.run_id, RunStatus.SCHEDULED.value)
            self.runs.append(run.info.run_id)
            return
        if kind == "tick":
            self.now += op[1]
            return
        if kind == "backup":
            shutil.copyfile(self.database, self.backup)
            return
        if kind in ("restore the backup", "another store"):
            source = self.backup if kind == "restore the backup" and self.backup.exists() else self.empty
            self.database.write_bytes(source.read_bytes())  # in place, as a restore tool writes it
            self.experiments = self.store.experiment_ids()
            return
        run_id = self.pick(op[1])
        if run_id is None:
            return
        try:
            info = self.store.client.get_run(run_id).info
        except Exception:  # noqa: BLE001 - gone with a restore
            return
        if kind == "end" and info.status in ("SCHEDULED", "RUNNING") and info.lifecycle_stage == "active":
            # a compute node's clock may lag by hours, unless the run was made live again by hand (see the
            # module docs of runcache: a revived run ended between two plans is what a --refresh is for)
            lag = 5 * HOUR_MS if op[3] and run_id not in self.revived else 0
            self.store.client.set_terminated(run_id, op[2], end_time=self.now - lag)
        elif kind == "end ahead" and info.status in ("SCHEDULED", "RUNNING") and info.lifecycle_stage == "active":
            self.store.client.set_terminated(run_id, "FINISHED", end_time=self.now + 2 * HOUR_MS)
        elif kind == "edit" and info.status not in ("SCHEDULED", "RUNNING") and info.lifecycle_stage == "active":
            self.store.client.set_terminated(run_id, op[2], end_time=self.now)  # a status corrected by hand
        elif kind == "revive" and info.status not in ("SCHEDULED", "RUNNING") and info.lifecycle_stage == "active":
            self.store.client.update_run(run_id, "RUNNING")  # as mlflow.start_run(run_id=...) does
            self.revived.add(run_id)
        elif kind == "delete" and info.lifecycle_stage == "active":
            self.store.client.delete_run(run_id)
        elif kind == "restore" and info.lifecycle_stage == "deleted":
            self.store.client.restore_run(run_id)

    def cache(self) -> RunCache:
        cache = RunCache.for_store(self.state_dir, self.store.uri, PROJECT)
        cache.clock = lambda: self.now / 1000
        return cache

    def compare(self, how: str) -> None:
        cache_files = list((self.state_dir / "cache").glob("runs-*.json"))
        if how == "lose the cache":
            for path in cache_files:
                path.unlink()
        elif how == "damage it":
            for path in cache_files:
                path.write_text('{"version": 1, "runs": [')
        cache = self.cache()
        cached = sorted(self.store.observe(cache), key=lambda r: r.run_id)
        cached_live = set(self.store.deleted_live)
        full = sorted(self.store.observe(), key=lambda r: r.run_id)
        assert cached == full
        assert cached_live == self.store.deleted_live
        plans = [make_plan(WANTS, runs, {}, commit="c0ffee0", spec_digest="spec").to_json() for runs in (cached, full)]
        assert plans[0] == plans[1]


@settings(max_examples=examples(60), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(operation, st.booleans()), min_size=10, max_size=40))
def test_a_cached_plan_equals_a_full_scan_plan(tmp_path_factory, store_template, operations):
    history = History(tmp_path_factory.mktemp("history"), store_template)
    for op, then_plan in operations:
        if op[0] == "plan":
            history.compare(op[1])
        else:
            history.apply(op)
            if then_plan:  # about half the steps are followed by a plan, the rest pile up between two
                history.compare("cached")
    history.compare("cached")


HOUR = ("tick", HOUR_MS)
# a later run, planned an hour on: the store's newest time moves, and run 0 falls out of the re-read window
LATER = [("plan",), HOUR, ("create", 2, False), ("plan",), HOUR]
SCENARIOS = {
    "a cached run deleted": [("create", 0, False), ("end", 0, "FINISHED", False), *LATER, ("delete", 0)],
    "a deleted run restored": [("create", 0, False), ("end", 0, "FAILED", False), ("delete", 0), *LATER, ("restore", 0)],
    "a live run ended by a node whose clock lags": [("create", 0, False), *LATER, ("end", 0, "FINISHED", True)],
    "an ended run made live again": [("create", 1, False), ("end", 0, "KILLED", False), *LATER, ("revive", 0)],
    "made live again and ended again": [
        ("create", 1, False), ("end", 0, "FAILED", False), *LATER, ("revive", 0), ("end", 0, "FINISHED", False)
    ],
    "runs of another client": [("create", 0, True), *LATER, ("create", 1, True), ("end", 2, "FINISHED", True)],
    "a new experiment": [("create", 0, False), ("end", 0, "FINISHED", False), *LATER, ("create", 4, False)],
    "a live run deleted": [("create", 0, False), *LATER, ("delete", 0)],
    "a live run that stays live": [("create", 0, False), *LATER],
    "a run ended by a node whose clock runs ahead, then one by the store's clock": [
        ("create", 0, False), ("create", 1, False), ("plan",), ("end ahead", 0), ("plan",), ("tick", MARGIN_MS),
        ("create", 2, False), ("end", 2, "FINISHED", False), ("end", 1, "FAILED", False),
    ],
    "the store restored from a backup older than the cache": [
        ("create", 0, False), ("end", 0, "FAILED", False), ("backup",), *LATER, ("end", 1, "FINISHED", False),
        ("plan",), HOUR, ("restore the backup",),
    ],
    "a status edited, then the store restored from before the edit": [
        ("create", 0, False), ("end", 0, "FINISHED", False), ("backup",), *LATER, ("edit", 0, "FAILED"),
        ("plan",), ("restore the backup",),
    ],
    "another store behind the same URI": [("create", 0, False), ("end", 0, "FINISHED", False), *LATER,
                                          ("another store",), ("create", 1, False)],
}  # fmt: skip


@pytest.mark.parametrize("steps", SCENARIOS.values(), ids=SCENARIOS.keys())
def test_each_way_a_run_changes_between_two_plans_is_seen_by_the_cached_one(tmp_path, store_template, steps):
    """The members of the class one by one (the property test above draws them at random)."""
    history = History(tmp_path, store_template)
    for step in steps:
        if step[0] == "plan":
            history.compare("cached")
        else:
            history.apply(step)
    history.compare("cached")


@pytest.mark.parametrize("how", ["lose the cache", "damage it"])
def test_a_missing_or_damaged_cache_falls_back_to_a_full_scan(tmp_path, store_template, how):
    history = History(tmp_path, store_template)
    for step in [("create", 0, False), ("end", 0, "FINISHED", False), ("plan",), ("create", 1, False)]:
        history.compare("cached") if step[0] == "plan" else history.apply(step)
    history.compare(how)
    assert RunCache.for_store(history.state_dir, history.store.uri, PROJECT).loaded  # rebuilt


def test_a_cached_plan_reads_only_what_can_have_changed(tmp_path, store_template):
    """The point of the cache: ended runs outside the window are not read again."""
    history = History(tmp_path, store_template)
    for index in itertools.islice(itertools.cycle(range(3)), 30):
        history.apply(("create", index, False))
        history.apply(("end", len(history.runs) - 1, "FINISHED", False))
    history.compare("cached")  # builds the cache from a full scan
    history.apply(("tick", MARGIN_MS * 2))
    history.apply(("create", 0, False))
    cache = history.cache()
    history.store.calls = 0
    runs = history.store.observe(cache)
    assert len(runs) == 31
    # experiments, two live statuses, started and ended since, deleted: six small searches, whatever the history
    # (the sentinels, the runs ended last, are among those started or ended since; older ones cost a seventh)
    assert history.store.calls == 6
