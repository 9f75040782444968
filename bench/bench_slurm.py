"""Slurm submission: a 1,000-point grid as job arrays against one sbatch per run, on the local Slurm.

Both go through the same backend code (``array: true`` against ``array: false``),
with the jobs held (``--hold``) so that nothing runs, then cancelled. Also counts
the scheduler calls of one poll of all 1,000 live jobs. Needs a running Slurm
(`bash scripts/slurm-local.sh`). Usage:

    python bench/bench_slurm.py [--points 1000]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mantik_spec.backends.base import JobRequest  # noqa: E402
from mantik_spec.backends.slurm import SlurmBackend  # noqa: E402
from mantik_spec.spec.model import SlurmConfig  # noqa: E402


def requests(count: int, code_dir: Path, tag: str) -> list[JobRequest]:
    return [
        JobRequest(
            run_id=f"{tag}{i:06d}",
            run_key=f"key{i}",
            point_id=f"grid[i={i}]",
            command="true",
            code_dir=code_dir,
            tracking_uri="sqlite:////dev/null",
            experiment_id="0",
            group="grid",
        )
        for i in range(count)
    ]


def submit(directory: Path, array: bool, count: int) -> tuple[float, SlurmBackend, dict[str, str]]:
    config = SlurmConfig(
        type="slurm",
        partition="debug",
        array=array,
        max_array_size=1000,
        workdir=str(directory / ("arrays" if array else "single")),
        sbatch_args=["--hold"],
        poll_interval="0s",
    )
    backend = SlurmBackend("bench", config, directory / ".mantik")
    code_dir = directory / "code" / ("0" * 40)
    code_dir.mkdir(parents=True, exist_ok=True)
    (code_dir / "train.py").write_text("print('hi')\n")
    started = time.perf_counter()
    job_ids = backend.submit(requests(count, code_dir, "a" if array else "s"))
    return time.perf_counter() - started, backend, job_ids


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--points", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        directory = Path(directory)
        array_time, backend, array_jobs = submit(directory, True, args.points)
        sbatch_calls = backend.calls["sbatch"]
        backend.calls.clear()
        states = backend.poll({job_id: run_id for run_id, job_id in array_jobs.items()})
        poll_calls = dict(backend.calls)
        pending = sum(1 for s in states.values() if s.state.value == "pending")
        backend.cancel(sorted({j.split("_")[0] for j in array_jobs.values()}))

        single_time, single, single_jobs = submit(directory, False, args.points)
        single.cancel(sorted(set(single_jobs.values())))

    speedup = single_time / array_time
    print(
        f"{args.points} points as arrays: {sbatch_calls} sbatch call(s), {array_time:.2f} s "
        f"(target <= 2 calls) {'ok' if sbatch_calls <= 2 else 'OVER TARGET'}"
    )
    print(f"one sbatch per run: {args.points} calls, {single_time:.2f} s")
    print(f"submission speed-up: {speedup:.1f}x (target >= 10x) {'ok' if speedup >= 10 else 'UNDER TARGET'}")
    print(
        f"one poll of {len(states)} live jobs ({pending} pending): "
        + ", ".join(f"{n} {c}" for c, n in sorted(poll_calls.items()))
        + " (target: 1 squeue + at most 1 sacct)"
    )
    return 0 if sbatch_calls <= 2 and speedup >= 10 else 1


if __name__ == "__main__":
    sys.exit(main())
