"""What a plan costs: time limits read as sbatch and UNICORE read them, the node-, core- and GPU-hours of a
run, the plan's Cost line and JSON, and budgets that stop an apply before anything is written."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from mantik_spec.reconcile.plan import BackendCost, Plan, PlanCost
from mantik_spec.spec.cost import slurm_minutes, unicore_seconds
from mantik_spec.spec.model import LocalConfig, SlurmConfig, Spec, UnicoreConfig
from mantik_spec.views.plan import render_markdown, render_text

from .conftest import BASIC_SPEC


@pytest.mark.parametrize(
    ("limit", "minutes"),
    [
        ("90", 90),  # MINUTES
        (90, 90),
        ("90:30", 91),  # MINUTES:SECONDS, seconds rounded up to a minute
        ("90:00", 90),
        ("2:00:00", 120),  # HOURS:MINUTES:SECONDS
        ("0:00:01", 1),
        ("1-2", 26 * 60),  # DAYS-HOURS
        ("1-02:30", 26 * 60 + 30),  # DAYS-HOURS:MINUTES
        ("1-02:30:15", 26 * 60 + 31),  # DAYS-HOURS:MINUTES:SECONDS
        ("UNLIMITED", None),
        ("INFINITE", None),
        ("0", None),  # sbatch: a zero asks for no limit
    ],
)
def test_slurm_time_limits_read_as_sbatch_reads_them(limit, minutes):
    assert slurm_minutes(limit) == minutes


def test_unicore_runtimes_read_in_seconds():
    assert [unicore_seconds(t) for t in ("90m", "12h", "1d", "3600", 45, "30s")] == [
        5400,
        43200,
        86400,
        3600,
        45,
        30,
    ]
    with pytest.raises(ValueError):
        unicore_seconds("1w")


def slurm(name: str = "cluster", **resources) -> SlurmConfig:
    return SlurmConfig(type="slurm", resources=resources)


def plan_starting(runs: dict[str, tuple[int, object]], used: float = 0.0, budget: float | None = None) -> Plan:
    """A plan whose only content is its cost: ``runs``: backend -> (runs it starts, its config)."""
    by_backend = {
        name: BackendCost(
            count, config.run_cost(), 0.0, config.budget.node_hours if getattr(config, "budget", None) else None
        )
        for name, (count, config) in runs.items()
    }
    plan = Plan([], "0" * 40, "digest", cost=PlanCost(by_backend, used, budget))
    return plan


def cost_line(plan: Plan) -> str:
    return next(line for line in render_text(plan).splitlines() if line.startswith("Cost:"))


def test_a_4_node_gpu_run_costs_nodes_times_its_limit():
    config = slurm(nodes=4, gres="gpu:a100:4", ntasks_per_node=4, cpus_per_task=12, time="2:00:00")
    assert cost_line(plan_starting({"booster": (1, config)})) == (
        "Cost: 8 node-hours (booster: 1 run x 4 nodes x 2h; core-hours 384; GPU-hours 32)"
    )


def test_a_1_core_cpu_run_costs_its_minutes():
    config = slurm(ntasks=1, cpus_per_task=1, time="30")
    assert cost_line(plan_starting({"cpu": (1, config)})) == (
        "Cost: 0.5 node-hours (cpu: 1 run x 1 node x 30m; core-hours 0.5)"
    )


def test_unicore_runs_cost_nodes_times_runtime_and_local_runs_are_free():
    site = UnicoreConfig(
        type="unicore", url="https://site/rest/core", resources={"nodes": 2, "runtime": "90m", "gpus_per_node": 4}
    )
    plan = plan_starting({"site": (3, site), "local": (2, LocalConfig(type="local"))})
    assert cost_line(plan) == "Cost: 9 node-hours (site: 3 runs x 2 nodes x 1h30m; GPU-hours 36), local runs free"
    assert "Cost:" in render_markdown(plan)


def test_a_run_without_a_time_limit_costs_unknown_never_zero():
    plan = plan_starting({"cluster": (2, slurm(nodes=2)), "other": (1, slurm(time="60"))})
    assert cost_line(plan) == (
        "Cost: at least 1 node-hours (cluster: 2 runs, unknown: no time limit (resources.time), "
        "other: 1 run x 1 node x 1h)"
    )
    assert plan.cost and plan.cost.to_json()["unknown"] == ["cluster"]
    assert plan.cost.by_backend["cluster"].to_json()["node_hours"] is None


def test_budgets_name_themselves_and_their_numbers():
    config = SlurmConfig(type="slurm", resources={"nodes": 2, "time": "1:00:00"}, budget={"node_hours": 10})
    plan = plan_starting({"cluster": (6, config)})
    assert plan.cost and plan.cost.over_budget() == [
        "budget of backend cluster: 0 node-hours used + 12 planned > 10"
    ]
    project = plan_starting({"cluster": (6, slurm(nodes=2, time="60"))}, used=9.5, budget=20)
    assert project.cost and project.cost.over_budget() == [
        "budget of the project: 9.5 node-hours used (at most) + 12 planned > 20"
    ]
    unknown = plan_starting({"cluster": (1, slurm())}, budget=20)
    assert unknown.cost and unknown.cost.over_budget() == [
        "budget of the project (20 node-hours): the cost of its runs is unknown "
        "(cluster: no time limit (resources.time)); set the time limit"
    ]
    assert plan_starting({"local": (5, LocalConfig(type="local"))}, budget=1).cost.over_budget() == []


@pytest.mark.parametrize("value", ["0", "-3", "'ten'"])
def test_a_budget_that_is_not_a_positive_number_is_refused(value):
    import yaml

    data = yaml.safe_load(BASIC_SPEC)
    data["budget"] = yaml.safe_load(f"{{node_hours: {value}}}")
    with pytest.raises(ValidationError, match="budget.node_hours"):
        Spec.model_validate(data)


def test_local_plan_json_carries_the_cost_and_runs_record_theirs(project):
    plan = project.plan_json()
    assert plan["cost"]["node_hours"] == 0
    assert plan["cost"]["by_backend"]["local"] == {
        "runs": 2,
        "node_hours": 0.0,
        "core_hours": None,
        "gpu_hours": None,
        "free": True,
        "unknown": None,
        "used_node_hours_at_most": 0.0,
        "used_node_hours_measured": 0.0,
        "budget_node_hours": None,
    }
    assert "Cost: 0 node-hours, local runs free" in project.mantik("plan").stdout
    project.mantik("apply", "--auto-approve")
    assert [r.data.tags["mantik.cost.node_hours"] for r in project.runs()] == ["0.0", "0.0"]
    assert "Cost:" not in project.mantik("plan").stdout  # nothing to start, nothing to pay


def test_sbatch_args_that_set_the_time_or_nodes_make_the_cost_unknown():
    config = SlurmConfig(type="slurm", resources={"time": "60"}, sbatch_args=["--time=10:00:00"])
    assert config.run_cost().node_hours is None
    assert config.run_cost().unknown == "sbatch_args set --time or --nodes"
    assert SlurmConfig(type="slurm", resources={"time": "60"}, sbatch_args=["--time-min=30"]).run_cost().hours == 1


def test_the_plan_shows_each_budget_its_runs_count_against():
    config = SlurmConfig(type="slurm", resources={"nodes": 2, "time": "60"}, budget={"node_hours": 100})
    plan = plan_starting({"cluster": (6, config)}, used=3.25, budget=500)
    lines = render_text(plan).splitlines()
    assert lines[-1] == (
        "Budget: backend cluster: 0 node-hours used + 12 planned of 100; "
        "the project: 3.25 node-hours used (at most) + 12 planned of 500"
    )
