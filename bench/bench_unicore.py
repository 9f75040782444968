"""UNICORE submission and polling, against the test suite's fake site on 127.0.0.1.

Submission: N runs of one commit through the backend (the code goes to the
site once, as one archive, and each job is one POST plus one PUT of its
lifetime) against pyunicore's usual way, which Mantik used:
``Client.new_job(description, inputs=files)`` per run, uploading every file of
the tree for every job.

Polling: one ``poll`` of N live jobs (parallel GETs) against asking each
``Job`` for its status in turn. The jobs stay queued, so nothing runs.

The fake site runs in its own process; it is measured as it is (127.0.0.1)
and with every answer sent ``--latency`` seconds late, as a site across a
network would. Usage:

    python bench/bench_unicore.py [--runs 50] [--files 200] [--latency 0.02]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_slurm import requests  # noqa: E402
from mantik_spec.backends.unicore import UnicoreBackend  # noqa: E402
from mantik_spec.spec.model import UnicoreConfig  # noqa: E402
from tests.fake_unicore import FakeUnicore  # noqa: E402

USER, PASSWORD = "bench", "bench-password"


def make_tree(directory: Path, files: int) -> Path:
    code = directory / "code" / ("0" * 40)
    for index in range(files):
        path = code / f"pkg{index % 10}" / f"module{index}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"# module {index}\n" + "x = 1\n" * 400)  # ~2.4 kB each
    return code


class Site:
    """The fake site in its own process (in this one, its threads would compete with the client's for the GIL),
    answering every request ``latency`` seconds late, as a site across a network does."""

    def __init__(self, directory: Path, latency: float):
        parent, child = multiprocessing.Pipe()
        self.pipe = parent
        self.process = multiprocessing.Process(target=_serve, args=(child, directory, latency), daemon=True)
        self.process.start()
        self.url = parent.recv()

    def request_count(self) -> int:
        self.pipe.send("count")
        return self.pipe.recv()

    def close(self) -> None:
        self.pipe.send("stop")
        self.process.join(timeout=30)


def _serve(pipe, directory: Path, latency: float) -> None:
    with FakeUnicore(directory, users={USER: PASSWORD}, queue_seconds=3600) as site:
        if latency:
            site.hang_next(latency, count=10**9)
        pipe.send(site.url)
        while (command := pipe.recv()) != "stop":
            pipe.send(len(site.requests) if command == "count" else None)


def submit_with_backend(site: Site, directory: Path, code_dir: Path, runs: int):
    config = UnicoreConfig(type="unicore", url=site.url, poll_interval="0s", tls_verify=False)
    backend = UnicoreBackend("bench", config, directory / ".mantik")
    started = time.perf_counter()
    job_urls = backend.submit(requests(runs, code_dir, "run"))
    return time.perf_counter() - started, backend, job_urls


def submit_per_job_uploads(site: Site, code_dir: Path, runs: int) -> tuple[float, int]:
    from pyunicore.client import Client
    from pyunicore.credentials import UsernamePassword

    files = {p.relative_to(code_dir).as_posix(): str(p) for p in sorted(code_dir.rglob("*")) if p.is_file()}
    before = site.request_count()
    started = time.perf_counter()
    client = Client(UsernamePassword(USER, PASSWORD), site.url)
    for index in range(runs):
        client.new_job({"Executable": "true", "Tags": [f"baseline-{index}"]}, inputs=files)
    return time.perf_counter() - started, site.request_count() - before


def poll_one_by_one(site: Site, job_urls: list[str]) -> float:
    from pyunicore.client import Client, Job
    from pyunicore.credentials import UsernamePassword

    client = Client(UsernamePassword(USER, PASSWORD), site.url)
    started = time.perf_counter()
    states = [Job(client.transport, url).status for url in job_urls]
    assert len(states) == len(job_urls)
    return time.perf_counter() - started


def measure(directory: Path, code_dir: Path, runs: int, files: int, latency: float) -> None:
    site = Site(directory / f"site-{latency}", latency)
    try:
        before = site.request_count()
        ours, backend, job_urls = submit_with_backend(site, directory, code_dir, runs)
        our_calls = site.request_count() - before
        baseline, baseline_calls = submit_per_job_uploads(site, code_dir, runs)
        print(
            f"latency {latency * 1000:.0f} ms: submit {runs} runs of a {files}-file tree: {ours:.2f} s, "
            f"{our_calls} REST calls   new_job with the tree as inputs per run: {baseline:.2f} s, "
            f"{baseline_calls} calls   speed-up {baseline / ours:.1f}x"
        )
        jobs = {url: run_id for run_id, url in job_urls.items()}
        started = time.perf_counter()
        states = backend.poll(jobs)
        polled = time.perf_counter() - started
        assert all(status.state.live for status in states.values()), states
        sequential = poll_one_by_one(site, list(jobs))
        print(
            f"latency {latency * 1000:.0f} ms: poll {len(jobs)} live jobs: {polled:.3f} s "
            f"({backend.calls['job']} GETs, 8 at a time)   one Job.status after another: {sequential:.3f} s   "
            f"speed-up {sequential / polled:.1f}x"
        )
    finally:
        site.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--latency", type=float, default=0.02, help="seconds each answer is late (a network)")
    args = parser.parse_args()
    os.environ.update(MANTIK_UNICORE_USERNAME=USER, MANTIK_UNICORE_PASSWORD=PASSWORD)
    with tempfile.TemporaryDirectory() as temporary:
        directory = Path(temporary)
        code_dir = make_tree(directory, args.files)
        for latency in sorted({0.0, args.latency}):
            measure(directory, code_dir, args.runs, args.files, latency)


if __name__ == "__main__":
    main()
