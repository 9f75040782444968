"""A fake UNICORE/X site on 127.0.0.1 that the real pyunicore 2.x client can talk to.

No UNICORE server can be installed where the tests run, and pyunicore uses httpx, which request-mocking
libraries do not intercept. So this module serves the REST protocol itself: authentication (HTTP Basic and
Bearer), security session ids, jobs, job working directories and configured storages per user. The site is
also the "cluster": each job runs for real, as a job script executed by a local ``bash`` in its own process
group, as the TSI runs it.

Where the real server is strict, the fake is strict in the same way (sources: UNICORE-EU/unicorex "ux",
UNICORE-EU/use "use", UNICORE-EU/tsi "tsi"):

* Resources. The site has a resource database of partitions (``partitions``: queue -> resource name ->
  range "LOW-HIGH", a list of values, or "*"), advertised as the target system factory's ``resources`` the
  way the server renders it (ux IDBContentRendering.asMap). A job is checked when it is handed to the batch
  system, after stage-in, and ends FAILED with the server's words (ux GrounderImpl.incarnateResources): a
  ``Queue`` that is not a partition ("Resource request <Queue = X> is out of range."), a resource name the
  partition does not define ("Resource <X> is not available for partition <P>"), a value out of its range
  ("Resource request <X=V> is out of range."). ``Reservation``, ``Project``, ``NodeConstraints``, ``QoS`` and
  ``Exclusive`` pass unchecked, and ``Memory`` is read as ``MemoryPerNode`` (ux JSONParser), as there.
* Environment. Each ``Environment`` entry is written into the job script as ``NAME="value"; export NAME``
  and the script is run by bash (ux TSIMessages.appendEnvironment): ``$``, backquotes, ``\\`` and ``"`` in a
  value are the shell's, exactly as at a site.
* Storages exist only as configured (``storages``; ``{user}`` in an id is the user's name, as per-user home
  storages are named, e.g. ``{user}-Home``); the default is the shared ``HOME`` most sites configure
  (ux-storages admin docs). Anything else is a 404, in uploads and in imports alike.
* Lifetime. Every job has a termination time, ``job_lifetime`` seconds after submission (the server's
  default is one day: use ContainerProperties ``services.lifetime.default``); it is shown as
  ``terminationTime`` and may be changed with ``PUT {job} {"terminationTime": ISO}`` up to ``max_lifetime``
  (use BaseRESTController.doSetProperty, DefaultHome.setTerminationTime: an error text in a 200 answer
  beyond it). At its termination time the job and its working directory are destroyed: a 404 afterwards.
* Batch outcomes. A job that runs past its ``Runtime`` is killed by the "batch system" and, having no exit
  code, ends FAILED "Job did not complete normally on BSS, ..." without ``exitCode`` (ux Execution.java);
  a time limit, an out-of-memory kill and a node failure all look like this to UNICORE (tsi slurm/BSS.py
  reports them as COMPLETED). A non-zero exit ends FAILED "User application exited with non-zero exit code:
  <N>. ..." with ``exitCode`` (ux JobProcessor.checkMainExecutionSuccess), unless ``IgnoreNonZeroExitCode``.

Deliberate choices where the real server differs or leaves room (mantik copes with both):

* ``Arguments`` are shell-quoted one by one after ``Executable`` (which is inserted as written).
* ``User precommand`` and ``User postcommand`` run as separate steps before and after the job, as the login-node
  commands do, so a failure can be reported for the step that failed. The postcommand only runs after a
  successful job.
* Directory listings key their entries by the path from the storage root (``"/sub/a.txt"``), which is what
  ``Storage.listdir`` needs to build the URLs of the entries.
* Only authenticated requests are given a session id: there is nobody to bind one to otherwise.
* ``restart`` re-runs the whole job, stage-in included, in the same working directory.
* Tags match exactly (the server matches substrings); end of file is 416 (the server answers 206, empty).

What reaches the batch system is what the stock Slurm TSI makes of UNICORE/X's ``#TSI_`` lines, and the job
sees it as Slurm's variables (``SLURM_JOB_NAME``, ``SLURM_MEM_PER_NODE`` in MiB, ``SLURM_GPUS_PER_NODE``;
``FakeJob.batch`` holds them):

* Job name: one with a character outside ``[0-9a-zA-Z.:=~/]`` becomes ``UNICORE_job`` (tsi slurm/BSS.py).
  The REST ``name`` keeps what the client sent, as there.
* Memory: the byte count is narrowed to a Java ``int`` (``(int)Math.round(d)``, ux ResourceRequest.toInt) and
  divided into MiB; only a positive result is sent (ux TSIMessages). So 1G arrives as 1024, 64G not at all
  (the partition's default), 5G as 1024.
* GPUs: ``#TSI_GPUS_PER_NODE`` is written with the memory value (ux TSIMessages), so ``GPUsPerNode`` reaches
  Slurm as the memory in MiB when that is positive, and not at all otherwise.

Login-node commands (``login_commands``): ``"login"`` runs ``User precommand``/``postcommand`` as steps of
their own (the default); ``"batch"`` is a site with ``BSS_NO_USER_INTERACTIVE_APPS``: they are written into
the job script before and after the executable, exit codes ignored (ux GrounderImpl
mergeInfo, TSIMessages); ``"forbidden"`` is ``allowUserExecutable=false``: a job with an ``Executable`` or
user commands fails with the server's words.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.message import Message
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, parse_qs, unquote, urlsplit

logger = logging.getLogger(__name__)

SESSION_HEADER = "X-UNICORE-SecuritySession"
# UNICORE's own status code for "unknown or expired session id": the client retries without it.
INVALID_SESSION_STATUS = 432
# The user that bearer tokens log in as when ``tokens`` is a plain collection rather than a mapping.
TOKEN_USER = "tokenuser"
SERVER_VERSION = "10.1.0"

_ENDED = ("SUCCESSFUL", "FAILED")
# ux GrounderImpl: accepted whether or not the partition defines them
_UNCHECKED_RESOURCES = {"Reservation", "Project", "NodeConstraints", "QoS", "Exclusive"}
_RESOURCE_ALIASES = {"Memory": "MemoryPerNode"}  # ux JSONParser.parseResourceRequest
# The standard resources of a partition (ux ResourceSet), with generous ranges.
STANDARD_RESOURCES: dict[str, Any] = {
    "Runtime": "1-864000",
    "Nodes": "1-64",
    "TotalCPUs": "1-8192",
    "CPUsPerNode": "1-128",
    "GPUsPerNode": "0-8",
    "MemoryPerNode": "1-1099511627776",
}
DEFAULT_PARTITIONS: dict[str, dict[str, Any]] = {
    name: STANDARD_RESOURCES for name in ("batch", "booster", "develbooster")
}
DEFAULT_LIFETIME = 86400.0  # use ContainerProperties: services.lifetime.default
_NO_EXIT_CODE = (
    "Job did not complete normally on BSS, please check standard error file and job log for more information."
)
# How long an aborted job gets between SIGTERM and SIGKILL, like a batch system's cancel.
_KILL_GRACE_SECONDS = 2.0
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class _HttpError(Exception):
    """Ends a request with this status and ``{"errorMessage": message}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _PathError(ValueError):
    """A path that would leave the directory it must stay in."""


class _JobFailure(Exception):
    """Ends the job FAILED; the message becomes the status message and a log line."""


class _Superseded(Exception):
    """The job was aborted, deleted or restarted while a worker was still running it."""


@dataclass
class _Reply:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class _Request:
    user: str
    query: dict[str, list[str]]
    headers: Message
    body: bytes
    params: dict[str, str]


@dataclass
class _Fault:
    kind: str  # "fail", "hang", "drop" or "lose" (handled, then the connection is closed without an answer)
    remaining: int
    path_contains: str | None
    status: int = 500
    message: str = ""
    seconds: float = 0.0


@dataclass
class FakeJob:
    """A submitted job as the site keeps it; ``description`` is the JSON exactly as the client sent it."""

    job_id: str
    owner: str
    url: str
    description: dict[str, Any]
    workdir: Path
    submission_time: str
    status: str = "READY"
    status_message: str = ""
    log: list[str] = field(default_factory=list)
    exit_code: int | None = None
    process: subprocess.Popen | None = None
    # Every start or restart is a new run; a worker of an older run stops at its next step.
    run: int = 0
    worker: threading.Thread | None = None
    # Set to cut the QUEUED wait short when the job is aborted.
    wake: threading.Event = field(default_factory=threading.Event)
    termination: datetime | None = None  # when the site destroys the job and its directory
    batch: dict[str, str] = field(default_factory=dict)  # Slurm's variables for what the TSI asked for

    @property
    def ended(self) -> bool:
        return self.status in _ENDED

    @property
    def tags(self) -> list[str]:
        tags = self.description.get("Tags", [])
        if isinstance(tags, str):
            tags = tags.split(",")
        return [str(tag).strip() for tag in tags if str(tag).strip()]

    @property
    def queue(self) -> str:
        resources = self.description.get("Resources") or {}
        return str(resources.get("Queue", "batch"))

    def add_log(self, message: str) -> None:
        self.log.append(f"{_now()}: {message}")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # socketserver's default backlog of 5 drops the connections of a client polling 8 jobs at once, which
    # then wait a second for the SYN to be resent; a real site's web server accepts hundreds
    request_queue_size = 128

    def __init__(self, site: FakeUnicore) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.site = site

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that timed out or was dropped on purpose is expected here, not a fault of the fake.
        if isinstance(sys.exception(), ConnectionError):
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        self.server.site._serve(self)

    do_PUT = do_POST = do_DELETE = do_GET

    def log_message(self, format: str, *args: Any) -> None:
        """Keep test output quiet; ``FakeUnicore.requests`` records what was asked."""


class FakeUnicore:
    """A UNICORE/X site at ``self.url`` (``http://127.0.0.1:PORT/SITE/rest/core``), served from a background thread.

    ``users`` maps user names to passwords (HTTP Basic). ``tokens`` maps bearer tokens to user names, or is a
    collection of tokens that all log in as ``TOKEN_USER``. Storages and job working directories live under
    ``self.root``, a fresh directory in ``tmp_path``.
    """

    def __init__(
        self,
        tmp_path: Path | str,
        users: Mapping[str, str] | None = None,
        tokens: Mapping[str, str] | Iterable[str] = (),
        site_name: str = "FAKE-SITE",
        queue_seconds: float = 0.2,
        partitions: Mapping[str, Mapping[str, Any]] | None = None,
        storages: Iterable[str] = ("HOME",),
        job_lifetime: float = DEFAULT_LIFETIME,
        max_lifetime: float | None = None,
        login_commands: str = "login",
        budget: Iterable[str] = (),
    ) -> None:
        if login_commands not in ("login", "batch", "forbidden"):
            raise ValueError(f"login_commands: {login_commands!r}")
        self.login_commands = login_commands
        Path(tmp_path).mkdir(parents=True, exist_ok=True)
        self.root = Path(tempfile.mkdtemp(prefix="fake-unicore-", dir=tmp_path))
        self.queue_seconds = queue_seconds
        # queue -> resource name -> range; the first partition is the default one
        self.partitions = {
            str(q): dict(r) for q, r in (DEFAULT_PARTITIONS if partitions is None else partitions).items()
        }
        self.storages = list(storages)
        # the TSI's answer to "what budget is left", one line per project: PROJECT REMAINING PERCENT UNITS
        # (tsi get_quota; TSI 7 answered "-1 REMAINING"), rendered as ux does (see _get_factory)
        self.budget = list(budget)
        self.job_lifetime = job_lifetime
        self.max_lifetime = max_lifetime
        self.jobs: dict[str, FakeJob] = {}
        self.requests: list[tuple[str, str, str]] = []
        self._users = dict(users or {})
        self._tokens = dict(tokens) if isinstance(tokens, Mapping) else dict.fromkeys(tokens, TOKEN_USER)
        self._sessions: dict[str, str] = {}
        self._faults: list[_Fault] = []
        self._lock = threading.RLock()
        self._closing = threading.Event()
        self._prefix = f"/{site_name}/rest/core"
        self._routes: list[tuple[re.Pattern[str], dict[str, Callable[[_Request], _Reply]]]] = [
            (re.compile(r"/jobs"), {"GET": self._list_jobs, "POST": self._submit_job}),
            (
                re.compile(r"/jobs/(?P<job_id>[^/]+)"),
                {"GET": self._get_job, "PUT": self._set_job_properties, "DELETE": self._delete_job},
            ),
            (re.compile(r"/jobs/(?P<job_id>[^/]+)/details"), {"GET": self._job_details}),
            (re.compile(r"/jobs/(?P<job_id>[^/]+)/actions/(?P<action>[^/]+)"), {"POST": self._job_action}),
            (re.compile(r"/storages"), {"GET": self._list_storages}),
            (re.compile(r"/storages/(?P<storage>[^/]+)"), {"GET": self._get_storage}),
            (
                re.compile(r"/storages/(?P<storage>[^/]+)/files(?P<path>/.*)?"),
                {"GET": self._get_file, "PUT": self._put_file, "POST": self._make_dir, "DELETE": self._delete_file},
            ),
            (re.compile(r"/storages/(?P<storage>[^/]+)/actions/(?P<action>[^/]+)"), {"POST": self._storage_action}),
            (re.compile(r"/factories"), {"GET": self._list_factories}),
            (re.compile(r"/factories/default_target_system_factory"), {"GET": self._get_factory}),
            (re.compile(r"/transfers"), {"GET": lambda request: _json({"transfers": []})}),
        ]
        self._server = _Server(self)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}{self._prefix}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-unicore", daemon=True
        )
        self._thread.start()

    # ----------------------------------------------------------------------------------------- test controls

    def __enter__(self) -> FakeUnicore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop serving and kill every job process that is still running."""
        if self._closing.is_set():
            return
        self._closing.set()
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            jobs = list(self.jobs.values())
        for job in jobs:
            self._abort(job, "Job aborted: the site shut down")
        for job in jobs:
            if job.worker is not None:
                job.worker.join(timeout=_KILL_GRACE_SECONDS + 1)

    def job_by_url(self, url: str) -> FakeJob:
        """The job behind a job URL as returned in ``Location`` or by ``get_jobs``."""
        prefix = f"{self.url}/jobs/"
        if not url.startswith(prefix):
            raise ValueError(f"{url} is not a job URL of this site")
        with self._lock:
            return self.jobs[url.removeprefix(prefix).strip("/")]

    def job_urls(self) -> list[str]:
        """The URLs of all jobs of all users, in submission order."""
        with self._lock:
            return [job.url for job in self.jobs.values()]

    def read_storage_file(self, url: str, user: str | None = None) -> bytes:
        """The bytes behind a file URL ``{site}/storages/{storage}/files/{path}``, read straight from disk.

        ``HOME`` differs per user: name the ``user`` unless the site has exactly one password user.
        """
        prefix = f"{self.url}/storages/"
        storage, separator, path = url.removeprefix(prefix).partition("/files/")
        if not url.startswith(prefix) or not separator:
            raise ValueError(f"{url} is not a file URL of this site")
        if storage.endswith("-uspace"):
            with self._lock:
                base = self.jobs[storage.removesuffix("-uspace")].workdir
        else:
            if user is None and len(self._users) != 1:
                raise ValueError("several users have storages here: say whose to read")
            try:
                base = self._storage_dir(user or next(iter(self._users)), storage)
            except _HttpError as exc:
                raise ValueError(f"no storage {storage} on this site") from exc
        return _inside(base, unquote(path)).read_bytes()

    def expire(self, url: str) -> None:
        """Bring the termination time of the job at ``url`` to now: the site destroys it at the next request."""
        job = self.job_by_url(url)
        with self._lock:
            job.termination = datetime.now(UTC)

    def expire_sessions(self) -> None:
        """Forget every issued session id, as a server restart or session timeout does."""
        with self._lock:
            self._sessions.clear()

    def fail_next(
        self,
        status: int = 500,
        message: str = "Injected server failure",
        *,
        count: int = 1,
        path_contains: str | None = None,
    ) -> None:
        """Answer the next ``count`` requests (whose path and query contain ``path_contains``) with an error."""
        self._add_fault(_Fault("fail", count, path_contains, status=status, message=message))

    def hang_next(self, seconds: float, count: int = 1, path_contains: str | None = None) -> None:
        """Handle the next ``count`` matching requests at once but send their answers ``seconds`` late."""
        self._add_fault(_Fault("hang", count, path_contains, seconds=seconds))

    def drop_next(self, count: int = 1, path_contains: str | None = None, *, after_handling: bool = False) -> None:
        """Close the connection of the next ``count`` matching requests without answering them; without
        handling them either, unless ``after_handling`` (the site acted, then the connection broke)."""
        self._add_fault(_Fault("lose" if after_handling else "drop", count, path_contains))

    def _add_fault(self, fault: _Fault) -> None:
        if fault.remaining < 1:
            raise ValueError("count must be at least 1")
        with self._lock:
            self._faults.append(fault)

    def _take_fault(self, target: str) -> _Fault | None:
        """The first registered fault that matches; faults apply in the order they were added."""
        for fault in self._faults:
            if fault.path_contains is None or fault.path_contains in target:
                fault.remaining -= 1
                if fault.remaining == 0:
                    self._faults.remove(fault)
                return fault
        return None

    # ---------------------------------------------------------------------------------------------- HTTP

    def _serve(self, handler: _Handler) -> None:
        split = urlsplit(handler.path)
        with self._lock:
            self.requests.append((handler.command, split.path, split.query))
            fault = self._take_fault(handler.path)
        # Read the body first in every case, so that even an injected error is a clean HTTP exchange.
        body = _read_body(handler)
        self._destroy_expired()
        if fault is not None and fault.kind == "lose":
            self._respond(handler, split, body)
            handler.close_connection = True
            return
        if fault is None or fault.kind == "hang":
            reply = self._respond(handler, split, body)
            # A hang has done the work already and only answers late, like an overloaded server.
            if fault is not None and self._closing.wait(fault.seconds):
                return  # shutting down: nobody is waiting for this answer any more
        elif fault.kind == "fail":
            reply = _error(fault.status, fault.message)
        else:
            handler.close_connection = True  # "drop": no answer at all
            return
        self._send(handler, reply)

    def _respond(self, handler: _Handler, split: SplitResult, body: bytes) -> _Reply:
        session = None
        try:
            user, session = self._authenticate(handler.headers)
            reply = self._route(
                handler.command, unquote(split.path), parse_qs(split.query), handler.headers, body, user
            )
        except _HttpError as err:
            reply = _error(err.status, err.message)
        except Exception as exc:
            logger.exception("fake UNICORE failed on %s %s", handler.command, handler.path)
            reply = _error(500, f"Internal error in the fake UNICORE site: {exc!r}")
        if session is not None:
            reply.headers[SESSION_HEADER] = session
        return reply

    def _send(self, handler: _Handler, reply: _Reply) -> None:
        # The client may have given up already (timeout tests): there is nobody left to answer.
        with contextlib.suppress(ConnectionError):
            handler.send_response(reply.status, _reason(reply.status))
            for name, value in reply.headers.items():
                handler.send_header(name, value)
            if reply.status != HTTPStatus.NO_CONTENT:
                handler.send_header("Content-Type", reply.content_type)
                handler.send_header("Content-Length", str(len(reply.body)))
            handler.end_headers()
            handler.wfile.write(reply.body)

    def _authenticate(self, headers: Message) -> tuple[str | None, str | None]:
        """The user and session id of a request. A known session id stands in for the credentials."""
        sent_session = headers.get(SESSION_HEADER)
        with self._lock:
            if sent_session:
                if sent_session not in self._sessions:
                    raise _HttpError(INVALID_SESSION_STATUS, f"Invalid or expired security session {sent_session}")
                return self._sessions[sent_session], sent_session
            user = self._user_from_credentials(headers.get("Authorization", ""))
            if user is None:
                return None, None
            session = uuid.uuid4().hex
            self._sessions[session] = user
            return user, session

    def _user_from_credentials(self, authorization: str) -> str | None:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "basic":
            try:
                name, _, password = base64.b64decode(value, validate=True).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                return None
            return name if name in self._users and self._users[name] == password else None
        if scheme.lower() == "bearer":
            return self._tokens.get(value.strip())
        return None

    def _route(
        self, method: str, path: str, query: dict[str, list[str]], headers: Message, body: bytes, user: str | None
    ) -> _Reply:
        if not path.startswith(self._prefix):
            raise _HttpError(404, f"No such resource: {path}")
        local = path.removeprefix(self._prefix)
        if local in ("", "/"):
            if method != "GET":
                raise _HttpError(405, f"{method} is not allowed on the site")
            return _json(self._site_properties(user))
        if user is None:
            raise _HttpError(403, "Access denied: valid credentials are required")
        for pattern, handlers in self._routes:
            match = pattern.fullmatch(local)
            if match is None:
                continue
            handler = handlers.get(method)
            if handler is None:
                raise _HttpError(405, f"{method} is not allowed on {path}")
            params = {key: value for key, value in match.groupdict().items() if value is not None}
            return handler(_Request(user, query, headers, body, params))
        raise _HttpError(404, f"No such resource: {path}")

    def _site_properties(self, user: str | None) -> dict[str, Any]:
        client: dict[str, Any] = {"role": {"selected": "anonymous", "availableRoles": []}, "xlogin": {}}
        if user is not None:
            client = {
                "dn": f"UID={user}",
                "role": {"selected": "user", "availableRoles": ["user"]},
                "xlogin": {"UID": user, "availableUIDs": [user]},
            }
        links = {name: {"href": f"{self.url}/{name}"} for name in ("jobs", "storages", "factories", "transfers")}
        return {"client": client, "server": {"version": SERVER_VERSION}, "_links": links}

    # ---------------------------------------------------------------------------------------------- jobs

    def _submit_job(self, request: _Request) -> _Reply:
        try:
            description = json.loads(request.body or b"{}")
        except ValueError as exc:
            raise _HttpError(400, f"Job description is not valid JSON: {exc}") from exc
        if not isinstance(description, dict):
            raise _HttpError(400, "Job description must be a JSON object")
        job_id = str(uuid.uuid4())
        workdir = self.root / "jobs" / job_id
        workdir.mkdir(parents=True)
        job = FakeJob(job_id, request.user, f"{self.url}/jobs/{job_id}", description, workdir, _now())
        job.termination = datetime.now(UTC) + timedelta(seconds=self.job_lifetime)
        with self._lock:
            job.add_log(f"Created with ID {job_id}")
            self.jobs[job_id] = job
        # With client stage-in the job waits in READY until the client has uploaded and sends "start".
        if not _flag(description.get("haveClientStageIn"), default=False):
            self._start(job)
        return _Reply(201, headers={"Location": job.url})

    def _list_jobs(self, request: _Request) -> _Reply:
        wanted = {tag for tag in _query_value(request.query, "tags", "").split(",") if tag}
        with self._lock:
            urls = [job.url for job in self.jobs.values() if job.owner == request.user and wanted <= set(job.tags)]
        return _json({"jobs": _page(urls, request.query)})

    def _owned_job(self, request: _Request) -> FakeJob:
        job_id = request.params["job_id"]
        with self._lock:
            job = self.jobs.get(job_id)
        if job is None:
            raise _HttpError(404, f"No such job: {job_id}")
        if job.owner != request.user:
            raise _HttpError(403, f"Access denied: job {job_id} belongs to another user")
        return job

    def _get_job(self, request: _Request) -> _Reply:
        job = self._owned_job(request)
        actions = {f"action:{name}": f"{job.url}/actions/{name}" for name in ("start", "abort", "restart")}
        links = {
            "self": job.url,
            **actions,
            "workingDirectory": f"{self.url}/storages/{job.job_id}-uspace",
            "details": f"{job.url}/details",
        }
        with self._lock:
            properties: dict[str, Any] = {
                "status": job.status,
                "statusMessage": job.status_message,
                "log": list(job.log),
                "submissionTime": job.submission_time,
                "queue": job.queue,
                "name": str(job.description.get("Name", "")),
                "tags": job.tags,
                "owner": job.owner,
                "_links": {name: {"href": href} for name, href in links.items()},
            }
            if job.termination is not None:
                properties["terminationTime"] = job.termination.strftime("%Y-%m-%dT%H:%M:%S%z")
            # pyunicore reads this as ``int(x) if x else None``: a string keeps exit code 0 from reading as None.
            if job.ended and job.exit_code is not None:
                properties["exitCode"] = str(job.exit_code)
        return _json(properties)

    def _set_job_properties(self, request: _Request) -> _Reply:
        """use BaseRESTController.setProperties: a 200 whose body says, per property, "OK" or what went wrong."""
        job = self._owned_job(request)
        try:
            wanted = json.loads(request.body or b"{}")
        except ValueError as exc:
            raise _HttpError(400, f"Not valid JSON: {exc}") from exc
        reply: dict[str, str] = {}
        for name, value in wanted.items() if isinstance(wanted, dict) else []:
            if name != "terminationTime":
                reply[name] = "Property not found or cannot be modified!"
                continue
            try:
                when = datetime.strptime(str(value), "%Y-%m-%dT%H:%M:%S%z")
            except ValueError:
                reply[name] = f"Error setting property: cannot parse {value!r}"
                continue
            if self.max_lifetime is not None and (when - datetime.now(UTC)).total_seconds() > self.max_lifetime:
                reply[name] = (
                    "Error setting property: Requested lifetime is larger than maximum configured on the system."
                )
                continue
            with self._lock:
                job.termination = when
            reply[name] = "OK"
        return _json(reply)

    def _destroy_expired(self) -> None:
        """Destroy jobs past their termination time, with their working directories (use: the expiry checker)."""
        now = datetime.now(UTC)
        with self._lock:
            expired = [j for j in self.jobs.values() if j.termination is not None and j.termination <= now]
            for job in expired:
                self.jobs.pop(job.job_id, None)
        for job in expired:
            self._abort(job, "Job destroyed at its termination time")
            if job.worker is not None and job.worker is not threading.current_thread():
                job.worker.join(timeout=_KILL_GRACE_SECONDS + 1)
            shutil.rmtree(job.workdir, ignore_errors=True)

    def _job_details(self, request: _Request) -> _Reply:
        job = self._owned_job(request)
        with self._lock:
            process = job.process
            return _json(
                {
                    "batchSystem": "fake-unicore (local processes)",
                    "batchSystemID": str(process.pid) if process is not None else "N/A",
                    "status": job.status,
                    "queue": job.queue,
                    "resources": job.description.get("Resources", {}),
                }
            )

    def _job_action(self, request: _Request) -> _Reply:
        job = self._owned_job(request)
        action = request.params["action"]
        if action == "start":
            self._start(job)
        elif action == "abort":
            self._abort(job, "Job aborted by the user")
        elif action == "restart":
            self._restart(job)
        else:
            raise _HttpError(404, f"No such action: {action}")
        return _json({})

    def _delete_job(self, request: _Request) -> _Reply:
        job = self._owned_job(request)
        with self._lock:
            self.jobs.pop(job.job_id, None)
        self._abort(job, "Job deleted by the user")
        # Let the worker notice before its working directory disappears under it.
        if job.worker is not None:
            job.worker.join(timeout=_KILL_GRACE_SECONDS + 1)
        shutil.rmtree(job.workdir, ignore_errors=True)
        return _Reply(204)

    def _start(self, job: FakeJob) -> None:
        with self._lock:
            if job.worker is not None or job.ended:
                return  # already started (pyunicore always sends "start" after submitting)
            job.worker = threading.Thread(
                target=self._run, args=(job, job.run, job.wake), name=f"fake-unicore-job-{job.job_id[:8]}", daemon=True
            )
            job.worker.start()

    def _abort(self, job: FakeJob, reason: str) -> None:
        with self._lock:
            if job.ended:
                return
            self._end(job, "FAILED", reason)
            process = job.process
        job.wake.set()
        if process is not None:
            _kill_process_group(process)

    def _restart(self, job: FakeJob) -> None:
        with self._lock:
            if not job.ended:
                raise _HttpError(409, f"Job {job.job_id} is still {job.status}: only a finished job can be restarted")
            job.run += 1
            job.status, job.status_message, job.exit_code = "READY", "", None
            job.wake, job.worker = threading.Event(), None
            job.add_log("Job restarted")
        self._start(job)

    def _end(self, job: FakeJob, status: str, message: str) -> None:
        """Record the final state; the caller holds the lock."""
        job.status = status
        job.status_message = message
        job.add_log(message or f"Status set to {status}")

    # ------------------------------------------------------------------------------------- job execution

    def _run(self, job: FakeJob, run: int, wake: threading.Event) -> None:
        try:
            self._execute(job, run, wake)
        except _Superseded:
            return  # aborted, deleted or restarted meanwhile: that newer state stands
        except _JobFailure as failure:
            self._end_run(job, run, "FAILED", str(failure))
        except OSError as exc:
            self._end_run(job, run, "FAILED", f"Job failed: {exc}")
        except Exception as exc:
            # A bug in the fake must not leave the job running forever and a test waiting for it.
            logger.exception("fake UNICORE job %s crashed", job.job_id)
            self._end_run(job, run, "FAILED", f"Internal error in the fake UNICORE site: {exc!r}")

    def _execute(self, job: FakeJob, run: int, wake: threading.Event) -> None:
        description = job.description
        stdout = _job_path(job, str(description.get("Stdout", "stdout")), "Stdout")
        stderr = _job_path(job, str(description.get("Stderr", "stderr")), "Stderr")
        stdin = _job_path(job, str(description["Stdin"]), "Stdin") if description.get("Stdin") else None
        arguments = description.get("Arguments", [])
        if isinstance(arguments, str):
            arguments = [arguments]
        command = " ".join([str(description.get("Executable", "")), *(shlex.quote(str(a)) for a in arguments)])

        self._advance(job, run, "STAGINGIN")
        self._stage_in(job)
        self._merge_info(description)
        self._run_login_node_command(job, run, "User precommand")
        runtime = self._incarnate_resources(description.get("Resources") or {})
        with self._lock:
            job.batch = _batch_variables(description)
        if self.login_commands == "batch":  # moved into the job script, as TSIMessages writes them there;
            # the job's exit code is the executable's (the server writes $? to its exit code file after it)
            pre, post = _in_batch(description.get("User precommand")), _in_batch(description.get("User postcommand"))
            command = "\n".join([*([pre] if pre else []), command, "UNICORE_EXIT=$?", post, "exit $UNICORE_EXIT"])
        self._advance(job, run, "QUEUED")
        wake.wait(self.queue_seconds)
        self._advance(job, run, "RUNNING")
        exit_code = self._run_step(job, run, "job", command, stdout, stderr, stdin, limit=runtime)
        if exit_code is None:  # killed by the "batch system": no exit code file, whatever the reason
            raise _JobFailure(_NO_EXIT_CODE)
        with self._lock:
            _check_current(job, run)
            job.exit_code = exit_code
            job.add_log(f"Job process exited with code {exit_code}")
        if exit_code != 0 and not _flag(description.get("IgnoreNonZeroExitCode"), default=False):
            raise _JobFailure(
                f"User application exited with non-zero exit code: <{exit_code}>. More information might be "
                f"available in the job's working directory '{job.workdir}'"
            )
        self._advance(job, run, "STAGINGOUT")
        self._run_login_node_command(job, run, "User postcommand")
        self._end_run(job, run, "SUCCESSFUL", "")

    def _incarnate_resources(self, requested: Any) -> float | None:
        """ux GrounderImpl.incarnateResources: the job's resources against the partition; the runtime limit."""
        if not isinstance(requested, Mapping):
            raise _JobFailure("Resources must be a JSON object")
        wanted = {_RESOURCE_ALIASES.get(str(k), str(k)): str(v) for k, v in requested.items()}
        queue = wanted.pop("Queue", None)
        if queue is not None and queue not in self.partitions and "*" not in self.partitions:
            raise _JobFailure(f"Resource request <Queue = {queue}> is out of range.")
        name = queue if queue in self.partitions else ("*" if "*" in self.partitions else next(iter(self.partitions)))
        defined = self.partitions[name]
        if name != "*":
            for resource, value in wanted.items():
                if resource in _UNCHECKED_RESOURCES and resource not in defined:
                    continue
                if resource not in defined:
                    raise _JobFailure(f"Resource <{resource}> is not available for partition <{name}>")
                if not _in_range(resource, value, defined[resource]):
                    raise _JobFailure(f"Resource request <{resource}={value}> is out of range.")
        return _quantity("Runtime", wanted["Runtime"]) if "Runtime" in wanted else None

    def _advance(self, job: FakeJob, run: int, status: str) -> None:
        with self._lock:
            _check_current(job, run)
            job.status = status
            job.add_log(f"Status set to {status}")

    def _end_run(self, job: FakeJob, run: int, status: str, message: str) -> None:
        with self._lock:
            if job.run == run and not job.ended:
                self._end(job, status, message)

    def _log(self, job: FakeJob, message: str) -> None:
        with self._lock:
            job.add_log(message)

    def _stage_in(self, job: FakeJob) -> None:
        for item in job.description.get("Imports") or []:
            if not isinstance(item, dict):
                raise _JobFailure(f"Each import must be a JSON object, got {item!r}")
            try:
                self._import(job, item)
            except _JobFailure as failure:
                if _flag(item.get("FailOnError"), default=True):
                    raise
                self._log(job, f"Ignoring failed import (FailOnError is false): {failure}")

    def _import(self, job: FakeJob, item: dict[str, Any]) -> None:
        source = str(item.get("From", ""))
        target = _job_path(job, str(item.get("To", "")), "Import target")
        if source.startswith("inline:"):
            data = item.get("Data", "")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text("\n".join(map(str, data)) if isinstance(data, list) else str(data))
        elif source.startswith(f"{self.url}/storages/"):
            storage, separator, path = source.removeprefix(f"{self.url}/storages/").partition("/files/")
            if not separator:
                raise _JobFailure(f"Import source {source} is not a file URL")
            try:
                origin = _inside(self._storage_dir(job.owner, storage), unquote(path))
            except (_HttpError, _PathError) as exc:
                raise _JobFailure(f"Cannot import {source}: {exc}") from exc
            if not origin.exists():
                raise _JobFailure(f"Cannot import {source}: no such file")
            target.parent.mkdir(parents=True, exist_ok=True)
            if origin.is_dir():
                shutil.copytree(origin, target, dirs_exist_ok=True)
            else:
                shutil.copyfile(origin, target)
        else:
            raise _JobFailure(f"Cannot import {source!r}: unsupported source (only inline:// and this site's storages)")
        self._log(job, f"Imported {source} to {item.get('To')}")

    def _merge_info(self, description: dict[str, Any]) -> None:
        """ux GrounderImpl.mergeInfo on a site with allowUserExecutable=false: only applications may run."""
        if self.login_commands != "forbidden":
            return
        if description.get("Executable"):
            raise _JobFailure(
                f"Cannot execute <{description['Executable']}>. Only Applications may be executed on this site."
            )
        for key, which in (("User precommand", "pre"), ("User postcommand", "post")):
            if description.get(key):
                raise _JobFailure(f"Cannot execute user {which}-command - user executables are forbidden on this site.")

    def _run_login_node_command(self, job: FakeJob, run: int, key: str) -> None:
        command = job.description.get(key)
        if not command or self.login_commands != "login":
            return
        step = key.split()[-1]
        output, errors = job.workdir / f".UNICORE_{step}.out", job.workdir / f".UNICORE_{step}.err"
        exit_code = self._run_step(job, run, step, str(command), output, errors)
        if exit_code != 0:
            detail = errors.read_text(errors="replace").strip()[-500:]
            raise _JobFailure(f"{key} failed with exit code {exit_code}: {detail}")

    def _run_step(
        self,
        job: FakeJob,
        run: int,
        step: str,
        command: str,
        stdout: Path,
        stderr: Path,
        stdin: Path | None = None,
        limit: float | None = None,
    ) -> int | None:
        """Run ``command`` through a script in the working directory; the exit code as a shell reports it,
        None when the step ran past ``limit`` seconds and was killed."""
        script = job.workdir / f".UNICORE_{step}.sh"
        script.write_text(self._script(job, command, step))
        for output in (stdout, stderr):
            output.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "HOME": str(self._home_dir(job.owner))}
        with contextlib.ExitStack() as files:
            process_stdin = files.enter_context(stdin.open("rb")) if stdin is not None else subprocess.DEVNULL
            process_stdout = files.enter_context(stdout.open("wb"))
            process_stderr = files.enter_context(stderr.open("wb"))
            with self._lock:
                # Checked under the lock that abort takes, so an abort cannot slip in before the process exists.
                _check_current(job, run)
                process = subprocess.Popen(
                    ["bash", str(script)],
                    cwd=job.workdir,
                    stdin=process_stdin,
                    stdout=process_stdout,
                    stderr=process_stderr,
                    env=env,
                    start_new_session=True,  # its own process group, so abort can kill everything it started
                )
                job.process = process
            try:
                returncode: int | None = process.wait(timeout=limit)
            except subprocess.TimeoutExpired:
                _kill_process_group(process)
                returncode = None
        with self._lock:
            if job.process is process:
                job.process = None
        if returncode is None:
            return None
        return returncode if returncode >= 0 else 128 - returncode

    def _script(self, job: FakeJob, command: str, step: str) -> str:
        lines = [
            "#!/bin/bash",
            "# Written by the fake UNICORE site, environment lines as UNICORE/X writes them (TSIMessages).",
            f"export UC_WORKING_DIRECTORY={shlex.quote(str(job.workdir))}",
        ]
        lines += [f'{name}="{value}"; export {name}' for name, value in _environment(job.description)]
        if step == "job":  # what Slurm tells the job about its allocation
            lines += [f"export {name}={shlex.quote(value)}" for name, value in job.batch.items()]
        lines.append(command)
        return "\n".join(lines) + "\n"

    # ------------------------------------------------------------------------------------------ storages

    def _home_dir(self, user: str) -> Path:
        home = self.root / "home" / user
        home.mkdir(parents=True, exist_ok=True)
        return home

    def _storage_ids(self, user: str) -> list[str]:
        return [storage.replace("{user}", user) for storage in self.storages]

    def _storage_dir(self, user: str, storage: str) -> Path:
        if storage in self._storage_ids(user):
            directory = self._home_dir(user) if storage == "HOME" else self.root / "storages" / storage
            directory.mkdir(parents=True, exist_ok=True)
            return directory
        if storage.endswith("-uspace"):
            with self._lock:
                job = self.jobs.get(storage.removesuffix("-uspace"))
            if job is not None and job.owner != user:
                raise _HttpError(403, f"Access denied: storage {storage} belongs to another user")
            if job is not None:
                return job.workdir
        raise _HttpError(404, f"No such storage: {storage}")

    def _file(self, request: _Request, path: str | None = None) -> tuple[Path, Path]:
        """The storage root and the file a request names, refusing paths that leave the storage."""
        base = self._storage_dir(request.user, request.params["storage"])
        try:
            return base, _inside(base, request.params.get("path", "/") if path is None else path)
        except _PathError as exc:
            raise _HttpError(403, str(exc)) from exc

    def _list_storages(self, request: _Request) -> _Reply:
        urls = [f"{self.url}/storages/{storage}" for storage in self._storage_ids(request.user)]
        # As UNICORE 10 does, job working directories are only listed on request.
        if _query_value(request.query, "filter", "") == "all":
            with self._lock:
                urls += [
                    f"{self.url}/storages/{job.job_id}-uspace"
                    for job in self.jobs.values()
                    if job.owner == request.user
                ]
        return _json({"storages": _page(urls, request.query)})

    def _get_storage(self, request: _Request) -> _Reply:
        storage = request.params["storage"]
        base = self._storage_dir(request.user, storage)
        url = f"{self.url}/storages/{storage}"
        links = {"self": url, "files": f"{url}/files"}
        links |= {f"action:{name}": f"{url}/actions/{name}" for name in ("rename", "copy")}
        return _json(
            {
                "resourceStatus": "READY",
                "mountPoint": str(base),
                "protocols": ["BFT"],
                "_links": {name: {"href": href} for name, href in links.items()},
            }
        )

    def _get_file(self, request: _Request) -> _Reply:
        base, target = self._file(request)
        if not target.exists():
            raise _HttpError(404, f"File not found: {request.params.get('path', '/')}")
        if "application/octet-stream" not in request.headers.get("Accept", ""):
            info = _file_info(target, request.user)
            if target.is_dir():
                info["content"] = {
                    "/" + child.relative_to(base).as_posix(): _file_info(child, request.user)
                    for child in sorted(target.iterdir())
                }
            return _json(info)
        if target.is_dir():
            raise _HttpError(400, f"{request.params.get('path', '/')} is a directory")
        return _download(target, request.headers.get("Range"))

    def _put_file(self, request: _Request) -> _Reply:
        _, target = self._file(request)
        if target.is_dir():
            raise _HttpError(409, f"{request.params.get('path', '/')} is a directory")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(request.body)
        return _Reply(204)

    def _make_dir(self, request: _Request) -> _Reply:
        _, target = self._file(request)
        if target.exists() and not target.is_dir():
            raise _HttpError(409, f"{request.params.get('path', '/')} exists and is a file")
        target.mkdir(parents=True, exist_ok=True)
        return _Reply(201)

    def _delete_file(self, request: _Request) -> _Reply:
        base, target = self._file(request)
        if target == base:
            raise _HttpError(403, "The storage root cannot be deleted")
        if not target.exists():
            raise _HttpError(404, f"File not found: {request.params.get('path', '/')}")
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink()
        return _Reply(204)

    def _storage_action(self, request: _Request) -> _Reply:
        action = request.params["action"]
        if action not in ("rename", "copy"):
            raise _HttpError(404, f"No such action: {action}")
        try:
            arguments = json.loads(request.body or b"{}")
            source_name, target_name = str(arguments["from"]), str(arguments["to"])
        except (ValueError, KeyError, TypeError) as exc:
            raise _HttpError(400, f'{action} needs a JSON body with "from" and "to"') from exc
        _, source = self._file(request, source_name)
        _, target = self._file(request, target_name)
        if not source.exists():
            raise _HttpError(404, f"File not found: {source_name}")
        target.parent.mkdir(parents=True, exist_ok=True)
        if action == "rename":
            shutil.move(source, target)
        elif source.is_dir():
            shutil.copytree(source, target, dirs_exist_ok=True)
        else:
            shutil.copyfile(source, target)
        return _json({})

    def _list_factories(self, request: _Request) -> _Reply:
        return _json({"factories": [f"{self.url}/factories/default_target_system_factory"]})

    def _get_factory(self, request: _Request) -> _Reply:
        url = f"{self.url}/factories/default_target_system_factory"
        # rendered as ux IDBContentRendering.asMap does: partition -> resource name -> "LOW-HIGH" / values / "*"
        return _json(
            {
                "resourceStatus": "READY",
                "applications": [],
                "resources": self.partitions,
                "remainingComputeTime": self._remaining_compute_time(),
                "_links": {"self": {"href": url}},
            }
        )

    def _remaining_compute_time(self) -> dict[str, dict[str, str]]:
        """The budget lines as ux renders them: BudgetInfo parses each TSI line (two words: TSI 7, the current
        project in core-h; else PROJECT REMAINING PERCENT UNITS) and IDBContentRendering.budgetToMap keys them
        by project, with "remaining", "units" and "rel" (the percentage, "-1%" when not known) as text."""
        rendered = {}
        for line in self.budget:
            words = line.split()
            if len(words) == 2:
                name, remaining, percent, units = "__CURRENT_PROJECT__", int(words[1]), -1, "core-h"
            else:
                name, remaining, percent, units = words[0], int(words[1]), int(float(words[2])), words[3]
            rendered[name] = {"remaining": str(remaining), "units": units, "rel": f"{percent}%"}
        return rendered


# ------------------------------------------------------------------------------------------------- helpers


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S%z")


def _reason(status: int) -> str:
    if status == INVALID_SESSION_STATUS:
        return "Invalid Security Session"
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _json(payload: Any, status: int = 200) -> _Reply:
    return _Reply(status, json.dumps(payload).encode())


def _error(status: int, message: str) -> _Reply:
    return _json({"errorMessage": message, "status": status}, status)


def _flag(value: Any, default: bool) -> bool:
    """UNICORE accepts booleans and the strings "true"/"false" (pyunicore sends ``haveClientStageIn: "true"``)."""
    if value is None:
        return default
    if isinstance(value, str):
        return value.strip().lower() == "true"
    return bool(value)


def _query_value(query: dict[str, list[str]], name: str, default: str) -> str:
    return query.get(name, [default])[0]


def _page(items: list[str], query: dict[str, list[str]]) -> list[str]:
    try:
        offset = int(_query_value(query, "offset", "0"))
        num = int(query["num"][0]) if "num" in query else None
    except ValueError as exc:
        raise _HttpError(400, "offset and num must be integers") from exc
    return items[offset:] if num is None else items[offset : offset + num]


def _inside(base: Path, path: str) -> Path:
    """``path`` (relative to ``base``, a leading "/" meaning ``base``) as long as it stays inside ``base``."""
    if "\x00" in path:
        raise _PathError("Paths must not contain NUL bytes")
    parts = [part for part in path.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise _PathError(f"Access denied: {path!r} leaves the storage")
    target = base.joinpath(*parts)
    # A symbolic link inside the storage must not lead out of it either.
    if not target.resolve().is_relative_to(base.resolve()):
        raise _PathError(f"Access denied: {path!r} leaves the storage")
    return target


def _job_path(job: FakeJob, path: str, what: str) -> Path:
    if not path or path.startswith("/"):
        raise _JobFailure(f"{what} {path!r} must be a relative path inside the working directory")
    try:
        return _inside(job.workdir, path)
    except _PathError as exc:
        raise _JobFailure(f"{what} {path!r} must stay inside the working directory") from exc


def _check_current(job: FakeJob, run: int) -> None:
    if job.run != run or job.ended:
        raise _Superseded


def _environment(description: dict[str, Any]) -> list[tuple[str, str]]:
    """``Environment`` as name/value pairs; UNICORE accepts a mapping or a list of ``NAME=value`` strings."""
    environment = description.get("Environment") or {}
    if isinstance(environment, Mapping):
        pairs = [(str(name), str(value)) for name, value in environment.items()]
    else:
        pairs = [tuple(str(entry).split("=", 1)) if "=" in str(entry) else (str(entry), "") for entry in environment]
    for name, _ in pairs:
        if not _ENV_NAME.fullmatch(name):
            raise _JobFailure(f"Invalid environment variable name {name!r}")
    return pairs


_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_TIME_UNITS = {"": 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}


def _quantity(resource: str, value: str) -> float | None:
    """A requested value as the server's UnitParser reads it: seconds for Runtime, bytes for memory."""
    text = value.strip().lower()
    units = _TIME_UNITS if resource == "Runtime" else _SIZE_UNITS if "Memory" in resource else {"": 1}
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([a-z]*?)b?", text) if units is _SIZE_UNITS else None
    match = match or re.fullmatch(r"(\d+(?:\.\d+)?)\s*([a-z]*)", text)
    if match is None or match.group(2) not in units:
        return None
    return float(match.group(1)) * units[match.group(2)]


_TSI_ILLEGAL_NAME = re.compile(r"[^0-9a-zA-Z.:=~/]")  # tsi slurm/BSS.py: such a name becomes UNICORE_job
_MEBIBYTE = 1 << 20


def _java_int(value: float) -> int:
    """``(int)Math.round(d)``: Java narrows the long to an int by keeping its low 32 bits, as a signed number."""
    low = int(value + 0.5) & 0xFFFFFFFF
    return low - (1 << 32) if low >= 1 << 31 else low


def _batch_variables(description: dict[str, Any]) -> dict[str, str]:
    """Slurm's variables for the batch options the stock Slurm TSI makes of UNICORE/X's ``#TSI_`` lines."""
    name = str(description.get("Name") or "UNICORE_job")
    variables = {"SLURM_JOB_NAME": "UNICORE_job" if _TSI_ILLEGAL_NAME.search(name) else name}
    requested = {_RESOURCE_ALIASES.get(str(k), str(k)): str(v) for k, v in (description.get("Resources") or {}).items()}
    memory = -1  # TSIMessages: MiB, sent only when positive
    if "MemoryPerNode" in requested:
        size = _quantity("MemoryPerNode", requested["MemoryPerNode"])
        if size is not None:
            narrowed = _java_int(size)
            memory = narrowed // _MEBIBYTE if narrowed >= 0 else -(-narrowed // _MEBIBYTE)  # Java's int division
    if memory > 0:
        variables["SLURM_MEM_PER_NODE"] = str(memory)
    gpus = _quantity("GPUsPerNode", requested["GPUsPerNode"]) if "GPUsPerNode" in requested else None
    if gpus and gpus > 0 and memory > 0:  # "#TSI_GPUS_PER_NODE %d", memory
        variables["SLURM_GPUS_PER_NODE"] = str(memory)
    return variables


def _in_batch(command: Any) -> str:
    """A user pre/post command as TSIMessages writes it into the job script: a line of its own, its exit code
    ignored (its output goes where the job's does)."""
    return str(command) if command else ""


def _in_range(resource: str, value: str, allowed: Any) -> bool:
    if isinstance(allowed, list):
        return value in [str(v) for v in allowed]
    bounds = re.fullmatch(r"(-?\d+(?:\.\d+)?)-(-?\d+(?:\.\d+)?)", str(allowed))
    if bounds is None:
        return True  # "*": any value
    quantity = _quantity(resource, value)
    return quantity is not None and float(bounds.group(1)) <= quantity <= float(bounds.group(2))


def _file_info(path: Path, owner: str) -> dict[str, Any]:
    stat = path.stat()
    mode = stat.st_mode
    permissions = "".join(flag if mode & bit else "-" for flag, bit in (("r", 0o400), ("w", 0o200), ("x", 0o100)))
    return {
        "isDirectory": path.is_dir(),
        "size": 0 if path.is_dir() else stat.st_size,
        "lastAccessed": datetime.fromtimestamp(stat.st_mtime, UTC).strftime("%Y-%m-%dT%H:%M:%S%z"),
        "owner": owner,
        "group": owner,
        "permissions": permissions,
        "metadata": {},
    }


def _download(path: Path, range_header: str | None) -> _Reply:
    """The file's bytes, or the part a single ``Range: bytes=N-``, ``bytes=N-M`` or ``bytes=-N`` asks for."""
    data = path.read_bytes()
    size = len(data)
    match = re.fullmatch(r"bytes=(\d*)-(\d*)", (range_header or "").strip())
    # Absent or unsupported ranges (several at once, other units) get the whole file, as HTTP allows.
    if match is None or match.group(1) == match.group(2) == "":
        return _Reply(200, data, "application/octet-stream", {"Accept-Ranges": "bytes"})
    first, last = match.groups()
    if first:
        start, end = int(first), int(last) if last else size - 1
    else:
        start, end = max(size - int(last), 0), size - 1
    if start >= size or end < start:
        return _Reply(416, b"", "application/octet-stream", {"Content-Range": f"bytes */{size}"})
    end = min(end, size - 1)
    headers = {"Accept-Ranges": "bytes", "Content-Range": f"bytes {start}-{end}/{size}"}
    return _Reply(206, data[start : end + 1], "application/octet-stream", headers)


def _read_body(handler: _Handler) -> bytes:
    if "chunked" in handler.headers.get("Transfer-Encoding", "").lower():
        chunks = []
        while True:
            size = int(handler.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while handler.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass  # skip trailers up to the blank line that ends the body
                return b"".join(chunks)
            chunks.append(handler.rfile.read(size))
            handler.rfile.readline()  # the CRLF after each chunk
    return handler.rfile.read(int(handler.headers.get("Content-Length") or 0))


def _kill_process_group(process: subprocess.Popen) -> None:
    """SIGTERM the job's process group, then SIGKILL whatever is left after a grace period."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=_KILL_GRACE_SECONDS)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
