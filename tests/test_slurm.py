"""The Slurm backend against a real single-node Slurm that the test run starts itself (conftest.SlurmCluster)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import TRAIN_SCRIPT, Project, git, run_example
from .support.slurm import (
    slurm,  # noqa: F401  (the autouse fixture: CI fails without Slurm, elsewhere skips)
    squeue_state,
)
from .support.specs import slurm_spec

pytestmark = pytest.mark.e2e


def use(project, spec: str) -> None:
    project.write("mantik.yaml", spec)
    project.commit("slurm spec")


def test_grid_runs_as_one_job_array_to_finished(project):
    use(project, slurm_spec())
    applied = project.mantik("-v", "apply", "--auto-approve", "--wait", env={"TEST_LOG_METRIC": "1"})
    [calls] = [line for line in applied.stderr.splitlines() if line.startswith("backend cluster scheduler calls:")]
    assert " 1 sbatch" in calls  # the whole grid in one submission (sacct, squeue, sshare: what was asked after)
    runs = project.runs()
    assert sorted(r.info.status for r in runs) == ["FINISHED"] * 3
    job_ids = sorted(r.data.tags["mantik.job_id"] for r in runs)
    base = job_ids[0].split("_")[0]
    assert job_ids == [f"{base}_0", f"{base}_1", f"{base}_2"]
    assert sorted(r.data.metrics["score"] for r in runs) == pytest.approx([1.0, 2.0, 3.0])
    assert "No changes" in project.mantik("apply", "--auto-approve").stdout

    run_id = runs[0].info.run_id
    assert "trained" in project.mantik("logs", run_id).stdout
    batches = list((project.path / ".mantik" / "slurm" / "batches").iterdir())
    assert len(batches) == 1
    script = (batches[0] / "script.sh").read_text()
    assert "#SBATCH --array=0-2" in script and "#SBATCH --job-name=mantik-" in script


def test_arrays_are_split_at_max_array_size(project):
    use(
        project,
        slurm_spec(lrs="[0.1, 0.2, 0.3, 0.4, 0.5]").replace(
            "poll_interval: 0.5s", "poll_interval: 0.5s\n    max_array_size: 2"
        ),
    )
    applied = project.mantik("-v", "apply", "--auto-approve", "--wait")
    assert "3 sbatch" in applied.stderr
    assert sorted(r.info.status for r in project.runs()) == ["FINISHED"] * 5


def test_job_cancelled_outside_the_tool_is_repaired_and_retried(project):
    use(project, slurm_spec(lrs="0.1", extra=", sleep: 120", retries=1))
    project.mantik("apply", "--auto-approve")
    job_id = project.runs()[0].data.tags["mantik.job_id"]
    project.wait_until(lambda: squeue_state(job_id) == "RUNNING", message="the job to run")
    subprocess.run(["scancel", job_id], check=True)
    project.wait_until(lambda: squeue_state(job_id) in ("CANCELLED", ""), message="the cancel")
    project.wait_until(lambda: "ended CANCELLED" in project.mantik("plan").stdout, message="the plan to see the cancel")
    plan = project.plan_json()
    # "repair" when the plan sees the job gone while the run is open, "retry" when the runner closed the run on
    # the signal first; either way the reason says what Slurm says, and the second attempt is submitted
    assert [(r["action"], r["attempt"]) for r in plan["runs"]] in ([("repair", 2)], [("retry", 2)])
    assert "ended CANCELLED" in plan["runs"][0]["reason"]
    project.mantik("apply", "--auto-approve")
    by_attempt = {r.data.tags["mantik.attempt"]: r for r in project.runs()}
    assert by_attempt["1"].info.status == "KILLED"
    failure = by_attempt["1"].data.tags["mantik.failure"]
    assert "ended CANCELLED" in failure or failure == "stopped by a signal (SIGTERM)"
    assert by_attempt["1"].data.tags["mantik.failure_kind"] in ("signalled", "cancelled")
    assert by_attempt["2"].info.status in ("SCHEDULED", "RUNNING")

    cancelled = project.mantik("-v", "cancel", "sweep")
    assert "Cancelled 1 run(s)." in cancelled.stdout and "1 scancel" in cancelled.stderr
    assert project.client().get_run(by_attempt["2"].info.run_id).info.status == "KILLED"


def test_time_limit_is_reported_as_timeout(project):
    use(project, slurm_spec(lrs="0.1", extra=", sleep: 300", time="0:05"))
    project.mantik("apply", "--auto-approve")
    # Slurm rounds the limit up to a minute and sends SIGTERM: the runner closes the run, Slurm says why.
    # Waited for in squeue (a plan a moment costs a CPU the other tests need), then in the plan
    job_id = project.runs()[0].data.tags["mantik.job_id"]
    project.wait_until(lambda: squeue_state(job_id) in ("TIMEOUT", ""), timeout=150, message="the time limit")
    project.wait_until(lambda: "ended TIMEOUT" in project.mantik("plan").stdout, timeout=60, message="TIMEOUT")
    plan = project.plan_json()
    assert plan["runs"][0]["action"] == "failed"
    assert "ended TIMEOUT" in plan["runs"][0]["reason"]
    run = project.runs()[0]
    assert run.info.status == "KILLED"
    assert run.data.tags["mantik.failure"] == "stopped by a signal (SIGTERM)"


def test_bad_partition_is_one_clear_line_and_spends_no_retry(project):
    use(project, slurm_spec(partition="nosuchpartition"))
    refused = project.mantik("apply", "--auto-approve", check=1)
    assert refused.stderr.strip().splitlines() == [
        "Error: backend cluster: experiment sweep: sbatch refused the job: Invalid partition name specified"
    ]
    assert sorted(r.info.status for r in project.runs()) == ["FAILED"] * 3
    use(project, slurm_spec())  # the partition is not part of the run key: the same runs, now accepted
    plan = project.plan_json()
    assert [(r["action"], r["attempt"]) for r in plan["runs"]] == [("retry", 1)] * 3
    project.mantik("apply", "--auto-approve", "--wait")
    assert sorted(r.info.status for r in project.runs()).count("FINISHED") == 3


def test_invalid_slurm_sizes_and_times_fail_validation(project):
    project.write("mantik.yaml", slurm_spec(time="1d").replace("mem: 200M", "mem: 64 GB"))
    result = project.mantik("validate", check=1)
    lines = result.stderr.strip().splitlines()
    assert any("backends.cluster.resources.mem: '64 GB' is not a size" in line for line in lines)
    assert any("backends.cluster.resources.time: '1d' is not a Slurm time" in line for line in lines)


def test_crash_between_sbatch_and_recording_adopts_the_job(project):
    use(project, slurm_spec())
    crashed = project.mantik("apply", "--auto-approve", check=None, env={"MANTIK_TEST_CRASH_AT": "after-submit"})
    assert crashed.returncode == -9
    assert all("mantik.job_id" not in r.data.tags for r in project.runs())
    plan = project.plan_json()
    # the queued array: adopted while queued, or already run (its runner closed the runs itself)
    queued = ("adopting it", "recording FINISHED", "a finished run has this key")
    assert all(any(word in r["reason"] for word in queued) for r in plan["runs"]), plan["runs"]
    applied = project.mantik("-v", "apply", "--auto-approve", "--wait")
    assert "sbatch" not in applied.stderr
    project.wait_until(lambda: sorted(r.info.status for r in project.runs()) == ["FINISHED"] * 3, message="finish")
    assert len(list((project.path / ".mantik" / "slurm" / "batches").iterdir())) == 1
    assert "No changes" in project.mantik("plan").stdout


def test_status_polls_slurm_once_for_all_live_jobs(project):
    use(project, slurm_spec(lrs="[0.1, 0.2, 0.3, 0.4]", extra=", sleep: 30"))
    project.mantik("apply", "--auto-approve")
    status = project.mantik("-v", "status", "--json")
    rows = json.loads(status.stdout)
    assert {row["state"] for row in rows} <= {"pending", "running"}
    assert "backend cluster scheduler calls: 1 squeue" in status.stderr
    project.mantik("cancel", "sweep")


def test_slurm_example_runs_to_finished(tmp_path):
    result = run_example("slurm", tmp_path, {"MANTIK_VENV": str(Path(sys.executable).parent.parent)})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "No changes. Runs match the spec." in result.stdout
    assert "finished" in result.stdout


def sbatch_shim(directory: Path, submit: bool) -> dict:
    """An `sbatch` first on PATH that answers like one whose controller timed out on the reply: it
    queues the job through the real sbatch (or not) and then fails as sbatch does. The environment to use."""
    directory.mkdir()
    real = shutil.which("sbatch")
    (directory / "sbatch").write_text(
        "#!/bin/bash\n"
        + (f'"{real}" "$@" > /dev/null || exit\n' if submit else "")
        + 'echo "sbatch: error: Batch job submission failed: Socket timed out on send/recv operation" >&2\n'
        + "exit 1\n"
    )
    (directory / "sbatch").chmod(0o755)
    return {"PATH": f"{directory}{os.pathsep}{os.environ['PATH']}"}


def jobs_per_key(project) -> dict[str, set[str]]:
    keys: dict[str, set[str]] = {}
    for run in project.runs():
        job_id = run.data.tags.get("mantik.job_id")
        keys.setdefault(run.data.tags["mantik.run_key"], set()).update([job_id] if job_id else [])
    return keys


def queued_batches(project) -> list[str]:
    """The jobs Slurm knows for this project's batches, found by their batch script: ``NAME|ARRAY_JOB_ID``,
    one entry per submitted array."""
    batches = (project.path / ".mantik" / "slurm" / "batches").resolve()
    listing = subprocess.run(["squeue", "-h", "-t", "all", "-o", "%j|%F|%o"], capture_output=True, text=True).stdout
    rows = [line.rsplit("|", 1) for line in listing.splitlines()]
    return sorted({job for job, script in rows if Path(script).resolve().parent.parent == batches})


def test_sbatch_failing_after_the_controller_queued_the_job_runs_each_key_once(project, tmp_path):
    use(project, slurm_spec())
    shimmed = sbatch_shim(tmp_path / "shim", submit=True)
    applied = project.mantik("apply", "--auto-approve", env=shimmed)  # found by its batch script: accepted
    assert len({r.data.tags.get("mantik.job_id") for r in project.runs()}) == 3
    project.mantik("plan")
    again = project.mantik("-v", "apply", "--auto-approve", "--wait", env=shimmed)
    assert "sbatch" not in again.stderr, applied.stderr + again.stderr
    project.wait_until(lambda: sorted(r.info.status for r in project.runs()) == ["FINISHED"] * 3, message="finish")
    assert [len(jobs) for jobs in jobs_per_key(project).values()] == [1, 1, 1]
    assert len(project.runs()) == 3 and [job.split("|")[0] for job in queued_batches(project)] == ["mantik-sweep"]


def test_sbatch_failing_before_anything_was_queued_leaves_the_runs_open(project, tmp_path):
    use(project, slurm_spec())
    failed = project.mantik("apply", "--auto-approve", env=sbatch_shim(tmp_path / "shim", submit=False), check=1)
    assert "Socket timed out on send/recv operation" in failed.stderr
    assert "3 run(s) may have been submitted: the next plan adopts or resubmits them" in failed.stderr
    assert sorted(r.info.status for r in project.runs()) == ["SCHEDULED"] * 3  # not recorded as refused
    project.mantik("plan")
    project.mantik("apply", "--auto-approve", "--wait")
    project.wait_until(
        lambda: sorted(r.info.status for r in project.runs()).count("FINISHED") == 3, message="the runs to finish"
    )
    assert [len(jobs) for jobs in jobs_per_key(project).values()] == [1, 1, 1]
    assert len(queued_batches(project)) == 1


def test_odd_paths_and_a_committed_job_json_run_each_point_as_declared(tmp_path):
    """A project path with spaces and double quotes, a workdir with a single quote (MLflow's sqlite store
    cannot live under one), and a committed top-level file named like one of mantik's own."""
    path = tmp_path / 'a "lab" dir'
    path.mkdir()
    workdir = tmp_path / "it's the cluster's %j"
    git(path, "init", "-q", "-b", "main")
    odd = Project(path)
    odd.write("train.py", TRAIN_SCRIPT)
    odd.write("job.json", '{"mine": true}\n')
    spec = slurm_spec().replace("code: {paths: [train.py]}", "code: {paths: [train.py, job.json]}")
    spec = spec.replace("command: python train.py", "command: cat job.json && python train.py")
    anchor = "    poll_interval: 0.5s\n"
    use(odd, spec.replace(anchor, f"{anchor}    workdir: {json.dumps(str(workdir))}\n"))
    odd.mantik("apply", "--auto-approve", "--wait", env={"TEST_LOG_METRIC": "1"})
    runs = odd.runs()
    assert sorted(r.info.status for r in runs) == ["FINISHED"] * 3
    assert sorted(r.data.metrics["score"] for r in runs) == pytest.approx([1.0, 2.0, 3.0])  # each point its own
    for run in runs:
        assert '{"mine": true}' in odd.mantik("logs", run.info.run_id).stdout
    assert (path / "job.json").read_text() == '{"mine": true}\n'
    batch = next((workdir / "batches").iterdir())
    assert list(batch.glob("slurm-*.out"))  # sbatch took the quoted --output path as it is, % and all


def test_pending_task_cancelled_outside_mantik_says_its_code_never_ran(project):
    spec = slurm_spec(lrs="[0.1, 0.2]")
    use(project, spec.replace("    poll_interval: 0.5s\n", "    poll_interval: 0.5s\n    sbatch_args: [--hold]\n"))
    # variables in the user's shell that sbatch/squeue take over the batch script's lines: none may rename the
    # job, replace its array, drop its environment, or send it to a cluster or partition the spec did not name
    elsewhere = {name: "elsewhere" for name in ("SLURM_CLUSTERS", "SBATCH_CLUSTERS", "SQUEUE_CLUSTERS")}
    elsewhere |= {
        "SBATCH_JOB_NAME": "mine",
        "SBATCH_ARRAY_INX": "0-9",
        "SBATCH_EXPORT": "NONE",
        "SBATCH_PARTITION": "nosuchpartition",
    }
    project.mantik("apply", "--auto-approve", env=elsewhere)
    held, other = sorted(r.data.tags["mantik.job_id"] for r in project.runs())
    try:
        assert squeue_state(held) == "PENDING"
        subprocess.run(["scancel", held], check=True)  # gone from squeue at once; no accounting here
        plan = json.loads(project.mantik("plan", "--json", env=elsewhere).stdout)
        by_job = {r["job_id"]: r for r in plan["runs"]}
        assert by_job[other]["action"] == "running"
        reason = by_job[held]["reason"]
        assert f"job {held} ended LOST" in reason and "never ran" in reason and "no accounting" in reason
    finally:
        subprocess.run(["scancel", other.split("_")[0]], check=False)


def test_logs_show_slurms_output_when_the_runner_never_started(project):
    """A job whose Python is missing never reaches the runner: `mantik logs` shows why, from slurm-*.out."""
    use(project, slurm_spec(lrs="[0.1]").replace(f"python: {sys.executable}", "python: /nonexistent/bin/python3"))
    project.mantik("apply", "--auto-approve", "--wait", check=1, timeout=300)
    point = project.status_json()[0]["point_id"]
    shown = project.mantik("logs", point).stdout
    assert shown.startswith("[the run's own log is empty; Slurm's output of job "), shown
    assert "/nonexistent/bin/python3" in shown, shown


def test_a_run_record_naming_someone_elses_job_never_cancels_it(project):
    """Anyone who can write to the tracking store can write a run record naming any job id: neither
    `apply --prune` nor `mantik cancel` stops a job the queue does not show running one of this project's
    batches (here the same user's own job, submitted by hand)."""
    use(project, slurm_spec(lrs="[0.1, 0.2]"))
    project.mantik("apply", "--auto-approve", "--wait")
    submitted = subprocess.run(
        ["sbatch", "--parsable", "--job-name=mantik-sweep", "--wrap", "sleep 300"],
        cwd=project.path.parent,
        capture_output=True,
        text=True,
        check=True,
    )
    other = submitted.stdout.strip().split(";")[0]
    try:
        assert wait_for_state(other, "RUNNING")
        client = project.client()
        forged = next(r for r in project.runs() if r.data.params["lr"] == "0.2")
        client.update_run(forged.info.run_id, status="RUNNING")
        client.set_tag(forged.info.run_id, "mantik.job_id", other)
        use(project, slurm_spec(lrs="[0.1]"))  # the forged run's point is no longer declared: prune would cancel it
        pruned = project.mantik("apply", "--auto-approve", "--prune", check=1)
        cancelled = project.mantik("cancel", "sweep", check=1)
        for result in (pruned, cancelled):
            assert f"job {other} is not a batch of this project" in result.stderr, result.stderr
        assert squeue_state(other) == "RUNNING"
    finally:
        subprocess.run(["scancel", other], check=False)  # our own job, started above


def wait_for_state(job_id: str, state: str, seconds: float = 60) -> bool:
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if squeue_state(job_id) == state:
            return True
        time.sleep(0.3)
    return False


def test_cost_budget_too_small_refuses_apply_with_nothing_submitted(project):
    """6 points x 1 node x 2h = 12 node-hours (the test Slurm has one node): a budget of 10 is refused before
    anything is written, 20 submits, and the runs' recorded node-hours count against the next plan."""
    six = "[0.1, 0.2, 0.3, 0.4, 0.5, 0.6]"
    use(project, slurm_spec(lrs=six, time="2:00:00") + "budget: {node_hours: 10}\n")
    over = "budget of the project: 0 node-hours used + 12 planned > 10"
    planned = project.mantik("plan").stdout
    assert f"Warning: {over}: apply will refuse" in planned
    assert "Cost: 12 node-hours (cluster: 6 runs x 1 node x 2h; core-hours 12)" in planned
    # sbatch --test-only, once for the backend's shape: an estimate, and nothing queued by it
    assert re.search(r"^Start: cluster about \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d \(the scheduler's estimate\)$", planned, re.M), planned
    refused = project.mantik("apply", "--auto-approve", check=1)
    assert refused.stderr.strip().splitlines() == [f"Error: {over}"]
    assert project.runs() == [] and queued_batches(project) == []
    assert not (project.path / ".mantik" / "slurm" / "batches").exists()

    use(project, slurm_spec(lrs=six, time="2:00:00") + "budget: {node_hours: 20}\n")
    project.mantik("apply", "--auto-approve", "--wait")
    runs = project.runs()
    assert sorted(r.info.status for r in runs) == ["FINISHED"] * 6
    assert {r.data.tags["mantik.cost.node_hours"] for r in runs} == {"2.0"}
    # this Slurm keeps no accounting (sacct fails): --wait records each ended run at its limit, so labelled
    used = {(r.data.tags["mantik.cost.used_node_hours"], r.data.tags["mantik.cost.used_source"]) for r in runs}
    assert used == {("2", "limit")}

    seven = six.replace("]", ", 0.7]")
    use(
        project,
        slurm_spec(lrs=seven, time="2:00:00").replace(
            "    poll_interval", "    budget: {node_hours: 13}\n    poll_interval"
        ),
    )
    assert project.plan_json()["cost"]["by_backend"]["cluster"]["used_node_hours_at_most"] == 12
    refused = project.mantik("apply", "--auto-approve", check=1)
    assert refused.stderr.strip().splitlines() == [
        "Error: budget of backend cluster: 12 node-hours used (at most) + 2 planned > 13"
    ]
    assert len(project.runs()) == 6
    assert "Allocation:" not in project.mantik("plan").stdout  # sshare has nothing to say here: left out


def test_runs_signed_on_slurm_count_as_results_and_no_job_file_holds_the_key(project):
    """The runner signs its run's end with the secret sealed in job.json and the seal sbatch passed in the job's
    environment (state.provenance): the runs count under the project's key, which no file of theirs holds."""
    key = "a-team-key-from-the-ci-secret-store"
    project.env["MANTIK_SIGNING_KEY"] = key
    use(project, slurm_spec())
    project.mantik("apply", "--auto-approve", "--wait")
    assert all(r.data.tags.get("mantik.end_signature") for r in project.runs())
    assert "No changes" in project.mantik("plan", "--detailed-exitcode", check=0).stdout
    files = [p for p in (project.path / ".mantik" / "slurm").rglob("*") if p.is_file()]
    assert files and not any(key.encode() in p.read_bytes() for p in files)


def test_a_relative_venv_is_the_projects_on_the_compute_node(project):
    """`venv: .venv` names the project's venv: the job, which runs in its own directory of the staged tree,
    activates it from there (the command runs in it), not a `.venv` of its own directory."""
    spec = slurm_spec(lrs="0.1").replace("    type: slurm\n", "    type: slurm\n    environment: py\n")
    use(project, spec + "environments:\n  py: {venv: .venv}\n")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(project.path / ".venv")], check=True)
    project.mantik("apply", "--auto-approve", "--wait")
    [run] = project.runs()
    assert run.info.status == "FINISHED", project.mantik("logs", run.info.run_id).stdout
    [batch] = list((project.path / ".mantik" / "slurm" / "batches").iterdir())
    job = json.loads(next((project.path / ".mantik" / "slurm" / "runs").glob("*/job.json")).read_text())
    assert f". {project.path / '.venv' / 'bin' / 'activate'}" in job["command"], (batch, job["command"])
