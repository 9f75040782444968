"""The ``mantik.yaml`` data model.

Pydantic classes describe the format and produce the JSON Schema; they hold no
cross-references (those are checked in :mod:`mantik_spec.spec.checks`, where
every problem can be tied to a line).
"""

from __future__ import annotations

import os
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

# pydantic scans every installed distribution's entry points for plugins as each model
# is built (~20 ms); mantik uses none, and `validate` runs on every commit. The switch is
# scoped to the models defined here and restored at the end of this module.
_PLUGIN_SWITCH = "PYDANTIC_DISABLE_PLUGINS"
_plugins_setting = os.environ.get(_PLUGIN_SWITCH)
os.environ[_PLUGIN_SWITCH] = "__all__"

SPEC_VERSION = 1
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
Name = Annotated[str, Field(pattern=NAME_PATTERN, max_length=128)]
ScalarValue = bool | int | float | str
ParameterType = Literal["float", "int", "string", "bool", "path", "uri"]


class Strict(BaseModel):
    # strict: YAML already typed the values; "yes" must not quietly become True
    model_config = ConfigDict(extra="forbid", strict=True)


class Tracking(Strict):
    """Where runs are recorded. ``MLFLOW_TRACKING_URI`` overrides ``uri``."""

    uri: str = Field(
        "sqlite:///.mantik/mlflow.db",
        description="MLflow tracking URI; relative sqlite paths are taken from the project root.",
    )
    token_env: str | None = Field(None, description="Environment variable holding a bearer token.")
    username_env: str | None = Field(None, description="Environment variable holding the user name.")
    password_env: str | None = Field(None, description="Environment variable holding the password.")


class Code(Strict):
    paths: list[str] | None = Field(
        None,
        description="Files and directories whose committed content identifies the code "
        "(default: the whole tree except mantik.yaml and .mantik/).",
    )


class Parameter(Strict):
    type: ParameterType = "string"
    default: ScalarValue | None = None
    description: str | None = None


class EntryPoint(Strict):
    command: str = Field(..., description="Command template; {name} is replaced by the quoted parameter value.")
    parameters: dict[Name, Parameter] = Field(
        default_factory=dict, description="Declared parameters; `lr: float` is short for `lr: {type: float}`."
    )

    @field_validator("parameters", mode="before", json_schema_input_type=dict[Name, Parameter | ParameterType])
    @classmethod
    def _expand_shorthand(cls, value):
        if isinstance(value, dict):
            return {k: {"type": v} if isinstance(v, str) else v for k, v in value.items()}
        return value


class DataSource(Strict):
    path: str | None = Field(None, description="A DVC-tracked file or directory in the repository.")
    url: str | None = Field(None, description="A remote location, pinned by version and/or sha256.")
    version: str | None = None
    sha256: str | None = None
    unpinned: bool = Field(False, description="Allow an unpinned url; its runs are not reproducible.")


class Environment(Strict):
    apptainer: str | None = Field(None, description="Apptainer image file or absolute remote path.")
    venv: str | None = Field(None, description="Path of a Python virtual environment to activate.")
    requirements: str | None = Field(None, description="Lock or requirements file identifying the environment.")
    modules: list[str] = Field(default_factory=list)
    variables: dict[str, str] = Field(default_factory=dict)


class LocalBackend(Strict):
    """Detached processes on this machine."""

    type: Literal["local"]
    max_parallel: int = Field(1, ge=1, le=1024, description="Runs executing at once; the rest wait in a queue.")
    environment: str | None = Field(None, description="Default environment for runs on this backend.")


# Becomes a union tagged by `type` as backends are added (each one a model here and a module in backends/).
Backend = LocalBackend

GridValue = ScalarValue | list[ScalarValue]


class Experiment(Strict):
    extends: Name | None = Field(None, description="Inherit every field not set here from another experiment.")
    entry_point: Name | None = None
    backend: Name | None = None
    environment: Name | None = None
    data: list[Name] | None = None
    parameters: dict[Name, GridValue] | None = Field(
        None, description="Parameter values; a list is a grid axis (the runs are its cartesian product)."
    )
    seeds: Annotated[int, Field(ge=1, le=10_000)] | list[int] | None = Field(
        None, description="A count (seeds 0..N-1) or an explicit list of seeds."
    )
    retries: int | None = Field(None, ge=0, le=100, description="Resubmissions allowed after a failed attempt.")
    suspend: bool | None = Field(None, description="Submit nothing new for this experiment.")


class Spec(Strict):
    model_config = ConfigDict(extra="forbid", strict=True, title="mantik.yaml")

    version: Literal[1] = SPEC_VERSION
    project: Name
    tracking: Tracking = Field(default_factory=Tracking)
    code: Code = Field(default_factory=Code)
    entry_points: dict[Name, EntryPoint] = Field(default_factory=dict)
    data: dict[Name, DataSource] = Field(default_factory=dict)
    environments: dict[Name, Environment] = Field(default_factory=dict)
    backends: dict[Name, Backend] = Field(default_factory=lambda: {"local": LocalBackend(type="local")})
    experiments: dict[Name, Experiment] = Field(default_factory=dict)


if _plugins_setting is None:
    del os.environ[_PLUGIN_SWITCH]
else:
    os.environ[_PLUGIN_SWITCH] = _plugins_setting
