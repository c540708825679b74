"""The negative-binomial count sampler of the synthetic generator (compiled, multi-threaded).

Entry ``(i, j)`` of a block of observations takes the counter-based uniform of ``(key, i * n_genes + j + 1)``
(:func:`stdask.random_streams.counter_uniform`) and inverts the negative-binomial CDF at it, so the compiled
sampler draws every entry independently, in parallel, and still gives the same bits for any chunking.
"""
from __future__ import annotations

import math
import threading

import numba
import numpy as np
import scipy.sparse as sp

from ..random_streams import counter_uniform

__all__ = ["nb_inverse_cdf", "nb_counts"]


def nb_inverse_cdf(u: np.ndarray, mu: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """Negative-binomial counts by inversion of the CDF (pure numpy reference of :func:`nb_counts`).

    ``X = min{k : F(k) >= u}`` for ``X ~ NB(mean=mu, inverse dispersion=theta)``, ``Var = mu + mu**2/theta``;
    the pmf is accumulated upwards from ``P(0) = (theta / (theta + mu)) ** theta``.

    Parameters
    ----------
    u
        (n, g) float64 uniforms in [0, 1).
    mu
        (n, g) float64 means (> 0).
    theta
        (g,) float64 inverse dispersions (> 0).

    Returns
    -------
    numpy.ndarray
        (n, g) uint32 counts.
    """
    mu = np.asarray(mu, dtype=np.float64)
    th = np.broadcast_to(np.asarray(theta, dtype=np.float64), mu.shape)
    out = np.zeros(mu.shape, dtype=np.uint32)
    p0 = np.exp(-th * np.log1p(mu / th))
    # same shortcut as the compiled kernel (1 - a <= P(0)), so both agree bit for bit
    x = mu / th
    a = mu * (1.0 - x / 2.0 + x * x / 3.0)
    pos = np.flatnonzero(((u >= p0) & (u >= 1.0 - a)).ravel())
    m, t, uu = mu.ravel()[pos], th.ravel()[pos], u.ravel()[pos]
    q = m / (m + t)
    p = p0.ravel()[pos] * t * q
    c = p0.ravel()[pos] + p
    k = 1
    flat = out.ravel()
    while pos.size:
        # stop where the CDF reached u, or where it can no longer grow (rounding at u close to 1)
        done = (uu < c) | (p <= 0.0) | (k >= _MAX_COUNT)
        flat[pos[done]] = k
        keep = ~done
        pos, uu, p, c, q, t = pos[keep], uu[keep], p[keep], c[keep], q[keep], t[keep]
        k += 1
        p = p * ((k - 1 + t) / k) * q
        c = c + p
    return out


_MAX_COUNT = 1_000_000
_KERNEL_LOCK = threading.Lock()


@numba.njit(parallel=True, cache=True)
def _nb_rows(key, size, combo, base, theta, hot_gene, fold, boost, out):  # pragma: no cover - compiled
    n, g = out.shape
    for i in numba.prange(n):
        s = size[i]
        c = combo[i]
        hg = hot_gene[i]
        best = -1.0
        best_j = 0
        nonzero = False
        for j in range(g):
            mu = s * base[c, j]
            if j == hg:
                mu = fold * mu + boost * s
            if mu > best:
                best = mu
                best_j = j
            uu = counter_uniform(key, np.uint64(i * g + j + 1))
            th = theta[j]
            # theta * log1p(mu / theta) <= a, so 1 - a <= exp(-a) <= P(0): most zeros are decided
            # without a (slow) transcendental call
            x = mu / th
            a = mu * (1.0 - x / 2.0 + x * x / 3.0)
            if uu < 1.0 - a:
                out[i, j] = 0
                continue
            p0 = math.exp(-th * math.log1p(mu / th))
            if uu < p0:
                out[i, j] = 0
                continue
            q = mu / (mu + th)
            p = p0 * th * q
            cdf = p0 + p
            k = 1
            while uu >= cdf and p > 0.0 and k < _MAX_COUNT:
                k += 1
                p *= (k - 1 + th) / k * q
                cdf += p
            out[i, j] = k
            nonzero = True
        if not nonzero:
            out[i, best_j] = 1


@numba.njit(cache=True)
def _dense_to_csr(dense):  # pragma: no cover - compiled
    n, g = dense.shape
    indptr = np.zeros(n + 1, dtype=np.int64)
    for i in range(n):
        m = 0
        for j in range(g):
            if dense[i, j] != 0:
                m += 1
        indptr[i + 1] = indptr[i] + m
    indices = np.empty(indptr[n], dtype=np.int32)
    data = np.empty(indptr[n], dtype=np.uint32)
    for i in range(n):
        k = indptr[i]
        for j in range(g):
            if dense[i, j] != 0:
                indices[k] = j
                data[k] = dense[i, j]
                k += 1
    return indptr, indices, data


def nb_counts(
    key: int,
    size: np.ndarray,
    combo: np.ndarray,
    base: np.ndarray,
    theta: np.ndarray,
    hot_gene: np.ndarray,
    fold: float,
    boost: float,
) -> sp.csr_matrix:
    """Negative-binomial count matrix of a block of observations, as CSR (compiled, multi-threaded).

    The mean of entry ``(i, j)`` is ``size[i] * base[combo[i], j]``, except at gene ``hot_gene[i]``
    where it becomes ``fold * mean + boost * size[i]``. Entry ``(i, j)`` is the inverse CDF
    (:func:`nb_inverse_cdf`) of its own counter-based uniform (:func:`stdask.random_streams.counter_uniform`),
    so neither threads nor chunking can change the result. A row that draws no count gets one count in its
    most expected gene.

    Parameters
    ----------
    key
        64-bit key of the block's stream (:func:`stdask.random_streams.sequence_key`).
    size
        (n,) float64 library size times expression scale.
    combo
        (n,) int64 row of ``base`` (domain x cell-type combination).
    base
        (n_combos, g) float64 relative means.
    theta
        (g,) float64 inverse dispersions.
    hot_gene
        (n,) int64 gene raised in this row, -1 for none.
    fold, boost
        Hotspot up-regulation.

    Returns
    -------
    scipy.sparse.csr_matrix
        (n, g) uint32 with sorted indices.
    """
    n, g = len(size), base.shape[1]
    dense = np.empty((n, g), dtype=np.uint32)
    with _KERNEL_LOCK:  # one parallel launch at a time: numba's thread pools are not all re-entrant
        _nb_rows(np.uint64(key), np.asarray(size, dtype=np.float64), np.asarray(combo, dtype=np.int64),
                 np.ascontiguousarray(base, dtype=np.float64), np.asarray(theta, dtype=np.float64),
                 np.asarray(hot_gene, dtype=np.int64), float(fold), float(boost), dense)
    indptr, indices, data = _dense_to_csr(dense)
    out = sp.csr_matrix((data, indices, indptr), shape=(n, g))
    out.has_sorted_indices = True
    return out
