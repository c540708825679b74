"""STAGUE's run settings (:class:`STAGUEConfig`) and what a run returns (:class:`STAGUEFit`)."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..torch_import import require_torch


PREDICT_MODES = ("last_epoch", "recompute")


def _torch():
    return require_torch("STAGUE")


@dataclass
class STAGUEConfig:
    """Network, graph and training settings; defaults are the reference's ``main.py`` (spec table).

    Attributes
    ----------
    exp_out, hidden_dim, rep_dim, proj_dim
        Cell-encoder width, GCN hidden width, embedding width, projection width.
    nlayers
        GCN layers of the learner and of the encoder (>= 2).
    dropout, dropedge_rate
        Dropout after each hidden encoder layer; probability of dropping each stored adjacency entry.
    maskfeat_rate_anchor, maskfeat_rate_learner
        Fraction of cell-encoder columns zeroed in the anchor (and negative) view and in the learner view.
    gamma
        Spatial decay: prior ``exp(-gamma * (d / d_cut)**2)``.
    k, a_k
        Neighbour rank defining ``d_cut``; neighbours of the spatial-kNN anchor graph.
    n_candidates
        Candidate pairs: each cell's this many nearest cells (the reference's sparse learner uses 1000).
    adj_weight
        omega: ``S = omega * cos + (1 - omega) * prior``.
    tau
        Bootstrapping: ``A <- tau * A + (1 - tau) * A_learned``.
    temperature, margin, margin_weight
        NT-Xent temperature T; triplet margin m and weight w.
    lr, weight_decay, epochs
        Adam settings and full-batch epochs.
    sim_batch_size
        NT-Xent over consecutive chunks of this many cells (0: all cells at once).
    batch_norm
        BatchNorm at the end of the cell encoder (the reference's ``no_bn`` off).
    renormalize
        GCN adds self loops and renormalises the (already normalised) adjacency, as PyG's ``GCNConv`` does
        in the reference. ``False`` propagates with the adjacency as given (a deviation).
    predict
        ``"last_epoch"`` (reference): the eval-mode encoder on F and A_learned of the last training epoch;
        ``"recompute"``: F and A_learned recomputed in eval mode with the trained weights.
    seed
        Seeds weights, dropout, masks, permutations and edge dropout.
    """

    exp_out: int = 512
    hidden_dim: int = 256
    rep_dim: int = 64
    proj_dim: int = 64
    nlayers: int = 2
    dropout: float = 0.5
    dropedge_rate: float = 0.5
    maskfeat_rate_anchor: float = 0.9
    maskfeat_rate_learner: float = 0.6
    gamma: float = 2.0
    k: int = 15
    a_k: int = 5
    n_candidates: int = 1000
    adj_weight: float = 0.5
    tau: float = 0.999
    temperature: float = 0.3
    margin: float = 0.5
    margin_weight: float = 2.0
    lr: float = 5e-4
    weight_decay: float = 1e-3
    epochs: int = 150
    sim_batch_size: int = 0
    batch_norm: bool = True
    renormalize: bool = True
    predict: str = "last_epoch"
    seed: int = 0

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first setting out of range."""
        def pos_int(name, lo=1):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
                raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")

        for name in ("exp_out", "hidden_dim", "rep_dim", "proj_dim", "k", "a_k", "n_candidates", "epochs"):
            pos_int(name)
        pos_int("nlayers", 2)
        pos_int("sim_batch_size", 0)
        pos_int("seed", 0)
        for name in ("dropout", "dropedge_rate", "maskfeat_rate_anchor", "maskfeat_rate_learner",
                     "adj_weight", "tau"):
            v = float(getattr(self, name))
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {v!r}")
        for name in ("gamma", "lr", "weight_decay", "margin_weight"):
            v = float(getattr(self, name))
            if not (np.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
        if not float(self.temperature) > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature!r}")
        if not np.isfinite(float(self.margin)):
            raise ValueError(f"margin must be finite, got {self.margin!r}")
        if self.predict not in PREDICT_MODES:
            raise ValueError(f"predict must be one of {PREDICT_MODES}, got {self.predict!r}")


@dataclass
class STAGUEFit:
    """What :func:`~stdask.models.stague.fit` returns.

    Attributes
    ----------
    embedding
        (N, rep_dim) float32 GCN-encoder output z (not the projection).
    adj_raw
        (N, N) ``scipy.sparse.csr_matrix`` float32: the learned S (symmetric, only on candidate pairs).
    adj_normalized
        (N, N) csr float32: ``D_S^-1/2 S D_S^-1/2``.
    d_cut
        Distance cutoff used (coordinate units).
    history
        ``{"loss": [...], "nt_xent": [...], "triplet": [...], "anchor_nnz": [...]}`` per epoch.
    device, seconds
        Where it ran and the wall time.
    """

    embedding: np.ndarray
    adj_raw: object
    adj_normalized: object
    d_cut: float
    history: dict = field(default_factory=dict)
    device: str = "cpu"
    seconds: float = 0.0
