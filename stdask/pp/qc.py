"""Quality-control metrics per cell and per gene (scanpy's ``calculate_qc_metrics``), one pass over tiles.

Per-cell metrics are row-wise (exact whatever the chunking); per-gene totals and means use the exact column
sums of :mod:`stdask.blocks`.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numba
import numpy as np
import pandas as pd

from ..dataset import SpatialDataset
from ..results import writes_results
from ..blocks import column_moments, get_matrix, row_values, set_var_table, to_csr, var_column


@numba.njit(cache=True, nogil=True)
def _row_stats(indptr, data, tops):  # pragma: no cover - numba
    # per row: non-zero count, total (float64), and the sum of the largest tops[t] values
    n = len(indptr) - 1
    nnz = np.zeros(n, dtype=np.int64)
    tot = np.zeros(n, dtype=np.float64)
    top = np.zeros((n, len(tops)), dtype=np.float64)
    for i in range(n):
        v = data[indptr[i] : indptr[i + 1]].astype(np.float64)
        nnz[i] = np.count_nonzero(v)
        tot[i] = v.sum()
        if len(tops):
            srt = np.sort(v)[::-1]
            acc = 0.0
            prev = 0
            for t in range(len(tops)):
                stop = min(tops[t], len(srt))
                for j in range(prev, stop):
                    acc += srt[j]
                prev = max(prev, stop)
                top[i, t] = acc
    return nnz, tot, top


def _qc_block(block, tops: np.ndarray, qc_masks: dict[str, np.ndarray], log1p: bool) -> pd.DataFrame:
    m = to_csr(block)
    m.sort_indices()
    nnz, tot, top = _row_stats(m.indptr.astype(np.int64), m.data, tops)
    out = {"n_genes_by_counts": nnz, "total_counts": tot}
    with np.errstate(invalid="ignore", divide="ignore"):
        for t, n in enumerate(tops):
            out[f"pct_counts_in_top_{n}_genes"] = top[:, t] / tot * 100
        for name, mask in qc_masks.items():
            sub = np.asarray(m[:, mask].sum(axis=1), dtype=np.float64).ravel()
            out[f"total_counts_{name}"] = sub
            if log1p:
                out[f"log1p_total_counts_{name}"] = np.log1p(sub)
            out[f"pct_counts_{name}"] = sub / tot * 100
    return pd.DataFrame(out)


@writes_results(returns_dataset=True)
def calculate_qc_metrics(ds: SpatialDataset, *, qc_vars: Sequence[str] | Mapping[str, np.ndarray] = (),
                         percent_top: Sequence[int] | None = (50, 100, 200, 500), layer: str = "X",
                         log1p: bool = True, inplace: bool = True,
                         progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-cell and per-gene QC metrics, with scanpy's names.

    Parameters
    ----------
    ds
        The dataset.
    qc_vars
        Gene sets for ``total_counts_<name>`` / ``pct_counts_<name>``: names of boolean per-gene columns
        (e.g. ``"mt"``, found in ``var`` or a ``varm`` table), or a mapping name -> (n_vars,) bool mask.
    percent_top
        Ranks ``n`` for ``pct_counts_in_top_<n>_genes`` (share of a cell's counts in its ``n`` most
        expressed genes, in %). ``None`` or empty: none.
    layer
        Matrix to describe (counts by default).
    log1p
        Also give ``log1p_`` versions of the count metrics.
    inplace
        Write per-cell metrics as ``obs`` columns and the per-gene table as ``varm["qc"]``.
    progress
        Show progress.

    Returns
    -------
    obs_metrics, var_metrics
        DataFrames indexed by observation / gene name. Per cell: ``n_genes_by_counts`` (int64),
        ``total_counts`` (float64), their ``log1p_``, ``pct_counts_in_top_<n>_genes``, and per gene set
        ``total_counts_<name>``, ``log1p_total_counts_<name>``, ``pct_counts_<name>`` (%). Per gene:
        ``n_cells_by_counts``, ``mean_counts``, ``log1p_mean_counts``, ``pct_dropout_by_counts`` (%),
        ``total_counts``, ``log1p_total_counts``. Percentages of a cell with no counts are NaN, as in scanpy.
    """
    if isinstance(qc_vars, Mapping):
        masks = {k: np.asarray(v, dtype=bool) for k, v in qc_vars.items()}
    else:
        masks = {k: np.asarray(var_column(ds, k), dtype=bool) for k in qc_vars}
    for k, v in masks.items():
        if v.shape != (ds.n_vars,):
            raise ValueError(f"qc_vars[{k!r}] has shape {v.shape}; expected ({ds.n_vars},)")
    tops = np.array(sorted(percent_top or ()), dtype=np.int64)
    if len(tops) and tops.min() < 1:
        raise ValueError(f"percent_top values must be >= 1, got {list(percent_top)}")
    X = get_matrix(ds, layer)
    obs = row_values(X, _qc_block, tops=tops, qc_masks=masks, log1p=log1p, progress=progress, desc="qc metrics: cells")
    obs.index = ds.obs_names
    if log1p:
        obs.insert(1, "log1p_n_genes_by_counts", np.log1p(obs["n_genes_by_counts"]))
        obs.insert(3, "log1p_total_counts", np.log1p(obs["total_counts"]))
    mom = column_moments(X, squares=False, progress=progress, desc="qc metrics: genes")
    var = pd.DataFrame(index=ds.var_names)
    var["n_cells_by_counts"] = mom.nnz
    var["mean_counts"] = mom.means()
    if log1p:
        var["log1p_mean_counts"] = np.log1p(var["mean_counts"])
    var["pct_dropout_by_counts"] = (1 - mom.nnz / ds.n_obs) * 100
    var["total_counts"] = mom.sums()
    if log1p:
        var["log1p_total_counts"] = np.log1p(var["total_counts"])
    if inplace:
        for col in obs.columns:
            ds.set_result("obs", col, obs[col].to_numpy())
        set_var_table(ds, "qc", var)
    return obs, var


__all__ = ["calculate_qc_metrics"]
