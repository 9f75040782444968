"""What every view shares: a value shown as visible characters only.

Point ids, reasons and warnings carry values from the spec and from the tracking
store (parameter values, paths, messages). A plan is what a reviewer approves, so
no value may draw something else: in text every control, bidi or invisible
formatting character is shown as an escape (a newline cannot start a fake entry,
an ANSI sequence cannot hide one), and in Markdown values are also kept out of
the markup (code spans with a long enough fence, every punctuation mark escaped
in prose, so no table is broken, no link, mention or HTML is made: ``plan.py``).
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from typing import TextIO

import click


@dataclass(frozen=True)
class Output:
    """Where and how a command draws (Terraform's ``views.View``): its two streams, whether to colour, and
    whether it runs in automation (a CI log, a pipe: nobody watches it live, so nothing is redrawn)."""

    stdout: TextIO | None  # None: the process's own, as click resolves it (it re-encodes one set up as ASCII)
    stderr: TextIO | None
    color: bool
    in_automation: bool

    @classmethod
    def of_process(cls) -> Output:
        """The process's streams; colour and live drawing when stdout is a terminal."""
        terminal = sys.stdout.isatty()
        return cls(None, None, color=terminal, in_automation=not terminal)

    def echo(self, text: str = "", nl: bool = True) -> None:
        click.echo(text, file=self.stdout, nl=nl)

    def error(self, text: str) -> None:
        click.echo(text, file=self.stderr, err=True)

    def console(self, wide: bool = False):
        """A rich console on stdout; ``wide`` (for tables): one that never cuts a table to 80 columns when
        stdout is not a terminal."""
        from rich.console import Console

        console = Console(file=self.stdout)
        if wide and not console.is_terminal:  # piped or captured: never cut a run's name to fit 80 columns
            console = Console(file=self.stdout, width=1000)
        return console


# C0 and C1 controls, DEL, zero-width and bidi formatting characters, line and paragraph separators, BOM
UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]")


def printable(value) -> str:
    """``value`` as one line of visible characters: the invisible ones as ``\\n``, ``\\xNN`` or ``\\uNNNN``."""
    return UNPRINTABLE.sub(_escaped, str(value))


# what json.dumps(ensure_ascii=False) leaves as is but a terminal acts on: DEL, the C1 controls (0x9b starts
# an escape sequence like ESC [), and the invisible formatting characters of UNPRINTABLE
JSON_UNSAFE = re.compile(r"[\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]")


def json_text(data) -> str:
    """``data`` as indented JSON, readable (non-ASCII letters as they are) and inert on a terminal: every
    character a terminal would act on is a ``\\uXXXX`` escape, which any JSON reader reads back the same."""
    import json

    return JSON_UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", json.dumps(data, indent=2, ensure_ascii=False))


def _escaped(match: re.Match) -> str:
    character = match.group()
    named = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(character)
    if named:
        return named
    code = ord(character)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
