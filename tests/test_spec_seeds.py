"""Declared seeds always reach the program: through {seed}, or through $MANTIK_SEED when the spec says so."""

from __future__ import annotations

import textwrap

import pytest

from mantik_spec.spec.experiments import expand, resolve_extends
from mantik_spec.spec.load import load_spec
from mantik_spec.spec.yamlload import SpecError

SPEC = """\
project: demo
entry_points:
  train:
    command: {command}
    parameters:
      lr: float
{seed_parameter}backends:
  local: {{type: local}}
experiments:
  sweep:
    entry_point: train
    parameters: {{lr: [0.1, 0.2]}}
    seeds: 2
{extra}"""


def load(tmp_path, command, seed_parameter="", extra=""):
    (tmp_path / "mantik.yaml").write_text(SPEC.format(command=command, seed_parameter=seed_parameter, extra=extra))
    return load_spec(tmp_path).spec


def test_seeds_that_no_program_receives_are_refused_at_their_line(tmp_path):
    with pytest.raises(SpecError) as caught:
        load(tmp_path, "python train.py --lr {lr}")
    [problem] = [str(p) for p in caught.value.problems]
    assert problem.startswith("mantik.yaml:13:12: experiments.sweep.seeds: entry point 'train' never receives the seed")
    assert "use {seed} in the command, or set 'seed_from_env: true' if the program reads $MANTIK_SEED" in problem


def test_inherited_seeds_are_checked_where_they_apply(tmp_path):
    extra = "  other: {extends: sweep, entry_point: plain}\n"
    text = SPEC.format(command="python train.py --lr {lr} --seed {seed}", seed_parameter="      seed: int\n", extra=extra)
    text = text.replace("backends:", "  plain: {command: python other.py}\nbackends:")
    (tmp_path / "mantik.yaml").write_text(text)
    with pytest.raises(SpecError) as caught:
        load_spec(tmp_path)
    messages = [str(p) for p in caught.value.problems]
    assert any("experiments.other.seeds: entry point 'plain' never receives the seed" in m for m in messages), messages


def test_a_seed_parameter_that_the_command_does_not_use_is_refused(tmp_path):
    with pytest.raises(SpecError) as caught:
        load(tmp_path, "python train.py --lr {lr}", seed_parameter="      seed: int\n")
    assert any("parameter 'seed' is never used in the command" in str(p) for p in caught.value.problems)


@pytest.mark.parametrize(
    "command,seed_parameter,extra",
    [
        ("python train.py --lr {lr} --seed {seed}", "      seed: int\n", ""),
        ("python train.py --lr {lr} --seed $MANTIK_SEED", "", ""),
        ("python train.py --lr {lr}", "", "    seed_from_env: true\n"),
    ],
    ids=["placeholder", "variable in the command", "read by the program"],
)
def test_each_seed_is_a_distinct_run_point(tmp_path, command, seed_parameter, extra):
    spec = load(tmp_path, command, seed_parameter, extra)
    points = expand(spec, resolve_extends(spec)[0])
    assert sorted((dict(p.parameters)["lr"], p.seed) for p in points) == [(0.1, 0), (0.1, 1), (0.2, 0), (0.2, 1)]


def test_the_program_reads_its_seed_from_the_environment(project):
    """seed_from_env: each run's process gets its own MANTIK_SEED (the local backend, end to end)."""
    project.write(
        "train.py",
        """
        import json, os
        with open(os.environ["TEST_EVENTS"], "a") as f:
            f.write(json.dumps({"seed": os.environ.get("MANTIK_SEED")}) + "\\n")
        """,
    )
    project.write(
        "mantik.yaml",
        textwrap.dedent(
            """
            project: demo
            code: {paths: [train.py]}
            entry_points: {train: {command: python train.py}}
            backends: {local: {type: local, max_parallel: 2}}
            experiments: {sweep: {entry_point: train, seeds: 2, seed_from_env: true}}
            """
        ),
    )
    project.commit("seeds from the environment")
    project.mantik("apply", "--auto-approve", "--wait")
    assert sorted(event["seed"] for event in project.events()) == ["0", "1"]
