"""FirecREST submission and polling of 50 runs, against the test suite's FirecREST double on 127.0.0.1.

Submission: N runs of one commit through the backend (the code staged once, one job array per
experiment) against the per-run way a plain pyfirecrest client goes, measured in the same run: for
each run, upload the tree's archive, extract it, and submit one batch script.

Polling: one ``poll`` of the N live jobs (one listing of the user's jobs) against ``job_info`` for
each job in turn.

The double runs in its own process and submits to the local test Slurm with every job held, so
nothing runs; the jobs are cancelled at the end. Needs a running Slurm (`bash scripts/slurm-local.sh`).
The last line is a JSON object with the figures. Usage:

    python bench/bench_firecrest.py [--runs 50] [--files 200]
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_slurm import requests  # noqa: E402
from bench.bench_unicore import make_tree  # noqa: E402
from mantik_spec.backends.firecrest import FirecrestBackend  # noqa: E402
from mantik_spec.backends.staging import code_archive  # noqa: E402
from mantik_spec.spec.model import FirecrestConfig  # noqa: E402
from tests.fake_firecrest import FakeFirecrest  # noqa: E402

CLIENT_ID, SECRET = "bench", "bench-secret"
SCRIPT = "#!/bin/bash\n#SBATCH --partition=debug\n#SBATCH --output=/dev/null\ntrue\n"


class Site:
    """The double in its own process (in this one, its threads would compete with the client's for the GIL)."""

    def __init__(self):
        parent, child = multiprocessing.Pipe()
        self.pipe = parent
        self.process = multiprocessing.Process(target=_serve, args=(child,), daemon=True)
        self.process.start()
        self.url, self.token_url, self.system = parent.recv()

    def request_count(self) -> int:
        self.pipe.send("count")
        return self.pipe.recv()

    def close(self) -> None:
        self.pipe.send("stop")
        self.process.join(timeout=120)


def _serve(pipe) -> None:
    with FakeFirecrest(client_id=CLIENT_ID, client_secret=SECRET) as site:
        site.hold = True  # nothing runs: the jobs stay pending until the double cancels them on exit
        pipe.send((site.url, site.token_url, site.system))
        while (command := pipe.recv()) != "stop":
            pipe.send(len(site.requests) if command == "count" else None)


def baseline_client(site: Site):
    from firecrest import ClientCredentialsAuth
    from firecrest.v2 import Firecrest

    return Firecrest(site.url, ClientCredentialsAuth(CLIENT_ID, SECRET, site.token_url))


def submit_per_run(site: Site, code_dir: Path, workdir: Path, runs: int) -> tuple[float, int, list[str]]:
    client = baseline_client(site)
    with code_archive(code_dir, []) as packed:
        archive = packed.path.read_bytes()
    before = site.request_count()
    started = time.perf_counter()
    job_ids = []
    for index in range(runs):
        run_dir = workdir / f"run{index}"
        client.mkdir(site.system, str(run_dir), create_parents=True)
        client.upload(site.system, io.BytesIO(archive), str(run_dir), "code.tar.gz", file_size=len(archive))
        client.extract(site.system, str(run_dir / "code.tar.gz"), str(run_dir))
        job_ids.append(str(client.submit(site.system, str(run_dir), script_str=SCRIPT)["jobId"]))
    return time.perf_counter() - started, site.request_count() - before, job_ids


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--files", type=int, default=200)
    args = parser.parse_args()
    os.environ.update(MANTIK_FIRECREST_CLIENT_ID=CLIENT_ID, MANTIK_FIRECREST_CLIENT_SECRET=SECRET)
    site = Site()
    try:
        with tempfile.TemporaryDirectory() as temporary:
            directory = Path(temporary)
            code_dir = make_tree(directory, args.files)
            (directory / "ours").mkdir()
            config = FirecrestConfig(
                type="firecrest",
                url=site.url,
                token_url=site.token_url,
                machine=site.system,
                workdir=str(directory / "ours"),
                partition="debug",
                poll_interval="0s",
            )
            backend = FirecrestBackend("bench", config, directory / ".mantik")
            before = site.request_count()
            started = time.perf_counter()
            job_ids = backend.submit(requests(args.runs, code_dir, "run"))
            ours = time.perf_counter() - started
            our_calls = site.request_count() - before
            baseline, baseline_calls, baseline_jobs = submit_per_run(site, code_dir, directory / "plain", args.runs)
            print(
                f"submit {args.runs} runs of a {args.files}-file tree: {ours:.2f} s, {our_calls} API calls   "
                f"per run upload + extract + submit: {baseline:.2f} s, {baseline_calls} calls   "
                f"speed-up {baseline / ours:.1f}x"
            )
            jobs = {job_id: run_id for run_id, job_id in job_ids.items()}
            before = site.request_count()
            started = time.perf_counter()
            states = backend.poll(jobs)
            polled = time.perf_counter() - started
            poll_calls = site.request_count() - before
            assert all(status.state.live for status in states.values()), states
            client = baseline_client(site)
            client.job_info(site.system, baseline_jobs[0])  # the token, outside the measurement
            started = time.perf_counter()
            for job_id in baseline_jobs:
                client.job_info(site.system, job_id)
            sequential = time.perf_counter() - started
            print(
                f"poll {len(jobs)} live jobs: {polled:.3f} s ({poll_calls} API call(s))   "
                f"job_info for each job in turn: {sequential:.3f} s   speed-up {sequential / polled:.1f}x"
            )
    finally:
        site.close()
    print(
        json.dumps(
            {
                "runs": args.runs,
                "submit_seconds": round(ours, 3),
                "submit_calls": our_calls,
                "baseline_submit_seconds": round(baseline, 3),
                "baseline_submit_calls": baseline_calls,
                "submit_speedup": round(baseline / ours, 2),
                "poll_seconds": round(polled, 4),
                "poll_calls": poll_calls,
                "baseline_poll_seconds": round(sequential, 4),
                "poll_speedup": round(sequential / polled, 2),
            }
        )
    )
    return 0 if poll_calls == 1 and baseline > ours else 1


if __name__ == "__main__":
    sys.exit(main())
