"""Versions of data sources and environments, the inputs of run keys besides code and parameters.

Read from files alone, never by importing dvc (``validate`` and ``plan`` stay
fast): a DVC-tracked path's version is the md5 its ``.dvc`` file or
``dvc.lock`` records (:mod:`mantik_spec.dvcfiles`); a URL's is its pinned version and/or sha256; an
Apptainer image's is its file digest (or the declared digest of a remote
image); a Python environment's is the digest of its lock or requirements file.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..dvcfiles import VersionError, dvc_md5
from ..files import write_atomically
from ..spec.model import DataSource, Environment

DIGEST_CACHE = "digests.json"
UNPINNED = "unpinned"


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
