"""Sparse adjacency operations on COO triples (``index``: (2, E) int64 rows/cols, ``value``: (E,) float)
in plain torch: coalescing, mean-symmetrisation, symmetric normalisation, bootstrapping, edge dropout."""
from __future__ import annotations

from .config import _torch


def coalesce(index, value, n: int, reduce: str = "sum"):
    """Merge duplicate (i, j) entries, sorted row-major.

    Parameters
    ----------
    index
        (2, E) int64 (row, col).
    value
        (E,) float entries.
    n
        Number of nodes.
    reduce
        ``"sum"`` or ``"mean"`` over duplicates.

    Returns
    -------
    (index, value)
        (2, E') int64 unique pairs, (E',) their reduced values.
    """
    torch = _torch()
    key = index[0] * n + index[1]
    uniq, inv = torch.unique(key, sorted=True, return_inverse=True)
    out = torch.zeros(uniq.numel(), dtype=value.dtype, device=value.device).index_add(0, inv, value)
    if reduce == "mean":
        cnt = torch.zeros(uniq.numel(), dtype=value.dtype, device=value.device)
        out = out / cnt.index_add(0, inv, torch.ones_like(value))
    elif reduce != "sum":
        raise ValueError(f"reduce must be 'sum' or 'mean', got {reduce!r}")
    return torch.stack([uniq // n, uniq % n]), out


def symmetrize_mean(index, value, n: int):
    """torch_sparse's ``to_symmetric(reduce="mean")``: each stored (i, j) also stands for (j, i) and
    duplicates are averaged, so a pair stored both ways gets ``(S_ij + S_ji) / 2`` in both directions and a
    pair stored one way gets its value in both."""
    torch = _torch()
    both = torch.cat([index, index.flip(0)], dim=1)
    return coalesce(both, torch.cat([value, value]), n, reduce="mean")


def sym_normalize(index, value, n: int):
    """``D^-1/2 A D^-1/2`` with D the row sums; rows of zero degree give 0 (shapes kept)."""
    torch = _torch()
    deg = torch.zeros(n, dtype=value.dtype, device=value.device).index_add(0, index[0], value)
    dinv = deg.pow(-0.5)
    dinv = torch.where(torch.isinf(dinv), torch.zeros_like(dinv), dinv)
    return index, dinv[index[0]] * value * dinv[index[1]]


def bootstrap(anchor, learned, tau: float, n: int):
    """Structure bootstrapping ``A <- tau * A + (1 - tau) * learned`` over the union of supports.

    ``anchor`` and ``learned`` are (index, value) pairs; returns the coalesced (index, value)."""
    torch = _torch()
    idx = torch.cat([anchor[0], learned[0]], dim=1)
    val = torch.cat([tau * anchor[1], (1.0 - tau) * learned[1].detach()])
    return coalesce(idx, val, n)


def dropout_edge(index, value, p: float, generator=None):
    """PyG ``dropout_edge`` (not forced undirected): keep each stored entry when ``U >= p``, ``U`` uniform
    from ``generator``; kept values are not rescaled. ``p == 0`` draws nothing."""
    torch = _torch()
    if p <= 0:
        return index, value
    keep = torch.rand(value.numel(), generator=generator, device=value.device) >= p
    return index[:, keep], value[keep]
