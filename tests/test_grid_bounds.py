"""Bounded grids: the tile grid is sparse (only occupied tiles exist), coordinates and tile sizes are range-checked.

One record far from the others used to make a dense bounding grid of ~10^8-10^12 tiles (gigabytes to ingest, a
hang in every loop over tiles); now it adds one tile. The store's row order is unchanged: rows sorted by tile
row-major over the grid, Hilbert order inside a tile.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import anndata as ad
import numpy as np
import pytest

import stdask
import stdask.store.tiling as tiling_mod
from stdask.cli import main as cli
from stdask.io.memory import AnnDataSource
from stdask.store.hilbert import hilbert_key
from stdask.store.tiling import HILBERT_ORDER, MAX_COORDINATE, Tiling

DATA = Path(__file__).parent / "data"
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def ref() -> ad.AnnData:
    return ad.read_h5ad(DATA / "ref_N2000.h5ad")


def _with_outlier(a: ad.AnnData, x: float, y: float) -> ad.AnnData:
    out = a[[0]].copy()
    out.obs_names = ["outlier"]
    out.obsm["spatial"] = np.array([[x, y]])
    b = ad.concat([a, out], merge="same")
    b.uns = a.uns
    return b


def _write_gem(path: Path, far: int) -> None:
    """A small bin1 GEM: 3,000 records in a 400 x 400 DNB square, and one record at (far, far)."""
    rng = np.random.default_rng(0)
    lines = ["geneID\tx\ty\tMIDCount"]
    for _ in range(3000):
        lines.append(f"G{rng.integers(5)}\t{rng.integers(1000, 1400)}\t{rng.integers(1000, 1400)}\t{rng.integers(1, 4)}")
    lines.append(f"G1\t{far}\t{far}\t2")
    path.write_text("\n".join(lines) + "\n")


# ------------------------------------------------------------------------------------------------
# one outlier costs one tile
# ------------------------------------------------------------------------------------------------
def test_outlier_ingests_in_small_memory_and_cci_runs(ref, tmp_path):
    """An observation at (1e12, 1e12) um (the issue's case), 1000 um tiles: the bounding grid has 10^18 tiles
    (dense: 8 EB of row starts); the store lists the occupied ones and `cci.run` finishes. Run in a child so its
    peak RSS is its own."""
    far = 1e12
    h5 = tmp_path / "o.h5ad"
    _with_outlier(ref, far, far).write_h5ad(h5)
    script = textwrap.dedent(f"""
        import json, resource, stdask
        from stdask.tl import cci
        p = stdask.ingest({str(h5)!r}, {str(tmp_path / 'o.zarr')!r}, tile_size=1000, progress=False)
        ingest_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        ds = stdask.read(p)
        res = cci.run(ds, cci.load_lrs(), min_spots=20, n_pairs=100, progress=False, verbose=False)
        print(json.dumps({{"rss": ingest_rss, "n_tiles": ds.n_tiles, "grid": [ds.tiling.nx, ds.tiling.ny],
                          "n_lrs": len(res.lrs), "n_obs": ds.n_obs,
                          "peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}}))
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, cwd=REPO)
    assert run.returncode == 0, run.stderr[-3000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert got["rss"] < 2 * 2**30 and got["peak"] < 2 * 2**30, got
    assert got["grid"][0] * got["grid"][1] > 10**17  # the bounding grid is huge ...
    assert got["n_tiles"] <= 30  # ... but only the occupied tiles exist
    assert got["n_obs"] == ref.n_obs + 1 and got["n_lrs"] > 0


def test_gem_outlier_adds_one_tile(tmp_path):
    gem = tmp_path / "o.gem"
    _write_gem(gem, 10**9 - 1)
    ds = stdask.read(stdask.ingest(gem, tmp_path / "o.zarr", bin_size=1, progress=False))
    assert ds.tiling.nx * ds.tiling.ny > 10**13
    occupied = np.unique(ds.obs["tile"].to_numpy())
    assert ds.n_tiles == len(occupied) == 17 and np.all(np.diff(ds.tile_row_start) > 0)
    assert ds.obs_names[-1] == f"bin1_{10**9 - 1 - 1000}_{10**9 - 1 - 1000}"


def test_gem_bin_grid_beyond_int64_refused(tmp_path):
    """Records 10^12 DNB apart on both axes at bin 1: 10^24 bin ids cannot be numbered in int64."""
    gem = tmp_path / "o.gem"
    _write_gem(gem, 10**12)
    with pytest.raises(ValueError, match=r"bin_size 1: the records span .* bins, more than int64 can number"):
        stdask.ingest(gem, tmp_path / "o.zarr", bin_size=1, progress=False)
    assert not (tmp_path / "o.zarr").exists()


# ------------------------------------------------------------------------------------------------
# range checks
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [0, 0.0, -5.0, float("nan"), float("inf")])
def test_bad_tile_size_refused(ref, tmp_path, size):
    with pytest.raises(ValueError, match=r"tile_size \(CLI: --tile-size\) must be a positive finite number"):
        stdask.ingest(AnnDataSource(ref), tmp_path / "t.zarr", tile_size=size, progress=False)
    assert not (tmp_path / "t.zarr").exists()


def test_cli_tile_size_zero_refused_not_replaced(tmp_path, capsys):
    gem = tmp_path / "s.gem"
    _write_gem(gem, 1200)
    assert cli(["ingest", str(gem), str(tmp_path / "s.zarr"), "--bin", "20", "--tile-size", "0"]) == 2
    assert "--tile-size" in capsys.readouterr().err and not (tmp_path / "s.zarr").exists()


def test_far_or_nan_coordinates_refused(ref, tmp_path):
    with pytest.raises(ValueError, match=r"\|x\| >= 1e\+15 store units \(first at position 2000: x=1e\+16\)"):
        stdask.ingest(AnnDataSource(_with_outlier(ref, 1e16, 10.0)), tmp_path / "a.zarr", progress=False)
    with pytest.raises(ValueError, match=r"\|y\| >= 1e\+15 store units \(first at position 2000: y=-2e\+15\)"):
        stdask.ingest(AnnDataSource(_with_outlier(ref, 10.0, -2e15)), tmp_path / "b.zarr", progress=False)
    with pytest.raises(ValueError, match=r"NaN or infinite coordinates \(first at position 2000: x=nan"):
        stdask.ingest(AnnDataSource(_with_outlier(ref, np.nan, 10.0)), tmp_path / "c.zarr", progress=False)
    gem = tmp_path / "far.gem"
    _write_gem(gem, 10**16)
    with pytest.raises(ValueError, match=rf"{gem}: 1 record\(s\) have \|x\| >= 1e\+15 .*position 3000"):
        stdask.ingest(gem, tmp_path / "d.zarr", bin_size=1, progress=False)


def test_too_many_tiles_refused(ref, tmp_path, monkeypatch):
    monkeypatch.setattr(tiling_mod, "MAX_TILES", 50)
    with pytest.raises(ValueError, match=r"tile_size 100 makes more than 50 occupied tiles"):
        stdask.ingest(AnnDataSource(ref), tmp_path / "a.zarr", tile_size=100, progress=False)
    gem = tmp_path / "s.gem"
    _write_gem(gem, 1200)
    with pytest.raises(ValueError, match=r"tile_size 2 makes more than 50 occupied tiles"):
        stdask.ingest(gem, tmp_path / "b.zarr", bin_size=1, tile_size=2, progress=False)
    with pytest.raises(ValueError, match="too small for the extent"):
        Tiling.covering(1e-12, -MAX_COORDINATE, -MAX_COORDINATE, MAX_COORDINATE, MAX_COORDINATE)


# ------------------------------------------------------------------------------------------------
# the sparse grid keeps the store's rows, and tile neighbourhoods
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def holed(ref, tmp_path_factory):
    """The reference slice with a square hole: its bounding grid has empty tiles."""
    xy = ref.obsm["spatial"]
    keep = ~((xy[:, 0] > 1500) & (xy[:, 0] < 3500) & (xy[:, 1] > 1500) & (xy[:, 1] < 3500))
    a = ref[keep].copy()
    path = stdask.ingest(AnnDataSource(a), tmp_path_factory.mktemp("holed") / "h.zarr", tile_size=250,
                         progress=False)
    return a, stdask.read(path)


def test_sparse_store_rows_equal_dense_order(holed):
    a, ds = holed
    # the dense layout's order, computed independently: row-major tile over the bounding grid, Hilbert key
    # inside the tile, input position
    x, y = a.obsm["spatial"][:, 0], a.obsm["spatial"][:, 1]
    s = 250.0
    gx, gy = np.floor(x / s).astype(np.int64), np.floor(y / s).astype(np.int64)
    nx = gx.max() - gx.min() + 1
    dense = (gy - gy.min()) * nx + (gx - gx.min())
    side = 1 << HILBERT_ORDER
    hx = np.clip(((x / s - gx) * side).astype(np.int64), 0, side - 1)
    hy = np.clip(((y / s - gy) * side).astype(np.int64), 0, side - 1)
    order = np.lexsort((np.arange(len(x)), hilbert_key(hx, hy, HILBERT_ORDER), dense))
    assert list(ds.obs_names) == list(a.obs_names[order])
    occupied, counts = np.unique(dense, return_counts=True)
    assert ds.tiling.nx * ds.tiling.ny > ds.n_tiles == len(occupied)  # empty grid tiles are not listed
    assert np.array_equal(np.diff(ds.tile_row_start), counts)
    assert np.array_equal(ds.tiling.tiles, occupied)
    assert np.array_equal(ds.obs["tile"].to_numpy(), np.repeat(np.arange(len(occupied)), counts))


@pytest.mark.parametrize("radius", [0.0, 100.0, 600.0, 1e6])
def test_tiles_within_equals_brute_force(holed, radius):
    _, ds = holed
    tl = ds.tiling
    boxes = np.array([tl.tile_bounds(u) for u in range(ds.n_tiles)])
    for t in range(ds.n_tiles):
        x0, y0, x1, y1 = tl.tile_bounds(t)
        # grid neighbours: tiles whose grid position is within ceil(radius / size) of t's
        k = np.ceil(radius / tl.tile_size) if radius > 0 else 0
        near = ((boxes[:, 0] >= x0 - k * tl.tile_size - 1e-9) & (boxes[:, 2] <= x1 + k * tl.tile_size + 1e-9)
                & (boxes[:, 1] >= y0 - k * tl.tile_size - 1e-9) & (boxes[:, 3] <= y1 + k * tl.tile_size + 1e-9))
        assert np.array_equal(tl.tiles_within(t, radius), np.flatnonzero(near)), (t, radius)


def _as_version1(store: Path) -> None:
    """Rewrite a store's tile index in the dense version-1 layout (every bounding-grid tile listed)."""
    import zarr
    from anndata.io import write_elem

    ds = stdask.read(store)
    tl, starts = ds.tiling, ds.tile_row_start
    rows = np.zeros(tl.nx * tl.ny, np.int64)
    rows[tl.tiles] = np.diff(starts)
    dense = np.concatenate([[0], np.cumsum(rows)])
    g = zarr.open_group(str(store / "tables" / "table" / "uns" / "stdask"), mode="r+")
    del g["tile_ids"]
    del g["tile_row_start"]
    write_elem(g, "tile_row_start", dense)
    g["version"][()] = 1
    obs_tile = zarr.open_array(str(store / "tables" / "table" / "obs" / "tile"), mode="r+")
    obs_tile[:] = tl.tiles[obs_tile[:]].astype(np.int32)


def test_version1_store_reads_and_gives_the_same_results(holed, tmp_path):
    import shutil

    from stdask.gr import spatial_neighbors

    _, ds = holed
    old = tmp_path / "v1.zarr"
    shutil.copytree(ds.path, old)
    _as_version1(old)
    v1 = stdask.read(old)
    assert v1.store.tile_index.tiling.n_tiles == v1.tiling.nx * v1.tiling.ny > ds.n_tiles
    assert list(v1.obs_names) == list(ds.obs_names)
    for t in range(ds.n_tiles):
        u = int(ds.tiling.tiles[t])  # the same tile in the dense numbering
        assert ds.tile_rows(t) == v1.tile_rows(u)
        assert np.array_equal(ds.halo_rows(t, 300.0), v1.halo_rows(u, 300.0))  # what tile(t, halo) reads
    for method, kw in (("knn", {"n_neighs": 6}), ("radius", {"distance": 300.0})):
        a = spatial_neighbors(ds, method, progress=False, **kw)
        b = spatial_neighbors(v1, method, progress=False, **kw)
        assert (a.connectivities != b.connectivities).nnz == 0 and (a.distances != b.distances).nnz == 0


# ------------------------------------------------------------------------------------------------
# defaults sized from the occupied tiles, not the box an outlier stretches
# ------------------------------------------------------------------------------------------------
def test_default_tile_size_ignores_a_far_outlier():
    from stdask.store.tiling import default_tile_size

    rng = np.random.default_rng(0)
    x, y = rng.uniform(0, 20000, 1_000_000), rng.uniform(0, 20000, 1_000_000)
    plain = default_tile_size(x, y)
    assert plain == 5000.0
    for far in (0.999e9, 1e12):
        xo, yo = np.r_[x, far], np.r_[y, far]
        size = default_tile_size(xo, yo)
        # the box grew 10^9- to 10^16-fold in area; the tiles did not (else one tile would hold every
        # observation): the occupied tiles hold at most 16 x the target (20,000) on average, as documented
        assert size <= 2 * plain, (far, size)
        counts = np.bincount(Tiling.of_points(size, xo, yo).tile_of(xo, yo))
        counts = counts[counts > 0]
        assert len(xo) <= 16 * 20_000 * len(counts) and counts.max() < 0.3 * len(xo), (far, size, counts.max())


def test_knn_first_halo_follows_the_occupied_tiles(ref, tmp_path):
    from stdask.gr.neighbors import _knn_halos

    plain = stdask.read(stdask.ingest(AnnDataSource(ref), tmp_path / "p.zarr", tile_size=250, progress=False))
    far = _with_outlier(ref, 0.999e9, 0.999e9)
    ds = stdask.read(stdask.ingest(AnnDataSource(far), tmp_path / "o.zarr", tile_size=250, progress=False))
    h_plain, _ = _knn_halos(plain, 6)
    h_far, max_halo = _knn_halos(ds, 6)
    assert max_halo > 1e9 and h_far <= 1.5 * h_plain  # bounding-box density: a halo of ~10^5 um, every row


def test_raster_of_a_far_outlier_refused_not_allocated():
    from stdask.raster import quantize

    coords = np.array([[0.0, 0.0], [1.0, 1.0], [2.0, 0.0], [0.999e9, 10.0]])
    with pytest.raises(ValueError, match=r"the raster would span 1 x 999,000,001 x 11 pixels \(pitch 1\)"):
        quantize(coords, pitch=1.0)
    with pytest.raises(ValueError, match="more than 2,147,483,648"):
        quantize(np.array([[0.0, 0.0], [5e4, 5e4]]), pitch=1.0)
    assert quantize(coords[:3], pitch=1.0).shape == (1, 3, 2)


def test_damaged_tile_ids_refused(holed, tmp_path):
    import shutil

    import zarr

    from stdask.store.format import StoreFormatError

    _, ds = holed
    p = tmp_path / "d.zarr"
    shutil.copytree(ds.path, p)
    ids = zarr.open_array(str(p / "tables" / "table" / "uns" / "stdask" / "tile_ids"), mode="r+")
    ids[0] = ids[1]  # no longer strictly increasing
    # a checksum check (if the store records them) may name the damage first; either way the element is named
    with pytest.raises(StoreFormatError, match=r"uns/stdask"):
        stdask.read(p)
