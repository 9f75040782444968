"""Run identity: what determines a run's result, and the key that hashes it.

The key covers the entry point's command template, the resolved parameters
and seed, the code identity (committed tree of ``code.paths``), data versions
and environment identity. It leaves out the experiment's name, the backend and
its resources: moving an experiment to another cluster does not redo science.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass, field

from ..spec.experiments import RunPoint

KEY_FORMAT = 1


@dataclass(frozen=True)
class Identity:
    command: str
    parameters: dict = field(hash=False)
    seed: int | None
    code: str
    data: dict = field(default_factory=dict, hash=False)  # name -> version
    environment: str = ""

    def canonical(self) -> str:
        return json.dumps(
            {
                "format": KEY_FORMAT,
                "command": self.command,
                "parameters": self.parameters,
                "seed": self.seed,
                "code": self.code,
                "data": self.data,
                "environment": self.environment,
            },
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=False,
        )

    @functools.cached_property
    def key(self) -> str:
        """sha256 hex of :meth:`canonical`; computed once (the planner asks for it several times a run)."""
        return hashlib.sha256(self.canonical().encode()).hexdigest()


@dataclass(frozen=True)
class DesiredRun:
    """A declared run point with its identity attached."""

    point: RunPoint
    identity: Identity

    @property
    def key(self) -> str:
        return self.identity.key


def recorded_identity(run) -> Identity:
    """The identity inputs an observed run recorded (its key should be their hash)."""
    return Identity(
        command=run.command,
        parameters=run.parameters,
        seed=run.seed,
        code=run.code,
        data=run.data,
        environment=run.environment,
    )


def identify(point: RunPoint, code: str, data: dict[str, str], environments: dict[str, str]) -> DesiredRun:
    identity = Identity(
        command=point.command_template,
        parameters=dict(point.parameters),
        seed=point.seed,
        code=code,
        data={name: data.get(name, "") for name in point.data},
        environment=environments.get(point.environment, "") if point.environment else "",
    )
    return DesiredRun(point, identity)
