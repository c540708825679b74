"""Random view draws (spec §5.3): column masks and cell permutations from one seeded ``torch.Generator``."""
from __future__ import annotations

from .config import _torch


def column_mask(f, rate: float, generator=None):
    """Zero ``floor(rate * D)`` randomly chosen columns of ``f`` (the same columns for every cell).

    Parameters
    ----------
    f
        (N, D) float features.
    rate
        Fraction of columns to zero, in [0, 1].
    generator
        ``torch.Generator`` on ``f``'s device.

    Returns
    -------
    (N, D) float: ``f * mask``; gradients flow through the kept columns.
    """
    torch = _torch()
    d = f.shape[1]
    n_drop = int(rate * d)
    mask = torch.ones(d, dtype=f.dtype, device=f.device)
    if n_drop:
        mask[torch.randperm(d, generator=generator, device=f.device)[:n_drop]] = 0
    return f * mask


def permutation(n: int, generator=None, device="cpu"):
    """(n,) int64 random permutation of the cells, for the feature-shuffled negative view."""
    return _torch().randperm(n, generator=generator, device=device)
