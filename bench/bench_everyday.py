"""Everyday commands on a finished project: `status`, `logs RUN` and `plan` against `validate` (which reads the
spec alone: a Python start and mantik's own imports), all cold processes, on the quickstart example after its
`apply --wait` (examples/run.sh), median of ``--repeat`` runs each.

Targets: `status` and `logs` within 4x `validate`'s time, `plan` within 1 s. With ``--before DIR`` (a checkout
of an earlier mantik-spec, e.g. a worktree of main before this change) the same commands run on the same
project with that code too, after this code's runs, and the table shows both side by side.

Usage:

    python bench/bench_everyday.py [--repeat 5] [--before /path/to/older/checkout]

The last line is a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import time_command  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ("validate", "status", "logs", "plan")


def times(mantik: str, project: Path, code: Path, point: str, repeat: int) -> dict[str, float]:
    """Median seconds of each command, run with the mantik-spec package of ``code``."""
    env = {**os.environ, "PYTHONPATH": str(code)}
    argv = {"validate": ["validate"], "status": ["status"], "logs": ["logs", point], "plan": ["plan"]}
    for name in COMMANDS:  # once each first: a command after a change reads the store once and notes it
        subprocess.run([mantik, *argv[name]], cwd=project, env=env, check=True, capture_output=True)
    return {name: time_command([mantik, *argv[name]], repeat, cwd=project, env=env) for name in COMMANDS}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--before", type=Path, help="an older checkout to measure beside this one")
    args = parser.parse_args()
    bin_dir = Path(sys.executable).parent
    mantik = str(bin_dir / "mantik") if (bin_dir / "mantik").exists() else shutil.which("mantik")
    if not mantik:
        sys.exit("install the project: pip install -e .")

    with tempfile.TemporaryDirectory() as directory:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "PATH": f"{bin_dir}:{os.environ['PATH']}"}
        subprocess.run(
            ["bash", str(ROOT / "examples" / "run.sh"), "quickstart", directory],
            env=env,
            check=True,
            capture_output=True,
        )
        project = Path(directory) / "quickstart"
        rows = json.loads(
            subprocess.run([mantik, "status", "--json"], cwd=project, env=env, check=True, capture_output=True).stdout
        )
        point = rows[0]["point_id"]
        measured = {"now": times(mantik, project, ROOT, point, args.repeat)}
        if args.before:
            measured["before"] = times(mantik, project, args.before.resolve(), point, args.repeat)

    print(f"the finished quickstart ({len(rows)} runs), median of {args.repeat} cold runs each:")
    for label, figures in measured.items():
        base = figures["validate"]
        print(
            f"{label:>6}: validate {base:.2f} s; status {figures['status']:.2f} s ({figures['status'] / base:.1f}x); "
            f"logs {figures['logs']:.2f} s ({figures['logs'] / base:.1f}x); plan {figures['plan']:.2f} s"
        )
    now = measured["now"]
    summary = {
        **{f"{name}_s": round(now[name], 3) for name in COMMANDS},
        "status_ratio": round(now["status"] / now["validate"], 2),
        "logs_ratio": round(now["logs"] / now["validate"], 2),
        **({f"before_{name}_s": round(measured["before"][name], 3) for name in COMMANDS} if args.before else {}),
    }
    ok = summary["status_ratio"] <= 4 and summary["logs_ratio"] <= 4 and now["plan"] <= 1.0
    print(f"targets (status, logs <= 4x validate; plan <= 1 s): {'ok' if ok else 'OVER TARGET'}")
    print(json.dumps(summary))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
