"""stImpute's evaluation metrics (spec ``stimpute.md`` §11): gene-wise and cell-wise uncentred cosine similarity
and mean squared error between predicted and measured expression, and their summary table.

Cosine is uncentred, ``sum(p * t) / (||p|| * ||t||)``; where either vector is all zero it is 0 (the reference
code would give NaN or divide by a small epsilon; 0 keeps a gene or cell that is never measured, or never
predicted, from being counted as well imputed). MSE is ``mean((p - t) ** 2)``.

Gene-wise metrics need every cell of a gene: :class:`GeneMetrics` accumulates the per-gene sums of products and
squares (float64) tile by tile of cells, so the whole (cells x genes) matrices never sit in memory. Cell-wise
metrics are per row: a tile computes its cells' values directly (:func:`cell_cosine`, :func:`cell_mse`, also
returned by :meth:`GeneMetrics.update`).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp

__all__ = ["GeneMetrics", "cell_cosine", "cell_mse", "gene_cosine", "gene_mse", "pair", "summary_table", "sums"]


def pair(pred, truth) -> tuple[np.ndarray, np.ndarray]:
    """Both as float64 dense arrays of one 2-D shape (a sparse truth is densified: a tile at a time)."""
    p = np.asarray(pred.toarray() if sp.issparse(pred) else pred, dtype=np.float64)
    t = np.asarray(truth.toarray() if sp.issparse(truth) else truth, dtype=np.float64)
    if p.ndim != 2 or p.shape != t.shape:
        raise ValueError(f"pred and truth must be 2-D arrays of one shape (cells x genes), got {p.shape} and "
                         f"{t.shape}")
    return p, t


def _cosine(pt: np.ndarray, pp: np.ndarray, tt: np.ndarray) -> np.ndarray:
    """pt / sqrt(pp * tt), 0 where either norm is 0."""
    den = np.sqrt(pp * tt)
    return np.divide(pt, den, out=np.zeros_like(pt), where=den > 0)


def sums(p: np.ndarray, t: np.ndarray, axis: int) -> tuple[np.ndarray, ...]:
    """Sums along ``axis`` of p*t, p*p, t*t and (p - t)**2 (float64)."""
    d = p - t
    spec = "ij,ij->j" if axis == 0 else "ij,ij->i"
    return tuple(np.einsum(spec, a, b) for a, b in ((p, t), (p, p), (t, t), (d, d)))


def gene_cosine(pred, truth) -> np.ndarray:
    """(G,) float64 uncentred cosine of each gene's predicted and measured profile over the cells.

    Parameters
    ----------
    pred, truth
        (N, G) arrays (truth may be scipy sparse).
    """
    pt, pp, tt, _ = sums(*pair(pred, truth), axis=0)
    return _cosine(pt, pp, tt)


def gene_mse(pred, truth) -> np.ndarray:
    """(G,) float64 mean over the N cells of (pred - truth)**2, per gene."""
    p, t = pair(pred, truth)
    return sums(p, t, axis=0)[3] / max(p.shape[0], 1)


def cell_cosine(pred, truth) -> np.ndarray:
    """(N,) float64 uncentred cosine of each cell's predicted and measured expression over the genes."""
    pt, pp, tt, _ = sums(*pair(pred, truth), axis=1)
    return _cosine(pt, pp, tt)


def cell_mse(pred, truth) -> np.ndarray:
    """(N,) float64 mean over the G genes of (pred - truth)**2, per cell."""
    p, t = pair(pred, truth)
    return sums(p, t, axis=1)[3] / max(p.shape[1], 1)


class GeneMetrics:
    """Gene-wise cosine and MSE accumulated over tiles of cells.

    Parameters
    ----------
    n_genes
        G, the number of genes (columns) of every block.

    Examples
    --------
    >>> acc = GeneMetrics(G)                          # doctest: +SKIP
    >>> for pred_tile, truth_tile in tiles:            # doctest: +SKIP
    ...     cell_cos, cell_err = acc.update(pred_tile, truth_tile)
    >>> acc.cosine(), acc.mse()                       # doctest: +SKIP
    """

    def __init__(self, n_genes: int) -> None:
        self.n_genes = int(n_genes)
        self.n_cells = 0
        # per-gene float64 sums of p*t, p*p, t*t and (p - t)**2 over the cells seen
        self._sums = np.zeros((4, self.n_genes), dtype=np.float64)

    def update(self, pred_block, truth_block) -> tuple[np.ndarray, np.ndarray]:
        """Add a block of cells.

        Parameters
        ----------
        pred_block, truth_block
            (n, G) predicted and measured expression of the same n cells (truth may be scipy sparse).

        Returns
        -------
        cell_cos, cell_mse
            (n,) float64 cell-wise cosine and MSE of the block's cells.
        """
        p, t = pair(pred_block, truth_block)
        if p.shape[1] != self.n_genes:
            raise ValueError(f"block has {p.shape[1]} genes, the accumulator {self.n_genes}")
        self._sums += np.stack(sums(p, t, axis=0))
        self.n_cells += p.shape[0]
        pt, pp, tt, sq = sums(p, t, axis=1)
        return _cosine(pt, pp, tt), sq / max(self.n_genes, 1)

    def cosine(self) -> np.ndarray:
        """(G,) float64 gene-wise cosine over every cell added."""
        return _cosine(self._sums[0], self._sums[1], self._sums[2])

    def mse(self) -> np.ndarray:
        """(G,) float64 gene-wise MSE over every cell added (NaN before any cell)."""
        if self.n_cells == 0:
            return np.full(self.n_genes, np.nan)
        return self._sums[3] / self.n_cells


def summary_table(gene_cos, gene_mse, cell_cos, cell_mse, reliability=None) -> pd.DataFrame:
    """Medians (as the reference code prints) and means (as the paper reports) of the four metrics.

    Parameters
    ----------
    gene_cos, gene_mse
        (G,) per-gene cosine and MSE.
    cell_cos, cell_mse
        (N,) per-cell cosine and MSE.
    reliability
        (G,) per-gene reliability scores, in the order of ``gene_cos``; adds the row ``top50_cosine``: the
        cosine of the floor(G/2) genes with the highest reliability (ties broken by gene order, earlier first).

    Returns
    -------
    DataFrame indexed by ``metric`` (``gene_cosine``, ``gene_mse``, ``cell_cosine``, ``cell_mse`` [,
    ``top50_cosine``]) with float columns ``median`` and ``mean`` and int column ``n`` (values summarised).

    Raises
    ------
    ValueError
        ``reliability`` of another length than ``gene_cos``, or holding NaN.
    """
    rows = {"gene_cosine": gene_cos, "gene_mse": gene_mse, "cell_cosine": cell_cos, "cell_mse": cell_mse}
    rows = {k: np.asarray(v, dtype=np.float64).ravel() for k, v in rows.items()}
    if reliability is not None:
        rel = np.asarray(reliability, dtype=np.float64).ravel()
        g = rows["gene_cosine"]
        if rel.shape != g.shape:
            raise ValueError(f"reliability has {rel.size} values for {g.size} genes")
        if np.isnan(rel).any():
            raise ValueError(f"reliability holds {int(np.isnan(rel).sum())} NaN values; cannot rank the genes")
        top = np.lexsort((np.arange(g.size), -rel))[: g.size // 2]  # highest first, ties by gene order
        rows["top50_cosine"] = g[top]
    table = pd.DataFrame({
        "median": [float(np.median(v)) if v.size else np.nan for v in rows.values()],
        "mean": [float(np.mean(v)) if v.size else np.nan for v in rows.values()],
        "n": [int(v.size) for v in rows.values()]}, index=pd.Index(list(rows), name="metric"))
    return table
