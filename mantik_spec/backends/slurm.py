"""The Slurm backend: job arrays through sbatch, one squeue (+ at most one sacct) per poll.

Layout under ``workdir`` on the cluster's shared filesystem::

    code/COMMIT/              the committed tree, staged once per commit
    bin/runner-HASH.py        the in-job runner
    runs/RUN_ID/              one per run: job.json, output.log, exit_code, job_id,
                              and links to the entries of code/COMMIT/ (the run's cwd)
    batches/BATCH/            one per sbatch: script.sh, runs.txt (array index -> run dir), slurm-*.out

The job name ``mantik-BATCH`` and each run's ``batch`` file tie a submitted
job back to its runs, and the job writes its own id into its run directory
as it starts, so a crashed apply adopts its jobs instead of submitting them
twice, in the queue or after they left it.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import TYPE_CHECKING

from .. import runner
from ..faults import checkpoint
from ..spec.model import SlurmBackend as SlurmConfig
from ..spec.model import duration_seconds
from ..templating import packaged, render
from .base import BackendError, CommandTimeout, JobRequest, JobState, JobStatus, SubmissionFailed, tracking_secrets
from .hosts import LocalHost
from .staging import Archive, staged_files

if TYPE_CHECKING:
    from .ssh import SSHHost

JOB_NAME_PREFIX = "mantik-"

STATES = {
    "PENDING": JobState.PENDING,
    "CONFIGURING": JobState.PENDING,
    "REQUEUED": JobState.PENDING,
    "REQUEUE_HOLD": JobState.PENDING,
    "REQUEUE_FED": JobState.PENDING,
    "RESIZING": JobState.PENDING,
    "SUSPENDED": JobState.PENDING,
    "RUNNING": JobState.RUNNING,
    "COMPLETING": JobState.RUNNING,
    "STAGE_OUT": JobState.RUNNING,
    "SIGNALING": JobState.RUNNING,
    "COMPLETED": JobState.COMPLETED,
    "FAILED": JobState.FAILED,
    "BOOT_FAIL": JobState.FAILED,
    "DEADLINE": JobState.FAILED,
    "SPECIAL_EXIT": JobState.FAILED,
    "REVOKED": JobState.FAILED,
    "CANCELLED": JobState.CANCELLED,
    "TIMEOUT": JobState.TIMEOUT,
    "OUT_OF_MEMORY": JobState.OUT_OF_MEMORY,
    "NODE_FAIL": JobState.NODE_FAIL,
    "PREEMPTED": JobState.PREEMPTED,
}


def slurm_state(text: str) -> JobState:
    """``CANCELLED by 0`` and ``CANCELLED+`` are CANCELLED."""
    word = text.split()[0].rstrip("+") if text.strip() else ""
    return STATES.get(word, JobState.UNKNOWN)


def directives(config: SlurmConfig) -> list[str]:
    """The #SBATCH options of the spec (values already validated to be plain words)."""
    options = [
        f"--partition={config.partition}" if config.partition else None,
        f"--account={config.account}" if config.account else None,
        f"--qos={config.qos}" if config.qos else None,
    ]
    for name, value in config.resources.model_dump(exclude_none=True).items():
        options.append(f"--{name.replace('_', '-')}={value}")
    return [o for o in options if o] + list(config.sbatch_args)


class SlurmBackend:
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
        self._listing: tuple[float, dict[str, tuple[JobState, str, str]]] | None = None
        self._staged_code: set[Path] = set()
        self._top_level: dict[Path, list[str]] = {}  # the entries a run directory links to, per commit
        self._accounting: bool | None = None

    # -- commands ------------------------------------------------------------------------------

    def _run(self, argv: list[str], secrets: dict | None = None):
        self.calls[argv[0]] += 1
        return self.host.run(argv, secrets=secrets)

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
        template = self._template()
        submitted: dict[str, str] = {}
        batches = self._batches(requests)
        for position, batch in enumerate(batches):
            if position:
                checkpoint("between-batches")  # a crash here leaves part of an experiment's array queued
            try:
                submitted.update(self._submit_batch(batch, runner_path, template))
            except BackendError as exc:
                unsent = [r.run_id for later in batches[position + 1 :] for r in later]
                this = [r.run_id for r in batch]
                # a timed-out sbatch may have queued the batch: leave it open for adoption by its job name
                unknown, refused = (this, unsent) if isinstance(exc, CommandTimeout) else ([], this + unsent)
                raise SubmissionFailed(
                    f"experiment {batch[0].group or '?'}: {exc}", submitted, refused, unknown
                ) from None
        return submitted

    def _batches(self, requests: list[JobRequest]) -> list[list[JobRequest]]:
        size = self.config.max_array_size if self.config.array else 1
        groups: dict[str, list[JobRequest]] = defaultdict(list)
        for request in requests:
            groups[request.group].append(request)
        return [group[i : i + size] for group in groups.values() for i in range(0, len(group), size)]

    def _stage_runner(self) -> str:
        source = Path(runner.__file__).read_bytes()
        path = self._path("bin", f"runner-{hashlib.sha256(source).hexdigest()[:12]}.py")
        if not self.host.exists(path):
            self.host.makedirs(self._path("bin"))
            self.host.write_text(path, source.decode())
        return path

    def _template(self) -> str:
        if not self.config.template:
            return packaged("slurm-batch.sh.j2")
        path = self.project_root / self.config.template
        try:
            return path.read_text()
        except OSError as exc:
            raise BackendError(f"cannot read the batch template {self.config.template}: {exc.strerror}") from None

    def _stage_code(self, code_dir: Path) -> str:
        """The committed tree, once per commit (the export is named after it)."""
        if code_dir not in self._staged_code:
            destination = self._path("code", code_dir.name)
            self.host.put_tree(code_dir, destination, self.config.exclude)
            self._staged_code.add(code_dir)
        return f"code/{code_dir.name}"

    def _submit_batch(self, batch: list[JobRequest], runner_path: str, template: str) -> dict[str, str]:
        batch_id = hashlib.sha256("\n".join(r.run_id for r in batch).encode()).hexdigest()[:16]
        batch_dir = self._path("batches", batch_id)
        run_dirs = [self._path("runs", request.run_id) for request in batch]
        runs_file = f"{batch_dir}/runs.txt"
        use_array = self.config.array
        script = render(
            template,
            {
                "job_name": JOB_NAME_PREFIX + batch_id,
                "experiment": batch[0].group,
                "batch_dir": batch_dir,
                "directives": directives(self.config),
                "array": f"0-{len(batch) - 1}" if use_array else "",
                "modules": self.config.modules,
                "setup": self.config.setup,
                "runs_file": runs_file,
                "runs": [
                    {"run_id": r.run_id, "run_key": r.run_key, "point": r.point_id, "dir": d}
                    for r, d in zip(batch, run_dirs, strict=True)
                ],
                "python": self.config.python,
                "runner": runner_path,
            },
        )
        # every file of the batch in one archive: over SSH, one exchange instead of a few per run
        files = Archive()
        files.add_text(f"batches/{batch_id}/runs.txt", "".join(f"{d}\n" for d in run_dirs))
        files.add_text(f"batches/{batch_id}/script.sh", script)
        for request in batch:
            self._add_run(files, request, batch_id)
        self.host.extract(files.bytes(), self.workdir)
        # sbatch passes its environment to the job; over SSH the login shell lacks the tracking credentials
        secrets = None if self.shares_files else tracking_secrets()
        result = self._run(["sbatch", "--parsable", f"{batch_dir}/script.sh"], secrets=secrets)
        if result.returncode != 0:
            raise BackendError(f"sbatch refused the job: {_strip_prefix(result.error_line())}")
        self._listing = None  # the next poll must see the new jobs
        base = result.stdout.strip().split(";")[0]
        if not base.isdigit():
            raise BackendError(f"sbatch answered {result.stdout.strip()!r} instead of a job id")
        return {r.run_id: (f"{base}_{i}" if use_array else base) for i, r in enumerate(batch)}

    def _add_run(self, files: Archive, request: JobRequest, batch_id: str) -> None:
        """A run's directory: job.json, its batch, and links to the staged code (its working directory)."""
        code = self._stage_code(request.code_dir)
        run_dir = f"runs/{request.run_id}"
        if request.code_dir not in self._top_level:
            staged = staged_files(request.code_dir, self.config.exclude)
            self._top_level[request.code_dir] = sorted({relative.split("/")[0] for _, relative in staged})
        for entry in self._top_level[request.code_dir]:
            files.add_link(f"{run_dir}/{entry}", f"../../{code}/{entry}")
        files.add_text(f"{run_dir}/batch", batch_id + "\n")
        files.add_text(f"{run_dir}/job.json", json.dumps(request.runner_job("."), indent=2))

    # -- observe -------------------------------------------------------------------------------

    def _queue(self) -> dict[str, tuple[JobState, str, str]]:
        """Every job of ours Slurm still knows: job id -> (state, reason, name). Cached for the poll interval."""
        now = time.monotonic()
        if self._listing is not None and now - self._listing[0] < self.min_poll_interval:
            return self._listing[1]
        result = self._run(["squeue", "--me", "--states=all", "--array", "--noheader", "--format=%i|%T|%r|%j"])
        if result.returncode != 0:
            raise BackendError(f"squeue failed: {_strip_prefix(result.error_line())}")
        listing = {}
        for line in result.stdout.splitlines():
            parts = line.strip().split("|")
            if len(parts) == 4:
                listing[parts[0]] = (slurm_state(parts[1]), parts[2], parts[3])
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
                states[parts[0]] = JobStatus(slurm_state(parts[1]), int(code) if code.isdigit() else None)
        return states

    def poll(self, jobs: dict[str, str]) -> dict[str, JobStatus]:
        try:
            listing = self._queue()
        except BackendError as exc:
            return {job_id: JobStatus(JobState.UNKNOWN, detail=str(exc)) for job_id in jobs}
        found = {j: JobStatus(listing[j][0], detail=_reason(listing[j][1])) for j in jobs if j in listing}
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
            return JobStatus(JobState.LOST, detail="gone from the queue without an exit code")
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
            base_of = {
                name[len(JOB_NAME_PREFIX) :]: job_id.split("_")[0]
                for job_id, (_, _, name) in listing.items()
                if name.startswith(JOB_NAME_PREFIX)
            }
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

    def read_log(self, run_id: str, job_id: str | None = None, offset: int = 0) -> bytes | None:
        return self.host.read_bytes(self._path("runs", run_id, runner.OUTPUT_FILE), offset)


def _strip_prefix(line: str) -> str:
    for prefix in (
        "sbatch: error: Batch job submission failed: ",
        "sbatch: error: ",
        "squeue: error: ",
        "sacct: error: ",
        "scancel: error: ",
    ):
        if line.startswith(prefix):
            return line[len(prefix) :]
    return line


def _reason(reason: str) -> str:
    return "" if reason in ("None", "") else reason
