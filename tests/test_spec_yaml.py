"""Unquoted values mean what YAML 1.2 says, and text fields get the text written.

Each case is a value a user writes without quotes; the test asserts what the job
receives (the rendered command or the backend setting), or the located refusal.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mantik_spec.spec.experiments import expand, resolve_extends
from mantik_spec.spec.load import load_spec
from mantik_spec.spec.yamlload import SpecError, load_marked

from .conftest import (
    ROOT,
    missing,  # a failure under CI=true, a skip elsewhere
)

SPEC = """\
version: 1
project: demo
entry_points:
  train:
    command: python train.py {{value}}
    parameters:
      value: {type}
backends:
  local: {{type: local}}
experiments:
  grid:
    entry_point: train
    parameters: {{value: [{values}]}}
"""


def commands(tmp_path: Path, declared_type: str, values: str) -> list[str]:
    (tmp_path / "mantik.yaml").write_text(SPEC.format(type=declared_type, values=values))
    spec = load_spec(tmp_path).spec
    return [point.command({}) for point in expand(spec, resolve_extends(spec)[0])]


def problems(tmp_path: Path, text: str) -> list[str]:
    (tmp_path / "mantik.yaml").write_text(text)
    with pytest.raises(SpecError) as caught:
        load_spec(tmp_path)
    return [str(problem) for problem in caught.value.problems]


@pytest.mark.parametrize(
    "declared_type,values,received",
    [
        # YAML 1.1 made these booleans: a string grid was refused naming False
        ("string", "no, se", ["no", "se"]),
        ("string", "yes, on, off, y, n, NO, Off", ["yes", "on", "off", "y", "n", "NO", "Off"]),
        # a text parameter gets the characters written, never a number's reformatting
        ("string", "1.10, 010, 1e-3, 0x1F, true, 1:30:00", ["1.10", "010", "1e-3", "0x1F", "true", "1:30:00"]),
        ("path", "2024-01-01, 0755", ["2024-01-01", "0755"]),
        # YAML 1.1 left 1e-3 a string: a float grid was refused
        # a number as written (as `mlflow run -P lr=1e-3` passes it); the run is keyed by its value
        ("float", "1e-3, 0.01, 1E+2, .5, 3", ["1e-3", "0.01", "1E+2", ".5", "3"]),
        ("int", "0o17, 0x10, +5, -3", ["15", "16", "5", "-3"]),
        ("bool", "true, False", ["True", "False"]),  # as MLflow formats booleans
    ],
)
def test_unquoted_values_reach_the_job_as_written(tmp_path, declared_type, values, received):
    if declared_type == "path":  # a relative path must exist in the project
        for name in received:
            (tmp_path / name).touch()
    got = commands(tmp_path, declared_type, values)
    assert [shlex.split(command)[2] for command in got] == received


@pytest.mark.parametrize(
    "declared_type,values,expected",
    [
        # YAML 1.1 tools read 010 as octal 8, YAML 1.2 tools as 10: the user says which
        ("int", "010, 2", "mantik.yaml:13:26: experiments.grid.parameters.value[0]: 010 has a leading zero"),
        ("float", "0755", "write 755, or quote it (\"0755\") if it is text"),
        # 1:30:00 is 5400 in YAML 1.1: it stays the text and is no number
        ("int", "1:30:00", "experiments.grid.parameters.value[0]: '1:30:00' is not a valid int"),
        ("int", "1_000", "'1_000' is not a valid int"),
        ("bool", "yes, no", "experiments.grid.parameters.value[0]: 'yes' is not a valid bool: write true or false"),
        ("bool", "on", "'on' is not a valid bool: write true or false"),
    ],
)
def test_ambiguous_unquoted_values_are_refused_at_their_line(tmp_path, declared_type, values, expected):
    found = problems(tmp_path, SPEC.format(type=declared_type, values=values))
    assert any(expected in p for p in found), found


def test_slurm_time_limits_stay_the_text_written(tmp_path):
    text = textwrap.dedent(
        """\
        project: demo
        entry_points: {train: {command: python train.py}}
        backends:
          hpc: {type: slurm, resources: {time: 1:30:00}}
          other: {type: slurm, resources: {time: 90:00}, poll_interval: 30s}
          short: {type: slurm, resources: {time: 0-01:30}}
        experiments: {a: {entry_point: train, backend: hpc}}
        """
    )
    (tmp_path / "mantik.yaml").write_text(text)
    backends = load_spec(tmp_path).spec.backends
    assert backends["hpc"].resources.time == "1:30:00"  # YAML 1.1: 5400, i.e. 90 hours
    assert backends["other"].resources.time == "90:00"  # YAML 1.1: 5400
    assert backends["short"].resources.time == "0-01:30"


@pytest.mark.parametrize(
    "field,expected",
    [
        ("partition: 010", "backends.hpc.partition: input should be a valid string, got 010 (quote it, \"010\""),
        ("account: 1234", 'backends.hpc.account: input should be a valid string, got 1234 (quote it, "1234"'),
        ("resources: {time: 010}", "backends.hpc.resources.time: 010 has a leading zero"),
        ("poll_interval: 030", "backends.hpc.poll_interval: 030 has a leading zero"),
    ],
)
def test_text_fields_given_numbers_ask_for_quotes(tmp_path, field, expected):
    text = (
        "project: demo\nentry_points: {train: {command: python train.py}}\n"
        f"backends:\n  hpc: {{type: slurm, {field}}}\nexperiments: {{a: {{entry_point: train}}}}\n"
    )
    found = problems(tmp_path, text)
    assert any(p.startswith("mantik.yaml:4:") and expected in p for p in found), found


def test_keys_are_the_text_written():
    document = load_marked("variables: {ON: x, 010: y, yes: z, true: w, 1.10: v}\n", "mantik.yaml")
    assert document.data == {"variables": {"ON": "x", "010": "y", "yes": "z", "true": "w", "1.10": "v"}}


def test_included_mlproject_defaults_are_read_as_mlflow_reads_them(tmp_path):
    """MLflow reads an MLproject with PyYAML's YAML 1.1 rules (no is False, 010 is 8, 1e-3 is text): its
    defaults reach the command as MLflow writes them, whatever mantik.yaml's own rules are."""
    from mlflow.projects._project_spec import load_project

    (tmp_path / "MLproject").write_text(
        textwrap.dedent(
            """\
            name: demo
            entry_points:
              main:
                parameters:
                  tag: {type: string, default: 1e-3}
                  country: {type: string, default: no}
                  alpha: {type: float, default: 1e-3}
                  n: {type: float, default: 010}
                command: python train.py {tag} {country} {alpha} {n}
            """
        )
    )
    (tmp_path / "mantik.yaml").write_text("project: demo\nmlproject: MLproject\nexperiments: {a: {entry_point: main}}\n")
    spec = load_spec(tmp_path).spec
    [point] = expand(spec, resolve_extends(spec)[0])
    theirs = load_project(str(tmp_path)).get_entry_point("main")
    assert point.command({}) == theirs.compute_command({}, None) == "python train.py 1e-3 False 1e-3 8"


def test_json_schema_tools_read_the_same_values(tmp_path):
    """check-jsonschema (a YAML 1.2 reader) accepts and refuses what validate does."""
    checker = Path(sys.executable).parent / "check-jsonschema"
    if not checker.exists():
        missing("check-jsonschema is not installed")
    schema = ROOT / "schemas" / "mantik.schema.json"
    good = SPEC.format(type="string", values="no, se, 1e-3") + "backends:\n  hpc: {type: slurm, resources: {time: 1:30:00}}\n"
    good = good.replace("backends:\n  local: {type: local}\n", "")
    (tmp_path / "mantik.yaml").write_text(good)
    load_spec(tmp_path)
    result = subprocess.run([str(checker), "--schemafile", str(schema), "mantik.yaml"], cwd=tmp_path, capture_output=True)
    assert result.returncode == 0, result.stdout
    bad = good.replace("resources: {time: 1:30:00}", "partition: 0755")
    (tmp_path / "mantik.yaml").write_text(bad)
    assert problems(tmp_path, bad)
    result = subprocess.run([str(checker), "--schemafile", str(schema), "mantik.yaml"], cwd=tmp_path, capture_output=True)
    assert result.returncode == 1, result.stdout


@pytest.mark.parametrize(
    "line,expected",
    [
        ("backends: {s: {type: unicore, url: 'https://h/rest/core', tls_verify: no}}",
         "backends.s.tls_verify: 'no' is not a boolean: write true or false (or ./no for a CA bundle file)"),
        ("backends: {h: {type: slurm, array: off}}", "backends.h.array: input should be a valid boolean, got 'off': "
         "write true or false"),
        ("data: {d: {url: 'https://x/y', unpinned: yes}}", "data.d.unpinned: input should be a valid boolean, got 'yes'"),
    ],
)
def test_yaml11_boolean_words_in_boolean_fields_ask_for_true_or_false(tmp_path, line, expected):
    # YAML 1.1 made `tls_verify: no` false; read as text it would have named a CA bundle file "no"
    found = problems(tmp_path, f"project: demo\nentry_points: {{t: {{command: python t.py}}}}\n{line}\n")
    assert any(p.startswith("mantik.yaml:3:") and expected in p for p in found), found


def test_text_parameters_written_as_plain_numbers_keep_their_run_keys(tmp_path):
    """0.1 given to a string parameter reaches the job as 0.1 either way: its value (and so its key) is unchanged."""
    (tmp_path / "mantik.yaml").write_text(SPEC.format(type="string", values="0.1, 3, 1.10"))
    spec = load_spec(tmp_path).spec
    assert spec.experiments["grid"].parameters["value"] == [0.1, 3, "1.10"]
    points = expand(spec, resolve_extends(spec)[0])
    assert [shlex.split(p.command({}))[2] for p in points] == ["0.1", "3", "1.10"]
