"""The local tracking store in bad states: first use by several commands at once, a command killed while
the store is created, and a damaged, read-only, full or other-MLflow-version store. Every verb either works
or stops before acting, with one line saying what is wrong and what to do, and writes nothing."""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from .conftest import EXEC_EACH, mantik_command, run_mantik_together
from .zygote import Zygote

pytestmark = pytest.mark.e2e

TRIALS = int(os.environ.get("MANTIK_STORE_TRIALS", "3"))
PARALLEL = 8


def store_of(project) -> Path:
    return project.path / ".mantik" / "mlflow.db"


def start(project, *args: str, prefix: list[str] = ()) -> subprocess.Popen:
    return subprocess.Popen(
        [*prefix, *mantik_command(), *args],
        cwd=project.path,
        env=project.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen, timeout: float = 300) -> subprocess.CompletedProcess:
    stdout, stderr = process.communicate(timeout=timeout)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def assert_one_line(result: subprocess.CompletedProcess, *expected: str) -> str:
    """Exit 1 with exactly one line on stderr, an ``Error:`` containing each of ``expected``."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 1, (result.args, result.returncode, result.stdout, result.stderr)
    assert len(lines) == 1 and lines[0].startswith("Error: "), (result.args, result.stderr)
    for text in expected:
        assert text in lines[0], (text, lines[0])
    return lines[0]


def test_first_use_by_parallel_commands_creates_one_working_store(project):
    """Eight commands started together on a project with no store yet (CI jobs on one workspace)."""
    for trial in range(TRIALS):
        shutil.rmtree(project.path / ".mantik", ignore_errors=True)
        verbs = [["plan"], ["status"], ["apply", "--auto-approve", "--lock-timeout", "600s"]] * 3
        results = run_mantik_together(verbs[:PARALLEL], project.path, project.env, timeout=300)
        for result in results:
            assert result.returncode == 0, (trial, result.args, result.stderr)
            assert "Traceback" not in result.stderr and "Error" not in result.stderr, (trial, result.stderr)
        keys = [r.data.tags["mantik.run_key"] for r in project.runs()]
        assert len(keys) == 2 and len(set(keys)) == 2, (trial, keys)  # each point once, whoever won the lock
        project.mantik("plan")


def test_first_command_killed_while_creating_the_store_leaves_none_half_built(project):
    """SIGKILL the first command of a project at random moments of store creation; the next one works."""
    rng = random.Random(13)
    for trial in range(max(TRIALS * 2, 6)):
        shutil.rmtree(project.path / ".mantik", ignore_errors=True)
        process = start(project, "plan")
        time.sleep(rng.uniform(0.3, 3.5))  # importing, then MLflow's table creation (≈1.5 s on these machines)
        process.send_signal(signal.SIGKILL)
        process.communicate()
        result = project.mantik("plan", check=None)
        assert result.returncode == 0 and "Traceback" not in result.stderr, (trial, result.stderr)
        assert "2 to submit" in result.stdout
        assert not list((project.path / ".mantik").glob(".mlflow.db.building-*"))


def half_built_store(database: Path) -> None:
    """What MLflow leaves when killed during its table creation: some tables, no schema version (in place of
    the migrated store the project fixture copies in)."""
    database.parent.mkdir(parents=True, exist_ok=True)
    database.unlink(missing_ok=True)
    script = (
        "import sqlalchemy, sys\n"
        "from mlflow.store.tracking.dbmodels.initial_models import Base as InitialBase\n"
        "InitialBase.metadata.create_all(sqlalchemy.create_engine(sys.argv[1]))\n"
    )
    python = Path(mantik_command()[0]).parent / "python"
    subprocess.run([str(python), "-c", script, f"sqlite:///{database}"], check=True)


def test_a_half_built_store_without_runs_is_rebuilt_with_one_line(project):
    half_built_store(store_of(project))
    result = project.mantik("plan")
    notes = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(notes) == 1 and "left incomplete" in notes[0] and "rebuilt" in notes[0], result.stderr
    assert "2 to submit" in result.stdout
    assert not project.mantik("plan").stderr.strip()


# a store in a bad state: every verb ---------------------------------------------------------------


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def applied_project(project) -> str:
    """A project with its two runs finished; returns one run id (for logs and explain)."""
    project.mantik("apply", "--auto-approve")
    project.wait_until(lambda: all(r.info.status == "FINISHED" for r in project.runs()) and len(project.runs()) == 2)
    return project.runs()[0].info.run_id


def verbs(run_id: str) -> dict[str, tuple[str, ...]]:
    return {
        "plan": ("plan",),
        "apply": ("apply", "--auto-approve"),
        "status": ("status",),
        "cancel": ("cancel", "sweep"),
        "logs": ("logs", run_id),
        "explain": ("explain", run_id),
        "show": ("show", "sweep"),
    }


def state_files(project) -> dict[str, str]:
    return {
        str(path.relative_to(project.path)): digest(path)
        for path in sorted((project.path / ".mantik").rglob("*"))
        if path.is_file() and path.name != "mlflow.db.lock"
    }


def every_verb_stops(project, run_id: str, *expected: str) -> None:
    before = state_files(project)
    result = project.mantik("validate")  # needs no store
    for verb, args in verbs(run_id).items():
        result = project.mantik(*args, check=None)
        line = assert_one_line(result, *expected)
        assert "Traceback" not in result.stdout, (verb, result.stdout)
        assert state_files(project) == before, (verb, line)


def test_a_damaged_store_stops_every_verb_in_one_line(project):
    run_id = applied_project(project)
    database = store_of(project)
    with open(database, "r+b") as store:  # the header overwritten: not a database any more
        store.write(b"this is no sqlite file")
    every_verb_stops(project, run_id, "damaged", "restore it from a backup")


def test_a_store_of_an_older_mlflow_is_not_migrated_behind_the_users_back(project):
    run_id = applied_project(project)
    from alembic.script import ScriptDirectory
    from mlflow.store.db.utils import _get_alembic_config

    script = ScriptDirectory.from_config(_get_alembic_config(db_url=""))
    older = script.get_revision(script.get_current_head()).down_revision
    with sqlite3.connect(store_of(project)) as connection:
        connection.execute("UPDATE alembic_version SET version_num = ?", (older,))
    connection.close()
    every_verb_stops(project, run_id, "older MLflow", "mlflow db upgrade")


def test_a_store_of_a_newer_mlflow_is_refused(project):
    run_id = applied_project(project)
    with sqlite3.connect(store_of(project)) as connection:
        connection.execute("UPDATE alembic_version SET version_num = 'f00dfeedbeef'")
    connection.close()
    every_verb_stops(project, run_id, "newer MLflow", "f00dfeedbeef")


@contextmanager
def in_mount_namespace(script: str):
    """``mantik(project, *args) -> CompletedProcess``, running each command in one private mount namespace set
    up by ``script`` (root only): commands forked from a zygote started in it, or with ``MANTIK_TEST_EXEC=1``
    the console script, each in a namespace of its own."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and unshare to mount a read-only or full filesystem privately")
    prefix = ["unshare", "--mount", "--propagation", "private", "sh", "-ec", f'{script}\nexec "$@"', "sh"]
    if EXEC_EACH:
        yield lambda project, *args: finish(start(project, *args, prefix=prefix))
        return
    directory = Path(tempfile.mkdtemp(prefix="mantik-zygote-"))
    zygote = Zygote(directory, prefix=tuple(prefix))
    try:
        yield lambda project, *args: zygote.run([*mantik_command(), *args], project.path, project.env, None, 300)
    finally:
        zygote.stop()
        shutil.rmtree(directory, ignore_errors=True)


def test_a_read_only_store_reads_and_refuses_writes_in_one_line(project):
    run_id = applied_project(project)
    state = project.path / ".mantik"
    before = state_files(project)
    with in_mount_namespace(f"mount --bind '{state}' '{state}'; mount -o remount,bind,ro '{state}'") as mantik:
        for verb, args in verbs(run_id).items():
            result = mantik(project, *args)
            if verb in ("apply", "cancel"):
                assert_one_line(result, "read-only")
            else:
                assert result.returncode == 0 and not result.stderr.strip(), (verb, result.stderr)
            assert state_files(project) == before, verb


def test_a_full_disk_refuses_writes_in_one_line(project):
    run_id = applied_project(project)
    # a change to apply: a new point
    project.write("mantik.yaml", (project.path / "mantik.yaml").read_text().replace("[0.1, 0.2]", "[0.1, 0.2, 0.3]"))
    project.commit("a third point")
    state = project.path / ".mantik"
    size_kb = sum(p.stat().st_size for p in state.rglob("*") if p.is_file()) // 1024 + 512
    full_copy = (
        f"tar -C '{state}' -cf /tmp/mantik-state-$$.tar .; mount -t tmpfs -o size={size_kb}k tmpfs '{state}'; "
        f"tar -C '{state}' -xf /tmp/mantik-state-$$.tar; rm /tmp/mantik-state-$$.tar; "
        f"dd if=/dev/zero of='{state}/filler' bs=4k 2>/dev/null || true"
    )
    with in_mount_namespace(full_copy) as mantik:
        result = mantik(project, "apply", "--auto-approve")
        assert_one_line(result, "full")
        assert len(project.runs()) == 2  # the real store (under the tmpfs) is untouched; nothing was submitted
        for verb in ("plan", "status", "show"):  # on the same full disk, after the apply that failed on it
            result = mantik(project, *verbs(run_id)[verb])
            assert result.returncode == 0 and "Traceback" not in result.stderr, (verb, result.stderr)


# what observation must see -----------------------------------------------------------------------


def test_a_finished_run_whose_key_was_edited_is_not_counted_as_a_result(project):
    project.write("mantik.yaml", (project.path / "mantik.yaml").read_text().replace("[0.1, 0.2]", "[0.1]"))
    project.commit("one point")
    applied = applied_once(project)
    project.write("mantik.yaml", (project.path / "mantik.yaml").read_text().replace("[0.1]", "[0.1, 0.2]"))
    project.commit("two points")
    second = next(e for e in project.plan_json()["runs"] if e["parameters"]["lr"] == 0.2)
    project.client().set_tag(applied, "mantik.run_key", second["run_key"])  # claims the point that never ran
    plan = project.plan_json()
    assert sorted(e["action"] for e in plan["runs"]) == ["submit", "submit"], plan["runs"]
    assert any(applied in w and "not counted as a result" in w for w in plan["warnings"]), plan["warnings"]
    project.mantik("apply", "--auto-approve")
    project.wait_until(lambda: len([e for e in project.events() if e["event"] == "end"]) == 3, message="both runs")
    assert len([e for e in project.events() if e["event"] == "start"]) == 3
    assert "No changes" in project.mantik("plan").stdout


def applied_once(project) -> str:
    project.mantik("apply", "--auto-approve")
    project.wait_until(lambda: [r.info.status for r in project.runs()] == ["FINISHED"], message="the run to finish")
    return project.runs()[0].info.run_id


def test_a_run_deleted_while_its_job_runs_is_seen_and_cancelled_never_submitted_twice(project):
    spec = (project.path / "mantik.yaml").read_text().replace("{lr: [0.1, 0.2]}", "{lr: [0.1], sleep: [300]}")
    project.write("mantik.yaml", spec)
    project.commit("a long run")
    project.mantik("apply", "--auto-approve")
    project.wait_until(lambda: [e for e in project.events() if e["event"] == "start"], message="the job to start")
    run_id = project.runs()[0].info.run_id
    project.client().delete_run(run_id)
    plan = project.plan_json()
    assert [e["action"] for e in plan["runs"]] == ["running"], plan["runs"]
    assert any(run_id in w and "deleted in MLflow" in w for w in plan["warnings"]), plan["warnings"]
    project.mantik("apply", "--auto-approve")
    assert len([e for e in project.events() if e["event"] == "start"]) == 1  # no second job
    assert any(s["run_id"] == run_id for s in project.status_json())
    project.mantik("cancel", "sweep")
    from mlflow.entities import ViewType

    client = project.client()
    pid = int(next((project.path / ".mantik" / "local").glob("*/jobs/*/pid")).read_text().split()[0])
    project.wait_until(lambda: not Path(f"/proc/{pid}").exists() or _zombie(pid), message="the job to stop")
    # once the runner has closed it too (it restores the run for its last updates, as cancel does)
    run = client.get_run(run_id)
    assert (run.info.status, run.info.lifecycle_stage) == ("KILLED", "deleted")
    assert client.search_runs([run.info.experiment_id], run_view_type=ViewType.ALL)[0].info.run_id == run_id


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True
