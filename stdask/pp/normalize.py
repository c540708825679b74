"""Per-cell normalisation, log transform and per-gene scaling, as lazy layers.

The store's ``X`` keeps the raw counts; each step reads a layer (``layer=``) and adds a new lazy layer
(``key_added=``), so the default chain is ``X -> "normalized" -> "log1p" -> "scaled"``. A lazy layer is a
dask array kept on the dataset as a pending result: the next step uses it at once, nothing is
materialised until ``ds.write()`` streams it into the store chunk by chunk (or a step such as PCA reads it).

Numbers follow scanpy 1.11 on a CSR matrix: per-row operations are the same float32 arithmetic, so
normalised and log layers equal scanpy's bit for bit; per-gene statistics for ``scale`` are exact
(see :mod:`stdask.blocks`), so they do not depend on tiling or scheduling.
"""
from __future__ import annotations

import numba
import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..dataset import SpatialDataset
from ..results import writes_results
from ..blocks import any_columns, column_moments, get_matrix, map_rows, row_values, set_var_table, to_csr


# ----------------------------------------------------------------------------------------------------
# normalize_total
# ----------------------------------------------------------------------------------------------------
@numba.njit(cache=True, nogil=True)
def _row_totals(indptr, indices, data, keep):  # pragma: no cover - numba
    # float64 accumulation of float32 values in stored order, rounded to float32 once: scanpy's kernel
    n = len(indptr) - 1
    out = np.zeros(n, dtype=np.float32)
    for i in range(n):
        s = 0.0
        for j in range(indptr[i], indptr[i + 1]):
            if keep[indices[j]]:
                s += data[j]
        out[i] = s
    return out


def _as_float32(m: sp.csr_matrix) -> sp.csr_matrix:
    # scanpy casts integer counts to float32 before normalising
    return m if m.dtype == np.float32 else m.astype(np.float32)


def totals_block(block, keep: np.ndarray) -> np.ndarray:
    """(n_rows,) float32 row totals of a block over the genes where ``keep`` (n_vars,) bool is True, summed in
    float32 in column order as scanpy does."""
    m = _as_float32(to_csr(block))
    return _row_totals(m.indptr, m.indices, m.data, keep)


def _highly_expressed_block(block, max_fraction: float) -> np.ndarray:
    m = _as_float32(to_csr(block))
    tot = _row_totals(m.indptr, m.indices, m.data, np.ones(m.shape[1], dtype=np.bool_))
    rows = np.repeat(np.arange(m.shape[0]), np.diff(m.indptr))
    hit = m.data > tot[rows] * np.float32(max_fraction)
    out = np.zeros(m.shape[1], dtype=bool)
    out[m.indices[hit]] = True
    return out


def normalize_block(block, target_sum: np.float32, keep: np.ndarray) -> sp.csr_matrix:
    """A block (n_rows, n_vars) scaled so each row sums to ``target_sum`` over the ``keep`` genes: float32 CSR,
    scanpy's ``normalize_total`` bit for bit."""
    m = _as_float32(to_csr(block))
    totals = _row_totals(m.indptr, m.indices, m.data, keep)
    factor = totals / np.float32(target_sum)
    factor = factor + (factor == 0)  # a cell with no counts stays all zero (scanpy: divide by 1, no NaN)
    data = m.data / np.repeat(factor, np.diff(m.indptr))
    return sp.csr_matrix((data.astype(np.float32, copy=False), m.indices, m.indptr), shape=m.shape)


@writes_results(returns_dataset=True)
def normalize_total(ds: SpatialDataset, *, target_sum: float | None = None, exclude_highly_expressed: bool = False,
                    max_fraction: float = 0.05, layer: str = "X", key_added: str = "normalized",
                    progress: bool = True) -> float:
    """Scale every cell to the same total count (scanpy's ``normalize_total``), as a lazy layer.

    Parameters
    ----------
    ds
        The dataset.
    target_sum
        Total of each cell after normalisation. ``None``: the median of the per-cell totals over all cells,
        as scanpy computes it for a sparse matrix (one pass over the data to find it).
    exclude_highly_expressed
        Leave out of each cell's total the genes that have more than ``max_fraction`` of the total counts
        in at least one cell (one more pass).
    max_fraction
        See ``exclude_highly_expressed``; in [0, 1].
    layer
        Input matrix: ``"X"`` (counts) or a layer name.
    key_added
        Name of the output layer.
    progress
        Show progress for the passes that compute statistics.

    Returns
    -------
    float
        The target sum used. The dataset gets ``layers[key_added]``: (n_obs, n_vars) float32 CSR chunks,
        ``x / (total / target_sum)`` per cell, and ``uns["normalize_total"]`` with the parameters.

    Notes
    -----
    A cell with zero counts (or zero counts over the kept genes) keeps all zeros, never NaN: its factor is
    replaced by 1, as scanpy does.

    Raises
    ------
    ValueError
        ``max_fraction`` outside [0, 1], a ``target_sum`` that is not finite and > 0, or a median total of 0
        (more than half the cells have no counts: pass ``target_sum`` or filter cells first).
    """
    if not 0 <= max_fraction <= 1:
        raise ValueError(f"max_fraction must be in [0, 1], got {max_fraction}")
    if target_sum is not None and not (np.isfinite(target_sum) and target_sum > 0):
        raise ValueError(f"target_sum must be a finite number > 0, got {target_sum!r}")
    X = get_matrix(ds, layer)
    keep = np.ones(ds.n_vars, dtype=bool)
    if exclude_highly_expressed:
        keep = ~any_columns(X, _highly_expressed_block, max_fraction=max_fraction, progress=progress,
                            desc="normalize_total: highly expressed genes")
    if target_sum is None:
        totals = row_values(X, totals_block, keep=keep, progress=progress, desc="normalize_total: cell totals")
        target = np.median(totals)  # float32, as scanpy
        if not target > 0:
            raise ValueError(
                f"normalize_total: the median total count per cell is {float(target)} (at least half of the "
                f"{ds.n_obs} cells have no counts in {layer!r}); pass target_sum= or filter cells first "
                "(stdask.pp.filter_cells(ds, min_counts=1))")
    else:
        target = np.float32(target_sum)
    out = map_rows(X, normalize_block, dtype=np.float32, sparse=True, target_sum=target, keep=keep)
    ds.set_result("layers", key_added, out)
    ds.set_result("uns", "normalize_total", {
        "target_sum": float(target), "layer": layer, "key_added": key_added,
        "exclude_highly_expressed": bool(exclude_highly_expressed), "max_fraction": float(max_fraction),
        "n_excluded_genes": int((~keep).sum()),
    })
    return float(target)


# ----------------------------------------------------------------------------------------------------
# log1p
# ----------------------------------------------------------------------------------------------------
def log1p_block(block, base: float | None):
    """``log1p`` of a block in float32 (divided by ``log(base)`` when given), sparse in, sparse out."""
    if sp.issparse(block):
        m = sp.csr_matrix(block)
        data = np.log1p(m.data.astype(np.float32, copy=False))
        if base is not None:
            data = np.divide(data, np.log(base)).astype(np.float32, copy=False)
        return sp.csr_matrix((data, m.indices, m.indptr), shape=m.shape)
    x = np.log1p(np.asarray(block, dtype=np.float32))
    if base is not None:
        x = np.divide(x, np.log(base)).astype(np.float32, copy=False)
    return x


@writes_results(returns_dataset=True)
def log1p(ds: SpatialDataset, *, base: float | None = None, layer: str = "normalized",
          key_added: str = "log1p") -> None:
    """``log(1 + x)`` (natural log, or log base ``base``) of a layer, as a lazy layer.

    Parameters
    ----------
    ds
        The dataset.
    base
        Logarithm base; ``None`` for the natural log.
    layer
        Input layer (default the output of :func:`normalize_total`).
    key_added
        Name of the output layer.

    Notes
    -----
    The dataset gets ``layers[key_added]``, float32 with the input's chunk type (CSR stays CSR), and
    ``uns["log1p"] = {"base": base, "layer": layer}`` (scanpy reads ``uns["log1p"]["base"]``; so does
    :func:`stdask.pp.highly_variable_genes`). Negative values below -1 give NaN, as in numpy; counts and
    normalised counts are >= 0.
    """
    if base is not None and not (np.isfinite(base) and base > 0 and base != 1):
        raise ValueError(f"base must be a finite number > 0 and != 1, got {base!r}")
    X = get_matrix(ds, layer)
    out = map_rows(X, log1p_block, dtype=np.float32, sparse=sp.issparse(X._meta), base=base)
    ds.set_result("layers", key_added, out)
    ds.set_result("uns", "log1p", {"base": base, "layer": layer, "key_added": key_added})


# ----------------------------------------------------------------------------------------------------
# scale
# ----------------------------------------------------------------------------------------------------
def scale_block(block, mean: np.ndarray, std: np.ndarray, zero_center: bool, max_value: float | None):
    """Scale one chunk: ``(x - mean) / std`` (dense float32) or, without centring, ``x / std`` (CSR float32);
    computed in float64, clipped to ``max_value`` (and ``-max_value`` when centred)."""
    if not zero_center:
        m = to_csr(block)
        data = m.data.astype(np.float64) / std[m.indices]
        if max_value is not None:
            data = np.minimum(data, max_value)
        return sp.csr_matrix((data.astype(np.float32), m.indices, m.indptr), shape=m.shape)
    x = block.toarray() if sp.issparse(block) else np.asarray(block)
    x = (x.astype(np.float64) - mean) / std
    if max_value is not None:
        np.clip(x, -max_value, max_value, out=x)
    return x.astype(np.float32)


@writes_results(returns_dataset=True)
def scale(ds: SpatialDataset, *, zero_center: bool = True, max_value: float | None = None, layer: str = "log1p",
          key_added: str = "scaled", progress: bool = True) -> None:
    """Scale each gene to unit variance and, by default, zero mean (scanpy's ``scale``), as a lazy layer.

    Parameters
    ----------
    ds
        The dataset.
    zero_center
        Subtract each gene's mean. The output chunks are then dense: they are densified one chunk at a time
        when read (by ``ds.write()`` or :func:`stdask.pp.pca`), never as a whole.
    max_value
        Clip the scaled values to ``[-max_value, max_value]`` (``(-inf, max_value]`` without centring).
    layer
        Input layer (default the output of :func:`log1p`).
    key_added
        Name of the output layer.
    progress
        Show progress of the statistics pass.

    Notes
    -----
    The dataset gets ``layers[key_added]`` ((n_obs, n_vars) float32: dense chunks with ``zero_center``,
    CSR without), ``varm["scale"]``: a DataFrame with ``mean``, ``std``, ``var`` per gene (float64, as
    scanpy's ``var["mean"]``, ``var["std"]``, ``var["var"]``; ``std`` is the unbiased standard deviation,
    and a constant gene's ``std`` is set to 1 so it scales to 0, as in scanpy), and ``uns["scale"]`` with the
    parameters. Values are computed in float64 and stored as float32 (scanpy returns float64).
    """
    if max_value is not None and not max_value > 0:
        raise ValueError(f"max_value must be > 0, got {max_value!r}")
    X = get_matrix(ds, layer)
    mom = column_moments(X, squares=True, progress=progress, desc="scale: gene statistics")
    mean = mom.means()
    var = mom.variances(ddof=1)
    std = np.sqrt(var)
    std[std == 0] = 1
    out = map_rows(X, scale_block, dtype=np.float32, sparse=not zero_center, mean=mean, std=std,
                   zero_center=zero_center, max_value=max_value)
    ds.set_result("layers", key_added, out)
    set_var_table(ds, "scale", pd.DataFrame({"mean": mean, "std": std, "var": var}))
    ds.set_result("uns", "scale", {"layer": layer, "key_added": key_added, "zero_center": bool(zero_center),
                                   "max_value": max_value})


__all__ = ["normalize_total", "log1p", "scale", "scale_block"]
