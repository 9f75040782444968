"""The planner's inputs as plain data: no spec file, no MLflow, no git."""

from __future__ import annotations

from mantik_spec.reconcile.identity import DesiredRun, identify
from mantik_spec.spec.experiments import RunPoint


def point(lr=0.1, experiment="sweep", retries=0, suspended=False, seed=None) -> RunPoint:
    return RunPoint(
        experiment=experiment,
        entry_point="train",
        backend="local",
        environment=None,
        parameters=(("lr", lr),),
        seed=seed,
        data=(),
        command_template="python train.py --lr {lr}",
        retries=retries,
        suspended=suspended,
    )


def desired(p: RunPoint, code="code-v1") -> DesiredRun:
    return identify(p, code, {}, {})
