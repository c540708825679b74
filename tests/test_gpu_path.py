"""The GPU variants of run_cci's permutation counts and of PCA's exact integer gram equal the CPU kernels,
integer for integer, under numba's CUDA simulator (no GPU needed; ``STDASK_TEST_REAL_GPU=1`` runs the same
checks compiled on a GPU); the neighbour sums' sparse product, written once for scipy and cupyx, is scipy's.

numba reads ``NUMBA_ENABLE_CUDASIM`` when it is first imported, so each check runs in a subprocess with the
variable set, as tests/test_backend_gpu.py does; the rest of the suite keeps the real numba.cuda.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import scipy.sparse as sp

from stdask.tl.cci.neighbourhood import sparse_modules, sparse_product

pytestmark = pytest.mark.timeout(300)

COMMON = textwrap.dedent(r"""
    import sys, warnings
    import numpy as np, scipy.sparse as sp
    warnings.filterwarnings("ignore")  # the simulator runs uint64 arithmetic on numpy scalars, which warn on wrap
    from stdask.backend import get_kernel

    def pair(name):
        cpu, gpu = get_kernel(name, "cpu"), get_kernel(name, "gpu")
        assert gpu.__module__.startswith("stdask.backend.gpu."), (name, gpu.__module__)
        return cpu, gpu

    def same(a, b, what):
        assert len(a) == len(b), what
        for x, y in zip(a, b):
            assert x.dtype == y.dtype and x.shape == y.shape and np.array_equal(x, y), (what, x, y)
""")

INTERACTIONS = textwrap.dedent(r"""
    from numba import cuda, uint64
    from stdask.backend.cpu.interactions import STREAM_TAG, sample_positions
    from stdask.backend.gpu import interactions as gi
    discrete = pair("discrete_batch")
    sets = pair("sets_batch")

    # the sampler alone: the CPU's partial Fisher-Yates sample, value for value (a hash table for arange(N))
    @cuda.jit
    def sample_kernel(out, hk, hv, K, N, k0, k1, c1, c2, c3):
        st = cuda.local.array(6, uint64)
        gi._sample(out, hk, hv, st, K, N, k0, k1, c1, c2, c3)

    for K, N, c2 in [(1, 1, 0), (5, 5, 3), (7, 1000, 1), (20, 23, 9)]:
        out = np.full(K, -1, np.int64)
        cap = 1 << (2 * K - 1).bit_length()
        args = (np.uint64(11), np.uint64(2**63 + 5), np.uint64(2), np.uint64(c2), np.uint64(STREAM_TAG))
        sample_kernel[1, 1](out, np.empty(cap, np.int64), np.empty(cap, np.int64), K, N, *args)
        ref = sample_positions(K, N, *args)
        assert np.array_equal(out, ref), (K, N, out, ref)

    # a random graph's qualifying edges, as run_cci builds them
    rng = np.random.default_rng(0)
    N, T, n_lr = 30, 3, 4
    a = sp.random(N, N, density=0.15, random_state=1, format="csr")
    g = sp.csr_matrix(((a + a.T) > 0).astype(np.int8))
    g.setdiag(0); g.eliminate_zeros(); g.sort_indices()
    s = sp.csc_matrix(sp.random(N, n_lr, density=0.4, random_state=2) > 0); s.sort_indices()
    x = sp.csc_matrix(sp.random(N, 2 * n_lr, density=0.5, random_state=3) > 0); x.sort_indices()
    i64 = lambda v: v.astype(np.int64)
    batch = get_kernel("build_edges", "cpu")(
        N, i64(g.indptr), i64(g.indices), i64(s.indices), False, i64(s.indptr), i64(s.indices),
        i64(x.indptr), i64(x.indices), np.arange(n_lr), np.arange(n_lr, 2 * n_lr),
        int(np.diff(g.indptr)[s.indices].sum()))
    keys = np.array([[7, 2**64 - 1 - j] for j in range(n_lr)], dtype=np.uint64)
    codes = rng.integers(0, T, N)
    pres = (rng.random((N, T)) < 0.4).astype(np.uint8)
    e_ptr, eu, ev, mut, k_ptr, endpoints = batch
    assert e_ptr[-1] > 20 and mut.any()  # a non-trivial batch, mutual pairs included

    # observed counts against an independent count: oriented edges by (type(u), type(v)), mutual off-diagonal twice
    raw, ge = discrete[1](codes, T, *batch, keys, 12, STREAM_TAG)
    for j in range(n_lr):
        e = slice(e_ptr[j], e_ptr[j + 1])
        lab = codes[endpoints[k_ptr[j]:k_ptr[j + 1]]]
        a_, b_, m_ = lab[eu[e]], lab[ev[e]], mut[e].astype(bool)
        M = np.bincount(a_ * T + b_, minlength=T * T) + np.bincount((b_ * T + a_)[m_ & (a_ != b_)], minlength=T * T)
        assert np.array_equal(raw[j], M), (j, raw[j], M)
    same(discrete[0](codes, T, *batch, keys, 12, STREAM_TAG), (raw, ge), "discrete")
    assert 0 < ge.sum() < 12 * (raw > 0).sum()  # the comparison is not trivial
    for columns in (False, True):
        cpu = sets[0](pres, columns, *batch, keys, 8, STREAM_TAG)
        same(cpu, sets[1](pres, columns, *batch, keys, 8, STREAM_TAG), ("sets", columns))
        assert cpu[1].sum() > 0
    # edge cases: no permutations; one LR; an LR without edges next to one with; an empty batch
    same(discrete[0](codes, T, *batch, keys, 0, STREAM_TAG), discrete[1](codes, T, *batch, keys, 0, STREAM_TAG), "n0")
    one = (e_ptr[:2], eu[:e_ptr[1]], ev[:e_ptr[1]], mut[:e_ptr[1]], k_ptr[:2], endpoints[:k_ptr[1]])
    same(discrete[0](codes, T, *one, keys[:1], 5, STREAM_TAG), discrete[1](codes, T, *one, keys[:1], 5, STREAM_TAG), "one")
    gap = (np.array([0, 0, e_ptr[1]]), *one[1:4], np.array([0, 0, k_ptr[1]]), one[5])
    got = sets[1](pres, True, *gap, keys[:2], 5, STREAM_TAG)
    assert not got[0][0].any() and not got[1][0].any()
    same(sets[0](pres, True, *gap, keys[:2], 5, STREAM_TAG), got, "gap")
    empty = (np.zeros(1, np.int64), *(np.zeros(0, np.int64),) * 2, np.zeros(0, np.uint8), np.zeros(1, np.int64),
             np.zeros(0, np.int64))
    same(discrete[0](codes, T, *empty, keys[:0], 5, STREAM_TAG), discrete[1](codes, T, *empty, keys[:0], 5, STREAM_TAG),
         "empty")
    # within-spot mode: self-edges only (K = number of significant spots, no mutual pairs)
    self_e = (np.array([0, 3]), np.arange(3), np.arange(3), np.zeros(3, np.uint8), np.array([0, 3]), np.array([4, 9, 17]))
    same(discrete[0](codes, T, *self_e, keys[:1], 9, STREAM_TAG), discrete[1](codes, T, *self_e, keys[:1], 9, STREAM_TAG),
         "within")
    print("ok")
""")

GRAM = textwrap.dedent(r"""
    from stdask.pp._gram import column_exponents, slice_bits, y_exponents
    gram, xtxw = pair("csr_gram"), pair("csr_xtxw")
    rng = np.random.default_rng(1)
    cases = [(25, 10, 0.4, np.float32), (1, 6, 0.9, np.float64), (0, 4, 0.5, np.float64), (12, 5, 0.0, np.float32),
             (8, 9, 1.0, np.float64)]
    for n, g, density, dtype in cases:
        X = sp.random(n, g, density=density, random_state=n + g, format="csr",
                      data_rvs=lambda k: rng.normal(size=k) * 10.0 ** rng.integers(-3, 4, k)).astype(dtype)
        X.sort_indices()
        exps = column_exponents(np.abs(X).max(axis=0).toarray().ravel() if n else np.zeros(g))
        b = slice_bits(max(n, 1))
        scale = np.ldexp(1.0, b - exps)
        args = (X.indptr, X.indices, X.data, scale, b, g)
        cpu = gram[0](*args)
        same(cpu, gram[1](*args), ("gram", n, g))
        if n and density:
            assert np.abs(cpu[0][..., 0]).max() > 2 ** (2 * b - 4)  # the high limbs are in use
        W = rng.normal(size=(g, 4))
        yexps = y_exponents(float(np.abs(X).sum(axis=1).max()) if n else 0.0, W)
        args = (X.indptr, X.indices, X.data, W, scale, np.ldexp(1.0, b - yexps), b)
        same(xtxw[0](*args), xtxw[1](*args), ("xtxw", n, g))
    # X W's row sum in another order gives other limbs for this row (its low limb sits at a rounding tie):
    # the GPU must sum in the CPU's order, with products no FMA fuses
    X = sp.csr_matrix(np.array([[1.0, 3 * 2.0**-53, 2.0**-40 - 2.0**-52]]))
    W, b = np.ones((3, 1)), slice_bits(1)
    yscale = np.ldexp(1.0, b - y_exponents(float(abs(X).sum()), W))
    limbs = lambda y: (np.rint(y * yscale[0]), np.rint((y * yscale[0] - np.rint(y * yscale[0])) * 2.0**b))
    assert limbs((X.data[0] + X.data[1]) + X.data[2]) != limbs((X.data[2] + X.data[1]) + X.data[0])
    args = (X.indptr, X.indices, X.data, W, np.ldexp(1.0, b - column_exponents(X.data)), yscale, b)
    same(xtxw[0](*args), xtxw[1](*args), "xtxw order")
    print("ok")
""")

NEIGHBOURS = textwrap.dedent(r"""
    # the neighbour means of the GPU backend (the scipy code path under the simulator) are the CPU's
    from stdask.dataset import Tile
    from stdask.tl.cci import neighbourhood as nbm
    import stdask
    assert nbm.sparse_modules("gpu")[1] is sp
    rng = np.random.default_rng(2)
    rows = np.concatenate([np.arange(0, 80, 2), np.arange(1, 30, 2)])
    X = sp.random(len(rows), 12, density=0.4, random_state=4, format="csr",  # float32 sums would round
                  data_rvs=lambda k: rng.random(k) * 10.0 ** rng.integers(-4, 5, k)).astype(np.float32)
    tile = Tile(0, rows, 40, X, rng.random((len(rows), 2)) * 6)
    for radius in (0.0, 1.2):
        nb = nbm.tile_neighbourhood(tile, radius)
        cpu = nbm.neighbour_means_sparse(nb, X, 3, 30, backend="cpu")
        with stdask.settings.override(backend="gpu"):
            gpu = nbm.neighbour_means_sparse(nb, X, 3, 30)
        assert (cpu != gpu).nnz == 0 and cpu.nnz > 0
        assert np.array_equal(nbm.neighbour_means(nb, X, backend="cpu"), nbm.neighbour_means(nb, X, backend="gpu"))
    print("ok")
""")


END_TO_END = textwrap.dedent(r"""
    # the analyses on backend="gpu" reach the GPU kernels and give the CPU's results: LR hotspots (background
    # counts, p-values, summary), run_cci (raw counts, p-values, significance) and PCA
    import pathlib, tempfile
    import stdask
    from stdask.backend.gpu import cci as gcci, gram as ggram, interactions as gint
    from stdask.datasets import SyntheticSource, synthetic_slice
    from stdask.models.spaseg.runtime import resolve_device
    from stdask.tl import cci

    called = {}
    for mod, names in ((gcci, ["background_counts"]), (gint, ["discrete_batch", "sets_batch"]),
                       (ggram, ["csr_gram", "csr_xtxw"])):
        for name in names:
            def wrap(*a, _f=getattr(mod, name), _n=name, **k):
                called[_n] = called.get(_n, 0) + 1
                return _f(*a, **k)
            setattr(mod, name, wrap)  # before the registry loads (and caches) it
    d = pathlib.Path(tempfile.mkdtemp())
    sl = synthetic_slice(n_obs=150, n_genes=200, layout="visium", seed=1, lr_fraction=0.5)
    ds = stdask.read(stdask.ingest(SyntheticSource(sl, obs_columns=("cell_type",)), d / "s.zarr", progress=False))
    lrs = cci.load_lrs("connectomeDB2020_lit")
    out = {}
    for backend in ("cpu", "gpu"):
        with stdask.settings.override(backend=backend):
            res = cci.run(ds, lrs, min_spots=3, n_pairs=100, scheduler="sync", progress=False, verbose=False,
                          copy=True)
            inter = cci.run_cci(ds, "cell_type", result=res, n_perms=20, min_spots=2, scheduler="sync",
                                progress=False, copy=True)
            pcs = stdask.pp.pca(ds, n_comps=5, layer="X", copy=True, progress=False).get_result("obsm", "X_pca")
        out[backend] = (res, inter, np.asarray(pcs))
    assert set(called) == {"background_counts", "discrete_batch", "csr_gram"}, called
    (a, ia, pa), (b, ib, pb) = out["cpu"], out["gpu"]
    assert len(a.lr_summary) > 0 and a.lr_summary.equals(b.lr_summary)
    assert a.counts.nnz > 0 and (a.counts != b.counts).nnz == 0 and (a.padj != b.padj).nnz == 0
    assert ia.raw.sum() > 0 and all(np.array_equal(getattr(ia, k), getattr(ib, k)) for k in ("raw", "pvals", "sig"))
    assert np.array_equal(pa, pb)
    assert resolve_device("cpu") == "cpu"
    with stdask.settings.override(backend="gpu"):  # a CPU build of torch: no silent training on the CPU
        try:
            resolve_device(None)
            raise AssertionError("backend='gpu' without CUDA in torch must raise")
        except RuntimeError as e:
            assert "CUDA" in str(e)
    print("ok")
""")


@pytest.mark.parametrize("section", ["INTERACTIONS", "GRAM", "NEIGHBOURS", "END_TO_END"])
def test_gpu_variant_equals_cpu(section):
    env = dict(os.environ)
    if os.environ.get("STDASK_TEST_REAL_GPU") != "1":
        env["NUMBA_ENABLE_CUDASIM"] = "1"
    proc = subprocess.run([sys.executable, "-c", COMMON + globals()[section]], capture_output=True, text=True,
                          env=env, timeout=280)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().endswith("ok")


def test_sparse_product_sums_in_stored_order():
    """scipy (the CPU path of the written-once product) sums each row's neighbours in W's stored order: the
    same bits as a sequential float64 sum in that order, whatever the column order of the entries."""
    xp, xsp = sparse_modules("cpu")
    assert xp is np and xsp is sp
    rng = np.random.default_rng(3)
    n, m, k = 30, 50, 8
    # values of very different magnitudes, so that the order of a sum shows in its bits
    X = sp.random(m, k, density=0.6, random_state=5, format="csr",
                  data_rvs=lambda s: rng.random(s) * 10.0 ** rng.integers(-8, 9, s))
    cols = [rng.permutation(m)[: rng.integers(0, 7)] for _ in range(n)]
    W = sp.csr_matrix((np.ones(sum(map(len, cols))), np.concatenate(cols), np.cumsum([0] + list(map(len, cols)))),
                      shape=(n, m))
    W.has_sorted_indices = True
    Xd = X.toarray()
    ref = np.zeros((n, k))
    for i, c in enumerate(cols):
        for j in c:
            ref[i] += Xd[j]
    for dtype in (None, np.float64):
        got = sparse_product(W, X, xsp, dtype)
        assert sp.isspmatrix_csr(got) and np.array_equal(got.toarray(), ref)
    got = sparse_product(W, X.toarray(), xsp)  # dense X stays dense on scipy
    assert np.array_equal(np.asarray(got), ref)
    # the order matters for these values: the reverse order gives other bits somewhere
    rev = np.zeros((n, k))
    for i, c in enumerate(cols):
        for j in c[::-1]:
            rev[i] += Xd[j]
    assert not np.array_equal(rev, ref)
