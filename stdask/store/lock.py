"""Who writes a store: owner records and the store-level writer lock.

A writer records itself (pid, host, boot id, process start time) in the name of its work folder
(:func:`owner_tag`), so that a later writer can tell whether the leftovers it finds belong to a process that
still runs. The store lock is an advisory ``fcntl.flock`` on ``.<store name>.stdask/lock`` next to the store:
the kernel releases it when its holder dies, so a killed writer never leaves the store locked; the holder
writes its owner record into the lock file so that a writer that gives up can say who holds it.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

#: suffix of the store's private sibling folder ``.<store name>.stdask`` (lock, writers' work folders)
META_SUFFIX = ".stdask"
#: how long a writer waits for the store lock by default, in seconds
LOCK_TIMEOUT_S = 120.0


def meta_dir(store: str | Path) -> Path:
    """The store's private folder, next to it (same file system, so its contents rename into the store
    atomically; outside it, so zarr, anndata and spatialdata never see it)."""
    store = Path(store)
    return store.parent / f".{store.name}{META_SUFFIX}"


class StoreLockedError(TimeoutError):
    """Another writer held the store lock for longer than the caller would wait."""


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), to tell a reused pid from its owner."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) is in parentheses and may hold spaces: split after its closing one
    return stat.rsplit(")", 1)[1].split()[19]


def owner_record(pid: int | None = None) -> dict:
    """This process's (or ``pid``'s, on this machine) owner record."""
    pid = os.getpid() if pid is None else int(pid)
    return {"pid": pid, "host": socket.gethostname(), "boot_id": _boot_id(), "start": _start_time(pid)}


def owner_alive(rec: dict) -> bool:
    """Whether the process an owner record names may still run.

    On this machine and boot: its pid exists and (where Linux tells) started when the record says. A record
    from an earlier boot is dead. A record from another host cannot be checked and counts as alive, so a
    shared store's leftovers are never removed under a writer on another machine.
    """
    if rec.get("host") != socket.gethostname():
        return True
    if rec.get("boot_id") != _boot_id():
        return False
    pid = int(rec.get("pid", -1))
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    start = rec.get("start")
    return start is None or _start_time(pid) in (None, start)


def _h(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:8]


def owner_tag(rec: dict | None = None) -> str:
    """An owner record as a file-name part, ``<pid>-<start>-<host hash>-<boot hash>``: a folder named with it
    is created with its owner in one ``mkdir``, so no crash can leave it without one."""
    rec = owner_record() if rec is None else rec
    return f"{int(rec['pid'])}-{rec.get('start') or 0}-{_h(rec.get('host', ''))}-{_h(rec.get('boot_id', ''))}"


def tag_alive(tag: str) -> bool:
    """:func:`owner_alive` for an :func:`owner_tag` (an unreadable tag counts as alive: left alone)."""
    try:
        pid, start, host, boot = tag.split("-")[:4]
    except ValueError:
        return True
    if host != _h(socket.gethostname()):
        return True
    return owner_alive({"pid": int(pid), "host": socket.gethostname(), "start": None if start == "0" else start,
                        "boot_id": _boot_id() if boot == _h(_boot_id()) else "another boot"})


def read_owner(path: Path) -> dict | None:
    """The owner record in ``path``, or ``None`` when it is missing or unreadable."""
    try:
        rec = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) else None


@contextmanager
def store_lock(store: str | Path, timeout: float | None = None) -> Iterator[None]:
    """Hold the store's writer lock; wait up to ``timeout`` seconds (default :data:`LOCK_TIMEOUT_S`) for it.

    Raises
    ------
    StoreLockedError
        The lock stayed held; the message names the store and the holder's pid and host.
    """
    store = Path(store)
    timeout = LOCK_TIMEOUT_S if timeout is None else float(timeout)
    meta = meta_dir(store)
    meta.mkdir(exist_ok=True)
    fd = os.open(meta / "lock", os.O_RDWR | os.O_CREAT, 0o666)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = read_owner(meta / "lock") or {}
                    raise StoreLockedError(
                        f"{store}: another process is writing this store (pid {holder.get('pid', '?')} on "
                        f"{holder.get('host', '?')}, holding {meta / 'lock'}); waited {timeout:g} s. Let it "
                        "finish and write again, or pass a longer lock_timeout") from None
                time.sleep(0.02)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(owner_record()).encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


__all__ = ["META_SUFFIX", "meta_dir", "LOCK_TIMEOUT_S", "StoreLockedError", "owner_record", "owner_alive",
           "owner_tag", "tag_alive", "read_owner", "store_lock"]
