"""The UNICORE backend: batch jobs at a UNICORE site over its REST API, through pyunicore.

A job is created and started by one POST whose description carries everything
the run needs, so there is no half-submitted job to clean up after a crash:

* the committed tree (minus ``exclude``) as a compressed archive, uploaded once
  per content to ``STORAGE/staging_dir/`` and imported by the site from there;
* ``job.json`` and the in-job runner, inline in the description;
* local Apptainer images, uploaded once per content like the code.

Each job is tagged with its run id, so an apply that crashed after the POST
(or whose POST got no answer) finds its job by tag instead of submitting it
twice. The site's listing of jobs returns only their addresses, so polling costs
one GET per live job; those run in parallel, and runs once closed are not asked
about again.

What the site offers is read from the site itself before anything is sent: its
resource database (the partitions and the resources each defines, as its target
system factory advertises them) and its storages. A resource or queue the site
does not define would otherwise fail the job only after stage-in (UNICORE/X
``GrounderImpl.incarnateResources``); a storage it does not have would fail the
upload. Both are refused with the site's own list instead.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

from .. import runner
from ..spec.cost import Allocation, unicore_seconds
from ..spec.model import UnicoreConfig, duration_seconds
from ..state.versions import FileDigests
from ..templating import packaged, render
from ..vocab import JobState, JobStatus
from .base import BackendBase, BackendError, CommandTimeout, JobRequest, SubmissionFailed, tracking_secrets
from .staging import code_archive, file_chunks

RUNNER_FILE = "mantik-runner.py"
JOB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._~-]*")  # the last segment of a job's URL, matched whole: one name
CODE_ARCHIVE = "code.tar.gz"
WORKDIR = "work"  # the run's cwd inside the job directory: the code, plus uploaded inputs
RUN_TAG = "mantik-run-"
ATTEMPTS = 3  # for reads: a timeout or dropped connection is retried, with backoff, this many times in all
TRANSIENT_STATUS = (502, 503, 504)
GATEWAY_STATUS = (502, 504)
BUDGET_VARIABLE = "MANTIK_COMPUTE_BUDGET_ACCOUNT"
HOME_STORAGE = "HOME"  # the shared storage id most sites configure (UNICORE/X admin guide, "storages")

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

# our resources -> UNICORE/X's standard resource names (ResourceSet.java; the REST API's resource table).
# A partition refuses every name it does not define, so where a site defines another name for the same
# thing (Juelich's resource database calls GPUs per node "GPUS"), that name is used instead.
RESOURCE_NAMES = {
    "queue": ("Queue",),
    "nodes": ("Nodes",),
    "runtime": ("Runtime",),
    "total_cpus": ("TotalCPUs",),
    "cpus_per_node": ("CPUsPerNode",),
    "gpus_per_node": ("GPUsPerNode", "GPUS"),
    "memory": ("MemoryPerNode", "Memory"),
    "reservation": ("Reservation",),
    "node_constraints": ("NodeConstraints",),
    "qos": ("QoS",),
}
# accepted by UNICORE/X whether or not a partition defines them (GrounderImpl.incarnateResources)
UNCHECKED_RESOURCES = {"Queue", "Reservation", "Project", "NodeConstraints", "QoS", "Exclusive"}
WILDCARD_PARTITION = "*"  # a partition that accepts any queue and resource (GrounderImpl)
UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


# The stock Slurm TSI replaces a job name holding any other character by "UNICORE_job" (tsi slurm/BSS.py)
TSI_NAME_CHARACTERS = re.compile(r"[^0-9a-zA-Z.:=~/]")


def job_name(group: str | None) -> str:
    """The job's name, ``mantik.EXPERIMENT``, in the characters a Slurm TSI keeps (others become ``.``), so
    that squeue on the cluster shows it instead of ``UNICORE_job``."""
    return "mantik." + TSI_NAME_CHARACTERS.sub(".", group or "run")


class UnicoreHTTPError(BackendError):
    """The site answered with an HTTP error; ``status`` is its code (None when the text had none)."""

    def __init__(self, message: str, status: int | None):
        super().__init__(message)
        self.status = status


class UnicoreNoAnswer(CommandTimeout):
    """The request went out and no answer (or only a gateway's) came back: the site may have acted on it."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


def login_command(lines: list[str]) -> str:
    """The spec's login-node lines as the one ``User precommand``/``User postcommand`` string of a job: joined
    with ``&&`` as Mantik joined ``PreRunCommandOnLoginNode``, so a failing line stops the rest. A line that
    ends in a shell comment (``module load X  # for torch``) is closed by a line break inside ``{ }``, or the
    comment would swallow every line joined after it. ``shlex`` also takes ``a#b`` for a comment: such a line
    is wrapped too, which the shell runs exactly as the bare line."""
    return " && ".join(f"{{ {line}\n}}" if _has_comment(line) else line for line in lines)


def _has_comment(line: str) -> bool:
    """Whether the shell reads part of ``line`` as a comment (a ``#`` that starts a word, outside quotes)."""
    try:
        return shlex.split(line, comments=True) != shlex.split(line)
    except ValueError:  # unbalanced quotes: the shell reports them; the line break changes nothing
        return "#" in line


def shell_double_quoted(value: str) -> str:
    """``value`` escaped for the inside of a double-quoted shell string.

    UNICORE/X writes each ``Environment`` entry into the job script as ``NAME="value"; export NAME``
    (TSIMessages.appendEnvironment, unchanged from 2.4 to 3.1), so the batch shell would expand ``$``,
    backquotes and ``\\`` in a value, and a ``"`` ends the string (the rest runs as shell code). Inside double
    quotes only these four are special to bash; a newline stays a newline and ``!`` is inert in a script."""
    return re.sub(r'([\\"$`])', r"\\\1", value)


class UnicoreBackend(BackendBase):
    launches_in_allocation = True
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
        self.lifetime = unicore_seconds(config.job_lifetime)
        self._digests = FileDigests(state_root)  # local images: hashed once per content, not once per run
        self._staged: set[str] = set()  # staged file names known to be complete at the site
        self._code_urls: dict[Path, str] = {}  # exported tree -> its staged archive
        self._input_urls: dict[Path, str] = {}  # local input -> its staged copy, for this apply
        self._polled: dict[str, tuple[float, JobStatus]] = {}
        self._offer: SiteOffer | None = None

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
                failure: BackendError = UnicoreNoAnswer(f"{self.config.url} did not answer within {self.timeout:g} s")
            except (httpx.RemoteProtocolError, httpx.ReadError):  # the request went out: the site may have acted
                failure = UnicoreNoAnswer(f"{self.config.url} broke the connection before answering")
            except (httpx.ConnectError, httpx.WriteError) as exc:
                failure = BackendError(self._connection_problem(exc))
            except httpx.HTTPError as exc:  # pyunicore's check_error: "STATUS Server Error: MESSAGE for url: URL"
                # pyunicore raises it without the response: its text is the only place the status is
                # (pyunicore/client.py check_error); from here on the status travels as data
                status, message = _site_error(str(exc))
                text = f"the UNICORE site answered {status}: {message}"
                # a gateway's 502/504 says nothing of what the site behind it did
                failure = UnicoreNoAnswer(text, status) if status in GATEWAY_STATUS else UnicoreHTTPError(text, status)
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
            failure.args = (f"{failure} (tried {attempts} times)",)
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
        problems = self.preflight()
        if problems:  # before any job exists: every run is refused, and none spends a retry
            raise BackendError("; ".join(problems))
        template = self._template()
        submitted: dict[str, str] = {}
        try:
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
                    if _definitely_refused(exc):
                        raise SubmissionFailed(
                            f"experiment {request.group or '?'}: {exc}", submitted, [request.run_id, *unsent]
                        ) from None
                    # no answer, or one that does not say the job was not created: look for it by its tag
                    found = self._look_for(request.run_id)
                    if found is None:  # not there (yet): open, for the next plan to adopt or resubmit
                        raise SubmissionFailed(
                            f"experiment {request.group or '?'}: {exc}", submitted, unsent, [request.run_id]
                        ) from None
                    submitted[request.run_id] = found
                else:
                    submitted[request.run_id] = response.headers["Location"]
                self._extend_lifetime(submitted[request.run_id])
        finally:
            try:
                self._digests.save()
            except OSError:
                pass  # a cache: the next apply hashes again
        return submitted

    def _look_for(self, run_id: str) -> str | None:
        """The job of ``run_id`` if the site has it; None when it has not, or cannot say."""
        try:
            return self.find([run_id]).get(run_id)
        except BackendError:
            return None

    def _extend_lifetime(self, job_url: str) -> None:
        """Ask the site to keep the job (and its directory) for ``job_lifetime`` instead of its default.

        UNICORE/X destroys a job and its working directory at its termination time, one day after submission
        unless the site says otherwise (USE ContainerProperties ``services.lifetime.default``). A run whose
        compute node cannot reach the tracking server is closed, and its output fetched, from the job by a
        later plan/apply: a day is too short for a job that queues over a weekend. The site may cap the
        lifetime (``services.lifetime.maximum``); then it keeps its own, and the job still runs."""
        until = datetime.now(UTC) + timedelta(seconds=self.lifetime)
        try:
            self._request(
                "lifetime",
                lambda: self._site().transport.put(
                    url=job_url, json={"terminationTime": until.strftime("%Y-%m-%dT%H:%M:%S%z")}
                ),
                retry=False,
            )
        except BackendError:
            pass  # the job exists and is recorded; it only keeps the site's lifetime

    # -- what the site offers ------------------------------------------------------------------

    def notes(self) -> list[str]:
        """A memory request the server will not pass on as asked: UNICORE/X narrows the byte count to a
        32-bit int before dividing it into MiB and sends only a positive result (ux ResourceRequest.toInt,
        TSIMessages; the same from 2.4 to 10.x), so 2 GiB and more arrive wrong or not at all."""
        memory = self.config.resources.memory
        size = _quantity("memory", memory) if memory is not None else None
        if size is None:
            return []
        sent = tsi_memory_mib(size)
        if sent == int(size) // (1 << 20):
            return []
        arrives = f"--mem={sent}M" if sent > 0 else "no memory request (the partition's default)"
        return [
            f"resources.memory {memory}: UNICORE/X passes memory to the batch system as a 32-bit byte count, so "
            f"Slurm gets {arrives}; leave memory out, or ask the site how to request more than 2 GiB"
        ]

    def preflight(self) -> list[str]:
        """What in this backend's config the site does not offer: one line each, with the site's own list.

        Reads the site's resource database (its target system factory's ``resources``: partition -> resource
        name -> range) and its storages, once per process. An empty list when all is offered."""
        offer = self.offer()
        problems = []
        try:
            self._resource_names(offer)
        except BackendError as exc:
            problems.append(str(exc))
        try:
            self.storage_id()
        except BackendError as exc:
            problems.append(str(exc))
        return problems

    def offer(self) -> SiteOffer:
        if self._offer is None:
            site = self._site()
            links = site.links
            partitions: dict[str, dict] | None = None
            budget = None
            factories = _listing(self._get("site", links["factories"]), "factories") if "factories" in links else []
            if factories:
                factory = self._get("site", factories[0])
                resources = factory.get("resources") if isinstance(factory, dict) else None
                if isinstance(resources, dict) and resources:
                    partitions = {str(k): v if isinstance(v, dict) else {} for k, v in resources.items()}
                budget = factory.get("remainingComputeTime") if isinstance(factory, dict) else None
            urls = _listing(self._get("site", links["storages"]), "storages") if "storages" in links else []
            storages = [url.rstrip("/").rsplit("/", 1)[-1] for url in urls]
            self._offer = SiteOffer(partitions, storages, budget if isinstance(budget, dict) else None)
        return self._offer

    def allocation(self) -> Allocation | None:
        """What the site says is left of the budget jobs are charged to (``project``, else the variable
        MANTIK_COMPUTE_BUDGET_ACCOUNT): its target system factory's ``remainingComputeTime``, read with what
        it offers (one exchange per process; the server itself caches the TSI's answer for an hour)."""
        fetched = time.time()
        project = self.config.project or os.environ.get(BUDGET_VARIABLE, "")
        return site_allocation(self.offer().budget, project, fetched)

    def _resource_names(self, offer: SiteOffer) -> dict[str, str]:
        """Our resources as the job description's ``Resources``, named as the site's partition names them."""
        wanted = self.config.resources.model_dump(exclude_none=True)
        where = "resources"
        partitions = offer.partitions
        if partitions is None:  # the site does not advertise its resource database: the standard names
            return {RESOURCE_NAMES[key][0]: str(value) for key, value in wanted.items()}
        queue = wanted.get("queue")
        if queue is not None and queue not in partitions and WILDCARD_PARTITION not in partitions:
            raise BackendError(
                f"{where}.queue: the site has no queue {queue} (it offers: {', '.join(sorted(partitions))})"
            )
        if WILDCARD_PARTITION in partitions and queue not in partitions:
            return {RESOURCE_NAMES[key][0]: str(value) for key, value in wanted.items()}
        if queue is not None:
            defined, label = partitions[queue], f"queue {queue}"
        else:  # the site's default partition is not advertised: any partition's names may be meant
            defined = {name: rng for partition in partitions.values() for name, rng in partition.items()}
            label = "any of its queues"
        names: dict[str, str] = {}
        for key, value in wanted.items():
            candidates = RESOURCE_NAMES[key]
            name = next((c for c in candidates if c in defined), candidates[0])
            if name not in defined and name not in UNCHECKED_RESOURCES:
                offered = ", ".join(sorted(defined)) or "nothing"
                raise BackendError(f"{where}.{key}: the site defines no {name} for {label} (it offers: {offered})")
            if name in defined and not _in_range(key, value, defined[name]):
                raise BackendError(
                    f"{where}.{key}: {value} is outside what the site allows for {label} ({defined[name]})"
                )
            names[name] = str(value)
        return names

    def storage_id(self) -> str:
        """The storage for staged files: the configured one, or the user's home storage as the site names it."""
        storages = self.offer().storages
        listed = ", ".join(storages) or "none"
        if self.config.storage:
            if self.config.storage not in storages:
                raise BackendError(f"storage {self.config.storage} is not a storage of the site (it has: {listed})")
            return self.config.storage
        if HOME_STORAGE in storages:
            return HOME_STORAGE
        # storages per target system are named after the user and the storage (TargetSystemImpl): "alice-Home"
        homes = [s for s in storages if s.lower().endswith("-home")]
        if len(homes) == 1:
            return homes[0]
        raise BackendError(
            f"cannot tell which storage to stage files in (the site has: {listed}); set storage: to one of them"
        )

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
            with code_archive(request.code_dir, self.config.exclude) as archive:
                name = f"code-{archive.digest[:24]}"
                self._code_urls[request.code_dir] = self._stage_as(name, archive.size, archive.chunks)
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
        resources = self._resource_names(self.offer())
        # in the job description only; escaped for the NAME="value" line the site writes into the job script
        environment = {name: shell_double_quoted(value) for name, value in tracking_secrets().items()}
        # cpus_per_node is not also sent as SRUN_CPUS_PER_TASK (as Mantik did): a Slurm site's TSI turns
        # CPUsPerNode into --ntasks-per-node (tsi slurm/BSS.py), so an srun in the job would ask for the
        # square of it per node
        values = {
            "name": job_name(request.group),
            "executable": self.config.python,
            "arguments": [RUNNER_FILE, "."],
            "environment": environment,
            "imports": imports,
            "tags": ["mantik", RUN_TAG + request.run_id],
            "resources": resources,
            "project": self.config.project or os.environ.get(BUDGET_VARIABLE, ""),
            "login_precommand": login_command(self.config.login_precommand),
            "login_postcommand": login_command(self.config.login_postcommand),
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
        return f"{self.config.url.rstrip('/')}/storages/{self.storage_id()}"

    def _stage_file(self, local: Path) -> str:
        if local not in self._input_urls:  # one image serves every run of the apply: hashed and checked once
            name = f"input-{self._digests.digest(local)[:24]}-{local.name}"
            # streamed from the file: an image of gigabytes is never held in memory
            self._input_urls[local] = self._stage_as(name, local.stat().st_size, lambda: file_chunks(local))
        return self._input_urls[local]

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
            headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
            self._request(
                "upload",  # content() per attempt: a retry sends the whole file again
                lambda: self._site().transport.put(url=url, headers=headers, content=content()),
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
        for url in [url for url in wanted if not self._of_site(url)]:  # never sent this site's credentials
            wanted.remove(url)
            fresh[url] = JobStatus(JobState.UNKNOWN, detail=f"{url} is not a job of {self.config.url}: not asked")
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
            if _status(exc) == 404:
                return JobStatus(JobState.LOST, detail=self._gone())
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

    def _gone(self) -> str:
        return (
            "the site no longer knows the job: UNICORE deletes a job and its directory at its termination time "
            f"(mantik asks for {self.config.job_lifetime} after submission; the site may allow less, "
            "by default one day)"
        )

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
        """UNICORE aborts one job per call, and only a job of this site's job list tagged as mantik's: a job
        URL comes from a run record, which anyone who can write to the tracking store can write. Raises
        :class:`BackendError` naming the others before anything is aborted."""
        if not job_ids:
            return
        site = self._site()
        foreign = [url for url in job_ids if not self._of_site(url)]
        asked = [url for url in job_ids if url not in foreign]
        listed: list[str] = []
        # one GET and one POST per job: side by side, as poll asks, so a cancel of a large grid takes seconds
        with ThreadPoolExecutor(max_workers=min(8, max(1, len(asked)))) as pool:
            for url, ours in zip(asked, pool.map(self._is_mantik_job, asked), strict=True):
                if ours is not None:
                    (listed if ours else foreign).append(url)
            if foreign:
                raise BackendError(
                    f"job {', '.join(foreign)} is not a mantik job of {self.config.url}: left alone "
                    "(its run record names it, and records are not proof)"
                )
            list(
                pool.map(
                    lambda url: self._request(
                        "abort", lambda: site.transport.post(url=f"{url}/actions/abort", json={})
                    ),
                    listed,
                )
            )
        for url in listed:
            self._polled.pop(url, None)

    def _is_mantik_job(self, url: str) -> bool | None:
        """Whether the site lists the job at ``url`` with mantik's tag; None when it is gone (nothing to abort)."""
        try:
            tags = self._get("job", url).get("tags") or []
        except BackendError as exc:
            if _status(exc) == 404:
                return None
            raise
        return "mantik" in tags

    def _of_site(self, url: str) -> bool:
        """Whether ``url`` names one job of this site's job list (``{jobs}/ID``): only such a URL is asked
        anything, with this site's credentials (call after :meth:`_site`)."""
        prefix = self._jobs_url.rstrip("/") + "/"
        return bool(self._jobs_url) and url.startswith(prefix) and bool(JOB_ID.fullmatch(url[len(prefix) :]))

    def read_log(self, run_id: str, job_id: str | None, offset: int = 0) -> bytes | None:
        """The runner's output file in the job's working directory (the job's stdout before it started)."""
        working_directory = self._working_directory(job_id)
        if not working_directory:
            return None
        for name in (runner.OUTPUT_FILE, "stdout"):
            data = self._read_file(f"{working_directory}/files/{name}", offset)
            if data is not None:
                return data
        return None

    def _working_directory(self, job_id: str | None) -> str | None:
        """The storage URL of the job's working directory; None when the job or its directory is gone."""
        if not job_id:
            return None
        self._site()
        if not self._of_site(job_id):
            raise BackendError(f"{job_id} is not a job of {self.config.url}: not asked")
        try:
            properties = self._get("job", job_id)
        except BackendError as exc:
            if _status(exc) == 404:
                return None
            raise
        return properties.get("_links", {}).get("workingDirectory", {}).get("href") or None

    def journal(self, run_id: str, job_id: str | None) -> JobJournal | None:
        working_directory = self._working_directory(job_id)
        return JobJournal(self, working_directory) if working_directory else None

    def list_files(self, url: str) -> list[tuple[str, int]]:
        """Every file below the storage directory ``url`` (``{storage}/files/PATH``), as (path relative to it,
        size): one request per directory (UNICORE lists a directory's children under ``content``)."""
        found: list[tuple[str, int]] = []
        pending = [""]
        while pending:
            relative = pending.pop()
            try:
                answer = self._get("list", f"{url}/{relative}".rstrip("/"), headers={"Accept": "application/json"})
            except BackendError as exc:
                if _status(exc) == 404:
                    continue
                raise
            for path, info in sorted((answer.get("content") or {}).items()):
                name = f"{relative}/{path.rstrip('/').rsplit('/', 1)[-1]}".lstrip("/")
                if info.get("isDirectory"):
                    pending.append(name)
                else:
                    found.append((name, int(info.get("size") or 0)))
        return sorted(found)

    def _read_file(self, url: str, offset: int) -> bytes | None:
        headers = {"Accept": "application/octet-stream"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        try:
            response = self._get("read", url, headers=headers, to_json=False)
        except BackendError as exc:
            if _status(exc) == 404:
                return None
            if _status(exc) == 416:  # nothing past offset yet
                return b""
            raise
        return response.content


class SiteOffer:
    """What a site offers: ``partitions`` (queue -> resource name -> range as the site renders it: "1-16",
    a list of values, or "*"), None when the site does not advertise them; ``storages``, their ids;
    ``budget``, its ``remainingComputeTime`` (project -> {"remaining", "units", "rel"}), {} when it says none."""

    def __init__(self, partitions: dict[str, dict] | None, storages: list[str], budget: dict | None = None):
        self.partitions = partitions
        self.storages = storages
        self.budget = budget or {}


CURRENT_PROJECT = "__CURRENT_PROJECT__"  # the budget's name when the TSI does not say which (ux BudgetInfo)


def site_allocation(budget: dict, project: str, fetched: float) -> Allocation | None:
    """What a site's ``remainingComputeTime`` says is left of ``project``'s budget (or of the only one, or of
    the TSI's unnamed current one): ux renders each TSI line ``PROJECT REMAINING PERCENT UNITS`` as
    ``{"remaining": "N", "units": "core-h", "rel": "P%"}`` (IDBContentRendering.budgetToMap); None when it
    names none of them or says no number."""
    if not isinstance(budget, dict) or not budget:
        return None
    name = project if project in budget else CURRENT_PROJECT if CURRENT_PROJECT in budget else ""
    if not name and len(budget) == 1:
        name = next(iter(budget))
    entry = budget.get(name)
    if not isinstance(entry, dict):
        return None
    try:
        left = float(entry.get("remaining", ""))
    except (TypeError, ValueError):
        return None
    if left < 0:  # the TSI's "not known"
        return None
    account = "" if name == CURRENT_PROJECT else name
    return Allocation(left, str(entry.get("units") or "core-h"), "UNICORE", fetched, None, account)


def _listing(answer, key: str) -> list[str]:
    items = answer.get(key) if isinstance(answer, dict) else None
    return [str(item) for item in items] if isinstance(items, list) else []


def _status(exc: BaseException) -> int | None:
    return getattr(exc, "status", None)


def _definitely_refused(exc: BackendError) -> bool:
    """Only an answer in the 4xx range says the site did not create the job. A 5xx may come after the job was
    stored (UNICORE/X answers 500 for any exception during submission, Jobs.submit), no answer says nothing."""
    status = _status(exc)
    if isinstance(exc, UnicoreNoAnswer):
        return False
    if status is None:  # nothing reached the site (no connection), or a local problem
        return True
    return 400 <= status < 500


def tsi_memory_mib(size: float) -> int:
    """The ``#TSI_MEMORY`` value (MiB) UNICORE/X writes for ``size`` bytes; not positive: it writes none.

    ``Integer.valueOf((int)Math.round(d)) / MEGABYTE`` (ux ResourceRequest.toInt, TSIMessages): Java keeps
    the low 32 bits of the rounded long, as a signed int, and divides towards zero."""
    low = int(size + 0.5) & 0xFFFFFFFF
    narrowed = low - (1 << 32) if low >= 1 << 31 else low
    return int(narrowed / (1 << 20))


def _quantity(key: str, value) -> float | None:
    """A resource value as the site's ranges count it: seconds for the runtime, bytes for memory."""
    text = str(value).strip().lower()
    try:
        if key == "runtime":
            return unicore_seconds(text)
        if key == "memory":
            match = re.fullmatch(r"(\d+(?:\.\d+)?)([kmgt]?)b?", text)
            return float(match.group(1)) * UNITS[match.group(2)] if match else None
        return float(text)
    except ValueError:
        return None


def _in_range(key: str, value, allowed) -> bool:
    """Whether the site's rendered range (ux IDBContentRendering: "LOW-HIGH", a list of values, "*") admits it."""
    if isinstance(allowed, list):
        return str(value) in [str(v) for v in allowed]
    match = re.fullmatch(r"\s*(-?\d+(?:\.\d+)?)\s*-\s*(-?\d+(?:\.\d+)?)\s*", str(allowed))
    quantity = _quantity(key, value)
    if not match or quantity is None:
        return True  # "*" or a form we cannot read: the site decides
    return float(match.group(1)) <= quantity <= float(match.group(2))


def _inline(name: str, text: str) -> dict:
    return {"From": "inline://mantik", "To": name, "Data": text}


def _site_error(text: str) -> tuple[int | None, str]:
    """Split pyunicore's "404 Server Error: MESSAGE for url: URL" into (404, MESSAGE)."""
    head, _, rest = text.partition(" Server Error: ")
    message = rest.rsplit(" for url: ", 1)[0] if rest else text
    return (int(head) if head.isdigit() else None), message or "no message"


class JobJournal:
    """A run's journal in its UNICORE job's working directory: :class:`mantik_spec.state.journal.JournalFiles`."""

    def __init__(self, backend: UnicoreBackend, working_directory: str):
        self.backend = backend
        self.root = f"{working_directory}/files/{runner.JOURNAL_DIR}"

    def read_bytes(self, name: str) -> bytes | None:
        return self.backend._read_file(f"{self.root}/{name}", 0)

    def read_together(self, names: list[str]) -> list[bytes | None]:
        """One request a file: the site's storage API reads one at a time."""
        return [self.read_bytes(name) for name in names]

    def files(self, directory: str) -> list[tuple[str, int]]:
        return self.backend.list_files(f"{self.root}/{directory}")
