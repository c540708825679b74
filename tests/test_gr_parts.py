"""Radius and kNN graphs stay out of the driver (issue 17): the tiles' tasks write their row blocks to parts
inside the store, ``ds.write()`` streams the two matrices, and what is stored equals the graph from the whole
coordinates."""
from __future__ import annotations

import gc
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from scipy.spatial import cKDTree

import stdask
from stdask import gr
from stdask.gr import parts
from stdask.gr.neighbors import SpatialGraph
from stdask.io.memory import AnnDataSource


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    rng = np.random.default_rng(5)
    xy = rng.uniform(0, 1000, (3000, 2))
    a = ad.AnnData(X=sp.random(3000, 5, density=0.5, format="csr", random_state=rng, dtype=np.float32),
                   obs=pd.DataFrame(index=[f"c{i}" for i in range(3000)]))
    a.obsm["spatial"] = xy
    return stdask.ingest(AnnDataSource(a, spot_diameter=15.0), tmp_path_factory.mktemp("gparts") / "g.zarr",
                         tile_size=150.0, progress=False)


@pytest.fixture(autouse=True)
def _parts_for_any_size(monkeypatch):
    """This slice is small: the parts path is taken for every size here."""
    monkeypatch.setattr(gr.neighbors, "PARTS_MIN_OBS", 0)


def _folders(path) -> set[Path]:
    return set(Path(path).glob(parts.PREFIX + "*"))


def _expected(coords: np.ndarray, method: str) -> sp.csr_matrix:
    """The graph from the whole coordinates: radius 40 (inclusive), or the 6 nearest (ties: smaller row)."""
    tree = cKDTree(coords)
    n = len(coords)
    if method == "radius":
        pairs = tree.query_pairs(40.0, output_type="ndarray")
        r = np.concatenate([pairs[:, 0], pairs[:, 1]])
        c = np.concatenate([pairs[:, 1], pairs[:, 0]])
    else:
        _, idx = tree.query(coords, k=7)
        r, c = np.repeat(np.arange(n), 6), idx[:, 1:].ravel()
    m = sp.csr_matrix((np.hypot(*(coords[r] - coords[c]).T), (r, c)), shape=(n, n))
    m.sort_indices()
    return m


@pytest.mark.parametrize("method", ["radius", "knn"])
def test_graph_is_written_from_parts_and_never_gathered(store, tmp_path, method, monkeypatch):
    import shutil

    path = tmp_path / "g.zarr"
    shutil.copytree(store, path, ignore=shutil.ignore_patterns(parts.PREFIX + "*"))
    ds = stdask.read(path)
    assert ds.n_tiles > 20
    kw = {"distance": 40.0} if method == "radius" else {"n_neighs": 6}
    with monkeypatch.context() as m:
        m.setattr(SpatialGraph, "_matrix", lambda self, kind: pytest.fail(f"the {kind} were gathered"))
        g = gr.spatial_neighbors(ds, method, rows_per_task=200, scheduler="sync", verbose=False, **kw)
        assert g.lazy is not None and g.lazy["distances"].numblocks[0] > 20
        assert len(_folders(path)) == 1
        ds.write()
    want = _expected(np.asarray(ds.coords), method)
    for key, kind in (("spatial_distances", "distances"), ("spatial_connectivities", "connectivities")):
        stored = sp.csr_matrix(ds.store.read("obsp", key))
        assert np.array_equal(stored.indptr, want.indptr) and np.array_equal(stored.indices, want.indices), kind
        if kind == "distances":
            np.testing.assert_allclose(stored.data, want.data, rtol=0, atol=1e-12)
        else:
            assert stored.dtype == np.float32 and np.all(stored.data == 1.0)
        assert (stored != getattr(g, kind)).nnz == 0  # the returned graph reads the same parts
    meta = ds.get_result("uns", "spatial_neighbors")
    assert meta["summary"]["n_edges"] == want.nnz
    assert np.array_equal(g.summary.counts, np.diff(want.indptr))
    del g
    gc.collect()
    assert _folders(path) == set()  # nothing uses the parts any more


def test_pending_graph_is_read_by_its_consumers(store, tmp_path):
    import shutil

    path = tmp_path / "p.zarr"
    shutil.copytree(store, path, ignore=shutil.ignore_patterns(parts.PREFIX + "*"))
    ds = stdask.read(path)
    g = gr.spatial_neighbors(ds, distance=40.0, rows_per_task=200, scheduler="sync", verbose=False)
    pending = ds.result_csr("obsp", "spatial_connectivities")
    assert (pending != g.connectivities).nnz == 0 and pending.dtype == np.float32
    assert np.array_equal(gr.neighbour_summary(ds).counts, g.summary.counts)
    adata = ds.to_anndata()
    assert (sp.csr_matrix(adata.obsp["spatial_distances"]) != g.distances).nnz == 0


def test_small_graph_in_memory_equals_the_parts(store, monkeypatch):
    ds = stdask.read(store)
    via_parts = gr.spatial_neighbors(ds, distance=40.0, rows_per_task=200, scheduler="sync", verbose=False, copy=True)
    monkeypatch.setattr(gr.neighbors, "PARTS_MIN_OBS", ds.n_obs + 1)
    small = gr.spatial_neighbors(ds, distance=40.0, rows_per_task=200, scheduler="sync", verbose=False, copy=True)
    assert via_parts.lazy is not None and small.lazy is None
    for kind in ("connectivities", "distances"):
        a, b = getattr(via_parts, kind), getattr(small, kind)
        assert a.dtype == b.dtype and a.indptr.dtype == b.indptr.dtype and a.indices.dtype == b.indices.dtype
        assert np.array_equal(a.indptr, b.indptr) and np.array_equal(a.indices, b.indices)
        assert np.array_equal(a.data, b.data)
