"""``mantik init``: a commented mantik.yaml (reading an MLproject and a Mantik compute-backend config
when there are some) and CI files.

Everything is rendered from ``templates/`` and checked before it is written:
the spec must validate and CI files must parse. Existing files are kept
unless ``force``; in a project that has a mantik.yaml, ``--ci`` adds the CI files and reads the spec as it
is (its environments, its backends) without writing it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..errors import UserError
from ..spec.experiments import join_lines
from ..spec.load import SPEC_FILE, validate_document
from ..spec.model import Spec
from ..spec.schema import SCHEMA_ID
from ..spec.yamlload import SpecError, load_marked
from ..templating import packaged, quote_path, render

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
class Initialized:
    """What ``init`` did: the files it wrote, and what the user should know (one line each)."""

    written: list[Path]
    notes: list[str] = field(default_factory=list)


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
    default_branch: str | None = None,
) -> Initialized:
    """Write mantik.yaml (unless ``ci`` is given and the project has one) and the CI files of ``ci``
    (``github`` or ``gitlab``). ``default_branch``: the branch whose merges apply; None reads it from the
    repository (:func:`repository_default_branch`). Raises :class:`UserError` before writing anything when
    a file to write exists (naming it) and ``force`` is not given, or when a value cannot be written."""
    directory = Path(directory)
    _require_git(directory)
    notes: list[str] = []
    files: dict[str, str] = {}
    keep_spec = ci is not None and (directory / SPEC_FILE).exists() and mlproject is None and backend_config is None
    if keep_spec:
        from ..spec.load import load_spec

        spec = load_spec(directory).spec
        notes.append(f"kept {directory / SPEC_FILE} as it is: the CI files are written for it")
    else:
        files[SPEC_FILE] = _initial_spec(directory, mlproject, backend_config)
        spec = _check_spec(files[SPEC_FILE], directory)
    if ci is not None:
        from .install_source import ci_install_command

        if default_branch is None:
            default_branch, source = repository_default_branch(directory)
            notes.append(f"apply runs on merges to {default_branch!r} (from {source}; --default-branch names another)")
        steps, setup_notes = environment_setup(spec)
        notes += setup_notes + local_backend_notes(spec)
        literal = github_literal if ci == "github" else str
        files[CI_FILES[ci]] = render(
            packaged(f"ci-{ci}.yml.j2"),
            {
                "install": literal(ci_install_command(install)),
                "environment_setup": [literal(line) for line in steps],
                **branch_filters(default_branch),
            },
        )
    for text in files.values():
        yaml.safe_load(text)  # a template bug, not a user error: let it raise
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
    return Initialized(written, notes)


def _initial_spec(directory: Path, mlproject: Path | None, backend_config: Path | None) -> str:
    mlproject_file = _inside(directory, mlproject, "--from-mlproject")
    config_file = _inside(directory, backend_config, "--backend-config")
    if mlproject is not None:
        entry_points = entry_points_from_mlproject(mlproject)
    else:
        entry_points = {
            "train": InitEntryPoint("python train.py --lr {lr}", {"lr": {"type": "float", "default": None}})
        }
    return render(
        packaged("init-mantik.yaml.j2"),
        {
            "schema_url": SCHEMA_ID,
            "project": _name(directory.resolve().name),
            "entry_points": entry_points,
            "mlproject": mlproject_file or "",
            "backend_config": config_file or "",
            "backend_type": backend_type_of(backend_config) if backend_config is not None else "",
        },
    )


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


def github_literal(text: str) -> str:
    """``text`` as GitHub Actions reads it literally in a workflow value: ``${{`` opens an expression there
    and has no escape, so it is written as an expression whose value is ``${{`` ("Expressions", GitHub
    Actions documentation)."""
    return text.replace("${{", "${{ '${{' }}")


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


def _check_spec(text: str, directory: Path) -> Spec:
    """Nothing is written that would not validate (with the files it reads)."""
    try:
        return validate_document(load_marked(text, SPEC_FILE), directory)
    except SpecError as exc:  # an MLproject mantik cannot express as is
        raise UserError(f"the generated {SPEC_FILE} would not validate: {exc.problems[0]}") from None


def repository_default_branch(directory: Path) -> tuple[str, str]:
    """(branch, where it was read) for the branch whose merges apply: the remote's default branch
    (``origin/HEAD``, as ``git clone`` or ``git remote set-head origin --auto`` set it), else the branch
    checked out, else ``init.defaultBranch``, else git's own default (``master``)."""
    import subprocess

    def git(*arguments: str) -> str:
        done = subprocess.run(["git", "-C", str(directory), *arguments], capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else ""

    remote = git("symbolic-ref", "--quiet", "refs/remotes/origin/HEAD")
    if remote.startswith("refs/remotes/origin/"):
        return remote.removeprefix("refs/remotes/origin/"), "origin/HEAD"
    current = git("symbolic-ref", "--quiet", "HEAD")
    if current.startswith("refs/heads/"):
        return current.removeprefix("refs/heads/"), "the branch checked out"
    configured = git("config", "init.defaultBranch")
    if configured:
        return configured, "git config init.defaultBranch"
    return "master", "git's default branch name"


# Requirement files pip installs with -r; other lock files (conda's environment.yml, poetry.lock, uv.lock...)
# need their own tool, which the CI job is not given
PIP_REQUIREMENTS = re.compile(r"\.(txt|in)$")


def environment_setup(spec: Spec) -> tuple[list[str], list[str]]:
    """The shell lines that prepare, on the CI runner, the environments of the runs that run there (on a
    backend whose jobs are processes of that machine, ``PROCESSES_OF_THIS_MACHINE``): the ``venv`` created
    and the ``requirements`` file installed with pip, into the venv when there is one. Returns (lines,
    notes); a note names an environment whose requirements pip cannot read or whose image the runner lacks.
    Runs on a cluster find their environment there, so theirs are not installed."""
    import shlex

    from ..spec.experiments import default_backend, resolve_extends

    experiments, _ = resolve_extends(spec)
    used: list[str] = []
    for experiment in experiments.values():
        backend = experiment.backend or default_backend(spec)
        config = spec.backends.get(backend or "")
        if config is None or not config.PROCESSES_OF_THIS_MACHINE:
            continue
        environment = experiment.environment or config.environment
        if environment and environment in spec.environments and environment not in used:
            used.append(environment)
    lines: list[str] = []
    notes: list[str] = []
    for name in used:
        declared = spec.environments[name]
        pip = "pip"
        if declared.venv:
            venv = declared.venv.rstrip("/")
            lines.append(f"python -m venv {quote_path(venv)}")
            pip = quote_path(venv + "/bin/python") + " -m pip"  # not bin/pip: a shebang cannot hold a space
        if declared.requirements and PIP_REQUIREMENTS.search(declared.requirements):
            lines.append(f"{pip} install -r {shlex.quote(declared.requirements)}")
        elif declared.requirements:
            notes.append(
                f"environments.{name}: the CI job does not install {declared.requirements} (pip reads requirement "
                "files only): add the step that installs it before the apply step"
            )
        if declared.apptainer:
            notes.append(f"environments.{name}: the CI runner needs apptainer to run its image")
    return lines, notes


def local_backend_notes(spec: Spec) -> list[str]:
    """A warning when every backend's jobs are processes of the machine mantik runs on: in CI, the runner."""
    if spec.backends and all(config.PROCESSES_OF_THIS_MACHINE for config in spec.backends.values()):
        names = ", ".join(spec.backends)
        return [
            f"Warning: backend {names} runs jobs as processes of the CI runner, which ends them when the apply "
            "job ends (and forgets a sqlite store): add a cluster backend for CI, or run mantik on a machine "
            "that stays"
        ]
    return []


def _ignore_state_dir(directory: Path) -> bool:
    ignore = directory / ".gitignore"
    lines = ignore.read_text().splitlines() if ignore.exists() else []
    if any(line.strip() in (".mantik", ".mantik/", "/.mantik", "/.mantik/") for line in lines):
        return False
    prefix = "" if not lines or lines[-1] == "" else "\n"
    with open(ignore, "a") as handle:
        handle.write(f"{prefix}# mantik's local state (sqlite store, job directories)\n.mantik/\n")
    return True
