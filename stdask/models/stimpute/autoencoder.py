"""stImpute's joint-embedding autoencoder and its pre-training (spec ``stimpute.md`` §2).

Encoder ``Linear(G -> latent) -> ReLU`` gives the code z; decoder ``Linear(latent -> G) -> ReLU``. Pre-training
shuffles the stacked rows [spatial; reference] into mini-batches, as the reference does, but the loss is the MSE
over the batch's *spatial* rows only. The reference rows therefore only set the batch composition (how many steps
an epoch has, and how many spatial rows each step sees): their values never enter, and since the network has no
layer coupling the rows of a batch (no BatchNorm), they are not even fed through it. A batch without a spatial row
is skipped (no optimiser step; the reference would take a NaN loss there).
"""
from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import numpy as np
import scipy.sparse as sp

from ..spaseg.runtime import deterministic, resolve_device
from .config import StImputeConfig, _torch

__all__ = ["AETraining", "ae_optimizer", "ae_step", "encode", "make_autoencoder", "train_autoencoder"]

#: rows per block when encoding (a (65,536 x G) float32 block: 130 MB at G = 500)
ENCODE_ROWS = 1 << 16


@functools.lru_cache(maxsize=None)
def _ae_class():
    nn = _torch().nn

    class AutoEncoder(nn.Module):
        """``z = ReLU(Linear(G -> latent)(x))``, ``recon = ReLU(Linear(latent -> G)(z))``."""

        def __init__(self, n_genes: int, latent: int) -> None:
            super().__init__()
            self.encoder = nn.Sequential(nn.Linear(n_genes, latent), nn.ReLU())
            self.decoder = nn.Sequential(nn.Linear(latent, n_genes), nn.ReLU())

        def forward(self, x):
            """``x``: (n, G) float32. Returns ``(z (n, latent), recon (n, G))``."""
            z = self.encoder(x)
            return z, self.decoder(z)

    return AutoEncoder


def make_autoencoder(n_genes: int, latent: int = 100, *, seed: int = 42):
    """An ``AutoEncoder`` with PyTorch's default ``Linear`` initialisation drawn from the CPU RNG seeded with
    ``seed`` (forked, so the caller's global RNG is untouched; the weights do not depend on the device)."""
    torch = _torch()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        return _ae_class()(int(n_genes), int(latent))


def ae_optimizer(model, config: StImputeConfig):
    """Adam over the AE's parameters with ``config.ae_lr`` and ``config.ae_weight_decay`` (1e-2, 1e-4). The
    EM rounds' M steps continue with this optimiser's state (spec §7)."""
    return _torch().optim.Adam(model.parameters(), lr=config.ae_lr, weight_decay=config.ae_weight_decay)


def ae_step(model, optimizer, spatial_rows) -> float | None:
    """One pre-training step on the spatial rows of a mini-batch.

    Parameters
    ----------
    model, optimizer
        The autoencoder and its Adam.
    spatial_rows
        (b, G) float32 tensor on the model's device: the batch's spatial rows (the reference rows carry no
        loss, so they are not passed).

    Returns
    -------
    The batch loss ``mean((recon - x)^2)`` over its b x G entries before the step, or ``None`` when ``b == 0``:
    then nothing changes (no step, so neither weight decay nor Adam's moments move).
    """
    if spatial_rows.shape[0] == 0:
        return None
    optimizer.zero_grad(set_to_none=True)
    _, recon = model(spatial_rows)
    loss = _torch().nn.functional.mse_loss(recon, spatial_rows)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


class AETraining(NamedTuple):
    """What :func:`train_autoencoder` returns.

    Attributes
    ----------
    model
        The trained ``AutoEncoder`` (on ``device``).
    optimizer
        Its Adam, with its state (carried into the EM rounds).
    losses
        Per epoch, the mean of the applied batch losses (NaN for an epoch without one).
    n_steps, n_skipped
        Optimiser steps taken, and batches skipped for holding no spatial row.
    device
        Where it ran.
    """

    model: Any
    optimizer: Any
    losses: list[float]
    n_steps: int
    n_skipped: int
    device: str


def _dense_rows(name: str, x: Any) -> np.ndarray:
    a = x.toarray() if sp.issparse(x) else np.asarray(x)
    if a.ndim != 2:
        raise ValueError(f"{name} must be 2-D (cells x training genes), got shape {a.shape}")
    # always a fresh buffer: a view into a larger dense array starts at another alignment than a densified sparse
    # block, and torch's CPU matmul then takes another path (codes differing in the last bit, measured)
    return np.array(a, dtype=np.float32, order="C", copy=True)


def _check_finite(name: str, x: Any) -> None:
    values = x.data if sp.issparse(x) else np.asarray(x)
    if not np.all(np.isfinite(values)):
        raise ValueError(f"{name} holds NaN or inf; stImpute needs finite normalised, log-transformed values")


def train_autoencoder(spatial: np.ndarray | sp.spmatrix, reference: np.ndarray | sp.spmatrix,
                      config: StImputeConfig | None = None, *, seed: int | None = None, generator=None,
                      device: str | None = None, threads: int | None = None) -> AETraining:
    """Pre-train the autoencoder (spec §2).

    ``config.ae_epochs`` epochs; each shuffles the N + M stacked rows [spatial; reference] and walks them in
    batches of ``config.ae_batch_size``; a batch's loss is the MSE over its spatial rows only, and a batch with
    no spatial row is skipped (:func:`ae_step`). Adam with ``config.ae_lr``, ``config.ae_weight_decay``.

    Parameters
    ----------
    spatial
        (N, G_train) float, dense or scipy sparse: normalised, log-transformed spatial expression of the
        training genes (densified as float32).
    reference
        (M, G_train) float, dense or scipy sparse: the reference cells on the same genes. Only its row count M is
        used for the batches (its values carry no loss); it is checked for shape and finiteness.
    config
        :class:`StImputeConfig` (default: its defaults).
    seed
        Overrides ``config.seed``: seeds the weight initialisation and (unless ``generator`` is given) the
        shuffling.
    generator
        A CPU ``torch.Generator`` for the per-epoch permutations (``torch.randperm``); default: one seeded with
        the seed.
    device
        ``None``: CUDA when available, else CPU.
    threads
        ``torch.set_num_threads`` for the run (default: unchanged).

    Returns
    -------
    AETraining
        Deterministic for a seed on the CPU (deterministic algorithms are switched on for the run).

    Raises
    ------
    ValueError
        inputs not 2-D, different gene counts, no spatial row, or NaN / inf.
    """
    torch = _torch()
    config = config or StImputeConfig()
    config.validate()
    seed = int(config.seed if seed is None else seed)
    x = _dense_rows("spatial", spatial)
    if np.ndim(reference) != 2 and not sp.issparse(reference):
        raise ValueError(f"reference must be 2-D (cells x training genes), got shape {np.shape(reference)}")
    if reference.shape[1] != x.shape[1]:
        raise ValueError(f"spatial has {x.shape[1]} genes but reference has {reference.shape[1]}; both must hold "
                         "the training genes, in the same order")
    if x.shape[0] == 0:
        raise ValueError("spatial has no cells; the autoencoder is trained on spatial rows")
    _check_finite("spatial", x)
    _check_finite("reference", reference)
    n, m = x.shape[0], int(reference.shape[0])
    dev = resolve_device(device)
    if generator is None:
        generator = torch.Generator()
        generator.manual_seed(seed)
    with deterministic(threads):
        model = make_autoencoder(x.shape[1], config.ae_latent, seed=seed).to(dev)
        opt = ae_optimizer(model, config)
        xt = torch.as_tensor(x, device=dev)
        losses, steps, skipped = [], 0, 0
        for _ in range(config.ae_epochs):
            perm = torch.randperm(n + m, generator=generator)
            applied = []
            for start in range(0, n + m, config.ae_batch_size):
                batch = perm[start:start + config.ae_batch_size]
                loss = ae_step(model, opt, xt[batch[batch < n].to(dev)])
                if loss is None:
                    skipped += 1
                else:
                    applied.append(loss)
            steps += len(applied)
            losses.append(float(np.mean(applied)) if applied else math.nan)
    return AETraining(model, opt, losses, steps, skipped, dev)


def encode(model, X: np.ndarray | sp.spmatrix, batch_size: int = ENCODE_ROWS) -> np.ndarray:
    """The codes z of the rows of ``X``.

    Parameters
    ----------
    model
        A (trained) ``AutoEncoder``.
    X
        (n, G_train) float, dense or scipy sparse, same genes as training.
    batch_size
        Rows densified and encoded at a time (bounds memory).

    Returns
    -------
    (n, latent) float32 ndarray, computed without gradients.
    """
    torch = _torch()
    if X.ndim != 2 or X.shape[1] != model.encoder[0].in_features:
        raise ValueError(f"X must be (cells, {model.encoder[0].in_features}) to match the autoencoder, "
                         f"got shape {X.shape}")
    X = X.tocsr() if sp.issparse(X) else X
    dev = next(model.parameters()).device
    out = np.empty((X.shape[0], model.encoder[0].out_features), dtype=np.float32)
    with torch.no_grad():
        for start in range(0, X.shape[0], max(1, int(batch_size))):
            block = _dense_rows("X", X[start:start + batch_size])
            out[start:start + block.shape[0]] = model.encoder(torch.as_tensor(block, device=dev)).cpu().numpy()
    return out
