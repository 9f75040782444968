"""MLflow's two distributions move together, and a store written by a newer MLflow is refused in one line that
says so and how to fix it, on sqlite and on any database MLflow opens with SQLAlchemy, before MLflow's own
advice (`mlflow db upgrade`, which cannot go back) or a traceback."""

from __future__ import annotations

import re
import sqlite3
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

from mantik_spec.state.tracking import TrackingError, TrackingStore, check_database_schema

from .conftest import place_store

ROOT = Path(__file__).resolve().parent.parent
UNKNOWN = "f00dfeedbeef"  # an alembic revision no MLflow release has


def requirement(requirements: list[str], name: str) -> str:
    [found] = [r for r in requirements if re.match(rf"{re.escape(name)}\b(?![-\w])", r)]
    return found.removeprefix(name).strip()


def test_mlflow_and_its_client_are_tied_in_every_extra():
    """The [server] and test extras install mlflow, which pins mlflow-skinny to its own version: its range is
    the client's, so installing an extra cannot ask for an MLflow the client's range excludes."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    client = requirement(project["dependencies"], "mlflow-skinny")
    assert client and "<" in client  # a range with a ceiling: a new major is a deliberate step
    for extra in ("server", "test"):
        assert requirement(project["optional-dependencies"][extra], "mlflow") == client, extra


def newer(database: Path) -> None:
    with sqlite3.connect(database) as connection:
        connection.execute("UPDATE alembic_version SET version_num = ?", (UNKNOWN,))
    connection.close()


def assert_says_newer(message: str) -> None:
    installed = metadata.version("mlflow-skinny")
    assert "\n" not in message and "Traceback" not in message
    assert "newer MLflow" in message and UNKNOWN in message and installed in message
    assert "pip install -U" in message and "pip install 'mlflow==VERSION'" in message
    assert "db upgrade" not in message


def test_a_sqlite_store_of_a_newer_mlflow_is_refused_with_the_fix(tmp_path, store_template):
    database = place_store(store_template, tmp_path / ".mantik" / "mlflow.db")
    newer(database)
    before = database.read_bytes()
    with pytest.raises(TrackingError) as refused:  # at the first call: MLflow is opened when a call needs it
        TrackingStore(f"sqlite:///{database}", "p").experiment_ids()
    assert_says_newer(str(refused.value))
    assert database.read_bytes() == before


def test_a_database_store_of_a_newer_mlflow_is_refused_before_mlflow_opens_it(tmp_path, store_template):
    """The check a postgresql:// or mysql:// store gets, through SQLAlchemy, shown on a sqlite database."""
    database = place_store(store_template, tmp_path / "shared.db")
    check_database_schema(f"sqlite:///{database}")  # the installed MLflow's schema: nothing to say
    newer(database)
    with pytest.raises(TrackingError) as refused:
        check_database_schema(f"sqlite:///{database}")
    assert_says_newer(str(refused.value))
    check_database_schema(f"sqlite:///{tmp_path / 'new.db'}")  # no store yet: MLflow creates it
