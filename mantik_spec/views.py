"""What the CLI draws: plans for people (text, Markdown for pull requests) and programs (JSON), the status
table, progress lines and failure lists. Plain functions of the data the operations return; the CLI only
echoes them. Each action's symbol is the Action itself and its word ``Action.label``: no table here repeats
them.

Point ids, reasons and warnings carry values from the spec and from the tracking
store (parameter values, paths, messages). A plan is what a reviewer approves, so
no value may draw something else: in text every control, bidi or invisible
formatting character is shown as an escape (a newline cannot start a fake entry,
an ANSI sequence cannot hide one), and in Markdown values are also kept out of
the markup (code spans with a long enough fence, every punctuation mark escaped
in prose, so no table is broken, no link, mention or HTML is made).
"""

from __future__ import annotations

import json
import re

from .reconcile.plan import Action, Plan

# how a terminal colours each change (the one per-action table of the views)
COLORS = {Action.SUBMIT: "green", Action.RETRY: "yellow", Action.REPAIR: "magenta", Action.CANCEL: "red"}


# C0 and C1 controls, DEL, zero-width and bidi formatting characters, line and paragraph separators, BOM
UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]")
MARKDOWN_PUNCTUATION = re.compile(r"([!-/:-@\[-`{-~])")  # every ASCII punctuation mark may be backslash-escaped


def printable(value) -> str:
    """``value`` as one line of visible characters: the invisible ones as ``\\n``, ``\\xNN`` or ``\\uNNNN``."""
    return UNPRINTABLE.sub(_escaped, str(value))


def _escaped(match: re.Match) -> str:
    character = match.group()
    named = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(character)
    if named:
        return named
    code = ord(character)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


GROUP_ABOVE = 20  # more changes than this are shown grouped, unless every run is asked for
REASONS_SHOWN = 3


def render_text(plan: Plan, color: bool = False, every_run: bool = False) -> str:
    import click

    def symbol(action: Action) -> str:
        return click.style(action.value, fg=COLORS[action], bold=True) if color else action.value

    lines = [f"Warning: {printable(w)}" for w in plan.warnings]
    changes = plan.changes()
    if changes:
        if lines:
            lines.append("")
        if every_run or len(changes) <= GROUP_ABOVE:
            lines += ["mantik will perform the following actions:", ""]
            for entry in changes:
                lines.append(
                    f"  {symbol(entry.action)} {printable(entry.point_id)}  "
                    f"[{printable(entry.backend)}, key {entry.run_key[:12]}]"
                )
                lines.append(f"      {printable(entry.reason)}")
        else:
            lines += [
                f"mantik will perform the following actions ({len(changes)} runs; `mantik plan -v` lists each):",
                "",
            ]
            lines += _grouped(changes, symbol)
    failed = [e for e in plan.entries if e.action is Action.FAILED]
    if failed:
        lines += ["", "Failed, no retries left (change the code, data or parameters, or raise retries):"]
        lines += [f"  x {printable(e.point_id)}: {printable(e.reason)}" for e in failed]
    cancelled = [e for e in plan.entries if e.action is Action.CANCELLED]
    if cancelled:
        lines += ["", "Cancelled with `mantik cancel` (apply --replace POINT runs one again):"]
        lines += [f"  / {printable(e.point_id)}" for e in cancelled]
    lines += ["", plan.summary()]
    notes = plan.notes()
    if notes:
        lines.append(f"({notes})")
    return "\n".join(lines).lstrip("\n")


def _grouped(changes, symbol) -> list[str]:
    """One block per experiment and action, its reasons counted: a 500-point plan in a screenful."""
    from collections import Counter

    groups: dict[tuple[str, Action], list] = {}
    for entry in changes:
        groups.setdefault((entry.experiment, entry.action), []).append(entry)
    lines = []
    for (experiment, action), entries in groups.items():
        backends = ", ".join(sorted({e.backend for e in entries}))
        lines.append(
            f"  {symbol(action)} {printable(experiment)}: {len(entries)} to {action.label}  [{printable(backends)}]"
        )
        reasons = Counter(e.reason for e in entries).most_common()
        for reason, count in reasons[:REASONS_SHOWN]:
            lines.append(f"      {count} × {printable(reason)}" if count > 1 else f"      {printable(reason)}")
        if len(reasons) > REASONS_SHOWN:
            rest = sum(count for _, count in reasons[REASONS_SHOWN:])
            lines.append(f"      and {rest} more with {len(reasons) - REASONS_SHOWN} other reason(s)")
    return lines


def render_markdown(plan: Plan) -> str:
    lines = ["### mantik plan", "", f"Commit `{plan.commit[:7]}`: **{plan.summary()}**", ""]
    lines += [f"> :warning: {_prose(w)}" for w in plan.warnings]
    changes = plan.changes()
    if changes:
        lines += ["| | action | run point | backend | reason |", "|---|---|---|---|---|"]
        for e in changes:
            lines.append(
                f"| `{e.action.value}` | {e.action.label} | {_code(e.point_id, in_table=True)} "
                f"| {_prose(e.backend)} | {_prose(e.reason)} |"
            )
    failed = [e for e in plan.entries if e.action is Action.FAILED]
    if failed:
        lines += ["", "<details><summary>Failed, no retries left</summary>", ""]
        lines += [f"- {_code(e.point_id)}: {_prose(e.reason)}" for e in failed]
        lines += ["", "</details>"]
    return "\n".join(lines) + "\n"


def _prose(text: str) -> str:
    """Text shown as written: no emphasis, link, mention, HTML or table cell boundary can come from it."""
    return MARKDOWN_PUNCTUATION.sub(r"\\\1", printable(text))


def _code(text: str, in_table: bool = False) -> str:
    """A code span that no backtick inside ``text`` can close early."""
    text = printable(text)
    if in_table:  # GitHub splits table cells at every unescaped |, code spans included
        text = text.replace("|", "\\|")
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    padding = " " if longest else ""  # one space each side is dropped again by the renderer
    return f"{fence}{padding}{text}{padding}{fence}"


def render_json(plan: Plan) -> str:
    return json.dumps(plan.to_json(), indent=2, ensure_ascii=False)


# runs: progress, failures, the status table ------------------------------------------------------


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

    from .operations.runref import job_label
    from .spec.experiments import format_value

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
