"""stImpute's training: autoencoder pre-training, then the EM rounds (spec ``stimpute.md`` §2, §7).

Each EM round:

1. the neighbours of every training cell are re-found with the current AE (§3) and their features gathered
   once, as an (N, G_train, K) float32 array;
2. **E step**: ``e_epochs`` full-batch Trans steps on the training-gene graph. The loss's full-batch gradient is
   accumulated over tiles of cells (:mod:`.twopass`), so memory is one tile's activations whatever N is;
3. **M step**: ``m_epochs`` full-batch AE steps on ``MSE((recon(Y) + Trans(X_nb)) / 2, Y)``, Trans in eval mode
   without gradients (its output a constant), the AE's Adam state carried over from pre-training.

The AE as it was at the start of the last round is kept: the GNN prediction uses the neighbours it finds, the
kNN prediction those of the final AE (quirk I7, kept for parity).
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp

from .autoencoder import encode, train_autoencoder
from .blocks import graph_tensor, trans_for
from .config import StImputeConfig, _torch
from .neighbours import CodeIndex, gather
from .twopass import target_stats, tile_slices, tiled_loss_backward

__all__ = ["ACTIVATION_BYTES", "StImputeFit", "fit", "node_macs", "tile_cells_for", "trans_predict"]

#: bytes of activations one tile of cells may hold during a Trans pass (forward and backward), as estimated by
#: :func:`tile_cells_for`; measured peaks run about twice the estimate (autograd's saved tensors, the sparse
#: aggregation's transposed copies), so 256 MB keeps a tile near 0.5 GB. A training sample within one tile runs
#: with the plain loss (one forward pass per step, not two)
ACTIVATION_BYTES = 1 << 28


def node_macs(config: StImputeConfig) -> int:
    """Multiply-adds of one forward pass of the Trans network per (cell, gene) node: the GS blocks'
    ``2K x K`` products and the MLP ``K -> 2h -> h -> 1`` (the gene graph's aggregation, about ``topk x K``,
    is small beside them)."""
    k, h = config.k, config.hidden
    return config.gnn_layers * 2 * k * k + k * 2 * h + 2 * h * h + h


def tile_cells_for(n_genes: int, config: StImputeConfig, budget: int = ACTIVATION_BYTES) -> int:
    """Cells per Trans tile so that its activations fit ``budget`` bytes.

    A cell holds ``n_genes`` nodes; per node the blocks keep about ``6 K`` floats per layer (input, aggregate,
    concatenation, ReLU, normalised output) and the MLP ``3 h + 1``; the backward pass about doubles it.
    """
    per_node = config.gnn_layers * 6 * config.k + 3 * config.hidden + config.k + 1
    return max(1, int(budget // (2 * 4 * per_node * max(int(n_genes), 1))))


@dataclass
class StImputeFit:
    """A trained stImpute model (what :func:`fit` returns).

    Attributes
    ----------
    config
        The settings used.
    ae
        The final autoencoder (after the last M step): its neighbours give the kNN prediction.
    ae_gnn
        A frozen copy of the autoencoder as it was at the start of the last EM round: its neighbours feed the
        GNN prediction (§8).
    trans
        The trained Trans network (eval mode).
    reference_codes_gnn, reference_codes
        (M, latent) float32 codes of the reference cells under ``ae_gnn`` and ``ae``.
    neighbours_gnn
        (N_train, K) int64: the training cells' neighbours at the start of the last round.
    history
        ``ae_pretrain`` (per-epoch losses), ``rounds`` (per round: ``e_losses``, ``m_losses``, seconds),
        ``n_ae_steps``, ``n_ae_skipped``, ``tile_cells``, ``neighbour_method``.
    device
        Where it ran.
    """

    config: StImputeConfig
    ae: Any
    ae_gnn: Any
    trans: Any
    reference_codes_gnn: np.ndarray
    reference_codes: np.ndarray
    neighbours_gnn: np.ndarray
    history: dict[str, Any] = field(default_factory=dict)
    device: str = "cpu"

    def index(self, which: str, n_query: int) -> CodeIndex:
        """A :class:`~.neighbours.CodeIndex` over the reference codes of ``which`` (``"gnn"`` or ``"knn"``),
        its search method chosen for ``n_query`` spatial cells."""
        codes = self.reference_codes_gnn if which == "gnn" else self.reference_codes
        return CodeIndex(codes, self.config.k, n_query, exact_max_pairs=self.config.exact_max_pairs,
                         seed=self.config.seed)


def _features(reference_train: Any, idx: np.ndarray) -> np.ndarray:
    """(N, G, K) float32 neighbour features (genes before K, the Trans layout) of neighbour rows ``idx``."""
    return np.ascontiguousarray(gather(reference_train, idx).transpose(0, 2, 1))


def _e_step(trans, opt, x_nb: np.ndarray, y: np.ndarray, graph, config: StImputeConfig, tile: int,
            dev: str) -> list[float]:
    """``config.e_epochs`` full-batch Trans steps; returns the loss before each step."""
    torch = _torch()
    tiles = tile_slices(y.shape[0], tile)
    stats = target_stats(y, dev)
    xt = torch.as_tensor(x_nb)
    yt = torch.as_tensor(y)
    losses = []
    trans.train()
    for _ in range(config.e_epochs):
        opt.zero_grad(set_to_none=True)
        losses.append(tiled_loss_backward(lambda r: trans(xt[r].to(dev), graph), lambda r: yt[r].to(dev), tiles,
                                          stats, y.shape[1]))
        opt.step()
    trans.eval()
    return losses


def trans_predict(trans, x_nb: np.ndarray, graph, tile: int, dev: str) -> np.ndarray:
    """(n, G) float32 Trans output for (n, G, K) features, tile by tile, without gradients."""
    torch = _torch()
    out = np.empty(x_nb.shape[:2], dtype=np.float32)
    trans.eval()
    with torch.no_grad():
        for rows in tile_slices(x_nb.shape[0], tile):
            out[rows] = trans(torch.as_tensor(x_nb[rows], device=dev), graph).cpu().numpy()
    return out


def _m_step(ae, opt, y: np.ndarray, p_gnn: np.ndarray, config: StImputeConfig, dev: str) -> list[float]:
    """``config.m_epochs`` full-batch AE steps on ``MSE((recon(Y) + P) / 2, Y)``."""
    torch = _torch()
    yt, pt = torch.as_tensor(y, device=dev), torch.as_tensor(p_gnn, device=dev)
    losses = []
    ae.train()
    for _ in range(config.m_epochs):
        opt.zero_grad(set_to_none=True)
        _, recon = ae(yt)
        loss = torch.nn.functional.mse_loss((recon + pt) / 2, yt)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    ae.eval()
    return losses


def fit(spatial: np.ndarray, reference_train: np.ndarray | sp.spmatrix, graph: np.ndarray | sp.spmatrix,
        config: StImputeConfig | None = None, *, device: str | None = None, threads: int | None = None,
        tile_cells: int | None = None, progress: bool = False) -> StImputeFit:
    """Train stImpute on the training genes (spec §2, §7).

    Parameters
    ----------
    spatial
        (N, G_train) float: normalised, log-transformed spatial expression of the training genes (the training
        cells; densified as float32).
    reference_train
        (M, G_train) float, dense or CSR: the reference cells, same genes in the same order.
    graph
        (G_train, G_train) gene aggregation matrix Ã over the training genes
        (:func:`~stdask.models.stimpute.gene_graph.gene_graph`).
    config
        :class:`StImputeConfig` (use :meth:`StImputeConfig.for_size` for the size rule).
    device, threads
        ``None``: CUDA when available, else CPU; torch threads for the run.
    tile_cells
        Cells per Trans tile (default :func:`tile_cells_for`). Changes only float rounding.
    progress
        Show a progress bar over the training stages.

    Returns
    -------
    StImputeFit
        Deterministic for a seed on the CPU.
    """
    from ...progress import progress_bar
    from ..spaseg.runtime import deterministic, resolve_device

    torch = _torch()
    config = config or StImputeConfig()
    config.validate()
    y = np.ascontiguousarray(spatial.toarray() if sp.issparse(spatial) else spatial, dtype=np.float32)
    ref = reference_train.tocsr().astype(np.float32) if sp.issparse(reference_train) \
        else np.asarray(reference_train, dtype=np.float32)
    if graph.shape != (y.shape[1], y.shape[1]):
        raise ValueError(f"the gene graph is {graph.shape} but there are {y.shape[1]} training genes")
    dev = resolve_device(device)
    tile = int(tile_cells) if tile_cells else tile_cells_for(y.shape[1], config)
    bar = progress_bar(total=1 + 2 * config.em_rounds, desc="stimpute fit", unit="stage", disable=not progress)
    with deterministic(threads), bar:
        t0 = time.perf_counter()
        pre = train_autoencoder(y, ref, config, device=dev)
        ae, ae_opt = pre.model, pre.optimizer
        ae.eval()
        bar.update(1)
        history: dict[str, Any] = {"ae_pretrain": pre.losses, "n_ae_steps": pre.n_steps,
                                   "n_ae_skipped": pre.n_skipped, "ae_seconds": time.perf_counter() - t0,
                                   "tile_cells": tile, "rounds": []}
        trans = trans_for(config).to(dev)
        opt = torch.optim.Adam(trans.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        g = graph_tensor(graph, device=dev)
        for rnd in range(config.em_rounds):
            t0 = time.perf_counter()
            ref_codes = encode(ae, ref)
            index = CodeIndex(ref_codes, config.k, y.shape[0], exact_max_pairs=config.exact_max_pairs,
                              seed=config.seed)
            idx, _ = index.query(encode(ae, y))
            if rnd == config.em_rounds - 1:
                ae_gnn, codes_gnn, idx_gnn = copy.deepcopy(ae).eval(), ref_codes, idx
            x_nb = _features(ref, idx)
            e_losses = _e_step(trans, opt, x_nb, y, g, config, tile, dev)
            bar.update(1)
            m_losses = _m_step(ae, ae_opt, y, trans_predict(trans, x_nb, g, tile, dev), config, dev)
            del x_nb
            bar.update(1)
            history["rounds"].append({"e_losses": e_losses, "m_losses": m_losses, "neighbour_method": index.method,
                                      "seconds": time.perf_counter() - t0})
        history["neighbour_method"] = index.method
        codes = encode(ae, ref)
    if not all(math.isfinite(v) for r in history["rounds"] for v in r["e_losses"]):
        raise FloatingPointError("stImpute's Trans loss became NaN or inf; check the inputs for extreme values")
    return StImputeFit(config, ae, ae_gnn, trans.eval(), codes_gnn, codes, idx_gnn, history, dev)
