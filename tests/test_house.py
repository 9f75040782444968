"""House rules a reviewer would otherwise check by hand."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ROOT
from .support.fake_backend import FakeBackend


def test_ruff_finds_nothing():
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "mantik_spec", "tests", "bench"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_runner_needs_only_the_standard_library_and_mlflow():
    """Jobs on HPC nodes have Python and mlflow, not mantik-spec: the runner must not import the package."""
    tree = ast.parse((ROOT / "mantik_spec" / "runner.py").read_text())
    imports = {
        alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names
    }
    imports |= {
        node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module
    }
    assert all(node.level == 0 for node in ast.walk(tree) if isinstance(node, ast.ImportFrom))
    allowed = set(sys.stdlib_module_names) | {"mlflow"}
    assert imports <= allowed, imports - allowed


def test_mypy_finds_nothing():
    """The type check proves every registered backend implements the Backend protocol (see backends/__init__.py)."""
    result = subprocess.run([sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_backend_type_is_registered_and_type_checked():
    from typing import get_args

    from mantik_spec.backends import BACKENDS, backend_class
    from mantik_spec.spec.model import BackendConfig

    declared = {get_args(config.model_fields["type"].annotation)[0] for config in get_args(get_args(BackendConfig)[0])}
    assert set(BACKENDS) == declared
    # the table mypy checks (under TYPE_CHECKING, so read from the source) names the same classes
    tree = ast.parse((ROOT / "mantik_spec" / "backends" / "__init__.py").read_text())
    checked = next(
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.AnnAssign) and ast.unparse(node.target) == "CHECKED"
    )
    assert isinstance(checked, ast.Dict)
    pairs = {ast.literal_eval(k): ast.unparse(v) for k, v in zip(checked.keys, checked.values, strict=True)}
    assert pairs == {kind: name for kind, (_, name) in BACKENDS.items()}
    for kind, (_, name) in BACKENDS.items():
        assert backend_class(kind).__name__ == name


def test_only_the_registry_decides_by_backend_type():
    """A new backend is its config, its module and a registry line: no other module branches on a backend's
    ``type`` or on its concrete class (capabilities are data on the protocol: ``launches_in_allocation``,
    ``shares_files``, ``stats()``; per-type checks are each config's ``problems()``)."""
    from mantik_spec.backends import BACKENDS

    concrete = {name for _, name in BACKENDS.values()} | {"LocalHost", "SSHHost"}
    concrete |= {f"{kind.capitalize()}Config" for kind in BACKENDS}
    registry = ROOT / "mantik_spec" / "backends" / "__init__.py"
    found = []
    for path in sorted((ROOT / "mantik_spec").rglob("*.py")):
        if path == registry:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            where = f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.Compare):
                sides = [node.left, *node.comparators]
                by_type = any(
                    (isinstance(side, ast.Attribute) and side.attr == "type")
                    or (isinstance(side, ast.Name) and side.id == "backend_type")
                    for side in sides
                )
                if by_type and any(
                    isinstance(side, ast.Constant) and side.value in BACKENDS for side in ast.walk(node)
                ):
                    found.append(f"{where}: {ast.unparse(node)}")
            elif isinstance(node, ast.Call) and ast.unparse(node.func) == "isinstance" and len(node.args) == 2:
                named = {n.id if isinstance(n, ast.Name) else n.attr for n in ast.walk(node.args[1])
                         if isinstance(n, (ast.Name, ast.Attribute))}  # fmt: skip
                if named & concrete:
                    found.append(f"{where}: {ast.unparse(node)}")
    assert not found, "decide through the Backend protocol or the config's problems(), not by type:\n" + "\n".join(
        found
    )


def test_backend_errors_carry_the_answer_status_as_data():
    from mantik_spec.backends.base import BackendError, CommandTimeout, SubmissionFailed

    assert BackendError("the site answered 404: gone", status=404).status == 404
    assert CommandTimeout("no answer").status is None
    failed = SubmissionFailed("stopped", {"run": "job"}, ["other"])
    assert (failed.status, failed.submitted, failed.refused, failed.unknown) == (None, {"run": "job"}, ["other"], [])


# exceptions that never reach a user: each is caught where it is raised and turned into something else
INTERNAL_EXCEPTIONS = {
    "mantik_spec.runner._CancelledBeforeStart",  # the runner's own control flow
    "mantik_spec.spec.experiments.QuotingError",  # becomes a validate finding naming file:line
}


def test_every_error_of_the_package_is_a_mantik_error():
    """One hierarchy, one handler: the CLI prints a MantikError as one line and exit 1; an error type outside it
    would reach the user as a traceback."""
    import importlib
    import inspect
    import pkgutil

    import mantik_spec
    from mantik_spec.errors import MantikError

    found = {}
    for module_info in pkgutil.walk_packages(mantik_spec.__path__, "mantik_spec."):
        if module_info.name == "mantik_spec.__main__":  # runs the CLI when imported
            continue
        module = importlib.import_module(module_info.name)
        for name, value in vars(module).items():
            if inspect.isclass(value) and issubclass(value, BaseException) and value.__module__ == module.__name__:
                found[f"{module.__name__}.{name}"] = value
    assert len(found) >= 10  # the walk found the package's errors
    outside = {name for name, error in found.items() if not issubclass(error, MantikError)}
    assert outside == INTERNAL_EXCEPTIONS


def test_a_version_error_reaches_the_user_as_one_line(capsys):
    """An error type the CLI did not list by hand used to escape as a traceback; every MantikError prints alike."""
    from mantik_spec.cli import exit_status
    from mantik_spec.dvcfiles import VersionError

    def broken():
        raise VersionError("data/train.csv: no version (not tracked by DVC, no url pin)")

    assert exit_status(broken) == 1
    assert capsys.readouterr().err == "Error: data/train.csv: no version (not tracked by DVC, no url pin)\n"


def test_every_verb_has_its_place_and_line_in_help():
    """`mantik --help` lists the verbs in WorkflowGroup.ORDER, each with its SUMMARY line: a new verb needs both."""
    from mantik_spec.cli import WorkflowGroup, main

    verbs = set(main.commands)
    assert sorted(WorkflowGroup.ORDER) == sorted(verbs)  # each verb once
    assert set(WorkflowGroup.SUMMARY) == verbs


def test_choosing_a_backend_imports_only_its_module():
    """`validate` and `--help` import no backend; a project with Slurm backends never imports pyunicore."""
    code = (
        "import sys\n"
        "from mantik_spec.backends import backend_class\n"
        "assert not any(m.startswith('pyunicore') for m in sys.modules), 'registry'\n"
        "backend_class('slurm'); backend_class('local')\n"
        "assert not any(m.startswith('pyunicore') for m in sys.modules), 'slurm'\n"
        "backend_class('firecrest')\n"
        "assert not any(m.split('.')[0] == 'firecrest' for m in sys.modules), 'firecrest: imported on first use'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_the_runner_writes_the_tag_schema():
    """The runner cannot import the package, so it keeps copies of the names it writes: they must not drift."""
    from mantik_spec import runner
    from mantik_spec.state.provenance import SEAL_VARIABLE, SIGNING_KEY_VARIABLE
    from mantik_spec.state.tags import RUNNER_TAGS, Tag
    from mantik_spec.vocab import FailureKind, RunStatus

    assert (
        runner.EXIT_CODE_TAG,
        runner.FAILURE_TAG,
        runner.FAILURE_KIND_TAG,
        runner.END_SIGNATURE_TAG,
        runner.TRACKING_TAG,
        runner.STARTED_TAG,
    ) == RUNNER_TAGS
    assert (Tag.EXIT_CODE, Tag.FAILURE, Tag.FAILURE_KIND, Tag.END_SIGNATURE, Tag.TRACKING, Tag.STARTED) == RUNNER_TAGS
    assert runner.PRIVATE_VARIABLES == (SIGNING_KEY_VARIABLE, SEAL_VARIABLE)
    from mantik_spec.state import journal

    assert (runner.JOURNAL_DB, runner.JOURNAL_ARTIFACTS) == (journal.JOURNAL_DB, journal.ARTIFACTS)
    assert FailureKind(runner.SIGNALLED_KIND) is FailureKind.SIGNALLED
    assert {runner.RUNNING, runner.FINISHED, runner.FAILED, runner.KILLED} <= {s.value for s in RunStatus}
    # and it names no other tag
    tree = ast.parse((ROOT / "mantik_spec" / "runner.py").read_text())
    strings = {node.value for node in ast.walk(tree) if isinstance(node, ast.Constant) and isinstance(node.value, str)}
    assert {text for text in strings if text.startswith("mantik.")} == set(RUNNER_TAGS)


def test_a_status_row_has_a_word_for_every_job_state_and_run_status():
    """`mantik status` shows MLflow's status of an ended run and the job's state of a live one: a state added
    to either has a row state, and a row is final exactly when the status or state it shows is."""
    from mantik_spec.vocab import JobState, RowState, RunStatus

    for state in JobState:
        assert RowState.of_job(state).value == state.value
        assert RowState.of_job(state).ended is state.ended
    for status in RunStatus:
        if status.ended:
            assert RowState.of_run(status).ended
    assert {row for row in RowState if row.succeeded} == {RowState.FINISHED, RowState.COMPLETED}
    assert not {RowState.NOT_SUBMITTED, RowState.SUSPENDED, RowState.SUBMITTING} & {r for r in RowState if r.ended}


# -- the tag schema against a real MLflow store ------------------------------------------------------


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from mantik_spec.state.tracking import TrackingStore

    database = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    return f"sqlite:///{database}", TrackingStore


def _project_store(store, project):
    uri, TrackingStore = store
    return TrackingStore(uri, project)


def test_a_run_record_reads_back_as_written(store):
    """Every field of the record round-trips through MLflow, and every input of its key has a tag of its own:
    an :class:`Identity` field without one (or without a reason for a plan to give) fails here."""
    from dataclasses import fields

    from mantik_spec.reconcile.identity import INPUTS, Identity, ObservedRun, recorded_identity
    from mantik_spec.state.tags import IDENTITY_TAGS, Tag, failure_tags, identity_tags
    from mantik_spec.vocab import FailureKind, RunStatus

    names = [each.name for each in fields(Identity)]
    assert list(IDENTITY_TAGS) == names
    assert [each.name for each in INPUTS] == names
    assert set(names) <= {each.name for each in fields(ObservedRun)}  # what recorded_identity reads
    assert len({kept.tag for kept in IDENTITY_TAGS.values()}) == len(names)

    tracking = _project_store(store, "roundtrip")
    experiment_id = tracking.ensure_experiment("sweep", tracking.experiment_ids())
    identity = Identity(
        command="python train.py --lr {lr}",
        parameters={"lr": 0.1, "name": "a b"},
        seed=2,
        code="tree:abc",
        data={"era5": "md5:0123"},
        environment="torch:sha256:ff",
    )
    assert all(value not in (None, "", {}) for value in identity.inputs().values())  # none reads back by default
    written = {
        "experiment": "sweep",
        "point_id": "sweep[lr=0.1,seed=2]",
        "attempt": 2,
        "commit": "c" * 40,
        "backend": "cluster",
    }
    tags = identity_tags(identity, project="roundtrip", **written) | {"mlflow.project.entryPoint": "train"}
    run_id = tracking.create_run(experiment_id, written["point_id"], tags, {"lr": "0.1"})
    tracking.set_tags(run_id, {Tag.JOB_ID: "4242"})
    tracking.terminate(run_id, RunStatus.FAILED, failure_tags(FailureKind.TIMEOUT, "job 4242 ended TIMEOUT"))

    [run] = tracking.observe()
    assert (run.run_id, run.experiment_id, run.status) == (run_id, experiment_id, RunStatus.FAILED)
    assert {name: getattr(run, name) for name in written} == written
    assert (recorded_identity(run), run.run_key) == (identity, identity.key)
    assert (run.job_id, run.entry_point, run.live) == ("4242", "train", False)
    assert (run.failure_kind, run.failure) == (FailureKind.TIMEOUT, "job 4242 ended TIMEOUT")


# Records as versions before the failure kind tag wrote them: the failure text only. Each point has no
# retries left, so whether the old record spent one decides between `~ retry` and `x failed`.
LEGACY_RECORDS = [
    # (lr, status, tags besides the identity, the action the plan must give)
    (0.1, "FAILED", {"mantik.failure": "submission refused by the backend: backend cluster: bad partition"}, "retry"),
    (0.2, "FAILED", {"mantik.failure": "submission interrupted before a job was recorded; resubmitting"}, "retry"),
    (0.3, "FAILED", {"mantik.failure": "submission interrupted before a job was recorded"}, "retry"),
    (0.4, "FAILED", {"mantik.job_id": "7", "mantik.failure": "job 7 ended FAILED (exit 3); no retries left"}, "failed"),
    (0.5, "FAILED", {"mantik.job_id": "8", "mantik.exit_code": "3"}, "failed"),  # closed by the runner
    (
        0.6,
        "KILLED",
        {"mantik.job_id": "9", "mantik.exit_code": "143", "mantik.failure": "stopped by a signal (SIGTERM)"},
        "failed",
    ),
    (0.7, "KILLED", {"mantik.job_id": "10", "mantik.failure": "cancelled by `mantik cancel`"}, "failed"),
]
NEW_KINDS = ["refused", "interrupted", "interrupted", "job_failed", None, "signalled", "cancelled"]


def _write_records(tracking, records, kinds=None, live=False):
    from mlflow.tracking import MlflowClient

    from .support.planning import desired, point

    client = MlflowClient(tracking.uri)
    experiment_id = tracking.ensure_experiment("sweep", tracking.experiment_ids())
    wants = []
    for index, (lr, status, extra, _) in enumerate(records):
        want = desired(point(lr=lr))  # the identity does not depend on retries or suspension
        wants.append(want)
        tags = {
            "mantik.project": tracking.project,
            "mantik.experiment": "sweep",
            "mantik.point": want.point.point_id,
            "mantik.run_key": want.key,
            "mantik.attempt": "1",
            "mantik.commit": "c0ffee0",
            "mantik.code": want.identity.code,
            "mantik.command": want.identity.command,
            "mantik.parameters": json.dumps(want.identity.parameters, sort_keys=True),
            "mantik.data": "{}",
            "mantik.environment": "",
            "mantik.backend": "local",
        }
        run = client.create_run(experiment_id, tags=tags, run_name=want.point.point_id)
        client.update_run(run.info.run_id, status="SCHEDULED")
        for name, value in extra.items():
            client.set_tag(run.info.run_id, name, value)
        if kinds and kinds[index]:
            client.set_tag(run.info.run_id, "mantik.failure_kind", kinds[index])
        if live:
            client.update_run(run.info.run_id, status=status)
        else:
            client.set_terminated(run.info.run_id, status)
    return wants


def _plan_rows(tracking, wants):
    from mantik_spec.reconcile.planner import make_plan

    plan = make_plan(wants, tracking.observe(), {}, commit="c0ffee0", spec_digest="d")
    runs = {e.run_id: "RUN" for e in plan.entries if e.run_id}  # the two stores' run ids differ
    return [(e.point_id, e.action.label, e.next_attempt, _replace(e.reason, runs)) for e in plan.entries]


def _replace(text: str, words: dict[str, str]) -> str:
    for word, replacement in words.items():
        text = text.replace(word, replacement)
    return text


def test_records_written_before_the_failure_kind_plan_as_they_did(store):
    from mantik_spec.operations.project import _unexplained_kills

    legacy = _project_store(store, "legacy")
    wants = _write_records(legacy, LEGACY_RECORDS)
    rows = _plan_rows(legacy, wants)
    assert [(point, action) for point, action, _, _ in rows] == [
        (want.point.point_id, expected) for want, (*_, expected) in zip(wants, LEGACY_RECORDS, strict=True)
    ]
    assert all(next_attempt == 1 for _, action, next_attempt, _ in rows if action == "retry")
    # a run the runner saw signalled is still asked about (the scheduler says why it ended)
    assert [r.point_id for r in _unexplained_kills(legacy.observe())] == [wants[5].point.point_id]

    # the same records written by this version (with the kind tag) plan the same
    current = _project_store(store, "current")
    assert _plan_rows(current, _write_records(current, LEGACY_RECORDS, NEW_KINDS)) == rows


def _start_runner(tracking, project: str, command: str, job_dir: Path) -> tuple[str, subprocess.Popen]:
    """A run recorded as apply records it, and the in-job runner started on it as a backend starts it."""
    from mantik_spec.reconcile.identity import Identity
    from mantik_spec.state.tags import identity_tags

    experiment_id = tracking.ensure_experiment("sweep", tracking.experiment_ids())
    identity = Identity(command=command, parameters={}, seed=None, code="tree", data={}, environment="")
    tags = identity_tags(
        identity, project=project, experiment="sweep", point_id="sweep[]", attempt=1, commit="c", backend="local"
    )
    run_id = tracking.create_run(experiment_id, "sweep[]", tags, {})
    (job_dir / "work").mkdir(parents=True)
    job = {"run_id": run_id, "command": command, "tracking_uri": tracking.uri, "experiment_id": experiment_id}
    (job_dir / "job.json").write_text(json.dumps(job))
    runner = subprocess.Popen(
        [sys.executable, str(ROOT / "mantik_spec" / "runner.py"), str(job_dir)], start_new_session=True
    )
    return run_id, runner


def test_a_run_the_runner_saw_signalled_is_recorded_as_such(store, tmp_path):
    """The runner writes the failure kind beside its message, and observe reads it back typed."""
    import os
    import signal
    import time

    from mantik_spec.vocab import FailureKind, RunStatus

    tracking = _project_store(store, "signalled")
    run_id, runner = _start_runner(tracking, "signalled", "sleep 60", tmp_path / "job")
    deadline = time.monotonic() + 120
    while not _runs_command(runner.pid, b"sleep 60") and time.monotonic() < deadline:
        time.sleep(0.1)
    os.killpg(runner.pid, signal.SIGTERM)  # as a scheduler does: the runner and its command
    assert runner.wait(timeout=120) == 128 + signal.SIGTERM
    [run] = tracking.observe()
    assert (run.status, run.failure_kind) == (RunStatus.KILLED, FailureKind.SIGNALLED)
    assert run.failure == "stopped by a signal (SIGTERM)"
    assert tracking.client.get_run(run_id).data.tags["mantik.failure_kind"] == "signalled"  # not read from the text


def _catches(pid: int, signum: int) -> bool:
    """Whether process ``pid`` has a handler installed for ``signum`` (SigCgt in /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    return False


def test_a_run_deleted_while_its_job_runs_is_still_closed_by_the_runner_and_stays_deleted(store, tmp_path):
    """MLflow refuses updates to a deleted run; the runner restores it for its last calls and deletes it again,
    so the record says how the job ended instead of RUNNING forever."""
    import time

    tracking = _project_store(store, "deleted-live")
    run_id, runner = _start_runner(tracking, "deleted-live", "sleep 3", tmp_path / "job")
    deadline = time.monotonic() + 120
    while not _runs_command(runner.pid, b"sleep 3") and time.monotonic() < deadline:
        time.sleep(0.1)
    tracking.client.delete_run(run_id)
    assert runner.wait(timeout=120) == 0
    run = tracking.client.get_run(run_id)
    assert (run.info.lifecycle_stage, run.info.status) == ("deleted", "FINISHED")
    assert run.data.tags["mantik.exit_code"] == "0"


def test_a_job_cancelled_while_its_runner_starts_never_runs_and_says_so(store, tmp_path):
    """A cancel can come while the runner still imports mlflow (seconds on a busy node): the command never
    starts, the run is KILLED, and the exit code is written for the backend, as for any cancelled job."""
    import os
    import signal
    import time

    from mantik_spec.vocab import RunStatus

    tracking = _project_store(store, "early-cancel")
    job_dir = tmp_path / "job"
    _, runner = _start_runner(tracking, "early-cancel", "touch started", job_dir)
    deadline = time.monotonic() + 60
    while not _catches(runner.pid, signal.SIGTERM) and time.monotonic() < deadline:
        time.sleep(0.005)
    os.killpg(runner.pid, signal.SIGTERM)  # now: mlflow's import takes far longer than getting here
    assert runner.wait(timeout=120) == 128 + signal.SIGTERM
    assert not (job_dir / "work" / "started").exists()
    assert (job_dir / "exit_code").read_text() == "143\n"
    assert "cancelled before the command started" in (job_dir / "output.log").read_text()
    [run] = tracking.observe()
    assert run.status is RunStatus.KILLED


def test_apply_records_how_each_run_ended_as_a_kind(store, tmp_path):
    """Repairs and prunes write the failure kind the plan decided, beside the plan's reason, and the job's
    exit code where the backend knows it (as the runner would have, had it reached the store)."""
    from types import SimpleNamespace

    from mantik_spec.operations.apply import execute
    from mantik_spec.reconcile.planner import make_plan
    from mantik_spec.vocab import FailureKind, JobState, JobStatus, RunStatus

    from .support.planning import desired, point

    tracking = _project_store(store, "apply-kinds")
    timed_out, intent = desired(point(lr=0.1)), desired(point(lr=0.2, suspended=True))
    gone, completed, failed = desired(point(lr=0.3)), desired(point(lr=0.4)), desired(point(lr=0.5))
    wants = (timed_out, intent, gone, completed, failed)
    _write_records(tracking, [(want.point.values["lr"], "RUNNING", {}, None) for want in wants], live=True)
    runs = {r.point_id: r for r in tracking.observe()}
    for want, job_id in ((timed_out, "1"), (gone, "3"), (completed, "4"), (failed, "5")):
        tracking.set_tags(runs[want.point.point_id].run_id, {"mantik.job_id": job_id})
    jobs = {
        ("local", "1"): JobStatus(JobState.TIMEOUT),
        ("local", "3"): JobStatus(JobState.RUNNING),
        ("local", "4"): JobStatus(JobState.COMPLETED, 0),
        ("local", "5"): JobStatus(JobState.FAILED, 2),
    }
    declared = [timed_out, intent, completed, failed]
    plan = make_plan(declared, tracking.observe(), jobs, commit="c0ffee0", spec_digest="d", prune=True)

    backend = FakeBackend()
    project = SimpleNamespace(
        store=tracking, backend=lambda name: backend, spec=SimpleNamespace(backends={}, data={}), root=tmp_path
    )
    assert execute(project, plan, SimpleNamespace(desired=declared, code=None, runs=[])) == []

    ended = {r.point_id: (r.status, r.failure_kind) for r in tracking.observe()}
    assert ended == {
        timed_out.point.point_id: (RunStatus.FAILED, FailureKind.TIMEOUT),
        intent.point.point_id: (RunStatus.FAILED, FailureKind.INTERRUPTED),
        gone.point.point_id: (RunStatus.KILLED, FailureKind.CANCELLED),
        completed.point.point_id: (RunStatus.FINISHED, None),
        failed.point.point_id: (RunStatus.FAILED, FailureKind.JOB_FAILED),
    }
    records = tracking.client.search_runs(list(tracking.experiment_ids()))
    exit_codes = {r.data.tags["mantik.point"]: r.data.tags.get("mantik.exit_code") for r in records}
    assert exit_codes == {
        timed_out.point.point_id: None,
        intent.point.point_id: None,
        gone.point.point_id: None,
        completed.point.point_id: "0",
        failed.point.point_id: "2",
    }
    assert backend.cancelled == ["3"]


def _runs_command(pid: int, command: bytes) -> bool:
    """Whether a child of ``pid`` runs ``command`` (the runner has started the user's command)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    for child in children:
        try:
            if command in Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" "):
                return True
        except OSError:
            continue
    return False


def test_a_cancel_the_backend_refuses_leaves_the_run_as_it_was(store, tmp_path):
    """Why a run is cancelled is written before the signal (so its runner keeps it); when the backend cannot
    cancel, that record is taken back: the run is not reported cancelled while its job runs on."""
    from types import SimpleNamespace

    from mantik_spec.backends.base import BackendError
    from mantik_spec.operations.apply import execute
    from mantik_spec.reconcile.planner import make_plan
    from mantik_spec.vocab import JobState, JobStatus, RunStatus

    from .support.planning import desired, point

    tracking = _project_store(store, "refused-cancel")
    kept, gone = desired(point(lr=0.1)), desired(point(lr=0.3))
    _write_records(tracking, [(want.point.values["lr"], "RUNNING", {}, None) for want in (kept, gone)], live=True)
    runs = {r.point_id: r for r in tracking.observe()}
    for want, job_id in ((kept, "1"), (gone, "3")):
        tracking.set_tags(runs[want.point.point_id].run_id, {"mantik.job_id": job_id})
    jobs = {("local", "1"): JobStatus(JobState.RUNNING), ("local", "3"): JobStatus(JobState.RUNNING)}
    plan = make_plan([kept], tracking.observe(), jobs, commit="c0ffee0", spec_digest="d", prune=True)

    backend = FakeBackend()
    backend.cancel_refusal = "scancel: error: Kill job error on job id 3: Access/permission denied"
    project = SimpleNamespace(
        store=tracking, backend=lambda name: backend, spec=SimpleNamespace(backends={}, data={}), root=tmp_path
    )
    with pytest.raises(BackendError, match="permission denied"):
        execute(project, plan, SimpleNamespace(desired=[kept], code=None))
    after = tracking.client.get_run(runs[gone.point.point_id].run_id)
    assert after.info.status == RunStatus.RUNNING.value
    assert not {"mantik.failure", "mantik.failure_kind"} & set(after.data.tags)


def test_every_plan_action_is_drawn_and_documented():
    """A new plan action is its member of Action (reconcile/plan.py), its rule in the planner, its step in
    operations/apply.py when it is a change, and these: a colour for a change, and its word in the JSON
    format's documentation (the summary and the list of actions)."""
    from mantik_spec.reconcile.plan import CHANGES, MODEL_CHANGES, Action, ModelAction
    from mantik_spec.views.plan import COLORS, MODEL_COLORS

    assert set(COLORS) == set(CHANGES)
    assert set(MODEL_COLORS) == set(MODEL_CHANGES)
    documented = (ROOT / "docs" / "plan-json.md").read_text()
    listed = re.search(r'"action": "submit",\s*// (.*)', documented)
    assert listed and listed.group(1).split(" | ") == [action.label for action in Action]
    summary = re.search(r'"summary": (\{.*?\})', documented, re.S)
    assert summary and list(json.loads(summary.group(1))) == [action.label for action in Action]
    # the registry's actions (docs/models.md), listed the same way
    listed = re.search(r'"action": "register",\s*// (.*)', documented)
    assert listed and listed.group(1).split(" | ") == [action.label for action in ModelAction]
    summary = re.search(r'"models_summary": (\{.*?\})', documented, re.S)
    assert summary and list(json.loads(summary.group(1))) == [action.label for action in ModelAction]


# -- layering: each floor imports only the floors below it ------------------------------------------------
#
# The package reads in the order data flows (mantik_spec/__init__.py). The ground modules (errors, files, faults,
# templating, the runner, and any new top-level module until it is placed) import none of the floors; the
# planner (reconcile) is pure: it sees the spec, never git, MLflow or a backend.
FLOORS = {"spec", "state", "reconcile", "backends", "operations", "views", "cli"}
MAY_IMPORT = {
    "ground": {"ground"},
    "spec": {"ground", "spec"},
    "state": {"ground", "spec", "reconcile", "state"},  # the record types it reads and writes (pure data)
    "reconcile": {"ground", "spec", "reconcile"},
    "backends": {"ground", "spec", "state", "backends"},
    "operations": {"ground", "spec", "state", "reconcile", "backends", "operations"},
    "views": {"ground", "spec", "state", "reconcile", "backends", "views"},
    "cli": {"ground", "spec", "state", "reconcile", "backends", "operations", "views", "cli"},
}
# (importer, imported) pairs that break the floors; none today, and never add one
KNOWN_VIOLATIONS: set[tuple[str, str]] = set()


def _floor(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "ground"  # the package itself
    if parts[1] == "__main__":
        return "cli"
    return parts[1] if parts[1] in FLOORS else "ground"


def _package_imports() -> set[tuple[str, str]]:
    """Every (importer, imported) pair of modules of the package, function-level and TYPE_CHECKING imports too."""
    package = ROOT / "mantik_spec"
    modules = {}
    for path in package.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        name = ".".join(parts[:-1] if is_package else parts)
        modules[name] = (path, name if is_package else name.rsplit(".", 1)[0])
    pairs = set()
    for name, (path, home) in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join([*home.split(".")[: len(home.split(".")) - node.level + 1], *filter(None, [base])])
                # `from .operations import apply`: the submodule, when it is one
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            else:
                continue
            pairs |= {(name, target) for target in targets if target.split(".")[0] == "mantik_spec"}
    return pairs


def test_no_floor_imports_from_a_floor_above_it():
    imports = _package_imports()
    assert ("mantik_spec.cli", "mantik_spec.operations.apply") in imports  # the scan sees function-level imports
    upward = {(a, b) for a, b in imports if _floor(b) not in MAY_IMPORT[_floor(a)]}
    assert upward - KNOWN_VIOLATIONS == set(), "imports from a floor above (see MAY_IMPORT)"
    assert KNOWN_VIOLATIONS - upward == set(), "gone: take these off KNOWN_VIOLATIONS"


def test_no_test_module_imports_another():
    """What two test modules share lives in tests/support/ (fixtures for all of them in conftest.py): no test
    module depends on another's helpers, imports or module-level setup."""
    found = []
    for path in sorted((ROOT / "tests").glob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):  # `from .test_x import y`, or `from . import test_x`
                modules = [node.module or "", *(a.name for a in node.names if (path.parent / f"{a.name}.py").exists())]
            elif isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            else:
                continue
            if any(part.startswith("test_") for module in modules for part in module.split(".")):
                found.append(f"{path.name}:{node.lineno}")
    assert found == []
