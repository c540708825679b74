"""stImpute's GraphSAGE-style blocks and the Trans network (spec ``stimpute.md`` §5, §6), without PyG.

A node is a gene; its feature for spatial cell i is the K-vector of the gene's expression in i's K reference
neighbours (nearest first). Features are laid out ``(cells, genes, K)``. With the gene aggregation matrix Ã
(:func:`~stdask.models.stimpute.gene_graph.gene_graph`, rows = target genes) one block computes, per cell,

    m_g   = sum_j Ã_gj h_j
    h'_g  = L2normalise(ReLU([h_g || m_g] W))

with one W in R^{2K x K} (no bias) shared by all genes and cells. Cells are independent given Ã, so any tile of
cells can be evaluated alone. Ã is a forward argument, not part of the module: training runs on the
training-gene graph and prediction on the all-gene graph (§4.2).
"""
from __future__ import annotations

import functools
import warnings

import numpy as np
import scipy.sparse as sp

from .config import StImputeConfig, _torch

__all__ = ["GS_NORMALIZE_EPS", "aggregate", "graph_tensor", "gs_block", "gs_block_class", "make_trans", "trans_for"]

#: ``torch.nn.functional.normalize``'s default eps: h / max(||h||_2, eps) over the K axis
GS_NORMALIZE_EPS = 1e-12


def graph_tensor(matrix: np.ndarray | sp.spmatrix | sp.sparray, device=None, dtype=None):
    """Ã as a torch tensor for :func:`gs_block` / ``Trans``.

    Parameters
    ----------
    matrix
        (G, G) float: a dense ndarray (the ``"distance_code"`` graph) or scipy sparse (``"similarity_topk"``).
    device, dtype
        Target device (default CPU) and float dtype (default float32).

    Returns
    -------
    A dense (G, G) tensor, or a coalesced sparse COO (G, G) tensor for a scipy sparse input.
    """
    torch = _torch()
    dtype = dtype or torch.float32
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"the gene graph must be a square (genes x genes) matrix, got shape {matrix.shape}")
    if not sp.issparse(matrix):
        return torch.as_tensor(np.asarray(matrix), dtype=dtype, device=device)
    coo = sp.coo_matrix(matrix)
    index = torch.as_tensor(np.vstack([coo.row, coo.col]).astype(np.int64))
    with warnings.catch_warnings():
        # torch warns once that invariant checks are off; the indices come from a valid scipy matrix
        warnings.filterwarnings("ignore", "Sparse invariant checks", UserWarning)
        t = torch.sparse_coo_tensor(index, torch.as_tensor(coo.data, dtype=dtype), coo.shape,
                                    check_invariants=False)
    return t.coalesce().to(device) if device is not None else t.coalesce()


def aggregate(h, graph):
    """``m[c, g, :] = sum_j Ã[g, j] h[c, j, :]`` for (cells, genes, K) ``h`` and a dense or sparse (G, G) Ã."""
    torch = _torch()
    if graph.layout == torch.strided:
        return torch.matmul(graph, h)
    c, g, k = h.shape
    flat = h.permute(1, 0, 2).reshape(g, c * k)  # genes x (cells * K): one sparse product for all cells
    return torch.sparse.mm(graph, flat).reshape(g, c, k).permute(1, 0, 2)


def gs_block(h, graph, weight):
    """One GraphSAGE-style update (functional form of the ``GSBlock`` module).

    Parameters
    ----------
    h
        (cells, genes, K) float tensor.
    graph
        (genes, genes) dense or sparse tensor Ã (:func:`graph_tensor`).
    weight
        (2K, K) tensor W.

    Returns
    -------
    (cells, genes, K): ``normalize(relu(cat([h, Ã h], -1) @ W), dim=-1)`` with eps :data:`GS_NORMALIZE_EPS`.
    """
    torch = _torch()
    if graph.shape[0] != h.shape[1]:
        raise ValueError(f"the gene graph covers {graph.shape[0]} genes but the features hold {h.shape[1]}; "
                         "build the graph over the same genes, in the same order")
    z = torch.relu(torch.cat([h, aggregate(h, graph)], dim=-1) @ weight)
    return torch.nn.functional.normalize(z, p=2.0, dim=-1, eps=GS_NORMALIZE_EPS)


@functools.lru_cache(maxsize=None)
def _classes():
    torch = _torch()
    nn = torch.nn

    class GSBlock(nn.Module):
        """``h' = L2normalise(ReLU([h || Ã h] W))``, W (2K, K) without bias, ``kaiming_uniform_`` init
        (PyTorch's defaults; it takes fan_in = W.shape[1] = K)."""

        def __init__(self, k: int) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.empty(2 * k, k))
            nn.init.kaiming_uniform_(self.weight)

        def forward(self, h, graph):
            return gs_block(h, graph, self.weight)

    class Trans(nn.Module):
        """``gnn_layers`` GS blocks (K -> K) then the MLP ``K -> 2h -> h -> 1`` (ReLU between), shared across
        genes and cells."""

        def __init__(self, k: int, hidden: int, layers: int = 2) -> None:
            super().__init__()
            self.blocks = nn.ModuleList(GSBlock(k) for _ in range(layers))
            self.mlp = nn.Sequential(nn.Linear(k, 2 * hidden), nn.ReLU(), nn.Linear(2 * hidden, hidden), nn.ReLU(),
                                     nn.Linear(hidden, 1))

        def forward(self, x, graph):
            """``x``: (cells, genes, K) neighbour features; ``graph``: (genes, genes) Ã tensor.
            Returns (cells, genes) predictions."""
            for block in self.blocks:
                x = block(x, graph)
            return self.mlp(x).squeeze(-1)

    return GSBlock, Trans


def make_trans(k: int, hidden: int, layers: int = 2, *, seed: int = 42):
    """A ``Trans`` module (GS blocks, then the MLP), its weights drawn from the CPU RNG seeded with ``seed``
    (forked: the caller's RNG is untouched) in module order: block weights, then the MLP's ``Linear`` layers."""
    torch = _torch()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        return _classes()[1](int(k), int(hidden), int(layers))


def trans_for(config: StImputeConfig, seed: int | None = None):
    """:func:`make_trans` with ``config.k``, ``config.hidden``, ``config.gnn_layers`` and the seed (default
    ``config.seed``)."""
    return make_trans(config.k, config.hidden, config.gnn_layers, seed=config.seed if seed is None else seed)


def gs_block_class():
    """The ``GSBlock`` module class (built lazily so importing the package does not import torch)."""
    return _classes()[0]
