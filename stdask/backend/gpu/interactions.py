"""GPU (numba.cuda) kernels of ``run_cci``'s label-permutation counts: the results of the CPU kernels
:func:`stdask.backend.cpu.interactions.discrete_batch` and :func:`~stdask.backend.cpu.interactions.sets_batch`,
integer for integer, with one thread per (LR, permutation).

The counts are integers and each permutation is a pure function of its Philox key and counter, so the only
work to match is the draw: the Philox4x64-10 block function and the buffered 32-bit draws are written here
again as device functions (uint64 arithmetic only: the 64 x 64 -> 128-bit product is built from 32-bit
halves, which the CUDA simulator runs too), and the partial Fisher-Yates shuffle keeps the positions it
displaced in a small per-thread int32 hash table instead of an ``arange(N)`` per thread. A thread writes its
exceedances with integer atomic adds, whose order does not matter.

Runs under ``NUMBA_ENABLE_CUDASIM=1`` on machines without a GPU (how the CPU test suite checks it).
"""
from __future__ import annotations

import numpy as np
from numba import cuda, uint64  # importing needs no GPU; kernels compile on first launch

from ...random_streams import _EIGHT, _LO32, _M0, _M1, _ONE, _S32, _W0, _W1  # the Philox4x64 constants

_THREADS = 64
#: most bytes of per-thread scratch (counts, labels, sample, hash table) on the device at once; also at most
#: half the free device memory
_SCRATCH_BYTES = 2 << 30
#: the most threads in one launch: enough to fill a large GPU
_MAX_ITEMS = 1 << 18

_TWO32 = np.uint64(1 << 32)
_ZERO = np.uint64(0)


# ---------------------------------------------------------------------------------------------------------
# random draws (bit for bit stdask.random_streams.philox4x64 / next_uint32)
# ---------------------------------------------------------------------------------------------------------
@cuda.jit(device=True)
def _mulhi(a, b):
    # high 64 bits of the 128-bit product a * b (uint64), from the four 32 x 32-bit partial products
    a0 = a & _LO32
    a1 = a >> _S32
    b0 = b & _LO32
    b1 = b >> _S32
    p01 = a0 * b1
    p10 = a1 * b0
    mid = ((a0 * b0) >> _S32) + (p01 & _LO32) + (p10 & _LO32)
    return a1 * b1 + (p01 >> _S32) + (p10 >> _S32) + (mid >> _S32)


@cuda.jit(device=True)
def _philox_fill(st, c0, c1, c2, c3, k0, k1):
    # st[0:4] = Philox4x64-10 of counter (c0..c3) under key (k0, k1)
    for r in range(10):
        if r > 0:
            k0 = k0 + _W0
            k1 = k1 + _W1
        hi0 = _mulhi(_M0, c0)
        lo0 = _M0 * c0
        hi1 = _mulhi(_M1, c2)
        lo1 = _M1 * c2
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    st[0] = c0
    st[1] = c1
    st[2] = c2
    st[3] = c3


@cuda.jit(device=True)
def _next_uint32(st, k0, k1, c1, c2, c3):
    # next 32-bit draw (as uint64) of stream (k0, k1; 0, c1, c2, c3); st: 6 words, rewound by st[4]=0, st[5]=8
    if st[5] >= _EIGHT:
        st[4] = st[4] + _ONE
        _philox_fill(st, st[4], c1, c2, c3, k0, k1)
        st[5] = _ZERO
    q = st[5]
    st[5] = q + _ONE
    w = st[q >> _ONE]
    if q & _ONE:
        return w >> _S32
    return w & _LO32


@cuda.jit(device=True)
def _hget(hk, hv, x):
    # value at position x of the partially shuffled arange(N): x unless the table holds it
    mask = hk.shape[0] - 1
    s = x & mask
    while hk[s] >= 0:
        if hk[s] == x:
            return hv[s]
        s = (s + 1) & mask
    return x


@cuda.jit(device=True)
def _hset(hk, hv, x, v):
    mask = hk.shape[0] - 1
    s = x & mask
    while hk[s] >= 0 and hk[s] != x:
        s = (s + 1) & mask
    hk[s] = x
    hv[s] = v


@cuda.jit(device=True)
def _sample(out, hk, hv, st, K, N, k0, k1, c1, c2, c3):
    """``out[:K]`` = the ordered sample of the CPU ``_sample`` (same draws, same Lemire rejection, same
    swaps). Step i reads positions i and j >= i and writes only position j (position i is final), so a
    table of at most K displaced positions replaces the CPU's ``arange(N)``."""
    for s in range(hk.shape[0]):
        hk[s] = -1
    st[4] = _ZERO
    st[5] = _EIGHT
    for i in range(K):
        m = uint64(N - i)
        prod = _next_uint32(st, k0, k1, c1, c2, c3) * m
        low = prod & _LO32
        if low < m:
            t = (_TWO32 - m) % m
            while low < t:
                prod = _next_uint32(st, k0, k1, c1, c2, c3) * m
                low = prod & _LO32
        j = i + np.int64(prod >> _S32)
        vi = _hget(hk, hv, i)
        out[i] = _hget(hk, hv, j)
        _hset(hk, hv, j, vi)


# ---------------------------------------------------------------------------------------------------------
# counting (the CPU kernels' _count_discrete, _count_sets, _lists, _exceed)
# ---------------------------------------------------------------------------------------------------------
@cuda.jit(device=True)
def _count_discrete(M, lab, eu, ev, mut, e0, e1, T):
    for x in range(M.shape[0]):
        M[x] = 0
    for e in range(e0, e1):
        a = lab[eu[e]]
        b = lab[ev[e]]
        M[a * T + b] += 1
        if mut[e] and a != b:
            M[b * T + a] += 1


@cuda.jit(device=True)
def _count_sets(M, pp, plist, pcount, K, eu, ev, mut, e0, e1, T):
    for i in range(K):  # presence lists of the K endpoints
        c = 0
        for t in range(T):
            if pp[i, t]:
                plist[i, c] = t
                c += 1
        pcount[i] = c
    for x in range(M.shape[0]):
        M[x] = 0
    for e in range(e0, e1):
        u = eu[e]
        v = ev[e]
        for x in range(pcount[u]):
            a = plist[u, x]
            for y in range(pcount[v]):
                M[a * T + plist[v, y]] += 1
        if mut[e]:
            for x in range(pcount[v]):
                a = plist[v, x]
                for y in range(pcount[u]):
                    b = plist[u, y]
                    if not (pp[u, a] and pp[v, b]):
                        M[a * T + b] += 1


@cuda.jit(device=True)
def _record(observe, raw, ge, j, M):
    # observed pass: raw[j] = M; permutation: ge[j, x] += 1 where 0 < raw[j, x] <= M[x]
    for x in range(M.shape[0]):
        if observe:
            raw[j, x] = M[x]
        elif raw[j, x] > 0 and M[x] >= raw[j, x]:
            cuda.atomic.add(ge, (j, x), 1)


@cuda.jit(device=True)
def _item(lrs, w, observe, n_perms, e_ptr, k_ptr):
    # work item w: LR j (its edges e0..e1-1, endpoints ka..ka+K-1) and permutation k (observed pass: LR w)
    if observe:
        j = lrs[w]
        k = _ZERO
    else:
        j = lrs[w // n_perms]
        k = uint64(w % n_perms)
    return j, k, e_ptr[j], e_ptr[j + 1], k_ptr[j], k_ptr[j + 1] - k_ptr[j]


@cuda.jit
def _discrete_kernel(codes, T, e_ptr, eu, ev, mut, k_ptr, endpoints, keys, n_perms, c3, lrs, first, n_items,
                     observe, raw, ge, Ms, labs, samps, hks, hvs):
    t = cuda.grid(1)
    if t >= n_items:
        return
    j, k, e0, e1, ka, K = _item(lrs, first + t, observe, n_perms, e_ptr, k_ptr)
    lab, samp = labs[t], samps[t]
    if observe:
        for i in range(K):
            lab[i] = codes[endpoints[ka + i]]
    else:
        st = cuda.local.array(6, uint64)
        _sample(samp, hks[t], hvs[t], st, K, codes.shape[0], keys[j, 0], keys[j, 1], _ZERO, k, c3)
        for i in range(K):
            lab[i] = codes[samp[i]]
    _count_discrete(Ms[t], lab, eu, ev, mut, e0, e1, T)
    _record(observe, raw, ge, j, Ms[t])


@cuda.jit
def _sets_kernel(pres, columns, e_ptr, eu, ev, mut, k_ptr, endpoints, keys, n_perms, c3, lrs, first, n_items,
                 observe, raw, ge, Ms, pps, plists, pcounts, samps, hks, hvs):
    t = cuda.grid(1)
    if t >= n_items:
        return
    j, k, e0, e1, ka, K = _item(lrs, first + t, observe, n_perms, e_ptr, k_ptr)
    T = pres.shape[1]
    pp, samp = pps[t], samps[t]
    if observe:
        for i in range(K):
            for c in range(T):
                pp[i, c] = pres[endpoints[ka + i], c]
    else:
        st = cuda.local.array(6, uint64)
        for c in range(T if columns else 1):
            # columns: type c has its own permutation (counter word 1 = c); rows: one for all types
            _sample(samp, hks[t], hvs[t], st, K, pres.shape[0], keys[j, 0], keys[j, 1], uint64(c), k, c3)
            for i in range(K):
                if columns:
                    pp[i, c] = pres[samp[i], c]
                else:
                    for d in range(T):
                        pp[i, d] = pres[samp[i], d]
    _count_sets(Ms[t], pp, plists[t], pcounts[t], K, eu, ev, mut, e0, e1, T)
    _record(observe, raw, ge, j, Ms[t])


# ---------------------------------------------------------------------------------------------------------
# host side
# ---------------------------------------------------------------------------------------------------------
def _launch(kernel, head: tuple, scratch, batch: tuple, keys: np.ndarray, n_perms: int, tag: int, TT: int
            ) -> tuple[np.ndarray, np.ndarray]:
    """Both passes of a counting kernel: the observed counts (one thread per LR), then the permutations
    (one thread per (LR with a non-zero observed count, permutation)), in launches whose per-thread scratch
    fits :data:`_SCRATCH_BYTES`.

    ``head``: the kernel's leading (data) arguments; ``scratch(maxk, cap)``: (bytes per thread, function
    of a thread count giving the per-thread scratch device arrays); ``batch``: (e_ptr, eu, ev, mut, k_ptr,
    endpoints) as the CPU kernel takes them.
    """
    e_ptr, eu, ev, mut, k_ptr, endpoints = batch
    if head[0].shape[0] >= 2**31:
        raise ValueError(f"{head[0].shape[0]} spots: the GPU permutation kernels hold positions as int32 (< 2**31)")
    n_lr = len(e_ptr) - 1
    raw = np.zeros((n_lr, TT), np.int64)
    if n_lr == 0:
        return raw, raw.copy()
    maxk = max(1, int(np.diff(k_ptr).max()))
    cap = 1 << (2 * maxk - 1).bit_length()  # power of two >= 2 K: the hash table stays at most half full
    per_thread, alloc = scratch(maxk, cap)
    budget = min(_SCRATCH_BYTES, cuda.current_context().get_memory_info()[0] // 2)
    chunk = max(1, min(_MAX_ITEMS, budget // per_thread))
    dev = [cuda.to_device(np.ascontiguousarray(a, dtype=dt)) for a, dt in
           zip(batch, (np.int64, np.int64, np.int64, np.uint8, np.int64, np.int64))]
    d_keys = cuda.to_device(np.ascontiguousarray(keys, dtype=np.uint64).reshape(-1, 2))
    d_raw = cuda.to_device(raw)
    d_ge = cuda.to_device(raw)
    for observe in (True, False):
        if observe:
            lrs, n_items = np.arange(n_lr, dtype=np.int64), n_lr
        else:
            raw = d_raw.copy_to_host()
            lrs = np.flatnonzero(raw.any(axis=1)).astype(np.int64)  # as the CPU: no zero-count LR is permuted
            n_items = len(lrs) * int(n_perms)
        if n_items == 0:
            break
        d_lrs = cuda.to_device(lrs)
        work = alloc(min(chunk, n_items))
        for first in range(0, n_items, chunk):
            n = min(chunk, n_items - first)
            kernel[(n + _THREADS - 1) // _THREADS, _THREADS](
                *head, *dev, d_keys, int(n_perms), np.uint64(tag), d_lrs, first, n, observe, d_raw, d_ge, *work)
    return raw, d_ge.copy_to_host()


def discrete_batch(codes: np.ndarray, T: int, e_ptr: np.ndarray, eu: np.ndarray, ev: np.ndarray, mut: np.ndarray,
                   k_ptr: np.ndarray, endpoints: np.ndarray, keys: np.ndarray, n_perms: int, tag: int
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Observed counts and permutation exceedances of a batch of LRs, one label per spot, on the GPU.

    Parameters and returns as :func:`stdask.backend.cpu.interactions.discrete_batch`: ``codes`` (N,) int type
    codes; ``T`` types; the batch's edges; ``keys`` (n_lr, 2) uint64; ``n_perms``; counter word 3 ``tag``.
    Returns raw, ge: (n_lr, T*T) int64, equal to the CPU kernel's.
    """
    TT = int(T) * int(T)

    def scratch(maxk, cap):
        def alloc(n):
            return (cuda.device_array((n, TT), np.int64), cuda.device_array((n, maxk), np.int32),
                    cuda.device_array((n, maxk), np.int32), cuda.device_array((n, cap), np.int32),
                    cuda.device_array((n, cap), np.int32))
        return 8 * TT + 4 * (2 * maxk + 2 * cap), alloc

    head = (cuda.to_device(np.ascontiguousarray(codes, dtype=np.int64)), int(T))
    return _launch(_discrete_kernel, head, scratch, (e_ptr, eu, ev, mut, k_ptr, endpoints), keys, n_perms, tag, TT)


def sets_batch(pres: np.ndarray, columns: bool, e_ptr: np.ndarray, eu: np.ndarray, ev: np.ndarray, mut: np.ndarray,
               k_ptr: np.ndarray, endpoints: np.ndarray, keys: np.ndarray, n_perms: int, tag: int
               ) -> tuple[np.ndarray, np.ndarray]:
    """As :func:`discrete_batch` for spots holding any set of types, on the GPU.

    Parameters and returns as :func:`stdask.backend.cpu.interactions.sets_batch`: ``pres`` (N, T) uint8
    presence; ``columns`` permutes each type's column on its own (else the rows). Returns raw, ge:
    (n_lr, T*T) int64, equal to the CPU kernel's.
    """
    T = int(pres.shape[1])
    TT = T * T

    def scratch(maxk, cap):
        def alloc(n):
            return (cuda.device_array((n, TT), np.int64), cuda.device_array((n, maxk, T), np.uint8),
                    cuda.device_array((n, maxk, T), np.int32), cuda.device_array((n, maxk), np.int32),
                    cuda.device_array((n, maxk), np.int32), cuda.device_array((n, cap), np.int32),
                    cuda.device_array((n, cap), np.int32))
        return 8 * TT + 4 * (maxk * T + 2 * maxk + 2 * cap) + maxk * T, alloc

    head = (cuda.to_device(np.ascontiguousarray(pres, dtype=np.uint8)), bool(columns))
    return _launch(_sets_kernel, head, scratch, (e_ptr, eu, ev, mut, k_ptr, endpoints), keys, n_perms, tag, TT)
