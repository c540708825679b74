"""``stdask.tl.impute_cv``: the paper's evaluation of stImpute on the genes the panel measured (spec §11).

The sorted shared genes are split by ``KFold(folds, shuffle=True, random_state=seed)``. For each fold a fresh
model trains on the other folds' genes (on the training sample of cells) and predicts the fold's genes for every
cell, tile by tile; the reliability model of that fold scores them. The measured values of the held-out genes
are the truth. In the same pass a plain kNN average (each cell's K nearest reference cells by cosine on the
fold's training genes, :mod:`.baseline`) predicts the same genes.

Metrics, for stImpute and the baseline: per gene, the uncentred cosine and the MSE over all cells (streamed:
per-gene sums over tiles); per cell, the cosine and the MSE over all shared genes (per-cell sums over folds);
the medians (the reference code) and means (the paper's text); and the median cosine of the top half of the genes
by reliability.
"""
from __future__ import annotations

import shutil
import tempfile
import time
import weakref
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ...dataset import SpatialDataset
from ...models.stimpute.config import StImputeConfig
from ...models.stimpute.neighbours import CodeIndex
from ...models.stimpute.predict import Predictor
from ...models.stimpute.reliability import train_reliability
from ...progress import progress_bar
from .baseline import neighbour_mean
from .folds import gene_folds
from .metrics import GeneMetrics, pair, sums, summary_table
from .prepare import build_graph, default_train_cells, panel_rows, panel_tiles, prepare, train_model, training_sample

__all__ = ["ImputeCV", "impute_cv"]

#: out-of-fold predictions larger than this many bytes are kept in a memory-mapped file, not in memory
IN_MEMORY_BYTES = 1 << 28


@dataclass
class ImputeCV:
    """What :func:`impute_cv` returns.

    Attributes
    ----------
    predictions
        AnnData, cells (the slice's obs names, store order) x shared genes: out-of-fold stImpute predictions
        (float32; memory-mapped from a temporary file above 256 MB, removed with this object).
    reliability
        ``pandas.Series`` by shared gene: the reliability score of its fold's model.
    genes
        DataFrame by shared gene: ``fold``, ``cosine``, ``mse``, ``knn_cosine``, ``knn_mse``, ``reliability``.
    cells
        DataFrame by cell: ``cosine``, ``mse``, ``knn_cosine``, ``knn_mse`` over all shared genes.
    summary
        DataFrame: rows = metrics (``gene_cosine``, ``gene_mse``, ``cell_cosine``, ``cell_mse``, ``top50_cosine``),
        columns = ``median`` / ``mean`` for stImpute and ``knn_median`` / ``knn_mean`` for the baseline.
    info
        Settings, folds, timings.
    """

    predictions: Any
    reliability: pd.Series
    genes: pd.DataFrame
    cells: pd.DataFrame
    summary: pd.DataFrame
    info: dict = field(default_factory=dict)


class _CellSums:
    """Per-cell sums over genes (p.t, p.p, t.t, (p - t)^2) of the predictions of every fold, float64."""

    def __init__(self, n: int) -> None:
        self.s = np.zeros((4, n), dtype=np.float64)

    def add(self, start: int, pred: np.ndarray, truth: np.ndarray) -> None:
        p, t = pair(pred, truth)
        self.s[:, start:start + p.shape[0]] += np.stack(sums(p, t, axis=1))

    def metrics(self, n_genes: int) -> tuple[np.ndarray, np.ndarray]:
        den = np.sqrt(self.s[1] * self.s[2])
        return np.divide(self.s[0], den, out=np.zeros_like(den), where=den > 0), self.s[3] / n_genes


def _oof_array(n: int, g: int):
    """An (n, g) float32 array for the out-of-fold predictions: in memory, or memory-mapped from a private
    temporary folder (removed when the array is collected)."""
    if n * g * 4 <= IN_MEMORY_BYTES:
        return np.zeros((n, g), dtype=np.float32)
    folder = tempfile.mkdtemp(prefix="stdask-impute-cv-")
    arr = np.lib.format.open_memmap(f"{folder}/predictions.npy", mode="w+", dtype=np.float32, shape=(n, g))
    weakref.finalize(arr, shutil.rmtree, folder, True)
    return arr


def impute_cv(ds: SpatialDataset, reference: Any, folds: int = 5, seed: int = 0, *, gene_embedding: Any = None,
              train_cells: int | None = None, reference_layer: str | None = None,
              case_insensitive: bool | None = None, reliability: str = "quantiles", model_seed: int = 42,
              device: str | None = None, threads: int | None = None, progress: bool = True,
              **params: Any) -> ImputeCV:
    """Cross-validate stImpute over the panel's genes (the paper's protocol, spec §11), with a kNN baseline.

    Parameters
    ----------
    ds, reference, gene_embedding, train_cells, reference_layer, case_insensitive, reliability, device, threads,
    progress, **params
        As :func:`~stdask.tl.impute.impute`.
    folds, seed
        ``KFold(folds, shuffle=True, random_state=seed)`` over the sorted shared genes (5, 0).
    model_seed
        Seed of every fold's model and of the training sample (the reference's 42).

    Returns
    -------
    ImputeCV
    """
    t0 = time.perf_counter()
    inputs = prepare(ds, reference, reference_layer=reference_layer, case_insensitive=case_insensitive,
                     reliability=reliability, progress=progress)
    match = inputs.match
    shared = np.asarray(match.shared).astype(str)
    test_sets = gene_folds(shared, folds, seed)
    g, n = len(shared), ds.n_obs
    oof = _oof_array(n, g)
    rel = np.full(g, np.nan)
    fold_of = np.zeros(g, dtype=np.int64)
    gm, km = np.full((2, g), np.nan), np.full((2, g), np.nan)  # (cosine, mse) per gene: stImpute, kNN
    cs, ks = _CellSums(n), _CellSums(n)
    fold_info = []
    bar = progress_bar(total=folds, desc="stimpute cv", unit="fold", disable=not progress)
    with bar:
        for f, test in enumerate(test_sets):
            train = np.setdiff1d(np.arange(g), test)
            fold_of[test] = f
            config = StImputeConfig.for_size(n, len(train), seed=model_seed, **params)
            info = _fold(ds, inputs, train, test, config, gene_embedding, train_cells, reliability, device, threads,
                         oof, rel, (gm, km, cs, ks))
            fold_info.append({"fold": f, "n_train_genes": int(len(train)), "n_test_genes": int(len(test)), **info})
            bar.update(1)
    return _result(ds, shared, oof, rel, fold_of, gm, km, cs, ks, {
        "folds": folds, "seed": seed, "model_seed": model_seed, "reliability": reliability, "inputs": inputs.info,
        "fold_info": fold_info, "seconds": time.perf_counter() - t0})


def _fold(ds, inputs, train, test, config, gene_embedding, train_cells, reliability, device, threads, oof, rel,
          acc) -> dict:
    """Train, score and predict one fold, adding its predictions and metrics to the accumulators."""
    gene_out, knn_out, cs, ks = acc
    gm, km = GeneMetrics(len(test)), GeneMetrics(len(test))
    match = inputs.match
    t0 = time.perf_counter()
    sp_train, sp_test = match.spatial_index[train], match.spatial_index[test]
    ref_train, ref_test = match.reference_index[train], match.reference_index[test]
    n_train = default_train_cells(len(train), config) if train_cells is None else int(train_cells)
    rows = training_sample(ds, n_train, config.seed)
    x_train = panel_rows(ds, rows, inputs, sp_train)
    names = np.asarray(match.shared).astype(str)
    model, _ = train_model(x_train, inputs, ref_train, names[train], config, gene_embedding, device=device,
                           threads=threads, progress=False)
    all_cols = np.concatenate([ref_train, ref_test])
    graph_all = build_graph(np.concatenate([names[train], names[test]]), all_cols, inputs, config, gene_embedding)
    ref_all = inputs.reference_norm[:, all_cols]
    nt = len(train)
    profiles = Predictor(model, ref_all, graph_all.matrix, np.arange(nt), np.arange(all_cols.size),
                         len(rows)).gnn(x_train, model.neighbours_gnn)
    rel[test] = train_reliability(profiles[:, :nt], x_train, config, features=reliability).score(profiles[:, nt:])
    del profiles
    t_train = time.perf_counter()
    predictor = Predictor(model, ref_all, graph_all.matrix, np.arange(nt), np.arange(nt, all_cols.size), ds.n_obs)
    cols = np.concatenate([sp_train, sp_test])
    maxima = None
    if config.blend != "paper":
        maxima = predictor.maxima(x[:, :nt] for _, x in panel_tiles(ds, inputs, cols))
    knn_index = CodeIndex(inputs.reference_norm[:, ref_train].toarray(), config.k, ds.n_obs,
                          exact_max_pairs=config.exact_max_pairs, seed=config.seed)
    ref_test_values = inputs.reference_norm[:, ref_test]
    for start, x in panel_tiles(ds, inputs, cols):
        xt, truth = x[:, :nt], x[:, nt:]
        pred = predictor.predict(xt, maxima)
        base = neighbour_mean(knn_index, xt, ref_test_values)
        oof[start:start + x.shape[0], test] = pred
        gm.update(pred, truth)
        km.update(base, truth)
        cs.add(start, pred, truth)
        ks.add(start, base, truth)
    gene_out[:, test] = gm.cosine(), gm.mse()
    knn_out[:, test] = km.cosine(), km.mse()
    return {"n_train_cells": int(len(rows)), "neighbour_method": predictor.neighbour_method,
            "seconds_train": t_train - t0, "seconds_predict": time.perf_counter() - t_train,
            "config": config.to_dict()}


def _result(ds, shared, oof, rel, fold_of, gm, km, cs, ks, info) -> ImputeCV:
    import anndata as ad

    g = len(shared)
    cell_cos, cell_mse = cs.metrics(g)
    kcell_cos, kcell_mse = ks.metrics(g)
    genes = pd.DataFrame({"fold": fold_of, "cosine": gm[0], "mse": gm[1], "knn_cosine": km[0], "knn_mse": km[1],
                          "reliability": rel}, index=pd.Index(shared, name="gene"))
    cells = pd.DataFrame({"cosine": cell_cos, "mse": cell_mse, "knn_cosine": kcell_cos, "knn_mse": kcell_mse},
                         index=pd.Index(np.asarray(ds.obs_names), name="obs"))
    ours = summary_table(genes["cosine"].to_numpy(), genes["mse"].to_numpy(), cell_cos, cell_mse, rel)
    knn = summary_table(genes["knn_cosine"].to_numpy(), genes["knn_mse"].to_numpy(), kcell_cos, kcell_mse, rel)
    summary = ours[["median", "mean"]].join(knn[["median", "mean"]].add_prefix("knn_"))
    predictions = ad.AnnData(oof, obs=pd.DataFrame(index=cells.index.astype(str)),
                             var=pd.DataFrame(index=pd.Index(shared, name="gene")))
    info["summary"] = summary.to_dict()
    return ImputeCV(predictions, pd.Series(rel, index=genes.index, name="reliability"), genes, cells, summary, info)
