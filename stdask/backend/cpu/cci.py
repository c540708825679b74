"""CPU (numba) kernels of the LR statistics of :mod:`stdask.tl.cci`.

Every kernel evaluates stLearn's score in exactly the reference's float64 order,
``((x_l 1(m_r>m) + 1(x_l>m) m_r) + (x_r 1(m_l>m) + 1(x_r>m) m_l)) / 2``, so observed and background scores
tie exactly where stLearn's tie. The GPU variant of :func:`background_counts` is
:func:`stdask.backend.gpu.cci.background_counts`; callers choose through :func:`stdask.backend.get_kernel`.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from numba import njit, parallel_chunksize, prange


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
def _geometric_counts(x_ptr, x_idx, x_val, m_ptr, m_idx, m_val, n_genes, t_ptr, t_lr, t_obs, pl, pr,
                      weight):  # pragma: no cover - numba
    # the loop of background_counts_geometric, over rows grouped as t_ptr says
    n_rows = t_ptr.shape[0] - 1
    out = np.zeros(t_lr.shape[0], dtype=np.int64)
    n_pairs = pl.shape[1]
    for i in prange(n_rows):
        if t_ptr[i + 1] == t_ptr[i]:
            continue
        xd = np.zeros(n_genes)
        md = np.zeros(n_genes)
        for k in range(x_ptr[i], x_ptr[i + 1]):
            xd[x_idx[k]] = x_val[k]
        for k in range(m_ptr[i], m_ptr[i + 1]):
            md[m_idx[k]] = m_val[k]
        for e in range(t_ptr[i], t_ptr[i + 1]):
            j = t_lr[e]
            s = t_obs[e]
            c = 0
            for k in range(n_pairs):
                l = pl[j, k]
                r = pr[j, k]
                c += weight[i] * 0.5 * (xd[l] * md[r] + xd[r] * md[l]) >= s
            out[e] = c
    return out


@dataclass(frozen=True)
class PairLayout:
    """Every LR's background pairs as :func:`background_counts` reads them (built by :func:`pair_layout`).

    Attributes
    ----------
    g_ptr
        (n_lr + 1,) int64: LR ``j``'s distinct genes are ``g_col[g_ptr[j]:g_ptr[j + 1]]``.
    g_col
        (sum of the LRs' distinct genes,) int64 columns of those genes, ascending within each LR.
    lp, rp
        (n_lr, n_pairs) uint16 (int32 when an LR has more than 65,536 genes) positions, among LR ``j``'s genes,
        of each pair's ligand-side and receptor-side gene; pairs grouped by receptor-side gene (a count does not
        depend on the order of the pairs).
    n_cols
        Columns of the tables (genes of the matrices the kernel reads).
    """

    g_ptr: np.ndarray
    g_col: np.ndarray
    lp: np.ndarray
    rp: np.ndarray
    n_cols: int


@njit(cache=True)
def _layout(pl, pr, n_cols):  # pragma: no cover - numba
    n_lr, n_pairs = pl.shape
    pos = np.full(n_cols, -1, np.int64)
    g_ptr = np.zeros(n_lr + 1, np.int64)
    g_col = np.empty(n_lr * min(2 * n_pairs, n_cols), np.int64)
    lp = np.empty((n_lr, n_pairs), np.int32)
    rp = np.empty((n_lr, n_pairs), np.int32)
    at = 0
    for j in range(n_lr):
        for k in range(n_pairs):
            pos[pl[j, k]] = 0
            pos[pr[j, k]] = 0
        n = 0
        for c in range(n_cols):  # positions in ascending column order: the compaction reads columns in order
            if pos[c] == 0:
                g_col[at + n] = c
                n += 1
        for t in range(n):
            pos[g_col[at + t]] = t
        # pairs grouped by receptor-side position (a counting sort): consecutive pairs then share its values
        start = np.zeros(n + 1, np.int64)
        for k in range(n_pairs):
            start[pos[pr[j, k]] + 1] += 1
        for t in range(n):
            start[t + 1] += start[t]
        for k in range(n_pairs):
            b = pos[pr[j, k]]
            lp[j, start[b]] = pos[pl[j, k]]
            rp[j, start[b]] = b
            start[b] += 1
        for t in range(n):
            pos[g_col[at + t]] = -1
        at += n
        g_ptr[j + 1] = at
    return g_ptr, g_col[:at].copy(), lp, rp


def pair_layout(pl: np.ndarray, pr: np.ndarray, n_cols: int) -> PairLayout:
    """:class:`PairLayout` of (n_lr, n_pairs) ligand-side / receptor-side columns ``pl`` / ``pr`` (< ``n_cols``)."""
    g_ptr, g_col, lp, rp = _layout(np.ascontiguousarray(pl, dtype=np.int32), np.ascontiguousarray(pr, dtype=np.int32),
                                   int(n_cols))
    if len(g_col) and int(np.diff(g_ptr).max()) <= 1 << 16:  # the usual case: half the memory of the tables
        lp, rp = lp.astype(np.uint16), rp.astype(np.uint16)
    return PairLayout(g_ptr, g_col, lp, rp, int(n_cols))


#: (id(pl), id(pr), n_cols) -> (weak reference to pl, weak reference to pr, layout)
_layouts: dict[tuple[int, int, int], tuple] = {}


def _cached_layout(pl: np.ndarray, pr: np.ndarray, n_cols: int) -> PairLayout:
    """:func:`pair_layout` of the tables, built once while the table arrays live: every tile and row block of a
    run passes the same (never modified) arrays, so they are keyed by identity; the entry goes with ``pl``."""
    key = (id(pl), id(pr), int(n_cols))
    hit = _layouts.get(key)
    if hit is not None and hit[0]() is pl and hit[1]() is pr:
        return hit[2]
    layout = pair_layout(pl, pr, n_cols)
    try:
        refs = (weakref.ref(pl, lambda _, k=key: _layouts.pop(k, None)), weakref.ref(pr))
    except TypeError:  # an object without weak references (not an ndarray): not cached
        return layout
    _layouts[key] = (*refs, layout)
    return layout


@njit(inline="always")
def _group_entries(t_row, t_lr, size, n_lr):  # pragma: no cover - numba
    # entries ordered by (row group, LR, row) by a counting sort: e_ord, and e_ptr[g * n_lr + j] the start of
    # group g's entries of LR j
    # (explicit loops, not array expressions: in a parallel kernel each of those would be a parallel region)
    top = 0
    for e in range(t_row.shape[0]):
        top = max(top, t_row[e])
    n_groups = top // size + 1 if t_row.shape[0] else 0
    e_ptr = np.empty(n_groups * n_lr + 1, np.int64)
    for b in range(e_ptr.shape[0]):
        e_ptr[b] = 0
    for e in range(t_row.shape[0]):
        e_ptr[(t_row[e] // size) * n_lr + t_lr[e] + 1] += 1
    for b in range(n_groups * n_lr):
        e_ptr[b + 1] += e_ptr[b]
    fill = np.empty(n_groups * n_lr, np.int64)
    for b in range(n_groups * n_lr):
        fill[b] = e_ptr[b]
    e_ord = np.empty(t_row.shape[0], np.int64)
    for e in range(t_row.shape[0]):  # rows ascending (entries come grouped by row), so rows stay ascending
        b = (t_row[e] // size) * n_lr + t_lr[e]
        e_ord[fill[b]] = e
        fill[b] += 1
    return e_ptr, e_ord


@njit(inline="always")
def _pair_counts(xc, mc, obs, lp, rp, m, cnt, plain):  # pragma: no cover - numba
    # cnt[t] += #pairs k with score(lp[k], rp[k]) at row t >= obs[t]; xc/mc: (genes, rows). Pair-outer,
    # row-inner: the row loop runs over contiguous memory in SIMD lanes. Pairs come grouped by receptor-side
    # gene, and four pairs of a group are evaluated per pass over the rows, so the receptor side's values, the
    # observed score and the count are loaded once for four pairs
    n = obs.shape[0]
    n_pairs = lp.shape[0]
    k = 0
    while k < n_pairs:
        r = rp[k]
        end = k + 1
        while end < n_pairs and rp[end] == r:
            end += 1
        while k + 4 <= end:
            l0 = lp[k]
            l1 = lp[k + 1]
            l2 = lp[k + 2]
            l3 = lp[k + 3]
            # the two loops are spelled out: a score function passed as an argument, or chosen per value, is
            # not inlined / hoisted by numba, and costs ~25% of the kernel
            if plain:
                for t in range(n):
                    s = obs[t]
                    xr = xc[r, t]
                    mr = mc[r, t]
                    cnt[t] += (np.int64(_score_plain(xc[l0, t], mc[l0, t], xr, mr, m) >= s)
                               + np.int64(_score_plain(xc[l1, t], mc[l1, t], xr, mr, m) >= s)
                               + np.int64(_score_plain(xc[l2, t], mc[l2, t], xr, mr, m) >= s)
                               + np.int64(_score_plain(xc[l3, t], mc[l3, t], xr, mr, m) >= s))
            else:
                for t in range(n):
                    s = obs[t]
                    xr = xc[r, t]
                    mr = mc[r, t]
                    cnt[t] += (np.int64(_score(xc[l0, t], mc[l0, t], xr, mr, m) >= s)
                               + np.int64(_score(xc[l1, t], mc[l1, t], xr, mr, m) >= s)
                               + np.int64(_score(xc[l2, t], mc[l2, t], xr, mr, m) >= s)
                               + np.int64(_score(xc[l3, t], mc[l3, t], xr, mr, m) >= s))
            k += 4
        while k < end:
            l0 = lp[k]
            if plain:
                for t in range(n):
                    cnt[t] += _score_plain(xc[l0, t], mc[l0, t], xc[r, t], mc[r, t], m) >= obs[t]
            else:
                for t in range(n):
                    cnt[t] += _score(xc[l0, t], mc[l0, t], xc[r, t], mc[r, t], m) >= obs[t]
            k += 1


@njit(parallel=True, cache=True)
def _lr_major_counts(x_ptr, x_idx, x_val, m_ptr, m_idx, m_val, divisor, t_row, t_lr, t_obs, g_ptr, g_col, lp, rp,
                     m, XT, MT):  # pragma: no cover - numba
    # the loop of background_counts, over groups of XT.shape[1] rows; see there. XT, MT: zeros, (n_cols, size)
    # float64, the group's rows densified gene-major (a gene's rows are contiguous). One parallel region per
    # group (the LR loop): everything else is serial, as each region costs a wake-up of the threads
    n_lr = g_ptr.shape[0] - 1
    size = XT.shape[1]
    e_ptr, e_ord = _group_entries(t_row, t_lr, size, n_lr)
    n_groups = (e_ptr.shape[0] - 1) // n_lr
    out = np.empty(t_row.shape[0], dtype=np.int64)  # every entry is written below
    plain_row = np.empty(size, np.bool_)
    for grp in range(n_groups):
        r0 = grp * size
        r1 = min(x_ptr.shape[0] - 1, r0 + size)
        for i in range(r1 - r0):
            plain = True  # the row's values are all finite and >= 0 (the usual case): _score_plain applies
            for k in range(x_ptr[r0 + i], x_ptr[r0 + i + 1]):
                v = x_val[k]
                XT[x_idx[k], i] = v
                if not (v >= 0.0 and v < np.inf):
                    plain = False
            d = divisor[r0 + i]
            for k in range(m_ptr[r0 + i], m_ptr[r0 + i + 1]):
                v = m_val[k] / d
                MT[m_idx[k], i] = v
                if not (v >= 0.0 and v < np.inf):
                    plain = False
            plain_row[i] = plain
        for j in prange(n_lr):
            a = e_ptr[grp * n_lr + j]
            n = e_ptr[grp * n_lr + j + 1] - a
            if n == 0:
                continue
            g0 = g_ptr[j]
            n_g = g_ptr[j + 1] - g0
            loc = np.empty(n, np.int64)
            obs = np.empty(n)
            plain = True
            for t in range(n):
                e = e_ord[a + t]
                loc[t] = t_row[e] - r0
                obs[t] = t_obs[e]
                plain = plain and plain_row[loc[t]]
            # the LR's genes at its tested rows, compacted: xc[g, :] are gene g's values at those rows
            xc = np.empty((n_g, n))
            mc = np.empty((n_g, n))
            for g in range(n_g):
                c = g_col[g0 + g]
                for t in range(n):
                    xc[g, t] = XT[c, loc[t]]
                    mc[g, t] = MT[c, loc[t]]
            cnt = np.zeros(n, np.int64)
            _pair_counts(xc, mc, obs, lp[j], rp[j], m, cnt, plain)
            for t in range(n):
                out[e_ord[a + t]] = cnt[t]
        for i in range(r1 - r0):  # clear only what was written (cheaper than zeroing the whole group)
            for k in range(x_ptr[r0 + i], x_ptr[r0 + i + 1]):
                XT[x_idx[k], i] = 0.0
            for k in range(m_ptr[r0 + i], m_ptr[r0 + i + 1]):
                MT[m_idx[k], i] = 0.0
    return out


#: bytes of the densified row group of :func:`background_counts` (two float64 (n_cols, rows) arrays)
_GROUP_BYTES = 32 << 20


def background_counts(x: sp.csr_matrix, means: sp.csr_matrix, t_row: np.ndarray, t_lr: np.ndarray,
                      t_obs: np.ndarray, pl: np.ndarray | None, pr: np.ndarray | None, m: float,
                      layout: PairLayout | None = None, divisor: np.ndarray | None = None) -> np.ndarray:
    """Background exceedance counts of stLearn's LR score at every tested (row, LR) entry.

    Rows are taken in groups (as many as fit :data:`_GROUP_BYTES` densified, at most 1,024); within a group,
    each LR's genes at the rows that test it are compacted into a small gene x row block, and every
    background pair is evaluated for all those rows at once (the rows run in SIMD lanes over contiguous
    memory; pairs sharing a receptor-side gene come consecutively). Rows whose values are all finite and
    >= 0 use :func:`_score_plain`, others :func:`_score` (the same scores up to the sign of a zero, so the
    same counts). Each count is an integer sum, so neither the grouping nor the order of the pairs changes it.

    Parameters
    ----------
    x, means
        (n_rows, n_genes) CSR float64 expression and neighbour means of the rows.
    t_row, t_lr, t_obs
        (n_entries,) tested entries grouped by row (rows ascending): row, LR index and observed score.
    pl, pr
        (n_lr, n_pairs) integer gene columns of each LR's background pairs (unused when ``layout`` is given).
    m
        min_expr.
    layout
        :func:`pair_layout` of ``pl``, ``pr``; when not given, built on the first call with these arrays and
        reused while they live (the arrays must not be modified in place).
    divisor
        (n_rows,) float64: ``means`` holds neighbour sums, and row ``i``'s are divided by ``divisor[i]`` as they
        are read (the same one division per value as dividing first, without a divided copy of the block).

    Returns
    -------
    (n_entries,) int64 number of background pairs scoring >= the observed score (ties count).
    """
    n_cols = x.shape[1]
    if layout is None:
        layout = _cached_layout(pl, pr, n_cols)
    elif layout.n_cols != n_cols:
        raise ValueError(f"pair layout built for {layout.n_cols} columns, matrices have {n_cols}")
    t_row = np.asarray(t_row, dtype=np.int64)
    if len(t_row) == 0 or len(layout.g_ptr) < 2:
        return np.zeros(len(t_row), dtype=np.int64)
    size = int(max(16, min(1024, x.shape[0], _GROUP_BYTES // (16 * max(n_cols, 1)))))
    # LRs differ in work (rows tested): threads take a few at a time rather than one fixed share each
    divisor = np.ones(x.shape[0]) if divisor is None else np.ascontiguousarray(divisor, dtype=np.float64)
    dense = np.zeros((2, n_cols, size))  # zero pages from the OS: nothing is written until used
    with parallel_chunksize(4):
        # index arrays as scipy holds them (int32 below 2**31 entries): no int64 copies of the block
        return _lr_major_counts(x.indptr, x.indices, x.data, means.indptr, means.indices, means.data, divisor,
                                t_row, np.asarray(t_lr, dtype=np.int64), np.asarray(t_obs, np.float64), layout.g_ptr,
                                layout.g_col, layout.lp, layout.rp, float(m), dense[0], dense[1])


def background_counts_geometric(y: sp.csr_matrix, means: sp.csr_matrix, t_row: np.ndarray, t_lr: np.ndarray,
                                t_obs: np.ndarray, pl: np.ndarray, pr: np.ndarray,
                                weight: np.ndarray) -> np.ndarray:
    """Background exceedance counts of the geometric-mean score of SpaSEG's domain LR scoring,
    ``w_i 0.5 (y_l m_r + y_r m_l)`` in that float64 order, with ``y`` the square-rooted expression and ``m``
    the neighbour means of ``y`` (each row scattered once into dense vectors, its LRs' pairs read by direct
    indexing).

    Parameters
    ----------
    y, means
        (n_rows, n_genes) CSR float64 square-rooted expression and its neighbour means.
    t_row, t_lr, t_obs, pl, pr
        As for :func:`background_counts`.
    weight
        (n_rows,) float64 per-row weight ``w_i`` (the entropy weight, or 1).
    """
    t_row = np.asarray(t_row, dtype=np.int64)
    t_ptr = np.concatenate([[0], np.cumsum(np.bincount(t_row, minlength=y.shape[0]))]).astype(np.int64)
    return _geometric_counts(y.indptr.astype(np.int64), y.indices.astype(np.int64), y.data,
                             means.indptr.astype(np.int64), means.indices.astype(np.int64), means.data,
                             y.shape[1], t_ptr, np.asarray(t_lr, dtype=np.int64), np.asarray(t_obs, np.float64),
                             pl, pr, np.ascontiguousarray(weight, np.float64))


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
