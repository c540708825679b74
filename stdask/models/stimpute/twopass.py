"""The full-batch gradient of stImpute's loss, computed over tiles of cells (spec ``stimpute.md`` §6, "at scale").

The loss (:func:`~stdask.models.stimpute.loss.stimpute_loss`) couples all cells: the centring means μ̂, μ are
global scalars and the gene-wise cosines sum over every cell. Everything it needs is a handful of sums:

* per gene g: ``S1 = Σ_i ŷ``, ``S2 = Σ_i ŷ²``, ``S3 = Σ_i ŷ y`` (and the same for y, constant);
* per cell i: ``a = Σ_g ŷ (y - μ)``, ``r = Σ_g ŷ``, ``q = Σ_g ŷ²`` (and ``Σ_g (y - μ)``, ``||y_i - μ||``, constant).

With them, in float64,

    μ̂ = Σ_g S1 / (N G)
    gene cos_g = (S3 - μ S1 - μ̂ Sy + N μ̂ μ) / (max(sqrt(S2 - 2 μ̂ S1 + N μ̂²), eps) · max(||Y_:,g - μ||, eps))
    cell cos_i = (a - μ̂ B_i) / (max(sqrt(q - 2 μ̂ r + G μ̂²), eps) · max(||Y_i,: - μ||, eps))
    L = 2 [(1 - mean_i cos_i) + (1 - mean_g cos_g)] + (Σ S2 - 2 Σ S3 + Σ Y²) / (N G)

Pass 1 computes the sums without gradients, tile by tile. Pass 2 re-runs each tile with gradients and
back-propagates ``L`` written as a function of that tile's predictions alone (the other tiles' sums held
constant): ``∂L_t/∂Ŷ_t = ∂L/∂Ŷ_t`` at the current weights, so the gradients accumulated over all tiles are the
full-batch gradient, to float rounding (summation order). A step costs two forward passes and one backward pass,
and memory is one tile's activations; with one tile the plain loss is used (one forward pass).
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import numpy as np

from .config import _torch
from .loss import COSINE_EPS, stimpute_loss

__all__ = ["TargetStats", "target_stats", "tiled_loss_backward", "tile_slices"]


def tile_slices(n: int, tile_cells: int) -> list[slice]:
    """Consecutive row slices of at most ``tile_cells`` rows covering ``range(n)``."""
    step = max(1, int(tile_cells))
    return [slice(s, min(n, s + step)) for s in range(0, n, step)]


class TargetStats(NamedTuple):
    """The constants of the loss that depend on the measured values Y only (float64 tensors).

    Attributes
    ----------
    mu
        0-d: μ = mean(Y).
    col_sum, col_sq
        (G,): Σ_i y and ||Y_:,g - μ|| per gene.
    row_centred_sum, row_norm
        (N,): Σ_g (y - μ) and ||Y_i,: - μ|| per cell.
    total_sq
        0-d: Σ Y².
    """

    mu: object
    col_sum: object
    col_norm: object
    row_centred_sum: object
    row_norm: object
    total_sq: object


def target_stats(y: np.ndarray, device: str = "cpu") -> TargetStats:
    """:class:`TargetStats` of the (N, G) measured values ``y`` (float, computed in float64)."""
    torch = _torch()
    y64 = np.asarray(y, dtype=np.float64)
    n, g = y64.shape
    mu = y64.mean()
    c = y64 - mu
    t = lambda a: torch.as_tensor(a, dtype=torch.float64, device=device)  # noqa: E731
    return TargetStats(t(mu), t(y64.sum(0)), t(np.sqrt((c * c).sum(0))), t(c.sum(1)), t(np.sqrt((c * c).sum(1))),
                       t((y64 * y64).sum()))


def _safe_norm(sq, eps: float):
    """max(sqrt(sq), eps), with sq clamped so that rounding below 0 and the sqrt's slope at 0 do no harm."""
    torch = _torch()
    return torch.sqrt(torch.clamp(sq, min=eps * eps))


def _loss_from_sums(s1, s2, s3, a, r, q, stats: TargetStats, n: int, g: int):
    """L of the module docstring from the per-gene sums (G,) and per-cell sums (N,), float64."""
    mu_hat = s1.sum() / (n * g)
    mu = stats.mu
    gene_dot = s3 - mu * s1 - mu_hat * stats.col_sum + n * mu_hat * mu
    gene_cos = gene_dot / (_safe_norm(s2 - 2 * mu_hat * s1 + n * mu_hat * mu_hat, COSINE_EPS)
                           * _safe_norm(stats.col_norm ** 2, COSINE_EPS))
    cell_dot = a - mu_hat * stats.row_centred_sum
    cell_cos = cell_dot / (_safe_norm(q - 2 * mu_hat * r + g * mu_hat * mu_hat, COSINE_EPS)
                           * _safe_norm(stats.row_norm ** 2, COSINE_EPS))
    mse = (s2.sum() - 2 * s3.sum() + stats.total_sq) / (n * g)
    return 2 * ((1 - cell_cos.mean()) + (1 - gene_cos.mean())) + mse


def _tile_sums(pred, target, mu):
    """Per-gene (S1, S2, S3) and per-cell (a, r, q) sums of one tile, float64."""
    p = pred.to(_torch().float64)
    t = target.to(p.dtype)
    return (p.sum(0), (p * p).sum(0), (p * t).sum(0)), ((p * (t - mu)).sum(1), p.sum(1), (p * p).sum(1))


def tiled_loss_backward(forward: Callable[[slice], object], targets: Callable[[slice], object],
                        tiles: Sequence[slice], stats: TargetStats, n_genes: int) -> float:
    """Accumulate the full-batch gradient of the stImpute loss into the parameters' ``.grad``.

    Parameters
    ----------
    forward
        ``forward(rows)`` -> (n_rows, G) prediction tensor of the cells ``rows`` (a slice), through the network
        whose parameters are trained (called twice per tile: without and with gradients).
    targets
        ``targets(rows)`` -> (n_rows, G) tensor of the measured values of those cells.
    tiles
        Slices covering the N cells once, in order (:func:`tile_slices`).
    stats
        :func:`target_stats` of all N cells' targets.
    n_genes
        G.

    Returns
    -------
    The loss value (float) at the current weights; gradients are *added* to ``.grad`` (zero them first).
    """
    torch = _torch()
    n = int(sum(s.stop - s.start for s in tiles))
    if len(tiles) == 1:  # one tile: the plain loss has the same gradient at one forward pass
        loss = stimpute_loss(forward(tiles[0]), targets(tiles[0]))
        loss.backward()
        return float(loss.detach())
    dev = stats.mu.device
    s1 = torch.zeros(n_genes, dtype=torch.float64, device=dev)
    s2, s3 = torch.zeros_like(s1), torch.zeros_like(s1)
    a = torch.empty(n, dtype=torch.float64, device=dev)
    r, q = torch.empty_like(a), torch.empty_like(a)
    with torch.no_grad():
        for rows in tiles:  # pass 1: the sums at the current weights
            (g1, g2, g3), (c1, c2, c3) = _tile_sums(forward(rows), targets(rows), stats.mu)
            s1 += g1
            s2 += g2
            s3 += g3
            a[rows], r[rows], q[rows] = c1, c2, c3
    value = None
    for rows in tiles:  # pass 2: L as a function of this tile alone, back-propagated
        (g1, g2, g3), (c1, c2, c3) = _tile_sums(forward(rows), targets(rows), stats.mu)
        la, lr, lq = a.clone(), r.clone(), q.clone()
        la[rows], lr[rows], lq[rows] = c1, c2, c3  # this tile's cells live, the others constant
        loss = _loss_from_sums(_live(s1, g1), _live(s2, g2), _live(s3, g3), la, lr, lq, stats, n, n_genes)
        loss.backward()
        value = float(loss.detach()) if value is None else value
    return value


def _live(total, part):
    """The value of ``total`` with the gradient of ``part`` (the current tile's share of the sum)."""
    return total - part.detach() + part
