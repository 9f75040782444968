"""Steps on a test project (tests/conftest.py: Project) that several test modules take."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from ..conftest import Project, mantik_command

DVC = [str(Path(sys.executable).parent / "dvc")]


def settle(project: Project, timeout: float = 120) -> None:
    """Apply until every run has ended (an apply also closes runs whose runner could not)."""

    def settled():
        plan = project.plan_json()
        if all(entry["symbol"] in ("=", "x") for entry in plan["runs"]):
            return True
        if plan["has_changes"]:
            project.mantik("apply", "--auto-approve")
        return False

    project.wait_until(settled, timeout=timeout, message="all runs settled")


def dvc(project: Project, *args: str) -> None:
    """``dvc ARGS`` of this environment in the project's repository."""
    subprocess.run([*DVC, *args], cwd=project.path, check=True, capture_output=True, text=True)


def peak_rss_kib(project: Project, *args: str) -> int:
    """Peak resident memory of one `mantik` command (KiB), read by a parent that waits for it."""
    script = (
        "import resource, subprocess, sys; done = subprocess.run(sys.argv[1:]); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(done.returncode)"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, *mantik_command(), *args],
        cwd=project.path,
        capture_output=True,
        text=True,
        env=project.env,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return int(result.stdout.strip().splitlines()[-1])
