"""Adding elements to a committed store: the elements of one write are committed together.

Every element goes through the encoding registry (:mod:`stdask.store.encoding`) into the writer's work
folder; then the new generation of the table (or of the element, outside the tables) takes the place of the
old one in one atomic switch (:mod:`stdask.store.commit`), so a reader sees the old set of elements or the
new set, never a mixture and never part of one.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import zarr

from .atomic import remove_stale_tmp
from .commit import commit_elements
from .encoding import write_element


def check_element_name(key: str) -> None:
    """Refuse names that would leave their parent group (``a/b``), hide (``.x``) or name the group itself."""
    if not isinstance(key, str) or not key or "/" in key or "\\" in key or key.startswith("."):
        raise ValueError(f"invalid result key {key!r}: a key is a non-empty name without '/', '\\', or a "
                         "leading '.'")


def _write_one(root: Path, parent: str, key: str, value: Any) -> None:
    g = zarr.open_group(str(root), mode="a", zarr_format=3)
    for part in filter(None, parent.split("/")):
        g = g.require_group(part)
    write_element(g, key, value)


def write_elements(store: str | Path, elements: Iterable[tuple[str, str, Any]],
                   lock_timeout: float | None = None) -> None:
    """Write ``(parent, key, value)`` elements into the store at ``store`` as one commit.

    Parameters
    ----------
    store
        Path of a committed store.
    elements
        ``parent`` is a group path inside the store (e.g. ``"tables/table/obsm"``, ``"images"``), ``key``
        the element's name, ``value`` anything the registry has a writer for. Names are checked before
        anything is written; all elements of one call belong to one table (or are one element outside it).
    lock_timeout
        Seconds to wait while another process writes the store before failing with
        :class:`~stdask.store.lock.StoreLockedError` (default :data:`stdask.store.lock.LOCK_TIMEOUT_S`).
    """
    store = Path(store)
    elements = list(elements)
    for _, key, _ in elements:
        check_element_name(key)
    if not elements:
        return
    # scratch siblings of earlier stdask versions' killed writes (their pid no longer runs)
    remove_stale_tmp(store)
    commit_elements(store, elements, _write_one, lock_timeout)


__all__ = ["write_elements", "check_element_name"]
