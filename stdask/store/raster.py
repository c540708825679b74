"""The raster element (encoding ``stdask-raster`` version 1): ``images/<name>/`` of a store, one chunk per tile.

Layout::

    images/<name>/            group: OME-NGFF multiscales metadata as SpatialData writes it (one level),
                              plus attrs["stdask"] = {encoding, version, tile, channels, grid, unit, affine, extra}
    images/<name>/0           (C, H, W) float32, chunks (C, tile, tile): one chunk per tile
    images/<name>/count       (H, W) int32 observations per pixel (0 = empty pixel), same tiles

This module is the zarr side of :mod:`stdask.raster.store`: it writes and opens the element; what the
pixels mean (grids, affine maps, xarray) is the raster layer's business.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from .csr import compressor
from .encoding import IOSpec, read_element, register_read, register_write, spec_of
from .format import IMAGES, StoreFormatError

LABELS_DIR = "labels"

RASTER = IOSpec("stdask-raster", 1)
#: integer label images (``labels/<name>``: segmentation, domains), as SpatialData keeps labels
LABELS = IOSpec("stdask-labels", 1)


@dataclass
class RasterElement:
    """A raster as stored.

    Attributes
    ----------
    values
        (C, H, W) float32 pixel values: a numpy array to write; a dask array (one chunk per tile) when read.
    count
        (H, W) int32 observations per pixel, same kinds.
    attrs
        The group's attributes: NGFF metadata and ``attrs["stdask"]`` (whose ``tile`` sets the chunks).
    """

    values: Any
    count: Any
    attrs: dict

    @property
    def meta(self) -> dict:
        """The stdask metadata (``attrs["stdask"]``)."""
        return self.attrs["stdask"]


def ngff_image_attrs(name: str, affine: np.ndarray | None, channels: list[str], unit: str,
                     microns_per_unit: float | None = None) -> dict:
    """NGFF multiscales metadata of a (c, y, x) image as SpatialData writes it (one level): ``affine`` (3, 3) maps
    pixel (y, x) to store units, ``microns_per_unit`` then to the ``global`` coordinate system (um)."""
    axes = [{"name": "c", "type": "channel"}, {"name": "y", "type": "space", "unit": unit or "unit"},
            {"name": "x", "type": "space", "unit": unit or "unit"}]
    if microns_per_unit and microns_per_unit != 1.0:
        # 'global' is in micrometres, as the shapes element's (stdask.store.sdata_view): pixel -> store units -> um
        affine = np.diag([microns_per_unit, microns_per_unit, 1.0]) @ (np.eye(3) if affine is None else affine)
    if affine is None:
        tr = {"type": "identity"}
    else:
        m = [[1.0, 0.0, 0.0, 0.0],
             [0.0, float(affine[0, 0]), float(affine[0, 1]), float(affine[0, 2])],
             [0.0, float(affine[1, 0]), float(affine[1, 1]), float(affine[1, 2])]]
        tr = {"type": "affine", "affine": m}
    tr["input"] = {"name": name, "axes": axes}
    tr["output"] = {"name": "global", "axes": axes}
    ms = {"axes": axes, "name": name, "version": "0.5-dev-spatialdata",
          "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1.0, 1.0, 1.0]}]}],
          "coordinateTransformations": [tr]}
    return {"ome": {"version": "0.5-dev-spatialdata", "multiscales": [ms],
                    "omero": {"channels": [{"label": c} for c in channels]}},
            "spatialdata_attrs": {"version": "0.3"}}


def _tiled(g: zarr.Group, name: str, values, dtype, tile: int, dims: list[str]) -> None:
    """Write ``values`` as array ``name`` of ``g``, chunked ``tile`` x ``tile`` over its last two (y, x) axes."""
    shape = tuple(values.shape)
    chunks = shape[:-2] + (min(tile, shape[-2]), min(tile, shape[-1]))
    a = g.create_array(name, shape=shape, dtype=dtype, chunks=chunks, compressors=[compressor()],
                       dimension_names=dims)
    a[:] = values


@register_write(RASTER, RasterElement)
def write_raster_element(parent: zarr.Group, key: str, r: RasterElement) -> None:
    tile = int(r.meta["tile"])
    g = parent.create_group(key)
    _tiled(g, "0", r.values, np.float32, tile, ["c", "y", "x"])
    _tiled(g, "count", r.count, np.int32, tile, ["y", "x"])
    g.attrs.update(r.attrs)


@register_read(RASTER)
def read_raster_element(g: zarr.Group) -> RasterElement:
    """The element with lazy values and counts (dask, one chunk per tile); nothing is read yet."""
    import dask.array as da

    values, count = g["0"], g["count"]
    return RasterElement(da.from_zarr(values, chunks=values.chunks), da.from_zarr(count, chunks=count.chunks),
                         dict(g.attrs))


@dataclass
class LabelsElement:
    """A label image as stored: ``values`` (H, W) int32 (0 = background) and the group's attributes (NGFF
    ``multiscales`` + ``image-label`` metadata, and ``attrs["stdask"]`` whose ``tile`` sets the chunks)."""

    values: Any
    attrs: dict


@register_write(LABELS, LabelsElement)
def write_labels_element(parent: zarr.Group, key: str, r: LabelsElement) -> None:
    g = parent.create_group(key)
    _tiled(g, "0", r.values, np.int32, int(r.attrs["stdask"]["tile"]), ["y", "x"])
    g.attrs.update(r.attrs)


@register_read(LABELS)
def read_labels_element(g: zarr.Group) -> LabelsElement:
    """The element with lazy values (dask, one chunk per tile)."""
    import dask.array as da

    return LabelsElement(da.from_zarr(g["0"], chunks=g["0"].chunks), dict(g.attrs))


def labels_group(store: Path) -> None:
    """Make sure ``labels/`` exists as a zarr group of the store."""
    zarr.open_group(str(Path(store) / LABELS_DIR), mode="a", zarr_format=3)


def raster_names(store: Path) -> list[str]:
    """Names of the rasters stored in ``images/`` of the store at ``store``."""
    p = Path(store) / IMAGES
    if not p.exists():
        return []
    g = zarr.open_group(str(p), mode="r", zarr_format=3)
    return sorted(k for k in g.group_keys() if getattr(spec_of(g[k]), "encoding", None) == RASTER.encoding)


def open_raster(store: Path, name: str) -> RasterElement:
    """Open ``images/<name>`` lazily; a missing element is a ``KeyError``, an unknown version a
    :class:`~stdask.store.format.StoreFormatError` naming it."""
    return open_element(store, IMAGES, name)


def open_element(store: Path, folder: str, name: str) -> Any:
    """Open the stdask raster or labels element ``<folder>/<name>`` lazily (``KeyError`` when missing)."""
    p = Path(store) / folder / name
    what = "raster" if folder == IMAGES else "labels"
    if not p.exists():
        have = raster_names(store) if folder == IMAGES else sorted(d.name for d in p.parent.glob("*") if d.is_dir())
        raise KeyError(f"{store}: no {what} {name!r} (have {have})")
    g = zarr.open_group(str(p), mode="r", zarr_format=3)
    if not isinstance(dict(g.attrs).get("stdask"), dict):
        raise StoreFormatError(f"{p}: not a stdask {what} element (no 'stdask' attributes)")
    return read_element(g, f"{what} {name!r} ({p})")


def images_group(store: Path) -> None:
    """Make sure ``images/`` exists as a zarr group of the store."""
    zarr.open_group(str(Path(store) / IMAGES), mode="a", zarr_format=3)


__all__ = ["ngff_image_attrs", "write_source_image", "RASTER", "RasterElement", "write_raster_element", "read_raster_element", "raster_names",
           "open_raster", "open_element", "images_group", "LABELS", "LABELS_DIR", "LabelsElement", "labels_group"]


def write_source_image(root: zarr.Group, name: str, image: np.ndarray, affine: np.ndarray, unit: str,
                       microns_per_unit: float | None, tile: int = 512) -> None:
    """Write an input's image (Visium H&E) as ``images/<name>`` of a store being built (a raster whose every pixel
    counts one observation), in the ``global`` coordinate system of its shapes.

    Parameters
    ----------
    root
        The store's root group.
    image
        (C, H, W) float32 in [0, 1].
    affine
        (3, 3) image pixel (y, x) -> store units.
    """
    C = image.shape[0]
    channels = ["r", "g", "b", "a"][:C] if C <= 4 else [f"c{i}" for i in range(C)]
    attrs = ngff_image_attrs(name, affine, channels, unit, microns_per_unit)
    attrs["stdask"] = {"encoding": RASTER.encoding, "version": RASTER.version, "tile": int(tile),
                       "channels": channels, "grid": {}, "unit": unit,
                       "affine": np.asarray(affine, float).tolist(), "extra": {"source_image": True}}
    count = np.ones(image.shape[1:], np.int32)
    write_raster_element(root.require_group(IMAGES), name, RasterElement(image.astype(np.float32), count, attrs))
