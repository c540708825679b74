"""The result of :func:`stdask.tl.cci.run`: summary tables and sparse per-cell matrices.

Only tested entries (score > 0) are stored: at 10^6 cells x 1,500 pairs a dense float64 matrix is 12 GB and
stLearn keeps five. p-values are kept exact as integer exceedance counts plus ``n_pairs``. Dense matrices
with stLearn's layout are built only on export (:meth:`CCIResult.stlearn_obsm`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ...backend import get_kernel
from .correction import adjust_grouped
from .database import LRPairs

STLEARN_KEYS = ("lr_scores", "p_vals", "p_adjs", "-log10(p_adjs)", "lr_sig_scores")


def _csr_structure(n_obs: int, rows: np.ndarray, cols: np.ndarray, values: list[np.ndarray]):
    """CSR ``indptr``/``indices`` of entries (rows, cols), with ``values`` reordered in place to match.

    Entries come grouped by row (tile order, then row order inside a tile) but not sorted by column: each
    row's few entries are sorted in place, so no whole-size permutation or value copy is made. Unsorted rows
    fall back to one global sort.
    """
    rows = np.asarray(rows)
    if len(rows) > 1 and not np.all(rows[1:] >= rows[:-1]):
        perm = np.lexsort((cols, rows))
        rows, cols = rows[perm], cols[perm]
        for k, v in enumerate(values):
            values[k] = v[perm]
    indptr = np.zeros(n_obs + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=n_obs), out=indptr[1:])
    indices = np.ascontiguousarray(cols, dtype=np.int32)
    get_kernel("sort_rows_inplace")(indptr, indices, *values)
    if indptr[-1] < 2**31:
        indptr = indptr.astype(np.int32)
    return indptr, indices, values


@dataclass
class CCIResult:
    """LR hotspot results.

    Attributes
    ----------
    lr_summary
        DataFrame indexed by ``"L_R"`` (int64 ``n_spots``, ``n_spots_sig``, ``n_spots_sig_pval``), sorted by
        ``n_spots_sig`` descending, then name.
    lrfeatures
        stLearn's expression features of the valid pairs (``lr_diagnostics`` reads them).
    pairs
        The valid pairs, in ``lr_summary`` order.
    scores, counts, padj
        (n_obs, n_lr) CSR over the tested entries (one shared index structure): float64 scores, int32
        exceedance counts, float64 adjusted p-values.
    n_pairs
        Background pairs per LR (p = max(count, 1) / n_pairs).
    """

    obs_names: pd.Index
    pairs: LRPairs
    lr_summary: pd.DataFrame
    lrfeatures: pd.DataFrame
    scores: sp.csr_matrix
    counts: sp.csr_matrix
    padj: sp.csr_matrix
    n_pairs: int
    min_expr: float
    cutoff: float
    params: dict = field(default_factory=dict)
    background_pairs: dict | None = None

    # ---- construction ---------------------------------------------------------------------------------
    @classmethod
    def from_entries(cls, *, n_obs, obs_names, pairs: LRPairs, rows, pair, score, count, padj, n_pairs, min_expr,
                     cutoff, lrfeatures, params, background_pairs=None, consume: bool = False) -> "CCIResult":
        n_lr = len(pairs)
        names = pairs.names
        n_spots, n_sig, n_sig_p = get_kernel("summary_counts")(
            np.asarray(pair), np.asarray(score, dtype=np.float64), np.asarray(count),
            np.asarray(padj, dtype=np.float64), n_lr, float(n_pairs), float(min_expr), float(cutoff))
        order = np.lexsort((names.astype(str), -n_sig))  # Q1: n_spots_sig desc, then name
        rank = np.empty(n_lr, np.int64)
        rank[order] = np.arange(n_lr)
        summary = pd.DataFrame({"n_spots": n_spots[order].astype(np.int64),
                                "n_spots_sig": n_sig[order].astype(np.int64),
                                "n_spots_sig_pval": n_sig_p[order].astype(np.int64)},
                               index=pd.Index(names[order], dtype=object))
        col = rank.astype(np.int32)[pair]
        # the entries are re-ordered in place: copy them unless the caller hands them over (``consume``)
        take = np.asarray if consume else np.array
        vals = [take(score, dtype=np.float64), take(count, dtype=np.int32), take(padj, dtype=np.float64)]
        indptr, indices, (sv, cv, pv) = _csr_structure(n_obs, rows, col, vals)
        del col, vals
        # the three matrices share one index structure (they have the same entries)
        scores, counts, padj_m = (sp.csr_matrix((v, indices, indptr), shape=(n_obs, n_lr)) for v in (sv, cv, pv))
        for m in (scores, counts, padj_m):
            m.has_sorted_indices = True
        return cls(pd.Index(obs_names), LRPairs(pairs.ligand[order], pairs.receptor[order]), summary, lrfeatures,
                   scores, counts, padj_m, int(n_pairs), float(min_expr), float(cutoff), params, background_pairs)

    # ---- views -------------------------------------------------------------------------------------------
    @property
    def lrs(self) -> np.ndarray:
        return self.lr_summary.index.to_numpy()

    def pvals(self) -> sp.csr_matrix:
        """(n_obs, n_lr) raw p-values over the tested entries (untested entries are p = 1, not stored)."""
        p = self.counts.copy().astype(np.float64)
        p.data = np.maximum(p.data, 1) / float(self.n_pairs)
        return p

    def dense(self, key: str) -> np.ndarray:
        """One of stLearn's five (n_obs, n_lr) float64 matrices, densified."""
        if key == "lr_scores":
            return self.scores.toarray()
        if key == "p_vals":
            return _fill(self.pvals(), 1.0)
        if key == "p_adjs":
            return _fill(self.padj, 1.0)
        if key == "-log10(p_adjs)":
            return -np.log10(_fill(self.padj, 1.0))
        if key == "lr_sig_scores":
            s = self.scores.copy()
            s.data = np.where(self.padj.data < self.cutoff, s.data, 0.0)
            s.eliminate_zeros()
            return s.toarray()
        raise KeyError(f"{key!r}; one of {STLEARN_KEYS}")

    def stlearn_obsm(self) -> dict[str, np.ndarray]:
        """stLearn's obsm matrices (dense float64, columns in ``lr_summary`` order)."""
        n = self.scores.shape[0] * self.scores.shape[1] * 8 * 5
        if n > 2 * 2**30:
            import warnings

            warnings.warn(f"densifying the CCI results for AnnData export takes {n / 2**30:.1f} GiB", stacklevel=2)
        return {k: self.dense(k) for k in STLEARN_KEYS}

    def to_xarray(self, key: str = "lr_scores"):
        """A labelled (obs x lr) :class:`xarray.DataArray` of one matrix (dense; for small data)."""
        import xarray as xr

        return xr.DataArray(self.dense(key), dims=("obs", "lr"),
                            coords={"obs": np.asarray(self.obs_names), "lr": self.lrs}, name=key)

    # ---- adjusting ---------------------------------------------------------------------------------------
    def adjusted(self, correct_axis: str | None = "spot", pval_adj_cutoff: float = 0.05,
                 adj_method: str = "fdr_bh") -> "CCIResult":
        """stLearn ``adj_pvals``: re-correct from the raw p-values and re-sort (stable rule)."""
        coo = self.counts.tocoo()
        p = np.maximum(coo.data, 1) / float(self.n_pairs)
        if correct_axis == "spot":
            padj = adjust_grouped(p, coo.row, adj_method)
        elif correct_axis == "LR":
            padj = adjust_grouped(p, coo.col, adj_method)
        elif correct_axis is None:
            padj = p.copy()
        else:
            raise ValueError(f"correct_axis must be 'spot', 'LR' or None, got {correct_axis!r}")
        sc = self.scores.tocoo()
        assert np.array_equal(sc.row, coo.row) and np.array_equal(sc.col, coo.col)
        return CCIResult.from_entries(
            n_obs=self.scores.shape[0], obs_names=self.obs_names, pairs=self.pairs, rows=coo.row, pair=coo.col,
            score=sc.data, count=coo.data, padj=padj, n_pairs=self.n_pairs, min_expr=self.min_expr,
            cutoff=pval_adj_cutoff, lrfeatures=self.lrfeatures,
            params={**self.params, "correct_axis": correct_axis, "adj_method": adj_method,
                    "pval_adj_cutoff": float(pval_adj_cutoff)},
            background_pairs=self.background_pairs)

    # ---- storage -----------------------------------------------------------------------------------------
    def store(self, ds) -> None:
        """Attach to ``ds`` (written by ``ds.write()``): sparse obsm matrices and uns tables."""
        ds.set_result("obsm", "lr_scores", self.scores)
        ds.set_result("obsm", "lr_pval_counts", self.counts)
        ds.set_result("obsm", "p_adjs", self.padj)
        ds.set_result("uns", "lr_summary", self.lr_summary)
        ds.set_result("uns", "lrfeatures", self.lrfeatures)
        ds.set_result("uns", "lr_cci", {"n_pairs": self.n_pairs, "min_expr": self.min_expr, "cutoff": self.cutoff,
                                        "ligand": self.pairs.ligand.astype(str),
                                        "receptor": self.pairs.receptor.astype(str),
                                        "params": {k: v for k, v in self.params.items() if v is not None}})

    @classmethod
    def load(cls, ds) -> "CCIResult":
        """Read results stored by :meth:`store` (pending or written)."""
        meta = ds.get_result("uns", "lr_cci")
        summary = ds.get_result("uns", "lr_summary")
        pairs = LRPairs(np.asarray(meta["ligand"], dtype=object), np.asarray(meta["receptor"], dtype=object))
        return cls(pd.Index(ds.obs_names), pairs, summary, ds.get_result("uns", "lrfeatures"),
                   sp.csr_matrix(ds.get_result("obsm", "lr_scores")),
                   sp.csr_matrix(ds.get_result("obsm", "lr_pval_counts")),
                   sp.csr_matrix(ds.get_result("obsm", "p_adjs")), int(meta["n_pairs"]), float(meta["min_expr"]),
                   float(meta["cutoff"]), dict(meta.get("params", {})))


def _fill(m: sp.csr_matrix, fill: float) -> np.ndarray:
    """Dense array with the stored entries of ``m`` and ``fill`` elsewhere."""
    out = np.full(m.shape, fill, dtype=np.float64)
    coo = m.tocoo()
    out[coo.row, coo.col] = coo.data
    return out
