"""The one small protocol every compute backend implements.

The job states it reports are words of :mod:`mantik_spec.vocab`, kept apart from
plan actions: the planner maps one onto the other.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..errors import MantikError
from ..spec.cost import Allocation, Used
from ..state.journal import JournalFiles
from ..state.provenance import SEAL_VARIABLE
from ..vocab import JobStatus


@dataclass(frozen=True)
class JobRequest:
    """Everything a backend needs to start one run; credentials are never part of it."""

    run_id: str
    run_key: str
    point_id: str
    command: str  # rendered, parameters already shell-quoted
    code_dir: Path  # the committed tree, exported
    tracking_uri: str
    experiment_id: str
    environment: dict[str, str] = field(default_factory=dict)
    group: str = ""  # runs of one group (an experiment) may be submitted together, e.g. as one job array
    # local files the job needs that are not committed (a local Apptainer image), by their path
    # relative to the run's working directory; only backends that cannot see this machine's files send them
    inputs: dict[str, Path] = field(default_factory=dict)
    tracking: str = "online"  # TrackingMode: how the job records (online, offline to a journal, auto)
    experiment_name: str = ""  # the MLflow experiment's name (project/experiment), kept in an offline journal
    # the run's provenance secret, sealed (mantik_spec.state.provenance): useless without the seal, which
    # reaches the job only through its environment ("" when the project signs nothing)
    signing: str = ""

    def runner_job(self, workdir: str, **extra) -> dict:
        """The ``job.json`` the in-job runner reads (see :mod:`mantik_spec.runner`)."""
        return {
            "run_id": self.run_id,
            "run_key": self.run_key,
            "point": self.point_id,
            "command": self.command,
            "tracking_uri": self.tracking_uri,
            "experiment_id": self.experiment_id,
            "environment": self.environment,
            "workdir": workdir,
            "tracking": self.tracking,
            "experiment_name": self.experiment_name,
            **({"signing": self.signing} if self.signing else {}),
            **extra,
        }


# Credentials a job needs to reach the tracking server. Backends whose jobs do not inherit this
# process's environment pass them at submission only: never in job.json, MLflow, plans or logs.
# The provenance seal travels with them: it opens the sealed run secret in job.json (..state.provenance).
TRACKING_SECRETS = ("MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", SEAL_VARIABLE)


def tracking_secrets() -> dict[str, str]:
    return {name: os.environ[name] for name in TRACKING_SECRETS if os.environ.get(name)}


class BackendError(MantikError):
    """The backend refused or could not be reached; the message is for the user.

    ``status`` is the HTTP status code of the answer that caused it, for backends that speak HTTP
    (None otherwise, or when no answer came): decisions read it, never the message.
    """

    def __init__(self, message: str = "", status: int | None = None):
        super().__init__(message)
        self.status = status


class CommandTimeout(BackendError):
    """The backend did not answer in time: what the command did is unknown."""


class SubmissionInDoubt(BackendError):
    """A submission's answer was lost or unclear (a timeout, a dropped connection, a gateway error) and
    looking did not find the job: it may have been queued, and may still appear."""


class SubmissionFailed(BackendError):
    """A submission stopped part-way. What was accepted is kept; runs the backend refused (or that were
    never sent) are named ``refused``; runs whose fate is unknown (a timeout) are named ``unknown`` and stay
    open, for the next apply to adopt (if the job exists) or resubmit."""

    def __init__(
        self, message: str, submitted: dict[str, str], refused: Sequence[str], unknown: Sequence[str] = ()
    ) -> None:
        super().__init__(message)
        self.submitted = submitted  # run id -> job id, accepted before the failure
        self.refused = list(refused)
        self.unknown = list(unknown)


class Host(Protocol):
    """Where a backend's commands run and its files on the cluster live: this machine, a login node over SSH
    (:mod:`.hosts`, :mod:`.ssh`), or a site's file API. Callers outside the backend only count its commands.
    Paths are the cluster's; failures raise :class:`BackendError`."""

    name: str  # for messages: "this machine", or the login node's name
    commands_run: int

    def read_text(self, path: str) -> str | None:
        """The file's text (undecodable bytes replaced); None when there is no such file (yet)."""
        ...

    def read_bytes(self, path: str, offset: int = 0) -> bytes | None:
        """The file's bytes from ``offset`` on; None when there is no such file (yet)."""
        ...

    def read_files(self, paths: list[str]) -> list[bytes | None]:
        """The files' bytes (a path may repeat), read in that order back to back: over a connection in one
        exchange; None for a file there is none."""
        ...

    def write_text(self, path: str, text: str) -> None:
        """Write the file whole (by a rename where the host can, so no reader sees half of it)."""
        ...

    def extract(self, archive: bytes, destination: str) -> None:
        """Unpack a .tar.gz (:class:`.staging.Archive`) into the directory ``destination``: many small files
        in one exchange."""
        ...

    def makedirs(self, path: str) -> None:
        """Make the directory and its parents; one that exists is no error."""
        ...

    def exists(self, path: str) -> bool:
        """Whether anything (a dangling link too) is at ``path``."""
        ...

    def list_dir(self, path: str) -> list[str]:
        """The names in the directory, sorted; ``[]`` when there is no such directory."""
        ...

    def files_below(self, path: str) -> list[tuple[str, int]]:
        """Every file below the directory, as (path relative to it, size in bytes); ``[]`` when there is none."""
        ...


class Backend(Protocol):
    """What every compute backend offers its callers; one module per ``type:`` implements it.

    Each method is one round trip (or a bounded few) whatever the number of runs: callers batch.
    Errors: :class:`BackendError` (refused, unreachable), :class:`CommandTimeout` (no answer: what
    happened is unknown), :class:`SubmissionFailed` (a submission stopped part-way).
    """

    name: str  # the backend's name in mantik.yaml
    shares_files: bool  # whether jobs see this machine's files (else code and data are sent or fetched)
    # whether a job holds a batch allocation that `srun` can start the run's tasks in (Slurm, UNICORE and
    # FirecREST jobs do; a local run is a plain process): Apptainer runs start through srun where it does
    launches_in_allocation: bool
    sends_inputs: bool  # whether local files a job needs (a local image: JobRequest.inputs) are sent with it
    min_poll_interval: float  # seconds: never ask the backend for job states more often than this
    # seconds: within one command, read a running job's offline journal no more often than this (a read may
    # start a transfer job at the site); a job that ended is read at once, whatever this says
    live_journal_interval: float

    @property
    def calls(self) -> Mapping[str, int]:
        """Requests made to the scheduler or site by this process, by kind: printed with -v and by the bench."""
        ...

    @property
    def host(self) -> Host | None:
        """Where the backend runs its commands (this machine, a login node over SSH); None for backends that
        talk to a service over HTTP, or run jobs as this machine's processes without commands."""
        ...

    def submit(self, requests: list[JobRequest]) -> dict[str, str]:
        """Start the runs; returns run id -> job id. Each job carries its run id and key.

        Raises :class:`SubmissionFailed` naming what was accepted, refused and unknown when only part went
        through, :class:`BackendError` when nothing was accepted."""
        ...

    def poll(self, jobs: dict[str, str]) -> dict[str, JobStatus]:
        """The state of many jobs (job id -> run id), in one call to the backend: job id -> status.
        An unreachable backend answers :attr:`JobState.UNKNOWN` (with the reason as detail) instead of raising."""
        ...

    def find(self, run_ids: list[str]) -> dict[str, str]:
        """Jobs submitted for these runs whose id was never recorded (an apply crashed): run id -> job id."""
        ...

    def cancel(self, job_ids: list[str]) -> None:
        """Cancel many jobs in one call (jobs already ended are no error), but only jobs the backend itself shows
        are this project's: a job id comes from a run record, which anyone who can write to the tracking store
        can write (docs/security.md). Raises :class:`BackendError` naming the others, before cancelling any."""
        ...

    def read_log(self, run_id: str, job_id: str | None, offset: int = 0) -> bytes | None:
        """The run's combined output from byte ``offset`` on; None when there is none (yet)."""
        ...

    def journal(self, run_id: str, job_id: str | None) -> JournalFiles | None:
        """The run's offline journal (``tracking: offline`` or ``auto``; :mod:`mantik_spec.state.journal`) where
        its job writes it, as files to read; None when this backend cannot reach it. Reading a journal that does
        not exist (an online run, a job not started) answers None from ``read_bytes``, not an error."""
        ...

    def preflight(self) -> list[str]:
        """What this backend's config asks for that the backend does not offer (a queue, a resource, a
        storage), one line each, asked before anything is submitted; ``[]`` when all is offered or the
        backend cannot tell. Raises :class:`BackendError` when the backend cannot be asked (plan then skips it)."""
        ...

    def notes(self) -> list[str]:
        """What the backend will make of its config that differs from what the config asks, known without
        asking it (the server's own source says so): plan warnings, one line each; ``[]`` when nothing."""
        ...

    def stats(self) -> dict[str, int]:
        """What this process did on the backend besides scheduler calls (connections opened, code trees
        sent), as counts by a phrase naming them, printed with -v; ``{}`` when there is nothing to count."""
        ...

    def usage(self, job_ids: list[str]) -> dict[str, Used | None]:
        """What ended jobs really used, as the site's accounting says (elapsed time x allocated nodes), in one
        time-boxed call: job id -> :class:`Used`; None for a job the accounting shows still holding its
        allocation. Jobs left out have no record there (no accounting): their time limit stands, at most.
        Raises :class:`BackendError` when the accounting could not be asked now (ask again later)."""
        ...

    def allocation(self) -> Allocation | None:
        """What the site says is left of the allocation this backend's jobs are charged to, asked once,
        time-boxed; None when the site does not say. Raises :class:`BackendError` when it could not be asked."""
        ...

    def estimated_start(self) -> str | None:
        """When the site estimates a job of this backend's shape (its resources) would start if submitted now,
        in the site's own words for the time (its clock), asked once, time-boxed, submitting nothing; None when
        the site makes no estimate. Raises :class:`BackendError` when it could not be asked or refused the shape."""
        ...


class BackendBase:
    """The protocol's members most backends answer the same way; a backend inherits this and overrides
    what it knows better (as pre-commit's languages take ``lang_base``'s ``basic_*`` defaults)."""

    launches_in_allocation = False
    live_journal_interval = 0.0  # a journal read is a file read, or one command over the login node's connection

    def notes(self) -> list[str]:
        return []

    def preflight(self) -> list[str]:
        return []  # nothing to ask: the backend's own submission refuses what it does not offer

    def stats(self) -> dict[str, int]:
        return {}

    def journal(self, run_id: str, job_id: str | None) -> JournalFiles | None:
        return None  # the backend cannot reach its jobs' files

    def usage(self, job_ids: list[str]) -> dict[str, Used | None]:
        return {}  # no accounting to ask: every ended job counts at its time limit

    def allocation(self) -> Allocation | None:
        return None  # the site says nothing of what is left

    def estimated_start(self) -> str | None:
        return None  # the site makes no estimate


# How a backend is built from its name in mantik.yaml, its config (a model of mantik_spec.spec.model,
# chosen by ``type:``) and the project's state directory (.mantik/).
BackendClass = Callable[[str, Any, Path], Backend]
