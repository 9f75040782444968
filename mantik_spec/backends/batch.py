"""The batch path the Slurm and FirecREST backends share: Slurm job arrays written into a work directory,
submitted, listed and adopted alike, whichever way the site is reached.

Layout under ``workdir`` on the cluster's shared filesystem::

    code/NAME/                the committed tree, staged once per commit (or per content)
    bin/runner-HASH.py        the in-job runner
    runs/RUN_ID/              one per run: mantik's files (job.json, output.log, exit_code, job_id, batch)
    runs/RUN_ID/work/         links to the entries of code/NAME/: the run's cwd, apart from mantik's
                              files, so a committed file named job.json is the user's and stays so
    batches/BATCH/            one per submission: script.sh, runs.txt (array index -> run dir), slurm-*.out

The job is named ``mantik-EXPERIMENT`` for the people reading the queue. Its batch script's path (squeue's
command) or its working directory (the batch directory, as FirecREST lists it), and each run's ``batch``
file, tie a submitted job back to its runs; the job writes its own id into its run directory as it starts.
So a submission whose answer was lost is found before anything is recorded, and a crashed apply adopts its
jobs instead of submitting them twice, in the queue or after they left it.

:class:`BatchBackend` owns that logic; a backend built on it says only how it reaches the site, in the
hooks submitit's executors have (``submitit/core/core.py``): :attr:`~BatchBackend.files`,
:meth:`~BatchBackend.submit_script`, :meth:`~BatchBackend.list_jobs` and :meth:`~BatchBackend.cancel_jobs`,
plus :meth:`~BatchBackend.stage_code`; the protocol's ``cancel`` stays here, where it first checks that each
job is this project's.
"""

from __future__ import annotations

import abc
import hashlib
import json
import re
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from .. import runner
from ..faults import checkpoint
from ..spec.model import BatchConfig, duration_seconds
from ..templating import packaged, render
from ..vocab import JobState, JobStatus
from .base import BackendBase, BackendError, Host, JobRequest, SubmissionFailed, SubmissionInDoubt
from .hosts import HostJournal
from .staging import Archive, staged_files

JOB_NAME_PREFIX = "mantik-"
JOB_NAME_CHARACTERS = re.compile(r"[^A-Za-z0-9_.-]")
JOB_NAME_LENGTH = 64  # characters of the experiment kept in the name: enough to tell experiments apart
# Where a listed job says which batch it is, whatever its name: its batch script (squeue's command, %o, made
# absolute by sbatch: src/sbatch/opt.c) or its working directory (FirecREST submits from the batch directory).
# Jobs of versions that named them mantik-BATCH were submitted the same way: they are found alike.
SLURM_JOB_ID = re.compile(r"\d+(_\d+)?")  # matched whole (fullmatch)  # a job, or an array's task: what a recorded job id must be
RUN_ID = re.compile(r"[A-Za-z0-9_-]+")  # matched whole: a run directory's name, never a path
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

# A listing: every job of the user's the site still knows, job id -> (status, batch id; empty when not mantik's)
Listing = dict[str, tuple[JobStatus, str]]


class SubmissionRefused(BackendError):
    """A submission failed with an answer saying no job was queued (a refusal, a connection never made). The
    job is looked for all the same before that stands: one queued despite the answer is kept, not submitted
    a second time."""



def slurm_status(text: str, reason: str = "") -> JobStatus:
    """A state word (as squeue's %T or sacct's State print it) and squeue's reason, as a status."""
    word = text.split()[0].rstrip("+") if text.strip() else ""
    state, note = STATES.get(word, (JobState.UNKNOWN, f"Slurm reports {word or 'no state'}"))
    detail = "; ".join(part for part in (note, _reason(reason)) if part)
    return JobStatus(state, detail=detail)


def job_name(experiment: str | None) -> str:
    """The job's name, ``mantik-EXPERIMENT``, as squeue and sacct show it. Characters other than letters,
    digits, ``_``, ``.`` and ``-`` become ``-``: the name stands unquoted on the ``#SBATCH`` line."""
    return JOB_NAME_PREFIX + JOB_NAME_CHARACTERS.sub("-", experiment or "run")[:JOB_NAME_LENGTH]


def batch_of(path: str) -> str:
    """The batch id of a listed job, read from ``path`` (its batch script or working directory); empty for
    anyone else's job."""
    found = BATCH_PATH.search(path)
    return found.group(1) if found else ""


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


def batch_id_of(batch: Sequence[JobRequest]) -> str:
    """The batch's id, from its runs: the name of its directory ``batches/BATCH`` and how its job is found."""
    return hashlib.sha256("\n".join(r.run_id for r in batch).encode()).hexdigest()[:16]


def split_batches(requests: Sequence[JobRequest], config: BatchConfig) -> list[list[JobRequest]]:
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


def batch_template(config: BatchConfig, project_root: Path) -> str:
    """The batch script template: the project's own (``template:``) or the packaged one. Raises
    :class:`BackendError` when the project's cannot be read."""
    if not config.template:
        return packaged("slurm-batch.sh.j2")
    try:
        return (project_root / config.template).read_text()
    except OSError as exc:
        raise BackendError(f"cannot read the batch template {config.template}: {exc.strerror}") from None


def batch_script(
    template: str,
    config: BatchConfig,
    batch: Sequence[JobRequest],
    batch_dir: str,
    run_dirs: Sequence[str],
    runner_path: str,
    options: Sequence[str],
) -> str:
    """One batch's script, rendered from ``template`` with the variables docs/slurm.md lists; ``options``
    are its #SBATCH options (see :func:`directives`)."""
    return render(
        template,
        {
            "job_name": job_name(batch[0].group),
            "experiment": batch[0].group,
            "batch_dir": batch_dir,
            # sbatch reads #SBATCH lines with its own quoting (src/sbatch/opt.c get_argument) and expands
            # %-patterns in file names (%% is a literal %): a path with spaces, quotes or % arrives intact
            "output": sbatch_quote(f"--output={batch_dir.replace('%', '%%')}/slurm-%A_%a.out"),
            "directives": list(options),
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


def directives(config: BatchConfig, placement: Mapping[str, str | None] | None = None) -> list[str]:
    """The #SBATCH options a batch config names (values validated to be plain words): where the job goes
    (``partition``, ``account``, ``qos``, then a backend's own ``placement`` options, name -> value), then
    its resources."""
    where = {"partition": config.partition, "account": config.account, "qos": config.qos, **(placement or {})}
    options = [f"--{key}={value}" for key, value in where.items() if value]
    for name, value in config.resources.model_dump(exclude_none=True).items():
        options.append(f"--{name.replace('_', '-')}={value}")
    return options


def sbatch_quote(argument: str) -> str:
    """One argument for an ``#SBATCH`` line: in double quotes, with ``\\`` and ``"`` escaped by a backslash
    (sbatch's get_argument(); a newline cannot be written, so paths with one are refused at validate).
    Raises :class:`BackendError` for a newline or NUL."""
    if "\n" in argument or "\0" in argument:
        raise BackendError(f"{argument!r} cannot be written on an #SBATCH line")
    return '"' + argument.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _reason(reason: str) -> str:
    return "" if reason in ("None", "") else reason


def _bases(listing: Listing) -> dict[str, str]:
    """Batch id -> its job's id (an array's base id). FirecREST merges sacct's records (array tasks as
    ``123_4``) with squeue's (each task under its own number): the array form names the base, so it wins."""
    bases: dict[str, str] = {}
    for job_id, (_, batch) in sorted(listing.items(), key=lambda item: "_" not in item[0]):
        if batch:
            bases.setdefault(batch, job_id.split("_")[0])
    return bases


class BatchBackend(BackendBase, abc.ABC):
    """A :class:`~.base.Backend` for a Slurm cluster, over the hooks below; a subclass says only how it
    reaches the site.

    Hooks: :attr:`files` (the work directory's files, a :class:`~.base.Host`), :meth:`submit_script`,
    :meth:`list_jobs`, :meth:`cancel_jobs` and :meth:`stage_code`; a subclass may refine :meth:`_directives`,
    :meth:`_unlisted` and :meth:`_is_array`. It sets ``workdir`` (absolute by the first submission).
    """

    config: BatchConfig
    workdir: str
    launches_in_allocation = True  # a batch job holds its allocation: srun starts the run's tasks in it
    LISTING = "the job list"  # what the site's listing is called in messages

    def __init__(self, name: str, config: BatchConfig, state_root: Path):
        self.name = name
        self.config = config
        self.project_root = state_root.parent
        self.min_poll_interval = duration_seconds(config.poll_interval)
        self.calls: Counter = Counter()  # requests to the scheduler or site by kind, for -v and the bench
        self._listing: tuple[float, Listing] | None = None
        self._runner_path = ""
        self._code_paths: dict[Path, str] = {}  # exported tree -> its staged copy, relative to the work directory
        self._top_level: dict[Path, list[str]] = {}  # the entries a run directory links to, per exported tree

    # -- the hooks -----------------------------------------------------------------------------

    @property
    @abc.abstractmethod
    def files(self) -> Host:
        """The files of the work directory on the cluster."""

    @abc.abstractmethod
    def submit_script(self, batch_dir: str, script: str) -> str:
        """Submit ``script`` (written to ``batch_dir/script.sh``, to run there); returns the job's id (an
        array's base id). Raises :class:`SubmissionInDoubt` when the job may have been queued despite the
        answer, :class:`SubmissionRefused` when the answer says it was not (both are looked for in the listing
        before anything is recorded), another :class:`BackendError` when nothing was submitted for certain
        (not looked for)."""

    @abc.abstractmethod
    def list_jobs(self) -> Listing:
        """Every job of the user's the site still knows: job id -> (status, batch id, from
        :func:`batch_of`; empty when not mantik's). Raises :class:`BackendError`."""

    @abc.abstractmethod
    def cancel_jobs(self, job_ids: list[str]) -> None:
        """Cancel many jobs of this project in one call (jobs already ended are no error). Raises
        :class:`BackendError`."""

    @abc.abstractmethod
    def stage_code(self, code_dir: Path) -> str:
        """Put the exported tree ``code_dir`` into the work directory unless it is there; returns its path
        relative to the work directory (``code/NAME``). Raises :class:`BackendError`."""

    def _directives(self) -> list[str]:
        """The batch script's #SBATCH options."""
        return directives(self.config)

    def _unlisted(self, job_ids: list[str], listing: Listing) -> dict[str, JobStatus]:
        """What the site knows of jobs its listing leaves out, other than the run directory: job id -> status."""
        return {}

    def _is_array(self, base: str, listing: Listing) -> bool:
        """Whether the listed job ``base`` runs a job array (its runs are ``base_INDEX``): as submitted, since
        a listing's form need not tell (FirecREST lists an array's tasks under their own numbers too)."""
        return self.config.array

    # -- submit --------------------------------------------------------------------------------

    def _path(self, *parts: str) -> str:
        return "/".join([self.workdir, *parts])

    def submit(self, requests: list[JobRequest]) -> dict[str, str]:
        if not requests:
            return {}
        template = batch_template(self.config, self.project_root)  # once per apply, before the site is asked
        runner_path = self._stage_runner()
        return submit_batches(
            split_batches(requests, self.config), lambda batch: self._submit_batch(batch, runner_path, template)
        )

    def _stage_runner(self) -> str:
        if not self._runner_path:
            source = Path(runner.__file__).read_bytes()
            path = self._path("bin", f"runner-{hashlib.sha256(source).hexdigest()[:12]}.py")
            if not self.files.exists(path):
                self.files.makedirs(self._path("bin"))
                self.files.write_text(path, source.decode())
            self._runner_path = path
        return self._runner_path

    def _stage_code(self, code_dir: Path) -> str:
        if code_dir not in self._code_paths:
            self._code_paths[code_dir] = self.stage_code(code_dir)
        return self._code_paths[code_dir]

    def _submit_batch(self, batch: list[JobRequest], runner_path: str, template: str) -> dict[str, str]:
        batch_id = batch_id_of(batch)
        batch_dir = self._path("batches", batch_id)
        run_dirs = [self._path("runs", request.run_id) for request in batch]
        script = batch_script(template, self.config, batch, batch_dir, run_dirs, runner_path, self._directives())
        # every file of the batch in one archive: one exchange with the site instead of a few per run
        files = Archive()
        files.add_text(f"batches/{batch_id}/runs.txt", "".join(f"{d}\n" for d in run_dirs))
        files.add_text(f"batches/{batch_id}/script.sh", script)
        for request in batch:
            add_run(files, request, batch_id, self._stage_code(request.code_dir), self._top_level, self.config.exclude)
        self.files.extract(files.bytes(), self.workdir)
        failure: BackendError
        try:
            job_id = self.submit_script(batch_dir, script)
        except (SubmissionInDoubt, SubmissionRefused) as exc:
            failure = exc
        else:
            self._listing = None  # the next poll must see the new jobs
            return self._job_ids(batch, job_id)
        # Before anything is recorded, look: the listing shows each job's batch, so a job queued despite the
        # lost or failed answer is found and kept instead of being submitted a second time.
        try:
            queued = self._queued_as(batch_id)
        except BackendError as exc:
            raise SubmissionInDoubt(f"{failure}; {self.LISTING} could not be read to check ({exc})") from None
        if queued is not None:
            return self._job_ids(batch, queued)
        if isinstance(failure, SubmissionInDoubt):
            raise SubmissionInDoubt(f"{failure}; batch {batch_id} is not in {self.LISTING} yet, so it may still appear")
        raise failure

    def _job_ids(self, batch: list[JobRequest], base: str) -> dict[str, str]:
        return {r.run_id: (f"{base}_{i}" if self.config.array else base) for i, r in enumerate(batch)}

    def _queued_as(self, batch_id: str) -> str | None:
        """The base id of batch ``batch_id``'s job as listed now, None when there is none."""
        self._listing = None
        return _bases(self._jobs()).get(batch_id)

    # -- observe -------------------------------------------------------------------------------

    def _jobs(self) -> Listing:
        """:meth:`list_jobs`, cached for the poll interval."""
        now = time.monotonic()
        if self._listing is not None and now - self._listing[0] < self.min_poll_interval:
            return self._listing[1]
        listing = self.list_jobs()
        self._listing = (now, listing)
        return listing

    def cancel(self, job_ids: list[str]) -> None:
        """Cancel the jobs, once the site's listing shows each is one of this project's batches (its batch
        script or working directory under this backend's work directory, which holds that batch): a job id
        comes from a run record, which anyone who can write to the tracking store can write, so a record is
        never enough to cancel a job. Jobs no longer listed have ended: nothing to cancel. Raises
        :class:`BackendError` naming the others, before anything is cancelled."""
        if not job_ids:
            return
        self._listing = None
        listing = self._jobs()
        ours: dict[str, bool] = {}  # batch id -> whether its directory is in this work directory: asked once each
        foreign = [
            j
            for j in job_ids
            if not SLURM_JOB_ID.fullmatch(j) or (j in listing and not self._ours(listing[j][1], ours))
        ]
        if foreign:
            raise BackendError(
                f"job {', '.join(foreign)} is not a batch of this project in {self.workdir}: left alone "
                "(its run record names it, and records are not proof)"
            )
        listed = [j for j in job_ids if j in listing]
        if listed:
            self.cancel_jobs(listed)
        self._listing = None

    def _ours(self, batch: str, known: dict[str, bool]) -> bool:
        """Whether ``batch`` (a listed job's batch id, :func:`batch_of`; empty for anyone else's job) is a batch
        this backend wrote into its work directory; ``known`` keeps the answers, one look per batch."""
        if not batch:
            return False
        if batch not in known:
            known[batch] = self.files.exists(self._path("batches", batch))
        return known[batch]

    def poll(self, jobs: dict[str, str]) -> dict[str, JobStatus]:
        try:
            listing = self._jobs()
        except BackendError as exc:
            return {job_id: JobStatus(JobState.UNKNOWN, detail=str(exc)) for job_id in jobs}
        found = {job_id: listing[job_id][0] for job_id in jobs if job_id in listing}
        unlisted = [job_id for job_id in jobs if job_id not in found]
        found.update({j: s for j, s in self._unlisted(unlisted, listing).items() if j in jobs})
        for job_id in jobs:
            if job_id not in found:
                try:
                    found[job_id] = self._from_run_dir(jobs[job_id])
                except BackendError as exc:
                    found[job_id] = JobStatus(JobState.UNKNOWN, detail=str(exc))
        return found

    def _from_run_dir(self, run_id: str) -> JobStatus:
        """What the runner wrote, for jobs the site no longer lists or accounts for."""
        text = self.files.read_text(self._path("runs", run_id, runner.EXIT_CODE_FILE))
        if text is None or not text.strip().lstrip("-").isdigit():
            # the job writes job_id as it starts: without it, the run's code never ran (a pending task
            # cancelled outside mantik leaves the queue at once, and without accounting nothing remains)
            if not (self.files.read_text(self._path("runs", run_id, "job_id")) or "").strip():
                return JobStatus(JobState.LOST, detail=NEVER_STARTED)
            return JobStatus(JobState.LOST, detail=GONE_WHILE_RUNNING)
        code = int(text)
        return JobStatus(JobState.COMPLETED if code == 0 else JobState.FAILED, code)

    def journal(self, run_id: str, job_id: str | None) -> HostJournal | None:
        if not RUN_ID.fullmatch(run_id):
            return None  # a record's id that is no run directory of ours: nothing outside the work directory is read
        return HostJournal(self.files, self._path("runs", run_id, runner.JOURNAL_DIR))

    def find(self, run_ids: list[str]) -> dict[str, str]:
        found: dict[str, str] = {}
        waiting: dict[str, str] = {}  # run id -> batch id
        for run_id in run_ids:
            recorded = (self.files.read_text(self._path("runs", run_id, "job_id")) or "").strip()
            if recorded:
                found[run_id] = recorded
                continue
            batch = (self.files.read_text(self._path("runs", run_id, "batch")) or "").strip()
            if batch:
                waiting[run_id] = batch
        if waiting:
            self._listing = None
            listing = self._jobs()  # if the site cannot answer, neither can we: never guess "no job" and resubmit
            base_of = _bases(listing)
            for run_id, batch in waiting.items():
                if batch not in base_of:
                    continue
                base = base_of[batch]
                found[run_id] = (
                    f"{base}_{self._index_in_batch(batch, run_id)}" if self._is_array(base, listing) else base
                )
        return found

    def _index_in_batch(self, batch_id: str, run_id: str) -> int:
        lines = (self.files.read_text(self._path("batches", batch_id, "runs.txt")) or "").splitlines()
        return next((i for i, line in enumerate(lines) if line.rstrip("/").endswith("/" + run_id)), 0)
