"""Binning cells: ``stdask.tl.grid`` (stLearn semantics without lost cells) and ``stdask.pp.binning.bin``
(square bins): every cell in exactly one bin, sums equal, label fractions, pitch recorded."""
from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import stdask
from stdask import gr
from stdask.io.memory import AnnDataSource
from stdask.pp.binning import bin as bin_cells
from stdask.tl import grid


@pytest.fixture(autouse=True)
def _quiet():
    with stdask.settings.override(progress=False):
        yield


def lattice(n=10):
    xs, ys = np.meshgrid(np.arange(n), np.arange(n))
    return np.column_stack([xs.ravel(), ys.ravel()]).astype(np.float64)


def make_adata(xy, seed=0, genes=6, float_layer=False):
    n = len(xy)
    rng = np.random.default_rng(seed)
    X = sp.csr_matrix(rng.integers(0, 4, (n, genes)).astype(np.int32))
    labels = pd.Categorical(rng.choice(["b", "a", "c"], n), categories=["c", "b", "a"])
    obs = pd.DataFrame({"ct": labels, "plain": labels.astype(str)}, index=[f"cell{i}" for i in range(n)])
    a = ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=[f"g{i}" for i in range(genes)]))
    a.obsm["spatial"] = xy
    if float_layer:
        a.layers["norm"] = sp.csr_matrix(X.multiply(0.5).astype(np.float32))
    return a


def ingest(adata, path, tile_size):
    return stdask.read(stdask.ingest(AnnDataSource(adata), path, tile_size=tile_size, progress=False))


def stlearn_membership(x, y, n_row, n_col):
    """How many bins stLearn 1.2.2 puts each cell in (spec section 12, rule 4), on truncated coordinates."""
    x, y = np.trunc(x), np.trunc(y)
    _, xe, ye = np.histogram2d(x, y, bins=[n_col, n_row])
    hits = np.zeros(len(x), np.int64)
    for i in range(n_col):
        for j in range(n_row):
            if j == n_row - 1 and i < n_col - 1:
                m = (x >= xe[i]) & (x < xe[i + 1]) & (y > ye[j]) & (y <= ye[j + 1])
            elif i == n_col - 1 and j < n_row - 1:
                m = (x > xe[i]) & (x <= xe[i + 1]) & (y >= ye[j]) & (y < ye[j + 1])
            else:
                m = (x >= xe[i]) & (x < xe[i + 1]) & (y >= ye[j]) & (y < ye[j + 1])
            hits += m
    return hits


def table(ds):
    return ad.read_zarr(ds.path / "tables" / "table")


def expected_bins(adata, n_row, n_col):
    """Reference: numpy.histogram2d bin of every cell, by name."""
    x, y = adata.obsm["spatial"].T
    _, xe, ye = np.histogram2d(x, y, bins=[n_col, n_row])
    i = np.clip(np.searchsorted(xe, x, side="right") - 1, 0, n_col - 1)
    j = np.clip(np.searchsorted(ye, y, side="right") - 1, 0, n_row - 1)
    return np.char.add("grid_", (i * n_row + j).astype(str)), xe, ye


@pytest.mark.parametrize("n_bins,stlearn_lost", [(3, 19), (5, 3)])
def test_grid_keeps_every_cell_of_an_integer_lattice(tmp_path, n_bins, stlearn_lost):
    a = make_adata(lattice())
    x, y = a.obsm["spatial"].T
    assert int((stlearn_membership(x, y, n_bins, n_bins) == 0).sum()) == stlearn_lost  # the reference's bug
    ds = ingest(a, tmp_path / "c.zarr", 4.0)
    g = grid(ds, n_bins, n_bins, use_label="ct", out=tmp_path / "g.zarr")
    b = table(g)
    assert int(b.obs["n_cells"].sum()) == 100
    hist, xe, ye = np.histogram2d(x, y, bins=[n_bins, n_bins])
    assert np.array_equal(b.uns["grid_counts"], hist.astype(np.int64))
    assert np.array_equal(b.uns["grid_xedges"], xe) and np.array_equal(b.uns["grid_yedges"], ye)
    names, _, _ = expected_bins(a, n_bins, n_bins)
    # sums per bin equal the sums of the member cells
    ref = pd.DataFrame(a.X.toarray(), index=names).groupby(level=0).sum()
    assert np.array_equal(b.to_df().loc[ref.index].to_numpy(), ref.to_numpy())
    assert b.X.sum() == a.X.sum()
    # centres, names, coordinates
    n = np.array([int(s.split("_")[1]) for s in b.obs_names])
    i, j = np.divmod(n, n_bins)
    assert np.allclose(b.obs["imagecol"], (xe[i] + xe[i + 1]) / 2)
    assert np.allclose(b.obs["imagerow"], (ye[j] + ye[j + 1]) / 2)
    assert np.array_equal(b.obsm["spatial"], b.obs[["imagecol", "imagerow"]].to_numpy())
    assert np.array_equal(b.obs["n_cells"].to_numpy(), hist[i, j].astype(np.int64))
    info = b.uns["binning"]
    assert info["bin_width"] == xe[1] - xe[0] and info["bin_height"] == ye[1] - ye[0]


def test_grid_label_fractions_and_argmax(tmp_path):
    xy = np.array([[0, 0], [0.5, 0.5], [0.2, 0.9], [0.9, 0.1], [9, 9], [8.5, 9], [9, 8.5], [8.9, 8.8]], float)
    a = make_adata(xy)
    # bin 0: b, a, a, b (tie a/b -> "a", first in sorted order); bin 3: c, c, c, a
    a.obs["ct"] = pd.Categorical(["b", "a", "a", "b", "c", "c", "c", "a"], categories=["c", "b", "a"])
    ds = ingest(a, tmp_path / "c.zarr", 100.0)
    ds.set_result("uns", "ct_colors", np.array(["#ff0000", "#00ff00", "#0000ff"]))  # ingest keeps no colours
    ds.write()
    g = grid(ds, 2, 2, use_label="ct", out=tmp_path / "g.zarr")
    b = table(g)
    frac = b.uns["ct"]
    assert list(frac.columns) == ["a", "b", "c"]
    assert np.allclose(frac.loc["grid_0"], [0.5, 0.5, 0.0]) and np.allclose(frac.loc["grid_3"], [0.25, 0, 0.75])
    assert b.obs.loc["grid_0", "ct"] == "a" and b.obs.loc["grid_3", "ct"] == "c"
    assert list(b.obs["ct"].cat.categories) == ["c", "b", "a"]  # the input's categories
    pos = {nm: k for k, nm in enumerate(b.obs_names)}
    assert np.allclose(b.obsm["ct_fractions"][pos["grid_3"]], [0.25, 0, 0.75])
    assert list(b.uns["binning"]["label_columns"]) == ["a", "b", "c"]
    assert list(b.uns["ct_colors"]) == ["#ff0000", "#00ff00", "#0000ff"]
    assert set(b.obs_names) == {"grid_0", "grid_3"}  # empty bins dropped
    with pytest.raises(TypeError, match="categorical"):
        grid(ds, 2, 2, use_label="plain", out=tmp_path / "g2.zarr")


def test_grid_same_for_one_tile_and_many(tmp_path):
    xy = np.random.default_rng(3).uniform(0, 500, (800, 2))
    xy[:10] = np.round(xy[:10] / 50) * 50  # a few cells exactly on internal edges
    a = make_adata(xy, float_layer=True)
    outs = []
    for ts in (1000.0, 120.0):
        ds = ingest(a, tmp_path / f"c{ts}.zarr", ts)
        outs.append(table(grid(ds, 7, 9, use_label="ct", out=tmp_path / f"g{ts}.zarr")))
    b1, b2 = outs
    b2 = b2[b1.obs_names]
    assert (b1.X != b2.X).nnz == 0 and b1.X.sum() == a.X.sum()
    assert np.array_equal(b1.obsm["spatial"], b2.obsm["spatial"])
    assert b1.obs["n_cells"].equals(b2.obs["n_cells"]) and b1.obs["ct"].equals(b2.obs["ct"])
    names, _, _ = expected_bins(a, 7, 9)
    assert np.array_equal(b1.obs["n_cells"].to_numpy(), pd.Series(names).value_counts()[b1.obs_names].to_numpy())
    # a float layer: float32 sums of the member cells
    ds = stdask.read(tmp_path / "c120.0.zarr")
    f = table(grid(ds, 7, 9, layer="norm", out=tmp_path / "gf.zarr"))
    assert f.X.dtype == np.float32
    ref = pd.DataFrame(a.layers["norm"].toarray().astype(np.float64), index=names).groupby(level=0).sum()
    assert np.allclose(f.to_df().loc[ref.index].to_numpy(), ref.to_numpy(), rtol=1e-6)


def test_bin_square_bins(tmp_path):
    a = make_adata(lattice())
    ds = ingest(a, tmp_path / "c.zarr", 3.0)
    q = bin_cells(ds, 2.0, tmp_path / "b.zarr", use_label="ct")
    b = table(q)
    assert int(b.obs["n_cells"].sum()) == 100 and len(b) == 25  # 0..9 in bins of 2: cells on every edge
    assert np.all(b.obs["n_cells"] == 4)
    x, y = a.obsm["spatial"].T
    key = (x // 2).astype(int).astype(str).astype(object) + "_" + (y // 2).astype(int).astype(str).astype(object)
    ref = pd.DataFrame(a.X.toarray(), index="bin2_" + key).groupby(level=0).sum()
    assert np.array_equal(b.to_df().loc[ref.index].to_numpy(), ref.to_numpy())
    assert np.allclose(b.obsm["spatial"], np.column_stack([b.obs["bin_x"] * 2 + 1.0, b.obs["bin_y"] * 2 + 1.0]))
    assert b.uns["binning"]["bin_width"] == 2.0 and b.uns["binning"]["method"] == "bin"
    # the pitch, not a cell diameter, decides the neighbourhood
    assert q.spot_diameter is None
    with pytest.raises(ValueError, match="2 x 2 um bins"):
        gr.spatial_neighbors(q, verbose=False)
    g = gr.spatial_neighbors(q, distance=1.5 * 2.0, copy=True, scheduler="sync", verbose=False)
    inner = (q.obs["bin_x"].between(1, 3) & q.obs["bin_y"].between(1, 3)).to_numpy()
    assert np.all(g.summary.counts[inner] == 8)
    # an explicit origin shifts the edges
    b3 = table(bin_cells(ds, 3.0, tmp_path / "b3.zarr", origin=(-1.0, -1.0)))
    assert int(b3.obs["n_cells"].sum()) == 100
    assert set(b3.obs["n_cells"]) == {9, 6, 4}  # edges at -1, 2, 5, 8, 11


def test_bad_input(tmp_path):
    ds = ingest(make_adata(lattice(4)), tmp_path / "c.zarr", 10.0)
    for bad in (0, -1.0, np.nan, np.inf):
        with pytest.raises(ValueError, match="bin_size"):
            bin_cells(ds, bad, tmp_path / "x.zarr")
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="n_row"):
            grid(ds, bad, 3, out=tmp_path / "x.zarr")
    with pytest.raises(ValueError, match="origin"):
        bin_cells(ds, 1.0, tmp_path / "x.zarr", origin=(0.5, 0.0))
    with pytest.raises(KeyError, match="use_label"):
        grid(ds, 2, 2, use_label="nope", out=tmp_path / "x.zarr")
    grid(ds, 2, 2, out=tmp_path / "x.zarr")
    with pytest.raises(FileExistsError):
        grid(ds, 2, 2, out=tmp_path / "x.zarr")
