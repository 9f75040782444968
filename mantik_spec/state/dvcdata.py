"""DVC data through dvc's own API: is a version pushed, and checking one out at a commit.

Imported only by ``reproduce`` and, through :func:`unpushed`, by what checks a
data version before it goes to a backend that cannot see this machine's DVC
cache; ``validate`` and ``plan`` read ``.dvc`` files directly.
"""

from __future__ import annotations

from pathlib import Path

from ..dvcfiles import VersionError


def _repo(root: Path):
    try:
        from dvc.repo import Repo
    except ImportError:
        raise VersionError("this needs dvc: pip install dvc") from None
    try:
        return Repo(str(root))
    except Exception as exc:  # noqa: BLE001 - dvc raises many types; all mean "not a usable DVC repo here"
        raise VersionError(f"{root} is not a usable DVC repository: {exc}") from None


def unpushed(root: Path, paths: list[str]) -> tuple[list[str], str]:
    """The paths whose current version is not in the default DVC remote, and that remote's name."""
    if not paths:
        return [], ""
    repo = _repo(root)
    try:
        remote = repo.config["core"].get("remote", "")
        if not remote:
            raise VersionError("no default DVC remote: add one (dvc remote add -d NAME URL) and dvc push")
        status = repo.status(targets=[str(root / p) for p in paths], cloud=True)  # dvc reads targets from the cwd
    except VersionError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise VersionError(f"cannot ask the DVC remote: {str(exc).splitlines()[0]}") from None
    finally:
        repo.close()
    missing = {str(Path(p).resolve().relative_to(root.resolve())) if Path(p).is_absolute() else p for p in status}
    return sorted(p for p in paths if p.rstrip("/") in missing or p in missing), remote


def remote_urls(root: Path, paths: list[str]) -> dict[str, str]:
    """Where each path's current version lives in the default DVC remote, for jobs that cannot see this machine."""
    try:
        import dvc.api
    except ImportError:
        raise VersionError("this needs dvc: pip install dvc") from None
    urls = {}
    for path in paths:
        try:
            urls[path] = dvc.api.get_url(path, repo=str(root))
        except Exception as exc:  # noqa: BLE001
            raise VersionError(f"{path}: no remote location: {str(exc).splitlines()[0]}") from None
    return urls


def checkout(worktree: Path, paths: list[str], shared_cache: Path) -> None:
    """Materialize ``paths`` at the worktree's commit, from the project's cache or else the remote."""
    repo = _repo(worktree)
    try:
        with repo.config.edit("local") as config:  # share the project's cache instead of an empty one
            config.setdefault("cache", {})["dir"] = str(shared_cache)
        repo.close()
        repo = _repo(worktree)
        targets = [str(worktree / p) for p in paths]  # dvc reads relative targets from the cwd
        try:
            repo.checkout(targets=targets)
        except Exception:  # noqa: BLE001 - missing from the cache: try the remote
            try:
                repo.pull(targets=targets)
            except Exception as exc:  # noqa: BLE001
                raise VersionError(
                    f"not in the DVC cache, and the remote does not have it either: {str(exc).splitlines()[0]}"
                ) from None
    finally:
        repo.close()
