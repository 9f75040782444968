"""The spec anchors runs as the code does: what an uncommitted mantik.yaml (or a file it reads) declares is
planned with a warning and never applied, and each run records the spec that declared it."""

from __future__ import annotations

import pytest

from .conftest import BASIC_SPEC, git

pytestmark = pytest.mark.e2e


def test_an_uncommitted_grid_is_warned_about_and_never_applied(project):
    project.write("mantik.yaml", BASIC_SPEC.replace("[0.1, 0.2]", "[0.1, 0.2, 0.3]"))
    plan = project.mantik("plan").stdout
    assert "Warning: uncommitted changes in code, data or spec files (mantik.yaml)" in plan
    refused = project.mantik("apply", "--auto-approve", check=1)
    assert refused.stderr == (
        "Error: uncommitted changes in code, data or spec files: mantik.yaml; "
        "commit or stash them (only committed code runs), or run the working tree as a snapshot commit "
        "with `mantik apply --scratch`\n"
    )
    assert project.runs() == []
    commit = project.commit("three points")
    project.mantik("apply", "--auto-approve", "--wait")
    runs = project.runs()
    assert len(runs) == 3
    assert {r.data.tags["mantik.spec"] for r in runs} == {"mantik.yaml"}
    assert {r.data.tags["mantik.commit"] for r in runs} == {commit}
    declared = git(project.path, "show", f"{commit}:mantik.yaml")
    assert "[0.1, 0.2, 0.3]" in declared  # the recorded commit declares every recorded point


def test_a_spec_in_a_subdirectory_and_the_files_it_reads_are_anchored_too(tmp_path):
    from .conftest import TRAIN_SCRIPT, Project

    repo = tmp_path / "mono"
    (repo / "proj").mkdir(parents=True)
    git(repo, "init", "-q", "-b", "main")
    project = Project(repo / "proj")
    project.write("train.py", TRAIN_SCRIPT)
    project.write(
        "MLproject",
        "name: p\nentry_points:\n  main:\n    parameters: {lr: float}\n    command: python train.py --lr {lr}\n",
    )
    project.write("mantik.yaml", "version: 1\nproject: p\nmlproject: MLproject\nexperiments:\n  a: {entry_point: main, parameters: {lr: [0.1]}}\n")
    git(repo, "add", "-A")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    project.write(
        "MLproject",
        "name: p\nentry_points:\n  main:\n    parameters: {lr: float}\n    command: python train.py --lr {lr} --x 1\n",
    )
    assert "(MLproject)" in project.mantik("plan").stdout
    project.mantik("apply", "--auto-approve", check=1)
    git(repo, "checkout", "--", "proj/MLproject")
    project.mantik("apply", "--auto-approve", "--wait")
    assert {r.data.tags["mantik.spec"] for r in project.runs()} == {"proj/mantik.yaml"}
