"""Offline sync: RUNS journals of POINTS metric points each uploaded into their runs on an `mlflow server` by
`mantik sync`'s upload (mantik_spec.state.journal.sync_run), against the same points logged one call per point
(what a job with a route to the server makes, and what a replay without batching would make). The baseline
takes ~40 ms a point on a busy 2-core machine, so it is measured on the first ``--baseline-runs`` runs and
compared per run.

Where mlflow-export-import imports (in this Python, or in the one ``--export-import-python`` names), the same
journals are also copied into the server the way that package copies a run between tracking servers: exported
from their sqlite store and imported with its ``import_run`` (bench/export_import_leg.py), twice, to show what a
repeated copy creates. Without it that leg is left out, and one line says so.

Usage:

    python bench/bench_sync.py [--runs 100] [--points 1000] [--baseline-runs 5] [--export-import-python PY]

It prints wall time and calls per run for each, their ratios, and as its last line a JSON object.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from export_import_leg import count_requests  # noqa: E402  (beside this file)

from mantik_spec import runner  # noqa: E402
from mantik_spec.backends.hosts import HostJournal, LocalHost  # noqa: E402
from mantik_spec.state.journal import sync_run  # noqa: E402
from mantik_spec.state.tracking import TrackingStore  # noqa: E402
from tests.support.mlflow_server import MlflowServer  # noqa: E402


def journal_template(directory: Path) -> Path:
    """An empty journal database as the runner makes it (MLflow's tables), to copy for every run."""
    from mlflow.tracking import MlflowClient

    database = directory / "template.db"
    MlflowClient(tracking_uri=f"sqlite:///{database}").search_experiments(max_results=1)
    return database


def write_journal(template: Path, directory: Path, run_id: str, experiment_id: str, points: int) -> None:
    journal = directory / runner.JOURNAL_DIR
    (journal / runner.JOURNAL_ARTIFACTS).mkdir(parents=True)
    database = journal / runner.JOURNAL_DB
    shutil.copy(template, database)
    now = int(time.time() * 1000)
    with sqlite3.connect(database) as connection:
        connection.execute(
            "INSERT INTO experiments (experiment_id, name, lifecycle_stage, creation_time, last_update_time) "
            "VALUES (?, 'bench', 'active', ?, ?)",
            (int(experiment_id), now, now),
        )
        connection.execute(  # the columns the runner fills (runner.open_journal), so MLflow can read the run too
            "INSERT INTO runs (run_uuid, name, source_type, source_name, entry_point_name, user_id, status, "
            "start_time, end_time, source_version, lifecycle_stage, artifact_uri, experiment_id) "
            "VALUES (?, 'bench', 'PROJECT', '', '', 'bench', 'FINISHED', ?, ?, '', 'active', ?, ?)",
            (run_id, now, now + points, str(journal / runner.JOURNAL_ARTIFACTS), int(experiment_id)),
        )
        connection.execute("INSERT INTO tags (key, value, run_uuid) VALUES ('mantik.exit_code', '0', ?)", (run_id,))
        connection.executemany(
            "INSERT INTO metrics (key, value, timestamp, run_uuid, step, is_nan) VALUES ('loss', ?, ?, ?, ?, 0)",
            [(1.0 / (step + 1), now + step, run_id, step) for step in range(points)],
        )
        if points:  # MLflow's log_metric keeps each metric's last point here too: what it lists as the run's metrics
            connection.execute(
                "INSERT INTO latest_metrics (key, value, timestamp, step, is_nan, run_uuid) "
                "VALUES ('loss', ?, ?, ?, 0, ?)",
                (1.0 / points, now + points - 1, points - 1, run_id),
            )


EXPORT_IMPORT_INSTALL = "pip install mlflow==3.17.2 mlflow-export-import tabulate"  # 1.2.0 omits tabulate


def export_import(python: str, server: str, journals: list[tuple[str, str]], directory: Path) -> dict:
    """The figures of bench/export_import_leg.py run by ``python`` on ``journals`` ([database, run id])."""
    job = {"server": server, "experiment": "bench-export-import", "journals": journals, "directory": str(directory)}
    leg = Path(__file__).with_name("export_import_leg.py")
    done = subprocess.run([python, str(leg)], input=json.dumps(job), capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"the mlflow-export-import leg failed:\n{done.stdout[-2000:]}{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--points", type=int, default=1000)
    parser.add_argument("--baseline-runs", type=int, default=5)
    parser.add_argument(
        "--export-import-python",
        help="a Python with mlflow-export-import, for its leg (default: this one, when it has the package)",
    )
    args = parser.parse_args()
    exporter = args.export_import_python or (
        sys.executable if importlib.util.find_spec("mlflow_export_import") is not None else None
    )
    leg: dict | None = None
    requests_sent = count_requests()
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    from mlflow.entities import Metric

    with tempfile.TemporaryDirectory(prefix="bench-sync-") as temporary:
        root = Path(temporary)
        server = MlflowServer(root / "server")
        server.start()
        try:
            store = TrackingStore(server.url, "bench")
            experiment_id = store.ensure_experiment("sync", store.experiment_ids())
            template = journal_template(root)
            synced, replayed = [], []
            for index in range(args.runs):
                synced.append(store.create_run(experiment_id, f"run-{index}", {}, {}))
                if index < args.baseline_runs:
                    replayed.append(store.create_run(experiment_id, f"replay-{index}", {}, {}))
            for run_id in synced:
                write_journal(template, root / run_id, run_id, experiment_id, args.points)
            calls, requests_before = store.calls, requests_sent[0]
            started = time.perf_counter()
            for run_id in synced:
                sync_run(store, run_id, HostJournal(LocalHost(), str(root / run_id / runner.JOURNAL_DIR)), True)
            sync_seconds, sync_calls = time.perf_counter() - started, store.calls - calls
            sync_requests = requests_sent[0] - requests_before
            calls = store.calls
            started = time.perf_counter()
            for run_id in replayed:  # the baseline: one call per point, as logged online
                for step in range(args.points):
                    store.call(store.client.log_batch, run_id, metrics=[Metric("loss", 1.0 / (step + 1), step, step)])
            per_point_seconds, per_point_calls = time.perf_counter() - started, store.calls - calls
            again = store.calls
            for run_id in synced:
                sync_run(store, run_id, HostJournal(LocalHost(), str(root / run_id / runner.JOURNAL_DIR)), True)
            second_sync_calls = store.calls - again
            points = len(store.client.get_metric_history(synced[0], "loss"))
            assert points == args.points, points
            if exporter:
                journals = [(str(root / r / runner.JOURNAL_DIR / runner.JOURNAL_DB), r) for r in synced]
                (root / "exports").mkdir()
                leg = export_import(exporter, server.url, journals, root / "exports")
                assert leg["points_per_imported_run"] == args.points, leg
        finally:
            server.stop()
    total = args.runs * args.points
    sync_run_seconds, sync_run_calls = sync_seconds / args.runs, sync_calls / args.runs
    replay_run_seconds, replay_run_calls = per_point_seconds / len(replayed), per_point_calls / len(replayed)
    print(f"{args.runs} runs x {args.points} points = {total} points synced to an mlflow server")
    print(f"sync (journal, batched): {sync_seconds:.2f} s, {sync_calls} calls ({total / sync_seconds:,.0f} points/s)")
    print(f"  HTTP requests: {sync_requests}")
    print(f"  per run: {sync_run_seconds:.3f} s, {sync_run_calls:.1f} calls")
    print(f"one call per point ({len(replayed)} runs): {per_point_seconds:.2f} s, {per_point_calls} calls")
    print(f"  per run: {replay_run_seconds:.3f} s, {replay_run_calls:.1f} calls")
    speedup = replay_run_seconds / sync_run_seconds
    print(f"ratio: {speedup:.1f}x faster, {replay_run_calls / sync_run_calls:.0f}x fewer calls")
    print(f"a second sync of all {args.runs} runs: {second_sync_calls} calls, nothing written")
    figures: dict = {}
    if leg is None:
        print(f"mlflow-export-import: not measured (not importable here; --export-import-python PY: {EXPORT_IMPORT_INSTALL})")
    else:
        leg_seconds = leg["export_seconds"] + leg["import_seconds"]
        print(
            f"mlflow-export-import (export_run from the journal, import_run into the server): {leg_seconds:.2f} s "
            f"(export {leg['export_seconds']:.2f} s, import {leg['import_seconds']:.2f} s), "
            f"{leg['import_requests']} requests; {leg['runs_after_import']} new runs"
        )
        print(f"  per run: {leg_seconds / args.runs:.3f} s, {leg['import_requests'] / args.runs:.1f} requests")
        print(
            f"  its time against sync's: export + import {leg_seconds / sync_seconds:.2f}x, "
            f"the import alone {leg['import_seconds'] / sync_seconds:.2f}x (above 1: sync is faster)"
        )
        print(
            f"  a second import of the same runs: {leg['second_import_seconds']:.2f} s, "
            f"{leg['second_import_requests']} requests, "
            f"{leg['runs_after_second_import'] - leg['runs_after_import']} more runs "
            f"({leg['runs_after_second_import']} in all for {args.runs} journals)"
        )
        print(
            f"  the imported runs keep the journal's start time: {leg['start_time_kept']}, "
            f"its end time: {leg['end_time_kept']} (sync writes into the run mantik created, with the journal's end)"
        )
        figures = {
            "export_import_export_seconds": leg["export_seconds"],
            "export_import_import_seconds": leg["import_seconds"],
            "export_import_requests": leg["import_requests"],
            "export_import_runs_created": leg["runs_after_import"],
            "export_import_second_import_seconds": leg["second_import_seconds"],
            "export_import_second_import_requests": leg["second_import_requests"],
            "export_import_runs_after_second_import": leg["runs_after_second_import"],
            "export_import_points_per_run": leg["points_per_imported_run"],
            "export_import_keeps_start_time": leg["start_time_kept"],
            "export_import_keeps_end_time": leg["end_time_kept"],
            "export_import_ratio": round(leg_seconds / sync_seconds, 2),
            "import_only_ratio": round(leg["import_seconds"] / sync_seconds, 2),
        }
    print(
        json.dumps(
            {
                "runs": args.runs,
                "points": args.points,
                "baseline_runs": len(replayed),
                "sync_seconds": round(sync_seconds, 3),
                "sync_calls": sync_calls,
                "sync_requests": sync_requests,
                "per_point_seconds": round(per_point_seconds, 3),
                "per_point_calls": per_point_calls,
                "speedup": round(speedup, 2),
                "call_ratio": round(replay_run_calls / sync_run_calls, 1),
                "second_sync_calls": second_sync_calls,
                **figures,
            }
        )
    )


if __name__ == "__main__":
    main()
