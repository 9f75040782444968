"""The JSON Schema of ``mantik.yaml``, generated from the pydantic model (never written by hand)."""

from __future__ import annotations

import json

SCHEMA_ID = "https://mantik-spec.dev/schemas/mantik.schema.json"
SCHEMA_FILE = "schemas/mantik.schema.json"


def json_schema() -> dict:
    from .model import Spec

    schema = Spec.model_json_schema(mode="validation")
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": SCHEMA_ID, **schema}


def schema_text() -> str:
    return json.dumps(json_schema(), indent=2, sort_keys=False) + "\n"
