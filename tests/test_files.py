"""Atomic file writing: writers racing on one path never collide, readers never see part of a file."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from mantik_spec import runner
from mantik_spec.files import write_atomically


@pytest.mark.parametrize("write", [write_atomically, runner._write_atomically], ids=["package", "runner"])
def test_writers_racing_on_one_path_all_succeed_and_leave_one_whole_file(tmp_path: Path, write) -> None:
    """Several processes of mantik write the same state files (a plan, the digest cache, the scheduler's
    config, a pid file); a fixed temporary name made one writer's rename fail or publish another's half."""
    target = tmp_path / "state.json"
    contents = [f"{'x' * 4096 * (n + 1)}-{n}\n" for n in range(8)]
    failures: list[BaseException] = []
    seen: set[str] = set()

    def writer(text: str) -> None:
        try:
            for _ in range(150):
                write(str(target) if write is runner._write_atomically else target, text)
        except BaseException as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    def reader(stop: threading.Event) -> None:
        while not stop.is_set():
            if target.exists():
                seen.add(target.read_text())

    stop = threading.Event()
    watching = threading.Thread(target=reader, args=(stop,))
    watching.start()
    threads = [threading.Thread(target=writer, args=(text,)) for text in contents]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stop.set()
    watching.join()
    assert failures == []
    assert target.read_text() in contents
    assert seen <= set(contents)  # never a partial file
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]  # no temporary file left behind
