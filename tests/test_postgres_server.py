"""A team-scale store: the parallel-apply guarantee against an `mlflow server` backed by PostgreSQL, as a
group shares it. The test starts its own PostgreSQL cluster (initdb in a temp dir, a free port) and stops
only what it started."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from .conftest import BASIC_SPEC, IN_CI, free_port, missing
from .support.mlflow_server import MlflowServer
from .support.trials import check_trials

pytestmark = pytest.mark.e2e

# each trial costs a PostgreSQL-backed server round of 8 applies (about half a minute): 3 under CI=true keep the
# whole suite within its time
POSTGRES_TRIALS = int(os.environ.get("MANTIK_POSTGRES_TRIALS", "3" if IN_CI else "1"))


def postgres_bin() -> Path | None:
    found = shutil.which("initdb")
    if found:
        return Path(os.path.realpath(found)).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(candidates[-1]).parent if candidates else None


class PostgresCluster:
    """A throw-away PostgreSQL cluster; as root it runs as the ``postgres`` user (PostgreSQL refuses root)."""

    def __init__(self, bindir: Path):
        self.bindir = bindir
        self.directory = Path(tempfile.mkdtemp(prefix="mantik-pg-"))
        self.port = free_port()
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            if not shutil.which("runuser"):
                missing("PostgreSQL cannot run as root and runuser is missing")
            try:
                import pwd

                owner = pwd.getpwnam("postgres")
            except KeyError:
                missing("PostgreSQL cannot run as root and there is no `postgres` user")
            os.chown(self.directory, owner.pw_uid, owner.pw_gid)
            self.as_user = ["runuser", "-u", "postgres", "--"]

    def run(self, *args: str) -> None:
        result = subprocess.run([*self.as_user, *args], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, (args, result.stdout, result.stderr)

    def start(self) -> None:
        data = self.directory / "data"
        self.run(str(self.bindir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "--no-sync")
        options = f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 -c fsync=off"
        self.run(str(self.bindir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(self.directory / "log"), "-w", "start")
        self.run(str(self.bindir / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "mlflow")

    @property
    def uri(self) -> str:
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/mlflow"  # SQLAlchemy 2.1 defaults to psycopg 3

    def stop(self) -> None:
        data = self.directory / "data"
        if (data / "postmaster.pid").exists():
            subprocess.run(
                [*self.as_user, str(self.bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                capture_output=True,
                timeout=120,
            )
        shutil.rmtree(self.directory, ignore_errors=True)


@pytest.fixture
def postgres_mlflow_server(tmp_path):
    bindir = postgres_bin()
    if bindir is None:
        missing("PostgreSQL is not installed (Debian: apt-get install postgresql)")
    try:
        import psycopg2  # noqa: F401 - the server's driver for postgresql:// URIs
    except ImportError:
        missing("psycopg2 is not installed: pip install -e '.[test]'")
    cluster = PostgresCluster(bindir)
    server = None
    try:
        cluster.start()
        server = MlflowServer(tmp_path / "server", backend_uri=cluster.uri)
        server.start(timeout=180)  # a PostgreSQL store migrates on first start
        yield server
    finally:
        try:
            if server is not None:
                server.stop()
        finally:
            cluster.stop()  # even if the server's stop failed: never leave a cluster running


def test_parallel_applies_mlflow_server_postgres_local(project, postgres_mlflow_server):
    env = {"MLFLOW_TRACKING_URI": postgres_mlflow_server.url}
    project.mantik("plan", env=env)
    check_trials(project, BASIC_SPEC, postgres_mlflow_server.url, env, trials=POSTGRES_TRIALS)
