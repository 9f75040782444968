"""What the CLI draws: plans for people (text, Markdown for pull requests) and programs (JSON) in ``plan.py``,
the status and grid tables in ``runs.py``, runs followed to their end in ``progress.py``, what a command
asked of the store and the backends in ``calls.py``. Plain functions of
the data the operations return, each drawing on the one :class:`Output` it is given (``output.py``: its
streams, colour, and whether anyone watches live), every value as visible characters only. Views import
nothing of the operations: what they need (a job id's label, the states that are final) is passed in."""

from .calls import show_calls
from .output import Output, json_text, printable
from .plan import GROUP_ABOVE, show_plan, show_promoted, watch_heading
from .progress import run_progress, show_failures, show_retry
from .runs import show_grid, show_status, watch_status

__all__ = [
    "GROUP_ABOVE",
    "Output",
    "json_text",
    "printable",
    "run_progress",
    "show_calls",
    "show_failures",
    "show_grid",
    "show_plan",
    "show_promoted",
    "show_retry",
    "show_status",
    "watch_heading",
    "watch_status",
]
