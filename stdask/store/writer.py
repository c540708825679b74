"""Streaming writer of a tiled slice store (zarr v3, AnnData encoding, SpatialData container).

The writer receives observations tile by tile, already in store order, and appends each matrix's CSR
arrays through :class:`ShardedAppender`, which only ever writes whole shards, so no shard is read back
and rewritten and memory stays bounded by one shard per array. ``obs`` / ``var`` / ``obsm`` / ``uns``
are written through anndata's own element writers, so ``anndata.read_zarr`` understands every element.
The store's root attributes (format version and the ``complete`` mark) are written last, inside a
temporary directory that is renamed into place on success (:mod:`stdask.store.atomic`).
"""
from __future__ import annotations

import datetime as _dt
import uuid
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import zarr
from zarr.codecs import BloscCodec

from .atomic import atomic_directory
from .format import STORE_ENCODING, STORE_VERSION, TABLE, TABLE_PATH
from .tiling import Tiling

#: target size of one inner (compressed) chunk, bytes
INNER_CHUNK_BYTES = 1 << 20
#: inner chunks per shard (32 x 1 MiB = 32 MiB shards before compression; a shard is encoded in memory
#: at once, so this bounds the writer's transient memory)
CHUNKS_PER_SHARD = 32


def compressor() -> BloscCodec:
    return BloscCodec(cname="zstd", clevel=5, shuffle="bitshuffle")


def index_dtype(n_vars: int) -> np.dtype:
    """Gene-index dtype: int32.

    DESIGN.md asked for uint16 when genes < 65,536, but scipy and anndata warn on (and re-cast) unsigned
    index arrays on every read, so every scverse user of the store would see a warning. With bitshuffle +
    zstd the always-zero high bytes of int32 indices compress away (measured in ``bench/ingest.py``).
    """
    if n_vars > np.iinfo(np.int32).max:
        raise ValueError(f"{n_vars} genes do not fit int32 indices")
    return np.dtype(np.int32)


def create_1d(group: zarr.Group, name: str, dtype: np.dtype, length: int = 0, chunk_elems: int | None = None):
    """A sharded, compressed 1-D array with ~1 MiB inner chunks."""
    dtype = np.dtype(dtype)
    inner = chunk_elems or max(INNER_CHUNK_BYTES // dtype.itemsize, 1)
    return group.create_array(
        name, shape=(length,), dtype=dtype, chunks=(inner,), shards=(inner * CHUNKS_PER_SHARD,),
        compressors=[compressor()],
    )


class ShardedAppender:
    """Append a 1-D stream to a zarr array, writing only whole shards until :meth:`close`.

    Parameters
    ----------
    group
        Parent zarr group.
    name
        Array name.
    dtype
        Element dtype.
    """

    def __init__(self, group: zarr.Group, name: str, dtype: np.dtype) -> None:
        self.array = create_1d(group, name, dtype)
        self.dtype = np.dtype(dtype)
        self.shard = self.array.shards[0]
        self._buf: list[np.ndarray] = []
        self._buffered = 0
        self.length = 0  # elements written to the array so far

    def append(self, values: np.ndarray) -> None:
        if len(values) == 0:
            return
        self._buf.append(np.asarray(values, dtype=self.dtype))
        self._buffered += len(values)
        if self._buffered >= self.shard:
            self._flush(final=False)

    def _flush(self, final: bool) -> None:
        if not self._buffered:
            return
        data = np.concatenate(self._buf) if len(self._buf) > 1 else self._buf[0]
        n_write = len(data) if final else (len(data) // self.shard) * self.shard
        if n_write:
            start = self.length
            self.array.resize((start + n_write,))
            self.array[start : start + n_write] = data[:n_write]
            self.length += n_write
        rest = data[n_write:]
        self._buf = [rest] if len(rest) else []
        self._buffered = len(rest)

    def close(self) -> int:
        self._flush(final=True)
        return self.length


class CsrStreamWriter:
    """Write one CSR matrix (AnnData ``csr_matrix`` encoding) from row blocks appended in order."""

    def __init__(self, parent: zarr.Group, name: str, n_vars: int, dtype: np.dtype) -> None:
        self.group = parent.create_group(name)
        self.n_vars = int(n_vars)
        self.data = ShardedAppender(self.group, "data", dtype)
        self.indices = ShardedAppender(self.group, "indices", index_dtype(n_vars))
        self._indptr: list[np.ndarray] = [np.zeros(1, dtype=np.int64)]
        self.nnz = 0
        self.n_rows = 0
        self.max_value = 0

    def append(self, indptr: np.ndarray, indices: np.ndarray, data: np.ndarray) -> None:
        """Append rows given as a local CSR block (``indptr[0] == 0``)."""
        if len(indptr) <= 1:
            return
        self._indptr.append(np.asarray(indptr[1:], dtype=np.int64) + self.nnz)
        self.indices.append(indices)
        self.data.append(data)
        if len(data):
            self.max_value = max(self.max_value, data.max())
        self.nnz += int(indptr[-1])
        self.n_rows += len(indptr) - 1

    def close(self) -> None:
        assert self.data.close() == self.nnz and self.indices.close() == self.nnz
        indptr = np.concatenate(self._indptr)
        # int32 while it fits, like scipy: anndata hands the arrays to scipy unchecked, and scipy kernels
        # reject an int64 indptr next to int32 indices
        ptr_dtype = np.int32 if self.nnz <= np.iinfo(np.int32).max else np.int64
        indptr = indptr.astype(ptr_dtype)
        arr = create_1d(self.group, "indptr", ptr_dtype, length=len(indptr))
        arr[:] = indptr
        self.group.attrs.update(
            {"encoding-type": "csr_matrix", "encoding-version": "0.1.0", "shape": [self.n_rows, self.n_vars]}
        )


class ObsStreamWriter:
    """Stream the obs table (AnnData ``dataframe`` encoding) and ``obsm['spatial']`` tile by tile.

    Used when observations are created during ingest (bins, cells): names and coordinates go to disk as
    each tile is written, so memory does not grow with the number of observations.
    """

    ROWS_PER_CHUNK = 65_536

    def __init__(self, table: zarr.Group, columns: dict[str, np.dtype]) -> None:
        self.obs = table.create_group("obs")
        self.obsm = table.create_group("obsm", attributes={"encoding-type": "dict", "encoding-version": "0.1.0"})
        c = self.ROWS_PER_CHUNK
        self.index = self.obs.create_array("_index", shape=(0,), dtype=str, chunks=(c,), compressors=[compressor()])
        self.columns = {name: self.obs.create_array(name, shape=(0,), dtype=dt, chunks=(c,), compressors=[compressor()])
                        for name, dt in {"x": np.float64, "y": np.float64, **columns}.items()}
        self.spatial = self.obsm.create_array("spatial", shape=(0, 2), dtype=np.float64, chunks=(c, 2),
                                              compressors=[compressor()])
        self.n = 0
        self.lo = np.array([np.inf, np.inf])
        self.hi = np.array([-np.inf, -np.inf])

    def append(self, names: np.ndarray, x: np.ndarray, y: np.ndarray, **columns: np.ndarray) -> None:
        k = len(names)
        if k == 0:
            return
        a, b = self.n, self.n + k
        self.index.resize((b,))
        self.index[a:b] = np.asarray(names, dtype=object)
        values = {"x": x, "y": y, **columns}
        for name, arr in self.columns.items():
            arr.resize((b,))
            arr[a:b] = np.asarray(values[name], dtype=arr.dtype)
        self.spatial.resize((b, 2))
        self.spatial[a:b] = np.column_stack([x, y])
        self.lo = np.minimum(self.lo, [np.min(x), np.min(y)])
        self.hi = np.maximum(self.hi, [np.max(x), np.max(y)])
        self.n = b

    def close(self, tile: np.ndarray) -> None:
        t = self.obs.create_array("tile", shape=(len(tile),), dtype=np.int32, chunks=(self.ROWS_PER_CHUNK,),
                                  compressors=[compressor()])
        t[:] = tile
        array_attrs = {"encoding-type": "array", "encoding-version": "0.2.0"}
        for arr in list(self.columns.values()) + [t, self.spatial]:
            arr.attrs.update(array_attrs)
        self.index.attrs.update({"encoding-type": "string-array", "encoding-version": "0.2.0"})
        self.obs.attrs.update({"_index": "_index", "column-order": list(self.columns) + ["tile"],
                               "encoding-type": "dataframe", "encoding-version": "0.2.0"})


def write_elem(group: zarr.Group, key: str, value: Any) -> None:
    """Write an AnnData element (DataFrame, dict, dense or sparse array) with anndata's registry."""
    from anndata.io import write_elem as _write

    with warnings.catch_warnings():
        # anndata's small elements (obs columns, uns) are unsharded on purpose; zarr's notice about
        # future default sharding is noise for users
        warnings.filterwarnings("ignore", message=".*autosharding.*")
        _write(group, key, value)


class StoreBuilder:
    """Build a new store in a temporary directory and commit it atomically.

    Use as a context manager::

        with StoreBuilder(path, var, tiling, value_dtype=np.uint32) as b:
            for tile in tiles:
                b.append_tile(t, n_rows, {"X": (indptr, indices, data)})
            b.finish(obs, coords, unit="um")

    Parameters
    ----------
    path
        Target store path (``*.zarr``).
    var
        Genes, index = unique gene names.
    tiling
        The tile grid (rows must arrive grouped by tile id, ascending).
    matrices
        Name -> value dtype of the matrices to write: ``"X"`` and any layers.
    overwrite
        Replace an existing store at ``path``.
    """

    def __init__(self, path: str | Path, var: pd.DataFrame, tiling: Tiling, matrices: dict[str, np.dtype],
                 overwrite: bool = False) -> None:
        self.path = Path(path)
        self.var = var
        self.tiling = tiling
        self.matrices = dict(matrices)
        if "X" not in self.matrices:
            raise ValueError("matrices must include 'X'")
        self.overwrite = overwrite
        self._ctx = None
        self._finished = False

    def __enter__(self) -> "StoreBuilder":
        self._ctx = atomic_directory(self.path, overwrite=self.overwrite)
        self.tmp = self._ctx.__enter__()
        self.root = zarr.open_group(str(self.tmp), mode="w", zarr_format=3)
        self.table = self.root.create_group("tables").create_group(TABLE)
        layers = self.table.create_group("layers", attributes={"encoding-type": "dict", "encoding-version": "0.1.0"})
        n_vars = len(self.var)
        self.writers = {
            name: CsrStreamWriter(self.table if name == "X" else layers, name, n_vars, dtype)
            for name, dtype in self.matrices.items()
        }
        self.tile_rows = np.zeros(self.tiling.n_tiles, dtype=np.int64)
        self._last_tile = -1
        return self

    def append_tile(self, tile: int, n_rows: int, blocks: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]) -> None:
        """Append the rows of one tile (tiles strictly ascending) as CSR blocks per matrix."""
        if tile <= self._last_tile:
            raise ValueError(f"tiles must arrive in ascending order (got {tile} after {self._last_tile})")
        self._last_tile = tile
        self.tile_rows[tile] = n_rows
        for name, w in self.writers.items():
            indptr, indices, data = blocks.get(name, (np.zeros(n_rows + 1, np.int64), np.empty(0, np.int64), np.empty(0)))
            if len(indptr) != n_rows + 1:
                raise ValueError(f"{name}: tile {tile} block has {len(indptr) - 1} rows, expected {n_rows}")
            w.append(indptr, indices, data)

    def stream_obs(self, columns: dict[str, np.dtype] | None = None) -> None:
        """Switch to streamed obs: call :meth:`append_obs` with each tile's observations, then
        ``finish(None, None, ...)``."""
        self._obs_stream = ObsStreamWriter(self.table, columns or {})

    def append_obs(self, names: np.ndarray, x: np.ndarray, y: np.ndarray, **columns: np.ndarray) -> None:
        """Observations of the tile just appended (same rows, same order)."""
        self._obs_stream.append(names, x, y, **columns)

    def finish(self, obs: pd.DataFrame | None, coords: np.ndarray | None, *, unit: str,
               spot_diameter: float | None = None, obsm: dict[str, np.ndarray] | None = None,
               uns: dict | None = None, provenance: dict | None = None) -> None:
        """Write obs/var/obsm/uns and the tile index (rows already in store order).

        With streamed obs (:meth:`stream_obs`), pass ``obs=None, coords=None``.
        """
        n_obs = int(self.tile_rows.sum())
        stream = getattr(self, "_obs_stream", None)
        if stream is not None:
            if stream.n != n_obs:
                raise ValueError(f"{stream.n} observations were streamed, but {n_obs} rows were written")
            if obsm:
                raise ValueError("extra obsm arrays are not supported with streamed obs")
            self._finish_tables(n_obs, stream.lo, stream.hi, unit, spot_diameter, uns, provenance)
            stream.close(np.repeat(np.arange(self.tiling.n_tiles, dtype=np.int32), self.tile_rows))
            return
        if len(obs) != n_obs or len(coords) != n_obs:
            raise ValueError(f"obs has {len(obs)} rows and coords {len(coords)}, but {n_obs} rows were written")
        if not obs.index.is_unique:
            dup = obs.index[obs.index.duplicated()][0]
            raise ValueError(f"duplicate observation name {dup!r}")
        for w in self.writers.values():
            w.close()
        tile = np.repeat(np.arange(self.tiling.n_tiles, dtype=np.int32), self.tile_rows)
        obs = obs.copy()
        obs["x"] = coords[:, 0].astype(np.float64)
        obs["y"] = coords[:, 1].astype(np.float64)
        obs["tile"] = tile
        obs.index = obs.index.astype(str)
        var = self.var.copy()
        var.index = var.index.astype(str)
        write_elem(self.table, "obs", obs)
        write_elem(self.table, "var", var)
        obsm = dict(obsm or {})
        obsm["spatial"] = np.ascontiguousarray(coords, dtype=np.float64)
        write_elem(self.table, "obsm", obsm)
        lo = coords.min(axis=0) if n_obs else np.zeros(2)
        hi = coords.max(axis=0) if n_obs else np.zeros(2)
        self._finish_tables(n_obs, lo, hi, unit, spot_diameter, uns, provenance, write_var=False)

    def _finish_tables(self, n_obs, lo, hi, unit, spot_diameter, uns, provenance, write_var: bool = True) -> None:
        if write_var:
            for w in self.writers.values():
                w.close()
            var = self.var.copy()
            var.index = var.index.astype(str)
            write_elem(self.table, "var", var)
        for key in ("varm", "obsp", "varp"):
            write_elem(self.table, key, {})
        tile_row_start = np.concatenate([[0], np.cumsum(self.tile_rows)]).astype(np.int64)
        bounds = [float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1])] if n_obs else [0.0] * 4
        stdask_uns = {
            "encoding": "stdask-tiling",
            "version": 1,
            "tiling": self.tiling.to_attrs(),
            "tile_row_start": tile_row_start,
            "bounds": np.asarray(bounds),
            "curve": "hilbert",
            "unit": unit,
            "spot_diameter": float(spot_diameter) if spot_diameter else float("nan"),
            "max_count": float(self.writers["X"].max_value),
            "provenance": provenance or {},
        }
        uns = dict(uns or {})
        uns["stdask"] = stdask_uns
        write_elem(self.table, "uns", uns)
        # SpatialData reads a table that annotates no element when these attributes are present
        self.table.attrs.update({"encoding-type": "anndata", "encoding-version": "0.1.0",
                                 "spatialdata-encoding-type": "ngff:regions_table", "region": None,
                                 "region_key": None, "instance_key": None, "version": "0.2"})
        self._finished = True

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is not None:
            self._ctx.__exit__(exc_type, exc, tb)  # removes the temporary directory
            return False
        if not self._finished:
            err = RuntimeError("StoreBuilder closed without finish(); the store was not committed")
            self._ctx.__exit__(RuntimeError, err, None)
            raise err
        # the completion mark is written last: a store without it never opens
        self.root.attrs.update(
            {
                "spatialdata_attrs": {"version": "0.2"},
                "stdask": {
                    "encoding": STORE_ENCODING,
                    "version": STORE_VERSION,
                    "complete": True,
                    "table": TABLE_PATH,
                    "uuid": uuid.uuid4().hex,
                    "created": _dt.datetime.now(_dt.timezone.utc).isoformat(),
                },
            }
        )
        self._ctx.__exit__(None, None, None)
        return False
