"""Planning speed: `mantik plan` over N recorded runs against one raw paged MLflow scan of the same runs.

Both run in this process against the same sqlite store, after one warm-up call
each (the first call of a process creates the database tables). The runs are
recorded a week in the past, as a project's history is; then:

- a full plan (what apply does), target <= 1.3x the scan;
- a plan through a cold run cache (none yet: it is built by a full scan), target <= 1.3x;
- a plan through a warm cache after 1% of the runs were added since the last plan, target <= 0.2x.

Usage:

    python bench/bench_plan.py [--runs 2000] [--large]   (--large: 10,000 runs)
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from common import median_time  # noqa: E402

from mantik_spec.operations.jobs import run_tags  # noqa: E402
from mantik_spec.operations.project import build_plan, observe, open_project  # noqa: E402
from mantik_spec.reconcile.plan import Action, Plan, PlannedRun  # noqa: E402
from mantik_spec.state.tracking import PAGE_SIZE  # noqa: E402

SPEC = """\
version: 1
project: bench
code: {{paths: [train.py]}}
entry_points:
  train:
    command: python train.py --lr {{lr}} --seed {{seed}}
    parameters: {{lr: float, seed: int}}
backends:
  local: {{type: local}}
experiments:
  grid:
    entry_point: train
    parameters: {{lr: [{lrs}]}}
    seeds: {seeds}
"""


def make_project(directory: Path, runs: int) -> None:
    seeds = 10
    lrs = ", ".join(str(round(0.0001 * (i + 1), 6)) for i in range(runs // seeds))
    (directory / "mantik.yaml").write_text(SPEC.format(lrs=lrs, seeds=seeds))
    (directory / "train.py").write_text("print('train')\n")
    git = ["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost"]
    subprocess.run([*git, "init", "-q"], cwd=directory, check=True)
    subprocess.run([*git, "add", "-A"], cwd=directory, check=True)
    subprocess.run([*git, "commit", "-qm", "bench"], cwd=directory, check=True)


WEEK_MS = 7 * 24 * 3600 * 1000


def record_finished_runs(project, fraction: float = 1.0, age_ms: int = WEEK_MS) -> int:
    """Write one FINISHED run per declared point (the first ``fraction`` of them), with the tags apply would
    write, started and ended ``age_ms`` ago."""
    observation = observe(project)
    store = project.store
    experiment_ids = store.experiment_ids()
    started = time.perf_counter()
    count = 0
    when = int(time.time() * 1000) - age_ms
    for want in observation.desired[: int(len(observation.desired) * fraction)]:
        entry = PlannedRun(
            action=Action.SUBMIT,
            experiment=want.point.experiment,
            point_id=want.point.point_id,
            run_key=want.key,
            backend="local",
            parameters={},
            reason="",
            next_attempt=1,
        )
        experiment_id = store.ensure_experiment(want.point.experiment, experiment_ids)
        run = store.client.create_run(
            experiment_id,
            start_time=when,
            tags=run_tags(project, observation.code, want, entry),
            run_name=want.point.point_id,
        )
        store.client.log_batch(run.info.run_id, params=[])
        store.client.set_terminated(run.info.run_id, "FINISHED", end_time=when + 1000)
        count += 1
    print(f"recorded {count} runs in {time.perf_counter() - started:.1f} s")
    return count


def raw_scan(client, experiment_ids) -> int:
    count, token = 0, None
    while True:
        page = client.search_runs(experiment_ids, max_results=PAGE_SIZE, page_token=token)
        count += len(page)
        token = page.token
        if not token:
            return count


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--large", action="store_true", help="10,000 runs")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    runs = 10_000 if args.large else args.runs
    logging.getLogger("mlflow").setLevel(logging.WARNING)

    with tempfile.TemporaryDirectory() as directory:
        make_project(Path(directory), runs)
        project = open_project(directory)
        recorded = record_finished_runs(project)
        experiment_ids = list(project.store.experiment_ids())
        client = project.store.client

        plan: list[Plan] = []
        raw_scan(client, experiment_ids)  # warm-up
        build_plan(project)
        calls_before = project.store.calls
        plan_time = median_time(lambda: plan.append(build_plan(project)[0]), args.repeat)
        calls = (project.store.calls - calls_before) // args.repeat
        scan_time = median_time(lambda: raw_scan(client, experiment_ids), args.repeat)

        cache_files = Path(directory, ".mantik", "cache")

        def cold_plan() -> None:
            shutil.rmtree(cache_files, ignore_errors=True)
            plan.append(build_plan(project, cached=True)[0])

        cold_time = median_time(cold_plan, args.repeat)
        changed = record_finished_runs(project, fraction=0.01, age_ms=0)  # 1% new since the cache was built
        build_plan(project, cached=True)  # the cache now knows them: each plan re-reads what is in the window
        calls_before = project.store.calls
        warm_time = median_time(lambda: plan.append(build_plan(project, cached=True)[0]), args.repeat)
        warm_calls = (project.store.calls - calls_before) // args.repeat
        assert not plan[-1].has_changes, "the cached plan must agree: every run is up to date"
        assert plan[-1].to_json() == build_plan(project)[0].to_json(), "the cached plan must equal the full one"

    result = plan[-1]
    assert not result.has_changes, "every recorded run should be up to date"
    pages = -(-recorded // PAGE_SIZE)
    ratio = plan_time / scan_time
    cold_ratio, incremental_ratio = cold_time / scan_time, warm_time / scan_time
    print(f"runs: {recorded}; plan: {result.summary()}")
    print(
        f"mantik plan: {plan_time:.3f} s   raw search_runs scan: {scan_time:.3f} s   ratio {ratio:.2f} (target <= 1.3) "
        f"{'ok' if ratio <= 1.3 else 'OVER TARGET'}"
    )
    print(f"MLflow calls per plan: {calls} ({pages} pages of {PAGE_SIZE} runs + {calls - pages} constant)")
    print(
        f"plan, cold run cache: {cold_time:.3f} s   ratio {cold_ratio:.2f} (target <= 1.3) "
        f"{'ok' if cold_ratio <= 1.3 else 'OVER TARGET'}"
    )
    print(
        f"plan, warm run cache, {changed} runs (1%) new: {warm_time:.3f} s   ratio {incremental_ratio:.2f} "
        f"(target <= 0.2) {'ok' if incremental_ratio <= 0.2 else 'OVER TARGET'}; MLflow calls per plan: {warm_calls}"
    )
    print(
        json.dumps(
            {
                "runs": recorded,
                "plan_s": round(plan_time, 3),
                "scan_s": round(scan_time, 3),
                "ratio": round(ratio, 2),
                "mlflow_calls": calls,
                "cold_cache_s": round(cold_time, 3),
                "cold_ratio": round(cold_ratio, 2),
                "incremental_s": round(warm_time, 3),
                "incremental_ratio": round(incremental_ratio, 2),
                "incremental_mlflow_calls": warm_calls,
            }
        )
    )
    return 0 if ratio <= 1.3 and cold_ratio <= 1.3 and incremental_ratio <= 0.2 else 1


if __name__ == "__main__":
    sys.exit(main())
