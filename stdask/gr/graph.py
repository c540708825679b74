"""Pieces every graph builder shares: exact pair distances, library codes, and the assembly of
per-tile row blocks into one CSR graph.

A builder runs per tile and returns a :class:`RowBlock` for the tile's own rows only. Tiles own disjoint,
consecutive row ranges, so the full graph is the concatenation of the blocks in tile order, whatever the
tile size, and no edge is ever computed twice.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp


@dataclass
class RowBlock:
    """Neighbours of a consecutive range of rows (one tile's own rows).

    Attributes
    ----------
    counts
        (n_rows,) int64 number of neighbours of each row.
    cols
        (nnz,) int64 global row numbers of the neighbours, ascending within each row.
    dist
        (nnz,) float64 Euclidean distances in store units (or ring numbers for grid graphs).
    """

    counts: np.ndarray
    cols: np.ndarray
    dist: np.ndarray


def pair_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Euclidean distances between matching rows of ``a`` and ``b``.

    Parameters
    ----------
    a, b
        (m, 2) float64 coordinates.

    Returns
    -------
    (m,) float64 ``sqrt(dx*dx + dy*dy)``. Every builder uses this one formula, so a pair has the same
    distance in every tile and in both directions (``(-dx)**2 == dx**2`` exactly).
    """
    return np.sqrt(squared_distance(a, b))


def squared_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(m,) float64 ``dx*dx + dy*dy``: the quantity compared with ``r*r`` in the radius test, in the same
    order of operations as ``scipy.spatial.cKDTree``."""
    dx = a[:, 0] - b[:, 0]
    dy = a[:, 1] - b[:, 1]
    return dx * dx + dy * dy


def library_codes_of(obs: pd.DataFrame, key: str, where: str) -> np.ndarray:
    """(n_obs,) int32 code of each observation's library / slice in ``obs[key]``.

    Categorical columns use their category codes; others are factorised in sorted order, so the codes do
    not depend on row order. Missing values are an error: an observation in no library has no defined
    neighbourhood.
    """
    if key not in obs.columns:
        raise KeyError(f"{where}: library_key {key!r} is not an obs column; columns: {list(obs.columns)}")
    col = obs[key]
    if col.isna().any():
        raise ValueError(f"{where}: obs[{key!r}] has {int(col.isna().sum())} missing value(s); every observation "
                         "needs a library / slice id")
    if isinstance(col.dtype, pd.CategoricalDtype):
        return np.asarray(col.cat.codes, dtype=np.int32)
    codes, _ = pd.factorize(col, sort=True)
    return codes.astype(np.int32)


def store_version(ds) -> str:
    """A token that changes whenever the store's data or its ``obs`` table change.

    The ingest uuid alone is not enough for caches keyed on it: ``ds.write()`` rewrites ``obs`` (a new column,
    or new values under an old name) by renaming a new directory into place, which gives it a new inode.
    """
    import os

    from ..store.format import TABLE_PATH

    st = os.stat(ds.path / TABLE_PATH / "obs")
    return f"{ds.store.uuid}-{st.st_ino}-{st.st_mtime_ns}"


@functools.lru_cache(maxsize=8)
def open_dataset(path: str, uuid: str):
    """The dataset at ``path`` (once per worker process and store version)."""
    from ..dataset import SpatialDataset

    return SpatialDataset(path)


def tile_points(tile, h: float, path: str, uuid: str) -> tuple[np.ndarray, np.ndarray]:
    """Global rows and coordinates of a tile's own rows followed by candidate halo rows: every row of
    another tile inside the own rows' bounding box grown by ``h``.

    That is a superset of :meth:`~stdask.dataset.SpatialDataset.halo_rows` (every point within ``h`` of an
    own point lies in the grown box) found with vectorised comparisons on contiguous tile slices instead
    of a k-d-tree query per candidate (10x cheaper on 40k-row tiles). The builders make the exact
    distance test themselves, so the extra corner rows change no result.

    Graph builders need coordinates only, so they run :func:`stdask.tilemap.map_tiles` with ``halo=0``
    and take the halo here, instead of having ``map_tiles`` read the expression rows of every
    neighbouring tile.

    Returns
    -------
    rows
        (n_own + n_halo,) int64.
    coords
        (n_own + n_halo, 2) float64 in store units.
    """
    own = tile.rows[: tile.n_own]
    own_xy = tile.coords[: tile.n_own]
    if h <= 0 or tile.n_own == 0:
        return own, own_xy
    ds = open_dataset(path, uuid)
    lo = own_xy.min(axis=0) - h
    hi = own_xy.max(axis=0) + h
    starts = ds.tile_row_start
    rows, xy = [own], [own_xy]
    for u in ds.tiling.tiles_within(tile.index, h):
        a, b = int(starts[u]), int(starts[u + 1])
        if u == tile.index or a == b:
            continue
        c = ds.coords[a:b]
        keep = np.flatnonzero((c[:, 0] >= lo[0]) & (c[:, 0] <= hi[0]) & (c[:, 1] >= lo[1]) & (c[:, 1] <= hi[1]))
        rows.append(keep + a)
        xy.append(c[keep])
    return np.concatenate(rows).astype(np.int64), np.concatenate(xy)


@functools.lru_cache(maxsize=8)
def stored_library_codes(path: str, uuid: str, key: str) -> np.ndarray:
    """Library codes read from a store's ``obs`` (once per worker process and :func:`store_version`).

    Tasks read the column themselves instead of carrying an n_obs array in every task.
    """
    from ..store.reader import StoreReader

    return library_codes_of(StoreReader(path).obs, key, path)


def assemble(blocks: list[RowBlock], n_obs: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Concatenate row blocks (in row order) into CSR arrays.

    Returns
    -------
    indptr
        (n_obs + 1,) int64.
    indices
        (nnz,) int32 column indices (int64 if ``n_obs`` exceeds the int32 range), sorted within each row.
    dist
        (nnz,) float64.
    """
    counts = np.concatenate([b.counts for b in blocks]) if blocks else np.zeros(0, np.int64)
    if len(counts) != n_obs:
        raise RuntimeError(f"graph blocks cover {len(counts)} rows, the dataset has {n_obs}")
    indptr = np.zeros(n_obs + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    idx_dtype = np.int32 if n_obs <= np.iinfo(np.int32).max else np.int64
    indices = (np.concatenate([b.cols for b in blocks]) if blocks else np.zeros(0)).astype(idx_dtype)
    dist = (np.concatenate([b.dist for b in blocks]) if blocks else np.zeros(0)).astype(np.float64)
    return indptr, indices, dist


def to_matrices(indptr: np.ndarray, indices: np.ndarray, dist: np.ndarray,
                n_obs: int) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """Connectivities (binary float32) and distances (float64) CSR matrices sharing one structure."""
    # an int32 indptr next to int32 indices keeps scipy and anndata from re-casting on every read
    ptr = indptr.astype(np.int32) if indptr[-1] <= np.iinfo(np.int32).max and indices.dtype == np.int32 else indptr
    conn = sp.csr_matrix((np.ones(len(indices), dtype=np.float32), indices, ptr), shape=(n_obs, n_obs))
    dst = sp.csr_matrix((dist, indices.copy(), ptr.copy()), shape=(n_obs, n_obs))
    conn.has_sorted_indices = True
    dst.has_sorted_indices = True
    return conn, dst


def block_from_pairs(n_rows: int, row: np.ndarray, col: np.ndarray, dist: np.ndarray) -> RowBlock:
    """A :class:`RowBlock` from unordered (local row, global col, distance) triples; sorts by (row, col)."""
    order = np.lexsort((col, row))
    counts = np.bincount(row, minlength=n_rows).astype(np.int64) if len(row) else np.zeros(n_rows, np.int64)
    return RowBlock(counts, np.asarray(col, np.int64)[order], np.asarray(dist, np.float64)[order])
