"""Recording speed: the tracking requests `mantik apply` makes for N started runs, against the pattern apply had
before (kept here, not in the product), measured in the same run.

Each started run is an intent record before its submission and a job id after it. Apply now writes the intent
in three requests (`create_run` with every tag, `log_batch` of its params, the store's `update_run_info` to
SCHEDULED) and the job id in one, and on an http(s) store writes each step's records 8 at a time
(`TrackingStore.side_by_side`). Before, it wrote one run after another and set the status with
`MlflowClient.update_run`, which reads the run back first: five sequential requests per run.

Usage:

    python bench/bench_record.py [--runs 1000] [--old-runs 200] [--server-workers 4]
    python bench/bench_record.py --latency-ms 40 [--runs 1000] [--old-runs 100]

Without ``--latency-ms``: a fresh sqlite store and a local `mlflow server`, each pattern on a fresh experiment.
With it: the server is reached through a proxy on 127.0.0.1 that holds every chunk of bytes for half of
``--latency-ms`` in each direction (a remote server's round trip; connections are opened without delay, MLflow's
client keeps them alive), which counts the HTTP requests passing. Both patterns are measured straight to the server
and through the proxy, taking turns every 100 runs (the machine's load weighs on both alike); it prints requests per run, round trips of latency per run (what the proxy added to the
recording time, divided by runs x round trip) and the per-run ratio of the old pattern against apply's. The old pattern runs over ``--old-runs`` runs (5 round trips each: 1,000 of them
take minutes at 40 ms). The last line is a JSON summary.
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

THREADS = 8  # apply's width on an http(s) store (state/tracking.py DEFAULT_HTTP_THREADS)


def intents(runs: int, offset: int = 0) -> list[tuple[dict[str, str], dict[str, str]]]:
    """Tags and params of ``runs`` intent records, as apply writes them."""
    made = []
    for index in range(offset, offset + runs):
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


def record_as_apply(store: TrackingStore, experiment_id: str, made) -> None:
    """What apply's ``submit`` writes: every intent (side by side on a server), then every job id."""
    run_ids = store.side_by_side(lambda item: store.create_run(experiment_id, item[0][Tag.POINT], *item), made)
    store.side_by_side(lambda pair: store.set_tags(pair[1], {Tag.JOB_ID: f"{1000 + pair[0]}_{pair[0]}"}),
                       list(enumerate(run_ids)))  # fmt: skip


def record_as_before(store: TrackingStore, experiment_id: str, made) -> None:
    """Apply's pattern before: one run after another, the status set through ``MlflowClient.update_run``
    (which reads the run back first), then the job ids one after another."""
    from mlflow.entities import Param, RunTag

    client = store.client
    run_ids = []
    for tags, params in made:
        name = tags[Tag.POINT]
        run = client.create_run(experiment_id, tags={**tags, "mlflow.runName": name}, run_name=name)
        client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in params.items()])
        client.update_run(run.info.run_id, status="SCHEDULED")
        run_ids.append(run.info.run_id)
    for index, run_id in enumerate(run_ids):
        client.log_batch(run_id, tags=[RunTag(Tag.JOB_ID, f"{1000 + index}_{index}")])


def measure(targets: dict[str, tuple[str, object]], runs: int, old_runs: int, chunk: int = 100) -> dict:
    """Seconds per run of both patterns on each target (name -> (uri, requests counter or None)), each pattern in
    an experiment of its own per target. The runs go in chunks of ``chunk``, the targets taking turns chunk by
    chunk, so that a change in the machine's load weighs on every target alike."""
    stores = {name: TrackingStore(uri, "bench") for name, (uri, _) in targets.items()}
    figures: dict[str, dict[str, float]] = {name: {} for name in targets}
    for pattern_name, pattern, count in (("before", record_as_before, old_runs), ("apply", record_as_apply, runs)):
        experiments = {}
        for name, store in stores.items():
            experiments[name] = store.ensure_experiment(f"grid-{pattern_name}", store.experiment_ids())
            store.create_run(experiments[name], "warm-up", {}, {})  # first calls of a process set things up
        seconds = dict.fromkeys(targets, 0.0)
        requests = dict.fromkeys(targets, 0)
        for offset in range(0, count, chunk):
            made = intents(min(chunk, count - offset), offset)
            for name, (_, counter) in targets.items():
                counted = counter() if counter else 0
                started = time.perf_counter()
                pattern(stores[name], experiments[name], made)
                seconds[name] += time.perf_counter() - started
                requests[name] += (counter() - counted) if counter else 0
        for name, (_, counter) in targets.items():
            figures[name][f"{pattern_name}_s_per_run"] = seconds[name] / count
            if counter:
                figures[name][f"{pattern_name}_requests_per_run"] = requests[name] / count
    return figures


# the latency proxy -----------------------------------------------------------------------------------------


def _serve_proxy(target_port: int, one_way_s: float, port, requests) -> None:
    """Forward 127.0.0.1:``port`` to ``target_port``, holding each chunk ``one_way_s`` in each direction (in
    order, without serialising: a chunk arriving while another waits leaves ``one_way_s`` after its arrival)."""
    import asyncio

    async def pipe(reader, writer, count: bool) -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()

        async def send() -> None:
            while True:
                due, data = await queue.get()
                await asyncio.sleep(max(0.0, due - loop.time()))
                if not data:
                    writer.close()
                    return
                writer.write(data)
                await writer.drain()

        sender = asyncio.create_task(send())
        while True:
            try:
                data = await reader.read(65536)
            except ConnectionError:
                data = b""
            if count and data:
                with requests.get_lock():
                    requests.value += data.count(b" HTTP/1.1\r\n")
            queue.put_nowait((loop.time() + one_way_s, data))
            if not data:
                break
        try:
            await sender
        except ConnectionError:
            pass

    async def handle(reader, writer) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", target_port)
        await asyncio.gather(pipe(reader, upstream_writer, True), pipe(upstream_reader, writer, False))

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port.value = server.sockets[0].getsockname()[1]
        await server.serve_forever()

    asyncio.run(main())


class LatencyProxy:
    """A proxy process in front of ``target_port`` adding ``round_trip_s`` to every request's round trip."""

    def __init__(self, target_port: int, round_trip_s: float):
        import multiprocessing

        context = multiprocessing.get_context("fork")  # before this process starts any thread
        self.port, self.requests = context.Value("i", 0), context.Value("q", 0)
        self.process = context.Process(
            target=_serve_proxy, args=(target_port, round_trip_s / 2, self.port, self.requests), daemon=True
        )
        self.process.start()
        while not self.port.value:
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{self.port.value}"

    def count(self) -> int:
        return self.requests.value

    def stop(self) -> None:
        self.process.kill()
        self.process.join()


class Server:
    """An `mlflow server` on a free local port, backed by a sqlite file in ``directory``."""

    def __init__(self, directory: Path, workers: int, port: int | None = None):
        port = port or _free_port()
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
            # MLflow 3's job execution (a huey consumer polling beside the server) takes CPU no tracking call needs
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
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
    parser.add_argument("--old-runs", type=int, default=200, help="runs recorded in the pattern before")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="round trip added in front of the server")
    parser.add_argument("--server-workers", type=int, default=4)
    args = parser.parse_args()
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    rtt = args.latency_ms / 1000

    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as directory:
        proxy = None
        if rtt:
            server_port = _free_port()
            proxy = LatencyProxy(server_port, rtt)  # forked first: no thread exists yet
        else:
            results.update(measure({"sqlite": (f"sqlite:///{directory}/bench.db", None)}, args.runs, args.old_runs))
        (Path(directory) / "server").mkdir()
        server = Server(Path(directory) / "server", args.server_workers, port=server_port if rtt else None)
        try:
            targets = {"server": (server.url, None)}
            if proxy is not None:
                targets[f"server+{args.latency_ms:g}ms"] = (proxy.url, proxy.count)
            results.update(measure(targets, args.runs, args.old_runs))
        finally:
            server.stop()
            if proxy is not None:
                proxy.stop()

    summary: dict[str, float] = {"runs": args.runs, "old_runs": args.old_runs, "latency_ms": args.latency_ms}
    for store, f in results.items():
        ratio = f["before_s_per_run"] / f["apply_s_per_run"]
        print(
            f"{store}: apply {f['apply_s_per_run'] * 1000:.1f} ms per run ({1 / f['apply_s_per_run']:.0f} runs/s "
            f"over {args.runs}); before {f['before_s_per_run'] * 1000:.1f} ms per run (over {args.old_runs}): "
            f"{ratio:.2f}x"
        )
        summary[f"{store}_apply_runs_per_s"] = round(1 / f["apply_s_per_run"], 1)
        summary[f"{store}_speedup"] = round(ratio, 2)
    if rtt:
        straight, remote = results["server"], results[f"server+{args.latency_ms:g}ms"]
        # as a remote server costs: the time the latency added, in round trips, per run
        trips = {n: (remote[f"{n}_s_per_run"] - straight[f"{n}_s_per_run"]) / rtt for n in ("apply", "before")}
        print(
            f"round trips of latency per run: apply {trips['apply']:.2f} (target <= 1), before {trips['before']:.2f}; "
            f"requests per run: apply {remote['apply_requests_per_run']:.2f}, before "
            f"{remote['before_requests_per_run']:.2f}"
        )
        summary["round_trips_per_run"] = round(trips["apply"], 3)
        summary["round_trips_per_run_before"] = round(trips["before"], 3)
        summary["requests_per_run"] = round(remote["apply_requests_per_run"], 2)
        summary["requests_per_run_before"] = round(remote["before_requests_per_run"], 2)
    print(json.dumps(summary))
    return 0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


if __name__ == "__main__":
    sys.exit(main())
