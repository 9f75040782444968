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


def span(seconds: float) -> str:
    """A duration in its two largest units: ``40s``, ``12m05s``, ``5h03m``, ``2d03h``."""
    whole = int(max(seconds, 0))
    days, hours, minutes = whole // 86400, whole % 86400 // 3600, whole % 3600 // 60
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{whole % 60:02d}s" if minutes else f"{whole}s"


def time_cells(times) -> list[str]:
    """The ``queued`` and ``ran`` cells of a run's :class:`~mantik_spec.operations.status.RunTimes` (None: empty);
    a run time still growing ends in ``+``."""
    if times is None:
        return ["", ""]
    return [span(times.queued_s), span(times.ran_s) + ("+" if times.running else "")]


TIME_HEADS = ["queued", "ran"]  # shown when a row's runner recorded when its job started (tag mantik.started)


def show_status(output: Output, rows, job_label: Callable[[str | None], str]) -> None:
    console = output.console(wide=True)
    console.print(status_table(rows, job_label, width=console.width))


def watch_status(output: Output, snapshots: Iterable[list], job_label: Callable[[str | None], str]) -> None:
    """``status --watch``: each list of rows drawn in place of the last, until the operation has none left."""
    from rich.live import Live

    console = output.console()
    with Live(console=console, auto_refresh=False) as live:
        for rows in snapshots:
            live.update(status_table(rows, job_label, width=console.width), refresh=True)
    output.echo("Every declared run has ended (or was never submitted).")


GAP = 2  # columns between two cells of a table drawn with box=None, padding (0, 1) and no edge padding


def status_table(rows, job_label: Callable[[str | None], str], width: int | None = None):
    """One column per parameter whose value differs between the rows (what tells the points apart), drawn
    whole at any ``width`` (columns of the terminal; None: no limit): to fit, the metrics are dropped from the
    right (a caption names them), never a parameter value cut, so ``C=10.0`` and ``C=100.0`` stay apart.
    ``job_label``: a job id as the table shows it."""
    import time

    from rich.markup import escape as markup_escape
    from rich.table import Table

    from ..spec.experiments import format_value

    def escape(value) -> str:  # neither rich markup nor a control character in a value draws anything
        return markup_escape(printable(value))

    names = list(dict.fromkeys(name for row in rows for name in row.parameters))
    varying = [n for n in names if len({format_value(row.parameters.get(n, "")) for row in rows}) > 1]
    show_experiment = len({row.experiment for row in rows}) > 1 or not varying
    now_ms = time.time() * 1000
    times = [row.times(now_ms) for row in rows]
    timed = any(each is not None for each in times)  # records without a job start read as before
    # every cell as shown, so the columns' widths are known before any is dropped
    heads = (["experiment"] if show_experiment else []) + [*(varying or ["point"]), "state", "attempt", "job", "age"]
    heads += TIME_HEADS if timed else []
    lines = []
    for row, spans in zip(rows, times, strict=True):
        shown = [format_value(row.parameters[n]) if n in row.parameters else "" for n in varying] or [row.point_id]
        lines.append(
            [printable(cell) for cell in ([row.experiment] if show_experiment else []) + shown]
            + [printable(row.state) + (" (unverified)" if row.unverified else "")]
            + [str(row.attempt or ""), printable(job_label(row.job_id)[:12])]
            + [age((now_ms - row.started_ms) / 1000) if row.started_ms else ""]
            + (time_cells(spans) if timed else [])
        )
    widths = [max([len(printable(head)), *(len(line[i]) for line in lines)]) for i, head in enumerate(heads)]
    metric_names = sorted({name for row in rows for name in row.metrics})
    values = {m: [f"{row.metrics[m]:.4g}" if m in row.metrics else "" for row in rows] for m in metric_names}
    used = sum(widths) + GAP * (len(widths) - 1)
    kept: list[str] = []
    for metric in metric_names:
        metric_width = max([len(printable(metric)), *(len(v) for v in values[metric])])
        if width is not None and used + GAP + metric_width > width:
            break
        kept.append(metric)
        used += GAP + metric_width
    dropped = metric_names[len(kept) :]
    # whole values need the identity columns and the state to fit; on a terminal narrower than that, every
    # column shares the squeeze rather than the state and job disappearing behind long values
    whole = width is None or used <= width
    table = Table(box=None, pad_edge=False, caption_justify="left")
    for head, column_width in zip(heads, widths, strict=True):
        table.add_column(escape(head), no_wrap=True, min_width=column_width if whole else None)
    for metric in kept:
        table.add_column(escape(metric), no_wrap=True)
    for index, line in enumerate(lines):
        table.add_row(*(markup_escape(cell) for cell in line), *(values[m][index] for m in kept))
    if dropped:
        table.caption = escape(f"not shown at this width: {', '.join(dropped)} (status --json has them)")
    return table


def grid_table(rows, over_seeds: bool = False):
    """``mantik show``: one row per point, its parameters against its final metrics, ``*`` on the best; with
    ``over_seeds``, one row per parameter set, each metric as ``mean ± sd`` and the ``n`` finite values."""
    from rich.markup import escape as markup_escape
    from rich.table import Table

    def escape(value) -> str:
        return markup_escape(printable(value))

    if over_seeds:
        return _seed_table(rows, escape)
    parameters = sorted({name for row in rows for name in row.parameters})
    metrics = sorted({name for row in rows for name in row.metrics})
    table = Table(box=None, pad_edge=False)
    registry = ["registry"] if any(row.champion for row in rows) else []  # the models' aliases on their runs
    timed = TIME_HEADS if any(row.times is not None for row in rows) else []  # records without it read as before
    for column in ("", *parameters, "state", *timed, *metrics, *registry):
        table.add_column(escape(column))
    for row in rows:
        values = [f"{row.metrics[m]:.4g}" if m in row.metrics else "" for m in metrics]
        cells = (escape(row.parameters.get(p, "")) for p in parameters)
        marks = [escape(row.champion)] if registry else []
        spans = time_cells(row.times) if timed else []
        table.add_row("*" if row.best else "", *cells, escape(row.state), *spans, *values, *marks)
    return table


def _seed_table(rows, escape: Callable[[object], str]):
    from rich.table import Table

    parameters = sorted({name for row in rows for name in row.parameters})
    metrics = sorted({name for row in rows for name in row.metrics})
    table = Table(box=None, pad_edge=False)
    for column in ("", *parameters, "state"):
        table.add_column(escape(column))
    for metric in metrics:
        table.add_column(escape(metric), justify="right")
        table.add_column("n", justify="right")
    for row in rows:
        cells = [escape(row.parameters.get(p, "")) for p in parameters]
        states = ", ".join(f"{count} {state}" for state, count in row.states.items())
        values = []
        for metric in metrics:
            found = row.metrics.get(metric)
            mean = "" if found is None or found.mean is None else f"{found.mean:.4g}"
            sd = "" if found is None or found.sd is None else f" ± {found.sd:.4g}"
            values += [mean + sd, str(found.n) if found is not None else ""]
        table.add_row("*" if row.best else "", *cells, escape(states), *values)
    return table


def show_grid(output: Output, rows, ranking, experiment: str) -> None:
    """``mantik show``: the grid, then by which metric the best point was marked, or how to name one."""
    output.console(wide=True).print(grid_table(rows, ranking.over_seeds))
    metrics = sorted({name for row in rows for name in row.metrics})
    if ranking.over_seeds and metrics:
        output.echo("mean ± sd over the n finished seeds (NaN, inf left out); --per-seed: each run")
    # metric names come from the tracking store: shown inert, as in the table
    if ranking.metric and ranking.over_seeds:
        output.echo(printable(f"* best mean of {ranking.metric} over seeds ({ranking.goal}; from {ranking.source})"))
    elif ranking.metric:
        output.echo(printable(f"* best by {ranking.metric} ({ranking.goal}; from {ranking.source})"))
    for line in ranking.champions:  # the registry's word: which run each model of the experiment serves
        output.echo(f"registry: {printable(line)}")
    if not ranking.metric and metrics:
        output.echo(
            printable(
                f"No point marked best: name the metric with --metric NAME --goal min|max, or declare "
                f"metric: {{name: ..., goal: min|max}} on experiments.{experiment} (logged: {', '.join(metrics)})"
            )
        )
