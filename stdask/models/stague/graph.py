"""Spatial inputs of STAGUE from coordinates (spec §2 and §4.3-5): the kNN anchor, ``d_cut`` and the
candidate pairs, as numpy edge lists (never dense N x N)."""
from __future__ import annotations

import numpy as np


def _knn(coords: np.ndarray, k: int):
    """(N, k) distances and indices of each cell's k nearest *other* cells (self removed by index, so
    distinct cells at identical coordinates stay neighbours)."""
    from scipy.spatial import cKDTree

    n = coords.shape[0]
    kq = min(k + 1, n)
    d, j = cKDTree(coords).query(coords, k=kq)
    d, j = d.reshape(n, kq), j.reshape(n, kq)
    own = j == np.arange(n)[:, None]
    # drop self (or the last column when self is not among the results)
    drop = np.where(own.any(axis=1), own.argmax(axis=1), kq - 1)
    keep = np.ones_like(own)
    keep[np.arange(n), drop] = False
    return d[keep].reshape(n, kq - 1)[:, :k], j[keep].reshape(n, kq - 1)[:, :k]


def anchor_edges(coords: np.ndarray, a_k: int):
    """Symmetric binary spatial kNN (``A or A^T``), normalised ``D^-1/2 A D^-1/2``.

    Parameters
    ----------
    coords
        (N, 2) float coordinates.
    a_k
        Neighbours per cell, self excluded.

    Returns
    -------
    (index, value)
        (2, E) int64 sorted unique pairs and (E,) float32 normalised weights.
    """
    n = coords.shape[0]
    _, j = _knn(np.asarray(coords, dtype=np.float64), a_k)
    i = np.repeat(np.arange(n), j.shape[1])
    key = np.unique(np.concatenate([i * n + j.ravel(), j.ravel() * n + i]))
    row, col = key // n, key % n
    deg = np.bincount(row, minlength=n).astype(np.float64)
    val = 1.0 / np.sqrt(deg[row] * deg[col])
    return np.stack([row, col]).astype(np.int64), val.astype(np.float32)


def cutoff_distance(coords: np.ndarray, k: int) -> float:
    """``d_cut``: median over cells of the distance to the k-th nearest other cell (``numpy.median``, which
    averages the two middle values for even N, as the reference's sparse path)."""
    d, _ = _knn(np.asarray(coords, dtype=np.float64), k)
    return float(np.median(d[:, -1]))


def candidate_pairs(coords: np.ndarray, d_cut: float, n_candidates: int = 1000):
    """Pairs (i, j), j among i's ``n_candidates`` nearest other cells, with ``0 < d_ij <= d_cut``.

    Returns
    -------
    (index, dist)
        (2, E) int64 pairs and (E,) float64 distances.
    """
    coords = np.asarray(coords, dtype=np.float64)
    n = coords.shape[0]
    d, j = _knn(coords, min(int(n_candidates), n - 1))
    ok = (d > 0) & (d <= d_cut)
    i = np.broadcast_to(np.arange(n)[:, None], j.shape)
    return np.stack([i[ok], j[ok]]).astype(np.int64), d[ok]
