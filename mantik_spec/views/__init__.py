"""What the CLI draws: plans for people (text, Markdown for pull requests) and programs (JSON) in ``plan.py``,
the status and grid tables in ``runs.py``, progress lines and failure lists in ``progress.py``. Plain functions
of the data the operations return; the CLI only echoes them. Every value is shown as visible characters only
(``output.py``)."""

from .output import printable
from .plan import COLORS, GROUP_ABOVE, render_json, render_markdown, render_text
from .progress import failure_lines, retry_reasons, state_counts
from .runs import age, grid_table, status_table, table_console

__all__ = [
    "COLORS",
    "GROUP_ABOVE",
    "age",
    "failure_lines",
    "grid_table",
    "printable",
    "render_json",
    "render_markdown",
    "render_text",
    "retry_reasons",
    "state_counts",
    "status_table",
    "table_console",
]
