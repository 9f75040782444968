"""Saved plans (``mantik plan --out FILE``) and the check that one is still current.

A saved plan is the plan's JSON. It is applied only if the commit, the spec
file and every change the planner now computes are what they were when it was
written; otherwise it is stale and refused.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import MantikError
from ..files import write_atomically
from .plan import PLAN_FORMAT_VERSION, Plan


class StalePlanError(MantikError):
    """A saved plan no longer matches the commit, the spec or the runs it was made from; or is no plan."""


@dataclass
class SavedPlan:
    path: Path
    data: dict

    @property
    def prune(self) -> bool:
        return bool(self.data.get("prune"))

    @property
    def replace(self) -> tuple[str, ...]:
        return tuple(self.data.get("replace") or ())

    def check_current(self, plan: Plan) -> None:
        if self.data["commit"] != plan.commit:
            raise StalePlanError(
                f"saved plan {self.path} is stale: it was made at commit {self.data['commit'][:7]}, HEAD is {plan.commit[:7]}"
            )
        if self.data["spec_digest"] != plan.spec_digest:
            raise StalePlanError(f"saved plan {self.path} is stale: mantik.yaml changed since it was written")
        if self.data.get("registry_digest", "") != plan.registry:
            raise StalePlanError(
                f"saved plan {self.path} is stale: the model registry changed since it was written (a version or "
                "an alias of a declared model)"
            )
        if self.data["fingerprint"] != plan.fingerprint():
            raise StalePlanError(
                f"saved plan {self.path} is stale: the recorded runs or jobs changed since it was written"
            )


def write_plan(path: Path, plan: Plan, prune: bool, replace: tuple[str, ...] = ()) -> None:
    data = plan.to_json() | {"prune": prune, "replace": list(replace)}
    write_atomically(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def read_plan(path: Path) -> SavedPlan:
    try:
        data = json.loads(Path(path).read_text())
    except OSError as exc:
        raise StalePlanError(f"cannot read saved plan {path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise StalePlanError(f"{path}:{exc.lineno}:{exc.colno}: not a saved plan (invalid JSON)") from None
    if not isinstance(data, dict) or data.get("format_version") != PLAN_FORMAT_VERSION or "fingerprint" not in data:
        raise StalePlanError(f"{path}: not a saved plan of format version {PLAN_FORMAT_VERSION}")
    return SavedPlan(Path(path), data)
