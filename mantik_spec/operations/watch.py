"""``mantik watch``: re-validate and re-plan whenever the spec, the code or the data pins change."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from ..spec.load import SPEC_FILE
from ..state.git import STATE_DIR

if TYPE_CHECKING:
    from ..reconcile.plan import Plan

IGNORED_PARTS = {".git", STATE_DIR, "__pycache__", ".dvc", ".pytest_cache"}
DEBOUNCE_MS = 400
READY_MS = 200  # how soon after it starts the watcher reports itself in place


def _relevant(project_root: Path, code_paths: list[str] | None) -> Callable[[object, str], bool]:
    """Changes to mantik.yaml, the code paths and .dvc files; never mantik's own state or git's."""
    roots = [project_root / p for p in code_paths] if code_paths else [project_root]

    def accept(_change, path: str) -> bool:
        candidate = Path(path)
        try:
            relative = candidate.relative_to(project_root)
        except ValueError:
            return False
        if IGNORED_PARTS & set(relative.parts):
            return False
        if relative.as_posix() == SPEC_FILE or candidate.suffix == ".dvc" or relative.as_posix() == "dvc.lock":
            return True
        return any(candidate == root or root in candidate.parents for root in roots)

    return accept


def changes(project_root: Path, code_paths: list[str] | None, stop_event=None) -> Iterator[set[str]]:
    """Debounced batches of changed paths, until ``stop_event`` is set or Ctrl-C. The first batch comes as
    soon as the watcher is in place, empty unless something changed already: a plan made on it misses no
    change made while it runs (a plan made before the watcher starts would miss those)."""
    import logging

    from watchfiles import watch

    logging.getLogger("watchfiles").setLevel(logging.ERROR)  # "stopping watch" on Ctrl-C: mantik says so itself
    ready = False
    for batch in watch(
        project_root,
        watch_filter=_relevant(project_root, code_paths),
        debounce=DEBOUNCE_MS,
        stop_event=stop_event,
        raise_interrupt=False,
        yield_on_timeout=True,  # an empty batch after each quiet READY_MS: the first one says "watching"
        rust_timeout=READY_MS,
    ):
        if batch or not ready:
            ready = True
            yield {path for _, path in batch}


def plan_once(root: Path, and_apply: bool, show: Callable[[Plan], None]) -> bool:
    """One plan of the project at ``root``, given to ``show``; with ``and_apply``, applied without asking when it
    has changes and the tree is clean (only committed code runs). Returns whether it was applied."""
    from .apply import apply
    from .project import build_plan, open_project

    project = open_project(root)
    result, observation = build_plan(project, cached=True)
    show(result)
    if and_apply and result.has_changes and not observation.code.dirty:
        apply(project, confirm=lambda plan: True, show=lambda plan: None)
        return True
    return False
