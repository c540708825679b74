"""Cell and gene filters (scanpy's ``filter_cells`` / ``filter_genes``) and writing a filtered store.

A store's rows and genes are fixed, so a filter does not shrink the dataset in place: it computes a boolean
mask (recorded as ``obs["pass_filter_cells"]`` / a ``varm`` table with ``pass_filter_genes``) and
:func:`subset` streams the kept rows and genes into a new store, tile by tile, in bounded memory. Every
later step then runs on the new store exactly as scanpy runs on the filtered AnnData.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd

from ..dataset import SpatialDataset, read
from ..results import writes_results
from ..io.base import EntryChunk, Source
from ..blocks import column_moments, get_matrix, row_values, set_var_table, to_csr, var_column


def _limits(func: str, **kw) -> dict:
    """The thresholds given to ``func`` (name -> value), checked: at least one, each finite and >= 0."""
    given = {k: v for k, v in kw.items() if v is not None}
    if not given:
        raise ValueError(f"{func}: give at least one of {', '.join(kw)}")
    for k, v in given.items():
        if not np.isfinite(v) or v < 0:
            raise ValueError(f"{k} must be a finite number >= 0, got {v!r}")
    return given


def _within(n: int, *bounds: tuple[np.ndarray, float | None, float | None]) -> np.ndarray:
    """(n,) bool: every given bound holds; each bound is ``(values, min, max)``, inclusive, ``None`` = none."""
    mask = np.ones(n, dtype=bool)
    for values, lo, hi in bounds:
        if lo is not None:
            mask &= values >= lo
        if hi is not None:
            mask &= values <= hi
    return mask


def _describe(given: dict) -> str:
    return ", ".join(f"{k}={v:g}" for k, v in given.items())


def _cell_counts(block) -> np.ndarray:
    m = to_csr(block)
    totals = np.asarray(m.sum(axis=1), dtype=np.float64).ravel()
    rows = np.repeat(np.arange(m.shape[0]), np.diff(m.indptr))
    genes = np.bincount(rows[m.data > 0], minlength=m.shape[0])  # genes with a count > 0, as scanpy
    return np.column_stack([totals, genes.astype(np.float64)])


@writes_results
def filter_cells(ds: SpatialDataset, *, min_counts: float | None = None, min_genes: int | None = None,
                 max_counts: float | None = None, max_genes: int | None = None, layer: str = "X",
                 key_added: str = "pass_filter_cells", inplace: bool = True,
                 progress: bool = True) -> np.ndarray:
    """Which cells pass count / gene thresholds (scanpy's ``filter_cells``; thresholds are inclusive).

    Parameters
    ----------
    ds
        The dataset.
    min_counts, max_counts
        Bounds on a cell's total count.
    min_genes, max_genes
        Bounds on a cell's number of genes with a count > 0.
    layer
        Matrix to count (the counts ``X`` by default).
    key_added
        ``obs`` column of the mask (with ``inplace``).
    inplace
        Record ``obs[key_added]``, ``obs["n_counts"]`` and ``obs["n_genes"]``.
    progress
        Show progress.

    Returns
    -------
    (n_obs,) bool mask of the cells that pass every given threshold. Unlike scanpy, several thresholds may
    be combined. Use :func:`subset` to write the filtered store.

    Raises
    ------
    ValueError
        No threshold given, a negative threshold, or no cell passes (the message names the thresholds and the
        largest values found).
    """
    given = _limits("filter_cells", min_counts=min_counts, min_genes=min_genes, max_counts=max_counts,
                    max_genes=max_genes)
    per = row_values(get_matrix(ds, layer), _cell_counts, progress=progress, desc="filter_cells")
    counts, genes = per[:, 0], per[:, 1].astype(np.int64)
    mask = _within(ds.n_obs, (counts, min_counts, max_counts), (genes, min_genes, max_genes))
    if not mask.any():
        raise ValueError(
            f"filter_cells({_describe(given)}) removes all {ds.n_obs} cells (counts per cell range "
            f"{counts.min() if len(counts) else 0:g}..{counts.max() if len(counts) else 0:g}, genes per cell "
            f"{genes.min() if len(genes) else 0}..{genes.max() if len(genes) else 0}); loosen the thresholds")
    if inplace:
        ds.set_result("obs", key_added, mask)
        ds.set_result("obs", "n_counts", counts)
        ds.set_result("obs", "n_genes", genes)
    return mask


@writes_results
def filter_genes(ds: SpatialDataset, *, min_counts: float | None = None, min_cells: int | None = None,
                 max_counts: float | None = None, max_cells: int | None = None, layer: str = "X",
                 key_added: str = "pass_filter_genes", inplace: bool = True,
                 progress: bool = True) -> np.ndarray:
    """Which genes pass count / cell thresholds (scanpy's ``filter_genes``; thresholds are inclusive).

    Parameters
    ----------
    ds
        The dataset.
    min_counts, max_counts
        Bounds on a gene's total count over all cells.
    min_cells, max_cells
        Bounds on the number of cells with a count > 0 of the gene.
    layer
        Matrix to count.
    key_added
        Name of the mask column (with ``inplace``).
    inplace
        Record ``varm["filter_genes"]``: a table with ``n_counts``, ``n_cells`` and ``key_added``.
    progress
        Show progress.

    Returns
    -------
    (n_vars,) bool mask of the genes that pass every given threshold.

    Raises
    ------
    ValueError
        No threshold, a negative threshold, or no gene passes (the message names the thresholds and the
        largest values found).
    """
    given = _limits("filter_genes", min_counts=min_counts, min_cells=min_cells, max_counts=max_counts,
                    max_cells=max_cells)
    X = get_matrix(ds, layer)
    # n_cells counts entries > 0 (a stored explicit zero or a negative value is not "expressed")
    pos = X.map_blocks(_positive, dtype=X.dtype, meta=X._meta)
    mom = column_moments(X, squares=False, progress=progress, desc="filter_genes: totals")
    counts = mom.sums()
    cells = column_moments(pos, squares=False, progress=progress, desc="filter_genes: cells").nnz
    mask = _within(ds.n_vars, (counts, min_counts, max_counts), (cells, min_cells, max_cells))
    if not mask.any():
        raise ValueError(
            f"filter_genes({_describe(given)}) removes all {ds.n_vars} genes (total counts per gene range "
            f"{counts.min():g}..{counts.max():g}, cells per gene {cells.min()}..{cells.max()}); "
            "loosen the thresholds")
    if inplace:
        set_var_table(ds, "filter_genes", pd.DataFrame({"n_counts": counts, "n_cells": cells, key_added: mask}))
    return mask


def _positive(block):
    m = to_csr(block).copy()
    m.data = np.where(m.data > 0, m.data, 0).astype(m.data.dtype)
    m.eliminate_zeros()
    return m


# ----------------------------------------------------------------------------------------------------
# writing a subset store
# ----------------------------------------------------------------------------------------------------
class _SubsetSource(Source):
    """The kept rows and genes of a dataset, streamed tile group by tile group (an ingest source)."""

    format_name = "stdask-subset"
    kind = "obs"

    def __init__(self, ds: SpatialDataset, rows: np.ndarray, genes: np.ndarray, layers: tuple[str, ...]) -> None:
        self.path = Path(ds.path)
        self.options = {}
        self.ds = ds
        self.rows = rows
        self.genes = genes
        self._layers = layers
        self._new_row = np.full(ds.n_obs, -1, dtype=np.int64)
        self._new_row[rows] = np.arange(len(rows))
        self._new_gene = np.full(ds.n_vars, -1, dtype=np.int64)
        self._new_gene[genes] = np.arange(len(genes))

    @property
    def var(self) -> pd.DataFrame:
        return self.ds.var.iloc[self.genes]

    @property
    def obs(self) -> pd.DataFrame:
        obs = self.ds.obs.iloc[self.rows]
        return obs.drop(columns=[c for c in ("x", "y", "tile") if c in obs.columns])

    @property
    def coords(self) -> np.ndarray:
        return self.ds.coords[self.rows]

    @property
    def unit(self) -> str:
        return self.ds.unit

    @property
    def spot_diameter(self) -> float | None:
        return self.ds.spot_diameter

    @staticmethod
    def _dtype(name_dtype) -> np.dtype:
        return np.dtype(np.uint32) if np.issubdtype(name_dtype, np.integer) else np.dtype(np.float32)

    @property
    def value_dtype(self) -> np.dtype:
        return self._dtype(self.ds.matrix_info("X").dtype)

    @property
    def layers(self) -> dict[str, np.dtype]:
        return {k: self._dtype(self.ds.matrix_info(k).dtype) for k in self._layers}

    def iter_entries(self, chunk_size: int = 2_000_000) -> Iterator[EntryChunk]:
        starts = self.ds.tile_row_start
        for name in ("X",) + self._layers:
            dtype = self.value_dtype if name == "X" else self.layers[name]
            for a, b in self.ds.tile_groups():
                r0, r1 = int(starts[a]), int(starts[b])
                keep = self._new_row[r0:r1] >= 0
                if not keep.any():
                    continue
                m = self.ds.store.read_rows(r0, r1, name)
                coo = m.tocoo()
                sel = keep[coo.row] & (self._new_gene[coo.col] >= 0)
                yield EntryChunk(self._new_row[coo.row[sel] + r0], self._new_gene[coo.col[sel]].astype(np.int32),
                                 coo.data[sel].astype(dtype), None if name == "X" else name)


def subset(ds: SpatialDataset, path: str | Path, *, obs: np.ndarray | str | None = None,
           var: np.ndarray | str | None = None, layers: tuple[str, ...] = (), tile_size: float | None = None,
           overwrite: bool = False, progress: bool = True) -> SpatialDataset:
    """Write the selected cells and genes of a dataset into a new store and open it.

    Parameters
    ----------
    ds
        The dataset.
    path
        New store path (``*.zarr``).
    obs
        (n_obs,) bool mask or the name of a boolean ``obs`` column (e.g. ``"pass_filter_cells"``);
        ``None``: all cells.
    var
        (n_vars,) bool mask or the name of a boolean per-gene column (e.g. ``"pass_filter_genes"``,
        ``"highly_variable"``); ``None``: all genes.
    layers
        Stored CSR layers to copy besides ``X``.
    tile_size
        Tile side of the new store; default the same as ``ds`` (the grid is anchored at multiples of it, so
        every kept cell stays in its tile).
    overwrite
        Replace an existing store at ``path``.
    progress
        Show progress.

    Returns
    -------
    SpatialDataset
        The new store, with ``X``, the requested layers, obs columns (stored and pending), var and coordinates.
    """
    from ..io.ingest import ingest

    o = np.ones(ds.n_obs, bool) if obs is None else (ds.obs[obs].to_numpy() if isinstance(obs, str) else obs)
    v = np.ones(ds.n_vars, bool) if var is None else (var_column(ds, var) if isinstance(var, str) else var)
    o, v = np.asarray(o), np.asarray(v)
    if o.dtype != bool or o.shape != (ds.n_obs,):
        raise ValueError(f"obs must be a boolean mask of length {ds.n_obs}, got {o.dtype} {o.shape}")
    if v.dtype != bool or v.shape != (ds.n_vars,):
        raise ValueError(f"var must be a boolean mask of length {ds.n_vars}, got {v.dtype} {v.shape}")
    if not o.any() or not v.any():
        raise ValueError(f"subset keeps {int(o.sum())} cells and {int(v.sum())} genes; nothing to write")
    src = _SubsetSource(ds, np.flatnonzero(o), np.flatnonzero(v), tuple(layers))
    out = ingest(src, path, tile_size=tile_size or ds.tiling.tile_size, overwrite=overwrite, progress=progress)
    return read(out, rows_per_chunk=ds.rows_per_chunk)


__all__ = ["filter_cells", "filter_genes", "subset"]
