"""Spatial tiling: which tile an observation belongs to, and the row order inside a tile.

A tile is a square of side ``tile_size`` (store units) on a grid anchored at integer multiples of
``tile_size`` from the coordinate origin, so the grid never depends on the order data arrive in.
Tiles are numbered row-major over the occupied bounding grid; rows inside a tile follow a Hilbert curve.
"""
from __future__ import annotations

from dataclasses import dataclass, asdict

import numpy as np

from .hilbert import hilbert_key

#: bits per axis of the Hilbert curve used inside a tile
HILBERT_ORDER = 16


def check_coordinates(x: np.ndarray, y: np.ndarray, what: str = "coordinates") -> None:
    """Raise a clear error for NaN or infinite coordinates (they cannot be placed on a tile)."""
    bad = ~(np.isfinite(x) & np.isfinite(y))
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{what}: {int(bad.sum())} observation(s) have NaN or infinite coordinates "
            f"(first at position {first}: x={x[first]!r}, y={y[first]!r}); remove or fix them before ingest"
        )


@dataclass(frozen=True)
class Tiling:
    """Tile grid of a slice.

    Attributes
    ----------
    tile_size
        Side of a square tile, in store units.
    ix0, iy0
        Grid index of the first tile column / row (tile ``(0, 0)`` covers
        ``[ix0 * tile_size, (ix0 + 1) * tile_size)`` in x).
    nx, ny
        Number of tile columns and rows.
    """

    tile_size: float
    ix0: int
    iy0: int
    nx: int
    ny: int

    @property
    def n_tiles(self) -> int:
        return self.nx * self.ny

    @property
    def origin(self) -> tuple[float, float]:
        return (self.ix0 * self.tile_size, self.iy0 * self.tile_size)

    @classmethod
    def covering(cls, tile_size: float, xmin: float, ymin: float, xmax: float, ymax: float) -> "Tiling":
        """The smallest grid of ``tile_size`` tiles that covers the bounding box."""
        if not (tile_size > 0 and np.isfinite(tile_size)):
            raise ValueError(f"tile_size must be a positive finite number, got {tile_size!r}")
        ix0, iy0 = int(np.floor(xmin / tile_size)), int(np.floor(ymin / tile_size))
        ix1, iy1 = int(np.floor(xmax / tile_size)), int(np.floor(ymax / tile_size))
        return cls(float(tile_size), ix0, iy0, ix1 - ix0 + 1, iy1 - iy0 + 1)

    def tile_xy(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Tile column and row (0-based within this grid) of each point."""
        tx = np.floor(np.asarray(x, dtype=np.float64) / self.tile_size).astype(np.int64) - self.ix0
        ty = np.floor(np.asarray(y, dtype=np.float64) / self.tile_size).astype(np.int64) - self.iy0
        if tx.size and (tx.min() < 0 or ty.min() < 0 or tx.max() >= self.nx or ty.max() >= self.ny):
            raise ValueError("a point lies outside the tile grid; the grid was built from other bounds")
        return tx, ty

    def tile_of(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """(n,) int64 tile id (row-major) of each point."""
        tx, ty = self.tile_xy(x, y)
        return ty * self.nx + tx

    def tile_bounds(self, t: int) -> tuple[float, float, float, float]:
        """(xmin, ymin, xmax, ymax) of tile ``t`` (half-open on the max side)."""
        ty, tx = divmod(int(t), self.nx)
        s = self.tile_size
        return ((self.ix0 + tx) * s, (self.iy0 + ty) * s, (self.ix0 + tx + 1) * s, (self.iy0 + ty + 1) * s)

    def order_key(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Tile id and Hilbert key inside the tile; sorting by (tile, key) gives the store row order."""
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        tx, ty = self.tile_xy(x, y)
        side = 1 << HILBERT_ORDER
        fx = x / self.tile_size - (tx + self.ix0)
        fy = y / self.tile_size - (ty + self.iy0)
        hx = np.clip((fx * side).astype(np.int64), 0, side - 1)
        hy = np.clip((fy * side).astype(np.int64), 0, side - 1)
        return ty * self.nx + tx, hilbert_key(hx, hy, HILBERT_ORDER)

    def tiles_within(self, t: int, radius: float) -> np.ndarray:
        """Ids of tiles that intersect tile ``t`` grown by ``radius`` (``t`` included)."""
        ty, tx = divmod(int(t), self.nx)
        k = int(np.ceil(radius / self.tile_size)) if radius > 0 else 0
        xs = np.arange(max(tx - k, 0), min(tx + k, self.nx - 1) + 1)
        ys = np.arange(max(ty - k, 0), min(ty + k, self.ny - 1) + 1)
        return (ys[:, None] * self.nx + xs[None, :]).ravel()

    def to_attrs(self) -> dict:
        return {k: (float(v) if k == "tile_size" else int(v)) for k, v in asdict(self).items()}

    @classmethod
    def from_attrs(cls, attrs: dict) -> "Tiling":
        return cls(float(attrs["tile_size"]), int(attrs["ix0"]), int(attrs["iy0"]), int(attrs["nx"]), int(attrs["ny"]))


def sort_order(tiling: Tiling, x: np.ndarray, y: np.ndarray, tie: np.ndarray | None = None) -> np.ndarray:
    """Permutation putting points in store order: tile, then Hilbert key, then ``tie`` (default: input position)."""
    tile, hk = tiling.order_key(x, y)
    tie = np.arange(len(tile)) if tie is None else tie
    return np.lexsort((tie, hk, tile))


def default_tile_size(x: np.ndarray, y: np.ndarray, target_per_tile: int = 20_000) -> float:
    """A tile side giving about ``target_per_tile`` observations per occupied tile, rounded to 1-2-5 steps."""
    n = len(x)
    if n == 0:
        return 1.0
    w = float(np.ptp(x)) or 1.0
    h = float(np.ptp(y)) or 1.0
    raw = np.sqrt(w * h * target_per_tile / n)
    raw = max(raw, 1e-9)
    exp = np.floor(np.log10(raw))
    for m in (1, 2, 5, 10):
        if m * 10**exp >= raw:
            return float(m * 10**exp)
    return float(10 ** (exp + 1))
