"""The checked-in JSON Schema is the pydantic model's output, and the examples satisfy it."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml

from mantik_spec.spec.load import validate_document
from mantik_spec.spec.schema import SCHEMA_FILE, schema_text
from mantik_spec.spec.yamlload import load_marked

from .conftest import ROOT, mantik_command

EXAMPLES = sorted((ROOT / "examples").glob("*/mantik.yaml"))


def test_checked_in_schema_is_current():
    checked_in = (ROOT / SCHEMA_FILE).read_text()
    assert checked_in == schema_text(), (
        "schemas/mantik.schema.json is stale: run `mantik schema > schemas/mantik.schema.json`"
    )


def test_schema_command_prints_the_schema():
    printed = subprocess.run([*mantik_command(), "schema"], capture_output=True, text=True, check=True).stdout
    assert json.loads(printed) == json.loads(schema_text())


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.parent.name)
def test_example_declares_the_schema_and_satisfies_it(example: Path):
    first_line = example.read_text().splitlines()[0]
    assert first_line.startswith("# yaml-language-server: $schema=")
    referenced = (example.parent / first_line.split("$schema=", 1)[1]).resolve()
    assert referenced == (ROOT / SCHEMA_FILE).resolve()
    jsonschema.validate(yaml.safe_load(example.read_text()), json.loads((ROOT / SCHEMA_FILE).read_text()))
    # the model and its cross-checks, with the files the example reads (an MLproject, a backend config);
    # DVC-tracked data is tracked only once examples/run.sh has set the example up
    tracked_later = (example.parent / "dvc.paths").exists()
    validate_document(load_marked(example.read_text(), "mantik.yaml"), None if tracked_later else example.parent)


def test_schema_rejects_what_the_model_rejects():
    schema = json.loads((ROOT / SCHEMA_FILE).read_text())
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"project": "p", "backends": {"b": {"type": "local", "max_paralel": 2}}}, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"project": "p", "experimentz": {}}, schema)


def test_spec_reference_is_current():
    from mantik_spec.spec.reference import REFERENCE_FILE, reference_markdown

    assert (ROOT / REFERENCE_FILE).read_text() == reference_markdown(), (
        "docs/spec-reference.md is stale: run `mantik schema --format markdown > docs/spec-reference.md`"
    )
