"""What DVC's own files record: the md5 a ``.dvc`` file or ``dvc.lock`` gives a path.

Read from those files alone, never by importing dvc, so that ``validate`` (the spec's on-disk check) and
``plan`` (data versions, in :mod:`mantik_spec.state.versions`) stay fast. Imports nothing of the package
but its errors, so every layer can use it.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import yaml

from .errors import MantikError


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
        for out in _outs(dvc_file, _yaml(dvc_file), ("outs",)):
            if PurePosixPath(str(out.get("path", ""))) == PurePosixPath(target.name) and out.get("md5"):
                return str(out["md5"])
    return None


def _lock_md5(project_root: Path, target: PurePosixPath) -> str | None:
    lock = project_root / "dvc.lock"
    if lock.is_file():
        data = _yaml(lock)
        stages = data.get("stages") or {}
        if not isinstance(stages, dict):
            raise _shape_error(lock, ("stages",), "stages must be a mapping of stage names")
        for name, stage in stages.items():
            if not isinstance(stage, dict | None):
                raise _shape_error(lock, ("stages", name), f"stage {name} must be a mapping")
            for out in _outs(lock, stage or {}, ("stages", name, "outs")):
                if PurePosixPath(str(out.get("path", ""))) == target and out.get("md5"):
                    return str(out["md5"])
    return None


def _outs(path: Path, holder: dict, keys: tuple) -> list[dict]:
    """The ``outs`` list at ``keys`` (its last key read from ``holder``), checked to be what DVC writes: a
    list of mappings. VersionError naming the file and line of anything else (a hand edit, a merge gone wrong,
    a file someone else wrote)."""
    outs = holder.get(keys[-1]) or []
    if not isinstance(outs, list):
        raise _shape_error(path, keys, f"{keys[-1]} must be a list of outputs (path, md5), as DVC writes it")
    for index, out in enumerate(outs):
        if not isinstance(out, dict):
            raise _shape_error(path, (*keys, index), f"{keys[-1]}[{index}] must be a mapping (path, md5)")
    return outs


def _shape_error(path: Path, keys: tuple, message: str) -> VersionError:
    """``FILE:LINE: message`` for the value at ``keys`` (mapping keys and list indexes) of the YAML file."""
    line = ""
    try:
        node = yaml.compose(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        for key in keys:
            if isinstance(node, yaml.MappingNode):
                node = next(value for name, value in node.value if name.value == str(key))
            elif isinstance(node, yaml.SequenceNode):
                node = node.value[key]
        line = f":{node.start_mark.line + 1}"
    except (OSError, yaml.YAMLError, StopIteration, IndexError, TypeError, AttributeError):
        pass  # the message without a line is still one line
    return VersionError(f"{path.name}{line}: {message}")


def _yaml(path: Path) -> dict:
    try:
        data = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except (OSError, yaml.YAMLError) as exc:
        raise VersionError(f"{path.name}: cannot read it: {exc}") from None
    return data if isinstance(data, dict) else {}
