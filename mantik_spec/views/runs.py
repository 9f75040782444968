"""Runs drawn as tables: ``mantik status`` and ``mantik show``."""

from __future__ import annotations

from .output import printable


def age(seconds: float) -> str:
    """A duration as its largest whole unit: ``3d``, ``5h``, ``12m``, ``40s``."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(max(seconds, 0))}s"


def table_console():
    """A rich console that never cuts a table to 80 columns when the output is not a terminal."""
    from rich.console import Console

    console = Console()
    if not console.is_terminal:  # piped or captured: never cut a run's name to fit 80 columns
        console = Console(width=1000)
    return console


def status_table(rows):
    """One column per parameter whose value differs between the rows (what tells the points apart), so
    that at 80 columns it is the metrics that get squeezed, never the point's identity."""
    import time

    from rich.markup import escape as markup_escape
    from rich.table import Table

    from ..operations.runref import job_label
    from ..spec.experiments import format_value

    def escape(value) -> str:  # neither rich markup nor a control character in a value draws anything
        return markup_escape(printable(value))

    names = list(dict.fromkeys(name for row in rows for name in row.parameters))
    varying = [n for n in names if len({format_value(row.parameters.get(n, "")) for row in rows}) > 1]
    metric_names = sorted({name for row in rows for name in row.metrics})[:6]
    table = Table(box=None, pad_edge=False)
    show_experiment = len({row.experiment for row in rows}) > 1 or not varying
    if show_experiment:
        table.add_column("experiment", no_wrap=True)
    for column in varying or ["point"]:
        table.add_column(escape(column), no_wrap=True)
    for column in ("state", "attempt", "job", "age"):
        table.add_column(column, no_wrap=True)
    for column in metric_names:
        table.add_column(escape(column), overflow="ellipsis", no_wrap=True)
    now_ms = time.time() * 1000
    for row in rows:
        since = age((now_ms - row.started_ms) / 1000) if row.started_ms else ""
        metrics = [f"{row.metrics[m]:.4g}" if m in row.metrics else "" for m in metric_names]
        shown = [format_value(row.parameters[n]) if n in row.parameters else "" for n in varying] or [row.point_id]
        cells = [row.experiment, *shown] if show_experiment else shown
        table.add_row(
            *map(escape, cells),
            escape(row.state),
            str(row.attempt or ""),
            escape(job_label(row.job_id)[:12]),
            since,
            *metrics,
        )
    return table


def grid_table(rows):
    """``mantik show``: one row per point, its parameters against its final metrics, ``*`` on the best."""
    from rich.markup import escape as markup_escape
    from rich.table import Table

    def escape(value) -> str:
        return markup_escape(printable(value))

    parameters = sorted({name for row in rows for name in row.parameters})
    metrics = sorted({name for row in rows for name in row.metrics})
    table = Table(box=None, pad_edge=False)
    for column in ("", *parameters, "state", *metrics):
        table.add_column(escape(column))
    for row in rows:
        values = [f"{row.metrics[m]:.4g}" if m in row.metrics else "" for m in metrics]
        cells = (escape(row.parameters.get(p, "")) for p in parameters)
        table.add_row("*" if row.best else "", *cells, escape(row.state), *values)
    return table
