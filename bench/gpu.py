"""GPU kernels against their CPU variants: equal results, and absolute times of each, as one table.

For every kernel with a GPU variant in :data:`stdask.backend.GPU` (and the neighbour sums' sparse product of
:mod:`stdask.tl.cci.neighbourhood`, cuSPARSE vs scipy) it builds one input of a realistic size, runs the CPU
variant (one numba call, one core: what one dask task does) and the GPU variant on it, checks the results are
equal (integer counts and gram limbs: identical; neighbour sums: identical bits, else the largest relative
difference is shown), and prints a table. Compile time is kept out of the timed calls: each kernel first runs
on a tiny input (that first call's time is shown too). The exit status is 1 when any result differs.

Needs a machine with an NVIDIA GPU, cupy and numba.cuda; without one it says so and exits with status 2.
``--simulate`` runs the same comparisons under numba's CUDA simulator at a tiny size (a check that the
script works, not a timing).

Usage: ``python bench/gpu.py [--scale 1.0] [--simulate]``
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _gpu_missing() -> str | None:
    """Why the GPU path cannot run here, or None."""
    try:
        importlib.import_module("cupy")
    except Exception as exc:  # ImportError, or CUDA libraries that fail to load
        return f"cupy cannot be imported ({type(exc).__name__}: {exc})"
    from numba import cuda

    if not cuda.is_available():
        return "numba.cuda finds no usable CUDA device"
    return None


# ---------------------------------------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------------------------------------
def grid_graph(side: int):
    """(side * side) spots on a square grid, 8-neighbour graph as CSR (symmetric, no self loops)."""
    import numpy as np
    import scipy.sparse as sp

    n = side * side
    r, c = np.divmod(np.arange(n), side)
    rows, cols = [], []
    for dr in (-1, 0, 1):
        for dc in (-1, 0, 1):
            if dr == 0 and dc == 0:
                continue
            ok = (r + dr >= 0) & (r + dr < side) & (c + dc >= 0) & (c + dc < side)
            rows.append(np.flatnonzero(ok))
            cols.append((r[ok] + dr) * side + c[ok] + dc)
    g = sp.csr_matrix((np.ones(sum(map(len, rows))), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n))
    g.sort_indices()
    return g


def cci_batch(side: int, n_lr: int, rng):
    """A run_cci batch: qualifying edges of ``n_lr`` LRs (5 % significant spots, genes in 30 % of spots)."""
    import numpy as np
    import scipy.sparse as sp

    from stdask.backend import get_kernel

    g = grid_graph(side)
    n = g.shape[0]
    s = sp.csc_matrix(rng.random((n, n_lr)) < 0.05)
    x = sp.csc_matrix(rng.random((n, 2 * n_lr)) < 0.3)
    s.sort_indices()
    x.sort_indices()
    i64 = lambda a: np.asarray(a, dtype=np.int64)  # noqa: E731
    return n, get_kernel("build_edges", "cpu")(
        n, i64(g.indptr), i64(g.indices), i64(s.indices), False, i64(s.indptr), i64(s.indices),
        i64(x.indptr), i64(x.indices), np.arange(n_lr), np.arange(n_lr, 2 * n_lr),
        int(np.diff(g.indptr)[s.indices].sum()))


def expression(n: int, g: int, density: float, rng):
    """(n, g) CSR float32 log-normalised-like values, canonical."""
    import numpy as np
    import scipy.sparse as sp

    X = sp.random(n, g, density=density, format="csr", random_state=rng,
                  data_rvs=lambda k: np.log1p(rng.poisson(3.0, k) + 1.0)).astype(np.float32)
    X.sort_indices()
    return X


# ---------------------------------------------------------------------------------------------------------
# cases: each builds its input at a size and returns (size label, CPU call, GPU call, equality check)
# ---------------------------------------------------------------------------------------------------------
def _same(a, b) -> tuple[bool, str]:
    import numpy as np

    ok = all(x.dtype == y.dtype and x.shape == y.shape and np.array_equal(x, y) for x, y in zip(a, b))
    return ok, "identical" if ok else "DIFFER"


def case_discrete(side: int, n_lr: int, T: int, n_perms: int, rng):
    from stdask.backend import get_kernel
    from stdask.backend.cpu.interactions import STREAM_TAG

    n, batch = cci_batch(side, n_lr, rng)
    codes = rng.integers(0, T, n)
    keys = rng.integers(0, 2**63, (n_lr, 2)).astype("uint64")
    run = lambda b: lambda: get_kernel("discrete_batch", b)(codes, T, *batch, keys, n_perms, STREAM_TAG)  # noqa: E731
    label = f"{n:,} spots, {n_lr} LRs, {len(batch[1]):,} edges, T={T}, {n_perms} perms"
    return label, run("cpu"), run("gpu"), _same


def case_sets(side: int, n_lr: int, T: int, n_perms: int, rng):
    from stdask.backend import get_kernel
    from stdask.backend.cpu.interactions import STREAM_TAG

    n, batch = cci_batch(side, n_lr, rng)
    pres = (rng.random((n, T)) < 0.3).astype("uint8")
    keys = rng.integers(0, 2**63, (n_lr, 2)).astype("uint64")
    run = lambda b: lambda: get_kernel("sets_batch", b)(pres, True, *batch, keys, n_perms, STREAM_TAG)  # noqa: E731
    label = f"{n:,} spots, {n_lr} LRs, {len(batch[1]):,} edges, T={T} (columns), {n_perms} perms"
    return label, run("cpu"), run("gpu"), _same


def case_background(n: int, g: int, n_lr: int, n_pairs: int, rng):
    import numpy as np

    from stdask.backend import get_kernel

    x = expression(n, g, 0.1, rng).astype(np.float64)
    means = expression(n, g, 0.5, rng).astype(np.float64)
    pl = rng.integers(0, g, (n_lr, n_pairs)).astype(np.int32)
    pr = rng.integers(0, g, (n_lr, n_pairs)).astype(np.int32)
    rows = np.repeat(np.arange(n), 10)
    lrs = rng.integers(0, n_lr, rows.size)
    obs = rng.random(rows.size) * 2.0
    run = lambda b: lambda: (get_kernel("background_counts", b)(x, means, rows, lrs, obs, pl, pr, 0.0),)  # noqa: E731
    return f"{n:,} x {g:,}, {rows.size:,} entries x {n_pairs} pairs", run("cpu"), run("gpu"), _same


def _gram_input(n: int, g: int, rng):
    import numpy as np

    from stdask.pp._gram import column_exponents, slice_bits

    X = expression(n, g, 0.1, rng)
    b = slice_bits(n)
    exps = column_exponents(abs(X).max(axis=0).toarray().ravel())
    return X, b, exps, np.ldexp(1.0, b - exps)


def case_gram(n: int, g: int, rng):
    from stdask.backend import get_kernel

    X, b, _, scale = _gram_input(n, g, rng)
    run = lambda k: lambda: get_kernel("csr_gram", k)(X.indptr, X.indices, X.data, scale, b, g)  # noqa: E731
    return f"{n:,} x {g:,} CSR, {X.nnz:,} nnz", run("cpu"), run("gpu"), _same


def case_xtxw(n: int, g: int, rng, l: int = 60):
    import numpy as np

    from stdask.backend import get_kernel
    from stdask.pp._gram import y_exponents

    X, b, _, scale = _gram_input(n, g, rng)
    W = rng.normal(size=(g, l))
    yscale = np.ldexp(1.0, b - y_exponents(float(abs(X).sum(axis=1).max()), W))
    run = lambda k: lambda: get_kernel("csr_xtxw", k)(X.indptr, X.indices, X.data, W, scale, yscale, b)  # noqa: E731
    return f"{n:,} x {g:,} CSR, W {g:,} x {l}", run("cpu"), run("gpu"), _same


def case_neighbours(side: int, g: int, rng):
    import numpy as np

    from stdask.tl.cci.neighbourhood import sparse_modules, sparse_product

    W = grid_graph(side)
    X = expression(W.shape[0], g, 0.1, rng)
    run = lambda k: lambda: sparse_product(W, X, sparse_modules(k)[1], np.float64)  # noqa: E731

    def same(a, b):
        if (a != b).nnz == 0:
            return True, "identical"
        d = abs(a - b).max() / abs(a).max()
        return False, f"max rel diff {d:.1e}"
    return f"W {W.shape[0]:,} spots x 8 nbrs, X {g:,} genes", run("cpu"), run("gpu"), same


#: (kernel, case, full-size arguments, tiny arguments); full sizes are scaled by --scale (rows or spots)
CASES = [
    ("discrete_batch", case_discrete, dict(side=224, n_lr=64, T=12, n_perms=1000), dict(side=6, n_lr=2, T=3, n_perms=3)),
    ("sets_batch", case_sets, dict(side=100, n_lr=32, T=8, n_perms=200), dict(side=7, n_lr=2, T=3, n_perms=2)),
    ("background_counts", case_background, dict(n=20_000, g=2_000, n_lr=200, n_pairs=1_000),
     dict(n=8, g=12, n_lr=3, n_pairs=5)),
    ("csr_gram", case_gram, dict(n=20_000, g=2_000), dict(n=12, g=10)),
    ("csr_xtxw", case_xtxw, dict(n=20_000, g=2_000), dict(n=12, g=10)),
    ("neighbour sums (sparse W @ X)", case_neighbours, dict(side=224, g=2_000), dict(side=4, g=6)),
]


def _scaled(kw: dict, scale: float) -> dict:
    out = dict(kw)
    for k in ("n", "side"):
        if k in out:
            out[k] = max(2, int(round(out[k] * (scale ** 0.5 if k == "side" else scale))))
    return out


def _timed(f):
    t0 = time.perf_counter()
    r = f()
    return time.perf_counter() - t0, r


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, default=1.0, help="multiply the rows / spots of every case")
    ap.add_argument("--simulate", action="store_true", help="numba's CUDA simulator, tiny sizes (no timing)")
    ap.add_argument("--only", nargs="*", help="kernel names to run (default all)")
    args = ap.parse_args()
    if args.simulate:
        os.environ["NUMBA_ENABLE_CUDASIM"] = "1"  # before numba is imported
    else:
        why = _gpu_missing()
        if why is not None:
            print(f"bench/gpu.py needs a CUDA GPU with cupy and numba.cuda: {why}. "
                  "Run it on a GPU machine, or pass --simulate to check it under numba's CUDA simulator.")
            return 2
    import numpy as np

    warnings.filterwarnings("ignore")  # the simulator's uint64 arithmetic warns on wrap-around
    rows, failed = [], False
    for name, case, full, tiny in CASES:
        if args.only and name not in args.only:
            continue
        _, cpu, gpu, _ = case(**tiny, rng=np.random.default_rng(0))
        cpu()  # compile (or load from numba's cache) the CPU kernel
        first, _ = _timed(gpu)  # numba.cuda JIT, CUDA context, cuSPARSE handles: paid once per process
        label, cpu, gpu, same = case(**(tiny if args.simulate else _scaled(full, args.scale)),
                                     rng=np.random.default_rng(1))
        t_cpu, r_cpu = _timed(cpu)
        t_gpu, r_gpu = _timed(gpu)
        ok, note = same(r_cpu, r_gpu)
        failed |= not ok
        rows.append((name, label, t_cpu, t_gpu, first, note))
        print(f"  {name}: cpu {t_cpu:.3f} s, gpu {t_gpu:.3f} s, {note}", file=sys.stderr, flush=True)
    mode = "CUDA simulator, tiny sizes (not a timing)" if args.simulate else _device_name()
    print(f"\nGPU vs CPU kernels ({mode}; CPU = one numba call on one core; GPU = after a compile run, incl. "
          "host<->device copies)\n")
    print("| kernel | input | CPU s | GPU s | CPU/GPU | GPU 1st call (JIT) s | results |\n"
          "|---|---|---:|---:|---:|---:|---|")
    for name, label, t_cpu, t_gpu, first, note in rows:
        print(f"| {name} | {label} | {t_cpu:.3f} | {t_gpu:.3f} | {t_cpu / max(t_gpu, 1e-9):.1f}x | {first:.4f} | "
              f"{note} |")
    return 1 if failed else 0


def _device_name() -> str:
    from numba import cuda

    return str(cuda.get_current_device().name.decode() if isinstance(cuda.get_current_device().name, bytes)
               else cuda.get_current_device().name)


if __name__ == "__main__":
    sys.exit(main())
