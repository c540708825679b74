"""Expression features of genes (stLearn ``get_lr_features``) and expression-matched background genes.

Quantiles follow NumPy's ``method='nearest'`` over all N observations, zeros included. They are computed
from order statistics of each gene's non-zero values (the zeros are implicit), so no dense column is ever
built: quantile q of a gene with z zeros is 0 when ``k = round_half_even(q (N-1)) < z``, else the
``(k - z)``-th smallest non-zero value.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp

#: stLearn's 12 expression quantiles
QUANTILES = np.array([0.5, 0.75, 0.85, 0.9, 0.95, 0.97, 0.98, 0.99, 0.995, 0.9975, 0.999, 1.0])


def nearest_index(q: np.ndarray, n: int) -> np.ndarray:
    """NumPy's ``'nearest'`` quantile positions: ``q (n-1)`` rounded half to even."""
    return np.around(np.asarray(q, dtype=np.float64) * (n - 1)).astype(np.int64)


def column_quantiles(values: list[np.ndarray], n_obs: int, q: np.ndarray = QUANTILES) -> np.ndarray:
    """Quantiles of columns given only their non-zero values.

    Parameters
    ----------
    values
        Per gene, the (nnz_g,) non-zero values (any order, all > 0).
    n_obs
        N, the number of observations (zeros are the other N - nnz_g).
    q
        (n_q,) quantile levels.

    Returns
    -------
    (n_q, n_genes) float64 quantiles, equal to ``np.quantile(column, q, method='nearest')``.
    """
    k = nearest_index(q, n_obs)
    out = np.zeros((len(q), len(values)), dtype=np.float64)
    for g, v in enumerate(values):
        z = n_obs - len(v)
        pos = k - z
        take = pos >= 0
        if take.any():
            sel = np.unique(pos[take])
            part = np.partition(np.asarray(v, dtype=np.float64), sel)
            out[take, g] = part[pos[take]]
    return out


def nonzero_median(values: list[np.ndarray]) -> np.ndarray:
    """Median of each gene's non-zero values (``'nearest'`` rule; 0 for a gene without any)."""
    out = np.zeros(len(values))
    for g, v in enumerate(values):
        if len(v):
            out[g] = np.quantile(np.asarray(v, dtype=np.float64), 0.5, method="nearest")
    return out


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


def canberra32(ref: np.ndarray, cand: np.ndarray) -> np.ndarray:
    """Canberra distance of one float32 quantile profile to many, as stLearn computes it.

    Element terms ``|a - b| / (a + b)`` in float32 (0/0 skipped), summed over quantiles in order in float32:
    matching the reference's arithmetic keeps the matched-gene cut identical to stLearn's.

    Parameters
    ----------
    ref
        (n_q,) float32 profile.
    cand
        (n_q, n_cand) float32 profiles.

    Returns
    -------
    (n_cand,) float64 distances.
    """
    ref = np.asarray(ref, dtype=np.float32)
    cand = np.asarray(cand, dtype=np.float32)
    acc = np.zeros(cand.shape[1], dtype=np.float32)
    with np.errstate(invalid="ignore", divide="ignore"):
        for i in range(cand.shape[0]):
            t = np.abs(ref[i] - cand[i]) / (ref[i] + cand[i])
            acc = (acc + np.where(np.isnan(t), np.float32(0), t)).astype(np.float32)
    return acc.astype(np.float64)


def matched_genes(ref: np.ndarray, cand_q: np.ndarray, n_genes: int) -> tuple[np.ndarray, bool]:
    """Indices (into the candidate list) of the ``n_genes`` candidates closest in quantile profile.

    Candidates at distance 0 (an identical profile) are discarded, as in stLearn; ties are broken by
    candidate position (Q2). Returns the indices and whether fewer than ``n_genes`` were available.
    """
    d = canberra32(ref, cand_q)
    keep = np.flatnonzero(d > 0)
    order = keep[np.lexsort((keep, d[keep]))]
    return order[:n_genes], len(order) < n_genes
