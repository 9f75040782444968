"""What the tests write as mantik.yaml, one builder per backend type, and a Mantik compute-backend config."""

from __future__ import annotations

import sys
from pathlib import Path

from ..conftest import BASIC_SPEC

VENV_BIN = str(Path(sys.executable).parent)  # where the jobs find `python` and `mlflow` of this environment


def on_one_backend(backend: str, project: str = "demo", lrs: str = "[0.1, 0.2]", retries: int | None = None) -> str:
    """conftest.BASIC_SPEC as project ``project`` on one backend (``backend``: its lines under ``backends:``), its
    experiment ``sweep`` over the learning rates ``lrs`` (with ``retries`` when given)."""
    local, sweep = "  local: {type: local, max_parallel: 4}\n", "    parameters: {lr: [0.1, 0.2]}\n"
    assert local in BASIC_SPEC and sweep in BASIC_SPEC and "project: demo\n" in BASIC_SPEC
    spec = BASIC_SPEC.replace("project: demo\n", f"project: {project}\n").replace(local, backend)
    return spec.replace(
        sweep, f"    parameters: {{lr: {lrs}}}\n" + ("" if retries is None else f"    retries: {retries}\n")
    )


def batch_backend(name: str, lines: str, partition: str = "debug", time: str = "00:05:00") -> str:
    """A batch backend (``lines``: its type and site) giving each run one small task, whose jobs find this
    environment's python and mlflow, polled every half second."""
    return (
        f"  {name}:\n{lines}"
        f"    partition: {partition}\n"
        f'    resources: {{ntasks: 1, cpus_per_task: 1, mem: 200M, time: "{time}"}}\n'
        f"    python: {sys.executable}\n"
        f"    setup: ['export PATH={VENV_BIN}:$PATH']\n"
        "    poll_interval: 0.5s\n"
    )


def slurm_spec(
    lrs: str = "[0.1, 0.2, 0.3]", extra: str = "", time: str = "00:05:00", partition: str = "debug", retries: int = 0
) -> str:
    """Backend ``cluster`` on the test run's own Slurm; ``extra``: more parameters of the sweep (", sleep: 30")."""
    backend = batch_backend("cluster", "    type: slurm\n", partition, time)
    return on_one_backend(backend, "slurmtest", lrs + extra, retries)


def firecrest_spec(site, workdir: Path, lrs: str = "[0.1, 0.2, 0.3]") -> str:
    """Backend ``alps`` at ``site`` (a tests/fake_firecrest.py FakeFirecrest), its jobs in ``workdir``."""
    lines = (
        f"    type: firecrest\n    url: {site.url}\n    token_url: {site.token_url}\n    machine: {site.system}\n"
        f"    workdir: {workdir}\n"
    )
    return on_one_backend(batch_backend("alps", lines) + "    timeout: 2s\n", "fctest", lrs, retries=0)


def unicore_spec(url: str, python: str = sys.executable, extra: str = "") -> str:
    """Backend ``site`` at the UNICORE site ``url``; ``extra``: more backend keys."""
    backend = (
        f"  site:\n    type: unicore\n    url: {url}\n    python: {python!r}\n    timeout: 5s\n    poll_interval: 0s\n"
    )
    return on_one_backend(backend + (extra.rstrip("\n") + "\n" if extra else ""))


# A Mantik compute-backend config (compute-backend-config.yaml) with every section filled
JUWELS = "https://zam2125.zam.kfa-juelich.de:9112/JUWELS/rest/core"
FULL_MANTIK_CONFIG = """\
UnicoreApiUrl: https://zam2125.zam.kfa-juelich.de:9112/JUWELS/rest/core
Resources:
  Queue: booster
  Runtime: 12h
  Nodes: 2
  TotalCPUs: 96
  CPUsPerNode: 48
  GPUsPerNode: 4
  MemoryPerNode: 64G
  Reservation: r1
  NodeConstraints: gpu
  QoS: normal
Environment:
  Apptainer:
    Path: image.sif
    Type: local
    Options: ["--nv", "-B /data:/data"]
  Variables: {OMP_NUM_THREADS: 8, MODE: fast}
  Modules: [Stages/2023, CUDA]
  PreRunCommandOnLoginNode: ["echo pre login", "echo again"]
  PreRunCommandOnComputeNode: ["echo pre compute"]
  PostRunCommandOnComputeNode: ["echo post compute"]
  PostRunCommandOnLoginNode: "echo post login"
Exclude: ["*.ckpt", "data/"]
"""


# as MAELSTROM's configs write their pre-run commands: a folded one-liner (ending in a line break) for the login
# node, a literal block of several lines for the compute node
MAELSTROM_CONFIG = f"""\
UnicoreApiUrl: {JUWELS}
Resources:
  Queue: booster
Environment:
  PreRunCommandOnLoginNode: >
    mkdir -p $SCRATCH/maelstrom &&
    cp -r data $SCRATCH/maelstrom
  PreRunCommandOnComputeNode: |
    module load Stages/2023
    # the GPU stack
    module load CUDA

    export DATA=$SCRATCH/maelstrom \\
      MODE=train
    echo "pre: $MODE"
  PostRunCommandOnComputeNode: |
    echo post one
    echo post two
"""

