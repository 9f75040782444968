"""Tags anyone with write access to the tracking store can write, in forms mantik never writes: read as
"unknown", never a traceback that would stop every plan, status and apply of the project."""

from __future__ import annotations

import pytest

from mantik_spec.state.lock import LockInfo, _provably_dead
from mantik_spec.state.tags import Tag, decode_run


@pytest.mark.parametrize("text", ["--3", "²", "3\n", "1e3", " 7", "-", ""])
def test_an_integer_tag_in_another_form_reads_as_unknown(text):
    tags = {Tag.RUN_KEY: "k" * 64, Tag.POINT: "sweep[lr=0.1]", Tag.SEED: text, Tag.ATTEMPT: text}
    run = decode_run(run_id="r1", experiment_id="1", status="FINISHED", tags=tags)
    assert run is not None and run.seed is None


def test_an_integer_tag_mantik_wrote_reads_back():
    tags = {Tag.RUN_KEY: "k" * 64, Tag.POINT: "sweep[lr=0.1]", Tag.SEED: "-3"}
    run = decode_run(run_id="r1", experiment_id="1", status="FINISHED", tags=tags)
    assert run is not None and run.seed == -3


@pytest.mark.parametrize("text", ["9" * 400, "-1", "100000000000000", "1.7e12", "١٧٠٠٠٠٠٠٠٠٠٠٠"])
def test_a_start_time_no_runner_writes_reads_as_none_and_status_shows_no_times(text):
    """The job's start (tag mantik.started) shown as queue wait and run time: a value no runner writes (a 400-digit
    number made the division behind the durations raise) reads as no start, never a traceback in status or show."""
    from mantik_spec.operations.status import run_times

    tags = {Tag.RUN_KEY: "k" * 64, Tag.POINT: "sweep[lr=0.1]", Tag.STARTED: text}
    run = decode_run(run_id="r1", experiment_id="1", status="RUNNING", tags=tags, start_time=1_700_000_000_000)
    assert run is not None and run.job_started is None
    assert run_times(run.start_time, run.job_started, None, 1_700_000_100_000) is None


def test_a_start_time_a_runner_wrote_reads_back():
    tags = {Tag.RUN_KEY: "k" * 64, Tag.POINT: "sweep[lr=0.1]", Tag.STARTED: "1700000050000"}
    run = decode_run(run_id="r1", experiment_id="1", status="RUNNING", tags=tags, start_time=1_700_000_000_000)
    assert run is not None and run.job_started == 1_700_000_050_000


@pytest.mark.parametrize("pid", ["²", "--1", "1\n", "x"])
def test_a_lock_record_with_a_pid_in_another_form_is_read(pid):
    holder = LockInfo.from_tags({"lock_id": "L1", "pid": pid, "process": f"boot/pid:[1]/{pid}/123"})
    assert holder.pid == 0
    assert _provably_dead(holder) is False  # nothing can be proven from it
