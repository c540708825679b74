"""Exact float sums (CPU, numba): a fixed-point superaccumulator of 32-bit limbs per column.

Integer addition is associative, so per-column sums (and sums of squares) are bit-identical for any chunking,
row order or scheduler; :mod:`stdask.blocks` combines the per-chunk accumulators and turns them into floats.
"""
from __future__ import annotations

import math

import numba
import numpy as np

#: bits per limb of the exact accumulator
LIMB_BITS = 32
#: number of limbs; limb k holds bits [32k, 32k + 32) of the fixed-point number (value * 2**-EMIN)
N_LIMBS = 22
#: weight of the lowest bit: 2**EMIN. Contributions below it are truncated (deterministically, per value)
EMIN = -320
#: values must be below 2**EMAX in magnitude (squares of any float32 value are)
EMAX = 352
#: rows between carry normalisations (each add puts < 2**33 into a limb; int64 holds 2**63)
NORMALISE_EVERY = 1 << 24


@numba.njit(cache=True, nogil=True)
def _acc_add(acc, c, v):  # pragma: no cover - numba
    # add the float64 value v exactly to the fixed-point number acc[c, :]
    if v == 0.0:
        return 0
    if not np.isfinite(v):
        return 1
    m, e = math.frexp(v)  # v = m * 2**e, 0.5 <= |m| < 1
    if e > EMAX:
        return 2
    neg = m < 0.0
    if neg:
        m = -m
    mant = np.int64(m * 9007199254740992.0)  # m * 2**53, exact
    p = e - 53 - EMIN  # bit position of mant's lowest bit in the accumulator
    if p < 0:
        if p <= -53:
            return 0
        mant >>= -p
        p = 0
    k = p >> 5
    off = p & 31
    lo = (mant & 0xFFFFFFFF) << off  # < 2**63
    hi = (mant >> 32) << off  # < 2**52
    a0 = lo & 0xFFFFFFFF
    a1 = (lo >> 32) + (hi & 0xFFFFFFFF)
    a2 = hi >> 32
    if neg:
        acc[c, k] -= a0
        acc[c, k + 1] -= a1
        acc[c, k + 2] -= a2
    else:
        acc[c, k] += a0
        acc[c, k + 1] += a1
        acc[c, k + 2] += a2
    return 0


@numba.njit(cache=True, nogil=True)
def normalise_limbs(acc):  # pragma: no cover - numba
    # propagate carries so that limbs 0..L-2 lie in [0, 2**32); the top limb keeps the sign
    n, L = acc.shape
    for c in range(n):
        for k in range(L - 1):
            carry = acc[c, k] >> 32
            acc[c, k] -= carry << 32
            acc[c, k + 1] += carry


@numba.njit(cache=True, nogil=True)
def csr_moments(indptr, indices, data, n_cols, squares):  # pragma: no cover - numba
    s1 = np.zeros((n_cols, N_LIMBS), dtype=np.int64)
    s2 = np.zeros((n_cols, N_LIMBS) if squares else (0, N_LIMBS), dtype=np.int64)
    nnz = np.zeros(n_cols, dtype=np.int64)
    err = 0
    n_rows = len(indptr) - 1
    for r in range(n_rows):
        for j in range(indptr[r], indptr[r + 1]):
            c = indices[j]
            v = np.float64(data[j])
            if v != 0.0:
                nnz[c] += 1
            err |= _acc_add(s1, c, v)
            if squares:
                err |= _acc_add(s2, c, v * v)
        if (r + 1) % NORMALISE_EVERY == 0:
            normalise_limbs(s1)
            if squares:
                normalise_limbs(s2)
    normalise_limbs(s1)
    if squares:
        normalise_limbs(s2)
    return s1, s2, nnz, err
