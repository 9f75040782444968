"""Checks that need the whole spec: references, placeholders, credentials.

Each check yields ``(path, message)``; the loader turns paths into lines.
"""

from __future__ import annotations

import posixpath
import re
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator
from pathlib import Path, PurePosixPath

from .experiments import (
    DATA_PREFIX,
    SEED_PARAMETER,
    QuotingError,
    coerce,
    default_backend,
    placeholder_contexts,
    placeholders,
    resolve_extends,
    seeds_of,
    type_error,
    undeclared,
)
from .hints import suggest, unknown_name
from .model import Finding, Spec

CREDENTIAL_KEY = re.compile(r"(password|passwd|secret|token|api_?key|private_?key|access_?key)$", re.IGNORECASE)
URL_WITH_PASSWORD = re.compile(r"^[a-z][a-z0-9+.-]*://[^/@\s]*:[^/@\s]*@", re.IGNORECASE)
# over HTTP anything before '@' is a credential: a token (http://TOKEN@host) or a user name for basic auth
HTTP_URL_WITH_USER = re.compile(r"^https?://[^/?#@\s]*@", re.IGNORECASE)


def inline_credentials(data, path: tuple = ()) -> Iterator[Finding]:
    """Secrets belong in the environment, named by a ``*_env`` key: never in git."""
    if isinstance(data, dict):
        for key, value in data.items():
            child = (*path, key)
            if CREDENTIAL_KEY.search(str(key)) and isinstance(value, (str, int)) and value != "":
                yield child, f"credential written inline; name an environment variable instead ({key}_env: VARIABLE)"
            elif isinstance(value, str) and URL_WITH_PASSWORD.match(value):
                yield child, "URL carries a password; put credentials in the environment instead"
            elif isinstance(value, str) and HTTP_URL_WITH_USER.match(value):
                yield child, "URL carries a user name or token before '@'; put credentials in the environment instead"
            else:
                yield from inline_credentials(value, child)
    elif isinstance(data, list):
        for index, value in enumerate(data):
            yield from inline_credentials(value, (*path, index))


def on_disk(spec: Spec, project_root) -> Iterator[Finding]:
    """What the spec says about files in the project: DVC-tracked data must be tracked."""
    from ..dvcfiles import VersionError, dvc_md5  # reads .dvc files and dvc.lock; imports no dvc

    for name, source in spec.data.items():
        if source.path is None or relative_path_problem(source.path):
            continue
        try:
            tracked = dvc_md5(project_root, source.path) is not None
        except VersionError as exc:
            yield ("data", name, "path"), str(exc)
            continue
        if not tracked:
            yield ("data", name, "path"), f"{source.path} is not tracked by DVC (run `dvc add {source.path}`)"


def relative_path_problem(value: str) -> str | None:
    path = PurePosixPath(value)
    if path.is_absolute() or value.startswith("~"):
        return "must be a path relative to the project root"
    if ".." in path.parts:
        return "must stay inside the project (no '..')"
    return None


def semantic(spec: Spec) -> Iterator[Finding]:
    yield from _entry_points(spec)
    yield from _paths(spec)
    for name, backend in spec.backends.items():
        for where, message in backend.problems():
            yield ("backends", name, *where), message
        if backend.environment and backend.environment not in spec.environments:
            yield ("backends", name, "environment"), unknown_name("environment", backend.environment, spec.environments)
    experiments, extends_problems = resolve_extends(spec)
    yield from extends_problems
    for name, experiment in experiments.items():
        yield from _experiment(spec, name, experiment)
    yield from _run_count(spec, experiments)
    for name, model in spec.models.items():
        yield from _model(spec, name, model)
    pairs = []
    for experiment in experiments.values():
        runs_on = experiment.backend or default_backend(spec) or ""
        config = spec.backends.get(runs_on)
        pairs.append((experiment.environment or (config.environment if config else None), runs_on))
    yield from unseen_venvs(spec, pairs)


def unseen_venvs(spec: Spec, starts: Iterable[tuple[str | None, str]]) -> Iterator[Finding]:
    """A relative venv is the project's, on this machine (:meth:`Environment.venv_location`): a backend whose
    jobs do not see this machine's files cannot activate it. ``starts``: (environment, backend) pairs of runs.
    One finding per environment, at its ``venv``."""
    backends_of: dict[str, list[str]] = {}
    for name, backend in dict.fromkeys(starts):
        declared = spec.environments.get(name or "")
        config = spec.backends.get(backend)
        if name and declared and config and declared.venv_is_relative and not config.sees_this_machine():
            backends_of.setdefault(name, []).append(backend)
    for name, backends in sorted(backends_of.items()):
        yield ("environments", name, "venv"), (
            f"{spec.environments[name].venv} is relative to the project on this machine, which jobs on "
            f"{', '.join(backends)} cannot see: give the venv's absolute path (or ~/...) on the cluster"
        )


def run_count(experiment) -> int:
    """How many run points ``experiment`` declares, counted without expanding its grid."""
    count = len(seeds_of(experiment)) if isinstance(experiment.seeds, list) else (experiment.seeds or 1)
    for value in (experiment.parameters or {}).values():
        count *= max(len(value), 1) if isinstance(value, list) else 1
    return count


def _run_count(spec: Spec, experiments: dict) -> Iterator[Finding]:
    """Refuse grids whose expansion would exhaust memory (or the allocation) before anything is planned."""
    counts = {name: run_count(experiment) for name, experiment in experiments.items()}
    limit = spec.max_runs
    hint = f"more than max_runs ({limit}) is refused: raise max_runs if this many runs are meant"
    too_big = [name for name, count in counts.items() if count > limit]
    for name in too_big:
        yield ("experiments", name), f"the grid declares {counts[name]:,} runs; {hint}"
    total = sum(counts.values())
    if not too_big and total > limit:
        yield ("experiments",), f"the experiments declare {total:,} runs in all; {hint}"


# sbatch options mantik sets itself, or that would hide the job from it (src/sbatch/opt.c names them):
# long name -> (short letter, why it cannot be an sbatch_args item)
SBATCH_OWNED = {
    "array": ("a", "mantik builds the array from the experiment's points (array, max_array_size)"),
    "output": ("o", "mantik writes the job's output under workdir/batches/ and each run's into its run directory"),
    # sbatch's other options that place files (sbatch.1): stderr joins stdout in mantik's file unless --error
    # splits it off, relative to where sbatch ran (the repository, for a local cluster); --chdir moves the
    # directory the script's relative paths and files start from. --input only reads and --open-mode only
    # says how mantik's own file is opened: both are passed on
    "error": (
        "e",
        "mantik keeps the job's standard error with its output under workdir/batches/, where mantik logs reads "
        "it (a file named here would be written where sbatch ran); drop it",
    ),
    "chdir": ("D", "each run starts in its own run directory under workdir; set workdir to move them"),
    "clusters": ("M", "mantik follows jobs on the login node's own cluster only (see docs/slurm.md)"),
    "parsable": ("", "mantik passes it on the command line to read the job id"),
    "wait": ("W", "sbatch would block until the job ends; mantik polls instead"),
    "test-only": ("", "sbatch would only test the job and queue nothing"),
    "wrap": ("", "mantik writes the batch script"),
}
MEMORY_OPTIONS = ("mem", "mem-per-cpu", "mem-per-gpu")  # sbatch: "mutually exclusive" (src/sbatch/opt.c)


def _sbatch_option(item: str) -> str | None:
    """The long name an ``sbatch_args`` item sets (getopt: ``--name[=v]``, unambiguous prefixes, ``-Xv``)."""
    if item.startswith("--"):
        given = item[2:].split("=", 1)[0].split()[0] if item[2:].strip() else ""
        exact = [name for name in (*SBATCH_OWNED, *MEMORY_OPTIONS, "export") if name == given]
        if exact or len(given) < 2:
            return exact[0] if exact else None
        # getopt_long takes an unambiguous prefix for the whole name: --job=x is --job-name=x
        prefixed = [name for name in (*SBATCH_OWNED, "export") if name.startswith(given)]
        return prefixed[0] if prefixed else None
    letter = item[1:2]
    return next((name for name, (short, _) in SBATCH_OWNED.items() if short and short == letter), None)


def slurm_options(where: tuple, backend) -> Iterator[Finding]:
    """sbatch options and values that would break the backend or be refused by sbatch, found before any job."""
    for key in ("workdir", "python", "template"):
        value = getattr(backend, key) or ""
        if "\n" in value or "\r" in value or "\0" in value:
            yield (*where, key), "contains a line break or NUL byte: it would end a line of the batch script"
    for index, line in enumerate(backend.setup):
        # sbatch reads #SBATCH lines up to the script's first command (sbatch.1), and with no modules a setup
        # line is that far up: it would set an option past these checks
        if line.lstrip().upper().startswith("#SBATCH"):
            yield (
                (*where, "setup", index),
                f"{line!r}: sbatch reads it as an option when no command comes before it; write it in sbatch_args",
            )
    memory = [
        f"resources.{name.replace('-', '_')}"
        for name in MEMORY_OPTIONS
        if getattr(backend.resources, name.replace("-", "_"), None) is not None
    ]
    for index, item in enumerate(backend.sbatch_args):
        option = _sbatch_option(item)
        value = re.split(r"[=\s]", item, maxsplit=1)[1].strip() if re.search(r"[=\s]", item) else ""
        if option in SBATCH_OWNED:
            yield (*where, "sbatch_args", index), f"{item!r}: --{option} cannot be set here: {SBATCH_OWNED[option][1]}"
        elif option == "export" and not value.upper().startswith("ALL"):
            yield (
                (*where, "sbatch_args", index),
                f"{item!r}: the job must inherit the submitting environment (--export=ALL[,NAME=value], "
                "the default): mantik's tracking credentials reach the job that way",
            )
        elif option in MEMORY_OPTIONS:
            memory.append(f"sbatch_args {item}")
    if len(memory) > 1:
        yield (
            (*where, "resources"),
            f"{', '.join(memory)}: each sets the job's memory, and sbatch refuses --mem, --mem-per-cpu and "
            "--mem-per-gpu together; keep one",
        )


def _entry_points(spec: Spec) -> Iterator[Finding]:
    for name, entry in spec.entry_points.items():
        used = placeholders(entry.command)
        for placeholder in used:
            if placeholder.startswith(DATA_PREFIX):
                source = placeholder[len(DATA_PREFIX) :]
                if source not in spec.data:
                    yield (
                        ("entry_points", name, "command"),
                        f"{{{placeholder}}}: " + unknown_name("data source", source, spec.data),
                    )
            elif placeholder not in entry.parameters:
                yield (
                    ("entry_points", name, "command"),
                    f"placeholder {{{placeholder}}} has no declared parameter{suggest(placeholder, entry.parameters)}",
                )
        try:
            placeholder_contexts(entry.command)
        except QuotingError as exc:
            yield ("entry_points", name, "command"), str(exc)
        for parameter, declared in entry.parameters.items():
            if parameter not in used and not entry.from_mlproject:
                yield (
                    ("entry_points", name, "parameters", parameter),
                    f"parameter '{parameter}' is never used in the command",
                )
            if declared.default is not None and (problem := _type_problem(declared.default, declared.type)):
                yield ("entry_points", name, "parameters", parameter, "default"), problem


# YAML 1.1 read these as booleans; YAML 1.2 (and mantik) reads them as text
YAML11_BOOLEANS = {"y", "yes", "n", "no", "on", "off"}


def _type_problem(value, declared_type: str) -> str | None:
    problem = type_error(value, declared_type)
    if problem and declared_type == "bool" and isinstance(value, str) and value.lower() in YAML11_BOOLEANS:
        problem += ": write true or false"
    return problem


def _paths(spec: Spec) -> Iterator[Finding]:
    for name, backend in spec.backends.items():
        workdir = getattr(backend, "workdir", None)
        if workdir and not workdir.startswith(("/", "~")) and (problem := relative_path_problem(workdir)):
            yield ("backends", name, "workdir"), problem
        template = getattr(backend, "template", None)
        if template and (problem := relative_path_problem(template)):
            yield ("backends", name, "template"), problem
    for index, value in enumerate(spec.code.paths or []):
        if problem := relative_path_problem(value):
            yield ("code", "paths", index), problem
    for name, source in spec.data.items():
        where = ("data", name)
        if (source.path is None) == (source.url is None):
            yield where, "set exactly one of 'path' (DVC-tracked) or 'url'"
        elif source.path is not None and (problem := relative_path_problem(source.path)):
            yield (*where, "path"), problem
        elif source.url is not None and not (source.version or source.sha256 or source.unpinned):
            yield (
                (*where, "url"),
                "unpinned URL: add 'version' or 'sha256' (or 'unpinned: true' to accept unreproducible runs)",
            )


def _experiment(spec: Spec, name: str, experiment) -> Iterator[Finding]:
    where = ("experiments", name)
    if experiment.entry_point is None:
        yield where, "no entry_point (set it here or in the experiment it extends)"
        return
    if experiment.entry_point not in spec.entry_points:
        yield (*where, "entry_point"), unknown_name("entry point", experiment.entry_point, spec.entry_points)
        return
    if experiment.backend is None and len(spec.backends) != 1:
        yield where, f"no backend (several are declared: {', '.join(sorted(spec.backends))})"
    elif experiment.backend is not None and experiment.backend not in spec.backends:
        yield (*where, "backend"), unknown_name("backend", experiment.backend, spec.backends)
    if experiment.environment is not None and experiment.environment not in spec.environments:
        yield (*where, "environment"), unknown_name("environment", experiment.environment, spec.environments)
    for index, source in enumerate(experiment.data or []):
        if source not in spec.data:
            yield (*where, "data", index), unknown_name("data source", source, spec.data)
    entry = spec.entry_points[experiment.entry_point]
    for placeholder in placeholders(entry.command):
        if placeholder.startswith(DATA_PREFIX) and placeholder[len(DATA_PREFIX) :] not in (experiment.data or []):
            source = placeholder[len(DATA_PREFIX) :]
            yield where, f"entry point '{experiment.entry_point}' uses {{{placeholder}}}: add '{source}' to data"
    yield from _grid(name, experiment, entry)
    yield from _seeds(name, experiment, entry)


SEED_VARIABLE = "MANTIK_SEED"


def _seeds(name: str, experiment, entry) -> Iterator[Finding]:
    """Seeds that reach no program would run one command several times under several keys.

    A seed reaches the program through a ``seed`` parameter (whose use in the command is checked
    like any parameter's) or through $MANTIK_SEED, which every run gets: named in the command, or
    declared read by the program with ``seed_from_env: true``.
    """
    if experiment.seeds is None or SEED_PARAMETER in entry.parameters or experiment.seed_from_env:
        return
    if SEED_VARIABLE in entry.command:
        return
    yield (
        ("experiments", name, "seeds"),
        f"entry point '{experiment.entry_point}' never receives the seed, so each seed would run the same command: "
        f"declare a '{SEED_PARAMETER}' parameter and use {{{SEED_PARAMETER}}} in the command, "
        f"or set 'seed_from_env: true' if the program reads ${SEED_VARIABLE}",
    )


def _grid(name: str, experiment, entry) -> Iterator[Finding]:
    where = ("experiments", name, "parameters")
    given = experiment.parameters or {}
    extra = undeclared(entry, given)
    for parameter, value in given.items():
        if parameter not in entry.parameters and parameter not in extra:
            yield (
                (*where, parameter),
                f"entry point '{experiment.entry_point}' has no parameter '{parameter}'{suggest(parameter, entry.parameters)}",
            )
            continue
        if parameter in extra and parameter.startswith(DATA_PREFIX):
            yield (*where, parameter), f"'{parameter}' names a data source placeholder ({{{parameter}}}): rename it"
        if parameter == SEED_PARAMETER and experiment.seeds is not None:
            yield (*where, parameter), "set either 'seeds' or a 'seed' parameter, not both"
        values = value if isinstance(value, list) else [value]
        if not values:
            yield (*where, parameter), "empty grid axis: give at least one value"
        # a parameter the MLproject does not declare is text, as `mlflow run -P` passes it
        declared_type = entry.parameters[parameter].type if parameter in entry.parameters else "string"
        if len({repr(coerce(v, declared_type)) for v in values}) != len(values):  # 1 and 1.0 are one float
            yield (*where, parameter), "grid axis lists a value twice"
        for index, item in enumerate(values):
            if problem := _type_problem(item, declared_type):
                yield ((*where, parameter, index) if isinstance(value, list) else (*where, parameter)), problem
    for parameter, declared in entry.parameters.items():
        seeded = parameter == SEED_PARAMETER and experiment.seeds is not None
        if declared.default is None and parameter not in given and not seeded:
            yield (
                ("experiments", name),
                f"parameter '{parameter}' of entry point '{experiment.entry_point}' has no default: set it",
            )
    if isinstance(experiment.seeds, list) and len(set(experiment.seeds)) != len(experiment.seeds):
        yield ("experiments", name, "seeds"), "a seed is listed twice"


def committed_files(spec: Spec, project_root) -> Iterator[Finding]:
    """The files runs name by a relative path: ``path`` parameter values and script entry points.

    MLflow refuses a ``path`` value missing on disk, and a missing script fails at once. A job runs from
    its checkout of the committed tree, elsewhere, so a relative path must be in the project and not
    ignored by git. Absolute paths and URIs are passed on as given: they name places where the job runs.
    """
    named: dict[tuple, tuple[str, str]] = {}  # where it is written -> (what, the value)
    experiments, _ = resolve_extends(spec)
    for name, experiment in experiments.items():
        entry = spec.entry_points.get(experiment.entry_point or "")
        if entry is None:
            continue
        if entry.script:
            named.setdefault(("experiments", name, "entry_point"), ("script", experiment.entry_point))
        given = experiment.parameters or {}
        for parameter, declared in entry.parameters.items():
            if declared.type != "path":
                continue
            if parameter in given:
                where = ("experiments", name, "parameters", parameter)
                value = given[parameter]
                values = enumerate(value) if isinstance(value, list) else [(None, value)]
                for index, item in values:
                    named.setdefault(where if index is None else (*where, index), ("path", str(item)))
            elif declared.default is not None:
                where = ("entry_points", experiment.entry_point, "parameters", parameter, "default")
                named.setdefault(where, ("path", str(declared.default)))
    root = Path(project_root)
    present: dict[tuple, str] = {}
    for where, (what, value) in named.items():
        local = _local_path(value)
        if local is None:
            continue
        if posixpath.normpath(local).split("/")[0] == "..":
            yield where, f"{value} leads outside the project, which the job's checkout does not hold: give an absolute path"
        elif not local or not (root / local).exists():
            yield where, f"{value}: no such {'script' if what == 'script' else 'file or directory'} in the project" + (
                "" if what == "script" else " (MLflow refuses a path that does not exist)"
            )
        else:
            present[where] = local
    ignored = _ignored_by_git(root, sorted(set(present.values())))
    for where, local in present.items():
        if local in ignored:
            yield where, (
                f"{local} is ignored by git, so the job's checkout of the committed tree does not hold it "
                "(DVC-tracked data reaches a job through data: and {data.NAME})"
            )


def _local_path(value: str) -> str | None:
    """The file a ``path`` value names in the project, or None for an absolute path or a URI (as
    MLflow's ``get_local_path_or_none`` tells them apart: no scheme, or ``file:`` without a host)."""
    try:
        parsed = urllib.parse.urlparse(value)
    except ValueError:
        return value
    if parsed.scheme == "file" and not parsed.netloc:
        value = urllib.request.url2pathname(parsed.path)
    elif parsed.scheme:
        return None
    return None if value.startswith(("/", "~")) else value


def _ignored_by_git(root: Path, paths: list[str]) -> set[str]:
    """Which of ``paths`` (relative to ``root``) git ignores; none outside a git repository."""
    if not paths:
        return set()
    import subprocess

    listed = b"\0".join(p.encode() for p in paths) + b"\0"
    try:  # git itself, not state.git: the spec's checks stay below the state layer
        done = subprocess.run(
            ["git", "check-ignore", "-z", "--stdin"], cwd=root, input=listed, capture_output=True, timeout=60
        )
    except (OSError, subprocess.TimeoutExpired):  # no git here: only the disk is asked
        return set()
    if done.returncode != 0:  # 1: none is ignored; 128: no repository here (only the disk is asked)
        return set()
    return {path.decode() for path in done.stdout.split(b"\0") if path}


# MLflow's rules for registered model names and aliases (mlflow/utils/validation.py: _validate_model_name,
# _validate_model_alias_name, _validate_model_alias_name_reserved; the name column holds 256 characters)
MODEL_NAME_LENGTH = 256
ALIAS_PATTERN = re.compile(r"^[\w\-]*$")
VERSION_ALIAS = re.compile(r"^[vV]\d+$")
ALIAS_LENGTH = 255
LOCK_MODEL_PREFIX = "mantik-lock."  # the registered models that hold project locks (state/lock.py)


def model_name_problem(name: str) -> str | None:
    """Why MLflow would refuse ``name`` as a registered model's name, or None."""
    if not name.strip():
        return "a registered model's name cannot be empty"
    if "/" in name or ":" in name:
        return f"registered model name '{name}' cannot contain '/' or ':' (MLflow's rule)"
    normal = posixpath.normpath(name)
    if normal != name or normal == "." or normal.startswith(".."):
        return f"registered model name '{name}' would resolve to '{normal}' as a path (MLflow's rule)"
    if len(name) > MODEL_NAME_LENGTH:
        return f"registered model name is {len(name)} characters long; MLflow keeps at most {MODEL_NAME_LENGTH}"
    if name.startswith(LOCK_MODEL_PREFIX):
        return f"names starting with '{LOCK_MODEL_PREFIX}' hold mantik's project locks"
    return None


def alias_problem(alias: str) -> str | None:
    """Why MLflow would refuse ``alias`` as a registered model alias, or None."""
    if not alias:
        return "an alias cannot be empty"
    if not ALIAS_PATTERN.match(alias):
        return f"alias '{alias}': only letters, digits, underscores (_) and dashes (-) (MLflow's rule)"
    if len(alias) > ALIAS_LENGTH:
        return f"alias is {len(alias)} characters long; MLflow allows at most {ALIAS_LENGTH}"
    if alias.lower() == "latest":
        return "alias 'latest' is reserved by MLflow (it names the newest version)"
    if VERSION_ALIAS.match(alias):
        return f"alias '{alias}' looks like a version (v1, V2...), which MLflow reserves"
    return None


def _model(spec: Spec, name: str, model) -> Iterator[Finding]:
    where = ("models", name)
    problem = model_name_problem(name)
    if problem:
        yield where, problem
    if model.experiment not in spec.experiments:
        yield (*where, "experiment"), unknown_name("experiment", model.experiment, spec.experiments)
    problem = alias_problem(model.alias)
    if problem:
        yield (*where, "alias"), problem
    if model.artifact.startswith("/") or ".." in PurePosixPath(model.artifact).parts:
        yield (*where, "artifact"), "an artifact path inside the run: relative, without '..'"
