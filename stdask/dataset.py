"""The lazy dataset: one slice store opened for analysis.

``ds = stdask.read("slice.zarr")`` reads only metadata. The matrix is a dask array whose chunks are tile
groups, each read with one contiguous range per zarr array; ``ds.tile(i, halo=r)`` gives one tile with the
neighbouring rows within ``r`` (the primitive every neighbourhood computation builds on). Results are kept
on the dataset until :meth:`SpatialDataset.write` puts them into the store, one element at a time, each
committed atomically.
"""
from __future__ import annotations

import functools
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import pandas as pd
import scipy.sparse as sp
import zarr
from scipy.spatial import cKDTree

from .store.atomic import tmp_sibling
from .store.format import TABLE_PATH
from .store.reader import StoreReader, read_csr_range, read_elem

#: default number of rows per dask chunk (whole tiles are grouped up to about this many rows)
ROWS_PER_CHUNK = 50_000

_SLOTS = ("obs", "obsm", "obsp", "layers", "uns", "varm")

#: functions ``f(ds, adata)`` that rewrite results into the layout other tools expect on AnnData export
#: (e.g. stLearn's dense CCI matrices); analysis modules register themselves here, so this layer never
#: imports them
EXPORTERS: list = []


@dataclass
class Tile:
    """One tile with its halo.

    Attributes
    ----------
    index
        Tile id.
    rows
        (n_own + n_halo,) int64 global row numbers: the tile's own rows first (ascending), then halo rows
        (ascending).
    n_own
        Number of the tile's own rows.
    X
        (n_own + n_halo, n_vars) CSR matrix of those rows (int32 indices).
    coords
        (n_own + n_halo, 2) float64 coordinates in store units.
    """

    index: int
    rows: np.ndarray
    n_own: int
    X: sp.csr_matrix
    coords: np.ndarray

    @property
    def own(self) -> slice:
        return slice(0, self.n_own)


@functools.lru_cache(maxsize=64)
def _csr_group(path: str, uuid: str, name: str) -> zarr.Group:
    # uuid in the key: a store replaced by a new ingest must not be served from a stale cache entry
    table = zarr.open_group(path, mode="r", zarr_format=3)[TABLE_PATH]
    return table["X"] if name == "X" else table["layers"][name]


def _read_block(path: str, uuid: str, name: str, start: int, stop: int, n_vars: int) -> sp.csr_matrix:
    return read_csr_range(_csr_group(path, uuid, name), start, stop, n_vars)


class SpatialDataset:
    """A tiled slice store opened lazily.

    Parameters
    ----------
    path
        Path of a committed store.
    rows_per_chunk
        Target rows per dask chunk; chunks are whole tiles.
    """

    def __init__(self, path: str | Path, rows_per_chunk: int = ROWS_PER_CHUNK) -> None:
        self.store = StoreReader(path)
        self.path = self.store.path
        self.rows_per_chunk = int(rows_per_chunk)
        self._pending: dict[tuple[str, str], Any] = {}

    # --- shape and metadata ---------------------------------------------------------------------
    @property
    def n_obs(self) -> int:
        return self.store.n_obs

    @property
    def n_vars(self) -> int:
        return self.store.n_vars

    @property
    def shape(self) -> tuple[int, int]:
        return (self.n_obs, self.n_vars)

    @property
    def obs(self) -> pd.DataFrame:
        """Observation table (pandas), with pending obs columns applied."""
        obs = self.store.obs
        pend = {k: v for (slot, k), v in self._pending.items() if slot == "obs"}
        if pend:
            obs = obs.copy()
            for k, v in pend.items():
                obs[k] = _obs_values(v)
        return obs

    @property
    def var(self) -> pd.DataFrame:
        return self.store.var

    @property
    def obs_names(self) -> pd.Index:
        return self.store.obs_names

    @property
    def var_names(self) -> pd.Index:
        return self.store.var_names

    @property
    def coords(self) -> np.ndarray:
        """(n_obs, 2) float64 x, y in :attr:`unit`."""
        return self.store.coords

    @property
    def unit(self) -> str:
        return self.store.unit

    @property
    def spot_diameter(self) -> float | None:
        """Spot / cell / bin diameter in :attr:`unit`, if known."""
        return self.store.spot_diameter

    @property
    def tiling(self):
        return self.store.tiling

    @property
    def tile_row_start(self) -> np.ndarray:
        return self.store.tile_row_start

    @property
    def n_tiles(self) -> int:
        return self.tiling.n_tiles

    @property
    def provenance(self) -> dict:
        return dict(self.store.meta.get("provenance", {}))

    def __repr__(self) -> str:
        nnz = int(self.store.table["X"]["indptr"][-1])
        return (f"SpatialDataset {self.path.name}: {self.n_obs:,} obs x {self.n_vars:,} vars, nnz {nnz:,}, "
                f"{int((np.diff(self.tile_row_start) > 0).sum())}/{self.n_tiles} tiles occupied "
                f"(tile {self.tiling.tile_size:g} {self.unit})")

    # --- lazy matrices ------------------------------------------------------------------------
    def tile_groups(self, rows_per_chunk: int | None = None) -> list[tuple[int, int]]:
        """Consecutive tile ranges ``(t0, t1)`` of about ``rows_per_chunk`` rows each (whole tiles)."""
        target = rows_per_chunk or self.rows_per_chunk
        starts = self.tile_row_start
        groups, t0 = [], 0
        for t in range(self.n_tiles):
            if starts[t + 1] - starts[t0] >= target:
                groups.append((t0, t + 1))
                t0 = t + 1
        if t0 < self.n_tiles and (starts[-1] > starts[t0] or not groups):
            groups.append((t0, self.n_tiles))
        return [(a, b) for a, b in groups if starts[b] > starts[a]] or [(0, self.n_tiles)]

    def matrix(self, name: str = "X", rows_per_chunk: int | None = None) -> da.Array:
        """A matrix of the store as a dask array of CSR chunks (row chunks = tile groups)."""
        if name not in self.store.matrix_names():
            raise KeyError(f"no matrix {name!r} in {self.path}; available: {self.store.matrix_names()}")
        groups = self.tile_groups(rows_per_chunk)
        starts = self.tile_row_start
        key = f"stdask-{name}-{self.store.uuid}-{rows_per_chunk or self.rows_per_chunk}"
        dsk = {
            (key, i, 0): (_read_block, str(self.path), self.store.uuid, name, int(starts[a]), int(starts[b]),
                          self.n_vars)
            for i, (a, b) in enumerate(groups)
        }
        chunks = (tuple(int(starts[b] - starts[a]) for a, b in groups), (self.n_vars,))
        dtype = self.store._csr_group(name)["data"].dtype
        meta = sp.csr_matrix((0, 0), dtype=dtype)
        return da.Array(dsk, key, chunks, meta=meta)

    @property
    def X(self) -> da.Array:
        """(n_obs, n_vars) counts as a dask array of scipy CSR chunks."""
        return self.matrix("X")

    def layer(self, name: str) -> da.Array:
        return self.matrix(name)

    # --- tiles with halos ---------------------------------------------------------------------
    def tile_rows(self, t: int) -> tuple[int, int]:
        if not 0 <= t < self.n_tiles:
            raise IndexError(f"tile {t} out of range (0..{self.n_tiles - 1})")
        return int(self.tile_row_start[t]), int(self.tile_row_start[t + 1])

    def halo_rows(self, t: int, halo: float) -> np.ndarray:
        """Rows of other tiles within distance ``halo`` (inclusive) of any of tile ``t``'s own observations."""
        if halo < 0 or not np.isfinite(halo):
            raise ValueError(f"halo must be a finite distance >= 0, got {halo!r}")
        r0, r1 = self.tile_rows(t)
        if halo == 0 or r1 == r0:
            return np.empty(0, dtype=np.int64)
        coords = self.coords
        cand = [np.arange(*self.tile_rows(int(u))) for u in self.tiling.tiles_within(t, halo) if u != t]
        cand = np.concatenate(cand) if cand else np.empty(0, np.int64)
        if len(cand) == 0:
            return cand.astype(np.int64)
        tree = cKDTree(coords[r0:r1])
        # a tiny relative slack for the tree's bound, then the exact inclusive test
        d, _ = tree.query(coords[cand], k=1, distance_upper_bound=halo * (1 + 1e-12) + 1e-300)
        return np.sort(cand[d <= halo]).astype(np.int64)

    def tile(self, t: int, halo: float = 0.0, layer: str = "X") -> Tile:
        """Tile ``t`` with the rows of neighbouring tiles within ``halo`` store units of its observations."""
        r0, r1 = self.tile_rows(t)
        extra = self.halo_rows(t, halo)
        rows = np.concatenate([np.arange(r0, r1, dtype=np.int64), extra])
        own = self.store.read_rows(r0, r1, layer)
        if len(extra):
            # read each neighbouring tile's contiguous range once, then pick the halo rows
            parts = []
            tiles = np.searchsorted(self.tile_row_start, extra, side="right") - 1
            for u in np.unique(tiles):
                a, b = self.tile_rows(int(u))
                block = self.store.read_rows(a, b, layer)
                parts.append(block[extra[tiles == u] - a])
            X = sp.vstack([own] + parts, format="csr")
        else:
            X = own
        return Tile(int(t), rows, r1 - r0, X, self.coords[rows])

    # --- results ------------------------------------------------------------------------------
    def set_result(self, slot: str, key: str, value: Any) -> None:
        """Attach a result (``obs`` column, ``obsm``/``obsp``/``layers``/``uns``/``varm`` element) to write later."""
        if slot not in _SLOTS:
            raise ValueError(f"slot must be one of {_SLOTS}, got {slot!r}")
        if slot in ("obs", "obsm", "obsp", "layers") and hasattr(value, "shape") and value.shape[0] != self.n_obs:
            raise ValueError(f"{slot}[{key!r}] has {value.shape[0]} rows; the dataset has {self.n_obs}")
        if slot == "varm" and value.shape[0] != self.n_vars:
            raise ValueError(f"varm[{key!r}] has {value.shape[0]} rows; the dataset has {self.n_vars} genes")
        self._pending[(slot, key)] = value

    def get_result(self, slot: str, key: str) -> Any:
        """A pending or stored result."""
        if (slot, key) in self._pending:
            return self._pending[(slot, key)]
        if slot == "obs":
            return self.store.obs[key]
        group = self.store.table[slot]
        if key not in group:
            raise KeyError(f"no {slot}[{key!r}] in {self.path} or pending")
        return read_elem(group, key)

    @property
    def pending(self) -> list[tuple[str, str]]:
        return list(self._pending)

    def write(self) -> None:
        """Write pending results into the store; each element is written aside and renamed into place."""
        if not self._pending:
            return
        table_dir = self.path / TABLE_PATH
        scratch = tmp_sibling(self.path)
        try:
            sg = zarr.open_group(str(scratch), mode="w", zarr_format=3)
            obs_cols = {k: v for (slot, k), v in self._pending.items() if slot == "obs"}
            items = [(slot, k, v) for (slot, k), v in self._pending.items() if slot != "obs"]
            if obs_cols:
                obs = self.store.obs.copy()
                for k, v in obs_cols.items():
                    obs[k] = _obs_values(v)
                items.append(("", "obs", obs))
            from .store.writer import write_elem

            for slot, key, value in items:
                dst_parent = table_dir / slot if slot else table_dir
                if "/" in key or key.startswith("."):
                    raise ValueError(f"invalid result key {key!r}")
                g = sg.require_group(slot) if slot else sg
                if isinstance(value, da.Array):
                    _write_dask(g, key, value)
                else:
                    write_elem(g, key, value)
                src = scratch / slot / key if slot else scratch / key
                dst = dst_parent / key
                dst_parent.mkdir(parents=True, exist_ok=True)
                if dst.exists():
                    old = tmp_sibling(dst)
                    os.rename(dst, old)
                    os.rename(src, dst)
                    shutil.rmtree(old, ignore_errors=True)
                else:
                    os.rename(src, dst)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        self._pending.clear()
        # re-open so cached metadata reflects what is now on disk
        self.store = StoreReader(self.path)

    # --- export -------------------------------------------------------------------------------
    def to_anndata(self):
        """Materialise the whole table (and pending results) as an in-memory AnnData."""
        import anndata as ad

        adata = ad.read_zarr(str(self.path / TABLE_PATH))
        for (slot, key), value in self._pending.items():
            if isinstance(value, da.Array):
                from .cluster import compute

                (value,) = compute(value, progress=False)
            if slot == "obs":
                adata.obs[key] = _obs_values(value)
            else:
                getattr(adata, slot)[key] = value
        for export in EXPORTERS:
            export(self, adata)
        return adata

    def write_h5ad(self, path: str | Path) -> Path:
        """Export to ``.h5ad`` (materialises the table)."""
        path = Path(path)
        self.to_anndata().write_h5ad(path)
        return path

    def to_spatialdata(self, shapes: bool = True):
        """Export as a :class:`spatialdata.SpatialData`: the table plus, optionally, circles at the
        observation coordinates (radius = spot diameter / 2, or 1 unit when unknown) that it annotates."""
        import spatialdata as sd
        from spatialdata.models import ShapesModel, TableModel

        adata = self.to_anndata()
        if not shapes:
            return sd.SpatialData(tables={"table": TableModel.parse(adata)})
        radius = (self.spot_diameter or 2.0) / 2.0
        circles = ShapesModel.parse(self.coords, geometry=0, radius=np.full(self.n_obs, radius),
                                    index=pd.RangeIndex(self.n_obs))
        adata.obs["region"] = pd.Categorical(["cells"] * self.n_obs)
        adata.obs["instance_id"] = np.arange(self.n_obs)
        table = TableModel.parse(adata, region="cells", region_key="region", instance_key="instance_id")
        return sd.SpatialData(shapes={"cells": circles}, tables={"table": table})


def _obs_values(v):
    """Values of a pending obs column, keeping categoricals (their categories and order) intact."""
    if isinstance(v, pd.Series):
        v = v.array if isinstance(v.dtype, pd.CategoricalDtype) else v.to_numpy()
    return v if isinstance(v, pd.Categorical) else np.asarray(v)


def _write_dask(group: zarr.Group, key: str, arr: da.Array, batch: int = 8) -> None:
    """Stream a dask array into the store chunk by chunk: CSR chunks become an AnnData ``csr_matrix``
    element, dense chunks an AnnData ``array``. Only ``batch`` row chunks are in memory at a time."""
    from .cluster import compute
    from .store.writer import CsrStreamWriter, compressor

    if arr.ndim != 2 or len(arr.chunks[1]) != 1:
        arr = arr.rechunk({1: -1}) if arr.ndim == 2 else arr
    blocks = [arr.blocks[i] for i in range(arr.numblocks[0])]
    if sp.issparse(arr._meta):
        w = CsrStreamWriter(group, key, arr.shape[1], arr.dtype)
        for i in range(0, len(blocks), batch):
            for b in compute(*blocks[i : i + batch], progress=False):
                b = sp.csr_matrix(b)
                b.sort_indices()
                w.append(b.indptr, b.indices, b.data)
        w.close()
        return
    z = group.create_array(key, shape=arr.shape, dtype=arr.dtype,
                           chunks=(min(max(arr.chunks[0]), max(1, (1 << 20) // max(1, arr.dtype.itemsize * int(np.prod(arr.shape[1:]))))),) + arr.shape[1:],
                           compressors=[compressor()])
    r0 = 0
    for i in range(0, len(blocks), batch):
        for b in compute(*blocks[i : i + batch], progress=False):
            z[r0 : r0 + len(b)] = np.asarray(b)
            r0 += len(b)
    z.attrs.update({"encoding-type": "array", "encoding-version": "0.2.0"})


def read(path: str | Path, rows_per_chunk: int = ROWS_PER_CHUNK) -> SpatialDataset:
    """Open a store lazily (metadata only)."""
    return SpatialDataset(path, rows_per_chunk=rows_per_chunk)
