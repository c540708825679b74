"""Delaunay neighbours: the edges of a Delaunay triangulation of each library's observations.

A Delaunay edge is not a local property a fixed halo can certify: a triangle's circumcircle (and so the
distance that decides an edge) can be as wide as the gaps in the data, and thin triangles along the
convex hull have circumcircles far larger than any tile. stdask therefore triangulates each library
**globally** with ``scipy.spatial.Delaunay`` (Qhull), which is exact and equals squidpy's
``delaunay=True`` graph, and refuses libraries above :data:`MAX_POINTS` observations (memory for Qhull
grows by roughly 0.4 kB per point) with an error that points to the radius and kNN graphs, which are
built per tile at any size.

Notes
-----
- Observations at exactly the same position as another are left out of the triangulation by Qhull and
  get no Delaunay neighbours (as in squidpy).
- Where four or more points lie on one circle (e.g. a square lattice) the triangulation is not unique;
  Qhull picks one. Use the grid graph (``method='grid'``) for lattice data.
- A library whose points all lie on one line has no triangulation; its Delaunay graph is then the path
  through the points in order along the line (the limit of the triangulation of a slightly bent line).
"""
from __future__ import annotations

import numpy as np
from scipy.spatial import Delaunay, QhullError

from .graph import RowBlock, block_from_pairs, pair_distance

#: the most observations triangulated at once (per library)
MAX_POINTS = 5_000_000


def delaunay_pairs(coords: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Directed Delaunay edges (both directions) among ``coords``.

    Parameters
    ----------
    coords
        (m, 2) float64.

    Returns
    -------
    (row, col) int64 local indices, each undirected edge present in both directions.
    """
    m = len(coords)
    if m < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    try:
        if m < 3:
            raise QhullError("fewer than 3 points")
        indptr, indices = Delaunay(coords).vertex_neighbor_vertices
        row = np.repeat(np.arange(m, dtype=np.int64), np.diff(indptr))
        return row, indices.astype(np.int64)
    except QhullError:
        if not _collinear(coords):
            raise
        # a path along the line: order by projection onto the line's direction, ties by position
        c = coords - coords.mean(axis=0)
        direction = np.linalg.svd(c, full_matrices=False)[2][0]
        order = np.lexsort((np.arange(m), c @ direction))
        a, b = order[:-1], order[1:]
        same = np.all(coords[a] == coords[b], axis=1)  # coincident points are left out, as by Qhull
        a, b = a[~same], b[~same]
        return np.concatenate([a, b]).astype(np.int64), np.concatenate([b, a]).astype(np.int64)


def _collinear(coords: np.ndarray) -> bool:
    c = coords - coords.mean(axis=0)
    s = np.linalg.svd(c, compute_uv=False)
    return bool(s[-1] <= 1e-12 * max(s[0], 1e-300))


def delaunay_graph(coords: np.ndarray, lib: np.ndarray | None = None,
                   max_points: int = MAX_POINTS) -> RowBlock:
    """Delaunay graph of all observations, one triangulation per library.

    Parameters
    ----------
    coords
        (n_obs, 2) float64 coordinates in store units.
    lib
        (n_obs,) int32 library codes, or ``None`` for one library.
    max_points
        Largest library triangulated.

    Returns
    -------
    :class:`~stdask.gr.graph.RowBlock` for all rows: columns ascending, float64 Euclidean distances.

    Raises
    ------
    ValueError
        A library has more than ``max_points`` observations.
    """
    n = len(coords)
    groups = [np.arange(n)] if lib is None else [np.flatnonzero(lib == c) for c in np.unique(lib)]
    rows, cols = [], []
    for g in groups:
        if len(g) > max_points:
            raise ValueError(
                f"Delaunay neighbours need one triangulation of the whole library, and this one has {len(g):,} "
                f"observations (limit {max_points:,}); use method='radius' or method='knn', which are built "
                "tile by tile at any size, or raise delaunay_max_points if the memory allows (~0.4 kB per point)"
            )
        r, c = delaunay_pairs(coords[g])
        rows.append(g[r])
        cols.append(g[c])
    row = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    col = np.concatenate(cols) if cols else np.zeros(0, np.int64)
    return block_from_pairs(n, row, col, pair_distance(coords[row], coords[col]))
