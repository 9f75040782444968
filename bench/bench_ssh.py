"""Slurm over SSH: connections per apply, and staging a commit that is or is not on the cluster yet.

Starts an sshd of its own on 127.0.0.1 in front of the local Slurm (needs
`bash scripts/slurm-local.sh` and openssh-server, root). A 200-point grid goes
to Slurm through the backend over one shared connection (ControlMaster),
against the same backend with connection sharing switched off (a new SSH
connection per command, what a plain ``ssh host cmd`` per step costs). The
jobs are held (``--hold``) and cancelled. Usage:

    python bench/bench_ssh.py [--points 200] [--files 300]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_slurm import requests  # noqa: E402
from mantik_spec.backends.slurm import SlurmBackend  # noqa: E402
from mantik_spec.backends.ssh import SSHHost  # noqa: E402
from mantik_spec.spec.model import SlurmConfig  # noqa: E402
from tests.support.sshd import Sshd  # noqa: E402


class UnsharedSSHHost(SSHHost):
    """The baseline: every command opens its own connection."""

    def _arguments(self) -> list[str]:
        argv = super()._arguments()
        argv[argv.index("ControlMaster=auto")] = "ControlMaster=no"
        argv[[i for i, a in enumerate(argv) if a.startswith("ControlPath=")][0]] = "ControlPath=none"
        return argv

    def _connect(self) -> None:
        self.connections_opened += 1  # each command's own connection, counted as it is made


def backend(directory: Path, sshd: Sshd, shared: bool, tag: str) -> SlurmBackend:
    config = SlurmConfig(
        type="slurm",
        partition="debug",
        workdir=str(directory / f"workdir-{tag}"),
        sbatch_args=["--hold"],
        poll_interval="0s",
        ssh={
            "host": "127.0.0.1",
            "port": sshd.port,
            "user": "root",
            "identity_file": str(sshd.directory / "userkey"),
            "known_hosts_file": str(sshd.known_hosts),
        },
    )
    slurm = SlurmBackend("bench", config, directory / ".mantik")
    if not shared:
        slurm.host = UnsharedSSHHost(config.ssh, directory)
    return slurm


def make_tree(directory: Path, files: int) -> Path:
    code = directory / "code" / ("1" * 40)
    for index in range(files):
        path = code / f"pkg{index % 10}" / f"module{index}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"# module {index}\n" + f"value_{index} = {index}\n" * 500)  # ~10 kB each
    return code


def submit(slurm: SlurmBackend, code_dir: Path, points: int, tag: str) -> tuple[float, dict[str, str]]:
    started = time.perf_counter()
    job_ids = slurm.submit(requests(points, code_dir, tag))
    elapsed = time.perf_counter() - started
    subprocess.run(["scancel", *sorted({j.split("_")[0] for j in job_ids.values()})], check=False)
    return elapsed, job_ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=200)
    parser.add_argument("--files", type=int, default=300)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temporary:
        directory = Path(temporary)
        sshd = Sshd(directory / "sshd")
        try:
            code_dir = make_tree(directory, args.files)
            shared = backend(directory, sshd, True, "shared")
            shared.host.close()  # start from no open connection, as a fresh CI runner does
            ours, _ = submit(shared, code_dir, args.points, "a")
            unshared = backend(directory, sshd, False, "unshared")
            baseline, _ = submit(unshared, code_dir, args.points, "b")
            print(
                f"submit {args.points} points over SSH: {ours:.2f} s, {shared.host.connections_opened} connection(s), "
                f"{shared.host.commands_run} commands   one connection per command: {baseline:.2f} s, "
                f"{unshared.host.connections_opened} connections   speed-up {baseline / ours:.1f}x"
            )
            host = shared.host
            size = sum(p.stat().st_size for p in code_dir.rglob("*") if p.is_file())
            fresh = directory / "fresh-commit"
            started = time.perf_counter()
            host.put_tree(code_dir, str(fresh))
            first = time.perf_counter() - started
            started = time.perf_counter()
            host.put_tree(code_dir, str(fresh))
            again = time.perf_counter() - started
            print(
                f"stage a {args.files}-file commit ({size / 1e6:.1f} MB): {first:.3f} s sent   "
                f"already staged: {again:.3f} s (one check)   ratio {again / first:.3f}"
            )
            host.close()
        finally:
            sshd.stop()


if __name__ == "__main__":
    main()
