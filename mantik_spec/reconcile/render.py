"""Drawing a plan for people (text, Markdown for pull requests) and programs (JSON).

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

from .plan import Action, Plan

LISTED = (Action.SUBMIT, Action.RETRY, Action.REPAIR, Action.CANCEL)
ACTION_WORDS = {Action.SUBMIT: "submit", Action.RETRY: "retry", Action.REPAIR: "repair", Action.CANCEL: "cancel"}


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

    colors = {Action.SUBMIT: "green", Action.RETRY: "yellow", Action.REPAIR: "magenta", Action.CANCEL: "red"}

    def symbol(action: Action) -> str:
        return click.style(action.value, fg=colors[action], bold=True) if color else action.value

    lines = [f"Warning: {printable(w)}" for w in plan.warnings]
    changes = [e for e in plan.entries if e.action in LISTED]
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
            lines += [f"mantik will perform the following actions ({len(changes)} runs; `mantik plan -v` lists each):", ""]
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
        lines.append(
            f"  {symbol(action)} {printable(experiment)}: {len(entries)} to {ACTION_WORDS[action]}  "
            f"[{printable(backends)}]"
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
    changes = [e for e in plan.entries if e.action in LISTED]
    if changes:
        lines += ["| | action | run point | backend | reason |", "|---|---|---|---|---|"]
        for e in changes:
            lines.append(
                f"| `{e.action.value}` | {ACTION_WORDS[e.action]} | {_code(e.point_id, in_table=True)} "
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

