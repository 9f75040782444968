"""Model promotion against MLflow's real model registry: the sqlite store, and an `mlflow server` where a team's
registry lives. The decisions themselves are tested from plain data in tests/test_models.py."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from .conftest import run_example
from .support.mlflow_server import running_server

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

# each learning rate's loss; 0.4 diverges (NaN), 0.5 ties with 0.1; every run keeps a model directory
TRAIN = """\
import math, sys
import mlflow
args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
LOSS = {"0.1": 0.012, "0.2": 0.02, "0.3": 0.009, "0.35": 0.0115, "0.4": math.nan, "0.5": 0.012}
mlflow.log_metric("loss", LOSS[args["--lr"]])
mlflow.log_text("flavors: {}\\n", "model/MLmodel")
"""

SPEC = """\
version: 1
project: demo
code: {paths: [train.py]}
entry_points:
  train:
    command: python train.py --lr {lr}
    parameters: {lr: float}
backends:
  local: {type: local, max_parallel: 4}
experiments:
  sweep:
    entry_point: train
    parameters: {lr: LRS}
models:
  wine:
    experiment: sweep
    metric: loss
    goal: minimize
    artifact: model
    alias: champion
"""


def write_spec(project, lrs: str, extra: str = "") -> None:
    project.write("mantik.yaml", SPEC.replace("LRS", lrs) + extra)
    project.commit(f"lr {lrs}")


def versions(client) -> dict[str, object]:
    return {str(v.version): v for v in client.search_model_versions("name = 'wine'")}


def champion(client):
    return client.get_model_version_by_alias("wine", "champion")


def test_apply_promotes_the_best_run_and_keeps_the_registry_so(project):
    project.write("train.py", TRAIN)
    write_spec(project, "[0.1, 0.2, 0.5]")
    client = project.client()

    # one CI apply on merge ends with the alias set: --wait promotes once its runs finished
    applied = project.mantik("apply", "--auto-approve", "--wait")
    assert "waiting for 3 run(s) of sweep to finish before choosing" in applied.stdout
    assert "Registry: wine@champion -> v1" in applied.stdout
    runs = {run.data.tags["mantik.point"]: run for run in project.runs()}
    tied = sorted(
        (runs["sweep[lr=0.1]"], runs["sweep[lr=0.5]"]), key=lambda r: (r.info.end_time, r.info.run_id)
    )  # equal loss: the earliest end wins
    first = champion(client)
    assert str(first.version) == "1" and first.run_id == tied[0].info.run_id
    assert first.tags["mantik.run_key"] == tied[0].data.tags["mantik.run_key"]
    assert first.tags["mantik.point"] == tied[0].data.tags["mantik.point"]
    assert first.tags["mantik.commit"] == tied[0].data.tags["mantik.commit"]
    assert first.tags["mantik.metric_value"] == "0.012"
    assert first.source.endswith(f"/{tied[0].info.run_id}/artifacts/model")

    # a second apply adds nothing: the version is looked up by its run
    again = project.mantik("apply", "--auto-approve")
    assert "No changes." in again.stdout and "Registry:" not in again.stdout
    assert list(versions(client)) == ["1"]
    project.mantik("plan", "--detailed-exitcode")

    # a better point by less than min_improvement, and a diverged one: the alias holds
    write_spec(project, "[0.1, 0.2, 0.5, 0.35, 0.4]", "    min_improvement: 0.01\n")
    project.mantik("apply", "--auto-approve", "--wait")
    held = project.mantik("plan", "--detailed-exitcode")
    assert "wine@champion: v1: held: sweep[lr=0.35] (loss 0.0115) is better than v1's" in held.stdout
    assert "less than min_improvement 0.01" in held.stdout
    assert str(champion(client).version) == "1" and list(versions(client)) == ["1"]

    # without the guard the better point wins: plan shows it (exit 2), in JSON and Markdown too
    write_spec(project, "[0.1, 0.2, 0.5, 0.35, 0.4]")
    planned = project.mantik("plan", "--detailed-exitcode", check=2)
    assert "  + register wine <- sweep[lr=0.35] (loss 0.0115)" in planned.stdout
    assert "  ~ alias wine@champion: v1 -> v2" in planned.stdout
    data = project.plan_json()
    assert [(m["action"], m["point"]) for m in data["models"]] == [
        ("register", "sweep[lr=0.35]"),
        ("alias", "sweep[lr=0.35]"),
    ]
    assert "| `+` | register |" in project.mantik("plan", "--format", "markdown").stdout

    # a saved plan is refused once the registry changed under it
    project.mantik("plan", "--out", "saved.json")
    outsider = client.create_model_version("wine", "s3://elsewhere/model", runs["sweep[lr=0.2]"].info.run_id)
    stale = project.mantik("apply", "saved.json", check=1)
    assert "the model registry changed since it was written" in stale.stderr
    assert str(champion(client).version) == "1"

    # --prune moves the alias and deletes no version (the outsider's stays, never aliased: it points elsewhere)
    project.mantik("apply", "--auto-approve", "--prune")
    now = champion(client)
    assert now.run_id == runs_now(project)["sweep[lr=0.35]"] and str(now.version) == "3"
    assert sorted(versions(client)) == ["1", str(outsider.version), "3"]
    assert "wine@champion" in project.mantik("show", "sweep").stdout


def runs_now(project) -> dict[str, str]:
    return {run.data.tags["mantik.point"]: run.info.run_id for run in project.runs()}


@pytest.fixture
def mlflow_server(tmp_path, store_template):
    with running_server(tmp_path, store_template) as server:
        yield server


def test_promotion_on_an_mlflow_server(project, mlflow_server):
    """A team's registry: versions point at the server's artifact store, and a run without the model is
    refused by plan, naming it."""
    from mlflow.tracking import MlflowClient

    env = {"MLFLOW_TRACKING_URI": mlflow_server.url}
    project.write("train.py", TRAIN)
    write_spec(project, "[0.1, 0.3]")
    applied = project.mantik("apply", "--auto-approve", "--wait", env=env)
    assert "Registry: wine@champion -> v1" in applied.stdout
    client = MlflowClient(mlflow_server.url)
    best = champion(client)
    run = client.get_run(best.run_id)
    assert run.data.tags["mantik.point"] == "sweep[lr=0.3]" and best.source.startswith(run.info.artifact_uri)
    assert "wine@champion" in project.mantik("show", "sweep", env=env).stdout
    project.mantik("plan", "--detailed-exitcode", env=env)

    # the best run now lacks the model: plan refuses in one line naming the run, and apply moves nothing
    project.write("train.py", TRAIN.replace("mlflow.log_text", 'args["--lr"] == "0.3" or mlflow.log_text'))
    project.commit("no model for 0.3")
    project.mantik("apply", "--auto-approve", "--wait", env=env, check=1)
    refused = project.mantik("plan", "--json", env=env, check=1)
    winner = next(r for r in json.loads(refused.stdout)["runs"] if r["point"] == "sweep[lr=0.3]")["run_id"]
    assert f"Error: model wine: the winning run {winner} (sweep[lr=0.3]) has no model at artifact path 'model'" in (
        refused.stderr
    )
    assert str(champion(client).version) == "1" and len(client.search_model_versions("name = 'wine'")) == 1


def test_the_promotion_example_serves_its_champion(tmp_path):
    """examples/promotion as a newcomer runs it: one apply --wait, and models:/wine@champion loads and predicts."""
    result = run_example("promotion", tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Registry: wine@champion -> v1" in result.stdout
    assert "No changes. Runs match the spec." in result.stdout
    load = (
        "import mlflow, sys; from sklearn.datasets import load_wine; mlflow.set_tracking_uri(sys.argv[1]); "
        "model = mlflow.pyfunc.load_model('models:/wine@champion'); print(model.predict(load_wine().data[:3]).tolist())"
    )
    store = f"sqlite:///{tmp_path / 'promotion' / '.mantik' / 'mlflow.db'}"
    loaded = subprocess.run([sys.executable, "-c", load, store], capture_output=True, text=True, timeout=120)
    assert loaded.stdout.strip() == "[0, 0, 0]", loaded.stderr
