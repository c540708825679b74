"""STAGUE's spatial inputs from a dataset (spec §2 and §4.3-5), built tile by tile by
:func:`stdask.gr.spatial_neighbors`: the normalised kNN anchor, ``d_cut`` and the candidate pairs."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from ...dataset import SpatialDataset
from ...gr.neighbors import spatial_neighbors


@dataclass
class SpatialInputs:
    """Attributes
    ----------
    anchor
        ``(index (2, Ea) int64, value (Ea,) float32)``: the symmetric binary ``a_k``-NN graph normalised
        ``D^-1/2 A D^-1/2``.
    d_cut
        Median over cells of the distance to the ``k``-th nearest other cell (``numpy.median``).
    candidates
        ``(index (2, Ec) int64, dist (Ec,) float64)``: pairs ``0 < d_ij <= d_cut``, j among i's
        ``n_candidates`` nearest.
    """

    anchor: tuple
    d_cut: float
    candidates: tuple


def _ranked(dist: sp.csr_matrix, rank_of: np.ndarray):
    """Entries of a CSR distance graph as (row, col, dist, rank within row by (distance, ``rank_of[col]``))."""
    dist = dist.tocsr()
    row = np.repeat(np.arange(dist.shape[0], dtype=np.int64), np.diff(dist.indptr))
    col, d = dist.indices.astype(np.int64), dist.data
    order = np.lexsort((rank_of[col], d, row))
    row, col, d = row[order], col[order], d[order]
    rank = np.arange(len(row)) - dist.indptr[row]
    return row, col, d, rank


def _normalized_anchor(row: np.ndarray, col: np.ndarray, n: int):
    key = np.unique(np.concatenate([row * n + col, col * n + row]))
    r, c = key // n, key % n
    deg = np.bincount(r, minlength=n).astype(np.float64)
    return np.stack([r, c]), (1.0 / np.sqrt(deg[r] * deg[c])).astype(np.float32)


def spatial_inputs(ds: SpatialDataset, k: int, a_k: int, n_candidates: int, rank_of: np.ndarray, *,
                   progress: bool = True) -> SpatialInputs:
    """Build the :class:`SpatialInputs` (two tiled graph builds; memory O(edges)), indexed by store row.

    ``rank_of``: (n_obs,) int64 canonical rank of each row; equidistant neighbours are ranked by it (not
    by store row, which depends on the tiling) where the anchor's ``a_k`` or the ``n_candidates`` cap cuts
    a tie."""
    n = ds.n_obs
    if max(k, a_k) >= n:
        raise ValueError(f"{ds.path}: k={k} and a_k={a_k} must be below the number of observations ({n})")
    knn = spatial_neighbors(ds, "knn", n_neighs=max(k, a_k), copy=True, verbose=False, progress=progress)
    row, col, d, rank = _ranked(knn.distances, rank_of)
    kth = np.full(n, np.nan)
    kth[row[rank == k - 1]] = d[rank == k - 1]
    d_cut = float(np.median(kth))
    if not d_cut > 0:
        raise ValueError(f"{ds.path}: d_cut (median distance to the {k}-th nearest observation) is {d_cut}; more "
                         "than half the observations share coordinates with k others -- aggregate them or use a "
                         "larger k")
    anchor = _normalized_anchor(row[rank < a_k], col[rank < a_k], n)
    del knn, row, col, d, rank
    radius = spatial_neighbors(ds, "radius", distance=d_cut, copy=True, verbose=False, progress=progress)
    row, col, d, rank = _ranked(radius.distances, rank_of)
    keep = (d > 0) & (d <= d_cut)
    if len(rank) and rank.max() >= n_candidates:
        # rank among the pairs kept so far (pairs at distance 0 come first and are dropped)
        zero = np.bincount(row[d <= 0], minlength=n)
        keep &= (rank - zero[row]) < n_candidates
    return SpatialInputs(anchor, d_cut, (np.stack([row[keep], col[keep]]), d[keep]))
