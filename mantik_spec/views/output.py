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

# C0 and C1 controls, DEL, zero-width and bidi formatting characters, line and paragraph separators, BOM
UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]")


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
