"""GPU (numba.cuda) exact integer gram kernels of :mod:`stdask.pp.pca`: ``X^T X`` and ``X^T (X W)`` of one
CSR block as int64 sums of split fixed-point values, equal to the CPU kernels
:func:`stdask.backend.cpu.gram.csr_gram` and :func:`~stdask.backend.cpu.gram.csr_xtxw` bit for bit.

Why they can be equal: every accumulated term is an int64 product and integer addition is associative (even
when it wraps), so the atomic adds of many threads give the CPU's sums in any order. The only floating-point
steps are the split of a value (``v * 2**k``, exact, then ``rint``) and, in ``X W``, each row's dot product,
which one thread forms in the CPU's order. NVVM fuses ``a * b + c`` into one rounding by default, which would
change the dot product's bits, so its products go through ``__dmul_rn`` (never fused); the simulator, which
has no libdevice, multiplies plainly (Python does not fuse).

Runs under ``NUMBA_ENABLE_CUDASIM=1`` on machines without a GPU (how the CPU test suite checks it).
"""
from __future__ import annotations

import numpy as np
from numba import config, cuda  # importing needs no GPU; kernels compile on first launch

_THREADS = 128

if config.ENABLE_CUDASIM:
    @cuda.jit(device=True)
    def _mul_rn(a, b):
        return a * b
else:  # pragma: no cover - compiled on a GPU only (bench/gpu.py checks it against the CPU there)
    from numba.cuda import libdevice

    @cuda.jit(device=True)
    def _mul_rn(a, b):
        return libdevice.dmul_rn(a, b)


@cuda.jit(device=True)
def _split(v, scale, two_b):
    # the CPU _split: (rint(y), rint((y - rint(y)) * 2**b)) of y = v * scale, as int64; round() is the
    # round-half-even of rint on both targets
    y = _mul_rn(v, scale)
    h = round(y)
    return h, round((y - h) * two_b)


@cuda.jit
def _split_kernel(indices, data, scale, two_b, hs, ls, sums):
    # one thread per stored entry: its split, and its share of the column sums (h, l[, h h, 2 h l])
    p = cuda.grid(1)
    if p < data.shape[0]:
        c = indices[p]
        h, lo = _split(data[p], scale[c], two_b)
        hs[p] = h
        ls[p] = lo
        cuda.atomic.add(sums, (c, 0), h)
        cuda.atomic.add(sums, (c, 1), lo)
        if sums.shape[1] == 4:
            cuda.atomic.add(sums, (c, 2), h * h)
            cuda.atomic.add(sums, (c, 3), 2 * h * lo)


@cuda.jit
def _pairs_kernel(indptr, indices, row_of, hs, ls, acc):
    # one thread per stored entry a: the pairs (a, q), q >= a, of its row (columns ascending: upper triangle)
    a = cuda.grid(1)
    if a < indices.shape[0]:
        ja = indices[a]
        ha = hs[a]
        la = ls[a]
        for q in range(a, indptr[row_of[a] + 1]):
            jq = indices[q]
            hq = hs[q]
            cuda.atomic.add(acc, (ja, jq, 0), ha * hq)
            cuda.atomic.add(acc, (ja, jq, 1), ha * ls[q] + la * hq)


@cuda.jit
def _xtxw_kernel(indptr, indices, data, W, hs, ls, yscale, two_b, acc):
    # one thread per (row, column t of W): y = x_row . W[:, t] in the CPU's order, split, then scattered
    e = cuda.grid(1)
    n_rows = indptr.shape[0] - 1
    l = W.shape[1]
    if e < n_rows * l:
        r = e // l
        t = e - r * l
        if indptr[r] == indptr[r + 1]:
            return  # nothing to scatter (and the split of an all-zero block's y = 0 * inf is NaN)
        y = 0.0
        for p in range(indptr[r], indptr[r + 1]):
            y += _mul_rn(data[p], W[indices[p], t])
        yh, yl = _split(y, yscale[t], two_b)
        for p in range(indptr[r], indptr[r + 1]):
            c = indices[p]
            cuda.atomic.add(acc, (c, t, 0), hs[p] * yh)
            cuda.atomic.add(acc, (c, t, 1), hs[p] * yl + ls[p] * yh)


def _launch(kernel, n: int, *args) -> None:
    if n > 0:  # a grid of zero blocks is an error on a GPU
        kernel[(n + _THREADS - 1) // _THREADS, _THREADS](*args)


def _split_entries(indptr, indices, data, scale, b: int, n_sums: int):
    """Device copies of the CSR arrays, the split (hs, ls) of every entry, and the (n_cols, n_sums) sums."""
    d_ptr = cuda.to_device(np.ascontiguousarray(indptr, dtype=np.int64))
    d_idx = cuda.to_device(np.ascontiguousarray(indices, dtype=np.int64))
    d_data = cuda.to_device(np.ascontiguousarray(data, dtype=np.float64))  # exact widening, as the CPU reads it
    nnz = len(data)
    hs = cuda.device_array(nnz, np.int64)
    ls = cuda.device_array(nnz, np.int64)
    sums = cuda.to_device(np.zeros((len(scale), n_sums), np.int64))
    _launch(_split_kernel, nnz, d_idx, d_data, cuda.to_device(np.ascontiguousarray(scale, dtype=np.float64)),
            2.0**b, hs, ls, sums)
    return d_ptr, d_idx, d_data, hs, ls, sums


def csr_gram(indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, scale: np.ndarray, b: int, n_cols: int
             ) -> tuple[np.ndarray, np.ndarray]:
    """Exact integer gram partial of one CSR block on the GPU.

    Parameters
    ----------
    indptr, indices, data
        (n_rows + 1,), (nnz,), (nnz,) CSR arrays, canonical (column indices sorted and unique per row).
    scale
        (n_cols,) float64 powers of two, ``2**(b - e_j)``.
    b
        Bits per half of the split.
    n_cols
        Columns.

    Returns
    -------
    acc (n_cols, n_cols, 2) int64 upper-triangular ``(sum h_j h_k, sum h_j l_k + l_j h_k)`` and sums
    (n_cols, 2) int64 ``(sum h, sum l)``: equal to :func:`stdask.backend.cpu.gram.csr_gram`.
    """
    acc = cuda.to_device(np.zeros((n_cols, n_cols, 2), np.int64))
    d_ptr, d_idx, _, hs, ls, sums = _split_entries(indptr, indices, data, scale, b, 2)
    nnz = len(data)
    if nnz:
        row_of = np.repeat(np.arange(len(indptr) - 1, dtype=np.int64), np.diff(indptr))
        _launch(_pairs_kernel, nnz, d_ptr, d_idx, cuda.to_device(row_of), hs, ls, acc)
    return acc.copy_to_host(), sums.copy_to_host()


def csr_xtxw(indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, W: np.ndarray, scale: np.ndarray,
             yscale: np.ndarray, b: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact integer partial of ``X^T (X W)`` of one CSR block on the GPU.

    Parameters
    ----------
    indptr, indices, data
        CSR arrays of the (n_rows, g) block, canonical.
    W
        (g, l) float64.
    scale, yscale
        (g,) and (l,) float64 powers of two of the columns of X and of X W.
    b
        Bits per half of the split.

    Returns
    -------
    acc (g, l, 2) int64 and sums (g, 4) int64 ``(sum h, sum l, sum h h, sum 2 h l)``: equal to
    :func:`stdask.backend.cpu.gram.csr_xtxw`.
    """
    g, l = W.shape
    acc = cuda.to_device(np.zeros((g, l, 2), np.int64))
    d_ptr, d_idx, d_data, hs, ls, sums = _split_entries(indptr, indices, data, scale, b, 4)
    _launch(_xtxw_kernel, (len(indptr) - 1) * l, d_ptr, d_idx, d_data,
            cuda.to_device(np.ascontiguousarray(W, dtype=np.float64)), hs, ls,
            cuda.to_device(np.ascontiguousarray(yscale, dtype=np.float64)), 2.0**b, acc)
    return acc.copy_to_host(), sums.copy_to_host()
