"""The registry side of plan and apply: observing the declared models and carrying out their actions
(docs/models.md). The decision is :mod:`..reconcile.promotion`'s; the reading and writing :mod:`..state.registry`'s."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..reconcile.plan import ModelAction, Plan
from ..reconcile.promotion import ModelSource, held_runs, plan_models, registry_digest, winners
from ..state import registry
from ..state.tracking import TrackingError

if TYPE_CHECKING:
    from .project import Observation, Project


def plan_registry(project: Project, observation: Observation, plan: Plan, untrusted: set[str]) -> None:
    """Add the registry actions of the spec's ``models:`` to ``plan``, with their errors and warnings, and the
    digest of the registry as observed (a saved plan must find it unchanged). Reads the registry only when the
    spec declares models; looks up the model of each model's winner only (a few calls per model)."""
    models = project.spec.models
    if not models:
        return
    runs = [run for run in observation.runs if run.run_id not in untrusted]
    observed = registry.observe_models(project.store, list(models))
    sources: dict[str, ModelSource | None] = {}
    unreadable = []  # a model whose winner's artifacts cannot be listed here: an error, the runs are planned
    for name, run in winners(models, observation.desired, runs, plan.entries).items():
        try:
            sources[name] = registry.model_source(project.store, run.run_id, models[name].artifact)
        except TrackingError as exc:
            unreadable.append(name)
            plan.errors.append(f"model {name}: {exc}")
    held: dict[str, ModelSource | None] = {}  # the model of the run behind each alias now, to check its version
    for name, run in held_runs(models, runs, observed).items():
        if name in unreadable:
            continue
        try:
            held[name] = registry.model_source(project.store, run.run_id, models[name].artifact)
        except TrackingError:
            held[name] = None  # unknown: the version is not counted as that run's, the alias may move
    readable = {name: model for name, model in models.items() if name not in unreadable}
    decided = plan_models(readable, observation.desired, runs, plan.entries, observed, sources, held)
    plan.models = decided.entries
    plan.errors.extend(decided.errors)
    plan.warnings.extend(decided.warnings)
    plan.registry = registry_digest(observed)


def execute_models(project: Project, plan: Plan, observation: Observation) -> list[str]:
    """Carry out the plan's registry actions: each version registered (or found, looked up by its run), then
    each alias moved. Returns what was done, one line each: ``wine v2 <- run ...``, ``wine@champion -> v2``."""
    runs = {run.run_id: run for run in observation.runs}
    registered: dict[str, str] = {}  # model -> the version this apply registered or found
    done = []
    for entry in plan.model_changes():
        if entry.action is ModelAction.REGISTER:
            assert entry.run_id and entry.run_key and entry.source  # a register always names its winner's model
            run = runs[entry.run_id]
            tags = {
                registry.VersionTag.PROJECT: project.spec.project,
                registry.VersionTag.EXPERIMENT: entry.experiment,
                registry.VersionTag.RUN_KEY: entry.run_key,
                registry.VersionTag.POINT: entry.point_id or "",
                registry.VersionTag.COMMIT: run.commit,
                registry.VersionTag.METRIC: entry.metric or "",
                registry.VersionTag.METRIC_VALUE: repr(entry.value),
            }
            source = ModelSource(entry.source, entry.model_id)
            version = registry.register(project.store, entry.model, entry.run_id, entry.run_key, source, tags)
            registered[entry.model] = version
            done.append(f"{entry.model} v{version} <- {entry.point_id} (run {entry.run_id})")
        elif entry.action is ModelAction.ALIAS:
            version = entry.version or registered[entry.model]
            registry.set_alias(project.store, entry.model, entry.alias, version)
            done.append(f"{entry.model}@{entry.alias} -> v{version}")
    return done
