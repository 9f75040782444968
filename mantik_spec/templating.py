"""Jinja2 for every file mantik writes from a template: sandboxed, undefined names are errors.

User-provided templates (a Slurm batch script) and packaged ones (init, CI) go
through the same environment; ``quote`` shell-quotes a value.
"""

from __future__ import annotations

import shlex


def render(template_text: str, values: dict) -> str:
    from jinja2 import StrictUndefined
    from jinja2.sandbox import SandboxedEnvironment

    environment = SandboxedEnvironment(undefined=StrictUndefined, keep_trailing_newline=True, autoescape=False)
    environment.filters["quote"] = lambda value: shlex.quote(str(value))
    return environment.from_string(template_text).render(**values)


def quote_path(path: str) -> str:
    """``path`` as one shell word naming it: quoted, but a leading ``~/`` stays the home directory of the
    shell that reads it (quotes would keep ``~`` literal)."""
    if path.startswith("~/"):
        return f'"$HOME"/{shlex.quote(path[2:])}'
    return shlex.quote(path)


def packaged(name: str) -> str:
    """A template shipped in ``templates/``: installed as ``mantik_spec/templates/``, or beside the package in
    the source checkout the running code comes from (never another checkout's, as an editable install's
    import mapping would give when the code runs from a second worktree)."""
    from pathlib import Path

    package = Path(__file__).resolve().parent
    installed = package / "templates" / name
    return (installed if installed.is_file() else package.parent / "templates" / name).read_text()
