"""The guarantees users rely on when applies run from CI, several at once, on clusters that fail:
no run key is submitted twice, no run is lost, and every fault is one clear error that the next
apply repairs. Figures and the list of guarantees: docs/reliability.md."""

from __future__ import annotations

import subprocess
import time
from collections import Counter

import pytest

from .conftest import BASIC_SPEC, mantik_command
from .support.mlflow_server import running_server
from .support.specs import slurm_spec
from .support.trials import check_trials, runs_by_key

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture
def mlflow_server(tmp_path, store_template):
    with running_server(tmp_path, store_template) as server:
        yield server


def test_parallel_applies_sqlite_local(project):
    project.mantik("plan")  # the store exists, as after a first apply
    check_trials(project, BASIC_SPEC, f"sqlite:///{project.path / '.mantik' / 'mlflow.db'}")


def test_parallel_applies_mlflow_server_local(project, mlflow_server):
    env = {"MLFLOW_TRACKING_URI": mlflow_server.url}
    project.mantik("plan", env=env)
    check_trials(project, BASIC_SPEC, mlflow_server.url, env)


def test_parallel_applies_sqlite_slurm(project, slurm_cluster):
    project.mantik("plan")
    try:
        check_trials(project, slurm_spec(lrs="[0.1, 0.2, 0.3]"), f"sqlite:///{project.path / '.mantik' / 'mlflow.db'}")
    finally:
        project.mantik("cancel", "sweep", check=None)


def test_apply_crashed_between_array_batches_converges(project, slurm_cluster):
    spec = slurm_spec(lrs="[0.1, 0.2, 0.3, 0.4, 0.5]").replace(
        "    poll_interval:", "    max_array_size: 2\n    poll_interval:"
    )
    project.write("mantik.yaml", spec)
    project.commit("five points in arrays of two")
    crashed = project.mantik("apply", "--auto-approve", check=None, env={"MANTIK_TEST_CRASH_AT": "between-batches"})
    assert crashed.returncode == -9  # after the first array of two was queued
    plan = project.plan_json()
    reasons = [e["reason"] for e in plan["runs"]]
    # the queued array: adopted while queued, or already run (its runner closed the runs itself)
    queued = ("adopting it", "recording FINISHED", "a finished run has this key")
    assert sum(any(word in r for word in queued) for r in reasons) == 2, reasons
    assert sum("interrupted" in r for r in reasons) == 3, reasons  # never sent: closed and resubmitted
    project.mantik("apply", "--auto-approve", "--wait")
    project.wait_until(
        lambda: sorted(r.info.status for r in project.runs() if r.info.status == "FINISHED") == ["FINISHED"] * 5,
        timeout=180,
        message="five finished runs",
    )
    counts = Counter(r.data.tags["mantik.run_key"] for r in project.runs() if r.info.status == "FINISHED")
    assert len(counts) == 5 and set(counts.values()) == {1}
    assert "No changes" in project.mantik("plan").stdout


def test_mlflow_server_stopped_mid_apply_is_one_error_and_repaired(project, mlflow_server):
    env = {"MLFLOW_TRACKING_URI": mlflow_server.url}
    project.mantik("plan", env=env)
    pausing = subprocess.Popen(
        [*mantik_command(), "apply", "--auto-approve"],
        cwd=project.path,
        env={**project.env, **env, "MANTIK_TEST_PAUSE_AT": "after-intent:4"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(1.5)  # the first intent is recorded, the apply waits at the fault point
    mlflow_server.stop()
    out, err = pausing.communicate(timeout=300)
    assert pausing.returncode == 1, (out, err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "MLflow at http://127.0.0.1" in lines[0], err
    assert "Traceback" not in err
    mlflow_server.start()
    project.mantik("apply", "--auto-approve", "--wait", "--lock-timeout", "60s", env=env)
    counts = runs_by_key(mlflow_server.url)
    finished = runs_by_key(mlflow_server.url, "FINISHED")
    assert len(finished) == 2 and set(finished.values()) == {1}
    # besides the two runs, at most the interrupted intents (a server's are written side by side: both here)
    assert sum(counts.values()) <= 4
    assert "No changes" in project.mantik("plan", env=env).stdout


def test_slurm_controller_down_is_one_error_and_the_next_apply_repairs(project, private_slurm):
    # a controller of this test's own: stopping it takes nobody else's scheduler down
    project.env.update(private_slurm.env)
    spec = slurm_spec(lrs="[0.1, 0.2]", extra=", sleep: 15")
    project.write("mantik.yaml", spec)
    project.commit("two points that take a while")
    project.mantik("apply", "--auto-approve")
    private_slurm.stop_controller()
    try:
        status = project.mantik("status", check=1)
        errors = [line for line in status.stderr.splitlines() if line.strip()]
        assert len(errors) == 1 and errors[0].startswith("Error: backend cluster could not report on its jobs (")
        project.write("mantik.yaml", spec.replace("[0.1, 0.2]", "[0.1, 0.2, 0.3]"))
        project.commit("a third point while the controller is down")
        applied = project.mantik("apply", "--auto-approve", check=1, timeout=400)
        assert "Traceback" not in applied.stderr
        assert "backend cluster" in applied.stderr
    finally:
        private_slurm.start_controller()
        private_slurm.wait_until_up()
    project.mantik("apply", "--auto-approve", "--wait", "--lock-timeout", "60s", timeout=400)
    finished = Counter(r.data.tags["mantik.run_key"] for r in project.runs() if r.info.status == "FINISHED")
    assert len(finished) == 3 and set(finished.values()) == {1}
    assert "No changes" in project.mantik("plan").stdout
