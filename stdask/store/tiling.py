"""Spatial tiling: which tile an observation belongs to, and the row order inside a tile.

A tile is a square of side ``tile_size`` (store units) on a grid anchored at integer multiples of
``tile_size`` from the coordinate origin, so the grid never depends on the order data arrive in.

The grid is *sparse*: a :class:`Tiling` lists only the tiles it holds (at ingest, the occupied ones), by
their *grid id* ``gy * nx + gx`` over the bounding grid, sorted. A tile's *index* (what ``tile_row_start``,
``obs["tile"]`` and every loop over tiles count) is its position in that list, so memory and loops cost
the occupied tiles, never the bounding grid: one outlier far away adds one tile, not a row of empty ones.
Sorting by index is sorting row-major by grid position; rows inside a tile follow a Hilbert curve.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .hilbert import hilbert_key

#: bits per axis of the Hilbert curve used inside a tile
HILBERT_ORDER = 16

#: largest accepted ``|x|``, ``|y|`` in store units: float64 holds every integer below 2**53 (~9e15) exactly, so
#: integer DNB coordinates and bin arithmetic stay exact; the grids built on them are checked against int64
#: separately (:data:`MAX_GRID`), so a far outlier costs one tile rather than an overflow
MAX_COORDINATE = 1e15

#: most tiles a store may hold: a tile costs a few hundred bytes of index and one task slot per pass
MAX_TILES = 10_000_000

#: bounding grids larger than this cannot number their tiles in int64
MAX_GRID = 1 << 62


def check_coordinates(x: np.ndarray, y: np.ndarray, what: str = "coordinates", offset: int = 0) -> None:
    """Raise a clear error for NaN, infinite or out-of-range coordinates (they cannot be placed on a tile).

    ``what`` names the input; ``offset`` is the number of the first record of ``x``, ``y`` in it.
    """
    x = np.asarray(x)
    y = np.asarray(y)
    checks = [(~(np.isfinite(x) & np.isfinite(y)), "NaN or infinite coordinates",
               lambda i: f"x={float(x[i])}, y={float(y[i])}", "remove or fix them before ingest")]
    for name, v in (("x", x), ("y", y)):
        checks.append((np.abs(v) >= MAX_COORDINATE, f"|{name}| >= {MAX_COORDINATE:g} store units",
                       lambda i, name=name, v=v: f"{name}={float(v[i]):g}",
                       "such a coordinate is a corrupt or mis-scaled record: remove it or convert the "
                       "coordinates to a smaller unit"))
    for bad, problem, show, advice in checks:  # NaN first: comparisons with NaN are all False
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            raise ValueError(f"{what}: {int(bad.sum())} record(s) have {problem} "
                             f"(first at position {offset + first}: {show(first)}); {advice}")


def check_bin_grid(nx: int, ny: int, what: str) -> None:
    """Raise a clear error when an ``nx`` x ``ny`` grid of bins cannot be numbered in int64 (bin ids are
    ``bx * ny + by``): far-apart records at a small bin size. ``what`` names the input and the bin size."""
    if int(nx) * int(ny) > MAX_GRID:
        raise ValueError(f"{what}: the records span {int(nx):,} x {int(ny):,} bins, more than int64 can number; "
                         "a record lies far from the others (remove it or fix its coordinates) or use a larger bin")


def check_tile_size(tile_size: float) -> float:
    """``tile_size`` as a float, or a clear error if it is not a positive finite number."""
    if isinstance(tile_size, bool) or not isinstance(tile_size, (int, float, np.integer, np.floating)):
        raise ValueError(f"tile_size (CLI: --tile-size) must be a positive number of store units, got {tile_size!r}")
    if not (np.isfinite(tile_size) and tile_size > 0):
        raise ValueError(f"tile_size (CLI: --tile-size) must be a positive finite number of store units, "
                         f"got {float(tile_size)}; omit it for the default")
    return float(tile_size)


def check_tile_count(n_tiles: int, tile_size: float) -> None:
    """Refuse more than :data:`MAX_TILES` occupied tiles (a tile size far too small for the data)."""
    if n_tiles > MAX_TILES:
        raise ValueError(f"tile_size {tile_size:g} makes more than {MAX_TILES:,} occupied tiles "
                         f"({n_tiles:,} found so far); pass a larger tile_size (CLI: --tile-size) or omit it "
                         "for the default")


@dataclass(frozen=True, eq=False)
class Tiling:
    """The tiles of a slice: a bounding grid and the tiles of it that are listed (sorted grid ids).

    Attributes
    ----------
    tile_size
        Side of a square tile, in store units.
    ix0, iy0
        Grid position of the bounding grid's first column / row (its column 0 covers
        ``[ix0 * tile_size, (ix0 + 1) * tile_size)`` in x).
    nx, ny
        Columns and rows of the bounding grid (never allocated: only listed tiles cost memory).
    tiles
        (n_tiles,) int64 sorted grid ids ``gy * nx + gx`` of the listed tiles; ``None``: every tile of the
        bounding grid (the dense layout of version-1 stores).
    """

    tile_size: float
    ix0: int
    iy0: int
    nx: int
    ny: int
    tiles: np.ndarray = field(default=None, repr=False)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.nx * self.ny > MAX_GRID:
            raise ValueError(f"tile_size {self.tile_size:g} is too small for the extent of the data "
                             f"({self.nx:,} x {self.ny:,} tiles); pass a larger tile_size (CLI: --tile-size)")
        if self.tiles is None:
            ids = np.arange(self.nx * self.ny, dtype=np.int64)
        else:
            ids = np.asarray(self.tiles, dtype=np.int64)
            if len(ids) and (ids[0] < 0 or ids[-1] >= self.nx * self.ny or np.any(np.diff(ids) <= 0)):
                raise ValueError("tile ids must be strictly increasing grid ids inside the bounding grid")
        object.__setattr__(self, "tiles", ids)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Tiling):
            return NotImplemented
        return self.to_attrs() == other.to_attrs() and np.array_equal(self.tiles, other.tiles)

    __hash__ = None  # type: ignore[assignment]  # holds an array: not hashable

    @property
    def n_tiles(self) -> int:
        """Number of listed tiles (tile indices are ``0 .. n_tiles - 1``)."""
        return len(self.tiles)

    @property
    def origin(self) -> tuple[float, float]:
        return (self.ix0 * self.tile_size, self.iy0 * self.tile_size)

    @classmethod
    def covering(cls, tile_size: float, xmin: float, ymin: float, xmax: float, ymax: float) -> "Tiling":
        """The bounding grid of ``tile_size`` tiles over the box, listing none of them (see :meth:`listing`)."""
        tile_size = check_tile_size(tile_size)
        ix0, iy0 = int(np.floor(xmin / tile_size)), int(np.floor(ymin / tile_size))
        ix1, iy1 = int(np.floor(xmax / tile_size)), int(np.floor(ymax / tile_size))
        return cls(tile_size, ix0, iy0, ix1 - ix0 + 1, iy1 - iy0 + 1, np.empty(0, np.int64))

    @classmethod
    def of_points(cls, tile_size: float, x: np.ndarray, y: np.ndarray) -> "Tiling":
        """The grid of ``tile_size`` tiles listing exactly the tiles that hold a point."""
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        if len(x) == 0:
            return cls(check_tile_size(tile_size), 0, 0, 1, 1)
        grid = cls.covering(tile_size, x.min(), y.min(), x.max(), y.max())
        return grid.listing(np.unique(grid.grid_of(x, y)))

    def listing(self, grid_ids: np.ndarray) -> "Tiling":
        """This bounding grid listing ``grid_ids`` (sorted, unique); refuses more than :data:`MAX_TILES`."""
        check_tile_count(len(grid_ids), self.tile_size)
        return Tiling(self.tile_size, self.ix0, self.iy0, self.nx, self.ny, np.asarray(grid_ids, np.int64))

    def _grid_xy(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Column and row (0-based within the bounding grid) of each point."""
        tx = np.floor(np.asarray(x, dtype=np.float64) / self.tile_size).astype(np.int64) - self.ix0
        ty = np.floor(np.asarray(y, dtype=np.float64) / self.tile_size).astype(np.int64) - self.iy0
        if tx.size and (tx.min() < 0 or ty.min() < 0 or tx.max() >= self.nx or ty.max() >= self.ny):
            raise ValueError("a point lies outside the tile grid; the grid was built from other bounds")
        return tx, ty

    def grid_of(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """(n,) int64 grid id ``gy * nx + gx`` of each point (listed tile or not)."""
        tx, ty = self._grid_xy(x, y)
        return ty * self.nx + tx

    def index_of(self, grid_ids: np.ndarray) -> np.ndarray:
        """(n,) int64 tile index of each grid id; every one must be listed."""
        grid_ids = np.asarray(grid_ids, dtype=np.int64)
        t = np.searchsorted(self.tiles, grid_ids)
        if grid_ids.size and (t.max() >= len(self.tiles) or np.any(self.tiles[t] != grid_ids)):
            raise ValueError("a point lies in a tile this tiling does not list; the tiling was built from other data")
        return t

    def tile_of(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """(n,) int64 tile index of each point."""
        return self.index_of(self.grid_of(x, y))

    def _tile_xy(self, t: int) -> tuple[int, int]:
        """Column and row of tile index ``t`` in the bounding grid."""
        ty, tx = divmod(int(self.tiles[int(t)]), self.nx)
        return tx, ty

    def tile_bounds(self, t: int) -> tuple[float, float, float, float]:
        """(xmin, ymin, xmax, ymax) of tile index ``t`` (half-open on the max side)."""
        tx, ty = self._tile_xy(t)
        s = self.tile_size
        return ((self.ix0 + tx) * s, (self.iy0 + ty) * s, (self.ix0 + tx + 1) * s, (self.iy0 + ty + 1) * s)

    def order_key(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Tile index and Hilbert key inside the tile; sorting by (tile, key) gives the store row order."""
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        tx, ty = self._grid_xy(x, y)
        side = 1 << HILBERT_ORDER
        fx = x / self.tile_size - (tx + self.ix0)
        fy = y / self.tile_size - (ty + self.iy0)
        hx = np.clip((fx * side).astype(np.int64), 0, side - 1)
        hy = np.clip((fy * side).astype(np.int64), 0, side - 1)
        return self.index_of(ty * self.nx + tx), hilbert_key(hx, hy, HILBERT_ORDER)

    def tiles_within(self, t: int, radius: float) -> np.ndarray:
        """Indices (ascending) of listed tiles that intersect tile ``t`` grown by ``radius`` (``t`` included).

        Costs the smaller of the window of grid positions and the number of listed tiles, so a radius far
        larger than the tile size does not enumerate empty grid positions.
        """
        tx, ty = self._tile_xy(t)
        k = int(np.ceil(radius / self.tile_size)) if radius > 0 else 0
        x0, x1 = max(tx - k, 0), min(tx + k, self.nx - 1)
        y0, y1 = max(ty - k, 0), min(ty + k, self.ny - 1)
        if (x1 - x0 + 1) * (y1 - y0 + 1) <= len(self.tiles):
            xs = np.arange(x0, x1 + 1)
            ys = np.arange(y0, y1 + 1)
            cand = (ys[:, None] * self.nx + xs[None, :]).ravel()
            pos = np.searchsorted(self.tiles, cand)
            hit = pos < len(self.tiles)
            hit[hit] = self.tiles[pos[hit]] == cand[hit]
            return pos[hit]
        gy, gx = np.divmod(self.tiles, self.nx)
        return np.flatnonzero((gx >= x0) & (gx <= x1) & (gy >= y0) & (gy <= y1))

    def to_attrs(self) -> dict:
        """The bounding grid as plain numbers (the listed tiles are stored beside it, as an array)."""
        return {"tile_size": float(self.tile_size), "ix0": int(self.ix0), "iy0": int(self.iy0),
                "nx": int(self.nx), "ny": int(self.ny)}

    @classmethod
    def from_attrs(cls, attrs: dict, tiles: np.ndarray | None = None) -> "Tiling":
        return cls(float(attrs["tile_size"]), int(attrs["ix0"]), int(attrs["iy0"]), int(attrs["nx"]),
                   int(attrs["ny"]), tiles)


def sort_order(tiling: Tiling, x: np.ndarray, y: np.ndarray, tie: np.ndarray | None = None) -> np.ndarray:
    """Permutation putting points in store order: tile, then Hilbert key, then ``tie`` (default: input position)."""
    tile, hk = tiling.order_key(x, y)
    tie = np.arange(len(tile)) if tie is None else tie
    return np.lexsort((tie, hk, tile))


def default_tile_size(x: np.ndarray, y: np.ndarray, target_per_tile: int = 20_000) -> float:
    """A tile side giving about ``target_per_tile`` observations per occupied tile, rounded to 1-2-5 steps.

    The first guess spreads the observations over their bounding box. When a few far-away observations
    stretch that box, the occupied tiles then hold far more than the target (one tile could hold the whole
    slice, and every analysis task with it); the side is then recomputed from the area of the occupied tiles
    until they hold at most 16 times the target on average (a bound the 1-2-5 rounding alone stays under).
    """
    n = len(x)
    if n == 0:
        return 1.0
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    w = float(np.ptp(x)) or 1.0
    h = float(np.ptp(y)) or 1.0
    size = _step_up(np.sqrt(w * h * target_per_tile / n))
    for _ in range(16):  # each round at least halves the side; a few rounds settle it
        occupied = len(np.unique(Tiling.covering(size, x.min(), y.min(), x.max(), y.max()).grid_of(x, y)))
        if n <= 16 * target_per_tile * occupied:
            break
        size = _step_up(np.sqrt(occupied * size * size * target_per_tile / n))
    return size


def _step_up(raw: float) -> float:
    """The smallest 1-2-5 step (..., 0.5, 1, 2, 5, 10, ...) >= ``raw`` (at least 1e-9)."""
    raw = max(float(raw), 1e-9)
    exp = np.floor(np.log10(raw))
    for m in (1, 2, 5, 10):
        if m * 10**exp >= raw:
            return float(m * 10**exp)
    return float(10 ** (exp + 1))
