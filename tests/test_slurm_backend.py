"""The Slurm backend's reading of what Slurm prints, and `validate`'s Slurm checks, without a Slurm.

The scheduler's answers here are the exact lines Slurm 20.11-24.11 prints (src/common/slurm_protocol_defs.c,
slurm_errno.c, src/sbatch/sbatch.c): cases the single-node Slurm cannot produce on demand (a federation,
accounting records of never-started array tasks, a controller that times out). What the real local Slurm
does is tested in test_slurm.py.
"""

from __future__ import annotations

import json
import shlex
import textwrap
from pathlib import Path

import pytest

from mantik_spec.backends.base import BackendError, CommandTimeout, JobRequest, SubmissionFailed
from mantik_spec.backends.batch import NEVER_STARTED, STATES, array_task_ids, slurm_status
from mantik_spec.backends.hosts import CommandResult, ConnectionDropped, LocalHost
from mantik_spec.backends.slurm import Answer, SlurmBackend, sbatch_answer
from mantik_spec.spec.model import SlurmConfig
from mantik_spec.vocab import JobState

# Every word job_state_string() can print, 20.11 to 24.11, and what it must mean for a run.
EXPECTED = {
    "PENDING": JobState.PENDING,
    "CONFIGURING": JobState.PENDING,
    "REQUEUED": JobState.PENDING,
    "REQUEUED_CRON": JobState.PENDING,
    "REQUEUE_FED": JobState.PENDING,
    "REQUEUE_HOLD": JobState.PENDING,
    "SPECIAL_EXIT": JobState.PENDING,  # requeued and held: may still be released and run
    "RESV_DEL_HOLD": JobState.PENDING,
    "SUSPENDED": JobState.PENDING,
    "RESIZING": JobState.RUNNING,
    "STOPPED": JobState.RUNNING,  # keeps its nodes, continues on SIGCONT
    "RUNNING": JobState.RUNNING,
    "COMPLETING": JobState.RUNNING,
    "STAGE_OUT": JobState.RUNNING,
    "SIGNALING": JobState.RUNNING,
    "REVOKED": JobState.UNKNOWN,  # runs on another cluster of the federation: never acted upon
    "COMPLETED": JobState.COMPLETED,
    "FAILED": JobState.FAILED,
    "DEADLINE": JobState.TIMEOUT,
    "CANCELLED": JobState.CANCELLED,
    "TIMEOUT": JobState.TIMEOUT,
    "OUT_OF_MEMORY": JobState.OUT_OF_MEMORY,
    "NODE_FAIL": JobState.NODE_FAIL,
    "BOOT_FAIL": JobState.NODE_FAIL,  # the nodes failed: the user's code never ran
    "PREEMPTED": JobState.PREEMPTED,
}


@pytest.mark.parametrize("word", sorted(EXPECTED))
def test_every_slurm_state_word_has_its_meaning(word):
    assert slurm_status(word).state is EXPECTED[word]
    assert slurm_status(f"{word}+").state is EXPECTED[word]  # sacct marks states with more to them
    if EXPECTED[word] is not JobState.FAILED:
        assert slurm_status(word).state is not JobState.FAILED


def test_state_table_is_exactly_slurms_words():
    assert set(STATES) == set(EXPECTED)


def test_held_and_unusual_states_say_why():
    assert "scontrol release" in slurm_status("SPECIAL_EXIT").detail
    assert "another cluster" in slurm_status("REVOKED").detail
    assert slurm_status("PENDING", "JobHeldUser").detail == "JobHeldUser"
    assert slurm_status("CANCELLED by 0").state is JobState.CANCELLED
    future = slurm_status("TELEPORTED")
    assert future.state is JobState.UNKNOWN and "TELEPORTED" in future.detail


@pytest.mark.parametrize(
    ("job_id", "tasks"),
    [
        ("123", ["123"]),
        ("123_5", ["123_5"]),
        ("123_[5-7]", ["123_5", "123_6", "123_7"]),
        ("21_[0,2-3]", ["21_0", "21_2", "21_3"]),
        ("13_[0-4%2]", ["13_0", "13_1", "13_2", "13_3", "13_4"]),
        ("9_[0-6:3]", ["9_0", "9_3", "9_6"]),
        ("9_[1,4-8:2%1]", ["9_1", "9_4", "9_6", "9_8"]),
        ("9_[1,4-8:2", []),  # cut at 64 bytes by sacct: names nothing safely
    ],
)
def test_sacct_grouped_array_records_are_expanded(job_id, tasks):
    assert array_task_ids(job_id) == tasks


@pytest.mark.parametrize(
    ("returncode", "stderr", "answer"),
    [
        (1, "sbatch: error: Batch job submission failed: Socket timed out on send/recv operation", Answer.IN_DOUBT),
        (
            1,
            "sbatch: error: Batch job submission failed: Unable to contact slurm controller (connect failure)",
            Answer.IN_DOUBT,
        ),
        (1, "sbatch: error: Batch job submission failed: Zero Bytes were transmitted or received", Answer.IN_DOUBT),
        (1, "sbatch: error: Batch job submission failed: Connection timed out", Answer.IN_DOUBT),
        (1, "sbatch: error: Socket timed out on send/recv operation", Answer.IN_DOUBT),
        (-9, "", Answer.IN_DOUBT),  # killed
        (137, "", Answer.IN_DOUBT),
        (1, "", Answer.IN_DOUBT),
        (
            1,
            "sbatch: error: invalid partition specified: nosuch\n"
            "sbatch: error: Batch job submission failed: Invalid partition name specified",
            Answer.REFUSED,
        ),
        (1, "sbatch: error: Batch job submission failed: Invalid job array specification", Answer.REFUSED),
        (255, "sbatch: error: Invalid --time specification", Answer.REFUSED),
        (1, "sbatch: fatal: --mem, --mem-per-cpu, and --mem-per-gpu are mutually exclusive.", Answer.REFUSED),
    ],
)
def test_sbatch_failures_are_refusals_only_when_nothing_can_be_queued(returncode, stderr, answer):
    assert sbatch_answer(returncode, stderr) is answer


class ScriptedHost(LocalHost):
    """This machine's files, with scheduler commands answered from a script of (stdout, stderr, code)."""

    def __init__(self, answers: dict[str, list[tuple[str, str, int]]]):
        super().__init__()
        self.answers = answers
        self.commands: list[list[str]] = []

    def run(self, argv, timeout=0, secrets=None):
        assert argv[0] == "env" and argv[1] == "-u"  # every command runs with sbatch's own variables unset
        unset = {argv[i + 1] for i, word in enumerate(argv) if word == "-u"}
        assert {"SLURM_CLUSTERS", "SBATCH_JOB_NAME", "SBATCH_ARRAY_INX", "SBATCH_EXPORT"} <= unset
        command = [word for i, word in enumerate(argv[1:], 1) if word != "-u" and argv[i - 1] != "-u"]
        self.commands.append(command)
        queue = self.answers[command[0]]
        stdout, stderr, code = queue.pop(0) if len(queue) > 1 else queue[0]
        return CommandResult(code, stdout, stderr)


def backend(tmp_path: Path, answers, **config) -> SlurmBackend:
    state = tmp_path / "project" / ".mantik"
    state.mkdir(parents=True)
    made = SlurmBackend("cluster", SlurmConfig(type="slurm", workdir=str(tmp_path / "work"), **config), state)
    made.host = ScriptedHost(answers)
    return made


def requests(tmp_path: Path, count: int = 2) -> list[JobRequest]:
    code = tmp_path / "code" / "abc123"
    code.mkdir(parents=True)
    (code / "train.py").write_text("print('hi')\n")
    (code / "job.json").write_text('{"mine": true}\n')  # committed, named like mantik's own file
    return [
        JobRequest(f"run{i}", f"key{i}", f"p{i}", "python train.py", code, "sqlite:///x.db", "1", group="sweep")
        for i in range(count)
    ]


TIMED_OUT = ("", "sbatch: error: Batch job submission failed: Socket timed out on send/recv operation\n", 1)


def test_in_doubt_submission_found_in_the_queue_is_accepted(tmp_path):
    slurm = backend(tmp_path, {})

    def controller_queued_it_anyway(argv, timeout=0, secrets=None):
        if "sbatch" in argv:
            return CommandResult(1, "", TIMED_OUT[1])
        script = next((tmp_path / "work" / "batches").iterdir()) / "script.sh"  # squeue shows it (%o)
        return CommandResult(
            0, f"77_0|PENDING|None|mantik-sweep|{script}\n77_1|PENDING|None|mantik-sweep|{script}\n", ""
        )

    slurm.host.run = controller_queued_it_anyway
    assert slurm.submit(requests(tmp_path)) == {"run0": "77_0", "run1": "77_1"}


def test_in_doubt_submission_not_in_the_queue_stays_open(tmp_path):
    slurm = backend(tmp_path, {"sbatch": [TIMED_OUT], "squeue": [("", "", 0)]})
    with pytest.raises(SubmissionFailed) as raised:
        slurm.submit(requests(tmp_path))
    assert raised.value.unknown == ["run0", "run1"] and raised.value.refused == []
    assert "may still appear" in str(raised.value)


def test_in_doubt_submission_with_an_unreadable_queue_stays_open(tmp_path):
    down = ("", "squeue: error: Unable to contact slurm controller (connect failure)\n", 1)
    slurm = backend(tmp_path, {"sbatch": [TIMED_OUT], "squeue": [down]})
    with pytest.raises(SubmissionFailed) as raised:
        slurm.submit(requests(tmp_path))
    assert raised.value.unknown == ["run0", "run1"] and raised.value.refused == []


def test_refusal_not_in_the_queue_is_refused(tmp_path):
    refused = ("", "sbatch: error: Batch job submission failed: Invalid partition name specified\n", 1)
    slurm = backend(tmp_path, {"sbatch": [refused], "squeue": [("", "", 0)]})
    with pytest.raises(SubmissionFailed) as raised:
        slurm.submit(requests(tmp_path))
    assert raised.value.refused == ["run0", "run1"] and raised.value.unknown == []
    assert "sbatch refused the job: Invalid partition name specified" in str(raised.value)


def test_a_job_sent_to_another_cluster_is_cancelled_there_and_refused(tmp_path):
    slurm = backend(tmp_path, {"sbatch": [("42;other\n", "", 0)], "squeue": [("", "", 0)], "scancel": [("", "", 0)]})
    with pytest.raises(SubmissionFailed) as raised:
        slurm.submit(requests(tmp_path))
    assert raised.value.refused == ["run0", "run1"]
    assert "cluster other" in str(raised.value)
    assert ["scancel", "--clusters=other", "42"] in slurm.host.commands


def test_never_started_array_tasks_read_from_sacct_groups(tmp_path):
    slurm = backend(
        tmp_path,
        {
            "squeue": [("", "", 0)],
            "sacct": [("21|CANCELLED by 0|0:0\n21_1|COMPLETED|0:0\n21_[0,2-3]|CANCELLED by 0|0:0\n", "", 0)],
        },
    )
    states = slurm.poll({"21_1": "a", "21_2": "b", "21_3": "c"})
    assert {j: s.state for j, s in states.items()} == {
        "21_1": JobState.COMPLETED,
        "21_2": JobState.CANCELLED,
        "21_3": JobState.CANCELLED,
    }


def test_job_gone_without_accounting_says_whether_the_code_ever_ran(tmp_path):
    disabled = ("", "Slurm accounting storage is disabled\n", 1)
    slurm = backend(tmp_path, {"squeue": [("", "", 0)], "sacct": [disabled]})
    started = tmp_path / "work" / "runs" / "ran"
    started.mkdir(parents=True)
    (started / "job_id").write_text("5_1\n")
    (tmp_path / "work" / "runs" / "waited").mkdir()
    states = slurm.poll({"5_0": "waited", "5_1": "ran"})
    assert states["5_0"].state is JobState.LOST and states["5_0"].detail == NEVER_STARTED
    assert "never ran" in states["5_0"].detail and "no accounting" in states["5_0"].detail
    assert states["5_1"].state is JobState.LOST and "started" in states["5_1"].detail


def test_batch_script_quotes_paths_for_sbatch_and_bash(tmp_path):
    odd = tmp_path / 'it\'s a "dir" 100%'
    slurm = backend(tmp_path, {"sbatch": [("9\n", "", 0)]})
    slurm.workdir = str(odd)
    slurm.submit(requests(tmp_path, 1))
    script = next((odd / "batches").iterdir()) / "script.sh"
    text = script.read_text()
    escaped = str(odd).replace('"', '\\"').replace("%", "%%")  # sbatch's quoting, then its %-patterns
    assert f'#SBATCH "--output={escaped}/batches/{script.parent.name}/slurm-%A_%a.out"\n' in text
    assert f'sed -n "$(( ${{SLURM_ARRAY_TASK_ID:-0}} + 1 ))p" {shlex.quote(str(script.parent / "runs.txt"))}' in text
    run = odd / "runs" / "run0"
    assert json.loads((run / "job.json").read_text())["run_id"] == "run0"  # mantik's, beside the code
    assert (run / "work" / "job.json").read_text() == '{"mine": true}\n'  # the user's, in the run's cwd
    assert (run / "work" / "train.py").read_text() == "print('hi')\n"


def write_spec(path: Path, backend_yaml: str) -> None:
    spec = textwrap.dedent(
        """\
        version: 1
        project: v
        code: {paths: [train.py]}
        entry_points:
          train:
            command: python train.py --lr {lr}
            parameters:
              lr: float
        backends:
          cluster:
            type: slurm
        """
    ) + textwrap.indent(textwrap.dedent(backend_yaml), "    ")
    spec += "experiments:\n  sweep:\n    entry_point: train\n    parameters: {lr: [0.1]}\n"
    path.write_text(spec)


def test_validate_refuses_sbatch_options_that_hide_or_break_the_job(project):
    write_spec(
        project.path / "mantik.yaml",
        """\
        sbatch_args:
          - --job-name=mine
          - -J mine
          - --clusters=other
          - -M other
          - --array=0-3%1
          - -o out.txt
          - --wait
          - --parsable
          - --export=NONE
          - --job=x
          - --constraint=gpu
          - --export=ALL,X=1
          - --exclusive
        """,
    )
    lines = project.mantik("validate", check=1).stderr.strip().splitlines()
    refused = {line.split(":")[1]: line for line in lines if "sbatch_args" in line}
    assert sorted(int(n) for n in refused) == list(range(15, 22)), lines  # one line each, at its own line
    assert "--clusters cannot be set here" in refused["15"] and "login node's own cluster" in refused["15"]
    assert "--array cannot be set here" in refused["17"]
    assert "--export=ALL" in refused["21"]
    # a name of the user's own (even abbreviated, as getopt takes it) is theirs: jobs are found by their script
    accepted = ("--job-name=mine", "-J mine", "--job=x", "--constraint", "--exclusive", "X=1")
    assert not any(item in line for item in accepted for line in lines)


def test_validate_refuses_memory_set_twice_and_line_breaks_in_paths(project):
    write_spec(
        project.path / "mantik.yaml",
        """\
        workdir: "/scratch/a\\ntouch /tmp/x"
        python: "python3\\nrm -rf x"
        resources: {mem: 1G, mem_per_cpu: 1G}
        sbatch_args: [--mem-per-gpu=2G]
        """,
    )
    lines = project.mantik("validate", check=1).stderr.strip().splitlines()
    assert any(line.startswith("mantik.yaml:12:") and "workdir: contains a line break" in line for line in lines)
    assert any(line.startswith("mantik.yaml:13:") and "python: contains a line break or NUL" in line for line in lines)
    # (a NUL anywhere is refused as the file is read, before these checks: tests/test_spec_hostile.py)
    memory = next(line for line in lines if "memory" in line)
    assert memory.startswith("mantik.yaml:14:")
    assert "resources.mem, resources.mem_per_cpu, sbatch_args --mem-per-gpu=2G" in memory
    assert "mutually" not in memory and "keep one" in memory


# how squeue lists a batch's job: as this version submits it (its name, its batch script), as versions that
# named jobs after their batch did (those jobs must still be found, or they would be submitted twice), and
# renamed by the user; a name alone never makes a job mantik's
LISTED = {
    "named after the experiment": "{id}|RUNNING|None|mantik-sweep|{script}\n",
    "named after the batch": "{id}|RUNNING|None|mantik-{batch}|/home/me/old-work/batches/{batch}/script.sh\n",
    "a name of the user's own": "{id}|RUNNING|None|my | job|{script}\n",
}


@pytest.mark.parametrize("listed", LISTED)
@pytest.mark.parametrize(
    "failure", [ConnectionDropped("ssh to login failed: Broken pipe"), CommandTimeout("no answer")]
)
def test_connection_lost_during_sbatch_is_resolved_by_looking(tmp_path, failure, listed):
    slurm = backend(tmp_path, {})
    queued = []

    def dropped(argv, timeout=0, secrets=None):
        if "sbatch" in argv:
            raise failure
        batch = next((tmp_path / "work" / "batches").iterdir())
        lines = [LISTED[listed].format(id=f"31_{i}", script=batch / "script.sh", batch=batch.name) for i in queued]
        others = "32|RUNNING|None|mantik-sweep|/home/me/train.sh\n33|PENDING|None|mantik-0123456789abcdef|x.sh\n"
        return CommandResult(0, others + "".join(lines), "")

    slurm.host.run = dropped
    with pytest.raises(SubmissionFailed) as raised:  # not queued (yet): open, for the next plan
        slurm.submit(requests(tmp_path))
    assert raised.value.unknown == ["run0", "run1"] and raised.value.refused == []
    queued.extend([0, 1])  # the controller had it after all: the next plan adopts it by its name
    slurm._listing = None
    assert slurm.find(["run0", "run1"]) == {"run0": "31_0", "run1": "31_1"}


def test_a_scheduler_command_missing_here_is_one_line_naming_it(tmp_path):
    """sbatch absent: env(1) answers 127; that is a plain refusal naming sbatch, never a job in doubt."""
    made = backend(tmp_path, {"sbatch": [("", "env: 'sbatch': No such file or directory", 127)]})
    with pytest.raises(BackendError, match=r"`sbatch` is not on the PATH where mantik runs it"):
        made.submit(requests(tmp_path, 1))
    assert [command[0] for command in made.host.commands] == ["sbatch"]  # no queue lookup: nothing was sent


def test_cancel_reaches_only_this_projects_batches(tmp_path):
    """A job id comes from a run record, which anyone who can write to the tracking store can write: scancel
    is asked only for jobs the queue shows running one of this backend's batches, and never given an option."""
    ours = tmp_path / "work" / "batches" / "0123456789abcdef"
    ours.mkdir(parents=True)
    other_project = tmp_path / "elsewhere" / "batches" / "fedcba9876543210"  # the same user's other project
    listing = (
        f"41_0|RUNNING|None|mantik-sweep|{ours}/script.sh\n"
        f"41_1|PENDING|None|mantik-sweep|{ours}/script.sh\n"
        f"52|RUNNING|None|mantik-sweep|{other_project}/script.sh\n"
        "63|RUNNING|None|interactive|/bin/bash\n"
    )
    for forged in (["52"], ["63"], ["41_0", "63"], ["--user=alice"], ["-u", "alice"], ["41_0 63"]):
        slurm = backend(tmp_path / forged[0].replace("/", "_").replace(" ", "_"), {"squeue": [(listing, "", 0)]})
        slurm.workdir = str(tmp_path / "work")
        with pytest.raises(BackendError) as refused:
            slurm.cancel(forged)
        assert "is not a batch of this project" in str(refused.value) and "left alone" in str(refused.value)
        assert [command[0] for command in slurm.host.commands] == ["squeue"]  # nothing was cancelled
    slurm = backend(tmp_path / "own", {"squeue": [(listing, "", 0)], "scancel": [("", "", 0)]})
    slurm.workdir = str(tmp_path / "work")
    slurm.cancel(["41_0", "41_1", "40_3"])  # 40_3 is no longer listed: it ended, nothing to cancel
    assert slurm.host.commands[-1] == ["scancel", "41_0", "41_1"]


def test_validate_refuses_every_sbatch_option_that_places_the_jobs_files(project):
    """--output and --error name files sbatch writes where it ran (the repository, for a cluster here), which
    the next apply finds as uncommitted changes, and stderr would leave the file mantik logs reads; --chdir
    moves where the script starts. Refused in each form getopt takes; --input and --open-mode are passed on."""
    refused_items = [
        "--error=run-err.%j",
        "--error run-err.%j",
        "-e run-err.%j",
        "-erun-err.%j",
        "--err=x",
        "--output=run-out.%j",
        "--output run-out.%j",
        "-o run-out.%j",
        "-orun-out.%j",
        "--chdir=/tmp",
        "--chdir /tmp",
        "-D /tmp",
        "-D/tmp",
    ]
    accepted_items = ["--input=in.txt", "--input in.txt", "-i in.txt", "--open-mode=append", "--open-mode append"]
    items = "".join(f"  - {item!r}\n" for item in [*refused_items, *accepted_items])
    # copied from a batch script into setup, an #SBATCH line would still reach sbatch as an option
    setup = "setup: ['#SBATCH --error=run-err.%j', 'echo ready']\n"
    write_spec(project.path / "mantik.yaml", "sbatch_args:\n" + items + setup)
    lines = project.mantik("validate", check=1).stderr.strip().splitlines()
    refused = {int(line.split(":")[1]): line for line in lines if ".sbatch_args[" in line}
    first = 13  # the line of the first item
    assert sorted(refused) == list(range(first, first + len(refused_items))), lines  # one line each, at its own
    for number, item in enumerate(refused_items, first):
        name = {"e": "error", "o": "output", "D": "chdir"}.get(item[1], item[2:].split("=")[0].split()[0])
        assert f"--{'error' if name == 'err' else name} cannot be set here" in refused[number], refused[number]
    assert "where mantik logs reads" in refused[first] and "drop it" in refused[first]
    assert "set workdir" in refused[first + 9]
    (setup_line,) = [line for line in lines if ".setup[" in line]
    assert setup_line.startswith(f"mantik.yaml:{first + len(refused_items) + len(accepted_items)}:")
    assert "setup[0]" in setup_line and "write it in sbatch_args" in setup_line
