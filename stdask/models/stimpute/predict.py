"""stImpute's prediction for any tile of spatial cells, and the final blend (spec ``stimpute.md`` §8).

* **P_gnn**: the cell's K neighbours under the AE of the start of the last EM round, their expression of the
  training and target genes gathered, Trans run on the all-gene graph; the target columns kept.
* **P_knn**: the neighbours under the final AE; those at cosine distance d_j < 1 are kept (n' of them) with
  weights ``(1 - d_j / (Σ d + 1e-12)) / (n' - 1)``; n' = 1 gets weight 1 (the reference divides by zero) and
  n' = 0 a zero prediction (quirk I8; both counted).
* **blend** ``"paper"`` (eq. 12, default): ``α P_gnn + (1 - α) mean_k x_k`` over the final neighbours;
  ``"code"``: ``α P_gnn + (1 - α) P_knn · max(P_gnn) / max(P_knn)`` with per-gene maxima over all cells;
  ``"global"``: the same with the global maxima. The maxima need every cell, so ``"code"`` / ``"global"`` take
  one more pass (:meth:`Predictor.maxima`).

A cell's prediction depends on that cell alone (its codes, its neighbours, its features): a tile gives the
same values as the whole slice, up to float32 rounding in the matrix products whose kernels depend on the number
of rows in the batch.
"""
from __future__ import annotations

from typing import Iterable, NamedTuple

import numpy as np
import scipy.sparse as sp

from .autoencoder import encode
from .blocks import graph_tensor
from .fit import StImputeFit, tile_cells_for, trans_predict
from .neighbours import gather

__all__ = ["KNN_WEIGHT_EPS", "Predictor", "TilePrediction", "knn_weights"]

#: the reference's eps in the kNN weights
KNN_WEIGHT_EPS = 1e-12


def knn_weights(dist: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The reference's kNN weights with stdask's edge cases (quirk I8).

    Parameters
    ----------
    dist
        (n, K) cosine distances of each cell's neighbours.

    Returns
    -------
    weights
        (n, K) float64: 0 for d >= 1; ``(1 - d / (Σ_kept d + 1e-12)) / (n' - 1)`` for n' >= 2 kept; 1 for the
        single kept neighbour when n' = 1; all 0 when n' = 0.
    kept
        (n,) int: n' per cell.
    """
    d = np.asarray(dist, dtype=np.float64)
    keep = d < 1
    n_kept = keep.sum(1)
    dk = np.where(keep, d, 0.0)
    total = dk.sum(1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        w = (1 - dk / (total + KNN_WEIGHT_EPS)) / (n_kept[:, None] - 1)
    w = np.where(keep, w, 0.0)
    w[n_kept == 1] = keep[n_kept == 1].astype(np.float64)
    return w, n_kept


class TilePrediction(NamedTuple):
    """The parts of one tile's prediction, (n, G_target) float32 each, and the n' counts (n,)."""

    gnn: np.ndarray
    knn: np.ndarray
    mean: np.ndarray
    n_kept: np.ndarray


class Predictor:
    """Predict target genes for tiles of spatial cells with a trained model.

    Parameters
    ----------
    model
        The :class:`~.fit.StImputeFit`.
    reference
        (M, G_all) float, CSR or dense: normalised-log reference expression of the genes the Trans network sees
        (training genes and targets; the graph's order).
    graph
        (G_all, G_all) gene aggregation matrix Ã over those genes.
    train_cols, target_cols
        Positions in G_all of the training genes (in the order the AE was trained on) and of the genes to output.
    n_query
        Spatial cells that will be predicted in all (picks the neighbour search, exact or pynndescent, once).
    tile_cells
        Cells per Trans pass (default :func:`~.fit.tile_cells_for` over G_all).
    """

    def __init__(self, model: StImputeFit, reference, graph, train_cols, target_cols, n_query: int,
                 tile_cells: int | None = None) -> None:
        self.model = model
        self.ref = reference.tocsr().astype(np.float32) if sp.issparse(reference) \
            else np.asarray(reference, dtype=np.float32)
        self.train_cols = np.asarray(train_cols, dtype=np.int64)
        self.target_cols = np.asarray(target_cols, dtype=np.int64)
        if graph.shape != (self.ref.shape[1], self.ref.shape[1]):
            raise ValueError(f"the all-gene graph is {graph.shape} but the reference holds {self.ref.shape[1]} "
                             "genes")
        self.graph = graph_tensor(graph, device=model.device)
        self.tile = int(tile_cells) if tile_cells else tile_cells_for(self.ref.shape[1], model.config)
        self.index_gnn = model.index("gnn", n_query)
        self.index_knn = model.index("knn", n_query)
        self.ref_target = self.ref[:, self.target_cols]

    @property
    def neighbour_method(self) -> str:
        return self.index_gnn.method

    def gnn(self, x: np.ndarray, idx: np.ndarray | None = None) -> np.ndarray:
        """(n, G_target) float32 P_gnn of (n, G_train) normalised-log spatial rows ``x`` (or of given
        neighbours ``idx``, (n, K))."""
        if idx is None:
            idx, _ = self.index_gnn.query(encode(self.model.ae_gnn, x))
        out = np.empty((idx.shape[0], self.target_cols.size), dtype=np.float32)
        for start in range(0, idx.shape[0], self.tile):
            feats = np.ascontiguousarray(gather(self.ref, idx[start:start + self.tile]).transpose(0, 2, 1))
            pred = trans_predict(self.model.trans, feats, self.graph, self.tile, self.model.device)
            out[start:start + self.tile] = pred[:, self.target_cols]
        return out

    def knn(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """P_knn (weighted, the code's), the plain neighbour mean (the paper's) and n', for the rows ``x``."""
        idx, dist = self.index_knn.query(encode(self.model.ae, x))
        w, n_kept = knn_weights(dist)
        k = idx.shape[1]
        weighted = np.zeros((idx.shape[0], self.target_cols.size), dtype=np.float64)
        plain = np.zeros_like(weighted)
        for j in range(k):  # K sparse row gathers: never a (n, K, G) array
            rows = self.ref_target[idx[:, j]]
            rows = rows.toarray() if sp.issparse(rows) else rows
            weighted += w[:, j:j + 1] * rows
            plain += rows
        return weighted.astype(np.float32), (plain / k).astype(np.float32), n_kept

    def parts(self, x: np.ndarray) -> TilePrediction:
        """All parts of the prediction of the (n, G_train) rows ``x``."""
        x = np.asarray(x.toarray() if sp.issparse(x) else x, dtype=np.float32)
        knn, mean, n_kept = self.knn(x)
        return TilePrediction(self.gnn(x), knn, mean, n_kept)

    def maxima(self, tiles: Iterable[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Per-gene maxima over all cells of P_gnn and P_knn (for the ``"code"`` / ``"global"`` blends):
        ``tiles`` yields the (n, G_train) rows of every spatial cell once."""
        gmax = np.full(self.target_cols.size, -np.inf, dtype=np.float32)
        kmax = gmax.copy()
        for x in tiles:
            p = self.parts(x)
            gmax = np.maximum(gmax, p.gnn.max(0, initial=-np.inf))
            kmax = np.maximum(kmax, p.knn.max(0, initial=-np.inf))
        return gmax, kmax

    def blend(self, p: TilePrediction, maxima: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
        """The final (n, G_target) float32 prediction of :class:`TilePrediction` ``p`` under the model's blend."""
        cfg = self.model.config
        a = np.float32(cfg.alpha)
        if cfg.blend == "paper":
            return a * p.gnn + (1 - a) * p.mean
        if maxima is None:
            raise ValueError(f"blend={cfg.blend!r} scales by maxima over all cells: pass Predictor.maxima(...)")
        gmax, kmax = maxima
        if cfg.blend == "global":
            gmax, kmax = np.full_like(gmax, gmax.max()), np.full_like(kmax, kmax.max())
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(kmax != 0, gmax / kmax, 0.0).astype(np.float32)
        return a * p.gnn + (1 - a) * p.knn * ratio

    def predict(self, x: np.ndarray, maxima: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
        """The blended (n, G_target) float32 prediction of the (n, G_train) normalised-log rows ``x``."""
        return self.blend(self.parts(x), maxima)
