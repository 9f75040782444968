"""Files users already have, read unchanged: MLflow MLproject files and Mantik compute-backend configs.

Every problem in them is reported at their own file:line, in their own key names.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import textwrap
from pathlib import Path

import pytest

from mantik_spec.spec.load import load_spec
from mantik_spec.spec.yamlload import SpecError

from .support.slurm import slurm_is_up
from .support.specs import FULL_MANTIK_CONFIG, JUWELS, MAELSTROM_CONFIG, slurm_spec

MLPROJECT = """\
name: demo
python_env: python_env.yaml
entry_points:
  main:
    parameters:
      alpha: {type: float, default: 0.5}
      l1_ratio: float
      data_file: {type: path, default: data.csv}
    command: >
      python train.py
      --alpha {alpha}
      --l1-ratio {l1_ratio}
      --data {data_file}
  plain:
    command: "python plain.py"
"""


def write_mlproject(path, text: str = MLPROJECT) -> None:
    """The MLproject and the files it names (MLflow refuses a missing python_env file or path value)."""
    (path / "MLproject").write_text(text)
    (path / "python_env.yaml").write_text("python: '3.11'\n")
    (path / "data.csv").write_text("x\n1\n")


def write_project(path, spec: str, **files: str):
    (path / "mantik.yaml").write_text(textwrap.dedent(spec))
    for name, text in files.items():
        (path / name.replace("__", ".").replace("_DASH_", "-")).write_text(text)


def problems_of(path) -> list[str]:
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    return [str(p) for p in caught.value.problems]


UNICORE_SPEC = """
    project: demo
    mlproject: MLproject
    backends:
      juwels:
        type: unicore
        config: compute-backend-config.yaml
    experiments:
      sweep:
        entry_point: main
        parameters: {l1_ratio: [0.1, 0.9]}
"""


def mantik_project(path, config: str = FULL_MANTIK_CONFIG, mlproject: str = MLPROJECT):
    """A project with a Mantik compute-backend config and an MLproject, read by UNICORE_SPEC."""
    (path / "compute-backend-config.yaml").write_text(config)
    write_mlproject(path, mlproject)
    write_project(path, UNICORE_SPEC)


def test_full_mantik_config_is_read_unchanged(tmp_path):
    mantik_project(tmp_path)
    spec = load_spec(tmp_path).spec
    backend = spec.backends["juwels"]
    assert backend.url == JUWELS
    assert backend.resources.model_dump(exclude_none=True) == {
        "queue": "booster",
        "runtime": "12h",
        "nodes": 2,
        "total_cpus": 96,
        "cpus_per_node": 48,
        "gpus_per_node": 4,
        "memory": "64G",  # the original client crashed on this
        "reservation": "r1",
        "node_constraints": "gpu",
        "qos": "normal",
    }
    assert backend.login_precommand == ["echo pre login", "echo again"]
    assert backend.login_postcommand == ["echo post login"]
    assert backend.exclude == ["*.ckpt", "data/"]
    # the config's Environment is the backend's default environment, named after it
    assert backend.environment == "juwels"
    environment = spec.environments["juwels"]
    assert environment.apptainer == "image.sif" and environment.image_is_remote is False
    assert environment.apptainer_options == ["--nv", "-B /data:/data"]
    assert environment.variables == {"OMP_NUM_THREADS": "8", "MODE": "fast"}
    assert environment.modules == ["Stages/2023", "CUDA"]
    assert environment.pre_run == ["echo pre compute"] and environment.post_run == ["echo post compute"]


def test_mlproject_entry_points_are_read(tmp_path):
    mantik_project(tmp_path)
    spec = load_spec(tmp_path).spec
    main = spec.entry_points["main"]
    assert main.command.split() == "python train.py --alpha {alpha} --l1-ratio {l1_ratio} --data {data_file}".split()
    assert {name: (p.type, p.default) for name, p in main.parameters.items()} == {
        "alpha": ("float", 0.5),
        "l1_ratio": ("float", None),
        "data_file": ("path", "data.csv"),
    }
    assert spec.entry_points["plain"].command == "python plain.py"


def test_mantik_yaml_overrides_the_config(tmp_path):
    (tmp_path / "compute-backend-config.yaml").write_text(FULL_MANTIK_CONFIG)
    write_mlproject(tmp_path)
    spec = UNICORE_SPEC.replace(
        "config: compute-backend-config.yaml",
        "config: compute-backend-config.yaml\n        resources: {queue: develbooster}\n        project: deepacf",
    )
    write_project(tmp_path, spec)
    backend = load_spec(tmp_path).spec.backends["juwels"]
    assert backend.resources.queue == "develbooster"
    assert backend.resources.nodes == 2  # the rest still comes from the config
    assert backend.project == "deepacf"


@pytest.mark.parametrize(
    "change, expected",
    [
        (
            ("GPUsPerNode: 4", "GPUsPerNod: 4"),
            "compute-backend-config.yaml:8:3: Resources.GPUsPerNod: unknown Resources key 'GPUsPerNod'; "
            "did you mean 'GPUsPerNode'?",
        ),
        (
            ("UnicoreApiUrl:", "UnicoreApiUrlFalseKey:"),
            "compute-backend-config.yaml:1:1: UnicoreApiUrlFalseKey: unknown compute-backend config key "
            "'UnicoreApiUrlFalseKey'; did you mean 'UnicoreApiUrl'?",
        ),
        (("  Queue: booster\n", ""), "compute-backend-config.yaml:2:1: Resources: Queue is required"),
        (
            ("MemoryPerNode: 64G", "MemoryPerNode: 64 GB"),
            "compute-backend-config.yaml:9:18: Resources.MemoryPerNode: '64 GB' is not a size",
        ),
        (
            ("Runtime: 12h", "Runtime: 12 hours"),
            "compute-backend-config.yaml:4:12: Resources.Runtime: '12 hours' is not a runtime",
        ),
        (
            ("Type: local", "Type: remote"),
            "compute-backend-config.yaml:15:11: Environment.Apptainer.Path: a remote image needs an absolute path",
        ),
        (
            ("Type: local", "Type: cloud"),
            "compute-backend-config.yaml:16:11: Environment.Apptainer.Type: Type is 'local'",
        ),
        (
            ("  Modules:", "  Python: /p/venv\n  Modules:"),
            "compute-backend-config.yaml:13:1: Environment: set either Apptainer or Python, not both",
        ),
        (
            ("Nodes: 2", "Nodes: two"),
            "compute-backend-config.yaml:5:10: Resources.Nodes: input should be a valid integer",
        ),
    ],
)
def test_mantik_config_problems_point_into_the_config(tmp_path, change, expected):
    old, new = change
    assert old in FULL_MANTIK_CONFIG
    mantik_project(tmp_path, config=FULL_MANTIK_CONFIG.replace(old, new))
    problems = problems_of(tmp_path)
    assert any(p.startswith(expected) for p in problems), problems


def test_json_config_and_python_path_form(tmp_path):
    config = {
        "UnicoreApiUrl": "https://site.example/JURECA/rest/core",
        "Resources": {"Queue": "dc-gpu", "MemoryPerNode": "64G"},
        "Environment": {"Python": {"Path": "/p/project/venv"}, "Variables": {"A": 1}},
    }
    (tmp_path / "backend.json").write_text(json.dumps(config, indent=2))
    write_mlproject(tmp_path)
    write_project(tmp_path, UNICORE_SPEC.replace("compute-backend-config.yaml", "backend.json"))
    spec = load_spec(tmp_path).spec
    assert spec.environments["juwels"].venv == "/p/project/venv"
    assert spec.environments["juwels"].variables == {"A": "1"}

    config["Resources"]["Queu"] = config["Resources"].pop("Queue")
    (tmp_path / "backend.json").write_text(json.dumps(config, indent=2))
    problems = problems_of(tmp_path)
    assert any(p.startswith("backend.json:5:5: Resources.Queu: unknown Resources key 'Queu'") for p in problems), (
        problems
    )


@pytest.mark.parametrize(
    "connection, expected",
    [
        (
            "SSH: {Hostname: login.example, Port: 22}",
            "SSH configs describe another backend; a backend of type unicore reads UnicoreApiUrl",
        ),
        ("Firecrest: {ApiUrl: x}", "Firecrest configs describe another backend"),
    ],
)
def test_config_for_another_backend_type_is_refused(tmp_path, connection, expected):
    (tmp_path / "c.yaml").write_text(f"{connection}\nResources: {{Queue: batch}}\n")
    write_mlproject(tmp_path)
    write_project(tmp_path, UNICORE_SPEC.replace("compute-backend-config.yaml", "c.yaml"))
    assert any(p.startswith("c.yaml:1:") and expected in p for p in problems_of(tmp_path))


def test_mlproject_problems_point_into_the_mlproject(tmp_path):
    mantik_project(
        tmp_path,
        mlproject=MLPROJECT.replace("--data {data_file}", "--data {data_fle}").replace("python_env:", "pyton_env:"),
    )
    problems = problems_of(tmp_path)
    assert "MLproject:2:1: pyton_env: unknown MLproject key 'pyton_env'; did you mean 'python_env'?" in problems
    assert any(
        p.startswith("MLproject:9:14: entry_points.main.command: placeholder {data_fle} has no declared parameter")
        and "did you mean 'data_file'" in p
        for p in problems
    ), problems
    # MLflow allows a parameter the command does not use (data_file, after the typo): so does mantik
    assert not any("data_file: parameter 'data_file'" in p for p in problems), problems


def test_entry_point_defined_twice_and_missing_files(tmp_path):
    write_mlproject(tmp_path)
    write_project(
        tmp_path,
        """
        project: demo
        mlproject: MLproject
        entry_points:
          main: {command: python other.py}
        backends:
          juwels: {type: unicore, config: missing.yaml}
        """,
    )
    problems = problems_of(tmp_path)
    assert "mantik.yaml:5:3: entry_points.main: entry point 'main' is also defined in MLproject" in problems
    assert "mantik.yaml:7:35: backends.juwels.config: missing.yaml not found" in problems


def test_unicore_backend_needs_a_url(tmp_path):
    write_project(tmp_path, "project: demo\nbackends:\n  hpc: {type: unicore}\n")
    assert problems_of(tmp_path) == [
        "mantik.yaml:3:3: backends.hpc: url is required (or config: a Mantik compute-backend config with UnicoreApiUrl)"
    ]


def mantik_ssh_config() -> str:
    """The full config as a Mantik SSH (Slurm) config: its connection, a Python environment, no TotalCPUs."""
    config = FULL_MANTIK_CONFIG.replace(
        f"UnicoreApiUrl: {JUWELS}", "SSH: {Hostname: login.cluster.example, Port: 2222}"
    )
    environment = config[config.index("Environment:") : config.index("Exclude:")]
    config = config.replace(environment, "Environment:\n  Python: /p/venv\n  Modules: [Stages/2024]\n")
    return config.replace("  TotalCPUs: 96\n", "")


def test_mantik_ssh_config_drives_a_slurm_backend(tmp_path):
    (tmp_path / "cluster.yaml").write_text(mantik_ssh_config())
    write_project(tmp_path, "project: demo\nbackends:\n  cluster: {type: slurm, config: cluster.yaml}\n")
    spec = load_spec(tmp_path).spec
    backend = spec.backends["cluster"]
    assert (backend.ssh.host, backend.ssh.port) == ("login.cluster.example", 2222)
    assert (backend.partition, backend.qos) == ("booster", "normal")
    assert backend.resources.model_dump(exclude_none=True) == {
        "nodes": 2,
        "cpus_per_task": 48,
        "mem": "64G",
        "gres": "gpu:4",
        "time": "12:00:00",
    }
    assert backend.sbatch_args == ["--reservation=r1", "--constraint=gpu"]
    assert backend.exclude == ["*.ckpt", "data/"]
    assert spec.environments["cluster"].venv == "/p/venv"


def test_mantik_ssh_config_problems_point_into_it(tmp_path):
    config = (
        mantik_ssh_config().replace("Hostname:", "Hostnme:").replace("  Nodes: 2\n", "  Nodes: 2\n  TotalCPUs: 96\n")
    )
    (tmp_path / "cluster.yaml").write_text(config)
    write_project(tmp_path, "project: demo\nbackends:\n  cluster: {type: slurm, config: cluster.yaml}\n")
    problems = problems_of(tmp_path)
    assert any(
        p.startswith("cluster.yaml:1:7: SSH.Hostnme: unknown SSH key 'Hostnme'; did you mean 'Hostname'?")
        for p in problems
    ), problems
    assert any(p.startswith("cluster.yaml:6:3: Resources.TotalCPUs: Slurm has no total CPU count") for p in problems), (
        problems
    )


def test_an_include_through_a_symlinked_directory_is_refused(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    write_mlproject(outside)
    project = tmp_path / "project"
    project.mkdir()
    (project / "configs").symlink_to(outside)
    write_project(project, "project: demo\nmlproject: configs/MLproject\n")
    assert problems_of(project) == [
        "mantik.yaml:2:12: mlproject: configs/MLproject leads outside the project (through a symlink)"
    ]


# -- command rendering: values reach the program as given, whatever quotes the template puts around them --

from mantik_spec.spec.experiments import QuotingError, RunPoint, expand, render_command, resolve_extends  # noqa: E402

HOSTILE_VALUES = [
    "plain",
    "two words",
    "$(touch {marker})",
    "`touch {marker}`",
    "${{HOME}}",
    "$HOME",
    'a "double" quote',
    "it's",
    "'; touch {marker}; '",
    '"; touch {marker}; "',
    "back\\slash\\",
    "trailing \\",
    "semi; colon & amp | pipe > redirect < in",
    "glob * ? [a-z] ~ # hash",
    "new\nline",
    "tab\tand !bang",
    "{{braces}}",
    "",
    "-n",
]
TEMPLATES = [
    "python show.py {msg}",
    'python show.py "{msg}"',
    "python show.py '{msg}'",
    'python show.py --opt="{msg}"',
    "python show.py --opt='prefix {msg} suffix'",
    "python show.py \"{msg}\" '{msg}' {msg}",
]


@pytest.mark.parametrize("template", TEMPLATES)
def test_every_shell_special_value_reaches_the_program_unchanged(template, tmp_path):
    """Rendered into each quoting context and run by a real shell, a value is data, never code."""
    marker = tmp_path / "ran"
    for shell in ("/bin/sh", "bash"):
        for raw in HOSTILE_VALUES:
            value = raw.format(marker=marker)
            command = render_command(template.replace("python show.py", "printf '%s\\0'"), {"msg": value})
            result = subprocess.run([shell, "-c", command], capture_output=True, text=True, check=True)
            words = shlex.split(template)[2:]
            expected = [w.replace("{msg}", value).replace("--opt=", "--opt=") for w in words]
            assert result.stdout.split("\0")[:-1] == expected, (shell, template, value)
            assert not marker.exists(), (shell, template, value)


@pytest.mark.parametrize(
    "template, context",
    [
        ('python x.py "$(echo {msg})"', "a command substitution within double quotes"),
        ('python x.py "`echo {msg}`"', "backquotes within double quotes"),
        ("python x.py $'{msg}'", "$'...' quoting"),
    ],
)
def test_a_placeholder_no_quoting_can_protect_is_refused_at_its_line(template, context, tmp_path):
    with pytest.raises(QuotingError) as caught:
        render_command(template, {"msg": "x"})
    assert caught.value.context == context
    (tmp_path / "MLproject").write_text(
        "name: x\nentry_points:\n  main:\n    parameters: {msg: string}\n    command: " + json.dumps(template) + "\n"
    )
    write_project(tmp_path, "project: demo\nmlproject: MLproject\n")
    problems = problems_of(tmp_path)
    assert any(p.startswith("MLproject:5:14: entry_points.main.command: placeholder {msg} at column") for p in problems)
    assert any(context in p for p in problems), problems


def grid_points(tmp_path, mlproject: str, experiments: str) -> list[RunPoint]:
    (tmp_path / "MLproject").write_text(textwrap.dedent(mlproject))
    write_project(tmp_path, "project: demo\nmlproject: MLproject\nexperiments:\n" + textwrap.indent(experiments, "  "))
    spec = load_spec(tmp_path).spec
    resolved, _ = resolve_extends(spec)
    return expand(spec, resolved)


SEEDED = """\
name: seeded
entry_points:
  main:
    parameters:
      seed: {type: int, default: 42}
      flag: {type: bool, default: false}
      lr: {type: float, default: 0.1}
    command: python train.py --seed {seed} --flag {flag} --lr {lr}
"""


def test_a_grid_over_the_projects_own_seed_gives_distinct_points(tmp_path):
    points = grid_points(tmp_path, SEEDED, "sweep: {entry_point: main, parameters: {seed: [1, 2]}}\n")
    ids = [p.point_id for p in points]
    assert ids == ["sweep[flag=False,lr=0.1,seed=1]", "sweep[flag=False,lr=0.1,seed=2]"]
    # and with `seeds:` the seed still names the point, once
    points = grid_points(tmp_path, SEEDED, "sweep: {entry_point: main, seeds: 2}\n")
    assert [p.point_id for p in points] == ["sweep[flag=False,lr=0.1,seed=0]", "sweep[flag=False,lr=0.1,seed=1]"]


def test_values_reach_command_and_params_as_mlflow_formats_them(tmp_path):
    """True/False for booleans, a float written 1 stays "1", text such as 1e-3 as written."""
    experiments = "sweep: {entry_point: main, parameters: {flag: [true, false], lr: [1, 1e-3]}}\n"
    points = grid_points(tmp_path, SEEDED, experiments)
    commands = sorted(shlex.split(p.command({}))[2:] for p in points)
    assert commands == [
        ["--seed", "42", "--flag", flag, "--lr", lr] for flag in ("False", "True") for lr in ("1", "1e-3")
    ]
    assert sorted(p.arguments["flag"] for p in points) == ["False", "False", "True", "True"]
    # 1 and 1.0, 1e-3 and 0.001 are one run each (the typed value names it); the command gets what was written
    assert {p.values["lr"] for p in points} == {1.0, 0.001}


def test_a_bool_given_as_0_or_1_runs_as_mlflow_passes_it(tmp_path):
    experiments = 'sweep: {entry_point: main, parameters: {flag: [0, "1", true]}}\n'
    points = grid_points(tmp_path, SEEDED, experiments)
    assert sorted(p.arguments["flag"] for p in points) == ["0", "1", "True"]
    # 1 and "1" are one run; "maybe" and YAML 1.1's yes are no bool
    experiments = 'sweep: {entry_point: main, parameters: {flag: [1, "1"]}}\n'
    with pytest.raises(SpecError, match="grid axis lists a value twice"):
        grid_points(tmp_path, SEEDED, experiments)
    for value, hint in (("maybe", "'maybe' is not a valid bool"), ("yes", "write true or false")):
        with pytest.raises(SpecError, match=hint):
            grid_points(tmp_path, SEEDED, f"sweep: {{entry_point: main, parameters: {{flag: {value}}}}}\n")


def test_parameters_the_mlproject_does_not_declare_are_appended_in_the_order_given(tmp_path):
    experiments = "sweep: {entry_point: main, parameters: {zeta: [1, 2], lr: 0.5, alpha: '1.10'}}\n"
    points = grid_points(tmp_path, SEEDED, experiments)
    assert [shlex.split(p.command({}))[8:] for p in points] == [
        ["--zeta", zeta, "--alpha", "1.10"] for zeta in ("1", "2")
    ]
    assert points[0].arguments == {"alpha": "1.10", "flag": "False", "lr": "0.5", "seed": "42", "zeta": "1"}
    assert points[0].point_id == "sweep[alpha=1.10,flag=False,lr=0.5,seed=42,zeta=1]"
    # the order is part of the command, so of the run key; a point without them keeps the MLproject's command
    assert points[0].command_template.endswith(" --zeta {zeta} --alpha {alpha}")
    [plain] = grid_points(tmp_path, SEEDED, "sweep: {entry_point: main}\n")
    assert plain.command_template == "python train.py --seed {seed} --flag {flag} --lr {lr}"


def test_a_misspelt_undeclared_parameter_is_noted_at_its_line(tmp_path):
    from mantik_spec.spec.includes import mlproject_notes

    grid_points(tmp_path, SEEDED, "sweep: {entry_point: main, parameters: {flags: true, excitement: 3}}\n")
    notes = mlproject_notes(load_spec(tmp_path).spec, tmp_path)
    assert notes == [
        "mantik.yaml:4:43: experiments.sweep.parameters.flags: entry point 'main' does not declare it: passed as "
        "--flags VALUE after the command, as mlflow run does; did you mean 'flag'?"
    ]


def test_a_native_entry_point_still_refuses_an_undeclared_parameter(tmp_path):
    write_project(
        tmp_path,
        "project: demo\nentry_points: {t: {command: 'python t.py {lr}', parameters: {lr: float}}}\n"
        "experiments: {a: {entry_point: t, parameters: {lr: 0.1, lrr: 2}}}\n",
    )
    assert problems_of(tmp_path) == [
        "mantik.yaml:3:62: experiments.a.parameters.lrr: entry point 't' has no parameter 'lrr'; did you mean 'lr'?"
    ]


SCRIPT_SPEC = """\
project: demo
experiments:
  py: {entry_point: train.py, parameters: {alpha: [0.5, 1], name: two words}}
  sh: {entry_point: scripts/run.sh}
  r: {entry_point: fit.R, parameters: {n: 3}}
"""


def test_a_script_file_runs_as_mlflow_run_e_runs_it(tmp_path, monkeypatch):
    from mlflow.projects._project_spec import load_project

    monkeypatch.setenv("SHELL", "bash")
    write_project(tmp_path, SCRIPT_SPEC)
    assert problems_of(tmp_path) == [
        "mantik.yaml:3:21: experiments.py.entry_point: train.py: no such script in the project",
        "mantik.yaml:4:21: experiments.sh.entry_point: scripts/run.sh: no such script in the project",
        "mantik.yaml:5:20: experiments.r.entry_point: fit.R: no such script in the project",
    ]
    (tmp_path / "scripts").mkdir()
    for script in ("train.py", "scripts/run.sh", "fit.R"):
        (tmp_path / script).write_text("")
    spec = load_spec(tmp_path).spec
    points = expand(spec, resolve_extends(spec)[0])
    mlflow = load_project(str(tmp_path))  # no MLproject: MLflow runs script files only
    for point in points:
        given = {k: v for k, v in point.arguments.items()}
        theirs = mlflow.get_entry_point(point.entry_point).compute_command(given, None)
        ours = subprocess.run(
            ["bash", "-c", 'printf "%s\\0" ' + point.command({}).replace("${SHELL:-bash}", "$SHELL")],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split("\0")[:-1]
        assert ours == shlex.split(theirs), point.point_id
    assert {p.command({}) for p in points if p.experiment == "sh"} == {"${SHELL:-bash} scripts/run.sh"}


def test_a_name_that_is_no_script_mlflow_runs_is_an_unknown_entry_point(tmp_path):
    (tmp_path / "train.scala").write_text("")
    write_project(tmp_path, "project: demo\nexperiments: {a: {entry_point: train.scala}}\n")
    assert problems_of(tmp_path) == [
        "mantik.yaml:2:32: experiments.a.entry_point: unknown entry point 'train.scala'; declared: none"
    ]


PATHS_AND_URIS = """\
name: paths
entry_points:
  main:
    parameters:
      data: {type: path, default: data/train.csv}
      model: {type: uri, default: "s3://bucket/model"}
    command: python load.py {data} {model}
"""


@pytest.mark.parametrize(
    "parameters, expected",
    [
        ("{}", "MLproject:5:35: entry_points.main.parameters.data.default: data/train.csv: no such file or directory"),
        ("{data: missing.csv}", "mantik.yaml:4:45: experiments.a.parameters.data: missing.csv: no such file"),
        ("{data: ../outside.csv}", "mantik.yaml:4:45: experiments.a.parameters.data: ../outside.csv leads outside"),
        ("{data: [train.csv, ignored.csv]}", "mantik.yaml:4:57: experiments.a.parameters.data[1]: ignored.csv is ignored"),
        ("{data: train.csv, model: TODO}", "mantik.yaml:4:63: experiments.a.parameters.model: 'TODO' is not a URI"),
        ("{data: train.csv, model: /data/m}", "experiments.a.parameters.model: '/data/m' is not a URI"),
    ],
)
def test_path_and_uri_values_mlflow_refuses_are_refused_at_their_line(tmp_path, parameters, expected):
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / ".gitignore").write_text("ignored.csv\n")
    (tmp_path / "train.csv").write_text("x\n")
    (tmp_path / "ignored.csv").write_text("x\n")
    (tmp_path / "MLproject").write_text(PATHS_AND_URIS)
    experiments = f"experiments:\n  a: {{entry_point: main, parameters: {parameters}}}\n"
    write_project(tmp_path, "project: demo\nmlproject: MLproject\n" + experiments)
    problems = problems_of(tmp_path)
    assert len(problems) == 1 and expected in problems[0], problems


def test_absolute_paths_and_uris_of_a_path_parameter_are_passed_as_given(tmp_path):
    (tmp_path / "MLproject").write_text(PATHS_AND_URIS)
    experiments = 'a: {entry_point: main, parameters: {data: [/p/scratch/train.csv, "~/x.csv", "s3://b/x.csv"]}}\n'
    points = grid_points(tmp_path, PATHS_AND_URIS, experiments)
    assert sorted(p.arguments["data"] for p in points) == ["/p/scratch/train.csv", "s3://b/x.csv", "~/x.csv"]


def test_init_writes_samples_that_validate_for_a_path_and_a_uri(tmp_path):
    from mantik_spec.operations.init import init

    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "MLproject").write_text(PATHS_AND_URIS.replace(", default: data/train.csv", "").replace(
        ', default: "s3://bucket/model"', ""
    ))
    init(tmp_path, mlproject=tmp_path / "MLproject")
    spec = load_spec(tmp_path).spec
    assert spec.experiments["main"].parameters == {"data": ["."], "model": ["https://example.org/TODO"]}


# -- Mantik configs: remote images, the batch shell's expansions, srun, init --------------------------------

REMOTE_IMAGE_CONFIG = """\
UnicoreApiUrl: https://zam2125.zam.kfa-juelich.de:9112/JUWELS/rest/core
Resources: {Queue: booster, Nodes: 2, GPUsPerNode: 4}
Environment:
  Apptainer:
    Path: /p/project/deepacf/$USER/img.sif
    Type: remote
    Options: ["--nv", "-B $PWD/data:/data"]
  Variables:
    RUN_DIR: /p/scratch/deepacf/$USER/runs
    STARTED: $(echo started)
    QUOTED: 'say "hi"'
    PLAIN: "8"
"""


def remote_image_project(tmp_path, config: str = REMOTE_IMAGE_CONFIG, extra: str = ""):
    (tmp_path / "compute-backend-config.yaml").write_text(config)
    write_project(
        tmp_path,
        "project: demo\nbackends:\n  juwels: {type: unicore, config: compute-backend-config.yaml}\n" + extra,
    )
    return load_spec(tmp_path).spec


def test_a_remote_image_is_identified_by_the_version_its_config_or_mantik_yaml_gives(tmp_path):
    from mantik_spec.dvcfiles import VersionError
    from mantik_spec.state.versions import FileDigests, environment_identity

    digests = FileDigests(tmp_path / ".mantik")
    spec = remote_image_project(tmp_path)
    with pytest.raises(VersionError) as caught:
        environment_identity(tmp_path, "juwels", spec.environments["juwels"], digests)
    assert "declare its digest (digest: sha256:...) or a version (image_version: ...)" in str(caught.value)

    versioned = REMOTE_IMAGE_CONFIG.replace("    Type: remote\n", "    Type: remote\n    Version: 2024-05\n")
    spec = remote_image_project(tmp_path, versioned)
    identity = environment_identity(tmp_path, "juwels", spec.environments["juwels"], digests)
    assert identity.startswith("apptainer:/p/project/deepacf/$USER/img.sif@2024-05;")

    # or in mantik.yaml, which completes the config's Environment (and overrides it key by key)
    spec = remote_image_project(tmp_path, extra="environments:\n  juwels: {image_version: v2}\n")
    environment = spec.environments["juwels"]
    assert environment.image_version == "v2" and environment.apptainer == "/p/project/deepacf/$USER/img.sif"
    assert spec.backends["juwels"].environment == "juwels"
    digest = "sha256:" + "a" * 64
    spec = remote_image_project(tmp_path, extra=f"environments:\n  juwels: {{digest: '{digest}'}}\n")
    assert environment_identity(tmp_path, "juwels", spec.environments["juwels"], digests).startswith(
        f"apptainer:{digest};"
    )


def test_the_jobs_shell_expands_what_mantiks_batch_script_expanded(tmp_path):
    """$USER in the image path and options, $(...) in Variables: expanded in the job, as under Mantik."""
    from mantik_spec.operations.jobs import in_environment, launches_with_srun

    environment = remote_image_project(tmp_path).environments["juwels"]
    assert environment.shell_expansion
    from mantik_spec.backends import backend_class

    srun = launches_with_srun(environment, backend_class("unicore").launches_in_allocation)
    command = in_environment("python train.py --lr 0.1", environment, None, srun)
    # stand-ins for srun and apptainer that print what they were given
    shell = (
        "srun() { printf 'srun\\n'; \"$@\"; }; "
        "apptainer() { printf '%s\\n' \"$@\"; printf 'RUN_DIR=%s\\nSTARTED=%s\\nQUOTED=%s\\n' "
        '"$RUN_DIR" "$STARTED" "$QUOTED"; }; '
    )
    result = subprocess.run(
        ["bash", "-c", shell + command],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
        # the runner sets the variables as given (JobRequest.environment), then the command runs
        env={"PATH": os.environ["PATH"], "USER": "alice", **environment.variables},
    )
    assert result.stdout.splitlines() == [
        "srun",
        "exec",
        "--nv",
        "-B",
        f"{tmp_path}/data:/data",
        "/p/project/deepacf/alice/img.sif",
        "sh",
        "-c",
        "python train.py --lr 0.1",
        "RUN_DIR=/p/scratch/deepacf/alice/runs",
        "STARTED=started",
        'QUOTED=say "hi"',
    ]


@pytest.mark.parametrize(
    "backend_type, environment, expected",
    [
        ("slurm", {"apptainer": "/p/img.sif"}, True),  # Mantik: srun apptainer run
        ("unicore", {"apptainer": "/p/img.sif"}, True),
        ("local", {"apptainer": "/p/img.sif"}, False),  # no allocation to start tasks in
        ("unicore", {"venv": "/p/venv"}, False),  # Mantik ran Python environments' commands once
        ("slurm", {"venv": "/p/venv", "srun": True}, True),
        ("slurm", {"apptainer": "/p/img.sif", "srun": False}, False),
    ],
)
def test_how_each_backend_launches_a_multi_task_job(backend_type, environment, expected):
    from mantik_spec.backends import backend_class
    from mantik_spec.operations.jobs import in_environment, launches_with_srun
    from mantik_spec.spec.model import Environment

    declared = Environment(**environment)
    in_allocation = backend_class(backend_type).launches_in_allocation
    assert launches_with_srun(declared, in_allocation) is expected
    command = in_environment("python t.py", declared, None, launches_with_srun(declared, in_allocation))
    assert ("srun " in command) is expected
    assert launches_with_srun(None, in_allocation) is False


@pytest.mark.parametrize(
    "config, expected_type",
    [(FULL_MANTIK_CONFIG, "unicore"), (mantik_ssh_config(), "slurm")],
)
def test_init_writes_the_backend_type_of_the_config_it_reads(tmp_path, config, expected_type):
    import yaml

    from mantik_spec.operations.init import init

    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)  # init wants the project in git
    write_mlproject(tmp_path, MLPROJECT.replace("python_env: python_env.yaml\n", ""))
    (tmp_path / "backend.yaml").write_text(config.replace("Path: image.sif", "Path: /p/image.sif\n    Version: v1"))
    init(tmp_path, mlproject=tmp_path / "MLproject", backend_config=tmp_path / "backend.yaml")
    spec = yaml.safe_load((tmp_path / "mantik.yaml").read_text())
    assert spec["backends"]["hpc"] == {"type": expected_type, "config": "backend.yaml"}
    load_spec(tmp_path)


def test_init_refuses_a_config_that_names_no_single_connection(tmp_path):
    from mantik_spec.errors import UserError
    from mantik_spec.operations.init import init

    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    for name, text in (
        ("none.yaml", "Resources: {Queue: normal}\n"),
        ("two.yaml", "UnicoreApiUrl: https://x\nFirecrest: {ApiUrl: https://x}\n"),
    ):
        (tmp_path / name).write_text(text)
        with pytest.raises(UserError, match="names one of UnicoreApiUrl, SSH or Firecrest"):
            init(tmp_path, backend_config=tmp_path / name)
        assert not (tmp_path / "mantik.yaml").exists()


def test_mlproject_types_mlflow_does_not_check_are_strings_and_explained(tmp_path):
    mlproject = MLPROJECT.replace("l1_ratio: float", "l1_ratio:\n        type: list[float]\n        default: '[0.1]'")
    mantik_project(tmp_path, mlproject=mlproject)
    parameter = load_spec(tmp_path).spec.entry_points["main"].parameters["l1_ratio"]
    assert (parameter.type, parameter.declared_type, parameter.shown_type) == ("string", "list[float]", "list[float]")


@pytest.mark.e2e
def test_srun_starts_one_task_per_slot_of_a_real_slurm_allocation(project, slurm_cluster):
    """An environment launching through srun runs the command once per task (ntasks: 2), the runner once,
    on the test run's own Slurm."""
    assert slurm_is_up(), slurm_cluster.logs()
    spec = slurm_spec(lrs="[0.1]").replace("resources: {ntasks: 1,", "resources: {ntasks: 2,")
    spec = spec.replace("    poll_interval: 0.5s\n", "    poll_interval: 0.5s\n    environment: tasks\n")
    project.write("mantik.yaml", spec + "environments:\n  tasks: {srun: true}\n")
    project.commit("two tasks")
    project.mantik("apply", "--auto-approve", "--wait", timeout=300)
    starts = [e for e in project.events() if e["event"] == "start"]
    assert len(starts) == 2 and len({e["pid"] for e in starts}) == 2
    assert [r.info.status for r in project.runs()] == ["FINISHED"]


def test_init_reads_an_mlproject_with_types_mlflow_does_not_check(tmp_path):
    import shutil

    import yaml

    from mantik_spec.operations.init import init

    corpus = Path(__file__).parent / "corpus" / "mlproject"
    for name in ("loose-types", "folded-continuation", "unused-and-defaults"):
        project = tmp_path / name
        shutil.copytree(corpus / name, project)
        subprocess.run(["git", "init", "-q", str(project)], check=True)
        init(project, mlproject=project / "MLproject")
        spec = load_spec(project).spec
        assert spec.mlproject == "MLproject"
        experiments = yaml.safe_load((project / "mantik.yaml").read_text())["experiments"]
        assert set(experiments) == set(spec.entry_points)
FIRECREST_CONFIG = """\
Firecrest:
  ApiUrl: https://api.cscs.ch/ml/firecrest/v2
  TokenUrl: https://auth.cscs.ch/auth/realms/firecrest-clients/protocol/openid-connect/token
  Machine: clariden
Resources:
  Queue: normal
  Runtime: 2h
  Nodes: 1
  GPUsPerNode: 4
  Reservation: r1
  NodeConstraints: gpu
Environment:
  Variables: {OMP_NUM_THREADS: 8}
  PreRunCommandOnComputeNode: ["echo pre compute"]
Exclude: ["*.ckpt"]
"""

FIRECREST_SPEC = UNICORE_SPEC.replace("type: unicore", "type: firecrest\n        workdir: /scratch/me/mantik")


def test_firecrest_config_is_read_unchanged(tmp_path):
    (tmp_path / "compute-backend-config.yaml").write_text(FIRECREST_CONFIG)
    write_mlproject(tmp_path)
    write_project(tmp_path, FIRECREST_SPEC)
    spec = load_spec(tmp_path).spec
    backend = spec.backends["juwels"]
    assert (backend.type, backend.url, backend.machine) == (
        "firecrest",
        "https://api.cscs.ch/ml/firecrest/v2",
        "clariden",
    )
    assert backend.token_url.endswith("/openid-connect/token")
    assert (backend.partition, backend.reservation, backend.constraint) == ("normal", "r1", "gpu")
    assert (backend.resources.time, backend.resources.nodes, backend.resources.gres) == ("2:00:00", 1, "gpu:4")
    assert backend.exclude == ["*.ckpt"]
    assert spec.environments["juwels"].variables == {"OMP_NUM_THREADS": "8"}
    assert spec.environments["juwels"].pre_run == ["echo pre compute"]


@pytest.mark.parametrize(
    "change, expected",
    [
        (
            ("  Machine: clariden\n", "  Machin: clariden\n"),
            "compute-backend-config.yaml:4:3: Firecrest.Machin: unknown",
        ),
        (("  Machine: clariden\n", ""), "compute-backend-config.yaml:1:1: Firecrest: Machine is required"),
        (
            ("ApiUrl: https://api.cscs.ch/ml/firecrest/v2", "ApiUrl: api.cscs.ch"),
            "compute-backend-config.yaml:2:11: Firecrest.ApiUrl:",
        ),
        (
            ("  Queue: normal\n", "  Queue: normal\n  TotalCPUs: 4\n"),
            "compute-backend-config.yaml:7:3: Resources.TotalCPUs",
        ),
        (
            ('  PreRunCommandOnComputeNode: ["echo pre compute"]', '  PreRunCommandOnLoginNode: "echo"'),
            "compute-backend-config.yaml:14:29: Environment.PreRunCommandOnLoginNode: only UNICORE",
        ),
    ],
)
def test_firecrest_config_problems_at_their_own_lines(tmp_path, change, expected):
    (tmp_path / "compute-backend-config.yaml").write_text(FIRECREST_CONFIG.replace(*change))
    write_mlproject(tmp_path)
    write_project(tmp_path, FIRECREST_SPEC)
    problems = problems_of(tmp_path)
    assert any(p.startswith(expected) for p in problems), problems


def test_init_writes_a_firecrest_backend_for_a_firecrest_config(tmp_path):
    from mantik_spec.operations.init import init

    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)  # init wants the project in git
    (tmp_path / "compute-backend-config.yaml").write_text(FIRECREST_CONFIG)
    init(tmp_path, backend_config=tmp_path / "compute-backend-config.yaml")
    text = (tmp_path / "mantik.yaml").read_text()
    assert 'hpc: {type: firecrest, config: "compute-backend-config.yaml"}' in text
    assert load_spec(tmp_path).spec.backends["hpc"].machine == "clariden"


def test_expanded_variables_cannot_close_their_quotes(tmp_path):
    """With shell_expansion a variable keeps $ live, but no value can end its quotes and run the rest."""
    from mantik_spec.operations.jobs import in_environment
    from mantik_spec.spec.model import Environment

    marker = tmp_path / "ran"
    values = {"A": "ends in \\", "B": f'x\\"; touch {marker}; echo "', "C": "$HOME/data"}
    environment = Environment(shell_expansion=True, variables=values)
    command = in_environment('printf "%s|%s|%s" "$A" "$B" "$C"', environment)
    result = subprocess.run(["bash", "-c", command], capture_output=True, text=True, env={"HOME": "/home/u"})
    assert result.returncode == 0, result.stderr
    assert result.stdout == f'ends in \\|x\\"; touch {marker}; echo "|/home/u/data'
    assert not marker.exists()


def test_multi_line_pre_run_commands_run_line_by_line_as_mantiks_job_ran_them(tmp_path):
    """A literal block's lines run in turn (blank and comment lines are nothing to run, a trailing backslash
    joins two lines as the shell does); a folded one-liner's final line break is no second command."""
    from mantik_spec.operations.jobs import in_environment

    mantik_project(tmp_path, MAELSTROM_CONFIG)
    spec = load_spec(tmp_path).spec
    assert spec.backends["juwels"].login_precommand == ["mkdir -p $SCRATCH/maelstrom && cp -r data $SCRATCH/maelstrom"]
    environment = spec.environments["juwels"]
    assert environment.pre_run == [
        "module load Stages/2023",
        "module load CUDA",
        "export DATA=$SCRATCH/maelstrom   MODE=train",
        'echo "pre: $MODE"',
    ]
    assert environment.post_run == ["echo post one", "echo post two"]
    # as the job script runs them, with a parameter value holding a line break in the command: it stays data
    command = render_command("printf 'cmd [%s] %s\\n' \"$DATA\" {msg}", {"msg": "x\necho INJECTED"})
    result = subprocess.run(
        ["bash", "-c", 'module() { echo "module $*"; }; ' + in_environment(command, environment)],
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": os.environ["PATH"], "SCRATCH": "/s"},
    )
    assert result.stdout.splitlines() == [
        "module load Stages/2023",
        "module load CUDA",
        "pre: train",
        "cmd [/s/maelstrom] x",
        "echo INJECTED",  # printed by printf, as the one argument it was given; never run
        "post one",
        "post two",
    ]


@pytest.mark.parametrize(
    "script",
    [
        "if [ -d data ]; then\n  echo yes\nfi\n",
        "for f in a b; do\n  echo $f\ndone\n",
        "cat > env.sh <<EOF\nexport A=1\nEOF\n",
        'echo "one\ntwo"\n',
        "ls |\n  wc -l\n",
    ],
)
def test_a_pre_run_command_spanning_lines_is_refused_at_its_key(tmp_path, script):
    """Each line runs on its own: a command that continues on the next line would break there."""
    config = MAELSTROM_CONFIG.replace(
        '    echo "pre: $MODE"\n', textwrap.indent(script, "    ") + "    echo last\n"
    )
    mantik_project(tmp_path, config)
    problems = problems_of(tmp_path)
    assert len(problems) == 1, problems
    assert problems[0].startswith("compute-backend-config.yaml:8:") and "continues on the next line" in problems[0]
    assert "PreRunCommandOnComputeNode" in problems[0] and "write it on one line with ';'" in problems[0]


def test_a_line_break_in_a_shell_line_written_elsewhere_is_still_refused(tmp_path):
    """Only a Mantik config's commands are read as scripts: mantik.yaml's lines stay one line each."""
    mantik_project(tmp_path, MAELSTROM_CONFIG)
    spec = (tmp_path / "mantik.yaml").read_text()
    (tmp_path / "mantik.yaml").write_text(spec + 'environments:\n  juwels: {post_run: ["echo a\\necho b"]}\n')
    problems = problems_of(tmp_path)
    assert any("environments.juwels.post_run[0]" in p and "one shell line each" in p for p in problems), problems
