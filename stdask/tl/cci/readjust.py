"""``adj_pvals`` on a lazy result, a row block at a time: nothing that grows with the slice reaches the driver.

A result of :func:`~stdask.tl.cci.run` or :meth:`CCIResult.load` keeps its matrices in part files or in the store
(~5 x 10^7 tested entries at 10^6 cells). Re-correcting them is one task per row block: it reads the block's
scores and exceedance counts, computes the new adjusted p-values, writes the block's entries as a part
(:mod:`.entries`, in a scratch folder) and returns the block's per-LR ``lr_summary`` counts. The new result is
built from the parts as a run's is (``CCIResult.from_parts``), so it does not depend on the stored
elements it was computed from (``ds.write()`` replaces those).

* ``correct_axis='spot'`` and ``None``: a spot's entries all lie in its row block, so the block computes them
  exactly as the whole matrix would (``adjust_grouped`` by row, any method).
* ``correct_axis='LR'`` with ``'fdr_bh'``: an LR's p-values take at most ``n_pairs`` values
  (``max(count, 1) / n_pairs``), so one first pass counts, per LR, the entries at each value (a histogram, summed
  over blocks); Benjamini-Hochberg then depends only on these counts. In a sorted group of ``m`` p-values the
  adjusted value of a run of ties equal to ``v`` is the minimum over the runs ``w >= v`` of
  ``w / (R(w) / m)`` (``R(w)``: entries <= w, the run's last position), capped at 1: the same floating-point
  operations as statsmodels' order (kernel ``bh_segments``), so the same numbers bit for bit. Other methods
  along LRs need each LR's whole column and use the in-memory path.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import dask
import numpy as np
import scipy.sparse as sp

from ...backend import get_kernel
from .correction import adjust_grouped
from .entries import new_folder, write_part


def streams(correct_axis: str | None, method: str) -> bool:
    """Whether :func:`readjusted` computes this correction (else the whole matrix is needed)."""
    return correct_axis in ("spot", None) or (correct_axis == "LR" and method == "fdr_bh")


def _entries(score, count) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(row in block, column, score, count) of one row block's tested entries."""
    score, count = sp.csr_matrix(score), sp.csr_matrix(count)
    if not (np.array_equal(score.indptr, count.indptr) and np.array_equal(score.indices, count.indices)):
        raise ValueError("the result's score and count matrices do not hold the same entries")
    rows = np.repeat(np.arange(count.shape[0], dtype=np.int32), np.diff(count.indptr))
    return rows, count.indices.astype(np.int64), score.data.astype(np.float64), count.data


def _histogram(count, n_lr: int, n_pairs: int) -> np.ndarray:
    """(n_lr, n_pairs + 1) int64 entries of each LR at each p-value numerator ``max(count, 1)``."""
    count = sp.csr_matrix(count)
    key = count.indices.astype(np.int64) * (n_pairs + 1) + np.maximum(count.data, 1)
    return np.bincount(key, minlength=n_lr * (n_pairs + 1)).reshape(n_lr, n_pairs + 1)


def bh_table(hist: np.ndarray, n_pairs: int) -> np.ndarray:
    """(n_lr, n_pairs + 1) float64 Benjamini-Hochberg adjusted p-value of each LR at each numerator (see the
    module docstring); entries absent from an LR are NaN."""
    R = np.cumsum(hist, axis=1)
    m = R[:, -1:]
    with np.errstate(divide="ignore", invalid="ignore"):
        raw = (np.arange(n_pairs + 1) / float(n_pairs))[None, :] / (R / m)
    raw = np.where(hist > 0, raw, np.inf)
    adj = np.minimum.accumulate(raw[:, ::-1], axis=1)[:, ::-1]
    return np.where(hist > 0, np.minimum(adj, 1.0), np.nan)


def _block_task(score, count, start: int, folder: str, n_lr: int, n_pairs: int, min_expr: float, cutoff: float,
                correct_axis: str | None, method: str, table) -> dict:
    """Re-correct one row block, write its part, return its row range, entries and ``lr_summary`` counts."""
    rows, cols, sc, cnt = _entries(score, count)
    n = int(count.shape[0])
    p = np.maximum(cnt, 1) / float(n_pairs)
    if correct_axis == "spot":
        padj = adjust_grouped(p, rows, method)
    elif correct_axis is None:
        padj = p.copy()
    else:
        padj = table[cols, np.maximum(cnt, 1)]
    n_spots, n_sig, n_sig_p = get_kernel("summary_counts")(cols, sc, cnt, padj, n_lr, float(n_pairs),
                                                           float(min_expr), float(cutoff))
    if len(rows):
        write_part(folder, start, start + n, rows, cols, sc, cnt, padj)
    return {"start": start, "stop": start + n, "nnz": len(rows), "n_spots": n_spots, "n_sig": n_sig,
            "n_sig_p": n_sig_p}


def _tree_sum(values: list):
    """A pairwise sum of delayed arrays (dask frees each level as it goes)."""
    add = dask.delayed(np.add, pure=True)
    while len(values) > 1:
        values = [add(values[i], values[i + 1]) if i + 1 < len(values) else values[i]
                  for i in range(0, len(values), 2)]
    return values[0]


def readjusted_parts(result, correct_axis: str | None, cutoff: float, method: str, store: str | Path | None = None,
                     *, scheduler=None, progress: bool = False) -> tuple[list[dict], Path]:
    """The parts of :meth:`CCIResult.adjusted` of a lazy ``result`` (``result.lazy`` set, :func:`streams` true),
    re-corrected block by block, and their scratch folder (in ``store``, else in the temporary folder); the
    caller builds the new result from them (:meth:`CCIResult.from_parts`)."""
    from ...cluster import compute

    n_lr, n_pairs = result.shape[1], int(result.n_pairs)
    score, count = result.lazy["score"], result.lazy["count"]
    if score.chunks[0] != count.chunks[0]:
        raise ValueError("the result's matrices have different row blocks")
    starts = np.concatenate([[0], np.cumsum(count.chunks[0])]).astype(np.int64)
    s_blocks, c_blocks = score.to_delayed().ravel(), count.to_delayed().ravel()
    table = None
    if correct_axis == "LR":
        hist = dask.delayed(_histogram, pure=True)
        (h,) = compute(_tree_sum([hist(b, n_lr, n_pairs) for b in c_blocks]), scheduler=scheduler,
                       progress=progress, desc="adj_pvals: p-values per LR")
        table = bh_table(h, n_pairs)
    folder = new_folder(store if store is not None else tempfile.gettempdir())
    task = dask.delayed(_block_task, pure=True)
    table_d = dask.delayed(table, pure=True) if table is not None else None
    try:
        parts = compute(*[task(s, c, int(starts[i]), str(folder), n_lr, n_pairs, result.min_expr, float(cutoff),
                               correct_axis, method, table_d) for i, (s, c) in enumerate(zip(s_blocks, c_blocks))],
                        scheduler=scheduler, progress=progress, desc="adj_pvals")
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return list(parts), folder
