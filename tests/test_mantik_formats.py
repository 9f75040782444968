"""Files users already have, read unchanged: MLflow MLproject files and Mantik compute-backend configs.

Every problem in them is reported at their own file:line, in their own key names.
"""

from __future__ import annotations

import json
import textwrap

import pytest

from mantik_spec.spec.load import load_spec
from mantik_spec.spec.yamlload import SpecError

JUWELS = "https://zam2125.zam.kfa-juelich.de:9112/JUWELS/rest/core"
FULL_MANTIK_CONFIG = """\
UnicoreApiUrl: https://zam2125.zam.kfa-juelich.de:9112/JUWELS/rest/core
Resources:
  Queue: booster
  Runtime: 12h
  Nodes: 2
  TotalCPUs: 96
  CPUsPerNode: 48
  GPUsPerNode: 4
  MemoryPerNode: 64G
  Reservation: r1
  NodeConstraints: gpu
  QoS: normal
Environment:
  Apptainer:
    Path: image.sif
    Type: local
    Options: ["--nv", "-B /data:/data"]
  Variables: {OMP_NUM_THREADS: 8, MODE: fast}
  Modules: [Stages/2023, CUDA]
  PreRunCommandOnLoginNode: ["echo pre login", "echo again"]
  PreRunCommandOnComputeNode: ["echo pre compute"]
  PostRunCommandOnComputeNode: ["echo post compute"]
  PostRunCommandOnLoginNode: "echo post login"
Exclude: ["*.ckpt", "data/"]
"""

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
    (path / "MLproject").write_text(mlproject)
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
    (tmp_path / "MLproject").write_text(MLPROJECT)
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
    (tmp_path / "MLproject").write_text(MLPROJECT)
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
    (tmp_path / "MLproject").write_text(MLPROJECT)
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
    assert any(
        p.startswith("MLproject:8:7: entry_points.main.parameters.data_file: parameter 'data_file'") for p in problems
    )


def test_entry_point_defined_twice_and_missing_files(tmp_path):
    (tmp_path / "MLproject").write_text(MLPROJECT)
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
    (outside / "MLproject").write_text(MLPROJECT)
    project = tmp_path / "project"
    project.mkdir()
    (project / "configs").symlink_to(outside)
    write_project(project, "project: demo\nmlproject: configs/MLproject\n")
    assert problems_of(project) == [
        "mantik.yaml:2:12: mlproject: configs/MLproject leads outside the project (through a symlink)"
    ]


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
    (tmp_path / "MLproject").write_text(MLPROJECT)
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
    (tmp_path / "MLproject").write_text(MLPROJECT)
    write_project(tmp_path, FIRECREST_SPEC)
    problems = problems_of(tmp_path)
    assert any(p.startswith(expected) for p in problems), problems


def test_init_writes_a_firecrest_backend_for_a_firecrest_config(tmp_path):
    from mantik_spec.operations.init import init

    (tmp_path / "compute-backend-config.yaml").write_text(FIRECREST_CONFIG)
    init(tmp_path, backend_config=tmp_path / "compute-backend-config.yaml")
    text = (tmp_path / "mantik.yaml").read_text()
    assert 'hpc: {type: firecrest, config: "compute-backend-config.yaml"}' in text
    assert load_spec(tmp_path).spec.backends["hpc"].machine == "clariden"
