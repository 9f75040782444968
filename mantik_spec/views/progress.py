"""Runs followed to their end (``apply --wait``): progress, retries and the runs that did not finish."""

from __future__ import annotations

from .output import printable


def state_counts(states: dict[str, str]) -> str:
    """How many runs are in each state: ``2 completed, 1 running``."""
    counts: dict[str, int] = {}
    for state in states.values():
        counts[state] = counts.get(state, 0) + 1
    return ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))


def retry_reasons(plan) -> str:
    """The first few retries of ``plan`` and why, on one line."""
    return "; ".join(printable(f"{e.point_id}: {e.reason}") for e in plan.changes()[:3]) + (
        f"; and {len(plan.changes()) - 3} more" if len(plan.changes()) > 3 else ""
    )


def failure_lines(failures) -> list[str]:
    """Each run that did not finish: its point, how it ended, the last line of its error, where to read more."""
    lines = ["", f"{len(failures)} run(s) did not finish successfully:"]
    lines += [
        f"  x {printable(failure.point_id)}  {failure.state}: {printable(failure.last_line)}" for failure in failures
    ]
    return [*lines, f"Read a run's output with: mantik logs {failures[0].run_id[:12]}"]
