"""Expression features of genes (stLearn ``get_lr_features``) and expression-matched background genes.

Quantiles follow NumPy's ``method='nearest'`` over all N observations, zeros included. They are computed
from order statistics of each gene's non-zero values (the zeros are implicit), so no dense column is ever
built: quantile q of a gene with z zeros is 0 when ``k = round_half_even(q (N-1)) < z``, else the
``(k - z)``-th smallest non-zero value.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ...backend import get_kernel

#: stLearn's 12 expression quantiles
QUANTILES = np.array([0.5, 0.75, 0.85, 0.9, 0.95, 0.97, 0.98, 0.99, 0.995, 0.9975, 0.999, 1.0])


def nearest_index(q: np.ndarray, n: int) -> np.ndarray:
    """NumPy's ``'nearest'`` quantile positions: ``q (n-1)`` rounded half to even."""
    return np.around(np.asarray(q, dtype=np.float64) * (n - 1)).astype(np.int64)


class GeneValues(Sequence):
    """Lazy per-gene non-zero values: ``values[i] = fetch(genes[i])``, built when accessed."""

    def __init__(self, fetch, genes: np.ndarray) -> None:
        self._fetch = fetch
        self._genes = np.asarray(genes)

    def __len__(self) -> int:
        return len(self._genes)

    def __getitem__(self, i):
        return self._fetch(int(self._genes[i]))


def _order_stats(v, pos: np.ndarray) -> np.ndarray:
    """Values at positions ``pos`` (sorted ascending, may repeat) of ``v`` sorted ascending, as float64.

    A full sort for the usual short columns (cheaper than a multi-kth partition there), a partition for
    long ones; both give the exact order statistics (NaN sorts last in either).
    """
    v = np.asarray(v, dtype=np.float64)
    if len(v) <= _SORT_MAX:
        return np.sort(v)[pos]
    return np.partition(v, np.unique(pos))[pos]


#: columns with at most this many non-zeros are sorted outright, longer ones partitioned
_SORT_MAX = 4096


def column_quantiles(values: list[np.ndarray], n_obs: int, q: np.ndarray = QUANTILES) -> np.ndarray:
    """Quantiles of columns given only their non-zero values.

    Parameters
    ----------
    values
        Per gene, the (nnz_g,) non-zero values (any order, all > 0); a list or a lazy :class:`GeneValues`.
    n_obs
        N, the number of observations (zeros are the other N - nnz_g).
    q
        (n_q,) quantile levels.

    Returns
    -------
    (n_q, n_genes) float64 quantiles, equal to ``np.quantile(column, q, method='nearest')``.
    """
    return _quantiles(values, n_obs, q, False)[0]


def column_quantiles_and_median(values: list[np.ndarray], n_obs: int, q: np.ndarray = QUANTILES
                                ) -> tuple[np.ndarray, np.ndarray]:
    """:func:`column_quantiles` and :func:`nonzero_median` of the same columns, each column read and
    ordered once."""
    return _quantiles(values, n_obs, q, True)


def _quantiles(values, n_obs: int, q: np.ndarray, median: bool) -> tuple[np.ndarray, np.ndarray | None]:
    k = nearest_index(q, n_obs)
    out = np.zeros((len(q), len(values)), dtype=np.float64)
    med = np.zeros(len(values)) if median else None
    for g, v in enumerate(values):
        n = len(v)
        pos = k - (n_obs - n)
        take = pos >= 0
        if median and n:
            # np.quantile(v, 0.5, method='nearest'): order statistic round_half_even((n - 1) / 2), NaN when
            # the largest (n - 1) is NaN (NaN sorts last)
            mpos = round((n - 1) * 0.5)  # Python's round is half-to-even, as np.around
            vals = _order_stats(v, np.concatenate([pos[take], [mpos, n - 1]]))
            out[take, g] = vals[:-2]
            med[g] = np.nan if np.isnan(vals[-1]) else vals[-2]
        elif take.any():
            out[take, g] = _order_stats(v, pos[take])
    return out, med


def nonzero_median(values: list[np.ndarray]) -> np.ndarray:
    """Median of each gene's non-zero values (``'nearest'`` rule; 0 for a gene without any)."""
    return _quantiles(values, 1, np.zeros(0), True)[1]


def csc_nonzeros(X: sp.spmatrix, genes: np.ndarray) -> list[np.ndarray]:
    """Per requested gene (column index), its non-zero values from an in-memory sparse matrix."""
    csc = sp.csc_matrix(X[:, genes])
    csc.eliminate_zeros()
    return [csc.data[csc.indptr[i]:csc.indptr[i + 1]] for i in range(len(genes))]


def lr_features(ligand_q: np.ndarray, receptor_q: np.ndarray, ligand_nzmed: np.ndarray, receptor_nzmed: np.ndarray,
                ligand_zero: np.ndarray, receptor_zero: np.ndarray, names: np.ndarray) -> pd.DataFrame:
    """stLearn's ``uns['lrfeatures']`` table, with stable rank tie-breaks (Q21).

    Parameters
    ----------
    ligand_q, receptor_q
        (n_lr, 12) quantiles (zeros included) of each pair's ligand / receptor.
    ligand_nzmed, receptor_nzmed
        (n_lr,) non-zero medians.
    ligand_zero, receptor_zero
        (n_lr,) fractions of observations with value exactly 0.
    names
        (n_lr,) pair names.
    """
    med = (ligand_nzmed + receptor_nzmed) / 2.0
    prop = (ligand_zero + receptor_zero) / 2.0
    median_rank = np.empty(len(names))
    median_rank[np.argsort(med, kind="stable")] = np.arange(len(names))
    prop_rank = np.empty(len(names))
    prop_rank[np.argsort(-prop, kind="stable")] = np.arange(len(names))
    mean_rank = (median_rank + prop_rank) / 2.0
    df = pd.DataFrame({"nonzero-median": med, "zero-prop": prop, "median_rank": median_rank,
                       "prop_rank": prop_rank, "mean_rank": mean_rank}, index=pd.Index(names, dtype=object))
    order = np.argsort(mean_rank, kind="stable")
    quant_cols = [f"L_{q:g}" if q != 1 else "L_1.0" for q in QUANTILES] + \
                 [f"R_{q:g}" if q != 1 else "R_1.0" for q in QUANTILES]
    quant = pd.DataFrame(np.concatenate([ligand_q, receptor_q], axis=1), index=df.index, columns=quant_cols)
    return pd.concat([df.iloc[order], quant.iloc[order]], axis=1)


def matched_genes(ref_q: np.ndarray, cand_q: np.ndarray, n_genes: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``n_genes`` candidates closest to each reference gene in quantile profile (stLearn's match).

    Parameters
    ----------
    ref_q
        (n_ref, n_q) quantile profiles of the genes to match (cast to float32, as stLearn does).
    cand_q
        (n_cand, n_q) profiles of the candidate genes.
    n_genes
        Candidates to keep per gene.

    Returns
    -------
    idx
        (n_ref, n_genes) int64 candidate positions, nearest first (-1 pads rows with fewer candidates).
    n_found
        (n_ref,) int64 number kept per gene (< ``n_genes`` when too few candidates are at distance > 0).

    The Canberra distance is evaluated in float32 term by term and summed in order (the reference's
    arithmetic, so the cut matches stLearn's); candidates at distance 0 are discarded; ties are broken by
    candidate position (Q2).
    """
    return get_kernel("canberra_topk")(np.ascontiguousarray(ref_q, dtype=np.float32),
                                        np.ascontiguousarray(np.asarray(cand_q, dtype=np.float32).T), int(n_genes))
