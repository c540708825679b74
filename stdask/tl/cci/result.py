"""The result of :func:`stdask.tl.cci.run`: summary tables and sparse per-cell matrices.

Only tested entries (score > 0) are stored: at 10^6 cells x 1,500 pairs a dense float64 matrix is 12 GB and
stLearn keeps five. p-values are kept exact as integer exceedance counts plus ``n_pairs``. Dense matrices
with stLearn's layout are built only on export (:meth:`CCIResult.stlearn_obsm`).

A run's matrices stay where its tasks wrote them (:mod:`.entries`) and a loaded result's in the store: both are
dask arrays of row blocks, read whole only when ``scores``, ``counts`` or ``padj`` is asked for (and by
:meth:`CCIResult.adjusted` along LRs with a method other than ``'fdr_bh'``); :meth:`CCIResult.row_blocks`,
:meth:`CCIResult.store` and the other corrections never read them whole.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import dask.array as da
import numpy as np
import pandas as pd
import scipy.sparse as sp

from ...backend import get_kernel
from .correction import adjust_grouped
from .database import LRPairs
from ...store.row_parts import gather, iter_blocks
from .entries import KINDS, EntryParts, covering, csr_structure
from .readjust import readjusted_parts, streams

STLEARN_KEYS = ("lr_scores", "p_vals", "p_adjs", "-log10(p_adjs)", "lr_sig_scores")


#: obsm key of each matrix
OBSM_KEYS = {"score": "lr_scores", "count": "lr_pval_counts", "padj": "p_adjs"}
_ATTR = {"score": "_scores", "count": "_counts", "padj": "_padj"}
#: rows per block when stored matrices are read lazily
_STORED_ROWS = 1 << 16


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
        exceedance counts, float64 adjusted p-values. A result of :func:`~stdask.tl.cci.run` or
        :meth:`load` holds them as ``lazy`` dask arrays of row blocks and reads them into memory only when
        one of these is asked for; :meth:`row_blocks` and :meth:`store` never do.
    n_pairs
        Background pairs per LR (p = max(count, 1) / n_pairs).
    lazy
        ``{"score" | "count" | "padj": (n_obs, n_lr) dask array of CSR row blocks}`` (same row chunks), or
        ``None`` when the matrices are in memory.
    """

    obs_names: pd.Index
    pairs: LRPairs
    lr_summary: pd.DataFrame
    lrfeatures: pd.DataFrame
    _scores: sp.csr_matrix | None = field(repr=False)
    _counts: sp.csr_matrix | None = field(repr=False)
    _padj: sp.csr_matrix | None = field(repr=False)
    n_pairs: int
    min_expr: float
    cutoff: float
    params: dict = field(default_factory=dict)
    background_pairs: dict | None = None
    lazy: dict[str, da.Array] | None = field(default=None, repr=False)

    # ---- construction ---------------------------------------------------------------------------------
    @staticmethod
    def _ordered(names: np.ndarray, n_spots, n_sig, n_sig_p) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
        """``lr_summary`` (Q1: n_spots_sig desc, then name), the pairs' order and each pair's rank in it."""
        order = np.lexsort((names.astype(str), -np.asarray(n_sig)))
        rank = np.empty(len(names), np.int64)
        rank[order] = np.arange(len(names))
        summary = pd.DataFrame({"n_spots": np.asarray(n_spots)[order].astype(np.int64),
                                "n_spots_sig": np.asarray(n_sig)[order].astype(np.int64),
                                "n_spots_sig_pval": np.asarray(n_sig_p)[order].astype(np.int64)},
                               index=pd.Index(names[order], dtype=object))
        return summary, order, rank

    @classmethod
    def from_parts(cls, *, parts: list[dict], n_obs: int, obs_names, pairs: LRPairs, folder: str, n_pairs: int,
                   min_expr: float, cutoff: float, lrfeatures, params, background_pairs=None) -> "CCIResult":
        """The result of pass 2's parts (:mod:`.entries`): each part's row range, entries and per-pair counts
        (``n_spots``, ``n_sig``, ``n_sig_p``), summed here; the matrices stay in the parts' files."""
        n_lr = len(pairs)
        counts = [np.zeros(n_lr, np.int64) for _ in range(3)]
        for p in parts:
            for acc, k in zip(counts, ("n_spots", "n_sig", "n_sig_p")):
                acc += p[k]
        summary, order, rank = cls._ordered(pairs.names, *counts)
        starts, stops, nnz = covering(n_obs, [(p["start"], p["stop"], p["nnz"]) for p in parts])
        entries = EntryParts(str(folder), starts, stops, nnz, n_lr, rank).own()
        return cls(pd.Index(obs_names), LRPairs(pairs.ligand[order], pairs.receptor[order]), summary, lrfeatures,
                   None, None, None, int(n_pairs), float(min_expr), float(cutoff), params, background_pairs,
                   entries.arrays())

    @classmethod
    def from_entries(cls, *, n_obs, obs_names, pairs: LRPairs, rows, pair, score, count, padj, n_pairs, min_expr,
                     cutoff, lrfeatures, params, background_pairs=None, consume: bool = False) -> "CCIResult":
        n_lr = len(pairs)
        counts = get_kernel("summary_counts")(
            np.asarray(pair), np.asarray(score, dtype=np.float64), np.asarray(count),
            np.asarray(padj, dtype=np.float64), n_lr, float(n_pairs), float(min_expr), float(cutoff))
        summary, order, rank = cls._ordered(pairs.names, *counts)
        col = rank.astype(np.int32)[pair]
        # the entries are re-ordered in place: copy them unless the caller hands them over (``consume``)
        take = np.asarray if consume else np.array
        vals = [take(score, dtype=np.float64), take(count, dtype=np.int32), take(padj, dtype=np.float64)]
        indptr, indices, (sv, cv, pv) = csr_structure(n_obs, rows, col, vals)
        del col, vals
        # the three matrices share one index structure (they have the same entries)
        scores, counts, padj_m = (sp.csr_matrix((v, indices, indptr), shape=(n_obs, n_lr)) for v in (sv, cv, pv))
        for m in (scores, counts, padj_m):
            m.has_sorted_indices = True
        return cls(pd.Index(obs_names), LRPairs(pairs.ligand[order], pairs.receptor[order]), summary, lrfeatures,
                   scores, counts, padj_m, int(n_pairs), float(min_expr), float(cutoff), params, background_pairs)

    # ---- the matrices ------------------------------------------------------------------------------------
    def _in_memory(self, kind: str) -> sp.csr_matrix | None:
        return getattr(self, _ATTR[kind])

    def _matrix(self, kind: str) -> sp.csr_matrix:
        """Matrix ``kind`` in memory (a lazy one read whole, once)."""
        m = self._in_memory(kind)
        if m is None:
            m = gather(self.lazy[kind])
            setattr(self, _ATTR[kind], m)
        return m

    @property
    def scores(self) -> sp.csr_matrix:
        return self._matrix("score")

    @property
    def counts(self) -> sp.csr_matrix:
        return self._matrix("count")

    @property
    def padj(self) -> sp.csr_matrix:
        return self._matrix("padj")

    @property
    def shape(self) -> tuple[int, int]:
        """(n_obs, n_lr)."""
        return (len(self.obs_names), len(self.lr_summary))

    def row_blocks(self, kinds: tuple[str, ...] = KINDS, rows: int = _STORED_ROWS
                   ) -> Iterator[tuple[int, list[sp.csr_matrix]]]:
        """``(start, [block of each of kinds])`` over consecutive row blocks, one block in memory at a time
        (lazy matrices: their own blocks, read in this process; in-memory ones: ``rows`` at a time)."""
        if self.lazy is None or all(self._in_memory(k) is not None for k in kinds):
            ms = [self._matrix(k) for k in kinds]
            for a in range(0, self.shape[0], rows):
                yield a, [m[a:a + rows] for m in ms]
            return
        arrs = [self.lazy[k] for k in kinds]
        if len({a.chunks[0] for a in arrs}) != 1:
            raise ValueError("the result's matrices have different row blocks")
        start = 0
        for n, blocks in zip(arrs[0].chunks[0], zip(*(iter_blocks(a) for a in arrs))):
            yield start, [sp.csr_matrix(b) for b in blocks]
            start += n

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
                 adj_method: str = "fdr_bh", *, store=None, scheduler=None, progress: bool = False) -> "CCIResult":
        """stLearn ``adj_pvals``: re-correct from the raw p-values and re-sort (stable rule).

        A lazy result is re-corrected a row block at a time (:mod:`.readjust`; the new parts go in a scratch
        folder of ``store``, else of the temporary folder), except along LRs with a method other than
        ``'fdr_bh'``, which reads the matrices whole."""
        if correct_axis not in ("spot", "LR", None):
            raise ValueError(f"correct_axis must be 'spot', 'LR' or None, got {correct_axis!r}")
        params = {**self.params, "correct_axis": correct_axis, "adj_method": adj_method,
                  "pval_adj_cutoff": float(pval_adj_cutoff)}
        if self.lazy is not None and self._in_memory("count") is None and streams(correct_axis, adj_method):
            parts, folder = readjusted_parts(self, correct_axis, pval_adj_cutoff, adj_method, store,
                                             scheduler=scheduler, progress=progress)
            return CCIResult.from_parts(
                parts=parts, n_obs=self.shape[0], obs_names=self.obs_names, pairs=self.pairs, folder=str(folder),
                n_pairs=self.n_pairs, min_expr=self.min_expr, cutoff=pval_adj_cutoff, lrfeatures=self.lrfeatures,
                params=params, background_pairs=self.background_pairs)
        coo = self.counts.tocoo()
        p = np.maximum(coo.data, 1) / float(self.n_pairs)
        if correct_axis == "spot":
            padj = adjust_grouped(p, coo.row, adj_method)
        elif correct_axis == "LR":
            padj = adjust_grouped(p, coo.col, adj_method)
        else:
            padj = p.copy()
        sc = self.scores.tocoo()
        assert np.array_equal(sc.row, coo.row) and np.array_equal(sc.col, coo.col)
        return CCIResult.from_entries(
            n_obs=self.scores.shape[0], obs_names=self.obs_names, pairs=self.pairs, rows=coo.row, pair=coo.col,
            score=sc.data, count=coo.data, padj=padj, n_pairs=self.n_pairs, min_expr=self.min_expr,
            cutoff=pval_adj_cutoff, lrfeatures=self.lrfeatures, params=params, background_pairs=self.background_pairs)

    # ---- storage -----------------------------------------------------------------------------------------
    def store(self, ds) -> None:
        """Attach to ``ds`` (written by ``ds.write()``): sparse obsm matrices and uns tables. Lazy matrices are
        attached as they are and streamed into the store by the write, a row block at a time."""
        for kind, key in OBSM_KEYS.items():
            m = self._in_memory(kind)
            ds.set_result("obsm", key, m if m is not None else self.lazy[kind])
        ds.set_result("uns", "lr_summary", self.lr_summary)
        ds.set_result("uns", "lrfeatures", self.lrfeatures)
        ds.set_result("uns", "lr_cci", {"n_pairs": self.n_pairs, "min_expr": self.min_expr, "cutoff": self.cutoff,
                                        "ligand": self.pairs.ligand.astype(str),
                                        "receptor": self.pairs.receptor.astype(str),
                                        "params": {k: v for k, v in self.params.items() if v is not None}})

    @classmethod
    def load(cls, ds) -> "CCIResult":
        """Results stored by :meth:`store` (pending or written); written matrices are read lazily, in row
        blocks, when they are used."""
        meta = ds.get_result("uns", "lr_cci")
        summary = ds.get_result("uns", "lr_summary")
        pairs = LRPairs(np.asarray(meta["ligand"], dtype=object), np.asarray(meta["receptor"], dtype=object))
        found = {kind: _lazy_matrix(ds, key) for kind, key in OBSM_KEYS.items()}
        if all(isinstance(m, da.Array) for m in found.values()):
            mats, lazy = [None, None, None], found
        else:
            mats, lazy = [gather(m) if isinstance(m, da.Array) else m for m in found.values()], None
        return cls(pd.Index(ds.obs_names), pairs, summary, ds.get_result("uns", "lrfeatures"), *mats,
                   int(meta["n_pairs"]), float(meta["min_expr"]), float(meta["cutoff"]), dict(meta.get("params", {})),
                   lazy=lazy)


def _lazy_matrix(ds, key: str):
    """Pending or stored obsm ``key``: a pending value as it is (CSR), a pending dask array as it is, a stored
    CSR element as a dask array of row blocks read from the store."""
    if ("obsm", key) in ds.pending:
        v = ds.get_result("obsm", key)
        return v if isinstance(v, da.Array) else sp.csr_matrix(v)
    return ds.stored_result_rows("obsm", key, _STORED_ROWS)


def _fill(m: sp.csr_matrix, fill: float) -> np.ndarray:
    """Dense array with the stored entries of ``m`` and ``fill`` elsewhere."""
    out = np.full(m.shape, fill, dtype=np.float64)
    coo = m.tocoo()
    out[coo.row, coo.col] = coo.data
    return out
