"""apply's rules against an in-memory backend (tests/support/fake_backend.py): a real git repository and a real
MLflow sqlite store, no scheduler and no process. Each apply opens the project afresh, as each `mantik apply`
does; the fake backend outlives them, as a cluster does."""

from __future__ import annotations

import random
import shutil
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from mantik_spec.errors import UserError
from mantik_spec.operations.apply import ApplyResult, apply
from mantik_spec.operations.project import open_project
from mantik_spec.reconcile.identity import ObservedRun
from mantik_spec.state.tracking import OUTPUT_ARTIFACT, prepare_local_store
from mantik_spec.vocab import FailureKind, JobState, RunStatus

from .conftest import BASIC_SPEC, TRAIN_SCRIPT, git
from .support.fake_backend import FakeBackend


@pytest.fixture(scope="module")
def migrated(tmp_path_factory) -> Path:
    """An MLflow sqlite store with every migration applied, built once by mantik itself; each test copies it."""
    database = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    prepare_local_store(database)
    return database


@pytest.fixture
def repo(tmp_path, migrated, monkeypatch) -> Path:
    """A committed project (conftest.BASIC_SPEC: two points on backend ``local``) with its default store."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("CI", raising=False)  # CI would make apply refuse the local store
    path = tmp_path / "repo"
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    (path / "train.py").write_text(TRAIN_SCRIPT)
    (path / "mantik.yaml").write_text(BASIC_SPEC)
    git(path, "add", "-A")
    git(path, "commit", "-qm", "initial")
    (path / ".mantik").mkdir()
    shutil.copyfile(migrated, path / ".mantik" / "mlflow.db")
    (path / ".git" / "info" / "exclude").write_text("/.mantik/\n")
    return path


def declare(repo: Path, lrs: str, retries: int = 0) -> None:
    spec = BASIC_SPEC.replace("parameters: {lr: [0.1, 0.2]}", f"parameters: {{lr: {lrs}}}\n    retries: {retries}")
    (repo / "mantik.yaml").write_text(spec)
    git(repo, "commit", "-qam", "the grid")


def apply_now(repo: Path, backend: FakeBackend) -> ApplyResult:
    """`mantik apply --auto-approve` with ``backend`` as the project's backend ``local``."""
    project = open_project(repo)
    project.backends[backend.name] = backend
    return apply(project, confirm=lambda plan: True, show=lambda plan: None)


def records(repo: Path) -> dict[str, ObservedRun]:
    """The project's MLflow runs, by run id."""
    return {run.run_id: run for run in open_project(repo).store.observe()}


def jobs_per_point(backend: FakeBackend) -> Counter:
    return Counter(job.request.point_id for job in backend.jobs.values())


def test_every_run_is_recorded_before_its_job_is_asked_for_and_then_names_its_job(repo):
    fake = FakeBackend()
    at_submission: dict[str, ObservedRun] = {}
    fake.before_submit = lambda requests: at_submission.update(records(repo))

    result = apply_now(repo, fake)

    # when the backend was asked, each run existed as an intent: scheduled, carrying its key, with no job yet
    [requests] = fake.submissions  # both runs in one call
    assert {r.run_id: r.run_key for r in requests} == {r.run_id: r.run_key for r in at_submission.values()}
    assert {(r.status, r.job_id) for r in at_submission.values()} == {(RunStatus.SCHEDULED, None)}
    assert sorted(result.started) == sorted(at_submission)
    # then each run names the job started for it
    assert {run_id: run.job_id for run_id, run in records(repo).items()} == {
        run_id: fake.job_of(run_id) for run_id in at_submission
    }
    # while the jobs are queued, the next apply has nothing to do
    assert not apply_now(repo, fake).applied
    assert fake.calls["submit"] == 1


def test_a_submission_stopped_part_way_keeps_what_was_accepted_and_the_next_apply_sends_the_rest(repo):
    declare(repo, "[0.1, 0.2, 0.3]")
    fake = FakeBackend()
    fake.stop_next_submit(after=1, message="sbatch: error: QOSMaxSubmitJobPerUserLimit")

    with pytest.raises(UserError, match="backend local: sbatch: error: QOSMaxSubmitJobPerUserLimit"):
        apply_now(repo, fake)

    [requests] = fake.submissions
    accepted, *refused = (r.run_id for r in requests)
    runs = records(repo)
    assert (runs[accepted].status, runs[accepted].job_id) == (RunStatus.SCHEDULED, fake.job_of(accepted))
    for run_id in refused:  # closed, saying the backend refused them: they never ran
        assert (runs[run_id].status, runs[run_id].failure_kind, runs[run_id].job_id) == (
            RunStatus.FAILED,
            FailureKind.REFUSED,
            None,
        )

    # with no retries declared, the refused points are sent again (a refusal spends none), the accepted one not
    assert len(apply_now(repo, fake).started) == 2
    assert [r.point_id for r in fake.submissions[1]] == [runs[run_id].point_id for run_id in refused]
    assert set(jobs_per_point(fake).values()) == {1} and len(jobs_per_point(fake)) == 3


@pytest.mark.parametrize("queued", [True, False], ids=["queued", "never-queued"])
def test_a_run_whose_submission_answer_was_lost_is_adopted_or_resubmitted_never_doubled(repo, queued):
    fake = FakeBackend()
    fake.stop_next_submit(after=0, message="sbatch: Socket timed out", lost_answer=True, queued=queued)

    with pytest.raises(UserError, match="1 run.s. may have been submitted: the next plan adopts or resubmits them"):
        apply_now(repo, fake)

    [(in_doubt, never_sent)] = [[r.run_id for r in requests] for requests in fake.submissions]
    runs = records(repo)
    assert (runs[in_doubt].status, runs[in_doubt].job_id) == (RunStatus.SCHEDULED, None)  # left open
    assert (runs[never_sent].status, runs[never_sent].failure_kind) == (RunStatus.FAILED, FailureKind.REFUSED)

    apply_now(repo, fake)

    runs = records(repo)
    if queued:  # the job is found by its run id and recorded: the run goes on with it
        assert (runs[in_doubt].status, runs[in_doubt].job_id) == (RunStatus.SCHEDULED, fake.job_of(in_doubt))
    else:  # no job: the intent is closed as interrupted and its point submitted again
        assert (runs[in_doubt].status, runs[in_doubt].failure_kind) == (RunStatus.FAILED, FailureKind.INTERRUPTED)
    assert jobs_per_point(fake) == {runs[in_doubt].point_id: 1, runs[never_sent].point_id: 1}


def test_a_failed_job_is_closed_with_its_exit_code_and_output_and_retried_as_declared(repo):
    declare(repo, "[0.1]", retries=1)
    fake = FakeBackend()
    [first] = apply_now(repo, fake).started
    fake.end(fake.job_of(first), JobState.FAILED, exit_code=3, output=b"Traceback: out of patience\n")

    [second] = apply_now(repo, fake).started

    runs = records(repo)
    assert (runs[first].status, runs[first].failure_kind) == (RunStatus.FAILED, FailureKind.JOB_FAILED)
    assert (runs[second].status, runs[second].attempt) == (RunStatus.SCHEDULED, 2)
    client = open_project(repo).store.client
    assert client.get_run(first).data.tags["mantik.exit_code"] == "3"
    kept = Path(client.download_artifacts(first, OUTPUT_ARTIFACT, str(repo.parent)))
    assert kept.read_text() == "Traceback: out of patience\n"  # what the job wrote, though its runner never said

    fake.end(fake.job_of(second), JobState.TIMEOUT)
    assert apply_now(repo, fake).started == []  # no retries left
    assert records(repo)[second].failure_kind is FailureKind.TIMEOUT
    assert fake.calls["submit"] == 2


def test_intents_written_side_by_side_are_all_recorded_before_the_first_submission(repo, monkeypatch):
    """On a tracking server apply writes 8 records at a time: every intent is complete (scheduled, carrying its
    key, params logged) when the backend is asked, and the job ids come only after its answer."""
    from mantik_spec.state.tracking import TrackingStore

    monkeypatch.setenv("MANTIK_TRACKING_THREADS", "8")  # as for an http(s) store, on this test's sqlite store
    declare(repo, "[" + ", ".join(f"{n}.5" for n in range(1, 13)) + "]")
    threads: set[str] = set()
    real_call = TrackingStore._call

    def jittered(self, function, *args, **kwargs):  # calls end in another order than they started
        threads.add(threading.current_thread().name)
        time.sleep(random.random() / 200)
        return real_call(self, function, *args, **kwargs)

    monkeypatch.setattr(TrackingStore, "_call", jittered)
    fake = FakeBackend()
    at_submission: dict[str, ObservedRun] = {}
    fake.before_submit = lambda requests: at_submission.update(records(repo))

    result = apply_now(repo, fake)

    assert sum(name.startswith("mantik-record") for name in threads) > 1  # written side by side
    [requests] = fake.submissions
    assert len(requests) == 12 and {r.run_id for r in requests} == set(at_submission) == set(result.started)
    assert {(r.status, r.job_id) for r in at_submission.values()} == {(RunStatus.SCHEDULED, None)}
    assert {r.run_id: r.run_key for r in requests} == {r.run_id: r.run_key for r in at_submission.values()}
    client = open_project(repo).store.client
    assert sorted(client.get_run(run_id).data.params["lr"] for run_id in at_submission) == sorted(
        f"{n}.5" for n in range(1, 13)
    )
    assert {run_id: run.job_id for run_id, run in records(repo).items()} == {
        run_id: fake.job_of(run_id) for run_id in at_submission
    }


def test_an_intent_that_cannot_be_written_side_by_side_submits_nothing(repo, monkeypatch):
    """One intent refused by the store among runs written side by side: nothing is submitted, one error, and the
    next apply closes the intents that were written and runs every point once."""
    from mantik_spec.state.tracking import TrackingError, TrackingStore

    monkeypatch.setenv("MANTIK_TRACKING_THREADS", "4")
    declare(repo, "[0.1, 0.2, 0.3, 0.4, 0.5, 0.6]")
    real_create = TrackingStore.create_run

    def refusing(self, experiment_id, run_name, tags, params):
        if params.get("lr") == "0.4":
            raise TrackingError("MLflow at http://tracking: 503 Service Unavailable")
        return real_create(self, experiment_id, run_name, tags, params)

    monkeypatch.setattr(TrackingStore, "create_run", refusing)
    fake = FakeBackend()
    with pytest.raises(TrackingError, match="503"):
        apply_now(repo, fake)
    assert fake.submissions == []
    assert {r.status for r in records(repo).values()} <= {RunStatus.SCHEDULED}  # open intents, no job

    monkeypatch.setattr(TrackingStore, "create_run", real_create)
    apply_now(repo, fake)
    assert len(jobs_per_point(fake)) == 6 and set(jobs_per_point(fake).values()) == {1}
    assert {r.failure_kind for r in records(repo).values() if r.status is RunStatus.FAILED} <= {FailureKind.INTERRUPTED}


# -- ended runs read without MLflow -------------------------------------------------------------------------


def _ended_runs(repo: Path) -> FakeBackend:
    """Two runs applied, their jobs ended (one finished with output, one failed), closed by the next apply."""
    fake = FakeBackend()
    first, second = apply_now(repo, fake).started
    fake.end(fake.job_of(first), JobState.COMPLETED, 0, output=b"loss 0.25\n")
    fake.end(fake.job_of(second), JobState.FAILED, 2)
    apply_now(repo, fake)
    return fake


def test_status_of_ended_runs_from_the_run_cache_equals_status_from_mlflow(repo):
    """Once a full read found every run ended and nothing was written to the store since, `status` answers from
    the run cache without MLflow (no client made, no call); anything written to the store makes it read again."""
    from mantik_spec.operations.status import status_rows

    _ended_runs(repo)
    read = open_project(repo)
    from_mlflow = status_rows(read)
    assert read.store.calls > 0 and {row.state.ended for row in from_mlflow} == {True}

    again = open_project(repo)
    assert status_rows(again) == from_mlflow
    assert again.store.calls == 0 and again.store._client is None  # from the run cache: mlflow not even opened
    shutil.rmtree(repo / ".mantik" / "cache")  # no cache: MLflow itself says the same
    assert status_rows(open_project(repo)) == from_mlflow

    # a metric logged by hand on an ended run (a write the incremental read would not see): read again
    run_id = from_mlflow[0].run_id
    open_project(repo).store.client.log_metric(run_id, "loss", 0.125)
    edited = open_project(repo)
    rows = status_rows(edited)
    assert edited.store.calls > 0 and rows[0].metrics["loss"] == 0.125


def test_a_live_run_is_asked_of_mlflow_and_its_backend(repo):
    from mantik_spec.operations.status import status_rows

    fake = _ended_runs(repo)
    status_rows(open_project(repo))
    declare(repo, "[0.1, 0.2, 0.3]")
    apply_now(repo, fake)  # a third run, queued
    project = open_project(repo)
    project.backends[fake.name] = fake
    rows = {row.point_id: row for row in status_rows(project)}
    assert project.store.calls > 0 and sum(not row.state.ended for row in rows.values()) == 1
    project = open_project(repo)  # the store unchanged since, but a run was live at that read: asked again
    project.backends[fake.name] = fake
    assert {r.point_id: r for r in status_rows(project)} == rows and project.store.calls > 0


def test_logs_and_status_of_ended_runs_import_no_mlflow(repo):
    """`mantik logs` of an ended run whose output is on this machine and `status` read no MLflow module."""
    import subprocess
    import sys

    from mantik_spec.operations.control import follow_log
    from mantik_spec.operations.status import status_rows

    fake = _ended_runs(repo)
    status_rows(open_project(repo))
    project = open_project(repo)
    project.backends[fake.name] = fake
    [finished] = [r for r in project.store.observe() if r.status is RunStatus.FINISHED]
    project = open_project(repo)
    project.backends[fake.name] = fake
    assert b"".join(follow_log(project, finished.run_id[:8], follow=False)) == b"loss 0.25\n"
    assert project.store._client is None
    script = (
        "import sys; from mantik_spec.operations.project import open_project; "
        "from mantik_spec.operations.status import status_rows; "
        f"rows = status_rows(open_project({str(repo)!r})); "
        "print(len(rows), sorted(m for m in sys.modules if m.split('.')[0] in ('mlflow', 'sqlalchemy', 'alembic')))"
    )
    answer = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert answer.stdout.split(maxsplit=1) == ["2", "[]\n"]
