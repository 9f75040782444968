"""Versions of data sources and environments, the inputs of run keys besides code and parameters.

Read from files alone, never by importing dvc (``validate`` and ``plan`` stay
fast): a DVC-tracked path's version is the md5 its ``.dvc`` file or
``dvc.lock`` records; a URL's is its pinned version and/or sha256; an
Apptainer image's is its file digest (or the declared digest of a remote
image); a Python environment's is the digest of its lock or requirements file.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path, PurePosixPath

import yaml

from ..errors import MantikError
from ..files import write_atomically
from ..spec.model import DataSource, Environment

DIGEST_CACHE = "digests.json"
UNPINNED = "unpinned"


class VersionError(MantikError):
    """A declared input whose version cannot be determined; the message names it."""


def dvc_md5(project_root: Path, path: str) -> str | None:
    """The version DVC recorded for ``path`` (relative to the project), or None when DVC does not track it.

    A path DVC tracks itself gives its md5. A path inside a tracked directory (``dvc add data/raw``, then
    ``data/raw/train.csv``) gives the nearest tracked parent's md5 and the path below it,
    ``<md5>.dir/train.csv``: that directory version, read at that path, is what the run used."""
    target = PurePosixPath(path.rstrip("/"))
    for parent in (target, *target.parents[:-1]):  # nearest first; "." is never a DVC output
        md5 = _recorded_md5(project_root, parent)
        if md5 is not None and (parent == target or md5.endswith(".dir")):  # only a directory has paths below it
            below = target.relative_to(parent).as_posix()
            return md5 if below == "." else f"{md5}/{below}"
    return None


def dvc_tracking_file(project_root: Path, path: str) -> str | None:
    """The committed file that pins ``path``'s version: its own or its tracked parent's ``.dvc`` file,
    or ``dvc.lock``; None when DVC does not track it (or its files do not read: :func:`dvc_md5` says why)."""
    target = PurePosixPath(path.rstrip("/"))
    try:
        for parent in (target, *target.parents[:-1]):
            if _dvc_file_md5(project_root, parent) is not None:
                return f"{parent}.dvc"
            if _lock_md5(project_root, parent) is not None:
                return "dvc.lock"
    except VersionError:
        return None
    return None


def _recorded_md5(project_root: Path, target: PurePosixPath) -> str | None:
    return _dvc_file_md5(project_root, target) or _lock_md5(project_root, target)


def _dvc_file_md5(project_root: Path, target: PurePosixPath) -> str | None:
    dvc_file = project_root / f"{target}.dvc"
    if dvc_file.is_file():
        for out in _yaml(dvc_file).get("outs") or []:
            if PurePosixPath(str(out.get("path", ""))) == PurePosixPath(target.name) and out.get("md5"):
                return str(out["md5"])
    return None


def _lock_md5(project_root: Path, target: PurePosixPath) -> str | None:
    lock = project_root / "dvc.lock"
    if lock.is_file():
        for stage in (_yaml(lock).get("stages") or {}).values():
            for out in (stage or {}).get("outs") or []:
                if PurePosixPath(str(out.get("path", ""))) == target and out.get("md5"):
                    return str(out["md5"])
    return None


def _yaml(path: Path) -> dict:
    try:
        data = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except (OSError, yaml.YAMLError) as exc:
        raise VersionError(f"{path.name}: cannot read it: {exc}") from None
    return data if isinstance(data, dict) else {}


def data_version(project_root: Path, name: str, source: DataSource) -> str:
    if source.path is not None:
        md5 = dvc_md5(project_root, source.path)
        if md5 is None:
            raise VersionError(
                f"data.{name}: {source.path} is not tracked by DVC (run `dvc add {source.path}` and commit)"
            )
        return f"md5:{md5}"
    pins = [f"version:{source.version}" if source.version else "", f"sha256:{source.sha256}" if source.sha256 else ""]
    return ",".join(p for p in pins if p) or UNPINNED


class FileDigests:
    """sha256 of files, cached by (size, mtime) in ``.mantik/digests.json``: images are gigabytes."""

    def __init__(self, state_dir: Path):
        self.path = state_dir / DIGEST_CACHE
        try:
            self.cache = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.cache = {}
        self.changed = False

    def digest(self, file: Path) -> str:
        stat = file.stat()
        key = str(file.resolve())
        stamp = [stat.st_size, stat.st_mtime_ns]
        cached = self.cache.get(key)
        if cached and cached[0] == stamp:
            return cached[1]
        hasher = hashlib.sha256()
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                hasher.update(block)
        self.cache[key] = [stamp, hasher.hexdigest()]
        self.changed = True
        return self.cache[key][1]

    def save(self) -> None:
        if self.changed:
            write_atomically(self.path, json.dumps(self.cache))


def environment_identity(project_root: Path, name: str, environment: Environment, digests: FileDigests) -> str:
    parts = []
    if environment.apptainer:
        image = Path(environment.apptainer)
        local = image if image.is_absolute() else project_root / image
        if environment.digest:
            parts.append(f"apptainer:{environment.digest}")
        elif local.is_file():
            parts.append(f"apptainer:sha256:{digests.digest(local)}")
        elif environment.image_version:  # an image on the cluster, versioned by its owner
            parts.append(f"apptainer:{environment.apptainer}@{environment.image_version}")
        else:
            raise VersionError(
                f"environments.{name}: image {environment.apptainer} is not here to hash; declare its digest "
                "(digest: sha256:...) or a version (image_version: ...)"
            )
    if environment.requirements:
        file = project_root / environment.requirements
        if not file.is_file():
            raise VersionError(f"environments.{name}: {environment.requirements} not found")
        parts.append(f"requirements:sha256:{digests.digest(file)}")
    if environment.modules:
        parts.append("modules:" + ",".join(environment.modules))
    if environment.variables:  # they can change what a run computes
        parts.append("variables:" + json.dumps(environment.variables, sort_keys=True))
    return ";".join(parts)
