"""``mantik`` commands for the tests without paying mantik's imports each time.

Every ``mantik`` process the tests start spends about three seconds importing mlflow, SQLAlchemy and alembic
before it does a millisecond of work, and the suite starts over a thousand of them. A zygote (as Android,
Chromium and ``multiprocessing``'s forkserver do it) imports them once; each command is a fork of it that
becomes the command: its own process with its own pid, working directory, environment, standard streams and
exit status, running the same ``mantik_spec.cli:main`` the console script runs, and ending the way the
interpreter ends (threads joined, atexit handlers, streams flushed), less the teardown of every module (see
``_end``). Nothing mantik computes from its environment or working directory is computed before the fork: the
zygote imports modules and reads the installed MLflow's migration list, nothing else.

``MANTIK_TEST_EXEC=1`` starts the installed console script for every command instead. Tests that need the
real executable (signals sent to it, a pty) start it themselves; commands that must run under a wrapper
(``unshare`` with private mounts) come from a zygote started under it.

Protocol, over a Unix socket: the client sends an 8-byte length with its stdin/stdout/stderr descriptors,
then a JSON request ``{"argv", "cwd", "env"}``; a monitor forked for the request forks the command, answers
``{"pid": N}``, waits for it and answers ``{"returncode": N, "cpu": S}`` (negative: the signal that ended it,
as ``subprocess`` reports it; S: the command's user and system CPU seconds, summed in ``CPU_SECONDS``).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

_HEADER = struct.Struct("!Q")
CPU_SECONDS = 0.0  # spent by this process's commands: where the suite's time goes (docs/performance.md)
# Imported before the fork: everything a plan, apply or status imports, and nothing that reads the environment.
PRELOAD = (
    "mantik_spec.cli",
    "mantik_spec.operations.project",
    "mantik_spec.operations.apply",
    "mantik_spec.operations.jobs",
    "mantik_spec.operations.status",
    "mantik_spec.operations.show",
    "mantik_spec.operations.control",
    "mantik_spec.backends.local",
    "mantik_spec.backends.slurm",
    "mantik_spec.backends.ssh",
    "mantik_spec.spec.load",
    "mantik_spec.state.tracking",
    "mantik_spec.state.versions",
    "mlflow.tracking.client",
    "mlflow.store.tracking.sqlalchemy_store",
    "mlflow.store.tracking.rest_store",
    "mlflow.store.tracking.sqlalchemy_workspace_store",
    "sqlalchemy.dialects.sqlite",  # imported by SQLAlchemy only when the first engine is made
)


# ---- the server side -------------------------------------------------------------------------------------------


def _read_exactly(connection: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = connection.recv(size - len(data))
        if not chunk:
            raise EOFError("the client went away")
        data += chunk
    return data


def serve(path: str) -> dict | None:
    """Accept requests on ``path`` forever. Returns only in a forked command, with its request."""
    import importlib

    for module in PRELOAD:
        importlib.import_module(module)
    # A property of the installed MLflow, like an import (alembic executes its migration scripts to list them):
    # 0.015 to 0.045 CPU-seconds less for each command that opens a local store.
    importlib.import_module("mantik_spec.state.tracking").schema_revisions()
    assert threading.active_count() == 1, "a thread before fork would be lost in every command"
    import gc

    gc.freeze()  # the imported modules live for the whole process: no collection needs to walk them
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(64)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # monitors are reaped by the kernel
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    while True:
        connection, _ = listener.accept()
        if os.fork() == 0:
            listener.close()
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            request = _monitor(connection)
            return request  # only the command itself gets here
        connection.close()


def _monitor(connection: socket.socket) -> dict:
    header, fds, _flags, _address = socket.recv_fds(connection, _HEADER.size, 3)
    (size,) = _HEADER.unpack(header + _read_exactly(connection, _HEADER.size - len(header)))
    request = json.loads(_read_exactly(connection, size))
    request["fds"] = fds
    pid = os.fork()
    if pid == 0:
        connection.close()
        return request
    for fd in fds:
        os.close(fd)
    connection.sendall(json.dumps({"pid": pid}).encode() + b"\n")
    _, status, usage = os.wait4(pid, 0)
    cpu = usage.ru_utime + usage.ru_stime
    connection.sendall(json.dumps({"returncode": os.waitstatus_to_exitcode(status), "cpu": cpu}).encode() + b"\n")
    os._exit(0)


def become(request: dict) -> None:
    """Turn this forked process into ``mantik ARGS`` as the console script would start it, and run it."""
    # sys.stdin/stdout/stderr stay the objects Python made at start-up, on descriptors 0-2 and with nothing
    # buffered (the zygote flushed and never read): after dup2 they are the command's own streams
    for target, fd in enumerate(request["fds"]):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    sys.argv = list(request["argv"])
    sys.path[0] = str(Path(request["argv"][0]).parent)  # the console script's directory, as for the script
    from mantik_spec.cli import main

    try:
        main()
        code = 0
    except SystemExit as exit_:  # as the interpreter reads it: None is 0, a number is the status, else printed
        if exit_.code is None or isinstance(exit_.code, int):
            code = exit_.code or 0
        else:
            print(exit_.code, file=sys.stderr)
            code = 1
    except KeyboardInterrupt:  # the interpreter's way: ended by the signal itself
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
        code = 130
    except BaseException:  # noqa: BLE001 - reported as the interpreter would, then the same exit status
        import traceback

        traceback.print_exc()
        code = 1
    _end(code)


def _end(code: int) -> None:
    """End as the interpreter ends a script, less the teardown of every module: non-daemon threads joined,
    atexit handlers run, streams flushed, then ``_exit``. Tearing down mlflow's and SQLAlchemy's objects would
    write to nearly every page this process shares with the zygote, copying them: 0.1 s of CPU per command
    spent on memory that is about to be freed anyway."""
    import atexit

    try:
        threading._shutdown()  # what Py_FinalizeEx does first: join the non-daemon threads
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)


# ---- the client side -------------------------------------------------------------------------------------------


class Zygote:
    """One per test process, started on first use."""

    def __init__(self, directory: Path, prefix: tuple[str, ...] = ()):
        """``prefix``: a command the zygote is started under, which its commands then share (``unshare`` with
        its mounts, for instance)."""
        self.path = str(directory / "zygote.sock")
        environment = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        self.process = subprocess.Popen(
            [*prefix, sys.executable, __file__, self.path],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            env=environment,
            cwd=directory,
        )
        assert self.process.stdout is not None
        ready = self.process.stdout.readline()
        if ready != b"ready\n":
            raise RuntimeError(f"the mantik zygote did not start (exit {self.process.wait()})")

    def run(
        self, argv: list[str], cwd: Path, env: dict[str, str], input: str | None, timeout: float
    ) -> subprocess.CompletedProcess:
        """``subprocess.run(argv, cwd=, env=, input=, capture_output=True, text=True, timeout=)``, forked."""
        stdin_read, stdin_write = os.pipe()
        out_read, out_write = os.pipe()
        err_read, err_write = os.pipe()
        connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            connection.connect(self.path)
            body = json.dumps({"argv": argv, "cwd": str(cwd), "env": env}).encode()
            socket.send_fds(connection, [_HEADER.pack(len(body))], [stdin_read, out_write, err_write])
            connection.sendall(body)
        finally:
            for fd in (stdin_read, out_write, err_write):
                os.close(fd)
        outputs: dict[int, bytes] = {}

        def drain(fd: int) -> None:
            chunks = []
            while chunk := os.read(fd, 65536):
                chunks.append(chunk)
            os.close(fd)
            outputs[fd] = b"".join(chunks)

        readers = [threading.Thread(target=drain, args=(fd,), daemon=True) for fd in (out_read, err_read)]
        for reader in readers:
            reader.start()
        feeder = threading.Thread(target=_feed, args=(stdin_write, (input or "").encode()), daemon=True)
        feeder.start()
        answers = connection.makefile("rb")
        pid = json.loads(answers.readline())["pid"]
        connection.settimeout(timeout)
        deadline = time.monotonic() + timeout
        try:
            line = answers.readline()
        except TimeoutError:
            line = b""
        if not line:
            os.kill(pid, signal.SIGKILL)  # as subprocess.run does on its timeout
            answers.close()
            connection.close()
            raise subprocess.TimeoutExpired(argv, timeout)
        answer = json.loads(line)
        returncode = answer["returncode"]
        global CPU_SECONDS
        CPU_SECONDS += answer.get("cpu", 0.0)
        answers.close()
        connection.close()
        for reader in readers:  # the command's children may still hold the pipes: wait as subprocess does
            reader.join(max(0.0, deadline - time.monotonic()))
            if reader.is_alive():
                raise subprocess.TimeoutExpired(argv, timeout)
        return subprocess.CompletedProcess(
            argv, returncode, _text(outputs.get(out_read, b"")), _text(outputs.get(err_read, b""))
        )

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()


def _text(data: bytes) -> str:
    """What ``text=True`` makes of a stream: decoded strictly, universal newlines."""
    return data.decode().replace("\r\n", "\n").replace("\r", "\n")


def _feed(fd: int, data: bytes) -> None:
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    except BrokenPipeError:
        pass
    finally:
        os.close(fd)


if __name__ == "__main__":
    forked = serve(sys.argv[1])
    if forked is not None:
        become(forked)
