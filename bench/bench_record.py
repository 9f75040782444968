"""Recording speed: the tracking calls `mantik apply` makes for N started runs, on a sqlite store and on an
`mlflow server`, and the one alternative MLflow's client leaves: making the calls of different runs side by side.

Each started run costs MLflow's minimum of four calls: the intent record (`create_run` with its tags,
`log_batch` of its params, `update_run` to SCHEDULED: MLflow's create_run takes neither params nor a status)
and, after the scheduler answered, `log_batch` of its job id. No MLflow call writes several runs. So the
only way left to record faster is concurrency: the bench measures apply's own recording (one run after
another, through its TrackingStore) against the same calls made ``THREADS`` at a time, each on a fresh
store of the same kind in the same run of this bench.

Usage:

    python bench/bench_record.py [--runs 1000] [--server-workers 4]

It prints the calls per run, runs per second, and the side-by-side ratio for each store; the last line's
``recording_speedup`` is apply's recording against the call pattern it had before the calls were counted
(the same four calls: 1.0 until MLflow offers fewer).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mantik_spec.reconcile.identity import Identity  # noqa: E402
from mantik_spec.state.tags import Tag, identity_tags  # noqa: E402
from mantik_spec.state.tracking import TrackingStore  # noqa: E402

CALLS_PER_RUN = 4  # what apply made before: create with tags, params, SCHEDULED, job id
THREADS = 8


def intents(runs: int) -> list[tuple[dict[str, str], dict[str, str]]]:
    """Tags and params of ``runs`` intent records, as apply writes them."""
    made = []
    for index in range(runs):
        lr = f"{0.0001 * (index + 1):.6f}"
        identity = Identity(
            command=f"python train.py --lr {lr}", parameters={"lr": lr}, seed=None, code="0" * 64, data={},
            environment="",
        )  # fmt: skip
        tags = identity_tags(
            identity, project="bench", experiment="grid", point_id=f"grid[lr={lr}]", attempt=1,
            commit="c0ffee" * 6 + "c0ff", backend="cluster",
        )  # fmt: skip
        made.append((tags, {"lr": lr}))
    return made


def record(store: TrackingStore, experiment_id: str, made, side_by_side: bool) -> float:
    """Seconds to record every intent, then every job id: as apply does (one run after another, through
    the calls apply makes) or THREADS at a time."""
    from concurrent.futures import ThreadPoolExecutor

    def intent(item) -> str:
        return store.create_run(experiment_id, item[0][Tag.POINT], item[0], item[1])

    def job(pair) -> None:
        store.set_tags(pair[1], {Tag.JOB_ID: f"{1000 + pair[0]}_{pair[0]}"})

    started = time.perf_counter()
    if side_by_side:
        with ThreadPoolExecutor(THREADS) as pool:
            run_ids = list(pool.map(intent, made))
            list(pool.map(job, enumerate(run_ids)))
    else:
        run_ids = [intent(item) for item in made]
        for pair in enumerate(run_ids):
            job(pair)
    return time.perf_counter() - started


def measure(uri_of, runs: int) -> dict[str, float]:
    """Both patterns, each on a fresh store from ``uri_of(name)``; the calls per run counted on the way."""
    made = intents(runs)
    figures = {}
    for name, side_by_side in (("apply", False), ("side_by_side", True)):
        store = TrackingStore(uri_of(name), "bench")
        experiment_id = store.ensure_experiment("grid", store.experiment_ids())
        store.create_run(experiment_id, "warm-up", {}, {})  # first calls of a process set things up
        before = store.calls
        figures[name] = record(store, experiment_id, made, side_by_side)
        figures[f"{name}_calls_per_run"] = (store.calls - before) / runs
    return figures


class Server:
    """An `mlflow server` on a free local port, backed by a sqlite file in ``directory``."""

    def __init__(self, directory: Path, workers: int):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        mlflow = str(Path(sys.executable).parent / "mlflow")
        self.process = subprocess.Popen(
            [
                mlflow,
                "server",
                "--backend-store-uri",
                f"sqlite:///{directory / 'mlflow.db'}",
                "--artifacts-destination",
                str(directory / "artifacts"),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                str(workers),
                "--gunicorn-opts",
                "--log-level warning",
            ],  # fmt: skip
            stdout=open(directory / "server.log", "ab"),  # noqa: SIM115 - the server keeps it open
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2):
                    return
            except OSError:
                time.sleep(0.3)
        raise SystemExit(f"mlflow server did not start: {(directory / 'server.log').read_text()[-2000:]}")

    def stop(self) -> None:
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--server-workers", type=int, default=4)
    args = parser.parse_args()
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    print(f"recording {args.runs} started runs as apply does, and {THREADS} runs at a time")

    results = {}
    with tempfile.TemporaryDirectory() as directory:
        results["sqlite"] = measure(lambda name: f"sqlite:///{directory}/{name}.db", args.runs)
        servers = []

        def server_uri(name: str) -> str:
            (Path(directory) / name).mkdir()
            servers.append(Server(Path(directory) / name, args.server_workers))
            return servers[-1].url

        try:
            results["server"] = measure(server_uri, args.runs)
        finally:
            for server in servers:
                server.stop()

    ratios = {}
    for store, figures in results.items():
        ratios[store] = figures["apply"] / figures["side_by_side"]
        print(
            f"{store}: apply {figures['apply']:.2f} s ({args.runs / figures['apply']:.0f} runs/s, "
            f"{figures['apply_calls_per_run']:.1f} calls per run); {THREADS} at a time "
            f"{figures['side_by_side']:.2f} s: {ratios[store]:.2f}x"
        )
    calls = results["sqlite"]["apply_calls_per_run"]
    summary = {
        "runs": args.runs,
        "calls_per_run": calls,
        **{f"{store}_runs_per_s": round(args.runs / f["apply"], 1) for store, f in results.items()},
        **{f"{store}_side_by_side_ratio": round(value, 2) for store, value in ratios.items()},
        "recording_speedup": round(CALLS_PER_RUN / calls, 2),  # the calls are the cost: fewer calls, faster
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
