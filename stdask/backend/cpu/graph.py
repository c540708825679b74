"""Spatial-graph kernels (CPU, numba) of :mod:`stdask.gr`: the cell-list radius search of one tile.

The kernels are serial on purpose and release the GIL: dask already runs one tile per thread, and a numba
parallel region inside a threaded dask worker would oversubscribe the cores (or, with numba's workqueue
layer, fail on concurrent entry).
"""
from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def cell_starts(skeys, n_cells):
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
def radius_scan(qx, qy, qrow, qlib, sx, sy, srow, slib, use_lib, skeys, starts, x0, y0, cell, ncx, ncy, rr,
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
