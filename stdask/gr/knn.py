"""Exact k nearest neighbours of one tile, self excluded, with a halo grown until it provably suffices.

Ties: neighbours are ranked by (distance, global row number), so at a tie on the k-th distance the
smaller row numbers win. Distances are ``sqrt(dx*dx + dy*dy)`` in float64 (:func:`~.graph.pair_distance`).

Why the answer equals a global query: the halo of radius ``h`` holds every observation within ``h`` of
any own row. If an own row's k-th neighbour among own + halo rows lies at distance ``d_k <= h``, every
observation at distance ``<= d_k`` is in the candidate set, so its k nearest (ties included) are exactly
the global ones. Rows that fail the test make the tile retry with ``h = max(d_k)`` over the failing rows
(at least 1.25 h, and at least 2 h when a row has fewer than k candidates) until all pass or the halo
spans the whole slice. The halo is the own rows' bounding box grown by ``h`` (:class:`stdask.tilemap.PointTile`),
a superset of the rows within ``h``, which is all the argument needs.
"""
from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

from ..tilemap import PointTile
from .graph import RowBlock, pair_distance, tile_library_codes

#: relative slack on float comparisons between the tree's distances and ours (both float64 sqrt of a
#: sum of two squares; they can differ in the last bit only)
_TOL = 1e-9


def knn_rows(coords: np.ndarray, rows: np.ndarray, n_query: int, k: int,
             lib: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest candidates of each of the first ``n_query`` points among all points.

    Parameters
    ----------
    coords
        (m, 2) float64, query points first.
    rows
        (m,) int64 global row numbers (self is excluded by row; coincident points are neighbours at 0).
    n_query
        Number of query points.
    k
        Neighbours per point, >= 1.
    lib
        (m,) int32 library codes or ``None``; neighbours are taken from the query's library only.

    Returns
    -------
    nbr
        (n_query, k) int64 global rows ranked by (distance, row); -1 where fewer than k candidates exist.
    dist
        (n_query, k) float64 distances; ``inf`` where ``nbr`` is -1.
    """
    nbr = np.full((n_query, k), -1, dtype=np.int64)
    dist = np.full((n_query, k), np.inf)
    groups = [np.arange(len(rows))] if lib is None else [np.flatnonzero(lib == c) for c in np.unique(lib[:n_query])]
    for cand in groups:
        q = cand[cand < n_query]
        if len(q) == 0 or len(cand) < 2:
            continue
        _knn_group(coords, rows, cand, q, k, nbr, dist)
    return nbr, dist


def _knn_group(coords, rows, cand, q, k, nbr, dist) -> None:
    tree = cKDTree(coords[cand])
    kq = min(k + 2, len(cand))  # +1 for self, +1 to see whether the k-th distance is tied
    _, idx = tree.query(coords[q], k=kq)
    idx = idx.reshape(len(q), kq)
    crow = rows[cand][idx]  # (nq, kq)
    qrow = rows[q]
    d = pair_distance(np.repeat(coords[q], kq, axis=0), coords[cand][idx].reshape(-1, 2)).reshape(len(q), kq)
    d[crow == qrow[:, None]] = np.inf
    crow = np.where(np.isfinite(d), crow, np.iinfo(np.int64).max)
    o = np.lexsort((crow, d), axis=1)
    d = np.take_along_axis(d, o, axis=1)
    crow = np.take_along_axis(crow, o, axis=1)
    kk = min(k, kq)
    top_d, top_r = d[:, :kk], crow[:, :kk]
    kth = top_d[:, kk - 1] if kk == k else np.full(len(q), np.inf)
    # the tree returned only kq points: more may sit exactly at (or, by rounding, just below) the k-th
    # distance; re-collect those rows with a ball query and rank all of them
    n_fin = np.isfinite(d).sum(axis=1)
    last = d[np.arange(len(q)), np.maximum(n_fin - 1, 0)]
    tie = np.flatnonzero(np.isfinite(kth) & (len(cand) > kq) & (last <= kth * (1 + _TOL)))
    out_d = np.full((len(q), k), np.inf)
    out_r = np.full((len(q), k), -1, dtype=np.int64)
    out_d[:, :kk] = top_d
    out_r[:, :kk] = np.where(np.isfinite(top_d), top_r, -1)
    if len(tie):
        out_r[tie], out_d[tie] = _rank_ball(tree, coords, rows, cand, q[tie], kth[tie], k)
    nbr[q] = out_r
    dist[q] = out_d


def _rank_ball(tree: cKDTree, coords, rows, cand, qt, kth, k) -> tuple[np.ndarray, np.ndarray]:
    """Rank every candidate within ``kth`` (plus slack) of each query ``qt`` by (distance, row); keep k."""
    hits = tree.query_ball_point(coords[qt], kth * (1 + _TOL) + 1e-300)
    lens = np.fromiter((len(h) for h in hits), dtype=np.int64, count=len(hits))
    flat = np.fromiter((j for h in hits for j in h), dtype=np.int64, count=int(lens.sum()))
    owner = np.repeat(np.arange(len(qt)), lens)
    hrow = rows[cand][flat]
    keep = hrow != rows[qt][owner]
    owner, flat, hrow = owner[keep], flat[keep], hrow[keep]
    hd = pair_distance(coords[qt][owner], coords[cand][flat])
    o = np.lexsort((hrow, hd, owner))
    owner, hrow, hd = owner[o], hrow[o], hd[o]
    start = np.searchsorted(owner, np.arange(len(qt)))
    rank = np.arange(len(owner)) - start[owner]
    sel = rank < k
    out_r = np.full((len(qt), k), -1, dtype=np.int64)
    out_d = np.full((len(qt), k), np.inf)
    out_r[owner[sel], rank[sel]] = hrow[sel]
    out_d[owner[sel], rank[sel]] = hd[sel]
    return out_r, out_d


def knn_block(nbr: np.ndarray, dist: np.ndarray) -> RowBlock:
    """(n, k) neighbour table -> :class:`RowBlock` with columns ascending per row (missing dropped)."""
    ok = nbr >= 0
    counts = ok.sum(axis=1).astype(np.int64)
    key = np.where(ok, nbr, np.iinfo(np.int64).max)
    o = np.argsort(key, axis=1, kind="stable")
    cols = np.take_along_axis(key, o, axis=1)
    d = np.take_along_axis(dist, o, axis=1)
    sel = np.take_along_axis(ok, o, axis=1)
    return RowBlock(counts, cols[sel], d[sel])


def knn_tile(tile: PointTile, k: int, max_halo: float, library_key: str | None) -> RowBlock:
    """Exact kNN of one tile's own rows (a coordinates-only tile from :func:`stdask.tilemap.map_tiles`
    with ``layer=None``; its halo is the first one tried, widened as the module docstring says).

    Parameters
    ----------
    tile
        The tile (its own rows are used).
    k
        Neighbours per row.
    max_halo
        A distance no two observations exceed (the slice's bounding-box diagonal): a halo this wide holds
        every row, so rows with fewer than k candidates then truly have fewer than k neighbours.
    library_key
        obs column whose values split the slice into libraries, or ``None``.
    """
    codes = tile_library_codes(tile, library_key) if library_key else None
    h = float(tile.halo)
    while True:
        rows, coords = tile.rows, tile.coords
        lib = codes[rows] if codes is not None else None
        nbr, dist = knn_rows(coords, rows, tile.n_own, k, lib)
        kth = dist[:, k - 1] if tile.n_own else np.zeros(0)
        if h >= max_halo:
            break
        bad = ~(kth * (1 + _TOL) <= h)
        if not bad.any():
            break
        need = kth[bad]
        grow = float(need[np.isfinite(need)].max()) * (1 + 1e-6) if np.isfinite(need).any() else 0.0
        if not np.isfinite(need).all():
            grow = max(grow, 2 * h)
        h = min(max(grow, h * 1.25), max_halo)
        tile = tile.widen(h)
    return knn_block(nbr, dist)
