"""The status table at a terminal's width: every parameter value whole, metrics dropped (and named) first."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import pytest
from rich.console import Console

from mantik_spec.operations.status import StatusRow, run_times
from mantik_spec.views.runs import span, status_table
from mantik_spec.vocab import RowState


@dataclass
class Row:  # the fields of operations.status.StatusRow the table reads
    experiment: str
    point_id: str
    parameters: dict
    state: RowState = RowState.FINISHED
    attempt: int = 1
    job_id: str | None = "4711"
    started_ms: int | None = None
    metrics: dict = field(default_factory=dict)
    unverified: bool = False
    job_started_ms: int | None = None
    ended_ms: int | None = None
    times = StatusRow.times


METRICS = {"accuracy": 0.912345, "f1_macro": 0.8, "precision": 0.7, "recall_weighted": 0.6, "val_loss": 0.1}


def drawn(rows, width: int) -> list[str]:
    console = Console(width=width, record=True, color_system=None)
    console.print(status_table(rows, lambda job: job or "", width=width))
    return console.export_text().splitlines()


@pytest.mark.parametrize("width", [60, 80, 120])
def test_parameter_values_stay_whole_and_distinguishable_at_any_width(width):
    rows = [
        Row("grid", f"grid[C={c},kernel={k}]", {"C": c, "kernel": k}, metrics=METRICS)
        for c in (0.1, 10.0, 100.0)
        for k in ("rbf", "linear")
    ]
    lines = drawn(rows, width)
    assert all(len(line) <= width for line in lines)
    body = [line.split() for line in lines[1 : 1 + len(rows)]]
    assert [(cells[0], cells[1]) for cells in body] == [(str(r.parameters["C"]), r.parameters["kernel"]) for r in rows]
    shown = lines[0].split()
    missing = [m for m in METRICS if m not in shown]
    if missing:  # dropped from the right, and named
        assert missing == list(METRICS)[len(METRICS) - len(missing) :]
        words = " ".join(" ".join(lines).split())  # the caption wraps at the width
        assert "not shown at this width: " + ", ".join(missing) in words
    if width >= 120:
        assert not missing


def test_the_queue_wait_and_run_time_show_where_the_runner_recorded_its_start():
    """The run's MLflow start_time is the submission; the runner's start tag splits the time into waiting and
    running. Records without it (older runners, jobs not started) read as before: no such columns."""
    submitted = 1_700_000_000_000
    old = Row("grid", "grid[C=1]", {"C": 1}, started_ms=submitted, ended_ms=submitted + 60_000)
    assert drawn([old, Row("grid", "grid[C=2]", {"C": 2})], 120)[0].split() == ["C", "state", "attempt", "job", "age"]

    waited = Row("grid", "grid[C=2]", {"C": 2}, started_ms=submitted, job_started_ms=submitted + 754_000)
    waited.ended_ms = waited.job_started_ms + 3 * 3600_000 + 5 * 60_000
    lines = drawn([old, waited], 120)
    assert lines[0].split() == ["C", "state", "attempt", "job", "age", "queued", "ran"]
    assert len(lines[1].split()) == 5  # the old record: empty cells
    assert lines[2].split()[-2:] == ["12m34s", "3h05m"]

    now = time.time() * 1000
    running = Row("grid", "grid[C=3]", {"C": 3}, RowState.RUNNING, started_ms=int(now) - 100_000)
    running.job_started_ms = int(now) - 40_000
    # still running: so far (a second may pass between taking now here and the drawing's own)
    assert drawn([old, running], 120)[2].split()[-2:] in (["1m00s", "40s+"], ["1m00s", "41s+"])

    assert run_times(submitted, submitted - 5_000, None, submitted + 1_000).queued_s == 0  # a node's clock behind
    assert [span(s) for s in (0, 59, 61, 3600, 90061)] == ["0s", "59s", "1m01s", "1h00m", "1d01h"]


def test_json_for_a_terminal_reads_back_the_same_and_draws_nothing():
    """`plan --json` and `explain` keep letters readable but escape what a terminal acts on (ESC, the C1 CSI,
    bidi overrides, DEL), which json.dumps(ensure_ascii=False) passes through as is."""
    import json

    from mantik_spec.views import json_text

    value = {"reason": "param x changed (ä → \x9b2J\u202e\x1b[31m\x7f)", "point": "sweep[tag=é]"}
    text = json_text(value)
    assert json.loads(text) == value
    assert not set(text) & {"\x9b", "\u202e", "\x1b", "\x7f"}
    assert "é" in text and "ä" in text
