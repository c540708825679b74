"""Rasters as store elements: ``images/<name>/`` of a slice store, one chunk per tile.

The element (encoding ``stdask-raster`` version 1) is written and opened by :mod:`stdask.store.raster`
through the encoding registry; this module gives it its meaning. ``spatialdata.read_zarr`` sees an image
element (axes c, y, x) whose transformation to the ``global`` coordinate system is the affine map from pixel
centres to store coordinates, fitted to the observations (exact for lattices). The element is written aside
and renamed into place, so a crash leaves the old element or the new one. A reader refuses an encoding
version it does not know.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..store.format import IMAGES
from ..store.raster import RASTER, RasterElement, images_group, ngff_image_attrs, open_raster
from ..store.raster import raster_names as stored_raster_names
from ..store.reader import StoreReader, open_root
from ..store.update import write_elements

RASTER_ENCODING = RASTER.encoding
RASTER_VERSION = RASTER.version

#: default tile side (pixels) of a stored raster: 256 x 256 x 15 float32 = 3.9 MB per chunk
DEFAULT_TILE = 256


def _store_path(target) -> Path:
    return Path(getattr(target, "path", target))


def pixel_affine(row: np.ndarray, col: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """Least-squares affine map from pixel centres to coordinates.

    Parameters
    ----------
    row, col
        (n,) pixel of each observation.
    coords
        (n, 2) x, y of each observation, store units.

    Returns
    -------
    (3, 3) float64 ``A`` with ``[y, x, 1] = A @ [row + 0.5, col + 0.5, 1]`` (NGFF's (y, x) axis order;
    ``row``/``col`` index the image's first/second spatial axis).
    """
    P = np.column_stack([row + 0.5, col + 0.5, np.ones(len(row))]).astype(np.float64)
    target = np.column_stack([coords[:, 1], coords[:, 0]])  # (y, x)
    sol, *_ = np.linalg.lstsq(P, target, rcond=None)
    A = np.eye(3)
    A[:2, :] = sol.T
    return A


def write_raster(target, name: str, image: np.ndarray, count: np.ndarray | None = None, *,
                 channels: list[str] | None = None, grid: dict | None = None, affine: np.ndarray | None = None,
                 tile: int = DEFAULT_TILE, unit: str | None = None, attrs: dict | None = None) -> Path:
    """Write one slice's raster into a store as ``images/<name>`` (replacing an existing one atomically).

    Parameters
    ----------
    target
        A :class:`~stdask.dataset.SpatialDataset` or a store path.
    name
        Element name (no ``/``).
    image
        (C, H, W) float32 values.
    count
        (H, W) observations per pixel (default: all ones).
    channels
        C channel names (default ``c0, c1, ...``).
    grid
        Pixel-grid description (:meth:`stdask.raster.grid.PixelGrid.meta`).
    affine
        (3, 3) pixel-centre -> store-coordinate map (:func:`pixel_affine`); ``None`` = identity.
    tile
        Chunk side in pixels (one chunk per tile).
    unit
        Coordinate unit (default the dataset's).
    attrs
        More JSON-able metadata kept under ``attrs["stdask"]["extra"]``.

    Returns
    -------
    Path of the element.
    """
    if "/" in name or name.startswith(".") or not name:
        raise ValueError(f"invalid raster name {name!r}")
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 3:
        raise ValueError(f"image must be (C, H, W), got shape {image.shape}")
    C, H, W = image.shape
    count = np.ones((H, W), np.int32) if count is None else np.asarray(count, dtype=np.int32)
    if count.shape != (H, W):
        raise ValueError(f"count must be ({H}, {W}), got {count.shape}")
    channels = [str(c) for c in (channels or [f"c{i}" for i in range(C)])]
    if len(channels) != C:
        raise ValueError(f"{len(channels)} channel names for {C} channels")
    tile = int(max(1, tile))
    root_path = _store_path(target)
    if unit is None:
        unit = getattr(target, "unit", "") or ""
    open_root(root_path)  # refuse anything but a committed stdask store
    mpu = getattr(target, "microns_per_unit", None) if hasattr(target, "path") else StoreReader(root_path).microns_per_unit
    meta = ngff_image_attrs(name, affine, channels, unit, mpu)
    meta["stdask"] = {"encoding": RASTER_ENCODING, "version": RASTER_VERSION, "tile": tile,
                      "channels": channels, "grid": grid or {}, "unit": unit,
                      "affine": None if affine is None else np.asarray(affine, float).tolist(),
                      "extra": attrs or {}}
    images_group(root_path)
    write_elements(root_path, [(IMAGES, name, RasterElement(image, count, meta))])
    return root_path / IMAGES / name


def raster_names(target) -> list[str]:
    """Names of the stdask rasters stored in ``images/``."""
    return stored_raster_names(_store_path(target))


def read_raster(target, name: str, count: bool = False):
    """Open a stored raster lazily as an :class:`xarray.DataArray`.

    Parameters
    ----------
    target
        Dataset or store path.
    name
        Element name.
    count
        Return the (y, x) observation-count image instead of the values.

    Returns
    -------
    ``DataArray`` with dims ``("c", "y", "x")`` (or ``("y", "x")``), backed by dask with one chunk per
    tile; ``attrs`` hold the stdask metadata (``tile``, ``grid``, ``affine``, ``unit``, ``channels``).
    Nothing is read until values are asked for.
    """
    import xarray as xr

    r = open_raster(_store_path(target), name)
    meta = r.meta
    if count:
        return xr.DataArray(r.count, dims=("y", "x"), name=f"{name}_count", attrs=meta)
    return xr.DataArray(r.values, dims=("c", "y", "x"), coords={"c": meta["channels"]}, name=name, attrs=meta)


def read_tiles(target, name: str, halo: int, tile: int | None = None):
    """Iterate over a stored raster tile by tile, each with a ``halo``-pixel border.

    Yields ``(window, values, inside, own)``: the :class:`~stdask.raster.tiles.Window`, its (C, s, s)
    float32 values (zero outside the frame), and (s, s) bool masks of pixels inside the frame and of the
    tile's own pixels (s = tile + 2 halo). Only one window is in memory at a time.
    """
    from .tiles import TileGrid

    r = read_raster(target, name)
    C, H, W = r.shape
    tg = TileGrid((1, H, W), tile or int(r.attrs["tile"]), halo)
    arr4 = r.data[None]
    for w in tg:
        inside, own = tg.masks(w)
        yield w, tg.read(arr4, w), inside, own


__all__ = ["RASTER_ENCODING", "RASTER_VERSION", "write_raster", "read_raster", "read_tiles", "raster_names",
           "pixel_affine", "DEFAULT_TILE"]
