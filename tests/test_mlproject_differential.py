"""MLproject entry points run with the argv `mlflow run` builds: MLflow's own project loader is the oracle.

For every project of ``tests/corpus/mlproject`` and every parameter set of its ``cases.yaml``, the command
MLflow builds (``load_project`` + ``EntryPoint.compute_command``) is split into arguments and compared,
argument by argument, with (1) the command mantik's command builder gives the backends and (2) the
``sys.argv`` the job really receives when ``mantik apply`` runs it on the local backend. The MLflow params
of each run are compared with the ones ``mlflow run`` logs.

Oracle conventions (what "the argv MLflow builds" means where MLflow's command is not one shell line):
- MLflow's command is split with ``shlex.split``, as MLflow's own tests read it; a line break outside quotes
  is a space there. (``mlflow run`` itself hands the string to ``bash -c``, which would run each line of a
  folded block as its own command: the break that Mantik joined and mantik joins.)
- A backslash-newline is a line continuation and removed, as every shell does (``shlex.split`` alone would
  make it a lone ``\\n`` argument).
- ``path`` parameters: MLflow makes them absolute on the submitting machine; the job gets them relative to
  its checkout. Arguments are compared after removing the project directory prefix from MLflow's.
- Whether a parameter set runs at all is MLflow's answer too: ``cases.yaml`` may hold sets MLflow refuses
  (a missing value, a uri without a scheme, a path that does not exist); mantik must refuse each at a line.
- ``$SHELL`` (which MLflow writes into the command of a ``.sh`` script) is ``bash`` while the test runs.

MLflow's own fixture ``tests/resources/example_project`` is one of the corpus projects, and the cases of its
``tests/projects/test_project_spec.py`` are in ``tests/corpus/mlproject-loader.yaml``.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import tempfile
import textwrap
from pathlib import Path

import pytest
import yaml

from mantik_spec.spec.experiments import expand, resolve_extends
from mantik_spec.spec.includes import mlproject_notes
from mantik_spec.spec.load import load_spec
from mantik_spec.spec.yamlload import SpecError

from .conftest import Project, git

CORPUS = Path(__file__).parent / "corpus" / "mlproject"
PROJECTS = sorted(p.name for p in CORPUS.iterdir() if (p / "MLproject").is_file())
LOADER_CASES = yaml.safe_load((CORPUS.parent / "mlproject-loader.yaml").read_text())
DUMP = textwrap.dedent(
    """
    import json, os, sys
    with open(os.path.join({directory!r}, os.environ["MLFLOW_RUN_ID"] + ".json"), "w") as f:
        json.dump(sys.argv, f)
    """
)
DUMP_SH = 'exec python -c "$(cat <<\'EOF\'\n' + DUMP.replace("sys.argv", "sys.argv[1:]") + 'EOF\n)" "$0" "$@"\n'
INTERPRETERS = ("python", "bash")  # what runs a script of the corpus (bash: $SHELL while the test runs)
SHELL_OPERATORS = set("|&;<>()")


@pytest.fixture(autouse=True)
def _shell(monkeypatch):
    monkeypatch.setenv("SHELL", "bash")  # MLflow writes $SHELL into the command of a .sh script


def all_cases(name: str) -> list[tuple[str, str, dict]]:
    """(experiment name, entry point, parameters) for each parameter set of a corpus project."""
    declared = yaml.safe_load((CORPUS / name / "cases.yaml").read_text())
    return [
        (f"c-{entry.replace('_', '-')}-{index}", entry, parameters)
        for entry, sets in declared.items()
        for index, parameters in enumerate(sets)
    ]


def mlflow_refusal(directory: Path, entry: str, parameters: dict) -> str | None:
    """MLflow's message when `mlflow run -e ENTRY -P ...` refuses the parameter set, else None."""
    from mlflow.exceptions import MlflowException

    with tempfile.TemporaryDirectory() as storage:  # where MLflow would download a path given as a URI (none is)
        try:
            mlflow_command(directory, entry, parameters, Path(storage))
        except MlflowException as exc:
            return str(exc)
    return None


def cases(name: str) -> list[tuple[str, str, dict]]:
    """The parameter sets of a corpus project MLflow runs."""
    return [case for case in all_cases(name) if mlflow_refusal(CORPUS / name, case[1], case[2]) is None]


def refused_cases(name: str) -> list[tuple[str, str, dict, str]]:
    """The parameter sets of a corpus project MLflow refuses, with MLflow's message."""
    found = [(*case, mlflow_refusal(CORPUS / name, case[1], case[2])) for case in all_cases(name)]
    return [case for case in found if case[3] is not None]


def as_typed_on_the_command_line(parameters: dict) -> dict:
    """What `mlflow run -P name=TEXT` gets for the values mantik.yaml holds: a float as mantik.yaml writes
    it (yaml.safe_dump writes 1e-05 as 1.0e-05, and the job gets the number as written)."""
    return {
        name: yaml.safe_dump(value).splitlines()[0] if isinstance(value, float) else value
        for name, value in parameters.items()
    }


def mlflow_command(directory: Path, entry: str, parameters: dict, storage: Path) -> str:
    from mlflow.projects._project_spec import load_project

    parameters = as_typed_on_the_command_line(parameters)
    cwd = os.getcwd()
    os.chdir(directory)  # MLflow resolves `path` parameters against the current directory
    try:
        return load_project(str(directory)).get_entry_point(entry).compute_command(parameters, str(storage))
    finally:
        os.chdir(cwd)


def mlflow_argv(directory: Path, entry: str, parameters: dict, storage: Path) -> list[str]:
    command = mlflow_command(directory, entry, parameters, storage)
    return [arg.replace(f"{directory}/", "") for arg in shlex.split(command.replace("\\\n", ""))]


def mlflow_params(directory: Path, entry: str, parameters: dict) -> dict[str, str]:
    """The params ``mlflow run`` logs (``compute_parameters`` without a storage dir, the declared ones and
    the ones appended), without MLflow's shell quoting of them: mantik logs values, not shell words."""
    from mlflow.projects._project_spec import load_project

    point = load_project(str(directory)).get_entry_point(entry)
    final, extra = point.compute_parameters(as_typed_on_the_command_line(parameters), None)
    return {_unquoted(name): _unquoted(value) for name, value in {**final, **extra}.items()}


def _unquoted(word: str) -> str:
    [value] = shlex.split(word)
    return value


def script_argv(argv: list[str]) -> list[str]:
    """What a script sees as its argv of ``python [options] script args`` or ``bash script args``."""
    assert argv[0] in INTERPRETERS, argv
    rest = argv[1:]
    while rest and rest[0].startswith("-"):  # the interpreter's own options (-u)
        rest = rest[1:]
    return rest


def write_corpus_project(name: str, target: Path, dump_dir: Path, experiments: list | None = None) -> None:
    """The corpus project ``name`` in ``target`` with a mantik.yaml of ``experiments`` (default: every
    parameter set MLflow runs) and, for each script a command starts, one that records its argv."""
    shutil.copytree(CORPUS / name, target, dirs_exist_ok=True)
    (target / "cases.yaml").unlink()
    (target / "README.md").unlink(missing_ok=True)
    chosen = cases(name) if experiments is None else experiments
    spec = {
        "project": name,
        "mlproject": "MLproject",
        "backends": {"local": {"type": "local", "max_parallel": 4}},
        "experiments": {
            experiment: {"entry_point": entry, **({"parameters": parameters} if parameters else {})}
            for experiment, entry, parameters in chosen
        },
    }
    (target / "mantik.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    for _, entry, parameters in cases(name):
        argv = mlflow_argv(target, entry, parameters, target)
        if argv[0] in INTERPRETERS:
            dump = DUMP if argv[0] == "python" else DUMP_SH
            (target / script_argv(argv)[0]).write_text(dump.format(directory=str(dump_dir)))


@pytest.mark.parametrize("name", PROJECTS)
def test_command_builder_matches_mlflow(name, tmp_path):
    """The command mantik gives every backend splits into MLflow's argv, argument by argument."""
    project = tmp_path / name
    write_corpus_project(name, project, tmp_path)
    loaded = load_spec(project)
    experiments, _ = resolve_extends(loaded.spec)
    points = {point.experiment: point for point in expand(loaded.spec, experiments)}
    for experiment, entry, parameters in cases(name):
        command = points[experiment].command({})
        theirs = mlflow_argv(project, entry, parameters, tmp_path)
        if "$" not in command:
            assert shlex.split(command) == theirs, (name, experiment)
        words = list(shlex.shlex(command, posix=True, punctuation_chars=True))
        if not any(set(word) <= SHELL_OPERATORS for word in words):
            # and bash runs the argv MLflow builds (mantik's command is what the runner's shell gets)
            program = theirs[0]
            printed = subprocess.run(
                ["bash", "-c", f"{program}() {{ printf '%s\\0' {program} \"$@\"; }}; {command}"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            assert printed.split("\0")[:-1] == theirs, (name, experiment)


@pytest.mark.parametrize("name", [name for name in PROJECTS if refused_cases(name)])
def test_what_mlflow_refuses_is_refused_at_a_line(name, tmp_path):
    """A parameter set `mlflow run` refuses (a missing value, a uri without a scheme, a path or an entry
    point that does not exist) is refused by validate, with a line in mantik.yaml."""
    for experiment, entry, parameters, theirs in refused_cases(name):
        project = tmp_path / experiment
        write_corpus_project(name, project, tmp_path, [(experiment, entry, parameters)])
        with pytest.raises(SpecError) as caught:
            load_spec(project)
        found = [str(problem) for problem in caught.value.problems]
        assert any(
            p.startswith("mantik.yaml:") and f"experiments.{experiment}" in p and "\n" not in p for p in found
        ), (experiment, theirs, found)


@pytest.mark.parametrize("case", LOADER_CASES, ids=lambda case: case["name"])
def test_the_mlproject_is_read_or_refused_as_mlflows_loader_does(case, tmp_path):
    """MLflow's load_project reads or refuses each MLproject; mantik does the same, at the line."""
    from mlflow.exceptions import MlflowException
    from mlflow.projects._project_spec import load_project

    for file, text in case["files"].items():
        (tmp_path / file).write_text(text)
    mlproject = next((file for file in case["files"] if file.lower() == "mlproject"), None)
    (tmp_path / "mantik.yaml").write_text("project: p\n" + (f"mlproject: {mlproject}\n" if mlproject else ""))
    try:
        load_project(str(tmp_path))
        theirs = None
    except MlflowException as exc:
        theirs = str(exc)
    try:
        load_spec(tmp_path)
        ours: list[str] = []
    except SpecError as exc:
        ours = [str(problem) for problem in exc.problems]
    if "deliberate" in case:
        assert theirs is None, theirs
    else:
        assert (theirs is None) == (not ours), (theirs, ours)
    assert ours == [] if "at" not in case else any(p.startswith(case["at"]) for p in ours), (theirs, ours)


@pytest.mark.e2e
@pytest.mark.parametrize("name", PROJECTS)
def test_the_job_receives_mlflows_argv(name, tmp_path):
    """Applied on the local backend, each job's script gets MLflow's argv and the run MLflow's params."""
    dumps = tmp_path / "argv"
    dumps.mkdir()
    path = tmp_path / "repo"
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    write_corpus_project(name, path, dumps)
    project = Project(path)
    project.commit("adopt mantik")
    # validate says what differs from `mlflow run`, at the MLproject's lines, and plan warns the same
    notes = mlproject_notes(load_spec(path).spec, path)
    assert project.mantik("validate").stderr.splitlines() == [f"Note: {note}" for note in notes]
    assert project.plan_json()["warnings"][: len(notes)] == notes
    try:
        project.mantik("apply", "--auto-approve", "--wait", timeout=300)
    finally:
        _stop(path)
    expected = {experiment: (entry, parameters) for experiment, entry, parameters in cases(name)}
    runs = project.runs()
    assert sorted(r.info.run_name.split("[")[0] for r in runs) == sorted(expected)
    for run in runs:
        entry, parameters = expected[run.info.run_name.split("[")[0]]
        assert run.info.status == "FINISHED", (name, run.info.run_name)
        oracle = mlflow_argv(path, entry, parameters, tmp_path)
        if oracle[0] in INTERPRETERS:  # a script of the project, which recorded its argv (echo and cat did not)
            received = json.loads((dumps / f"{run.info.run_id}.json").read_text())
            assert received == script_argv(oracle), (name, run.info.run_name)
        assert run.data.params == mlflow_params(path, entry, parameters), (name, run.info.run_name)
        # the declared types, as written, are visible in explain
        explained = json.loads(project.mantik("explain", run.info.run_name).stdout)
        entries = yaml.safe_load((path / "MLproject").read_text())["entry_points"]
        declared = entries.get(entry, {}).get("parameters") or {}  # a script declares none
        written = {k: v if isinstance(v, str) else v.get("type", "string") for k, v in declared.items()}
        assert explained["parameter_types"] == dict(sorted(written.items()))


def _stop(path: Path) -> None:
    from .conftest import _stop_jobs

    _stop_jobs(path)


def test_corpus_covers_every_kind():
    """The corpus keeps the kinds the differential test is about."""
    texts = {name: (CORPUS / name / "MLproject").read_text() for name in PROJECTS}
    every = "\n".join(texts.values())
    for kind in ("type: str\n", "list[int]", "list[str]", "type: flaot", "1e-1", "1e5", "command: >", "\\\n"):
        assert kind in every, kind
    for kind in ("type: bool", "seed", "type: path", "type: uri", '"{msg}"', "'{tag}'"):
        assert kind in every, kind
    for key in ("conda_env", "python_env", "docker_env"):
        assert any(text.startswith(key) or f"\n{key}:" in text for text in texts.values()), key


@pytest.mark.parametrize(
    "name, expected",
    [
        ("conda-multistep", ["MLproject:3:1: conda_env: not used"]),
        (
            "docker-env",
            [
                "MLproject:3:1: docker_env: not used",
                "MLproject:5:3: docker_env.volumes: not mounted on any backend",
                "MLproject:6:3: docker_env.environment: not set on any backend",
            ],
        ),
        ("wine-elasticnet", ["MLproject:3:1: python_env: not used"]),
        (
            "loose-types",
            [
                "MLproject:9:15: entry_points.main.parameters.layers.type: type 'list[int]' is not one MLflow checks",
                "MLproject:12:15: entry_points.main.parameters.tags.type: type 'list[str]' is not one MLflow checks",
                "MLproject:18:15: entry_points.main.parameters.ratio.type: type 'flaot' is not one MLflow checks",
            ],
        ),
    ],
)
def test_what_differs_from_mlflow_run_is_said(name, expected, tmp_path):
    project = tmp_path / name
    write_corpus_project(name, project, tmp_path)
    notes = mlproject_notes(load_spec(project).spec, project)
    assert len(notes) == len(expected), notes
    for note, start in zip(notes, expected, strict=True):
        assert note.startswith(start), notes
