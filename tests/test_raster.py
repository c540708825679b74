"""stdask.raster: observations to pixels (quantisation, collisions), per-pixel means, tiles with a halo, and
rasters stored as ``images/<name>`` elements (xarray, tile reader, SpatialData, encoding registry)."""
from __future__ import annotations

import json
import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import stdask
from stdask.io.memory import AnnDataSource
from stdask.raster import (RasterBuilder, TileGrid, dataset_grid, median_nn_distance, pixel_affine,
                           quantize, rasterize, read_raster, read_tiles, sample_pixels, write_raster)
from stdask.store.encoding import REGISTRY
from stdask.store.format import StoreFormatError


@pytest.fixture(autouse=True)
def quiet(quiet_progress):
    yield


# ------------------------------------------------------------------------------------------------ grid
def test_pitch_lattice_maps_to_consecutive_integers():
    rng = np.random.default_rng(0)
    p = 37.5
    r, c = np.meshgrid(np.arange(9), np.arange(13), indexing="ij")
    r, c = r.ravel(), c.ravel()
    xy = np.column_stack([1234.5 + r * p, -880.0 + c * p]) + rng.uniform(-0.3 * p, 0.3 * p, (len(r), 2))
    g = quantize(xy, pitch=p, origin=(1234.5, -880.0))
    np.testing.assert_array_equal(g.row, r)
    np.testing.assert_array_equal(g.col, c)
    assert (g.height, g.width) == (9, 13)  # H from spatial[:, 0] (rows), W from spatial[:, 1] (columns)
    assert g.collisions().n_shared_pixels == 0
    # default pitch: the median nearest-neighbour distance of an exact lattice is its pitch
    exact = np.column_stack([r * p, c * p]) + 5000.0
    assert median_nn_distance(exact) == pytest.approx(p)
    g2 = quantize(exact)
    np.testing.assert_array_equal(g2.row, r)
    assert g2.pitch == pytest.approx(p) and g2.origin == (5000.0, 5000.0)


def test_collisions_are_counted_and_averaged():
    rng = np.random.default_rng(1)
    n = 3000
    xy = rng.uniform(0, 200, (n, 2))
    vals = rng.normal(size=(n, 4)).astype(np.float32)
    g = quantize(xy, pitch=10.0)
    img, count = rasterize(vals, g)
    # independent computation: group observations by their pixel with pandas
    key = pd.Series(list(zip(np.rint((xy[:, 0] - xy[:, 0].min()) / 10).astype(int),
                             np.rint((xy[:, 1] - xy[:, 1].min()) / 10).astype(int))))
    groups = pd.DataFrame(vals.astype(np.float64)).groupby(key.values)
    means = groups.mean()
    sizes = groups.size()
    for (rr, cc), m in means.iloc[::7].iterrows():
        np.testing.assert_allclose(img[0, :, rr, cc], m.to_numpy(), rtol=1e-5, atol=1e-6)
        assert count[0, rr, cc] == sizes[(rr, cc)]
    coll = g.collisions()
    assert coll.n_pixels == len(sizes)
    assert coll.n_shared_pixels == int((sizes > 1).sum())
    assert coll.n_colliding_obs == int(sizes[sizes > 1].sum())
    assert coll.max_per_pixel == int(sizes.max())
    assert coll.n_obs == n and "averaged" in str(coll)
    # every colliding observation reads back its pixel's (averaged) value: not "last one wins"
    back = sample_pixels(img, g)
    shared = np.flatnonzero(sizes.reindex(key.values).to_numpy() > 1)
    assert len(shared) > 100
    np.testing.assert_allclose(back[shared], means.loc[key.values[shared]].to_numpy(), rtol=1e-5, atol=1e-6)
    assert (count.sum() == n) and (img[0][:, count[0] == 0] == 0).all()


def test_scale_mode_reproduces_reference_truncation():
    rng = np.random.default_rng(2)
    pos = rng.uniform(100, 900, (500, 2))  # positive offsets are kept
    g = quantize(pos, scale=1 / 14)
    np.testing.assert_array_equal(g.row, (pos[:, 0] * (1 / 14)).astype(int))
    np.testing.assert_array_equal(g.col, (pos[:, 1] * (1 / 14)).astype(int))
    assert g.mode == "scale" and g.origin == (0.0, 0.0)
    neg = pos - 500  # any negative coordinate: each axis shifted to start at 0, then truncated
    g = quantize(neg, scale=0.5)
    np.testing.assert_array_equal(g.row, ((neg[:, 0] - neg[:, 0].min()) * 0.5).astype(int))
    np.testing.assert_array_equal(g.col, ((neg[:, 1] - neg[:, 1].min()) * 0.5).astype(int))
    with pytest.raises(ValueError, match="not both"):
        quantize(pos, pitch=1.0, scale=1.0)
    with pytest.raises(ValueError, match="scale must be"):
        quantize(pos, scale=0)


def test_array_mode_and_multi_slice_frame():
    a = np.array([[0, 0], [0, 2], [1, 1], [1, 3]])
    b = np.array([[0, 0], [5, 1], [2, 7]])
    g = quantize(None, array_rowcol=[a, b])
    assert g.mode == "array" and g.n_slices == 2
    # one frame for all slices: H from rows, W from columns (never square by mistake; S5)
    assert (g.height, g.width) == (6, 8)
    np.testing.assert_array_equal(g.slice, [0, 0, 0, 0, 1, 1, 1])
    np.testing.assert_array_equal(g.pixel[4:], (np.array([1, 1, 1]) * 6 + b[:, 0]) * 8 + b[:, 1])
    with pytest.raises(ValueError, match="non-integer"):
        quantize(None, array_rowcol=np.array([[0.5, 1.0]]))
    with pytest.raises(ValueError, match="negative"):
        quantize(None, array_rowcol=np.array([[-1, 1]]))
    # several aligned slices share one origin (the global minimum) and one pitch
    s1 = np.array([[100.0, 200.0], [110.0, 200.0], [100.0, 210.0]])
    s2 = s1 + [[30.0, 0.0]]
    g = quantize([s1, s2], pitch=10.0)
    assert g.origin == (100.0, 200.0)
    np.testing.assert_array_equal(g.row[3:], g.row[:3] + 3)
    with pytest.raises(ValueError, match="NaN"):
        quantize(np.array([[0.0, np.nan], [1.0, 1.0]]), pitch=1.0)


def test_builder_zscores_per_slice_and_ignores_chunking():
    rng = np.random.default_rng(3)
    n1, n2 = 400, 300
    xy = [rng.uniform(0, 100, (n1, 2)), rng.uniform(0, 100, (n2, 2))]
    g = quantize(xy, pitch=4.0)
    vals = np.concatenate([rng.normal(3, 2, (n1, 5)), rng.normal(-1, 0.5, (n2, 5))]).astype(np.float32)
    img, count = rasterize(vals, g, zscore=True)
    # independent: z-score each slice (ddof=1, as scanpy's scale), then average per pixel
    z = vals.astype(np.float64).copy()
    for s in (slice(0, n1), slice(n1, n1 + n2)):
        z[s] = (z[s] - z[s].mean(0)) / z[s].std(0, ddof=1)
    ref = np.zeros((2, 5, g.height, g.width))
    np.add.at(ref, (g.slice, slice(None), g.row, g.col), z)
    nz = count > 0
    ref = np.where(nz[:, None], ref / np.maximum(count, 1)[:, None], 0)
    np.testing.assert_allclose(img, ref, rtol=1e-5, atol=1e-5)
    # rows added in shuffled chunks give the same image
    b = RasterBuilder(g, 5)
    perm = rng.permutation(n1 + n2)
    for part in np.array_split(perm, 7):
        b.add(part, vals[part])
    img2, count2 = b.finish(zscore=True)
    np.testing.assert_allclose(img2, img, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(count2, count)
    with pytest.raises(ValueError, match="twice"):
        b.add(perm[:1], vals[perm[:1]])
    # a builder reading the values from a source array (no per-channel sums held): the same image, bit for bit
    bs = RasterBuilder(g, 5, source=vals)
    for part in np.array_split(perm, 7):
        bs.add(part)
    img_s, count_s = bs.finish(zscore=True)
    assert np.array_equal(img_s.view(np.uint32), img2.view(np.uint32)) and np.array_equal(count_s, count2)
    assert bs._sums is None
    with pytest.raises(ValueError, match="source"):
        bs.add(perm[:1], vals[perm[:1]])
    b3 = RasterBuilder(g, 5)
    b3.add(np.arange(10), vals[:10])
    with pytest.raises(ValueError, match="neither added nor skipped"):
        b3.finish()
    b3.skip(np.arange(10, n1 + n2))
    img3, count3 = b3.finish()
    assert count3.sum() == 10


# ------------------------------------------------------------------------------------------------ tiles
def test_tiles_partition_the_frame_and_read_halos():
    rng = np.random.default_rng(4)
    img = rng.normal(size=(2, 3, 23, 30)).astype(np.float32)
    tg = TileGrid((2, 23, 30), tile=8, halo=3)
    seen = np.zeros((2, 23, 30), dtype=int)
    padded = np.pad(img, ((0, 0), (0, 0), (3, 3 + 8), (3, 3 + 8)))
    for w in tg:
        seen[w.b, w.r0:w.r1, w.c0:w.c1] += 1
        win = tg.read(img, w)
        assert win.shape == (3, 14, 14)
        np.testing.assert_array_equal(win, padded[w.b, :, w.r0:w.r0 + 14, w.c0:w.c0 + 14])
        inside, own = tg.masks(w)
        assert own.sum() == (w.r1 - w.r0) * (w.c1 - w.c0) and (inside | ~own).all()
        assert (win[:, ~inside] == 0).all()
    assert (seen == 1).all()  # own regions partition every slice
    out = np.zeros_like(img)
    for w in tg:
        tg.write(out, w, tg.read(img, w))
    np.testing.assert_array_equal(out, img)
    small = TileGrid((1, 5, 6), tile=128, halo=2)
    assert len(small) == 1 and small.tile == 6


# ------------------------------------------------------------------------------------------------ store
@pytest.fixture(scope="module")
def store(tmp_path_factory):
    rng = np.random.default_rng(5)
    r, c = np.meshgrid(np.arange(30), np.arange(41), indexing="ij")
    xy = np.column_stack([700.0 + r.ravel() * 20.0, 300.0 + c.ravel() * 20.0])
    n = len(xy)
    a = ad.AnnData(sp.csr_matrix(rng.poisson(1.0, (n, 20)).astype(np.int32)),
                   obs=pd.DataFrame(index=[f"b{i}" for i in range(n)]),
                   var=pd.DataFrame(index=[f"g{i}" for i in range(20)]))
    a.obsm["spatial"] = xy
    path = stdask.ingest(AnnDataSource(a, unit="DNB", spot_diameter=20.0), tmp_path_factory.mktemp("r") / "s.zarr",
                         progress=False)
    return stdask.read(path)


def test_raster_element_roundtrip_xarray_and_tiles(store):
    ds = store
    g = dataset_grid(ds)
    assert g.mode == "pitch" and g.pitch == pytest.approx(20.0) and (g.height, g.width) == (30, 41)
    vals = np.random.default_rng(6).normal(size=(ds.n_obs, 4)).astype(np.float32)
    img, count = rasterize(vals, g)
    aff = pixel_affine(g.row, g.col, ds.coords)
    path = write_raster(ds, "pcs", img[0], count[0], channels=list("abcd"), grid=g.meta(), affine=aff, tile=16)
    assert path.name == "pcs" and REGISTRY.versions("stdask-raster") == (1,)
    r = read_raster(ds, "pcs")
    assert r.dims == ("c", "y", "x") and r.shape == (4, 30, 41)
    assert r.data.chunks == ((4,), (16, 14), (16, 16, 9))  # one chunk per tile
    np.testing.assert_array_equal(r.values, img[0])
    assert list(r.coords["c"].values) == list("abcd") and r.attrs["grid"]["mode"] == "pitch"
    np.testing.assert_array_equal(read_raster(ds, "pcs", count=True).values, count[0])
    # the affine maps pixel centres onto the observations' coordinates (lattice: exactly)
    yx = (aff @ np.column_stack([g.row + 0.5, g.col + 0.5, np.ones(ds.n_obs)]).T)[:2].T
    np.testing.assert_allclose(yx[:, ::-1], ds.coords, atol=1e-6)
    # tile reader: windows with a halo, equal to the in-memory windows
    tg = TileGrid((1, 30, 41), 16, 2)
    for (w, x, inside, own), w2 in zip(read_tiles(ds, "pcs", halo=2), tg):
        assert w == w2
        np.testing.assert_array_equal(x, tg.read(img, w2))
    # overwrite atomically; no temporary siblings remain
    write_raster(ds, "pcs", img[0] * 2, count[0], tile=16)
    np.testing.assert_array_equal(read_raster(ds, "pcs").values, img[0] * 2)
    assert not [p for p in (ds.path / "images").iterdir() if "stdask-tmp" in p.name]
    # the store still opens as a store, and its table is unchanged
    assert stdask.read(ds.path).n_obs == ds.n_obs


def test_raster_unknown_version_is_refused(store, tmp_path):
    ds = store
    write_raster(ds, "bad", np.zeros((1, 30, 41), np.float32))
    meta_file = ds.path / "images" / "bad" / "zarr.json"
    meta = json.loads(meta_file.read_text())
    meta["attributes"]["stdask"]["version"] = 99
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(StoreFormatError, match="version 99"):
        read_raster(ds, "bad")
    with pytest.raises(KeyError, match="no raster"):
        read_raster(ds, "missing")
    with pytest.raises(ValueError, match="invalid raster name"):
        write_raster(ds, "a/b", np.zeros((1, 2, 2), np.float32))


def test_spatialdata_reads_the_raster(store):
    sd = pytest.importorskip("spatialdata")
    ds = store
    g = dataset_grid(ds)
    img, count = rasterize(np.ones((ds.n_obs, 2), np.float32), g)
    write_raster(ds, "ones", img[0], count[0], affine=pixel_affine(g.row, g.col, ds.coords))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sdata = sd.read_zarr(ds.path)
    assert "ones" in sdata.images and sdata.images["ones"].shape == (2, 30, 41)
    assert "table" in sdata.tables
