"""`mantik validate`: every user mistake becomes `mantik.yaml:LINE:COL: field: message`, never a traceback."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from mantik_spec.spec.load import load_spec
from mantik_spec.spec.yamlload import SpecError

from .conftest import BASIC_SPEC, mantik_command

VALID = textwrap.dedent(
    """\
    version: 1
    project: demo
    entry_points:
      train:
        command: python train.py --lr {lr} --epochs {epochs}
        parameters:
          lr: float
          epochs: {type: int, default: 10}
    backends:
      local: {type: local, max_parallel: 2}
    experiments:
      base:
        entry_point: train
        backend: local
        parameters: {lr: [0.1, 0.01]}
    """
)


def problems_of(tmp_path, text: str) -> list[str]:
    (tmp_path / "mantik.yaml").write_text(textwrap.dedent(text))
    with pytest.raises(SpecError) as caught:
        load_spec(tmp_path)
    return [str(p) for p in caught.value.problems]


def test_valid_spec_loads(tmp_path):
    (tmp_path / "mantik.yaml").write_text(VALID)
    loaded = load_spec(tmp_path)
    assert loaded.spec.project == "demo"
    assert loaded.spec.entry_points["train"].parameters["lr"].type == "float"


CASES = [
    (
        "yaml syntax",
        VALID.replace("project: demo", "project: [demo"),
        "mantik.yaml:3:13: YAML syntax error: did not find expected ',' or ']'",
    ),
    (
        "duplicate key",
        VALID + "project: other\n",
        "mantik.yaml:16:1: project: duplicate key 'project' (first defined at line 2)",
    ),
    (
        "unknown key with suggestion",
        VALID.replace("max_parallel", "max_paralel"),
        "mantik.yaml:10:24: backends.local.max_paralel: unknown key 'max_paralel'; did you mean 'max_parallel'?",
    ),
    (
        "unknown top-level key",
        VALID + "experiment: {}\n",
        "mantik.yaml:16:1: experiment: unknown key 'experiment'; did you mean 'experiments'?",
    ),
    (
        "wrong type",
        VALID.replace("max_parallel: 2", "max_parallel: two"),
        "mantik.yaml:10:38: backends.local.max_parallel: input should be a valid integer, got 'two'",
    ),
    (
        "string is not a bool",
        VALID.replace("backend: local", "backend: local\n    suspend: 'yes'"),
        "experiments.base.suspend: input should be a valid boolean",
    ),
    (
        "unknown backend",
        VALID.replace("backend: local", "backend: locale"),
        "mantik.yaml:14:14: experiments.base.backend: unknown backend 'locale'; did you mean 'local'?",
    ),
    (
        "unknown entry point",
        VALID.replace("entry_point: train", "entry_point: trian"),
        "mantik.yaml:13:18: experiments.base.entry_point: unknown entry point 'trian'; did you mean 'train'?",
    ),
    (
        "unknown environment",
        VALID.replace("backend: local", "backend: local\n    environment: torch"),
        "experiments.base.environment: unknown environment 'torch'; declared: none",
    ),
    (
        "unknown data source",
        VALID.replace("backend: local", "backend: local\n    data: [era5]"),
        "experiments.base.data[0]: unknown data source 'era5'",
    ),
    (
        "placeholder without parameter",
        VALID.replace("--epochs {epochs}", "--epochs {epochs} --bs {batch}"),
        "mantik.yaml:5:14: entry_points.train.command: placeholder {batch} has no declared parameter",
    ),
    (
        "parameter never used",
        VALID.replace("--epochs {epochs}", ""),
        "mantik.yaml:8:7: entry_points.train.parameters.epochs: parameter 'epochs' is never used in the command",
    ),
    (
        "grid parameter not declared",
        VALID.replace("{lr: [0.1, 0.01]}", "{lr: [0.1], lrr: 2}"),
        "experiments.base.parameters.lrr: entry point 'train' has no parameter 'lrr'; did you mean 'lr'?",
    ),
    (
        "grid value of the wrong type",
        VALID.replace("[0.1, 0.01]", "[0.1, fast]"),
        "mantik.yaml:15:28: experiments.base.parameters.lr[1]: 'fast' is not a valid float",
    ),
    (
        "required parameter missing",
        VALID.replace("parameters: {lr: [0.1, 0.01]}", "retries: 1"),
        "experiments.base: parameter 'lr' of entry point 'train' has no default: set it",
    ),
    (
        "extends cycle",
        VALID + "  a: {extends: b}\n  b: {extends: a}\n",
        "mantik.yaml:16:16: experiments.a.extends: extends cycle: a -> b -> a",
    ),
    (
        "extends unknown",
        VALID + "  a: {extends: bsae}\n",
        "experiments.a.extends: unknown experiment 'bsae'; did you mean 'base'?",
    ),
    (
        "inline credential",
        VALID + "tracking: {uri: 'http://mlflow:5000', token: abc123}\n",
        "mantik.yaml:16:46: tracking.token: credential written inline; name an environment variable instead (token_env: VARIABLE)",
    ),
    (
        "password in a URL",
        VALID + "tracking: {uri: 'https://me:secret@mlflow.example.org'}\n",
        "tracking.uri: URL carries a password",
    ),
    (
        "unknown backend type",
        VALID.replace("type: local", "type: slurmm"),
        "mantik.yaml:10:17: backends.local.type: unknown type 'slurmm'; expected 'local', 'slurm'",
    ),
    (
        "code path escapes the project",
        VALID + "code: {paths: [../other]}\n",
        "code.paths[0]: must stay inside the project",
    ),
    (
        "unpinned url",
        VALID + "data: {stations: {url: 'https://example.org/s.csv'}}\n",
        "data.stations.url: unpinned URL",
    ),
    (
        "seed twice",
        VALID.replace("command: python train.py", "command: python train.py --seed {seed}")
        .replace(
            "epochs: {type: int, default: 10}", "epochs: {type: int, default: 10}\n      seed: {type: int, default: 0}"
        )
        .replace("{lr: [0.1, 0.01]}", "{lr: [0.1, 0.01], seed: 3}\n    seeds: 2"),
        "experiments.base.parameters.seed: set either 'seeds' or a 'seed' parameter, not both",
    ),
    (
        "same float twice",
        VALID.replace("[0.1, 0.01]", "[1, 1.0]"),
        "experiments.base.parameters.lr: grid axis lists a value twice",
    ),
    ("merge keys", VALID + "x: &a {b: 1}\ny:\n  <<: *a\n", "YAML merge keys (<<) are not supported"),
    ("top level list", "- a\n- b\n", "mantik.yaml:1:1: the top level must be a mapping"),
    ("empty file", "\n", "mantik.yaml:1:1: the file is empty"),
]


@pytest.mark.parametrize("name,text,expected", CASES, ids=[c[0] for c in CASES])
def test_problem_is_reported_with_its_line(tmp_path, name, text, expected):
    problems = problems_of(tmp_path, text)
    assert any(expected in p for p in problems), problems


def test_every_problem_is_reported_in_one_go(tmp_path):
    text = VALID.replace("backend: local", "backend: locale").replace("--epochs {epochs}", "--epochs {epochs} {x}")
    problems = problems_of(tmp_path, text)
    assert len(problems) == 2
    assert problems[0].startswith("mantik.yaml:5:")  # sorted by line
    assert problems[1].startswith("mantik.yaml:14:")


def test_alias_bomb_is_refused_quickly(tmp_path):
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8)
    )
    problems = problems_of(tmp_path, bomb)
    assert any("aliases expand to more than" in p for p in problems)


def test_symlink_out_of_the_project_is_refused(tmp_path):
    outside = tmp_path / "outside.yaml"
    outside.write_text(VALID)
    project = tmp_path / "p"
    project.mkdir()
    (project / "mantik.yaml").symlink_to(outside)
    with pytest.raises(SpecError) as caught:
        load_spec(project)
    assert "outside the project" in str(caught.value)


def run_validate(cwd, *extra):
    return subprocess.run([*mantik_command(), "validate", *extra], cwd=cwd, capture_output=True, text=True, timeout=60)


def test_cli_exit_codes_and_no_traceback(tmp_path):
    (tmp_path / "mantik.yaml").write_text(VALID)
    ok = run_validate(tmp_path)
    assert ok.returncode == 0, ok.stderr
    (tmp_path / "mantik.yaml").write_text(VALID.replace("max_parallel", "max_paralel") + "project: again\n")
    bad = run_validate(tmp_path)
    assert bad.returncode == 1
    lines = bad.stderr.strip().splitlines()
    assert lines == [
        "mantik.yaml:16:1: project: duplicate key 'project' (first defined at line 2)",
    ]
    assert "Traceback" not in bad.stderr


@pytest.mark.parametrize("content", [b"\x00\x01binary", b"\xff\xfe\xfa not utf8", b"a: [1, 2\n"])
def test_cli_junk_files_give_one_line(tmp_path, content):
    (tmp_path / "mantik.yaml").write_bytes(content)
    result = run_validate(tmp_path)
    assert result.returncode == 1
    assert result.stderr.startswith("mantik.yaml")
    assert "Traceback" not in result.stderr


def test_cli_directory_option_and_missing_file(tmp_path):
    result = run_validate(tmp_path.parent, "-C", str(tmp_path))
    assert result.returncode == 1
    assert "mantik.yaml: not found" in result.stderr
    (tmp_path / "mantik.yaml").mkdir()
    result = run_validate(tmp_path.parent, "-C", str(tmp_path))
    assert "mantik.yaml: is not a regular file" in result.stderr


def test_validate_imports_no_heavy_module(tmp_path):
    (tmp_path / "mantik.yaml").write_text(BASIC_SPEC)
    probe = (
        "import sys; from click.testing import CliRunner; from mantik_spec.cli import main; "
        f"r = CliRunner().invoke(main, ['validate', '-C', {str(tmp_path)!r}]); "
        "r2 = CliRunner().invoke(main, ['--help']); "
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('mlflow', 'dvc', 'pyunicore', 'firecrest', 'git')); "
        "print(r.exit_code, r2.exit_code, heavy)"
    )
    output = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert output.strip() == "0 0 []"


MULTILINE = '"echo one\\necho two"'  # a YAML double-quoted string holding a line break


@pytest.mark.parametrize(
    ("backend", "field"),
    [
        ("{type: slurm, partition: debug, setup: [%s]}", "backends.local.setup[0]"),
        ("{type: firecrest, url: 'https://f.example', system: s, setup: [%s]}", "backends.local.setup[0]"),
        (
            "{type: unicore, url: 'https://u.example/rest/core', login_precommand: [%s]}",
            "backends.local.login_precommand[0]",
        ),
        (
            "{type: unicore, url: 'https://u.example/rest/core', login_postcommand: [%s]}",
            "backends.local.login_postcommand[0]",
        ),
    ],
)
def test_a_shell_line_holding_a_line_break_is_refused_wherever_it_is_written(tmp_path, backend, field):
    """Every list of shell lines is one kind of value with one rule: a line break would start another command
    (joined with && on a login node, it would leave the first lines outside the condition)."""
    text = VALID.replace("local: {type: local, max_parallel: 2}", "local: " + backend % MULTILINE)
    problems = problems_of(tmp_path, text)
    assert any("mantik.yaml:10:" in p and field in p and "one shell line each" in p for p in problems), problems


def test_environment_lines_holding_a_line_break_are_refused(tmp_path):
    text = VALID.replace("backends:", f"environments:\n  env: {{pre_run: [{MULTILINE}]}}\nbackends:")
    problems = problems_of(tmp_path, text)
    assert any("environments.env.pre_run[0]" in p and "one shell line each" in p for p in problems), problems


@pytest.mark.parametrize(
    ("backend", "field"),
    [
        ("{type: local, max_parallel: 2, poll_interval: %s}", None),
        ("{type: slurm, partition: debug, poll_interval: %s}", "backends.local.poll_interval"),
        (
            "{type: firecrest, url: 'https://f.example', token_url: 'https://t.example', machine: m, "
            "workdir: /scratch/me, timeout: %s}",
            "backends.local.timeout",
        ),
        ("{type: unicore, url: 'https://u.example/rest/core', poll_interval: %s}", "backends.local.poll_interval"),
        ("{type: unicore, url: 'https://u.example/rest/core', timeout: %s}", "backends.local.timeout"),
    ],
)
def test_a_duration_is_read_alike_wherever_it_is_written(tmp_path, backend, field):
    """Every timeout and poll interval is one kind of value: seconds, or a number with s, m or h."""
    if field is None:  # the local backend polls files: it has no interval to set
        problems = problems_of(tmp_path, VALID.replace("{type: local, max_parallel: 2}", backend % "5s"))
        assert any("poll_interval" in p for p in problems), problems
        return
    text = VALID.replace("{type: local, max_parallel: 2}", backend % "'5 minutes'")
    problems = problems_of(tmp_path, text)
    assert any("mantik.yaml:10:" in p and field in p and "is not a duration" in p for p in problems), problems
    (tmp_path / "mantik.yaml").write_text(VALID.replace("{type: local, max_parallel: 2}", backend % "5m"))
    assert load_spec(tmp_path).spec.backends["local"].type in backend
