"""Find, parse and validate ``mantik.yaml``: the only way the rest of the tool gets a spec.

Every problem, from a YAML syntax error to a reference to an undeclared
backend, comes back as a :class:`Problem` with ``file:line:col``.
"""

from __future__ import annotations

import hashlib
import os
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ValidationError

from .checks import YAML11_BOOLEANS, committed_files, inline_credentials, on_disk, semantic
from .experiments import add_script_entry_points, format_value, resolve_extends
from .hints import suggest
from .includes import compose
from .model import ENV_NAME, Spec
from .yamlload import Mark, MarkedDocument, Problem, SpecError, dotted, load_marked, read_regular_file

SPEC_FILE = "mantik.yaml"
MAX_SPEC_BYTES = 2 * 1024 * 1024


@dataclass
class LoadedSpec:
    spec: Spec
    document: MarkedDocument
    root: Path  # the project directory (where mantik.yaml is)
    digest: str  # sha256 of the file's bytes, for saved-plan staleness


def spec_path(directory: Path) -> Path:
    return Path(directory) / SPEC_FILE


def read_spec_text(directory: Path) -> tuple[Path, str, bytes]:
    path = spec_path(directory)

    def fail(message: str, mark: Mark | None = None) -> SpecError:
        return SpecError([Problem(SPEC_FILE, mark, "", message)])

    if path.is_symlink():
        target = path.resolve()
        if not target.is_relative_to(Path(directory).resolve()):
            raise fail(f"is a symlink to {target}, outside the project")
    if not path.exists():
        raise fail(f"not found in {Path(directory).resolve()}")
    try:
        raw = read_regular_file(path, MAX_SPEC_BYTES)
    except ValueError as exc:
        raise fail(str(exc)) from None
    except OSError as exc:
        raise fail(f"cannot be read: {exc.strerror}") from None
    if b"\x00" in raw:
        raise fail("is not a text file (contains NUL bytes)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise fail("not valid UTF-8", Mark(line, column)) from None
    return path, text, raw


def specs_for_files(directory: Path, files) -> tuple[list[Path], list[Problem]]:
    """The projects whose specs cover ``files`` (paths relative to ``directory``), for pre-commit.

    A ``mantik.yaml`` is its own project; any other file (an MLproject, a config, a ``.dvc`` file)
    belongs to the nearest ``mantik.yaml`` in its directory or above, up to ``directory``, and to no
    project when there is none. Returns project directories relative to ``directory``, in the order
    given and each once, and a problem for each ``mantik.yml`` (which mantik does not read).
    """
    directory = Path(directory)
    base = directory.resolve()
    projects: list[Path] = []
    problems: list[Problem] = []
    for file in files:
        path = (directory / file).absolute()
        if path.name == "mantik.yml":
            problems.append(Problem(str(file), None, "", f"mantik reads specs named {SPEC_FILE}: rename this file"))
            continue
        project = None
        if path.name == SPEC_FILE:
            project = path.parent
        else:
            for parent in path.parents:
                if (parent / SPEC_FILE).is_file():
                    project = parent
                    break
                if parent.resolve() == base:
                    break
        if project is None:
            continue
        relative = Path(os.path.relpath(project, directory.absolute()))
        if relative not in projects:
            projects.append(relative)
    return projects, problems


def load_spec(directory: Path | str = ".") -> LoadedSpec:
    """Parse and validate the spec in ``directory`` or raise :class:`SpecError`."""
    directory = Path(directory)
    _, text, raw = read_spec_text(directory)
    document = load_marked(text, SPEC_FILE)
    spec = validate_document(document, directory)
    digest = hashlib.sha256(raw)
    for included in included_files(spec):  # a saved plan is stale when an MLproject or backend config changed
        try:
            content = read_regular_file(directory / included, MAX_SPEC_BYTES)
        except (OSError, ValueError) as exc:  # replaced since it was validated a moment ago
            raise SpecError([Problem(included, None, "", f"changed while it was read: {exc}")]) from None
        digest.update(b"\0" + included.encode() + b"\0" + content)
    return LoadedSpec(spec, document, directory.resolve(), digest.hexdigest())


def included_files(spec: Spec) -> list[str]:
    """The files the spec reads in besides itself, relative to the project."""
    configs = [backend.config for backend in spec.backends.values() if getattr(backend, "config", None)]
    return sorted({*([spec.mlproject] if spec.mlproject else []), *configs})


def validate_document(document: MarkedDocument, project_root: Path | None = None) -> Spec:
    """Validate a parsed spec; with ``project_root``, the files it includes and refers to are read too."""
    if not isinstance(document.data, dict):
        raise SpecError([document.problem((), "the top level must be a mapping (project:, experiments:, ...)")])
    problems: list[Problem] = []
    if project_root is not None:
        document, problems = compose(document, Path(project_root))
    credentials = list(inline_credentials(document.data))
    problems += [document.problem(path, message) for path, message in credentials]
    try:
        spec = Spec.model_validate(document.data)
    except ValidationError as exc:
        reported = {dotted(path) for path, _ in credentials}
        problems.extend(p for p in _pydantic_problems(exc, document) if p.path not in reported)
        raise SpecError(_sorted(problems)) from None
    add_script_entry_points(spec)
    problems.extend(_plain_scalars(spec, document))
    problems.extend(document.problem(path, message) for path, message in semantic(spec))
    if project_root is not None:
        problems.extend(document.problem(path, message) for path, message in on_disk(spec, project_root))
        problems.extend(document.problem(path, message) for path, message in committed_files(spec, project_root))
    if problems:
        raise SpecError(_sorted(problems))
    return spec


TEXT_PARAMETER_TYPES = ("string", "path", "uri")


def _plain_scalars(spec: Spec, document) -> list[Problem]:
    """Apply the rules for unquoted values that need the declared types (see :mod:`.yamlload`).

    A parameter declared as text (string, path, uri) receives the text written: ``1.10``, ``1e-3``,
    ``010`` and ``true`` reach the job as written, not as the number or boolean YAML reads (a number
    written as the job receives it, ``0.1``, keeps its type and so its run keys). Anywhere
    else, an integer with a leading zero is refused with a request for quotes: YAML 1.1 tools (PyYAML,
    MLflow's MLproject reader) read ``010`` as 8, YAML 1.2 tools as 10.
    """
    kept_as_text: set[tuple[int, tuple]] = set()

    def as_text(holder: dict | list, index, path: tuple, declared_type: str) -> None:
        value = holder[index]
        if value is None or isinstance(value, str):
            return
        if declared_type == "float" and not isinstance(value, bool):
            source, theirs = document.locate(path)
            written = source.written.get(theirs)
            if written is not None and format_value(value) != written:
                holder[index] = written  # 1e-3: the job gets it as written, the run is keyed by its value
            return
        if declared_type not in TEXT_PARAMETER_TYPES:
            return
        source, theirs = document.locate(path)
        written = source.written.get(theirs)
        if written is None:
            return
        kept_as_text.add((id(source), theirs))
        # a number that the job would receive exactly as written keeps its type, and so the run keys it
        # always had; any other (1.10, 1e-3, 0x1F, 010, true) becomes the text
        if isinstance(value, bool) or format_value(value) != written:
            holder[index] = written

    for name, entry in spec.entry_points.items():
        for parameter, declared in entry.parameters.items():
            where = ("entry_points", name, "parameters", parameter, "default")
            if entry.from_mlproject:  # read as MLflow reads it (see includes._as_mlflow_reads): unambiguous
                source, theirs = document.locate(where)
                kept_as_text.add((id(source), theirs))
                continue
            holder = declared.__dict__  # the model is not revalidated: values are set in place
            as_text(holder, "default", where, declared.type)
    experiments, _ = resolve_extends(spec)
    for name, experiment in spec.experiments.items():
        entry = spec.entry_points.get(experiments[name].entry_point) if name in experiments else None
        if entry is None or not experiment.parameters:
            continue
        for parameter, value in experiment.parameters.items():
            if parameter not in entry.parameters and not entry.from_mlproject:
                continue
            # one the MLproject does not declare reaches the command as text, as `mlflow run -P name=...` passes it
            declared_type = entry.parameters[parameter].type if parameter in entry.parameters else "string"
            where = ("experiments", name, "parameters", parameter)
            if isinstance(value, list):
                for index in range(len(value)):
                    as_text(value, index, (*where, index), declared_type)
            else:
                as_text(experiment.parameters, parameter, where, declared_type)
    problems = []
    for source in _documents(document):
        for path in sorted(source.leading_zeros, key=lambda p: [str(part) for part in p]):
            if (id(source), path) not in kept_as_text:
                text = source.written[path]
                problems.append(
                    source.problem(
                        path,
                        f"{text} has a leading zero, which YAML tools read differently (YAML 1.2: "
                        f"{int(text, 10)}; YAML 1.1: octal or text): write {int(text, 10)}, "
                        f'or quote it ("{text}") if it is text',
                    )
                )
    return problems


def _documents(document) -> list[MarkedDocument]:
    """The files a (possibly composed) document was read from."""
    origins = getattr(document, "origins", None)
    if origins is None:
        return [document]
    return [document.main, *(origin.document for origin in origins)]


def _sorted(problems: list[Problem]) -> list[Problem]:
    return sorted(problems, key=lambda p: (p.mark.line, p.mark.column) if p.mark else (0, 0))


_EXPECTED = re.compile(r"should be (?:a valid |an? )?(.+?)(?:$|,)")


def _pydantic_problems(exc: ValidationError, document: MarkedDocument) -> list[Problem]:
    """One problem per location, in the user's terms (not pydantic's union member names)."""
    grouped: dict[tuple, list[dict]] = {}
    for error in exc.errors(include_url=False):
        grouped.setdefault(_data_path(error["loc"], document.data), []).append(error)
    problems = []
    for path, errors in grouped.items():
        first = errors[0]
        if first["type"] == "extra_forbidden":
            allowed = _allowed_keys(path[:-1], document.data)
            problems.append(
                document.problem(path, f"unknown key '{path[-1]}'{suggest(path[-1], allowed)}", at_key=True)
            )
            continue
        if first["type"] == "missing":
            message = "required"
        elif first["type"] == "string_pattern_mismatch" and first["ctx"].get("pattern") == ENV_NAME:
            message = (
                f"{_describe(first['input'])} is not an environment variable name: letters, digits and _, "
                "not starting with a digit"
            )
        elif first["type"] == "union_tag_invalid":
            path = (*path, "type")
            message = f"unknown type {first['ctx']['tag']!r}; expected {first['ctx']['expected_tags']}"
        elif len(errors) > 1:
            expected = sorted({m.group(1) for e in errors if (m := _EXPECTED.search(e["msg"]))})
            message = f"expected {' or '.join(expected)}, got {_describe(first['input'])}"
        elif first["type"] == "value_error":
            message = str(first["ctx"]["error"])
        else:
            message = first["msg"][0].lower() + first["msg"][1:]
            if first["type"] != "assertion_error":
                message += f", got {_describe(first['input'])}"
        source, theirs = document.locate(path)
        written = source.written.get(theirs)
        if written is not None and not isinstance(first["input"], str):  # unquoted: name it as written
            message = message.replace(f"got {_describe(first['input'])}", f"got {written}")
            if any(e["type"] == "string_type" for e in errors):
                message += f' (quote it, "{written}", for the text)'
        if any(e["type"] == "bool_type" for e in errors) and str(first["input"]).lower() in YAML11_BOOLEANS:
            message += ": write true or false"  # yes/no/on/off are booleans only in YAML 1.1
        at_key = first["loc"][-1:] == ("[key]",)  # a bad mapping key: shown where the key is written
        problems.append(document.problem(path, message, at_key=at_key))
    return problems


def _describe(value) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _data_path(loc: tuple, data) -> tuple:
    """Drop the parts of a pydantic location that are not in the document (union tags)."""
    path: list = []
    node = data
    for index, part in enumerate(loc):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        elif index < len(loc) - 1 or not isinstance(node, dict):
            continue  # a union member's name, not a key of the document
        path.append(part)
    return tuple(path)


def _allowed_keys(path: tuple, data) -> list[str]:
    """The keys the model accepts at ``path`` (for 'did you mean')."""
    annotation: object = Spec
    node = data
    for part in path:
        annotation = _concrete(annotation, node)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            field = annotation.model_fields.get(part)
            if field is None:
                return []
            annotation = field.annotation
        else:
            args = typing.get_args(annotation)
            annotation = args[-1] if args else None
        node = node[part] if isinstance(node, (dict, list)) else None
    annotation = _concrete(annotation, node)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return list(annotation.model_fields)
    return []


def _concrete(annotation, node):
    """Strip Annotated/Optional and pick the union member that matches ``node``."""
    while typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        members = [_concrete(m, node) for m in typing.get_args(annotation)]
        models = [m for m in members if isinstance(m, type) and issubclass(m, BaseModel)]
        tag = node.get("type") if isinstance(node, dict) else None
        for model in models:
            field = model.model_fields.get("type")
            if field is not None and tag in typing.get_args(field.annotation):
                return model
        if models:
            return models[0]
        containers = [m for m in members if typing.get_origin(m) in (dict, list)]
        return containers[0] if containers else annotation
    return annotation
