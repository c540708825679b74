"""``stdask.tl.stague``: STAGUE spatial domains, cell embedding and learned cell-cell graph of a dataset.

Pipeline (spec ``stague.md``):

1. Input: log-normalised expression of the highly variable genes (:mod:`.inputs`), computed once into a
   temporary memory-mapped CSR that batches read rows from.
2. Spatial inputs, tile by tile (:mod:`.spatial`): the ``a_k``-NN anchor, ``d_cut``, candidate pairs.
3. Training (:mod:`stdask.models.stague`): full batch up to ``max_full_batch`` observations, else spatial
   mini-batches with a graph halo and exact batch-by-batch prediction.
4. Clustering of the embedding (:mod:`.clusters`): k-means (mini-batch k-means above 200,000 cells),
   Leiden / Louvain with the resolution searched to give ``n_clusters``, or a tied-covariance GMM; optional
   spatial refinement.

Results (pending on the dataset until ``ds.write()``): ``obs[key_added]`` (categorical ``"0" .. "K-1"``),
``obsm[key_added + "_embedding"]`` ((n_obs, rep_dim) float32), ``obsp[key_added + "_adj_raw"]`` (the learned S,
symmetric CSR float32, only on candidate pairs) and ``obsp[key_added + "_adj_normalized"]`` (``D^-1/2 S
D^-1/2``), ``uns[key_added]`` (parameters, mode, ``d_cut``, loss history, clustering, timings).
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ...dataset import SpatialDataset
from ...models.stague import STAGUEConfig, STAGUEFit, fit
from ...models.stague.minibatch import fit_minibatch
from ...pp.clustering import canonical_order
from ...memory import release_memory
from ...results import writes_results
from .clusters import CLUSTER_METHODS, cluster_embedding, refine_labels
from .inputs import SpilledRows, check_scale, model_input
from .spatial import spatial_inputs

REFERENCE = "STAGUE (deepomicslab/STAGUE @ b3d8fb70; Nie et al., Adv. Sci. 2024)"

#: above this many observations training runs on spatial mini-batches (spec §11 suggests 10,000)
MAX_FULL_BATCH = 10_000


@dataclass
class STAGUEResult:
    """What :func:`stague` returns.

    Attributes
    ----------
    labels
        Categorical ``pandas.Series`` of domain labels indexed by observation name (``None`` without
        ``n_clusters``).
    fit
        The :class:`~stdask.models.stague.STAGUEFit`: embedding, learned graphs, ``d_cut``, history.
    info
        What ``uns[key_added]`` holds.
    """

    labels: pd.Series | None
    fit: STAGUEFit
    info: dict = field(default_factory=dict)

    @property
    def embedding(self) -> np.ndarray:
        return self.fit.embedding


def _config(config: STAGUEConfig | None, epochs: int | None, seed: int, params: dict) -> STAGUEConfig:
    base = dataclasses.asdict(config) if config is not None else {}
    names = {f.name for f in dataclasses.fields(STAGUEConfig)}
    unknown = sorted(set(params) - names)
    if unknown:
        raise TypeError(f"stague() got unknown parameters {unknown}; STAGUE's settings are {sorted(names)}")
    base.update(params)
    if epochs is not None:
        base["epochs"] = epochs
    base["seed"] = seed
    cfg = STAGUEConfig(**base)
    cfg.validate()
    return cfg


def _permuted(a: sp.csr_matrix, order: np.ndarray) -> sp.csr_matrix:
    """``a`` indexed in canonical order back to store rows: entry (i, j) goes to (order[i], order[j])."""
    c = a.tocoo()
    return sp.csr_matrix((c.data, (order[c.row], order[c.col])), shape=a.shape)


def _train(ds, spill, sp_in, order, rank_of, cfg, mode, batch, device, threads, progress) -> STAGUEFit:
    """Train in canonical (obs-name) order, so nothing depends on the store's row order (its tiling); the
    fit is returned in that order."""
    n = len(order)

    def canonical(index, value):
        # entries sorted by canonical (row, col): edge dropout draws one number per entry, in entry order
        index = rank_of[index]
        o = np.argsort(index[0] * n + index[1], kind="stable")
        return index[:, o], value[o]

    anchor = canonical(*sp_in.anchor)
    cand = canonical(*sp_in.candidates)
    coords = ds.coords[order]
    if mode == "full":
        return fit(spill(order), coords, cfg, anchor=anchor, candidates=cand[0], d_cut=sp_in.d_cut,
                   device=device, threads=threads, progress=progress)
    return fit_minibatch(lambda rows: spill(order[rows]), spill.shape[1], coords, anchor, cand, sp_in.d_cut,
                         cfg, batch_cells=batch["batch_cells"], accumulate=batch["accumulate"], device=device,
                         threads=threads, progress=progress)


def _store_order(fitted: STAGUEFit, order: np.ndarray) -> STAGUEFit:
    emb = np.empty_like(fitted.embedding)
    emb[order] = fitted.embedding
    return dataclasses.replace(fitted, embedding=emb, adj_raw=_permuted(fitted.adj_raw, order),
                               adj_normalized=_permuted(fitted.adj_normalized, order))


def _labels(ds, fitted, order, n_clusters, cluster, refine, seed, progress):
    """Cluster labels in store order, computed in canonical order (k-means' initialisation and the refinement's
    ties depend on the row order)."""
    if n_clusters is None:
        return None, {}
    labels, cinfo = cluster_embedding(fitted.embedding, int(n_clusters), cluster, seed=seed, progress=progress)
    if refine:
        labels = refine_labels(labels, ds.coords[order], int(refine))
        cinfo["refine"] = int(refine)
    out = np.empty_like(labels)
    out[order] = labels
    cats = [str(c) for c in range(int(out.max()) + 1)] if len(out) else []
    series = pd.Series(pd.Categorical(out.astype(str), categories=cats), index=ds.obs_names, name="stague")
    return series, cinfo


@writes_results
def stague(ds: SpatialDataset, n_clusters: int | None = None, *, cluster: str = "kmeans", refine: int = 0,
           layer: str | None = None, use_highly_variable: bool | None = None, epochs: int | None = None,
           seed: int = 0, config: STAGUEConfig | None = None, minibatch: bool | None = None,
           max_full_batch: int = MAX_FULL_BATCH, batch_cells: int = 4096, accumulate: bool = True,
           key_added: str = "stague",
           device: str | None = None, threads: int | None = None, progress: bool = True,
           **params: Any) -> STAGUEResult:
    """STAGUE: learn a cell embedding and a cell-cell graph, and cluster the embedding into spatial domains.

    Parameters
    ----------
    ds
        The dataset (coordinates in ``ds.unit``).
    n_clusters
        Number of domains; ``None`` learns the embedding and graph only.
    cluster
        ``"kmeans"`` (reference default), ``"leiden"``, ``"louvain"`` (resolution searched for exactly
        ``n_clusters``) or ``"gmm"`` (tied covariance; an approximation of the reference's R mclust EEE).
    refine
        > 0: each label becomes the majority label of the observation's ``refine`` nearest spatial
        neighbours (50 in the reference's DLPFC scripts).
    layer, use_highly_variable
        Input expression (:func:`~.inputs.model_input`): default the ``log1p`` layer when it exists, else the
        counts normalised here as the reference does; the ``highly_variable`` genes when marked.
    epochs
        Training epochs (passes over all batches in mini-batch mode); default ``config.epochs`` (150).
    seed
        Seeds the network, the view draws, the batch order and the clustering.
    config
        :class:`~stdask.models.stague.STAGUEConfig` (defaults: the reference's ``main.py``); ``**params``
        override single settings (``k=20, a_k=6, adj_weight=0.3, lr=1e-3, ...``).
    minibatch
        ``None``: mini-batch training above ``max_full_batch`` observations; ``True`` / ``False`` force it.
    batch_cells
        Own observations per mini-batch.
    accumulate
        Mini-batch mode: ``True`` (default) takes one optimiser step per epoch on the gradients of all
        batches (the reference's full-batch optimisation, its loss chunked as with ``sim_batch_size``);
        ``False`` steps after every batch (stochastic: fewer epochs needed on a large slice, results
        further from full batch). See :func:`stdask.models.stague.minibatch.fit_minibatch`.
    key_added
        Name of the results (module docstring).
    device
        ``None``: CUDA when torch sees it, else CPU.
    threads
        torch threads for the run.
    progress
        Show progress.
    copy
        Return the result without recording it on ``ds``.

    Returns
    -------
    STAGUEResult
        Also recorded on ``ds`` (pending until ``ds.write()``) unless ``copy=True``.

    Raises
    ------
    ValueError
        Unknown ``cluster``, bad settings, fewer observations than ``k + 1``, or a resolution search that
        cannot reach ``n_clusters``.
    TypeError
        An unknown ``**params`` name.
    """
    if cluster not in CLUSTER_METHODS:
        raise ValueError(f"cluster must be one of {CLUSTER_METHODS}, got {cluster!r}")
    if n_clusters is not None and not (isinstance(n_clusters, (int, np.integer)) and 1 <= n_clusters <= ds.n_obs):
        raise ValueError(f"n_clusters must be an integer in [1, {ds.n_obs}] or None, got {n_clusters!r}")
    if isinstance(refine, bool) or not isinstance(refine, (int, np.integer)) or refine < 0:
        raise ValueError(f"refine must be an integer >= 0, got {refine!r}")
    cfg = _config(config, epochs, int(seed), params)
    mode = "minibatch" if (minibatch if minibatch is not None else ds.n_obs > max_full_batch) else "full"
    t0 = time.perf_counter()
    inp = model_input(ds, layer, use_highly_variable, progress)
    order = canonical_order(ds)
    rank_of = np.empty_like(order)
    rank_of[order] = np.arange(len(order))
    sp_in = spatial_inputs(ds, cfg.k, cfg.a_k, cfg.n_candidates, rank_of, progress=progress)
    release_memory()  # the graph builds' temporaries (10^7-edge arrays at 10^6 cells) before training
    with SpilledRows(inp.matrix, progress=progress) as spill:
        if not inp.info.get("normalized_here"):
            check_scale(spill.sample(), f"{ds.path}: layer {inp.info['layer']!r}")
        batch = {"batch_cells": int(batch_cells), "accumulate": bool(accumulate)}
        fitted = _train(ds, spill, sp_in, order, rank_of, cfg, mode, batch, device, threads, progress)
    labels, cinfo = _labels(ds, fitted, order, n_clusters, cluster, refine, int(seed), progress)
    fitted = _store_order(fitted, order)
    info = {
        "reference": REFERENCE, "mode": mode, "n_obs": int(ds.n_obs), "input": inp.info,
        "params": {**dataclasses.asdict(cfg), "n_clusters": n_clusters, "cluster": cluster, "refine": int(refine),
                   "batch_cells": int(batch_cells) if mode == "minibatch" else None,
                   "accumulate": bool(accumulate) if mode == "minibatch" else None},
        "d_cut": float(fitted.d_cut), "n_candidate_pairs": int(sp_in.candidates[0].shape[1]),
        "n_learned_edges": int(fitted.adj_raw.nnz), "history": fitted.history, "clustering": cinfo,
        "device": fitted.device, "seconds_training": float(fitted.seconds),
        "seconds_total": float(time.perf_counter() - t0),
        "prediction": cfg.predict if mode == "full" else "recompute",
    }
    if labels is not None:
        labels.name = key_added
        ds.set_result("obs", key_added, labels)
    ds.set_result("obsm", f"{key_added}_embedding", fitted.embedding)
    ds.set_result("obsp", f"{key_added}_adj_raw", fitted.adj_raw)
    ds.set_result("obsp", f"{key_added}_adj_normalized", fitted.adj_normalized)
    ds.set_result("uns", key_added, info)
    return STAGUEResult(labels, fitted, info)
