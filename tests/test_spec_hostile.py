"""Hostile specs: values no job can receive, grids too big to expand, files that are not files.

Every case ends in one located line per problem, quickly: never a traceback, a hang or a crash later in the job.
"""

from __future__ import annotations

import os
import stat
import subprocess
import textwrap
import threading
import time

import pytest

from mantik_spec.spec.load import load_spec
from mantik_spec.spec.yamlload import SpecError

from .conftest import mantik_command, missing

BASE = """\
project: demo
entry_points:
  train:
    command: python train.py {a}
    parameters: {a: {type: string, default: x}}
"""


def problems(tmp_path, text: str, budget: float = 5.0) -> list[str]:
    (tmp_path / "mantik.yaml").write_text(text)
    started = time.monotonic()
    with pytest.raises(SpecError) as caught:
        load_spec(tmp_path)
    assert time.monotonic() - started < budget
    found = [str(p) for p in caught.value.problems]
    assert all("\n" not in line and len(line) <= 1000 for line in found), found
    return found


@pytest.mark.parametrize(
    "text,expected",
    [
        (
            BASE + 'experiments: {x: {entry_point: train, parameters: {a: ["ok", "x\\0y"]}}}\n',
            "mantik.yaml:6:62: experiments.x.parameters.a[1]: contains a NUL character (\\0)",
        ),
        (
            BASE + 'environments: {e: {variables: {A: "a\\0b"}}}\nexperiments: {x: {entry_point: train}}\n',
            "mantik.yaml:6:35: environments.e.variables.A: contains a NUL character",
        ),
        (BASE.replace("python train.py {a}", '"python train.py {a}\\0"'), "entry_points.train.command: contains a NUL"),
        (BASE + 'environments: {e: {variables: {"A\\0": x}}}\n', "mantik.yaml:6:32: environments.e.variables: a key"),
    ],
    ids=["parameter value", "variable value", "command", "variable name"],
)
def test_a_nul_character_is_refused_at_its_line(tmp_path, text, expected):
    found = problems(tmp_path, text)
    assert any(line.startswith(expected) or expected in line for line in found), found


@pytest.mark.parametrize("name", ["A=B", "1X", "", "MY VAR", "X-Y", "é"])
def test_environment_variable_names_the_os_refuses_are_refused(tmp_path, name):
    text = BASE + f'environments: {{e: {{variables: {{"{name}": x}}}}}}\nexperiments: {{x: {{entry_point: train}}}}\n'
    found = problems(tmp_path, text)
    assert found == [
        f"mantik.yaml:6:32: environments.e.variables.{name}: {name!r} is not an environment variable name: "
        "letters, digits and _, not starting with a digit"
    ]


def test_variable_names_in_a_mantik_config_are_refused_in_that_file(tmp_path):
    (tmp_path / "site.yaml").write_text(
        "UnicoreApiUrl: https://site.example/rest/core\nResources: {Queue: batch}\n"
        "Environment:\n  Variables: {OMP_NUM_THREADS: 8, BAD=NAME: x}\n"
    )
    text = BASE + "backends: {site: {type: unicore, config: site.yaml}}\nexperiments: {x: {entry_point: train}}\n"
    found = problems(tmp_path, text)
    assert [line.split(": ", 2)[:2] for line in found] == [["site.yaml:4:35", "Environment.Variables.BAD=NAME"]]


@pytest.mark.parametrize(
    "uri",
    ["http://TOKEN@mlflow.example:5000", "https://user@mlflow.example", "https://:tok@mlflow.example", "HTTPS://a@b"],
)
def test_a_credential_in_an_http_uri_user_part_is_refused(tmp_path, uri):
    found = problems(tmp_path, BASE + f"tracking: {{uri: '{uri}'}}\nexperiments: {{x: {{entry_point: train}}}}\n")
    assert any(line.startswith("mantik.yaml:6:") and "tracking.uri: URL carries a" in line for line in found), found


def test_a_database_uri_with_only_a_user_name_is_accepted(tmp_path):
    (tmp_path / "mantik.yaml").write_text(
        BASE + "tracking: {uri: 'postgresql://mlflow@db.example/mlflow'}\nexperiments: {x: {entry_point: train}}\n"
    )
    load_spec(tmp_path)


def test_a_token_in_the_tracking_uri_from_the_environment_is_refused(project):
    refused = project.mantik("plan", check=1, env={"MLFLOW_TRACKING_URI": "http://s3cr3t-token@mlflow.example.org"})
    assert refused.stderr.startswith("Error: the tracking URI carries a user name or token before '@'")
    assert "s3cr3t" not in refused.stderr


GRID = """\
project: demo
entry_points:
  train:
    command: python t.py {a} {b} {c} {d} {e} {f} {g} {h}
    parameters: {a: int, b: int, c: int, d: int, e: int, f: int, g: int, h: int}
experiments:
  huge:
    entry_point: train
    parameters: {a: [0,1,2,3,4,5,6,7,8,9], b: [0,1,2,3,4,5,6,7,8,9], c: [0,1,2,3,4,5,6,7,8,9], d: [0,1,2,3,4,5,6,7,8,9], e: [0,1,2,3,4,5,6,7,8,9], f: [0,1,2,3,4,5,6,7,8,9], g: [0,1,2,3,4,5,6,7,8,9], h: [0,1,2,3,4,5,6,7,8,9]}
"""


def test_a_grid_of_a_hundred_million_points_is_counted_not_expanded(tmp_path):
    found = problems(tmp_path, GRID, budget=2.0)
    assert found == [
        "mantik.yaml:7:3: experiments.huge: the grid declares 100,000,000 runs; more than max_runs (10000) is "
        "refused: raise max_runs if this many runs are meant"
    ]


def test_a_hundred_million_points_through_the_cli_end_in_one_line(tmp_path):
    (tmp_path / "mantik.yaml").write_text(GRID)
    for verb in ("validate", "plan"):
        result = subprocess.run(
            [*mantik_command(), verb], cwd=tmp_path, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 1
        assert result.stderr.startswith("mantik.yaml:7:3: experiments.huge: the grid declares 100,000,000 runs")
        assert len(result.stderr.splitlines()) == 1


def test_max_runs_raises_the_limit_and_counts_all_experiments_with_their_seeds(tmp_path):
    spec = BASE.replace("parameters: {a: {type: string, default: x}}", "parameters: {a: int, seed: int}").replace(
        "{a}", "{a} {seed}"
    )
    values = ", ".join(str(i) for i in range(1000))
    experiments = "".join(f"  e{i}: {{entry_point: train, parameters: {{a: [{values}]}}, seeds: 4}}\n" for i in range(3))
    text = spec + "experiments:\n" + experiments
    assert problems(tmp_path, text) == [
        "mantik.yaml:6:1: experiments: the experiments declare 12,000 runs in all; more than max_runs (10000) "
        "is refused: raise max_runs if this many runs are meant"
    ]
    (tmp_path / "mantik.yaml").write_text(text + "max_runs: 12000\n")
    load_spec(tmp_path)


@pytest.mark.parametrize("field", ["mlproject", "config"])
def test_an_include_that_is_a_fifo_is_refused_without_hanging(tmp_path, field):
    os.mkfifo(tmp_path / "included")
    if field == "mlproject":
        text = BASE + "mlproject: included\nexperiments: {x: {entry_point: train}}\n"
        at = "mantik.yaml:6:12: mlproject"
    else:
        text = BASE + "backends: {site: {type: unicore, config: included}}\nexperiments: {x: {entry_point: train}}\n"
        at = "mantik.yaml:6:42: backends.site.config"
    outcome: list = []
    worker = threading.Thread(target=lambda: outcome.append(problems(tmp_path, text)), daemon=True)
    worker.start()
    worker.join(10)
    if worker.is_alive():  # let the stuck reader go before failing
        with open(tmp_path / "included", "w"):
            pass
        pytest.fail("reading a FIFO hung")
    assert outcome == [[f"{at}: included is not a regular file"]]


def test_a_huge_include_is_refused_before_it_is_read(tmp_path):
    with open(tmp_path / "MLproject", "wb") as huge:
        huge.truncate(4 * 1024**3)  # sparse: 4 GiB that would take seconds and memory to read
    found = problems(tmp_path, BASE + "mlproject: MLproject\nexperiments: {x: {entry_point: train}}\n", budget=1.0)
    assert found == ["mantik.yaml:6:12: mlproject: MLproject is larger than 1 MiB"]


def test_a_device_inside_the_project_is_refused(tmp_path):
    if os.geteuid() != 0:
        missing("making a device file needs root")  # CI runs as root: there this fails instead of skipping
    os.mknod(tmp_path / "MLproject", stat.S_IFCHR | 0o644, os.makedev(1, 5))  # like /dev/zero
    found = problems(tmp_path, BASE + "mlproject: MLproject\nexperiments: {x: {entry_point: train}}\n", budget=1.0)
    assert found == ["mantik.yaml:6:12: mlproject: MLproject is not a regular file"]


def test_the_spec_itself_as_a_fifo_or_huge_file_is_refused(tmp_path):
    os.mkfifo(tmp_path / "mantik.yaml")
    with pytest.raises(SpecError) as caught:
        load_spec(tmp_path)
    assert [str(p) for p in caught.value.problems] == ["mantik.yaml: is not a regular file"]
    os.unlink(tmp_path / "mantik.yaml")
    with open(tmp_path / "mantik.yaml", "wb") as huge:
        huge.truncate(3 * 1024**2)
    with pytest.raises(SpecError) as caught:
        load_spec(tmp_path)
    assert [str(p) for p in caught.value.problems] == ["mantik.yaml: is larger than 2 MiB"]


def chain(length: int, cycle: bool) -> str:
    lines = ["project: p", "entry_points:", "  t: {command: python t.py}", "experiments:"]
    lines += [f"  e{i}: {{extends: e{(i + 1) % length if cycle else i + 1}}}" for i in range(length - 1)]
    lines.append(f"  e{length - 1}: " + ("{extends: e0}" if cycle else "{entry_point: t}"))
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("length,cycle", [(3000, False), (3000, True), (40, True), (40, False)])
def test_long_extends_chains_and_cycles_give_short_lines(tmp_path, length, cycle):
    # 0.1 s on a quiet machine, 10 s once beside a full CI run on the same 2 cores: the budget catches a walk
    # that never ends (a cycle followed forever), not a speed (bench/ measures that)
    found = problems(tmp_path, chain(length, cycle), budget=60.0)
    assert found and len(found) <= length // 32 + 1, found[:3]
    assert all(len(line) < 300 for line in found), found[:3]


def test_a_short_extends_cycle_names_its_members(tmp_path):
    assert problems(tmp_path, chain(2, True)) == [
        "mantik.yaml:5:17: experiments.e0.extends: extends cycle: e0 -> e1 -> e0",
        "mantik.yaml:6:17: experiments.e1.extends: extends cycle: e1 -> e0 -> e1",
    ]


def test_a_huge_value_is_quoted_in_a_line_of_bounded_length(tmp_path):
    text = BASE.replace("{a: {type: string, default: x}}", "{a: float}") + "experiments: {x: {entry_point: train, parameters: {a: "
    found = problems(tmp_path, text + "x" * 1_500_000 + "}}}\n")
    assert len(found) == 1 and found[0].startswith("mantik.yaml:6:")


def test_recursive_alias_and_deep_nesting_give_one_line(tmp_path):
    assert problems(tmp_path, "project: &a [*a]\n")
    found = problems(tmp_path, "project: " + "[" * 100_000 + "]" * 100_000 + "\n")
    assert len(found) == 1 and "nesting" in found[0]
    found = problems(tmp_path, textwrap.dedent("project: " + "{a: " * 50_000 + "1" + "}" * 50_000 + "\n"))
    assert len(found) == 1
