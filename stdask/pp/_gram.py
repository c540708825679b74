"""Exact, order-independent gram matrices ``X^T X`` and cross products ``X^T (X W)`` of row blocks.

Why: a float64 sum of per-cell outer products depends on the order the cells are added in, so the PCA of
the same slice stored with two tile sizes (two row orders) differed in the last bits, and so did everything
downstream (neighbours, Leiden). Here every partial result is an **integer** sum, which is associative:
the gram matrix is bit-identical for any tiling, chunking, row order or scheduler.

How (a fixed-point variant of the Ozaki splitting used for reproducible BLAS):

* each column ``j`` gets a power-of-two scale ``2**e_j`` above its largest ``|x|`` (one cheap pass,
  :func:`column_bounds`); the scaled value ``y = x * 2**(b - e_j)`` (``|y| <= 2**b``) is split into a high
  integer ``h = rint(y)`` and a low integer ``l = rint((y - h) * 2**b)``, so ``x`` is represented to ``2b``
  bits relative to its column's maximum (``b`` = 20 up to 4 M rows, 40 bits; 34 bits at 10**8 rows); the
  remainder is dropped deterministically per value;
* ``L0 = sum h_j h_k`` and ``L1 = sum (h_j l_k + l_j h_k)`` are accumulated in int64 (``b`` is chosen from
  the total row count so that no sum can overflow); the ``l l`` term (below ``2**-2b`` relative) is dropped;
* ``X^T X = 2**(e_j + e_k - 2b) (L0 + 2**-b L1)`` is formed once, in float64, at the end.

Sparse (CSR) blocks go through a numba kernel that touches each pair of stored entries of a row once
(upper triangle); dense blocks use float64 BLAS on row blocks small enough (``r * 2**2b <= 2**53``) that
every BLAS partial sum is an exact integer, then convert to int64. Both give the same integers.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from ..backend import get_kernel

#: most bits per half (40 bits per value in all)
_MAX_BITS = 20


def slice_bits(n_rows: int) -> int:
    """Bits per half such that ``n_rows`` terms of magnitude ``<= 2**(2b)`` sum without int64 overflow."""
    need = max(1, int(n_rows)).bit_length()  # n_rows < 2**need
    b = min(_MAX_BITS, (62 - need) // 2)
    if b < 8:
        raise ValueError(f"{n_rows} rows are too many for the exact gram accumulator")
    return b


def column_exponents(maxabs: np.ndarray) -> np.ndarray:
    """(n_cols,) int64 ``e`` with ``maxabs < 2**e`` (0 for all-zero columns)."""
    maxabs = np.asarray(maxabs, dtype=np.float64)
    if not np.isfinite(maxabs).all():
        raise ValueError("the matrix holds NaN or infinite values; PCA is undefined")
    _, e = np.frexp(maxabs)  # maxabs = m 2**e, 0.5 <= m < 1, so maxabs < 2**e
    return np.where(maxabs > 0, e, 0).astype(np.int64)


# ----------------------------------------------------------------------------------------------------
# bounds pass
# ----------------------------------------------------------------------------------------------------
def block_bounds(block) -> tuple[np.ndarray, float]:
    """(per-column max |x|, max over rows of the row's L1 norm) of one block; NaN/inf raise."""
    if sp.issparse(block):
        m = sp.csr_matrix(block)
        colmax, rowmax, bad = get_kernel("csr_bounds")(m.indptr, m.indices, m.data, m.shape[1])
    else:
        a = np.abs(np.asarray(block, dtype=np.float64))
        bad = not np.isfinite(a).all()
        colmax = a.max(axis=0) if len(a) else np.zeros(a.shape[1])
        rowmax = float(a.sum(axis=1).max()) if len(a) else 0.0
    if bad:
        raise ValueError("the matrix holds NaN or infinite values; PCA is undefined")
    return colmax, float(rowmax)


def merge_bounds(a: tuple, b: tuple) -> tuple:
    return np.maximum(a[0], b[0]), max(a[1], b[1])


# ----------------------------------------------------------------------------------------------------
# gram X^T X
# ----------------------------------------------------------------------------------------------------
def _canonical(block) -> sp.csr_matrix:
    # one entry per (row, column), columns sorted: the pair loops count each stored entry as a distinct
    # column value and walk each row's columns in ascending order
    m = sp.csr_matrix(block) if sp.issparse(block) else sp.csr_matrix(np.asarray(block))
    if not m.has_canonical_format:
        m = m.copy()
        m.sum_duplicates()
    return m


def _dense_split(B: np.ndarray, scale: np.ndarray, b: int) -> tuple[np.ndarray, np.ndarray]:
    Y = B * scale
    H = np.rint(Y)
    return H, np.rint((Y - H) * 2.0**b)


def gram_block(block, exps: np.ndarray, b: int, backend: str = "cpu") -> tuple:
    """Exact integer gram partial of one block.

    Parameters
    ----------
    block
        (rows, n_cols) CSR matrix or dense array.
    exps
        (n_cols,) int64 column exponents from :func:`column_exponents` (of the whole matrix).
    b
        :func:`slice_bits` of the whole matrix's row count.

    Returns
    -------
    tuple
        ``(rows, acc, sums)``: acc (n_cols, n_cols, 2) int64 upper-triangular ``(L0, L1)``, sums (n_cols, 2)
        int64 ``(sum h, sum l)``.
    """
    n, g = block.shape
    scale = np.ldexp(1.0, b - exps)
    if sp.issparse(block):
        m = _canonical(block)
        acc, sums = get_kernel("csr_gram", backend)(m.indptr, m.indices, m.data, scale, b, g)
        return n, acc, sums
    acc = np.zeros((g, g, 2), dtype=np.int64)
    sums = np.zeros((g, 2), dtype=np.int64)
    rows = min(2048, 1 << (53 - 2 * b))  # every BLAS partial sum below stays an exact integer < 2**53
    X = np.asarray(block)
    for r0 in range(0, n, rows):
        H, Lo = _dense_split(np.asarray(X[r0 : r0 + rows], dtype=np.float64), scale, b)
        HL = H.T @ Lo
        acc[..., 0] += np.triu(H.T @ H).astype(np.int64)
        acc[..., 1] += np.triu(HL + HL.T).astype(np.int64)
        sums[:, 0] += H.sum(axis=0).astype(np.int64)
        sums[:, 1] += Lo.sum(axis=0).astype(np.int64)
    return n, acc, sums


def add_partials(a: tuple, b: tuple) -> tuple:
    """Sum of two partials (any tuple of a count and integer arrays); exact, so order does not matter."""
    return (a[0] + b[0],) + tuple(x + y for x, y in zip(a[1:], b[1:]))


def finish_gram(acc: np.ndarray, sums: np.ndarray, exps: np.ndarray, b: int) -> tuple[np.ndarray, np.ndarray]:
    """(X^T X, column sums) in float64 from the integer accumulators."""
    U = acc[..., 0].astype(np.float64) + np.ldexp(acc[..., 1].astype(np.float64), -b)
    G = np.triu(U) + np.triu(U, 1).T
    unit = np.ldexp(1.0, exps - b)  # 2**(e_j - b); products of powers of two are exact
    G *= unit[:, None] * unit[None, :]
    s = (sums[:, 0].astype(np.float64) + np.ldexp(sums[:, 1].astype(np.float64), -b)) * unit
    return G, s


# ----------------------------------------------------------------------------------------------------
# cross product X^T (X W) for the randomized solver
# ----------------------------------------------------------------------------------------------------
def y_exponents(rowmax_l1: float, W: np.ndarray) -> np.ndarray:
    """(l,) exponents bounding ``|x_i . W[:, t]| <= max_i |x_i|_1 max_j |W_jt|`` (with a margin for the
    float64 rounding of the dot product)."""
    bound = rowmax_l1 * np.abs(W).max(axis=0) * (1 + 2.0**-30) + np.finfo(np.float64).tiny
    return column_exponents(bound)


def xtxw_block(block, W: np.ndarray, exps: np.ndarray, yexps: np.ndarray, b: int, backend: str = "cpu") -> tuple:
    """Exact integer partial of ``X^T (X W)`` (and of column sums and sums of squares) for one block.

    Returns ``(rows, acc, sums)``: acc (n_cols, l, 2) int64, sums (n_cols, 4) int64. ``X W`` is computed
    row by row in a fixed order, so it does not depend on the block either. Dense blocks go through the same
    kernel as CSR.
    """
    m = _canonical(block)
    acc, sums = get_kernel("csr_xtxw", backend)(m.indptr, m.indices, m.data, np.ascontiguousarray(W, dtype=np.float64),
                                       np.ldexp(1.0, b - exps), np.ldexp(1.0, b - yexps), b)
    return m.shape[0], acc, sums


def finish_xtxw(acc, sums, exps, yexps, b) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(X^T X W, column sums, column sums of squares) in float64."""
    T = acc[..., 0].astype(np.float64) + np.ldexp(acc[..., 1].astype(np.float64), -b)
    T *= np.ldexp(1.0, exps - b)[:, None] * np.ldexp(1.0, yexps - b)[None, :]
    unit = np.ldexp(1.0, exps - b)
    s = (sums[:, 0].astype(np.float64) + np.ldexp(sums[:, 1].astype(np.float64), -b)) * unit
    s2 = (sums[:, 2].astype(np.float64) + np.ldexp(sums[:, 3].astype(np.float64), -b)) * unit * unit
    return T, s, s2


__all__ = ["slice_bits", "column_exponents", "block_bounds", "merge_bounds", "gram_block", "add_partials",
           "finish_gram", "y_exponents", "xtxw_block", "finish_xtxw"]
