"""Pixel tiles with a halo: how rasters are read, trained on and predicted in bounded memory.

A (B, H, W) frame is cut into square tiles of ``tile`` pixels per slice. A window is a tile grown by
``halo`` pixels on every side, always ``(tile + 2 halo)`` square, so windows stack into one batch tensor.
Pixels of a window that fall outside the frame are zero and flagged ``inside=False``; the tile's own pixels
are flagged ``own=True``. A computation whose receptive field is at most ``halo`` pixels (a CNN with
``halo`` 3 x 3 convolutions, zeroing outside pixels before each convolution as zero padding does) gives on
the own pixels exactly what it gives on the whole frame.

Windows read any array-like that supports ``image[b, :, r0:r1, c0:c1]``: a numpy array, a dask array, an
xarray ``DataArray`` or a zarr array (a stored raster, see :mod:`stdask.raster.store`), so only the
window is ever loaded.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Window:
    """One tile with its halo.

    Attributes
    ----------
    index
        Window id (slice-major, then row-major over tiles).
    b
        Slice.
    r0, r1, c0, c1
        The tile's own pixels: rows ``r0:r1``, columns ``c0:c1`` of the frame (clipped to it).
    size
        Side of the window, ``tile + 2 * halo``.
    halo
        Halo width in pixels.
    """

    index: int
    b: int
    r0: int
    r1: int
    c0: int
    c1: int
    size: int
    halo: int

    @property
    def top(self) -> int:
        """Frame row of the window's first row (may be negative)."""
        return self.r0 - self.halo

    @property
    def left(self) -> int:
        """Frame column of the window's first column (may be negative)."""
        return self.c0 - self.halo

    @property
    def own(self) -> tuple[slice, slice]:
        """The own pixels inside the window array."""
        h = self.halo
        return slice(h, h + self.r1 - self.r0), slice(h, h + self.c1 - self.c0)


class TileGrid:
    """Tiles of a (B, H, W) frame.

    Parameters
    ----------
    shape
        (B, H, W).
    tile
        Tile side in pixels (capped at the frame size, so a small frame is a single tile).
    halo
        Halo in pixels (>= 0).
    """

    def __init__(self, shape: tuple[int, int, int], tile: int, halo: int) -> None:
        B, H, W = (int(v) for v in shape)
        if tile < 1:
            raise ValueError(f"tile must be >= 1 pixel, got {tile}")
        if halo < 0:
            raise ValueError(f"halo must be >= 0 pixels, got {halo}")
        self.shape = (B, H, W)
        self.tile = int(min(tile, max(H, W)))
        self.halo = int(halo)
        self.size = self.tile + 2 * self.halo
        self.n_rows = -(-H // self.tile)
        self.n_cols = -(-W // self.tile)
        self.windows = [
            Window(len_, b, r, min(r + self.tile, H), c, min(c + self.tile, W), self.size, self.halo)
            for len_, (b, r, c) in enumerate(
                (b, i * self.tile, j * self.tile)
                for b in range(B) for i in range(self.n_rows) for j in range(self.n_cols))
        ]

    def __len__(self) -> int:
        return len(self.windows)

    def __iter__(self):
        return iter(self.windows)

    def masks(self, w: Window) -> tuple[np.ndarray, np.ndarray]:
        """(size, size) bool ``inside`` (pixel lies in the frame) and ``own`` (pixel is the tile's own)."""
        _, H, W = self.shape
        rows = np.arange(w.top, w.top + w.size)
        cols = np.arange(w.left, w.left + w.size)
        inside = ((rows >= 0) & (rows < H))[:, None] & ((cols >= 0) & (cols < W))[None, :]
        own = np.zeros_like(inside)
        own[w.own] = True
        return inside, own

    def read(self, image, w: Window) -> np.ndarray:
        """The window of a (B, C, H, W) array-like as a (C, size, size) float32 array, zero outside."""
        _, H, W = self.shape
        C = image.shape[1]
        out = np.zeros((C, w.size, w.size), dtype=np.float32)
        a0, a1 = max(w.top, 0), min(w.top + w.size, H)
        b0, b1 = max(w.left, 0), min(w.left + w.size, W)
        if a1 > a0 and b1 > b0:
            block = image[w.b, :, a0:a1, b0:b1]
            block = getattr(block, "values", block)  # xarray
            out[:, a0 - w.top:a1 - w.top, b0 - w.left:b1 - w.left] = np.asarray(block, dtype=np.float32)
        return out

    def read_batch(self, image, windows: list[Window]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Stack windows: (n, C, size, size) float32 values, (n, size, size) bool inside and own masks."""
        xs = np.stack([self.read(image, w) for w in windows])
        ins, owns = zip(*(self.masks(w) for w in windows))
        return xs, np.stack(ins), np.stack(owns)

    def write(self, out: np.ndarray, w: Window, values: np.ndarray) -> None:
        """Put the own pixels of a window result ((K, size, size) or (size, size)) into a (B, K, H, W) or
        (B, H, W) frame array."""
        rs, cs = w.own
        if out.ndim == 4:
            out[w.b, :, w.r0:w.r1, w.c0:w.c1] = values[:, rs, cs]
        else:
            out[w.b, w.r0:w.r1, w.c0:w.c1] = values[rs, cs]


__all__ = ["TileGrid", "Window"]
