"""Offline tracking: jobs whose processes cannot reach the tracking server (``unshare -n``: no network at all)
record to a journal in their job directory, and sync uploads it into the run mantik recorded (docs/offline.md)."""

from __future__ import annotations

import json
import os
import random
import shlex
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from mantik_spec import runner
from mantik_spec.backends.base import BackendError
from mantik_spec.backends.hosts import HostJournal, LocalHost
from mantik_spec.operations import sync
from mantik_spec.state.journal import Damage, read_snapshot, sync_run
from mantik_spec.state.tags import Tag
from mantik_spec.state.tracking import TrackingStore

from .conftest import missing
from .support.mlflow_server import MLFLOW, MlflowServer
from .support.specs import on_one_backend, slurm_spec
from .support.sshd import ssh_spec, sshd_of_the_module  # noqa: F401  (the module's sshd fixture)

UNSHARE = shutil.which("unshare")

SCRIPT = textwrap.dedent(
    """
    import os, sys, time
    import mlflow
    points = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    mlflow.set_experiment(os.environ["EXPERIMENT_NAME"]) if os.environ.get("EXPERIMENT_NAME") else None
    with mlflow.start_run() as run:
        assert run.info.run_id == os.environ["EXPECTED_RUN_ID"], run.info.run_id
        mlflow.log_param("lr", "0.1")
        mlflow.set_tag("phase", "train")
        for step in range(points):
            mlflow.log_metric("loss", 1.0 / (step + 1), step=step)
            if os.environ.get("SLOW"):
                time.sleep(float(os.environ["SLOW"]))
        with open("model.txt", "w") as f:
            f.write("weights")
        mlflow.log_artifact("model.txt", "model")
    print("trained")
    """
)


@pytest.fixture(scope="module")
def server(tmp_path_factory, store_template):
    if not Path(MLFLOW).exists():
        missing("the mlflow server is not installed: pip install -e '.[test]'")
    if UNSHARE is None or subprocess.run([UNSHARE, "-n", "true"], capture_output=True).returncode:
        missing("unshare -n (util-linux, as root) is needed to run jobs without a network")
    server = MlflowServer(tmp_path_factory.mktemp("server"), store_template)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def store(server):
    return TrackingStore(server.url, "offline")


def python_without_network(directory: Path) -> Path:
    """A `python` for the jobs whose processes have no network at all (their own empty network namespace)."""
    wrapper = directory / "python-without-network"
    wrapper.write_text(f'#!/bin/sh\nexec {UNSHARE} -n {sys.executable} "$@"\n')
    wrapper.chmod(0o755)
    return wrapper


def new_run(store: TrackingStore, experiment: str = "exp") -> tuple[str, str]:
    experiment_id = store.ensure_experiment(experiment, store.experiment_ids())
    run_id = store.create_run(experiment_id, "point", {Tag.POINT: "exp[0]"}, {})
    return run_id, experiment_id


def job_dir(tmp_path: Path, store: TrackingStore, run_id: str, experiment_id: str, tracking: str, **environment):
    directory = tmp_path / "job"
    (directory / "work").mkdir(parents=True)
    (directory / "work" / "train.py").write_text(SCRIPT)
    shutil.copy(runner.__file__, directory / "runner.py")
    job = {
        "run_id": run_id,
        "point": "exp[0]",
        "command": f"{sys.executable} train.py {environment.pop('points', 5)}",
        "tracking_uri": store.uri,
        "experiment_id": experiment_id,
        "experiment_name": store.experiment_name("exp"),
        "environment": {"EXPECTED_RUN_ID": run_id, **environment},
        "workdir": "work",
        "tracking": tracking,
    }
    (directory / "job.json").write_text(json.dumps(job))
    return directory


def run_job(directory: Path, network: bool = False) -> subprocess.CompletedProcess:
    argv = [sys.executable, str(directory / "runner.py"), str(directory)]
    return subprocess.run(argv if network else [UNSHARE, "-n", *argv], capture_output=True, text=True, timeout=120)


def journal_of(directory: Path) -> HostJournal:
    return HostJournal(LocalHost(), str(directory / runner.JOURNAL_DIR))


def history(store: TrackingStore, run_id: str) -> list[tuple]:
    return sorted((m.key, m.step, m.timestamp, m.value) for m in store.client.get_metric_history(run_id, "loss"))


def journal_points(directory: Path) -> list[tuple]:
    with sqlite3.connect(directory / runner.JOURNAL_DIR / runner.JOURNAL_DB) as connection:
        return sorted(connection.execute("SELECT key, step, timestamp, value FROM metrics WHERE key = 'loss'"))


@pytest.mark.parametrize("tracking", ["offline", "auto"])
def test_a_job_without_network_records_offline_and_sync_fills_its_run(tmp_path, server, store, tracking):
    run_id, experiment_id = new_run(store)
    # the script names its own experiment, as scripts written for MLflow do: the run stays in its experiment
    directory = job_dir(tmp_path, store, run_id, experiment_id, tracking, EXPERIMENT_NAME="my-experiment")
    queued_until = int(time.time() * 1000)
    done = run_job(directory)
    assert done.returncode == 0, done.stdout + done.stderr + (directory / "output.log").read_text()
    assert "trained" in (directory / "output.log").read_text()
    before = store.client.get_run(run_id)
    assert before.info.status == "SCHEDULED" and not before.data.metrics  # nothing reached the server

    result = sync_run(store, run_id, journal_of(directory), job_ended=True)
    assert result is not None and not result.skipped
    after = store.client.get_run(run_id)
    assert after.info.status == "FINISHED"
    assert after.info.experiment_id == experiment_id
    assert after.data.params == {"lr": "0.1"}
    assert after.data.tags["phase"] == "train"
    assert after.data.tags[Tag.TRACKING] == "offline"
    assert after.data.tags[Tag.EXIT_CODE] == "0"
    # when the job started, which the run's start_time (its submission) cannot say: recorded offline, synced
    assert after.info.start_time <= queued_until <= int(after.data.tags[Tag.STARTED]) <= after.info.end_time
    assert history(store, run_id) == journal_points(directory) and len(journal_points(directory)) == 5
    with sqlite3.connect(directory / runner.JOURNAL_DIR / runner.JOURNAL_DB) as connection:
        assert after.info.end_time == connection.execute("SELECT end_time FROM runs").fetchone()[0]
        assert connection.execute("PRAGMA page_size").fetchone() == (1024,)  # read whole on every pass: small
    assert (directory / runner.JOURNAL_DIR / runner.JOURNAL_DB).stat().st_size < 512 * 1024
    artifacts = {a.path for a in store.client.list_artifacts(run_id, "model")}
    assert artifacts == {"model/model.txt"}
    assert "trained" in Path(store.client.download_artifacts(run_id, "mantik/output.log", str(tmp_path))).read_text()

    again = sync_run(store, run_id, journal_of(directory), job_ended=True)
    assert again is not None and again.written == 0  # idempotent: a second sync writes nothing
    assert history(store, run_id) == journal_points(directory)


@pytest.mark.parametrize("tracking", ["online", "auto"])
def test_a_job_with_network_records_online_whatever_experiment_the_script_names(tmp_path, server, store, tracking):
    run_id, experiment_id = new_run(store)
    directory = job_dir(tmp_path, store, run_id, experiment_id, tracking, EXPERIMENT_NAME="my-experiment")
    queued_until = int(time.time() * 1000)
    done = run_job(directory, network=True)
    assert done.returncode == 0, done.stdout + done.stderr + (directory / "output.log").read_text()
    run = store.client.get_run(run_id)
    assert run.info.start_time <= queued_until <= int(run.data.tags[Tag.STARTED]) <= run.info.end_time
    assert run.info.status == "FINISHED" and run.info.experiment_id == experiment_id
    assert run.data.metrics == {"loss": 0.2} and run.data.params == {"lr": "0.1"}
    assert store.client.get_experiment_by_name("my-experiment") is None  # nothing recorded elsewhere
    assert run.data.tags.get(Tag.TRACKING) == ("online" if tracking == "auto" else None)
    assert sync_run(store, run_id, journal_of(directory)) is None  # no journal
    assert "View run" not in done.stdout  # the runner's close prints no URL into the job's output


SYNC_ONE = textwrap.dedent(
    """
    import sys
    from mantik_spec.backends.hosts import HostJournal, LocalHost
    from mantik_spec.state.journal import sync_run
    from mantik_spec.state.tracking import TrackingStore
    result = sync_run(TrackingStore(sys.argv[1], "offline"), sys.argv[2], HostJournal(LocalHost(), sys.argv[3]))
    print(result.metrics)
    """
)


def test_a_sync_killed_mid_way_completes_on_the_next_without_a_duplicate_point(tmp_path, server, store):
    run_id, experiment_id = new_run(store)
    directory = job_dir(tmp_path, store, run_id, experiment_id, "offline", points=1500)
    assert run_job(directory).returncode == 0
    journal = str(directory / runner.JOURNAL_DIR)
    environment = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]), "MANTIK_TEST_CRASH_AT": "journal-batch"}
    crashed = subprocess.run(
        [sys.executable, "-c", SYNC_ONE, store.uri, run_id, journal], env=environment, capture_output=True, timeout=120
    )
    assert crashed.returncode == -9  # killed after its first batch of points
    partial = history(store, run_id)
    assert 0 < len(partial) < 1500
    assert store.client.get_run(run_id).info.status == "SCHEDULED"

    result = sync_run(store, run_id, journal_of(directory), job_ended=True)
    assert result is not None and result.metrics == 1500 - len(partial)  # from the cursor on, not from the start
    assert history(store, run_id) == journal_points(directory)  # complete, no duplicate
    assert store.client.get_run(run_id).info.status == "FINISHED"


def test_a_job_killed_mid_write_is_synced_as_far_as_it_got_while_it_ran(tmp_path, server, store):
    run_id, experiment_id = new_run(store)
    directory = job_dir(tmp_path, store, run_id, experiment_id, "offline", points=100000, SLOW="0.002")
    argv = [UNSHARE, "-n", sys.executable, str(directory / "runner.py"), str(directory)]
    job = subprocess.Popen(argv, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        seen = []
        deadline = time.monotonic() + 120
        while len(seen) < 3 and time.monotonic() < deadline:  # sync while it trains: each adds only new points
            result = sync_run(store, run_id, journal_of(directory))
            if result is not None and result.metrics:
                seen.append(result.metrics)
                assert store.client.get_run(run_id).info.status == "RUNNING"
            time.sleep(0.5)
        assert len(seen) == 3, "the job logged no points"
    finally:
        os.killpg(job.pid, 9)  # the whole job, mid-write
        job.wait()
    result = sync_run(store, run_id, journal_of(directory), job_ended=True)
    assert result is not None and not result.skipped
    assert history(store, run_id) == journal_points(directory)  # every point the journal kept, once
    assert sum(seen) + result.metrics == len(journal_points(directory))
    assert store.client.get_run(run_id).info.status == "RUNNING"  # the journal never said how it ended
    assert sync_run(store, run_id, journal_of(directory), job_ended=True).written == 0


def test_a_damaged_journal_is_synced_as_far_as_it_is_valid(tmp_path, server, store):
    run_id, experiment_id = new_run(store)
    directory = job_dir(tmp_path, store, run_id, experiment_id, "offline", points=1500)
    assert run_job(directory).returncode == 0
    database = directory / runner.JOURNAL_DIR / runner.JOURNAL_DB
    intact = journal_points(directory)
    with sqlite3.connect(database) as connection:
        size = connection.execute("PRAGMA page_size").fetchone()[0]
        leaves = [n for (n,) in connection.execute("SELECT pageno FROM dbstat WHERE name = 'metrics' AND pagetype = 'leaf'")]
    data = bytearray(database.read_bytes())
    middle = leaves[len(leaves) // 2]  # a page of metric rows in the middle of the table, overwritten
    data[(middle - 1) * size : middle * size] = b"\xff" * size
    damaged = tmp_path / "damaged"
    shutil.copytree(directory / runner.JOURNAL_DIR, damaged)
    (damaged / runner.JOURNAL_DB).write_bytes(bytes(data))
    result = sync_run(store, run_id, HostJournal(LocalHost(), str(damaged)))
    assert result is not None
    assert [s.damage for s in result.skipped] and all(s.damage is Damage.TABLE_CUT for s in result.skipped)
    synced = history(store, run_id)
    assert synced and set(synced) <= set(intact)

    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / runner.JOURNAL_DB).write_bytes(b"not a database" * 100)
    result = sync_run(store, run_id, HostJournal(LocalHost(), str(garbage)))
    assert result is not None and [s.damage for s in result.skipped] == [Damage.UNREADABLE] and result.written == 0

    repaired = sync_run(store, run_id, journal_of(directory))  # the whole journal later: the rest, once
    assert repaired is not None and not repaired.skipped
    assert history(store, run_id) == intact


def test_apply_wait_on_the_local_backend_offline_returns_with_the_run_synced_and_closed(project, server):
    spec = on_one_backend("  local: {type: local, max_parallel: 2, tracking: offline}\n", lrs="[0.5]")
    project.write("mantik.yaml", spec)
    project.commit("offline")
    environment = {"MLFLOW_TRACKING_URI": server.url, "TEST_LOG_METRIC": "1"}
    project.mantik("apply", "--auto-approve", "--wait", env=environment)
    client = MlflowClient(server.url)
    experiment = client.get_experiment_by_name("demo/sweep")
    (run,) = client.search_runs([experiment.experiment_id], f"tags.`{Tag.BACKEND}` = 'local'")
    assert run.info.status == "FINISHED"
    assert run.data.metrics == {"score": 5.0}  # logged by the script, offline, synced by apply --wait
    assert run.data.tags[Tag.TRACKING] == "offline" and run.data.tags[Tag.EXIT_CODE] == "0"
    journal = project.path / ".mantik" / "local" / "local" / "jobs" / run.info.run_id / runner.JOURNAL_DIR
    assert (journal / runner.JOURNAL_DB).exists()
    synced = project.mantik("sync", env=environment)
    assert "Nothing to sync" in synced.stdout


def test_a_plan_that_closes_runs_from_their_journals_prints_only_its_plan(project, server):
    """Closing a run through MLflow's ``set_terminated`` prints the run's URL to stdout (and reads the run once
    more) against a server: a plan or sync that ends synced runs must keep its output its own."""
    spec = on_one_backend("  local: {type: local, max_parallel: 2, tracking: offline}\n", "closing", lrs="[0.5, 0.6]")
    project.write("mantik.yaml", spec)
    project.commit("offline, closed by the plan's sync")
    environment = {"MLFLOW_TRACKING_URI": server.url, "TEST_LOG_METRIC": "1"}
    project.mantik("apply", "--auto-approve", env=environment)
    jobs = project.path / ".mantik" / "local" / "local" / "jobs"
    project.wait_until(lambda: len(list(jobs.glob("*/exit_code"))) == 2, message="jobs ended")
    planned = project.mantik("plan", "--json", env=environment)
    json.loads(planned.stdout)  # the plan, and nothing but the plan
    assert "View run" not in planned.stdout + planned.stderr
    client = MlflowClient(server.url)
    experiment_id = client.get_experiment_by_name("closing/sweep").experiment_id
    assert {run.info.status for run in client.search_runs([experiment_id])} == {"FINISHED"}


def test_a_slurm_job_without_network_falls_back_to_its_journal(project, server, slurm_cluster, tmp_path):
    wrapper = python_without_network(tmp_path)
    spec = slurm_spec(lrs="[0.5]").replace(f"    python: {sys.executable}\n", f"    python: {wrapper}\n")
    project.write("mantik.yaml", spec)
    project.commit("slurm, no network on the nodes")
    environment = {"MLFLOW_TRACKING_URI": server.url, "TEST_LOG_METRIC": "1"}
    project.mantik("apply", "--auto-approve", "--wait", env=environment, timeout=300)
    client = MlflowClient(server.url)
    experiment = client.get_experiment_by_name("slurmtest/sweep")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.metrics == {"score": 5.0}
    assert run.data.tags[Tag.TRACKING] == "offline"  # auto: the probe found no route, the job chose its journal
    assert "trained" in Path(client.download_artifacts(run.info.run_id, "mantik/output.log", str(tmp_path))).read_text()


def test_plan_shows_a_journal_it_could_not_sync_as_drift_and_sync_fails(project, server):
    project.write(
        "mantik.yaml",
        """
        version: 1
        project: drift
        entry_points:
          main:
            command: printf garbage > ../journal/mlflow.db && sleep 60
          creating:
            command: ": > ../journal/mlflow.db && sleep 60"
        backends:
          local: {type: local, tracking: offline, max_parallel: 2}
        experiments:
          broken: {entry_point: main}
          being_created: {entry_point: creating}
        """,
    )
    project.commit("a job that damages its journal, and one whose journal looks as it does while created")
    environment = {"MLFLOW_TRACKING_URI": server.url}
    project.mantik("apply", "--auto-approve", env=environment)
    jobs = project.path / ".mantik" / "local" / "local" / "jobs"

    def databases() -> list[bytes]:
        found = [job / runner.JOURNAL_DIR / runner.JOURNAL_DB for job in jobs.iterdir()]
        return sorted(database.read_bytes() for database in found if database.exists())

    project.wait_until(lambda: databases() == [b"", b"garbage"], message="damaged and emptied journals")
    try:
        plan = json.loads(project.mantik("plan", "--json", env=environment).stdout)
        (drift,) = [w for w in plan["warnings"] if w.startswith("drift:")]  # the empty one is not there yet
        assert "not a readable database" in drift
        synced = project.mantik("sync", env=environment, check=1)
        assert "not a readable database" in synced.stderr
        assert synced.stderr.count("offline journal") == 1
    finally:
        project.mantik("cancel", "broken", "being_created", env=environment)


def test_an_artifact_the_backend_cannot_read_ends_the_run_all_the_same_and_is_read_on_the_next_pass(
    tmp_path, server, store
):
    """A transfer that fails, a file the site's shell cannot name: the run still gets its end and points, the
    artifact is reported and read again on the next pass, never skipped for good."""
    run_id, experiment_id = new_run(store)
    directory = job_dir(tmp_path, store, run_id, experiment_id, "offline")
    assert run_job(directory).returncode == 0
    readable = journal_of(directory)

    class Failing:
        def read_bytes(self, name):
            if name == "artifacts/model/model.txt":
                raise BackendError("transfer job 12 failed")
            return readable.read_bytes(name)

        def read_together(self, names):
            return readable.read_together(names)

        def files(self, directory):
            return readable.files(directory)

    first = sync_run(store, run_id, Failing(), job_ended=True)
    assert first is not None and first.status == "FINISHED" and first.metrics == 5
    assert [(s.part, s.damage) for s in first.skipped] == [("model/model.txt", Damage.NOT_READ)]
    assert Tag.SYNC_ARTIFACTS not in store.client.get_run(run_id).data.tags
    second = sync_run(store, run_id, readable, job_ended=True)
    assert second is not None and second.artifacts == 1 and not second.skipped
    assert {a.path for a in store.client.list_artifacts(run_id, "model")} == {"model/model.txt"}


def test_a_journal_writes_no_tag_of_apply_or_of_sync_into_the_run(tmp_path, server, store):
    """The journal holds the script's tags and the runner's: a `mantik.*` tag of apply's (the run's key) or of the
    sync's own (its cursor, its mark of a journal synced whole) set by the script is not uploaded."""
    run_id, experiment_id = new_run(store)
    directory = job_dir(tmp_path, store, run_id, experiment_id, "offline")
    assert run_job(directory).returncode == 0
    forged = {Tag.RUN_KEY: "f" * 64, Tag.POINT: "other[0]", Tag.SYNC_COMPLETE: "journal", Tag.SYNC_METRICS: "99999"}
    with sqlite3.connect(directory / runner.JOURNAL_DIR / runner.JOURNAL_DB) as connection:
        rows = [(key, value, run_id) for key, value in forged.items()]
        connection.executemany("INSERT INTO tags (key, value, run_uuid) VALUES (?, ?, ?)", rows)
    before = store.client.get_run(run_id).data.tags
    result = sync_run(store, run_id, journal_of(directory), job_ended=True)
    assert result is not None and result.status == "FINISHED" and result.metrics == 5
    after = store.client.get_run(run_id).data.tags
    assert after.get(Tag.RUN_KEY) == before.get(Tag.RUN_KEY) and after[Tag.POINT] == "exp[0]"
    assert Tag.SYNC_COMPLETE not in after and int(after[Tag.SYNC_METRICS]) < 99999
    assert after["phase"] == "train" and after[Tag.EXIT_CODE] == "0"  # the script's and the runner's are


def test_a_journal_being_created_is_nothing_yet_while_its_job_runs_and_damage_once_it_ended(tmp_path, server, store):
    run_id, _ = new_run(store)
    journal = tmp_path / "journal"
    assert sync_run(store, run_id, HostJournal(LocalHost(), str(journal))) is None  # not there yet
    journal.mkdir()
    database = journal / runner.JOURNAL_DB
    database.write_bytes(b"")  # created, empty
    assert sync_run(store, run_id, HostJournal(LocalHost(), str(journal))) is None
    with sqlite3.connect(database) as connection:  # MLflow's first tables, as its migrations create them
        connection.execute("CREATE TABLE runs (run_uuid TEXT, status TEXT, start_time INT, end_time INT)")
    assert sync_run(store, run_id, HostJournal(LocalHost(), str(journal))) is None
    ended = sync_run(store, run_id, HostJournal(LocalHost(), str(journal)), job_ended=True)
    assert ended is not None and [s.damage for s in ended.skipped] == [Damage.INCOMPLETE] and ended.written == 0
    database.write_bytes(b"not a database" * 100)  # damage is damage while the job runs too
    live = sync_run(store, run_id, HostJournal(LocalHost(), str(journal)))
    assert live is not None and [s.damage for s in live.skipped] == [Damage.UNREADABLE]


def test_a_run_closed_before_its_journal_was_synced_gets_it_once_and_then_is_not_read_again(project, server):
    spec = on_one_backend(
        "  local: {type: local, max_parallel: 3, tracking: offline}\n", "ended", lrs="[0.5, 0.6, 0.7]"
    )
    project.write("mantik.yaml", spec)
    project.commit("offline, closed before a sync")
    environment = {"MLFLOW_TRACKING_URI": server.url, "TEST_LOG_METRIC": "1"}
    project.mantik("apply", "--auto-approve", env=environment)
    client = MlflowClient(server.url)
    experiment_id = client.get_experiment_by_name("ended/sweep").experiment_id
    jobs = project.path / ".mantik" / "local" / "local" / "jobs"
    runs = {run.data.params["lr"]: run.info.run_id for run in client.search_runs([experiment_id])}
    project.wait_until(lambda: all((jobs / r / "exit_code").exists() for r in runs.values()), message="jobs ended")
    synced, ending, lost = runs["0.5"], runs["0.6"], runs["0.7"]
    shutil.rmtree(jobs / lost / runner.JOURNAL_DIR)  # as if its runner never started
    # `ending`'s journal as it is while a cancelled runner still writes its end: no exit code, no output yet
    whole = jobs / ending / "journal-whole"
    shutil.copytree(jobs / ending / runner.JOURNAL_DIR, whole)
    with sqlite3.connect(jobs / ending / runner.JOURNAL_DIR / runner.JOURNAL_DB) as connection:
        connection.execute("DELETE FROM tags WHERE key IN (?, ?)", (Tag.EXIT_CODE, Tag.END_SIGNATURE))
        connection.execute("UPDATE runs SET status = 'RUNNING', end_time = NULL")
    shutil.rmtree(jobs / ending / runner.JOURNAL_DIR / "artifacts" / "mantik")
    long_ago = int(time.time() * 1000) - sync.JOURNAL_GRACE_MS - 60_000
    for run_id in runs.values():  # closed from the scheduler's state (or a cancel) before any sync read the journal
        client.set_terminated(
            run_id, "FAILED" if run_id != ending else "KILLED", end_time=None if run_id == ending else long_ago
        )
        assert not client.get_run(run_id).data.metrics

    plan = json.loads(project.mantik("plan", "--json", env=environment).stdout)
    assert not [w for w in plan["warnings"] if w.startswith("drift:")]
    run = client.get_run(synced)
    assert run.data.metrics == {"score": 5.0}  # its whole history, though the run was closed
    assert run.data.tags[Tag.TRACKING] == "offline" and run.data.tags[Tag.SYNC_COMPLETE] == "journal"
    assert {a.path for a in client.list_artifacts(synced, "mantik")} == {"mantik/output.log"}
    assert client.get_run(lost).data.tags[Tag.SYNC_COMPLETE] == "none"  # final: not looked for again
    # closed just now, its runner not yet ended: what it holds is synced, and it is read again, not marked final
    assert set(client.get_run(ending).data.metrics) == {"score"}
    assert Tag.SYNC_COMPLETE not in client.get_run(ending).data.tags
    shutil.rmtree(jobs / ending / runner.JOURNAL_DIR)
    whole.rename(jobs / ending / runner.JOURNAL_DIR)  # the runner wrote its end
    project.mantik("plan", "--json", env=environment)
    run = client.get_run(ending)
    assert run.data.tags[Tag.SYNC_COMPLETE] == "journal" and run.info.status == "KILLED"  # the cancel's word stands
    assert {a.path for a in client.list_artifacts(ending, "mantik")} == {"mantik/output.log"}  # nothing lost

    for run_id in runs.values():  # a journal read again now would be reported as damage
        (jobs / run_id / runner.JOURNAL_DIR).mkdir(exist_ok=True)
        (jobs / run_id / runner.JOURNAL_DIR / runner.JOURNAL_DB).write_bytes(b"not a database" * 100)
    plan = json.loads(project.mantik("plan", "--json", env=environment).stdout)
    assert not [w for w in plan["warnings"] if w.startswith("drift:")]
    assert "Nothing to sync" in project.mantik("sync", env=environment).stdout


def test_a_unicore_job_without_network_is_synced_through_the_sites_storage(project, server, tmp_path):
    from .fake_unicore import FakeUnicore
    from .support.specs import unicore_spec

    wrapper = python_without_network(tmp_path)
    with FakeUnicore(tmp_path / "site", users={"alice": "pw"}) as site:
        site.queue_seconds = 0.1
        # the site's jobs do not inherit this environment: the spec gives the script its variable
        spec = unicore_spec(site.url, python=str(wrapper), extra="    environment: metrics")
        path = f"{Path(sys.executable).parent}:/usr/bin:/bin"  # `python` with mlflow
        spec += f"environments:\n  metrics: {{variables: {{TEST_LOG_METRIC: '1', PATH: '{path}'}}}}\n"
        project.write("mantik.yaml", spec.replace("[0.1, 0.2]", "[0.5]"))
        project.commit("unicore, no network on the nodes")
        environment = {
            "MLFLOW_TRACKING_URI": server.url,
            "TEST_LOG_METRIC": "1",
            "MANTIK_UNICORE_USERNAME": "alice",
            "MANTIK_UNICORE_PASSWORD": "pw",
            "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        }
        project.mantik("apply", "--auto-approve", "--wait", env=environment, timeout=300)
    client = MlflowClient(server.url)
    experiment_id = client.get_experiment_by_name("demo/sweep").experiment_id  # shared with the local test's
    (run,) = client.search_runs([experiment_id], f"tags.`{Tag.BACKEND}` = 'site'")
    assert run.info.status == "FINISHED"
    assert run.data.metrics == {"score": 5.0}
    assert run.data.tags[Tag.TRACKING] == "offline"
    assert "trained" in Path(client.download_artifacts(run.info.run_id, "mantik/output.log", str(tmp_path))).read_text()


LARGE_ARTIFACT = textwrap.dedent(
    """
    import random, sys
    import mlflow
    lr = float(sys.argv[sys.argv.index("--lr") + 1])
    mlflow.log_metric("score", lr * 10)
    with open("weights.bin", "wb") as f:
        f.write(random.Random(7).randbytes(1536 * 1024))
    mlflow.log_artifact("weights.bin", "model")
    print("trained")
    """
)


def test_a_firecrest_job_without_network_is_synced_through_the_api_a_large_file_by_transfer_job(
    project, server, slurm_cluster, tmp_path
):
    from .fake_firecrest import FakeFirecrest
    from .support.specs import firecrest_spec

    wrapper = python_without_network(tmp_path)
    workdir = tmp_path / "cluster"
    workdir.mkdir()
    environment = {
        "MLFLOW_TRACKING_URI": server.url,
        "MANTIK_FIRECREST_CLIENT_ID": "mantik",
        "MANTIK_FIRECREST_CLIENT_SECRET": "s3cret",
    }
    with FakeFirecrest() as site:
        spec = firecrest_spec(site, workdir, lrs="[0.5]")
        project.write("mantik.yaml", spec.replace(f"    python: {sys.executable}\n", f"    python: {wrapper}\n"))
        project.write("train.py", LARGE_ARTIFACT)  # a 1.5 MB artifact: over pyfirecrest's 1 MiB direct download
        project.commit("firecrest, no network on the nodes")
        project.mantik("apply", "--auto-approve", "--wait", env=environment, timeout=300)
        assert site.count("POST", "transfer-download") == 1  # the artifact, once; the journal's database directly
        assert "Nothing to sync" in project.mantik("sync", env=environment).stdout
    client = MlflowClient(server.url)
    (run,) = client.search_runs([client.get_experiment_by_name("fctest/sweep").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.metrics == {"score": 5.0}
    assert run.data.tags[Tag.TRACKING] == "offline" and run.data.tags[Tag.SYNC_COMPLETE] == "journal"
    assert "trained" in Path(client.download_artifacts(run.info.run_id, "mantik/output.log", str(tmp_path))).read_text()
    weights = Path(client.download_artifacts(run.info.run_id, "model/weights.bin", str(tmp_path)))
    assert weights.read_bytes() == random.Random(7).randbytes(1536 * 1024)


def ssh_host_on_this_shell():
    """An SSHHost whose commands run as the remote shell runs them (sshd hands the joined command line to the
    login shell), here by this machine's shell; ``exchanges`` counts them."""
    from mantik_spec.backends.ssh import SSHHost

    host = SSHHost.__new__(SSHHost)
    host.name = "login"
    host.exchanges = []  # type: ignore[attr-defined]

    def exchange(argv, data=None, timeout=None):
        host.exchanges.append(argv)  # type: ignore[attr-defined]
        done = subprocess.run(["sh", "-c", shlex.join(argv)], capture_output=True)
        return done.returncode, done.stdout, done.stderr.decode()

    host._exchange = exchange  # type: ignore[method-assign]
    return host


def test_a_journals_artifacts_are_listed_over_ssh_as_on_this_machine(tmp_path):
    """SSHHost lists a journal's files with one `find` on the login node."""
    root = tmp_path / "journal" / "artifacts"
    (root / "model" / "sub dir").mkdir(parents=True)
    (root / "model" / "sub dir" / "weights with space.bin").write_bytes(b"\0" * 10)
    (root / "mantik").mkdir()
    (root / "mantik" / "output.log").write_text("trained\n")
    (root / "model" / "secret").symlink_to(Path.home())  # a link is neither listed nor followed, by either
    (root / "model" / "key").symlink_to(root / "mantik" / "output.log")
    host = ssh_host_on_this_shell()
    expected = LocalHost().files_below(str(root))
    assert expected == [("mantik/output.log", 8), ("model/sub dir/weights with space.bin", 10)]
    assert host.files_below(str(root)) == expected
    assert host.files_below(str(tmp_path / "none")) == []


def test_a_journal_is_read_over_ssh_in_one_command_byte_for_byte(tmp_path):
    """The database, its rollback journal and the database again in one exchange: binary content (NUL bytes,
    newlines, invalid UTF-8), a file that is not there, a name with a space, as LocalHost reads them."""
    journal = tmp_path / "a journal"
    journal.mkdir()
    database = bytes(range(256)) * 3 + b"\n\n"
    (journal / runner.JOURNAL_DB).write_bytes(database)
    (journal / "empty").write_bytes(b"")
    host = ssh_host_on_this_shell()
    names = [runner.JOURNAL_DB, f"{runner.JOURNAL_DB}-journal", "empty", runner.JOURNAL_DB]
    read = HostJournal(host, str(journal)).read_together(names)
    assert read == [database, None, b"", database] == HostJournal(LocalHost(), str(journal)).read_together(names)
    assert len(host.exchanges) == 1
    assert read_snapshot(HostJournal(host, str(journal))) == (database, None) and len(host.exchanges) == 2


def test_a_login_shell_that_prints_is_an_error_not_journal_content(tmp_path):
    """A startup file printing on the login node (bash reads ~/.bashrc for sshd's commands) would prefix every
    file read: refused, so a journal is never taken for damaged because of it."""
    (tmp_path / runner.JOURNAL_DB).write_bytes(b"SQLite format 3\0")
    host = ssh_host_on_this_shell()
    run = host._exchange

    def chatty(argv, data=None, timeout=None):
        code, stdout, stderr = run(argv, data, timeout)
        return code, b"Welcome to the cluster\n" + stdout, stderr

    host._exchange = chatty  # type: ignore[method-assign]
    with pytest.raises(BackendError, match="startup files print nothing"):
        HostJournal(host, str(tmp_path)).read_together([runner.JOURNAL_DB, runner.JOURNAL_DB])


def test_a_journal_file_that_cannot_be_copied_on_the_login_node_is_an_error_not_no_journal(tmp_path):
    """A file that is there but cannot be copied (the login node's temporary space full, here a file size limit)
    is an error: taken for no file, a sync would mark an ended run's journal as never written, and never read it."""
    (tmp_path / runner.JOURNAL_DB).write_bytes(b"\0" * 300 * 1024)
    host = ssh_host_on_this_shell()
    run = host._exchange

    def limited(argv, data=None, timeout=None):
        return run(["sh", "-c", 'ulimit -f 64; exec "$@"', "sh", *argv], data, timeout)

    host._exchange = limited  # type: ignore[method-assign]
    with pytest.raises(BackendError, match=f"cannot copy {tmp_path}/{runner.JOURNAL_DB}"):
        HostJournal(host, str(tmp_path)).read_together([runner.JOURNAL_DB, f"{runner.JOURNAL_DB}-journal"])
    assert HostJournal(host, str(tmp_path)).read_together(["none"]) == [None]  # a file not there is none


# A script that logs offline what a user notices: a metric, and a binary file in a folder whose name has a space
# (listed by `find` and read by `tail` on the login node, as the remote shell parses their quoted arguments)
SSH_TRAIN = textwrap.dedent(
    """
    import sys
    import mlflow
    args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
    mlflow.log_metric("score", float(args["--lr"]) * 10)
    with open("weights 1.bin", "wb") as f:
        f.write(bytes(range(256)) * 4)  # not text: every byte value, NUL and invalid UTF-8 among them
    mlflow.log_artifact("weights 1.bin", "model files")
    print("trained")
    """
)
WEIGHTS = bytes(range(256)) * 4


@pytest.fixture
def offline_over_ssh(project, sshd, server, tmp_path):
    """A project on Slurm reached through the module's sshd, its jobs' python without any network."""
    sshd.record_host_key("hostkey")
    wrapper = python_without_network(tmp_path)
    project.workdir = tmp_path / "cluster workdir"
    spec = ssh_spec(sshd, project.workdir, lrs="[0.5]").replace("project: slurmtest\n", "project: sshtest\n")
    project.write("mantik.yaml", spec.replace(f"    python: {sys.executable}\n", f"    python: {wrapper}\n"))
    project.write("train.py", SSH_TRAIN)
    project.commit("slurm over ssh, no network on the nodes")
    project.env["MLFLOW_TRACKING_URI"] = server.url
    sshd.close_connection()  # counted from the first login on
    yield project
    sshd.close_connection()


def test_a_slurm_job_over_ssh_without_network_is_synced_over_one_login(offline_over_ssh, sshd, server, tmp_path):
    project = offline_over_ssh
    logins = sshd.logins()
    project.mantik("apply", "--auto-approve", "--wait", timeout=300)
    # submitting, polling and every sync pass of the wait went through one connection: a login per command or
    # per journal file read (the database, its rollback journal, the artifacts' listing, each artifact) breaks it
    assert sshd.logins() - logins == 1
    client = MlflowClient(server.url)
    (run,) = client.search_runs([client.get_experiment_by_name("sshtest/sweep").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.metrics == {"score": 5.0}
    assert run.data.tags[Tag.TRACKING] == "offline"  # auto: the probe found no route, the job chose its journal
    assert run.data.tags[Tag.SYNC_COMPLETE] == "journal"
    run_id = run.info.run_id
    assert "trained" in Path(client.download_artifacts(run_id, "mantik/output.log", str(tmp_path))).read_text()
    assert [a.path for a in client.list_artifacts(run_id, "model files")] == ["model files/weights 1.bin"]
    assert Path(client.download_artifacts(run_id, "model files/weights 1.bin", str(tmp_path))).read_bytes() == WEIGHTS
    logins, commands = sshd.logins(), sshd.commands()
    assert "Nothing to sync" in project.mantik("sync").stdout
    assert (sshd.logins(), sshd.commands()) == (logins, commands)  # a run synced whole is not read again


def test_a_damaged_journal_over_ssh_is_drift_with_its_reason(offline_over_ssh):
    project = offline_over_ssh
    project.write(
        "train.py", "import time\nopen('../journal/mlflow.db', 'wb').write(b'garbage' * 100)\ntime.sleep(60)\n"
    )
    project.commit("a job that damages its journal")
    project.mantik("apply", "--auto-approve")
    journals = project.workdir / "runs"
    project.wait_until(
        lambda: [p.read_bytes() for p in journals.glob("*/journal/mlflow.db")] == [b"garbage" * 100],
        timeout=120,
        message="a damaged journal",
    )
    try:
        planned = project.mantik("plan", "--json")
        assert "Traceback" not in planned.stderr
        (drift,) = [w for w in json.loads(planned.stdout)["warnings"] if w.startswith("drift:")]
        assert "not a readable database" in drift and "\n" not in drift
    finally:
        project.mantik("cancel", "sweep")


class ChangingJournal:
    """A journal whose job writes between any two reads: each read sees the files one transaction later."""

    def __init__(self):
        self.moment = 0

    def read_bytes(self, name: str) -> bytes | None:
        self.moment += 1
        return f"{name} at {self.moment}".encode()

    def read_together(self, names: list[str]) -> list[bytes | None]:
        return [self.read_bytes(name) for name in names]

    def files(self, directory: str) -> list[tuple[str, int]]:
        return []


def test_a_journal_changing_through_every_read_is_taken_with_the_rollback_journal_read_after_it():
    """sqlite writes a transaction's rollback journal before it touches the database, so a database with the
    rollback journal read after it is what a crash would leave; one read before it belongs to an older
    transaction, and rolling that back over a newer database mixes pages of two moments."""
    database, rollback = read_snapshot(ChangingJournal())
    moment = int(database.decode().rsplit(" ", 1)[1])
    assert database.startswith(b"mlflow.db at") and rollback == f"mlflow.db-journal at {moment + 1}".encode()


def test_a_running_jobs_journal_is_read_no_more_often_than_its_backend_allows_but_at_once_when_it_ended():
    """FirecREST reads a journal from 1 MiB on by a transfer job at the site: a loop polling every few seconds
    (status --watch, apply --wait) reads a running job's journal once a minute, and the ended job's at once."""
    from types import SimpleNamespace

    from mantik_spec.backends.firecrest import FirecrestBackend
    from mantik_spec.state.tags import decode_run
    from mantik_spec.vocab import JobState, JobStatus

    reads = []
    backend = SimpleNamespace(
        live_journal_interval=FirecrestBackend.live_journal_interval, journal=lambda run_id, job_id: reads.append(run_id)
    )
    project = SimpleNamespace(
        spec=SimpleNamespace(backends={"site": SimpleNamespace(tracking="auto")}),
        backend=lambda name: backend,
        journal_read_at={},
    )
    tags = {Tag.RUN_KEY: "k", Tag.BACKEND: "site", Tag.JOB_ID: "7", Tag.POINT: "e[0]"}
    run = decode_run(run_id="r1", experiment_id="1", status="RUNNING", tags=tags)
    running = {("site", "7"): JobStatus(JobState.RUNNING)}
    for _ in range(3):
        sync.sync_journals(project, [run], running)  # type: ignore[arg-type]
    assert reads == ["r1"]
    sync.sync_journals(project, [run], {("site", "7"): JobStatus(JobState.COMPLETED, 0)})  # type: ignore[arg-type]
    assert reads == ["r1", "r1"]


def test_a_journal_without_the_runners_end_is_final_only_once_its_run_was_closed_past_the_grace():
    from mantik_spec.state.journal import SyncResult
    from mantik_spec.state.tags import decode_run

    tags = {Tag.RUN_KEY: "k", Tag.BACKEND: "site", Tag.JOB_ID: "7", Tag.POINT: "e[0]"}
    closed_at = 1_700_000_000_000
    run = decode_run(run_id="r1", experiment_id="1", status="KILLED", tags=tags, end_time=closed_at)
    assert run is not None
    unended = SyncResult("r1")
    assert not sync._final(run, unended, now_ms=closed_at + sync.JOURNAL_GRACE_MS)  # a runner may still write
    assert sync._final(run, unended, now_ms=closed_at + sync.JOURNAL_GRACE_MS + 1)
    assert not sync._final(run, None, now_ms=closed_at + 1_000)  # no journal yet: the runner may be starting
    assert sync._final(run, SyncResult("r1", final=True), now_ms=closed_at)  # the runner's end is there
    still_open = decode_run(run_id="r1", experiment_id="1", status="RUNNING", tags=tags)
    assert still_open is not None and not sync._final(still_open, unended, now_ms=closed_at * 2)


def test_a_run_closed_while_its_job_still_runs_keeps_its_journal_read_until_the_scheduler_says_it_ended():
    """Anyone who can write to the tracking store can close a run; the journal of a job the scheduler still runs
    is not final, however long ago the record was closed."""
    from types import SimpleNamespace

    from mantik_spec.state.tags import decode_run
    from mantik_spec.vocab import JobState, JobStatus

    reads, marked = [], []
    backend = SimpleNamespace(live_journal_interval=0.0, journal=lambda run_id, job_id: reads.append(run_id))
    project = SimpleNamespace(
        spec=SimpleNamespace(backends={"site": SimpleNamespace(tracking="auto")}),
        backend=lambda name: backend,
        journal_read_at={},
        store=SimpleNamespace(set_tags=lambda run_id, tags: marked.append((run_id, tags))),
    )
    tags = {Tag.RUN_KEY: "k", Tag.BACKEND: "site", Tag.JOB_ID: "7", Tag.POINT: "e[0]", Tag.TRACKING: "offline"}
    closed_long_ago = decode_run(run_id="r1", experiment_id="1", status="KILLED", tags=tags, end_time=1_000)
    assert sync.closed(sync.candidates(project, [closed_long_ago])) == [closed_long_ago]  # asked of the scheduler
    sync.sync_journals(project, [closed_long_ago], {("site", "7"): JobStatus(JobState.RUNNING)})  # type: ignore[arg-type]
    assert reads == ["r1"] and marked == []
    sync.sync_journals(project, [closed_long_ago], {("site", "7"): JobStatus(JobState.CANCELLED)})  # type: ignore[arg-type]
    assert marked == [("r1", {Tag.SYNC_COMPLETE: "none"})]
