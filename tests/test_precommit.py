"""The shipped pre-commit hook in a repository holding several projects, run by the real pre-commit."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from .conftest import (
    ROOT,
    git,
    missing,  # a failure under CI=true, a skip elsewhere
)

VALID = textwrap.dedent(
    """\
    project: {name}
    entry_points:
      train:
        command: python train.py --lr {{lr}}
        parameters: {{lr: float}}
    experiments: {{sweep: {{entry_point: train, parameters: {{lr: [0.1, 0.2]}}}}}}
    """
)


def pre_commit() -> str:
    found = Path(sys.executable).parent / "pre-commit"
    if found.exists():
        return str(found)
    if shutil.which("pre-commit"):
        return shutil.which("pre-commit")
    missing("pre-commit is not installed")


@pytest.fixture
def monorepo(tmp_path):
    repo = tmp_path / "mono"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    [hook] = yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text())
    # the shipped hook as is, but run with this checkout's mantik instead of an installed copy
    hook |= {"language": "system", "entry": f"{Path(sys.executable).parent / 'mantik'} validate"}
    (repo / ".pre-commit-config.yaml").write_text(yaml.safe_dump({"repos": [{"repo": "local", "hooks": [hook]}]}))
    env = {**os.environ, "PRE_COMMIT_HOME": str(tmp_path / "pre-commit-home"), "PYTHONPATH": str(ROOT)}
    subprocess.run([pre_commit(), "install"], cwd=repo, env=env, check=True, capture_output=True)
    git(repo, "add", ".pre-commit-config.yaml")
    return repo, env


def commit(repo: Path, env: dict, *paths: str) -> subprocess.CompletedProcess:
    subprocess.run(["git", "add", *paths], cwd=repo, check=True)
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@localhost", "commit", "-qm", "change"],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
    )


def test_each_staged_spec_is_checked_in_its_own_directory(monorepo):
    repo, env = monorepo
    for name in ("vision", "weather"):
        (repo / "projects" / name).mkdir(parents=True)
        (repo / "projects" / name / "mantik.yaml").write_text(VALID.format(name=name))
    broken = VALID.format(name="weather").replace("parameters: {lr: [0.1, 0.2]}", "parameters: {lr: [0.1, no]}")
    (repo / "projects" / "weather" / "mantik.yaml").write_text(broken)

    refused = commit(repo, env, "-A")
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "projects/weather/mantik.yaml:6:" in refused.stdout + refused.stderr
    assert "experiments.sweep.parameters.lr[1]: 'no' is not a valid float" in refused.stdout + refused.stderr
    assert git(repo, "rev-list", "--all") == ""  # nothing was committed

    # a commit that touches only the valid project checks only it
    git(repo, "reset", "-q", "projects/weather")
    accepted = commit(repo, env, ".pre-commit-config.yaml", "projects/vision")
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr

    # an included file checks the spec that reads it
    (repo / "projects" / "weather" / "mantik.yaml").write_text(VALID.format(name="weather"))
    commit(repo, env, "projects/weather/mantik.yaml")
    (repo / "projects" / "weather" / "mantik.yaml").write_text(VALID.format(name="weather") + "mlproject: MLproject\n")
    (repo / "projects" / "weather" / "MLproject").write_text("name: w\nentry_points: {main: {command: 'python m.py'}}\n")
    commit(repo, env, "projects/weather/mantik.yaml", "projects/weather/MLproject")
    (repo / "projects" / "weather" / "MLproject").write_text("name: w\nentry_points: {main: {comand: 'python m.py'}}\n")
    refused = commit(repo, env, "projects/weather/MLproject")
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "projects/weather/MLproject:2:" in refused.stdout + refused.stderr


def test_validate_takes_spec_files_and_names_them_from_where_it_runs(tmp_path):
    from .conftest import mantik_command

    (tmp_path / "a").mkdir()
    (tmp_path / "b" / "deep").mkdir(parents=True)
    (tmp_path / "a" / "mantik.yaml").write_text(VALID.format(name="a"))
    (tmp_path / "b" / "mantik.yaml").write_text("project: [b\n")
    (tmp_path / "b" / "deep" / "x.dvc").write_text("outs: []\n")
    (tmp_path / "loose.dvc").write_text("outs: []\n")
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "mantik.yml").write_text(VALID.format(name="c"))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [*mantik_command(), "validate", "a/mantik.yaml", "b/deep/x.dvc", "loose.dvc", "c/mantik.yml"],
        cwd=tmp_path, capture_output=True, text=True, env=env,
    )
    assert result.returncode == 1
    assert result.stdout == "a/mantik.yaml is valid.\n"
    assert result.stderr.splitlines() == [
        "c/mantik.yml: mantik reads specs named mantik.yaml: rename this file",
        "b/mantik.yaml:2:1: YAML syntax error: did not find expected ',' or ']'",
    ]
