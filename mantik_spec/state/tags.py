"""The MLflow tag schema of a run record: what apply writes, what observe reads, what the in-job runner writes.

A run record is an MLflow run whose ``mantik.*`` tags carry its key, grid point,
identity inputs (one tag each: :data:`IDENTITY_TAGS`) and, once it ended, how; it
reads back as an :class:`~mantik_spec.reconcile.identity.ObservedRun`. Decisions read
typed values decoded here (``RunStatus``, ``FailureKind``: :mod:`mantik_spec.vocab`);
the ``mantik.failure`` text is for people only. The runner (:mod:`mantik_spec.runner`)
keeps literal copies of the names it writes, because it may import nothing but the
standard library and mlflow; a test holds the copies equal to these.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..reconcile.identity import Identity, ObservedRun
from ..spec.cost import Used
from ..vocab import FailureKind, RunStatus

LIVE = frozenset(s for s in RunStatus if s.live)
TERMINAL = frozenset(s for s in RunStatus if s.ended)


# Records written before the kind tag existed carried only the failure text; these are the beginnings
# that text had then (frozen: changing a message today must not change how old records plan).
LEGACY_FAILURE_TEXT = (
    ("submission interrupted before a job was recorded", FailureKind.INTERRUPTED),
    ("submission refused by the backend", FailureKind.REFUSED),
    ("stopped by a signal", FailureKind.SIGNALLED),
    ("cancelled", FailureKind.CANCELLED),
)


class Tag:
    """The ``mantik.*`` tag names of a run record (and of its MLflow experiment)."""

    PROJECT = "mantik.project"
    EXPERIMENT = "mantik.experiment"
    POINT = "mantik.point"
    RUN_KEY = "mantik.run_key"
    ATTEMPT = "mantik.attempt"
    COMMIT = "mantik.commit"
    CODE = "mantik.code"
    COMMAND = "mantik.command"
    PARAMETERS = "mantik.parameters"  # JSON object
    SEED = "mantik.seed"
    DATA = "mantik.data"  # JSON object: data source -> version
    ENVIRONMENT = "mantik.environment"
    BACKEND = "mantik.backend"
    JOB_ID = "mantik.job_id"
    EXIT_CODE = "mantik.exit_code"  # written by the runner
    FAILURE = "mantik.failure"  # for people: never parsed (except in records older than FAILURE_KIND)
    FAILURE_KIND = "mantik.failure_kind"  # a FailureKind value
    PREVIOUS_RUN = "mantik.previous_run"
    REPRODUCES = "mantik.reproduces"
    NOT_REPRODUCIBLE = "mantik.not_reproducible"
    SPEC = "mantik.spec"  # the spec that declared the run: its path in the repository, committed at COMMIT
    SETUP = "mantik.setup"  # digest of the environment and backend setup it was submitted with (not in its key)
    COST_NODE_HOURS = "mantik.cost.node_hours"  # nodes x time limit at submission: what the run may use, at most
    COST_USED_NODE_HOURS = "mantik.cost.used_node_hours"  # what the ended run used: written once it ended
    COST_USED_SOURCE = "mantik.cost.used_source"  # where that figure comes from: "sacct", or "limit" (at most)
    COST_USED_BILLING_HOURS = "mantik.cost.used_billing_hours"  # elapsed x the job's billing units, where known
    SCRATCH = "mantik.scratch"  # the ref keeping the working-tree snapshot COMMIT names (apply --scratch)
    TRACKING = "mantik.tracking"  # written by the runner: online, or offline (to its journal, docs/offline.md)
    # written by the runner as its job starts, in ms since the epoch: MLflow's start_time is the submission (apply
    # creates the run) and its API cannot move it, so the queue wait and the run time are read from this tag
    STARTED = "mantik.started"
    SYNC_METRICS = "mantik.sync.metrics"  # the journal's metrics rowid uploaded last (mantik_spec.state.journal)
    SYNC_ARTIFACTS = "mantik.sync.artifacts"  # digest of the journal's artifacts once all were uploaded
    # once the run's job ended: "journal" (its journal was uploaded whole) or "none" (it left no journal); either
    # way final, so the journal is never read again (mantik_spec.operations.sync)
    SYNC_COMPLETE = "mantik.sync.complete"
    INTENT_SIGNATURE = "mantik.intent_signature"  # by apply, over the intent tags (.provenance)
    END_SIGNATURE = "mantik.end_signature"  # by the runner (or apply), over the ended status (.provenance)


class MlflowTag:
    """MLflow's own system tags, set so its UI shows where a run came from."""

    RUN_NAME = "mlflow.runName"
    USER = "mlflow.user"
    SOURCE_NAME = "mlflow.source.name"
    SOURCE_TYPE = "mlflow.source.type"
    GIT_COMMIT = "mlflow.source.git.commit"
    GIT_REPO_URL = "mlflow.source.git.repoURL"
    GIT_BRANCH = "mlflow.source.git.branch"
    ENTRY_POINT = "mlflow.project.entryPoint"
    PROJECT_BACKEND = "mlflow.project.backend"


# What the in-job runner writes; it holds literal copies of these (it cannot import this package).
RUNNER_TAGS = (Tag.EXIT_CODE, Tag.FAILURE, Tag.FAILURE_KIND, Tag.END_SIGNATURE, Tag.TRACKING, Tag.STARTED)


# -- the run key's inputs: one tag each ------------------------------------------------------------------


@dataclass(frozen=True)
class IdentityTag:
    """How an :class:`Identity` field is kept in its tag: ``write`` gives the tag's value (None: no tag), ``read``
    the field's value from the tag's (None when the record has no such tag)."""

    tag: str
    write: Callable[[Any], str | None]
    read: Callable[[str | None], Any]


def _text(value: str | None) -> str:
    return value or ""


def _json(value: Mapping) -> str:
    return json.dumps(dict(value), sort_keys=True)


def _json_object(text: str | None) -> dict:
    try:
        value = json.loads(text or "{}")
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def _optional_int(value: int | None) -> str | None:
    return None if value is None else str(value)


def _int_or_none(text: str | None) -> int | None:
    """An integer tag's value; None for anything else a hand (or another tool) wrote there."""
    try:
        return int(text) if text and re.fullmatch(r"-?[0-9]+", text) else None
    except ValueError:
        return None


# ms since the epoch a runner can have written: before the year 5138; anyone who can tag a run can write a longer
# number, which the durations shown from it (a float division) could not take
LATEST_EPOCH_MS = 10**14


def _epoch_ms_or_none(text: str | None) -> int | None:
    """A moment a runner recorded (ms since the epoch); None for anything else written there."""
    value = _int_or_none(text)
    return value if value is not None and 0 <= value < LATEST_EPOCH_MS else None


IDENTITY_TAGS = {  # Identity field -> its tag: the one writer (identity_tags) and reader (decode_run) of each
    "command": IdentityTag(Tag.COMMAND, str, _text),
    "parameters": IdentityTag(Tag.PARAMETERS, _json, _json_object),
    "seed": IdentityTag(Tag.SEED, _optional_int, _int_or_none),
    "code": IdentityTag(Tag.CODE, str, _text),
    "data": IdentityTag(Tag.DATA, _json, _json_object),
    "environment": IdentityTag(Tag.ENVIRONMENT, str, _text),
}


def identity_tags(
    identity: Identity,
    *,
    project: str,
    experiment: str,
    point_id: str,
    attempt: int,
    commit: str,
    backend: str,
) -> dict[str, str]:
    """The tags of a new run record (its intent record): its key and what it hashes, and where it runs."""
    tags = {
        Tag.PROJECT: project,
        Tag.EXPERIMENT: experiment,
        Tag.POINT: point_id,
        Tag.RUN_KEY: identity.key,
        Tag.ATTEMPT: str(attempt),
        Tag.COMMIT: commit,
        Tag.BACKEND: backend,
    }
    for name, kept in IDENTITY_TAGS.items():
        value = kept.write(getattr(identity, name))
        if value is not None:
            tags[kept.tag] = value
    return tags


# the tags apply writes with the intent record that its provenance signatures cover (.provenance): decisions
# read them; tags written later (job id, exit code, failure) are not covered
SIGNED_TAGS = (
    Tag.PROJECT,
    Tag.EXPERIMENT,
    Tag.POINT,
    Tag.RUN_KEY,
    Tag.ATTEMPT,
    Tag.COMMIT,
    Tag.BACKEND,
    *(kept.tag for kept in IDENTITY_TAGS.values()),
    Tag.SETUP,
    Tag.SCRATCH,
)


def intent_digest(tags: Mapping[str, str]) -> str:
    """A digest (hex) of the signed intent tags as they stand in ``tags``: a changed, added or removed one
    changes it."""
    signed = {name: tags.get(name) for name in SIGNED_TAGS}
    return hashlib.sha256(json.dumps(signed, sort_keys=True).encode()).hexdigest()


def failure_tags(kind: FailureKind, message: str) -> dict[str, str]:
    """The tags that say why a run was closed unsuccessfully: its kind (for decisions) and a message (for people)."""
    return {Tag.FAILURE_KIND: kind.value, Tag.FAILURE: message}


def read_failure_kind(tags: Mapping[str, str]) -> FailureKind | None:
    """The recorded failure kind; for records older than the kind tag, read from the beginning of their text."""
    recorded = tags.get(Tag.FAILURE_KIND)
    if recorded:
        try:
            return FailureKind(recorded)
        except ValueError:  # written by a newer version: a kind this one does not know ran (spends a retry)
            return FailureKind.JOB_FAILED
    text = tags.get(Tag.FAILURE) or ""
    return next((kind for prefix, kind in LEGACY_FAILURE_TEXT if text.startswith(prefix)), None)


def read_hours(text: str | None) -> float | None:
    """A recorded number of hours; None for none, or for a value no writer of this tag gives."""
    try:
        value = float(text) if text else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) and value >= 0 else None


def usage_tags(used: Used) -> dict[str, str]:
    """The tags that say what an ended run used (:func:`decode_run` reads them back)."""
    tags = {Tag.COST_USED_NODE_HOURS: f"{used.node_hours:.6g}", Tag.COST_USED_SOURCE: used.source}
    if used.billing_hours is not None:
        tags[Tag.COST_USED_BILLING_HOURS] = f"{used.billing_hours:.6g}"
    return tags


def decode_run(
    *,
    run_id: str,
    experiment_id: str,
    status: str,
    tags: Mapping[str, str],
    start_time: int | None = None,
    end_time: int | None = None,
    metrics: Mapping[str, float] | None = None,
) -> ObservedRun | None:
    """A run record from an MLflow run's fields and tags; None for runs without a run key (logged by hand)."""
    key = tags.get(Tag.RUN_KEY)
    if not key:
        return None
    try:
        attempt = int(tags.get(Tag.ATTEMPT, "1"))
    except ValueError:
        attempt = 1
    try:
        run_status = RunStatus(status)
    except ValueError:  # not one of MLflow's statuses: treated as ended and failed, never as live
        run_status = RunStatus.FAILED
    return ObservedRun(
        run_id=run_id,
        experiment_id=experiment_id,
        status=run_status,
        run_key=key,
        point_id=tags.get(Tag.POINT, ""),
        attempt=attempt,
        backend=tags.get(Tag.BACKEND, ""),
        job_id=tags.get(Tag.JOB_ID) or None,
        commit=tags.get(Tag.COMMIT, ""),
        start_time=start_time,
        end_time=end_time,
        failure=tags.get(Tag.FAILURE),
        failure_kind=read_failure_kind(tags) if run_status.unsuccessful else None,
        experiment=tags.get(Tag.EXPERIMENT, ""),
        entry_point=tags.get(MlflowTag.ENTRY_POINT, ""),
        metrics=dict(metrics or {}),
        cost_node_hours=read_hours(tags.get(Tag.COST_NODE_HOURS)),
        used_node_hours=read_hours(tags.get(Tag.COST_USED_NODE_HOURS)) if tags.get(Tag.COST_USED_SOURCE) else None,
        used_source=tags.get(Tag.COST_USED_SOURCE, "") if tags.get(Tag.COST_USED_NODE_HOURS) else "",
        setup=tags.get(Tag.SETUP, ""),
        scratch=bool(tags.get(Tag.SCRATCH)),
        tracking=tags.get(Tag.TRACKING, ""),
        job_started=_epoch_ms_or_none(tags.get(Tag.STARTED)),
        journal_synced=bool(tags.get(Tag.SYNC_COMPLETE)),
        intent_digest=intent_digest(tags),
        intent_signature=tags.get(Tag.INTENT_SIGNATURE, ""),
        end_signature=tags.get(Tag.END_SIGNATURE, ""),
        **{name: kept.read(tags.get(kept.tag)) for name, kept in IDENTITY_TAGS.items()},
    )
