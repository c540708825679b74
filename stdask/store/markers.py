"""What stdask may replace: recognising its own stores and report folders, and refusing everything else.

``--overwrite`` (and ``overwrite=True``) deletes the old path once the new one is committed, so it must never
reach a folder a user keeps other files in, a file, a symbolic link, or the very input the command reads. A
path is replaceable only when it carries a stdask marker:

* a **store**: its root ``zarr.json`` records ``attributes.stdask.encoding == "stdask-slice"`` (written by
  the store writer, :mod:`stdask.store.writer`);
* a **report folder**: it holds :data:`REPORT_MARKER`, a small JSON file the report writer puts in it.

The marker is read from the file itself (not through zarr), so a store too damaged to open is still not
mistaken for a user's folder, and nothing but a few bytes is read.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable

from .format import STORE_ENCODING

#: the file that marks a folder as a stdask report folder
REPORT_MARKER = ".stdask-report.json"
#: what a replaceable path is: "store" or "report"
KINDS = ("store", "report")
_ROOT_META = "zarr.json"
_MAX_META = 1 << 20  # a store's root zarr.json and the report marker are a few kB; larger files are not ours


class UnsafeOverwriteError(FileExistsError):
    """A path that ``overwrite`` would delete is not a stdask store or report folder, or is the input."""


def _json_in(folder: Path, name: str, max_bytes: int = _MAX_META) -> Any:
    """The parsed JSON file ``folder/name``, or ``None`` unless ``folder`` is a directory (not a link) holding it
    as a small regular file that parses."""
    doc = folder / name
    if folder.is_symlink() or not folder.is_dir() or doc.is_symlink() or not doc.is_file():
        return None
    try:
        if doc.stat().st_size > max_bytes:
            return None
        return json.loads(doc.read_bytes())
    except (OSError, ValueError):
        return None


def is_store(path: str | Path) -> bool:
    """Whether ``path`` is a directory (not a link) whose root ``zarr.json`` carries the stdask store marker."""
    doc = _json_in(Path(path), _ROOT_META)
    own = doc.get("attributes", {}).get("stdask") if isinstance(doc, dict) else None
    return isinstance(own, dict) and own.get("encoding") == STORE_ENCODING


def is_report(path: str | Path) -> bool:
    """Whether ``path`` is a directory (not a link) holding the stdask report marker file."""
    doc = _json_in(Path(path), REPORT_MARKER)
    return isinstance(doc, dict) and doc.get("stdask") == "report"


def write_report_marker(folder: str | Path, kind: str, version: str) -> Path:
    """Mark ``folder`` as a stdask report folder (``kind``: which report, e.g. ``"cci"``); returns the file."""
    marker = Path(folder) / REPORT_MARKER
    marker.write_text(json.dumps({"stdask": "report", "kind": kind, "version": version}) + "\n")
    return marker


def _what(path: Path) -> str:
    """A few words on what ``path`` is, for the refusal."""
    if path.is_symlink():
        return f"a symbolic link (to {os.readlink(path)})"
    if path.is_file():
        return "a file"
    if path.is_dir():
        try:
            entries = sorted(p.name for p in path.iterdir())
        except OSError:
            return "a folder that cannot be listed"
        if not entries:
            return "an empty folder without a stdask marker"
        shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
        return f"a folder holding {len(entries)} entr{'y' if len(entries) == 1 else 'ies'} ({shown})"
    return "not a regular file or folder"


def _overlap(target: Path, source: Path) -> str | None:
    """How ``target`` overlaps ``source`` (both resolved), or ``None``."""
    if target == source:
        return "is the input itself"
    if target in source.parents:
        return "contains the input"
    if source in target.parents:
        return "is inside the input"
    return None


def check_not_input(target: str | Path, inputs: Iterable[str | Path]) -> None:
    """Refuse a ``target`` that is an input of the same command, contains one or lies inside one.

    Paths are compared resolved (symbolic links followed, ``..`` removed), so ``./a/../mtx`` and a link to
    ``mtx`` are both seen as ``mtx``.
    """
    t = Path(target).resolve()
    for src in inputs:
        if not (Path(src).exists() or Path(src).is_symlink()):
            continue  # an in-memory source's placeholder name, or an input that is missing anyway
        s = Path(src).resolve()
        how = _overlap(t, s)
        if how is not None:
            raise UnsafeOverwriteError(f"{target}: the output {how} ({src}); write to a path outside the input")


def check_replaceable(path: str | Path, kind: str | None = None, inputs: Iterable[str | Path] = ()) -> None:
    """Raise :class:`UnsafeOverwriteError` unless ``overwrite`` may replace ``path``.

    Parameters
    ----------
    path
        The output path about to be written (it may not exist yet).
    kind
        ``"store"`` or ``"report"``: what may be replaced; ``None`` accepts either marker.
    inputs
        Paths the same command reads: the output may not be one of them, contain one or lie inside one.
    """
    if kind is not None and kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS} or None, got {kind!r}")
    path = Path(path)
    check_not_input(path, inputs)
    if not path.exists() and not path.is_symlink():
        return
    store, report = is_store(path), is_report(path)
    if (store and kind in (None, "store")) or (report and kind in (None, "report")):
        return
    wanted = {"store": "a stdask store", "report": "a stdask report folder"}.get(
        kind, "a stdask store or report folder")
    found = "a stdask store" if store else "a stdask report folder" if report else _what(path)
    raise UnsafeOverwriteError(f"{path} is {found}, not {wanted}; overwrite replaces only {wanted}. "
                               "Remove it yourself or choose another output path")


__all__ = ["REPORT_MARKER", "UnsafeOverwriteError", "check_not_input", "check_replaceable", "is_report", "is_store",
           "write_report_marker"]
