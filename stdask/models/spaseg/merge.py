"""The outlier-merge rule: fold the closest pair of labels when their distance is an outlier."""
from __future__ import annotations

import numpy as np

from .config import _torch


# ----------------------------------------------------------------------------------------------------
# the outlier-merge rule
# ----------------------------------------------------------------------------------------------------
def merge_decision(means: np.ndarray) -> tuple[int, int] | None:
    """The reference's outlier-merge decision on label means.

    Parameters
    ----------
    means
        (n, C) mean input vector of each present label, rows in ascending label order.

    Returns
    -------
    ``(i, j)`` (row positions, i < j) when the closest pair of label means is an outlier -- label j is
    then relabelled i -- else ``None``.

    Rule: distances d over pairs (i < j) in row-major order; outliers are pairs with
    ``|d - mean(d)| > std(d)`` (population standard deviation); ``idx`` is the first pair of minimum
    distance; merge iff ``idx`` is an outlier.
    """
    means = np.asarray(means, dtype=np.float64)
    n = len(means)
    if n < 2:
        return None
    iu, ju = np.triu_indices(n, k=1)
    d = np.sqrt(((means[iu] - means[ju]) ** 2).sum(axis=1))
    out = np.abs(d - d.mean()) > d.std()
    idx = int(np.argmin(d))
    if out[idx]:
        return int(iu[idx]), int(ju[idx])
    return None


def label_sums(labels, features, mask, n_classes: int):
    """Per-label sums of feature vectors and pixel counts (torch, float64).

    ``labels`` (P,) int64, ``features`` (P, C), ``mask`` (P,) bool or None -> ((K, C) sums, (K,) counts).
    """
    torch = _torch()
    if mask is not None:
        labels = labels[mask]
        features = features[mask]
    C = features.shape[1]
    sums = torch.zeros((n_classes, C), dtype=torch.float64, device=features.device)
    sums.index_add_(0, labels, features.to(torch.float64))
    counts = torch.bincount(labels, minlength=n_classes).to(torch.float64)
    return sums, counts


def merge_outliers(labels, features, mask=None, n_classes: int | None = None):
    """Apply the merge rule to a label vector (torch).

    Parameters
    ----------
    labels
        (P,) int64 labels of all pixels.
    features
        (P, C) input vectors of the pixels.
    mask
        (P,) bool pixels whose vectors enter the label means (``None``: all, the reference).
    n_classes
        Number of possible labels K (default ``max(labels) + 1``).

    Returns
    -------
    (labels, merged): the relabelled vector (a copy when a merge happens) and ``(keep, absorbed)`` raw
    labels or ``None``.
    """
    K = int(n_classes or int(labels.max()) + 1)
    sums, counts = label_sums(labels, features, mask, K)
    return _apply_merge(labels, sums, counts)


def _apply_merge(labels, sums, counts):
    present = np.flatnonzero(counts.cpu().numpy() > 0)
    means = (sums[present] / counts[present, None]).cpu().numpy()
    dec = merge_decision(means)
    if dec is None:
        return labels, None
    keep, absorbed = int(present[dec[0]]), int(present[dec[1]])
    labels = labels.clone()
    labels[labels == absorbed] = keep
    return labels, (keep, absorbed)
