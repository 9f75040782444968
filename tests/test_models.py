"""Model promotion decided from plain data (reconcile/promotion.py), and the spec's models: checked by validate.

The registry and the runs are given as the planner sees them: no MLflow, no git, no processes. What apply
writes, on the sqlite store and on an `mlflow server`, is in tests/test_models_e2e.py.
"""

from __future__ import annotations

import itertools
import math
import textwrap

import pytest

from mantik_spec.reconcile.identity import ObservedRun
from mantik_spec.reconcile.plan import Action, ModelAction, Plan, PlannedRun
from mantik_spec.reconcile.planfile import StalePlanError, read_plan, write_plan
from mantik_spec.reconcile.promotion import (
    ModelSource,
    ObservedModel,
    ObservedVersion,
    held_runs,
    plan_models,
    registry_digest,
    winners,
)
from mantik_spec.spec.load import load_spec
from mantik_spec.spec.model import Model
from mantik_spec.spec.yamlload import SpecError
from mantik_spec.views.plan import render_markdown, render_text

from .support.planning import desired, point

_ids = itertools.count()
WINE = Model(experiment="sweep", metric="loss", goal="minimize", artifact="model", alias="champion")
LRS = (0.1, 0.2, 0.3, 0.4)
WANTED = [desired(point(lr=lr)) for lr in LRS]


def finished(lr: float, loss: float | None, end: int = 100, status: str = "FINISHED", run_id: str | None = None):
    want = next(w for w in WANTED if w.point.values["lr"] == lr)
    return ObservedRun(
        run_id=run_id or f"run{next(_ids)}",
        experiment_id="1",
        status=status,
        run_key=want.key,
        point_id=want.point.point_id,
        attempt=1,
        backend="local",
        job_id="job",
        commit="c0ffee0",
        code=want.identity.code,
        command=want.identity.command,
        parameters=want.identity.parameters,
        data={},
        environment="",
        start_time=1,
        end_time=end,
        experiment="sweep",
        metrics={} if loss is None else {"loss": loss},
    )


def source_of(run: ObservedRun) -> ModelSource:
    return ModelSource(f"file:///store/{run.run_id}/artifacts/model")


def decide(runs, registry=None, model=WINE, entries=(), sources=None):
    """The registry actions for one model ``wine``, its winner's model (and the model of the run behind its
    alias now) found where they should be."""
    models = {"wine": model}
    found = winners(models, WANTED, runs, list(entries))
    if sources is None:
        sources = {name: source_of(run) for name, run in found.items()}
    held = {name: source_of(run) for name, run in held_runs(models, runs, registry or {}).items()}
    return plan_models(models, WANTED, runs, list(entries), registry or {}, sources, held), found.get("wine")


def registered(*versions: tuple[str, ObservedRun | None], alias: str | None = None) -> dict[str, ObservedModel]:
    """The registry holding model wine with these versions (number, run or None for a foreign one)."""
    kept = tuple(
        ObservedVersion(number, run.run_id if run else "elsewhere", source_of(run).source if run else "s3://x/m")
        for number, run in versions
    )
    return {"wine": ObservedModel("wine", True, kept, {"champion": alias} if alias else {})}


def actions(result) -> list[tuple[str, str | None]]:
    return [(m.action.label, m.point_id) for m in result.entries]


def test_the_best_finished_run_is_registered_and_the_alias_set():
    runs = [finished(0.1, 0.012), finished(0.2, 0.02)]
    result, winner = decide(runs)
    assert actions(result) == [("register", "sweep[lr=0.1]"), ("alias", "sweep[lr=0.1]")]
    register, alias = result.entries
    assert register.run_id == winner.run_id == runs[0].run_id and register.value == 0.012
    assert register.source == source_of(runs[0]).source
    assert (alias.previous, alias.version, alias.target) == (None, None, "v1")
    assert not result.errors


def test_maximize_picks_the_highest_value():
    result, winner = decide(
        [finished(0.1, 0.5), finished(0.2, 0.9)], model=WINE.model_copy(update={"goal": "maximize"})
    )
    assert winner.point_id == "sweep[lr=0.2]"


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, 1.7976931348623157e308])
def test_nan_or_infinite_never_wins(bad):
    """A diverged run (NaN loss) would win a naive min(); inf and MLflow's stand-in for it neither."""
    result, winner = decide([finished(0.1, bad), finished(0.2, 0.5)])
    assert winner.point_id == "sweep[lr=0.2]"


def test_only_nan_holds_the_alias_with_a_warning():
    result, winner = decide([finished(0.1, math.nan)], registry=registered(("1", None), alias="1"))
    assert winner is None and actions(result) == [("hold", None)]
    assert "no finished run of sweep has a finite loss" in result.warnings[0]
    assert result.entries[0].previous == "1"


def test_a_tie_breaks_by_the_earliest_end_then_the_run_id():
    late, early = finished(0.1, 0.012, end=200, run_id="a"), finished(0.2, 0.012, end=100, run_id="b")
    for order in ([late, early], [early, late]):
        assert decide(order)[1].run_id == "b"
    same = [finished(0.1, 0.012, end=100, run_id="z"), finished(0.2, 0.012, end=100, run_id="c")]
    assert decide(same)[1].run_id == decide(same[::-1])[1].run_id == "c"


def test_only_finished_runs_of_current_points_compete():
    failed = finished(0.1, 0.001, status="FAILED")
    stranger = finished(0.2, 0.0001)
    stranger.run_key = "0" * 64  # a point the spec no longer declares (or another experiment's)
    result, winner = decide([failed, stranger, finished(0.3, 0.5)])
    assert winner.point_id == "sweep[lr=0.3]"


def test_a_point_with_work_left_holds_the_choice():
    runs = [finished(0.1, 0.012)]
    pending = PlannedRun(Action.RUNNING, "sweep", "sweep[lr=0.2]", WANTED[1].key, "local", {}, "job 7 running")
    result, winner = decide(runs, entries=[pending])
    assert winner is None and actions(result) == [("hold", None)]
    assert "waiting for 1 run(s) of sweep" in result.entries[0].reason
    # a run of a point the spec no longer declares, closed by the same apply, holds nothing
    gone = PlannedRun(Action.REPAIR, "sweep", "sweep[lr=9.0]", "0" * 64, "local", {}, "job 8 ended FAILED")
    assert decide(runs, entries=[gone])[1] == runs[0]


def test_a_second_plan_after_registering_changes_nothing():
    best = finished(0.1, 0.012)
    result, _ = decide([best, finished(0.2, 0.02)], registry=registered(("1", best), alias="1"))
    assert actions(result) == [("hold", "sweep[lr=0.1]")]
    assert result.entries[0].reason == "up to date (sweep[lr=0.1] (loss 0.012))"


def test_a_better_point_registers_and_moves_the_alias():
    old, better = finished(0.1, 0.012), finished(0.3, 0.009)
    result, _ = decide([old, better], registry=registered(("1", old), alias="1"))
    assert actions(result) == [("register", "sweep[lr=0.3]"), ("alias", "sweep[lr=0.3]")]
    alias = result.entries[1]
    assert (alias.previous, alias.target) == ("1", "v2")
    assert alias.reason == "sweep[lr=0.3] (loss 0.009) is better than v1's sweep[lr=0.1] (loss 0.012) by 0.003"


def test_an_existing_version_of_the_winner_is_reused_not_registered_again():
    old, better = finished(0.1, 0.012), finished(0.3, 0.009)
    result, _ = decide([old, better], registry=registered(("1", old), ("2", better), alias="1"))
    assert actions(result) == [("alias", "sweep[lr=0.3]")]
    assert result.entries[0].version == "2"


def test_min_improvement_holds_the_alias_for_a_small_gain():
    model = WINE.model_copy(update={"min_improvement": 0.01})
    old, slightly = finished(0.1, 0.012), finished(0.3, 0.0115)
    result, _ = decide([old, slightly], registry=registered(("1", old), alias="1"), model=model)
    assert actions(result) == [("hold", "sweep[lr=0.3]")]
    assert "less than min_improvement 0.01" in result.entries[0].reason
    much = finished(0.4, 0.001)
    result, _ = decide([old, slightly, much], registry=registered(("1", old), alias="1"), model=model)
    assert actions(result) == [("register", "sweep[lr=0.4]"), ("alias", "sweep[lr=0.4]")]


def test_a_version_written_by_someone_else_is_evidence_not_a_result():
    """The alias points at a version no run of this project made: it moves to the winner's version, and a
    version that names the winning run but points elsewhere is never aliased."""
    best = finished(0.1, 0.012)
    forged = ObservedVersion("2", best.run_id, "s3://attacker/model")
    registry = {
        "wine": ObservedModel("wine", True, (ObservedVersion("1", "other", "s3://x"), forged), {"champion": "1"})
    }
    result, _ = decide([best], registry=registry, model=WINE.model_copy(update={"min_improvement": 5.0}))
    assert actions(result) == [("register", "sweep[lr=0.1]"), ("alias", "sweep[lr=0.1]")]
    assert "v2 name this run but point elsewhere: not used" in result.entries[0].reason
    assert "v1 is no model of a run of this project" in result.entries[1].reason
    assert result.entries[1].version is None  # the version apply registers, not the forged v2


def test_a_forged_version_of_an_earlier_run_does_not_hold_the_alias():
    """Someone registers a version naming this project's old champion run but pointing at their own model and
    moves the alias to it: min_improvement weighs nothing against it, the alias moves to the winner."""
    old, slightly = finished(0.1, 0.012), finished(0.3, 0.0115)
    forged = ObservedVersion("2", old.run_id, "s3://attacker/model")
    honest = ObservedVersion("1", old.run_id, source_of(old).source)
    registry = {"wine": ObservedModel("wine", True, (honest, forged), {"champion": "2"})}
    model = WINE.model_copy(update={"min_improvement": 0.01})
    result, _ = decide([old, slightly], registry=registry, model=model)
    assert actions(result) == [("register", "sweep[lr=0.3]"), ("alias", "sweep[lr=0.3]")]
    assert result.entries[1].reason.startswith("v2 is no model of a run of this project")
    registry = {"wine": ObservedModel("wine", True, (honest, forged), {"champion": "1"})}  # the honest one: held
    assert actions(decide([old, slightly], registry=registry, model=model)[0]) == [("hold", "sweep[lr=0.3]")]


def test_a_metric_no_run_logs_is_an_error_naming_a_run():
    run = finished(0.1, None)
    run.metrics = {"acc": 0.9}
    result, _ = decide([run])
    assert result.entries == []
    assert result.errors == [
        f"model wine: no finished run of sweep logs metric 'loss' (run {run.run_id} (sweep[lr=0.1]) logs: acc)"
    ]


def test_a_winner_without_the_artifact_is_an_error_naming_it():
    best = finished(0.1, 0.012)
    result, _ = decide([best, finished(0.2, 0.02)], sources={"wine": None})
    assert result.entries == []
    assert result.errors == [
        f"model wine: the winning run {best.run_id} (sweep[lr=0.1]) has no model at artifact path 'model' "
        "(no MLmodel there and no logged model of that name)"
    ]


def plan_with(result, registry) -> Plan:
    return Plan(entries=[], commit="abc", spec_digest="d", models=result.entries, registry=registry_digest(registry))


def test_plan_text_json_markdown_and_exit_status_carry_registry_actions():
    old, better = finished(0.1, 0.012), finished(0.3, 0.009)
    registry = registered(("1", old), alias="1")
    plan = plan_with(decide([old, better], registry=registry)[0], registry)
    assert plan.has_changes  # --detailed-exitcode: 2
    text = render_text(plan)
    assert "  + register wine <- sweep[lr=0.3] (loss 0.009)" in text
    assert "  ~ alias wine@champion: v1 -> v2" in text
    assert "1 to register, 1 to alias." in text
    data = plan.to_json()
    assert [(m["action"], m["symbol"]) for m in data["models"]] == [("register", "+"), ("alias", "~")]
    assert data["models_summary"] == {"register": 1, "alias": 1, "hold": 0}
    assert "| `~` | alias | `alias wine@champion: v1 -> v2` | model registry |" in render_markdown(plan)
    held = plan_with(decide([old], registry=registry)[0], registry)
    assert not held.has_changes and held.model_changes() == []
    assert "  = wine@champion: v1: up to date" in render_text(held)
    assert "- `wine@champion: v1`: up to date \\(sweep\\[lr\\=0\\.1\\] \\(loss 0\\.012\\)\\)" in render_markdown(held)


def test_a_saved_plan_is_stale_once_the_registry_changed(tmp_path):
    old = finished(0.1, 0.012)
    before = registered(("1", old), alias="1")
    saved = tmp_path / "plan.json"
    write_plan(saved, plan_with(decide([old], registry=before)[0], before), prune=False)
    read_plan(saved).check_current(plan_with(decide([old], registry=before)[0], before))  # unchanged: current
    after = registered(("1", old), ("2", None), alias="2")  # someone moved the alias to their own version
    with pytest.raises(StalePlanError, match="the model registry changed since it was written"):
        read_plan(saved).check_current(plan_with(decide([old], registry=after)[0], after))


def test_model_actions_are_their_symbols():
    assert [a.value for a in ModelAction] == ["+", "~", "="]


# -- validate --------------------------------------------------------------------------------------------

SPEC = """\
version: 1
project: demo
entry_points:
  train: {command: "python train.py --lr {lr}", parameters: {lr: float}}
experiments:
  sweep: {entry_point: train, parameters: {lr: [0.1, 0.2]}}
models:
  NAME:
    experiment: EXPERIMENT
    metric: loss
    goal: GOAL
    artifact: model
    alias: ALIAS
"""


def problems(tmp_path, name="wine", experiment="sweep", goal="minimize", alias="champion", extra="") -> list[str]:
    text = SPEC.replace("NAME", name).replace("EXPERIMENT", experiment).replace("GOAL", goal)
    (tmp_path / "mantik.yaml").write_text(text.replace("ALIAS", alias) + textwrap.indent(extra, "    "))
    try:
        load_spec(tmp_path)
    except SpecError as exc:
        return [str(p) for p in exc.problems]
    return []


def test_a_valid_models_block_loads(tmp_path):
    assert problems(tmp_path, extra="min_improvement: 0.01\n") == []
    assert load_spec(tmp_path).spec.models["wine"].min_improvement == 0.01


@pytest.mark.parametrize(
    "where, expected",
    [
        ({"experiment": "swep"}, "mantik.yaml:9:17: models.wine.experiment: unknown experiment 'swep'; did you mean 'sweep'?"),
        ({"goal": "lowest"}, "mantik.yaml:11:11: models.wine.goal: input should be 'minimize' or 'maximize', got 'lowest'"),
        ({"extra": "min_improvement: 0\n"}, "mantik.yaml:14:22: models.wine.min_improvement: input should be greater than 0, got 0"),
        ({"extra": "min_improvement: -0.5\n"}, "mantik.yaml:14:22: models.wine.min_improvement: input should be greater than 0, got -0.5"),
        ({"extra": "min_improvement: .nan\n"}, "mantik.yaml:14:22: models.wine.min_improvement: input should be a finite number, got .nan"),
        ({"extra": "min_improvement: '0.1'\n"}, "mantik.yaml:14:22: models.wine.min_improvement: input should be a valid number, got '0.1'"),
        ({"extra": "min_improvement: true\n"}, "mantik.yaml:14:22: models.wine.min_improvement: input should be a valid number, got true"),
        ({"alias": "latest"}, "mantik.yaml:13:12: models.wine.alias: alias 'latest' is reserved by MLflow (it names the newest version)"),
        ({"alias": "V12"}, "mantik.yaml:13:12: models.wine.alias: alias 'V12' looks like a version (v1, V2...), which MLflow reserves"),
        ({"alias": "prod.v"}, "mantik.yaml:13:12: models.wine.alias: alias 'prod.v': only letters, digits, underscores (_) and dashes (-) (MLflow's rule)"),
        ({"name": "team/wine"}, "mantik.yaml:8:3: models.team/wine: registered model name 'team/wine' cannot contain '/' or ':' (MLflow's rule)"),
        ({"name": "'..'"}, "mantik.yaml:8:3: models...: registered model name '..' would resolve to '..' as a path (MLflow's rule)"),
    ],
)  # fmt: skip
def test_bad_models_are_located_errors(tmp_path, where, expected):
    assert problems(tmp_path, **where) == [expected]
