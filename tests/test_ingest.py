"""End to end: synthetic slice -> native file -> ingest -> store equals the generator exactly."""
from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import stdask
from stdask.cli import main as cli
from stdask.datasets import synthetic_slice
from stdask.datasets.gef import write_cellbin_gef, write_gef
from stdask.datasets.gem import write_gem
from stdask.datasets.h5ad import write_h5ad
from stdask.datasets.tenx import write_mtx, write_visium


def by_xy(x, y):
    return np.lexsort((x, y))


def table(store):
    return ad.read_zarr(store / "tables" / "table")


def assert_same_matrix(a, b):
    a, b = sp.csr_matrix(a), sp.csr_matrix(b)
    assert a.shape == b.shape
    assert (a != b).nnz == 0


def check_scverse(store):
    """anndata and spatialdata see the same matrix and coordinates."""
    t = table(store)
    spatialdata = pytest.importorskip("spatialdata")
    s = spatialdata.read_zarr(store).tables["table"]
    assert_same_matrix(t.X, s.X)
    assert np.array_equal(t.obsm["spatial"], s.obsm["spatial"])
    return t


@pytest.fixture(scope="module")
def stereo():
    return synthetic_slice(n_obs=1200, n_genes=300, layout="stereo", bin_size=20, seed=1)


@pytest.fixture(scope="module")
def cells():
    return synthetic_slice(n_obs=800, n_genes=250, layout="cells", seed=2)


@pytest.fixture(scope="module")
def visium():
    return synthetic_slice(n_obs=900, n_genes=200, layout="visium", seed=3)


def grid_truth(slice_):
    a = slice_.to_anndata()
    o = by_xy(a.obs["x"].to_numpy(), a.obs["y"].to_numpy())
    return a[o]


@pytest.mark.parametrize("suffix", [".gem", ".gem.gz"])
def test_gem_bins_equal_generator(stereo, tmp_path, suffix):
    gem = tmp_path / f"s{suffix}"
    write_gem(stereo, gem, exon=True)
    store = stdask.ingest(gem, tmp_path / "s.zarr", bin_size=20, progress=False, chunk_size=50_000)
    t = check_scverse(store)
    ref = grid_truth(stereo)
    o = by_xy(t.obs["x"].to_numpy(), t.obs["y"].to_numpy())
    got = t[o]
    # a GEM lists only genes with records: genes absent from the store must have no counts at all
    missing = ref.var_names.difference(got.var_names)
    assert ref[:, missing].X.sum() == 0 and set(got.var_names) <= set(ref.var_names)
    assert_same_matrix(got.X, ref[:, got.var_names].X)
    assert "exon" in t.layers and (t.layers["exon"] <= t.X).toarray().all()
    # bin centres sit on the 20-DNB lattice
    assert np.allclose((t.obs["x"] - t.obs["x"].min()) % 20, 0)


def test_gem_cellbin_equals_generator(cells, tmp_path):
    gem = tmp_path / "c.gem.gz"
    write_gem(cells, gem)
    store = stdask.ingest(gem, tmp_path / "c.zarr", cellbin=True, progress=False, chunk_size=40_000)
    t = check_scverse(store)
    ref = cells.to_anndata()
    rows = t.obs["cell_id"].to_numpy() - 1
    assert len(rows) == ref.n_obs and len(np.unique(rows)) == ref.n_obs
    assert_same_matrix(t.X, ref[rows][:, t.var_names].X)


def test_gef_bins_and_cellbin(stereo, cells, tmp_path):
    gef = tmp_path / "s.gef"
    write_gef(stereo, gef)
    store = stdask.ingest(gef, tmp_path / "g.zarr", bin_size=20, progress=False)
    t = check_scverse(store)
    ref = grid_truth(stereo)
    got = t[by_xy(t.obs["x"].to_numpy(), t.obs["y"].to_numpy())]
    assert ref[:, ref.var_names.difference(got.var_names)].X.sum() == 0
    assert_same_matrix(got.X, ref[:, got.var_names].X)

    cg = tmp_path / "c.cellbin.gef"
    write_cellbin_gef(cells, cg)
    store = stdask.ingest(cg, tmp_path / "cg.zarr", progress=False)
    t = check_scverse(store)
    ref = cells.to_anndata()
    assert t.n_obs == ref.n_obs
    assert int(t.X.sum()) == int(ref.X.sum())
    assert np.array_equal(np.sort(np.asarray(t.X.sum(1)).ravel()), np.sort(np.asarray(ref.X.sum(1)).ravel()))


def test_mtx_with_locations(cells, tmp_path):
    d = tmp_path / "mtx"
    write_mtx(cells, d)
    store = stdask.ingest(d, tmp_path / "m.zarr", progress=False)
    t = check_scverse(store)
    ref = cells.to_anndata()[t.obs_names]
    assert_same_matrix(t.X, ref[:, t.var_names].X)
    # coordinates are the file's pixels times the pixel size, exactly
    loc = pd.read_csv(d / "cell_locations.tsv", sep="\t", index_col=0).loc[t.obs_names]
    assert np.array_equal(t.obsm["spatial"], loc[["x", "y"]].to_numpy() * 0.265385)
    # and the generator's um positions to the precision the text file keeps
    assert np.allclose(t.obsm["spatial"], ref.obs[["x", "y"]].to_numpy(), rtol=0, atol=1e-3)


def test_visium_outs(visium, tmp_path):
    outs = tmp_path / "outs"
    write_visium(visium, outs)
    store = stdask.ingest(outs, tmp_path / "v.zarr", progress=False)
    t = check_scverse(store)
    ref = visium.to_anndata()[t.obs_names]
    assert_same_matrix(t.X, ref[:, t.var_names].X)
    assert {"array_row", "array_col"} <= set(t.obs.columns)
    ds = stdask.read(store)
    assert ds.spot_diameter is not None and ds.spot_diameter > 0


@pytest.mark.parametrize("style", ["scanpy", "stlearn"])
def test_h5ad_round_trip_and_export(visium, tmp_path, style):
    h5 = tmp_path / f"{style}.h5ad"
    write_h5ad(visium, h5, style=style)
    src = ad.read_h5ad(h5)
    store = stdask.ingest(h5, tmp_path / f"{style}.zarr", progress=False)
    t = check_scverse(store)
    ref = src[t.obs_names]
    assert_same_matrix(t.X, ref.X)
    assert_same_matrix(t.layers["counts"], ref.layers["counts"])
    assert list(t.obs["domain"].cat.categories) == list(src.obs["domain"].cat.categories)
    assert np.array_equal(t.obs["domain"].astype(str), ref.obs["domain"].astype(str))
    assert "spatial" in t.uns
    ds = stdask.read(store)
    sf = src.uns["spatial"][next(iter(src.uns["spatial"]))]["scalefactors"]
    assert ds.spot_diameter == pytest.approx(sf["spot_diameter_fullres"] * sf["tissue_hires_scalef"])
    # export back: h5ad and SpatialData hold the same counts
    out = ds.write_h5ad(tmp_path / f"{style}_export.h5ad")
    back = ad.read_h5ad(out)
    assert_same_matrix(back[ref.obs_names].X, ref.X)
    pytest.importorskip("spatialdata")
    sdata = ds.to_spatialdata()
    assert_same_matrix(sdata.tables["table"].X, t.X)
    assert len(sdata.shapes["cells"]) == t.n_obs


def test_reference_stlearn_h5ad(tmp_path):
    from pathlib import Path

    ref_path = Path(__file__).parent / "data" / "ref_N2000.h5ad"
    store = stdask.ingest(ref_path, tmp_path / "ref.zarr", progress=False)
    ds = stdask.read(store)
    src = ad.read_h5ad(ref_path)
    assert ds.spot_diameter == pytest.approx(55.0)
    t = table(store)
    ref = src[t.obs_names]
    assert np.array_equal(t.obsm["spatial"][:, 0], ref.obs["imagecol"].to_numpy())
    assert np.array_equal(t.obsm["spatial"][:, 1], ref.obs["imagerow"].to_numpy())
    assert np.allclose(t.X.toarray(), ref.X.toarray(), rtol=0, atol=0)


def test_cli_ingest_info_and_errors(stereo, tmp_path, capsys):
    gem = tmp_path / "s.gem"
    write_gem(stereo, gem)
    assert cli(["ingest", str(gem), str(tmp_path / "cli.zarr"), "--bin", "20"]) == 0
    assert cli(["info", str(tmp_path / "cli.zarr")]) == 0
    out = capsys.readouterr().out
    assert f"{stdask.read(tmp_path / 'cli.zarr').n_obs:,} obs" in out and "tiles" in out
    # existing store without --overwrite, GEM without --bin: one-line errors, exit code 2
    assert cli(["ingest", str(gem), str(tmp_path / "cli.zarr"), "--bin", "20"]) == 2
    assert cli(["ingest", str(gem), str(tmp_path / "x.zarr")]) == 2
    err = capsys.readouterr().err
    assert "overwrite" in err and "--bin" in err
    bad = tmp_path / "bad.gem"
    lines = gem.read_text().splitlines()
    hdr = next(i for i, l in enumerate(lines) if l.startswith("geneID"))
    parts = lines[hdr + 3].split("\t")
    parts[3] = "-3"
    lines[hdr + 3] = "\t".join(parts)
    bad.write_text("\n".join(lines) + "\n")
    assert cli(["ingest", str(bad), str(tmp_path / "bad.zarr"), "--bin", "20"]) == 2
    err = capsys.readouterr().err
    assert "bad.gem" in err and str(hdr + 4) in err
    assert not (tmp_path / "bad.zarr").exists()


def no_store_left(tmp_path, name):
    return not (tmp_path / name).exists() and not [p for p in tmp_path.iterdir() if "stdask-tmp" in p.name]


def test_malformed_inputs_write_nothing(cells, stereo, tmp_path):
    from stdask.io.base import InputError

    gem = tmp_path / "t.gem.gz"
    write_gem(stereo, gem)
    data = gem.read_bytes()
    gem.write_bytes(data[: len(data) * 2 // 3])  # a truncated download
    with pytest.raises(InputError, match=r"t\.gem\.gz: truncated or corrupt gzip"):
        stdask.ingest(gem, tmp_path / "t.zarr", bin_size=20, progress=False, chunk_size=20_000)
    assert no_store_left(tmp_path, "t.zarr")

    d = tmp_path / "mtx"
    write_mtx(cells, d)
    loc = pd.read_csv(d / "cell_locations.tsv", sep="\t", index_col=0)
    loc.iloc[5, 0] = np.nan
    loc.to_csv(d / "cell_locations.tsv", sep="\t")
    with pytest.raises(InputError, match=r"cell_locations\.tsv: barcode '.*'.*NaN"):
        stdask.ingest(d, tmp_path / "m.zarr", progress=False)
    assert no_store_left(tmp_path, "m.zarr")

    d2 = tmp_path / "mtx2"
    write_mtx(cells, d2)
    import gzip

    lines = gzip.decompress((d2 / "features.tsv.gz").read_bytes()).decode().splitlines()
    (d2 / "features.tsv.gz").write_bytes(gzip.compress(("\n".join(lines[:-1]) + "\n").encode()))
    with pytest.raises(InputError, match=r"features\.tsv\.gz: .* features, but matrix\.mtx\.gz"):
        stdask.ingest(d2, tmp_path / "m2.zarr", progress=False)
    assert no_store_left(tmp_path, "m2.zarr")


def test_cli_preprocess_writes_results(visium, tmp_path):
    h5 = tmp_path / "v.h5ad"
    write_h5ad(visium, h5, style="stlearn")
    store = stdask.ingest(h5, tmp_path / "pp.zarr", progress=False)
    assert cli(["preprocess", str(store), "--n-top-genes", "300", "--n-comps", "20", "--n-neighbors", "10"]) == 0
    t = table(store)
    assert t.obsm["X_pca"].shape == (t.n_obs, 20)
    assert {"normalized", "log1p"} <= set(t.layers)
    assert "leiden" in t.obs and t.obs["leiden"].nunique() > 1
    assert "spatial_connectivities" in t.obsp
    # normalize_total's default target is the median total count: rows of 'normalized' sum to it
    sums = np.asarray(t.layers["normalized"].sum(axis=1)).ravel()
    raw = np.asarray(t.X.sum(axis=1)).ravel()
    assert np.allclose(sums[raw > 0], np.median(raw), rtol=1e-5)
