"""The FirecREST backend: Slurm job arrays on a cluster behind FirecREST's REST API (v2), through pyfirecrest.

The layout under ``workdir`` on the cluster, the batch script and the reading of Slurm's state words
are the Slurm backend's (:mod:`.slurm`); only the way there differs:

* the committed tree is one archive named after its content (``code/HASH.tar.gz``), uploaded once
  (FirecREST takes small files directly, larger ones through its transfer mechanism: pyfirecrest's
  ``upload`` chooses) and extracted at the site into ``code/HASH/``; a marker written after the
  extraction says it is complete, so a crash in between uploads it again;
* each batch's files (the script, its run index, every run's ``job.json`` and its links to the code)
  are one more small archive, extracted the same way;
* ``POST /compute/{machine}/jobs`` submits the batch script (a job array) from its batch directory;
  the job is named ``mantik-EXPERIMENT``, and the job list shows each job's working directory, so a
  submission whose answer was lost is found by its batch before anything is recorded, and a crashed
  apply adopts its jobs instead of submitting them twice;
* ``GET /compute/{machine}/jobs`` lists every job of the user: one call per poll for all live jobs;
* the token comes from the OIDC client-credentials flow (pyfirecrest's ``ClientCredentialsAuth``),
  the client id and secret from the environment variables the spec names: never written anywhere.
"""

from __future__ import annotations

import hashlib
import io
import os
import time
from collections import Counter, defaultdict
from pathlib import Path

from .. import runner
from ..spec.model import FirecrestConfig, duration_seconds
from ..vocab import JobState, JobStatus
from .base import BackendBase, BackendError, CommandTimeout, JobRequest, SubmissionInDoubt, tracking_secrets
from .slurm import (
    GONE_WHILE_RUNNING,
    NEVER_STARTED,
    add_run,
    array_task_ids,
    batch_id_of,
    batch_of,
    batch_script,
    batch_template,
    sbatch_quote,
    slurm_status,
    split_batches,
    submit_batches,
)
from .staging import Archive, code_archive

ATTEMPTS = 3  # for idempotent calls: a timeout, a dropped connection or a 5xx is retried this many times in all
GATEWAY_STATUS = (502, 503, 504)  # a proxy's answer: the API behind it may have acted
BUDGET_VARIABLE = "MANTIK_COMPUTE_BUDGET_ACCOUNT"
STAGED_MARK = ".complete"
# how far back the job listing looks for ended jobs (FirecREST's JobsTimeWindow, the longest it offers);
# jobs ended before that are read from the run directory, where the in-job runner wrote the exit code
TIME_WINDOW = "7d"


def _auth_class():
    from firecrest import ClientCredentialsAuth

    class Auth(ClientCredentialsAuth):
        """pyfirecrest's client-credentials flow, plus forgetting a token the API refused (revoked, or
        expired early by the server's clock) so the next request fetches a new one."""

        def forget(self) -> None:
            self._access_token = None
            self._token_expiration_ts = None

    return Auth


class FirecrestBackend(BackendBase):
    launches_in_allocation = True
    shares_files = False  # the cluster sees none of this machine's files: code is sent
    sends_inputs = False  # a local image is not uploaded for every run: put it on the cluster
    host = None  # every exchange is an HTTP request to FirecREST

    def __init__(self, name: str, config: FirecrestConfig, state_root: Path):
        self.name = name
        self.config = config
        self.project_root = state_root.parent
        self.timeout = duration_seconds(config.timeout)
        self.min_poll_interval = duration_seconds(config.poll_interval)
        self.calls: Counter = Counter()  # REST calls by kind, for -v and the bench
        self.workdir = (config.workdir or "").rstrip("/")
        self.machine = config.machine or ""
        self._client = None
        self._auth = None
        self._staged: set[str] = set()  # staged archives known to be complete at the site
        self._runner_path = ""
        self._top_level: dict[Path, list[str]] = {}
        self._listing: tuple[float, dict[str, tuple[JobStatus, str]]] | None = None

    # -- talking to FirecREST ------------------------------------------------------------------

    def _site(self):
        if self._client is None:
            if not self.workdir:  # init cannot know it: the spec validates without, and says so here
                raise BackendError(
                    f"backends.{self.name}.workdir is not set: set it to an absolute directory on {self.machine} "
                    "for staged code and run directories (e.g. your scratch directory)"
                )
            names = self.config.credentials
            client_id, secret = os.environ.get(names.client_id_env), os.environ.get(names.client_secret_env)
            if not client_id or not secret:
                raise BackendError(
                    f"set {names.client_id_env} and {names.client_secret_env} to the OIDC client's id and secret "
                    f"for {self.config.url}"
                )
            from firecrest.v2 import Firecrest

            self._auth = _auth_class()(client_id, secret, self.config.token_url)
            self._auth.timeout = self.timeout
            self._auth.disable_client_logging = True
            verify = self.config.tls_verify
            if isinstance(verify, str) and not verify.startswith("/"):
                verify = str(self.project_root / verify)
            client = Firecrest(firecrest_url=self.config.url, authorization=self._auth, verify=verify)
            client.timeout = self.timeout
            client.num_retries_rate_limit = 3  # a 429 is waited out (Retry-After) a bounded number of times
            client.disable_client_logging = True
            self._client = client
        return self._client

    def _request(self, kind: str, call, retry: bool = True):
        """One API call with bounded retries of what may pass (5xx, timeouts, a refused token once);
        every failure as a :class:`BackendError` (``status``: the HTTP status) or :class:`CommandTimeout`."""
        import httpx
        import requests
        from firecrest import ClientsCredentialsException, FirecrestException

        client = self._site()
        attempts = ATTEMPTS if retry else 1
        renewed = False
        attempt = 0
        while True:
            attempt += 1
            self.calls[kind] += 1
            try:
                return call(client)
            except ClientsCredentialsException as exc:
                status = _status(exc)
                if status is not None and status < 500:
                    raise BackendError(
                        f"the token endpoint {self.config.token_url} refused the client credentials ({status}): "
                        f"check {self.config.credentials.client_id_env} and {self.config.credentials.client_secret_env}",
                        status=status,
                    ) from None
                failure: BackendError = BackendError(f"the token endpoint answered {status}", status=status)
            except FirecrestException as exc:
                status = _status(exc)
                if status == 401 and not renewed and self._auth is not None:
                    self._auth.forget()  # expired or revoked before its time: one new token, then the same call
                    renewed, attempt = True, attempt - 1
                    continue
                message = f"FirecREST answered {status}: {_message(exc)}"
                if status == 401:
                    raise BackendError(f"{message} (the token was refused twice)", status=status) from None
                if status is None or status < 500:
                    raise BackendError(message, status=status) from None
                # a gateway's 502/503/504 says nothing of what the API behind it did
                failure = (CommandTimeout if status in GATEWAY_STATUS else BackendError)(message, status=status)
            except (httpx.TimeoutException, requests.Timeout):
                failure = CommandTimeout(f"{self.config.url} did not answer within {self.timeout:g} s")
            except (httpx.RemoteProtocolError, httpx.ReadError):  # the request went out: the API may have acted
                failure = CommandTimeout(f"{self.config.url} broke the connection before answering")
            except (httpx.ConnectError, httpx.WriteError, requests.ConnectionError) as exc:
                failure = BackendError(f"cannot reach {self.config.url}: {exc}")
            except (ValueError, KeyError, TypeError) as exc:  # HTML, or JSON of another shape
                raise BackendError(f"{self.config.url} did not answer like a FirecREST v2 API: {exc}") from None
            if attempt >= attempts:
                if attempts > 1:
                    raise type(failure)(f"{failure} (tried {attempts} times)", status=failure.status)
                raise failure
            time.sleep(min(0.5 * 2 ** (attempt - 1), self.timeout))

    def _path(self, *parts: str) -> str:
        return "/".join([self.workdir, *parts])

    def _exists(self, path: str) -> bool:
        try:
            self._request("stat", lambda c: c.stat(self.machine, path))
        except BackendError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def _upload(self, data: bytes | Path, directory: str, filename: str) -> None:
        """Small files go straight to FirecREST, larger ones through its transfer job (pyfirecrest chooses).
        A file (``Path``) is read as it is sent, afresh on each attempt."""
        size = data.stat().st_size if isinstance(data, Path) else len(data)

        def upload(client):
            with open(data, "rb") if isinstance(data, Path) else io.BytesIO(data) as source:
                return client.upload(
                    self.machine, source, directory, filename, account=self._account() or None, file_size=size
                )

        self._request("upload", upload)

    def _read(self, path: str) -> str | None:
        try:
            return self._request("view", lambda c: c.view(self.machine, path))
        except BackendError as exc:
            if exc.status in (404, 400):  # no such file (yet)
                return None
            raise

    def _account(self) -> str:
        return self.config.account or os.environ.get(BUDGET_VARIABLE, "")

    # -- staging -------------------------------------------------------------------------------

    def _stage_archive(self, data: bytes | Path, directory: str, name: str) -> str:
        """Upload an archive once per content and extract it into ``directory/name/`` at the site."""
        target = self._path(directory, name)
        if target in self._staged:
            return target
        mark = f"{target}/{STAGED_MARK}"
        if not self._exists(mark):
            self._request("mkdir", lambda c: c.mkdir(self.machine, target, create_parents=True))
            archive = f"{name}.tar.gz"
            self._upload(data, self._path(directory), archive)
            self._request("extract", lambda c: c.extract(self.machine, self._path(directory, archive), target))
            self._upload(b"", target, STAGED_MARK)  # last: an interrupted staging is done again
        self._staged.add(target)
        return target

    def _stage_code(self, code_dir: Path) -> str:
        with code_archive(code_dir, self.config.exclude) as archive:
            return self._stage_archive(archive.path, "code", archive.digest[:24])

    def _stage_runner(self) -> str:
        if not self._runner_path:
            source = Path(runner.__file__).read_bytes()
            name = f"runner-{hashlib.sha256(source).hexdigest()[:12]}.py"
            path = self._path("bin", name)
            if not self._exists(path):
                self._request("mkdir", lambda c: c.mkdir(self.machine, self._path("bin"), create_parents=True))
                self._upload(source, self._path("bin"), name)
            self._runner_path = path
        return self._runner_path

    # -- submit --------------------------------------------------------------------------------

    def submit(self, requests: list[JobRequest]) -> dict[str, str]:
        if not requests:
            return {}
        template = batch_template(self.config, self.project_root)  # once per apply, as the Slurm backend reads it
        return submit_batches(split_batches(requests, self.config), lambda batch: self._submit_batch(batch, template))

    def _submit_batch(self, batch: list[JobRequest], template: str) -> dict[str, str]:
        batch_id = batch_id_of(batch)
        run_dirs = [self._path("runs", r.run_id) for r in batch]
        # the Slurm backend's batch script, plus the budget account from the environment, quoted as sbatch
        # reads #SBATCH lines
        budget = [] if self.config.account or not self._account() else [sbatch_quote(f"--account={self._account()}")]
        batch_dir = self._path("batches", batch_id)
        script = batch_script(template, self.config, batch, batch_dir, run_dirs, self._stage_runner(), budget)
        files = Archive()
        files.add_text(f"batches/{batch_id}/runs.txt", "".join(f"{d}\n" for d in run_dirs))
        files.add_text(f"batches/{batch_id}/script.sh", script)
        for request in batch:
            code = self._stage_code(request.code_dir)[len(self.workdir) + 1 :]  # relative to the work directory
            add_run(files, request, batch_id, code, self._top_level, self.config.exclude)
        data = files.bytes()
        # the batch archive is extracted over the work directory itself: its members carry their own paths
        archive = f"batch-{batch_id}.tar.gz"
        self._request("mkdir", lambda c: c.mkdir(self.machine, self._path("batches"), create_parents=True))
        self._upload(data, self._path("batches"), archive)
        self._request("extract", lambda c: c.extract(self.machine, self._path("batches", archive), self.workdir))
        secrets = tracking_secrets()  # in the request only: the job's environment, never a file
        try:
            answer = self._request(
                "submit",
                lambda c: c.submit(
                    self.machine,
                    working_dir=self._path("batches", batch_id),
                    script_str=script,
                    env_vars=secrets or None,
                ),
                retry=False,
            )
            job_id = str(answer["jobId"])
        except BackendError as exc:
            failure = exc
        else:
            self._listing = None  # the next poll must see the new job
            return self._job_ids(batch, job_id)
        # Before anything is recorded, look: the job list shows each job's batch directory, so a job queued
        # despite the lost or failed answer is kept instead of being submitted a second time.
        try:
            queued = self._queued_as(batch_id)
        except BackendError as exc:
            raise SubmissionInDoubt(f"{failure}; the job list could not be read to check ({exc})") from None
        if queued is not None:
            return self._job_ids(batch, queued)
        if isinstance(failure, CommandTimeout):  # the API may still be submitting it
            raise SubmissionInDoubt(f"{failure}; batch {batch_id} is not listed yet, so it may still appear")
        raise failure

    def _job_ids(self, batch: list[JobRequest], base: str) -> dict[str, str]:
        return {r.run_id: (f"{base}_{i}" if self.config.array else base) for i, r in enumerate(batch)}

    def _queued_as(self, batch_id: str) -> str | None:
        self._listing = None
        return _bases(self._jobs()).get(batch_id)

    # -- observe -------------------------------------------------------------------------------

    def _jobs(self) -> dict[str, tuple[JobStatus, str]]:
        """Every job of the user FirecREST lists (live ones, and ended ones of the time window): job id ->
        (status, batch id; empty when not mantik's). One call, cached for the poll interval."""
        now = time.monotonic()
        if self._listing is not None and now - self._listing[0] < self.min_poll_interval:
            return self._listing[1]
        jobs = self._request("jobs", lambda c: c.job_info(self.machine, time_window=TIME_WINDOW))
        listing: dict[str, tuple[JobStatus, str]] = {}
        for job in jobs:
            status = job.get("status") or {}
            state = status.get("state") or ""
            if isinstance(state, list):
                state = state[0] if state else ""
            found = slurm_status(str(state), str(status.get("stateReason") or ""))
            code = status.get("exitCode")
            if found.state in (JobState.COMPLETED, JobState.FAILED) and isinstance(code, int):
                found = JobStatus(found.state, code, found.detail)
            # a pending array is one record, 123_[0-9] (squeue and sacct both group it)
            for job_id in array_task_ids(str(job.get("jobId", ""))):
                listing[job_id] = (found, batch_of(str(job.get("workingDirectory") or "")))
        self._listing = (now, listing)
        return listing

    def poll(self, jobs: dict[str, str]) -> dict[str, JobStatus]:
        try:
            listing = self._jobs()
        except BackendError as exc:
            return {job_id: JobStatus(JobState.UNKNOWN, detail=str(exc)) for job_id in jobs}
        found = {job_id: listing[job_id][0] for job_id in jobs if job_id in listing}
        # A FirecREST on Slurm's REST client lists each array task under its own number, not as 123_4:
        # a task missing while jobs of its batch are live is not taken for gone
        batch_of_base = {job_id.split("_")[0]: batch for job_id, (_, batch) in listing.items() if batch}
        live_batches = {batch for status, batch in listing.values() if batch and status.state.live}
        for job_id in jobs:
            if job_id not in found and batch_of_base.get(job_id.split("_")[0]) in live_batches:
                found[job_id] = JobStatus(JobState.UNKNOWN, detail="its array is listed, this task not by its id")
            elif job_id not in found:
                try:
                    found[job_id] = self._from_run_dir(jobs[job_id])
                except BackendError as exc:
                    found[job_id] = JobStatus(JobState.UNKNOWN, detail=str(exc))
        return found

    def _from_run_dir(self, run_id: str) -> JobStatus:
        """What the runner wrote, for jobs FirecREST no longer lists."""
        text = self._read(self._path("runs", run_id, runner.EXIT_CODE_FILE))
        if text is None or not text.strip().lstrip("-").isdigit():
            if not (self._read(self._path("runs", run_id, "job_id")) or "").strip():
                return JobStatus(JobState.LOST, detail=NEVER_STARTED)
            return JobStatus(JobState.LOST, detail=GONE_WHILE_RUNNING)
        code = int(text)
        return JobStatus(JobState.COMPLETED if code == 0 else JobState.FAILED, code)

    def find(self, run_ids: list[str]) -> dict[str, str]:
        found: dict[str, str] = {}
        waiting: dict[str, str] = {}
        for run_id in run_ids:
            recorded = (self._read(self._path("runs", run_id, "job_id")) or "").strip()
            if recorded:
                found[run_id] = recorded
                continue
            batch = (self._read(self._path("runs", run_id, "batch")) or "").strip()
            if batch:
                waiting[run_id] = batch
        if waiting:
            self._listing = None
            listing = self._jobs()  # if FirecREST cannot answer, neither can we: never guess "no job"
            base_of = _bases(listing)
            for run_id, batch in waiting.items():
                if batch not in base_of:
                    continue
                if not self.config.array:  # as submitted (_job_ids): the listing's form cannot tell this
                    found[run_id] = base_of[batch]
                    continue
                lines = (self._read(self._path("batches", batch, "runs.txt")) or "").splitlines()
                index = next((i for i, line in enumerate(lines) if line.rstrip("/").endswith("/" + run_id)), 0)
                found[run_id] = f"{base_of[batch]}_{index}"
        return found

    # -- act -----------------------------------------------------------------------------------

    def cancel(self, job_ids: list[str]) -> None:
        """FirecREST cancels by job id, and its job id path takes no array task (``123_4``): an array is
        cancelled whole, and only when every task of it still queued or running is asked for."""
        if not job_ids:
            return
        wanted: dict[str, set[str]] = defaultdict(set)
        for job_id in job_ids:
            wanted[job_id.split("_")[0]].add(job_id)
        self._listing = None
        listing = self._jobs()
        kept = []
        for base, tasks in sorted(wanted.items()):
            # an array's tasks by their array-form ids (squeue's own numbers for them stand for the same tasks)
            siblings = {j for j, (s, _) in listing.items() if j.startswith(base + "_") and s.state.live} - tasks
            if siblings:
                kept.append(base)
                continue
            try:
                self._request("cancel", lambda c, b=base: c.cancel_job(self.machine, b))
            except BackendError as exc:
                if exc.status != 404:  # already gone
                    raise
        self._listing = None
        if kept:
            raise BackendError(
                f"FirecREST cancels whole jobs: job {', '.join(kept)} also runs other runs, so it was left running"
            )

    def read_log(self, run_id: str, job_id: str | None, offset: int = 0) -> bytes | None:
        text = self._read(self._path("runs", run_id, runner.OUTPUT_FILE))
        return None if text is None else text.encode()[offset:]


def _bases(listing: dict[str, tuple[JobStatus, str]]) -> dict[str, str]:
    """Batch id -> its job's id (an array's base id). FirecREST merges sacct's records (array tasks as
    ``123_4``) with squeue's (each task under its own number): the array form names the base, so it wins."""
    bases: dict[str, str] = {}
    for job_id, (_, batch) in sorted(listing.items(), key=lambda item: "_" not in item[0]):
        if batch:
            bases.setdefault(batch, job_id.split("_")[0])
    return bases


def _status(exc) -> int | None:
    responses = getattr(exc, "responses", None) or []
    return getattr(responses[-1], "status_code", None) if responses else None


def _message(exc) -> str:
    responses = getattr(exc, "responses", None) or []
    try:
        body = responses[-1].json()
    except (ValueError, AttributeError, IndexError):  # not JSON
        return "no message"
    if isinstance(body, dict):
        return str(body.get("message") or body.get("detail") or body)
    return str(body)
