"""The planner is pure: these tests give it plain data, no MLflow, no git, no processes."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mantik_spec.reconcile.identity import ObservedRun, identify
from mantik_spec.reconcile.plan import Action
from mantik_spec.reconcile.planner import INTERRUPTED, REFUSED, make_plan
from mantik_spec.spec.experiments import RunPoint
from mantik_spec.vocab import FailureKind, JobState, JobStatus, RunStatus

from .conftest import examples
from .support.planning import desired, point

_ids = itertools.count()


def observed(
    want, status="FINISHED", attempt=1, job_id="job", failure=None, code=None, commit="c0ffee0", failure_kind=None
) -> ObservedRun:
    run_id = f"run{next(_ids)}"
    return ObservedRun(
        run_id=run_id,
        experiment_id="1",
        status=status,
        run_key=want.key,
        point_id=want.point.point_id,
        attempt=attempt,
        backend="local",
        job_id=job_id and f"{job_id}-{run_id}",
        commit=commit,
        code=code or want.identity.code,
        command=want.identity.command,
        parameters=want.identity.parameters,
        data={},
        environment="",
        start_time=attempt,
        end_time=None,
        failure=failure,
        failure_kind=failure_kind,
        experiment=want.point.experiment,
    )


def plan_of(wants, runs=(), jobs=None, prune=False):
    return make_plan(wants, runs, jobs or {}, commit="abc", spec_digest="d", prune=prune)


def only(plan):
    assert len(plan.entries) == 1, plan.entries
    return plan.entries[0]


def test_missing_run_is_submitted_as_a_new_point():
    entry = only(plan_of([desired(point())]))
    assert entry.action is Action.SUBMIT
    assert entry.reason == "new run point"
    assert entry.next_attempt == 1


def test_finished_run_is_up_to_date_and_plan_has_no_changes():
    want = desired(point())
    plan = plan_of([want], [observed(want)])
    assert only(plan).action is Action.UP_TO_DATE
    assert not plan.has_changes
    assert plan.summary() == "No changes. Runs match the spec."


def test_live_run_with_live_job_is_running():
    want = desired(point())
    run = observed(want, status="RUNNING")
    entry = only(plan_of([want], [run], {("local", run.job_id): JobStatus(JobState.RUNNING)}))
    assert entry.action is Action.RUNNING


def test_backend_state_wins_over_mlflow_for_a_dead_job():
    want = desired(point(retries=1))
    run = observed(want, status="RUNNING")
    entry = only(plan_of([want], [run], {("local", run.job_id): JobStatus(JobState.TIMEOUT)}))
    assert entry.action is Action.REPAIR
    assert entry.mark_status == "FAILED"
    assert entry.next_attempt == 2
    assert "ended TIMEOUT" in entry.reason


def test_completed_job_with_open_run_is_closed_not_rerun():
    want = desired(point())
    run = observed(want, status="RUNNING")
    entry = only(plan_of([want], [run], {("local", run.job_id): JobStatus(JobState.COMPLETED, 0)}))
    assert (entry.action, entry.mark_status, entry.next_attempt) == (Action.REPAIR, "FINISHED", None)


def test_cancelled_job_is_marked_killed_without_retries():
    want = desired(point(retries=0))
    run = observed(want, status="RUNNING")
    entry = only(plan_of([want], [run], {("local", run.job_id): JobStatus(JobState.CANCELLED)}))
    assert (entry.mark_status, entry.next_attempt) == ("KILLED", None)
    assert "no retries left" in entry.reason


def test_intent_without_job_is_resubmitted_without_spending_a_retry():
    want = desired(point(retries=0))
    entry = only(plan_of([want], [observed(want, status="SCHEDULED", job_id=None)]))
    assert entry.action is Action.REPAIR
    assert entry.next_attempt == 1
    assert entry.reason.startswith(INTERRUPTED)


def test_intent_whose_job_was_found_is_adopted_not_resubmitted():
    want = desired(point())
    run = observed(want, status="SCHEDULED")
    run.adopted_job = True
    entry = only(plan_of([want], [run], {("local", run.job_id): JobStatus(JobState.PENDING)}))
    assert entry.action is Action.REPAIR and entry.record_job and entry.next_attempt is None


def test_failed_run_is_retried_until_retries_are_spent():
    want = desired(point(retries=1))
    first = observed(want, status="FAILED", attempt=1)
    entry = only(plan_of([want], [first]))
    assert (entry.action, entry.next_attempt) == (Action.RETRY, 2)
    second = observed(want, status="FAILED", attempt=2)
    entry = only(plan_of([want], [first, second]))
    assert entry.action is Action.FAILED
    assert not plan_of([want], [first, second]).has_changes


def test_a_failed_point_tries_again_once_its_environment_or_setup_changed():
    """The fix for a failing pre_run, module or setup line is in the environment, not in the code: a point whose
    attempts failed tries once more when what prepares its run changed since the last one, never otherwise."""
    import dataclasses

    want = dataclasses.replace(desired(point()), setup="after-fix")
    failed = dataclasses.replace(observed(want, status="FAILED", attempt=1), setup="before-fix")
    entry = only(plan_of([want], [failed]))
    assert (entry.action, entry.next_attempt) == (Action.RETRY, 2)
    assert entry.reason.startswith("environment or backend setup changed since attempt 1 failed")
    again = dataclasses.replace(observed(want, status="FAILED", attempt=2), setup="after-fix")
    assert only(plan_of([want], [failed, again])).action is Action.FAILED  # failed with the fix too: stop
    unrecorded = observed(want, status="FAILED", attempt=1)  # a record from before the setup was recorded
    assert only(plan_of([want], [unrecorded])).action is Action.FAILED


@pytest.mark.parametrize(
    "kind, failure",
    [(FailureKind.INTERRUPTED, INTERRUPTED), (FailureKind.REFUSED, REFUSED + ": invalid partition name specified")],
)
def test_runs_that_never_ran_spend_no_retry(kind, failure):
    want = desired(point(retries=0))
    never_ran = observed(want, status="FAILED", failure=failure, failure_kind=kind)
    entry = only(plan_of([want], [never_ran]))
    assert (entry.action, entry.next_attempt) == (Action.RETRY, 1)


def test_retries_are_counted_from_the_failure_kind_not_its_message():
    """A message is for people: one that happens to read like a refusal does not make a run that ran free."""
    want = desired(point(retries=0))
    ran = observed(want, status="FAILED", failure=REFUSED + "? no: exit 3", failure_kind=FailureKind.JOB_FAILED)
    assert only(plan_of([want], [ran])).action is Action.FAILED
    refused = observed(want, status="FAILED", failure="sbatch said no", failure_kind=FailureKind.REFUSED)
    assert only(plan_of([want], [refused])).action is Action.RETRY


@pytest.mark.parametrize(
    "state, exit_code, status, kind",
    [
        (JobState.TIMEOUT, None, RunStatus.FAILED, FailureKind.TIMEOUT),
        (JobState.OUT_OF_MEMORY, None, RunStatus.FAILED, FailureKind.OUT_OF_MEMORY),
        (JobState.NODE_FAIL, None, RunStatus.FAILED, FailureKind.NODE_FAIL),
        (JobState.LOST, None, RunStatus.FAILED, FailureKind.LOST),
        (JobState.FAILED, 3, RunStatus.FAILED, FailureKind.JOB_FAILED),
        (JobState.COMPLETED, 3, RunStatus.FAILED, FailureKind.JOB_FAILED),
        (JobState.CANCELLED, None, RunStatus.KILLED, FailureKind.CANCELLED),
        (JobState.PREEMPTED, None, RunStatus.KILLED, FailureKind.PREEMPTED),
        (JobState.COMPLETED, 0, RunStatus.FINISHED, None),
    ],
)
def test_a_repair_records_how_the_job_ended_as_a_status_and_a_kind(state, exit_code, status, kind):
    want = desired(point(retries=1))
    run = observed(want, status="RUNNING")
    entry = only(plan_of([want], [run], {("local", run.job_id): JobStatus(state, exit_code)}))
    assert (entry.action, entry.mark_status, entry.failure_kind) == (Action.REPAIR, status, kind)


def test_interrupted_submissions_and_pruned_runs_record_their_kind():
    want = desired(point())
    intent = only(plan_of([want], [observed(want, status="SCHEDULED", job_id=None)]))
    assert (intent.mark_status, intent.failure_kind) == (RunStatus.FAILED, FailureKind.INTERRUPTED)
    gone = desired(point(lr=9.0))
    live = observed(gone, status="RUNNING")
    pruned = only(plan_of([], [live], {("local", live.job_id): JobStatus(JobState.RUNNING)}, prune=True))
    assert (pruned.mark_status, pruned.failure_kind) == (RunStatus.KILLED, FailureKind.CANCELLED)


def test_reason_names_the_changed_parameter_code_and_command():
    old = desired(point(lr=0.1), code="code-v1")
    new_code = desired(point(lr=0.1), code="code-v2")
    history = observed(old, commit="1234567aaaa")
    entry = make_plan(
        [new_code], [history], {}, commit="b", spec_digest="d", changed_files={"1234567aaaa": ["train.py"]}
    ).entries[0]
    assert entry.action is Action.SUBMIT
    assert entry.reason == "code changed (train.py, 1234567..b)"

    changed_command = identify(
        RunPoint(**{**point().__dict__, "command_template": "python train.py --lr {lr} --fast"}), "code-v1", {}, {}
    )
    assert "entry point command changed" in only(plan_of([changed_command], [observed(old)])).reason


def test_a_key_is_the_hash_it_always_was():
    """Existing MLflow records keep matching: the canonical form and key of a fixed identity, as computed
    before the identity's fields were written once (a change here must bump KEY_FORMAT)."""
    from mantik_spec.reconcile.identity import Identity

    identity = Identity(
        command="python train.py --lr {lr} --data {data.era5}",
        parameters={"lr": 0.1, "name": "a b", "layers": [1, 2], "é": True},
        seed=3,
        code="tree:4b825dc642cb6eb9a060e54bf8d69288fbee4904",
        data={"era5": "md5:0123abcd"},
        environment="apptainer:sha256:ff;requirements:sha256:ee",
    )
    assert identity.canonical() == (
        '{"code":"tree:4b825dc642cb6eb9a060e54bf8d69288fbee4904","command":"python train.py --lr {lr} --data '
        '{data.era5}","data":{"era5":"md5:0123abcd"},"environment":"apptainer:sha256:ff;requirements:sha256:ee",'
        '"format":1,"parameters":{"layers":[1,2],"lr":0.1,"name":"a b","é":true},"seed":3}'
    )
    assert identity.key == "cfe78e461eba9eee8badc55fd338cabe37d5031a6f571dce408ac66a71d7fdb0"
    bare = Identity(command="python train.py", parameters={}, seed=None, code="c", data={}, environment="")
    assert bare.key == "501d97ff7a2d9229430712d1eded85f28103bcb5d67b7ee844d190e46f59aaf1"


def test_key_leaves_out_experiment_name_and_backend():
    a = desired(point(experiment="a"))
    b = desired(RunPoint(**{**point(experiment="b").__dict__, "backend": "cluster"}))
    assert a.key == b.key
    assert only(plan_of([b], [observed(a)])).action is Action.UP_TO_DATE


def test_key_changes_with_every_identity_input():
    base = desired(point())
    assert base.key != desired(point(lr=0.2)).key
    assert base.key != desired(point(seed=1)).key
    assert base.key != desired(point(), code="other").key
    with_data = RunPoint(**{**point().__dict__, "data": ("era5",)})
    assert (
        identify(with_data, "code-v1", {"era5": "md5:1"}, {}).key
        != identify(with_data, "code-v1", {"era5": "md5:2"}, {}).key
    )
    with_env = RunPoint(**{**point().__dict__, "environment": "torch"})
    assert (
        identify(with_env, "code-v1", {}, {"torch": "sha256:a"}).key
        != identify(with_env, "code-v1", {}, {"torch": "sha256:b"}).key
    )


def test_integer_and_float_values_of_a_float_parameter_name_the_same_run():
    from mantik_spec.spec.experiments import coerce

    assert desired(point(lr=coerce(1, "float"))).key == desired(point(lr=1.0)).key


def test_suspended_points_are_not_submitted_but_keep_their_runs():
    want = desired(point(suspended=True))
    assert only(plan_of([want])).action is Action.SUSPENDED
    live = observed(want, status="RUNNING")
    entry = only(plan_of([want], [live], {("local", live.job_id): JobStatus(JobState.RUNNING)}, prune=True))
    assert entry.action is Action.RUNNING


def test_undeclared_live_run_is_cancelled_only_with_prune():
    gone = desired(point(lr=9.0))
    live = observed(gone, status="RUNNING")
    jobs = {("local", live.job_id): JobStatus(JobState.RUNNING)}
    assert plan_of([], [live], jobs).entries == []
    entry = only(plan_of([], [live], jobs, prune=True))
    assert (entry.action, entry.mark_status, entry.experiment) == (Action.CANCEL, "KILLED", "sweep")


def test_summary_line_counts_every_action():
    wants = [desired(point(lr=v)) for v in (0.1, 0.2, 0.3)]
    plan = plan_of(wants, [observed(wants[0])])
    assert plan.summary() == "Plan: 2 to submit, 0 to retry, 0 to repair, 0 to cancel, 1 up to date, 0 running."


# -- property: after an apply whose runs all finish, the plan is empty ----------------------------

JOB_STATES = [s for s in JobState if s is not JobState.UNKNOWN]


@st.composite
def worlds(draw):
    lrs = draw(st.lists(st.sampled_from([0.1, 0.2, 0.3, 0.4, 0.5]), min_size=1, max_size=5, unique=True))
    retries = draw(st.integers(0, 2))
    wants = [desired(point(lr=lr, retries=retries)) for lr in lrs]
    runs, jobs = [], {}
    for want in wants + [desired(point(lr=9.9))]:  # and one point that is no longer declared
        for attempt in range(1, draw(st.integers(0, 3)) + 1):
            status = draw(st.sampled_from(["FINISHED", "FAILED", "KILLED", "RUNNING", "SCHEDULED"]))
            run = observed(want, status=status, attempt=attempt, job_id=draw(st.sampled_from(["job", None])))
            runs.append(run)
            if run.job_id:
                jobs[("local", run.job_id)] = JobStatus(
                    draw(st.sampled_from(JOB_STATES)), draw(st.sampled_from([0, 1, None]))
                )
    return wants, runs, jobs


def simulate_apply_and_finish(plan, runs, jobs):
    """What apply does to the world, with every started run then finishing successfully."""
    runs = list(runs)
    by_id = {r.run_id: r for r in runs}
    for entry in plan.changes():
        if entry.mark_status:
            by_id[entry.run_id].status = entry.mark_status
            jobs[("local", by_id[entry.run_id].job_id)] = JobStatus(
                JobState.COMPLETED if entry.mark_status == "FINISHED" else JobState.FAILED
            )
        if entry.next_attempt is not None:
            want = next(w for w in WANTS if w.key == entry.run_key)
            runs.append(observed(want, status="FINISHED", attempt=entry.next_attempt))
    return runs, jobs


WANTS: list = []


@settings(max_examples=examples(300), deadline=None)
@given(worlds(), st.booleans())
def test_plan_is_empty_after_an_apply_whose_runs_all_finish(world, prune):
    wants, runs, jobs = world
    WANTS[:] = wants
    first = plan_of(wants, runs, dict(jobs), prune=prune)
    runs_after, jobs_after = simulate_apply_and_finish(first, runs, dict(jobs))
    # jobs that were still running when planned finish too
    for run in runs_after:
        if run.live and run.job_id and jobs_after.get(("local", run.job_id), JobStatus(JobState.UNKNOWN)).state.live:
            run.status = RunStatus.FINISHED
    second = plan_of(wants, runs_after, jobs_after, prune=prune)
    assert not any(e.action in (Action.SUBMIT, Action.RETRY, Action.REPAIR) for e in second.changes())
    for want in wants:
        entry = next(e for e in second.entries if e.run_key == want.key)
        assert entry.action in (Action.UP_TO_DATE, Action.FAILED, Action.RUNNING), entry


def test_the_same_run_declared_twice_is_planned_once():
    first = desired(point(experiment="a"))
    again = desired(point(experiment="b"))  # same inputs, other experiment: the same key
    plan = plan_of([first, again])
    assert [(e.action, e.experiment) for e in plan.entries] == [(Action.SUBMIT, "a")]
    assert plan.warnings == ["b[lr=0.1] is the same run as a[lr=0.1]: planned once"]


def test_a_suspended_experiment_starts_nothing_new():
    want = desired(point(retries=3, suspended=True))
    failed = observed(want, status="FAILED")
    assert only(plan_of([want], [failed])).action is Action.SUSPENDED
    live = observed(want, status="RUNNING")
    entry = only(plan_of([want], [live], {("local", live.job_id): JobStatus(JobState.TIMEOUT)}))
    assert (entry.action, entry.mark_status, entry.next_attempt) == (Action.REPAIR, "FAILED", None)
    intent = observed(want, status="SCHEDULED", job_id=None)
    assert only(plan_of([want], [intent])).next_attempt is None


def test_a_run_cancelled_with_mantik_cancel_is_its_own_outcome_until_replaced():
    from mantik_spec.vocab import FailureKind

    want = desired(point(retries=2))
    run = observed(want, status="KILLED", failure_kind=FailureKind.USER_CANCELLED)
    entry = only(plan_of([want], [run]))
    assert entry.action is Action.CANCELLED and "--replace" in entry.reason
    replaced = only(make_plan([want], [run], {}, commit="c" * 40, spec_digest="d", replace={want.point.point_id}))
    assert (replaced.action, replaced.next_attempt) == (Action.SUBMIT, 2)
    # cancelled outside the tool (or by --prune): retried while retries last, as a job that died
    other = observed(want, status="KILLED", failure_kind=FailureKind.CANCELLED)
    assert only(plan_of([want], [other])).action is Action.RETRY


def test_replace_runs_a_finished_point_again_but_never_beside_a_live_run():
    want = desired(point())
    done = observed(want, status="FINISHED")
    entry = only(make_plan([want], [done], {}, commit="c" * 40, spec_digest="d", replace=[want.point.point_id]))
    assert (entry.action, entry.next_attempt) == (Action.SUBMIT, 2)
    assert entry.reason.startswith("replaced on request")
    live = observed(want, status="RUNNING")
    jobs = {("local", live.job_id): JobStatus(JobState.RUNNING)}
    kept = only(make_plan([want], [live], jobs, commit="c" * 40, spec_digest="d", replace=[want.point.point_id]))
    assert kept.action is Action.RUNNING and kept.reason.endswith("not replaced: it is live (cancel it first)")


def test_a_prefix_naming_runs_of_several_points_names_none():
    from mantik_spec.errors import UserError
    from mantik_spec.operations.runref import matching_runs, refuse_ambiguous

    first, second = desired(point(lr=0.1)), desired(point(lr=0.2))
    runs = [observed(first, job_id="50120"), observed(second, job_id="50121")]
    runs[0].job_id, runs[1].job_id = "50120", "50121"
    found = matching_runs(runs, "5012")
    assert len(found) == 2
    with pytest.raises(UserError, match="names runs of 2 points"):
        refuse_ambiguous(found, "5012", "demo")
    refuse_ambiguous(matching_runs(runs, "50120"), "50120", "demo")  # a whole job id names its run
