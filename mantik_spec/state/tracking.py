"""MLflow as the only state store: observing the project's runs and writing run records.

Runs are read in pages (one call per page, never one per run). Each run carries
its run key, point id and identity inputs as ``mantik.*`` tags beside MLflow's
own ``mlflow.source.*`` system tags, so the MLflow UI shows where it came from.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

from ..spec.model import Tracking
from .tags import LIVE, TERMINAL, MlflowTag, ObservedRun, RunStatus, Tag, decode_run

# the run record's tag schema lives in .tags; its names are re-exported here for callers of the store
__all__ = ["LIVE", "TERMINAL", "ObservedRun", "RunStatus", "Tag", "TrackingError", "TrackingStore"]

PAGE_SIZE = 1000
DEFAULT_URI = "sqlite:///.mantik/mlflow.db"
OUTPUT_ARTIFACT = "mantik/output.log"  # where the in-job runner keeps the run's output
# MLflow's HTTP client retries an unreachable server for minutes by default; a CI job should fail
# within seconds with one line, and the next apply repairs. Users' own settings win.
HTTP_RETRY_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}


class TrackingError(Exception):
    """The tracking store could not be reached or refused a request."""


def resolve_tracking_uri(tracking: Tracking, project_root: Path) -> str:
    """``MLFLOW_TRACKING_URI`` wins; a relative sqlite path is taken from the project root."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or tracking.uri
    if urlparse(uri).password:
        # the URI is handed to every job and written into its job description: keep secrets out of it
        raise TrackingError("the tracking URI carries a password: set MLFLOW_TRACKING_USERNAME/_PASSWORD instead")
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        database = (project_root / uri[len("sqlite:///") :]).resolve()
        database.parent.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{database}"
    return uri


def tracking_credentials(tracking: Tracking) -> dict[str, str]:
    """MLflow's client variables, filled from the variables the spec names (never from the spec)."""
    mapping = {
        "MLFLOW_TRACKING_TOKEN": tracking.token_env,
        "MLFLOW_TRACKING_USERNAME": tracking.username_env,
        "MLFLOW_TRACKING_PASSWORD": tracking.password_env,
    }
    return {target: os.environ[source] for target, source in mapping.items() if source and source in os.environ}


def _silence_mlflow_logging() -> None:
    import logging

    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)


class TrackingStore:
    """The project's view of one MLflow tracking server or database."""

    def __init__(self, uri: str, project: str):
        from mlflow.tracking import MlflowClient

        _silence_mlflow_logging()  # after the import: mlflow configures its loggers when imported
        for name, value in HTTP_RETRY_DEFAULTS.items():
            os.environ.setdefault(name, value)

        self.uri = uri
        self.project = project
        self.client = MlflowClient(tracking_uri=uri)
        self.calls = 0  # requests made, printed with -v and by the bench

    def _call(self, function, *args, **kwargs):
        from mlflow.exceptions import MlflowException

        self.calls += 1
        try:
            return function(*args, **kwargs)
        except MlflowException as exc:
            raise TrackingError(f"MLflow at {_safe_uri(self.uri)}: {exc.message.splitlines()[0]}") from exc
        except OSError as exc:
            raise TrackingError(f"MLflow at {_safe_uri(self.uri)} unreachable: {exc}") from exc

    # experiments -------------------------------------------------------------------------------

    def experiment_name(self, experiment: str) -> str:
        return f"{self.project}/{experiment}"

    def experiment_ids(self) -> dict[str, str]:
        """MLflow experiment id -> mantik experiment name, for this project."""
        ids, token = {}, None
        while True:
            page = self._call(
                self.client.search_experiments,
                filter_string=f"tags.`{Tag.PROJECT}` = '{_quote(self.project)}'",
                max_results=PAGE_SIZE,
                page_token=token,
            )
            ids.update({e.experiment_id: e.tags.get(Tag.EXPERIMENT, e.name) for e in page})
            token = page.token
            if not token:
                return ids

    def ensure_experiment(self, experiment: str, known: dict[str, str]) -> str:
        for experiment_id, name in known.items():
            if name == experiment:
                return experiment_id
        name = self.experiment_name(experiment)
        existing = self._call(self.client.get_experiment_by_name, name)
        if existing is not None and existing.lifecycle_stage == "deleted":
            raise TrackingError(
                f"the MLflow experiment '{name}' was deleted; restore it (`mlflow experiments restore`) "
                "or permanently delete it before applying again"
            )
        if existing is not None:  # made by hand or by an older version: adopt it
            experiment_id = existing.experiment_id
            self._call(self.client.set_experiment_tag, experiment_id, Tag.PROJECT, self.project)
            self._call(self.client.set_experiment_tag, experiment_id, Tag.EXPERIMENT, experiment)
        else:  # apply holds the project lock: nobody else creates it meanwhile
            experiment_id = self._call(
                self.client.create_experiment,
                name,
                artifact_location=self._artifact_location(),
                tags={Tag.PROJECT: self.project, Tag.EXPERIMENT: experiment},
            )
        known[experiment_id] = experiment
        return experiment_id

    def _artifact_location(self) -> str | None:
        # sqlite stores default to ./mlruns under whatever directory the CLI ran in: keep artifacts beside the db
        if self.uri.startswith("sqlite:///"):
            return (Path(self.uri[len("sqlite:///") :]).parent / "artifacts").as_uri()
        return None

    # runs --------------------------------------------------------------------------------------

    def observe(self) -> list[ObservedRun]:
        """Every active run of the project, one paged scan."""
        from mlflow.entities import ViewType

        experiment_ids = list(self.experiment_ids())
        runs: list[ObservedRun] = []
        token = None
        while experiment_ids:
            page = self._call(
                self.client.search_runs,
                experiment_ids,
                run_view_type=ViewType.ACTIVE_ONLY,
                max_results=PAGE_SIZE,
                page_token=token,
            )
            runs.extend(observed for run in page if (observed := _observed(run)) is not None)
            token = page.token
            if not token:
                break
        return runs

    def create_run(self, experiment_id: str, run_name: str, tags: dict[str, str], params: dict[str, str]) -> str:
        """The intent record: created SCHEDULED, with its key, before anything is submitted."""
        from mlflow.entities import Param

        run = self._call(
            self.client.create_run, experiment_id, tags={**tags, MlflowTag.RUN_NAME: run_name}, run_name=run_name
        )
        run_id = run.info.run_id
        if params:
            self._call(self.client.log_batch, run_id, params=[Param(k, v) for k, v in params.items()])
        self._call(self.client.update_run, run_id, status=RunStatus.SCHEDULED.value)
        return run_id

    def run_status(self, run_id: str) -> RunStatus:
        return RunStatus(self._call(self.client.get_run, run_id).info.status)

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        self._call(self.client.log_batch, run_id, tags=[RunTag(k, v) for k, v in tags.items()])

    def log_output(self, run_id: str, output: bytes) -> None:
        """Keep a job's output as the run's log artifact, where the runner would have put it."""
        self._call(self.client.log_text, run_id, output.decode(errors="replace"), OUTPUT_ARTIFACT)

    def terminate(self, run_id: str, status: RunStatus, tags: dict[str, str] | None = None) -> None:
        if tags:
            self.set_tags(run_id, tags)
        self._call(self.client.set_terminated, run_id, RunStatus(status).value)

    # the project lock uses registered-model names: the one create-if-absent primitive every store has

    def create_lock_record(self, name: str, tags: dict[str, str]) -> bool:
        from mlflow.exceptions import MlflowException

        self.calls += 1
        try:
            self.client.create_registered_model(name, tags=tags, description="mantik-spec project lock")
            return True
        except MlflowException as exc:
            # Taken. MLflow's sqlite store, on finding the name taken, reads the holder's record; when the
            # holder released it in between, that read fails as "does not exist": taken then, free now.
            if exc.error_code in ("RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST"):
                return False
            raise TrackingError(f"MLflow at {_safe_uri(self.uri)}: {exc.message.splitlines()[0]}") from exc

    def read_lock_record(self, name: str) -> dict[str, str] | None:
        from mlflow.exceptions import MlflowException

        self.calls += 1
        try:
            return dict(self.client.get_registered_model(name).tags)
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise TrackingError(f"MLflow at {_safe_uri(self.uri)}: {exc.message.splitlines()[0]}") from exc

    def delete_lock_record(self, name: str) -> None:
        self._call(self.client.delete_registered_model, name)


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\'")


def _safe_uri(uri: str) -> str:
    parsed = urlparse(uri)
    if parsed.password or parsed.username:
        return uri.replace(parsed.netloc, parsed.hostname or "", 1)
    return uri


def _observed(run) -> ObservedRun | None:
    return decode_run(
        run_id=run.info.run_id,
        experiment_id=run.info.experiment_id,
        status=run.info.status,
        tags=run.data.tags,
        start_time=run.info.start_time,
        end_time=run.info.end_time,
        metrics=run.data.metrics,
    )
