"""git's refusals reach the user as git says them, in one line, every time; paths print readably."""

from __future__ import annotations

import os

import pytest

from .conftest import BASIC_SPEC, git

pytestmark = pytest.mark.e2e


@pytest.fixture
def foreign(project):
    """The project's checkout owned by another user, as in CI containers and shared HPC directories."""
    if os.geteuid() != 0:
        pytest.skip("needs root to give the checkout to another user")
    for top, dirs, files in os.walk(project.path):
        for name in [*dirs, *files]:
            os.lchown(os.path.join(top, name), 4321, 4321)
    os.chown(project.path, 4321, 4321)
    env = {k: v for k, v in project.env.items() if not k.startswith("GIT_CONFIG")}
    env["GIT_CONFIG_GLOBAL"] = str(project.path.parent / "empty-gitconfig")  # no safe.directory of the machine's
    project.env = env
    return project


@pytest.mark.slow
def test_a_checkout_git_refuses_is_reported_in_git_words_every_time(foreign):
    """30 runs: each prints git's refusal and its fix as one line, never a guess, never nothing."""
    for attempt in range(30):
        result = foreign.mantik("plan", check=1)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, f"run {attempt}: {result.stderr!r}"
        assert "dubious ownership" in lines[0] and str(foreign.path) in lines[0], lines[0]
        assert f"git config --global --add safe.directory {foreign.path}" in lines[0]
        assert "no commit" not in lines[0]
        assert result.stdout == ""


def test_the_fix_git_suggests_works(foreign):
    git(foreign.path.parent, "config", "--file", "empty-gitconfig", "--add", "safe.directory", str(foreign.path))
    foreign.mantik("plan", check=0)


def test_an_empty_repository_is_still_told_to_commit(tmp_path):
    from .conftest import Project

    path = tmp_path / "fresh"
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    (path / "mantik.yaml").write_text(BASIC_SPEC)
    result = Project(path).mantik("plan", check=1)
    assert result.stderr.strip().splitlines() == ["Error: the repository has no commit yet: commit your code first"]


def test_non_ascii_paths_read_as_written_in_plan_reasons_and_warnings(project):
    project.write("mantik.yaml", BASIC_SPEC.replace("code: {paths: [train.py]}\n", ""))
    project.write("modèle/données.py", "X = 1\n")
    project.commit("non-ASCII names")
    project.mantik("apply", "--auto-approve", "--wait")
    project.write("modèle/données.py", "X = 2\n")
    dirty = project.mantik("plan")
    assert "modèle/données.py" in dirty.stdout + dirty.stderr
    project.commit("change it")
    reasons = {r["reason"] for r in project.plan_json()["runs"] if r["action"] == "submit"}
    assert reasons and all("code changed (modèle/données.py" in reason for reason in reasons), reasons


def test_a_broken_pipe_to_a_helper_is_one_line_not_silence(capsys):
    from mantik_spec.cli import exit_status

    def broken():
        raise BrokenPipeError(32, "Broken pipe")

    assert exit_status(broken) == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        "Error: a helper process ended before taking its input (Broken pipe)"
    ]
