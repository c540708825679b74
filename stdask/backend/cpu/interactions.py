"""Numba kernels of ``run_cci``: qualifying spot edges per LR, and the label-permutation counts.

Random numbers come from the compiled Philox4x64-10 streams of :mod:`stdask.random_streams`: the stream of
(key, counter base ``(0, c1, c2, c3)``) is bit for bit ``np.random.Philox(key=key, counter=[0, c1, c2,
c3]).random_raw()``, each 64-bit output giving two 32-bit draws, its low half first. A permutation is therefore
a pure function of its key and counter, never of the worker, the task or the order in which LRs are processed.

All kernels are serial and release the GIL: dask runs one LR batch per thread, and a numba parallel
region inside a threaded dask worker would oversubscribe the cores.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from ...random_streams import next_uint32, rewind

_LO32 = np.uint64(0xFFFFFFFF)
_S32 = np.uint64(32)
_TWO32 = np.uint64(1 << 32)

#: counter word 3 of every run_cci stream ("run_cci" in ASCII): keeps these streams disjoint from the
#: random-pair streams of ``run`` (same key, counter words 1-3 zero)
STREAM_TAG = 0x72756E5F636369


@njit(inline="always")
def _sample(out, swaps, pos, st, K, N, k0, k1, c1, c2, c3):
    """An ordered sample of ``K`` distinct values of ``range(N)`` (N < 2**32), uniform over all such
    samples, from the stream (k0, k1; 0, c1, c2, c3).

    A partial Fisher-Yates shuffle of ``pos`` (which holds ``0..N-1`` on entry and again on exit: the
    swaps are undone), step i swapping i with ``i + r``, r uniform on [0, N - i) by Lemire's
    multiply-shift with rejection (exactly uniform). O(K) time. ``out[i]`` is where position i of the
    permutation maps to: a uniform random permutation of N restricted to K given positions has exactly
    this distribution.
    """
    rewind(st)
    for i in range(K):
        m = np.uint64(N - i)
        prod = next_uint32(st, k0, k1, c1, c2, c3) * m
        low = prod & _LO32
        if low < m:
            t = (_TWO32 - m) % m
            while low < t:
                prod = next_uint32(st, k0, k1, c1, c2, c3) * m
                low = prod & _LO32
        j = i + np.int64(prod >> _S32)
        tmp = pos[i]
        pos[i] = pos[j]
        pos[j] = tmp
        swaps[i] = j
        out[i] = pos[i]
    for i in range(K - 1, -1, -1):
        j = swaps[i]
        tmp = pos[i]
        pos[i] = pos[j]
        pos[j] = tmp


@njit(cache=True, nogil=True)
def sample_positions(K, N, k0, k1, c1, c2, c3):
    """:func:`_sample` on a fresh ``arange(N)``; for tests."""
    pos = np.arange(N)
    out = np.empty(K, np.int64)
    swaps = np.empty(K, np.int64)
    st = np.zeros(6, np.uint64)
    _sample(out, swaps, pos, st, K, N, k0, k1, c1, c2, c3)
    return out


# ---------------------------------------------------------------------------------------------------------
# qualifying edges
# ---------------------------------------------------------------------------------------------------------
@njit(inline="always")
def _mark(flags, ptr, rows, j, value):
    # flags[r] = value for every row r of column j of the CSC-like (ptr, rows)
    for p in range(ptr[j], ptr[j + 1]):
        flags[rows[p]] = value


@njit(cache=True, nogil=True)
def build_edges(n_obs, g_ptr, g_idx, g_row, within, s_ptr, s_rows, x_ptr, x_rows, lgene, rgene, cap):
    """Qualifying oriented edges of every LR, built once (they do not depend on the labels).

    Edge (u -> v) qualifies iff v in N(u), u significant, and (L_u and R_v) or (R_u and L_v). The condition
    is symmetric in u and v and the graph is symmetric, so the reverse edge also qualifies iff v is
    significant (a *mutual* pair). A mutual pair is stored once, from its smaller row; a one-way edge is
    stored oriented sender -> neighbour; within-spot mode gives self-edges (u -> u), never mutual.

    Parameters
    ----------
    n_obs
        N.
    g_ptr, g_idx
        Neighbour lists as CSR (n_lists + 1,), (nnz,) of global rows, from a symmetric graph without self
        loops; unused when ``within``. The whole graph (``n_lists = N``) or the lists of some rows only.
    g_row
        (len(s_rows),) the list of each significant row in ``g_ptr`` (``s_rows`` itself for a whole graph).
    within
        Within-spot mode: N(u) = {u}.
    s_ptr, s_rows
        Significant rows of each LR, CSC-like: LR j's rows are ``s_rows[s_ptr[j]:s_ptr[j+1]]`` (ascending).
    x_ptr, x_rows
        Rows with expression > 0 of each needed gene, CSC-like.
    lgene, rgene
        (n_lr,) gene (column of ``x_ptr``) of each LR's ligand and receptor.
    cap
        Upper bound of the total number of edges (sum over LRs of the significant rows' degrees).

    Returns
    -------
    e_ptr (n_lr + 1,) int64; eu, ev (E,) int64 local endpoint ids (per LR, 0..K_j-1 in order of first
    appearance); mutual (E,) uint8; k_ptr (n_lr + 1,) int64; endpoints (sum K_j,) int64 rows.
    """
    n_lr = lgene.shape[0]
    lm = np.zeros(n_obs, np.uint8)
    rm = np.zeros(n_obs, np.uint8)
    sm = np.zeros(n_obs, np.uint8)
    loc = np.full(n_obs, -1, np.int64)
    eu = np.empty(cap, np.int64)
    ev = np.empty(cap, np.int64)
    mut = np.empty(cap, np.uint8)
    endpoints = np.empty(2 * cap, np.int64)
    e_ptr = np.zeros(n_lr + 1, np.int64)
    k_ptr = np.zeros(n_lr + 1, np.int64)
    E = 0
    K = 0
    self_nb = np.empty(1, np.int64)
    for j in range(n_lr):
        gl, gr = lgene[j], rgene[j]
        _mark(lm, x_ptr, x_rows, gl, 1)
        _mark(rm, x_ptr, x_rows, gr, 1)
        _mark(sm, s_ptr, s_rows, j, 1)
        k0 = K
        for p in range(s_ptr[j], s_ptr[j + 1]):
            u = s_rows[p]
            if within:
                self_nb[0] = u
                nbrs = self_nb
            else:
                g = g_row[p]
                nbrs = g_idx[g_ptr[g]:g_ptr[g + 1]]
            for q in range(nbrs.shape[0]):
                v = np.int64(nbrs[q])
                if not ((lm[u] and rm[v]) or (rm[u] and lm[v])):
                    continue
                m = (v != u) and sm[v] == 1
                if m and v < u:
                    continue  # the mutual pair is stored from v
                if loc[u] < 0:
                    loc[u] = K - k0
                    endpoints[K] = u
                    K += 1
                if loc[v] < 0:
                    loc[v] = K - k0
                    endpoints[K] = v
                    K += 1
                eu[E] = loc[u]
                ev[E] = loc[v]
                mut[E] = 1 if m else 0
                E += 1
        e_ptr[j + 1] = E
        k_ptr[j + 1] = K
        # reset the marks
        _mark(lm, x_ptr, x_rows, gl, 0)
        _mark(rm, x_ptr, x_rows, gr, 0)
        _mark(sm, s_ptr, s_rows, j, 0)
        for p in range(k0, K):
            loc[endpoints[p]] = -1
    return e_ptr, eu[:E].copy(), ev[:E].copy(), mut[:E].copy(), k_ptr, endpoints[:K].copy()


# ---------------------------------------------------------------------------------------------------------
# counting
# ---------------------------------------------------------------------------------------------------------
@njit(inline="always")
def _batch_arrays(N, TT, k_ptr):
    """Outputs and work arrays of one batch of LRs, shared by both counting kernels.

    Returns raw, ge (n_lr, TT) int64 zeros; maxk, the most endpoints of one LR; pos = arange(N) and the
    (6,) uint64 stream state of :func:`_sample`; samp, swaps (maxk,) int64; M (TT,) int64 zeros; nz (TT,) int64.
    """
    n_lr = k_ptr.shape[0] - 1
    maxk = 0
    for j in range(n_lr):
        maxk = max(maxk, k_ptr[j + 1] - k_ptr[j])
    return (np.zeros((n_lr, TT), np.int64), np.zeros((n_lr, TT), np.int64), maxk, np.arange(N),
            np.zeros(6, np.uint64), np.empty(maxk, np.int64), np.empty(maxk, np.int64), np.zeros(TT, np.int64),
            np.empty(TT, np.int64))


@njit(inline="always")
def _lr_range(e_ptr, k_ptr, j):
    # LR j of the batch: its edges e0..e1-1 and its K endpoints ka..ka+K-1
    return e_ptr[j], e_ptr[j + 1], k_ptr[j], k_ptr[j + 1] - k_ptr[j]


@njit(inline="always")
def _observe(M, raw_j, nz):
    # move the observed counts M into raw_j (M is left zero) and list their non-zero cells in nz[:n_nz]
    n_nz = 0
    for x in range(M.shape[0]):
        raw_j[x] = M[x]
        if M[x] > 0:
            nz[n_nz] = x
            n_nz += 1
        M[x] = 0
    return n_nz


@njit(inline="always")
def _exceed(ge_j, raw_j, M, nz, n_nz):
    # one permutation's counts M: count, over the observed non-zero cells, those reaching the observed value
    for y in range(n_nz):
        x = nz[y]
        if M[x] >= raw_j[x]:
            ge_j[x] += 1


@njit(inline="always")
def _count_discrete(M, lab, eu, ev, mut, e0, e1, T):
    # oriented edges by (type(u), type(v)); a mutual same-type pair counts once on the diagonal
    for e in range(e0, e1):
        a = lab[eu[e]]
        b = lab[ev[e]]
        M[a * T + b] += 1
        if mut[e] and a != b:
            M[b * T + a] += 1


@njit(cache=True, nogil=True)
def discrete_batch(codes, T, e_ptr, eu, ev, mut, k_ptr, endpoints, keys, n_perms, tag):
    """Observed counts and permutation exceedances for a batch of LRs, one label per spot.

    Parameters
    ----------
    codes
        (N,) int64 type code of each spot (in the permutation's index space).
    T
        Number of types.
    e_ptr, eu, ev, mut, k_ptr, endpoints
        The batch's edges (as :func:`build_edges` returns them, pointers rebased to 0); ``endpoints`` in
        the same index space as ``codes``.
    keys
        (n_lr, 2) uint64 Philox key of each LR (seed, LR-name hash).
    n_perms
        Permutations; permutation k of LR j uses counter base (0, 0, k, ``tag``).
    tag
        Counter word 3.

    Returns
    -------
    raw (n_lr, T*T) int64 observed counts M; ge (n_lr, T*T) int64 #{k : M^k >= M} (entries with M = 0
    are not compared and stay 0).
    """
    N = codes.shape[0]
    n_lr = e_ptr.shape[0] - 1
    TT = T * T
    raw, ge, maxk, pos, st, samp, swaps, M, nz = _batch_arrays(N, TT, k_ptr)
    lab = np.empty(maxk, np.int64)
    c1 = np.uint64(0)
    c3 = np.uint64(tag)
    for j in range(n_lr):
        e0, e1, ka, K = _lr_range(e_ptr, k_ptr, j)
        for i in range(K):
            lab[i] = codes[endpoints[ka + i]]
        _count_discrete(M, lab, eu, ev, mut, e0, e1, T)
        n_nz = _observe(M, raw[j], nz)
        if n_nz == 0 or n_perms == 0:
            continue
        k0, k1 = keys[j, 0], keys[j, 1]
        small = TT <= 2 * (e1 - e0)
        for k in range(n_perms):
            _sample(samp, swaps, pos, st, K, N, k0, k1, c1, np.uint64(k), c3)
            for i in range(K):
                lab[i] = codes[samp[i]]
            _count_discrete(M, lab, eu, ev, mut, e0, e1, T)
            _exceed(ge[j], raw[j], M, nz, n_nz)
            if small:
                M[:] = 0
            else:
                for e in range(e0, e1):
                    a = lab[eu[e]]
                    b = lab[ev[e]]
                    M[a * T + b] = 0
                    M[b * T + a] = 0
    return raw, ge


@njit(inline="always")
def _count_sets(M, pp, plist, pcount, eu, ev, mut, e0, e1, T):
    # one edge adds to every (a, b) with a present in u and b in v; a mutual pair adds the union of
    # P(u) x P(v) and P(v) x P(u), each cell once
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


@njit(inline="always")
def _lists(pp, plist, pcount, K, T):
    for i in range(K):
        c = 0
        for t in range(T):
            if pp[i, t]:
                plist[i, c] = t
                c += 1
        pcount[i] = c


@njit(cache=True, nogil=True)
def sets_batch(pres, columns, e_ptr, eu, ev, mut, k_ptr, endpoints, keys, n_perms, tag):
    """As :func:`discrete_batch` for spots holding any set of types (mixture proportions > cutoff).

    Parameters
    ----------
    pres
        (N, T) uint8: type t present in spot i.
    columns
        True: permute each column with its own permutation (mixture data; column t of permutation k uses
        counter base (0, t, k, tag)). False: permute rows, one permutation for all columns (counter base
        (0, 0, k, tag), the same draws as :func:`discrete_batch`).
    """
    N = pres.shape[0]
    T = pres.shape[1]
    n_lr = e_ptr.shape[0] - 1
    TT = T * T
    raw, ge, maxk, pos, st, samp, swaps, M, nz = _batch_arrays(N, TT, k_ptr)
    pp = np.zeros((maxk, T), np.uint8)
    plist = np.empty((maxk, T), np.int64)
    pcount = np.empty(maxk, np.int64)
    c3 = np.uint64(tag)
    for j in range(n_lr):
        e0, e1, ka, K = _lr_range(e_ptr, k_ptr, j)
        for i in range(K):
            for t in range(T):
                pp[i, t] = pres[endpoints[ka + i], t]
        _lists(pp, plist, pcount, K, T)
        _count_sets(M, pp, plist, pcount, eu, ev, mut, e0, e1, T)
        n_nz = _observe(M, raw[j], nz)
        if n_nz == 0 or n_perms == 0:
            continue
        k0, k1 = keys[j, 0], keys[j, 1]
        for k in range(n_perms):
            if columns:
                for t in range(T):
                    _sample(samp, swaps, pos, st, K, N, k0, k1, np.uint64(t), np.uint64(k), c3)
                    for i in range(K):
                        pp[i, t] = pres[samp[i], t]
            else:
                _sample(samp, swaps, pos, st, K, N, k0, k1, np.uint64(0), np.uint64(k), c3)
                for i in range(K):
                    for t in range(T):
                        pp[i, t] = pres[samp[i], t]
            _lists(pp, plist, pcount, K, T)
            _count_sets(M, pp, plist, pcount, eu, ev, mut, e0, e1, T)
            _exceed(ge[j], raw[j], M, nz, n_nz)
            M[:] = 0
    return raw, ge
