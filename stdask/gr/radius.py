"""Radius neighbours of one tile: every observation within ``r`` (inclusive) of each own row, self excluded.

The search is a cell list: the tile's points (own rows plus the halo) are sorted by the square cell of
side >= ``r`` they fall in, and each own row scans its 3 x 3 cells. The inclusion test is
``dx*dx + dy*dy <= r*r`` in float64, the comparison ``scipy.spatial.cKDTree.query_ball_point`` makes, so
the edges equal a global k-d-tree query bit for bit (``sqrt(d2) <= r`` would differ at exact ties: e.g.
points 0.1*sqrt(2) apart with ``r = 0.1*sqrt(2)``). The decision for a pair depends only on the two
points and ``r``, so every tiling gives the same graph as long as the halo holds every point within ``r``.

The kernels (:mod:`stdask.backend.cpu.graph`) are serial on purpose: dask already runs one tile per thread.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..backend import get_kernel
from ..tilemap import PointTile
from .graph import RowBlock, tile_library_codes

#: cells per axis are capped so cell keys fit int64 whatever the ratio of tile extent to radius
_MAX_CELLS_PER_AXIS = 1 << 24


def _sorted_cells(x: np.ndarray, y: np.ndarray, x0: float, y0: float, cell: float,
                  ncx: int) -> tuple[np.ndarray, np.ndarray]:
    """Order of the points by cell key (row-major cells of side ``cell`` from ``(x0, y0)``) and the
    sorted keys (numpy's sort: numba's argsort costs seconds of compilation)."""
    keys = ((y - y0) / cell).astype(np.int64) * ncx + ((x - x0) / cell).astype(np.int64)
    order = np.argsort(keys, kind="stable")
    return order, keys[order]


@dataclass
class CellList:
    """Points sorted by the square cell (side >= ``r``) they fall in, ready for radius queries.

    Built once for a set of points (:meth:`build`), it answers the neighbours within ``r`` of any query points
    (:meth:`query`). Memory: about 40 bytes per point (coordinates, rows and keys in cell order) plus the
    dense cell table (8 bytes per cell, at most 4 per point) when the grid is small enough.
    """

    sx: np.ndarray  # (m,) float64 x in cell order
    sy: np.ndarray
    srow: np.ndarray  # (m,) int64 global rows in cell order
    slib: np.ndarray  # (m,) int32 library codes in cell order, or (1,) unused
    use_lib: bool
    skeys: np.ndarray  # (m,) int64 sorted cell keys
    starts: np.ndarray  # (n_cells + 1,) int64 first point of each cell, or empty (binary search in skeys)
    x0: float
    y0: float
    cell: float
    ncx: int
    ncy: int
    r: float

    @classmethod
    def build(cls, coords: np.ndarray, rows: np.ndarray, r: float, lib: np.ndarray | None = None) -> "CellList":
        """The cell list of ``coords`` ((m, 2) float64, m >= 1) with global ``rows`` ((m,) int64) for radius
        ``r`` > 0; with ``lib`` ((m,) int32 library codes), only same-library pairs are neighbours."""
        x = np.ascontiguousarray(coords[:, 0], dtype=np.float64)
        y = np.ascontiguousarray(coords[:, 1], dtype=np.float64)
        rows = np.ascontiguousarray(rows, dtype=np.int64)
        x0, y0 = float(x.min()), float(y.min())
        extent = max(float(x.max()) - x0, float(y.max()) - y0)
        # a cell at least r wide, so the 3 x 3 block around a point holds every point within r
        cell = max(float(r), extent / _MAX_CELLS_PER_AXIS) * (1 + 1e-12)
        ncx = int((float(x.max()) - x0) / cell) + 1
        ncy = int((float(y.max()) - y0) / cell) + 1
        order, skeys = _sorted_cells(x, y, x0, y0, cell, ncx)
        # O(1) cell look-ups while the cell table stays within a few entries per point
        n_cells = ncx * ncy
        dense = n_cells <= max(4 * len(x), 1 << 16)
        starts = get_kernel("cell_starts")(skeys, n_cells) if dense else np.zeros(0, np.int64)
        use_lib = lib is not None
        slib = np.ascontiguousarray(lib, dtype=np.int32)[order] if use_lib else np.zeros(1, np.int32)
        # points copied in cell order: the scan then reads contiguous memory
        return cls(x[order], y[order], rows[order], slib, use_lib, skeys, starts, x0, y0, cell, ncx, ncy, float(r))

    def _args(self, qx: np.ndarray, qy: np.ndarray, qrow: np.ndarray, qlib: np.ndarray | None) -> tuple:
        qlib = np.ascontiguousarray(qlib, dtype=np.int32) if self.use_lib else self.slib
        return (np.ascontiguousarray(qx, dtype=np.float64), np.ascontiguousarray(qy, dtype=np.float64),
                np.ascontiguousarray(qrow, dtype=np.int64), qlib, self.sx, self.sy, self.srow, self.slib,
                self.use_lib, self.skeys, self.starts, self.x0, self.y0, self.cell, self.ncx, self.ncy,
                self.r * self.r)

    def count(self, qx: np.ndarray, qy: np.ndarray, qrow: np.ndarray, qlib: np.ndarray | None = None) -> np.ndarray:
        """(n_query,) int64 number of neighbours of each query point (see :meth:`query`)."""
        n_query = len(qx)
        return get_kernel("radius_scan")(*self._args(qx, qy, qrow, qlib), np.zeros(n_query + 1, np.int64),
                                         np.zeros(0, np.int64), np.zeros(0, np.float64), False)

    def query(self, qx: np.ndarray, qy: np.ndarray, qrow: np.ndarray, qlib: np.ndarray | None = None) -> RowBlock:
        """Neighbours within ``r`` (inclusive, ``dx*dx + dy*dy <= r*r``) of each query point, itself (same
        global row) excluded: (n_query,) float64 coordinates, int64 rows and, when the list has library codes,
        int32 codes."""
        args = self._args(qx, qy, qrow, qlib)
        n_query = len(qx)
        scan = get_kernel("radius_scan")
        counts = self.count(qx, qy, qrow, qlib)
        offsets = np.zeros(n_query + 1, np.int64)
        np.cumsum(counts, out=offsets[1:])
        cols = np.empty(offsets[-1], np.int64)
        d2 = np.empty(offsets[-1], np.float64)
        scan(*args, offsets, cols, d2, True)
        return RowBlock(counts, cols, np.sqrt(d2))


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
    cells = CellList.build(coords, rows, r, lib)
    qlib = None if lib is None else np.asarray(lib)[:n_query]
    return cells.query(coords[:n_query, 0], coords[:n_query, 1], rows[:n_query], qlib)


#: relative widening of the halo over ``r``: the edge test itself is exact, a wider halo only adds candidates
HALO_SLACK = 1e-9


def radius_tile(tile: PointTile, r: float, library_key: str | None) -> RowBlock:
    """:func:`radius_block` for the own rows of one coordinates-only tile from
    :func:`stdask.tilemap.map_tiles` (``layer=None``, ``halo=r * (1 + HALO_SLACK)``)."""
    lib = tile_library_codes(tile, library_key)[tile.rows] if library_key else None
    return radius_block(tile.coords, tile.rows, tile.n_own, r, lib)
