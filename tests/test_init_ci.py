"""`mantik init --ci` with the branch names git accepts: each CI file names exactly that branch, as the CI
service reads it (GitHub's branch filter patterns, GitLab's rule expressions), or init refuses in one line."""

from __future__ import annotations

import re
import subprocess

import pytest
import yaml

from mantik_spec.errors import UserError
from mantik_spec.operations.init import init

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
    written = init(tmp_path, ci=ci, install="mantik-spec==0.1.0", default_branch=branch)
    [ci_file] = [path for path in written if path.suffix == ".yml"]
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
