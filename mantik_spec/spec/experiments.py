"""Experiments after ``extends`` is resolved, and their expansion into run points.

A run point is one cell of an experiment's grid (parameter values and seed).
Its identity inputs are filled in later, once the code and data versions are
known; everything here is pure.
"""

from __future__ import annotations

import itertools
import re
import shlex
from dataclasses import dataclass

from .hints import unknown_name
from .model import EntryPoint, Experiment, Spec

PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([^{}]*)\}")
DATA_PREFIX = "data."
SEED_PARAMETER = "seed"


def placeholders(command: str) -> list[str]:
    """Names between single braces; ``{{`` and ``}}`` are literal braces."""
    return [m.group(1) for m in PLACEHOLDER.finditer(command) if m.group(1) is not None]


def render_command(command: str, values: dict[str, str]) -> str:
    """Substitute placeholders with shell-quoted values (a value is one argument, always)."""

    def substitute(match: re.Match) -> str:
        token = match.group(0)
        if token == "{{":
            return "{"
        if token == "}}":
            return "}"
        return shlex.quote(values[match.group(1)])

    return PLACEHOLDER.sub(substitute, command)


def format_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def coerce(value, declared_type: str):
    """Bring a value to its declared type so that ``1`` and ``1.0`` name the same run."""
    if declared_type == "float" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def type_error(value, declared_type: str) -> str | None:
    ok = {
        "float": isinstance(value, (int, float)) and not isinstance(value, bool),
        "int": isinstance(value, int) and not isinstance(value, bool),
        "bool": isinstance(value, bool),
    }.get(declared_type, isinstance(value, (str, int, float)) and not isinstance(value, bool))
    return None if ok else f"{value!r} is not a valid {declared_type}"


MAX_EXTENDS_DEPTH = 32
INHERITED_FIELDS = [f for f in Experiment.model_fields if f != "extends"]


def resolve_extends(spec: Spec) -> tuple[dict[str, Experiment], list[tuple[tuple, str]]]:
    """Merge every experiment with its ``extends`` chain.

    Returns the resolved experiments and (path, message) problems for unknown
    parents and cycles; experiments caught in a problem are left out.
    """
    resolved: dict[str, Experiment] = {}
    problems: list[tuple[tuple, str]] = []
    in_cycle: set[str] = set()

    def resolve(name: str, chain: list[str]) -> Experiment | None:
        if name in resolved:
            return resolved[name]
        if name in in_cycle:
            return None
        own = spec.experiments[name]
        if own.extends is None:
            resolved[name] = own
            return own
        if own.extends not in spec.experiments:
            problems.append(
                (("experiments", name, "extends"), unknown_name("experiment", own.extends, spec.experiments))
            )
            return None
        if own.extends in chain:
            cycle = chain[chain.index(own.extends) :]
            for start, member in enumerate(cycle):  # each member on its own line, with its own view of the loop
                if member not in in_cycle:
                    in_cycle.add(member)
                    names = [*cycle[start:], *cycle[:start], member]
                    if len(names) > 8:  # a loop through thousands of experiments still gives short lines
                        names = [*names[:3], f"... ({len(cycle)} experiments)", *names[-2:]]
                    problems.append((("experiments", member, "extends"), f"extends cycle: {' -> '.join(names)}"))
            return None
        if len(chain) > MAX_EXTENDS_DEPTH:  # bounds the recursion below, whatever the file holds
            in_cycle.update(chain)
            problems.append(
                (("experiments", name, "extends"), f"extends chain longer than {MAX_EXTENDS_DEPTH} experiments")
            )
            return None
        parent = resolve(own.extends, [*chain, own.extends])
        if parent is None:
            return None
        merged = {f: getattr(parent, f) for f in INHERITED_FIELDS}
        for f in own.model_fields_set - {"extends"}:
            value = getattr(own, f)
            if f == "parameters" and parent.parameters and value is not None:
                value = {**parent.parameters, **value}
            merged[f] = value
        resolved[name] = Experiment.model_construct(**merged)
        return resolved[name]

    for name in spec.experiments:
        resolve(name, [name])
    return resolved, problems


def default_backend(spec: Spec) -> str | None:
    return next(iter(spec.backends)) if len(spec.backends) == 1 else None


@dataclass(frozen=True)
class RunPoint:
    """One declared run: an experiment's grid cell, before identity is attached."""

    experiment: str
    entry_point: str
    backend: str
    environment: str | None
    parameters: tuple[tuple[str, object], ...]  # complete and typed, sorted by name
    seed: int | None
    data: tuple[str, ...]
    command_template: str
    retries: int
    suspended: bool

    @property
    def values(self) -> dict:
        """Every parameter value of the point, its seed included."""
        return dict(self.parameters) | ({SEED_PARAMETER: self.seed} if self.seed is not None else {})

    @property
    def point_id(self) -> str:
        cells = [f"{k}={format_value(v)}" for k, v in self.parameters if k != SEED_PARAMETER]
        if self.seed is not None:
            cells.append(f"seed={self.seed}")
        return f"{self.experiment}[{','.join(cells)}]"

    def command(self, data_locations: dict[str, str]) -> str:
        values = {k: format_value(v) for k, v in self.parameters}
        values.update({DATA_PREFIX + name: loc for name, loc in data_locations.items()})
        return render_command(self.command_template, values)


def seeds_of(experiment: Experiment) -> list[int | None]:
    if experiment.seeds is None:
        return [None]
    if isinstance(experiment.seeds, int):
        return list(range(experiment.seeds))
    return list(experiment.seeds)


def expand(spec: Spec, experiments: dict[str, Experiment]) -> list[RunPoint]:
    """Every run point of every (already checked) experiment, in a stable order."""
    points: list[RunPoint] = []
    for name, experiment in experiments.items():
        entry: EntryPoint = spec.entry_points[experiment.entry_point]
        backend = experiment.backend or default_backend(spec)
        environment = experiment.environment or spec.backends[backend].environment
        given = experiment.parameters or {}
        axes: list[tuple[str, list]] = []
        for param_name, declared in sorted(entry.parameters.items()):
            if param_name == SEED_PARAMETER and experiment.seeds is not None:
                continue
            value = given.get(param_name, declared.default)
            values = value if isinstance(value, list) else [value]
            axes.append((param_name, [coerce(v, declared.type) for v in values]))
        names = [n for n, _ in axes]
        for combination in itertools.product(*(values for _, values in axes)):
            for seed in seeds_of(experiment):
                parameters = dict(zip(names, combination, strict=True))
                if seed is not None and SEED_PARAMETER in entry.parameters:
                    parameters[SEED_PARAMETER] = seed
                points.append(
                    RunPoint(
                        experiment=name,
                        entry_point=experiment.entry_point,
                        backend=backend,
                        environment=environment,
                        parameters=tuple(sorted(parameters.items())),
                        seed=seed,
                        data=tuple(experiment.data or ()),
                        command_template=entry.command,
                        retries=experiment.retries or 0,
                        suspended=bool(experiment.suspend),
                    )
                )
    return points
