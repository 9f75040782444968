"""The UNICORE backend: batch jobs at a UNICORE site over its REST API, through pyunicore.

A job is created and started by one POST whose description carries everything
the run needs, so there is no half-submitted job to clean up after a crash:

* the committed tree (minus ``exclude``) as a compressed archive, uploaded once
  per content to ``STORAGE/staging_dir/`` and imported by the site from there;
* ``job.json`` and the in-job runner, inline in the description;
* local Apptainer images, uploaded once per content like the code.

Each job is tagged with its run id, so an apply that crashed after the POST
finds its job by tag instead of submitting it twice. The site's listing of jobs
returns only their addresses, so polling costs one GET per live job; those run
in parallel, and runs once closed are not asked about again.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .. import runner
from ..spec.model import UnicoreBackend as UnicoreConfig
from ..spec.model import duration_seconds
from ..templating import packaged, render
from .base import BackendError, CommandTimeout, JobRequest, JobState, JobStatus, SubmissionFailed, tracking_secrets
from .staging import code_archive

RUNNER_FILE = "mantik-runner.py"
CODE_ARCHIVE = "code.tar.gz"
WORKDIR = "work"  # the run's cwd inside the job directory: the code, plus uploaded inputs
RUN_TAG = "mantik-run-"
ATTEMPTS = 3  # for reads: a timeout or dropped connection is retried, with backoff, this many times in all
TRANSIENT_STATUS = (502, 503, 504)
GATEWAY_STATUS = (502, 504)
BUDGET_VARIABLE = "MANTIK_COMPUTE_BUDGET_ACCOUNT"

STATES = {  # pyunicore's JobStatus names
    "UNDEFINED": JobState.UNKNOWN,
    "READY": JobState.PENDING,
    "STAGINGIN": JobState.PENDING,
    "QUEUED": JobState.PENDING,
    "RUNNING": JobState.RUNNING,
    "STAGINGOUT": JobState.RUNNING,
    "SUCCESSFUL": JobState.COMPLETED,
    "FAILED": JobState.FAILED,
}

RESOURCE_NAMES = {  # our resources -> UNICORE's job description
    "queue": "Queue",
    "nodes": "Nodes",
    "runtime": "Runtime",
    "total_cpus": "CPUs",
    "cpus_per_node": "CPUsPerNode",
    "gpus_per_node": "GPUS",
    "memory": "Memory",
    "reservation": "Reservation",
    "node_constraints": "NodeConstraints",
    "qos": "QoS",
}


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class UnicoreBackend:
    shares_files = False  # the site sees none of this machine's files: code and images are sent
    sends_inputs = True
    host = None  # every exchange is an HTTP request to the site

    def __init__(self, name: str, config: UnicoreConfig, state_root: Path):
        self.name = name
        self.config = config
        self.project_root = state_root.parent
        self.timeout = duration_seconds(config.timeout)
        self.min_poll_interval = duration_seconds(config.poll_interval)
        self.calls: Counter = Counter()  # REST calls by kind, for -v and the bench
        self._client = None
        self._jobs_url = ""
        self._staged: set[str] = set()  # staged file names known to be complete at the site
        self._code_urls: dict[Path, str] = {}  # exported tree -> its staged archive
        self._polled: dict[str, tuple[float, JobStatus]] = {}

    # -- talking to the site -------------------------------------------------------------------

    def _credential(self):
        from pyunicore.credentials import BearerToken, UsernamePassword

        names = self.config.credentials
        if names.token_env:
            token = os.environ.get(names.token_env)
            if not token:
                raise BackendError(f"set {names.token_env} to the token for {self.config.url}")
            return BearerToken(token)
        username, password = os.environ.get(names.username_env), os.environ.get(names.password_env)
        if not username or not password:
            raise BackendError(
                f"set {names.username_env} and {names.password_env} to your credentials for {self.config.url}"
            )
        return UsernamePassword(username, password)

    def _site(self):
        if self._client is None:
            from pyunicore.client import Client, Transport

            verify = self.config.tls_verify
            if isinstance(verify, str):
                verify = str(self.project_root / verify) if not verify.startswith("/") else verify
            transport = Transport(self._credential(), verify=verify, timeout=self.timeout)
            client = self._request("connect", lambda: Client(transport, self.config.url))
            self._jobs_url = client.links["jobs"]  # read from the answer just cached: no second call
            self._client = client
        return self._client

    def _request(self, kind: str, call, retry: bool = True):
        """One REST exchange with bounded retries of transient failures, and one-line errors."""
        import httpx
        from pyunicore.credentials import AuthenticationFailedException

        attempts = ATTEMPTS if retry else 1
        for attempt in range(1, attempts + 1):
            self.calls[kind] += 1
            try:
                return call()
            except AuthenticationFailedException:
                raise BackendError(
                    f"authentication failed at {self.config.url}: the site sees you as anonymous "
                    "(check the credentials' variables)"
                ) from None
            except httpx.TimeoutException:
                failure: BackendError = CommandTimeout(f"{self.config.url} did not answer within {self.timeout:g} s")
            except (httpx.RemoteProtocolError, httpx.ReadError):  # the request went out: the site may have acted
                failure = CommandTimeout(f"{self.config.url} broke the connection before answering")
            except (httpx.ConnectError, httpx.WriteError) as exc:
                failure = BackendError(self._connection_problem(exc))
            except httpx.HTTPError as exc:  # pyunicore's check_error: "STATUS Server Error: MESSAGE for url: URL"
                status, message = _site_error(str(exc))
                # a gateway's 502/504 says nothing of what the site behind it did
                kind = CommandTimeout if status in GATEWAY_STATUS else BackendError
                failure = kind(f"the UNICORE site answered {status}: {message}")
                if status not in TRANSIENT_STATUS:
                    raise failure from None
            except OSError as exc:  # pyunicore's storage errors
                raise BackendError(f"UNICORE storage problem: {exc}") from None
            except (ValueError, KeyError, TypeError):  # HTML, or JSON of another shape
                raise BackendError(
                    f"{self.config.url} did not answer like a UNICORE REST endpoint (it should end in /rest/core)"
                ) from None
            if attempt < attempts:
                time.sleep(min(0.5 * 2 ** (attempt - 1), self.timeout))
        if attempts > 1:
            raise type(failure)(f"{failure} (tried {attempts} times)")
        raise failure

    def _connection_problem(self, exc: Exception) -> str:
        text = str(exc) or type(exc).__name__
        if "SSL" in text or "CERTIFICATE" in text.upper():
            return f"TLS failure talking to {self.config.url}: {text} (set tls_verify to the site's CA bundle)"
        return f"cannot reach {self.config.url}: {text}"

    def _get(self, kind: str, url: str, **kwargs):
        return self._request(kind, lambda: self._site().transport.get(url=url, **kwargs))

    # -- submit --------------------------------------------------------------------------------

    def submit(self, requests: list[JobRequest]) -> dict[str, str]:
        if not requests:
            return {}
        site = self._site()
        template = self._template()
        submitted: dict[str, str] = {}
        for position, request in enumerate(requests):
            unsent = [r.run_id for r in requests[position + 1 :]]
            try:  # staging: whatever fails here, no job was created
                description = self.job_description(request, template)
            except BackendError as exc:
                raise SubmissionFailed(
                    f"experiment {request.group or '?'}: {exc}", submitted, [request.run_id, *unsent]
                ) from None
            try:
                response = self._request(
                    "submit", lambda d=description: site.transport.post(url=self._jobs_url, json=d), retry=False
                )
            except BackendError as exc:
                if isinstance(exc, CommandTimeout):  # the POST may have created the job: adopt it by its tag
                    unknown, refused = [request.run_id], unsent
                else:
                    unknown, refused = [], [request.run_id, *unsent]
                raise SubmissionFailed(
                    f"experiment {request.group or '?'}: {exc}", submitted, refused, unknown
                ) from None
            submitted[request.run_id] = response.headers["Location"]
        return submitted

    def _template(self) -> str:
        if not self.config.template:
            return packaged("unicore-job.json.j2")
        try:
            return (self.project_root / self.config.template).read_text()
        except OSError as exc:
            raise BackendError(f"cannot read the job template {self.config.template}: {exc.strerror}") from None

    def job_description(self, request: JobRequest, template: str | None = None) -> dict:
        """The UNICORE job description of one run (staging its code and inputs at the site first)."""
        if request.code_dir not in self._code_urls:  # runs of one apply share their code
            archive = code_archive(request.code_dir, self.config.exclude)
            self._code_urls[request.code_dir] = self._stage(archive, "code")
        imports = [
            {"From": self._code_urls[request.code_dir], "To": CODE_ARCHIVE},
            _inline("job.json", json.dumps(request.runner_job(WORKDIR, archive=CODE_ARCHIVE), indent=2)),
            _inline(RUNNER_FILE, Path(runner.__file__).read_text()),
        ]
        for relative, local in sorted(request.inputs.items()):
            if not local.is_file():
                raise BackendError(
                    f"{relative} is not here to send with the job (an Apptainer image to build or pull?)"
                )
            imports.append({"From": self._stage_file(local), "To": f"{WORKDIR}/{relative}"})
        resources = {
            RESOURCE_NAMES[key]: str(value)
            for key, value in self.config.resources.model_dump(exclude_none=True).items()
        }
        environment = tracking_secrets()  # in the job description only
        if self.config.resources.cpus_per_node:  # as Mantik did: srun inherits the CPUs per task
            environment["SRUN_CPUS_PER_TASK"] = str(self.config.resources.cpus_per_node)
        values = {
            "name": f"mantik-{request.group or 'run'}",
            "executable": self.config.python,
            "arguments": [RUNNER_FILE, "."],
            "environment": environment,
            "imports": imports,
            "tags": ["mantik", RUN_TAG + request.run_id],
            "resources": resources,
            "project": self.config.project or os.environ.get(BUDGET_VARIABLE, ""),
            "login_precommand": " && ".join(self.config.login_precommand),
            "login_postcommand": " && ".join(self.config.login_postcommand),
        }
        from jinja2 import TemplateError

        where = self.config.template or "the packaged job template"
        try:
            text = render(template if template is not None else self._template(), values)
        except TemplateError as exc:
            raise BackendError(f"{where}: {exc}") from None
        try:
            description = json.loads(text)
        except json.JSONDecodeError as exc:
            raise BackendError(f"{where} did not render to JSON: {exc}") from None
        if not isinstance(description, dict):
            raise BackendError(f"{where} did not render to a JSON object")
        return description

    def _storage_url(self) -> str:
        return f"{self.config.url.rstrip('/')}/storages/{self.config.storage}"

    def _stage(self, content: bytes, kind: str) -> str:
        """Upload ``content`` under a name made of its hash, unless the site already has it complete."""
        name = f"{kind}-{hashlib.sha256(content).hexdigest()[:24]}"
        return self._stage_as(name, len(content), lambda: content)

    def _stage_file(self, local: Path) -> str:
        name = f"input-{file_sha256(local)[:24]}-{local.name}"
        return self._stage_as(name, local.stat().st_size, local.read_bytes)

    def _stage_as(self, name: str, size: int, content) -> str:
        relative = f"{self.config.staging_dir.strip('/')}/{name}"
        url = f"{self._storage_url()}/files/{relative}"
        if name in self._staged:
            return url
        import httpx

        try:
            present = self._site().transport.get(url=url, headers={"Accept": "application/json"})
            self.calls["stat"] += 1
            complete = not present.get("isDirectory") and present.get("size") == size
        except (httpx.HTTPError, ValueError, AttributeError):
            complete = False  # not there (404), or an answer we cannot read: upload again
        if not complete:
            # a partial upload (a crash) has the wrong size, so the next apply uploads it again
            data = content()
            self._request(
                "upload",
                lambda: self._site().transport.put(
                    url=url, headers={"Content-Type": "application/octet-stream"}, content=data
                ),
            )
        self._staged.add(name)
        return url

    # -- observe -------------------------------------------------------------------------------

    def poll(self, jobs: dict[str, str]) -> dict[str, JobStatus]:
        now = time.monotonic()
        fresh = {
            url: cached[1]
            for url in jobs
            if (cached := self._polled.get(url)) and now - cached[0] < self.min_poll_interval
        }
        wanted = [url for url in jobs if url not in fresh]
        try:
            self._site()
        except BackendError as exc:
            return {url: JobStatus(JobState.UNKNOWN, detail=str(exc)) for url in jobs} | fresh
        with ThreadPoolExecutor(max_workers=min(8, max(1, len(wanted)))) as pool:
            for url, status in zip(wanted, pool.map(self._job_status, wanted), strict=True):
                fresh[url] = status
                if status.state is not JobState.UNKNOWN:
                    self._polled[url] = (now, status)
        return fresh

    def _job_status(self, url: str) -> JobStatus:
        try:
            properties = self._get("job", url)
        except BackendError as exc:
            if str(exc).startswith("the UNICORE site answered 404"):
                return JobStatus(JobState.LOST, detail="the site no longer knows the job")
            return JobStatus(JobState.UNKNOWN, detail=str(exc))
        status = str(properties.get("status", "UNDEFINED"))
        state = STATES.get(status, JobState.UNKNOWN)
        code = properties.get("exitCode")
        exit_code = int(code) if str(code).lstrip("-").isdigit() else None
        detail = status
        if state is JobState.FAILED:
            log = properties.get("statusMessage") or next(
                (line for line in reversed(properties.get("log") or []) if line.strip()), ""
            )
            detail = f"FAILED: {log}" if log else "FAILED"
        if state is JobState.COMPLETED and exit_code not in (0, None):
            state = JobState.FAILED
        return JobStatus(state, exit_code, detail)

    def find(self, run_ids: list[str]) -> dict[str, str]:
        """Jobs whose submission was never recorded, by their run tag (one listing per run)."""
        if not run_ids:
            return {}
        self._site()
        found = {}
        for run_id in run_ids:
            listing = self._get("find", self._jobs_url, params={"tags": RUN_TAG + run_id})
            urls = listing.get("jobs", [])
            if urls:
                found[run_id] = urls[0]
        return found

    # -- act -----------------------------------------------------------------------------------

    def cancel(self, job_ids: list[str]) -> None:
        """UNICORE aborts one job per call."""
        site = self._site() if job_ids else None
        for url in job_ids:
            self._request("abort", lambda u=url: site.transport.post(url=f"{u}/actions/abort", json={}))
            self._polled.pop(url, None)

    def read_log(self, run_id: str, job_id: str | None, offset: int = 0) -> bytes | None:
        """The runner's output file in the job's working directory (the job's stdout before it started)."""
        if not job_id:
            return None
        try:
            properties = self._get("job", job_id)
        except BackendError as exc:
            if str(exc).startswith("the UNICORE site answered 404"):
                return None
            raise
        working_directory = properties.get("_links", {}).get("workingDirectory", {}).get("href")
        if not working_directory:
            return None
        for name in (runner.OUTPUT_FILE, "stdout"):
            data = self._read_file(f"{working_directory}/files/{name}", offset)
            if data is not None:
                return data
        return None

    def _read_file(self, url: str, offset: int) -> bytes | None:
        headers = {"Accept": "application/octet-stream"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        try:
            response = self._get("read", url, headers=headers, to_json=False)
        except BackendError as exc:
            if str(exc).startswith("the UNICORE site answered 404"):
                return None
            if str(exc).startswith("the UNICORE site answered 416"):  # nothing past offset yet
                return b""
            raise
        return response.content


def _inline(name: str, text: str) -> dict:
    return {"From": "inline://mantik", "To": name, "Data": text}


def _site_error(text: str) -> tuple[int | None, str]:
    """Split pyunicore's "404 Server Error: MESSAGE for url: URL" into (404, MESSAGE)."""
    head, _, rest = text.partition(" Server Error: ")
    message = rest.rsplit(" for url: ", 1)[0] if rest else text
    return (int(head) if head.isdigit() else None), message or "no message"
