"""Files ``mantik.yaml`` points at and reads unchanged: an MLflow ``MLproject`` (entry points) and
Mantik compute-backend configs (UNICORE, or Slurm over SSH).

Their content is merged into the document before validation. The merged
document remembers where each part came from, so a problem inside an included
file, found by the model or by a cross-check, points at that file's line.
Mantik's own key names are checked here, before translation, so a misspelt
key gets a suggestion in the words the user wrote.
"""

from __future__ import annotations

import copy
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .checks import relative_path_problem
from .experiments import join_lines
from .hints import suggest
from .yamlload import MarkedDocument, Problem, SpecError, load_marked, read_regular_file
from .yamlload import Path as DataPath

SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the rules of MLflow's yaml.safe_load, in C
MAX_INCLUDED_BYTES = 1024 * 1024
MLPROJECT_ENVIRONMENTS = ("conda_env", "python_env", "docker_env")
MLPROJECT_KEYS = ("name", "entry_points", *MLPROJECT_ENVIRONMENTS)
CHECKED_TYPES = ("float", "int", "string", "bool", "path", "uri")
TYPE_ALIASES = {"str": "string", "integer": "int", "boolean": "bool"}  # names a Python user writes for ours


@dataclass
class Origin:
    """The parts of the merged document that came from another file, and where they are in it."""

    document: MarkedDocument
    paths: dict[DataPath, DataPath]  # merged path -> path in the included file


@dataclass
class ComposedDocument:
    """``mantik.yaml`` with its included files merged in; problems are reported in the file they belong to."""

    main: MarkedDocument
    data: object
    origins: list[Origin] = field(default_factory=list)

    @property
    def file(self) -> str:
        return self.main.file

    def problem(self, path: DataPath, message: str, at_key: bool = False) -> Problem:
        document, theirs = self.locate(path)
        return document.problem(theirs, message, at_key)

    def locate(self, path: DataPath) -> tuple[MarkedDocument, DataPath]:
        """The file a merged value was written in, and its path in that file."""
        path = tuple(path)
        if path in self.main.marks:  # written in mantik.yaml itself (which overrides included files)
            return self.main, path
        for origin in self.origins:
            for length in range(len(path), 0, -1):  # the longest merged path this file provided
                theirs = origin.paths.get(path[:length])
                if theirs is not None:
                    return origin.document, (*theirs, *path[length:])
        return self.main, path


def compose(document: MarkedDocument, project_root: Path) -> tuple[ComposedDocument, list[Problem]]:
    """Merge the files ``document`` refers to; problems with those files (missing, unreadable,
    unknown keys) are returned rather than raised, so every problem is reported at once."""
    composed = ComposedDocument(document, copy.deepcopy(document.data) if isinstance(document.data, dict) else None)
    problems: list[Problem] = []
    data = composed.data
    if not isinstance(data, dict):
        return composed, problems
    if isinstance(data.get("mlproject"), str):
        problems.extend(_include_mlproject(composed, project_root, data["mlproject"]))
    backends = data.get("backends")
    if isinstance(backends, dict):
        for name, backend in backends.items():
            if isinstance(backend, dict) and isinstance(backend.get("config"), str):
                problems.extend(_include_backend_config(composed, project_root, name, backend))
    return composed, problems


def read_included(project_root: Path, relative: str, main: MarkedDocument, at: DataPath) -> MarkedDocument:
    """Parse an included YAML or JSON file, or raise :class:`SpecError` located at ``at`` in ``main``."""
    return load_marked(_included_text(project_root, relative, main, at), relative)


def _included_text(project_root: Path, relative: str, main: MarkedDocument, at: DataPath) -> str:
    if problem := relative_path_problem(relative):
        raise SpecError([main.problem(at, problem)])
    path = project_root / relative
    if not path.resolve().is_relative_to(project_root.resolve()):  # a link anywhere along the path
        raise SpecError([main.problem(at, f"{relative} leads outside the project (through a symlink)")])
    if not path.exists():
        raise SpecError([main.problem(at, f"{relative} not found")])
    try:
        raw = read_regular_file(path, MAX_INCLUDED_BYTES)  # no hang on a FIFO or device, no huge read
    except ValueError as exc:
        raise SpecError([main.problem(at, f"{relative} {exc}")]) from None
    except OSError as exc:
        raise SpecError([main.problem(at, f"{relative} cannot be read: {exc.strerror}")]) from None
    if b"\x00" in raw:
        raise SpecError([main.problem(at, f"{relative} is not a text file (contains NUL bytes)")])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise SpecError([main.problem(at, f"{relative} is not valid UTF-8")]) from None
    return text


# -- MLproject --------------------------------------------------------------------------------------------


def _include_mlproject(composed: ComposedDocument, project_root: Path, relative: str) -> list[Problem]:
    try:
        text = _included_text(project_root, relative, composed.main, ("mlproject",))
        included = load_marked(text, relative)
    except SpecError as exc:
        return exc.problems
    if not isinstance(included.data, dict):
        return [included.problem((), "an MLproject file is a mapping (name:, entry_points:, ...)")]
    try:  # MLflow reads the file with PyYAML's YAML 1.1 rules: 1. is 1.0, yes is True, 010 is 8
        theirs = yaml.load(text, Loader=SafeLoader)
    except (yaml.YAMLError, ValueError) as exc:  # a date that is none (2024-13-01)
        return [included.problem((), f"MLflow's YAML reader refuses it: {str(exc).splitlines()[0]}")]
    theirs = theirs if isinstance(theirs, dict) else {}
    problems = [
        included.problem((key,), f"unknown MLproject key '{key}'{suggest(key, MLPROJECT_KEYS)}", at_key=True)
        for key in included.data
        if key not in MLPROJECT_KEYS
    ]
    problems += _mlflow_refusals(included, theirs, (project_root / relative).parent)
    entry_points = included.data.get("entry_points", {})
    if not isinstance(entry_points, dict):
        return [*problems, included.problem(("entry_points",), "expected a mapping of entry points")]
    merged = composed.data.setdefault("entry_points", {})
    if not isinstance(merged, dict):
        return problems
    paths = {}
    for name, entry in entry_points.items():
        if name in merged:
            problems.append(
                composed.main.problem(
                    ("entry_points", name), f"entry point '{name}' is also defined in {relative}", at_key=True
                )
            )
            continue
        merged[name] = _as_mlflow_reads(entry, _get(theirs, "entry_points", name))
        paths[("entry_points", name)] = ("entry_points", name)
    composed.origins.append(Origin(included, paths))
    return problems


def _as_mlflow_reads(entry, theirs):
    """An MLproject entry point as MLflow runs it, in mantik's terms (see :func:`mlproject_notes`).

    MLflow checks no parameter type but ``path`` and ``uri``: any other (``str``, ``list[int]``, a typo)
    passes values on as text, so it becomes ``string`` with the written type kept in ``declared_type``.
    A default is the value MLflow's YAML reader gives (``theirs``: ``1.`` is 1.0, ``yes`` True), which
    MLflow writes into the command as ``str(value)``. The command's line breaks (a folded ``>`` block with
    deeper-indented lines) are joined as MLflow and Mantik read them. Parameters the command does not use
    are allowed, as in MLflow.
    """
    if not isinstance(entry, dict):
        return entry
    entry = dict(entry, from_mlproject=True)
    if isinstance(entry.get("command"), str):
        entry["command"] = join_lines(entry["command"])
    parameters = entry.get("parameters")
    if isinstance(parameters, dict):
        entry["parameters"] = {
            name: _parameter(declared, _get(theirs, "parameters", name)) for name, declared in parameters.items()
        }
    elif parameters is None and "parameters" in entry:
        entry["parameters"] = {}
    return entry


def _parameter(declared, theirs):
    if isinstance(declared, str):
        declared = {"type": declared}
    if not isinstance(declared, dict) or not isinstance(declared.get("type", "string"), str):
        return declared  # refused by the model, at its line
    written = declared.get("type", "string")
    if written not in CHECKED_TYPES:
        declared = {**declared, "type": TYPE_ALIASES.get(written, "string"), "declared_type": written}
    if isinstance(theirs, dict) and "default" in theirs and "default" in declared:
        default = theirs["default"]
        # MLflow writes str(value): a date, or a boolean (no: False) of a parameter that takes text
        if isinstance(default, bool) and declared.get("type", "string") in ("string", "path", "uri"):
            default = str(default)
        elif default is not None and not isinstance(default, (bool, int, float, str, list, dict)):
            default = str(default)
        if not isinstance(default, (list, dict)):  # refused by the model, as mantik read it
            declared = {**declared, "default": default}
    return declared


def _get(data, *keys):
    """``data[k1][k2]...``, or None where a level is missing or no mapping."""
    for key in keys:
        data = data.get(key) if isinstance(data, dict) else None
    return data


def _mlflow_refusals(included: MarkedDocument, theirs: dict, directory: Path) -> list[Problem]:
    """What MLflow's ``load_project`` refuses in an MLproject, at its line: more than one environment, a
    ``docker_env`` without an image (or with volumes or an environment of another shape), a ``python_env``
    or ``conda_env`` file that is missing (MLflow looks for it beside the MLproject)."""
    problems = []
    environments = [key for key in included.data if key in MLPROJECT_ENVIRONMENTS]
    for key in environments[1:]:
        message = f"MLflow refuses an MLproject with more than one environment ({', '.join(environments)}): keep one"
        problems.append(included.problem((key,), message, at_key=True))
    docker = theirs.get("docker_env")
    if docker and not isinstance(docker, dict):
        problems.append(included.problem(("docker_env",), "a mapping with an image: (MLflow refuses anything else)"))
    elif docker:
        if not docker.get("image"):
            message = "MLflow refuses a docker_env without an image"
            problems.append(included.problem(("docker_env",), message, at_key=True))
        volumes = docker.get("volumes")
        if volumes and not (isinstance(volumes, list) and all(isinstance(v, str) for v in volumes)):
            message = "MLflow refuses volumes other than a list of strings (/host/path:/container/path)"
            problems.append(included.problem(("docker_env", "volumes"), message))
        variables = docker.get("environment")
        if variables and not (isinstance(variables, list) and all(isinstance(v, (list, str)) for v in variables)):
            message = "MLflow refuses an environment other than a list of names and [NAME, value] pairs"
            problems.append(included.problem(("docker_env", "environment"), message))
    for key in ("python_env", "conda_env"):
        file = theirs.get(key)
        if not file or key not in environments[:1]:  # MLflow reads the first it finds, python_env before conda_env
            continue
        if not isinstance(file, str):
            problems.append(included.problem((key,), "a file name (MLflow refuses anything else)"))
        elif not (directory / file).exists():
            problems.append(included.problem((key,), f"{file} not found beside the MLproject (MLflow refuses it)"))
    return problems


# What becomes of each docker_env key on every backend: mantik starts no Docker container (local, Slurm,
# UNICORE and FirecREST alike), so each says where its intent goes in mantik.yaml instead
DOCKER_ENV_KEYS = {
    "volumes": (
        "not mounted on any backend (no Docker container is started): bind what the run needs with an "
        "Apptainer environment's apptainer_options (-B SRC:DEST), or declare it as data"
    ),
    "environment": (
        "not set on any backend: give the variables in environments.NAME.variables (values there are not "
        "copied from this machine, as a bare name in docker_env would be)"
    ),
    "run_params": "not used on any backend: `docker run` options have no place where no container is started",
}


def mlproject_notes(spec, project_root: Path) -> list[str]:
    """What mantik does differently from ``mlflow run`` with the spec's MLproject, one line each with the
    MLproject's file:line: environments it names (mantik runs in the environments of ``mantik.yaml``) and
    parameter types it does not check. Empty without an MLproject; never raises."""
    if not spec.mlproject:
        return []
    try:
        document = read_included(project_root, spec.mlproject, load_marked("mlproject: x", "mantik.yaml"), ())
    except SpecError:
        return []
    data = document.data if isinstance(document.data, dict) else {}
    notes = []
    for key in MLPROJECT_ENVIRONMENTS:
        if key in data:
            message = (
                "not used: runs use the environment mantik.yaml gives them (an experiment's or its backend's "
                "environment), as `mlflow run --env-manager local` would; declare one that provides what it lists"
            )
            notes.append(str(document.problem((key,), message, at_key=True)))
    docker = data.get("docker_env")
    if isinstance(docker, dict):  # each key says what mlflow run would have done with it: none of it happens
        for key, message in DOCKER_ENV_KEYS.items():
            if key in docker:
                notes.append(str(document.problem(("docker_env", key), message, at_key=True)))
    for name, entry in spec.entry_points.items():
        for parameter, declared in entry.parameters.items():
            if entry.from_mlproject and declared.declared_type and declared.declared_type not in TYPE_ALIASES:
                message = (
                    f"type {declared.declared_type!r} is not one MLflow checks: values are passed on as text, "
                    "as MLflow does (mantik treats it as string)"
                )
                notes.append(str(document.problem(("entry_points", name, "parameters", parameter, "type"), message)))
    return notes + _misspelt_parameters(spec, project_root)


def _misspelt_parameters(spec, project_root: Path) -> list[str]:
    """A parameter an MLproject entry point does not declare is appended as ``--name value``, as
    ``mlflow run`` does; one close to a declared name is noted at its line in mantik.yaml."""
    from .experiments import resolve_extends
    from .load import SPEC_FILE  # the loader imports this module

    try:
        main = load_marked((project_root / SPEC_FILE).read_text(), SPEC_FILE)
    except (OSError, UnicodeDecodeError, SpecError):
        return []
    resolved, _ = resolve_extends(spec)
    notes = []
    for name, experiment in spec.experiments.items():
        entry = spec.entry_points.get(resolved[name].entry_point or "") if name in resolved else None
        if entry is None or not entry.from_mlproject:
            continue
        for parameter in experiment.parameters or {}:
            if parameter not in entry.parameters and (hint := suggest(parameter, entry.parameters)):
                message = (
                    f"entry point '{resolved[name].entry_point}' does not declare it: passed as --{parameter} VALUE "
                    f"after the command, as mlflow run does{hint}"
                )
                where = ("experiments", name, "parameters", parameter)
                notes.append(str(main.problem(where, message, at_key=True)))
    return notes


# -- Mantik compute-backend configs ---------------------------------------------------------------------

# Mantik's key -> (where it goes: "backend" or "environment", our key[, value converter])
RESOURCES = {
    "Queue": "queue",
    "Runtime": "runtime",
    "Nodes": "nodes",
    "TotalCPUs": "total_cpus",
    "CPUsPerNode": "cpus_per_node",
    "GPUsPerNode": "gpus_per_node",
    "MemoryPerNode": "memory",
    "Reservation": "reservation",
    "NodeConstraints": "node_constraints",
    "QoS": "qos",
}
ENVIRONMENT_KEYS = (
    "Apptainer",
    "Python",
    "Variables",
    "Modules",
    "PreRunCommandOnLoginNode",
    "PreRunCommandOnComputeNode",
    "PostRunCommandOnComputeNode",
    "PostRunCommandOnLoginNode",
)
COMMAND_LISTS = {
    "PreRunCommandOnComputeNode": ("environment", "pre_run"),
    "PostRunCommandOnComputeNode": ("environment", "post_run"),
    "PreRunCommandOnLoginNode": ("backend", "login_precommand"),
    "PostRunCommandOnLoginNode": ("backend", "login_postcommand"),
}
TOP_KEYS = ("UnicoreApiUrl", "Firecrest", "SSH", "Resources", "Environment", "Exclude")
# Version and Digest are mantik's: Mantik's own client ignores keys it does not know, so a config that names
# its remote image's version still works there
APPTAINER_KEYS = ("Path", "Type", "Options", "Version", "Digest")


SLURM_RESOURCES = {  # Mantik's key -> (our field, or a resource under resources:)
    "Queue": ("partition", None),
    "Runtime": ("resources", "time"),
    "Nodes": ("resources", "nodes"),
    "CPUsPerNode": ("resources", "cpus_per_task"),
    "MemoryPerNode": ("resources", "mem"),
    "QoS": ("qos", None),
}
SLURM_OPTIONS = {"Reservation": "--reservation", "NodeConstraints": "--constraint"}
SSH_KEYS = ("Hostname", "Port", "User")
FIRECREST_KEYS = {"ApiUrl": "url", "TokenUrl": "token_url", "Machine": "machine"}  # Mantik's -> ours
CONNECTION_OF = {"unicore": "UnicoreApiUrl", "slurm": "SSH", "firecrest": "Firecrest"}


def slurm_time(runtime) -> object:
    """Mantik's Runtime (``12h``, ``90m``, ``2d``, seconds) as Slurm writes a time limit; anything else
    is passed on for the model to refuse at its line."""
    text = str(runtime)
    match = re.fullmatch(r"(\d+)([smhd]?)", text)
    if not match:
        return runtime
    amount, unit = int(match.group(1)), match.group(2) or "s"
    if unit == "d":
        return f"{amount}-00:00:00"
    if unit == "h":
        return f"{amount}:00:00"
    if unit == "m":
        return str(amount)
    return str(max(1, -(-amount // 60)))  # Slurm counts minutes: round seconds up


class _Translation:
    """Mantik's config, turned into our backend (and environment) fields, with where each came from."""

    def __init__(self, config: MarkedDocument, backend_name: str, kind: str):
        self.config = config
        self.kind = kind  # the type of the backend reading it: unicore, slurm over SSH, or firecrest
        self.backend_name = backend_name
        self.backend: dict = {}
        self.environment: dict = {}
        self.paths: dict[DataPath, DataPath] = {}
        self.problems: list[Problem] = []

    def put(self, target: str, key: str, value, source: DataPath) -> None:
        if target == "backend":
            self.backend[key] = value
            self.paths[("backends", self.backend_name, key)] = source
        else:
            self.environment[key] = value
            self.paths[("environments", self.backend_name, key)] = source

    def fail(self, source: DataPath, message: str, at_key: bool = False) -> None:
        self.problems.append(self.config.problem(source, message, at_key))

    def unknown_keys(self, mapping: dict, allowed, where: DataPath, what: str) -> None:
        for key in mapping:
            if key not in allowed:
                self.fail((*where, key), f"unknown {what} key '{key}'{suggest(key, allowed)}", at_key=True)

    def mapping(self, value, where: DataPath) -> dict:
        if isinstance(value, dict):
            return value
        self.fail(where, "expected a mapping")
        return {}

    def translate(self) -> None:
        data = self.config.data
        if not isinstance(data, dict):
            self.fail((), "a compute-backend config is a mapping (UnicoreApiUrl:, Resources:, Environment:)")
            return
        self.unknown_keys(data, TOP_KEYS, (), "compute-backend config")
        connections = [key for key in ("UnicoreApiUrl", "Firecrest", "SSH") if key in data]
        expected = CONNECTION_OF[self.kind]
        if len(connections) != 1:
            self.fail((), "set exactly one of UnicoreApiUrl, Firecrest or SSH")
        elif connections[0] != expected:
            self.fail(
                (connections[0],),
                f"{connections[0]} configs describe another backend; a backend of type {self.kind} reads {expected}",
            )
        elif self.kind == "unicore":
            self.put("backend", "url", data["UnicoreApiUrl"], ("UnicoreApiUrl",))
        elif self.kind == "firecrest":
            self.firecrest(self.mapping(data["Firecrest"], ("Firecrest",)))
        else:
            self.ssh(self.mapping(data["SSH"], ("SSH",)))
        if "Resources" in data and self.kind in ("slurm", "firecrest"):
            self.slurm_resources(self.mapping(data["Resources"], ("Resources",)))
        elif "Resources" in data:
            self.resources(self.mapping(data["Resources"], ("Resources",)))
        else:
            self.fail((), "Resources (with at least Queue) is required")
        if "Environment" in data:
            self.environment_section(self.mapping(data["Environment"], ("Environment",)))
        if "Exclude" in data:
            self.put("backend", "exclude", data["Exclude"], ("Exclude",))

    def resources(self, resources: dict) -> None:
        self.unknown_keys(resources, RESOURCES, ("Resources",), "Resources")
        if "Queue" not in resources:
            self.fail(("Resources",), "Queue is required")
        translated = {}
        for key, ours in RESOURCES.items():
            if key in resources:
                translated[ours] = resources[key]
                self.paths[("backends", self.backend_name, "resources", ours)] = ("Resources", key)
        self.backend["resources"] = translated
        self.paths[("backends", self.backend_name, "resources")] = ("Resources",)

    def ssh(self, ssh: dict) -> None:
        self.unknown_keys(ssh, SSH_KEYS, ("SSH",), "SSH")
        ours = {"Hostname": "host", "Port": "port", "User": "user"}
        self.backend["ssh"] = {ours[key]: value for key, value in ssh.items() if key in ours}
        self.paths[("backends", self.backend_name, "ssh")] = ("SSH",)
        for key, field_name in ours.items():
            self.paths[("backends", self.backend_name, "ssh", field_name)] = ("SSH", key)

    def firecrest(self, section: dict) -> None:
        self.unknown_keys(section, FIRECREST_KEYS, ("Firecrest",), "Firecrest")
        for key, ours in FIRECREST_KEYS.items():
            if key in section:
                self.put("backend", ours, section[key], ("Firecrest", key))
            else:
                self.fail(("Firecrest",), f"{key} is required")

    def slurm_resources(self, resources: dict) -> None:
        where = ("Resources",)
        known = [*SLURM_RESOURCES, *SLURM_OPTIONS, "GPUsPerNode", "TotalCPUs"]
        self.unknown_keys(resources, known, where, "Resources")
        if "Queue" not in resources:
            self.fail(where, "Queue is required")
        translated: dict = {}
        for key, (target, resource) in SLURM_RESOURCES.items():
            if key not in resources:
                continue
            value = slurm_time(resources[key]) if key == "Runtime" else resources[key]
            if resource is None:
                self.put("backend", target, value, (*where, key))
            else:
                translated[resource] = value
                self.paths[("backends", self.backend_name, "resources", resource)] = (*where, key)
        if "GPUsPerNode" in resources:
            translated["gres"] = f"gpu:{resources['GPUsPerNode']}"
            self.paths[("backends", self.backend_name, "resources", "gres")] = (*where, "GPUsPerNode")
        if "TotalCPUs" in resources:
            self.fail(
                (*where, "TotalCPUs"), "Slurm has no total CPU count per job here: use Nodes and CPUsPerNode", True
            )
        if self.kind == "firecrest":  # its own fields, passed as #SBATCH lines
            for key, option in SLURM_OPTIONS.items():
                if key in resources:
                    self.put("backend", option.lstrip("-"), resources[key], (*where, key))
        options = [f"{SLURM_OPTIONS[key]}={resources[key]}" for key in SLURM_OPTIONS if key in resources]
        if options and self.kind == "slurm":
            self.put("backend", "sbatch_args", options, where)
        self.backend["resources"] = translated
        self.paths[("backends", self.backend_name, "resources")] = where

    def environment_section(self, environment: dict) -> None:
        where = ("Environment",)
        self.unknown_keys(environment, ENVIRONMENT_KEYS, where, "Environment")
        # Mantik wrote the image path, Apptainer options and variables into its batch script as they were,
        # and configs rely on the shell there ($USER in image paths, $(...) in variables)
        self.put("environment", "shell_expansion", True, where)
        if "Apptainer" in environment and "Python" in environment:
            self.fail(where, "set either Apptainer or Python, not both")
        if "Apptainer" in environment:
            self.apptainer(self.mapping(environment["Apptainer"], (*where, "Apptainer")))
        if "Python" in environment:
            self.python(environment["Python"])
        if "Variables" in environment:
            variables = self.mapping(environment["Variables"], (*where, "Variables"))
            # Mantik passed numbers through (OMP_NUM_THREADS: 8); the environment only holds strings
            self.put("environment", "variables", {k: _text(v) for k, v in variables.items()}, (*where, "Variables"))
        if "Modules" in environment:
            self.put("environment", "modules", environment["Modules"], (*where, "Modules"))
        for key, (target, ours) in COMMAND_LISTS.items():
            if key in environment and target == "backend" and self.kind != "unicore":
                self.fail(
                    (*where, key),
                    f"only UNICORE runs commands on the login node; use {key.replace('Login', 'Compute')}",
                )
            elif key in environment:
                value = environment[key]
                # Mantik took one string or a list of commands
                commands = [value] if isinstance(value, str) else value
                if isinstance(commands, list):
                    commands = [line for c in commands for line in self.script_lines(_text(c), (*where, key))]
                self.put(target, ours, commands, (*where, key))

    def script_lines(self, value, where: DataPath) -> list:
        """A command Mantik handed to UNICORE's job as a script (a ``|`` block of several lines, or a ``>``
        folded line ending in a line break), as the lines a shell runs in turn: each one line, blank and
        comment lines left out, a line ending in ``\\`` joined to the next as the shell joins it. A command
        spanning lines (``if``/``for`` over several lines, a here-document, an open quote or pipe) cannot run
        line by line and is refused at its key."""
        if not isinstance(value, str) or not re.search(r"[\r\n]", value):
            return [value]  # one line, or not text: the model checks it at its line
        lines: list[str] = []
        pending = ""
        for raw in re.split(r"\r\n|\r|\n", value):
            line = pending + raw
            pending = ""
            if re.search(r"(?<!\\)(\\\\)*\\$", line):
                pending = line[:-1]
                continue
            if line.strip() and not line.strip().startswith("#"):
                lines.append(line.strip())
        if pending.strip():
            lines.append(pending.strip())
        spanning = next((line for line in lines if spans_lines(line)), None)
        if spanning is not None:
            self.fail(
                where,
                f"{spanning!r} continues on the next line (if/for/while/case over several lines, a here-document, "
                "an open quote or pipe): write it on one line with ';', as each line runs on its own",
            )
        return lines

    def apptainer(self, apptainer: dict) -> None:
        where = ("Environment", "Apptainer")
        self.unknown_keys(apptainer, APPTAINER_KEYS, where, "Apptainer")
        if "Path" not in apptainer:
            self.fail(where, "Path is required")
            return
        self.put("environment", "apptainer", apptainer["Path"], (*where, "Path"))
        kind = apptainer.get("Type", "local")
        if kind not in ("local", "remote"):
            self.fail((*where, "Type"), f"Type is 'local' (uploaded with the job) or 'remote', not {kind!r}")
        elif kind == "remote":
            if not str(apptainer["Path"]).startswith("/"):
                self.fail((*where, "Path"), "a remote image needs an absolute path")
            self.put("environment", "apptainer_remote", True, (*where, "Type"))
        else:
            self.put("environment", "apptainer_remote", False, (*where, "Type"))
        if "Version" in apptainer:
            self.put("environment", "image_version", _text(apptainer["Version"]), (*where, "Version"))
        if "Digest" in apptainer:
            self.put("environment", "digest", apptainer["Digest"], (*where, "Digest"))
        if "Options" in apptainer:
            options = apptainer["Options"]
            self.put(
                "environment",
                "apptainer_options",
                [options] if isinstance(options, str) else options,
                (*where, "Options"),
            )

    def python(self, value) -> None:
        where = ("Environment", "Python")
        if isinstance(value, dict):  # newer Mantik configs: Python: {Path: /venv}
            self.unknown_keys(value, ("Path",), where, "Python")
            if "Path" not in value:
                self.fail(where, "Path is required")
                return
            self.put("environment", "venv", value["Path"], (*where, "Path"))
        else:
            self.put("environment", "venv", value, where)


# a compound command and what ends it, in command position (bash(1), SHELL GRAMMAR)
COMPOUND_ENDS = {"if": "fi", "case": "esac", "for": "done", "while": "done", "until": "done", "select": "done", "{": "}"}
COMMAND_START = {";", ";;", "|&", "&&", "||", "|", "&", "(", ")", "{", "!", "then", "do", "else", "elif", "in"}


def spans_lines(line: str) -> bool:
    """Whether a shell line leaves a command open for the next one: a quote, a pipe or ``&&``, a
    here-document, or a compound command (``if``, ``for``, ``{``...) not closed on it."""
    if re.search(r"(\|\||&&|\|)\s*$", line):
        return True
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.commenters = ""
    lexer.whitespace_split = False
    try:
        tokens = list(lexer)
    except ValueError:  # "No closing quotation"
        return True
    if any(token.startswith("<<") for token in tokens):
        return True
    open_: list[str] = []
    for index, token in enumerate(tokens):
        if index and tokens[index - 1] not in COMMAND_START:
            continue
        if token in COMPOUND_ENDS:
            open_.append(COMPOUND_ENDS[token])
        elif open_ and token == open_[-1]:
            open_.pop()
    return bool(open_)


def _text(value) -> object:
    return str(value).lower() if isinstance(value, bool) else str(value) if isinstance(value, (int, float)) else value


def _include_backend_config(composed: ComposedDocument, project_root: Path, name: str, backend: dict) -> list[Problem]:
    relative = backend["config"]
    at = ("backends", name, "config")
    kind = backend.get("type")
    if kind not in CONNECTION_OF:
        return [
            composed.main.problem(
                at, "a Mantik compute-backend config is read by backends of type unicore, slurm or firecrest"
            )
        ]
    try:
        config = read_included(project_root, relative, composed.main, at)
    except SpecError as exc:
        return exc.problems
    translation = _Translation(config, name, kind)
    translation.translate()
    problems = list(translation.problems)
    for key, value in translation.backend.items():
        if key == "resources" and isinstance(backend.get("resources"), dict):
            backend["resources"] = {**value, **backend["resources"]}  # mantik.yaml overrides the config
        elif key not in backend:
            backend[key] = value
    if translation.environment:
        environments = composed.data.setdefault("environments", {})
        if isinstance(environments, dict):
            if name in environments and isinstance(environments[name], dict):
                # mantik.yaml completes or overrides the config's Environment (a remote image's image_version)
                environments[name] = {**translation.environment, **environments[name]}
                backend.setdefault("environment", name)
            elif name in environments:
                problems.append(
                    composed.main.problem(
                        at, f"its Environment becomes environment '{name}', which environments already declares"
                    )
                )
            else:
                environments[name] = translation.environment
                translation.paths[("environments", name)] = ("Environment",)
                backend.setdefault("environment", name)
    composed.origins.append(Origin(config, translation.paths))
    return problems
