"""What ended runs really used, and what the sites say is left of the allocation.

Usage: sacct's elapsed time x allocated nodes where the cluster keeps accounting, else the time limit (labelled
``limit``), recorded on each ended run by apply and counted by budgets. Allocation: sshare's association
limits and a UNICORE site's ``remainingComputeTime``, shown with their age, cached, never in the plan's way.

The scheduler's answers here are recorded outputs, written as Slurm 22.05 prints them (sacct's fields from
sacct(1): ElapsedRaw in seconds, AllocNodes 0 for a job that never started; sshare's columns and units from
src/sshare/process.c: GrpTRESMins and TRESRunMins in TRES-minutes, GrpTRESRaw divided down to minutes, tree
depth as leading spaces in Account). The UNICORE site's answer is the fake's rendering of ux's
IDBContentRendering.budgetToMap over TSI ``get_quota`` lines. What the local Slurm (no accounting) does is in
tests/test_slurm.py::test_cost_budget_too_small_refuses_apply_with_nothing_submitted.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from mantik_spec.backends.base import BackendError, CommandTimeout
from mantik_spec.backends.hosts import CommandResult
from mantik_spec.backends.slurm import SlurmBackend, sshare_allocation
from mantik_spec.backends.unicore import UnicoreBackend, site_allocation
from mantik_spec.errors import UserError
from mantik_spec.operations.apply import apply
from mantik_spec.operations.project import build_plan, open_project
from mantik_spec.reconcile.identity import ObservedRun
from mantik_spec.spec.cost import Allocation, Used
from mantik_spec.spec.model import SlurmConfig, UnicoreConfig
from mantik_spec.views.plan import allocation_line, render_text
from mantik_spec.vocab import JobState, RunStatus

from .conftest import BASIC_SPEC, git
from .fake_unicore import FakeUnicore
from .support.fake_backend import FakeBackend

SACCT = (  # sacct --parsable2 --noheader --allocations --jobs 41,42 --format=JobID,State,ExitCode,ElapsedRaw,...
    # AllocNodes,AllocTRES on a site with TRESBillingWeights (billing = its weighted TRES of the job)
    "41_0|COMPLETED|0:0|754|2|billing=192,cpu=96,mem=180G,node=2\n"
    "41_1|TIMEOUT|0:15|7230|2|billing=192,cpu=96,mem=180G,node=2\n"
    "41_[2-3]|CANCELLED by 1000|0:0|0|0|\n"  # pending tasks cancelled before they started: one grouped record
    "42|RUNNING|0:0|100|4|billing=384,cpu=192,mem=360G,node=4\n"
)
SSHARE = (  # sshare --parsable2 --format=Account,User,GrpTRESMins,GrpTRESRaw,TRESRunMins (on a login node)
    "Account|User|GrpTRESMins|GrpTRESRaw|TRESRunMins\n"
    "root|||cpu=93532800,mem=0,energy=0,node=1948600,billing=93532800,fs/disk=0,vmem=0,pages=0|"
    "cpu=1382400,mem=0,energy=0,node=28800,billing=1382400,fs/disk=0,vmem=0,pages=0\n"
    " jjsc42||cpu=28800000,node=600000|cpu=25804800,mem=0,energy=0,node=537600,billing=25804800,fs/disk=0,"
    "vmem=0,pages=0|cpu=345600,mem=0,energy=0,node=7200,billing=345600,fs/disk=0,vmem=0,pages=0\n"
    "  jjsc42|alice||cpu=11520000,mem=0,energy=0,node=240000,billing=11520000,fs/disk=0,vmem=0,pages=0|"
    "cpu=345600,mem=0,energy=0,node=7200,billing=345600,fs/disk=0,vmem=0,pages=0\n"
)


# -- Slurm: sacct and sshare read ---------------------------------------------------------------------------


def slurm_backend(tmp_path: Path, answers: dict[str, list[tuple[str, str, int]]], **config) -> SlurmBackend:
    """A Slurm backend whose commands are answered from ``answers`` (command -> (stdout, stderr, exit code),
    the last one repeated); what it ran is in ``commands``."""
    state = tmp_path / "project" / ".mantik"
    state.mkdir(parents=True)
    made = SlurmBackend("cluster", SlurmConfig(type="slurm", workdir=str(tmp_path / "work"), **config), state)
    made.commands = []  # type: ignore[attr-defined]

    def run(argv, timeout=0, secrets=None):
        command = [word for i, word in enumerate(argv[1:], 1) if word != "-u" and argv[i - 1] != "-u"]
        made.commands.append(command)  # type: ignore[attr-defined]
        queue = answers[command[0]]
        stdout, stderr, code = queue.pop(0) if len(queue) > 1 else queue[0]
        return CommandResult(code, stdout, stderr)

    made.host.run = run  # type: ignore[method-assign]
    return made


def test_sacct_usage_is_elapsed_times_allocated_nodes_of_ended_jobs_in_one_call(tmp_path):
    slurm = slurm_backend(tmp_path, {"sacct": [(SACCT, "", 0)]})
    used = slurm.usage(["41_0", "41_1", "41_2", "41_3", "42", "43"])
    assert used == {
        "41_0": Used(754 * 2 / 3600, "sacct", 754 * 192 / 3600),
        "41_1": Used(7230 * 2 / 3600, "sacct", 7230 * 192 / 3600),  # timed out: its whole limit, as sacct says
        "41_2": Used(0.0, "sacct"),  # never started: nothing used
        "41_3": Used(0.0, "sacct"),
        "42": None,  # still holding its nodes: ask again once it ended
    }  # 43: no record in the accounting, so its limit stands
    [sacct] = slurm.commands
    assert sacct[sacct.index("--jobs") + 1] == "41,42,43"  # one call for every job, arrays by their base


def test_a_poll_that_asked_sacct_leaves_usage_nothing_to_ask(tmp_path):
    slurm = slurm_backend(tmp_path, {"squeue": [("", "", 0)], "sacct": [(SACCT, "", 0)]})
    (tmp_path / "work" / "runs").mkdir(parents=True)
    states = slurm.poll({"41_0": "a", "41_1": "b"})
    assert states["41_1"].state is JobState.TIMEOUT
    assert [used.node_hours for used in slurm.usage(["41_0", "41_1"]).values()] == [754 * 2 / 3600, 7230 * 2 / 3600]
    assert slurm.calls["sacct"] == 1


def test_without_accounting_usage_says_nothing_and_asks_once(tmp_path):
    disabled = ("", "Slurm accounting storage is disabled\n", 1)
    slurm = slurm_backend(tmp_path, {"sacct": [disabled]})
    assert slurm.usage(["7", "8"]) == {}
    assert slurm.usage(["9"]) == {}
    assert slurm.calls["sacct"] == 1


def test_sacct_that_does_not_answer_in_time_is_asked_again_later(tmp_path):
    slurm = slurm_backend(tmp_path, {})

    def slow(argv, timeout=0, secrets=None):
        assert timeout <= 30  # time-boxed: a slow accounting database never holds a plan for long
        raise CommandTimeout(f"`env` did not answer within {timeout:.0f} s")

    slurm.host.run = slow
    with pytest.raises(BackendError, match="`sacct` did not answer"):
        slurm.usage(["7"])


def test_sshare_allocation_is_the_tightest_limit_less_used_and_held(tmp_path):
    # jjsc42: 600,000 node-minutes granted, 537,600 used, 7,200 held by running jobs
    assert sshare_allocation(SSHARE, 1000.0) == Allocation(
        (600000 - 537600 - 7200) / 60, "node-hours", "sshare", 1000.0, 10000.0, "jjsc42"
    )
    cpu_only = SSHARE.replace("cpu=28800000,node=600000", "cpu=28800000")
    assert sshare_allocation(cpu_only, 0.0) == Allocation(
        (28800000 - 25804800 - 345600) / 60, "core-hours", "sshare", 0.0, 480000.0, "jjsc42"
    )
    assert sshare_allocation(SSHARE.replace("cpu=28800000,node=600000", ""), 0.0) is None  # no limit set
    assert sshare_allocation("", 0.0) is None


def test_sshare_is_asked_for_the_configured_account_time_boxed(tmp_path):
    slurm = slurm_backend(tmp_path, {"sshare": [(SSHARE, "", 0)]}, account="jjsc42")
    allocation = slurm.allocation()
    assert allocation is not None and allocation.left == 920 and allocation.account == "jjsc42"
    assert "--accounts=jjsc42" in slurm.commands[0]
    failing = slurm_backend(tmp_path / "other", {"sshare": [("", "sshare: error: Problem with cluster\n", 1)]})
    with pytest.raises(BackendError, match="sshare failed: Problem with cluster"):
        failing.allocation()


# -- UNICORE: the site's budget ----------------------------------------------------------------------------


USER, PASSWORD = "alice", "wonderland"


def unicore_backend(site: FakeUnicore, tmp_path: Path, **config) -> UnicoreBackend:
    state = tmp_path / "project" / ".mantik"
    state.mkdir(parents=True, exist_ok=True)
    return UnicoreBackend("site", UnicoreConfig(type="unicore", url=site.url, timeout="5s", **config), state)


def test_a_unicore_sites_budget_is_read_from_its_target_system_factory(tmp_path, monkeypatch):
    monkeypatch.setenv("MANTIK_UNICORE_USERNAME", USER)
    monkeypatch.setenv("MANTIK_UNICORE_PASSWORD", PASSWORD)
    lines = ["jjsc42 12000 80 core-h", "other 5 1 node-h"]
    with FakeUnicore(tmp_path / "site", users={USER: PASSWORD}, budget=lines) as site:
        allocation = unicore_backend(site, tmp_path, project="jjsc42").allocation()
    assert allocation is not None
    assert (allocation.left, allocation.unit, allocation.account, allocation.source) == (
        12000,
        "core-h",
        "jjsc42",
        "UNICORE",
    )
    with FakeUnicore(tmp_path / "quiet", users={USER: PASSWORD}) as site:  # the TSI says nothing
        assert unicore_backend(site, tmp_path / "q").allocation() is None


def test_unicore_budget_entries_name_the_project_or_stand_alone():
    budget = {"__CURRENT_PROJECT__": {"remaining": "300", "units": "core-h", "rel": "-1%"}}
    assert site_allocation(budget, "", 5.0) == Allocation(300, "core-h", "UNICORE", 5.0)
    two = {"a": {"remaining": "1", "units": "node-h", "rel": "5%"}, "b": {"remaining": "2", "units": "node-h"}}
    assert site_allocation(two, "b", 0.0).left == 2  # type: ignore[union-attr]
    assert site_allocation(two, "", 0.0) is None  # two budgets and none named: not guessed
    assert site_allocation({"a": {"remaining": "-1", "units": "core-h"}}, "a", 0.0) is None


# -- apply records usage; budgets count it -----------------------------------------------------------------

CLUSTER = "backends:\n  cluster: {type: slurm, resources: {nodes: 2, time: '2:00:00'}}\n"


def on_cluster(path: Path, lrs: str, budget: float) -> None:
    """conftest.BASIC_SPEC's grid ``lrs`` on a Slurm backend ``cluster`` (2 nodes x 2h a run), within ``budget``."""
    spec = BASIC_SPEC.replace("backends:\n  local: {type: local, max_parallel: 4}\n", CLUSTER)
    spec = spec.replace("    entry_point: train\n", "    entry_point: train\n    backend: cluster\n")
    spec = spec.replace("parameters: {lr: [0.1, 0.2]}", f"parameters: {{lr: {lrs}}}")
    (path / "mantik.yaml").write_text(spec + f"budget: {{node_hours: {budget}}}\n")
    git(path, "commit", "-qam", "on the cluster")


def records(path: Path) -> dict[str, ObservedRun]:
    return {run.run_id: run for run in open_project(path).store.observe()}


@pytest.fixture
def repo(project, monkeypatch) -> Path:
    """conftest's committed project, driven in this process (CI would make apply refuse its local store)."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("CI", raising=False)
    return project.path


def apply_on(path: Path, fake: FakeBackend):
    project = open_project(path)
    project.backends["cluster"] = fake
    return apply(project, confirm=lambda plan: True, show=lambda plan: None)


def plan_text(path: Path, fake: FakeBackend) -> str:
    project = open_project(path)
    project.backends["cluster"] = fake
    plan, _ = build_plan(project)
    return render_text(plan)


def test_ended_runs_record_what_they_used_and_budgets_count_it(repo):
    on_cluster(repo, "[0.1, 0.2]", budget=10)
    fake = FakeBackend("cluster")
    apply_on(repo, fake)  # 2 runs x 2 nodes x 2h = 8 node-hours of 10
    first, second = sorted(fake.jobs)
    fake.end(first, JobState.COMPLETED, 0)
    fake.end(second, JobState.FAILED, 1)
    fake.accounted = {first: Used(0.5, "sacct", 24.0)}  # the second has no accounting record: its limit stands

    apply_on(repo, fake)  # closes both runs from their jobs' states, and records what they used

    runs = {run.job_id: run for run in records(repo).values()}
    assert (runs[first].status, runs[first].used) == (RunStatus.FINISHED, Used(0.5, "sacct"))  # billing: a tag
    assert (runs[second].status, runs[second].used) == (RunStatus.FAILED, Used(4.0, "limit"))
    tags = open_project(repo).store.client.get_run(runs[first].run_id).data.tags
    assert (tags["mantik.cost.used_node_hours"], tags["mantik.cost.used_source"]) == ("0.5", "sacct")
    assert tags["mantik.cost.used_billing_hours"] == "24"

    # a third point: at the limits 8 + 4 > 10 would be refused; as used, 0.5 + 4 + 4 fits
    on_cluster(repo, "[0.1, 0.2, 0.3]", budget=10)
    assert "Budget: the project: 4.5 node-hours used (at most; 0.5 measured) + 4 planned of 10" in plan_text(repo, fake)
    assert len(apply_on(repo, fake).started) == 1
    on_cluster(repo, "[0.1, 0.2, 0.3, 0.4]", budget=10)
    with pytest.raises(UserError, match=r"budget of the project: 8.5 node-hours used \(at most; 0.5 measured\) \+ 4"):
        apply_on(repo, fake)


def test_usage_a_site_cannot_give_now_is_recorded_by_a_later_apply(repo):
    on_cluster(repo, "[0.1]", budget=100)
    fake = FakeBackend("cluster")
    apply_on(repo, fake)
    [job] = fake.jobs
    fake.end(job, JobState.COMPLETED, 0)
    fake.accounted = {job: None}  # the accounting still shows the job holding its nodes
    apply_on(repo, fake)
    [run] = records(repo).values()
    assert run.status is RunStatus.FINISHED and run.used is None
    fake.accounted = {job: Used(1.25, "sacct")}
    apply_on(repo, fake)
    [run] = records(repo).values()
    assert run.used == Used(1.25, "sacct")
    calls = fake.calls["usage"]
    apply_on(repo, fake)
    assert fake.calls["usage"] == calls  # recorded: never asked again


def test_the_allocation_is_shown_with_its_age_cached_and_never_in_the_way(repo):
    on_cluster(repo, "[0.1]", budget=100)
    fake = FakeBackend("cluster")
    fake.left = Allocation(1234, "node-hours", "sshare", time.time() - 150, 10000, "jjsc42")
    text = plan_text(repo, fake)
    assert "Allocation: cluster: jjsc42 1,234 node-hours left of 10,000 (sshare, 2 min ago)" in text
    plan_text(repo, fake)
    assert fake.calls["allocation"] == 1  # the second plan read the cache
    project = open_project(repo)
    project.backends["cluster"] = fake
    plan, _ = build_plan(project)
    assert plan.cost is not None and plan.cost.to_json()["allocations"]["cluster"]["left"] == 1234

    cache = repo / ".mantik" / "cache" / "allocation.json"
    cache.unlink()
    fake.unreachable = "ssh: connect to host login.example.org port 22: Connection timed out"
    assert "Allocation:" not in plan_text(repo, fake)  # a site that cannot say is left out: the plan stands
    [entry] = json.loads(cache.read_text()).values()
    assert entry["allocation"] is None  # and not asked again for a while
    plan_text(repo, fake)
    assert fake.calls["allocation"] == 2


def test_allocation_age_reads_in_minutes_and_hours():
    allocation = Allocation(12000.4, "core-h", "UNICORE", 1000.0)
    assert (
        allocation_line("juwels", allocation, now=1030.0)
        == "Allocation: juwels: 12,000 core-h left (UNICORE, just now)"
    )
    assert allocation_line("juwels", allocation, now=1000.0 + 2 * 3600 + 5).endswith("(UNICORE, 2 h ago)")


# -- an estimated start -------------------------------------------------------------------------------------

WILL_RUN = (
    "sbatch: Job 1234 to start at 2026-12-05T09:10:00 using 96 processors on nodes jwc00n[001-002] in partition batch\n"
)


def test_sbatch_test_only_gives_the_start_for_the_backends_shape_and_submits_nothing(tmp_path):
    slurm = slurm_backend(
        tmp_path,
        {"sbatch": [("", WILL_RUN, 0)]},
        partition="batch",
        resources={"nodes": 2, "time": "2:00:00"},
        sbatch_args=["--constraint gpu"],
    )
    assert slurm.estimated_start() == "2026-12-05T09:10:00"
    [command] = slurm.commands
    assert command[:2] == ["sbatch", "--test-only"] and command[-1] == "--wrap=true"
    assert {"--partition=batch", "--nodes=2", "--time=2:00:00", "--constraint", "gpu"} <= set(command)
    refused = ("", "sbatch: error: Batch job submission failed: Requested node configuration is not available\n", 1)
    with pytest.raises(BackendError, match="Requested node configuration is not available"):
        slurm_backend(tmp_path / "small", {"sbatch": [refused]}).estimated_start()


def test_plan_shows_the_estimated_start_only_when_asked_and_never_fails_on_it(repo):
    on_cluster(repo, "[0.1, 0.2]", budget=100)
    fake = FakeBackend("cluster")
    fake.start = "2026-12-05T09:10:00"
    project = open_project(repo)
    project.backends["cluster"] = fake
    plan, _ = build_plan(project, estimate=True)
    assert "Start: cluster about 2026-12-05T09:10:00 (the scheduler's estimate)" in render_text(plan)
    assert fake.calls["estimated_start"] == 1  # once for the backend's shape, not once per run
    assert "Start:" not in plan_text(repo, fake)  # apply and watch do not ask
    fake.unreachable = "sbatch: error: Unable to contact slurm controller (connect failure)"
    project.backends["cluster"] = fake
    plan, _ = build_plan(project, estimate=True)
    assert "Start:" not in render_text(plan) and plan.cost is not None and plan.cost.starts == {}


# -- FirecREST: the job records it lists -------------------------------------------------------------------


def firecrest_record(job_id: str, state: str, elapsed: int | None, nodes: int) -> dict:
    """One job as FirecREST v2 lists it (JobModel: jobId, status, time.elapsed in seconds, allocationNodes);
    for ended jobs, sacct's record."""
    return {
        "jobId": job_id,
        "name": "mantik-sweep",
        "status": {"state": state, "stateReason": "None", "exitCode": 0, "interruptSignal": None},
        "time": {"elapsed": elapsed, "start": None, "end": None, "suspended": None, "limit": 120},
        "allocationNodes": nodes,
        "cluster": "daint",
        "nodes": "nid[001-004]",
        "partition": "normal",
        "workingDirectory": "/scratch/mantik/batches/0123456789abcdef",
    }


def test_firecrest_usage_is_read_from_the_listed_job_records(tmp_path):
    from mantik_spec.backends.firecrest import FirecrestBackend
    from mantik_spec.spec.model import FirecrestConfig

    state = tmp_path / "project" / ".mantik"
    state.mkdir(parents=True)
    config = FirecrestConfig(
        type="firecrest", url="https://api.example.org/firecrest/v2", machine="daint", workdir="/scratch/mantik"
    )
    site = FirecrestBackend("cscs", config, state)
    records = [
        firecrest_record("51_0", "COMPLETED", 1800, 4),
        firecrest_record("51_1", "RUNNING", 600, 4),
        firecrest_record("52", "FAILED", None, 1),  # no elapsed time in the record: no figure
    ]
    asked: list[str] = []

    def request(kind, call, retry=True):
        asked.append(kind)
        return records

    site._request = request  # type: ignore[method-assign]
    assert site.usage(["51_0", "51_1", "52", "49"]) == {"51_0": Used(2.0, "sacct"), "51_1": None}
    assert asked == ["jobs"]  # one listing, the one a poll reads
