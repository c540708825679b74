"""Counter-based random streams and the negative-binomial sampler of the synthetic generator.

Every random number the generator draws comes from a stream keyed by ``(seed, purpose, block)``:
``purpose`` names what is drawn (global parameters, per-observation values, DNB placement ...) and
``block`` is the index of a fixed-size block of observations. A stream never depends on how the
caller chunks its reads, so the same seed gives bit-identical data for any ``chunk_size``.

Small draws use numpy generators (PCG64DXSM seeded by ``SeedSequence([seed, purpose, block])``). The
count matrix, by far the most numbers, uses a counter-based generator instead: entry ``(i, j)`` of a
block takes the uniform ``hash(key, i * n_genes + j)`` (:func:`counter_uniforms`), so the compiled
sampler can draw every entry independently, in parallel, and still give the same bits.
"""
from __future__ import annotations

import math
import threading

import numba
import numpy as np
import scipy.sparse as sp

#: stream purposes (part of the key; changing a value changes every dataset drawn with it)
PARAMS = 0  #: global parameters: genes, markers, domains, hotspots
OBS = 1  #: per-observation values: cell type, library size, hotspot role
JITTER = 2  #: per-observation position jitter ("cells" layout)
DNB = 3  #: placement of molecules on DNBs (GEM / GEF writers)
COUNTS = 5  #: counter-based uniforms of the count matrix (:func:`counter_uniforms`)


def stream(seed: int, purpose: int, block: int = 0) -> np.random.Generator:
    """The random stream keyed by ``(seed, purpose, block)``.

    Parameters
    ----------
    seed
        Non-negative dataset seed.
    purpose
        One of the module constants (:data:`PARAMS`, :data:`OBS`, ...).
    block
        Index of the fixed-size observation block (0 for global streams).

    Returns
    -------
    numpy.random.Generator
        A PCG64DXSM generator seeded from ``SeedSequence([seed, purpose, block])``: one independent
        stream per key.
    """
    return np.random.Generator(np.random.PCG64DXSM(np.random.SeedSequence([int(seed), int(purpose), int(block)])))


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


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_TO_UNIT = 2.0 ** -53


def counter_uniforms(key: int, n: int, g: int) -> np.ndarray:
    """The uniforms :func:`nb_counts` draws for a block: entry ``(i, j)`` is a hash of ``(key, i * g + j)``.

    SplitMix64's finaliser applied to ``key + (counter + 1) * golden``; the top 53 bits give a float64
    in [0, 1). Being a pure function of the counter, any entry can be computed alone, in any order or
    thread.

    Returns
    -------
    numpy.ndarray
        (n, g) float64.
    """
    counter = np.arange(1, n * g + 1, dtype=np.uint64)
    z = np.uint64(key) + counter * _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    z = z ^ (z >> np.uint64(31))
    return ((z >> np.uint64(11)).astype(np.float64) * _TO_UNIT).reshape(n, g)


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
            z = key + np.uint64(i * g + j + 1) * _GOLDEN
            z = (z ^ (z >> np.uint64(30))) * _MIX1
            z = (z ^ (z >> np.uint64(27))) * _MIX2
            z = z ^ (z >> np.uint64(31))
            uu = np.float64(z >> np.uint64(11)) * _TO_UNIT
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
    (:func:`nb_inverse_cdf`) of its own counter-based uniform (:func:`counter_uniforms`), so neither
    threads nor chunking can change the result. A row that draws no count gets one count in its most
    expected gene.

    Parameters
    ----------
    key
        64-bit key of the block's stream (see :func:`block_key`).
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


def block_key(seed: int, purpose: int, block: int) -> int:
    """64-bit key of the counter-based uniforms of ``(seed, purpose, block)`` (from ``SeedSequence``)."""
    return int(np.random.SeedSequence([int(seed), int(purpose), int(block)]).generate_state(1, np.uint64)[0])


def barcodes_10x(index: np.ndarray, suffix: str = "-1") -> np.ndarray:
    """10x-style 16-nt barcodes, unique per index.

    The index goes through a bijection of ``[0, 2**32)`` (xor-shift / odd-multiply mixing) and is then
    written as 16 bases (2 bits each), so barcodes look random yet never collide.

    Parameters
    ----------
    index
        (n,) non-negative integers below ``2**32``.
    suffix
        Appended to each barcode (10x writes the GEM well, ``-1``).

    Returns
    -------
    numpy.ndarray
        (n,) object array of ``str``.
    """
    mask = np.uint64(0xFFFFFFFF)
    # the offset keeps index 0 away from the all-A barcode; every step is a bijection of [0, 2**32)
    h = (np.asarray(index, dtype=np.uint64) + np.uint64(0x9E3779B9)) & mask
    for mult in (0x7FEB352D, 0x846CA68B):
        h ^= h >> np.uint64(16)
        h = (h * np.uint64(mult)) & mask
    h ^= h >> np.uint64(16)
    shifts = np.arange(30, -1, -2, dtype=np.uint64)
    digits = ((h[:, None] >> shifts[None, :]) & np.uint64(3)).astype(np.uint8)
    letters = np.frombuffer(b"ACGT", dtype=np.uint8)[digits]
    codes = np.ascontiguousarray(letters).view("S16").ravel()
    return np.char.add(codes.astype("U16"), suffix).astype(object)
