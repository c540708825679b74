"""Adding elements to a committed store: each one written aside and renamed into place.

Every element goes through the encoding registry (:mod:`stdask.store.encoding`) into a scratch group next
to the store, then takes its place in one rename (:func:`stdask.store.atomic.commit_element`), so a
reader sees the old element or the new one, never part of one.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import zarr

from .atomic import commit_element, scratch_directory
from .encoding import write_element


def check_element_name(key: str) -> None:
    """Refuse names that would leave their parent group (``a/b``) or hide (``.x``)."""
    if not key or "/" in key or key.startswith("."):
        raise ValueError(f"invalid result key {key!r}")


def write_elements(store: str | Path, elements: Iterable[tuple[str, str, Any]]) -> None:
    """Write ``(parent, key, value)`` elements into the store at ``store``, in order, each committed alone.

    Parameters
    ----------
    store
        Path of a committed store.
    elements
        ``parent`` is a group path inside the store (e.g. ``"tables/table/obsm"``, ``"images"``), ``key``
        the element's name, ``value`` anything the registry has a writer for. Names are checked before
        anything is written.
    """
    store = Path(store)
    elements = list(elements)
    for _, key, _ in elements:
        check_element_name(key)
    with scratch_directory(store) as scratch:
        sg = zarr.open_group(str(scratch), mode="w", zarr_format=3)
        for parent, key, value in elements:
            g = sg
            for part in filter(None, parent.split("/")):
                g = g.require_group(part)
            write_element(g, key, value)
            commit_element(scratch / parent / key, store / parent / key)


__all__ = ["write_elements", "check_element_name"]
