"""A real split for reference-based imputation: scanpy's ``pbmc68k_reduced`` (700 real 10x PBMCs x 765 genes,
shipped inside scanpy, so nothing is downloaded) cut into a "spatial" half that keeps a small gene panel and a
reference half that keeps every gene.

The file holds ``log1p`` of library-normalised values (``adata.raw``), not counts. stImpute's inputs are raw
counts, so the counts are recovered per cell: a cell's normalised values are ``count x s_i`` for one size factor
``s_i``, the smallest non-zero value is a count of 1 (the least a detected gene can have), and
``round(expm1(x) / s_i)`` gives integers (checked: the recovered values sit within 0.05 of an integer for more
than 99% of the entries). Coordinates: the cells' UMAP positions (x 100), so a store can hold them; no spatial
meaning is claimed.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

__all__ = ["PBMCSplit", "pbmc_split", "recover_counts"]


@dataclass
class PBMCSplit:
    """What :func:`pbmc_split` returns.

    Attributes
    ----------
    spatial
        AnnData, the spatial half x the panel genes (CSR int32 counts), ``obsm['spatial']``, ``obs['bulk_labels']``.
    spatial_truth
        AnnData, the same cells x all 765 genes (counts), to score imputed genes.
    reference
        AnnData, the reference half x all 765 genes (counts).
    panel
        (n_panel,) the panel's genes, sorted.
    integral_fraction
        Fraction of the recovered non-zero values within 0.05 of an integer before rounding.
    """

    spatial: object
    spatial_truth: object
    reference: object
    panel: np.ndarray
    integral_fraction: float


def recover_counts(lognorm: sp.csr_matrix) -> tuple[sp.csr_matrix, float]:
    """Integer counts of a ``log1p``-normalised matrix (see the module docstring) and the fraction of non-zero
    values within 0.05 of an integer before rounding."""
    x = sp.csr_matrix(lognorm, dtype=np.float64)
    x.data = np.expm1(x.data)
    mins = np.array([row.data[row.data > 0].min() if row.nnz else 1.0 for row in x])
    scaled = sp.diags(1.0 / mins) @ x
    scaled = sp.csr_matrix(scaled)
    frac = float(np.mean(np.abs(scaled.data - np.round(scaled.data)) < 0.05)) if scaled.nnz else 1.0
    scaled.data = np.round(scaled.data)
    scaled.eliminate_zeros()
    return scaled.astype(np.int32), frac


def pbmc_split(n_panel: int = 150, seed: int = 0) -> PBMCSplit:
    """Split ``pbmc68k_reduced`` into a spatial half (``n_panel`` random genes) and a reference half.

    Parameters
    ----------
    n_panel
        Genes the spatial half keeps (``1 <= n_panel < 765``).
    seed
        ``numpy.random.default_rng(seed)`` draws the cell halves and the panel.
    """
    import anndata as ad
    import scanpy as sc

    full = sc.datasets.pbmc68k_reduced()
    raw = full.raw.to_adata()
    if not 1 <= int(n_panel) < raw.n_vars:
        raise ValueError(f"n_panel must be in [1, {raw.n_vars - 1}], got {n_panel}")
    counts, frac = recover_counts(raw.X)
    rng = np.random.default_rng(seed)
    cells = rng.permutation(raw.n_obs)
    half = raw.n_obs // 2
    sp_cells, ref_cells = np.sort(cells[:half]), np.sort(cells[half:])
    panel = np.sort(np.asarray(raw.var_names)[rng.choice(raw.n_vars, size=int(n_panel), replace=False)])
    var = pd.DataFrame(index=pd.Index(np.asarray(raw.var_names), name="gene"))
    obs = pd.DataFrame({"bulk_labels": full.obs["bulk_labels"].to_numpy()}, index=np.asarray(raw.obs_names))
    truth = ad.AnnData(counts[sp_cells], obs=obs.iloc[sp_cells].copy(), var=var.copy())
    truth.obsm["spatial"] = np.asarray(full.obsm["X_umap"], dtype=np.float64)[sp_cells] * 100.0
    spatial = truth[:, panel].copy()
    reference = ad.AnnData(counts[ref_cells], obs=obs.iloc[ref_cells].copy(), var=var.copy())
    return PBMCSplit(spatial, truth, reference, panel, frac)
