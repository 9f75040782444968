"""Where a backend's commands and files live: this machine, or a login node over SSH (:mod:`.ssh`).

A backend talks to its cluster only through a host, so the same backend code
drives a scheduler it runs next to and one it reaches over a connection. A host
offers the files of :class:`.base.Host` (``makedirs``, ``exists``, ``write_text``,
``read_bytes``, ``read_text``, ``list_dir`` and ``extract``: one archive of many
small files, over a connection one exchange instead of one per file), as
FirecREST's file API does too (:class:`.firecrest.SiteFiles`), plus ``run``,
``symlink``, ``absolute`` and ``put_tree`` (a committed tree, staged whole or not
at all).
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

from ..files import write_atomically
from .base import BackendError, CommandTimeout, Host
from .staging import staged_files, unpack

COMMAND_TIMEOUT = 120.0


class ConnectionDropped(BackendError):
    """The connection to the host broke while a command was under way: whether it ran is unknown."""


@dataclass(frozen=True)
class CommandResult:
    returncode: int
    stdout: str
    stderr: str

    def error_line(self) -> str:
        lines = [line for line in self.stderr.strip().splitlines() if line.strip()]
        return lines[-1] if lines else f"exit code {self.returncode}"


def read_from(path: str, offset: int = 0) -> bytes | None:
    """A file's bytes from ``offset`` on; None when there is no such file (yet)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            return handle.read()
    except FileNotFoundError:
        return None


class LocalHost:
    """Commands and files on this machine (when mantik runs on the login node)."""

    name = "this machine"

    def __init__(self) -> None:
        self.commands_run = 0

    def stats(self) -> dict[str, int]:
        return {}  # the scheduler calls say it all: nothing is opened or sent

    def run(self, argv: list[str], timeout: float = COMMAND_TIMEOUT, secrets: dict | None = None) -> CommandResult:
        self.commands_run += 1
        environment = {**os.environ, **(secrets or {})}
        try:
            done = subprocess.run(
                argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, env=environment
            )
        except FileNotFoundError:
            raise BackendError(
                f"`{argv[0]}` is not on PATH here: run mantik where the scheduler's commands are"
            ) from None
        except subprocess.TimeoutExpired:
            raise CommandTimeout(f"`{argv[0]}` did not answer within {timeout:.0f} s") from None
        return CommandResult(done.returncode, done.stdout, done.stderr)

    def makedirs(self, path: str) -> None:
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as exc:
            raise BackendError(f"cannot create {path}: {exc.strerror}") from None

    def exists(self, path: str) -> bool:
        return os.path.lexists(path)

    def write_text(self, path: str, text: str) -> None:
        try:
            write_atomically(path, text)
        except OSError as exc:  # quota, permissions: the commonest trouble on shared filesystems
            raise BackendError(f"cannot write {path}: {exc.strerror}") from None

    def read_bytes(self, path: str, offset: int = 0) -> bytes | None:
        return read_from(path, offset)

    def read_files(self, paths: list[str]) -> list[bytes | None]:
        return [read_from(path) for path in paths]

    def read_text(self, path: str) -> str | None:
        data = self.read_bytes(path)
        return None if data is None else data.decode(errors="replace")

    def list_dir(self, path: str) -> list[str]:
        try:
            return sorted(os.listdir(path))
        except FileNotFoundError:
            return []

    def files_below(self, path: str) -> list[tuple[str, int]]:
        """Regular files only, as the login node's ``find -type f`` and FirecREST's ``ls`` entries of type ``-``
        list them: a symbolic link is neither read nor followed."""
        found = []
        for directory, _, names in os.walk(path):
            for name in names:
                full = os.path.join(directory, name)
                try:
                    info = os.lstat(full)
                except FileNotFoundError:  # removed while listed
                    continue
                if stat.S_ISREG(info.st_mode):
                    found.append((os.path.relpath(full, path), info.st_size))
        return sorted(found)

    def symlink(self, target: str, link: str) -> None:
        try:
            os.symlink(target, link)
        except OSError as exc:
            raise BackendError(f"cannot link {link}: {exc.strerror}") from None

    def absolute(self, path: str) -> str:
        return os.path.abspath(path)

    def extract(self, archive: bytes, destination: str) -> None:
        try:
            unpack(archive, Path(destination))
        except (OSError, tarfile.TarError) as exc:
            raise BackendError(f"cannot write into {destination}: {getattr(exc, 'strerror', None) or exc}") from None

    def put_tree(self, source: Path, destination: str, exclude: list[str] = ()) -> None:
        """Copy a committed tree (minus ``exclude``) to ``destination`` whole or not at all."""
        if os.path.exists(destination):
            return
        building = f"{destination}.building-{os.getpid()}"
        shutil.rmtree(building, ignore_errors=True)
        try:
            for path, relative in staged_files(source, list(exclude)):
                target = Path(building) / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                if path.is_symlink():
                    os.symlink(os.readlink(path), target)
                else:
                    shutil.copy2(path, target)
        except OSError as exc:
            shutil.rmtree(building, ignore_errors=True)
            raise BackendError(f"cannot stage code into {destination}: {exc}") from None
        try:
            os.rename(building, destination)
        except OSError:  # staged meanwhile by a parallel apply
            shutil.rmtree(building, ignore_errors=True)


class HostJournal:
    """A run's journal directory ``root`` on a host: :class:`mantik_spec.state.journal.JournalFiles`."""

    def __init__(self, host: Host, root: str):
        self.host = host
        self.root = root.rstrip("/")

    def read_bytes(self, name: str) -> bytes | None:
        return self.host.read_bytes(f"{self.root}/{name}")

    def read_together(self, names: list[str]) -> list[bytes | None]:
        return self.host.read_files([f"{self.root}/{name}" for name in names])

    def files(self, directory: str) -> list[tuple[str, int]]:
        return self.host.files_below(f"{self.root}/{directory}")
