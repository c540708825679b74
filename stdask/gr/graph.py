"""Pieces every graph builder shares: exact pair distances, library codes, and the assembly of
per-tile row blocks into one CSR graph.

A builder runs per tile (a coordinates-only :class:`~stdask.tilemap.PointTile` from
:func:`stdask.tilemap.map_tiles` with ``layer=None``) and returns a :class:`RowBlock` for the tile's own rows
only. Tiles own disjoint, consecutive row ranges, so the full graph is the concatenation of the blocks in tile
order (``map_tiles(..., combine="concat")``), whatever the tile size, and no edge is ever computed twice.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..dataset import open_cached

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


def stored_library_codes(path: str, version: str, key: str) -> np.ndarray:
    """Library codes read from a store's ``obs`` (once per worker process and store version, on the dataset
    :func:`~stdask.dataset.open_cached` keeps).

    Tasks read the column themselves instead of carrying an n_obs array in every task.
    """
    ds = open_cached(path, version)
    return ds.derived(("library_codes", key), lambda: library_codes_of(ds.store.obs, key, path))


def tile_library_codes(tile, key: str) -> np.ndarray:
    """(n_obs,) int32 library codes of the store a :class:`~stdask.tilemap.PointTile` comes from
    (:func:`stored_library_codes`: read once per process and store version)."""
    ds = tile.ds
    return stored_library_codes(str(Path(ds.path).resolve()), ds.store.version, key)


def assemble(block: RowBlock | None, n_obs: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CSR arrays of the row block of all rows (the tiles' blocks concatenated in row order by
    :func:`stdask.tilemap.map_tiles`; ``None`` for a dataset without rows).

    Returns
    -------
    indptr
        (n_obs + 1,) int64.
    indices
        (nnz,) int32 column indices (int64 if ``n_obs`` exceeds the int32 range), sorted within each row.
    dist
        (nnz,) float64.
    """
    counts = block.counts if block is not None else np.zeros(0, np.int64)
    if len(counts) != n_obs:
        raise RuntimeError(f"graph blocks cover {len(counts)} rows, the dataset has {n_obs}")
    indptr = np.zeros(n_obs + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    idx_dtype = np.int32 if n_obs <= np.iinfo(np.int32).max else np.int64
    indices = (block.cols if block is not None else np.zeros(0)).astype(idx_dtype)
    dist = (block.dist if block is not None else np.zeros(0)).astype(np.float64)
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
