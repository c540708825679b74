"""Multiple-testing correction over groups (per spot or per LR), vectorised."""
from __future__ import annotations

import numpy as np

from ...backend import get_kernel


def adjust_grouped(p: np.ndarray, group: np.ndarray, method: str = "fdr_bh") -> np.ndarray:
    """Adjust p-values within groups.

    Parameters
    ----------
    p
        (n,) float64 p-values of the tested entries.
    group
        (n,) int64 group of each entry (a spot for ``correct_axis='spot'``, an LR for ``'LR'``).
    method
        statsmodels ``multipletests`` method; ``'fdr_bh'`` runs natively (one sort for all groups),
        others call statsmodels once per group.

    Returns
    -------
    (n,) adjusted p-values, in the input order.
    """
    p = np.asarray(p, dtype=np.float64)
    group = np.asarray(group, dtype=np.int64)
    out = np.empty_like(p)
    if len(p) == 0:
        return out
    order = np.lexsort((p, group))
    g = group[order]
    starts = np.flatnonzero(np.concatenate([[True], g[1:] != g[:-1], [True]])).astype(np.int64)
    if method == "fdr_bh":
        out[order] = get_kernel("bh_segments")(p[order], starts)
        return out
    from statsmodels.stats.multitest import multipletests

    ps = p[order]
    adj = np.empty_like(ps)
    for a, b in zip(starts[:-1], starts[1:]):
        adj[a:b] = multipletests(ps[a:b], method=method)[1]
    out[order] = adj
    return out
