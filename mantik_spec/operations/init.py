"""``mantik init``: a commented mantik.yaml (reading an MLproject and a Mantik compute-backend config
when there are some) and CI files.

Everything is rendered from ``templates/`` and checked before it is written:
the spec must validate and CI files must parse. Existing files are kept
unless ``force``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..errors import UserError
from ..spec.experiments import join_lines
from ..spec.load import SPEC_FILE, validate_document
from ..spec.schema import SCHEMA_ID
from ..spec.yamlload import SpecError, load_marked
from ..templating import packaged, render

CI_FILES = {"github": ".github/workflows/mantik.yml", "gitlab": ".gitlab-ci.yml"}
# A value of each type that validates, for a parameter without a default: a path must exist in the project
# and a uri name a scheme (MLflow refuses "TODO" for either), so they get the project and a URI to replace
SAMPLE_VALUES = {
    "float": 0.01,
    "int": 1,
    "bool": False,
    "string": "TODO",
    "path": ".",
    "uri": "https://example.org/TODO",
}
MLFLOW_TYPES = {
    "float": "float",
    "int": "int",
    "integer": "int",
    "string": "string",
    "str": "string",
    "path": "path",
    "uri": "uri",
    "bool": "bool",
    "boolean": "bool",
}


@dataclass
class InitEntryPoint:
    command: str
    parameters: dict = field(default_factory=dict)  # name -> {"type", "default"}

    @property
    def required(self) -> dict:
        """Parameters without a default, with a sample value of their type."""
        return {n: SAMPLE_VALUES[p["type"]] for n, p in self.parameters.items() if p["default"] is None}


def entry_points_from_mlproject(path: Path) -> dict[str, InitEntryPoint]:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise UserError(f"{path}: cannot read it as an MLproject file: {str(exc).splitlines()[0]}") from None
    entries = (data or {}).get("entry_points") if isinstance(data, dict) else None
    if not isinstance(entries, dict) or not entries:
        raise UserError(f"{path}: no entry_points")
    result = {}
    for name, entry in entries.items():
        if not isinstance(entry, dict) or "command" not in entry:
            raise UserError(f"{path}: entry point {name!r} has no command")
        parameters = {}
        for parameter, spec in (entry.get("parameters") or {}).items():
            spec = spec if isinstance(spec, dict) else {"type": spec}
            # as mantik reads the MLproject: types MLflow does not check are strings
            kind = MLFLOW_TYPES.get(str(spec.get("type", "string")), "string")
            parameters[parameter] = {"type": kind, "default": spec.get("default")}
        result[_name(name)] = InitEntryPoint(join_lines(str(entry["command"])), parameters)
    return result


# Which backend reads a Mantik compute-backend config, by the connection it names
BACKEND_OF_CONNECTION = {"UnicoreApiUrl": "unicore", "SSH": "slurm", "Firecrest": "firecrest"}


def backend_type_of(path: Path) -> str:
    """The backend type that reads the Mantik config at ``path``: ``unicore`` (UnicoreApiUrl), ``slurm``
    (SSH) or ``firecrest`` (Firecrest). Raises :class:`UserError` for a config naming none or several."""
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise UserError(
            f"{path}: cannot read it as a Mantik compute-backend config: {str(exc).splitlines()[0]}"
        ) from None
    found = [key for key in ("UnicoreApiUrl", "SSH", "Firecrest") if isinstance(data, dict) and key in data]
    if len(found) != 1:
        raise UserError(f"{path}: a Mantik compute-backend config names one of UnicoreApiUrl, SSH or Firecrest")
    return BACKEND_OF_CONNECTION[found[0]]


def _name(text: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "-", str(text)).strip("-.") or "project"
    return cleaned if cleaned[0].isalnum() else "p" + cleaned


def _inside(directory: Path, path: Path | None, option: str) -> str | None:
    """``path`` relative to the project, which must hold it: mantik.yaml refers to it from there."""
    if path is None:
        return None
    try:
        return Path(path).resolve().relative_to(directory.resolve()).as_posix()
    except ValueError:
        raise UserError(f"{option} {path}: the file must be inside the project ({directory})") from None


def init(
    directory: Path,
    *,
    mlproject: Path | None = None,
    backend_config: Path | None = None,
    ci: str | None = None,
    install: str | None = None,
    force: bool = False,
    default_branch: str = "main",
) -> list[Path]:
    directory = Path(directory)
    _require_git(directory)
    mlproject_file = _inside(directory, mlproject, "--from-mlproject")
    config_file = _inside(directory, backend_config, "--backend-config")
    if mlproject is not None:
        entry_points = entry_points_from_mlproject(mlproject)
    else:
        entry_points = {
            "train": InitEntryPoint("python train.py --lr {lr}", {"lr": {"type": "float", "default": None}})
        }
    files = {
        SPEC_FILE: render(
            packaged("init-mantik.yaml.j2"),
            {
                "schema_url": SCHEMA_ID,
                "project": _name(directory.resolve().name),
                "entry_points": entry_points,
                "mlproject": mlproject_file or "",
                "backend_config": config_file or "",
                "backend_type": backend_type_of(backend_config) if backend_config is not None else "",
            },
        ),
    }
    if ci is not None:
        from .install_source import ci_install_command

        files[CI_FILES[ci]] = render(
            packaged(f"ci-{ci}.yml.j2"), {"install": ci_install_command(install), **branch_filters(default_branch)}
        )
    _check(files, directory)
    existing = [name for name in files if (directory / name).exists()]
    if existing and not force:
        verb = "exists" if len(existing) == 1 else "exist"
        raise UserError(f"{' and '.join(existing)} already {verb}; pass --force to overwrite")
    written = []
    for name, text in files.items():
        target = directory / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        written.append(target)
    if _ignore_state_dir(directory):
        written.append(directory / ".gitignore")
    return written


def _require_git(directory: Path) -> None:
    """mantik runs only committed code: a project outside git is told at once, before anything is written."""
    import subprocess

    try:
        found = subprocess.run(
            ["git", "-C", str(directory), "rev-parse", "--git-dir"], capture_output=True, text=True, check=False
        )
    except OSError:
        raise UserError("git is not installed: mantik runs only committed code, so it needs git") from None
    if found.returncode == 0:
        return
    where = directory.resolve()
    if not any((parent / ".git").exists() for parent in (where, *where.parents)):
        raise UserError(f"{where} is not inside a git repository: run `git init` first (only committed code runs)")
    message = (found.stderr.strip().splitlines() or ["no answer"])[-1]  # e.g. git's dubious-ownership refusal
    raise UserError(f"git cannot use {where}: {message}")


# Characters GitHub's branch filters read as a pattern; a backslash makes each literal ("Filter pattern cheat
# sheet", Workflow syntax for GitHub Actions)
GITHUB_PATTERN_CHARACTERS = re.compile(r"([\\*?+\[\]!])")


def branch_filters(branch: str) -> dict[str, str]:
    """How each CI service's file names ``branch`` exactly: a GitHub branch filter matching it alone, and a
    GitLab rule expression comparing ``$CI_COMMIT_BRANCH`` with it. UserError for a name git refuses
    (``git check-ref-format --branch``) or one GitLab's expressions cannot hold (a string literal there is
    quoted with " or ' and has no escapes: lib/gitlab/ci/pipeline/expression/lexeme/string.rb)."""
    import subprocess

    checked = subprocess.run(["git", "check-ref-format", "--branch", branch], capture_output=True, text=True)
    if checked.returncode != 0 or branch.startswith("-"):
        raise UserError(f"--default-branch {branch!r} is not a branch name git accepts")
    quote = next((q for q in '"\'' if q not in branch), None)
    if quote is None:
        raise UserError(f"--default-branch {branch!r}: a GitLab rule cannot name a branch holding both ' and \"")
    return {
        "github_branch": GITHUB_PATTERN_CHARACTERS.sub(r"\\\1", branch),
        "gitlab_rule": f"$CI_COMMIT_BRANCH == {quote}{branch}{quote}",
    }


def _check(files: dict[str, str], directory: Path) -> None:
    """Nothing is written that would not validate (with the files it reads) or parse."""
    try:
        validate_document(load_marked(files[SPEC_FILE], SPEC_FILE), directory)
    except SpecError as exc:  # an MLproject mantik cannot express as is
        raise UserError(f"the generated {SPEC_FILE} would not validate: {exc.problems[0]}") from None
    for text in files.values():
        yaml.safe_load(text)  # a template bug, not a user error: let it raise


def _ignore_state_dir(directory: Path) -> bool:
    ignore = directory / ".gitignore"
    lines = ignore.read_text().splitlines() if ignore.exists() else []
    if any(line.strip() in (".mantik", ".mantik/", "/.mantik", "/.mantik/") for line in lines):
        return False
    prefix = "" if not lines or lines[-1] == "" else "\n"
    with open(ignore, "a") as handle:
        handle.write(f"{prefix}# mantik's local state (sqlite store, job directories)\n.mantik/\n")
    return True
