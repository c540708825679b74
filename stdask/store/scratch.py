"""Scratch folders inside a store: where an analysis's tasks leave results that grow with the slice (an LR run's
tested entries, a graph's row blocks) instead of returning them to the driver.

A folder is named ``<prefix><host>-<pid>-<id>``: hidden (a leading ``.``), so it is never read as part of the
store, and tied to the process that made it. Its owner removes it when nothing uses it any more; one left by a
process that was killed is removed by the next :func:`new_folder` of the same prefix on the same host. A store
this process may not write to (a shared, read-only slice) gets a folder in the system's temporary folder,
which workers on this machine reach too. Files are written under a temporary name and renamed, so a task run
twice (a killed worker's task re-run) leaves one whole file.
"""
from __future__ import annotations

import os
import shutil
import socket
import tempfile
import uuid
from pathlib import Path

import numpy as np


def host() -> str:
    """This machine's name, as folder names hold it (no ``-``)."""
    return socket.gethostname().replace("-", "_") or "host"


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale(store: str | Path, prefix: str) -> list[Path]:
    """Remove the folders ``<prefix>*`` in ``store`` made by processes of this host that no longer run; the
    folders removed. Names that are not ``<prefix><host>-<pid>-<id>`` are never touched."""
    removed = []
    for d in Path(store).glob(prefix + "*"):
        parts = d.name[len(prefix):].split("-")
        if len(parts) != 3 or parts[0] != host() or not parts[1].isdigit():
            continue
        if not _running(int(parts[1])):
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
    return removed


def new_folder(store: str | Path, prefix: str) -> Path:
    """A fresh folder ``<prefix><host>-<pid>-<id>`` inside ``store`` (stale ones of the prefix removed first), or
    in the system's temporary folder when ``store`` refuses it."""
    name = f"{prefix}{host()}-{os.getpid()}-{uuid.uuid4().hex[:12]}"
    try:
        remove_stale(store, prefix)
        d = Path(store) / name
        d.mkdir()
    except OSError:
        d = Path(tempfile.mkdtemp(prefix=name + "-"))
    return d


def save_npz(path: str | Path, **arrays: np.ndarray) -> None:
    """``numpy.savez`` (uncompressed) to ``path``, atomically: a temporary name, then a rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, path)


def save_npy(path: str | Path, a: np.ndarray) -> None:
    """``numpy.save`` to ``path``, atomically."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    with open(tmp, "wb") as f:
        np.save(f, a)
    os.replace(tmp, path)


__all__ = ["host", "remove_stale", "new_folder", "save_npz", "save_npy"]
