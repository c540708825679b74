"""The tiled store: layout, tiling invariants, scverse compatibility, atomic commits, versioning."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from scipy.spatial import cKDTree

import stdask
from stdask.io.memory import AnnDataSource
from stdask.store.format import StoreFormatError
from stdask.store.hilbert import hilbert_key
from stdask.store.spill import csr_from_entries
from stdask.store.tiling import Tiling


def make_adata(n=3000, g=200, seed=0, integer=True):
    rng = np.random.default_rng(seed)
    X = sp.random(n, g, density=0.08, format="csr", random_state=seed,
                  data_rvs=lambda k: rng.integers(1, 30, k)).astype(np.int32 if integer else np.float32)
    obs = pd.DataFrame({"cell_type": pd.Categorical(rng.choice(["a", "b", "c"], n)),
                        "score": rng.normal(size=n)}, index=[f"cell{i}" for i in range(n)])
    a = ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=[f"G{i}" for i in range(g)]))
    a.obsm["spatial"] = rng.uniform(0, 2000, (n, 2))
    return a


@pytest.fixture(scope="module")
def adata():
    return make_adata()


@pytest.fixture(scope="module")
def store(adata, tmp_path_factory):
    p = tmp_path_factory.mktemp("st") / "s.zarr"
    return stdask.ingest(AnnDataSource(adata), p, tile_size=250, progress=False)


def test_hilbert_is_a_space_filling_path():
    n = 5
    xs, ys = np.meshgrid(np.arange(2**n), np.arange(2**n))
    k = hilbert_key(xs.ravel(), ys.ravel(), n)
    assert sorted(k.tolist()) == list(range(4**n))
    o = np.argsort(k)
    steps = np.abs(np.diff(xs.ravel()[o])) + np.abs(np.diff(ys.ravel()[o]))
    assert np.all(steps == 1)


def test_csr_from_entries_sums_duplicates():
    row = np.array([1, 0, 1, 1])
    col = np.array([2, 1, 2, 0])
    val = np.array([3, 4, 5, 1], dtype=np.uint32)
    indptr, idx, data = csr_from_entries(row, col, val, 3, 4, np.uint32)
    m = sp.csr_matrix((data, idx, indptr), shape=(3, 4))
    assert np.array_equal(m.toarray(), sp.coo_matrix((val, (row, col)), shape=(3, 4)).toarray())
    with pytest.raises(OverflowError):
        csr_from_entries(np.array([0, 0]), np.array([0, 0]), np.array([2**32 - 1, 2], np.uint32), 1, 1, np.uint32)


def test_round_trip_with_anndata_and_spatialdata(adata, store):
    b = ad.read_zarr(store / "tables" / "table")
    ref = adata[b.obs_names]
    assert (ref.X != b.X).nnz == 0
    assert np.array_equal(ref.obsm["spatial"], b.obsm["spatial"])
    assert list(b.obs["cell_type"]) == list(ref.obs["cell_type"])
    assert np.array_equal(b.obs["score"].to_numpy(), ref.obs["score"].to_numpy())
    spatialdata = pytest.importorskip("spatialdata")
    s = spatialdata.read_zarr(store)
    t = s.tables["table"]
    assert (t.X != b.X).nnz == 0 and np.array_equal(t.obsm["spatial"], b.obsm["spatial"])


def test_tiles_are_contiguous_sorted_and_dask_matches(adata, store):
    ds = stdask.read(store, rows_per_chunk=400)
    tile = ds.obs["tile"].to_numpy()
    assert np.all(np.diff(tile) >= 0)
    for t in range(ds.n_tiles):
        r0, r1 = ds.tile_rows(t)
        assert np.all(tile[r0:r1] == t)
        if r1 > r0:
            c = ds.coords[r0:r1]
            x0, y0, x1, y1 = ds.tiling.tile_bounds(t)
            assert np.all((c[:, 0] >= x0) & (c[:, 0] < x1) & (c[:, 1] >= y0) & (c[:, 1] < y1))
    X = ds.X
    assert len(X.chunks[0]) > 1
    b = ad.read_zarr(store / "tables" / "table")
    from stdask.cluster import compute

    (Xc,) = compute(X, progress=False)
    assert (Xc != b.X).nnz == 0
    # per-chunk reductions see CSR blocks aligned to whole tiles
    (sums,) = compute(X.map_blocks(lambda m: np.asarray(m.sum(axis=0)), chunks=(1, X.shape[1]),
                                   dtype=np.float64, meta=np.empty((0, 0))), progress=False)
    assert sums.shape == (len(X.chunks[0]), X.shape[1])
    assert np.array_equal(sums.sum(axis=0), np.asarray(b.X.sum(axis=0)).ravel())


@pytest.mark.parametrize("halo", [0.0, 37.5, 260.0])
def test_tile_halo_equals_brute_force(store, halo):
    ds = stdask.read(store)
    tree = cKDTree(ds.coords)
    b = ad.read_zarr(store / "tables" / "table")
    for t in [0, 5, ds.n_tiles // 2, ds.n_tiles - 1]:
        tl = ds.tile(t, halo=halo)
        own = np.arange(*ds.tile_rows(t))
        assert np.array_equal(tl.rows[: tl.n_own], own)
        expect = set()
        for lst in tree.query_ball_point(ds.coords[own], halo) if len(own) else []:
            expect.update(lst)
        expect -= set(own.tolist())
        assert set(tl.rows[tl.n_own:].tolist()) == expect
        assert (tl.X != b.X[tl.rows]).nnz == 0


def test_results_do_not_depend_on_tile_size(adata, tmp_path):
    a = stdask.read(stdask.ingest(AnnDataSource(adata), tmp_path / "a.zarr", tile_size=100, progress=False))
    b = stdask.read(stdask.ingest(AnnDataSource(adata), tmp_path / "b.zarr", tile_size=1000, progress=False))
    assert a.n_tiles > b.n_tiles
    xa = a.to_anndata()
    xb = b.to_anndata()[xa.obs_names]
    assert (xa.X != xb.X).nnz == 0
    assert np.array_equal(xa.obsm["spatial"], xb.obsm["spatial"])


def test_float_matrix_and_layers_kept(tmp_path):
    a = make_adata(500, 50, seed=3, integer=False)
    a.layers["counts"] = a.X.astype(np.int64)
    p = stdask.ingest(AnnDataSource(a), tmp_path / "f.zarr", progress=False)
    b = ad.read_zarr(p / "tables" / "table")
    assert b.X.dtype == np.float32 and b.layers["counts"].dtype == np.uint32
    ref = a[b.obs_names]
    assert np.allclose(ref.X.toarray(), b.X.toarray())
    assert np.array_equal(ref.layers["counts"].toarray(), b.layers["counts"].toarray())


def test_bad_inputs_raise_and_write_nothing(tmp_path):
    a = make_adata(100, 20)
    a.obsm["spatial"][7, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        stdask.ingest(AnnDataSource(a), tmp_path / "nan.zarr", progress=False)
    b = make_adata(100, 20)
    b.obs_names = ["dup"] * 2 + [f"c{i}" for i in range(98)]
    with pytest.raises(ValueError, match="duplicate barcode 'dup'"):
        stdask.ingest(AnnDataSource(b), tmp_path / "dup.zarr", progress=False)
    assert not (tmp_path / "nan.zarr").exists() and not (tmp_path / "dup.zarr").exists()
    assert not [p for p in tmp_path.iterdir() if "stdask-tmp" in p.name]


def test_refuses_unknown_version_and_uncommitted(store, tmp_path):
    import shutil

    bad = tmp_path / "v.zarr"
    shutil.copytree(store, bad)
    meta = json.loads((bad / "zarr.json").read_text())
    meta["attributes"]["stdask"]["version"] = 99
    (bad / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(StoreFormatError, match="version 99"):
        stdask.read(bad)
    del meta["attributes"]["stdask"]
    (bad / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(StoreFormatError, match="not a complete stdask store"):
        stdask.read(bad)


def test_write_results_back(store, tmp_path):
    import shutil

    p = tmp_path / "w.zarr"
    shutil.copytree(store, p)
    ds = stdask.read(p)
    vals = np.arange(ds.n_obs, dtype=np.float32)
    ds.set_result("obs", "rank", vals)
    ds.set_result("obsm", "emb", np.ones((ds.n_obs, 3), np.float32))
    with pytest.raises(ValueError, match="rows"):
        ds.set_result("obsm", "bad", np.ones((3, 3)))
    ds.write()
    b = ad.read_zarr(p / "tables" / "table")
    assert np.array_equal(b.obs["rank"].to_numpy(), vals) and b.obsm["emb"].shape == (ds.n_obs, 3)
    assert stdask.read(p).obs["rank"].iloc[5] == 5


KILL_SCRIPT = r"""
import sys, numpy as np, scipy.sparse as sp, anndata as ad, pandas as pd
import stdask
from stdask.io.memory import AnnDataSource
from stdask.store import writer
# slow the tile writes down (test instrumentation only) so the kill lands in the middle of the write
_append = writer.CsrStreamWriter.append
def slow_append(self, *a):
    import time; time.sleep(0.02); return _append(self, *a)
writer.CsrStreamWriter.append = slow_append
rng = np.random.default_rng(0)
n, g = 50_000, 400
X = sp.random(n, g, density=0.05, format="csr", random_state=1, data_rvs=lambda k: rng.integers(1, 9, k))
a = ad.AnnData(X=X.astype(np.int32), var=pd.DataFrame(index=[f"G{i}" for i in range(g)]),
               obs=pd.DataFrame(index=[f"c{i}" for i in range(n)]))
a.obsm["spatial"] = rng.uniform(0, 1e5, (n, 2))
print("start", flush=True)
stdask.ingest(AnnDataSource(a), sys.argv[1], tile_size=10_000, chunk_size=200_000, progress=False)
print("done", flush=True)
"""


def test_killed_ingest_leaves_no_valid_store(tmp_path):
    target = tmp_path / "killed.zarr"
    script = tmp_path / "ingest.py"
    script.write_text(KILL_SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script), str(target)], stdout=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    # wait until the writer has started filling its temporary store, then kill it without warning
    while time.time() < deadline:
        tmps = [p for p in tmp_path.iterdir() if "stdask-tmp" in p.name]
        if tmps and any((t / "tables" / "table" / "X" / "data").exists() for t in tmps):
            break
        if proc.poll() is not None:
            pytest.fail("ingest finished before it could be killed; make the input larger")
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not target.exists()
    with pytest.raises((FileNotFoundError, StoreFormatError)):
        stdask.read(target)
    assert [p for p in tmp_path.iterdir() if "stdask-tmp" in p.name]  # the half-written temp is left
    # re-running succeeds and clears what the killed writer left behind
    out = subprocess.run([sys.executable, str(script), str(target)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    ds = stdask.read(target)
    assert ds.n_obs == 50_000
    assert not [p for p in tmp_path.iterdir() if "stdask-tmp" in p.name]
