"""End to end on the local backend: the installed `mantik` command, real git repos, a real sqlite MLflow store."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from mantik_spec.backends.local import LocalQueue

from .conftest import BASIC_SPEC, git, run_example, run_mantik_together

pytestmark = pytest.mark.e2e


def finished_statuses(project) -> list[str]:
    return sorted(run.info.status for run in project.runs())


def test_apply_runs_the_grid_then_second_apply_submits_nothing(project):
    result = project.mantik("-v", "apply", "--auto-approve", "--wait", env={"TEST_LOG_METRIC": "1"})
    assert "Plan: 2 to submit" in result.stdout
    # the intent record (create with tags, params, SCHEDULED) and the job id: MLflow's minimum for a run
    assert "recording 2 started run(s): 4.0 calls per run" in result.stderr
    assert finished_statuses(project) == ["FINISHED", "FINISHED"]

    runs = project.runs()
    commit = project.commit("nothing").strip()  # an empty commit: code paths unchanged
    for run in runs:
        tags = run.data.tags
        assert tags["mlflow.source.git.commit"] == tags["mantik.commit"]
        assert tags["mlflow.project.entryPoint"] == "train"
        assert tags["mlflow.project.backend"] == "local"
        assert tags["mlflow.runName"] == tags["mantik.point"]
        assert len(tags["mantik.run_key"]) == 64
        assert tags["mantik.exit_code"] == "0"
        assert run.data.params["lr"] in ("0.1", "0.2")
        assert run.data.metrics["score"] == pytest.approx(float(run.data.params["lr"]) * 10)
        assert "mantik" in [a.path for a in project.client().list_artifacts(run.info.run_id)]
    assert commit

    second = project.mantik("apply", "--auto-approve")
    assert "No changes. Runs match the spec." in second.stdout
    assert len(project.runs()) == 2
    project.mantik("plan", "--detailed-exitcode", check=0)


def test_new_grid_value_plans_exactly_the_new_point(project):
    project.mantik("apply", "--auto-approve", "--wait")
    project.write("mantik.yaml", BASIC_SPEC.replace("[0.1, 0.2]", "[0.1, 0.2, 0.3]"))
    project.commit("add a grid value")
    plan = project.plan_json()
    submits = [r for r in plan["runs"] if r["action"] == "submit"]
    assert [r["parameters"]["lr"] for r in submits] == [0.3]
    assert submits[0]["reason"] == "new run point"
    assert plan["summary"]["up_to_date"] == 2
    project.mantik("plan", "--detailed-exitcode", check=2)


def test_editing_only_the_spec_or_unrelated_files_keeps_runs_current(project):
    project.mantik("apply", "--auto-approve", "--wait")
    project.write("mantik.yaml", "# a comment\n" + BASIC_SPEC)
    project.write("README.md", "notes\n")
    project.commit("docs")
    assert "No changes" in project.mantik("plan", "--detailed-exitcode").stdout


def test_code_change_resubmits_with_the_changed_file_as_reason(project):
    project.mantik("apply", "--auto-approve", "--wait")
    project.write("train.py", (project.path / "train.py").read_text() + "\n# tuned\n")
    project.commit("tune")
    plan = project.plan_json()
    reasons = {r["reason"] for r in plan["runs"] if r["action"] == "submit"}
    head = git(project.path, "rev-parse", "--short=7", "HEAD").strip()
    assert len(reasons) == 1 and re.fullmatch(rf"code changed \(train\.py, [0-9a-f]{{7}}\.\.{head}\)", reasons.pop())


def test_uncommitted_code_is_refused_by_apply_and_warned_by_plan(project):
    project.write("train.py", (project.path / "train.py").read_text() + "\n# wip\n")
    plan = project.mantik("plan")
    assert "Warning: uncommitted changes in code, data or spec files (train.py)" in plan.stdout
    refused = project.mantik("apply", "--auto-approve", check=1)
    assert "uncommitted changes in code, data or spec files: train.py" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert project.runs() == []


def test_scratch_runs_the_working_tree_as_a_snapshot_and_committing_it_later_counts(project):
    (project.path / "README.md").write_text("stashed\n")
    git(project.path, "stash", "push", "-u", "-q")
    edited = (project.path / "train.py").read_text() + "\nprint('scratch edit')\n"
    project.write("train.py", edited)
    project.write("helper.py", "# untracked, inside code.paths\n")
    git(project.path, "add", "helper.py")
    project.write("helper.py", "# untracked, inside code.paths\n# and changed again\n")

    def repository_state():
        return [git(project.path, *args) for args in (["status", "--porcelain"], ["rev-parse", "HEAD"], ["stash", "list"])]

    before = repository_state()
    refused = project.mantik("apply", "--auto-approve", check=1)
    assert "--scratch" in refused.stderr and "Traceback" not in refused.stderr
    assert "--scratch" in project.mantik("plan").stdout
    planned = project.mantik("plan", "--scratch")
    assert "Plan: 2 to submit" in planned.stdout and "scratch" in planned.stdout
    project.mantik("apply", "--scratch", "--auto-approve", "--wait")
    assert repository_state() == before
    assert finished_statuses(project) == ["FINISHED", "FINISHED"]

    snapshot = project.runs()[0].data.tags["mantik.commit"]
    assert git(project.path, "for-each-ref", "--format=%(refname)", "refs/mantik/scratch").split() == [
        f"refs/mantik/scratch/{snapshot}"
    ]
    assert git(project.path, "rev-parse", f"{snapshot}^").strip() == before[1].strip()
    assert git(project.path, "show", f"{snapshot}:helper.py").endswith("changed again\n")
    for run in project.runs():
        assert run.data.tags["mantik.scratch"] == f"refs/mantik/scratch/{snapshot}"
        assert run.data.tags["mlflow.source.git.commit"] == snapshot
    job_dirs = list((project.path / ".mantik" / "local" / "local" / "jobs").iterdir())
    assert all("scratch edit" in (job / "output.log").read_text() for job in job_dirs)
    assert all((job / "work" / "helper.py").exists() for job in job_dirs)
    # a kept snapshot on the checked-out history can be reproduced
    project.mantik("reproduce", project.runs()[0].info.run_id)
    assert len(project.runs()) == 3

    project.commit("the change tried as a scratch run")
    plan = project.mantik("plan", "--detailed-exitcode", check=0)
    assert "No changes" in plan.stdout and "scratch snapshot" in plan.stdout
    assert git(project.path, "stash", "list") == before[2]
    project.write("NOTES.md", "outside code.paths\n")  # no code changed: no snapshot, and the plan says why
    plan = project.mantik("plan", "--scratch", "--detailed-exitcode", check=0)
    assert "no snapshot, as only files outside the code changed (NOTES.md)" in plan.stdout


def test_the_committed_tree_runs_not_the_working_directory(project):
    project.write("train.py", "import sys\nprint('committed')\n")
    project.write("mantik.yaml", BASIC_SPEC.replace("[0.1, 0.2]", "0.1"))
    project.commit("simple")
    (project.path / "untracked.txt").write_text("not committed\n")  # outside code.paths: allowed
    project.mantik("apply", "--auto-approve", "--wait")
    job_dirs = list((project.path / ".mantik" / "local" / "local" / "jobs").iterdir())
    assert len(job_dirs) == 1
    assert not (job_dirs[0] / "work" / "untracked.txt").exists()
    assert "committed" in (job_dirs[0] / "output.log").read_text()


def test_shell_metacharacters_in_parameters_stay_literal(project, tmp_path):
    target = tmp_path / "pwned"
    spec = BASIC_SPEC.replace("lr: float", "lr: string").replace("[0.1, 0.2]", json.dumps(f"1; touch {target}"))
    project.write("mantik.yaml", spec)
    project.commit("hostile value")
    project.mantik("apply", "--auto-approve", "--wait")
    assert not target.exists()
    started = [e for e in project.events() if e["event"] == "start"]
    assert started[0]["args"]["--lr"] == f"1; touch {target}"


def test_failed_run_is_retried_then_reported(project):
    """`apply --wait` spends the retries itself, as Slurm's requeue would; then the point is reported failed."""
    spec = BASIC_SPEC.replace("{lr: [0.1, 0.2]}", "{lr: 0.1, fail: true}\n    retries: 1")
    project.write("mantik.yaml", spec)
    project.commit("failing")
    first = project.mantik("apply", "--auto-approve", "--wait", check=1)
    assert "Retrying 1 failed run(s): sweep[" in first.stdout and "attempt 2 of 2" in first.stdout
    assert "1 run(s) did not finish successfully" in first.stderr
    final = project.mantik("plan", "--detailed-exitcode", check=0)
    assert "Failed, no retries left" in final.stdout
    assert sorted(r.data.tags["mantik.attempt"] for r in project.runs()) == ["1", "2"]
    assert {r.data.tags["mantik.exit_code"] for r in project.runs()} == {"3"}


def test_wait_retries_a_flaky_run_until_it_finishes(project):
    """A run that fails once (a node hiccup) and then succeeds: one `apply --wait`, exit 0."""
    marker = project.path.parent / "failed-once"
    project.write(
        "train.py",
        f"""
        import pathlib, sys
        marker = pathlib.Path({str(marker)!r})
        if not marker.exists():
            marker.write_text("x")
            sys.exit("first attempt: the node went away")
        print("trained")
        """,
    )
    project.write("mantik.yaml", BASIC_SPEC.replace("{lr: [0.1, 0.2]}", "{lr: 0.1}\n    retries: 2"))
    project.commit("flaky")
    result = project.mantik("apply", "--auto-approve", "--wait")
    assert "Retrying 1 failed run(s)" in result.stdout
    statuses = sorted((r.data.tags["mantik.attempt"], r.info.status) for r in project.runs())
    assert statuses == [("1", "FAILED"), ("2", "FINISHED")]
    assert "No changes" in project.mantik("plan").stdout


def test_max_parallel_holds_after_the_cli_exits(project):
    spec = BASIC_SPEC.replace("max_parallel: 4", "max_parallel: 2").replace(
        "{lr: [0.1, 0.2]}", "{lr: [0.1, 0.2, 0.3, 0.4, 0.5], sleep: 1.5}"
    )
    project.write("mantik.yaml", spec)
    project.commit("five slow runs")
    project.mantik("apply", "--auto-approve")  # returns at once; the scheduler goes on without it
    project.wait_until(lambda: len([e for e in project.events() if e["event"] == "end"]) == 5, message="5 runs")
    timeline = sorted((e["t"], 1 if e["event"] == "start" else -1) for e in project.events())
    running, peak = 0, 0
    for _, delta in timeline:
        running += delta
        peak = max(peak, running)
    assert peak == 2
    project.wait_until(lambda: finished_statuses(project) == ["FINISHED"] * 5, message="runs closed in MLflow")


def test_a_run_still_running_leaves_the_queue_to_the_next_scheduler(project):
    """Runs are forked from the scheduler: one still running after its scheduler left must hold none of the
    scheduler's state (its lock above all), or the next apply's runs would wait forever."""
    project.write("mantik.yaml", BASIC_SPEC.replace("{lr: [0.1, 0.2]}", "{lr: [0.1], sleep: 60}"))
    project.commit("one long run")
    project.mantik("apply", "--auto-approve")
    project.wait_until(lambda: project.events(), message="the long run to start")
    state = project.path / ".mantik" / "local" / "local"
    project.wait_until(lambda: not LocalQueue(state).scheduler_alive(), message="its scheduler to leave")
    runner = int(next(state.glob("jobs/*/pid")).read_text().split()[0])
    assert os.getsid(runner) == runner  # a session of its own, as a started process would have
    # none of the scheduler's files: a scheduler killed while holding its lock would leave it held by the run
    held = {os.path.realpath(f"/proc/{runner}/fd/{fd}") for fd in os.listdir(f"/proc/{runner}/fd")}
    assert not {str(state / "scheduler.lock"), str(state / "scheduler.log")} & held, held
    project.write("mantik.yaml", BASIC_SPEC.replace("{lr: [0.1, 0.2]}", "{lr: [0.1, 0.2], sleep: 60}"))
    project.commit("a second point")
    project.mantik("apply", "--auto-approve")
    project.wait_until(lambda: len(project.events()) == 2, timeout=60, message="the second run to start")
    assert project.mantik("cancel", "sweep").returncode == 0


def test_a_run_forked_by_a_scheduler_that_dies_at_once_still_runs(project):
    """The scheduler killed after forking a run and writing its pid file, before telling it to start: the run
    starts all the same (nothing of the scheduler's may keep it waiting) and ends FINISHED."""
    project.write("mantik.yaml", BASIC_SPEC.replace("{lr: [0.1, 0.2]}", "{lr: [0.1]}"))
    project.commit("one run")
    project.mantik("apply", "--auto-approve", env={"MANTIK_TEST_CRASH_AT": "scheduler-before-go"})
    project.wait_until(lambda: finished_statuses(project) == ["FINISHED"], timeout=60, message="the run to finish")


def test_a_scheduler_that_finds_the_queue_served_leaves_without_importing_mlflow(tmp_path):
    """Every submitting apply starts a scheduler; one that gets the lock after the previous one started every
    queued run has nothing to do and must not spend seconds importing mlflow first."""
    queue = LocalQueue(tmp_path / "state")
    queue.create()
    code = (
        "import sys\nfrom mantik_spec.backends import local_scheduler\n"
        "print(local_scheduler.main(sys.argv[1]), 'mlflow' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code, str(queue.state_dir)], capture_output=True, text=True)
    assert done.stdout.split() == ["0", "False"], done.stderr


@pytest.mark.parametrize(
    ("tracking_uri", "python", "imported"),
    [
        ("sqlite:////nowhere/mlflow.db", None, True),
        ("http://127.0.0.1:9", None, False),
        ("sqlite:///x.db", "py", False),
    ],
)
def test_the_scheduler_imports_the_store_its_forked_runners_record_to(tmp_path, tracking_uri, python, imported):
    """SQLAlchemy's store (≈1.2 CPU-seconds of imports) once in the scheduler, not in every forked runner; not
    at all for runs that record to a server or run on another interpreter (they are not forked)."""
    queue = LocalQueue(tmp_path / "state")
    queue.create()
    queue.job_dir("r1").mkdir(parents=True)
    job = {"tracking_uri": tracking_uri, "python": python}
    (queue.job_dir("r1") / "job.json").write_text(json.dumps(job))
    code = (
        "import sys\nfrom mantik_spec.backends import local_scheduler as s\n"
        "s.preload(s.Scheduler(s.Path(sys.argv[1])).forked_tracking_uris(['r1']))\n"
        "print('mlflow.store.tracking.sqlalchemy_store' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code, str(queue.state_dir)], capture_output=True, text=True)
    assert done.stdout.split() == [str(imported)], done.stderr


@pytest.mark.parametrize("pause_at", ["scheduler-before-pid-file", "scheduler-before-go"])
def test_a_cancel_while_a_run_is_being_started_stops_it_before_its_command(project, pause_at):
    """The cancel comes after the scheduler forked the run, before (nothing to signal yet: the runner reads the
    cancel file first) or after its pid file is written (the run's group is signalled): the command never runs
    and the run ends KILLED."""
    project.write("mantik.yaml", BASIC_SPEC.replace("{lr: [0.1, 0.2]}", "{lr: [0.1]}"))
    project.commit("one run")
    project.mantik("apply", "--auto-approve", env={"MANTIK_TEST_PAUSE_AT": f"{pause_at}:5"})
    active = project.path / ".mantik" / "local" / "local" / "active"
    project.wait_until(lambda: list(active.iterdir()), message="the scheduler to take the run")
    project.mantik("cancel", "sweep")
    project.wait_until(lambda: finished_statuses(project) == ["KILLED"], timeout=60, message="the run to be killed")
    assert not project.events()  # the command never started


def test_killed_process_is_repaired_and_resubmitted(project):
    spec = BASIC_SPEC.replace("{lr: [0.1, 0.2]}", "{lr: 0.1, sleep: 60}\n    retries: 1")
    project.write("mantik.yaml", spec)
    project.commit("slow")
    project.mantik("apply", "--auto-approve")
    pid_files = lambda: list((project.path / ".mantik" / "local" / "local" / "jobs").glob("*/pid"))  # noqa: E731
    project.wait_until(lambda: pid_files() and project.events(), message="the run to start")
    pid = int(pid_files()[0].read_text().split()[0])
    os.killpg(pid, 9)  # the runner and the command die without a word to MLflow
    project.wait_until(lambda: "ended LOST" in project.mantik("plan").stdout, message="the plan to see the loss")
    plan = project.plan_json()
    assert [r["action"] for r in plan["runs"]] == ["repair"]
    assert "retrying (attempt 2)" in plan["runs"][0]["reason"]
    project.mantik("apply", "--auto-approve")
    statuses = {r.data.tags["mantik.attempt"]: r.info.status for r in project.runs()}
    assert statuses["1"] == "FAILED"
    assert statuses["2"] in ("SCHEDULED", "RUNNING")


def test_prune_cancels_runs_no_longer_declared(project):
    spec = BASIC_SPEC.replace("{lr: [0.1, 0.2]}", "{lr: [0.1, 0.2], sleep: 60}")
    project.write("mantik.yaml", spec)
    project.commit("slow")
    project.mantik("apply", "--auto-approve")
    project.write("mantik.yaml", spec.replace("[0.1, 0.2]", "[0.1]"))
    project.commit("drop a point")
    plan = project.plan_json("--prune")
    assert sorted(r["action"] for r in plan["runs"]) == ["cancel", "running"]
    assert "No changes" in project.mantik("plan").stdout  # without --prune nothing is cancelled
    project.mantik("apply", "--auto-approve", "--prune")
    by_lr = {r.data.params["lr"]: r for r in project.runs()}
    assert by_lr["0.2"].info.status == "KILLED"
    job_dir = project.path / ".mantik" / "local" / "local" / "jobs" / by_lr["0.2"].info.run_id
    project.wait_until(lambda: (job_dir / "exit_code").exists() or not (job_dir / "pid").exists(), message="the kill")


def test_saved_plan_is_applied_exactly_and_refused_when_stale(project):
    plan_file = project.path.parent / "plan.json"
    project.mantik("plan", "--out", str(plan_file))
    project.write("mantik.yaml", BASIC_SPEC.replace("[0.1, 0.2]", "[0.1, 0.2, 0.3]"))
    stale = project.mantik("apply", str(plan_file), check=1)
    assert "stale: mantik.yaml changed" in stale.stderr
    project.write("mantik.yaml", BASIC_SPEC)
    project.commit("other commit")
    stale = project.mantik("apply", str(plan_file), check=1)
    assert "stale: it was made at commit" in stale.stderr
    project.mantik("plan", "--out", str(plan_file))
    applied = project.mantik("apply", str(plan_file))  # a saved plan needs no confirmation
    assert "Apply complete: 2 run(s) started." in applied.stdout
    stale = project.mantik("apply", str(plan_file), check=1)
    assert "the recorded runs or jobs changed" in stale.stderr


def test_apply_asks_for_confirmation_and_does_nothing_without_it(project):
    refused = project.mantik("apply", check=2)  # no terminal, no --auto-approve
    assert "--auto-approve" in refused.stderr
    assert project.runs() == []


def test_status_shows_every_declared_run(project):
    before = project.status_json()
    assert [row["state"] for row in before] == ["not submitted", "not submitted"]
    project.mantik("apply", "--auto-approve", "--wait", env={"TEST_LOG_METRIC": "1"})
    rows = project.status_json()
    assert [row["state"] for row in rows] == ["finished", "finished"]
    assert sorted(row["metrics"]["score"] for row in rows) == pytest.approx([1.0, 2.0])
    table = project.mantik("status").stdout.splitlines()
    assert table[0].split()[:2] == ["lr", "state"]  # the parameter that tells the points apart, not the ids
    assert [line.split()[:2] for line in table[1:]] == [["0.1", "finished"], ["0.2", "finished"]]
    # the runner recorded when each job started: the time since submission splits into queued and ran
    heads = table[0].split()
    assert heads[heads.index("age") + 1 : heads.index("age") + 3] == ["queued", "ran"]
    for row in rows:
        assert row["started_ms"] <= row["job_started_ms"] <= row["ended_ms"]
    shown = project.mantik("show", "sweep").stdout.splitlines()
    heads = shown[0].split()
    assert heads[heads.index("state") + 1 : heads.index("state") + 3] == ["queued", "ran"]


def test_markdown_plan_for_pull_requests(project):
    markdown = project.mantik("plan", "--format", "markdown").stdout
    assert markdown.startswith("### mantik plan")
    assert "| `+` | submit | `sweep[fail=False,lr=0.1,sleep=0.0]` | local | new run point |" in markdown


def test_parallel_applies_submit_each_run_key_once(project):
    spec = BASIC_SPEC.replace("{lr: [0.1, 0.2]}", "{lr: [0.1, 0.2, 0.3, 0.4]}")
    project.write("mantik.yaml", spec)
    project.commit("four points")
    project.mantik("plan")  # creates the store up front, as an earlier apply would have
    results = run_mantik_together(
        [["apply", "--auto-approve", "--lock-timeout", "120s"]] * 4, project.path, project.env
    )
    outputs = [(r.stdout, r.stderr) for r in results]
    assert [r.returncode for r in results] == [0, 0, 0, 0], outputs
    keys = [r.data.tags["mantik.run_key"] for r in project.runs()]
    assert len(keys) == 4 and len(set(keys)) == 4
    started = sum("Apply complete: 4 run(s) started." in out for out, _ in outputs)
    assert started == 1


@pytest.mark.parametrize("crash_at", ["after-intent", "before-submit", "after-submit", "after-job-recorded"])
def test_apply_killed_mid_submission_converges_without_duplicates(project, crash_at):
    spec = BASIC_SPEC.replace("{lr: [0.1, 0.2]}", "{lr: [0.1, 0.2, 0.3]}")
    project.write("mantik.yaml", spec)
    project.commit("three points")
    # records written side by side (as on a tracking server): the kill comes while others are under way
    crashing = {"MANTIK_TEST_CRASH_AT": crash_at, "MANTIK_TRACKING_THREADS": "3"}
    crashed = project.mantik("apply", "--auto-approve", check=None, env=crashing)
    assert crashed.returncode == -9
    # the lock of the dead apply is broken automatically: same host, process gone
    project.mantik("apply", "--auto-approve", "--wait")
    project.wait_until(
        lambda: all(r.info.status == "FINISHED" or r.data.tags.get("mantik.failure") for r in project.runs()),
        message="every run to settle",
    )
    finished = [r for r in project.runs() if r.info.status == "FINISHED"]
    assert sorted(r.data.params["lr"] for r in finished) == ["0.1", "0.2", "0.3"]
    started = [e for e in project.events() if e["event"] == "start"]
    assert len(started) == 3, "a run key was executed twice"
    assert "No changes" in project.mantik("plan").stdout


def test_force_unlock_releases_a_lock_held_elsewhere(project):
    project.mantik("plan")
    from mantik_spec.state.lock import lock_name

    client = project.client()
    client.create_registered_model(
        lock_name("demo"),
        tags={"lock_id": "L1", "host": "ci-runner-7", "pid": "1", "who": "ci", "operation": "apply", "created": "then"},
    )
    locked = project.mantik("apply", "--auto-approve", "--lock-timeout", "1s", check=1)
    assert "the project is locked (ID L1, held by ci@ci-runner-7" in locked.stderr
    wrong = project.mantik("force-unlock", "nope", check=1)
    assert "lock ID does not match" in wrong.stderr
    project.mantik("force-unlock", "L1")
    project.mantik("apply", "--auto-approve")


def test_not_a_git_repository_is_one_clear_line(tmp_path):
    from .conftest import Project

    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "mantik.yaml").write_text(BASIC_SPEC)
    result = Project(plain).mantik("plan", check=1)
    assert result.stderr.strip().splitlines() == [f"Error: {plain} is not inside a git repository (run `git init`)"]


def test_quickstart_example_runs_to_finished(tmp_path):
    result = run_example("quickstart", tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "No changes. Runs match the spec." in result.stdout


def test_a_password_in_the_tracking_uri_is_refused(project):
    refused = project.mantik("plan", check=1, env={"MLFLOW_TRACKING_URI": "https://me:secret@mlflow.example.org"})
    assert refused.stderr.strip() == (
        "Error: the tracking URI carries a password: set MLFLOW_TRACKING_USERNAME/_PASSWORD instead"
    )
    assert "secret" not in refused.stderr.replace("carries a password", "")


def test_credentials_from_the_environment_are_written_nowhere(project, tmp_path):
    secret = "s3cr3t-token-value-4711"
    project.write(
        "mantik.yaml",
        BASIC_SPEC.replace(
            "code: {paths: [train.py]}", "code: {paths: [train.py]}\ntracking: {token_env: MANTIK_TRACKING_TOKEN}"
        ).replace("{lr: [0.1, 0.2]}", "{lr: [0.1, 0.2], fail: true}"),
    )
    project.commit("token from the environment")
    env = {"MANTIK_TRACKING_TOKEN": secret}
    plan_file = tmp_path / "plan.json"
    outputs = [project.mantik("plan", "--out", str(plan_file), env=env)]
    outputs.append(project.mantik("apply", "--auto-approve", "--wait", check=1, env=env))  # the runs fail
    outputs.append(project.mantik("status", env=env))
    outputs.append(project.mantik("logs", project.runs()[0].info.run_id, env=env))
    outputs.append(project.mantik("-v", "apply", "--auto-approve", check=None, env=env))
    for result in outputs:
        assert secret not in result.stdout + result.stderr
    for path in [plan_file, *(p for p in (project.path / ".mantik").rglob("*") if p.is_file())]:
        assert secret.encode() not in path.read_bytes(), f"the credential leaked into {path}"
    for run in project.runs():
        assert secret not in repr(run.data.tags) + repr(run.data.params)


def test_apply_wait_follows_a_run_the_command_ended_itself_to_how_its_job_ended(project):
    """MLflow's fluent API ends the run FINISHED when the command's Python exits or calls end_run; the job
    may still fail after that. `apply --wait` reports how the job ended, with the runner's exit code."""
    project.write(
        "train.py",
        """
        import sys, time
        import mlflow
        mlflow.log_metric("score", 1.0)
        mlflow.end_run()  # FINISHED in MLflow, from the command itself
        time.sleep(2)
        sys.exit(3)
        """,
    )
    project.commit("a command that ends its run, then fails")
    result = project.mantik("apply", "--auto-approve", "--wait", check=1)
    assert "2 run(s) did not finish successfully" in result.stderr
    for run in project.runs():
        assert (run.info.status, run.data.tags["mantik.exit_code"]) == ("FAILED", "3")
        assert "mantik" in [a.path for a in project.client().list_artifacts(run.info.run_id)]


def test_mantik_cancel_the_backend_refuses_leaves_the_runs_running(project):
    """`mantik cancel` writes why before it signals; when the backend cannot cancel, that is taken back and
    the runs stay as they were (the same for apply --prune: tests/test_house.py)."""
    from mantik_spec.backends.base import BackendError
    from mantik_spec.operations.control import cancel
    from mantik_spec.operations.project import open_project

    project.write("mantik.yaml", BASIC_SPEC.replace("{lr: [0.1, 0.2]}", "{lr: [0.1, 0.2], sleep: 60}"))
    project.commit("slow")
    project.mantik("apply", "--auto-approve")
    opened = open_project(project.path)

    def refuse(job_ids):
        raise BackendError("could not signal the jobs: Operation not permitted")

    opened.backend("local").cancel = refuse
    with pytest.raises(BackendError, match="left running as they were"):
        cancel(opened, ["sweep"])
    for run in project.runs():
        assert run.info.status in ("SCHEDULED", "RUNNING")
        assert not {"mantik.failure", "mantik.failure_kind"} & set(run.data.tags)
    project.mantik("cancel", "sweep")  # the real cancel still works, and stops the jobs
    assert {r.info.status for r in project.runs()} == {"KILLED"}


def test_the_command_and_pre_run_lines_run_under_bash_as_mlflow_run_runs_them(project):
    """`source`, `[[ ]]` and arrays (bash, not POSIX sh, which is dash on Debian and Ubuntu): MLflow runs an
    entry point with `bash -c`, and MLprojects written for it rely on that."""
    project.write("env.sh", "export FROM_ENV_SH=yes\n")
    project.write(
        "mantik.yaml",
        BASIC_SPEC.replace("code: {paths: [train.py]}", "code: {paths: [train.py, env.sh]}")
        .replace(
            "command: python train.py",
            'command: source env.sh && [[ "$FROM_ENV_SH" == yes ]] && words=(a b) && [[ $words == a ]] '
            "&& python train.py",
        )
        .replace(
            "backends:",
            "environments:\n  bashy:\n    pre_run: ['[[ -n \"$BASH_VERSION\" ]] || exit 7']\nbackends:",
        )
        .replace("parameters: {lr: [0.1, 0.2]}", "parameters: {lr: [0.1]}\n    environment: bashy"),
    )
    project.commit("bash in the command and a pre-run line")
    project.mantik("apply", "--auto-approve", "--wait")
    assert finished_statuses(project) == ["FINISHED"]


def test_apply_wait_after_ctrl_c_follows_the_runs_still_going(project):
    """`apply --wait` stopped with Ctrl-C leaves its runs running; `apply --wait` again has nothing to submit
    and follows them to their end instead of leaving at once."""
    project.write(
        "mantik.yaml", BASIC_SPEC.replace("parameters: {lr: [0.1, 0.2]}", "parameters: {lr: [0.1, 0.2], sleep: [4]}")
    )
    project.commit("runs that take a while")
    project.mantik("apply", "--auto-approve")  # as if --wait had been interrupted right after the start
    again = project.mantik("apply", "--auto-approve", "--wait")
    assert "No changes" in again.stdout and "Following 2 run(s) started earlier and still running." in again.stdout
    assert finished_statuses(project) == ["FINISHED", "FINISHED"]  # followed to their end, not left at once
    assert (
        "Following" not in project.mantik("apply", "--auto-approve", "--wait").stdout
    )  # nothing live: nothing to follow


def test_a_run_record_naming_a_path_as_its_job_never_signals_what_the_path_holds(project, tmp_path):
    """Another user of this machine can plant a directory holding a pid file, and anyone who can write to the
    tracking store can name it as a run's job: `mantik cancel` stops only runs of this project's own queue."""
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)
    try:
        planted = tmp_path / "planted"
        planted.mkdir()
        start = open(f"/proc/{bystander.pid}/stat").read().rsplit(")", 1)[1].split()[19]
        (planted / "pid").write_text(f"{bystander.pid} {start}\n")
        project.write(
            "mantik.yaml", BASIC_SPEC.replace("parameters: {lr: [0.1, 0.2]}", "parameters: {lr: [0.1], sleep: [60]}")
        )
        project.commit("a long run")
        project.mantik("apply", "--auto-approve")
        [run] = project.runs()
        jobs = project.path / ".mantik" / "local" / "local" / "jobs"
        project.client().set_tag(run.info.run_id, "mantik.job_id", os.path.relpath(planted, jobs))
        refused = project.mantik("cancel", "sweep", check=1)
        assert "is not a run of this queue: left alone" in refused.stderr
        assert bystander.poll() is None  # still running
    finally:
        bystander.kill()
        bystander.wait()


def test_reproduce_runs_what_the_commit_declares_never_a_records_command(project):
    """Anyone who can write to the tracking store can add a record for a point with its own command and an
    honestly computed key: `mantik reproduce` rebuilds the run from mantik.yaml at the recorded commit, and
    refuses a record that disagrees with it, so the forged command never runs."""
    import json

    from mantik_spec.reconcile.identity import Identity

    project.mantik("apply", "--auto-approve", "--wait")
    genuine = project.runs()[0]
    tags = dict(genuine.data.tags)
    command = "touch FORGED; " + tags["mantik.command"]
    identity = Identity(
        command=command,
        parameters=json.loads(tags["mantik.parameters"]),
        seed=None,
        code=tags["mantik.code"],
        data=json.loads(tags["mantik.data"]),
        environment=tags.get("mantik.environment", ""),
    )
    tags |= {"mantik.command": command, "mantik.run_key": identity.key, "mantik.attempt": "9"}
    client = project.client()
    forged = client.create_run(genuine.info.experiment_id, tags=tags)
    client.set_terminated(forged.info.run_id, "FINISHED")
    refused = project.mantik("reproduce", forged.info.run_id, check=1)
    assert "is not what commit" in refused.stderr and "not re-created" in refused.stderr
    reproduced = project.mantik("reproduce", genuine.info.run_id)
    assert "reproducing " + genuine.info.run_id in reproduced.stdout
    project.mantik("apply", "--auto-approve", "--wait")  # let the reproduction finish
    assert not list(project.path.rglob("FORGED")) and not list((project.path / ".mantik").rglob("FORGED"))


def test_status_of_one_experiment_shows_its_rows_only(project):
    project.write("mantik.yaml", BASIC_SPEC + "  other:\n    extends: sweep\n    parameters: {lr: [0.5]}\n")
    project.commit("two experiments")
    rows = json.loads(project.mantik("status", "other", "--json").stdout)
    assert [row["point_id"] for row in rows] == ["other[fail=False,lr=0.5,sleep=0.0]"]
    assert len(project.status_json()) == 3
    unknown = project.mantik("status", "nope", check=1)
    assert unknown.stderr == "Error: no experiment 'nope' in mantik.yaml (declared: other, sweep)\n"


def test_reproduce_refuses_a_commit_outside_the_checked_out_history(project):
    """A record may name any commit in the repository, a fetched pull request's too: only commits of the
    checked-out branch's history are reproduced."""
    git(project.path, "checkout", "-q", "-b", "their-branch")
    project.write("train.py", project.path.joinpath("train.py").read_text() + "\n# theirs\n")
    project.commit("a change on another branch")
    project.mantik("apply", "--auto-approve", "--wait")
    theirs = project.runs()[0].info.run_id
    git(project.path, "checkout", "-q", "main")
    refused = project.mantik("reproduce", theirs, check=1)
    assert "not in the history of the checked-out branch" in refused.stderr
    git(project.path, "merge", "-q", "--ff-only", "their-branch")
    assert "reproducing " + theirs in project.mantik("reproduce", theirs).stdout


def test_fixing_a_failing_pre_run_line_runs_the_failed_point_again(project):
    """The environment's definition is not part of the run key (the result does not depend on how a module is
    loaded), but a failed point tries again once it changed: no `--replace` needed after fixing a setup line."""
    broken = BASIC_SPEC.replace("backends:", "environments:\n  env:\n    pre_run: ['exit 3']\nbackends:").replace(
        "parameters: {lr: [0.1, 0.2]}", "parameters: {lr: [0.1]}\n    environment: env"
    )
    project.write("mantik.yaml", broken)
    project.commit("a pre-run line that fails")
    project.mantik("apply", "--auto-approve", "--wait", check=1)
    assert "no retries left" in project.mantik("plan").stdout
    project.write("mantik.yaml", broken.replace("pre_run: ['exit 3']", "pre_run: ['true']"))
    project.commit("the pre-run line fixed")
    plan = project.plan_json()
    [entry] = plan["runs"]
    assert entry["action"] == "retry" and entry["reason"].startswith("environment or backend setup changed")
    project.mantik("apply", "--auto-approve", "--wait")
    assert sorted(r.info.status for r in project.runs()) == ["FAILED", "FINISHED"]
    assert "No changes" in project.mantik("plan").stdout
