"""Streaming writer of a tiled slice store (zarr v3, AnnData encoding, SpatialData container).

The writer receives observations tile by tile, already in store order, and appends each matrix's CSR
arrays through :class:`~stdask.store.csr.CsrStreamWriter`, which only ever writes whole shards, so no shard
is read back and rewritten and memory stays bounded by one shard per array. ``obs`` / ``var`` / ``obsm`` /
``uns`` and the tile index go through the encoding registry (:mod:`stdask.store.encoding`), whose AnnData
writers are anndata's own, so ``anndata.read_zarr`` understands every element. Every array writes all its
chunks with a ``crc32c`` checksum and records them once complete (:mod:`stdask.store.chunks`), so a reader
refuses a chunk that goes missing or is damaged later instead of reading zeros.
The store's root attributes (format version and the ``complete`` mark) are written last, inside a
temporary directory that is renamed into place on success (:mod:`stdask.store.atomic`).
"""
from __future__ import annotations

import datetime as _dt
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import zarr

from .atomic import atomic_directory
from .chunks import WRITE_CONFIG, record_chunks
from .csr import CsrStreamWriter, compressors
from .elements import ANNDATA, ARRAY, DATAFRAME, DICT, STRING_ARRAY
from .encoding import write_element
from .format import STORE_ENCODING, STORE_VERSION, TABLE, TABLE_PATH
from .sdata_view import ShapeSpec, write_view
from .tile_index import TileIndex
from .tiling import Tiling

class ObsStreamWriter:
    """Stream the obs table (AnnData ``dataframe`` encoding) and ``obsm['spatial']`` tile by tile.

    Used when observations are created during ingest (bins, cells): names and coordinates go to disk as
    tiles are written, so memory does not grow with the number of observations. Rows are buffered up to one
    chunk (:attr:`ROWS_PER_CHUNK`) and written a whole chunk at a time: an append per tile would resize every
    array (a metadata write each) and rewrite its last chunk, which for thousands of small tiles costs more
    than the data.
    """

    ROWS_PER_CHUNK = 65_536

    def __init__(self, table: zarr.Group, columns: dict[str, np.dtype], xy_first: bool = True) -> None:
        self.obs = table.create_group("obs")
        self.obsm = table.create_group("obsm", attributes=DICT.attrs())
        c = self.ROWS_PER_CHUNK
        opts = {"compressors": compressors(), "config": WRITE_CONFIG}  # every chunk written and checksummed
        self.index = self.obs.create_array("_index", shape=(0,), dtype=str, chunks=(c,), **opts)
        self.columns = {name: self.obs.create_array(name, shape=(0,), dtype=dt, chunks=(c,), **opts)
                        for name, dt in _column_order(columns, xy_first).items()}
        self.spatial = self.obsm.create_array("spatial", shape=(0, 2), dtype=np.float64, chunks=(c, 2), **opts)
        self.n = 0  # rows appended
        self._written = 0  # rows on disk
        self._buf: list[dict[str, np.ndarray]] = []
        self._buffered = 0
        self.lo = np.array([np.inf, np.inf])
        self.hi = np.array([-np.inf, -np.inf])

    def append(self, names: np.ndarray, x: np.ndarray, y: np.ndarray, **columns: np.ndarray) -> None:
        k = len(names)
        if k == 0:
            return
        values = {"x": x, "y": y, **columns}
        part = {name: np.asarray(values[name], dtype=arr.dtype) for name, arr in self.columns.items()}
        part["_index"] = np.asarray(names, dtype=object)
        self._buf.append(part)
        self._buffered += k
        self.lo = np.minimum(self.lo, [np.min(x), np.min(y)])
        self.hi = np.maximum(self.hi, [np.max(x), np.max(y)])
        self.n += k
        if self._buffered >= self.ROWS_PER_CHUNK:
            self._flush()

    def _flush(self) -> None:
        """Write the buffered rows (one resize per array)."""
        if not self._buffered:
            return
        a, b = self._written, self._written + self._buffered
        joined = {name: np.concatenate([p[name] for p in self._buf]) for name in self._buf[0]}
        self._buf, self._buffered = [], 0
        self.index.resize((b,))
        self.index[a:b] = joined["_index"]
        for name, arr in self.columns.items():
            arr.resize((b,))
            arr[a:b] = joined[name]
        self.spatial.resize((b, 2))
        self.spatial[a:b] = np.column_stack([joined["x"], joined["y"]])
        self._written = b

    def close(self, tile: np.ndarray) -> None:
        self._flush()
        t = self.obs.create_array("tile", shape=(len(tile),), dtype=np.int32, chunks=(self.ROWS_PER_CHUNK,),
                                  compressors=compressors(), config=WRITE_CONFIG)
        t[:] = tile
        for arr in list(self.columns.values()) + [t, self.spatial]:
            arr.attrs.update(ARRAY.attrs())
        self.index.attrs.update(STRING_ARRAY.attrs())
        self.obs.attrs.update({"_index": "_index", "column-order": list(self.columns) + ["tile"],
                               **DATAFRAME.attrs()})
        record_chunks(self.obs)
        record_chunks(self.spatial)


def _column_order(columns: dict[str, np.dtype], xy_first: bool) -> dict[str, np.dtype]:
    """obs columns in store order: x, y first (bins and cells made by ingest) or after the input's own columns
    (as a table written whole orders them)."""
    xy = {"x": np.dtype(np.float64), "y": np.dtype(np.float64)}
    return {**xy, **columns} if xy_first else {**columns, **xy}


def write_elem(group: zarr.Group, key: str, value: Any) -> None:
    """Write one element (DataFrame, dict, dense or sparse array, :class:`~stdask.store.tile_index.TileIndex`)
    through the encoding registry."""
    write_element(group, key, value)


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
        self._microns_per_unit: float | None = None

    def __enter__(self) -> "StoreBuilder":
        self._ctx = atomic_directory(self.path, overwrite=self.overwrite)
        self.tmp = self._ctx.__enter__()
        self.root = zarr.open_group(str(self.tmp), mode="w", zarr_format=3)
        self.table = self.root.create_group("tables").create_group(TABLE)
        layers = self.table.create_group("layers", attributes=DICT.attrs())
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

    def stream_obs(self, columns: dict[str, np.dtype] | None = None, xy_first: bool = True) -> None:
        """Switch to streamed obs: call :meth:`append_obs` with each tile's observations, then
        ``finish(None, None, ...)``; ``x`` and ``y`` come before ``columns`` or, with ``xy_first=False``, after
        them."""
        self._obs_stream = ObsStreamWriter(self.table, columns or {}, xy_first)

    def append_obs(self, names: np.ndarray, x: np.ndarray, y: np.ndarray, **columns: np.ndarray) -> None:
        """Observations of the tile just appended (same rows, same order)."""
        self._obs_stream.append(names, x, y, **columns)

    def finish(self, obs: pd.DataFrame | None, coords: np.ndarray | None, *, unit: str,
               spot_diameter: float | None = None, obsm: dict[str, np.ndarray] | None = None,
               uns: dict | None = None, provenance: dict | None = None, shapes: ShapeSpec | None = None,
               microns_per_unit: float | None = None) -> None:
        """Write obs/var/obsm/uns and the tile index (rows already in store order), then, with ``shapes``, the
        SpatialData view (:mod:`stdask.store.sdata_view`): the shapes element the table annotates, in a ``global``
        coordinate system of ``microns_per_unit`` um per store unit.

        With streamed obs (:meth:`stream_obs`), pass ``obs=None, coords=None``.
        """
        self._microns_per_unit = microns_per_unit
        n_obs = int(self.tile_rows.sum())
        stream = getattr(self, "_obs_stream", None)
        if stream is not None:
            if stream.n != n_obs:
                raise ValueError(f"{stream.n} observations were streamed, but {n_obs} rows were written")
            if obsm:
                raise ValueError("extra obsm arrays are not supported with streamed obs")
            self._finish_tables(n_obs, stream.lo, stream.hi, unit, spot_diameter, uns, provenance)
            stream.close(np.repeat(np.arange(self.tiling.n_tiles, dtype=np.int32), self.tile_rows))
            self._write_view(n_obs, stream.lo, stream.hi, shapes)
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
        self._write_view(n_obs, lo, hi, shapes)

    def _write_view(self, n_obs: int, lo, hi, shapes: ShapeSpec | None) -> None:
        if shapes is not None:
            bounds = np.array([lo[0], lo[1], hi[0], hi[1]], dtype=np.float64) if n_obs else np.zeros(4)
            write_view(self.root, self.tmp, self.table, n_obs, bounds, shapes, self._microns_per_unit)

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
        index = TileIndex(self.tiling, tile_row_start, np.asarray(bounds), unit, spot_diameter,
                          float(self.writers["X"].max_value), provenance or {},
                          microns_per_unit=self._microns_per_unit)
        uns = dict(uns or {})
        uns.pop("stdask", None)  # the tile index below is the one uns/stdask
        write_elem(self.table, "uns", uns)
        write_elem(self.table["uns"], "stdask", index)
        # SpatialData reads a table that annotates no element when these attributes are present (write_view
        # names the element it annotates afterwards)
        self.table.attrs.update({**ANNDATA.attrs(),
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
