"""The test run's own Slurm (tests/conftest.py: SlurmCluster), as the test modules that submit to it use it."""

from __future__ import annotations

import shutil
import subprocess

import pytest


def slurm_is_up() -> bool:
    """The Slurm that SLURM_CONF names (the test run's own, conftest.SlurmCluster) has a node that takes jobs."""
    if not shutil.which("sbatch"):
        return False
    states = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True).stdout.split()
    # a node finishing the previous test's job reads "completing" for a moment: it is up
    return any(state.rstrip("*~#") in ("idle", "mixed", "allocated", "completing") for state in states)


@pytest.fixture(autouse=True)
def slurm(slurm_cluster):
    """Every test of a module that imports this fixture runs on the test run's own Slurm (conftest: skipped
    without one, a failure under CI)."""
    assert slurm_is_up(), slurm_cluster.logs()


def squeue_state(job_id: str) -> str:
    """The job's state as squeue says it (``RUNNING``, ``CANCELLED``...); "" once Slurm has forgotten it."""
    out = subprocess.run(["squeue", "-h", "-t", "all", "-r", "-o", "%i|%T"], capture_output=True, text=True).stdout
    return dict(line.split("|") for line in out.split())[job_id] if job_id in out else ""
