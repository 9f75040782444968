"""The project lock, held in the tracking store for the length of an apply.

MLflow has one create-if-absent primitive on every store: registered-model
names are unique. A lock is a registered model named after the project whose
tags say who holds it. Waiting never compares clocks across machines: a lock is
broken automatically only when its holder ran on this host and its process is
gone; anything else needs ``mantik force-unlock LOCK_ID``.
"""

from __future__ import annotations

import getpass
import os
import socket
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass

from .tracking import TrackingStore

POLL_SECONDS = 0.5


class LockError(Exception):
    pass


@dataclass
class LockInfo:
    lock_id: str
    who: str
    host: str
    pid: int
    operation: str
    created: str

    @classmethod
    def from_tags(cls, tags: dict[str, str]) -> LockInfo:
        return cls(
            lock_id=tags.get("lock_id", "?"),
            who=tags.get("who", "?"),
            host=tags.get("host", "?"),
            pid=int(tags.get("pid", "0") or 0),
            operation=tags.get("operation", "?"),
            created=tags.get("created", "?"),
        )

    def describe(self) -> str:
        return f"ID {self.lock_id}, held by {self.who}@{self.host} (pid {self.pid}) for {self.operation} since {self.created}"


def lock_name(project: str) -> str:
    return f"mantik-lock.{project}"


def _holder_is_dead(info: LockInfo) -> bool:
    if info.host != socket.gethostname() or info.pid <= 0:
        return False
    try:
        os.kill(info.pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return _is_zombie(info.pid)


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:  # no /proc here (not Linux): never break a lock on a guess
        return False


@contextmanager
def project_lock(store: TrackingStore, operation: str, timeout: float, on_wait=None):
    """Hold the project lock; wait up to ``timeout`` seconds for a holder to release it."""
    name = lock_name(store.project)
    mine = {
        "lock_id": str(uuid.uuid4()),
        "who": getpass.getuser(),
        "host": socket.gethostname(),
        "pid": str(os.getpid()),
        "operation": operation,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),  # shown to people only, never compared
    }
    deadline = time.monotonic() + timeout
    announced = False
    while not store.create_lock_record(name, mine):
        tags = store.read_lock_record(name)
        if tags is None:
            continue  # released between our two calls
        holder = LockInfo.from_tags(tags)
        if _holder_is_dead(holder):
            _break_stale(store, name, holder.lock_id)
            continue
        if time.monotonic() >= deadline:
            raise LockError(
                f"the project is locked ({holder.describe()}); wait, raise --lock-timeout, "
                f"or run `mantik force-unlock {holder.lock_id}` if that apply is gone"
            )
        if on_wait and not announced:
            on_wait(holder)
            announced = True
        time.sleep(POLL_SECONDS)
    try:
        yield mine["lock_id"]
    finally:
        current = store.read_lock_record(name)
        if current is not None and current.get("lock_id") == mine["lock_id"]:
            store.delete_lock_record(name)


def _break_stale(store: TrackingStore, name: str, stale_id: str) -> None:
    """Delete a dead holder's lock so that of several waiters exactly one does it.

    Lock ids are never reused, so a waiter that wins the breaker record for
    ``stale_id`` and still finds that id on the lock cannot delete a newer lock.
    """
    breaker = f"{name}.break-{stale_id}"
    if not store.create_lock_record(breaker, {"lock_id": stale_id}):
        return
    try:
        current = store.read_lock_record(name)
        if current is not None and current.get("lock_id") == stale_id:
            store.delete_lock_record(name)
    finally:
        store.delete_lock_record(breaker)


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
