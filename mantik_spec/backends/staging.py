"""What a backend sends to a cluster that cannot see this machine: the committed tree (minus the
user's exclusions) and the files of a batch of runs, as deterministic archives. The tree's archive is
written to a temporary file while it is hashed (its size is the repository's); a batch's run files are
small and stay in memory."""

from __future__ import annotations

import fnmatch
import gzip
import hashlib
import io
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from ..spec.load import SPEC_FILE


def excluded(relative: str, patterns: list[str]) -> bool:
    """Mantik's ``Exclude``: ``*.ckpt`` matches a name at any depth, ``data/`` a directory, ``a/b*`` a path."""
    parts = PurePosixPath(relative).parts
    for pattern in patterns:
        if pattern.endswith("/"):
            directory = pattern.rstrip("/")
            if any(fnmatch.fnmatchcase("/".join(parts[: i + 1]), directory) for i in range(len(parts) - 1)):
                return True
            if "/" not in directory and any(fnmatch.fnmatchcase(part, directory) for part in parts[:-1]):
                return True
        elif "/" in pattern:
            if fnmatch.fnmatchcase(relative, pattern.lstrip("/")):
                return True
        elif any(fnmatch.fnmatchcase(part, pattern) for part in parts):
            return True
    return False


def staged_files(code_dir: Path, exclude: list[str]) -> Iterator[tuple[Path, str]]:
    """The files and links of the tree a job gets, sorted. Like the run key, this leaves out
    ``mantik.yaml``: a new grid point needs no new upload."""
    for path in sorted(code_dir.rglob("*")):
        relative = path.relative_to(code_dir).as_posix()
        if path.is_dir() and not path.is_symlink() or relative == SPEC_FILE or excluded(relative, exclude):
            continue
        yield path, relative


class _Hashing(io.RawIOBase):
    """A file being written that hashes and counts what passes through."""

    def __init__(self, target: BinaryIO) -> None:
        self.target, self.sha256, self.size = target, hashlib.sha256(), 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:  # type: ignore[override]
        self.sha256.update(data)
        self.size += len(data)
        return self.target.write(data)


class Archive:
    """A gzipped tar whose bytes depend only on the paths, modes and contents put in it, so equal content
    has one name (and is sent once); built in memory, or into ``into`` (a file open for writing)."""

    def __init__(self, into: BinaryIO | None = None) -> None:
        self._buffer = io.BytesIO()
        self._zipped = gzip.GzipFile(fileobj=into or self._buffer, mode="wb", mtime=0)
        self._tar = tarfile.open(fileobj=self._zipped, mode="w", format=tarfile.PAX_FORMAT)

    def _info(self, name: str, kind: bytes, mode: int) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.type, info.mode, info.mtime = kind, mode, 0
        return info

    def add_file(self, source: Path, name: str) -> None:
        info = self._tar.gettarinfo(str(source), arcname=name)
        info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
        if info.isreg():
            with open(source, "rb") as handle:
                self._tar.addfile(info, handle)
        else:
            self._tar.addfile(info)

    def add_text(self, name: str, text: str, mode: int = 0o644) -> None:
        data = text.encode()
        info = self._info(name, tarfile.REGTYPE, mode)
        info.size = len(data)
        self._tar.addfile(info, io.BytesIO(data))

    def add_link(self, name: str, target: str) -> None:
        info = self._info(name, tarfile.SYMTYPE, 0o777)
        info.linkname = target
        self._tar.addfile(info)

    def close(self) -> None:
        self._tar.close()
        self._zipped.close()

    def bytes(self) -> bytes:
        self.close()
        return self._buffer.getvalue()


@dataclass(frozen=True)
class ArchiveFile:
    """An archive on disk: ``path`` (deleted when the ``code_archive`` block ends), the sha256 of its bytes
    (hex) and its size in bytes."""

    path: Path
    digest: str
    size: int

    def chunks(self) -> Iterator[bytes]:
        return file_chunks(self.path)


def file_chunks(path: Path, size: int = 1 << 20) -> Iterator[bytes]:
    """The file's bytes in pieces of ``size``: what an upload streams."""
    with open(path, "rb") as handle:
        while chunk := handle.read(size):
            yield chunk


@contextmanager
def code_archive(code_dir: Path, exclude: list[str]) -> Iterator[ArchiveFile]:
    """The tree a job gets (see :func:`staged_files`) as a deterministic .tar.gz in a temporary file, hashed
    as it is written: memory stays the same whatever the size of the repository. Raises OSError."""
    with tempfile.TemporaryDirectory(prefix="mantik-archive-") as directory:
        path = Path(directory) / "code.tar.gz"
        with open(path, "wb") as handle:
            hashing = _Hashing(handle)
            archive = Archive(into=hashing)  # type: ignore[arg-type]
            for source, relative in staged_files(code_dir, exclude):
                archive.add_file(source, relative)
            archive.close()
        yield ArchiveFile(path, hashing.sha256.hexdigest(), hashing.size)


def unpack(data: bytes, destination: Path) -> None:
    """Unpack an archive of ours: no member may land outside ``destination``, while links (a run's
    links to its staged code, a repository's link to /p/scratch/data) are kept as they are."""
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        tar.extractall(destination, filter="tar")
