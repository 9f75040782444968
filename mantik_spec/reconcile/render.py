"""Drawing a plan for people (text, Markdown for pull requests) and programs (JSON)."""

from __future__ import annotations

import json

from .plan import Action, Plan

LISTED = (Action.SUBMIT, Action.RETRY, Action.REPAIR, Action.CANCEL)
ACTION_WORDS = {Action.SUBMIT: "submit", Action.RETRY: "retry", Action.REPAIR: "repair", Action.CANCEL: "cancel"}


GROUP_ABOVE = 20  # more changes than this are shown grouped, unless every run is asked for
REASONS_SHOWN = 3


def render_text(plan: Plan, color: bool = False, every_run: bool = False) -> str:
    import click

    colors = {Action.SUBMIT: "green", Action.RETRY: "yellow", Action.REPAIR: "magenta", Action.CANCEL: "red"}

    def symbol(action: Action) -> str:
        return click.style(action.value, fg=colors[action], bold=True) if color else action.value

    lines = [f"Warning: {w}" for w in plan.warnings]
    changes = [e for e in plan.entries if e.action in LISTED]
    if changes:
        if lines:
            lines.append("")
        if every_run or len(changes) <= GROUP_ABOVE:
            lines += ["mantik will perform the following actions:", ""]
            for entry in changes:
                lines.append(f"  {symbol(entry.action)} {entry.point_id}  [{entry.backend}, key {entry.run_key[:12]}]")
                lines.append(f"      {entry.reason}")
        else:
            lines += [f"mantik will perform the following actions ({len(changes)} runs; `mantik plan -v` lists each):", ""]
            lines += _grouped(changes, symbol)
    failed = [e for e in plan.entries if e.action is Action.FAILED]
    if failed:
        lines += ["", "Failed, no retries left (change the code, data or parameters, or raise retries):"]
        lines += [f"  x {e.point_id}: {e.reason}" for e in failed]
    cancelled = [e for e in plan.entries if e.action is Action.CANCELLED]
    if cancelled:
        lines += ["", "Cancelled with `mantik cancel` (apply --replace POINT runs one again):"]
        lines += [f"  / {e.point_id}" for e in cancelled]
    lines += ["", plan.summary()]
    notes = []
    if plan.count(Action.SUSPENDED):
        notes.append(f"{plan.count(Action.SUSPENDED)} suspended")
    if failed:
        notes.append(f"{len(failed)} failed")
    if cancelled:
        notes.append(f"{len(cancelled)} cancelled")
    if notes:
        lines.append(f"({', '.join(notes)})")
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
        lines.append(f"  {symbol(action)} {experiment}: {len(entries)} to {ACTION_WORDS[action]}  [{backends}]")
        reasons = Counter(e.reason for e in entries).most_common()
        for reason, count in reasons[:REASONS_SHOWN]:
            lines.append(f"      {count} × {reason}" if count > 1 else f"      {reason}")
        if len(reasons) > REASONS_SHOWN:
            rest = sum(count for _, count in reasons[REASONS_SHOWN:])
            lines.append(f"      and {rest} more with {len(reasons) - REASONS_SHOWN} other reason(s)")
    return lines


def render_markdown(plan: Plan) -> str:
    lines = ["### mantik plan", "", f"Commit `{plan.commit[:7]}`: **{plan.summary()}**", ""]
    lines += [f"> :warning: {w}" for w in plan.warnings]
    changes = [e for e in plan.entries if e.action in LISTED]
    if changes:
        lines += ["| | action | run point | backend | reason |", "|---|---|---|---|---|"]
        for e in changes:
            lines.append(
                f"| `{e.action.value}` | {ACTION_WORDS[e.action]} | `{_cell(e.point_id)}` | {e.backend} | {_cell(e.reason)} |"
            )
    failed = [e for e in plan.entries if e.action is Action.FAILED]
    if failed:
        lines += ["", "<details><summary>Failed, no retries left</summary>", ""]
        lines += [f"- `{_cell(e.point_id)}`: {_cell(e.reason)}" for e in failed]
        lines += ["", "</details>"]
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_json(plan: Plan) -> str:
    return json.dumps(plan.to_json(), indent=2, ensure_ascii=False)


def one_line(text: str) -> str:
    """``text`` on one terminal line: control characters (newlines, escapes) shown escaped, never acted on."""
    return "".join(repr(c)[1:-1] if c.isprintable() is False and c != " " else c for c in text)
