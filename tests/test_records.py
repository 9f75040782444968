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


@pytest.mark.parametrize("pid", ["²", "--1", "1\n", "x"])
def test_a_lock_record_with_a_pid_in_another_form_is_read(pid):
    holder = LockInfo.from_tags({"lock_id": "L1", "pid": pid, "process": f"boot/pid:[1]/{pid}/123"})
    assert holder.pid == 0
    assert _provably_dead(holder) is False  # nothing can be proven from it
