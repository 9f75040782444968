"""'Did you mean' hints for misspelt names."""

from __future__ import annotations

import difflib


def suggest(name: str, candidates) -> str:
    close = difflib.get_close_matches(str(name), [str(c) for c in candidates], n=1)
    return f"; did you mean '{close[0]}'?" if close else ""


def unknown_name(kind: str, name: str, declared) -> str:
    hint = suggest(name, declared) or f"; declared: {', '.join(sorted(declared)) or 'none'}"
    return f"unknown {kind} '{name}'{hint}"
