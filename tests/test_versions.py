"""Data and environment versions in run identity, with real DVC repositories."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mantik_spec.dvcfiles import dvc_md5

from .support.project import dvc

pytestmark = pytest.mark.e2e

DATA_SPEC = textwrap.dedent(
    """
    version: 1
    project: datademo
    code: {paths: [train.py]}
    entry_points:
      train:
        command: python train.py --lr {lr} --data {data.era5}
        parameters: {lr: float}
      plain:
        command: python train.py --lr {lr}
        parameters: {lr: float}
    data:
      era5: {path: data/era5.csv}
    environments:
      py: {requirements: requirements.txt}
    backends:
      local: {type: local, max_parallel: 4}
    experiments:
      with_data:
        entry_point: train
        data: [era5]
        environment: py
        parameters: {lr: [0.1, 0.2]}
      without_data:
        entry_point: plain
        parameters: {lr: [0.1, 0.2]}
    """
)


@pytest.fixture
def data_project(project):
    dvc(project, "init", "-q")
    project.write("data/era5.csv", "t,value\n0,1.0\n")
    dvc(project, "add", "data/era5.csv")
    project.write("requirements.txt", "numpy==2.1.0\n")
    project.write("mantik.yaml", DATA_SPEC)
    project.commit("data tracked by dvc")
    return project


def test_md5_is_read_from_the_dvc_file(data_project):
    recorded = (data_project.path / "data" / "era5.csv.dvc").read_text()
    md5 = dvc_md5(data_project.path, "data/era5.csv")
    assert md5 and f"md5: {md5}" in recorded


def test_untracked_data_path_fails_validation_with_a_hint(project):
    project.write("data/raw.csv", "x\n")
    project.write(
        "mantik.yaml",
        DATA_SPEC.replace("data/era5.csv", "data/raw.csv")
        .replace("environments:\n  py: {requirements: requirements.txt}\n", "")
        .replace("    environment: py\n", ""),
    )
    result = project.mantik("validate", check=1)
    assert "data.era5.path: data/raw.csv is not tracked by DVC (run `dvc add data/raw.csv`)" in result.stderr


def test_new_data_version_reruns_exactly_the_runs_that_use_it(data_project):
    data_project.mantik("apply", "--auto-approve", "--wait")
    runs = data_project.runs()
    with_data = [r for r in runs if r.data.tags["mantik.experiment"] == "with_data"]
    assert {r.data.tags["mantik.data"] for r in with_data} == {
        f'{{"era5": "md5:{dvc_md5(data_project.path, "data/era5.csv")}"}}'
    }
    started = [e for e in data_project.events() if e["event"] == "start" and "--data" in e["args"]]
    assert {e["args"]["--data"] for e in started} == {str(data_project.path / "data" / "era5.csv")}

    old = dvc_md5(data_project.path, "data/era5.csv")
    data_project.write("data/era5.csv", "t,value\n0,1.0\n1,2.0\n")
    dvc(data_project, "add", "data/era5.csv")
    data_project.commit("more data")
    new = dvc_md5(data_project.path, "data/era5.csv")
    plan = data_project.plan_json()
    actions = {(r["experiment"], r["action"]) for r in plan["runs"]}
    assert actions == {("with_data", "submit"), ("without_data", "up_to_date")}
    reasons = {r["reason"] for r in plan["runs"] if r["action"] == "submit"}
    assert reasons == {f"data.era5 changed (md5:{old[:12]}… → md5:{new[:12]}…)"}


def test_changed_requirements_rerun_the_runs_of_that_environment(data_project):
    data_project.mantik("apply", "--auto-approve", "--wait")
    data_project.write("requirements.txt", "numpy==2.2.0\n")
    data_project.commit("bump numpy")
    plan = data_project.plan_json()
    submits = [r for r in plan["runs"] if r["action"] == "submit"]
    assert {r["experiment"] for r in submits} == {"with_data"}
    assert all(r["reason"].startswith("environment changed (requirements:sha256") for r in submits)


def test_validate_imports_no_dvc(data_project):
    probe = (
        "import sys; from mantik_spec.spec.load import load_spec; "
        f"load_spec({str(data_project.path)!r}); print(sorted(m for m in sys.modules if m.split('.')[0] == 'dvc'))"
    )
    assert (
        subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.strip() == "[]"
    )


def test_explain_shows_what_a_key_is_made_of(data_project):
    import json

    data_project.mantik("apply", "--auto-approve", "--wait")
    point = json.loads(data_project.mantik("explain", "with_data[lr=0.1]").stdout)
    assert point["inputs"]["data"] == {"era5": f"md5:{dvc_md5(data_project.path, 'data/era5.csv')}"}
    assert point["inputs"]["parameters"] == {"lr": 0.1}
    assert len(point["runs"]) == 1 and point["runs"][0]["status"] == "FINISHED"
    run = json.loads(data_project.mantik("explain", point["runs"][0]["run_id"]).stdout)
    assert run["run_key"] == point["run_key"]
    assert run["key_matches_inputs"] is True
    missing = data_project.mantik("explain", "nothing[x=1]", check=1)
    assert "is neither a declared run point" in missing.stderr


def test_reproduce_recreates_a_run_with_its_data_version_and_key(data_project):
    data_project.mantik("apply", "--auto-approve", "--wait")
    original = next(r for r in data_project.runs() if r.data.tags["mantik.point"] == "with_data[lr=0.1]")
    data_project.write("data/era5.csv", "t,value\n9,9.0\n")  # the working tree moves on
    dvc(data_project, "add", "data/era5.csv")
    data_project.commit("newer data")

    out = data_project.mantik("reproduce", original.info.run_id).stdout
    new_id = out.split()[2].rstrip(",")
    data_project.wait_until(lambda: data_project.client().get_run(new_id).info.status == "FINISHED", message="finish")
    new = data_project.client().get_run(new_id)
    assert new.data.tags["mantik.run_key"] == original.data.tags["mantik.run_key"]
    assert new.data.tags["mantik.reproduces"] == original.info.run_id
    assert new.data.tags["mantik.commit"] == original.data.tags["mantik.commit"]
    used = [e for e in data_project.events() if e["event"] == "start" and "--data" in e["args"]][-1]["args"]["--data"]
    assert ".mantik/reproduce/" in used
    assert Path(used).read_text() == "t,value\n0,1.0\n"  # the version the original run used


def test_reproduce_refuses_what_it_cannot_recreate(data_project):
    data_project.mantik("apply", "--auto-approve", "--wait")
    run = next(r for r in data_project.runs() if r.data.tags["mantik.experiment"] == "with_data")
    client = data_project.client()
    commit = run.data.tags["mantik.commit"]
    client.set_tag(run.info.run_id, "mantik.commit", "0" * 40)
    refused = data_project.mantik("reproduce", run.info.run_id, check=1)
    assert f"was made at commit {'0' * 7}, which is not in this repository" in refused.stderr
    client.set_tag(run.info.run_id, "mantik.commit", commit)

    data_project.write("data/era5.csv", "t,value\n5,5.0\n")
    dvc(data_project, "add", "data/era5.csv")
    data_project.commit("newer data")
    subprocess.run(["rm", "-rf", str(data_project.path / ".dvc" / "cache")], check=True)
    refused = data_project.mantik("reproduce", run.info.run_id, check=1)
    assert "not in the DVC cache, and the remote does not have it either" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_unpushed_data_versions_are_found(data_project, tmp_path):
    from mantik_spec.state.dvcdata import unpushed

    dvc(data_project, "remote", "add", "-d", "storage", str(tmp_path / "remote"))
    assert unpushed(data_project.path, ["data/era5.csv"]) == (["data/era5.csv"], "storage")
    dvc(data_project, "push", "-q")
    assert unpushed(data_project.path, ["data/era5.csv"]) == ([], "storage")


def test_dvc_example_runs_to_finished(tmp_path):
    from .conftest import run_example

    result = run_example("dvc-data", tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "No changes. Runs match the spec." in result.stdout


def test_runs_on_unpinned_urls_are_marked_not_reproducible(project):
    spec = DATA_SPEC.replace(
        "era5: {path: data/era5.csv}", "era5: {url: 'https://example.org/era5.csv', unpinned: true}"
    )
    spec = spec.replace("environments:\n  py: {requirements: requirements.txt}\n", "").replace(
        "    environment: py\n", ""
    )
    spec = spec.replace("lr: [0.1, 0.2]}", "lr: 0.1}")
    project.write("mantik.yaml", spec)
    project.commit("unpinned url")
    project.mantik("apply", "--auto-approve", "--wait")
    tags = {r.data.tags["mantik.experiment"]: r.data.tags for r in project.runs()}
    assert tags["with_data"]["mantik.not_reproducible"] == "unpinned data: era5"
    assert "mantik.not_reproducible" not in tags["without_data"]
    started = [e for e in project.events() if e["event"] == "start" and "--data" in e["args"]]
    assert started[0]["args"]["--data"] == "https://example.org/era5.csv"


def test_declared_environment_is_where_the_command_runs(project):
    project.write("envs/fake/bin/activate", "export ACTIVATED=yes\n")
    spec = textwrap.dedent(
        """
        version: 1
        project: envdemo
        entry_points:
          train:
            command: python train.py --lr {lr} --greeting "$GREETING-$ACTIVATED"
            parameters: {lr: float}
        environments:
          fake: {venv: envs/fake, variables: {GREETING: hello}}
        experiments:
          one: {entry_point: train, environment: fake, parameters: {lr: 0.1}}
        """
    )
    project.write("mantik.yaml", spec)
    project.commit("an environment")
    project.mantik("apply", "--auto-approve", "--wait")
    started = [e for e in project.events() if e["event"] == "start"]
    assert started[0]["args"]["--greeting"] == "hello-yes"
    run = project.runs()[0]
    assert run.data.tags["mantik.environment"] == 'variables:{"GREETING": "hello"}'
    project.write("mantik.yaml", spec.replace("GREETING: hello", "GREETING: goodbye"))
    project.commit("other greeting")
    plan = project.plan_json()
    assert [r["action"] for r in plan["runs"]] == ["submit"]
    assert plan["runs"][0]["reason"].startswith("environment changed")


def test_pre_and_post_run_lines_cannot_swallow_the_command(project):
    project.write(
        "mantik.yaml",
        """
        version: 1
        project: envdemo
        entry_points:
          train:
            command: python train.py --lr {lr} --greeting "$STAGE"
            parameters: {lr: float}
        environments:
          staged:
            pre_run: ["export STAGE=prepared  # a comment ends only its own line"]
            post_run: ["test -n \\"$STAGE\\"; echo after"]
        experiments:
          one: {entry_point: train, environment: staged, parameters: {lr: 0.1}}
        """,
    )
    project.commit("pre- and post-run lines")
    project.mantik("apply", "--auto-approve", "--wait")
    started = [e for e in project.events() if e["event"] == "start"]
    assert [e["args"]["--greeting"] for e in started] == ["prepared"]  # the command ran, after the pre-run line
    (run,) = project.runs()
    assert run.info.status == "FINISHED"


def test_a_file_inside_a_tracked_directory_is_versioned_by_that_directory(project):
    """`dvc add data/raw`, then `path: data/raw/train.csv`: the directory's version and the path below it."""
    dvc(project, "init", "-q")
    project.write("data/raw/train.csv", "x,y\n0,1\n")
    project.write("data/raw/test.csv", "x,y\n2,3\n")
    dvc(project, "add", "data/raw")
    project.write("requirements.txt", "numpy==2.1.0\n")
    spec = DATA_SPEC.replace("path: data/era5.csv", "path: data/raw/train.csv")
    project.write("mantik.yaml", spec)
    project.commit("a file inside a tracked directory")
    project.mantik("validate")
    directory_md5 = dvc_md5(project.path, "data/raw")
    assert directory_md5.endswith(".dir")
    assert dvc_md5(project.path, "data/raw/train.csv") == f"{directory_md5}/train.csv"
    assert dvc_md5(project.path, "data/raw/train.csv/") == f"{directory_md5}/train.csv"
    project.mantik("apply", "--auto-approve", "--wait")
    assert sorted(r.info.status for r in project.runs()) == ["FINISHED"] * 4
    given = [e["args"]["--data"] for e in project.events() if e["event"] == "start" and "--data" in e["args"]]
    assert len(given) == 2 and all(Path(p).read_text() == "x,y\n0,1\n" for p in given)  # the job reads the file
    assert project.plan_json()["summary"]["up_to_date"] == 4

    # a new version of the directory reruns the runs that read it, and only those
    project.write("data/raw/test.csv", "x,y\n9,9\n")
    dvc(project, "add", "data/raw")
    dirty = project.mantik("plan")
    assert "data/raw.dvc" in dirty.stdout + dirty.stderr  # the uncommitted pin is the directory's .dvc file
    project.commit("new directory version")
    plan = project.plan_json()
    submits = [r for r in plan["runs"] if r["action"] == "submit"]
    assert sorted(r["experiment"] for r in submits) == ["with_data", "with_data"]
    assert all(r["reason"].startswith("data.era5 changed") for r in submits)


def test_a_path_inside_a_tracked_file_or_untracked_directory_is_still_untracked(project):
    dvc(project, "init", "-q")
    project.write("data/blob", "not a directory\n")
    dvc(project, "add", "data/blob")
    project.write("other/train.csv", "x\n")
    project.commit("tracked file")
    assert dvc_md5(project.path, "data/blob/inner.csv") is None
    assert dvc_md5(project.path, "other/train.csv") is None
    assert dvc_md5(project.path, "data/blob") is not None
