"""Fitting the user's day: pre-commit, `mantik init`, the generated CI steps run for real."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .conftest import BASIC_SPEC, ROOT, Project, git, mantik_command

pytestmark = pytest.mark.e2e

MLPROJECT = """\
name: elastic net
entry_points:
  main:
    parameters:
      alpha: {type: float, default: 0.5}
      l1_ratio: float
    command: >
      python train.py --alpha {alpha}
      --l1 {l1_ratio}
"""


@pytest.fixture
def repo(tmp_path) -> Project:
    path = tmp_path / "work"
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    return Project(path)


def test_init_from_an_mlproject_writes_a_spec_that_validates(repo):
    repo.write("MLproject", MLPROJECT)
    out = repo.mantik("init", "--from-mlproject", "MLproject").stdout
    assert "wrote" in out and "mantik.yaml" in out
    spec = yaml.safe_load((repo.path / "mantik.yaml").read_text())
    assert spec["mlproject"] == "MLproject" and "entry_points" not in spec  # read unchanged, not copied
    assert spec["experiments"]["main"]["parameters"] == {"l1_ratio": [0.01]}  # the one without a default
    assert (repo.path / "mantik.yaml").read_text().startswith("# yaml-language-server: $schema=")
    repo.mantik("validate")
    assert ".mantik/" in (repo.path / ".gitignore").read_text().splitlines()


MANTIK_BACKEND_CONFIG = """\
UnicoreApiUrl: https://zam2125.zam.kfa-juelich.de:9112/JUWELS/rest/core
Resources: {Queue: booster, Runtime: 2h, Nodes: 1, MemoryPerNode: 64G}
Environment:
  Python: /p/project/demo/venv
  Modules: [Stages/2024, Python]
"""


def test_init_from_a_mantik_project_runs_it_on_its_unicore_site(repo, tmp_path):
    repo.write("MLproject", MLPROJECT)
    repo.write("compute-backend-config.yaml", MANTIK_BACKEND_CONFIG)
    repo.mantik("init", "--from-mlproject", "MLproject", "--backend-config", "compute-backend-config.yaml")
    spec = yaml.safe_load((repo.path / "mantik.yaml").read_text())
    assert spec["backends"]["hpc"] == {"type": "unicore", "config": "compute-backend-config.yaml"}
    assert spec["experiments"]["main"]["backend"] == "hpc"
    repo.mantik("validate")
    repo.commit("adopt mantik")
    explained = repo.mantik("explain", "main[alpha=0.5,l1_ratio=0.01]").stdout
    assert "modules:Stages/2024,Python" in explained  # the config's Environment enters the run key

    outside = tmp_path / "elsewhere.yaml"
    outside.write_text(MANTIK_BACKEND_CONFIG)
    refused = repo.mantik("init", "--force", "--backend-config", str(outside), check=1)
    assert "the file must be inside the project" in refused.stderr


def test_init_refuses_to_overwrite_without_force(repo):
    repo.mantik("init")
    (repo.path / "mantik.yaml").write_text("# mine\n")
    refused = repo.mantik("init", check=1)
    assert refused.stderr.strip() == "Error: mantik.yaml already exists; pass --force to overwrite"
    assert (repo.path / "mantik.yaml").read_text() == "# mine\n"
    repo.mantik("init", "--force")
    assert (repo.path / ".gitignore").read_text().count(".mantik/") == 1


def test_gitlab_ci_file_parses_and_queues_applies(repo):
    repo.mantik("init", "--ci", "gitlab", "--install", "mantik-spec==0.1.0")
    pipeline = yaml.safe_load((repo.path / ".gitlab-ci.yml").read_text())
    assert pipeline["apply"]["resource_group"] == "mantik-apply"
    assert pipeline["apply"]["rules"] == [{"if": '$CI_COMMIT_BRANCH == "main"'}]
    assert any(
        "mantik plan --no-backends --format markdown --detailed-exitcode" in line for line in pipeline["plan"]["script"]
    )


def test_github_workflow_steps_run_locally(repo, tmp_path):
    """The generated workflow's own `run:` steps, executed in order as a runner would (install aside)."""
    repo.mantik("init", "--ci", "github", "--install", "mantik-spec==0.1.0")
    repo.write("train.py", "import sys\nprint('training', sys.argv[1:])\n")
    spec = (repo.path / "mantik.yaml").read_text().replace("lr: [0.01]", "lr: [0.01, 0.1]")
    (repo.path / "mantik.yaml").write_text(spec)
    repo.commit("set up mantik")
    workflow = yaml.safe_load((repo.path / ".github" / "workflows" / "mantik.yml").read_text())
    assert workflow["concurrency"] == {"group": "mantik-apply-${{ github.ref }}", "cancel-in-progress": False}
    jobs = workflow["jobs"]
    assert (
        jobs["plan"]["if"] == "github.event_name == 'pull_request'"
        and jobs["apply"]["if"] == "github.event_name == 'push'"
    )
    # the pull request's job holds the tracking server's secrets only: no backend credential to redirect
    assert set(jobs["plan"]["env"]) == {"MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_TOKEN"}
    assert {"MANTIK_SSH_PRIVATE_KEY", "MANTIK_UNICORE_PASSWORD"} <= set(jobs["apply"]["env"])
    steps = {step["name"]: step for job in ("plan", "apply") for step in jobs[job]["steps"] if "name" in step}
    summary = tmp_path / "summary.md"
    env = {
        **repo.env,
        "GITHUB_STEP_SUMMARY": str(summary),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }

    def run_step(name):
        return subprocess.run(
            ["bash", "-e", "-c", steps[name]["run"]],
            cwd=repo.path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )

    assert run_step("validate").returncode == 0
    plan = run_step("plan")  # on a pull request: changes pending is success, an error is not
    assert plan.returncode == 0, plan.stderr
    assert summary.read_text().startswith("### mantik plan")
    assert "2 to submit" in summary.read_text()
    applied = run_step("apply")  # on merge
    assert applied.returncode == 0, applied.stderr
    assert "Apply complete: 2 run(s) started." in applied.stdout


def test_pre_commit_hook_blocks_a_bad_spec_and_passes_a_good_one(repo):
    pre_commit = [str(Path(sys.executable).parent / "pre-commit")]
    repo.mantik("init")
    repo.write("train.py", "print('hi')\n")
    git(repo.path, "add", "-A")

    def try_hook():
        return subprocess.run(
            [*pre_commit, "try-repo", str(ROOT), "mantik-validate", "--all-files"],
            cwd=repo.path,
            capture_output=True,
            text=True,
            timeout=900,
            # PIP_COMPILE=0: no bytecode for the hook's environment (tens of CPU-seconds the other tests need;
            # pip reads the variable as --compile's value)
            env={**repo.env, "PRE_COMMIT_HOME": str(repo.path.parent / "pre-commit-home"), "PIP_COMPILE": "0"},
        )

    good = try_hook()
    assert good.returncode == 0, good.stdout + good.stderr
    assert "mantik validate" in good.stdout and "Passed" in good.stdout

    spec = (repo.path / "mantik.yaml").read_text().replace("max_parallel: 2", "max_paralel: 2")
    (repo.path / "mantik.yaml").write_text(spec)
    git(repo.path, "add", "-A")
    bad = try_hook()
    assert bad.returncode == 1
    assert "Failed" in bad.stdout
    line = next(i for i, text in enumerate(spec.splitlines(), 1) if "max_paralel" in text)
    column = spec.splitlines()[line - 1].index("max_paralel") + 1
    message = "backends.local.max_paralel: unknown key 'max_paralel'; did you mean 'max_parallel'?"
    assert f"mantik.yaml:{line}:{column}: {message}" in bad.stdout


def test_show_ranks_the_grid_and_plots_it(project, tmp_path):
    project.mantik("apply", "--auto-approve", "--wait", env={"TEST_LOG_METRIC": "1"})
    shown = project.mantik("show", "sweep", "--metric", "score", "--goal", "max", "--plot", str(tmp_path / "g.png"))
    lines = shown.stdout.splitlines()
    best = [line for line in lines if line.startswith("*") and "finished" in line]
    assert len(best) == 1 and " 0.2 " in best[0] and best[0].rstrip().endswith("2")  # lr=0.2 scores 2.0
    assert "* best by score (max; from --metric)" in shown.stdout
    png = (tmp_path / "g.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    missing = project.mantik("show", "sweep", "--metric", "accuracy", "--goal", "max", check=1)
    assert "no run of sweep logged a metric 'accuracy'; logged: score" in missing.stderr


def test_status_watch_returns_once_every_run_has_ended(project):
    project.write("mantik.yaml", BASIC_SPEC.replace("{lr: [0.1, 0.2]}", "{lr: [0.1, 0.2], sleep: 2}"))
    project.commit("slower")
    project.mantik("apply", "--auto-approve")
    watched = project.mantik("status", "--watch", "--interval", "0.5s", timeout=120)
    assert "Every declared run has ended" in watched.stdout
    assert {row["state"] for row in project.status_json()} == {"finished"}


def test_watch_replans_on_every_change_and_stops_on_ctrl_c(project):
    import signal
    import threading
    import time

    process = subprocess.Popen(
        [*mantik_command(), "watch"],
        cwd=project.path,
        # PYTHONFAULTHANDLER: a watch that does not stop is made to print where it hangs (SIGABRT below)
        env={**project.env, "MANTIK_TEST_PAUSE_AT": "after-watch-plan:1.5", "PYTHONFAULTHANDLER": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # Ctrl-C as a terminal delivers it: a process started with SIGINT ignored keeps ignoring it (the ignore
        # survives exec), and a library run earlier in this test process may have left it ignored
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.extend(iter(process.stdout.readline, "")), daemon=True)
    reader.start()

    def wait_for(text: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in "".join(output):
                return
            time.sleep(0.2)
        process.kill()
        raise AssertionError(f"no {text!r} in:\n{''.join(output)}")

    try:
        wait_for("Plan: 2 to submit")
        spec = (project.path / "mantik.yaml").read_text()
        # while the first plan is still being shown (paused there): the watcher is already in place
        (project.path / "mantik.yaml").write_text(spec.replace("[0.1, 0.2]", "[0.1, 0.2, 0.3]"))
        wait_for("Plan: 3 to submit")
        (project.path / "mantik.yaml").write_text(spec.replace("max_parallel", "max_paralel"))
        wait_for("unknown key 'max_paralel'; did you mean 'max_parallel'?")
        (project.path / "train.py").write_text((project.path / "train.py").read_text() + "\n# edited\n")
        (project.path / "mantik.yaml").write_text(spec)
        wait_for("Warning: uncommitted changes in code, data or spec files (train.py)", timeout=120)
    finally:
        process.send_signal(signal.SIGINT)
    try:
        code = process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGABRT)  # faulthandler prints every thread's stack
        process.wait(timeout=30)
        reader.join(timeout=5)
        raise AssertionError("watch did not stop on Ctrl-C:\n" + "".join(output)[-6000:]) from None
    assert code == 0
    reader.join(timeout=5)
    assert "Stopped watching." in "".join(output)
    assert "Traceback" not in "".join(output)


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_shell_completion_scripts_complete_the_verbs(shell, tmp_path):
    script = subprocess.run([*mantik_command(), "completion", shell], capture_output=True, text=True, check=True).stdout
    assert "_MANTIK_COMPLETE" in script
    # bash and zsh pass the index of the word being completed, fish passes the word itself
    current = "pl" if shell == "fish" else "1"
    env = {**os.environ, "_MANTIK_COMPLETE": f"{shell}_complete", "COMP_WORDS": "mantik pl", "COMP_CWORD": current}
    answer = subprocess.run(mantik_command(), capture_output=True, text=True, cwd=tmp_path, env=env).stdout
    assert "plan" in answer
