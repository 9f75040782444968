"""The test run touches only what it started: scripts/slurm-local.sh stops only its own daemons, every Slurm
command of the run goes to the run's own cluster, and the copied MLflow store is the one MLflow would make."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import time
from pathlib import Path

from .conftest import ROOT

SCRIPT = ROOT / "scripts" / "slurm-local.sh"


def fake_daemon(name: str, conf: Path) -> subprocess.Popen:
    """A process whose command line reads like ``/usr/sbin/NAME -f CONF``, as a daemon started by the script."""
    return subprocess.Popen(["bash", "-c", f'exec -a "/usr/sbin/{name} -f {conf}" sleep 60'])


def alive(process: subprocess.Popen) -> bool:
    return process.poll() is None


def test_slurm_local_stop_stops_only_the_daemons_its_pid_files_name(tmp_path):
    base, conf = tmp_path / "base", tmp_path / "slurm.conf"
    base.mkdir()
    ours = fake_daemon("slurmd", conf)
    # the pid file names a slurmctld of another configuration (a reused pid, or someone else's cluster)
    other_conf = fake_daemon("slurmctld", Path("/etc/slurm/slurm.conf"))
    not_in_a_pid_file = fake_daemon("slurmd", conf)
    try:
        time.sleep(0.3)  # the exec has happened
        (base / "slurmd.pid").write_text(f"{ours.pid}\n")
        (base / "slurmctld.pid").write_text(f"{other_conf.pid}\n")
        env = {**os.environ, "MANTIK_SLURM_BASE": str(base), "SLURM_CONF": str(conf)}
        stopped = subprocess.run(["bash", str(SCRIPT), "stop"], env=env, capture_output=True, text=True, timeout=60)
        assert stopped.returncode == 0, stopped.stderr
        ours.wait(timeout=10)
        assert alive(other_conf) and alive(not_in_a_pid_file)
        assert not (base / "slurmd.pid").exists()
    finally:
        for process in (ours, other_conf, not_in_a_pid_file):
            process.kill()
            process.wait()


def test_slurm_local_stop_without_pid_files_stops_nothing(tmp_path):
    conf = tmp_path / "slurm.conf"
    daemon = fake_daemon("slurmctld", conf)
    try:
        time.sleep(0.3)
        env = {**os.environ, "MANTIK_SLURM_BASE": str(tmp_path / "empty"), "SLURM_CONF": str(conf)}
        assert subprocess.run(["bash", str(SCRIPT), "stop"], env=env, timeout=60).returncode == 0
        assert alive(daemon)
    finally:
        daemon.kill()
        daemon.wait()


def test_slurm_commands_of_the_run_go_to_its_own_cluster(tmp_path_factory):
    conf = Path(os.environ["SLURM_CONF"])
    assert conf.is_relative_to(tmp_path_factory.getbasetemp())  # never /etc/slurm or a site's configuration
    if shutil.which("sinfo") and "ClusterName=" not in conf.read_text():  # not started yet: a stray call fails at once
        started = time.monotonic()
        assert subprocess.run(["sinfo"], capture_output=True, timeout=30).returncode != 0
        assert time.monotonic() - started < 10


def test_the_copied_store_is_at_mlflows_newest_schema(store_template, tmp_path):
    from mlflow.store.db.utils import _get_latest_schema_revision

    with sqlite3.connect(store_template) as db:
        (revision,) = db.execute("select version_num from alembic_version").fetchone()
        experiments = db.execute("select experiment_id, name from experiments").fetchall()
    assert revision == _get_latest_schema_revision()
    assert experiments == [(0, "Default")]  # what MLflow makes in a new store, nothing else
