"""The graph learner (spec §4, sparse variant): a GCN over the initial anchor, learned-feature cosine
similarity mixed with a spatial-decay prior on candidate pairs, mean-symmetrised and normalised."""
from __future__ import annotations

import numpy as np

from .config import STAGUEConfig, _torch
from .gcn import edge_dot, gcn_layer_class
from .sparse import sym_normalize, symmetrize_mean


def spatial_prior(dist: np.ndarray, d_cut: float, gamma: float) -> np.ndarray:
    """``exp(-gamma * (d / d_cut)**2)``.

    Parameters
    ----------
    dist
        (E,) float distances of candidate pairs, in coordinate units.
    d_cut, gamma
        Cutoff distance (> 0) and decay rate.

    Returns
    -------
    (E,) float32 prior in (0, 1], decreasing with distance.
    """
    d = np.asarray(dist, dtype=np.float64) / float(d_cut)
    return np.exp(-float(gamma) * d * d).astype(np.float32)


def _learner_class():
    torch = _torch()
    nn = torch.nn
    GCNLayer = gcn_layer_class()

    class GraphLearner(nn.Module):
        """``nlayers`` GCN layers ``exp_out -> exp_out`` (ReLU between, none after the last) over the
        **initial** normalised anchor, then ``S = omega * max(0, cos(h_i, h_j)) + (1 - omega) * prior_ij``
        on the candidate pairs."""

        def __init__(self, dim: int, config: STAGUEConfig, anchor0, candidates, prior) -> None:
            super().__init__()
            self.layers = nn.ModuleList(GCNLayer(dim, dim, config.renormalize) for _ in range(config.nlayers))
            self.omega = float(config.adj_weight)
            self.anchor0 = anchor0
            self.candidates = candidates
            self.prior = prior

        def forward(self, f, graph=None):
            """``f``: (N, exp_out) cell-encoder output; ``graph``: ``(anchor0, candidates, prior)`` of a
            subgraph (mini-batch training), default the full graph given at construction. Returns
            ``(A_norm, S)``, each (index (2, E) int64, value (E,) float32) on the symmetrised candidate
            support."""
            anchor0, candidates, prior = graph if graph is not None else (self.anchor0, self.candidates,
                                                                          self.prior)
            h = f
            for i, layer in enumerate(self.layers):
                h = layer(h, anchor0)
                if i < len(self.layers) - 1:
                    h = torch.relu(h)
            h = torch.nn.functional.normalize(h, dim=1, eps=1e-12)
            row, col = candidates
            s1 = torch.relu(edge_dot(h, row, col))
            s = self.omega * s1 + (1.0 - self.omega) * prior
            n = f.shape[0]
            idx, val = symmetrize_mean(candidates, s, n)
            return sym_normalize(idx, val, n), (idx, val)

    return GraphLearner


def graph_learner(dim: int, config: STAGUEConfig, anchor0, candidates, prior):
    """A :class:`GraphLearner`.

    Parameters
    ----------
    dim
        Cell-encoder width (``exp_out``).
    anchor0
        (index, value, N) initial normalised anchor (kept; the bootstrapped anchor is never seen).
    candidates
        (2, E) int64 candidate pairs (no self pairs, all within ``d_cut``).
    prior
        (E,) float32 :func:`spatial_prior` of those pairs.
    """
    return _learner_class()(dim, config, anchor0, candidates, prior)
