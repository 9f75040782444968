"""Model promotion: which run of an experiment a registered model's alias should point at. Pure: no I/O.

The rules, per model declared under ``models:`` (docs/models.md), in order:

* a point of the experiment still has work (submit, retry, repair, running) -> ``=`` hold: the best
  is not known until every point has settled
* no FINISHED run of the experiment's current points                    -> ``=`` hold
* finished runs, none logs the metric                                   -> error naming a run
* finished runs, none with a finite value (NaN, inf)                    -> ``=`` hold, a warning
* the winner (:func:`ranked`: the metric, then the earliest end, then the run id) lacks the
  artifact                                                              -> error naming the run
* the alias points at a version of the winner                           -> ``=`` hold (up to date)
* the alias points at a version of one of this project's runs whose value is not better by
  ``min_improvement``                                                   -> ``=`` hold
* else: ``+`` register a version from the winner (unless one of its versions points at its model) and
  ``~`` move the alias to it.

A version counts as the winner's only when MLflow's own ``run_id`` field names the winning run and its
source is where that run keeps the model: tags and aliases others write are evidence, never authority.
Candidates are the runs the planner counts (their recorded inputs hash to their key) whose key is one of the
experiment's current points; nothing is ever deleted.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ..spec.model import Model
from ..vocab import RunStatus
from .identity import DesiredRun, ObservedRun
from .plan import Action, ModelAction, PlannedModel, PlannedRun

PENDING = (Action.SUBMIT, Action.RETRY, Action.REPAIR, Action.RUNNING)


@dataclass(frozen=True)
class ObservedVersion:
    """A model version as the registry reports it."""

    version: str
    run_id: str | None
    source: str


@dataclass(frozen=True)
class ObservedModel:
    """A registered model as observed: its versions and aliases (alias -> version); ``exists`` False when the
    registry has no model of that name yet."""

    name: str
    exists: bool = False
    versions: tuple[ObservedVersion, ...] = ()
    aliases: Mapping[str, str] | None = None

    def alias(self, alias: str) -> str | None:
        return (self.aliases or {}).get(alias)

    def version(self, number: str | None) -> ObservedVersion | None:
        return next((v for v in self.versions if v.version == number), None)

    def next_version(self) -> str:
        """The number MLflow gives the next version: one past the highest (display only)."""
        return str(max((int(v.version) for v in self.versions if v.version.isdigit()), default=0) + 1)


@dataclass(frozen=True)
class ModelSource:
    """Where a run keeps the model at an artifact path: the URI a version from it points at, and the MLflow
    logged model that URI names (MLflow 3's ``log_model``), when it is one."""

    source: str
    model_id: str | None = None


def registry_digest(observed: Mapping[str, ObservedModel]) -> str:
    """What a saved plan must find unchanged: every declared model's versions (number, run, source) and aliases."""
    payload = {
        name: [
            model.exists,
            sorted((v.version, v.run_id or "", v.source) for v in model.versions),
            sorted((model.aliases or {}).items()),
        ]
        for name, model in sorted(observed.items())
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def is_result(value: float | None) -> bool:
    """Whether a metric's value can win: NaN and infinite values never do (MLflow's stores keep an infinite
    value as the largest float of its sign, so that counts as infinite too)."""
    return value is not None and math.isfinite(value) and abs(value) < sys.float_info.max


def candidates(model: Model, desired: Iterable[DesiredRun], runs: Iterable[ObservedRun]) -> list[ObservedRun]:
    """The FINISHED runs of the model's experiment's current points (by run key)."""
    keys = {want.key for want in desired if want.point.experiment == model.experiment}
    return [run for run in runs if run.status is RunStatus.FINISHED and run.run_key in keys]


def ranked(model: Model, runs: Iterable[ObservedRun]) -> list[ObservedRun]:
    """The runs with a finite value of the metric, best first: by the value, then the earliest end, then the
    run id, so equal values always pick the same run."""
    sign = 1.0 if model.goal == "minimize" else -1.0
    scored = [run for run in runs if is_result(run.metrics.get(model.metric))]
    return sorted(
        scored,
        key=lambda run: (
            sign * run.metrics[model.metric],
            run.end_time if run.end_time is not None else math.inf,
            run.run_id,
        ),
    )


@dataclass
class Promotion:
    """What the planner decided for the models: their entries, and the problems to show."""

    entries: list[PlannedModel]
    errors: list[str]
    warnings: list[str]


def winners(
    models: Mapping[str, Model], desired: list[DesiredRun], runs: list[ObservedRun], entries: list[PlannedRun]
) -> dict[str, ObservedRun]:
    """The run each model's alias should point at, for the models whose experiment has settled: the runs whose
    artifacts the caller looks up before :func:`plan_models`."""
    found = {}
    for name, model in models.items():
        if _pending(model, desired, entries):
            continue
        best = ranked(model, candidates(model, desired, runs))
        if best:
            found[name] = best[0]
    return found


def plan_models(
    models: Mapping[str, Model],
    desired: list[DesiredRun],
    runs: list[ObservedRun],
    entries: list[PlannedRun],
    registry: Mapping[str, ObservedModel],
    sources: Mapping[str, ModelSource | None],
    held: Mapping[str, ModelSource | None] | None = None,
) -> Promotion:
    """The registry actions for ``models``. ``runs``: the runs the planner counts; ``entries``: its run entries
    (a point with work left holds its experiment's models); ``registry``: each model as observed; ``sources``:
    where each model's winner (:func:`winners`) keeps its model, by model name, None when it has none at the
    artifact path; ``held``: by model name, where the run behind the version its alias points at now keeps its
    model (:func:`held_runs`), None when it has none there: the version counts as that run's only when its
    source is that."""
    result = Promotion([], [], [])
    by_id = {run.run_id: run for run in runs}
    for name, model in models.items():
        champion = _held_run(name, model, registry, by_id, (held or {}).get(name))
        result.entries += _plan_model(name, model, desired, runs, entries, registry, sources, champion, result)
    return result


def held_runs(
    models: Mapping[str, Model], runs: list[ObservedRun], registry: Mapping[str, ObservedModel]
) -> dict[str, ObservedRun]:
    """The run of this project behind the version each model's alias points at now, by model name: whose model
    the caller looks up, so that :func:`plan_models` can tell that version is really that run's."""
    by_id = {run.run_id: run for run in runs}
    found = {}
    for name, model in models.items():
        observed = registry.get(name) or ObservedModel(name)
        version = observed.version(observed.alias(model.alias))
        if version is not None and version.run_id in by_id:
            found[name] = by_id[version.run_id]
    return found


def _held_run(name, model: Model, registry, by_id, source: ModelSource | None) -> ObservedRun | None:
    """The run of this project the alias's version is a version of: its run id names the run, and its source is
    where that run keeps its model (a version anyone can create naming our run proves nothing by itself)."""
    observed = registry.get(name) or ObservedModel(name)
    version = observed.version(observed.alias(model.alias))
    if version is None or version.run_id not in by_id or source is None or source.source != version.source:
        return None
    return by_id[version.run_id]


def _plan_model(
    name, model: Model, desired, runs, entries, registry, sources, champion_run, result
) -> list[PlannedModel]:
    observed = registry.get(name) or ObservedModel(name)
    current = observed.alias(model.alias)
    common = {"model": name, "alias": model.alias, "experiment": model.experiment, "metric": model.metric}

    def hold(reason: str, **fields) -> list[PlannedModel]:
        return [PlannedModel(ModelAction.HOLD, reason=reason, previous=current, version=current, **common, **fields)]

    pending = _pending(model, desired, entries)
    if pending:
        return hold(f"waiting for {pending} run(s) of {model.experiment} to finish before choosing")
    finished = candidates(model, desired, runs)
    if not finished:
        return hold(f"no finished run of {model.experiment} yet")
    logging = [run for run in finished if model.metric in run.metrics]
    if not logging:
        example = finished[0]
        logged = ", ".join(sorted(example.metrics)) or "no metric"
        result.errors.append(
            f"model {name}: no finished run of {model.experiment} logs metric '{model.metric}' (run "
            f"{example.run_id} ({example.point_id}) logs: {logged})"
        )
        return []
    best = ranked(model, finished)
    if not best:
        example = logging[0]
        result.warnings.append(
            f"model {name}: no finished run of {model.experiment} has a finite {model.metric} (run "
            f"{example.run_id} ({example.point_id}): {example.metrics[model.metric]}): the alias stays"
        )
        return hold(f"no finite {model.metric} among {len(logging)} finished run(s)")
    winner = best[0]
    value = winner.metrics[model.metric]
    shown = f"{winner.point_id} ({model.metric} {_number(value)})"
    about = {"run_id": winner.run_id, "point_id": winner.point_id, "run_key": winner.run_key, "value": value}
    source = sources.get(name)
    if source is None:
        result.errors.append(
            f"model {name}: the winning run {winner.run_id} ({winner.point_id}) has no model at artifact path "
            f"'{model.artifact}' (no MLmodel there and no logged model of that name)"
        )
        return []
    mine = [v for v in observed.versions if v.run_id == winner.run_id and v.source == source.source]
    if current is not None and any(v.version == current for v in mine):
        return hold(f"up to date ({shown})", **about)

    why = f"best of {len(best)} finished run(s) of {model.experiment} by {model.metric} ({model.goal})"
    if current is None:
        moved = f"{name}@{model.alias} is not set; {why}"
    elif champion_run is None or not is_result(champion_run.metrics.get(model.metric)):
        moved = f"v{current} is no model of a run of this project with a finite {model.metric} (evidence, not a result); {why}"
    else:
        before = champion_run.metrics[model.metric]
        gain = (before - value) if model.goal == "minimize" else (value - before)
        was = f"v{current}'s {champion_run.point_id} ({model.metric} {_number(before)})"
        if model.min_improvement is not None and gain < model.min_improvement:
            return hold(
                f"held: {shown} is better than {was} by {_number(gain)}, less than min_improvement "
                f"{_number(model.min_improvement)}",
                **about,
            )
        moved = f"{shown} is better than {was} by {_number(gain)}" if gain > 0 else f"{why}; was {was}"
    planned = []
    target = min(mine, key=lambda v: int(v.version) if v.version.isdigit() else 0).version if mine else None
    if target is None:
        others = [v.version for v in observed.versions if v.run_id == winner.run_id]
        reason = why + (f"; v{', v'.join(others)} name this run but point elsewhere: not used" if others else "")
        planned.append(
            PlannedModel(
                ModelAction.REGISTER,
                reason=reason,
                next_version=observed.next_version(),
                source=source.source,
                model_id=source.model_id,
                **common,
                **about,
            )
        )
    planned.append(
        PlannedModel(
            ModelAction.ALIAS,
            reason=moved,
            version=target,
            previous=current,
            next_version=None if target else observed.next_version(),
            **common,
            **about,
        )
    )
    return planned


def _pending(model: Model, desired: list[DesiredRun], entries: list[PlannedRun]) -> int:
    """How many current points of the model's experiment still have work (submit, retry, repair, running); a run
    of a point the spec no longer declares (repaired by the same apply) holds nothing."""
    keys = {want.key for want in desired if want.point.experiment == model.experiment}
    return len({e.point_id for e in entries if e.run_key in keys and e.action in PENDING})


def _number(value: float) -> str:
    return f"{value:.6g}"
