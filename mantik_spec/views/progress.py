"""Runs followed to their end (``apply --wait``): progress, retries and the runs that did not finish."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from ..vocab import RowState
from .output import Output, printable
from .runs import age


def state_counts(states: dict[str, RowState]) -> str:
    """How many runs are in each state: ``2 completed, 1 running``."""
    counts: dict[str, int] = {}
    for state in states.values():
        counts[state] = counts.get(state, 0) + 1
    return ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))


class LogLines:
    """Progress for a log that nobody watches live: one line when the counts change, else every few minutes."""

    QUIET_SECONDS = 300

    def __init__(self, output: Output):
        import time

        self.output = output
        self.clock = time.monotonic
        self.started = self.last_time = self.clock()
        self.last_text: str | None = None

    def __call__(self, states: dict[str, RowState]) -> None:
        text = state_counts(states)
        now = self.clock()
        if text != self.last_text or now - self.last_time >= self.QUIET_SECONDS:
            self.output.echo(f"[{age(now - self.started)}] runs: {text}")
            self.last_text, self.last_time = text, now


@contextmanager
def run_progress(output: Output, total: int) -> Iterator[Callable[[dict[str, RowState]], None]]:
    """While ``total`` runs are followed to their end, each poll's states (run id -> state) drawn: a bar on a
    terminal, a line per change in automation."""
    if output.in_automation:
        yield LogLines(output)
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("[bold]runs"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=output.console(),
        transient=False,
    ) as progress:
        task = progress.add_task("", total=total)

        def update(states):
            done = sum(1 for state in states.values() if state.ended)
            progress.update(task, completed=done, description=state_counts(states))

        yield update


def show_retry(output: Output, retried) -> None:
    """``apply --wait`` started new attempts of failed runs (``retried``: that apply's result): how many, why."""
    changes = retried.plan.changes()
    reasons = "; ".join(printable(f"{e.point_id}: {e.reason}") for e in changes[:3]) + (
        f"; and {len(changes) - 3} more" if len(changes) > 3 else ""
    )
    output.echo(f"\nRetrying {len(retried.started)} failed run(s): {reasons}")


def show_failures(output: Output, failures) -> None:
    """Each run that did not finish: its point, how it ended, the last line of its error, where to read more."""
    output.error("")
    output.error(f"{len(failures)} run(s) did not finish successfully:")
    for failure in failures:
        output.error(f"  x {printable(failure.point_id)}  {failure.state}: {printable(failure.last_line)}")
    output.error(f"Read a run's output with: mantik logs {printable(failures[0].run_id[:12])}")
