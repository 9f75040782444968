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


def packaged(name: str) -> str:
    """A template shipped in ``templates/`` (installed as ``mantik_spec.templates``)."""
    from importlib.resources import files

    return files("mantik_spec.templates").joinpath(name).read_text()
