"""Provenance of run records: which ended records mantik itself wrote, told apart with a key only the project holds.

Anyone who can write to the MLflow experiments can write a FINISHED record whose key matches a declared point.
With ``MANTIK_SIGNING_KEY`` set (the same value for everyone who applies to the project, and in CI; from the
environment only, never written anywhere), a record counts as a result only when its signatures hold:

- **run secret** = HMAC-SHA256(signing key, ``run\\0`` RUN_ID ``\\0`` INTENT_DIGEST), where the intent digest
  (:func:`~.tags.intent_digest`) covers the tags apply writes at intent time (key, point, attempt, commit,
  backend, identity inputs, setup, scratch): a record whose id or intent tags were changed has another secret;
- ``mantik.intent_signature`` = HMAC(run secret, ``intent``), written by apply with the intent record;
- ``mantik.end_signature`` = HMAC(run secret, ``end\\0`` STATUS), written by the in-job runner (or by apply
  when it closes a run from its job's state, only for a record whose intent signature holds).

The job never sees the signing key, only its own run secret, sealed: ``job.json`` holds the run secret XOR
HMAC(seal, RUN_ID), and the seal (``MANTIK_RUN_SEAL``, random per apply process) reaches the job's environment
the way tracking credentials do (:data:`~mantik_spec.backends.base.TRACKING_SECRETS`): never in a file. Whoever
reads both can sign the end of that one run, and nothing else. The runner drops both variables from the
user's command's environment.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Iterable, Mapping

from ..reconcile.identity import ObservedRun
from ..vocab import Provenance, RunStatus
from .tags import Tag, intent_digest

SIGNING_KEY_VARIABLE = "MANTIK_SIGNING_KEY"
SEAL_VARIABLE = "MANTIK_RUN_SEAL"  # a copy lives in mantik_spec.runner (a test holds them equal)


def signing_key() -> bytes | None:
    """The project's signing key from the environment; None when unset (provenance is then not checked)."""
    value = os.environ.get(SIGNING_KEY_VARIABLE, "")
    return value.encode() if value else None


def run_secret(key: bytes, run_id: str, digest: str) -> bytes:
    """The secret of one run record (32 bytes): what signs its intent and its end."""
    return hmac.new(key, b"run\0" + run_id.encode() + b"\0" + digest.encode(), hashlib.sha256).digest()


def _mac(secret: bytes, message: str) -> str:
    return hmac.new(secret, message.encode(), hashlib.sha256).hexdigest()


def end_message(status: str) -> str:
    return f"end\0{status}"


def intent_signature_tags(run_id: str, tags: Mapping[str, str]) -> dict[str, str]:
    """The intent signature of a record created with ``tags`` (none without a signing key)."""
    key = signing_key()
    if key is None:
        return {}
    return {Tag.INTENT_SIGNATURE: _mac(run_secret(key, run_id, intent_digest(tags)), "intent")}


def intent_holds(run: ObservedRun, key: bytes | None = None) -> bool:
    """Whether the record's intent signature holds: apply created it, with the tags it carries now."""
    key = key or signing_key()
    if key is None or not run.intent_signature:
        return False
    expected = _mac(run_secret(key, run.run_id, run.intent_digest), "intent")
    return hmac.compare_digest(run.intent_signature, expected)


def end_signature_tags(run: ObservedRun, status: RunStatus) -> dict[str, str]:
    """The end signature apply writes when it closes ``run`` as ``status`` itself (from its job's state):
    only for a record whose intent signature holds, so a forged live record is never signed into a result."""
    key = signing_key()
    if key is None or not intent_holds(run, key):
        return {}
    return {Tag.END_SIGNATURE: _mac(run_secret(key, run.run_id, run.intent_digest), end_message(status))}


def adoption_tags(run: ObservedRun) -> dict[str, str]:
    """Both signatures for an ended record as it stands (``mantik adopt``: a person vouches for it)."""
    key = signing_key()
    if key is None:
        return {}
    secret = run_secret(key, run.run_id, run.intent_digest)
    return {Tag.INTENT_SIGNATURE: _mac(secret, "intent"), Tag.END_SIGNATURE: _mac(secret, end_message(run.status))}


def check(run: ObservedRun, key: bytes | None) -> Provenance:
    """What the record's end signature says about it under ``key``."""
    if key is None or run.status.live:
        return Provenance.UNCHECKED
    expected = _mac(run_secret(key, run.run_id, run.intent_digest), end_message(run.status.value))
    return Provenance.VERIFIED if hmac.compare_digest(run.end_signature, expected) else Provenance.UNVERIFIED


def checked(runs: Iterable[ObservedRun]) -> None:
    """Set each run's ``provenance`` under this process's signing key (done on every read, cached or not)."""
    key = signing_key()
    for run in runs:
        run.provenance = check(run, key)


def sealed_run_secret(run_id: str, tags: Mapping[str, str]) -> str:
    """The run secret of a new record, sealed for its ``job.json`` (hex; "" without a signing key). Makes this
    process's seal on first use and puts it in the environment, where the backends pass it to their jobs."""
    key = signing_key()
    if key is None:
        return ""
    seal = os.environ.get(SEAL_VARIABLE) or os.environ.setdefault(SEAL_VARIABLE, secrets.token_hex(32))
    pad = hmac.new(seal.encode(), run_id.encode(), hashlib.sha256).digest()
    secret = run_secret(key, run_id, intent_digest(tags))
    return bytes(a ^ b for a, b in zip(secret, pad, strict=True)).hex()
