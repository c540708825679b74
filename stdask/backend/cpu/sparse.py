"""Row-parallel sparse x sparse product (CSR @ CSR) with scipy's exact result.

scipy's ``csr_matmat`` (sparsetools, SMMP) runs on one core; the neighbour sums of the LR analysis (a binary
neighbour matrix times the tile's expression) are the part of a tile's work that is not yet parallel. This kernel
computes each output row exactly as scipy does -- the same products ``a_ij * b_jk`` added to the same
accumulator in the same order (A's stored order, then B's), entries listed in scipy's order (the reverse of
first touch) and exact zero sums dropped -- so its arrays are scipy's, byte for byte, whatever the number of
threads; rows are simply shared out among the threads.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from numba import njit, prange

#: output rows per parallel chunk (each chunk keeps one dense accumulator of the output's width)
_CHUNK_ROWS = 256


@njit(parallel=True, cache=True)
def _row_bounds(a_ptr, a_idx, b_ptr, b_idx, n_cols, n_chunks, chunk):  # pragma: no cover - numba
    # distinct output columns of each row: an upper bound of its entries (exact zero sums are dropped later)
    n = a_ptr.shape[0] - 1
    bound = np.zeros(n + 1, np.int64)
    for c in prange(n_chunks):
        mark = np.full(n_cols, -1, np.int64)
        for i in range(c * chunk, min(n, (c + 1) * chunk)):
            cnt = 0
            for jj in range(a_ptr[i], a_ptr[i + 1]):
                j = a_idx[jj]
                for kk in range(b_ptr[j], b_ptr[j + 1]):
                    k = b_idx[kk]
                    if mark[k] != i:
                        mark[k] = i
                        cnt += 1
            bound[i + 1] = cnt
    return bound


@njit(parallel=True, cache=True)
def _rows_numeric(a_ptr, a_idx, a_val, b_ptr, b_idx, b_val, n_cols, start, n_chunks, chunk, c_idx, c_val,
                  count):  # pragma: no cover - numba
    # scipy's csr_matmat row by row (linked list of touched columns, sums kept where != 0), each row written at
    # its upper-bound offset ``start[i]``; ``count[i]`` = entries kept
    n = a_ptr.shape[0] - 1
    for c in prange(n_chunks):
        sums = np.zeros(n_cols, c_val.dtype)
        nxt = np.full(n_cols, -1, np.int64)
        for i in range(c * chunk, min(n, (c + 1) * chunk)):
            head = -2
            length = 0
            for jj in range(a_ptr[i], a_ptr[i + 1]):
                j = a_idx[jj]
                v = a_val[jj]
                for kk in range(b_ptr[j], b_ptr[j + 1]):
                    k = b_idx[kk]
                    sums[k] += v * b_val[kk]
                    if nxt[k] == -1:
                        nxt[k] = head
                        head = k
                        length += 1
            at = start[i]
            for _ in range(length):
                if sums[head] != 0:
                    c_idx[at] = head
                    c_val[at] = sums[head]
                    at += 1
                temp = head
                head = nxt[head]
                nxt[temp] = -1
                sums[temp] = 0
            count[i] = at - start[i]


@njit(parallel=True, cache=True)
def _compact(start, count, c_idx, c_val, n_chunks, chunk):  # pragma: no cover - numba
    n = count.shape[0]
    indptr = np.zeros(n + 1, np.int64)
    for i in range(n):
        indptr[i + 1] = indptr[i] + count[i]
    idx = np.empty(indptr[n], c_idx.dtype)
    val = np.empty(indptr[n], c_val.dtype)
    for c in prange(n_chunks):
        for i in range(c * chunk, min(n, (c + 1) * chunk)):
            for t in range(count[i]):
                idx[indptr[i] + t] = c_idx[start[i] + t]
                val[indptr[i] + t] = c_val[start[i] + t]
    return indptr, idx, val


def csr_product(a: sp.csr_matrix, b: sp.csr_matrix) -> sp.csr_matrix:
    """``a @ b`` for CSR float64 ``a`` (n, m) and ``b`` (m, k), rows computed in parallel.

    Returns
    -------
    (n, k) CSR float64 with the arrays scipy's ``a @ b`` gives (same values, same entry order in every row,
    exact zero sums dropped); its indices are not sorted, as scipy's are not.
    """
    if a.shape[1] != b.shape[0]:
        raise ValueError(f"shapes {a.shape} and {b.shape} do not align")
    if a.dtype != np.float64 or b.dtype != np.float64:
        raise TypeError(f"csr_product takes float64 matrices, got {a.dtype} and {b.dtype}")
    n, k = a.shape[0], b.shape[1]
    n_chunks = max(1, -(-n // _CHUNK_ROWS))
    bound = _row_bounds(a.indptr, a.indices, b.indptr, b.indices, k, n_chunks, _CHUNK_ROWS)
    start = np.cumsum(bound)
    c_idx = np.empty(start[-1], np.int32 if k < 2**31 else np.int64)
    c_val = np.empty(start[-1], np.float64)
    count = np.empty(n, np.int64)
    _rows_numeric(a.indptr, a.indices, a.data, b.indptr, b.indices, b.data, k, start, n_chunks, _CHUNK_ROWS, c_idx,
                  c_val, count)
    if int(count.sum()) == start[-1]:  # no exact zero sum (the usual case): the bound arrays are the result
        indptr, idx, val = start, c_idx, c_val
    else:
        indptr, idx, val = _compact(start, count, c_idx, c_val, n_chunks, _CHUNK_ROWS)
    return sp.csr_matrix((val, idx, indptr), shape=(n, k))


__all__ = ["csr_product"]
