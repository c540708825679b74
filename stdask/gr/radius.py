"""Radius neighbours of one tile: every observation within ``r`` (inclusive) of each own row, self excluded.

The search is a cell list: the tile's points (own rows plus the halo) are sorted by the square cell of
side >= ``r`` they fall in, and each own row scans its 3 x 3 cells. The inclusion test is
``dx*dx + dy*dy <= r*r`` in float64, the comparison ``scipy.spatial.cKDTree.query_ball_point`` makes, so
the edges equal a global k-d-tree query bit for bit (``sqrt(d2) <= r`` would differ at exact ties: e.g.
points 0.1*sqrt(2) apart with ``r = 0.1*sqrt(2)``). The decision for a pair depends only on the two
points and ``r``, so every tiling gives the same graph as long as the halo holds every point within ``r``.

The kernels are serial on purpose and release the GIL: dask already runs one tile per thread, and a
numba parallel region inside a threaded dask worker would oversubscribe the cores (or, with numba's
workqueue layer, fail on concurrent entry).
"""
from __future__ import annotations

import numba
import numpy as np

from ..dataset import Tile
from .graph import RowBlock, stored_library_codes, tile_points

#: cells per axis are capped so cell keys fit int64 whatever the ratio of tile extent to radius
_MAX_CELLS_PER_AXIS = 1 << 24


def _sorted_cells(x: np.ndarray, y: np.ndarray, x0: float, y0: float, cell: float,
                  ncx: int) -> tuple[np.ndarray, np.ndarray]:
    """Order of the points by cell key (row-major cells of side ``cell`` from ``(x0, y0)``) and the
    sorted keys (numpy's sort: numba's argsort costs seconds of compilation)."""
    keys = ((y - y0) / cell).astype(np.int64) * ncx + ((x - x0) / cell).astype(np.int64)
    order = np.argsort(keys, kind="stable")
    return order, keys[order]


@numba.njit(cache=True, nogil=True)
def _cell_starts(skeys, n_cells):
    """(n_cells + 1,) int64: the points of cell c are ``starts[c]:starts[c+1]`` in key order."""
    starts = np.zeros(n_cells + 1, np.int64)
    for k in skeys:
        starts[k + 1] += 1
    for c in range(n_cells):
        starts[c + 1] += starts[c]
    return starts


@numba.njit(cache=True, nogil=True)
def _sift(cols, d2, a, root, end):
    # heap of cols[a:end] rooted at offset ``root`` (max-heap on cols)
    while 2 * root + 1 < end - a:
        child = 2 * root + 1
        if child + 1 < end - a and cols[a + child] < cols[a + child + 1]:
            child += 1
        if cols[a + root] >= cols[a + child]:
            return
        cols[a + root], cols[a + child] = cols[a + child], cols[a + root]
        d2[a + root], d2[a + child] = d2[a + child], d2[a + root]
        root = child


@numba.njit(cache=True, nogil=True)
def _sort_segment(cols, d2, a, b):
    """Sort ``cols[a:b]`` ascending, carrying ``d2`` along: insertion sort for the usual short rows,
    heapsort beyond (hand-written: numba's own argsort costs seconds of compilation)."""
    if b - a <= 32:
        for i in range(a + 1, b):
            c, d = cols[i], d2[i]
            j = i - 1
            while j >= a and cols[j] > c:
                cols[j + 1] = cols[j]
                d2[j + 1] = d2[j]
                j -= 1
            cols[j + 1] = c
            d2[j + 1] = d
        return
    n = b - a
    for root in range(n // 2 - 1, -1, -1):
        _sift(cols, d2, a, root, b)
    for end in range(b - 1, a, -1):
        cols[a], cols[end] = cols[end], cols[a]
        d2[a], d2[end] = d2[end], d2[a]
        _sift(cols, d2, a, 0, end)


@numba.njit(cache=True, nogil=True)
def _scan(qx, qy, qrow, qlib, sx, sy, srow, slib, use_lib, skeys, starts, x0, y0, cell, ncx, ncy, rr,
          offsets, out_col, out_d2, fill):
    """Count (``fill=False``) or write (``fill=True``) the neighbours of every query point.

    ``sx, sy, srow, slib`` are the points sorted by cell key (``skeys``), so a cell, and the three cells
    of one cell row, are one contiguous range, looked up in ``starts`` (a dense table, when the grid is
    small enough) or by binary search in ``skeys``. Query point i's neighbours go to
    ``out_col[offsets[i]:offsets[i+1]]``, sorted by global row.
    """
    dense = len(starts) > 0
    nq = len(qx)
    counts = np.zeros(nq, np.int64)
    for i in range(nq):
        cx = np.int64((qx[i] - x0) / cell)
        cy = np.int64((qy[i] - y0) / cell)
        k = offsets[i] if fill else 0
        c = 0
        for yy in range(max(cy - 1, 0), min(cy + 1, ncy - 1) + 1):
            k0 = yy * ncx + max(cx - 1, 0)
            k1 = yy * ncx + min(cx + 1, ncx - 1)
            if dense:
                a, b = starts[k0], starts[k1 + 1]
            else:
                a = np.searchsorted(skeys, k0, side="left")
                b = np.searchsorted(skeys, k1, side="right")
            for j in range(a, b):
                if srow[j] == qrow[i]:
                    continue
                if use_lib and slib[j] != qlib[i]:
                    continue
                dx = qx[i] - sx[j]
                dy = qy[i] - sy[j]
                d2 = dx * dx + dy * dy
                if d2 <= rr:
                    if fill:
                        out_col[k] = srow[j]
                        out_d2[k] = d2
                        k += 1
                    else:
                        c += 1
        if fill:
            _sort_segment(out_col, out_d2, offsets[i], k)
            counts[i] = k - offsets[i]
        else:
            counts[i] = c
    return counts


def radius_block(coords: np.ndarray, rows: np.ndarray, n_query: int, r: float,
                 lib: np.ndarray | None = None) -> RowBlock:
    """Neighbours within ``r`` of the first ``n_query`` points among all ``coords``.

    Parameters
    ----------
    coords
        (m, 2) float64 coordinates, query points first.
    rows
        (m,) int64 global row numbers (self is recognised by row, so coincident points are neighbours).
    n_query
        Number of query points (the tile's own rows).
    r
        Radius in store units, > 0; inclusive.
    lib
        (m,) int32 library codes, or ``None``; with codes, only same-library pairs are edges.

    Returns
    -------
    :class:`~stdask.gr.graph.RowBlock` for the query rows, columns ascending, distances float64.
    """
    coords = np.ascontiguousarray(coords, dtype=np.float64)
    rows = np.ascontiguousarray(rows, dtype=np.int64)
    if n_query == 0:
        return RowBlock(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float64))
    x, y = coords[:, 0].copy(), coords[:, 1].copy()
    x0, y0 = float(x.min()), float(y.min())
    extent = max(float(x.max()) - x0, float(y.max()) - y0)
    # a cell at least r wide, so the 3 x 3 block around a point holds every point within r
    cell = max(float(r), extent / _MAX_CELLS_PER_AXIS) * (1 + 1e-12)
    ncx = int((float(x.max()) - x0) / cell) + 1
    ncy = int((float(y.max()) - y0) / cell) + 1
    order, skeys = _sorted_cells(x, y, x0, y0, cell, ncx)
    # O(1) cell look-ups while the cell table stays within a few entries per point
    n_cells = ncx * ncy
    starts = _cell_starts(skeys, n_cells) if n_cells <= max(4 * len(x), 1 << 16) else np.zeros(0, np.int64)
    # points copied in cell order: the scan then reads contiguous memory
    sx, sy, srow = x[order], y[order], rows[order]
    use_lib = lib is not None
    plib = np.ascontiguousarray(lib, dtype=np.int32) if use_lib else np.zeros(1, np.int32)
    slib = plib[order] if use_lib else plib
    qlib = plib[:n_query] if use_lib else plib
    qx, qy, qrow = x[:n_query], y[:n_query], rows[:n_query]
    rr = float(r) * float(r)
    empty_i, empty_f = np.zeros(0, np.int64), np.zeros(0, np.float64)
    counts = _scan(qx, qy, qrow, qlib, sx, sy, srow, slib, use_lib, skeys, starts, x0, y0, cell, ncx, ncy, rr,
                   np.zeros(n_query + 1, np.int64), empty_i, empty_f, False)
    offsets = np.zeros(n_query + 1, np.int64)
    np.cumsum(counts, out=offsets[1:])
    cols = np.empty(offsets[-1], np.int64)
    d2 = np.empty(offsets[-1], np.float64)
    _scan(qx, qy, qrow, qlib, sx, sy, srow, slib, use_lib, skeys, starts, x0, y0, cell, ncx, ncy, rr,
          offsets, cols, d2, True)
    return RowBlock(counts, cols, np.sqrt(d2))


def radius_tile(tile: Tile, r: float, path: str, uuid: str, library_key: str | None) -> RowBlock:
    """:func:`radius_block` for the own rows of one tile from :func:`stdask.tilemap.map_tiles`.

    The halo (every row within ``r``, widened by a hair: the edge test itself is exact, a wider halo only
    adds candidates) is taken from the coordinates (:func:`~.graph.tile_points`).
    """
    rows, coords = tile_points(tile, r * (1 + 1e-9), path, uuid)
    lib = stored_library_codes(path, uuid, library_key)[rows] if library_key else None
    return radius_block(coords, rows, tile.n_own, r, lib)
