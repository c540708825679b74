"""Categorical observation values (SpaSEG / STAGUE domains, clusters) as a SpatialData labels element.

``labels/<name>/`` holds an int32 image on the slice's pixel grid (:func:`stdask.raster.grid.dataset_grid`): a pixel
holding observations gets its category's code + 1, an empty pixel 0 (SpatialData's background). Where several
observations share a pixel the commonest category wins (ties: the smaller code). The NGFF metadata maps pixels to
the store's ``global`` coordinate system (micrometres when the store knows its scale), as the shapes element's,
so napari-spatialdata and spatialdata-plot overlay the domains on the spots or cells; the categories are listed in
``image-label.properties``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..store.raster import LABELS, LABELS_DIR, LabelsElement, labels_group, open_element
from ..store.reader import open_root
from ..store.update import write_elements
from .grid import dataset_grid
from .store import DEFAULT_TILE, pixel_affine

__all__ = ["write_labels", "read_labels", "pixel_labels"]

NGFF_VERSION = "0.5-dev-spatialdata"


def pixel_labels(pixel: np.ndarray, label: np.ndarray, n_pixels: int) -> np.ndarray:
    """(n_pixels,) int32: per flat pixel, the commonest ``label`` among its observations (ties: the smaller
    label; 0 where no observation lies).

    Parameters
    ----------
    pixel
        (n,) int64 flat pixel index of each observation.
    label
        (n,) int32 label (>= 1; 0 = observation without a category, which never wins over a category).
    n_pixels
        H x W.
    """
    out = np.zeros(n_pixels, np.int32)
    keep = label > 0
    if not keep.any():
        return out
    pairs = np.unique(np.column_stack([pixel[keep], label[keep]]), axis=0, return_counts=True)
    (px, lab), count = pairs[0].T, pairs[1]
    # per pixel, the pair with the largest count, then the smallest label
    order = np.lexsort((lab, -count, px))
    first = np.concatenate([[True], px[order][1:] != px[order][:-1]])
    out[px[order][first]] = lab[order][first]
    return out


def _ngff(name: str, affine: np.ndarray, categories: list[str]) -> dict:
    axes = [{"name": "y", "type": "space", "unit": "unit"}, {"name": "x", "type": "space", "unit": "unit"}]
    tr = {"type": "affine", "affine": [[float(v) for v in row] for row in affine[:2]],
          "input": {"name": name, "axes": axes}, "output": {"name": "global", "axes": axes}}
    ms = {"axes": axes, "name": name, "version": NGFF_VERSION, "coordinateTransformations": [tr],
          "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1.0, 1.0]}]}]}
    props = [{"label-value": i + 1, "category": c} for i, c in enumerate(categories)]
    return {"ome": {"version": NGFF_VERSION, "multiscales": [ms],
                    "image-label": {"version": NGFF_VERSION, "properties": props}},
            "spatialdata_attrs": {"version": "0.3"}}


def write_labels(ds, key: str, *, name: str | None = None, pitch: float | None = None,
                 tile: int = DEFAULT_TILE) -> Path:
    """Write the categorical obs column ``key`` of ``ds`` as the labels element ``labels/<name>`` (committed now).

    Parameters
    ----------
    ds
        A :class:`~stdask.dataset.SpatialDataset`; ``obs[key]`` may be pending (e.g. just computed by
        ``sd.tl.spaseg(ds)`` or ``sd.tl.stague(ds)``, whose domains are ``obs['spaseg']`` / ``obs['stague']``).
    key
        The obs column; its categories (in order) become labels 1, 2, ...; missing values stay background.
    name
        Element name (default ``key``).
    pitch
        Store units per pixel (default :func:`stdask.raster.grid.dataset_pitch`: the bin size, or the median
        nearest-neighbour distance).
    tile
        Chunk side in pixels.

    Returns
    -------
    Path of the element.
    """
    name = name or key
    if "/" in name or name.startswith(".") or not name:
        raise ValueError(f"invalid labels name {name!r}")
    obs = ds.obs
    if key not in obs:
        found = [c for c in obs.columns if isinstance(obs[c].dtype, pd.CategoricalDtype)]
        raise KeyError(f"no obs column {key!r} to write as labels; categorical columns: {', '.join(found) or 'none'}")
    values = pd.Categorical(obs[key])
    if len(values.categories) >= np.iinfo(np.int32).max:
        raise ValueError(f"obs[{key!r}] has {len(values.categories)} categories; labels hold at most 2^31 - 2")
    grid = dataset_grid(ds, pitch=pitch)
    H, W = grid.height, grid.width
    image = pixel_labels(grid.row * W + grid.col, values.codes.astype(np.int32) + 1, H * W).reshape(H, W)
    affine = pixel_affine(grid.row, grid.col, np.asarray(ds.coords, dtype=np.float64))
    mpu = ds.microns_per_unit
    if mpu:  # 'global' is in micrometres, as the shapes element's
        affine = np.diag([mpu, mpu, 1.0]) @ affine
    categories = [str(c) for c in values.categories]
    attrs = _ngff(name, affine, categories)
    attrs["stdask"] = {"encoding": LABELS.encoding, "version": LABELS.version, "tile": int(max(1, tile)),
                       "key": key, "categories": categories, "grid": grid.meta(), "unit": ds.unit}
    root = Path(ds.path)
    open_root(root)
    labels_group(root)
    write_elements(root, [(LABELS_DIR, name, LabelsElement(image, attrs))])
    return root / LABELS_DIR / name


def read_labels(ds, name: str):
    """``labels/<name>`` as a lazy (y, x) int32 ``xarray.DataArray`` (attrs: categories, grid, unit)."""
    import xarray as xr

    element = open_element(Path(ds.path), LABELS_DIR, name)
    return xr.DataArray(element.values, dims=("y", "x"), name=name, attrs=element.attrs["stdask"])
