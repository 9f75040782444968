"""What a command asked of the tracking store and the backends (``mantik -v``; the bench reads the same counts)."""

from __future__ import annotations

from collections.abc import Mapping

from .output import Output


def show_calls(output: Output, store, backends: Mapping) -> None:
    """The tracking store's calls (and, after an apply, per recorded run), then each backend's scheduler calls
    by kind and its :meth:`~mantik_spec.backends.base.Backend.stats`, one line each, on stderr."""
    output.error(f"tracking store calls: {store.calls}")
    if store.recorded_runs:
        per_run = store.recording_calls / store.recorded_runs
        output.error(f"recording {store.recorded_runs} started run(s): {per_run:.1f} calls per run")
    for name, backend in backends.items():
        if backend.calls:
            counts = ", ".join(f"{count} {command}" for command, count in sorted(backend.calls.items()))
            output.error(f"backend {name} scheduler calls: {counts}")
        if stats := backend.stats():
            output.error(f"backend {name}: " + ", ".join(f"{count} {what}" for what, count in stats.items()))
