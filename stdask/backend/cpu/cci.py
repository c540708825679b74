"""CPU (numba) kernels of the LR statistics of :mod:`stdask.tl.cci`.

Every kernel evaluates stLearn's score in exactly the reference's float64 order,
``((x_l 1(m_r>m) + 1(x_l>m) m_r) + (x_r 1(m_l>m) + 1(x_r>m) m_l)) / 2``, so observed and background scores
tie exactly where stLearn's tie. The GPU variant of :func:`background_counts` is
:func:`stdask.backend.gpu.cci.background_counts`; callers choose through :func:`stdask.backend.get_kernel`.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from numba import njit, prange


@njit(inline="always")
def _score(xl, ml, xr, mr, m):
    # products with the 0/1 indicators, as stLearn writes it: branch-free and bit-identical for x >= 0
    a = xl * (mr > m) + (xl > m) * mr
    b = xr * (ml > m) + (xr > m) * ml
    return (a + b) / 2.0


@njit(inline="always")
def _score_plain(xl, ml, xr, mr, m):
    # _score for finite values >= 0, where x * (1 or 0) is x or +0 exactly: the products become selections
    # (faster; every comparison with a score > 0 comes out the same, the sign of a zero being irrelevant)
    a = (xl if mr > m else 0.0) + (mr if xl > m else 0.0)
    b = (xr if ml > m else 0.0) + (ml if xr > m else 0.0)
    return (a + b) / 2.0


@njit(parallel=True, cache=True)
def pair_scores(x, mean, lcol, rcol, m):
    """Scores of pairs for every row.

    Parameters
    ----------
    x, mean
        (n, g) float64 expression and neighbour means.
    lcol, rcol
        (p,) int64 columns of each pair's ligand / receptor.
    m
        min_expr.

    Returns
    -------
    (n, p) float64 scores.
    """
    n = x.shape[0]
    p = lcol.shape[0]
    out = np.empty((n, p), dtype=np.float64)
    for i in prange(n):
        for k in range(p):
            out[i, k] = _score(x[i, lcol[k]], mean[i, lcol[k]], x[i, rcol[k]], mean[i, rcol[k]], m)
    return out


@njit(cache=True)
def bh_segments(p, starts):
    """Benjamini-Hochberg within consecutive segments, in statsmodels' order of operations.

    Parameters
    ----------
    p
        (n,) float64 p-values, sorted ascending inside each segment.
    starts
        (n_seg + 1,) int64 segment boundaries.

    Returns
    -------
    (n,) float64 adjusted p-values (same order as ``p``): ``p_(k) / (k / n)``, reverse cumulative minimum,
    capped at 1.
    """
    out = np.empty_like(p)
    for s in range(starts.shape[0] - 1):
        a = starts[s]
        b = starts[s + 1]
        n = b - a
        for k in range(n):
            out[a + k] = p[a + k] / ((k + 1) / n)
        run = np.inf
        for k in range(n - 1, -1, -1):
            if out[a + k] < run:
                run = out[a + k]
            out[a + k] = run
        for k in range(n):
            if out[a + k] > 1.0:
                out[a + k] = 1.0
    return out


@njit(parallel=True, cache=True)
def _background_counts(x_ptr, x_idx, x_val, m_ptr, m_idx, m_val, n_genes, t_ptr, t_lr, t_obs, pl, pr, m, weight,
                       geometric):  # pragma: no cover - numba
    # the loop of background_counts / background_counts_geometric, over rows grouped as t_ptr says
    n_rows = t_ptr.shape[0] - 1
    out = np.zeros(t_lr.shape[0], dtype=np.int64)
    n_pairs = pl.shape[1]
    for i in prange(n_rows):
        if t_ptr[i + 1] == t_ptr[i]:
            continue
        xd = np.zeros(n_genes)
        md = np.zeros(n_genes)
        plain = True  # the row's values are all finite and >= 0 (the usual case): _score_plain applies
        for k in range(x_ptr[i], x_ptr[i + 1]):
            v = x_val[k]
            xd[x_idx[k]] = v
            if not (v >= 0.0 and v < np.inf):
                plain = False
        for k in range(m_ptr[i], m_ptr[i + 1]):
            v = m_val[k]
            md[m_idx[k]] = v
            if not (v >= 0.0 and v < np.inf):
                plain = False
        for e in range(t_ptr[i], t_ptr[i + 1]):
            j = t_lr[e]
            s = t_obs[e]
            c = 0
            if geometric:
                for k in range(n_pairs):
                    l = pl[j, k]
                    r = pr[j, k]
                    c += weight[i] * 0.5 * (xd[l] * md[r] + xd[r] * md[l]) >= s
            elif plain:
                for k in range(n_pairs):
                    l = pl[j, k]
                    r = pr[j, k]
                    c += _score_plain(xd[l], md[l], xd[r], md[r], m) >= s
            else:
                for k in range(n_pairs):
                    l = pl[j, k]
                    r = pr[j, k]
                    c += _score(xd[l], md[l], xd[r], md[r], m) >= s
            out[e] = c
    return out


def _row_counts(x: sp.csr_matrix, means: sp.csr_matrix, t_row, t_lr, t_obs, pl, pr, m: float, weight,
                geometric: bool) -> np.ndarray:
    t_row = np.asarray(t_row, dtype=np.int64)
    t_ptr = np.concatenate([[0], np.cumsum(np.bincount(t_row, minlength=x.shape[0]))]).astype(np.int64)
    return _background_counts(x.indptr.astype(np.int64), x.indices.astype(np.int64), x.data,
                              means.indptr.astype(np.int64), means.indices.astype(np.int64), means.data,
                              x.shape[1], t_ptr, np.asarray(t_lr, dtype=np.int64), np.asarray(t_obs, np.float64),
                              pl, pr, float(m), weight, geometric)


def background_counts(x: sp.csr_matrix, means: sp.csr_matrix, t_row: np.ndarray, t_lr: np.ndarray,
                      t_obs: np.ndarray, pl: np.ndarray, pr: np.ndarray, m: float) -> np.ndarray:
    """Background exceedance counts of stLearn's LR score at every tested (row, LR) entry, spot-major.

    Each row's expression and neighbour means are scattered once into dense vectors over all genes, then
    every LR tested at that row evaluates its background pairs by direct indexing, so no per-LR gather
    or matrix slicing happens. Rows whose values are all finite and >= 0 use :func:`_score_plain` (the
    same scores, up to the sign of a zero, so the same counts).

    Parameters
    ----------
    x, means
        (n_rows, n_genes) CSR float64 expression and neighbour means of the rows.
    t_row, t_lr, t_obs
        (n_entries,) tested entries grouped by row (rows ascending): row, LR index and observed score.
    pl, pr
        (n_lr, n_pairs) integer gene columns of each LR's background pairs.
    m
        min_expr.

    Returns
    -------
    (n_entries,) int64 number of background pairs scoring >= the observed score (ties count).
    """
    return _row_counts(x, means, t_row, t_lr, t_obs, pl, pr, m, np.zeros(0), False)


def background_counts_geometric(y: sp.csr_matrix, means: sp.csr_matrix, t_row: np.ndarray, t_lr: np.ndarray,
                                t_obs: np.ndarray, pl: np.ndarray, pr: np.ndarray,
                                weight: np.ndarray) -> np.ndarray:
    """:func:`background_counts` of the geometric-mean score of SpaSEG's domain LR scoring,
    ``w_i 0.5 (y_l m_r + y_r m_l)`` in that float64 order, with ``y`` the square-rooted expression and ``m``
    the neighbour means of ``y``.

    Parameters
    ----------
    y, means
        (n_rows, n_genes) CSR float64 square-rooted expression and its neighbour means.
    t_row, t_lr, t_obs, pl, pr
        As for :func:`background_counts`.
    weight
        (n_rows,) float64 per-row weight ``w_i`` (the entropy weight, or 1).
    """
    return _row_counts(y, means, t_row, t_lr, t_obs, pl, pr, 0.0, np.ascontiguousarray(weight, np.float64), True)


@njit(cache=True)
def canberra_topk(ref_q, cand_t, n_keep):
    """Each reference profile's ``n_keep`` nearest candidates by stLearn's float32 Canberra distance.

    Parameters
    ----------
    ref_q
        (n_ref, n_q) float32 quantile profiles of the genes to match.
    cand_t
        (n_q, n_cand) float32 profiles of the candidate genes, one row per quantile (candidates along the
        contiguous axis, so the distance loop runs over candidates in SIMD lanes).
    n_keep
        Candidates to keep per reference.

    Returns
    -------
    idx
        (n_ref, n_keep) int64 candidate positions, nearest first, ties by position (Q2); -1 pads rows
        with fewer than ``n_keep`` candidates at distance > 0.
    n_found
        (n_ref,) int64 candidates kept per row.

    Terms ``|a - b| / (a + b)`` are float32 (0/0 skipped) and summed over the quantiles in order in
    float32, as the reference does; candidates at distance 0 (an identical profile) are discarded.
    """
    n_ref, n_q = ref_q.shape
    n_cand = cand_t.shape[1]
    idx = np.full((n_ref, n_keep), -1, np.int64)
    n_found = np.zeros(n_ref, np.int64)
    d = np.empty(n_cand, np.float32)
    bits = d.view(np.int32)
    heap = np.empty(max(n_keep, 1), np.int64)
    zero = np.float32(0.0)
    inf = np.float32(np.inf)
    for g in range(n_ref):
        d[:] = zero
        # quantile-outer, candidate-inner: each candidate's sum still runs over the quantiles in order
        for q in range(n_q):
            a = ref_q[g, q]
            for c in range(n_cand):
                b = cand_t[q, c]
                den = a + b
                if den != 0:
                    d[c] = np.float32(d[c] + np.float32(abs(a - b) / den))
                elif a != b:  # NaN-producing terms only arise from 0/0, which is skipped
                    d[c] = np.float32(d[c] + inf)
        # the n_keep smallest by (distance, position): a non-negative float32's bits order like the float,
        # so one int64 key per candidate orders both at once (ties by candidate position, Q2). Keys are
        # distinct, so a bounded max-heap of the smallest keys seen, then heap-sorted, keeps exactly the
        # candidates a full sort would (and compiles to far less code than np.sort, which matters when the
        # cached kernel is loaded)
        k = 0
        for c in range(n_cand):
            if d[c] > 0:
                key = (np.int64(bits[c]) << 32) | c
                if k < n_keep:
                    t = k
                    heap[t] = key
                    while t > 0:
                        p = (t - 1) // 2
                        if heap[p] >= heap[t]:
                            break
                        heap[p], heap[t] = heap[t], heap[p]
                        t = p
                    k += 1
                elif key < heap[0]:
                    heap[0] = key
                    _sift_down(heap, 0, k)
        for end in range(k - 1, 0, -1):
            heap[0], heap[end] = heap[end], heap[0]
            _sift_down(heap, 0, end)
        for t in range(k):
            idx[g, t] = heap[t] & 0xFFFFFFFF
        n_found[g] = k
    return idx, n_found


@njit(inline="always")
def _sift_down(h, root, end):
    """Restore the max-heap property of ``h[:end]`` below ``root``."""
    while True:
        child = 2 * root + 1
        if child >= end:
            return
        if child + 1 < end and h[child + 1] > h[child]:
            child += 1
        if h[root] >= h[child]:
            return
        h[root], h[child] = h[child], h[root]
        root = child


@njit(cache=True)
def accept_pairs(u, lig, rec, taken, out_l, out_r, n, n_pairs):
    """Sequential rejection of candidate draws: row k of ``u`` ((m, 2) uniforms in [0, 1)) proposes
    positions ``a = int(u[k, 0] * n_l)`` into ``lig`` and ``b = int(u[k, 1] * n_r)`` into ``rec`` (truncation,
    as NumPy's ``(u * n).astype(int64)``).

    A draw is kept unless l == r or the pair was drawn before (``taken``, (n_l, n_r) bool, updated).
    Fills ``out_l``/``out_r`` from position ``n``; returns the new count (stops at ``n_pairs``).
    """
    n_l = lig.shape[0]
    n_r = rec.shape[0]
    for k in range(u.shape[0]):
        if n == n_pairs:
            break
        a = np.int64(u[k, 0] * n_l)
        b = np.int64(u[k, 1] * n_r)
        l = lig[a]
        r = rec[b]
        if l == r or taken[a, b]:
            continue
        taken[a, b] = True
        out_l[n] = l
        out_r[n] = r
        n += 1
    return n


@njit(cache=True)
def sort_rows_inplace(indptr, indices, a, b, c):
    """Sort each CSR row's entries by column, permuting three value arrays alongside (insertion sort: rows
    hold tens of entries)."""
    for i in range(indptr.shape[0] - 1):
        lo = indptr[i]
        hi = indptr[i + 1]
        for k in range(lo + 1, hi):
            key = indices[k]
            va = a[k]
            vb = b[k]
            vc = c[k]
            t = k - 1
            while t >= lo and indices[t] > key:
                indices[t + 1] = indices[t]
                a[t + 1] = a[t]
                b[t + 1] = b[t]
                c[t + 1] = c[t]
                t -= 1
            indices[t + 1] = key
            a[t + 1] = va
            b[t + 1] = vb
            c[t + 1] = vc


@njit(cache=True)
def summary_counts(pair, score, count, padj, n_lr, n_pairs, m, cutoff):
    """Per LR: #(score > m), #(p_adj < cutoff), #(p < cutoff) with p = max(count, 1) / n_pairs (the
    ``lr_summary`` columns), in one pass without temporaries."""
    n_spots = np.zeros(n_lr, np.int64)
    n_sig = np.zeros(n_lr, np.int64)
    n_sig_p = np.zeros(n_lr, np.int64)
    for e in range(pair.shape[0]):
        j = pair[e]
        if score[e] > m:
            n_spots[j] += 1
        if padj[e] < cutoff:
            n_sig[j] += 1
        if max(count[e], 1) / n_pairs < cutoff:
            n_sig_p[j] += 1
    return n_spots, n_sig, n_sig_p
