"""Building a raster from per-observation feature vectors, chunk by chunk.

:class:`RasterBuilder` accumulates, for every pixel of a (B, H, W) frame, the sum of the feature vectors
of the observations on it and their number, plus per-slice moments of the features. The raster is the
per-pixel mean (collisions are averaged, never "last one wins"); optionally each feature is z-scored per
slice first. Because the z-score is affine, the mean of z-scored vectors equals the z-score of the mean,
so a single streaming pass suffices: rows arrive in any chunks and any order, and the result depends only
on which observations sit on which pixel.

Memory: the (B, C, H, W) float64 sums (8 bytes per pixel and channel), never the observations; finishing
adds the float32 image (4 bytes per pixel and channel). A builder given the observations' values as a
``source`` array (which the caller keeps anyway) holds no sums: it records which rows each ``add`` brought and
makes each channel's sums in ``finish``, replaying the additions in their order (the same floating-point sums).
"""
from __future__ import annotations

import numpy as np

from .grid import PixelGrid


class RasterBuilder:
    """Accumulate observations into a pixel frame.

    Parameters
    ----------
    grid
        Pixel of every observation (observation order = the order of ``grid.row``).
    n_channels
        Feature vector length C.
    source
        Optional (n_obs, C) array of every observation's values (float32 or float64, in the grid's order):
        :meth:`add` then takes rows only and no (C, B, H, W) sums are held.
    """

    def __init__(self, grid: PixelGrid, n_channels: int, source: np.ndarray | None = None) -> None:
        self.grid = grid
        self.C = int(n_channels)
        B, H, W = grid.shape
        if source is not None and source.shape != (grid.n_obs, self.C):
            raise ValueError(f"source must be (n_obs, C) = {(grid.n_obs, self.C)}, got {source.shape}")
        self._source = source
        # with a source, the sums are made one channel at a time by finish(), replaying the additions in
        # their order (the same floating-point sums): 8 bytes per pixel instead of 8 per pixel and channel
        self._added: list[np.ndarray] = []
        self._sums = np.zeros((self.C, B * H * W), dtype=np.float64) if source is None else None
        self._count = np.zeros(B * H * W, dtype=np.int64)
        self._m1 = np.zeros((B, self.C))
        self._m2 = np.zeros((B, self.C))
        self._n = np.zeros(B, dtype=np.int64)
        self._seen = np.zeros(grid.n_obs, dtype=bool)

    def add(self, rows: np.ndarray, values: np.ndarray | None = None) -> None:
        """Add observations.

        Parameters
        ----------
        rows
            (k,) int positions of the observations (into the grid's observation order).
        values
            (k, C) feature vectors; with a ``source``, ``None`` (read as ``source[rows]`` when needed).
        """
        rows = np.asarray(rows, dtype=np.int64)
        if (values is None) != (self._source is not None):
            raise ValueError("give values, or make the builder with a source and give rows only")
        values = np.asarray(self._source[rows] if values is None else values, dtype=np.float64)
        if values.shape != (len(rows), self.C):
            raise ValueError(f"values must be ({len(rows)}, {self.C}), got {values.shape}")
        if self._seen[rows].any():
            raise ValueError("an observation was added twice")
        self._seen[rows] = True
        pix = self.grid.pixel[rows]
        size = self._count.size
        self._count += np.bincount(pix, minlength=size)
        if self._sums is not None:
            for c in range(self.C):
                self._sums[c] += np.bincount(pix, weights=values[:, c], minlength=size)
        else:
            self._added.append(rows)
        sl = self.grid.slice[rows]
        for b in np.unique(sl):
            v = values[sl == b]
            self._n[b] += len(v)
            self._m1[b] += v.sum(axis=0)
            self._m2[b] += (v * v).sum(axis=0)

    def _channel_sums(self, c: int) -> np.ndarray:
        """(B * H * W,) float64 sums of channel ``c`` per pixel."""
        if self._sums is not None:
            return self._sums[c]
        size = self._count.size
        pixel = self.grid.pixel
        out = np.zeros(size, dtype=np.float64)
        for rows in self._added:
            out += np.bincount(pixel[rows], weights=self._source[rows, c].astype(np.float64), minlength=size)
        return out

    def skip(self, rows: np.ndarray) -> None:
        """Mark observations as deliberately left out of the raster (e.g. filtered cells)."""
        rows = np.asarray(rows, dtype=np.int64)
        if self._seen[rows].any():
            raise ValueError("an observation was already added")
        self._seen[rows] = True

    def slice_stats(self, ddof: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """(B, C) mean and standard deviation of each feature per slice (``ddof=1`` as scanpy's ``scale``;
        a zero deviation is reported as 1, as scanpy does)."""
        n = np.maximum(self._n, 1)[:, None]
        mean = self._m1 / n
        var = np.maximum(self._m2 / n - mean ** 2, 0.0)
        denom = np.maximum(self._n - ddof, 1)[:, None]
        var = var * n / denom
        std = np.sqrt(var)
        std[std == 0] = 1.0
        return mean, std

    def finish(self, zscore: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """The raster.

        Parameters
        ----------
        zscore
            Z-score every feature per slice (mean 0, unit standard deviation with ddof=1 over that
            slice's observations) before averaging.

        Returns
        -------
        image
            (B, C, H, W) float32: per pixel the mean of its observations' (z-scored) vectors, 0 where
            empty.
        count
            (B, H, W) int32 observations per pixel.
        """
        if not self._seen.all():
            raise ValueError(f"{int((~self._seen).sum())} observations were neither added nor skipped")
        B, H, W = self.grid.shape
        occ = (self._count > 0).reshape(B, H * W)
        count = self._count.reshape(B, H * W)
        mean, std = self.slice_stats() if zscore else (None, None)
        # one channel of one slice at a time, straight into the float32 image: the float64 temporaries are a
        # channel's occupied pixels, not (C, B, H, W) copies of the sums (4 of them, ~5 GB at 10^7 pixels)
        image = np.zeros((B, self.C, H, W), dtype=np.float32)
        for c in range(self.C):
            sums = self._channel_sums(c).reshape(B, H * W)
            for b in range(B):
                sel = occ[b]
                v = sums[b, sel] / count[b, sel]
                if zscore:
                    v = (v - mean[b, c]) / std[b, c]
                image[b, c].reshape(H * W)[sel] = v
        return image, self._count.reshape(B, H, W).astype(np.int32)


def rasterize(values: np.ndarray, grid: PixelGrid, zscore: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """In-memory shortcut: (n_obs, C) features -> ((B, C, H, W) float32 image, (B, H, W) int32 counts)."""
    values = np.asarray(values)
    b = RasterBuilder(grid, values.shape[1])
    b.add(np.arange(grid.n_obs), values)
    return b.finish(zscore=zscore)


def sample_pixels(image: np.ndarray, grid: PixelGrid) -> np.ndarray:
    """Read every observation's pixel back: (B, C, H, W) (or (B, H, W)) -> (n_obs, C) (or (n_obs,))."""
    if image.ndim == 4:
        return image[grid.slice, :, grid.row, grid.col]
    if image.ndim == 3:
        return image[grid.slice, grid.row, grid.col]
    raise ValueError(f"image must be (B, C, H, W) or (B, H, W), got shape {image.shape}")


__all__ = ["RasterBuilder", "rasterize", "sample_pixels"]
