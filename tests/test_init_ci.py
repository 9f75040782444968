"""`mantik init --ci` with the branch names git accepts: each CI file names exactly that branch, as the CI
service reads it (GitHub's branch filter patterns, GitLab's rule expressions), or init refuses in one line."""

from __future__ import annotations

import json
import re
import subprocess

import pytest
import yaml

from mantik_spec.errors import UserError
from mantik_spec.operations.init import init

from .conftest import git

# GitLab's string literal in a rule expression: quoted with " or ', no escapes
# (lib/gitlab/ci/pipeline/expression/lexeme/string.rb), compared with the branch variable
GITLAB_RULE = re.compile(r"""^\$CI_COMMIT_BRANCH == (?:"(?P<double>[^"]*)"|'(?P<single>[^']*)')$""")
GITHUB_SPECIAL = "*?+[]!"  # characters GitHub's filter patterns read as a pattern, unless escaped with a backslash

# names git accepts (check-ref-format) that YAML, GitHub's filters or GitLab's expressions read specially
ACCEPTED = ["main", "rel{1}", "main,dev", 'a"b', "it's", "v1.0+rc", "a]b", "!x", "dev/ü", "#x", "x&y", "{{x}}"]


def github_literal(pattern: str) -> str:
    """The one branch a GitHub filter pattern matches, or AssertionError when it matches a pattern's worth."""
    literal, escaped = [], False
    for char in pattern:
        if escaped:
            literal.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        else:
            assert char not in GITHUB_SPECIAL, f"{pattern!r}: {char!r} is a pattern character there"
            literal.append(char)
    assert not escaped
    return "".join(literal)


def generated(tmp_path, ci: str, branch: str) -> dict:
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    done = init(tmp_path, ci=ci, install="mantik-spec==0.1.0", default_branch=branch)
    [ci_file] = [path for path in done.written if path.suffix == ".yml"]
    return yaml.safe_load(ci_file.read_text())


@pytest.mark.parametrize("branch", ACCEPTED)
def test_the_github_workflow_applies_on_exactly_the_default_branch(tmp_path, branch):
    assert subprocess.run(["git", "check-ref-format", "--branch", branch], capture_output=True).returncode == 0
    workflow = generated(tmp_path, "github", branch)
    triggers = workflow[True]  # `on:` is a YAML 1.1 boolean to PyYAML; GitHub reads it as the key "on"
    [pattern] = triggers["push"]["branches"]
    assert github_literal(pattern) == branch


@pytest.mark.parametrize("branch", ACCEPTED)
def test_the_gitlab_apply_job_runs_on_exactly_the_default_branch(tmp_path, branch):
    pipeline = generated(tmp_path, "gitlab", branch)
    [rule] = pipeline["apply"]["rules"]
    found = GITLAB_RULE.match(rule["if"])
    assert found, rule["if"]
    assert (found["double"] if found["double"] is not None else found["single"]) == branch


@pytest.mark.parametrize("branch", ["a..b", "-x", "a b", "x.lock", "", "feat*x", "a?b", "[x]", "x:y", "a\"b'c"])
def test_a_branch_the_ci_cannot_name_is_refused_in_one_line_and_nothing_is_written(tmp_path, branch):
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    with pytest.raises(UserError) as refused:
        init(tmp_path, ci="gitlab", install="mantik-spec==0.1.0", default_branch=branch)
    assert "--default-branch" in str(refused.value) and "\n" not in str(refused.value)
    assert sorted(path.name for path in tmp_path.iterdir()) == [".git"]


def repository(path, *args: str):
    """A git repository at ``path`` (created with ``git init ARGS``) holding one commit."""
    path.mkdir(parents=True, exist_ok=True)
    git(path, "init", "-q", *args)
    (path / "README").write_text("a project\n")
    git(path, "add", "README")
    git(path, "commit", "-q", "-m", "start")
    return path


def apply_branches(done) -> list[str]:
    [ci_file] = [path for path in done.written if path.suffix == ".yml"]
    return yaml.safe_load(ci_file.read_text())[True]["push"]["branches"]


def test_the_default_branch_is_read_from_the_repository_and_named(tmp_path):
    """A `master` repository applies on master: origin/HEAD first (a clone working on a feature branch), else
    the branch checked out, else init.defaultBranch; the output says which."""
    upstream = repository(tmp_path / "upstream", "-b", "master")
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(upstream), str(clone))
    git(clone, "checkout", "-q", "-b", "feature")
    done = init(clone, ci="github", install="mantik-spec==0.1.0")
    assert apply_branches(done) == ["master"]
    assert "'master' (from origin/HEAD" in " ".join(done.notes)

    alone = repository(tmp_path / "alone", "-b", "trunk")
    done = init(alone, ci="github", install="mantik-spec==0.1.0")
    assert apply_branches(done) == ["trunk"] and "branch checked out" in " ".join(done.notes)

    detached = repository(tmp_path / "detached", "-b", "dev")
    git(detached, "checkout", "-q", "--detach")
    git(detached, "config", "init.defaultBranch", "rel{1}")
    done = init(detached, ci="github", install="mantik-spec==0.1.0")
    assert apply_branches(done) == ["rel{1}"] and "init.defaultBranch" in " ".join(done.notes)


def test_ci_files_join_an_existing_project_without_touching_its_spec(tmp_path):
    """`init --ci` in a project with a mantik.yaml writes the CI file only; an existing CI file is named and
    kept unless --force, which still leaves mantik.yaml as it was."""
    project = repository(tmp_path / "p", "-b", "main")
    spec = SPEC_WITH_ENVIRONMENTS.format(venv="venv", requirements="requirements.txt")
    (project / "mantik.yaml").write_text(spec)
    (project / "requirements.txt").write_text("")
    (project / "train.py").write_text("print(1)\n")
    done = init(project, ci="gitlab", install="mantik-spec==0.1.0")
    assert [path.name for path in done.written if path.name != ".gitignore"] == [".gitlab-ci.yml"]
    assert (project / "mantik.yaml").read_text() == spec
    with pytest.raises(UserError, match=r"^\.gitlab-ci\.yml already exists; pass --force"):
        init(project, ci="gitlab", install="mantik-spec==0.2.0")
    assert "0.1.0" in (project / ".gitlab-ci.yml").read_text()
    init(project, ci="gitlab", install="mantik-spec==0.2.0", force=True)
    assert "0.2.0" in (project / ".gitlab-ci.yml").read_text()
    assert (project / "mantik.yaml").read_text() == spec


SPEC_WITH_ENVIRONMENTS = """\
version: 1
project: p
entry_points:
  train: {{command: python train.py}}
environments:
  py: {{venv: {venv}, requirements: {requirements}}}
  image: {{apptainer: /p/images/torch.sif}}
backends:
  local: {{type: local}}
  cluster: {{type: slurm, partition: batch, environment: image}}
experiments:
  here: {{entry_point: train, backend: local, environment: py}}
  there: {{entry_point: train, backend: cluster}}
"""


def github_evaluated(text: str) -> str:
    """``text`` after GitHub substitutes its expressions; only string literals are allowed in it here."""
    literal = re.compile(r"\$\{\{ '((?:[^']|'')*)' \}\}")
    result = literal.sub(lambda found: found[1].replace("''", "'"), text)
    assert "${{" not in literal.sub("", text), text
    return result


@pytest.mark.parametrize("ci", ["github", "gitlab"])
def test_the_apply_job_installs_the_environments_its_runs_need_and_the_review_job_nothing(tmp_path, ci):
    """A venv with a requirements file, for the runs on the runner (local backend): the merge's job creates
    the venv and installs the file into it, at the paths mantik.yaml gives whatever they hold; the review
    job installs nothing of the project; the cluster's image is left to the cluster."""
    project = repository(tmp_path / "p", "-b", "main")
    venv, requirements = "my envs/${{ secrets.X }}'$(x)", "req $HOME.txt"
    (project / "mantik.yaml").write_text(
        SPEC_WITH_ENVIRONMENTS.format(venv=json.dumps(venv), requirements=json.dumps(requirements))
    )
    (project / requirements).write_text("")
    (project / "train.py").write_text("print(1)\n")
    done = init(project, ci=ci, install="mantik-spec==0.1.0")
    pipeline = yaml.safe_load(done.written[0].read_text())
    if ci == "github":
        [setup] = [s["run"] for s in pipeline["jobs"]["apply"]["steps"] if s.get("name") == "environments"]
        assert not [s for s in pipeline["jobs"]["plan"]["steps"] if s.get("name") == "environments"]
        lines = github_evaluated(setup).splitlines()
    else:
        lines = pipeline["apply"]["script"][:-1]
        assert pipeline["plan"]["script"][-1].startswith("mantik plan")
    for line in lines:
        subprocess.run(["bash", "-ec", line], cwd=project, check=True, capture_output=True, timeout=300)
    assert (project / venv / "bin" / "pip").exists()  # pip ran in the venv: it is there
    assert not any("apptainer" in line for line in lines)
    assert not [note for note in done.notes if note.startswith("Warning:")]  # a cluster backend is declared


def test_a_spec_whose_only_backend_is_local_is_warned_that_its_jobs_die_with_the_runner(tmp_path):
    project = repository(tmp_path / "p", "-b", "main")
    done = init(project, ci="github", install="mantik-spec==0.1.0")
    [warning] = [note for note in done.notes if note.startswith("Warning:")]
    assert "local" in warning and "runner" in warning and "\n" not in warning


@pytest.mark.parametrize("ci", ["github", "gitlab"])
def test_the_review_job_carries_no_backend_secret_and_asks_no_backend(tmp_path, ci):
    """docs/security.md: a pull request's plan reads MLflow only (`--no-backends`); its job gets the tracking
    server's variables and none of the backends' (those reach the merge's job alone)."""
    project = repository(tmp_path / "p", "-b", "main")
    done = init(project, ci=ci, install="mantik-spec==0.1.0")
    [ci_file] = [path for path in done.written if path.suffix == ".yml"]
    text = ci_file.read_text()
    pipeline = yaml.safe_load(text)
    if ci == "github":
        review = pipeline["jobs"]["plan"]
        assert set(review["env"]) == {"MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_TOKEN"}
        assert review.get("environment") is None and "environment: mantik-apply" in text
        secrets = set(re.findall(r"secrets\.(\w+)", yaml.safe_dump(review)))
        assert secrets == {"MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_TOKEN"}
        commands = [step.get("run", "") for step in review["steps"]]
    else:
        review = pipeline["plan"]
        assert "variables" not in review and "MANTIK_" not in yaml.safe_dump(review)
        commands = review["script"]
    [plan] = [c for c in commands if "mantik plan" in c]
    assert "--no-backends" in plan
    assert not [c for c in commands if "mantik apply" in c]
