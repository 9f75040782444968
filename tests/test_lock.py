"""The project lock heals itself without trusting host names, pids or clocks across machines: holders renew a
counter, waiters break a lock whose counter stood still for a lease measured on their own monotonic clock."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from mantik_spec.state.lock import lock_name

from .conftest import missing  # a failure under CI=true, a skip elsewhere

pytestmark = pytest.mark.e2e

LEASE = "2"  # seconds: MANTIK_LOCK_LEASE for every process of these tests

HOLDER = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    from mantik_spec.state.lock import project_lock
    from mantik_spec.state.tracking import TrackingStore

    store = TrackingStore(sys.argv[1], "demo")
    with project_lock(store, "apply", 0) as handle:
        print("holding", handle, os.getpid(), flush=True)
        deadline = time.monotonic() + 900
        while not Path(sys.argv[2]).exists() and time.monotonic() < deadline:  # held until the test says
            time.sleep(0.2)
        print("lost" if handle.lost else "kept", flush=True)
    """
)


def store_uri(project) -> str:
    return f"sqlite:///{project.path / '.mantik' / 'mlflow.db'}"


def needs_pid_namespaces() -> None:
    if os.geteuid() != 0 or not shutil.which("unshare"):
        missing("needs root and unshare for processes in another pid namespace")


def start_holder(project, release: Path, burn_pids: int = 400) -> tuple[subprocess.Popen, str, int]:
    """A lock holder in a pid namespace of its own (same host name), as in a container with host networking,
    holding the lock until ``release`` exists. Returns it, its lock id and its pid inside its namespace.

    Pids are burnt first so that its pid is one the test's namespace is unlikely to have.
    """
    needs_pid_namespaces()
    script = project.path.parent / "holder.py"
    script.write_text(HOLDER)
    process = subprocess.Popen(
        [
            "unshare",
            "--pid",
            "--fork",
            "--mount-proc",
            "sh",
            "-c",
            f'i=0; while [ $i -lt {burn_pids} ]; do /bin/true; i=$((i+1)); done; "$@"',
            "sh",
            sys.executable,
            str(script),
            store_uri(project),
            str(release),
        ],  # fmt: skip
        env={**project.env, "MANTIK_LOCK_LEASE": LEASE, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    line = process.stdout.readline()
    assert line.startswith("holding "), (line, process.stderr.read() if process.poll() is not None else "")
    return process, line.split()[1], int(line.split()[2])


def test_a_live_holder_in_another_pid_namespace_is_never_broken(project):
    project.mantik("plan")
    release = project.path.parent / "release"
    holder, lock_id, inner_pid = start_holder(project, release)
    try:
        # the premise of liveness by pid: that pid is missing here, which used to mean "dead"
        assert inner_pid > 1  # not the namespace's init: a pid the outer namespace may well lack
        waiter = project.mantik(
            "apply", "--auto-approve", "--lock-timeout", "8s", check=1, env={"MANTIK_LOCK_LEASE": LEASE}
        )
        assert f"Waiting for the project lock (ID {lock_id}" in waiter.stderr
        assert f"the project is locked (ID {lock_id}" in waiter.stderr
        assert project.runs() == []
        release.touch()
        out, err = holder.communicate(timeout=120)
        assert out.strip() == "kept", err  # it renewed throughout and nobody broke its lock
    finally:
        if holder.poll() is None:
            os.killpg(holder.pid, signal.SIGKILL)


def test_a_killed_holder_in_another_pid_namespace_is_broken_after_the_lease(project):
    project.mantik("plan")
    holder, lock_id, _ = start_holder(project, project.path.parent / "never")
    os.killpg(holder.pid, signal.SIGKILL)  # the namespace's init dies: every process in it goes
    holder.wait()
    result = project.mantik("apply", "--auto-approve", "--lock-timeout", "60s", env={"MANTIK_LOCK_LEASE": LEASE})
    assert "Apply complete: 2 run(s) started." in result.stdout
    assert len(project.runs()) == 2


def plant_lock(project, **tags: str) -> None:
    from mantik_spec.state.tracking import TrackingStore

    record = {"lock_id": "L1", "who": "ci", "host": "ci-runner-7", "pid": "1", "operation": "apply", "created": "then"}
    assert TrackingStore(store_uri(project), "demo").create_lock_record(lock_name("demo"), {**record, **tags})


def test_a_dead_holder_on_another_host_is_broken_after_the_lease(project):
    """A holder elsewhere whose pid happens to be alive here (this test's own): pids are never trusted."""
    project.mantik("plan")
    plant_lock(project, host="other-host", pid=str(os.getpid()), beat="7", renew_seconds="0.4")
    started = time.monotonic()
    result = project.mantik("apply", "--auto-approve", "--lock-timeout", "60s", env={"MANTIK_LOCK_LEASE": LEASE})
    assert "Waiting for the project lock (ID L1, held by ci@other-host" in result.stderr
    assert "Apply complete: 2 run(s) started." in result.stdout
    assert time.monotonic() - started < 60


def test_a_leftover_breaker_record_neither_blocks_nor_spins_past_the_timeout(project):
    """An apply killed while it broke a stale lock left its breaker record behind."""
    project.mantik("plan")
    plant_lock(project, beat="3", renew_seconds="0.4")
    from mantik_spec.state.tracking import TrackingStore

    TrackingStore(store_uri(project), "demo").create_lock_record(f"{lock_name('demo')}.break-L1-1", {"lock_id": "L1"})
    # a lease longer than the timeout: the waiter gives up at its timeout, saying why
    started = time.monotonic()
    stuck = project.mantik("apply", "--auto-approve", "--lock-timeout", "5s", check=1, env={"MANTIK_LOCK_LEASE": "600"})
    waited = time.monotonic() - started
    assert "the project is locked (ID L1" in stuck.stderr and "not renewed for" in stuck.stderr
    assert waited < 5 + 60  # the timeout plus starting Python and opening the store on a loaded machine
    # a short lease: the dead breaker is passed over after a lease and the lock is broken
    result = project.mantik("apply", "--auto-approve", "--lock-timeout", "5s", env={"MANTIK_LOCK_LEASE": "1"})
    assert "Apply complete: 2 run(s) started." in result.stdout
    client = project.client()
    assert [m.name for m in client.search_registered_models()] == []  # the lock and both breaker records gone


def test_a_lock_record_written_by_someone_else_is_shown_inert(project):
    """Anyone who can write to the tracking store can write a lock record: its fields never move the cursor,
    clear the screen or print a line of their own (a fake "Apply complete"), in any message that names them."""
    project.mantik("plan")
    forged = "ci\x1b[2J\r\nApply complete: 99 run(s) started.\x9b1A"
    plant_lock(project, who=forged, host="h\x07ost", lock_id="L\x1b]0;x\x07")
    waited = project.mantik("apply", "--auto-approve", "--lock-timeout", "1s", check=1)
    released = project.mantik("force-unlock", "L\x1b]0;x\x07")
    for stream in (waited.stderr, released.stdout):
        assert not set(stream) & {"\x1b", "\r", "\x07", "\x9b"}, repr(stream)
        assert "Apply complete" not in stream.splitlines()[0:1] and "\nApply complete" not in stream
        assert "ci\\x1b[2J\\r\\nApply complete: 99 run(s) started.\\x9b1A" in stream


def test_a_lock_that_is_never_renewed_needs_force_unlock(project):
    """Records without a counter (an older mantik-spec) are never broken by a guess."""
    project.mantik("plan")
    plant_lock(project)
    locked = project.mantik("apply", "--auto-approve", "--lock-timeout", "4s", check=1, env={"MANTIK_LOCK_LEASE": "1"})
    assert "never renewed" in locked.stderr and "mantik force-unlock L1" in locked.stderr
    project.mantik("force-unlock", "L1")
    project.mantik("apply", "--auto-approve")


def test_a_holder_is_dead_at_once_only_in_this_pid_namespace_and_by_pid_and_start_time():
    from mantik_spec.state.lock import LockInfo, _process_identity, _provably_dead

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    identity = _process_identity(child.pid)
    if identity is None:
        missing("no /proc here: only the renewal counter can tell")
    boot, namespace, pid, started = identity.split("/")
    assert not _provably_dead(LockInfo.from_tags({"process": identity}))  # alive
    reused = f"{boot}/{namespace}/{pid}/{int(started) - 1}"
    assert _provably_dead(LockInfo.from_tags({"process": reused}))  # the pid now belongs to another process
    child.kill()
    child.wait()
    assert _provably_dead(LockInfo.from_tags({"process": identity}))
    # the same pid in another pid namespace, or after a reboot, proves nothing here
    assert not _provably_dead(LockInfo.from_tags({"process": f"{boot}/pid:[1]/{pid}/{started}"}))
    assert not _provably_dead(LockInfo.from_tags({"process": f"another-boot/{namespace}/{pid}/{started}"}))


def test_an_apply_that_lost_its_lock_submits_nothing_more(project):
    """A holder paused past its lease finds its lock broken (LockHandle.lost): it stops before the scheduler,
    and the apply that holds the lock now submits each open intent once."""
    from mantik_spec.errors import UserError
    from mantik_spec.operations.apply import execute
    from mantik_spec.operations.project import build_plan, open_project
    from mantik_spec.state.lock import LockHandle

    opened = open_project(project.path)
    plan, observation = build_plan(opened)
    lost = LockHandle("broken-meanwhile")
    lost.lost = True
    with pytest.raises(UserError, match="lost the project lock"):
        execute(opened, plan, observation, lost)
    intents = project.runs()
    assert len(intents) == 2 and all("mantik.job_id" not in r.data.tags for r in intents)
    assert not list((project.path / ".mantik" / "local").glob("*/jobs/*")), "nothing reached the scheduler"
    project.mantik("apply", "--auto-approve", "--wait")
    finished = [r for r in project.runs() if r.info.status == "FINISHED"]
    assert sorted(r.data.params["lr"] for r in finished) == ["0.1", "0.2"]


def test_an_apply_paused_past_its_lease_submits_nothing_once_it_resumes(project):
    """SIGSTOP (a laptop lid, a GC pause, a hung NFS) between the intent records and the scheduler call, past the
    lease: another apply breaks the lock and runs every point. The paused apply, resumed, asks for the lock right
    before its scheduler call (fencing) and submits nothing, before its renewer could notice: each key runs once."""
    from .conftest import mantik_command

    project.mantik("plan")
    env = {**project.env, "MANTIK_LOCK_LEASE": LEASE, "MANTIK_TEST_PAUSE_AT": "before-submit:3"}
    paused = subprocess.Popen(
        [*mantik_command(), "apply", "--auto-approve"],
        cwd=project.path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while len(project.runs()) < 2 and time.monotonic() < deadline:  # both intent records written
            time.sleep(0.1)
        assert len(project.runs()) == 2
        os.kill(paused.pid, signal.SIGSTOP)  # inside its 3 s pause, renewer and all
        other = project.mantik(
            "apply", "--auto-approve", "--wait", "--lock-timeout", "60s", env={"MANTIK_LOCK_LEASE": LEASE}
        )
        assert "Apply complete: 2 run(s) started." in other.stdout
        os.kill(paused.pid, signal.SIGCONT)
        out, err = paused.communicate(timeout=120)
    finally:
        if paused.poll() is None:
            os.kill(paused.pid, signal.SIGCONT)
            paused.kill()
    assert paused.returncode == 1, out + err
    assert "lost the project lock" in err
    finished = [r for r in project.runs() if r.info.status == "FINISHED"]
    assert sorted(r.data.params["lr"] for r in finished) == ["0.1", "0.2"]  # each point once
    assert len(list((project.path / ".mantik" / "local").glob("*/jobs/*"))) == 2  # two jobs in all, not four


def test_the_lock_is_asked_for_right_before_the_scheduler_call(project, monkeypatch):
    """Fencing without the renewer: the lock record was replaced by another apply's (it broke this one after a
    pause) and the renewer has not looked yet; the submission asks the store itself and submits nothing."""
    from mantik_spec.errors import UserError
    from mantik_spec.operations.apply import execute
    from mantik_spec.operations.project import build_plan, open_project
    from mantik_spec.state.lock import project_lock

    monkeypatch.setenv("MANTIK_LOCK_LEASE", "3600")  # the renewer sleeps for the whole test
    opened = open_project(project.path)
    plan, observation = build_plan(opened)
    store = opened.store
    with project_lock(store, "apply", 0) as handle:
        store.delete_lock_record(lock_name("demo"))  # another apply broke it and took the lock
        assert store.create_lock_record(lock_name("demo"), {"lock_id": "theirs", "who": "ci", "beat": "0"})
        assert not handle.lost  # the renewer has not noticed
        with pytest.raises(UserError, match="lost the project lock"):
            execute(opened, plan, observation, handle)
    assert not list((project.path / ".mantik" / "local").glob("*/jobs/*")), "nothing reached the scheduler"
    assert all("mantik.job_id" not in r.data.tags for r in project.runs())
