"""Experiments after ``extends`` is resolved, and their expansion into run points.

A run point is one cell of an experiment's grid (parameter values and seed).
Its identity inputs are filled in later, once the code and data versions are
known; everything here is pure.
"""

from __future__ import annotations

import itertools
import posixpath
import re
import shlex
import urllib.parse
from dataclasses import dataclass

from .hints import unknown_name
from .model import EntryPoint, Experiment, Spec

PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([^{}]*)\}")
DATA_PREFIX = "data."
SEED_PARAMETER = "seed"


def placeholders(command: str) -> list[str]:
    """Names between single braces; ``{{`` and ``}}`` are literal braces."""
    return [m.group(1) for m in PLACEHOLDER.finditer(command) if m.group(1) is not None]


class QuotingError(ValueError):
    """A placeholder stands where no quoting can keep its value one literal argument."""

    def __init__(self, name: str, column: int, context: str):
        self.name, self.column, self.context = name, column, context
        super().__init__(
            f"placeholder {{{name}}} at column {column} stands inside {context}, where no quoting keeps a "
            f"value literal; pass it outside them, e.g. as an argument of its own"
        )


# Where a placeholder can stand in a POSIX shell line, and how its value is quoted there so that the shell
# reads it back unchanged: unquoted -> one single-quoted word; inside "..." -> \ " $ ` escaped; inside
# '...' -> each ' closed, escaped and reopened. A command substitution or backquotes inside double quotes,
# and $'...', have rules of their own: placeholders there are refused rather than guessed at.
UNQUOTED, DOUBLE, SINGLE = "unquoted", "double quotes", "single quotes"
NESTED = {"$(": "a command substitution within double quotes", "`": "backquotes within double quotes"}


def placeholder_contexts(command: str) -> list[tuple[re.Match, str]]:
    """Each placeholder of ``command`` with the quoting context it stands in (``UNQUOTED``, ``DOUBLE``,
    ``SINGLE``); raises :class:`QuotingError` for one no quoting can protect."""
    found: list[tuple[re.Match, str]] = []
    state = UNQUOTED
    nested: str | None = None  # "$(" or "`" opened inside double quotes
    matches = {m.start(): m for m in PLACEHOLDER.finditer(command)}
    position = 0
    while position < len(command):
        match = matches.get(position)
        if match is not None:
            if match.group(1) is not None:
                if nested is not None or state == "ansi":
                    where = NESTED.get(nested, "$'...' quoting") if nested else "$'...' quoting"
                    raise QuotingError(match.group(1), position + 1, where)
                found.append((match, state))
            position = match.end()
            continue
        char = command[position]
        if state == UNQUOTED:
            if char == "\\":
                position += 1
            elif char == "'":
                state = SINGLE
            elif char == '"':
                state = DOUBLE
            elif char == "$" and command[position + 1 : position + 2] == "'":
                state, position = "ansi", position + 1
        elif state == SINGLE:
            if char == "'":
                state = UNQUOTED
        elif state == "ansi":
            if char == "\\":
                position += 1
            elif char == "'":
                state = UNQUOTED
        elif char == "\\":  # inside double quotes
            position += 1
        elif nested is None and char == '"':
            state = UNQUOTED
        elif char == "`":
            nested = None if nested == "`" else (nested or "`")
        elif char == "$" and command[position + 1 : position + 2] == "(":
            nested = nested or "$("
        elif char == ")" and nested == "$(":
            nested = None
        position += 1
    return found


def quote_for(value: str, context: str) -> str:
    """``value`` written so that the shell reads it back unchanged where it stands."""
    if context == DOUBLE:
        return re.sub(r'([\\"$`])', r"\\\1", value)
    if context == SINGLE:
        return value.replace("'", "'\\''")
    return shlex.quote(value)


def render_command(command: str, values: dict[str, str]) -> str:
    """Substitute placeholders with their values, quoted for where each stands: a value always reaches the
    program as it was given, never as shell code. Raises :class:`QuotingError` (a ``ValueError``)."""
    contexts = {match.start(): context for match, context in placeholder_contexts(command)}

    def substitute(match: re.Match) -> str:
        token = match.group(0)
        if token == "{{":
            return "{"
        if token == "}}":
            return "}"
        return quote_for(values[match.group(1)], contexts[match.start()])

    return PLACEHOLDER.sub(substitute, command)


def format_value(value) -> str:
    """A parameter value as MLflow writes it into the command and the run's params: ``str(value)``
    (``True``/``False``, ``0.1``, ``1e-05``); text stays as written (``1e-1``)."""
    return str(value)


def join_lines(command: str) -> str:
    """An MLproject command with its line breaks outside quotes turned into spaces.

    A folded block (``command: >``) keeps the break before each more-indented line, so a shell would run
    such a line as a command of its own. MLflow reads the command's arguments as one line (``shlex.split``
    treats a break as a space) and Mantik joined the lines before submitting; real projects rely on it.
    Breaks inside quotes are part of an argument and stay; a backslash-newline outside single quotes
    disappears, as in the shell.
    """
    out: list[str] = []
    state = UNQUOTED
    position = 0
    while position < len(command):
        char = command[position]
        if char == "\\" and state != SINGLE:
            pair = command[position : position + 2]
            out.append("" if pair == "\\\n" else pair)  # a line continuation, removed as the shell does
            position += 2
            continue
        if state == UNQUOTED:
            if char == "\n":
                char = " "
            elif char == "'":
                state = SINGLE
            elif char == '"':
                state = DOUBLE
        elif (state == SINGLE and char == "'") or (state == DOUBLE and char == '"'):
            state = UNQUOTED
        out.append(char)
        position += 1
    return "".join(out).strip()


def coerce(value, declared_type: str):
    """Bring a value to its declared type so that ``1``, ``1.0`` and ``1e0`` name the same run (the command
    still gets the value as written: :attr:`RunPoint.written`), and ``1`` and ``"1"`` the same ``bool``."""
    if declared_type == "float" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if declared_type == "bool" and value in ("0", "1"):
        return int(value)
    if declared_type in ("float", "int") and _number_text(value, NUMBER_TYPES[declared_type]):
        return NUMBER_TYPES[declared_type](value.strip())
    return value


NUMBER_TYPES: dict[str, type] = {"float": float, "int": int}


def _number_text(value, kind: type) -> bool:
    """Text a number of ``kind`` is written as (``1e-1``: YAML 1.1 reads it as text, and so does MLflow,
    which passes it on as written)."""
    if not isinstance(value, str) or "_" in value:  # 1_000: 1000 to YAML 1.1 and Python, text to YAML 1.2
        return False
    try:
        kind(value.strip())
    except ValueError:
        return False
    return value.strip().lower() not in ("nan", "inf", "-inf", "+inf", "infinity", "-infinity", "+infinity")


# A bool as programs are given one: true/false, or 0/1 (MLflow checks no bool; its own tests pass "0" and "1")
BOOL_TEXTS = ("true", "false", "0", "1")


def type_error(value, declared_type: str) -> str | None:
    if declared_type == "uri" and not isinstance(value, bool) and not is_uri(value):
        return f"{value!r} is not a URI: MLflow refuses a uri value without a scheme (s3://, https://, file://...)"
    ok = {
        "float": (isinstance(value, (int, float)) and not isinstance(value, bool)) or _number_text(value, float),
        "int": (isinstance(value, int) and not isinstance(value, bool)) or _number_text(value, int),
        "bool": (isinstance(value, int) and value in (0, 1)) or (isinstance(value, str) and value.lower() in BOOL_TEXTS),
    }.get(declared_type, isinstance(value, (str, int, float)) and not isinstance(value, bool))
    return None if ok else f"{value!r} is not a valid {declared_type}"


def is_uri(value) -> bool:
    """MLflow's test of a ``uri`` parameter's value (``mlflow.utils.data_utils.is_uri``): it names a scheme."""
    try:
        return bool(urllib.parse.urlparse(str(value)).scheme)
    except ValueError:  # http://[::1 : MLflow's urlparse raises too
        return False


# How `mlflow run -e NAME` runs a NAME no entry point declares, by its extension (MLflow's
# Project.get_entry_point): the script, then the parameters it is given as --key value. MLflow writes the
# submitting shell's $SHELL (bash without one) into the command; here the shell where the job runs expands it.
SCRIPT_COMMANDS = {
    ".py": "python {script}",
    ".sh": "${{{{SHELL:-bash}}}} {script}",  # ${SHELL:-bash}, its braces doubled in the command template
    ".R": "Rscript -e \"mlflow::mlflow_source('{script}')\" --args",
}


def script_entry_point(name: str) -> EntryPoint | None:
    """The entry point ``mlflow run -e NAME`` runs for a script file NAME (``train.py``, ``run.sh``), or None."""
    template = SCRIPT_COMMANDS.get(posixpath.splitext(name)[1])
    if template is None:
        return None
    # the script's name is a literal of the command: braces doubled so that none reads as a placeholder
    script = shlex.quote(name).replace("{", "{{").replace("}", "}}")
    return EntryPoint(command=template.format(script=script), from_mlproject=True, script=True)


def undeclared(entry: EntryPoint, given: dict) -> list[str]:
    """The parameters an experiment gives that an MLproject entry point (or a script) does not declare, in the
    order given: ``mlflow run`` appends each to the command as ``--name value``."""
    return [name for name in given if name not in entry.parameters] if entry.from_mlproject else []


def add_script_entry_points(spec: Spec) -> None:
    """Declare the script files experiments name as entry points (``entry_point: train.py``), as
    ``mlflow run -e train.py`` runs them; a declared entry point of that name comes first, as in MLflow."""
    experiments, _ = resolve_extends(spec)
    for experiment in experiments.values():
        name = experiment.entry_point
        if name is not None and name not in spec.entry_points and (entry := script_entry_point(name)) is not None:
            spec.entry_points[name] = entry


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
    # the values as the spec wrote them, where that differs from the typed value (alpha: 1 for a float is
    # the run of 1.0, but MLflow passes and logs "1"); empty: as typed
    written: tuple[tuple[str, object], ...] = ()

    @property
    def values(self) -> dict:
        """Every parameter value of the point, its seed included."""
        return dict(self.parameters) | ({SEED_PARAMETER: self.seed} if self.seed is not None else {})

    @property
    def arguments(self) -> dict[str, str]:
        """Every parameter value as the command and the MLflow params get it (MLflow's ``str(value)``)."""
        return {k: format_value(v) for k, v in (self.values | dict(self.written)).items()}

    @property
    def point_id(self) -> str:
        # a `seed` parameter set by `seeds:` is named last; one given as a value (or a grid) is a parameter
        cells = [f"{k}={format_value(v)}" for k, v in self.parameters if k != SEED_PARAMETER or self.seed is None]
        if self.seed is not None:
            cells.append(f"seed={self.seed}")
        return f"{self.experiment}[{','.join(cells)}]"

    def command(self, data_locations: dict[str, str]) -> str:
        values = self.arguments
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
            axes.append((param_name, [(coerce(v, declared.type), v) for v in values]))
        extra = undeclared(entry, given)
        for param_name in extra:
            value = given[param_name]
            axes.append((param_name, [(v, v) for v in (value if isinstance(value, list) else [value])]))
        names = [n for n, _ in axes]
        for combination in itertools.product(*(values for _, values in axes)):
            written = {
                n: w for n, (typed, w) in zip(names, combination, strict=True) if format_value(w) != format_value(typed)
            }
            for seed in seeds_of(experiment):
                parameters = {n: typed for n, (typed, _) in zip(names, combination, strict=True)}
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
                        command_template=entry.command + "".join(f" --{n} {{{n}}}" for n in extra),
                        retries=experiment.retries or 0,
                        suspended=bool(experiment.suspend),
                        written=tuple(sorted(written.items())),
                    )
                )
    return points


POINT_REFERENCE = re.compile(r"^(?P<experiment>[^\[\]]+)\[(?P<cells>.*)\]$")


def point_reference(reference: str) -> tuple[str, dict[str, str]] | None:
    """``EXPERIMENT[name=value,...]`` read as (experiment, {name: value as written}); None for anything else."""
    found = POINT_REFERENCE.match(reference.strip())
    if not found:
        return None
    wanted: dict[str, str] = {}
    for cell in filter(None, (c.strip() for c in found["cells"].split(","))):
        name, equals, value = cell.partition("=")
        if not equals:
            return None
        wanted[name.strip()] = value.strip()
    return found["experiment"], wanted


def values_match(values: dict, wanted: dict[str, str]) -> bool:
    """Whether ``values`` (a point's, its seed included) hold every ``name=value`` of ``wanted``: compared as
    the point id writes them, numbers also by value (``lr=.1`` is ``lr=0.1``), booleans in any case."""
    return all(name in values and _same_value(values[name], text) for name, text in wanted.items())


def points_named(points: list[RunPoint], reference: str) -> list[RunPoint]:
    """The declared points ``reference`` names: a whole point id (``sweep[lr=0.1,seed=0]``), or the points of
    an experiment whose values include the cells given (``sweep[lr=0.1]``, defaults left out). Empty when none
    matches; several when the cells name more than one (the caller says which)."""
    exact = [p for p in points if p.point_id == reference]
    if exact:
        return exact
    read = point_reference(reference)
    if read is None:
        return []
    experiment, wanted = read
    return [p for p in points if p.experiment == experiment and values_match(p.values, wanted)]


def _same_value(value, text: str) -> bool:
    if format_value(value) == text:
        return True
    if isinstance(value, bool):
        return text.lower() == str(value).lower()  # as YAML writes it too: true, false
    if not isinstance(value, int | float):
        return False
    try:
        return float(text) == float(value)
    except ValueError:
        return False
