"""SpaSEG's run settings (:class:`SpaSEGConfig`), what a run returns (:class:`SpaSEGFit`) and its size defaults."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..torch_import import require_torch


MODES = ("auto", "full", "tiled", "minibatch")


#: frames up to this many pixels (B x H x W) train as one image under ``mode="auto"``
MAX_PIXELS = 1 << 18


#: default tile side and pixels per minibatch
DEFAULT_TILE = 128


DEFAULT_BATCH_PIXELS = 1 << 16


def _torch():
    return require_torch("SpaSEG")


@dataclass
class SpaSEGConfig:
    """Network and training settings (the reference's defaults for one slice).

    Attributes
    ----------
    n_channel
        Hidden channels nC; ``None`` = the input channels C (the reference's default).
    n_conv
        nConv: 1 + (nConv - 1) 3 x 3 convolutions, then a 1 x 1 one (nConv + 1 convolutions).
    lr, weight_decay
        Adam settings.
    pretrain_epochs
        Stage 1 (MSE) while ``t < pretrain_epochs``.
    iterations
        Upper bound on iterations.
    sim_weight, con_weight
        alpha (cross-entropy) and beta (continuity); 0.4 / 0.7 for one slice, 0.2 / 0.4 for several.
    min_label
        Stop at the first iteration with at most this many labels.
    merge_start
        First iteration of the outlier-merge rule (merging continues to the end; S2).
    merge_stop
        Last merge iteration; ``None`` = until the end. ``2100`` reproduces the reference's window.
    mask_empty
        Leave empty pixels out of the cross-entropy, label count and merge means (S3; off = reference).
    seed
        Seeds the weights (and the tile order of ``"minibatch"``).
    """

    n_channel: int | None = None
    n_conv: int = 2
    lr: float = 0.002
    weight_decay: float = 1e-5
    pretrain_epochs: int = 400
    iterations: int = 2100
    sim_weight: float = 0.4
    con_weight: float = 0.7
    min_label: int = 7
    merge_start: int = 2000
    merge_stop: int | None = None
    mask_empty: bool = False
    seed: int = 1029

    def validate(self) -> None:
        def pos_int(name, lo=1):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
                raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")

        pos_int("n_conv")
        pos_int("iterations")
        pos_int("pretrain_epochs", 0)
        pos_int("min_label")
        pos_int("merge_start", 0)
        pos_int("seed", 0)
        if self.n_channel is not None:
            pos_int("n_channel")
        for name in ("lr", "weight_decay", "sim_weight", "con_weight"):
            v = float(getattr(self, name))
            if not (np.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")


@dataclass
class SpaSEGFit:
    """What :func:`train` returns.

    Attributes
    ----------
    labels
        (B, H, W) int64 raw labels (argmax channel, after any merge) of every pixel.
    embedding
        (B, K, H, W) float32 network output Y.
    stop_iteration
        Iteration whose labels are returned.
    stopped
        Whether the ``min_label`` rule fired (else training ran all ``iterations``).
    n_labels
        Distinct labels counted at the stop (over the counted pixels).
    history
        ``{"loss": [...], "n_labels": [...], "merges": [(t, keep, absorbed), ...]}`` per iteration.
    mode, device
        How it ran.
    seconds
        Wall time of the training and prediction.
    net
        The trained network (on the CPU), for :func:`predict`.
    threads
        Torch threads used.
    """

    labels: np.ndarray
    embedding: np.ndarray
    stop_iteration: int
    stopped: bool
    n_labels: int
    history: dict = field(default_factory=dict)
    mode: str = "full"
    device: str = "cpu"
    seconds: float = 0.0
    net: object = None
    threads: int = 1
