"""In-memory AnnData as an ingest source (for data that already fits in memory, and for tests)."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .base import EntryChunk, InputError, Source
from .h5ad import IMAGE_COLUMNS, library_spot_diameter


def _value_dtype(m) -> np.dtype:
    return np.dtype(np.uint32) if np.issubdtype(m.dtype, np.integer) else np.dtype(np.float32)


def spatial_coords(obs: pd.DataFrame, obsm, where: str) -> np.ndarray:
    """(n, 2) x, y from ``obsm['spatial']`` or stLearn's ``obs['imagecol']`` / ``obs['imagerow']``."""
    if "spatial" in obsm:
        c = np.asarray(obsm["spatial"], dtype=np.float64)
        if c.ndim != 2 or c.shape[1] < 2:
            raise InputError(f"{where}: obsm['spatial'] has shape {c.shape}, expected (n_obs, 2)")
        return c[:, :2]
    col, row = IMAGE_COLUMNS
    if col in obs and row in obs:
        return np.column_stack([obs[col].to_numpy(np.float64), obs[row].to_numpy(np.float64)])
    raise InputError(f"{where}: no coordinates; looked for obsm['spatial'] and obs['{col}']/obs['{row}']")


class AnnDataSource(Source):
    """An in-memory :class:`anndata.AnnData` (coordinates in ``obsm['spatial']`` or stLearn's obs columns)."""

    format_name = "anndata"
    kind = "obs"

    def __init__(self, adata, unit: str = "um", spot_diameter: float | None = None) -> None:
        self.path = Path("<AnnData>")
        self.options = {}
        self.adata = adata
        self._unit = unit
        self._spot = spot_diameter

    @property
    def var(self) -> pd.DataFrame:
        return self.adata.var

    @property
    def obs(self) -> pd.DataFrame:
        return self.adata.obs

    @property
    def coords(self) -> np.ndarray:
        return spatial_coords(self.adata.obs, self.adata.obsm, "AnnData")

    @property
    def unit(self) -> str:
        return self._unit

    @property
    def spot_diameter(self) -> float | None:
        if self._spot is not None:
            return self._spot
        # stLearn's basis whatever the coordinates: spot_diameter_fullres x tissue_<use_quality>_scalef
        return library_spot_diameter(self.adata.uns.get("spatial"), image_units=True)

    @property
    def uns(self) -> dict:
        return {"spatial": self.adata.uns["spatial"]} if "spatial" in self.adata.uns else {}

    @property
    def value_dtype(self) -> np.dtype:
        return _value_dtype(self.adata.X)

    @property
    def layers(self) -> dict[str, np.dtype]:
        return {k: _value_dtype(v) for k, v in self.adata.layers.items()}

    @property
    def obsm(self) -> dict[str, np.ndarray]:
        return {k: np.asarray(v) for k, v in self.adata.obsm.items()
                if k != "spatial" and not isinstance(v, pd.DataFrame)}

    def iter_entries(self, chunk_size: int = 2_000_000) -> Iterator[EntryChunk]:
        mats = [(None, self.adata.X)] + list(self.adata.layers.items())
        for layer, m in mats:
            dtype = _value_dtype(m)
            step = max(1, chunk_size // max(1, self.adata.n_vars))
            for r0 in range(0, self.adata.n_obs, step):
                block = sp.coo_matrix(m[r0 : r0 + step])
                if block.nnz and block.data.min() < 0 and dtype.kind == "u":
                    raise InputError(f"AnnData {'X' if layer is None else layer}: negative counts")
                yield EntryChunk(block.row.astype(np.int64) + r0, block.col.astype(np.int32),
                                 block.data.astype(dtype), layer)
