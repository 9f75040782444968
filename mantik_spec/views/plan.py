"""Plans, drawn for people (text; Markdown for pull requests) and programs (JSON). Each action's symbol is
the Action itself and its word ``Action.label``: no table here repeats them. Every value from the spec or the
tracking store is shown with :func:`~.output.printable`, and in Markdown kept out of the markup."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from ..reconcile.plan import Action, ModelAction, Plan, PlanCost, PlannedModel, hours
from ..spec.cost import Allocation
from .output import Output, json_text, printable

# how a terminal colours each change (the one per-action table of the views)
COLORS = {Action.SUBMIT: "green", Action.RETRY: "yellow", Action.REPAIR: "magenta", Action.CANCEL: "red"}
MODEL_COLORS = {ModelAction.REGISTER: "green", ModelAction.ALIAS: "yellow"}  # and for the registry's changes


MARKDOWN_PUNCTUATION = re.compile(r"([!-/:-@\[-`{-~])")  # every ASCII punctuation mark may be backslash-escaped


GROUP_ABOVE = 20  # more changes than this are shown grouped, unless every run is asked for
REASONS_SHOWN = 3


def render_text(plan: Plan, color: bool = False, every_run: bool = False) -> str:
    import click

    def symbol(action: Action) -> str:
        return click.style(action.value, fg=COLORS[action], bold=True) if color else action.value

    lines = [f"Warning: {printable(w)}" for w in plan.warnings]
    changes = plan.changes()
    if changes or plan.model_changes():
        if lines:
            lines.append("")
    if not changes and plan.model_changes():
        lines += ["mantik will perform the following actions:", ""]
    if changes:
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
    for model in plan.model_changes():
        shown = (
            click.style(model.action.value, fg=MODEL_COLORS[model.action], bold=True) if color else model.action.value
        )
        lines += [f"  {shown} {printable(model_line(model))}", f"      {printable(model.reason)}"]
    held = [m for m in plan.models if not m.action.is_change]
    if held:
        lines += ["", "Models:"]
        lines += [f"  = {printable(model_line(m))}: {printable(m.reason)}" for m in held]
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
    lines += cost_lines(plan.cost) if plan.cost else []
    return "\n".join(lines).lstrip("\n")


def model_line(model: PlannedModel) -> str:
    """A registry action as a plan line: ``register wine <- sweep[lr=0.1] (loss 0.012)``, ``alias
    wine@champion: v1 -> v2``, ``wine@champion: v1`` (held)."""
    if model.action is ModelAction.REGISTER:
        return f"register {model.model} <- {model.point_id} ({model.metric} {model.value:.6g})"
    now = f"v{model.previous}" if model.previous else "unset"
    if model.action is ModelAction.ALIAS:
        return f"alias {model.model}@{model.alias}: {now} -> {model.target}"
    return f"{model.model}@{model.alias}: {now}"


def cost_lines(cost: PlanCost, name: Callable[[str], str] = printable) -> list[str]:
    """``Cost:`` (what the runs the plan starts cost, per backend) and ``Budget:`` (what each budget they count
    against holds); none for a plan that starts no run. ``name`` shows a backend's name (the rest is mantik's)."""
    if not cost.starts_runs:
        return []
    parts, free = [], []
    for backend, each in cost.by_backend.items():
        if not each.runs:
            continue
        if each.run.free:
            free.append(f"{name(backend)} runs free")
            continue
        runs = f"{each.runs} run{'s' if each.runs > 1 else ''}"
        if each.run.hours is None:
            parts.append(f"{name(backend)}: {runs}, unknown: {each.run.unknown}")
            continue
        part = f"{name(backend)}: {runs} x {each.run.nodes} node{'s' if each.run.nodes > 1 else ''} x "
        part += _duration(each.run.hours)
        if each.core_hours is not None:
            part += f"; core-hours {hours(each.core_hours)}"
        if each.gpu_hours is not None:
            part += f"; GPU-hours {hours(each.gpu_hours)}"
        parts.append(part)
    total = f"{hours(cost.node_hours)} node-hours"
    if cost.unknown:
        total = f"at least {total}" if cost.node_hours else "unknown"
    line = f"Cost: {total}" + (f" ({', '.join(parts)})" if parts else "") + "".join(f", {f}" for f in free)
    budgets = [
        f"{label.removeprefix('budget of ')}: {cost.used_words(used, measured)} + "
        f"{'unknown' if planned is None else hours(planned)} planned of {hours(budget)}"
        for label, used, measured, planned, budget, _ in cost.budgets()
    ]
    lines = [line] + (["Budget: " + "; ".join(budgets)] if budgets else [])
    lines += [allocation_line(name(backend), each) for backend, each in sorted(cost.allocations.items())]
    starts = [f"{name(backend)} about {printable(start)}" for backend, start in sorted(cost.starts.items())]
    return lines + (["Start: " + ", ".join(starts) + " (the scheduler's estimate)"] if starts else [])


def allocation_line(backend: str, allocation: Allocation, now: float | None = None) -> str:
    """``Allocation: cluster: 1,234 node-hours left of 10,000 (sshare, 2 min ago)``: what a site says is left,
    with who said it and how long ago (a cached answer is up to ten minutes old; the site's own figure may be
    older still: JSC's accounting is brought up to date once a day)."""
    import time

    age = max(0.0, (time.time() if now is None else now) - allocation.fetched)
    ago = "just now" if age < 60 else f"{int(age // 60)} min ago" if age < 3600 else f"{int(age // 3600)} h ago"
    granted = f" of {allocation.granted:,.0f}" if allocation.granted is not None else ""
    account = f" {printable(allocation.account)}" if allocation.account else ""
    return (
        f"Allocation: {backend}:{account} {allocation.left:,.0f} {allocation.unit} left{granted} "
        f"({allocation.source}, {ago})"
    )


def _duration(value: float) -> str:
    """A time limit in hours as people read it: 2h, 30m, 1h30m, 1d2h (to the minute)."""
    minutes = round(value * 60)
    days, rest = divmod(minutes, 24 * 60)
    hours_, minutes = divmod(rest, 60)
    text = (f"{days}d" if days else "") + (f"{hours_}h" if hours_ else "") + (f"{minutes}m" if minutes else "")
    return text or "0m"


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
    cost = cost_lines(plan.cost, name=_prose) if plan.cost else []
    lines += [*(f"{line}  " for line in cost), ""] if cost else []
    lines += [f"> :warning: {_prose(w)}" for w in plan.warnings]
    changes = plan.changes()
    if changes or plan.model_changes():
        lines += ["| | action | run point | backend | reason |", "|---|---|---|---|---|"]
        for e in changes:
            lines.append(
                f"| `{e.action.value}` | {e.action.label} | {_code(e.point_id, in_table=True)} "
                f"| {_prose(e.backend)} | {_prose(e.reason)} |"
            )
        for m in plan.model_changes():  # the registry's rows: the model line where a run's point is
            lines.append(
                f"| `{m.action.value}` | {m.action.label} | {_code(model_line(m), in_table=True)} "
                f"| model registry | {_prose(m.reason)} |"
            )
    held = [m for m in plan.models if not m.action.is_change]
    if held:
        lines += ["", "Models held:", ""]
        lines += [f"- {_code(model_line(m))}: {_prose(m.reason)}" for m in held]
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
    return json_text(plan.to_json())


def show_plan(output: Output, plan: Plan, fmt: str = "text", every_run: bool = False, saved_to=None) -> None:
    """``plan`` on stdout as ``fmt`` (text, json or markdown); in text, where it was saved (``saved_to``)."""
    if fmt == "json":
        output.echo(render_json(plan))
    elif fmt == "markdown":
        output.echo(render_markdown(plan), nl=False)
    else:
        output.echo(render_text(plan, color=output.color, every_run=every_run))
        if saved_to:
            output.echo(f"\nSaved the plan to {saved_to}. To carry it out exactly: mantik apply {saved_to}")


def watch_heading(output: Output, changed: set[str]) -> None:
    """``mantik watch`` plans again: a cleared terminal, then which files changed (none: it just started)."""
    names = ", ".join(sorted(Path(p).name for p in changed)[:3])
    reason = f"changed: {names}" if changed else "watching"
    console = output.console()
    console.clear()
    from rich.markup import escape

    console.print(f"[dim]mantik watch: {escape(printable(reason))}; Ctrl-C stops[/dim]")


def show_promoted(output: Output, done: list[str]) -> None:
    """What apply did to the model registry, one line each (nothing when it did nothing)."""
    for line in done:
        output.echo(f"Registry: {printable(line)}")
