"""The project lock, held in the tracking store for the length of an apply.

MLflow has one create-if-absent primitive on every store: registered-model
names are unique. A lock is a registered model named after the project whose
tags say who holds it. While it holds the lock, the holder renews it: a thread
increments the record's ``beat`` counter every ``renew_seconds``.

Liveness is judged from that counter, never from host names or clocks
compared across machines (containers sharing a host name see each other's pids
as missing; clocks drift). A waiter that sees the counter unchanged for a
lease, measured on its own monotonic clock, breaks the lock. One shortcut: a
holder that ran in this very pid namespace of this boot of this kernel (boot
id and namespace inode, not the host name) and whose process, identified by
pid and start time, is gone is dead at once, so a killed apply does not make
the next one on the same machine wait a lease.
The lease is ``MANTIK_LOCK_LEASE`` seconds (default 60), and never less than
five of the holder's renewal periods, which the record states.

Breaking is race-free through the same primitive: the waiter that creates the
breaker record ``<lock>.break-<lock id>-<generation>`` deletes the lock if it
still carries that lock id (ids are never reused, so a newer lock is never
deleted). A breaker killed half-way leaves its record; waiters that see the
stale lock survive a further lease move on to the next generation.

Assumption (the usual one of leases): a holder paused for longer than a lease
(a suspended laptop, a stopped process) may find its lock broken; its renewer
notices and ``LockHandle.lost`` turns true. Records written without a
counter (older versions of mantik-spec) are never broken automatically:
``mantik force-unlock LOCK_ID`` releases them.
"""

from __future__ import annotations

import getpass
import os
import re
import socket
import threading
import time
import uuid
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from ..errors import MantikError
from .tracking import TrackingError, TrackingStore

POLL_SECONDS = 0.5
DEFAULT_LEASE_SECONDS = 60.0
RENEWALS_PER_LEASE = 5


class LockError(MantikError):
    """The project lock is held by another apply (or could not be taken): the message names the holder."""


@dataclass
class LockInfo:
    lock_id: str
    who: str
    host: str
    pid: int
    operation: str
    created: str
    beat: str | None = None  # the renewal counter; None on records that are never renewed
    renew_seconds: float = 0.0
    process: str = ""  # boot id/pid namespace/pid/start time, see _process_identity

    @classmethod
    def from_tags(cls, tags: dict[str, str]) -> LockInfo:
        try:
            renew = float(tags.get("renew_seconds", "0") or 0)
        except ValueError:
            renew = 0.0
        return cls(
            lock_id=tags.get("lock_id", "?"),
            who=tags.get("who", "?"),
            host=tags.get("host", "?"),
            pid=int(pid) if re.fullmatch(r"[0-9]+", pid := str(tags.get("pid", "0"))) else 0,
            operation=tags.get("operation", "?"),
            created=tags.get("created", "?"),
            beat=tags.get("beat"),
            renew_seconds=renew,
            process=tags.get("process", ""),
        )

    def describe(self) -> str:
        return f"ID {self.lock_id}, held by {self.who}@{self.host} (pid {self.pid}) for {self.operation} since {self.created}"


def lock_name(project: str) -> str:
    return f"mantik-lock.{project}"


def _process_identity(pid: int) -> str | None:
    """``boot id/pid namespace inode/pid/start time`` of a process of this namespace, or None if unknown.

    Linux only (``/proc``); the start time tells a reused pid from the process that recorded it.
    """
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        namespace = os.readlink("/proc/self/ns/pid")
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    if fields[0] == "Z":
        return None  # a zombie has finished
    return f"{boot}/{namespace}/{pid}/{fields[19]}"


def _provably_dead(holder: LockInfo) -> bool:
    """True only if the holder ran in this pid namespace of this boot and its process is gone."""
    parts = holder.process.split("/")
    if len(parts) != 4 or not re.fullmatch(r"[0-9]+", parts[2]):
        return False
    mine = _process_identity(os.getpid())
    if mine is None or mine.split("/")[:2] != parts[:2]:
        return False  # another machine, container or boot: only the renewal counter can tell
    pid = int(parts[2])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # another user's process: it exists
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return True  # exited between the two looks
    except OSError:
        return False  # hidden from us (/proc mounted with hidepid): cannot tell
    return fields[0] == "Z" or fields[19] != parts[3]  # finished, or the pid now belongs to another process


def lease_seconds() -> float:
    """How long a waiter lets a lock go unrenewed before breaking it (``MANTIK_LOCK_LEASE``, seconds)."""
    try:
        lease = float(os.environ.get("MANTIK_LOCK_LEASE", DEFAULT_LEASE_SECONDS))
    except ValueError:
        lease = DEFAULT_LEASE_SECONDS
    return max(lease, 0.5)


class LockHandle(str):
    """The lock id (a ``str``, as before) with the renewer's view: ``lost`` is true once another process broke it."""

    lost: bool = False

    def still_held(self, store: TrackingStore) -> bool:
        """Whether the lock record is still this one, asked of the store now (a fencing check: a process paused
        past its lease resumes before its renewer notices that another apply broke the lock). Sets ``lost``."""
        if not self.lost:
            current = store.read_lock_record(lock_name(store.project))
            self.lost = current is None or current.get("lock_id") != str(self)
        return not self.lost


class _Renewer(threading.Thread):
    """Increments the lock record's counter every ``period`` seconds while the lock is ours."""

    def __init__(self, store: TrackingStore, name: str, handle: LockHandle, period: float):
        super().__init__(name="mantik-lock-renewer", daemon=True)
        self.store, self.name, self.handle, self.period = store, name, handle, period
        self.stopped = threading.Event()

    def run(self) -> None:
        beat = 0
        while not self.stopped.wait(self.period):
            try:
                current = self.store.read_lock_record(self.name)
                if current is None or current.get("lock_id") != str(self.handle):
                    self.handle.lost = True  # broken while we were paused past the lease: never renew another's lock
                    return
                beat += 1
                self.store.set_lock_tag(self.name, "beat", str(beat))
            except TrackingError:
                continue  # the store did not answer this time; the lease allows several misses


class _Watch:
    """A waiter's view of one lock record: how long (on this machine's monotonic clock) it went unrenewed."""

    def __init__(self):
        self.seen: tuple[str, str | None] | None = None
        self.since = time.monotonic()

    def unrenewed_for(self, holder: LockInfo) -> float:
        state = (holder.lock_id, holder.beat)
        if state != self.seen:
            self.seen, self.since = state, time.monotonic()
        return time.monotonic() - self.since


@contextmanager
def project_lock(store: TrackingStore, operation: str, timeout: float, on_wait=None):
    """Hold the project lock; wait up to ``timeout`` seconds for a holder to release it or to stop renewing it.

    Yields a :class:`LockHandle` (the lock id). Raises LockError when the timeout passes.
    """
    name = lock_name(store.project)
    lease = lease_seconds()
    renew = lease / RENEWALS_PER_LEASE
    handle = LockHandle(str(uuid.uuid4()))
    mine = {
        "lock_id": str(handle),
        "who": getpass.getuser(),
        "host": socket.gethostname(),  # shown to people only, never used to judge liveness
        "pid": str(os.getpid()),
        "operation": operation,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),  # shown to people only, never compared
        "beat": "0",
        "renew_seconds": f"{renew:g}",
        "process": _process_identity(os.getpid()) or "",
    }
    deadline = time.monotonic() + timeout
    watch = _Watch()
    breakers: dict[str, tuple[int, float]] = {}  # stale lock id -> (generation, first seen taken at)
    announced = False
    while not store.create_lock_record(name, mine):
        tags = store.read_lock_record(name)
        if tags is not None:
            holder = LockInfo.from_tags(tags)
            quiet = watch.unrenewed_for(holder)
            holder_lease = max(lease, RENEWALS_PER_LEASE * holder.renew_seconds)
            if (holder.beat is not None and quiet >= holder_lease) or _provably_dead(holder):
                if _break_stale(store, name, holder.lock_id, breakers, holder_lease):
                    continue
            if time.monotonic() >= deadline:
                renewal = (
                    f"not renewed for {quiet:.0f}s, lease {holder_lease:.0f}s"
                    if holder.beat is not None
                    else "a lock that is never renewed"
                )
                raise LockError(
                    f"the project is locked ({holder.describe()}; {renewal}); wait, raise --lock-timeout, "
                    f"or run `mantik force-unlock {holder.lock_id}` if that apply is gone"
                )
            if on_wait and not announced:
                on_wait(holder)
                announced = True
        elif time.monotonic() >= deadline:
            raise LockError("the project lock changed hands until --lock-timeout passed; try again")
        time.sleep(POLL_SECONDS)
    renewer = _Renewer(store, name, handle, renew)
    renewer.start()
    try:
        yield handle
    finally:
        renewer.stopped.set()
        renewer.join()
        current = store.read_lock_record(name)
        if current is not None and current.get("lock_id") == str(handle):
            store.delete_lock_record(name)


def _break_stale(
    store: TrackingStore, name: str, stale_id: str, breakers: dict[str, tuple[int, float]], lease: float
) -> bool:
    """Delete an unrenewed lock so that of several waiters exactly one does it; True if this waiter did.

    Breaker records are named per stale lock id and generation; a generation whose breaker was seen
    taken for a whole lease (its breaker died half-way) is passed over for the next one.
    """
    generation, taken_since = breakers.get(stale_id, (1, None))
    if taken_since is not None and time.monotonic() - taken_since >= lease:
        generation, taken_since = generation + 1, None
    breaker = f"{name}.break-{stale_id}-{generation}"
    if not store.create_lock_record(breaker, {"lock_id": stale_id}):
        breakers[stale_id] = (generation, taken_since if taken_since is not None else time.monotonic())
        return False
    try:
        current = store.read_lock_record(name)
        if current is not None and current.get("lock_id") == stale_id:
            store.delete_lock_record(name)
    finally:
        for earlier in range(1, generation + 1):  # the records of breakers that died half-way, and ours
            with suppress(TrackingError):
                store.delete_lock_record(f"{name}.break-{stale_id}-{earlier}")
    return True


def force_unlock(store: TrackingStore, lock_id: str) -> LockInfo:
    name = lock_name(store.project)
    tags = store.read_lock_record(name)
    if tags is None:
        raise LockError("the project is not locked")
    holder = LockInfo.from_tags(tags)
    if holder.lock_id != lock_id:
        raise LockError(f"lock ID does not match: the project is locked with {holder.describe()}")
    store.delete_lock_record(name)
    return holder
