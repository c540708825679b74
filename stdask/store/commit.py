"""One commit for a set of elements: the new generation of a table is switched into place by one rename.

``anndata.read_zarr`` and ``spatialdata.read_zarr`` read ``tables/table/<slot>/<key>`` directly and know
nothing of stdask, so the layout they see must be a whole AnnData group at every instant. A commit therefore
replaces the whole unit (``tables/<name>``, or an element outside the tables such as ``images/<name>``):

1. each new element is written into the writer's work folder ``.<store name>.stdask/w-<id>/new`` next to the
   store (no lock held: this is where results are computed, for as long as that takes) and flushed to disk;
2. under the store lock (:func:`stdask.store.lock.store_lock`) the current unit is cloned into
   ``w-<id>/stage``: folders re-created, data files hard-linked (no data copied; stdask never writes a
   committed file in place), group metadata on the way to a new element copied; the new elements are
   renamed into the clone;
3. the clone and the live unit swap names in ONE ``renameat2(RENAME_EXCHANGE)``; the previous generation,
   now at ``w-<id>/stage``, is removed only after the swap is flushed to disk.

A crash before step 3 leaves the old unit untouched; after it, the new one. Either way no reader, stdask or
not, ever sees a mixture or a half-removed element. Where the file system cannot exchange two names (not
Linux, some network file systems) the swap is two renames after a ``switch`` journal is written; the only
state a crash can leave there (unit name absent, complete clone in a journalled work folder) is rolled
forward by the next open (:func:`settle`) or write.

Every work folder is named with its writer's owner record (``w-<pid>-<start>-<host>-<boot>-<id>``, created
in one ``mkdir``, so never without one); the next writer removes the folders of writers that no longer run
(:func:`remove_dead_work`) and leaves a live one's alone.
"""
from __future__ import annotations

import ctypes
import errno
import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterable

from .lock import meta_dir, owner_tag, read_owner, store_lock, tag_alive

WORK_PREFIX = "w-"
SWITCH = "switch.json"  # the journal of the two-rename fallback

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _renameat2():
    try:
        f = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    f.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return f


_EXCHANGE = _renameat2()


def exchange(a: Path, b: Path) -> bool:
    """Swap the names ``a`` and ``b`` atomically; ``False`` when this system or file system cannot."""
    if _EXCHANGE is None:
        return False
    if _EXCHANGE(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, f"cannot exchange {a} and {b}: {os.strerror(err)}")


def fsync_path(path: Path) -> None:
    """Flush a file's data, or a folder's entries, to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """Flush every file and folder under ``root`` (the new elements) to disk, deepest first."""
    for dirpath, _, files in os.walk(root, topdown=False):
        for f in files:
            fsync_path(Path(dirpath) / f)
        fsync_path(Path(dirpath))


def clone_tree(src: Path, dst: Path, replaced: set[str], rel: str = "") -> None:
    """Re-create ``src`` at ``dst`` with hard links to its files, leaving out the paths in ``replaced``
    (relative, ``/``-separated). The ``zarr.json`` of every folder on the way to a replaced path is copied,
    not linked, so completing the clone never writes through a link into the live unit."""
    os.mkdir(dst)
    on_path = any(r == rel or r.startswith(rel + "/") for r in replaced) if rel else bool(replaced)
    with os.scandir(src) as entries:
        for e in entries:
            child = f"{rel}/{e.name}" if rel else e.name
            if child in replaced:
                continue
            target = dst / e.name
            if e.is_symlink():
                os.symlink(os.readlink(e.path), target)
            elif e.is_dir():
                clone_tree(Path(e.path), target, replaced, child)
            elif on_path and e.name == "zarr.json":
                shutil.copy2(e.path, target)
            else:
                try:
                    os.link(e.path, target)
                except OSError:  # a file system without hard links: copy
                    shutil.copy2(e.path, target)


def unit_of(parent: str, key: str) -> str:
    """What one commit replaces for the element ``parent/key``: its table (``tables/<name>``), or the
    element itself outside the tables."""
    parts = [p for p in parent.split("/") if p]
    if parts[:1] == ["tables"] and len(parts) >= 2:
        return "/".join(parts[:2])
    return "/".join(parts + [key])


def _work_dirs(store: Path) -> list[Path]:
    meta = meta_dir(store)
    if not meta.is_dir():
        return []
    return sorted(p for p in meta.iterdir() if p.is_dir() and p.name.startswith(WORK_PREFIX))


def _alive(work: Path) -> bool:
    return tag_alive(work.name[len(WORK_PREFIX):])


def _roll_forward(store: Path, work: Path) -> bool:
    """Finish a journalled two-rename switch whose unit name is absent; ``True`` if it did."""
    journal = read_owner(work / SWITCH)
    if journal is None or not (work / "stage").is_dir():
        return False
    unit = store / journal["unit"]
    if unit.exists():
        return False
    try:
        os.rename(work / "stage", unit)
    except FileNotFoundError:  # its live writer (or another reader) finished it first
        return False
    fsync_path(unit.parent)
    return True


def settle(store: str | Path, wait_s: float = 5.0) -> None:
    """Before reading: finish a switch a killed writer left between its two renames (fallback path only).

    Called when ``tables/table`` is missing. A live writer gets ``wait_s`` seconds to finish its own switch.
    """
    store = Path(store)
    deadline = time.monotonic() + wait_s
    for work in _work_dirs(store):
        if not (work / SWITCH).exists():
            continue
        while _alive(work) and time.monotonic() < deadline:
            time.sleep(0.02)
            if not (work / SWITCH).exists():
                break
        else:
            _roll_forward(store, work)


def remove_dead_work(store: Path, keep: Path | None = None) -> list[Path]:
    """Remove the work folders of writers that no longer run (rolling a journalled switch forward first);
    a live writer's folder, and ``keep``, are left alone. Called under the store lock."""
    removed = []
    for work in _work_dirs(store):
        if work == keep:
            continue
        if _alive(work):
            continue
        _roll_forward(store, work)
        shutil.rmtree(work, ignore_errors=True)
        removed.append(work)
    return removed


def _switch(stage: Path, dst: Path, work: Path, unit: str) -> None:
    """Put the complete ``stage`` at ``dst``; the previous ``dst`` (if any) ends up inside ``work``."""
    if not dst.exists():
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.rename(stage, dst)
    elif not exchange(stage, dst):
        journal = work / SWITCH
        journal.write_text(json.dumps({"unit": unit}))
        fsync_path(journal)
        fsync_path(work)
        os.rename(dst, work / "previous")
        try:
            os.rename(stage, dst)
        except FileNotFoundError:  # a reader rolled this switch forward while this writer stalled
            if not dst.exists():
                raise
        fsync_path(dst.parent)
        journal.unlink()
    fsync_path(dst.parent)
    fsync_path(work)


def _new_work(store: Path) -> Path:
    meta = meta_dir(store)
    meta.mkdir(exist_ok=True)
    work = meta / f"{WORK_PREFIX}{owner_tag()}-{uuid.uuid4().hex[:12]}"
    work.mkdir()
    return work


def commit_elements(store: str | Path, elements: Iterable[tuple[str, str, Any]],
                    write: Callable[[Path, str, str, Any], None], lock_timeout: float | None = None) -> None:
    """Write ``(parent, key, value)`` elements and commit them together.

    Parameters
    ----------
    store
        Path of a committed store.
    elements
        ``parent``: a group path inside the store; ``key``: the element's name. All must share one unit
        (:func:`unit_of`).
    write
        ``write(root, parent, key, value)`` writes one element under the zarr group folder ``root`` (a
        mirror of the store's layout), creating the groups on the way.
    lock_timeout
        Seconds to wait for another writer's lock (default :data:`stdask.store.lock.LOCK_TIMEOUT_S`).
    """
    store = Path(store)
    elements = list(elements)
    units = {unit_of(p, k) for p, k, _ in elements}
    if len(units) != 1:
        raise ValueError(f"{store}: one commit replaces one table or one element; these elements span "
                         f"{sorted(units)}: write them in separate calls")
    (unit,) = units
    rels = {"/".join([p for p in parent.split("/") if p] + [key]) for parent, key, _ in elements}
    work = _new_work(store)
    try:
        new = work / "new"
        for parent, key, value in elements:
            write(new, parent, key, value)
        fsync_tree(new)
        with store_lock(store, lock_timeout):
            remove_dead_work(store, keep=work)
            dst = store / unit
            if unit in rels:  # the element is the unit: its new version is complete as written
                stage = new / unit
            else:
                stage = work / "stage"
                inner = {r[len(unit) + 1:] for r in rels}
                if dst.exists():
                    clone_tree(dst, stage, inner)
                else:
                    stage.mkdir()
                _move_in(new / unit, stage, inner)
                fsync_path(stage)
            _switch(stage, dst, work, unit)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _move_in(src: Path, stage: Path, inner: set[str]) -> None:
    """Rename each new element from ``src`` into the clone ``stage``, copying the group metadata of any
    group on its way that the clone does not have yet."""
    for rel in sorted(inner):
        parts = rel.split("/")
        for i in range(len(parts)):
            d = "/".join(parts[:i])
            meta = stage / d / "zarr.json"
            if not meta.exists() and (src / d / "zarr.json").exists():
                (stage / d).mkdir(parents=True, exist_ok=True)
                shutil.copy2(src / d / "zarr.json", meta)
        os.rename(src / rel, stage / rel)
        fsync_path((stage / rel).parent)


__all__ = ["commit_elements", "settle", "remove_dead_work", "unit_of", "clone_tree", "exchange"]
