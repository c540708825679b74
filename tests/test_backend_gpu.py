"""The GPU (numba.cuda) LR background kernel equals the CPU kernel, bit for bit, run under numba's CUDA
simulator (no GPU needed; on a GPU machine the same test can run compiled with STDASK_TEST_REAL_GPU=1)."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.timeout(600)

SCRIPT = textwrap.dedent(r"""
    import numpy as np, scipy.sparse as sp, sys, warnings
    warnings.filterwarnings("ignore")
    from stdask.backend import get_kernel
    background_counts = get_kernel("background_counts", "cpu")
    background_counts_gpu = get_kernel("background_counts", "gpu")
    assert background_counts_gpu.__module__ == "stdask.backend.gpu.cci", background_counts_gpu.__module__

    rng = np.random.default_rng(0)
    n, g, n_lr, n_pairs = 40, 30, 6, 64
    # discrete values so that observed and background scores tie often (ties count as exceedances)
    x = sp.csr_matrix(np.where(rng.random((n, g)) < 0.3, rng.integers(1, 4, (n, g)) / 2.0, 0.0))
    means = sp.csr_matrix(np.where(rng.random((n, g)) < 0.5, rng.integers(1, 6, (n, g)) / 4.0, 0.0))
    pl = rng.integers(0, g, (n_lr, n_pairs)).astype(np.int32)
    pr = rng.integers(0, g, (n_lr, n_pairs)).astype(np.int32)
    rows = np.repeat(np.arange(n), 3)
    lrs = rng.integers(0, n_lr, rows.size)
    obs = rng.integers(1, 8, rows.size) / 4.0
    for m in (0.0, 0.5):
        cpu = background_counts(x, means, rows, lrs, obs, pl, pr, m)
        gpu = background_counts_gpu(x, means, rows, lrs, obs, pl, pr, m, block_rows=16)
        assert np.array_equal(cpu, gpu), (m, cpu[:10], gpu[:10])
        assert 0 < cpu.sum() < cpu.size * n_pairs  # the comparison is not trivial
    # the whole analysis through the backend switch gives the CPU result
    import stdask
    from stdask.io.memory import AnnDataSource
    from stdask.tl import cci
    from stdask.datasets import synthetic_slice
    sl = synthetic_slice(n_obs=150, n_genes=400, layout="visium", seed=3, lr_fraction=0.5, n_hotspots=2)
    from stdask.datasets.h5ad import write_h5ad
    write_h5ad(sl, sys.argv[1] + "/s.h5ad", style="stlearn", normalize=True, counts_layer=False)
    ds = stdask.read(stdask.ingest(sys.argv[1] + "/s.h5ad", sys.argv[1] + "/s.zarr", progress=False))
    lrs = cci.load_lrs()
    kw = dict(min_spots=2, n_pairs=100, seed=1, progress=False, verbose=False, scheduler="sync")
    ref = cci.run(ds, lrs, **kw)
    with stdask.settings.override(backend="gpu"):
        got = cci.run(ds, lrs, **kw)
    assert ref.counts.nnz > 0 and (ref.counts != got.counts).nnz == 0 and (ref.padj != got.padj).nnz == 0
    print("ok", ref.counts.nnz)
""")


def test_gpu_kernel_equals_cpu_kernel(tmp_path):
    env = dict(os.environ)
    if os.environ.get("STDASK_TEST_REAL_GPU") != "1":
        env["NUMBA_ENABLE_CUDASIM"] = "1"
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True, text=True, env=env,
                          timeout=580)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().startswith("ok")
