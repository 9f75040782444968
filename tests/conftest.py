"""Shared fixtures: real git repositories in temp dirs, the installed ``mantik`` command, real MLflow stores."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def mantik_command() -> list[str]:
    """The installed console script: the e2e tests exercise what users run."""
    script = Path(sys.executable).parent / "mantik"
    found = str(script) if script.exists() else shutil.which("mantik")
    if not found:
        pytest.fail("the `mantik` command is not installed: pip install -e .")
    return [found]


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
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
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
        result = subprocess.run(
            [*mantik_command(), *args],
            cwd=self.path,
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**self.env, **(env or {})},
            input=input,
        )
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
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(0.3)
        raise AssertionError(f"timed out waiting for {message}")


def run_example(name: str, workdir: Path, extra_env: dict | None = None) -> subprocess.CompletedProcess:
    """`bash examples/run.sh NAME`, as the README tells a newcomer, with this environment's mantik on PATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env.update(extra_env or {})
    return subprocess.run(
        ["bash", str(ROOT / "examples" / "run.sh"), name, str(workdir)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )


@pytest.fixture
def project(tmp_path) -> Project:
    path = tmp_path / "repo"
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    proj = Project(path)
    proj.write("train.py", TRAIN_SCRIPT)
    proj.write("mantik.yaml", BASIC_SPEC)
    proj.commit("initial")
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
