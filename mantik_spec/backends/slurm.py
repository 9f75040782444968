"""The Slurm backend: sbatch, squeue (+ at most one sacct) and scancel, run on the login node, here or over SSH.

The batch path (the layout under ``workdir``, the batch script, submitting, listing and adopting jobs) is
:class:`.batch.BatchBackend`'s; this module runs Slurm's commands through a host (:mod:`.hosts`,
:mod:`.ssh`) and reads their answers. A job lists its batch script's path (``batches/BATCH/script.sh``)
as squeue's command, so it is found by its batch whatever its name.
"""

from __future__ import annotations

import enum
import errno
import os
import re
import shlex
import time
from pathlib import Path
from typing import TYPE_CHECKING

from .. import runner
from ..spec.cost import Allocation, Used
from ..spec.model import SlurmConfig
from ..vocab import JobState, JobStatus
from .base import BackendError, CommandTimeout, JobRequest, SubmissionInDoubt, tracking_secrets
from .batch import BatchBackend, Listing, SubmissionRefused, array_task_ids, batch_of, directives, slurm_status
from .hosts import COMMAND_TIMEOUT, ConnectionDropped, LocalHost

if TYPE_CHECKING:
    from .ssh import SSHHost

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
# output (or split its errors off), hold sbatch until the job ends, drop mantik's environment, or send the job
# to another cluster than the one squeue, sacct and scancel ask (their *_CLUSTERS variables likewise). Unset for
# every Slurm command.
OWNED_VARIABLES = (
    "SLURM_CLUSTERS",
    "SBATCH_CLUSTERS",
    "SQUEUE_CLUSTERS",
    "SACCT_CLUSTERS",
    "SBATCH_JOB_NAME",
    "SBATCH_ARRAY_INX",
    "SBATCH_OUTPUT",
    "SBATCH_ERROR",
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


# Accounting questions are asked beside the plan, never in its way: each is time-boxed, and what they cannot say
# now is asked again later (usage) or left out (what is left of the allocation).
ACCOUNTING_TIMEOUT = 20.0  # seconds
# ElapsedRaw: seconds (sacct(1)); AllocTRES last: its value holds commas, never a "|"
SACCT_FORMAT = "--format=JobID,State,ExitCode,ElapsedRaw,AllocNodes,AllocTRES"
SACCT_CHUNK = 500  # job ids per sacct call: one call for any grid of arrays, a bounded command line
# sshare(1): GrpTRESMins is an association's limit in TRES-minutes, GrpTRESRaw what its jobs used (in minutes:
# src/sshare/process.c divides the raw TRES-seconds by 60) and TRESRunMins what its running jobs still hold;
# a job starts only while used + held + its own request stay under the limit
SSHARE_FORMAT = "--format=Account,User,GrpTRESMins,GrpTRESRaw,TRESRunMins"
# the TRES a limit can be read in, by the unit a plan shows: node-hours are what a plan costs
TRES_UNITS = (("node", "node-hours"), ("billing", "billing-hours"), ("cpu", "core-hours"))


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


class SlurmBackend(BatchBackend):
    sends_inputs = False  # a local image is not copied to the cluster: it must be put there
    config: SlurmConfig
    LISTING = "the queue"

    def __init__(self, name: str, config: SlurmConfig, state_root: Path):
        super().__init__(name, config, state_root)
        self.host: LocalHost | SSHHost
        if config.ssh is None:
            # mantik runs on the login node, whose filesystem the compute nodes share
            self.host, self.shares_files = LocalHost(), True
            workdir = Path(config.workdir).expanduser()
            self.workdir = str(workdir if workdir.is_absolute() else self.project_root / workdir)
        else:
            from .ssh import SSHHost

            self.host, self.shares_files = SSHHost(config.ssh, self.project_root), False
            # remote commands start in the home directory: relative paths (and ~/) are taken from there
            self.workdir = config.workdir.removeprefix("~/") if config.workdir.startswith("~/") else config.workdir
        self._accounting: bool | None = None
        self._used: dict[str, Used] = {}  # job id -> what it used, as sacct said once it ended
        self._holding: set[str] = set()  # job ids sacct last showed still holding their nodes
        chosen = {name for name, value in config.resources.model_dump().items() if value is not None}
        chosen |= {name for name in ("partition", "account", "qos") if getattr(config, name)}
        unset = set(OWNED_VARIABLES) | {v for name in chosen for v in SPEC_VARIABLES.get(name, ())}
        self._unset = [word for name in sorted(unset) for word in ("-u", name)]

    @property
    def files(self) -> LocalHost | SSHHost:
        return self.host

    # -- commands ------------------------------------------------------------------------------

    def _run(self, argv: list[str], secrets: dict | None = None, timeout: float | None = None):
        self.calls[argv[0]] += 1
        try:
            result = self.host.run(["env", *self._unset, *argv], timeout=timeout or COMMAND_TIMEOUT, secrets=secrets)
        except CommandTimeout as exc:  # name the scheduler command, not the env(1) that starts it
            raise CommandTimeout(str(exc).replace("`env`", f"`{argv[0]}`", 1)) from None
        if result.returncode == 127:  # env(1)'s exit status when it cannot find the command (POSIX)
            raise BackendError(
                f"`{argv[0]}` is not on the PATH where mantik runs it ({result.error_line()}): run mantik where "
                "the scheduler's commands are, or make the login shell load them"
            )
        return result

    # -- submit --------------------------------------------------------------------------------

    def submit(self, requests: list[JobRequest]) -> dict[str, str]:
        if requests:
            self.host.makedirs(self._path("code"))
            if not self.workdir.startswith("/"):  # over SSH: the job script needs paths that hold from any cwd
                self.workdir = self.host.absolute(self.workdir)
        return super().submit(requests)

    def stage_code(self, code_dir: Path) -> str:
        """The committed tree, once per commit (the export is named after it)."""
        self.host.put_tree(code_dir, self._path("code", code_dir.name), self.config.exclude)
        return f"code/{code_dir.name}"

    def _directives(self) -> list[str]:
        return [*directives(self.config), *self.config.sbatch_args]

    def submit_script(self, batch_dir: str, script: str) -> str:
        # sbatch passes its environment to the job; over SSH the login shell lacks the tracking credentials
        secrets = None if self.shares_files else tracking_secrets()
        try:
            result = self._run(["sbatch", "--parsable", f"{batch_dir}/script.sh"], secrets=secrets)
        except (CommandTimeout, ConnectionDropped) as exc:  # the script may have reached the controller
            raise SubmissionInDoubt(str(exc)) from None
        accepted = result.stdout.strip()
        base, _, cluster = accepted.partition(";")
        if result.returncode == 0 and base.isdigit() and not cluster:
            return base
        if result.returncode == 0 and base.isdigit():
            self._cancel_elsewhere(base, cluster)
            raise BackendError(
                f"sbatch queued the job on cluster {cluster} (a --clusters/-M line in the batch template?); "
                "mantik follows jobs on the login node's own cluster only, so it cancelled job "
                f"{base} there: remove the cluster choice"
            )
        if result.returncode == 0:
            raise SubmissionInDoubt(f"sbatch answered {accepted!r} instead of a job id")
        answer = sbatch_answer(result.returncode, result.stderr)
        if answer is Answer.IN_DOUBT:
            raise SubmissionInDoubt(f"sbatch failed (exit {result.returncode}): {_strip_prefix(result.error_line())}")
        raise SubmissionRefused(f"sbatch refused the job: {_strip_prefix(result.error_line())}")

    def _cancel_elsewhere(self, job_id: str, cluster: str) -> None:
        if re.fullmatch(r"[A-Za-z0-9_.-]+", cluster):
            self._run(["scancel", f"--clusters={cluster}", job_id])

    # -- observe -------------------------------------------------------------------------------

    def list_jobs(self) -> Listing:
        result = self._run(["squeue", "--me", "--states=all", "--array", "--noheader", "--format=%i|%T|%r|%j|%o"])
        if result.returncode != 0:
            raise BackendError(f"squeue failed: {_strip_prefix(result.error_line())}")
        listing = {}
        for line in result.stdout.splitlines():
            # names and commands are free text and may hold "|": the command is read from the line's end
            parts = line.strip().split("|")
            if len(parts) >= 5:
                listing[parts[0]] = (slurm_status(parts[1], parts[2]), batch_of(line.strip()))
        return listing

    def _unlisted(self, job_ids: list[str], listing: Listing) -> dict[str, JobStatus]:
        try:
            return self._accounted(job_ids)
        except BackendError as exc:
            return {job_id: JobStatus(JobState.UNKNOWN, detail=str(exc)) for job_id in job_ids}

    def _is_array(self, base: str, listing: Listing) -> bool:
        # squeue --array lists an array's tasks as BASE_TASK and a job of one run as BASE: the listing tells,
        # even when `array:` changed since the submission
        return base not in listing

    def _accounted(self, job_ids: list[str], timeout: float | None = None) -> dict[str, JobStatus]:
        """sacct for jobs that left the queue, when the cluster keeps accounting; what each ended job used
        (elapsed time x allocated nodes) is kept for :meth:`usage`, so a poll and a usage ask sacct once."""
        if not job_ids or self._accounting is False:
            return {}
        bases = sorted({job_id.split("_")[0] for job_id in job_ids})
        states = {}
        for chunk in range(0, len(bases), SACCT_CHUNK):
            argv = ["sacct", "--parsable2", "--noheader", "--allocations", "--jobs"]
            result = self._run([*argv, ",".join(bases[chunk : chunk + SACCT_CHUNK]), SACCT_FORMAT], timeout=timeout)
            if result.returncode != 0:
                if "accounting storage is disabled" in result.stderr.lower() or "slurmdbd" in result.stderr.lower():
                    self._accounting = False
                    return {}
                raise BackendError(f"sacct failed: {_strip_prefix(result.error_line())}")
            self._accounting = True
            states.update(self._read_sacct(result.stdout))
        return states

    def _read_sacct(self, stdout: str) -> dict[str, JobStatus]:
        """sacct's lines (``SACCT_FORMAT``) as job id -> status; what ended jobs used goes to ``_used``."""
        states = {}
        for line in stdout.splitlines():
            parts = line.split("|")
            if len(parts) < 3:
                continue
            code = parts[2].split(":")[0]
            status = slurm_status(parts[1])
            status = JobStatus(status.state, int(code) if code.isdigit() else None, status.detail)
            used = None
            if len(parts) >= 5 and parts[3].isdigit() and parts[4].isdigit():
                billing = tres_values(parts[5]).get("billing") if len(parts) >= 6 else None
                hours = int(parts[3]) / 3600
                used = Used(hours * int(parts[4]), "sacct", None if billing is None else hours * billing)
            # before 23.02 (and without --array after) tasks that never started share one grouped record
            for job_id in array_task_ids(parts[0]):
                states[job_id] = status
                if used is not None and status.state.ended:
                    self._used[job_id] = used
                    self._holding.discard(job_id)
                elif used is not None and status.state.live:
                    self._holding.add(job_id)
        return states

    def usage(self, job_ids: list[str]) -> dict[str, Used | None]:
        """What ended jobs used, from sacct (ElapsedRaw x AllocNodes), asked once for every job id a poll has
        not already asked about, time-boxed; ``{}`` on a cluster without accounting (the limits stand)."""
        unknown = [job_id for job_id in job_ids if job_id not in self._used]
        if unknown:
            self._accounted(unknown, timeout=ACCOUNTING_TIMEOUT)
        answer: dict[str, Used | None] = {job_id: self._used[job_id] for job_id in job_ids if job_id in self._used}
        answer.update({job_id: None for job_id in job_ids if job_id in self._holding and job_id not in answer})
        return answer

    def estimated_start(self) -> str | None:
        """``sbatch --test-only`` with this backend's options and a one-line job: "Job N to start at TIME" (Slurm's
        slurm_job_will_run, printed on stderr; TIME as the controller's clock reads it), which submits nothing.
        An estimate only: the queue moves, and backfill may start the job sooner or later."""
        options = [word for option in self._directives() for word in shlex.split(option)]
        result = self._run(["sbatch", "--test-only", *options, "--wrap=true"], timeout=ACCOUNTING_TIMEOUT)
        found = re.search(r"to start at (\S+)", result.stderr)
        if result.returncode != 0 or not found:
            raise BackendError(f"sbatch --test-only failed: {_strip_prefix(result.error_line())}")
        return found.group(1)

    def allocation(self) -> Allocation | None:
        """What the association limits leave (sshare, time-boxed): the tightest GrpTRESMins limit of the
        user's associations (of ``account`` when set) less what their jobs used and their running jobs hold,
        in node-hours where a node limit is set (else billing, else core-hours); None when no limit is set.
        Raises :class:`BackendError` when sshare fails (no accounting: it answers nothing to read)."""
        argv = ["sshare", "--parsable2", SSHARE_FORMAT, *([f"--accounts={self.config.account}"] if self.config.account else [])]
        result = self._run(argv, timeout=ACCOUNTING_TIMEOUT)
        if result.returncode != 0:
            raise BackendError(f"sshare failed: {_strip_prefix(result.error_line())}")
        return sshare_allocation(result.stdout, time.time())

    # -- act -----------------------------------------------------------------------------------

    def cancel_jobs(self, job_ids: list[str]) -> None:
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


def tres_values(text: str) -> dict[str, float]:
    """A TRES string (``cpu=1200,node=40,gres/gpu=8``) as TRES name -> number; what is not a plain number (``mem=180G``)
    is left out."""
    found = {}
    for item in text.split(","):
        name, _, value = item.partition("=")
        try:
            found[name.strip()] = float(value)
        except ValueError:
            continue
    return found


def sshare_allocation(stdout: str, fetched: float) -> Allocation | None:
    """What ``sshare --parsable2 --format=Account,User,GrpTRESMins,GrpTRESRaw,TRESRunMins`` says is left: per
    association line with a limit, limit - used - held by running jobs, in the first of :data:`TRES_UNITS` any
    line limits; the tightest line wins (a user's own limit, or its account's). None when no line has a limit."""
    lines = [line.split("|") for line in stdout.splitlines() if line.strip()]
    if not lines or [cell.strip() for cell in lines[0][:3]] != ["Account", "User", "GrpTRESMins"]:
        return None
    rows = [row for row in lines[1:] if len(row) >= 5]
    for tres, unit in TRES_UNITS:
        best: Allocation | None = None
        for row in rows:
            limit = tres_values(row[2]).get(tres)
            if limit is None:
                continue
            used = tres_values(row[3]).get(tres, 0.0) + tres_values(row[4]).get(tres, 0.0)
            account = row[0].strip() + (f" ({row[1].strip()})" if row[1].strip() else "")
            found = Allocation((limit - used) / 60, unit, "sshare", fetched, limit / 60, account)
            if best is None or found.left < best.left:
                best = found
        if best is not None:
            return best
    return None


def _strip_prefix(line: str) -> str:
    for prefix in (
        "sbatch: error: Batch job submission failed: ",
        "sbatch: error: ",
        "sbatch: fatal: ",
        "squeue: error: ",
        "sacct: error: ",
        "sshare: error: ",
        "scancel: error: ",
    ):
        if line.startswith(prefix):
            return line[len(prefix) :]
    return line
