"""Atomic directory commits: a store (or a store element) is written under a temporary sibling name and
renamed into place last, so a crash leaves either the old version or the new one, never half of one.

A whole store is built in :func:`atomic_directory`; the elements one write adds to a committed store are
committed together by :mod:`stdask.store.commit`.
"""
from __future__ import annotations

import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .markers import check_replaceable

TMP_MARK = ".stdask-tmp-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def tmp_sibling(path: Path) -> Path:
    """A fresh temporary name next to ``path`` that records the writing process id."""
    return path.parent / f".{path.name}{TMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:12]}"


def remove_stale_tmp(path: Path) -> list[Path]:
    """Delete temporary siblings of ``path`` left by writer processes that no longer run (killed ingests)."""
    removed = []
    prefix = f".{path.name}{TMP_MARK}"
    if not path.parent.exists():
        return removed
    for p in path.parent.iterdir():
        if not p.name.startswith(prefix):
            continue
        try:
            pid = int(p.name[len(prefix):].split("-", 1)[0])
        except ValueError:
            continue
        if not _pid_alive(pid):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


def replace_dir(tmp: Path, path: Path) -> None:
    """Move the finished directory ``tmp`` to ``path``, replacing what was there.

    ``os.rename`` of a directory is atomic on POSIX file systems. When ``path`` exists it is first moved
    aside, so readers see the old directory until the instant the new one takes its name.
    """
    if path.exists():
        old = tmp_sibling(path)
        os.rename(path, old)
        os.rename(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, path)


@contextmanager
def atomic_directory(path: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory; on success it replaces ``path``, on error it is removed.

    An existing ``path`` is replaced only with ``overwrite=True`` and only when it is a stdask store or report
    folder (:func:`stdask.store.markers.check_replaceable`); anything else is refused before any work.
    """
    path = Path(path)
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True (CLI: --overwrite) to replace it")
    # only a stdask store or report folder is ever replaced (a user's folder, a file or a link never is)
    check_replaceable(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_tmp(path)
    tmp = tmp_sibling(path)
    tmp.mkdir()
    try:
        yield tmp
        check_replaceable(path)  # again: something else may have taken the name while this was built
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_dir(tmp, path)
