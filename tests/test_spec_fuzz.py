"""Hostile and broken specs: every input ends in a valid Spec or in file:line problems, never another exception."""

from __future__ import annotations

import os
import re

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mantik_spec.spec.load import validate_document
from mantik_spec.spec.yamlload import SpecError, load_marked

from .conftest import examples

# 6,000 mutated specs + 2,000 arbitrary texts + 2,000 nestings: 10,000 cases per run under CI (hypothesis profile
# "ci"); a quick sample of each in the local profile
EXAMPLES = int(os.environ.get("MANTIK_FUZZ_EXAMPLES", "6000"))
PROBLEM_LINE = re.compile(r"^mantik\.yaml(:\d+:\d+)?: ")

BASE = {
    "version": 1,
    "project": "fuzz",
    "entry_points": {
        "train": {
            "command": "python train.py --lr {lr} --n {n} --seed {seed}",
            "parameters": {"lr": "float", "n": {"type": "int", "default": 3}, "seed": "int"},
        }
    },
    "backends": {
        "local": {"type": "local", "max_parallel": 2},
        "hpc": {"type": "slurm", "resources": {"time": "1:00:00", "mem": "4G"}},
        "site": {
            "type": "unicore",
            "url": "https://site.example/JUWELS/rest/core",
            "resources": {"queue": "batch", "runtime": "1h", "memory": "4G"},
            "exclude": ["*.ckpt"],
        },
    },
    "experiments": {
        "a": {"entry_point": "train", "backend": "local", "parameters": {"lr": [0.1, 0.2]}, "seeds": 2},
        "b": {"extends": "a", "backend": "hpc"},
    },
}

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**12), 10**12),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.text(alphabet="{}%$;|&`'\"\\\n\t ", max_size=20),
    st.just("x" * 5000),
    st.sampled_from(["float", "int", "local", "slurm", "train", "a", "{lr}", "{{ x }}", "{% if %}"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)),
    max_leaves=12,
)


def paths(data, prefix=()):
    yield prefix
    if isinstance(data, dict):
        for key, value in data.items():
            yield from paths(value, (*prefix, key))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            yield from paths(value, (*prefix, index))


@st.composite
def mutated_specs(draw):
    import copy

    spec = copy.deepcopy(BASE)
    for _ in range(draw(st.integers(1, 4))):
        targets = list(paths(spec))
        path = draw(st.sampled_from(targets))
        action = draw(st.sampled_from(["replace", "add", "delete"]))
        parent = spec
        for part in path[:-1]:
            parent = parent[part]
        if not path:
            continue
        if action == "delete" and isinstance(parent, dict):
            parent.pop(path[-1], None)
        elif action == "add" and isinstance(parent, dict):
            parent[draw(st.text(max_size=15))] = draw(values)
        else:
            parent[path[-1]] = draw(values)
    return spec


def check(text: str) -> None:
    try:
        validate_document(load_marked(text, "mantik.yaml"))
    except SpecError as exc:
        assert exc.problems
        for problem in exc.problems:
            assert PROBLEM_LINE.match(str(problem)), str(problem)
            assert "\n" not in str(problem), f"a problem must be one line: {problem!r}"


@settings(max_examples=examples(EXAMPLES), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_specs())
def test_mutated_specs_give_problems_never_exceptions(spec):
    check(yaml.dump(spec, Dumper=yaml.CSafeDumper, allow_unicode=True, sort_keys=False))


@settings(max_examples=examples(EXAMPLES // 3), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=400))
def test_arbitrary_text_gives_problems_never_exceptions(text):
    check(text)


@settings(max_examples=examples(EXAMPLES // 3), deadline=None)
@given(st.integers(1, 300))
def test_deep_nesting_is_refused_with_a_line(depth):
    check("project: p\nexperiments:\n  a:\n    parameters:\n      x: " + "[" * depth + "1" + "]" * depth + "\n")


# The forms YAML 1.1 and 1.2 read differently, and their neighbours, written without quotes
UNQUOTED_FORMS = [
    "no", "yes", "on", "off", "y", "n", "NO", "Off", "true", "False", "1e-3", "1E+2", "1:30:00", "90:00", "0755", "010",
    "-010", "0o17", "0x1F", "1_000", "0b11", ".inf", "-.inf", ".nan", "~", "null", "2024-01-01", "+5", ".5", "1.",
    "1.10", "0", "00", "0.0",
]


@settings(max_examples=EXAMPLES // 6, deadline=None)
@given(
    st.lists(st.sampled_from(UNQUOTED_FORMS), min_size=1, max_size=6, unique=True),
    st.sampled_from(["string", "path", "uri", "float", "int", "bool"]),
)
def test_unquoted_forms_give_the_written_text_or_a_located_line(forms, declared):
    import shlex

    from mantik_spec.spec.experiments import expand, resolve_extends

    text = (
        "project: p\nentry_points:\n  t:\n    command: python t.py {v}\n"
        f"    parameters: {{v: {declared}}}\nexperiments:\n  a: {{entry_point: t, parameters: {{v: [{', '.join(forms)}]}}}}\n"
    )
    try:
        spec = validate_document(load_marked(text, "mantik.yaml"))
    except SpecError as exc:
        for problem in exc.problems:
            assert PROBLEM_LINE.match(str(problem)) and "\n" not in str(problem), str(problem)
        # no form names a scheme, so a uri refuses each (as MLflow does)
        assert declared not in ("string", "path") or {"~", "null"} & set(forms) or len(
            {f.lower() for f in forms}
        ) != len(forms), [str(p) for p in exc.problems]
        return
    assert declared != "uri"
    received = [shlex.split(point.command({}))[2] for point in expand(spec, resolve_extends(spec)[0])]
    if declared in ("string", "path"):
        assert sorted(received) == sorted(forms)  # a text parameter gets exactly what was written
    assert not any(f in ("0755", "010", "-010", "00") for f in forms) or declared in ("string", "path", "uri")


names = st.text(st.characters(blacklist_categories=["Cs"]), max_size=12)
hostile_text = st.text(st.characters(blacklist_categories=["Cs"], max_codepoint=0x2100), max_size=30)


@settings(max_examples=EXAMPLES // 6, deadline=None)
@given(names, hostile_text, hostile_text)
def test_variable_names_and_values_the_os_cannot_take_are_refused(name, value, parameter):
    from mantik_spec.spec.experiments import expand, resolve_extends
    from mantik_spec.spec.model import ENV_NAME
    from mantik_spec.views import printable

    spec = {
        "project": "p",
        "entry_points": {"t": {"command": "python t.py {v}", "parameters": {"v": "string"}}},
        "environments": {"e": {"variables": {name: value}}},
        "experiments": {"a": {"entry_point": "t", "environment": "e", "parameters": {"v": [parameter, "x"]}}},
    }
    text = yaml.safe_dump(spec, allow_unicode=True)
    try:
        loaded = validate_document(load_marked(text, "mantik.yaml"))
    except SpecError as exc:
        for problem in exc.problems:
            assert PROBLEM_LINE.match(str(problem)) and "\n" not in str(problem), str(problem)
        return
    assert re.match(ENV_NAME, name) and "\0" not in value and "\0" not in parameter
    for point in expand(loaded, resolve_extends(loaded)[0]):
        assert "\n" not in printable(point.point_id) and "\x1b" not in printable(point.point_id)
