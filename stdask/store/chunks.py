"""What each array wrote, and reads that refuse missing or damaged chunks instead of returning zeros.

zarr fills a chunk that is absent with the array's fill value, so a deleted chunk file reads as zeros, and
it cannot tell a deleted chunk from one it never wrote. stdask therefore

* writes every chunk, empty or not (``write_empty_chunks``), so that every key of an array's storage grid
  exists once written;
* records that grid on the array at commit (the attribute ``stdask-chunks``: ``{"grid": [n0, n1, ...]}``,
  storage chunks (shards for sharded arrays) per axis, plus ``"unwritten": [keys]`` for the few keys of
  arrays never filled, such as anndata's null scalars): each other key of the grid must exist;
* puts zarr v3's ``crc32c`` codec last in each array's byte codecs (inside the sharding codec's inner chain
  for sharded arrays, whose shard index carries its own ``crc32c``), so a damaged chunk fails to decode.

Reads check only the keys their range touches (a tile read: one or two shards per array), never list the
store. An array without the record (written by a stdask before it kept one) is read as before.
"""
from __future__ import annotations

import contextlib
import itertools
import math
import os
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import zarr
from zarr.codecs import Crc32cCodec, ZstdCodec
from zarr.core.sync import sync

from .format import StoreDamageError

#: array attribute recording the storage grid written at commit
CHUNKS_ATTR = "stdask-chunks"
#: options for every array stdask creates itself: each chunk written, each chunk checksummed
WRITE_CONFIG = {"write_empty_chunks": True}
#: ``dataset_kwargs`` for anndata's element writers: zarr's default compressor, then the checksum
ANNDATA_KWARGS = {"compressors": (ZstdCodec(), Crc32cCodec())}


def checksummed(*compressors) -> list:
    """The byte codecs ``compressors`` followed by ``crc32c`` (checked first when decoding)."""
    return [*compressors, Crc32cCodec()]


@contextlib.contextmanager
def writing_every_chunk() -> Iterator[None]:
    """Arrays created inside (by anndata's writers) write chunks that hold only the fill value too."""
    with zarr.config.set({"array.write_empty_chunks": True}):
        yield


def storage_shape(arr: zarr.Array) -> tuple[int, ...]:
    """The extent of one storage object (a shard if the array is sharded, else a chunk)."""
    return tuple(arr.shards or arr.chunks)


def storage_grid(arr: zarr.Array) -> list[int]:
    """Storage objects per axis."""
    return [math.ceil(n / c) for n, c in zip(arr.shape, storage_shape(arr))]


def arrays_of(node) -> Iterator[zarr.Array]:
    """``node`` itself if it is an array, else every array at any depth under the group ``node``."""
    if isinstance(node, zarr.Array):
        yield node
        return
    for _, member in node.members(max_depth=None):
        if isinstance(member, zarr.Array):
            yield member


def record_chunks(node) -> None:
    """Record on every array at or under ``node`` the storage grid it was written with and the keys of that
    grid it did not write (call when the element is complete: after this, each other key must exist)."""
    for arr in arrays_of(node):
        unwritten = [k for k in (chunk_key(arr, pos) for pos in touched(arr)) if not key_exists(arr, k)]
        arr.attrs.update({CHUNKS_ATTR: {"grid": storage_grid(arr), **({"unwritten": unwritten} if unwritten else {})}})


def recorded_grid(arr: zarr.Array) -> list[int] | None:
    """The grid recorded at commit, or ``None`` for an array written without a record."""
    rec = arr.attrs.get(CHUNKS_ATTR)
    return list(rec["grid"]) if isinstance(rec, dict) and "grid" in rec else None


def unwritten_keys(arr: zarr.Array) -> frozenset[str]:
    """Keys of the recorded grid that were not written at commit (read as the fill value by right)."""
    rec = arr.attrs.get(CHUNKS_ATTR)
    return frozenset(rec.get("unwritten", ())) if isinstance(rec, dict) else frozenset()


def chunk_key(arr: zarr.Array, coords: tuple[int, ...]) -> str:
    """The store key (relative to the array) of the storage object at grid position ``coords``."""
    return arr.metadata.chunk_key_encoding.encode_chunk_key(tuple(coords))


def key_exists(arr: zarr.Array, key: str) -> bool:
    """Whether the array's chunk ``key`` is in the store (a file test for a local store)."""
    store, path = arr.store_path.store, arr.store_path.path
    full = f"{path}/{key}" if path else key
    root = getattr(store, "root", None)
    if root is not None:
        return os.path.exists(Path(root) / full)
    return bool(sync(store.exists(full)))


def where_of(arr: zarr.Array) -> str:
    """The array's location for messages: store root and path."""
    root = getattr(arr.store_path.store, "root", None)
    return "/".join(str(p) for p in (root, arr.path) if p)


def _grid_ranges(arr: zarr.Array, sel: tuple[slice, ...]) -> list[range]:
    out = []
    for k, (n, c) in enumerate(zip(arr.shape, storage_shape(arr))):
        s = sel[k] if k < len(sel) else slice(None)
        if isinstance(s, (int, np.integer)):  # one index along this axis
            s = slice(int(s) % n if n else 0, int(s) % n + 1 if n else 0)
        lo, hi, _ = s.indices(n)
        out.append(range(lo // c, (hi - 1) // c + 1) if hi > lo else range(0))
    return out


def touched(arr: zarr.Array, sel: tuple[slice, ...] = ()) -> Iterator[tuple[int, ...]]:
    """Grid positions of the storage objects the (step-1) selection ``sel`` reads."""
    return itertools.product(*_grid_ranges(arr, sel))


def check_exists(arr: zarr.Array, sel: tuple[slice, ...] = (), where: str | None = None) -> None:
    """Raise :class:`StoreDamageError` if a chunk the selection reads was recorded as written but is absent."""
    if recorded_grid(arr) is None:
        return
    unwritten = unwritten_keys(arr)
    for pos in touched(arr, sel):
        key = chunk_key(arr, pos)
        if key not in unwritten and not key_exists(arr, key):
            raise StoreDamageError(
                f"{where or where_of(arr)}: chunk {key} is missing (it was written when the element was "
                "committed); the store is damaged: restore it from a backup or re-run what wrote this element "
                "(`stdask verify STORE` lists every damaged chunk)")


def region(arr: zarr.Array, pos: tuple[int, ...]) -> tuple[slice, ...]:
    """The index region of the storage object at grid position ``pos``."""
    return tuple(slice(p * c, min((p + 1) * c, n)) for p, c, n in zip(pos, storage_shape(arr), arr.shape))


def damaged_chunk(arr: zarr.Array, sel: tuple[slice, ...] = ()) -> tuple[str, Exception] | None:
    """The first storage object under ``sel`` that fails to decode, with its error (``None`` if all do)."""
    for pos in touched(arr, sel):
        try:
            arr[region(arr, pos)]
        except Exception as e:  # noqa: BLE001 -- any decoding failure marks the chunk damaged
            return chunk_key(arr, pos), e
    return None


def damage_error(arr: zarr.Array, key: str, err: Exception, where: str | None = None) -> StoreDamageError:
    """The error for chunk ``key`` of ``arr`` failing to decode."""
    return StoreDamageError(
        f"{where or where_of(arr)}: chunk {key} is damaged ({type(err).__name__}: {err}); restore the store from "
        "a backup or re-run what wrote this element (`stdask verify STORE` lists every damaged chunk)")


def read_checked(arr: zarr.Array, sel: tuple[slice, ...] | slice = slice(None), where: str | None = None) -> np.ndarray:
    """``arr[sel]`` (step-1 slices), refusing a recorded chunk that is missing and naming one that fails to
    decode."""
    sel = sel if isinstance(sel, tuple) else (sel,)
    check_exists(arr, sel, where)
    try:
        return np.asarray(arr[sel])
    except Exception as e:
        found = damaged_chunk(arr, sel)
        if found is None:
            raise
        raise damage_error(arr, *found, where=where) from e


def check_element(node) -> None:
    """Before reading the element ``node`` whole: every recorded chunk of its arrays exists."""
    for arr in arrays_of(node):
        check_exists(arr)


class CheckedArray:
    """A zarr array whose reads go through :func:`read_checked`, for :func:`dask.array.from_array`.

    Attributes
    ----------
    shape, dtype, ndim, chunks
        Those of the array (``chunks``: its storage objects, so one dask block reads one of them).
    """

    def __init__(self, arr: zarr.Array) -> None:
        self.arr = arr
        self.shape, self.dtype, self.ndim = arr.shape, arr.dtype, arr.ndim
        self.chunks = storage_shape(arr)

    def __getitem__(self, sel: Any) -> np.ndarray:
        return read_checked(self.arr, sel)

    def __dask_tokenize__(self) -> tuple:
        meta = Path(str(getattr(self.arr.store_path.store, "root", ""))) / self.arr.path / "zarr.json"
        stamp = os.stat(meta).st_mtime_ns if meta.exists() else 0
        return ("stdask-checked", where_of(self.arr), self.shape, str(self.dtype), stamp)


__all__ = ["CHUNKS_ATTR", "WRITE_CONFIG", "ANNDATA_KWARGS", "CheckedArray", "checksummed", "writing_every_chunk",
           "storage_shape", "storage_grid", "arrays_of", "record_chunks", "recorded_grid", "unwritten_keys",
           "chunk_key", "key_exists", "where_of", "touched", "check_exists", "region", "damaged_chunk",
           "damage_error", "read_checked", "check_element"]
