"""Rasters: observations on a pixel grid (``stdask.raster``).

* :mod:`.grid` -- observations to pixels: Visium array positions, quantisation by a pitch (bins, cells),
  or the reference's scale-and-truncate; collisions counted.
* :mod:`.build` -- per-pixel means of feature vectors, streamed chunk by chunk (collisions averaged),
  optionally z-scored per slice.
* :mod:`.tiles` -- square tiles with a halo (fixed-size windows that stack into a batch).
* :mod:`.store` -- rasters as ``images/<name>`` store elements (encoding ``stdask-raster`` v1), read
  lazily as xarray and tile by tile.
* :mod:`.labels` -- a categorical obs column (SpaSEG / STAGUE domains) as a SpatialData labels element.
"""
from .build import RasterBuilder, rasterize, sample_pixels
from .grid import Collisions, PixelGrid, dataset_grid, dataset_pitch, median_nn_distance, quantize
from .store import RASTER_ENCODING, pixel_affine, raster_names, read_raster, read_tiles, write_raster
from .labels import read_labels, write_labels
from .tiles import TileGrid, Window

__all__ = [
    "Collisions", "PixelGrid", "quantize", "median_nn_distance", "dataset_pitch", "dataset_grid",
    "RasterBuilder", "rasterize", "sample_pixels", "TileGrid", "Window",
    "RASTER_ENCODING", "write_raster", "read_raster", "read_tiles", "raster_names", "pixel_affine",
    "write_labels", "read_labels",
]
