"""What a researcher meets in the first hour: generated CI files that install and run, and a CI job
that would lose its runs refused before it submits anything."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import yaml

from mantik_spec.errors import UserError
from mantik_spec.operations.install_source import _requirement, ci_install_command

from .conftest import ROOT, Project, git


@pytest.fixture
def repo(tmp_path) -> Project:
    """An empty git repository: a researcher's project before `mantik init`."""
    path = tmp_path / "repo"
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    return Project(path)


def _bare_clone(tmp_path: Path) -> tuple[Path, str]:
    """This project's committed tree as a repository a CI runner could clone (file:// stands for the host)."""
    bare = tmp_path / "mantik-spec.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(ROOT), str(bare)], check=True)
    commit = git(bare, "rev-parse", "HEAD").strip()
    return bare, commit


@pytest.mark.slow
def test_generated_install_step_installs_the_tool(repo, tmp_path):
    """The workflow's install line, run as a runner runs it, gives a working `mantik` command."""
    bare, commit = _bare_clone(tmp_path)
    repo.mantik("init", "--ci", "github", "--install", f"git+file://{bare}@{commit}")
    workflow = yaml.safe_load((repo.path / ".github" / "workflows" / "mantik.yml").read_text())
    installs = {
        step["run"] for job in workflow["jobs"].values() for step in job["steps"] if step.get("name") == "install"
    }
    [install] = installs  # the pull request's job and the merge's install alike
    venv = tmp_path / "runner-venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    # the runner's index would provide the dependencies; this machine's test environment stands in for it
    site = next((venv / "lib").glob("python*/site-packages"))
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {
        **os.environ,
        "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}",
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "PIP_COMPILE": "0",  # no bytecode: CPU the other tests need (pip reads it as --compile's value)
    }
    env.pop("PYTHONPATH", None)
    result = subprocess.run(["bash", "-ec", install], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (venv / "bin" / "mantik").exists()
    validated = subprocess.run(
        [str(venv / "bin" / "mantik"), "validate"], cwd=repo.path, env=env, capture_output=True, text=True
    )
    assert validated.returncode == 0, validated.stderr
    installed = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import mantik_spec, sys; print(mantik_spec.__file__)"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert installed.startswith(str(venv)), "the runner's mantik must be the one the install step put there"


def test_install_line_pins_what_is_installed(tmp_path):
    """The default install line names a source a runner reaches, pinned to a commit; or refuses in one line."""
    assert (
        _requirement(
            {"url": "https://git.example.org/org/mantik-spec", "vcs_info": {"vcs": "git", "commit_id": "abc123"}}
        )
        == "mantik-spec @ git+https://git.example.org/org/mantik-spec@abc123"
    )

    bare, _ = _bare_clone(tmp_path)
    checkout = tmp_path / "checkout"
    subprocess.run(["git", "clone", "-q", f"file://{bare}", str(checkout)], check=True)
    commit = git(checkout, "rev-parse", "HEAD").strip()
    editable = {"url": f"file://{checkout}", "dir_info": {"editable": True}}
    assert _requirement(editable) == f"mantik-spec @ git+file://{bare}@{commit}"

    git(checkout, "commit", "-q", "--allow-empty", "-m", "local only")
    with pytest.raises(UserError, match="is not pushed to"):
        _requirement(editable)

    git(checkout, "remote", "set-url", "origin", str(bare))  # a plain path: no runner reaches it
    with pytest.raises(UserError, match="local path"):
        _requirement(editable)
    git(checkout, "remote", "set-url", "origin", "git@git.example.org:org/mantik-spec.git")
    git(checkout, "reset", "-q", "--hard", commit)
    git(checkout, "update-ref", "refs/remotes/origin/main", commit)
    assert _requirement(editable) == f"mantik-spec @ git+ssh://git@git.example.org/org/mantik-spec.git@{commit}"

    git(checkout, "remote", "set-url", "origin", "https://gitlab-ci-token:s3cr3t@git.example.org/org/mantik-spec.git")
    written = _requirement(editable)
    assert (
        written == f"mantik-spec @ git+https://git.example.org/org/mantik-spec.git@{commit}" and "s3cr3t" not in written
    )

    assert ci_install_command("mantik-spec==1.2") == "pip install mantik-spec==1.2"
    assert ci_install_command("pip install -r ci/requirements.txt") == "pip install -r ci/requirements.txt"


def test_init_without_a_reachable_source_says_how_to_give_one(repo):
    """This test environment is an editable install of a checkout: whatever its remote, init either pins
    a reachable commit or names --install in one line; it never writes a pipeline that cannot install."""
    result = repo.mantik("init", "--ci", "gitlab", check=None)
    if result.returncode == 0:
        line = yaml.safe_load((repo.path / ".gitlab-ci.yml").read_text())["default"]["before_script"][0]
        assert "@" in line and "git+" in line, line
    else:
        assert result.stderr.count("\n") == 1 and "--install" in result.stderr, result.stderr
        assert not (repo.path / ".gitlab-ci.yml").exists()


def test_gitlab_plan_is_kept_outside_the_code(repo):
    """The merge-request plan file must not make the next plan warn about uncommitted code."""
    repo.mantik("init", "--ci", "gitlab", "--install", "mantik-spec==0.1.0")
    repo.write("train.py", "print('training')\n")
    repo.commit("set up")
    script = yaml.safe_load((repo.path / ".gitlab-ci.yml").read_text())["plan"]["script"]
    env = {**repo.env, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    for line in script:
        subprocess.run(["bash", "-ec", line], cwd=repo.path, env=env, check=True)
    plan_file = repo.path / ".mantik" / "plan.md"
    assert "### mantik plan" in plan_file.read_text()
    assert "uncommitted" not in repo.mantik("plan").stdout


def test_ci_without_a_tracking_server_refuses_to_apply(project):
    """A CI job whose tracking secret is unset would record runs in a store it throws away."""
    planned = project.mantik("plan", env={"CI": "true"})
    assert "MLFLOW_TRACKING_URI is not" in planned.stdout and "apply will refuse" in planned.stdout
    refused = project.mantik("apply", "--auto-approve", env={"CI": "true"}, check=1)
    assert refused.stderr.startswith("Error: CI is set and MLFLOW_TRACKING_URI is not")
    assert refused.stderr.count("\n") == 1
    assert project.runs() == []
    store = f"sqlite:///{project.path / '.mantik' / 'mlflow.db'}"
    project.mantik("apply", "--auto-approve", env={"CI": "true", "MLFLOW_TRACKING_URI": store})
    assert len(project.runs()) == 2


def test_help_lists_every_verb_in_workflow_order_on_one_line_each(repo):
    result = repo.mantik("--help", env={"COLUMNS": "80"})
    commands = result.stdout.split("Commands:\n", 1)[1].splitlines()
    names = [line.split()[0] for line in commands if line.strip()]
    assert len(names) == len(commands), "a description wrapped onto a second line"
    assert names[:4] == ["init", "validate", "plan", "apply"]
    assert all(len(line) <= 80 and not line.rstrip().endswith("...") for line in commands)
    from mantik_spec.cli import main

    assert sorted(names) == sorted(main.commands)


def test_readme_command_table_matches_the_real_options(repo):
    """Every option the README's command table shows exists on that verb."""
    import re

    table = [line for line in (ROOT / "README.md").read_text().splitlines() if line.startswith("| `mantik ")]
    assert len(table) >= 10
    for row in table:
        usage = row.split("`")[1]
        verb = usage.split()[1]
        help_text = repo.mantik(verb, "--help", env={"COLUMNS": "200"}).stdout
        for option in re.findall(r"(--[a-z][a-z-]*)", usage):
            assert option in help_text, f"README shows {option} for mantik {verb}"


def test_init_outside_git_says_so_before_writing_anything(tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    result = Project(plain).mantik("init", check=1)
    assert (
        result.stderr
        == f"Error: {plain} is not inside a git repository: run `git init` first (only committed code runs)\n"
    )
    assert list(plain.iterdir()) == []
