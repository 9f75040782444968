"""The FirecREST backend: Slurm job arrays on a cluster behind FirecREST's REST API (v2), through pyfirecrest.

The layout under ``workdir`` on the cluster, the batch script, the reading of Slurm's state words and
the adoption of jobs are :class:`.batch.BatchBackend`'s, as for the Slurm backend; only the way there
differs (the files through :class:`SiteFiles`):

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
* a run's offline journal (``runs/RUN_ID/journal/``, :meth:`.batch.BatchBackend.journal`) is listed with one
  ``ops/ls`` per directory and each file downloaded exact (pyfirecrest's ``download``: a stat, then
  ``ops/download``, or the site's transfer job above 1 MiB); logs, polled, are read with one ``ops/view``;
* the token comes from the OIDC client-credentials flow (pyfirecrest's ``ClientCredentialsAuth``),
  the client id and secret from the environment variables the spec names: never written anywhere.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

from .. import runner
from ..spec.cost import Used
from ..spec.model import FirecrestConfig, duration_seconds
from ..vocab import JobState, JobStatus
from .base import BackendError, CommandTimeout, SubmissionInDoubt, tracking_secrets
from .batch import (
    BatchBackend,
    Listing,
    SubmissionRefused,
    array_task_ids,
    batch_of,
    directives,
    sbatch_quote,
    slurm_status,
)
from .staging import code_archive

ATTEMPTS = 3  # for idempotent calls: a timeout, a dropped connection or a 5xx is retried this many times in all
GATEWAY_STATUS = (502, 503, 504)  # a proxy's answer: the API behind it may have acted
BUDGET_VARIABLE = "MANTIK_COMPUTE_BUDGET_ACCOUNT"
STAGED_MARK = ".complete"
# how far back the job listing looks for ended jobs (FirecREST's JobsTimeWindow, the longest it offers);
# jobs ended before that are read from the run directory, where the in-job runner wrote the exit code
TIME_WINDOW = "7d"
DIRECT_DOWNLOAD = 1024 * 1024  # pyfirecrest's MAX_DIRECT_UPLOAD_SIZE: a file this large comes by transfer job
KEPT_BYTES = 256 * 1024 * 1024  # at most this much of such files is kept, to be read again while unchanged
# the longest a read waits for its transfer job (queued behind a busy transfer partition, or copying): ten times
# the default answer timeout; past it pyfirecrest cancels the job and the read fails, to be made again later
TRANSFER_WAIT = 600.0


def _auth_class():
    from firecrest import ClientCredentialsAuth

    class Auth(ClientCredentialsAuth):
        """pyfirecrest's client-credentials flow, plus forgetting a token the API refused (revoked, or
        expired early by the server's clock) so the next request fetches a new one."""

        def forget(self) -> None:
            self._access_token = None
            self._token_expiration_ts = None

    return Auth


class SiteFiles:
    """The cluster's files through FirecREST's filesystem API: a :class:`~.base.Host` beside the local and SSH
    hosts (:mod:`.hosts`, :mod:`.ssh`), one request a call (``read_bytes``: two, or a transfer job from 1 MiB).
    An archive is uploaded into ``uploads``, named after its content, and extracted at the site."""

    def __init__(self, request: Callable, machine: str, account: str, uploads: str, api: tuple[str, ...] = ()):
        self.name = machine
        self._api = api  # the API's and the token endpoint's URLs: a failed request elsewhere is the object store's
        self.commands_run = 0
        self._request = request  # FirecrestBackend._request: retries, errors as BackendError
        self._account = account or None
        self._uploads = uploads
        self._kept: dict[str, tuple[str, bytes]] = {}  # path -> (SHA-256, content) of files read by transfer job
        self.transfer_wait = TRANSFER_WAIT  # seconds a read waits for its transfer job

    def _repeatable(self, exc: BaseException) -> bool:
        """Whether a call that may queue a transfer job (pyfirecrest's ``download`` and ``upload``) may be made
        again after ``exc``: only when the request that failed went to the API (or its token endpoint) and was not
        the POST to ``transfer/...`` that queues the job. A failed request to the object store comes after that
        POST, and an unknown one may: neither is repeated (another attempt would queue another job)."""
        try:
            responses = getattr(exc, "responses", None)
            request = responses[-1].request if responses else getattr(exc, "request", None)
        except (RuntimeError, AttributeError):  # httpx's answer when the request is unknown
            return False
        if request is None:
            return False
        url = str(request.url)
        if not any(url.startswith(api) for api in self._api):
            return False
        return not (str(request.method).upper() == "POST" and "/transfer/" in url)

    def _call(self, kind: str, call: Callable, retry: bool | Callable[[BaseException], bool] = True):
        self.commands_run += 1
        return self._request(kind, call, retry)

    def exists(self, path: str) -> bool:
        try:
            self._call("stat", lambda c: c.stat(self.name, path))
        except BackendError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def read_text(self, path: str) -> str | None:
        try:
            return self._call("view", lambda c: c.view(self.name, path))
        except BackendError as exc:
            if exc.status in (404, 400):  # no such file (yet)
                return None
            raise

    def read_bytes(self, path: str, offset: int = 0, keep: bool = False) -> bytes | None:
        """The file's bytes, exact, from ``offset`` on; None when there is no such file. pyfirecrest's
        ``download`` stats it, then takes it from ``ops/download`` below 1 MiB (:data:`DIRECT_DOWNLOAD`); above,
        the site's transfer job stages it in the object store, the client waits for the job (at most
        :attr:`transfer_wait` seconds), checks its log and GETs the object. With ``keep`` (the journal's database,
        read on every pass: :meth:`read_files`) such a file is kept in memory for the command, and read again only
        when the site's SHA-256 of it (``ops/checksum``, one request) is another: a live journal's database costs
        a transfer job only when it changed. A failed or overdue transfer job is a :class:`BackendError`, as is
        a path holding a ``'`` (the server's commands put paths in ``'...'`` unescaped: its ``ops/commands/``)."""
        if "'" in path:  # FirecREST's commands put each path in '...' unescaped: the site's shell would fail (500)
            raise BackendError(
                f"cannot read {path} through FirecREST: its server quotes paths in '...', which a ' in the name "
                "breaks; rename the file"
            )
        kept = self._kept.get(path)
        if kept is not None and self._checksum(path) == kept[0]:
            return kept[1][offset:]
        content = self._download(path)
        self._kept.pop(path, None)
        if keep and content is not None and DIRECT_DOWNLOAD <= len(content) <= KEPT_BYTES:
            while self._kept and sum(len(c) for _, c in self._kept.values()) + len(content) > KEPT_BYTES:
                del self._kept[next(iter(self._kept))]  # the one kept longest first
            self._kept[path] = (hashlib.sha256(content).hexdigest(), content)
        return None if content is None else content[offset:]

    def _download(self, path: str) -> bytes | None:
        """The file through pyfirecrest's ``download(blocking=False)``: a stat, then ``ops/download`` (done at once:
        retried as a GET) or ``POST transfer/download``, which queues a transfer job and is never repeated (a
        retry would queue another); the job is waited for at most :attr:`transfer_wait` seconds, then the staged
        object is GET from the object store (retried). pyfirecrest writes the file to disk; it is read back into
        memory whole, as the journal's reader takes it (a database, artifacts one at a time)."""
        with tempfile.TemporaryDirectory(prefix="mantik-firecrest-") as directory:
            target = os.path.join(directory, "download")

            def start(client):
                try:
                    return True, client.download(self.name, path, target, account=self._account, blocking=False)
                except FileNotFoundError:  # pyfirecrest's answer to a 404 from its stat
                    return False, None

            try:
                found, transfer = self._call("download", start, retry=self._repeatable)
            except BackendError as exc:
                if exc.status == 404:  # removed between the stat and the download
                    return None
                raise
            if not found:
                return None
            if transfer is not None:  # from 1 MiB: a transfer job stages it in the object store
                self._call("transfer", lambda c: _wait(transfer, self.transfer_wait), retry=False)
                self._call("staged", lambda c: transfer.download_file_from_stage())
            with open(target, "rb") as handle:
                return handle.read()

    def _checksum(self, path: str) -> str | None:
        """The file's SHA-256 as the site computes it; None when it does not say (no such file, or a path its
        ``sha256sum`` output cannot be parsed for: the server splits that line on blanks)."""
        try:
            answer = self._call("checksum", lambda c: c.checksum(self.name, path), retry=False)
        except BackendError:
            return None
        if not isinstance(answer, dict) or str(answer.get("algorithm", "")).replace("-", "") != "SHA256":
            return None
        return str(answer.get("checksum") or "") or None

    def read_files(self, paths: list[str]) -> list[bytes | None]:
        """One :meth:`read_bytes` a file (FirecREST's API reads one file at a time), each kept: what is read
        together is the journal's database and its rollback journal, read again on every pass (artifacts are
        read once each, by :meth:`read_bytes`, and not kept)."""
        return [self.read_bytes(path, keep=True) for path in paths]

    def list_dir(self, path: str) -> list[str]:
        try:
            entries = self._call("ls", lambda c: c.list_files(self.name, path, show_hidden=True))
        except BackendError as exc:
            if exc.status == 404:
                return []
            raise
        return sorted(entry["name"] for entry in entries)

    def files_below(self, path: str) -> list[tuple[str, int]]:
        """One ``ls`` per directory (entries as FirecREST's ops/ls answers them: name, type, size)."""
        found: list[tuple[str, int]] = []
        pending = [""]
        while pending:
            relative = pending.pop()
            try:
                entries = self._call(
                    "ls", lambda c, r=relative: c.list_files(self.name, f"{path}/{r}".rstrip("/"), show_hidden=True)
                )
            except BackendError as exc:
                if exc.status == 404:
                    continue
                raise
            for entry in entries:
                name = f"{relative}/{entry['name']}".lstrip("/")
                if entry.get("type") == "d":
                    pending.append(name)
                elif entry.get("type") == "-":
                    found.append((name, int(entry.get("size") or 0)))
        return sorted(found)

    def makedirs(self, path: str) -> None:
        self._call("mkdir", lambda c: c.mkdir(self.name, path, create_parents=True))

    def write_text(self, path: str, text: str) -> None:
        directory, _, name = path.rpartition("/")
        self.upload(text.encode(), directory, name)

    def upload(self, data: bytes | Path, directory: str, filename: str) -> None:
        """Small files go straight to FirecREST, larger ones through its transfer job (pyfirecrest chooses).
        A file (``Path``) is read as it is sent, afresh on each attempt."""
        size = data.stat().st_size if isinstance(data, Path) else len(data)

        def upload(client):
            with open(data, "rb") if isinstance(data, Path) else io.BytesIO(data) as source:
                return client.upload(self.name, source, directory, filename, account=self._account, file_size=size)

        self._call("upload", upload, retry=self._repeatable)  # from 1 MiB a POST that queues a transfer job

    def unpack(self, archive: str, destination: str) -> None:
        """Extract the archive ``archive`` at the site into ``destination``."""
        self._call("extract", lambda c: c.extract(self.name, archive, destination))

    def extract(self, archive: bytes, destination: str) -> None:
        # members carry their own paths: the batch archive is extracted over the work directory itself
        name = f"{hashlib.sha256(archive).hexdigest()[:16]}.tar.gz"
        self.makedirs(self._uploads)
        self.upload(archive, self._uploads, name)
        self.unpack(f"{self._uploads}/{name}", destination)


class FirecrestBackend(BatchBackend):
    shares_files = False  # the cluster sees none of this machine's files: code is sent
    sends_inputs = False  # a local image is not uploaded for every run: put it on the cluster
    host = None  # every exchange is an HTTP request to FirecREST
    # a journal from 1 MiB on is read by a transfer job (a Slurm job at the site): a running job's at most once a
    # minute, so `status --watch` or `apply --wait` do not queue one a poll; its last read, once it ended, at once
    live_journal_interval = 60.0
    config: FirecrestConfig

    def __init__(self, name: str, config: FirecrestConfig, state_root: Path):
        super().__init__(name, config, state_root)
        self.timeout = duration_seconds(config.timeout)
        self.workdir = (config.workdir or "").rstrip("/")
        self.machine = config.machine or ""
        self._client = None
        self._auth = None
        api = tuple(str(url) for url in (config.url, config.token_url) if url)
        self._files = SiteFiles(self._request, self.machine, self._account(), self._path("batches"), api)
        self._used: dict[str, Used] = {}  # job id -> what it used, from the job records of ended jobs

    @property
    def files(self) -> SiteFiles:
        return self._files

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

    def _request(self, kind: str, call, retry: bool | Callable[[BaseException], bool] = True):
        """One API call with bounded retries of what may pass (5xx, timeouts, a refused token once);
        every failure as a :class:`BackendError` (``status``: the HTTP status) or :class:`CommandTimeout`.
        ``retry``: whether to retry at all, or a test of the failure whether it may be (False: what failed is not
        to be repeated, e.g. the POST that queues a transfer job)."""
        import httpx
        import requests
        from firecrest import ClientsCredentialsException, FirecrestException
        from firecrest.FirecrestException import MultipartUploadException, TransferJobFailedException

        # the failure a retry would repeat
        cause: BaseException
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
                cause = exc
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
                cause = exc
            except (TransferJobFailedException, MultipartUploadException) as exc:
                # the transfer job's verdict (its log lacks the success line, it outlasted its wait, or the staging
                # broke): not retried
                raise BackendError(_transfer_failure(kind, exc)) from None
            except httpx.HTTPStatusError as exc:  # a presigned object-store URL's answer, outside FirecREST's API
                code = exc.response.status_code
                failure = BackendError(f"the site's object store answered {code} for a staged file")
                cause = exc
                if code < 500:
                    raise failure from None
            except (httpx.TimeoutException, requests.Timeout) as exc:
                failure, cause = CommandTimeout(f"{self.config.url} did not answer within {self.timeout:g} s"), exc
            except (httpx.RemoteProtocolError, httpx.ReadError) as exc:  # the request went out: the API may have acted
                failure, cause = CommandTimeout(f"{self.config.url} broke the connection before answering"), exc
            except (httpx.ConnectError, httpx.WriteError, requests.ConnectionError) as exc:
                failure, cause = BackendError(f"cannot reach {self.config.url}: {_without_urls(str(exc))}"), exc
            except (ValueError, KeyError, TypeError) as exc:  # HTML, or JSON of another shape
                raise BackendError(f"{self.config.url} did not answer like a FirecREST v2 API: {exc}") from None
            if callable(retry) and not retry(cause):
                raise failure
            if attempt >= attempts:
                if attempts > 1:
                    raise type(failure)(f"{failure} (tried {attempts} times)", status=failure.status)
                raise failure
            time.sleep(min(0.5 * 2 ** (attempt - 1), self.timeout))

    def _account(self) -> str:
        return self.config.account or os.environ.get(BUDGET_VARIABLE, "")

    # -- submit --------------------------------------------------------------------------------

    def stage_code(self, code_dir: Path) -> str:
        """The committed tree as one archive named after its content, uploaded and extracted once; a mark
        written after the extraction says it is complete."""
        with code_archive(code_dir, self.config.exclude) as archive:
            name = archive.digest[:24]
            target = self._path("code", name)
            mark = f"{target}/{STAGED_MARK}"
            if not self.files.exists(mark):
                self.files.makedirs(target)
                self.files.upload(archive.path, self._path("code"), f"{name}.tar.gz")
                self.files.unpack(self._path("code", f"{name}.tar.gz"), target)
                self.files.write_text(mark, "")  # last: an interrupted staging is done again
        return f"code/{name}"

    def _directives(self) -> list[str]:
        # the budget account from the environment, quoted as sbatch reads #SBATCH lines
        budget = [] if self.config.account or not self._account() else [sbatch_quote(f"--account={self._account()}")]
        placement = {"reservation": self.config.reservation, "constraint": self.config.constraint}
        return [*directives(self.config, placement), *budget]

    def submit_script(self, batch_dir: str, script: str) -> str:
        secrets = tracking_secrets()  # in the request only: the job's environment, never a file
        try:
            answer = self._request(
                "submit",
                lambda c: c.submit(self.machine, working_dir=batch_dir, script_str=script, env_vars=secrets or None),
                retry=False,
            )
        except CommandTimeout as exc:  # no answer, or a gateway's: the API may still be submitting it
            raise SubmissionInDoubt(str(exc), status=exc.status) from None
        except BackendError as exc:
            raise SubmissionRefused(str(exc), status=exc.status) from None
        return str(answer["jobId"])

    # -- observe -------------------------------------------------------------------------------

    def list_jobs(self) -> Listing:
        """Live jobs, and ended ones of the time window, in one call."""
        jobs = self._request("jobs", lambda c: c.job_info(self.machine, time_window=TIME_WINDOW))
        listing: Listing = {}
        for job in jobs:
            status = job.get("status") or {}
            state = status.get("state") or ""
            if isinstance(state, list):
                state = state[0] if state else ""
            found = slurm_status(str(state), str(status.get("stateReason") or ""))
            code = status.get("exitCode")
            if found.state in (JobState.COMPLETED, JobState.FAILED) and isinstance(code, int):
                found = JobStatus(found.state, code, found.detail)
            used = _used(job) if found.state.ended else None
            # a pending array is one record, 123_[0-9] (squeue and sacct both group it)
            for job_id in array_task_ids(str(job.get("jobId", ""))):
                listing[job_id] = (found, batch_of(str(job.get("workingDirectory") or "")))
                if used is not None:
                    self._used[job_id] = used
        return listing

    def usage(self, job_ids: list[str]) -> dict[str, Used | None]:
        """What ended jobs used, from the job list's records (sacct's, for ended jobs: ``time.elapsed`` seconds x
        ``allocationNodes``), read with the poll's listing; a job listed live is asked again later, a job the
        list no longer holds (older than its time window) or holds without an elapsed time has no record."""
        listing = self._jobs()
        answer: dict[str, Used | None] = {job_id: self._used[job_id] for job_id in job_ids if job_id in self._used}
        answer.update({j: None for j in job_ids if j not in answer and j in listing and listing[j][0].state.live})
        return answer

    def _unlisted(self, job_ids: list[str], listing: Listing) -> dict[str, JobStatus]:
        # A FirecREST on Slurm's REST client lists each array task under its own number, not as 123_4:
        # a task missing while jobs of its batch are live is not taken for gone
        batch_of_base = {job_id.split("_")[0]: batch for job_id, (_, batch) in listing.items() if batch}
        live_batches = {batch for status, batch in listing.values() if batch and status.state.live}
        unknown = JobStatus(JobState.UNKNOWN, detail="its array is listed, this task not by its id")
        return {job_id: unknown for job_id in job_ids if batch_of_base.get(job_id.split("_")[0]) in live_batches}

    # -- act -----------------------------------------------------------------------------------

    def cancel_jobs(self, job_ids: list[str]) -> None:
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
        # polled while the job runs: one ops/view, not a stat and a download (nor a transfer job above 1 MiB)
        text = self.files.read_text(self._path("runs", run_id, runner.OUTPUT_FILE))
        return None if text is None else text.encode()[offset:]


def _used(job: dict) -> Used | None:
    """An ended job's record as node-hours: its elapsed seconds x its allocated nodes; None without both."""
    elapsed = (job.get("time") or {}).get("elapsed") if isinstance(job.get("time"), dict) else None
    nodes = job.get("allocationNodes")
    if not isinstance(elapsed, int) or not isinstance(nodes, int) or elapsed < 0 or nodes < 0:
        return None
    return Used(elapsed * nodes / 3600, "sacct")


def _wait(transfer, seconds: float) -> None:
    """Wait for a download's transfer job at most ``seconds`` (pyfirecrest cancels it past that), then check its
    log; a failed first poll of the job is a :class:`BackendError` (pyfirecrest's ``wait_for_job`` goes on to an
    unbound name after a poll's error other than 404)."""
    from firecrest.FirecrestException import TransferJobTimeoutException

    job = _transfer_job(transfer.transfer_data)
    name = f"the FirecREST transfer job {job.get('jobId')} on {job.get('system')}"
    try:
        transfer.wait_for_transfer_job(timeout=seconds)
    except TransferJobTimeoutException:
        raise BackendError(
            f"{name} was still queued or running after {seconds:g} s and was cancelled: read again on the next pass"
        ) from None
    except UnboundLocalError:
        raise BackendError(f"FirecREST did not answer the first poll of {name}: read again on the next pass") from None


def _transfer_job(info) -> dict:
    job = info.get("transferJob") if isinstance(info, dict) else None
    return job if isinstance(job, dict) else {}


def _transfer_failure(kind: str, exc) -> str:
    """One line naming what failed: the transfer job (its logs), its wait, or a step with the object store
    (pyfirecrest's own message, never the transfer info: that holds the presigned URLs)."""
    from firecrest.FirecrestException import MultipartUploadException

    job = _transfer_job(getattr(exc, "_transfer_job_info", None))
    name = f"the FirecREST transfer job {job.get('jobId')} on {job.get('system')}" if job else "the FirecREST transfer"
    if isinstance(exc, MultipartUploadException):
        step = {"upload": "the upload through the object store", "staged": "the staged download"}.get(kind, kind)
        return f"{step} of {name} failed: {_without_urls(str(getattr(exc, '_msg', None) or 'no message'))}"
    if getattr(exc, "_file_not_found", False):
        return f"{name} left no log (cancelled before it ran?)"
    logs = job.get("logs")
    logs = logs if isinstance(logs, dict) else {}
    return f"{name} failed: see its logs {logs.get('outputLog')} and {logs.get('errorLog')}"


def _without_urls(text: str) -> str:
    """``text`` as one line, short, with every URL replaced (a presigned URL's query is a credential, and
    the object store's address is the site's) and an S3 error document reduced to its code and message."""
    code, message = re.search(r"<Code>([^<]*)</Code>", text), re.search(r"<Message>([^<]*)</Message>", text)
    if code:
        text = text[: text.find("<")] + code.group(1) + (f": {message.group(1)}" if message else "")
    text = re.sub(r"[a-z][a-z0-9+.-]*://\S+", "(a URL)", text, flags=re.IGNORECASE)
    text = re.sub(r"X-Amz-\S*", "", text, flags=re.IGNORECASE)
    text = " ".join(text.split())
    return text if len(text) <= 300 else text[:300] + "..."


def _status(exc) -> int | None:
    responses = getattr(exc, "responses", None) or []
    return getattr(responses[-1], "status_code", None) if responses else None


def _message(exc) -> str:
    responses = getattr(exc, "responses", None) or []
    try:
        body = responses[-1].json()
    except (ValueError, AttributeError, IndexError):  # not JSON
        return "no message"
    text = str(body.get("message") or body.get("detail") or body) if isinstance(body, dict) else str(body)
    return " ".join(text.split())  # one line: a command's stderr may hold several
