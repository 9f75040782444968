"""A login node reached over SSH: the same host interface as :class:`.hosts.LocalHost`, so the
Slurm backend drives a cluster from a laptop or a CI runner with the same code.

It runs the system's OpenSSH client, so what users already have applies as it
does for their own ``ssh``: ``~/.ssh/config`` (Host aliases, ProxyJump,
IdentityFile, User), the agent and ``known_hosts``. Host keys are checked
strictly: an unknown or changed key is an error, never accepted. One master
connection (ControlMaster) carries every command of a plan, apply or status,
and lingers a minute for the next one.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

from ..spec.model import SSHConnection
from .base import BackendError, CommandTimeout
from .hosts import COMMAND_TIMEOUT, CommandResult, ConnectionDropped
from .staging import code_archive


def control_directory() -> str:
    """Where shared-connection sockets live: private to the user."""
    directory = os.path.join(os.path.expanduser("~"), ".ssh", "mantik")
    os.makedirs(directory, mode=0o700, exist_ok=True)
    return directory


PERSIST_SECONDS = 60  # how long the shared connection outlives the command that opened it
SLOWEST_LINK_BYTES_PER_SECOND = 100_000  # sending files may take this long before it counts as hung
USERNAME_VARIABLE = "MANTIK_SSH_USERNAME"
KEY_VARIABLE = "MANTIK_SSH_PRIVATE_KEY"  # a key file's path, or the key itself (as CI secrets hold it)
PASSWORD_VARIABLE = "MANTIK_SSH_PASSWORD"
CONNECTION_FAILED = 255  # ssh's own exit status when it could not run the command


class SSHHost:
    def __init__(self, connection: SSHConnection, project_root: Path):
        self.connection = connection
        self.name = connection.host
        self.project_root = project_root
        self.connections_opened = 0  # by this process; printed with -v and measured in bench/
        self.commands_run = 0
        self.bytes_sent = 0
        self.trees_sent = 0
        self._connected = False
        self._environment = dict(os.environ)
        self._base = self._arguments()
        self._master = self._arguments(master="yes")

    def stats(self) -> dict[str, int]:
        """What this process did over SSH, for -v and bench/ (the Backend protocol's ``stats``)."""
        return {
            "ssh connection(s) opened": self.connections_opened,
            "ssh commands": self.commands_run,
            "code tree(s) sent": self.trees_sent,
            "bytes sent": self.bytes_sent,
        }

    # -- the connection --------------------------------------------------------------------------

    def _arguments(self, master: str = "auto") -> list[str]:
        connection = self.connection
        # %C: a hash of host, port, user and jump host, so each destination has its own master. The
        # sockets live in a private directory (not a guessable name in /tmp), short enough for the
        # ~100-byte socket path limit
        control = os.path.join(control_directory(), "cm-%C")
        argv = [
            "ssh",
            "-o", "StrictHostKeyChecking=yes",  # the first value wins: the command line over ~/.ssh/config
            "-o", f"ControlMaster={master}",
            "-o", f"ControlPath={control}",
            "-o", f"ControlPersist={PERSIST_SECONDS}",
            "-o", f"ConnectTimeout={connection.connect_timeout}",
            "-o", "ServerAliveInterval=15",
        ]  # fmt: skip
        if connection.config_file:
            argv += ["-F", self._local_path(connection.config_file)]
        if connection.port:
            argv += ["-p", str(connection.port)]
        user = connection.user or os.environ.get(USERNAME_VARIABLE)
        if user:
            argv += ["-l", user]
        key = self._key_file()
        if key:
            argv += ["-i", key, "-o", "IdentitiesOnly=yes"]
        if connection.known_hosts_file:
            argv += ["-o", f"UserKnownHostsFile={self._local_path(connection.known_hosts_file)}"]
        if os.environ.get(PASSWORD_VARIABLE) and not key:
            argv += self._password_arguments()
        else:
            argv += ["-o", "BatchMode=yes"]  # never wait for a prompt nobody will answer
        return [*argv, connection.host]

    def _local_path(self, value: str) -> str:
        path = Path(value).expanduser()
        return str(path if path.is_absolute() else self.project_root / path)

    def _key_file(self) -> str | None:
        if self.connection.identity_file:
            return self._local_path(self.connection.identity_file)
        value = os.environ.get(KEY_VARIABLE, "")
        if not value:
            return None
        if "PRIVATE KEY" not in value:
            return self._local_path(value)
        # the key itself (a CI secret): ssh reads keys from files, so one lives, private, while we run
        directory = tempfile.mkdtemp(prefix="mantik-key-")
        atexit.register(shutil.rmtree, directory, True)
        path = os.path.join(directory, "key")
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(value.strip() + "\n")
        return path

    def _password_arguments(self) -> list[str]:
        """ssh asks an askpass program for the password; ours prints the variable (the file holds no secret)."""
        directory = tempfile.mkdtemp(prefix="mantik-askpass-")
        atexit.register(shutil.rmtree, directory, True)
        program = os.path.join(directory, "askpass")
        with open(program, "w") as handle:
            handle.write(f'#!/bin/sh\nprintf "%s\\n" "${PASSWORD_VARIABLE}"\n')
        os.chmod(program, 0o700)
        self._environment.update(SSH_ASKPASS=program, SSH_ASKPASS_REQUIRE="force")
        return ["-o", "BatchMode=no", "-o", "NumberOfPasswordPrompts=1"]

    def _connect(self) -> None:
        """Open the shared connection unless one is alive; its failures are the ones users need explained."""
        if self._connected:
            return
        try:
            check = subprocess.run(
                [*self._base[:-1], "-O", "check", self._base[-1]],
                capture_output=True,
                text=True,
                env=self._environment,
                timeout=10,
            )
            alive = check.returncode == 0
        except subprocess.TimeoutExpired:  # a stale master that no longer answers: open a new one
            alive = False
        except FileNotFoundError:
            raise BackendError("`ssh` is not installed here: install the OpenSSH client") from None
        if not alive:
            try:
                opened = subprocess.run(
                    [*self._master[:-1], "-f", "-N", self._master[-1]],
                    capture_output=True,
                    text=True,
                    stdin=subprocess.DEVNULL,
                    env=self._environment,
                    timeout=self.connection.connect_timeout + 30,
                )
            except subprocess.TimeoutExpired:
                raise BackendError(f"cannot reach {self.name}: no answer within the connect timeout") from None
            if opened.returncode != 0:
                raise BackendError(self._explain(opened.stderr))
            self.connections_opened += 1
        self._connected = True

    def _explain(self, stderr: str) -> str:
        lines = [line.strip() for line in stderr.splitlines() if line.strip() and not line.startswith("@@@")]
        text = " ".join(lines)
        host = self.name
        if "REMOTE HOST IDENTIFICATION HAS CHANGED" in text or "Host key for" in text and "has changed" in text:
            return (
                f"the host key of {host} has changed since it was recorded in known_hosts: if the cluster really "
                f"changed its key, remove the old one (ssh-keygen -R {host}); otherwise do not connect"
            )
        if "Host key verification failed" in text or "host key is not known" in text.lower():
            return (
                f"the host key of {host} is not in known_hosts, and unknown keys are never accepted: "
                f"connect once with `ssh {host}` and compare the fingerprint with the one your centre publishes"
            )
        if "Permission denied" in text or "Too many authentication failures" in text:
            return f"{host} refused the authentication: check the key, the SSH agent or {USERNAME_VARIABLE}"
        for reason in ("Could not resolve hostname", "Connection refused", "No route to host", "timed out"):
            if reason in text:
                return f"cannot reach {host}: {lines[-1] if lines else reason}"
        return f"ssh to {host} failed: {lines[-1] if lines else 'no message'}"

    def close(self) -> None:
        """End the shared connection now (it would otherwise linger a minute for the next command)."""
        subprocess.run([*self._base[:-1], "-O", "exit", self._base[-1]], capture_output=True, env=self._environment)
        self._connected = False

    # -- commands --------------------------------------------------------------------------------

    def _exchange(self, argv: list[str], data: bytes | Path | None = None, timeout: float = COMMAND_TIMEOUT):
        """Run ``argv`` on the host with ``data`` (bytes, or a file read as it is sent) as its stdin."""
        self._connect()
        self.commands_run += 1
        self.bytes_sent += data.stat().st_size if isinstance(data, Path) else len(data or b"")
        try:
            with contextlib.ExitStack() as files:
                source = files.enter_context(open(data, "rb")) if isinstance(data, Path) else None
                done = subprocess.run(  # stdin carries data only: never a secret on a command line
                    [*self._base, "--", shlex.join(argv)],
                    input=data if isinstance(data, bytes) else None,
                    capture_output=True,
                    timeout=timeout,
                    env=self._environment,
                    stdin=source if source is not None else None if data is not None else subprocess.DEVNULL,
                )
        except subprocess.TimeoutExpired:
            raise CommandTimeout(f"`{argv[0]}` on {self.name} did not answer within {timeout:.0f} s") from None
        stderr = done.stderr.decode(errors="replace")
        if done.returncode == CONNECTION_FAILED:
            self._connected = False
            # the shared connection was up when the command left: it may have run before the link broke
            raise ConnectionDropped(self._explain(stderr))
        if done.returncode == 127 and "not found" in stderr:
            raise BackendError(
                f"`{argv[0]}` is not on the PATH of the login shell on {self.name}: "
                "make the login shell load it (e.g. in ~/.bashrc)"
            )
        return done.returncode, done.stdout, stderr

    def run(self, argv: list[str], timeout: float = COMMAND_TIMEOUT, secrets: dict | None = None) -> CommandResult:
        """``secrets`` reach the remote command's environment through stdin: never its command line,
        which other users of a login node can read."""
        if not secrets:
            code, stdout, stderr = self._exchange(argv, timeout=timeout)
        else:
            lines = "".join(f"{name}={value}\n" for name, value in secrets.items() if "\n" not in value)
            script = 'while IFS= read -r line; do export "$line"; done; exec "$@"'
            code, stdout, stderr = self._exchange(["sh", "-c", script, "sh", *argv], lines.encode(), timeout)
        return CommandResult(code, stdout.decode(errors="replace"), stderr)

    def _shell(self, script: str, *arguments: str, data: bytes | None = None):
        return self._exchange(["sh", "-c", script, "sh", *arguments], data)

    def makedirs(self, path: str) -> None:
        code, _, stderr = self._shell('mkdir -p -- "$1"', path)
        if code != 0:
            raise BackendError(f"cannot create {path} on {self.name}: {_last_line(stderr)}")

    def absolute(self, path: str) -> str:
        code, stdout, stderr = self._shell('mkdir -p -- "$1" && cd -- "$1" && pwd -P', path)
        if code != 0:
            raise BackendError(f"cannot create {path} on {self.name}: {_last_line(stderr)}")
        return stdout.decode().strip()

    def exists(self, path: str) -> bool:
        return self._shell('test -e "$1" || test -L "$1"', path)[0] == 0

    def write_text(self, path: str, text: str) -> None:
        code, _, stderr = self._shell('cat > "$1.tmp.$$" && mv -f "$1.tmp.$$" "$1"', path, data=text.encode())
        if code != 0:
            raise BackendError(f"cannot write {path} on {self.name}: {_last_line(stderr)}")

    def read_bytes(self, path: str, offset: int = 0) -> bytes | None:
        code, stdout, _ = self._shell('[ -e "$1" ] || exit 3; tail -c +"$2" -- "$1"', path, str(offset + 1))
        return stdout if code == 0 else None

    def read_files(self, paths: list[str]) -> list[bytes | None]:
        """One command: each file copied on the host right after the one before, then the sizes (``-`` for a
        file there is none), one a line, then the copies, end to end. A file that is there but cannot be copied
        (unreadable, the host's temporary space full) is a :class:`BackendError`, never taken for no file: a
        sync would take a journal it could not read for one its job never wrote. A file gone while it was
        copied (sqlite deletes its rollback journal at each commit) is no file."""
        if not paths:
            return []
        script = (
            "d=$(mktemp -d) || exit 1; trap 'rm -rf \"$d\"' EXIT; trap 'exit 129' HUP INT TERM; i=0; "
            'for f; do i=$((i+1)); '
            'if ! cat -- "$f" > "$d/$i" 2> "$d/error"; then '
            '[ ! -e "$f" ] || { echo "cannot copy $f: $(cat "$d/error")" >&2; exit 4; }; rm -f "$d/$i"; fi; done; '
            'i=0; for f; do i=$((i+1)); if [ -e "$d/$i" ]; then wc -c < "$d/$i"; else echo -; fi; done; '
            'i=0; for f; do i=$((i+1)); [ ! -e "$d/$i" ] || cat "$d/$i"; done'
        )
        code, stdout, stderr = self._shell(script, *paths)
        if code != 0:
            raise BackendError(f"cannot read {paths[0]} on {self.name}: {_last_line(stderr)}")
        *sizes, contents = stdout.split(b"\n", len(paths))
        lengths = [None if size.strip() == b"-" else int(size) if size.strip().isdigit() else -1 for size in sizes]
        if len(lengths) != len(paths) or -1 in lengths or sum(n or 0 for n in lengths) != len(contents):
            # e.g. a login shell's startup file that prints something: that would be taken for file content
            raise BackendError(
                f"reading files on {self.name} gave more or less than the files: check that the "
                "login shell's startup files print nothing for commands"
            )
        found: list[bytes | None] = []
        for length in lengths:
            found.append(None if length is None else contents[:length])
            contents = contents[length or 0 :]
        return found

    def read_text(self, path: str) -> str | None:
        data = self.read_bytes(path)
        return None if data is None else data.decode(errors="replace")

    def list_dir(self, path: str) -> list[str]:
        code, stdout, _ = self._shell('ls -A1 -- "$1" 2>/dev/null', path)
        return sorted(stdout.decode(errors="replace").split("\n")[:-1]) if code == 0 else []

    def files_below(self, path: str) -> list[tuple[str, int]]:
        code, stdout, _ = self._shell("find \"$1\" -type f -printf '%s %P\\0' 2>/dev/null", path)
        if code != 0:
            return []
        found = []
        for entry in stdout.decode(errors="replace").split("\0")[:-1]:
            size, _, name = entry.partition(" ")
            found.append((name, int(size)))
        return sorted(found)

    def symlink(self, target: str, link: str) -> None:
        code, _, stderr = self._shell('ln -s -- "$1" "$2"', target, link)
        if code != 0:
            raise BackendError(f"cannot link {link} on {self.name}: {_last_line(stderr)}")

    def _send(self, script: str, data: bytes | Path, *arguments: str):
        """Send files: the time allowed grows with the size, and a timeout here submitted nothing."""
        size = data.stat().st_size if isinstance(data, Path) else len(data)
        timeout = COMMAND_TIMEOUT + size / SLOWEST_LINK_BYTES_PER_SECOND
        try:
            return self._exchange(["sh", "-c", script, "sh", *arguments], data, timeout)
        except CommandTimeout as exc:
            raise BackendError(f"sending files to {self.name} timed out: {exc}") from None

    def extract(self, archive: bytes, destination: str) -> None:
        code, _, stderr = self._send('mkdir -p -- "$1" && tar xzf - -C "$1"', archive, destination)
        if code != 0:
            raise BackendError(f"cannot write into {destination} on {self.name}: {_last_line(stderr)}")

    def put_tree(self, source: Path, destination: str, exclude: list[str] = ()) -> None:
        """The committed tree, compressed, unless this commit is staged there already."""
        if self.exists(destination):
            return
        # unpacked beside its place and moved in whole, so a half-sent tree is never taken for a staged one
        script = (
            'set -e; b="$1.building.$2"; rm -rf "$b"; mkdir -p "$b"; tar xzf - -C "$b"; '
            'if [ -e "$1" ]; then rm -rf "$b"; else mv "$b" "$1"; fi'
        )
        with code_archive(source, list(exclude)) as archive:
            token = archive.digest[:8] + str(os.getpid())
            code, _, stderr = self._send(script, archive.path, destination, token)
        if code != 0:
            raise BackendError(f"cannot stage code into {destination} on {self.name}: {_last_line(stderr)}")
        self.trees_sent += 1


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no message"
