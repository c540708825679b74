"""Check a whole store: every metadata file parses, every chunk an array recorded at commit exists, and every
stored chunk decodes (its ``crc32c`` checksum matches). What ``stdask verify`` and ``stdask info --verify``
run; reads check only the chunks they touch (:mod:`stdask.store.chunks`).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import zarr
from zarr.storage import LocalStore

from .chunks import chunk_key, key_exists, recorded_grid, region, storage_grid, touched, unwritten_keys
from .format import StoreDamageError
from .reader import StoreReader
from .points import POINTS_ENCODING, check_points
from .sdata_view import SHAPES_ENCODING, check_shapes


@dataclass
class StoreVerification:
    """What :func:`verify_store` found; ``str()`` of it is the ``stdask verify`` report.

    Attributes
    ----------
    path
        The store.
    arrays, chunks
        Arrays and stored chunks (shards for sharded arrays) checked.
    unrecorded
        Arrays written without a chunk record (by a stdask that kept no such record, or by another tool): their
        stored chunks were decoded, but a deleted chunk there cannot be told from one never written.
    problems
        One line per thing wrong, each naming the file or the element and chunk.
    """

    path: str
    arrays: int = 0
    chunks: int = 0
    unrecorded: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether nothing is wrong."""
        return not self.problems

    def __str__(self) -> str:
        if self.problems:
            lines = [f"{self.path}: {p}" for p in self.problems]
            lines.append(f"{len(self.problems)} problem(s) in {self.path}: the store is damaged; restore it from a "
                         "backup or re-run the ingest / the analysis that wrote the elements named above")
            return "\n".join(lines)
        text = f"ok: {self.path}: {self.arrays} arrays, {self.chunks} chunks present and intact"
        if self.unrecorded:
            text += (f"\nnote: {len(self.unrecorded)} array(s) carry no chunk record (written by an older stdask or "
                     f"another tool), so a deleted chunk there reads as empty: {', '.join(self.unrecorded[:5])}"
                     + (", ..." if len(self.unrecorded) > 5 else "") + "; re-ingest to protect them")
        return text


def _check_array(store: LocalStore, rel: str, out: StoreVerification) -> None:
    try:
        arr = zarr.open_array(store, path=rel, mode="r")
    except Exception as e:  # noqa: BLE001 -- any failure to open is reported, the walk goes on
        out.problems.append(f"{rel}/zarr.json: not a readable zarr array ({type(e).__name__}: {e})")
        return
    out.arrays += 1
    grid = recorded_grid(arr)
    if grid is None:
        out.unrecorded.append(rel)
    elif grid != storage_grid(arr):
        out.problems.append(f"{rel}: its metadata gives a chunk grid {storage_grid(arr)}, but {grid} was written")
        return
    unwritten = unwritten_keys(arr)
    for pos in touched(arr):
        key = chunk_key(arr, pos)
        if not key_exists(arr, key):
            if grid is not None and key not in unwritten:
                out.problems.append(f"{rel}: chunk {key} is missing")
            continue
        out.chunks += 1
        try:
            arr[region(arr, pos)]
        except Exception as e:  # noqa: BLE001 -- a chunk that does not decode is damaged, whatever zarr raises
            out.problems.append(f"{rel}: chunk {key} is damaged ({type(e).__name__}: {e})")


def _metadata(path: Path, rel: str, out: StoreVerification) -> dict | None:
    """The metadata in ``rel/zarr.json``, or ``None`` (with a problem recorded) if it does not parse."""
    f = path / rel / "zarr.json"
    try:
        meta = json.loads(f.read_text())
        if not isinstance(meta, dict):
            raise ValueError(f"a JSON {type(meta).__name__}, not an object")
        return meta
    except (OSError, ValueError, AttributeError) as e:
        out.problems.append(f"{(Path(rel) / 'zarr.json').as_posix()}: not valid zarr metadata ({e})")
        return None


def _check_files(path: Path, rel: str, meta: dict, out: StoreVerification) -> None:
    """Elements kept as files rather than zarr arrays (the shapes' GeoParquet, the points' Parquet parts):
    each checks its files against what it recorded when written."""
    encoding = (meta.get("attributes") or {}).get("stdask", {})
    encoding = encoding.get("encoding") if isinstance(encoding, dict) else None
    try:
        if encoding == SHAPES_ENCODING:
            check_shapes(path, Path(rel).name)
        elif encoding == POINTS_ENCODING:
            check_points(path, Path(rel).name)
        else:
            return
        out.chunks += 1
    except StoreDamageError as e:
        out.problems.append(str(e))


def verify_store(path: str | Path) -> StoreVerification:
    """Check every element of the store at ``path``; reads each stored chunk once (memory: one chunk).

    Hidden entries (names starting with ``.``: a writer's scratch) are not part of the store and are skipped.
    """
    path = Path(path)
    out = StoreVerification(str(path))
    if not (path / "zarr.json").is_file():
        out.problems.append("no zarr.json: not a store")
        return out
    try:
        StoreReader(path)  # the commit mark, format version, table and tile index
    except Exception as e:  # noqa: BLE001 -- reported; the walk below still names damaged files
        out.problems.append(f"does not open: {e}")
    store = LocalStore(str(path), read_only=True)
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        if "zarr.json" not in filenames:
            continue
        rel = Path(dirpath).relative_to(path).as_posix()
        meta = _metadata(path, rel, out)
        if meta is not None and meta.get("node_type") == "array":
            dirnames[:] = []  # below an array are its chunks
            _check_array(store, "" if rel == "." else rel, out)
        elif meta is not None:
            _check_files(path, rel, meta, out)
    return out


__all__ = ["StoreVerification", "verify_store"]
