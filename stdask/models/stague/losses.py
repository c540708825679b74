"""STAGUE's losses (spec §6): symmetric NT-Xent without the positive in the denominator, optionally over
consecutive cell chunks, and the margin triplet loss."""
from __future__ import annotations

from .config import _torch


def _nt_xent_block(p1, p2, temperature: float):
    torch = _torch()
    sim = (p1 @ p2.T) / torch.outer(p1.norm(dim=1), p2.norm(dim=1))
    e = torch.exp(sim / temperature)
    pos = torch.diagonal(e)
    row = -torch.log(pos / (e.sum(dim=1) - pos)).mean()
    col = -torch.log(pos / (e.sum(dim=0) - pos)).mean()
    return 0.5 * (row + col)


def nt_xent(p1, p2, temperature: float, batch_size: int = 0):
    """Symmetric NT-Xent.

    ``E_ij = exp(cos(p1_i, p2_j) / T)``; ``l_row = -mean_i log(E_ii / (sum_j E_ij - E_ii))``, ``l_col`` the
    same over columns; the loss is ``(l_row + l_col) / 2``.

    Parameters
    ----------
    p1, p2
        (N, d) float projections of the two views (row i of each is the same cell).
    temperature
        T > 0.
    batch_size
        > 0: consecutive chunks of this many cells (no shuffling), each with in-chunk negatives only,
        weighted by chunk size / N and summed. 0: one block of all cells.

    Returns
    -------
    0-d float tensor.
    """
    n = p1.shape[0]
    if batch_size <= 0 or batch_size >= n:
        return _nt_xent_block(p1, p2, temperature)
    total = 0.0
    for s in range(0, n, batch_size):
        e = min(s + batch_size, n)
        total = total + _nt_xent_block(p1[s:e], p2[s:e], temperature) * ((e - s) / n)
    return total


def triplet_loss(p1, p2, p_neg, margin: float):
    """``mean_i max(0, ||p2_i - p1_i|| - ||p2_i - pneg_i|| + m)`` with PyTorch ``pairwise_distance``
    (eps 1e-6 added to each difference). All inputs (N, d) float; returns a 0-d tensor."""
    torch = _torch()
    pd = torch.nn.functional.pairwise_distance
    return torch.relu(pd(p2, p1) - pd(p2, p_neg) + margin).mean()
