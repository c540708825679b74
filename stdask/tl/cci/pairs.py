"""Random background gene pairs drawn from counter-based streams keyed by the LR pair
(:func:`stdask.random_streams.philox_stream` of (seed, LR name)).

Each LR's pairs depend only on (seed, LR name, its matched genes), never on workers, tiles or the order
LRs are processed in (Q3), so 1 worker and 8 give identical backgrounds.
"""
from __future__ import annotations

import numpy as np

from ...backend import get_kernel
from ...random_streams import philox_stream


def check_possible(lig_genes: np.ndarray, rec_genes: np.ndarray, n_pairs: int, name: str) -> None:
    """Raise if fewer than ``n_pairs`` distinct pairs (l, r), l != r, exist (stLearn would loop for ever, Q17)."""
    # distinct common genes (np.intersect1d's count), by hash sets: the lists are short and this runs per LR
    n_possible = len(lig_genes) * len(rec_genes) - len(set(np.asarray(lig_genes).tolist()).intersection(
        np.asarray(rec_genes).tolist()))
    if n_pairs > n_possible:
        raise ValueError(f"{name}: only {n_possible} distinct background pairs exist from {len(lig_genes)} x "
                         f"{len(rec_genes)} matched genes, fewer than n_pairs={n_pairs}; lower n_pairs")


def random_pairs(lig_genes: np.ndarray, rec_genes: np.ndarray, n_pairs: int, seed: int, name: str) -> np.ndarray:
    """``n_pairs`` distinct ordered gene pairs (l, r), l from ``lig_genes`` and r from ``rec_genes``, l != r.

    Parameters
    ----------
    lig_genes, rec_genes
        (n_l,), (n_r,) integer gene ids (the matched genes of the ligand and of the receptor).
    n_pairs
        Number of pairs.
    seed, name
        Key of the random stream (the LR's ``"L_R"`` name).

    Returns
    -------
    (n_pairs, 2) int64 gene ids, in draw order.

    Each draw takes a ligand-side then a receptor-side uniform index; a draw equal to an earlier pair or
    with l == r is rejected and drawn again (stLearn's rule; (l, r) and (r, l) are different pairs).
    """
    lig_genes = np.asarray(lig_genes, dtype=np.int64)
    rec_genes = np.asarray(rec_genes, dtype=np.int64)
    check_possible(lig_genes, rec_genes, n_pairs, name)
    rng = philox_stream(seed, name)
    taken = np.zeros((len(lig_genes), len(rec_genes)), dtype=np.bool_)
    out_l = np.empty(n_pairs, dtype=np.int64)
    out_r = np.empty(n_pairs, dtype=np.int64)
    n = 0
    while n < n_pairs:
        # batches of uniform draws; acceptance is sequential and consecutive batches continue the stream, so
        # the pairs equal one-at-a-time rejection whatever the batch size. A batch is sized for the usual
        # few percent of rejections; a shortfall just draws another batch
        m = n_pairs - n
        n = get_kernel("accept_pairs")(rng.random((m + m // 4 + 64, 2)), lig_genes, rec_genes, taken, out_l, out_r, n, n_pairs)
    return np.column_stack([out_l, out_r])
