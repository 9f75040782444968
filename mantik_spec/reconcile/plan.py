"""The plan: what apply would do and why. Plain data, no I/O.

An :class:`Action` *is* its symbol, so a renderer cannot disagree with meaning.
``UP_TO_DATE``, ``RUNNING``, ``FAILED`` and ``SUSPENDED`` describe points that
need nothing; the first four (submit, retry, repair, cancel) are changes. A
:class:`ModelAction` is what a plan does to MLflow's model registry (register a
version, move an alias), beside the runs, each its own symbol among its kind.
"""

from __future__ import annotations

import enum
import hashlib
import json
from dataclasses import dataclass, field

from ..spec.cost import Allocation, RunCost
from ..vocab import FailureKind, RunStatus

PLAN_FORMAT_VERSION = 1


class Action(enum.Enum):
    SUBMIT = "+"
    RETRY = "~"
    REPAIR = "!"
    CANCEL = "-"
    UP_TO_DATE = "="
    RUNNING = "…"
    FAILED = "x"  # failed, no retries left: needs a change to the spec or code
    CANCELLED = "/"  # stopped with `mantik cancel`: stays so until `apply --replace` or a change
    SUSPENDED = "_"

    @property
    def is_change(self) -> bool:
        return self in CHANGES

    @property
    def label(self) -> str:
        return self.name.lower()

    @property
    def counted(self) -> str:
        """How a plan's summary counts it: ``2 to submit``, ``3 up to date``, ``1 failed``."""
        return f"to {self.label}" if self.is_change else self.label.replace("_", " ")


CHANGES = (Action.SUBMIT, Action.RETRY, Action.REPAIR, Action.CANCEL)
# the points a person must act on: counted under the summary line (Plan.notes) when there are any, in this order
NOTED = (Action.SUSPENDED, Action.FAILED, Action.CANCELLED)


class ModelAction(enum.Enum):
    """What a plan does to a registered model declared under ``models:`` (docs/models.md)."""

    REGISTER = "+"  # a new model version from the winning run
    ALIAS = "~"  # the alias moves to the winning run's version
    HOLD = "="  # the alias stays where it is (up to date, held by min_improvement, or no winner yet)

    @property
    def is_change(self) -> bool:
        return self in MODEL_CHANGES

    @property
    def label(self) -> str:
        return self.name.lower()

    @property
    def counted(self) -> str:
        return f"to {self.label}" if self.is_change else "held"


MODEL_CHANGES = (ModelAction.REGISTER, ModelAction.ALIAS)


@dataclass(frozen=True)
class PlannedModel:
    """One registry action of a plan. ``version``: the existing version an alias moves to (None: the one this
    plan registers); ``previous``: the version the alias points at now (None: unset); ``next_version``: the
    number a new version should get, for display only (MLflow numbers it)."""

    action: ModelAction
    model: str  # the registered model's name
    alias: str
    experiment: str
    reason: str
    run_id: str | None = None  # the winning run
    point_id: str | None = None
    run_key: str | None = None
    metric: str | None = None
    value: float | None = None  # the winning run's last value of the metric
    version: str | None = None
    previous: str | None = None
    next_version: str | None = None
    source: str | None = None  # the model's location a new version points at
    model_id: str | None = None  # the MLflow logged model the source names, when it is one

    @property
    def target(self) -> str:
        """The version the alias ends on, as people read it: ``v2``."""
        return f"v{self.version or self.next_version or '?'}"

    def to_json(self) -> dict:
        return {
            "action": self.action.label,
            "symbol": self.action.value,
            "model": self.model,
            "alias": self.alias,
            "experiment": self.experiment,
            "point": self.point_id,
            "run_id": self.run_id,
            "run_key": self.run_key,
            "metric": self.metric,
            "value": self.value,
            "version": self.version,
            "previous": self.previous,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class PlannedRun:
    action: Action
    experiment: str
    point_id: str
    run_key: str
    backend: str
    parameters: dict
    reason: str
    run_id: str | None = None  # the existing run this entry is about
    job_id: str | None = None
    attempt: int = 1  # the existing run's attempt
    next_attempt: int | None = None  # a new run with this attempt number is started (submit, retry, repair)
    mark_status: RunStatus | None = None  # the status recorded on the existing run (repair, cancel)
    failure_kind: FailureKind | None = None  # recorded with an unsuccessful mark_status: why the run ended
    exit_code: int | None = None  # the ended job's exit code, recorded with mark_status when the backend knows it
    record_job: bool = False  # the job was found on the backend but its id never recorded: record it

    def to_json(self) -> dict:
        return {
            "action": self.action.label,
            "symbol": self.action.value,
            "experiment": self.experiment,
            "point": self.point_id,
            "run_key": self.run_key,
            "backend": self.backend,
            "parameters": self.parameters,
            "reason": self.reason,
            "run_id": self.run_id,
            "job_id": self.job_id,
            "attempt": self.next_attempt or self.attempt,
        }


@dataclass(frozen=True)
class BackendCost:
    """What the runs a plan starts on one backend cost, and what this spec's recorded runs there used
    (``used``: the part ``measured`` by the site's accounting, the rest at time limits, an upper bound);
    ``budget``: the backend's own limit, if any."""

    runs: int
    run: RunCost
    used: float = 0.0
    budget: float | None = None
    measured: float = 0.0

    @property
    def node_hours(self) -> float | None:
        hours = self.run.node_hours
        return None if hours is None else self.runs * hours

    @property
    def core_hours(self) -> float | None:
        hours = self.run.core_hours
        return None if hours is None else self.runs * hours

    @property
    def gpu_hours(self) -> float | None:
        hours = self.run.gpu_hours
        return None if hours is None else self.runs * hours

    def to_json(self) -> dict:
        return {
            "runs": self.runs,
            "node_hours": self.node_hours,
            "core_hours": self.core_hours,
            "gpu_hours": self.gpu_hours,
            "free": self.run.free,
            "unknown": self.run.unknown or None,
            "used_node_hours_at_most": self.used,
            "used_node_hours_measured": self.measured,
            "budget_node_hours": self.budget,
        }


@dataclass(frozen=True)
class PlanCost:
    """The node-hours of the runs a plan starts (submit, retry, repair), per backend; ``used``: what this spec's
    recorded runs used in all (``measured`` of it by the sites' accounting, the rest at time limits, an upper
    bound); ``budget``: the spec's own limit, if any; ``allocations``: what the sites of the backends it starts
    runs on say is left (backend -> allocation), shown, never checked; ``starts``: when those sites estimate
    a job of each backend's shape would start (backend -> the site's time), an estimate."""

    by_backend: dict[str, BackendCost]
    used: float = 0.0
    budget: float | None = None
    measured: float = 0.0
    allocations: dict[str, Allocation] = field(default_factory=dict)
    starts: dict[str, str] = field(default_factory=dict)

    @property
    def node_hours(self) -> float:
        """The known part: :attr:`unknown` names the backends whose runs declare no time limit."""
        return sum(cost.node_hours or 0.0 for cost in self.by_backend.values())

    @property
    def unknown(self) -> list[str]:
        return [name for name, cost in self.by_backend.items() if cost.runs and cost.node_hours is None]

    @property
    def starts_runs(self) -> bool:
        return any(cost.runs for cost in self.by_backend.values())

    def budgets(self) -> list[tuple[str, float, float, float | None, float, list[str]]]:
        """Each budget that runs of this plan count against: (which, node-hours used, the part of them the sites
        measured, node-hours planned (None: unknown), the budget, the backends whose runs have no time limit
        with why)."""
        limits = [
            (f"budget of backend {name}", {name: cost}, cost.used, cost.measured, cost.budget)
            for name, cost in self.by_backend.items()
        ]
        limits.append(("budget of the project", self.by_backend, self.used, self.measured, self.budget))
        found = []
        for label, scope, used, measured, budget in limits:
            starting = {name: cost for name, cost in scope.items() if cost.runs and not cost.run.free}
            if budget is None or not starting:
                continue
            unknown = [f"{name}: {cost.run.unknown}" for name, cost in starting.items() if cost.node_hours is None]
            planned = None if unknown else sum(cost.node_hours or 0.0 for cost in starting.values())
            found.append((label, used, measured, planned, budget, unknown))
        return found

    def used_words(self, used: float, measured: float) -> str:
        """``12 node-hours used (at most)``: what recorded runs used, saying how much of it the sites measured
        (the rest counts at time limits, an upper bound)."""
        if measured >= used:
            return f"{hours(used)} node-hours used" + (" (measured)" if used else "")
        if measured > 0:
            return f"{hours(used)} node-hours used (at most; {hours(measured)} measured)"
        return f"{hours(used)} node-hours used (at most)"

    def over_budget(self) -> list[str]:
        """One line per budget this plan would exceed (or cannot be checked against: a run without a time
        limit); none when every budget holds."""
        problems = []
        for label, used, measured, planned, budget, unknown in self.budgets():
            if planned is None:
                problems.append(
                    f"{label} ({hours(budget)} node-hours): the cost of its runs is unknown ({'; '.join(unknown)}); "
                    "set the time limit"
                )
            elif used + planned > budget:
                problems.append(
                    f"{label}: {self.used_words(used, measured)} + {hours(planned)} planned > {hours(budget)}"
                )
        return problems

    def to_json(self) -> dict:
        return {
            "node_hours": self.node_hours,
            "unknown": self.unknown,
            "by_backend": {name: cost.to_json() for name, cost in self.by_backend.items()},
            "used_node_hours_at_most": self.used,
            "used_node_hours_measured": self.measured,
            "budget_node_hours": self.budget,
            "allocations": {name: allocation.to_json() for name, allocation in self.allocations.items()},
            "estimated_start": dict(self.starts),
        }


def hours(value: float) -> str:
    """A number of hours as people read it: 12, 0.5, 1.25 (at most two decimals)."""
    text = f"{value:,.2f}".rstrip("0").rstrip(".")
    return text.replace(",", "")


@dataclass
class Plan:
    entries: list[PlannedRun]
    commit: str
    spec_digest: str
    warnings: list[str] = field(default_factory=list)
    # backends that could not say what their jobs are doing: their runs are left as they were
    errors: list[str] = field(default_factory=list)
    cost: PlanCost | None = None  # what the runs it starts cost (build_plan computes it from the spec)
    models: list[PlannedModel] = field(default_factory=list)  # registry actions, one or two per declared model
    registry: str = ""  # digest of the declared models as observed in the registry: a saved plan must match it

    def count(self, action: Action) -> int:
        return sum(1 for e in self.entries if e.action is action)

    def count_models(self, action: ModelAction) -> int:
        return sum(1 for m in self.models if m.action is action)

    @property
    def has_changes(self) -> bool:
        return any(e.action.is_change for e in self.entries) or bool(self.model_changes())

    def model_changes(self) -> list[PlannedModel]:
        return [m for m in self.models if m.action.is_change]

    def changes(self) -> list[PlannedRun]:
        return [e for e in self.entries if e.action.is_change]

    def summary(self) -> str:
        """One line: every action counted, but the noted ones (:meth:`notes`)."""
        if not self.has_changes:
            failed = self.count(Action.FAILED)
            if failed:
                return (
                    f"Nothing to submit, but {failed} point(s) failed with no retries left: they need a change "
                    "to code, data, parameters or retries."
                )
            return "No changes. Runs match the spec."
        parts = [f"{self.count(a)} {a.counted}" for a in Action if a not in NOTED]
        if self.registry:  # the spec declares models
            parts += [f"{self.count_models(a)} {a.counted}" for a in MODEL_CHANGES]
        return "Plan: " + ", ".join(parts) + "."

    def notes(self) -> str:
        """The points a person must act on, counted where there are any: ``1 suspended, 2 failed``."""
        return ", ".join(f"{self.count(a)} {a.counted}" for a in NOTED if self.count(a))

    def fingerprint(self) -> str:
        """What a saved plan must still match to be applied: the commit, the spec and every change."""
        changes = [
            (e.action.value, e.run_key, e.run_id, e.job_id, e.next_attempt, e.mark_status) for e in self.changes()
        ]
        registry = [(m.action.value, m.model, m.alias, m.run_id, m.version, m.previous) for m in self.model_changes()]
        payload = json.dumps(
            [self.commit, self.spec_digest, changes, *([registry, self.registry] if self.registry else [])],
            sort_keys=True,
        )
        return hashlib.sha256(payload.encode()).hexdigest()

    def to_json(self) -> dict:
        return {
            "format_version": PLAN_FORMAT_VERSION,
            "commit": self.commit,
            "spec_digest": self.spec_digest,
            "fingerprint": self.fingerprint(),
            "has_changes": self.has_changes,
            "summary": {a.label: self.count(a) for a in Action},
            "warnings": self.warnings,
            "errors": self.errors,
            "runs": [e.to_json() for e in self.entries],
            **({"cost": self.cost.to_json()} if self.cost else {}),
            **(
                {
                    "models": [m.to_json() for m in self.models],
                    "models_summary": {a.label: self.count_models(a) for a in ModelAction},
                    "registry_digest": self.registry,
                }
                if self.registry
                else {}
            ),
        }
