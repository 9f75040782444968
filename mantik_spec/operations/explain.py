"""``mantik explain``: the identity inputs of a run or a declared point, and the key they hash to."""

from __future__ import annotations

import json

from ..errors import UserError
from ..reconcile.identity import recorded_identity
from .project import Project, observe
from .runref import find_run, matching_runs


def explain(project: Project, target: str) -> dict:
    observation = observe(project)
    for want in observation.desired:
        if want.point.point_id == target:
            runs = [r for r in observation.runs if r.run_key == want.key]
            declared = project.spec.entry_points[want.point.entry_point].parameters
            return {
                "point": target,
                "run_key": want.key,
                "inputs": json.loads(want.identity.canonical()),
                # as written (an MLproject's `list[int]` stays visible although it is passed on as a string)
                "parameter_types": {name: parameter.shown_type for name, parameter in sorted(declared.items())},
                "commit": observation.code.commit,
                "runs": [{"run_id": r.run_id, "status": r.status, "attempt": r.attempt} for r in runs],
            }
    if matching_runs(observation.runs, target):
        run = find_run(observation.runs, target, project.spec.project)
        recomputed = recorded_identity(run)
        return {
            "run_id": run.run_id,
            "point": run.point_id,
            "run_key": run.run_key,
            "inputs": json.loads(recomputed.canonical()),
            "commit": run.commit,
            "key_matches_inputs": recomputed.key == run.run_key,
        }
    points = [w.point.point_id for w in observation.desired[:3]]
    raise UserError(
        f"'{target}' is neither a declared run point (e.g. {', '.join(points) or 'none'}) nor a run or job of this "
        "project"
    )
