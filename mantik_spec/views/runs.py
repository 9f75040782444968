"""Runs drawn as tables: ``mantik status`` and ``mantik show``."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from .output import Output, printable


def age(seconds: float) -> str:
    """A duration as its largest whole unit: ``3d``, ``5h``, ``12m``, ``40s``."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(max(seconds, 0))}s"


def show_status(output: Output, rows, job_label: Callable[[str | None], str]) -> None:
    output.console(wide=True).print(status_table(rows, job_label))


def watch_status(output: Output, snapshots: Iterable[list], job_label: Callable[[str | None], str]) -> None:
    """``status --watch``: each list of rows drawn in place of the last, until the operation has none left."""
    from rich.live import Live

    with Live(console=output.console(), auto_refresh=False) as live:
        for rows in snapshots:
            live.update(status_table(rows, job_label), refresh=True)
    output.echo("Every declared run has ended (or was never submitted).")


def status_table(rows, job_label: Callable[[str | None], str]):
    """One column per parameter whose value differs between the rows (what tells the points apart), so
    that at 80 columns it is the metrics that get squeezed, never the point's identity. ``job_label``: a
    job id as the table shows it."""
    import time

    from rich.markup import escape as markup_escape
    from rich.table import Table

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


def show_grid(output: Output, rows, ranking, experiment: str) -> None:
    """``mantik show``: the grid, then by which metric the best point was marked, or how to name one."""
    output.console(wide=True).print(grid_table(rows))
    metrics = sorted({name for row in rows for name in row.metrics})
    if ranking.metric:
        output.echo(f"* best by {ranking.metric} ({ranking.goal}; from {ranking.source})")
    elif metrics:
        output.echo(
            f"No point marked best: name the metric with --metric NAME --goal min|max, or declare "
            f"metric: {{name: ..., goal: min|max}} on experiments.{experiment} (logged: {', '.join(metrics)})"
        )
