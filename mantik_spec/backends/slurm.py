"""The Slurm backend: job arrays through sbatch, one squeue (+ at most one sacct) per poll.

Layout under ``workdir`` on the cluster's shared filesystem::

    code/COMMIT/              the committed tree, staged once per commit
    bin/runner-HASH.py        the in-job runner
    runs/RUN_ID/              one per run: mantik's files (job.json, output.log, exit_code, job_id, batch)
    runs/RUN_ID/work/         links to the entries of code/COMMIT/: the run's cwd, apart from mantik's
                              files, so a committed file named job.json is the user's and stays so
    batches/BATCH/            one per sbatch: script.sh, runs.txt (array index -> run dir), slurm-*.out

The job is named ``mantik-EXPERIMENT`` for the people reading squeue. Its
batch script's path (``batches/BATCH/script.sh``, squeue's command) and each
run's ``batch`` file tie a submitted job back to its runs, and the job writes
its own id into its run directory as it starts, so a crashed apply adopts its
jobs instead of submitting them twice, in the queue or after they left it.
"""

from __future__ import annotations

import enum
import errno
import hashlib
import json
import os
import re
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .. import runner
from ..faults import checkpoint
from ..spec.model import SlurmConfig, duration_seconds
from ..templating import packaged, render
from ..vocab import JobState, JobStatus
from .base import (
    BackendBase,
    BackendError,
    CommandTimeout,
    JobRequest,
    SubmissionFailed,
    SubmissionInDoubt,
    tracking_secrets,
)
from .hosts import ConnectionDropped, LocalHost
from .staging import Archive, staged_files

if TYPE_CHECKING:
    from .ssh import SSHHost

JOB_NAME_PREFIX = "mantik-"
JOB_NAME_CHARACTERS = re.compile(r"[^A-Za-z0-9_.-]")
JOB_NAME_LENGTH = 64  # characters of the experiment kept in the name: enough to tell experiments apart
# Where a listed job says which batch it is, whatever its name: its batch script (squeue's command, %o, made
# absolute by sbatch: src/sbatch/opt.c) or its working directory (FirecREST submits from the batch directory).
# Jobs of versions that named them mantik-BATCH were submitted the same way: they are found alike.
BATCH_PATH = re.compile(r"/batches/([0-9a-f]{16})(?:/script\.sh)?/?$")
RUN_CWD = "work"  # the run's working directory inside its run directory
NEVER_STARTED = (
    "left the queue before it started, so the run's code never ran (cancelled while pending, outside mantik?); "
    "this cluster keeps no accounting to say why"
)
GONE_WHILE_RUNNING = (
    "started but left the queue without an exit code (killed: cancelled, time limit, memory, node failure); "
    "this cluster keeps no accounting to say which"
)

# Every word Slurm's job_state_string() prints (src/common/slurm_protocol_defs.c, 20.11 to 24.11), squeue
# and sacct alike: state -> (what it means for a run, what to tell the user when the word alone is not clear).
STATES: dict[str, tuple[JobState, str]] = {
    "PENDING": (JobState.PENDING, ""),
    "CONFIGURING": (JobState.PENDING, ""),  # nodes booting for it
    "REQUEUED": (JobState.PENDING, "requeued"),
    "REQUEUED_CRON": (JobState.PENDING, "requeued (cron job)"),  # 20.11 only
    "REQUEUE_FED": (JobState.PENDING, "requeued by the federation"),
    "REQUEUE_HOLD": (JobState.PENDING, "requeued and held: release it with scontrol release, or cancel it"),
    "SPECIAL_EXIT": (
        JobState.PENDING,
        "requeued and held after a special exit: release it with scontrol release, or cancel it",
    ),
    "RESV_DEL_HOLD": (JobState.PENDING, "held because its reservation was deleted"),
    "RESIZING": (JobState.RUNNING, "being resized"),
    "SUSPENDED": (JobState.PENDING, "suspended"),
    "STOPPED": (JobState.RUNNING, "stopped (SIGSTOP): it keeps its nodes and continues on SIGCONT"),
    "RUNNING": (JobState.RUNNING, ""),
    "COMPLETING": (JobState.RUNNING, ""),
    "STAGE_OUT": (JobState.RUNNING, "staging out"),
    "SIGNALING": (JobState.RUNNING, "being signalled"),
    # a federation sibling started the job on another cluster: it may run there, out of this cluster's sight
    "REVOKED": (JobState.UNKNOWN, "REVOKED: another cluster of the federation runs it"),
    "COMPLETED": (JobState.COMPLETED, ""),
    "FAILED": (JobState.FAILED, ""),
    "DEADLINE": (JobState.TIMEOUT, "DEADLINE: its --deadline passed"),
    "CANCELLED": (JobState.CANCELLED, ""),
    "TIMEOUT": (JobState.TIMEOUT, ""),
    "OUT_OF_MEMORY": (JobState.OUT_OF_MEMORY, ""),
    "NODE_FAIL": (JobState.NODE_FAIL, ""),
    "BOOT_FAIL": (JobState.NODE_FAIL, "BOOT_FAIL: its nodes failed to boot; the run's code never started"),
    "PREEMPTED": (JobState.PREEMPTED, ""),
}


def slurm_state(text: str) -> JobState:
    """``CANCELLED by 0`` and ``CANCELLED+`` are CANCELLED; a word Slurm may add later is UNKNOWN."""
    return slurm_status(text).state


def job_name(experiment: str | None) -> str:
    """The job's name, ``mantik-EXPERIMENT``, as squeue and sacct show it. Characters other than letters,
    digits, ``_``, ``.`` and ``-`` become ``-``: the name stands unquoted on the ``#SBATCH`` line."""
    return JOB_NAME_PREFIX + JOB_NAME_CHARACTERS.sub("-", experiment or "run")[:JOB_NAME_LENGTH]


def batch_of(path: str) -> str:
    """The batch id of a listed job, read from ``path`` (its batch script or working directory); empty for
    anyone else's job."""
    found = BATCH_PATH.search(path)
    return found.group(1) if found else ""


def slurm_status(text: str, reason: str = "") -> JobStatus:
    """A state word (as squeue's %T or sacct's State print it) and squeue's reason, as a status."""
    word = text.split()[0].rstrip("+") if text.strip() else ""
    state, note = STATES.get(word, (JobState.UNKNOWN, f"Slurm reports {word or 'no state'}"))
    detail = "; ".join(part for part in (note, _reason(reason)) if part)
    return JobStatus(state, detail=detail)


# Slurm's error texts (src/common/slurm_errno.c, plus the C library's for the same failures) that mean the
# exchange with the controller broke off: it may have queued the job before sbatch gave up.
IN_DOUBT = frozenset(
    {
        "Communication connection failure",
        "Message send failure",
        "Message receive failure",
        "Communication shutdown failure",
        "Unexpected missing socket error",
        "Unable to contact slurm controller (connect failure)",
        "Unable to contact slurm controller (send failure)",
        "Unable to contact slurm controller (receive failure)",
        "Unable to contact slurm controller (shutdown failure)",
        "Header lengths are longer than data received",
        "Socket timed out on send/recv operation",
        "Zero Bytes were transmitted or received",
        *(
            os.strerror(code)
            for code in (errno.ETIMEDOUT, errno.ECONNRESET, errno.ECONNABORTED, errno.EPIPE, errno.EINTR, errno.EIO)
        ),
    }
)
SUBMISSION_FAILED = "Batch job submission failed: "  # sbatch's prefix for the controller's answer (sbatch.c)
# sbatch takes options from SBATCH_* variables over #SBATCH lines (sbatch.1, INPUT ENVIRONMENT VARIABLES), so
# a variable left in the login shell would rename the job (adoption finds it by name), replace its array or
# output, hold sbatch until the job ends, drop mantik's environment, or send the job to another cluster than
# the one squeue, sacct and scancel ask (their *_CLUSTERS variables likewise). Unset for every Slurm command.
OWNED_VARIABLES = (
    "SLURM_CLUSTERS",
    "SBATCH_CLUSTERS",
    "SQUEUE_CLUSTERS",
    "SACCT_CLUSTERS",
    "SBATCH_JOB_NAME",
    "SBATCH_ARRAY_INX",
    "SBATCH_OUTPUT",
    "SBATCH_WAIT",
    "SBATCH_EXPORT",
)
# ... and those standing for a value the spec sets, which must win as the spec says (unset only then)
SPEC_VARIABLES = {
    "partition": ("SBATCH_PARTITION",),
    "account": ("SBATCH_ACCOUNT",),
    "qos": ("SBATCH_QOS",),
    "time": ("SBATCH_TIMELIMIT",),
    "gpus": ("SBATCH_GPUS",),
    "gres": ("SBATCH_GRES",),
    # one memory option in the spec: any other one from the environment would make sbatch refuse the job
    "mem": ("SBATCH_MEM_PER_NODE", "SBATCH_MEM_PER_CPU", "SBATCH_MEM_PER_GPU"),
    "mem_per_cpu": ("SBATCH_MEM_PER_NODE", "SBATCH_MEM_PER_CPU", "SBATCH_MEM_PER_GPU"),
}


class Answer(enum.Enum):
    """What a non-zero (or unreadable) sbatch answer says about the job."""

    REFUSED = "refused"  # sbatch's own checks or the controller said no: nothing was queued
    IN_DOUBT = "in doubt"  # the exchange broke off: the job may be queued


def sbatch_answer(returncode: int, stderr: str) -> Answer:
    """Classify a failed sbatch by its exit status and the kind of error it names.

    sbatch exits 1 (or SLURM_EXIT_ERROR) for every failure (src/sbatch/sbatch.c), so the status alone
    cannot tell a refusal from a broken exchange; the controller's answer follows ``SUBMISSION_FAILED``
    and is one of slurm_errno.c's texts. Killed by a signal, silent, or a communication error: in doubt.
    Option and script errors sbatch finds itself (before it contacts the controller), and any answer
    of the controller's: refused."""
    if returncode < 0 or returncode > 128 and returncode != 255:  # killed by a signal (directly or via a shell)
        return Answer.IN_DOUBT
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    if not lines:
        return Answer.IN_DOUBT
    for line in lines:
        cause = line.split(SUBMISSION_FAILED, 1)[1] if SUBMISSION_FAILED in line else line.split(": ")[-1]
        if cause.strip() in IN_DOUBT:
            return Answer.IN_DOUBT
    return Answer.REFUSED


# -- what the Slurm and FirecREST backends share: batches, their ids, scripts and submission ---------------


def batch_id_of(batch: Sequence[JobRequest]) -> str:
    """The batch's id, from its runs: the name of its directory ``batches/BATCH`` and how its job is found."""
    return hashlib.sha256("\n".join(r.run_id for r in batch).encode()).hexdigest()[:16]


def split_batches(requests: Sequence[JobRequest], config) -> list[list[JobRequest]]:
    """One batch per experiment, split at ``max_array_size``; one run each when arrays are off."""
    size = config.max_array_size if config.array else 1
    groups: dict[str | None, list[JobRequest]] = defaultdict(list)
    for request in requests:
        groups[request.group].append(request)
    return [group[i : i + size] for group in groups.values() for i in range(0, len(group), size)]


def submit_batches(
    batches: list[list[JobRequest]], submit_batch: Callable[[list[JobRequest]], dict[str, str]]
) -> dict[str, str]:
    """Submit each batch in turn: run id -> job id. The first failure raises SubmissionFailed with what was
    accepted; the failed batch's runs are unknown when it may have been queued (SubmissionInDoubt, found or
    resubmitted by the next plan), else refused with every later batch's."""
    submitted: dict[str, str] = {}
    for position, batch in enumerate(batches):
        if position:
            checkpoint("between-batches")  # a crash here leaves part of an experiment's array queued
        try:
            submitted.update(submit_batch(batch))
        except BackendError as exc:
            unsent = [r.run_id for later in batches[position + 1 :] for r in later]
            this = [r.run_id for r in batch]
            unknown, refused = (this, unsent) if isinstance(exc, SubmissionInDoubt) else ([], this + unsent)
            raise SubmissionFailed(f"experiment {batch[0].group or '?'}: {exc}", submitted, refused, unknown) from None
    return submitted


def add_run(
    files: Archive, request: JobRequest, batch_id: str, code: str, top_level: dict[Path, list[str]], exclude
) -> None:
    """A run's directory in a batch's archive (paths relative to the work directory): job.json, its batch,
    and links to the staged code ``code`` (``code/NAME``), its working directory. ``top_level`` keeps, per
    exported tree, the entries a run directory links to."""
    if request.code_dir not in top_level:
        staged = staged_files(request.code_dir, exclude)
        top_level[request.code_dir] = sorted({relative.split("/")[0] for _, relative in staged})
    run_dir = f"runs/{request.run_id}"
    for entry in top_level[request.code_dir]:
        files.add_link(f"{run_dir}/{RUN_CWD}/{entry}", f"../../../{code}/{entry}")
    files.add_text(f"{run_dir}/batch", batch_id + "\n")
    files.add_text(f"{run_dir}/job.json", json.dumps(request.runner_job(RUN_CWD), indent=2))


def batch_template(config, project_root: Path) -> str:
    """The batch script template: the project's own (``template:``) or the packaged one."""
    if not config.template:
        return packaged("slurm-batch.sh.j2")
    try:
        return (project_root / config.template).read_text()
    except OSError as exc:
        raise BackendError(f"cannot read the batch template {config.template}: {exc.strerror}") from None


def batch_script(
    template: str,
    config,
    batch: Sequence[JobRequest],
    batch_dir: str,
    run_dirs: Sequence[str],
    runner_path: str,
    extra_directives: Sequence[str] = (),
) -> str:
    """One batch's script, rendered from ``template`` with the variables docs/slurm.md lists."""
    return render(
        template,
        {
            "job_name": job_name(batch[0].group),
            "experiment": batch[0].group,
            "batch_dir": batch_dir,
            # sbatch reads #SBATCH lines with its own quoting (src/sbatch/opt.c get_argument) and expands
            # %-patterns in file names (%% is a literal %): a path with spaces, quotes or % arrives intact
            "output": sbatch_quote(f"--output={batch_dir.replace('%', '%%')}/slurm-%A_%a.out"),
            "directives": [*directives(config), *extra_directives],
            "array": f"0-{len(batch) - 1}" if config.array else "",
            "modules": config.modules,
            "setup": config.setup,
            "runs_file": f"{batch_dir}/runs.txt",
            "runs": [
                {"run_id": r.run_id, "run_key": r.run_key, "point": r.point_id, "dir": d}
                for r, d in zip(batch, run_dirs, strict=True)
            ],
            "python": config.python,
            "runner": runner_path,
        },
    )


def directives(config) -> list[str]:
    """The #SBATCH options of a Slurm or FirecREST backend's config (values validated to be plain words)."""
    options = [
        f"--{key}={value}"
        for key in ("partition", "account", "qos", "reservation", "constraint")
        if (value := getattr(config, key, None))
    ]
    for name, value in config.resources.model_dump(exclude_none=True).items():
        options.append(f"--{name.replace('_', '-')}={value}")
    return options + list(getattr(config, "sbatch_args", ()))


class SlurmBackend(BackendBase):
    launches_in_allocation = True
    sends_inputs = False  # a local image is not copied to the cluster: it must be put there

    def __init__(self, name: str, config: SlurmConfig, state_root: Path):
        self.name = name
        self.config = config
        project_root = state_root.parent
        self.host: LocalHost | SSHHost
        if config.ssh is None:
            # mantik runs on the login node, whose filesystem the compute nodes share
            self.host, self.shares_files = LocalHost(), True
            workdir = Path(config.workdir).expanduser()
            self.workdir = str(workdir if workdir.is_absolute() else project_root / workdir)
        else:
            from .ssh import SSHHost

            self.host, self.shares_files = SSHHost(config.ssh, project_root), False
            # remote commands start in the home directory: relative paths (and ~/) are taken from there
            self.workdir = config.workdir.removeprefix("~/") if config.workdir.startswith("~/") else config.workdir
        self.project_root = project_root
        self.min_poll_interval = duration_seconds(config.poll_interval)
        self.calls: Counter = Counter()  # scheduler commands run, for -v and the bench
        self._listing: tuple[float, dict[str, tuple[JobStatus, str]]] | None = None
        self._staged_code: set[Path] = set()
        self._top_level: dict[Path, list[str]] = {}  # the entries a run directory links to, per commit
        self._accounting: bool | None = None
        chosen = {name for name, value in config.resources.model_dump().items() if value is not None}
        chosen |= {name for name in ("partition", "account", "qos") if getattr(config, name)}
        unset = set(OWNED_VARIABLES) | {v for name in chosen for v in SPEC_VARIABLES.get(name, ())}
        self._unset = [word for name in sorted(unset) for word in ("-u", name)]

    # -- commands ------------------------------------------------------------------------------

    def _run(self, argv: list[str], secrets: dict | None = None):
        self.calls[argv[0]] += 1
        try:
            result = self.host.run(["env", *self._unset, *argv], secrets=secrets)
        except CommandTimeout as exc:  # name the scheduler command, not the env(1) that starts it
            raise CommandTimeout(str(exc).replace("`env`", f"`{argv[0]}`", 1)) from None
        if result.returncode == 127:  # env(1)'s exit status when it cannot find the command (POSIX)
            raise BackendError(
                f"`{argv[0]}` is not on the PATH where mantik runs it ({result.error_line()}): run mantik where "
                "the scheduler's commands are, or make the login shell load them"
            )
        return result

    def _path(self, *parts: str) -> str:
        return "/".join([self.workdir, *parts])

    # -- submit --------------------------------------------------------------------------------

    def submit(self, requests: list[JobRequest]) -> dict[str, str]:
        if not requests:
            return {}
        self.host.makedirs(self._path("code"))
        if not self.workdir.startswith("/"):  # over SSH: the job script needs paths that hold from any cwd
            self.workdir = self.host.absolute(self.workdir)
        runner_path = self._stage_runner()
        template = batch_template(self.config, self.project_root)
        return submit_batches(
            split_batches(requests, self.config), lambda batch: self._submit_batch(batch, runner_path, template)
        )

    def _stage_runner(self) -> str:
        source = Path(runner.__file__).read_bytes()
        path = self._path("bin", f"runner-{hashlib.sha256(source).hexdigest()[:12]}.py")
        if not self.host.exists(path):
            self.host.makedirs(self._path("bin"))
            self.host.write_text(path, source.decode())
        return path

    def _stage_code(self, code_dir: Path) -> str:
        """The committed tree, once per commit (the export is named after it)."""
        if code_dir not in self._staged_code:
            destination = self._path("code", code_dir.name)
            self.host.put_tree(code_dir, destination, self.config.exclude)
            self._staged_code.add(code_dir)
        return f"code/{code_dir.name}"

    def _submit_batch(self, batch: list[JobRequest], runner_path: str, template: str) -> dict[str, str]:
        batch_id = batch_id_of(batch)
        batch_dir = self._path("batches", batch_id)
        run_dirs = [self._path("runs", request.run_id) for request in batch]
        script = batch_script(template, self.config, batch, batch_dir, run_dirs, runner_path)
        # every file of the batch in one archive: over SSH, one exchange instead of a few per run
        files = Archive()
        files.add_text(f"batches/{batch_id}/runs.txt", "".join(f"{d}\n" for d in run_dirs))
        files.add_text(f"batches/{batch_id}/script.sh", script)
        for request in batch:
            add_run(files, request, batch_id, self._stage_code(request.code_dir), self._top_level, self.config.exclude)
        self.host.extract(files.bytes(), self.workdir)
        # sbatch passes its environment to the job; over SSH the login shell lacks the tracking credentials
        secrets = None if self.shares_files else tracking_secrets()
        try:
            result = self._run(["sbatch", "--parsable", f"{batch_dir}/script.sh"], secrets=secrets)
        except (CommandTimeout, ConnectionDropped) as exc:  # the script may have reached the controller
            why, answer = str(exc), Answer.IN_DOUBT
        else:
            self._listing = None  # the next poll must see the new jobs
            accepted = result.stdout.strip()
            base, _, cluster = accepted.partition(";")
            if result.returncode == 0 and base.isdigit() and not cluster:
                return self._job_ids(batch, base)
            if result.returncode == 0 and base.isdigit():
                self._cancel_elsewhere(base, cluster)
                raise BackendError(
                    f"sbatch queued the job on cluster {cluster} (a --clusters/-M line in the batch template?); "
                    "mantik follows jobs on the login node's own cluster only, so it cancelled job "
                    f"{base} there: remove the cluster choice"
                )
            if result.returncode == 0:
                why, answer = f"sbatch answered {accepted!r} instead of a job id", Answer.IN_DOUBT
            else:
                answer = sbatch_answer(result.returncode, result.stderr)
                said = "refused the job" if answer is Answer.REFUSED else f"failed (exit {result.returncode})"
                why = f"sbatch {said}: {_strip_prefix(result.error_line())}"
        # Before anything is recorded, look: the queue shows each job's batch script, so a job the controller
        # queued despite the failed answer is found and kept instead of being submitted a second time.
        try:
            queued = self._queued_as(batch_id)
        except BackendError as exc:
            raise SubmissionInDoubt(f"{why}; the queue could not be read to check ({exc})") from None
        if queued is not None:
            return self._job_ids(batch, queued)
        if answer is Answer.IN_DOUBT:
            raise SubmissionInDoubt(f"{why}; batch {batch_id} is not in the queue yet, so it may still appear")
        raise BackendError(why)

    def _job_ids(self, batch: list[JobRequest], base: str) -> dict[str, str]:
        return {r.run_id: (f"{base}_{i}" if self.config.array else base) for i, r in enumerate(batch)}

    def _queued_as(self, batch_id: str) -> str | None:
        """The base id of batch ``batch_id``'s job in the queue, None when there is none."""
        self._listing = None
        for job_id, (_, batch) in self._queue().items():
            if batch == batch_id:
                return job_id.split("_")[0]
        return None

    def _cancel_elsewhere(self, job_id: str, cluster: str) -> None:
        if re.fullmatch(r"[A-Za-z0-9_.-]+", cluster):
            self._run(["scancel", f"--clusters={cluster}", job_id])

    # -- observe -------------------------------------------------------------------------------

    def _queue(self) -> dict[str, tuple[JobStatus, str]]:
        """Every job of the user's Slurm still knows: job id -> (status, batch id; empty when not mantik's).
        Cached for the poll interval."""
        now = time.monotonic()
        if self._listing is not None and now - self._listing[0] < self.min_poll_interval:
            return self._listing[1]
        result = self._run(["squeue", "--me", "--states=all", "--array", "--noheader", "--format=%i|%T|%r|%j|%o"])
        if result.returncode != 0:
            raise BackendError(f"squeue failed: {_strip_prefix(result.error_line())}")
        listing = {}
        for line in result.stdout.splitlines():
            # names and commands are free text and may hold "|": the command is read from the line's end
            parts = line.strip().split("|")
            if len(parts) >= 5:
                listing[parts[0]] = (slurm_status(parts[1], parts[2]), batch_of(line.strip()))
        self._listing = (now, listing)
        return listing

    def _accounted(self, job_ids: list[str]) -> dict[str, JobStatus]:
        """sacct for jobs that left the queue, when the cluster keeps accounting."""
        if not job_ids or self._accounting is False:
            return {}
        bases = sorted({job_id.split("_")[0] for job_id in job_ids})
        result = self._run(
            [
                "sacct",
                "--parsable2",
                "--noheader",
                "--allocations",
                "--jobs",
                ",".join(bases),
                "--format=JobID,State,ExitCode",
            ]
        )
        if result.returncode != 0:
            if "accounting storage is disabled" in result.stderr.lower() or "slurmdbd" in result.stderr.lower():
                self._accounting = False
                return {}
            raise BackendError(f"sacct failed: {_strip_prefix(result.error_line())}")
        self._accounting = True
        states = {}
        for line in result.stdout.splitlines():
            parts = line.split("|")
            if len(parts) >= 3:
                code = parts[2].split(":")[0]
                status = slurm_status(parts[1])
                status = JobStatus(status.state, int(code) if code.isdigit() else None, status.detail)
                # before 23.02 (and without --array after) tasks that never started share one grouped record
                for job_id in array_task_ids(parts[0]):
                    states[job_id] = status
        return states

    def poll(self, jobs: dict[str, str]) -> dict[str, JobStatus]:
        try:
            listing = self._queue()
        except BackendError as exc:
            return {job_id: JobStatus(JobState.UNKNOWN, detail=str(exc)) for job_id in jobs}
        found = {j: listing[j][0] for j in jobs if j in listing}
        missing = [j for j in jobs if j not in found]
        try:
            found.update({j: s for j, s in self._accounted(missing).items() if j in jobs})
        except BackendError as exc:
            found.update({j: JobStatus(JobState.UNKNOWN, detail=str(exc)) for j in missing})
        for job_id in jobs:
            if job_id not in found:
                found[job_id] = self._from_run_dir(jobs[job_id])
        return found

    def _from_run_dir(self, run_id: str) -> JobStatus:
        """What the runner wrote, for jobs Slurm has forgotten (no accounting on this cluster)."""
        text = self.host.read_text(self._path("runs", run_id, runner.EXIT_CODE_FILE))
        if text is None or not text.strip().lstrip("-").isdigit():
            # the job writes job_id as it starts: without it, the run's code never ran (a pending task
            # cancelled outside mantik leaves the queue at once, and without accounting nothing remains)
            if not (self.host.read_text(self._path("runs", run_id, "job_id")) or "").strip():
                return JobStatus(JobState.LOST, detail=NEVER_STARTED)
            return JobStatus(JobState.LOST, detail=GONE_WHILE_RUNNING)
        code = int(text)
        return JobStatus(JobState.COMPLETED if code == 0 else JobState.FAILED, code)

    def find(self, run_ids: list[str]) -> dict[str, str]:
        found = {}
        waiting: dict[str, str] = {}  # run id -> batch id
        for run_id in run_ids:
            recorded = self.host.read_text(self._path("runs", run_id, "job_id"))
            if recorded and recorded.strip():
                found[run_id] = recorded.strip()
                continue
            batch = self.host.read_text(self._path("runs", run_id, "batch"))
            if batch:
                waiting[run_id] = batch.strip()
        if waiting:
            listing = self._queue()  # if Slurm cannot answer, neither can we: never guess "no job" and resubmit
            base_of = {batch: job_id.split("_")[0] for job_id, (_, batch) in listing.items() if batch}
            for run_id, batch in waiting.items():
                if batch not in base_of:
                    continue
                index = self._index_in_batch(batch, run_id)
                single = base_of[batch] in listing
                found[run_id] = base_of[batch] if single else f"{base_of[batch]}_{index}"
        return found

    def _index_in_batch(self, batch_id: str, run_id: str) -> int:
        lines = (self.host.read_text(self._path("batches", batch_id, "runs.txt")) or "").splitlines()
        return next((i for i, line in enumerate(lines) if line.rstrip("/").endswith("/" + run_id)), 0)

    # -- act -----------------------------------------------------------------------------------

    def cancel(self, job_ids: list[str]) -> None:
        if not job_ids:
            return
        result = self._run(["scancel", *job_ids])
        if result.returncode != 0:
            raise BackendError(f"scancel failed: {_strip_prefix(result.error_line())}")
        self._listing = None

    def stats(self) -> dict[str, int]:
        return self.host.stats()

    def read_log(self, run_id: str, job_id: str | None = None, offset: int = 0) -> bytes | None:
        """The runner's log of the run; while the runner has written nothing (it never started: a missing
        Python or venv, a failing setup line), the batch job's own output, where Slurm put that error."""
        output = self.host.read_bytes(self._path("runs", run_id, runner.OUTPUT_FILE), offset)
        if output or offset or not job_id:
            return output
        scheduler = self._scheduler_output(run_id, job_id)
        if not scheduler:
            return output
        return f"[the run's own log is empty; Slurm's output of job {job_id}:]\n".encode() + scheduler

    def _scheduler_output(self, run_id: str, job_id: str) -> bytes | None:
        """slurm-JOB_TASK.out of the run's batch (``--output`` in the batch script's directives)."""
        batch = (self.host.read_text(self._path("runs", run_id, "batch")) or "").strip()
        if not batch:
            return None
        batch_dir = self._path("batches", batch)
        # an array task is JOB_TASK; a job of one run has no task (Slurm writes 4294967294 for %a)
        wanted = [f"slurm-{job_id}.out"] if "_" in job_id else []
        wanted += sorted(name for name in self.host.list_dir(batch_dir) if name.startswith(f"slurm-{job_id}_"))
        for name in wanted:
            content = self.host.read_bytes(f"{batch_dir}/{name}")
            if content:
                return content
        return None


GROUPED = re.compile(r"^(\d+)_\[([0-9,\-:]+)(?:%\d+)?\]$")


def array_task_ids(job_id: str) -> list[str]:
    """sacct's JobID as the task ids it stands for: ``123_[1,4-6:2%2]`` -> 123_1, 123_4, 123_6;
    anything else (``123``, ``123_5``) stands for itself. A record cut short (sacct truncates the
    field at 64 bytes unless SLURM_BITSTR_LEN is set) names no task safely: it stands for none."""
    match = GROUPED.match(job_id)
    if not match:
        return [] if "[" in job_id else [job_id]
    base, ids = match.group(1), []
    for item in match.group(2).split(","):
        bounds, _, step = item.partition(":")
        first, _, last = bounds.partition("-")
        if not first.isdigit() or (last and not last.isdigit()) or (step and not step.isdigit()):
            return []
        stop = int(last or first)
        ids += [f"{base}_{index}" for index in range(int(first), stop + 1, int(step or 1) or 1)]
    return ids


def sbatch_quote(argument: str) -> str:
    """One argument for an ``#SBATCH`` line: in double quotes, with ``\\`` and ``"`` escaped by a backslash
    (sbatch's get_argument(); a newline cannot be written, so paths with one are refused at validate)."""
    if "\n" in argument or "\0" in argument:
        raise BackendError(f"{argument!r} cannot be written on an #SBATCH line")
    return '"' + argument.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _strip_prefix(line: str) -> str:
    for prefix in (
        "sbatch: error: Batch job submission failed: ",
        "sbatch: error: ",
        "sbatch: fatal: ",
        "squeue: error: ",
        "sacct: error: ",
        "scancel: error: ",
    ):
        if line.startswith(prefix):
            return line[len(prefix) :]
    return line


def _reason(reason: str) -> str:
    return "" if reason in ("None", "") else reason
