"""Spatial graphs: radius, kNN, Delaunay and grid rings equal their global definitions for every tiling,
scheduler and library split, and squidpy's graphs (saved fixtures); storage, summary and bad input."""
from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from scipy.spatial import Delaunay, cKDTree

import stdask
from stdask import gr
from stdask.gr.delaunay import delaunay_graph
from stdask.gr.radius import radius_block
from stdask.io.memory import AnnDataSource


@pytest.fixture(autouse=True)
def _quiet():
    with stdask.settings.override(progress=False):
        yield


def make_adata(xy, seed=0, lib=None, genes=5):
    n = len(xy)
    rng = np.random.default_rng(seed)
    X = sp.csr_matrix(rng.integers(0, 3, (n, genes)).astype(np.int32))
    obs = pd.DataFrame(index=[f"o{i}" for i in range(n)])
    if lib is not None:
        obs["lib"] = pd.Categorical(lib)
    a = ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=[f"g{i}" for i in range(genes)]))
    a.obsm["spatial"] = np.asarray(xy, dtype=np.float64)
    return a


def store_of(adata, path, tile_size, spot_diameter=None):
    return stdask.read(stdask.ingest(AnnDataSource(adata, spot_diameter=spot_diameter), path, tile_size=tile_size,
                                     progress=False))


def edges(m, names=None):
    """Edge set of a sparse matrix, by row number or by obs name."""
    c = m.tocoo()
    if names is None:
        return set(zip(c.row.tolist(), c.col.tolist()))
    return set(zip(names[c.row], names[c.col]))


def ball_edges(coords, r, lib=None):
    """The reference: a global cKDTree ball query, self removed, same library only."""
    lists = cKDTree(coords).query_ball_point(coords, r)
    return {(i, j) for i, js in enumerate(lists) for j in js if i != j and (lib is None or lib[i] == lib[j])}


def knn_edges(coords, k, lib=None):
    """The reference: brute force, ranked by (distance, row), self removed."""
    out = set()
    for i in range(len(coords)):
        d = np.hypot(*(coords - coords[i]).T)
        ok = np.arange(len(coords)) != i
        if lib is not None:
            ok &= lib == lib[i]
        cand = np.flatnonzero(ok)
        order = np.lexsort((cand, d[cand]))[:k]
        out |= {(i, int(j)) for j in cand[order]}
    return out


RNG = np.random.default_rng(7)
POINTS = RNG.uniform(0, 1000, (1200, 2))
LIBS = RNG.choice(["s1", "s2"], len(POINTS))


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """The same 1,200 random points as 1 tile and as ~25 tiles."""
    d = tmp_path_factory.mktemp("gr")
    a = make_adata(POINTS, lib=LIBS)
    return {ts: store_of(a, d / f"t{ts}.zarr", ts, spot_diameter=15.0) for ts in (2000.0, 210.0)}


# ------------------------------------------------------------------------------------------------
# radius
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("r", [0.1, 0.2, 0.1 * np.sqrt(2), 0.1 * np.sqrt(5), 0.3])
def test_radius_block_inclusive_like_ckdtree(r):
    # a jittered 0.1 lattice: many pairs at exactly (in float) r; sqrt(d2) <= r would differ from cKDTree
    g = np.stack(np.meshgrid(np.arange(40), np.arange(40)), -1).reshape(-1, 2) * 0.1
    g = g + np.random.default_rng(0).integers(0, 3, g.shape) * 0.1
    rows = np.arange(len(g))
    blk = radius_block(g, rows, len(g), r)
    got = set(zip(np.repeat(rows, blk.counts).tolist(), blk.cols.tolist()))
    assert got == ball_edges(g, r)
    for i in range(0, len(g), 97):  # columns ascending within each row
        seg = blk.cols[blk.counts[:i].sum(): blk.counts[: i + 1].sum()]
        assert np.all(np.diff(seg) > 0)


def test_radius_on_integer_lattice_counts_exact_ties(tmp_path):
    xs, ys = np.meshgrid(np.arange(12), np.arange(12))
    xy = np.column_stack([xs.ravel(), ys.ravel()]).astype(float)
    ds = store_of(make_adata(xy), tmp_path / "l.zarr", 4.0)
    for r, interior in ((1.0, 4), (np.sqrt(2), 8), (2.0, 12)):
        g = gr.spatial_neighbors(ds, distance=r, copy=True, scheduler="sync", verbose=False)
        assert edges(g.connectivities) == ball_edges(ds.coords, r)
        inner = (ds.coords.min(1) >= 2) & (ds.coords.max(1) <= 9)
        assert np.all(g.summary.counts[inner] == interior)


def test_radius_equals_global_ckdtree_for_any_tiling(stores):
    results = {}
    for ts, ds in stores.items():
        g = gr.spatial_neighbors(ds, distance=40.0, copy=True, scheduler="sync", verbose=False)
        assert edges(g.connectivities) == ball_edges(ds.coords, 40.0)
        c = g.distances.tocoo()
        assert np.allclose(c.data, np.hypot(*(ds.coords[c.row] - ds.coords[c.col]).T), rtol=0, atol=1e-12)
        assert (g.connectivities != g.connectivities.T).nnz == 0  # symmetric
        assert g.connectivities.dtype == np.float32 and g.distances.dtype == np.float64
        assert g.connectivities.has_sorted_indices and g.connectivities.diagonal().sum() == 0
        results[ts] = edges(g.connectivities, ds.obs_names)
    assert results[2000.0] == results[210.0]
    assert stores[210.0].n_tiles > 20


def test_distance_none_is_two_spot_diameters(stores):
    ds = stores[210.0]
    g = gr.spatial_neighbors(ds, copy=True, scheduler="sync", verbose=False)  # spot diameter 15 -> r = 30
    assert edges(g.connectivities) == ball_edges(ds.coords, 30.0)


def test_visium_hexagons_give_six_neighbours(tmp_path):
    # Visium: 100 um pitch, 55 um spots; 2 x 55 = 110 um reaches the 6 adjacent spots, not the next ring (173 um)
    j, i = np.meshgrid(np.arange(14), np.arange(14), indexing="ij")
    xy = np.column_stack([(i * 100.0 + (j % 2) * 50.0).ravel(), (j * 100.0 * np.sqrt(3) / 2).ravel()])
    ds = store_of(make_adata(xy), tmp_path / "v.zarr", 500.0, spot_diameter=55.0)
    g = gr.spatial_neighbors(ds, copy=True, scheduler="sync", verbose=False)
    inner = (ds.coords[:, 0] > 150) & (ds.coords[:, 0] < 1150) & (ds.coords[:, 1] > 150) & (ds.coords[:, 1] < 1000)
    assert np.all(g.summary.counts[inner] == 6)
    assert g.summary.median_neighbours == 6


def test_sync_and_distributed_give_identical_graphs(stores):
    distributed = pytest.importorskip("distributed")
    ds = stores[210.0]
    ref = gr.spatial_neighbors(ds, distance=40.0, copy=True, scheduler="sync", verbose=False)
    refk = gr.spatial_neighbors(ds, "knn", n_neighs=7, copy=True, scheduler="sync", verbose=False)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0") as c, \
            distributed.Client(c, set_as_default=False) as client:
        g = gr.spatial_neighbors(ds, distance=40.0, copy=True, scheduler=client, rows_per_task=100, verbose=False)
        k = gr.spatial_neighbors(ds, "knn", n_neighs=7, copy=True, scheduler=client, rows_per_task=100,
                                 verbose=False)
    for a, b in ((ref, g), (refk, k)):
        for m1, m2 in ((a.connectivities, b.connectivities), (a.distances, b.distances)):
            assert np.array_equal(m1.indptr, m2.indptr) and np.array_equal(m1.indices, m2.indices)
            assert np.array_equal(m1.data, m2.data)


def test_library_key_keeps_libraries_apart(stores):
    ds = stores[210.0]
    lib = ds.obs["lib"].to_numpy()
    g = gr.spatial_neighbors(ds, distance=60.0, library_key="lib", copy=True, scheduler="sync", verbose=False)
    assert edges(g.connectivities) == ball_edges(ds.coords, 60.0, lib)
    k = gr.spatial_neighbors(ds, "knn", n_neighs=4, library_key="lib", copy=True, scheduler="sync", verbose=False)
    assert edges(k.connectivities) == knn_edges(ds.coords, 4, lib)
    with pytest.raises(KeyError, match="library_key"):
        gr.spatial_neighbors(ds, distance=60.0, library_key="nope", verbose=False)


def test_rewritten_library_column_is_not_served_from_cache(tmp_path):
    """Workers cache a store's library codes; rewriting the column must invalidate that cache."""
    ds = store_of(make_adata(POINTS, lib=LIBS), tmp_path / "s.zarr", 210.0, spot_diameter=15.0)
    g1 = gr.spatial_neighbors(ds, distance=60.0, library_key="lib", copy=True, scheduler="sync", verbose=False)
    assert edges(g1.connectivities) == ball_edges(ds.coords, 60.0, ds.obs["lib"].to_numpy())
    ds.set_result("obs", "lib", pd.Categorical(np.zeros(ds.n_obs, dtype=int)))  # one library now
    ds.write()
    g2 = gr.spatial_neighbors(ds, distance=60.0, library_key="lib", copy=True, scheduler="sync", verbose=False)
    assert edges(g2.connectivities) == ball_edges(ds.coords, 60.0, None)
    assert edges(g2.connectivities) != edges(g1.connectivities)


# ------------------------------------------------------------------------------------------------
# kNN
# ------------------------------------------------------------------------------------------------
def test_knn_equals_global_ckdtree_query(stores):
    results = {}
    for ts, ds in stores.items():
        g = gr.spatial_neighbors(ds, "knn", n_neighs=6, copy=True, scheduler="sync", verbose=False)
        d, idx = cKDTree(ds.coords).query(ds.coords, 7)
        assert np.all(idx[:, 0] == np.arange(ds.n_obs))  # no duplicate points: self comes first
        ref = {(i, int(j)) for i in range(ds.n_obs) for j in idx[i, 1:]}
        assert edges(g.connectivities) == ref
        c = g.distances.tocoo()
        assert np.allclose(c.data, np.hypot(*(ds.coords[c.row] - ds.coords[c.col]).T), rtol=0, atol=1e-12)
        assert np.all(g.summary.counts == 6)
        results[ts] = edges(g.connectivities, ds.obs_names)
    assert results[2000.0] == results[210.0]


def test_knn_ties_go_to_the_smaller_row_and_halo_grows(tmp_path):
    # an integer lattice (ties everywhere) plus a far-away cluster of 3 points: with k = 5 the cluster's
    # neighbours are on the lattice, far beyond the first halo, so its tiles must grow their halo
    xs, ys = np.meshgrid(np.arange(15), np.arange(15))
    xy = np.vstack([np.column_stack([xs.ravel(), ys.ravel()]).astype(float), [[60, 60], [61, 60], [60, 61.5]]])
    ds = store_of(make_adata(xy), tmp_path / "t.zarr", 5.0)
    for k in (1, 5, 8):
        g = gr.spatial_neighbors(ds, "knn", n_neighs=k, copy=True, scheduler="sync", verbose=False)
        assert edges(g.connectivities) == knn_edges(ds.coords, k)


def test_knn_with_fewer_points_than_k(tmp_path):
    xy = np.array([[0.0, 0.0], [1.0, 0.0], [5.0, 5.0]])
    ds = store_of(make_adata(xy), tmp_path / "s.zarr", 1.0)
    g = gr.spatial_neighbors(ds, "knn", n_neighs=4, copy=True, scheduler="sync", verbose=False)
    assert np.all(g.summary.counts == 2)


# ------------------------------------------------------------------------------------------------
# Delaunay and grid rings
# ------------------------------------------------------------------------------------------------
def test_delaunay_equals_scipy(stores):
    ds = stores[210.0]
    g = gr.spatial_neighbors(ds, "delaunay", copy=True, verbose=False)
    indptr, indices = Delaunay(ds.coords).vertex_neighbor_vertices
    ref = {(i, int(j)) for i in range(ds.n_obs) for j in indices[indptr[i]: indptr[i + 1]]}
    assert edges(g.connectivities) == ref
    lib = ds.obs["lib"].to_numpy()
    gl = gr.spatial_neighbors(ds, "delaunay", library_key="lib", copy=True, verbose=False)
    assert all(lib[i] == lib[j] for i, j in edges(gl.connectivities))
    with pytest.raises(ValueError, match="limit 100"):
        gr.spatial_neighbors(ds, "delaunay", delaunay_max_points=100, verbose=False)


def test_delaunay_of_collinear_points_is_a_path():
    xy = np.column_stack([np.array([3.0, 0.0, 1.0, 2.0]), np.zeros(4)])
    blk = delaunay_graph(xy)
    got = set(zip(np.repeat(np.arange(4), blk.counts).tolist(), blk.cols.tolist()))
    assert got == {(1, 2), (2, 1), (2, 3), (3, 2), (3, 0), (0, 3)}


def hex_lattice(n=12, pitch=100.0):
    j, i = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    return np.column_stack([(i * pitch + (j % 2) * pitch / 2).ravel(), (j * pitch * np.sqrt(3) / 2).ravel()])


def hop_rings(adj, n_rings):
    """Reference ring numbers by breadth-first search."""
    n = adj.shape[0]
    out = {}
    for s in range(n):
        seen, frontier = {s}, [s]
        for ring in range(1, n_rings + 1):
            nxt = []
            for u in frontier:
                for v in adj.indices[adj.indptr[u]: adj.indptr[u + 1]]:
                    if v not in seen:
                        seen.add(v)
                        nxt.append(v)
                        out[(s, int(v))] = ring
            frontier = nxt
    return out


@pytest.mark.parametrize("lattice,n_neighs,interior", [("hex", 6, (6, 18, 36)), ("square", 4, (4, 12, 24)),
                                                       ("square", 8, (8, 24, 48))])
def test_grid_rings(tmp_path, lattice, n_neighs, interior):
    if lattice == "hex":
        xy = hex_lattice()
    else:
        xs, ys = np.meshgrid(np.arange(12), np.arange(12))
        xy = np.column_stack([xs.ravel(), ys.ravel()]) * 50.0
    ds = store_of(make_adata(xy), tmp_path / "g.zarr", 600.0)
    g1 = gr.spatial_neighbors(ds, "grid", n_neighs=n_neighs, copy=True, scheduler="sync", verbose=False)
    c = ds.coords
    centre = c.mean(0)
    span = np.abs(c - centre).max(0)
    for rings in (1, 2, 3):
        g = gr.spatial_neighbors(ds, "grid", n_neighs=n_neighs, n_rings=rings, copy=True, scheduler="sync",
                                 verbose=False)
        ref = hop_rings(g1.connectivities, rings)
        got = g.distances.tocoo()
        assert dict(zip(zip(got.row.tolist(), got.col.tolist()), got.data.tolist())) == ref
        deep = np.all(np.abs(c - centre) <= span - (rings + 0.6) * np.array([50.0, 50.0]) *
                      (2 if lattice == "hex" else 1), axis=1)
        assert deep.any() and np.all(g.summary.counts[deep] == interior[rings - 1])


SQUIDPY = Path(__file__).parent / "data" / "squidpy_graphs" / "squidpy_graphs.npz"


def squidpy_fixture(case: str) -> tuple[np.ndarray, sp.csr_matrix, sp.csr_matrix]:
    """squidpy's (coords, connectivities, distances) for ``case``, saved by
    ``tests/data/squidpy_graphs/make_fixtures.py`` (rows in input order: observation ``o{i}`` is row i)."""
    with np.load(SQUIDPY) as z:
        n = len(z[f"{case}/coords"])
        mats = [sp.csr_matrix((z[f"{case}/{k}_data"], z[f"{case}/{k}_indices"], z[f"{case}/{k}_indptr"]),
                              shape=(n, n)) for k in ("conn", "dist")]
        return z[f"{case}/coords"], *mats


def in_input_order(ds, m: sp.csr_matrix) -> sp.csr_matrix:
    """A (store order) graph of ``ds`` re-indexed so that observation ``o{i}`` is row and column i."""
    perm = pd.Index(ds.obs_names).get_indexer([f"o{i}" for i in range(ds.n_obs)])
    out = sp.csr_matrix(m)[perm][:, perm]
    out.sort_indices()
    return out


#: fixture case -> stdask's method and arguments for the graph squidpy was asked for (make_fixtures.cases)
SQUIDPY_CASES = {
    **{f"grid_{name}_rings{rings}": ("grid", {"n_neighs": k, "n_rings": rings})
       for name, k in (("hex", 6), ("square4", 4), ("square8", 8)) for rings in (1, 2)},
    "generic_delaunay": ("delaunay", {}),
    "generic_knn6": ("knn", {"n_neighs": 6}),
    "generic_radius40": ("radius", {"distance": 40.0}),
}


@pytest.mark.parametrize("case", list(SQUIDPY_CASES))
def test_graphs_match_squidpy(tmp_path, case):
    """Edges and distances equal squidpy 1.8.2's ``spatial_neighbors`` (grid: ring numbers; generic: Euclidean
    lengths), on lattices (tiles of 400 units, several per lattice) and the 1,200 random points."""
    method, kw = SQUIDPY_CASES[case]
    xy, conn, dist = squidpy_fixture(case)
    if case.startswith("generic"):
        assert np.array_equal(xy, POINTS)  # the fixture was made from the points of this module
    ds = store_of(make_adata(xy), tmp_path / "s.zarr", 400.0)
    g = gr.spatial_neighbors(ds, method, copy=True, scheduler="sync", verbose=False, **kw)
    mine_c, mine_d = in_input_order(ds, g.connectivities), in_input_order(ds, g.distances)
    assert edges(mine_c) == edges(conn), case
    assert (mine_c != conn).nnz == 0 and mine_c.dtype == conn.dtype
    assert edges(mine_d) == edges(dist)
    if method == "grid":  # ring numbers: exact
        assert (mine_d != dist).nnz == 0
    else:
        np.testing.assert_allclose(mine_d.data, dist.data, rtol=1e-12)


# ------------------------------------------------------------------------------------------------
# storage, summary, bad input
# ------------------------------------------------------------------------------------------------
def test_results_are_stored_with_summary(stores, capsys):
    ds = stdask.read(stores[210.0].path)
    gr.spatial_neighbors(ds, distance=40.0, scheduler="sync")
    line = capsys.readouterr().out.strip()
    s = gr.neighbour_summary(ds)
    assert line == f"{s.n_without_neighbours} spots with no neighbours, {s.median_neighbours} median spot neighbours."
    ds.write()
    b = ad.read_zarr(ds.path / "tables" / "table")
    conn, dst = b.obsp["spatial_connectivities"], b.obsp["spatial_distances"]
    assert conn.dtype == np.float32 and dst.dtype == np.float64
    assert edges(conn) == ball_edges(b.obsm["spatial"], 40.0)
    info = b.uns["spatial_neighbors"]
    assert info["params"]["method"] == "radius" and info["params"]["distance"] == 40.0
    assert info["summary"]["n_edges"] == conn.nnz
    counts = np.diff(conn.indptr)
    s2 = gr.neighbour_summary(stdask.read(ds.path))
    assert np.array_equal(s2.counts, counts) and s2.n_without_neighbours == int((counts == 0).sum())
    assert s2.median_neighbours == int(np.median(counts))


def test_no_neighbours_anywhere_raises(stores):
    with pytest.raises(ValueError, match="larger value"):
        gr.spatial_neighbors(stores[2000.0], distance=1e-3, scheduler="sync", verbose=False)


@pytest.mark.parametrize("distance,err,match", [(0, ValueError, "within-spot"), (0.0, ValueError, "within-spot"),
                                                (-5.0, ValueError, "positive"), (np.nan, ValueError, "positive"),
                                                (np.inf, ValueError, "positive"), (True, TypeError, "number"),
                                                ("10", TypeError, "number")])
def test_bad_distance(stores, distance, err, match):
    with pytest.raises(err, match=match):
        gr.spatial_neighbors(stores[2000.0], distance=distance, verbose=False)


def test_bad_parameters_and_missing_spot_diameter(tmp_path):
    ds = store_of(make_adata(POINTS[:50]), tmp_path / "n.zarr", 2000.0)
    with pytest.raises(ValueError, match="records no spot diameter"):
        gr.spatial_neighbors(ds, verbose=False)
    with pytest.raises(ValueError, match="n_neighs"):
        gr.spatial_neighbors(ds, "knn", n_neighs=0, verbose=False)
    with pytest.raises(ValueError, match="n_rings"):
        gr.spatial_neighbors(ds, "grid", n_rings=0, verbose=False)
    with pytest.raises(ValueError, match="method"):
        gr.spatial_neighbors(ds, "voronoi", verbose=False)
    with pytest.raises(KeyError, match="spatial_neighbors"):
        gr.neighbour_summary(ds)


def test_nan_coordinates_cannot_reach_a_store(tmp_path):
    xy = POINTS[:20].copy()
    xy[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        stdask.ingest(AnnDataSource(make_adata(xy)), tmp_path / "nan.zarr", progress=False)
