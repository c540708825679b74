"""Exact integer gram kernels (CPU, numba) of :mod:`stdask.pp.pca`: per-column bounds, ``X^T X`` and
``X^T (X W)`` of one CSR block as int64 sums of split fixed-point values (the method: the docstring of
``stdask/pp/_gram.py``). Integer sums are associative, so the results do not depend on how the
rows are split into blocks.
"""
from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def csr_bounds(indptr, indices, data, n_cols):  # pragma: no cover - numba
    colmax = np.zeros(n_cols)
    rowmax = 0.0
    bad = False
    for r in range(len(indptr) - 1):
        s = 0.0
        for p in range(indptr[r], indptr[r + 1]):
            v = abs(np.float64(data[p]))
            if not np.isfinite(v):
                bad = True
            c = indices[p]
            if v > colmax[c]:
                colmax[c] = v
            s += v
        if s > rowmax:
            rowmax = s
    return colmax, rowmax, bad


@numba.njit(cache=True, nogil=True)
def _split(v, scale, two_b):  # pragma: no cover - numba
    y = v * scale
    h = np.rint(y)
    return np.int64(h), np.int64(np.rint((y - h) * two_b))


#: genes per block of the sparse gram kernel: a (block x block x 2) int64 accumulator (256 KiB) stays in L2
_GENE_BLOCK = 128


@numba.njit(cache=True, nogil=True)
def csr_gram(indptr, indices, data, scale, b, n_cols):  # pragma: no cover - numba
    # acc[j, k, 0] = sum h_j h_k, acc[j, k, 1] = sum h_j l_k + l_j h_k, for j <= k; sums[j] = (sum h, sum l).
    # Needs sorted column indices per row. Pairs are visited one gene block pair at a time: touching the whole
    # (genes x genes) accumulator for every row streamed it from memory once per row.
    n_rows = len(indptr) - 1
    acc = np.zeros((n_cols, n_cols, 2), dtype=np.int64)
    sums = np.zeros((n_cols, 2), dtype=np.int64)
    two_b = 2.0**b
    nnz = indptr[n_rows]
    hs = np.empty(nnz, dtype=np.int64)
    ls = np.empty(nnz, dtype=np.int64)
    for p in range(nnz):
        c = indices[p]
        h, lo = _split(np.float64(data[p]), scale[c], two_b)
        hs[p] = h
        ls[p] = lo
        sums[c, 0] += h
        sums[c, 1] += lo
    B = _GENE_BLOCK
    n_blocks = (n_cols + B - 1) // B
    # starts[r, k]: first entry of row r in gene block k (or later)
    starts = np.empty((n_rows, n_blocks + 1), dtype=np.int64)
    for r in range(n_rows):
        p = indptr[r]
        for k in range(n_blocks + 1):
            while p < indptr[r + 1] and indices[p] < k * B:
                p += 1
            starts[r, k] = p
    local = np.empty((B, B, 2), dtype=np.int64)
    for bi in range(n_blocks):
        for bj in range(bi, n_blocks):
            local[:] = 0
            oi, oj = bi * B, bj * B
            for r in range(n_rows):
                a0, a1 = starts[r, bi], starts[r, bi + 1]
                q1 = starts[r, bj + 1]
                for a in range(a0, a1):
                    ja = indices[a] - oi
                    ha, la = hs[a], ls[a]
                    q0 = a if bi == bj else starts[r, bj]
                    for q in range(q0, q1):
                        jq = indices[q] - oj
                        hq = hs[q]
                        local[ja, jq, 0] += ha * hq
                        local[ja, jq, 1] += ha * ls[q] + la * hq
            ni, nj = min(B, n_cols - oi), min(B, n_cols - oj)
            for x in range(ni):
                for y in range(nj):
                    acc[oi + x, oj + y, 0] += local[x, y, 0]
                    acc[oi + x, oj + y, 1] += local[x, y, 1]
    return acc, sums


@numba.njit(cache=True, nogil=True)
def csr_xtxw(indptr, indices, data, W, scale, yscale, b):  # pragma: no cover - numba
    g, l = W.shape
    acc = np.zeros((g, l, 2), dtype=np.int64)
    sums = np.zeros((g, 4), dtype=np.int64)  # sum h, sum l, sum h h, sum 2 h l
    two_b = 2.0**b
    y = np.empty(l)
    yh = np.empty(l, dtype=np.int64)
    yl = np.empty(l, dtype=np.int64)
    for r in range(len(indptr) - 1):
        y[:] = 0.0
        for p in range(indptr[r], indptr[r + 1]):
            v = np.float64(data[p])
            c = indices[p]
            for t in range(l):
                y[t] += v * W[c, t]
        for t in range(l):
            yh[t], yl[t] = _split(y[t], yscale[t], two_b)
        for p in range(indptr[r], indptr[r + 1]):
            c = indices[p]
            h, lo = _split(np.float64(data[p]), scale[c], two_b)
            sums[c, 0] += h
            sums[c, 1] += lo
            sums[c, 2] += h * h
            sums[c, 3] += 2 * h * lo
            for t in range(l):
                acc[c, t, 0] += h * yh[t]
                acc[c, t, 1] += h * yl[t] + lo * yh[t]
    return acc, sums
