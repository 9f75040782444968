"""Shared fixtures: real git repositories in temp dirs, the installed ``mantik`` command, real MLflow stores,
and a Slurm cluster of the test run's own.

Speed without losing what a test proves: a fresh MLflow store is a copy of one migrated per session (migrations
cost seconds, a copy milliseconds); hypothesis runs a quick profile locally and the full counts under CI.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from hypothesis import settings

from tests.zygote import Zygote

# the shared helpers' asserts explain themselves as a test's do (before anything imports them)
pytest.register_assert_rewrite("tests.support")

ROOT = Path(__file__).resolve().parents[1]
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

# Hypothesis: the counts the tests declare (and docs/reliability.md quotes) under CI; a quick sample locally.
# HYPOTHESIS_PROFILE=ci runs the full counts anywhere.
settings.register_profile("ci", deadline=None, print_blob=True)
settings.register_profile("dev", deadline=None, max_examples=50)
HYPOTHESIS_PROFILE = os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if IN_CI else "dev")
settings.load_profile(HYPOTHESIS_PROFILE)


# Tests that start the installed command, a server or a scheduler take seconds each: marked `slow` here, by what
# they use, so that a new test of that kind is marked without anyone remembering to. `pytest -m "not slow"` is the
# quick loop; a test that is slow for another reason carries @pytest.mark.slow itself.
SLOW_FIXTURES = frozenset({"project", "store_template", "mlflow_server", "slurm_cluster", "private_slurm", "sshd"})


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.get_closest_marker("e2e") or SLOW_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


def examples(full: int) -> int:
    """How many examples a property test runs: ``full`` under the ci profile, at most the dev profile's otherwise."""
    return full if HYPOTHESIS_PROFILE == "ci" else min(full, settings.get_profile(HYPOTHESIS_PROFILE).max_examples)


def missing(message: str) -> None:
    """A component a test needs is absent: a failure under CI (which installs everything), a skip elsewhere."""
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


def mantik_command() -> list[str]:
    """The installed console script: the e2e tests exercise what users run."""
    script = Path(sys.executable).parent / "mantik"
    found = str(script) if script.exists() else shutil.which("mantik")
    if not found:
        pytest.fail("the `mantik` command is not installed: pip install -e .")
    return [found]


_ZYGOTE: Zygote | None = None
EXEC_EACH = os.environ.get("MANTIK_TEST_EXEC", "") not in ("", "0")


def run_mantik(
    args: list[str], cwd: Path, env: dict[str, str], input: str | None = None, timeout: float = 180
) -> subprocess.CompletedProcess:
    """``mantik ARGS`` in its own process, as ``subprocess.run(..., capture_output=True, text=True)`` would run
    the console script; forked from a pre-imported zygote (tests/zygote.py) unless MANTIK_TEST_EXEC=1."""
    if EXEC_EACH:
        return subprocess.run(
            [*mantik_command(), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env, input=input
        )
    return _zygote().run([*mantik_command(), *args], cwd, env, input, timeout)


def _zygote() -> Zygote:
    global _ZYGOTE
    if _ZYGOTE is None:
        import tempfile

        _ZYGOTE = Zygote(Path(tempfile.mkdtemp(prefix="mantik-zygote-")))
    return _ZYGOTE


def run_mantik_together(
    commands: list[list[str]], cwd: Path, env: dict[str, str], timeout: float = 900
) -> list[subprocess.CompletedProcess]:
    """Several ``mantik`` commands started at once, each its own process (forked from the zygote, so that none
    waits seconds for its imports while the others race ahead), as CI jobs on one workspace start them;
    returns when all have ended, in the order given."""
    from concurrent.futures import ThreadPoolExecutor

    if not EXEC_EACH:
        _zygote()  # started once, before the threads that use it
    with ThreadPoolExecutor(len(commands)) as pool:
        return list(pool.map(lambda args: run_mantik(args, cwd, env, timeout=timeout), commands))


@pytest.fixture(scope="session", autouse=True)
def _stop_zygote():
    yield
    if _ZYGOTE is not None:
        _ZYGOTE.stop()
        shutil.rmtree(Path(_ZYGOTE.path).parent, ignore_errors=True)


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=test", "-c", "user.email=test@localhost", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
        text=True,
    ).stdout


TRAIN_SCRIPT = textwrap.dedent(
    """
    import json, os, sys, time
    args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
    log = os.environ.get("TEST_EVENTS")
    if log:
        with open(log, "a") as f:
            f.write(json.dumps({"event": "start", "t": time.time(), "args": args, "pid": os.getpid()}) + "\\n")
    time.sleep(float(args.get("--sleep", "0")))
    if args.get("--fail") in ("true", "True"):  # booleans reach the command as MLflow writes them: True
        sys.exit(3)
    if os.environ.get("TEST_LOG_METRIC"):
        import mlflow
        mlflow.log_metric("score", float(args.get("--lr", "0")) * 10)
    if log:
        with open(log, "a") as f:
            f.write(json.dumps({"event": "end", "t": time.time(), "args": args}) + "\\n")
    print("trained", args)
    """
)

BASIC_SPEC = textwrap.dedent(
    """
    version: 1
    project: demo
    code: {paths: [train.py]}
    entry_points:
      train:
        command: python train.py --lr {lr} --sleep {sleep} --fail {fail}
        parameters:
          lr: float
          sleep: {type: float, default: 0}
          fail: {type: bool, default: false}
    backends:
      local: {type: local, max_parallel: 4}
    experiments:
      sweep:
        entry_point: train
        parameters: {lr: [0.1, 0.2]}
    """
)


class Project:
    """A real git repository holding a mantik.yaml, driven through the installed CLI."""

    def __init__(self, path: Path):
        self.path = path
        # CI's own CI=true would make apply refuse the local store these tests use on purpose
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_") and k != "CI"}
        self.env["TEST_EVENTS"] = str(path.parent / f"{path.name}-events.jsonl")

    def write(self, name: str, text: str) -> None:
        target = self.path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(textwrap.dedent(text))

    def commit(self, message: str = "change") -> str:
        git(self.path, "add", "-A")
        git(self.path, "commit", "-qm", message, "--allow-empty")
        return git(self.path, "rev-parse", "HEAD").strip()

    def mantik(
        self, *args: str, check: int | None = 0, timeout: float = 180, env: dict | None = None, input: str | None = None
    ) -> subprocess.CompletedProcess:
        result = run_mantik(list(args), self.path, {**self.env, **(env or {})}, input=input, timeout=timeout)
        if check is not None and result.returncode != check:
            raise AssertionError(
                f"mantik {' '.join(args)} exited {result.returncode}, expected {check}\n"
                f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
            )
        return result

    def plan_json(self, *args: str) -> dict:
        return json.loads(self.mantik("plan", "--json", *args).stdout)

    def status_json(self) -> list[dict]:
        return json.loads(self.mantik("status", "--json").stdout)

    def events(self) -> list[dict]:
        path = Path(self.env["TEST_EVENTS"])
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def client(self):
        from mlflow.tracking import MlflowClient

        return MlflowClient(f"sqlite:///{self.path / '.mantik' / 'mlflow.db'}")

    def runs(self) -> list:
        client = self.client()
        experiments = client.search_experiments()
        return client.search_runs([e.experiment_id for e in experiments], max_results=50000) if experiments else []

    def wait_until(self, predicate, timeout: float = 90, message: str = "condition") -> None:
        """Poll ``predicate`` until it is true. A predicate that runs a ``mantik`` command costs a core for a
        fraction of a second: the pause after each look is twice what the look took (at least 0.3 s), so that
        waiting never takes more than a third of a core from the runs being waited for."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            looked = time.monotonic()
            if predicate():
                return
            time.sleep(max(0.3, 2 * (time.monotonic() - looked)))
        raise AssertionError(f"timed out waiting for {message}")


def run_example(name: str, workdir: Path, extra_env: dict | None = None) -> subprocess.CompletedProcess:
    """`bash examples/run.sh NAME`, as the README tells a newcomer, with this environment's mantik on PATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_") and k != "CI"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env.update(extra_env or {})
    return subprocess.run(
        ["bash", str(ROOT / "examples" / "run.sh"), name, str(workdir)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )


# Made in a process of its own, so that no connection of this one holds the file while it is copied.
_MIGRATE = """
import sys
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
SqlAlchemyStore(sys.argv[1], sys.argv[2]).engine.dispose()
"""


@pytest.fixture(scope="session")
def store_template(tmp_path_factory) -> Path:
    """An MLflow sqlite store with every migration applied, made once per session by MLflow itself.

    A test's fresh store is a copy of it: the same schema and the same default experiment MLflow would create,
    without the seconds of migrations. Only experiment 0's artifact location differs (it names this directory);
    mantik never uses experiment 0, it creates each experiment with its own artifact location."""
    directory = tmp_path_factory.mktemp("mlflow-template")
    database = directory / "mlflow.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    made = subprocess.run(
        [sys.executable, "-c", _MIGRATE, f"sqlite:///{database}", str(directory / "artifacts")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert made.returncode == 0 and database.exists(), made.stderr
    return database


def place_store(template: Path, database: Path) -> Path:
    """A fresh migrated store at ``database``, where mantik (or ``mlflow server``) would create it."""
    database.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(template, database)
    return database


@pytest.fixture
def project(tmp_path, store_template) -> Project:
    path = tmp_path / "repo"
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    proj = Project(path)
    proj.write("train.py", TRAIN_SCRIPT)
    proj.write("mantik.yaml", BASIC_SPEC)
    proj.commit("initial")
    # the default store, pre-made where the first mantik command would make it; git is told to ignore this one
    # file only, so that whatever else mantik writes under .mantik/ is still kept out of commits by mantik itself
    place_store(store_template, path / ".mantik" / "mlflow.db")
    with open(path / ".git" / "info" / "exclude", "a") as exclude:
        exclude.write("/.mantik/mlflow.db\n")
    yield proj
    _stop_jobs(path)


def _stop_jobs(path: Path) -> None:
    """Leave no detached run behind a test."""
    for pid_file in (path / ".mantik" / "local").glob("*/jobs/*/pid"):
        try:
            pid = int(pid_file.read_text().split()[0])
            os.killpg(pid, 9)
        except (OSError, ValueError):
            pass


# ---- Slurm: a cluster of the test run's own -------------------------------------------------------------------
#
# The tests never submit to, stop or restart a Slurm they did not start. They start a controller and a slurmd
# of their own (own slurm.conf, cluster name, ports, state and spool directories; only munge is shared) and
# point every Slurm command of the run at it through SLURM_CONF, which mantik's sbatch/squeue/scancel inherit.

SLURMCTLD, SLURMD = "/usr/sbin/slurmctld", "/usr/sbin/slurmd"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def slurm_problem() -> str | None:
    """Why this machine cannot run a Slurm of the tests' own, or None."""
    for command in (SLURMCTLD, SLURMD, shutil.which("sbatch") or "/usr/bin/sbatch"):
        if not Path(command).exists():
            return f"{command} is missing: bash scripts/slurm-local.sh install (root)"
    if os.geteuid() != 0:
        return "the tests' own Slurm needs root (slurmd starts jobs)"
    if shutil.which("munge") is None or subprocess.run(["munge", "-n"], capture_output=True).returncode:
        return "munged is not running: bash scripts/slurm-local.sh install (root)"
    return None


class SlurmCluster:
    """One slurmctld and one slurmd of our own on this host, both run in the foreground (``-D``) so that
    they are our children: stopped by pid, never by name. Partition ``debug``, as the specs say."""

    def __init__(self, directory: Path, name: str):
        self.directory = directory
        self.name = name
        self.conf = directory / "slurm.conf"
        self.controller: subprocess.Popen | None = None
        self.node: subprocess.Popen | None = None
        for sub in ("state", "spool", "log"):
            (directory / sub).mkdir(parents=True, exist_ok=True)
        host = socket.gethostname().split(".")[0]
        memory = 4096
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    memory = max(1024, int(int(line.split()[1]) / 1024 * 0.9))
        self.conf.write_text(
            textwrap.dedent(
                f"""\
                ClusterName={name}
                SlurmctldHost={host}
                SlurmctldPort={free_port()}
                SlurmdPort={free_port()}
                SlurmUser=root
                SlurmdUser=root
                AuthType=auth/munge
                MpiDefault=none
                MailProg=/bin/true
                ProctrackType=proctrack/linuxproc
                TaskPlugin=task/none
                JobAcctGatherType=jobacct_gather/none
                AccountingStorageType=accounting_storage/none
                JobCompType=jobcomp/none
                SelectType=select/cons_tres
                SelectTypeParameters=CR_Core
                SchedulerType=sched/backfill
                SchedulerParameters=batch_sched_delay=0,sched_min_interval=0
                StateSaveLocation={directory / "state"}
                SlurmdSpoolDir={directory / "spool"}
                SlurmctldPidFile={directory / "slurmctld.pid"}
                SlurmdPidFile={directory / "slurmd.pid"}
                SlurmctldLogFile={directory / "log" / "slurmctld.log"}
                SlurmdLogFile={directory / "log" / "slurmd.log"}
                ReturnToService=2
                MaxJobCount=100000
                MaxArraySize=10001
                MinJobAge=300
                KillWait=2
                OverTimeLimit=0
                SlurmdParameters=config_overrides
                NodeName={host} CPUs=8 RealMemory={memory} State=UNKNOWN
                PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
                """
            )
        )

    @property
    def env(self) -> dict[str, str]:
        return {"SLURM_CONF": str(self.conf)}

    def _daemon(self, binary: str) -> subprocess.Popen:
        return subprocess.Popen(
            [binary, "-D", "-f", str(self.conf)],
            stdout=open(self.directory / "log" / f"{Path(binary).name}.out", "ab"),  # noqa: SIM115 - the daemon's
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **self.env},
        )

    def is_up(self) -> bool:
        states = subprocess.run(
            ["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, env={**os.environ, **self.env}
        ).stdout.split()
        return any(state.rstrip("*") in ("idle", "mixed", "allocated") for state in states)

    def start(self) -> None:
        self.start_controller()
        self.node = self._daemon(SLURMD)
        self.wait_until_up()

    def start_controller(self) -> None:
        self.controller = self._daemon(SLURMCTLD)

    def wait_until_up(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not self.is_up():
            for daemon in (self.controller, self.node):
                if daemon is not None and daemon.poll() is not None:
                    raise AssertionError(f"{daemon.args[0]} exited {daemon.returncode}: {self.logs()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"the tests' Slurm did not come up: {self.logs()}")
            time.sleep(0.2)

    def stop_controller(self) -> None:
        """SIGTERM, as an admin's stop does: the controller saves its state and exits."""
        _stop(self.controller)
        self.controller = None

    def stop(self) -> None:
        if self.controller is not None:  # leave no job of ours running behind the session
            subprocess.run(["scancel", "--full", "--user", str(os.getuid())], capture_output=True,
                           env={**os.environ, **self.env})  # fmt: skip
        _stop(self.node)
        _stop(self.controller)
        self.node = self.controller = None

    def logs(self) -> str:
        return "\n".join(
            f"== {path.name}\n{path.read_text(errors='replace')[-1500:]}"
            for path in sorted(self.directory.glob("log/*"))
        )


def _stop(process: subprocess.Popen | None) -> None:
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope="session", autouse=True)
def _slurm_of_this_run(tmp_path_factory):
    """Every Slurm command of the run goes to the run's own cluster, even from a test that forgot to ask for it:
    until ``slurm_cluster`` starts it, SLURM_CONF names a placeholder without a cluster, so Slurm commands fail
    at once (a missing file would make them retry for a minute) instead of reaching the machine's or a site's."""
    previous = os.environ.get("SLURM_CONF")
    conf = tmp_path_factory.getbasetemp() / "slurm" / "slurm.conf"
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text("# the test run's own Slurm is not started yet (tests/conftest.py: slurm_cluster)\n")
    os.environ["SLURM_CONF"] = str(conf)
    yield
    if previous is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = previous


@pytest.fixture(scope="session")
def slurm_cluster(_slurm_of_this_run, tmp_path_factory) -> SlurmCluster:
    """The run's own single-node Slurm, started by the first test that needs it (skipped without root and
    Slurm locally; a failure under CI)."""
    problem = slurm_problem()
    if problem:
        missing(problem)
    cluster = SlurmCluster(Path(os.environ["SLURM_CONF"]).parent, f"mtest{os.getpid()}")
    try:
        cluster.start()
    except AssertionError:
        cluster.stop()
        raise
    yield cluster
    cluster.stop()


@pytest.fixture
def private_slurm(tmp_path) -> SlurmCluster:
    """A cluster for one test that stops or restarts its controller: nobody else's jobs are on it."""
    problem = slurm_problem()
    if problem:
        missing(problem)
    cluster = SlurmCluster(tmp_path / "slurm", f"mpriv{os.getpid()}")
    cluster.start()
    yield cluster
    cluster.stop()
