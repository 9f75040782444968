"""A FirecREST v2 double on 127.0.0.1 that the real pyfirecrest 3.x client talks to, in front of the local Slurm.

It runs the jobs for real (``sbatch``/``squeue``/``scancel`` on this machine, whose filesystem stands for the
cluster's), so a broken batch script fails the test. What it copies from the real server
(eth-cscs/firecrest-v2, ``src/``):

* paths, methods and success codes: ``firecrest/compute/router.py`` (POST ``/compute/{system}/jobs`` 201
  ``{"jobId"}``, GET list/one 200 ``{"jobs": [...]}``, DELETE 204, a job id path matching ``^[a-zA-Z0-9]+$``
  else 422, 404 ``Job not found``), ``firecrest/filesystem/ops/router.py`` (GET ``ops/stat`` and ``ops/view``
  200 ``{"output"}``, GET ``ops/ls`` 200 ``{"output": [File]}`` with ``LsBaseCommand``'s own ``ls`` command
  and parsing (camelCase keys, the size a string, ``showHidden`` as ``-A``, ``recursive`` as ``-R`` with names
  below their folder), GET ``ops/download`` 200 ``application/octet-stream`` (the file read as
  ``base64 --wrap=0``) and 413 over the size limit, GET ``ops/checksum`` 200 ``{"output": {"algorithm":
  "SHA256", "checksum"}}`` (``ChecksumCommand``'s ``sha256sum``, a 500 when a blank in the path splits its
  output into more than two parts), POST ``ops/mkdir`` 201, POST ``ops/upload?path=DIR``
  multipart ``file`` 204 and 413 over the size limit, POST ``ops/extract`` 204);
* the error body ``{"errorType", "message", "user"}`` (``lib/models/apis/api_response_model.py``) and the
  status of a failed command (``filesystem/ops/commands/base_command_error_handling.py``: "No such file or
  directory" is 404, "Permission denied" 403, others 500);
* bearer tokens checked on every call, 401 ``Access token expired`` (``lib/auth/authN/OIDC_token_auth.py``);
* sbatch as ``SbatchCommand`` runs it (``--export=ALL,K=V --chdir=DIR``, script on stdin, the job id read
  from "Submitted batch job N"), scancel as ``ScancelCommand``, the job records of ``SacctCommand`` /
  ``SqueueCommand`` (``lib/scheduler_clients/slurm/cli_commands/``): array tasks as ``123_4``, a pending
  array grouped as ``123_[0-4]``; environment ``{"F7T_version": "v2.0.0"}`` when the request sets none.

Where it differs: the local Slurm keeps no accounting, so where the real server takes sacct's records
(which would fail here) the double lists ``squeue --states=all`` printing ``JobArrayID`` (the same ids, ended
jobs too), then merges squeue's own records as the real one does; ended jobs vanish after Slurm's MinJobAge
instead of the time window. Large uploads (``transfer/upload``, transfer method s3) follow
``lib/datatransfers/s3/s3_datatransfer.py``: presigned part URLs (PUT, answered with an ETag), a completion
URL (POST), and a real Slurm job that waits for the object and writes it to the target, logging "File was
successfully downloaded" as ``scripts/job_s3_downloader.sh`` does; the object store is a directory of the
double's instead of S3, and the other transfer methods are a 400 as on a site that offers only s3. Large
downloads (``transfer/download``, s3) follow the same module's ``download()``: the file is stat'ed (404 when
missing), a real Slurm job copies it into the object store (where the real one uploads it in parts with
``scripts/job_s3_uploader_multipart.sh``) and prints that script's "[INFO] Multipart file upload successfully
completed", or exits 34 with ``file_not_found`` on stderr when the file is gone by then; the answer's
``downloadUrl`` is GET-able (no token, as a presigned URL) once the job has put the object, 404 before.

Faults: ``fail[(method, kind)] = [status, ...]`` answers the next calls of that kind with those statuses
(kinds: submit, jobs, job, cancel, stat, view, ls, download, checksum, mkdir, upload, extract, transfer-upload,
transfer-download, token; and of the object store: s3-part, s3-complete, s3-object) without acting;
``fail_after[(method, kind)]`` acts first, then answers with the status (a gateway's 502 after the API acted); ``drop[(method, kind)] = n`` makes the object store close the next n connections of that kind unanswered;
``hang[(method, kind)] = n``
acts on the next n calls, then answers only after ``hang_seconds`` (a timeout after sending);
``remove_before_transfer`` removes a file to download after the server's stat, before its transfer job runs
(which then fails as the real one does); ``hold_transfers`` submits transfer jobs held (queued for good, as
behind a busy transfer partition); ``command_timeout`` is the seconds of the ``timeout`` before each filesystem
command (stat, ls, base64, sha256sum), which the double builds as the server does (one string, each path in
'...' unescaped) and runs with ``bash -c`` as the server runs it through the login shell over ssh: a ``'`` in a
path breaks it (500), a command stopped by ``timeout`` (exit status 124) is a 408; the object store's URLs carry a presigned query and its injected
failures answer S3's XML error document; :meth:`expire_tokens` makes every issued token expire now (the server's clock); :meth:`forget` makes a job
vanish from the listings (gone, as after the time window).
"""

from __future__ import annotations

import base64
import email.parser
import hashlib
import http.server
import json
import os
import re
import secrets
import shlex
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

APP_VERSION = "2.6.0"
# the query of a presigned URL (S3's signature version 4), ignored by the double's object store
_SIGNED = (
    "?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAEXAMPLE%2F20260101%2Fus-east-1%2Fs3%2Faws4_request"
    "&X-Amz-Date=20260101T000000Z&X-Amz-Expires=86400&X-Amz-SignedHeaders=host&X-Amz-Signature=" + "0f" * 32
)
MAX_OPS_FILE_SIZE = 5 * 1024 * 1024


class FakeFirecrest:
    def __init__(self, system: str = "local", client_id: str = "mantik", client_secret: str = "s3cret"):
        self.system = system
        self.client_id, self.client_secret = client_id, client_secret
        self.token_seconds = 300
        self.tokens: dict[str, float] = {}  # token -> expiry (time.time())
        self.requests: list[tuple[str, str]] = []  # (method, kind)
        self.fail: dict[tuple[str, str], list[int]] = {}
        self.hang: dict[tuple[str, str], int] = {}
        self.fail_after: dict[tuple[str, str], list[int]] = {}  # act, then answer with this status (a gateway)
        self.hang_seconds = 4.0
        self.drop: dict[tuple[str, str], int] = {}  # the object store closes the next n connections unanswered
        self.forgotten: set[str] = set()
        self.hold = False  # submit jobs held (pending until released or cancelled)
        self.submitted: list[str] = []  # job ids, in order (the transfer jobs not included)
        self.max_part_size = 1024 * 1024
        self.objects = Path(tempfile.mkdtemp(prefix="fake-firecrest-s3-"))
        self.transfer_jobs: list[str] = []
        self.remove_before_transfer = False  # transfer/download: the file is removed after its stat, before its job
        self.command_timeout = 5  # seconds: the `timeout` before each filesystem command (the site's ssh setting)
        self.hold_transfers = False  # transfer jobs submitted held: queued forever, as behind a busy partition
        self.lock = threading.Lock()
        self._server: http.server.ThreadingHTTPServer | None = None

    # -- lifecycle -----------------------------------------------------------------------------

    def __enter__(self):
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                fake._handle(self, "GET")

            def do_POST(self):
                fake._handle(self, "POST")

            def do_DELETE(self):
                fake._handle(self, "DELETE")

            def do_PUT(self):
                fake._handle(self, "PUT")

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        for job_id in self.submitted + self.transfer_jobs:
            subprocess.run(["scancel", job_id], capture_output=True)
        shutil.rmtree(self.objects, ignore_errors=True)
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}/api/v2"

    @property
    def token_url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}/auth/token"

    def expire_tokens(self) -> None:
        with self.lock:
            self.tokens = {token: 0.0 for token in self.tokens}

    def forget(self, job_id: str) -> None:
        self.forgotten.add(job_id.split("_")[0])

    def count(self, method: str, kind: str) -> int:
        return sum(1 for r in self.requests if r == (method, kind))

    # -- dispatch ------------------------------------------------------------------------------

    def _handle(self, handler, method: str) -> None:
        url = urllib.parse.urlsplit(handler.path)
        query = dict(urllib.parse.parse_qsl(url.query, keep_blank_values=True))
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        if url.path == "/auth/token":
            return self._token(handler, method, body)
        if url.path.startswith("/s3/"):  # presigned URLs: no bearer token, as S3's
            return self._object_store(handler, method, url.path, body)
        parts = url.path.removeprefix("/api/v2").strip("/").split("/")
        kind = self._kind(method, parts)
        with self.lock:
            self.requests.append((method, kind))
            failing = self.fail.get((method, kind))
            status = failing.pop(0) if failing else None
            after = self.fail_after.get((method, kind))
            after_status = after.pop(0) if after else None
            hanging = self.hang.get((method, kind), 0)
            if hanging:
                self.hang[(method, kind)] = hanging - 1
        problem = self._authenticate(handler)
        if problem:
            return self._send(handler, 401, {"errorType": "error", "message": problem, "user": None})
        if status is not None:
            return self._send(handler, status, {"errorType": "error", "message": f"injected {status}", "user": "u"})
        if len(parts) < 2 or parts[1] != self.system:
            return self._send(handler, 404, {"errorType": "error", "message": "Machine does not exist", "user": "u"})
        try:
            code, answer = self._act(method, kind, parts, query, body, handler.headers.get("Content-Type", ""))
        except _Answer as exc:
            code, answer = exc.status, {"errorType": "error", "message": exc.message, "user": "u"}
        if hanging:
            time.sleep(self.hang_seconds)  # the action happened; the answer comes too late
        if after_status is not None:  # the action happened; a proxy in front answers with an error
            code, answer = after_status, {"errorType": "error", "message": f"injected {after_status}", "user": "u"}
        self._send(handler, code, answer)

    @staticmethod
    def _kind(method: str, parts: list[str]) -> str:
        if parts[:1] == ["compute"]:
            if len(parts) == 3:
                return "submit" if method == "POST" else "jobs"
            return "cancel" if method == "DELETE" else "job"
        if parts[:1] == ["filesystem"] and len(parts) >= 4:
            return parts[3] if parts[2] == "ops" else f"transfer-{parts[3]}"
        return "/".join(parts)

    def _token(self, handler, method: str, body: bytes) -> None:
        with self.lock:
            self.requests.append((method, "token"))
            failing = self.fail.get((method, "token"))
            status = failing.pop(0) if failing else None
        if status is not None:
            return self._send(handler, status, {"error": "temporarily_unavailable"})
        form = dict(urllib.parse.parse_qsl(body.decode()))
        if (
            form.get("grant_type") != "client_credentials"
            or form.get("client_id") != self.client_id
            or form.get("client_secret") != self.client_secret
        ):
            return self._send(
                handler, 401, {"error": "invalid_client", "error_description": "Invalid client credentials"}
            )
        token = secrets.token_hex(16)
        with self.lock:
            self.tokens[token] = time.time() + self.token_seconds
        self._send(handler, 200, {"access_token": token, "expires_in": self.token_seconds, "token_type": "Bearer"})

    def _authenticate(self, handler) -> str | None:
        header = handler.headers.get("Authorization", "")
        if not header.startswith("Bearer "):
            return "Not authenticated"
        expiry = self.tokens.get(header.removeprefix("Bearer "))
        if expiry is None:
            return "Invalid authentication credentials"
        if expiry <= time.time():
            return "Access token expired"
        return None

    @staticmethod
    def _send(handler, status: int, answer) -> None:
        raw = isinstance(answer, bytes)  # a file's content (ops/download, an object's GET), as it is
        data = answer if raw else b"" if status == 204 or answer is None else json.dumps(answer).encode()
        handler.send_response(status)
        handler.send_header("f7t-appversion", APP_VERSION)
        if raw:
            handler.send_header("Content-Type", "application/octet-stream")
        elif data:
            handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    # -- the API -------------------------------------------------------------------------------

    def _act(self, method, kind, parts, query, body, content_type):
        if parts[0] == "compute":
            return self._compute(method, kind, parts, query, body)
        path = query.get("path", "")
        if kind == "stat" and method == "GET":
            # StatCommand: its output is the fields of os.stat_result, the mode in hex
            _absolute(path)
            fields = self._command(f"stat  -c '%f %i %d %h %u %g %s %X %Y %Z' -- '{path}'").split()
            names = ("mode", "ino", "dev", "nlink", "uid", "gid", "size", "atime", "mtime", "ctime")
            answer = {name: int(value, 16 if name == "mode" else 10) for name, value in zip(names, fields, strict=True)}
            return 200, {"output": answer}
        if kind == "ls" and method == "GET":
            return 200, {"output": _ls(path, query, self._command)}
        if kind == "download" and method == "GET":
            # Base64Command: the file read as base64 (its size then checked)
            _absolute(path)
            content = base64.b64decode(self._command(f"base64 --wrap=0 -- '{path}'"))
            if len(content) > MAX_OPS_FILE_SIZE:
                raise _Answer(413, "File to download is too large.")
            return 200, content
        if kind == "checksum" and method == "GET":
            # ChecksumCommand: `sha256sum -- 'PATH'`, its output split on blanks into exactly two parts
            _absolute(path)
            output = self._command(f"sha256sum -- '{path}'")
            parts = output.split()
            if len(parts) != 2:
                raise _Answer(500, f"Invalid output: {output} ")
            return 200, {"output": {"algorithm": "SHA256", "checksum": parts[0]}}
        if kind == "view" and method == "GET":
            target = _existing(path)
            if target.stat().st_size > MAX_OPS_FILE_SIZE:
                raise _Answer(400, f"`size` value must be less than {MAX_OPS_FILE_SIZE} bytes")
            return 200, {"output": target.read_bytes().decode(errors="replace")}
        if kind == "mkdir" and method == "POST":
            request = json.loads(body)
            target = Path(request.get("sourcePath") or request.get("path") or "")
            _absolute(str(target))
            try:
                target.mkdir(parents=bool(request.get("parent")), exist_ok=bool(request.get("parent")))
            except FileExistsError:
                raise _Answer(400, f"mkdir: cannot create directory '{target}': File exists") from None
            except FileNotFoundError:
                raise _Answer(404, f"mkdir: cannot create directory '{target}': No such file or directory") from None
            return 201, {"output": _stat(target)}
        if kind == "upload" and method == "POST":
            directory = _existing(path)
            name, data = _multipart_file(body, content_type)
            if len(data) > MAX_OPS_FILE_SIZE:
                raise _Answer(413, "File to upload is too large.")
            # the real server pipes base64 through ssh into `base64 -d > PATH/NAME`
            (directory / name).write_bytes(base64.b64decode(base64.b64encode(data)))
            return 204, None
        if kind == "extract" and method == "POST":
            request = json.loads(body)
            source = _existing(request.get("source_path") or request.get("path") or "")
            target = _existing(request.get("target_path") or "")
            flag = {"gzip": "z", "bzip2": "j", "xz": "J", "none": ""}[request.get("compression", "gzip")]
            result = subprocess.run(
                ["tar", f"-x{flag}f", str(source), "-C", str(target)], capture_output=True, text=True
            )
            if result.returncode:
                raise _Answer(
                    500,
                    f"Remote process failed with exit status:{result.returncode} and error message:"
                    f"{result.stderr.strip()}",
                )
            return 204, None
        if kind == "transfer-upload" and method == "POST":
            return self._transfer_upload(json.loads(body))
        if kind == "transfer-download" and method == "POST":
            return self._transfer_download(json.loads(body))
        raise _Answer(404, "Not Found")

    def _command(self, command: str) -> str:
        """A filesystem command as the real server runs it (``BaseCommandWithTimeout``): one string,
        ``timeout SECONDS`` before it and each path in '...' without escaping, through the user's shell over ssh
        (here ``bash -c``); its stdout, or the server's error answer for its exit status."""
        result = subprocess.run(
            ["bash", "-c", f"timeout {self.command_timeout} {command}"], capture_output=True, text=True
        )
        if result.returncode:
            _command_failed(result.stderr, result.returncode)
        return result.stdout

    def _transfer_upload(self, request: dict) -> tuple[int, dict]:
        directives = request.get("transferDirectives") or request.get("transfer_directives") or {}
        method = directives.get("transferMethod") or directives.get("transfer_method")
        if method != "s3":
            raise _Answer(400, "Requested transfer method is not available.")
        size = int(directives.get("fileSize") or directives.get("file_size") or 0)
        target = request.get("path") or request.get("sourcePath") or ""
        _absolute(target)
        key = secrets.token_hex(8)
        (self.objects / key).mkdir()
        base = self.url.removesuffix("/api/v2") + f"/s3/{key}"
        parts = [f"{base}/part/{n}{_SIGNED}" for n in range(1, max(1, -(-size // self.max_part_size)) + 1)]
        log_dir = self.objects / key
        script = (
            "#!/bin/bash\n#SBATCH --partition=debug\n#SBATCH --time=00:10:00\n"
            'echo $(date -u) "Ingress File Transfer Job (id:${SLURM_JOB_ID})"\n'
            f"for i in $(seq 1200); do [ -f {shlex.quote(str(log_dir / 'complete'))} ] && break; sleep 0.5; done\n"
            f"cp {shlex.quote(str(log_dir / 'object'))} {shlex.quote(target)} || exit 1\n"
            'echo $(date -u) "File was successfully downloaded"\n'
        )
        return 201, {
            "transferJob": self._transfer_job("IngressFileTransfer", log_dir, script),
            "transferDirectives": {
                "transferMethod": "s3",
                "partsUploadUrls": parts,
                "completeUploadUrl": f"{base}/complete{_SIGNED}",
                "maxPartSize": self.max_part_size,
            },
        }

    def _transfer_download(self, request: dict) -> tuple[int, dict]:
        """``S3Datatransfer.download``: the file is stat'ed (404 when missing), then a Slurm job puts it into the
        object store (here: copies it into the double's directory, printing what ``job_s3_uploader_multipart.sh``
        prints on success, or exiting 34 with ``file_not_found`` when the file is gone by then); the answer
        holds the job and the presigned URL the client GETs once the job succeeded."""
        directives = request.get("transferDirectives") or request.get("transfer_directives") or {}
        if (directives.get("transferMethod") or directives.get("transfer_method")) != "s3":
            raise _Answer(400, "Requested transfer method is not available.")
        source = request.get("sourcePath") or request.get("source_path") or request.get("path") or ""
        _existing(source)
        if self.remove_before_transfer:
            Path(source).unlink()
        key = secrets.token_hex(8)
        folder = self.objects / key
        folder.mkdir()
        quoted, partial = shlex.quote(source), shlex.quote(str(folder / "object.partial"))
        script = (
            "#!/bin/bash\n#SBATCH --partition=debug\n#SBATCH --time=00:10:00\n"
            'echo $(date -u) "Upload File Job (id:${SLURM_JOB_ID})"\n'
            f'if [ ! -f {quoted} ]; then >&2 echo "file_not_found"; exit 34; fi\n'
            f"cp {quoted} {partial} && mv {partial} {shlex.quote(str(folder / 'object'))} || exit 70\n"
            'echo "[INFO] Multipart file upload successfully completed"\n'
        )
        base = self.url.removesuffix("/api/v2")
        return 201, {
            "transferJob": self._transfer_job("OutgressFileTransfer", folder, script),
            "transferDirectives": {
                "transferMethod": "s3",
                "downloadUrl": f"{base}/s3/{key}/{urllib.parse.quote(os.path.basename(source))}{_SIGNED}",
            },
        }

    def _transfer_job(self, name: str, log_dir: Path, script: str) -> dict:
        """Submit a transfer job (``JobHelper``'s: its own name, logs in its working directory); its record."""
        output, error = str(log_dir / "job.out"), str(log_dir / "job.err")
        held = ["--hold"] if self.hold_transfers else []
        result = subprocess.run(
            ["sbatch", *held, f"--job-name={name}", f"--chdir={log_dir}", f"--output={output}", f"--error={error}"],
            input=script,
            capture_output=True,
            text=True,
        )
        if result.returncode:
            raise _Answer(500, f"Unexpected Slurm command response. exit_status:{result.returncode}")
        job_id = result.stdout.strip().split()[-1]
        self.transfer_jobs.append(job_id)
        return {
            "jobId": job_id,
            "system": self.system,
            "workingDirectory": str(log_dir),
            "logs": {"outputLog": output, "errorLog": error},
        }

    def _object_store(self, handler, method: str, path: str, body: bytes) -> None:
        _, _, key, *rest = path.split("/")
        folder = self.objects / key
        kind = "s3-object" if method == "GET" else "s3-" + (rest[0] if rest else "")
        with self.lock:
            self.requests.append((method, kind))
            failing = self.fail.get((method, kind))
            status = failing.pop(0) if failing else None
            dropping = self.drop.get((method, kind), 0)
            if dropping:
                self.drop[(method, kind)] = dropping - 1
        if dropping:  # the connection closed without an answer
            handler.close_connection = True
            return None
        if status is not None:  # S3's error document, as an expired presigned URL gets it
            handler.send_response(status)
            document = (
                b"<?xml version='1.0' encoding='UTF-8'?>\n<Error><Code>AccessDenied</Code><Message>Request has expired"
                b"</Message><X-Amz-Expires>86400</X-Amz-Expires><RequestId>4442587FB7D0A2F9</RequestId></Error>"
            )
            handler.send_header("Content-Type", "application/xml")
            handler.send_header("Content-Length", str(len(document)))
            handler.end_headers()
            handler.wfile.write(document)
            return None
        if not folder.is_dir():
            return self._send(handler, 404, {"Code": "NoSuchUpload"})
        if method == "GET":  # a staged download: there once its transfer job has put it
            if not (folder / "object").is_file():
                return self._send(handler, 404, {"Code": "NoSuchKey"})
            return self._send(handler, 200, (folder / "object").read_bytes())
        if method == "PUT" and rest[:1] == ["part"]:
            (folder / f"part-{int(rest[1]):05d}").write_bytes(body)
            handler.send_response(200)
            handler.send_header("ETag", '"' + hashlib.md5(body).hexdigest() + '"')
            handler.send_header("Content-Length", "0")
            handler.end_headers()
            return None
        if method == "POST" and rest == ["complete"]:
            with open(folder / "object", "wb") as whole:
                for part in sorted(folder.glob("part-*")):
                    whole.write(part.read_bytes())
            (folder / "complete").touch()
            return self._send(handler, 200, {"Location": key})
        return self._send(handler, 405, {"Code": "MethodNotAllowed"})

    def _compute(self, method, kind, parts, query, body):
        if kind == "submit":
            job = json.loads(body).get("job") or {}
            workdir = job.get("working_directory") or job.get("workingDirectory")
            if not workdir or not job.get("script"):
                raise _Answer(422, "job.working_directory and job.script are required")
            environment = job.get("env") or {"F7T_version": "v2.0.0"}
            command = ["sbatch", "--export=" + ",".join(["ALL", *(f"{k}={v}" for k, v in environment.items())])]
            command.append(f"--chdir={workdir}")
            if self.hold:
                command.append("--hold")
            for key in ("partition", "reservation", "account"):
                if job.get(key):
                    command.append(f"--{key}={job[key]}")
            result = subprocess.run(command, input=job["script"], capture_output=True, text=True)
            if result.returncode:
                raise _Answer(
                    500, f"Unexpected Slurm command response. exit_status:{result.returncode} std_err:{result.stderr}"
                )
            job_id = result.stdout.strip().split()[-1]
            self.submitted.append(job_id)
            return 201, {"jobId": job_id}
        if kind == "jobs":
            return 200, {"jobs": self._list()}
        job_id = parts[3]
        if not job_id.isalnum():
            raise _Answer(422, f"path.job_id: String should match pattern '^[a-zA-Z0-9]+$' (got {job_id!r})")
        if kind == "job":
            jobs = [j for j in self._list() if j["jobId"].split("_")[0] == job_id]
            if not jobs:
                raise _Answer(404, "Job not found.")
            return 200, {"jobs": jobs}
        if kind == "cancel":
            if not any(j["jobId"].split("_")[0] == job_id for j in self._list()):
                raise _Answer(404, "Job not found")
            result = subprocess.run(["scancel", "--verbose", job_id], capture_output=True, text=True)
            if result.returncode or "error:" in result.stderr.lower():
                raise _Answer(
                    500, f"Unexpected Slurm command response. exit_status:{result.returncode} std_err:{result.stderr}"
                )
            return 204, None
        raise _Answer(405, "Method Not Allowed")

    def _list(self) -> list[dict]:
        """The job records as SlurmCliClient.get_jobs merges them: sacct's first (array tasks as 123_4, a
        pending array as 123_[0-4], ended jobs too), then squeue's (each task under its own job number,
        pending and running only), a later record replacing an earlier one of the same id only when PENDING.
        Without accounting here, ``squeue --states=all`` printing JobArrayID stands in for sacct."""
        user = os.environ.get("USER") or subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip()
        jobs: dict[str, dict] = {}
        for id_field, states in (("JobArrayID", " --states=all"), ("JobID", "")):
            fields = f"{id_field}:|,Name:|,State:|,Reason:|,Partition:|,NumNodes:|,NodeList:|,UserName:|,WorkDir:"
            result = subprocess.run(
                f"squeue --user={shlex.quote(user)}{states} --noheader --Format='{fields}'",
                shell=True,
                capture_output=True,
                text=True,
            )
            if result.returncode:
                raise _Answer(500, "Error executing Slurm command.")
            for record in self._records(result.stdout):
                if record["jobId"] not in jobs or record["status"]["state"] == "PENDING":
                    jobs[record["jobId"]] = record
        return list(jobs.values())

    def _records(self, output: str) -> list[dict]:
        jobs = []
        for line in output.splitlines():
            values = [v.strip() for v in line.split("|")]
            if len(values) < 9 or values[0].split("_")[0] in self.forgotten:
                continue
            job_id, name, state, reason, partition, nodes, node_list, user_name, workdir = values[:9]
            jobs.append(
                {
                    "jobId": job_id,
                    "name": name,
                    "status": {"state": state, "stateReason": reason, "exitCode": None, "interruptSignal": None},
                    "tasks": None,
                    "time": {"elapsed": None, "start": None, "end": None, "suspended": None, "limit": None},
                    "account": None,
                    "allocationNodes": int(nodes) if nodes.isdigit() else 0,
                    "cluster": "local",
                    "group": None,
                    "nodes": node_list,
                    "partition": partition,
                    "killRequestUser": None,
                    "user": user_name,
                    "workingDirectory": workdir,
                    "priority": None,
                }
            )
        return jobs


class _Answer(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def _absolute(path: str) -> None:
    if not path.startswith("/"):
        raise _Answer(400, f"{path!r} is not an absolute path")


def _existing(path: str) -> Path:
    _absolute(path)
    target = Path(path)
    if not target.exists():
        raise _Answer(
            404, f"Remote process failed with exit status:1 and error message:{path}: No such file or directory"
        )
    return target


def _command_failed(stderr: str, code: int):
    """A failed command's answer, as ``BaseCommandWithTimeoutErrorHandling.error_handling`` gives it: 408 when
    ``timeout`` stopped it (exit status 124), else by the words of its stderr, else 500."""
    message = f"Remote process failed with exit status:{code}"
    message += f" and error message:{stderr.strip()}" if stderr else ""
    if code == 124:
        raise _Answer(408, message)
    for words, status in (
        ("No such file or directory", 404),
        ("Permission denied", 403),
        ("Operation not permitted", 403),
        ("File exists", 400),
        ("invalid user", 400),
    ):
        if words in stderr:
            raise _Answer(status, message)
    raise _Answer(500, message)


def _ls(path: str, query: dict, command) -> list[dict]:
    """GET ops/ls: ``LsBaseCommand``'s command run here and its output parsed as it parses it (``File`` objects,
    camelCase, the size a string; with ``recursive`` the names carry their folder below ``path``)."""
    _absolute(path)
    options = "-l --quoting-style=c --time-style='+%Y-%m-%dT%H:%M:%S' "
    options += "-A " if query.get("showHidden") == "true" else ""
    options += "--numeric-uid-gid " if query.get("numericUid") == "true" else ""
    options += "-R " if query.get("recursive") == "true" else ""
    options += "-L " if query.get("dereference") == "true" else ""
    output = command(f"ls {options}-- '{path}'")
    if not re.match(r"\"(.+)\":\n", output):
        return _ls_folder(output, "")
    files, folders, root = [], re.split(r"\"(.+)\":\n", output), ""
    for i in range(1, len(folders), 2):
        folder = folders[i].rstrip("/")
        if i == 1:
            root = folder + "/"
        files += _ls_folder(folders[i + 1], (folder + "/").removeprefix(root))
    return files


def _ls_folder(content: str, prefix: str) -> list[dict]:
    pattern = (
        r"^(?P<type>\S)(?P<permissions>\S+)\s+\d+\s+(?P<user>\S+)\s+"
        r"(?P<group>\S+)\s+(?P<size>\d+)\s+(?P<last_modified>(\d|-|T|:)+)\s+(?P<filename>.+)$"
    )
    files = []
    for line in content.splitlines():
        for m in re.finditer(pattern, line):
            tokens = shlex.split(m.group("filename"))
            if len(tokens) not in (1, 3):
                continue
            files.append(
                {
                    "name": prefix + tokens[0],
                    "type": m.group("type"),
                    "linkTarget": tokens[2] if len(tokens) == 3 else None,
                    "user": m.group("user"),
                    "group": m.group("group"),
                    "permissions": m.group("permissions"),
                    "lastModified": m.group("last_modified"),
                    "size": m.group("size"),
                }
            )
    return files


def _stat(path: Path) -> dict:
    info = path.stat()
    return {
        "mode": info.st_mode, "ino": info.st_ino, "dev": info.st_dev, "nlink": info.st_nlink, "uid": info.st_uid,
        "gid": info.st_gid, "size": info.st_size, "atime": int(info.st_atime), "mtime": int(info.st_mtime),
        "ctime": int(info.st_ctime),
    }  # fmt: skip


def _multipart_file(body: bytes, content_type: str) -> tuple[str, bytes]:
    message = email.parser.BytesParser().parsebytes(f"Content-Type: {content_type}\r\n\r\n".encode() + body)
    for part in message.get_payload() if message.is_multipart() else []:
        if part.get_param("name", header="content-disposition") == "file":
            name = part.get_filename() or ""
            if not name or "/" in name:
                raise _Answer(422, "file: a file name is required")
            return name, part.get_payload(decode=True) or b""
    raise _Answer(422, "body.file: Field required")
