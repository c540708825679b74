"""AnnData ``.h5ad`` files as stLearn and scanpy users keep them.

The slice is materialised in memory (:meth:`~stdask.datasets.synthetic.SyntheticSlice.to_anndata`), so use
this writer for sizes that fit in memory; the other writers stream.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

STYLES = ("scanpy", "stlearn")


def write_h5ad(
    slice_,
    path: str | Path,
    *,
    style: str = "scanpy",
    normalize: bool = False,
    counts_layer: bool = True,
    library_id: str = "synthetic",
    pixel_size: float | None = None,
) -> dict[str, Any]:
    """Write the slice as ``.h5ad``.

    Layout
    ------
    * ``X``: raw counts (CSR, float32 as scanpy/stLearn users hold them), or with ``normalize=True``
      ``normalize_total`` to 10,000 per observation (float32, no log), the matrix the stLearn CCI tutorial
      feeds; ``layers['counts']`` (uint32 CSR) keeps the raw counts when ``counts_layer``.
    * ``obs``: as :meth:`~stdask.datasets.synthetic.SyntheticSlice.iter_chunks` (``x``, ``y``, ``domain``,
      ``cell_type``, ``hotspot``, ``hotspot_role`` ...).
    * coordinates in pixels of ``pixel_size`` slice units (default 1 unit = 1 pixel: um for Visium and
      cells, DNB for Stereo-seq), ``pixels = coordinate / pixel_size``:

      - ``style="scanpy"``: ``obsm['spatial']`` (n_obs, 2) float64 ``[x, y]`` pixels.
      - ``style="stlearn"``: ``obs['imagecol']`` = x, ``obs['imagerow']`` = y (float64 pixels, scale
        factor 1) and ``obsm['spatial']`` as well.

      Both set ``uns['spatial'][library_id] = {'images': {}, 'scalefactors': {'spot_diameter_fullres':
      diameter / pixel_size, 'tissue_hires_scalef': 1.0, 'tissue_lowres_scalef': 1.0}, 'use_quality':
      'hires'}``.
    * ``uns['synthetic']`` parameters and units, ``uns['synth_truth']`` the planted truth.

    Parameters
    ----------
    slice_
        The :class:`~stdask.datasets.synthetic.SyntheticSlice`.
    path
        Output ``.h5ad``.
    style
        ``"scanpy"`` or ``"stlearn"``.
    normalize
        Store ``normalize_total`` (target 1e4) in ``X``.
    counts_layer
        Keep raw counts in ``layers['counts']``.
    library_id
        Key under ``uns['spatial']``.
    pixel_size
        Slice units per pixel.

    Returns
    -------
    dict
        ``path``, ``seconds``.
    """
    if style not in STYLES:
        raise ValueError(f"unknown style {style!r}; choose one of {', '.join(STYLES)}")
    if pixel_size is not None and not pixel_size > 0:
        raise ValueError(f"pixel_size must be > 0, got {pixel_size!r}")
    t0 = time.perf_counter()
    px = 1.0 if pixel_size is None else float(pixel_size)
    adata = slice_.to_anndata()
    counts = adata.X
    if normalize:
        totals = np.asarray(counts.sum(axis=1), dtype=np.float64).ravel()
        x = sp.diags((1e4 / totals).astype(np.float64)) @ counts.astype(np.float64)
        adata.X = sp.csr_matrix(x, dtype=np.float32)
    else:
        adata.X = counts.astype(np.float32)
    if counts_layer:
        adata.layers["counts"] = counts
    xy = np.column_stack([adata.obs["x"].to_numpy(), adata.obs["y"].to_numpy()]) / px
    adata.obsm["spatial"] = xy.astype(np.float64)
    if style == "stlearn":
        adata.obs["imagecol"] = xy[:, 0]
        adata.obs["imagerow"] = xy[:, 1]
    adata.uns["spatial"] = {
        library_id: {
            "images": {},
            "scalefactors": {
                "spot_diameter_fullres": float(slice_.spot_diameter / px),
                "tissue_hires_scalef": 1.0,
                "tissue_lowres_scalef": 1.0,
            },
            "use_quality": "hires",
        }
    }
    adata.uns["synthetic"]["pixel_size"] = px
    adata.uns["synthetic"]["style"] = style
    adata.write_h5ad(path)
    return dict(path=str(path), seconds=time.perf_counter() - t0)
