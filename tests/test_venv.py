"""An environment's `venv:` as the user means it: a relative path is the project's venv (beside mantik.yaml), which
every job on a backend that sees this machine activates from there, not from its own directory (which holds only
the committed tree); a backend that cannot see it is refused at the venv's line; and a failed point is tried once
more when the venv it could not activate appears."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mantik_spec.operations.jobs import in_environment
from mantik_spec.operations.project import open_project, setup_digest
from mantik_spec.spec.model import Environment

from .conftest import git

SPEC = textwrap.dedent(
    """\
    version: 1
    project: venvs
    entry_points:
      check: {{command: python check.py}}
    environments:
      py: {{venv: {venv}}}
    backends:
      here: {{type: local}}
      {cluster}
    experiments:
      run: {{entry_point: check, backend: {backend}, environment: py, retries: 0}}
    """
)
# the command succeeds only in the project's venv, whatever directory the job runs in
CHECK = textwrap.dedent(
    """\
    import os, sys
    expected = os.environ["EXPECTED_VENV"]
    print("prefix", sys.prefix, "cwd", os.getcwd())
    sys.exit(0 if os.path.realpath(sys.prefix) == os.path.realpath(expected) else 1)
    """
)
SSH_CLUSTER = "cluster: {type: slurm, partition: batch, ssh: {host: login.example.org}}"


def activation(command: str) -> str:
    return command.split(" && ")[0]


def test_the_activation_line_takes_each_kind_of_path_where_it_is_meant():
    assert Environment(venv="venvs/torch").venv_location(Path("/p/proj")) == "/p/proj/venvs/torch"
    assert Environment(venv="../shared/v").venv_location(Path("/p/proj")) == "/p/shared/v"
    assert Environment(venv="/opt/v").venv_location(Path("/p/proj")) == "/opt/v"
    assert not Environment(venv="~/v").venv_is_relative
    assert not Environment(venv="$HOME/v", shell_expansion=True).venv_is_relative
    # ~ is the home directory where the job runs: quotes would keep it from the shell
    assert activation(in_environment("true", Environment(venv="~/my v"))) == """. "$HOME"/'my v/bin/activate'"""
    home = subprocess.run(
        ["bash", "-c", in_environment("true", Environment(venv="~/v")).replace(". ", "echo ", 1)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert home == str(Path.home() / "v" / "bin" / "activate")
    # as Mantik's batch script sourced {Python}/bin/activate: the job's shell expands it
    assert activation(in_environment("true", Environment(venv="$HOME/v", shell_expansion=True))) == (
        ". $HOME/v/bin/activate"
    )
    assert activation(in_environment("true", Environment(venv="/opt/my v"))) == ". '/opt/my v/bin/activate'"


def project_at(path: Path, venv: str, backend: str = "here", cluster: str = "") -> Path:
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", "main")
    (path / "mantik.yaml").write_text(SPEC.format(venv=venv, backend=backend, cluster=cluster))
    (path / "check.py").write_text(CHECK)
    (path / ".gitignore").write_text(".venv/\n")
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "start")
    return path


def test_a_relative_venv_enters_the_setup_digest_where_it_is_and_whether_it_is_there(tmp_path):
    """The setup digest (mantik.setup) moves when the project's venv appears, and differs from the one recorded
    before relative venvs were read from the project: runs that failed to activate it are tried once more.
    An absolute venv's digest is the one recorded before (no failed point is retried for nothing)."""
    project = open_project(project_at(tmp_path / "a", ".venv"))
    before = setup_digest(project, "py", "here")
    declared = project.spec.environments["py"]
    recorded_earlier = {"environment": declared.model_dump(mode="json"), "backend": {}}
    assert before != hashlib.sha256(json.dumps(recorded_earlier, sort_keys=True).encode()).hexdigest()[:16]
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(project.root / ".venv")], check=True)
    assert setup_digest(project, "py", "here") != before

    absolute = open_project(project_at(tmp_path / "b", "/opt/venvs/py"))
    declared = absolute.spec.environments["py"]
    recorded_earlier = {"environment": declared.model_dump(mode="json"), "backend": {}}
    assert (
        setup_digest(absolute, "py", "here")
        == hashlib.sha256(json.dumps(recorded_earlier, sort_keys=True).encode()).hexdigest()[:16]
    )


def test_a_backend_that_cannot_see_the_project_is_refused_at_the_venv_line(tmp_path):
    """Slurm over SSH runs where this machine's venv is not: validate names the line, apply submits nothing,
    and a run reproduced on such a backend is refused alike."""
    from mantik_spec.spec.checks import unseen_venvs
    from mantik_spec.spec.load import load_spec

    from .conftest import Project

    path = project_at(tmp_path / "p", ".venv", backend="cluster", cluster=SSH_CLUSTER)
    project = Project(path)
    for verb in (["validate"], ["plan", "--no-backends"], ["apply", "--auto-approve"]):
        result = project.mantik(*verb, check=1)
        [line] = result.stderr.splitlines()
        assert line.startswith("mantik.yaml:6:") and "environments.py.venv: .venv is relative" in line, line
        assert "cluster" in line and "Traceback" not in result.stderr
    assert not (path / ".mantik" / "mlflow.db").exists()  # nothing was recorded: no store was even opened

    (path / "mantik.yaml").write_text(SPEC.format(venv=".venv", backend="here", cluster=SSH_CLUSTER))
    spec = load_spec(path).spec  # runs on the local backend: valid
    assert list(unseen_venvs(spec, [("py", "here")])) == []
    [(where, message)] = unseen_venvs(spec, [("py", "cluster"), ("py", "cluster")])  # reproduce --backend cluster
    assert where == ("environments", "py", "venv") and "cluster" in message


def test_a_relative_venv_is_activated_from_the_project_and_a_failed_point_retried_once_it_exists(tmp_path):
    """The job runs in a copy of the committed tree, where no venv is: it activates the project's. A point
    that failed because the venv was missing is tried again once the venv is created (a setup change), and
    not again while nothing changes."""
    from .conftest import Project

    path = project_at(tmp_path / "p", ".venv")
    project = Project(path)
    project.env["EXPECTED_VENV"] = str(path / ".venv")
    project.mantik("apply", "--auto-approve", "--wait", check=1)
    [failed] = project.runs()
    assert failed.info.status == "FAILED"
    assert project.plan_json()["summary"].get("submit", 0) == 0

    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path / ".venv")], check=True)
    [entry] = project.plan_json()["runs"]
    assert entry["action"] == "retry" and "setup changed" in entry["reason"], entry
    project.mantik("apply", "--auto-approve", "--wait")
    statuses = sorted(run.info.status for run in project.runs())
    assert statuses == ["FAILED", "FINISHED"]


@pytest.mark.parametrize(
    "config",
    [
        {"type": "local"},
        {"type": "slurm", "partition": "batch"},
        {"type": "slurm", "partition": "batch", "ssh": {"host": "login.example.org"}},
        {"type": "unicore", "url": "https://site.example.org:9112/SITE/rest/core"},
        {
            "type": "firecrest",
            "url": "https://api.example.org/firecrest/v2",
            "token_url": "https://auth.example.org/token",
            "machine": "daint",
            "workdir": "/scratch/me/mantik",
        },
    ],
)
def test_what_validate_assumes_a_backend_sees_is_what_the_backend_sees(tmp_path, config):
    """validate decides from the config (sees_this_machine), the backend acts on shares_files: they agree."""
    from pydantic import TypeAdapter

    from mantik_spec.backends import make_backend
    from mantik_spec.spec.model import BackendConfig

    parsed = TypeAdapter(BackendConfig).validate_python(config)
    assert make_backend("b", parsed, tmp_path / ".mantik").shares_files is parsed.sees_this_machine()
