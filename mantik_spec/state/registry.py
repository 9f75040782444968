"""MLflow's model registry as promotion sees it: reading the declared models, finding a run's model, and
writing versions and aliases (docs/models.md).

Reads and writes go through the tracking store's client (the registry lives at the tracking URI, on the sqlite
store as on an ``mlflow server``), counted and turned into :class:`~.tracking.TrackingError` like every other
call. Nothing here deletes: versions stay, aliases move.
"""

from __future__ import annotations

import contextlib
import os
import posixpath

from ..reconcile.promotion import ModelSource, ObservedModel, ObservedVersion
from ..vocab import RunStatus
from .tags import Tag
from .tracking import TrackingError, TrackingStore, _quote

PAGE_SIZE = 1000
MLMODEL = "MLmodel"  # the file that makes a directory an MLflow model (mlflow.models.model.MLMODEL_FILE_NAME)


class VersionTag:
    """The ``mantik.*`` tags of a model version apply registers: where it came from, for people and the UI."""

    PROJECT = Tag.PROJECT
    EXPERIMENT = Tag.EXPERIMENT
    RUN_KEY = Tag.RUN_KEY
    POINT = Tag.POINT
    COMMIT = Tag.COMMIT
    METRIC = "mantik.metric"  # the metric's name
    METRIC_VALUE = "mantik.metric_value"  # its last value in the run, as repr() writes it


def observe_models(store: TrackingStore, names: list[str]) -> dict[str, ObservedModel]:
    """Each named registered model: its versions (number, run id, source) and aliases; one that does not
    exist yet reads as ``ObservedModel(name)``. Two calls per model and one more per 1,000 versions."""
    return {name: _observe(store, name) for name in names}


def _observe(store: TrackingStore, name: str) -> ObservedModel:
    from mlflow.exceptions import MlflowException

    def read():
        try:
            return store.client.get_registered_model(name)
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise

    registered = store.call(read)
    if registered is None:
        return ObservedModel(name)
    found = store.paged(
        store.client.search_model_versions, filter_string=f"name = '{_quote(name)}'", max_results=PAGE_SIZE
    )
    versions = [ObservedVersion(str(v.version), v.run_id or None, v.source or "") for v in found]
    aliases = {alias: str(version) for alias, version in (registered.aliases or {}).items()}  # sqlite: int
    return ObservedModel(name, True, tuple(versions), aliases)


def model_source(store: TrackingStore, run_id: str, artifact: str) -> ModelSource | None:
    """Where run ``run_id`` keeps the model at ``artifact``, as ``mlflow.register_model('runs:/RUN/ARTIFACT')``
    finds it (mlflow/tracking/_model_registry/fluent.py): a directory of the run's artifacts holding an
    ``MLmodel`` file, else the logged model of that name whose source run it is (MLflow 3's ``log_model``;
    the one logged at the largest step); None when there is neither."""
    with _global_tracking_uri(store.uri):  # listing a path that names a logged model reads it through that
        return _model_source(store, run_id, artifact)


def _model_source(store: TrackingStore, run_id: str, artifact: str) -> ModelSource | None:
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    run = store.call(store.client.get_run, run_id)
    # the run's own artifacts (the client's listing of runs:/ falls back to a logged model of that name)
    try:
        repository = get_artifact_repository(run.info.artifact_uri, tracking_uri=store.uri)
        listed = store.call(repository.list_artifacts, artifact)
    except TrackingError:
        raise
    except Exception as exc:  # noqa: BLE001 - an artifact store's own client (S3, Azure, GCS...) failing here
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TrackingError(f"cannot list the artifacts of run {run_id} ({run.info.artifact_uri}): {first}") from exc
    if any(posixpath.basename(f.path) == MLMODEL and not f.is_dir for f in listed):
        return ModelSource(posixpath.join(run.info.artifact_uri.rstrip("/"), artifact))
    found = store.paged(
        store.client.search_logged_models,
        experiment_ids=[run.info.experiment_id],
        filter_string=f"name = '{_quote(artifact)}'",
    )
    logged = [m for m in found if m.source_run_id == run_id]
    if not logged:
        return None
    steps = {output.model_id: output.step for output in (run.outputs.model_outputs if run.outputs else [])}
    chosen = max(logged, key=lambda m: (steps.get(m.model_id, -1), m.creation_timestamp or 0))
    return ModelSource(f"models:/{chosen.model_id}", chosen.model_id)


def register(store: TrackingStore, name: str, run_id: str, run_key: str, source: ModelSource, tags: dict) -> str:
    """The version of model ``name`` that points at ``source`` of run ``run_id``: an existing one, looked up by
    the run (a second apply adds nothing), else a new one carrying ``tags``. Refuses (TrackingError) a run that
    is not a FINISHED run carrying ``run_key`` of this project: only this project's results are registered."""
    from mlflow.exceptions import MlflowException

    run = store.call(store.client.get_run, run_id)
    recorded = run.data.tags
    if (
        run.info.status != RunStatus.FINISHED
        or recorded.get(Tag.RUN_KEY) != run_key
        or run.info.experiment_id not in store.experiment_ids()
    ):
        raise TrackingError(f"run {run_id} is no longer a finished run of this project with key {run_key[:12]}")
    existing = _versions_of_run(store, name, run_id)
    found = sorted(int(v.version) for v in existing if v.source == source.source)
    if found:
        return str(found[0])

    def create_model() -> None:
        try:
            store.client.create_registered_model(name, tags={Tag.PROJECT: store.project})
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise

    store.call(create_model)
    with _global_tracking_uri(store.uri):
        version = store.call(
            store.client.create_model_version,
            name,
            source.source,
            run_id=run_id,
            tags=tags,
            model_id=source.model_id,
            await_creation_for=0,
        )
    return str(version.version)


@contextlib.contextmanager
def _global_tracking_uri(uri: str):
    """MLflow finds a logged model named by a ``models:/<model_id>`` source, or by a run's artifact path, through
    the process's global tracking URI, not its client's (a TODO in mlflow/store/model_registry/sqlalchemy_store.py
    ``create_model_version``; mlflow/store/artifact/runs_artifact_repo.py): it is ``uri`` for the call, and it
    and ``MLFLOW_TRACKING_URI`` are as before after."""
    from mlflow.tracking._tracking_service import utils

    variable = os.environ.get("MLFLOW_TRACKING_URI")
    try:
        with utils._use_tracking_uri(uri):
            yield
    finally:
        if variable is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = variable


def _versions_of_run(store: TrackingStore, name: str, run_id: str) -> list:
    from mlflow.exceptions import MlflowException

    def search():
        try:
            return list(store.client.search_model_versions(f"run_id = '{_quote(run_id)}'", max_results=PAGE_SIZE))
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                return []
            raise

    return [v for v in store.call(search) if v.name == name]


def set_alias(store: TrackingStore, name: str, alias: str, version: str) -> None:
    store.call(store.client.set_registered_model_alias, name, alias, version)


def alias_target(store: TrackingStore, name: str, alias: str) -> tuple[str, str | None] | None:
    """(version, run id) the alias points at, or None when the model or the alias does not exist."""
    from mlflow.exceptions import MlflowException

    def read():
        try:
            return store.client.get_model_version_by_alias(name, alias)
        except MlflowException as exc:
            if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
                return None
            raise

    version = store.call(read)
    return None if version is None else (str(version.version), version.run_id or None)
