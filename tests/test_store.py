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


# ------------------------------------------------------------------------------------------------
# the encoding registry
# ------------------------------------------------------------------------------------------------
def _scratch_group(tmp_path):
    import zarr

    return zarr.open_group(str(tmp_path / "g.zarr"), mode="w", zarr_format=3)


def test_registry_round_trips_every_encoding(tmp_path):
    from stdask.store.elements import ARRAY, CSR_MATRIX, DATAFRAME, DICT, RowBlocks
    from stdask.store.encoding import IOSpec, read_element, write_element
    from stdask.store.raster import RASTER, RasterElement
    from stdask.store.tile_index import TILE_INDEX, TileIndex

    g = _scratch_group(tmp_path)
    rng = np.random.default_rng(4)
    m = sp.random(40, 9, density=0.3, format="csr", random_state=2, dtype=np.float32)
    dense = rng.normal(size=(40, 3))
    df = pd.DataFrame({"a": np.arange(5), "b": pd.Categorical(list("xyxyz"))}, index=[f"r{i}" for i in range(5)])
    index = TileIndex(Tiling(10.0, 0, 0, 2, 1), np.array([0, 3, 5]), np.array([0.0, 1.0, 19.0, 9.0]), "um", None,
                      7.0, {"input": "x"})
    cases = {
        "csr": (m, CSR_MATRIX),
        "dense": (dense, ARRAY),
        "frame": (df, DATAFRAME),
        "dict": ({"k": np.arange(3), "s": "t"}, DICT),
        "csr_blocks": (RowBlocks(m.shape, m.dtype, True, 15, (m[i : i + 15] for i in range(0, 40, 15))), CSR_MATRIX),
        "dense_blocks": (RowBlocks(dense.shape, dense.dtype, False, 15,
                                   (dense[i : i + 15] for i in range(0, 40, 15))), ARRAY),
        "tiles": (index, TILE_INDEX),
    }
    for key, (value, spec) in cases.items():
        assert write_element(g, key, value) == spec, key
    assert (read_element(g["csr"], "csr") != m).nnz == 0
    assert (read_element(g["csr_blocks"], "csr_blocks") != m).nnz == 0
    assert g["csr_blocks"].attrs["shape"] == [40, 9]
    np.testing.assert_array_equal(read_element(g["dense"], "dense"), dense)
    np.testing.assert_array_equal(read_element(g["dense_blocks"], "dense_blocks"), dense)
    pd.testing.assert_frame_equal(read_element(g["frame"], "frame"), df)
    d = read_element(g["dict"], "dict")
    assert d["s"] == "t" and np.array_equal(d["k"], np.arange(3))
    back = read_element(g["tiles"], "tiles")
    assert isinstance(back, TileIndex) and back.tiling == index.tiling and back.spot_diameter is None
    np.testing.assert_array_equal(back.tile_row_start, [0, 3, 5])
    assert back.unit == "um" and back.max_count == 7.0 and back.provenance == {"input": "x"}
    # the tile index is a plain AnnData dict to anndata
    assert ad.io.read_elem(g["tiles"])["encoding"] == "stdask-tiling"
    img = rng.normal(size=(2, 5, 7)).astype(np.float32)
    attrs = {"stdask": {"encoding": RASTER.encoding, "version": RASTER.version, "tile": 4, "channels": ["a", "b"]}}
    assert write_element(g, "raster", RasterElement(img, np.ones((5, 7), np.int32), attrs)) == RASTER
    r = read_element(g["raster"], "raster")
    np.testing.assert_array_equal(r.values.compute(), img)
    assert r.values.chunks == ((2,), (4, 1), (4, 3)) and r.meta["channels"] == ["a", "b"]
    assert IOSpec("csr_matrix", "0.1.0") == CSR_MATRIX


def test_registry_finds_readers_and_writers_registered_by_decorator(tmp_path):
    from dataclasses import dataclass

    from stdask.store.encoding import EncodingRegistry, IOSpec, UnknownEncodingError

    @dataclass
    class Toy:
        n: int

    reg = EncodingRegistry()
    toy1, toy2 = IOSpec("toy", 1), IOSpec("toy", 2)

    @reg.register_write(toy2, Toy)
    def write_toy(parent, key, value):
        parent.create_group(key, attributes={"stdask": {"encoding": "toy", "version": 2}, "n": value.n})

    @reg.register_read(toy1, toy2)
    def read_toy(node):
        return Toy(node.attrs["n"])

    g = _scratch_group(tmp_path)
    assert reg.write(g, "t", Toy(3)) == toy2
    assert reg.read(g["t"], "t") == Toy(3)
    assert reg.versions("toy") == (1, 2) and reg.writer(Toy(1)) == (toy2, write_toy)
    with pytest.raises(TypeError, match="no store encoding is registered for values of type str"):
        reg.write(g, "s", "text")
    # a later registration for a narrower case takes precedence while its predicate holds
    reg.register_write(toy1, Toy, when=lambda v: v.n < 0)(write_toy)
    assert reg.writer(Toy(-1))[0] == toy1 and reg.writer(Toy(1))[0] == toy2
    # the writer's declared spec is checked against what it wrote
    with pytest.raises(StoreFormatError, match="declares"):
        reg.write(g, "neg", Toy(-1))
    g["t"].attrs["stdask"] = {"encoding": "toy", "version": 7}
    with pytest.raises(UnknownEncodingError, match=r"t \(read\): encoding 'toy' version 7 .*versions 1, 2"):
        reg.read(g["t"], "t (read)")
    g["t"].attrs["stdask"] = {"encoding": "other", "version": 1}
    with pytest.raises(UnknownEncodingError, match="unknown encoding 'other' version 1"):
        reg.read(g["t"], "t")


def _bump(path: Path, attr: str, value, under: str | None = None) -> None:
    meta = json.loads(path.read_text())
    target = meta["attributes"][under] if under else meta["attributes"]
    target[attr] = value
    path.write_text(json.dumps(meta))


def test_unknown_element_version_names_element_and_versions(store, tmp_path):
    import shutil

    p = tmp_path / "v.zarr"
    shutil.copytree(store, p)
    ds = stdask.read(p)
    ds.set_result("obsm", "emb", np.ones((ds.n_obs, 2), np.float32))
    ds.write()
    table = p / "tables" / "table"
    _bump(table / "obsm" / "emb" / "zarr.json", "encoding-version", "0.9.0")
    with pytest.raises(StoreFormatError, match=r"tables/table/obsm/emb: encoding 'array' version '0.9.0' .*'0.2.0'"):
        stdask.read(p).get_result("obsm", "emb")
    _bump(table / "X" / "zarr.json", "encoding-version", "0.7.0")
    with pytest.raises(StoreFormatError, match=r"X: encoding 'csr_matrix' version '0.7.0' .*'0.1.0'"):
        stdask.read(p).X
    shutil.rmtree(p)
    shutil.copytree(store, p)
    version = p / "tables" / "table" / "uns" / "stdask" / "version"
    arr = __import__("zarr").open_array(str(version), mode="r+")
    arr[()] = 3
    with pytest.raises(StoreFormatError, match=r"uns/stdask: encoding 'stdask-tiling' version 3 .*versions 2, 1"):
        stdask.read(p)


# ------------------------------------------------------------------------------------------------
# what the dataset tells about its results
# ------------------------------------------------------------------------------------------------
def test_result_keys_stored_and_pending(store, tmp_path):
    import shutil

    p = tmp_path / "k.zarr"
    shutil.copytree(store, p)
    ds = stdask.read(p)
    assert ds.result_keys("obsm") == ["spatial"] and ds.is_stored("obsm", "spatial")
    assert ds.result_keys("obs") == ["cell_type", "score", "x", "y", "tile", "region", "instance_id"]
    ds.set_result("obsm", "emb", np.zeros((ds.n_obs, 2), np.float32))
    ds.set_result("obs", "rank", np.arange(ds.n_obs))
    assert ds.result_keys("obsm") == ["spatial", "emb"] and ds.result_keys("obsm", stored=False) == ["emb"]
    assert ds.result_keys("obsm", pending=False) == ["spatial"] and ds.result_keys("obs")[-1] == "rank"
    assert ds.is_pending("obsm", "emb") and not ds.is_stored("obsm", "emb") and ds.has_result("obsm", "emb")
    assert not ds.has_result("obsm", "nope") and not ds.has_result("uns", "nope")
    with pytest.raises(ValueError, match="slot must be one of"):
        ds.result_keys("bad")
    ds.write()
    assert ds.is_stored("obsm", "emb") and not ds.is_pending("obsm", "emb") and ds.is_stored("obs", "rank")
    assert sorted(ds.result_keys("obsm")) == ["emb", "spatial"]
    assert ds.result_keys("obsm", stored=False) == []


def test_matrix_info_columns_and_row_counts(adata, store, tmp_path):
    import shutil

    p = tmp_path / "m.zarr"
    shutil.copytree(store, p)
    ds = stdask.read(p)
    b = ad.read_zarr(p / "tables" / "table")
    x = ds.matrix_info("X")
    assert (x.kind, x.shape, x.nnz, x.dtype) == ("csr", adata.shape, adata.X.nnz, b.X.dtype)
    rng = np.random.default_rng(1)
    dense = rng.normal(size=(ds.n_obs, 4)).astype(np.float32)
    m = sp.random(ds.n_obs, 6, density=0.3, format="csr", random_state=5, dtype=np.float64)
    ds.set_result("layers", "dense", np.ones(ds.shape, np.float32))
    ds.set_result("obsm", "d", dense)
    ds.set_result("obsm", "m", m)
    ds.write()
    infos = ds.matrix_info()
    assert list(infos) == ["X", "dense"] and infos["dense"].kind == "dense" and infos["dense"].nnz is None
    assert infos["dense"].dtype == np.float32 and infos["dense"].shape == ds.shape
    np.testing.assert_array_equal(ds.stored_matrix("dense").compute(), np.ones(ds.shape, np.float32))
    with pytest.raises(KeyError, match="no matrix 'nope'; available"):
        ds.matrix_info("nope")
    e = ds.element_info("obsm", "m")
    assert (e.kind, e.shape, e.nnz, e.dtype) == ("csr", m.shape, m.nnz, np.float64)
    obs = ds.element_info("", "obs")
    assert obs.kind == "dataframe" and obs.shape == (ds.n_obs, 7)
    assert list(obs.columns[-3:]) == ["tile", "region", "instance_id"]
    np.testing.assert_array_equal(ds.result_row_counts("obsm", "m"), np.diff(m.indptr))
    for j in (0, 5):
        want = np.full(ds.n_obs, -1.0)
        rows, cols = m.nonzero()
        want[rows[cols == j]] = m.toarray()[rows[cols == j], j]
        np.testing.assert_array_equal(ds.result_column("obsm", "m", j, fill=-1.0, rows_per_read=97), want)
        np.testing.assert_array_equal(ds.result_column("obsm", "d", j % 4), dense[:, j % 4].astype(np.float64))


def test_info_summarises_the_store(adata, store):
    ds = stdask.read(store)
    i = ds.info()
    rows = np.diff(ds.tile_row_start)
    assert (i.n_obs, i.n_vars, i.nnz) == (adata.n_obs, adata.n_vars, adata.X.nnz)
    assert i.tiles_occupied == int((rows > 0).sum()) and i.rows_per_tile[2] == rows.max()
    assert i.matrices == ["X"] and i.tile_grid == (ds.tiling.ny, ds.tiling.nx)
    assert i.disk_bytes == sum(f.stat().st_size for f in Path(store).rglob("*") if f.is_file())
    assert i.as_dict()["nnz"] == i.nnz and set(i.as_dict()) >= {"path", "density", "provenance", "disk_bytes"}
    text = str(i).splitlines()
    assert text[0] == f"store          {store}"
    assert text[1] == f"shape          {adata.n_obs:,} obs x {adata.n_vars:,} vars, nnz {adata.X.nnz:,} " \
                      f"(density {adata.X.nnz / (adata.n_obs * adata.n_vars):.4f})"
    assert text[2] == "matrices       X" and text[5].startswith("on disk ")


def test_worker_cache_follows_the_store_version(store, tmp_path):
    import shutil

    from stdask.dataset import open_cached

    p = tmp_path / "c.zarr"
    shutil.copytree(store, p)
    ds = stdask.read(p)
    v1 = ds.store.version
    assert v1.startswith(ds.store.uuid) and ds.store.version == v1
    a = open_cached(str(p), v1)
    assert open_cached(str(p), v1) is a and a.derived("k", lambda: 1) == 1 and a.derived("k", lambda: 2) == 1
    assert "lib" not in a.store.obs.columns  # read (and kept) by the cached dataset
    ds.set_result("obs", "lib", np.zeros(ds.n_obs, dtype=int))
    ds.write()
    v2 = ds.store.version
    assert v2 != v1
    b = open_cached(str(p), v2)
    assert b is not a and "lib" in b.store.obs.columns and b.derived("k", lambda: 2) == 2
