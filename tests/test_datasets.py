"""Tests of stdask.datasets: the synthetic slice generator and the native-format writers."""
from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.io
import scipy.sparse as sp
from scipy.spatial import cKDTree

import stdask
from stdask.data import lr_db_path
from stdask.datasets import (read_lr_pairs, synthetic_slice, write_cellbin_gef, write_gef, write_gem, write_h5ad,
                             write_mtx, write_visium)
from stdask.datasets.counts import nb_counts, nb_inverse_cdf
from stdask.datasets.gem import write_bin1_gem
from stdask.datasets.purposes import COUNTS
from stdask.random_streams import counter_uniforms, sequence_key


def _matrix(slice_) -> tuple[pd.DataFrame, sp.csr_matrix]:
    obs, counts = zip(*slice_.iter_chunks())
    return pd.concat(obs), sp.vstack(counts, format="csr")


@pytest.fixture(scope="module")
def visium():
    s = synthetic_slice(n_obs=2500, n_genes=400, layout="visium", seed=7)
    return s, *_matrix(s)


@pytest.fixture(scope="module")
def stereo():
    s = synthetic_slice(n_obs=900, n_genes=300, layout="stereo", seed=3, bin_size=20)
    return s, *_matrix(s)


@pytest.fixture(scope="module")
def cells():
    s = synthetic_slice(n_obs=3000, n_genes=300, layout="cells", seed=5, domain_shape="regions")
    return s, *_matrix(s)


# ------------------------------------------------------------------------------------------ arguments
@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(n_obs=0), "n_obs"),
        (dict(n_obs=2.5), "n_obs"),
        (dict(n_genes=-1), "n_genes"),
        (dict(layout="slide-seq"), "unknown layout"),
        (dict(domain_shape="stripes"), "unknown domain_shape"),
        (dict(lr_fraction=1.5), "lr_fraction"),
        (dict(zero_fraction=1.0), "zero_fraction"),
        (dict(seed=-3), "seed"),
        (dict(n_genes=50, lr_fraction=0.05, n_hotspots=4), "n_hotspots"),
        (dict(n_genes=60, n_markers=10), "too small"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        synthetic_slice(**kwargs)


def test_bad_chunk_size_and_wrong_layout_for_writer(tmp_path, visium):
    s = visium[0]
    with pytest.raises(ValueError, match="chunk_size"):
        next(s.iter_chunks(chunk_size=0))
    with pytest.raises(ValueError, match="'stereo' and 'cells'"):
        write_gem(s, tmp_path / "x.gem")
    with pytest.raises(ValueError, match="'cells' layout"):
        write_cellbin_gef(s, tmp_path / "x.gef")


# ------------------------------------------------------------------------------------------ generator
def test_same_arguments_give_identical_data_for_any_chunk_size():
    kwargs = dict(n_obs=1500, n_genes=200, layout="cells", seed=11)
    a_obs, a = _matrix(synthetic_slice(**kwargs))
    s = synthetic_slice(**kwargs)
    parts = list(s.iter_chunks(chunk_size=333))
    assert [len(o) for o, _ in parts] == [333] * 4 + [168]
    b_obs = pd.concat([o for o, _ in parts])
    b = sp.vstack([c for _, c in parts], format="csr")
    pd.testing.assert_frame_equal(a_obs, b_obs)
    assert a.dtype == b.dtype == np.uint32
    assert np.array_equal(a.indptr, b.indptr) and np.array_equal(a.indices, b.indices)
    assert np.array_equal(a.data, b.data)
    # random access agrees with streaming
    batch = s.batch(700, 900)
    assert (batch.counts != a[700:900]).nnz == 0
    assert np.array_equal(batch.x, a_obs["x"].to_numpy()[700:900])
    # another seed is another dataset
    _, c = _matrix(synthetic_slice(**{**kwargs, "seed": 12}))
    assert (c != a).nnz > 0.5 * a.nnz


@pytest.mark.parametrize("fixture", ["visium", "stereo", "cells"])
def test_counts_are_sparse_nb_like_with_varying_library_sizes(fixture, request):
    s, obs, counts = request.getfixturevalue(fixture)
    assert counts.shape == (s.n_obs, s.n_genes) and counts.dtype == np.uint32
    zero = 1 - counts.nnz / np.prod(counts.shape)
    assert 0.85 <= zero <= 0.95
    totals = np.asarray(counts.sum(axis=1)).ravel()
    assert totals.min() >= 1  # every observation has a read
    assert totals.std() / totals.mean() > 0.3
    # overdispersed: variance well above the mean for most genes (NB, not Poisson)
    dense = counts.toarray().astype(float)
    expressed = dense.mean(axis=0) > 0.2
    assert np.mean(dense.var(axis=0)[expressed] > 1.2 * dense.mean(axis=0)[expressed]) > 0.8
    assert obs.index.is_unique and len(obs) == s.n_obs
    assert list(obs.columns[:2]) == ["x", "y"]
    for col in ("domain", "cell_type", "hotspot", "hotspot_role"):
        assert isinstance(obs[col].dtype, pd.CategoricalDtype)


def test_counter_uniforms_are_splitmix64():
    # every synthetic count matrix depends on these bits: pinned against an independent numpy evaluation of
    # SplitMix64's finaliser of key + counter * golden (counters from 1), top 53 bits
    key, n, g = sequence_key(1, COUNTS, 2), 7, 11
    z = np.uint64(key) + np.arange(1, n * g + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z ^= z >> np.uint64(31)
    expected = ((z >> np.uint64(11)).astype(np.float64) * 2.0 ** -53).reshape(n, g)
    assert np.array_equal(counter_uniforms(key, n, g), expected)


def test_negative_binomial_kernel_matches_reference_and_moments():
    rng = np.random.default_rng(0)
    mu = rng.lognormal(-1.0, 1.5, (200, 300))
    theta = rng.lognormal(0.5, 0.6, 300)
    key = sequence_key(1, COUNTS, 2)
    u = counter_uniforms(key, 200, 300)
    kernel = nb_counts(key, np.ones(200), np.arange(200), mu, theta, np.full(200, -1), 1.0, 0.0).toarray()
    assert np.array_equal(kernel, nb_inverse_cdf(u, mu, theta))
    x = nb_inverse_cdf(counter_uniforms(key, 1, 200_000), np.full((1, 200_000), 2.5), np.full(200_000, 1.5))
    assert abs(x.mean() - 2.5) < 0.03
    assert abs(x.var() - (2.5 + 2.5 ** 2 / 1.5)) < 0.25


def test_layout_geometry(visium, stereo, cells):
    s, obs, _ = visium
    xy = obs[["x", "y"]].to_numpy()
    d, _ = cKDTree(xy).query(xy, k=7)
    assert np.allclose(d[:, 1], 100.0)  # 100 um centre pitch
    assert np.all((obs["array_row"] + obs["array_col"]) % 2 == 0)
    assert s.units == "um" and s.spot_diameter == 55.0

    s, obs, _ = stereo
    x, y = obs["x"].to_numpy(), obs["y"].to_numpy()
    assert s.units == "DNB" and s.um_per_unit == 0.5
    assert np.all(x % 20 == 0) and np.all(y % 20 == 0) and x.min() % 600 == 0
    assert len(np.unique(x)) == s.geometry.n_cols
    assert obs.index[0] == f"{int(x[0])}_{int(y[0])}"

    s, obs, _ = cells
    xy = obs[["x", "y"]].to_numpy()
    d, _ = cKDTree(xy).query(xy, k=2)
    assert 4.0 < d[:, 1].min() and 8.0 < np.median(d[:, 1]) < 11.0  # jittered ~10 um apart
    width, height = np.ptp(xy[:, 0]), np.ptp(xy[:, 1])
    assert 0.8 < width / height < 1.25  # roughly square tissue


def test_gene_panel_uses_packaged_lr_table(visium):
    s = visium[0]
    path = lr_db_path("connectomeDB2020_lit")
    assert Path(stdask.__file__).parent in path.parents
    assert hashlib.md5(path.read_bytes()).hexdigest() == "73410f269979bc9997c14a2de7700588"
    pairs = read_lr_pairs()
    db_genes = set(pairs["ligand"]) | set(pairs["receptor"])
    var = s.var
    assert var.index.is_unique and len(var) == 400
    assert var["in_lr_db"].sum() == 200
    assert set(var.index[var["in_lr_db"]]) <= db_genes
    assert var.index[~var["in_lr_db"]].str.fullmatch(r"Gene\d{5}").all()
    db_pairs = set(zip(pairs["ligand"], pairs["receptor"]))
    truth = s.truth.lr_pairs
    assert len(truth) == 4 and set(zip(truth["ligand"], truth["receptor"])) <= db_pairs
    assert truth[["ligand", "receptor"]].stack().is_unique  # hotspots share no gene


@pytest.mark.parametrize("fixture", ["visium", "cells"])
def test_domain_and_cell_type_markers_are_enriched(fixture, request):
    s, obs, counts = request.getfixturevalue(fixture)
    X = counts.tocsc().astype(np.float64)
    genes = s.var.index
    for column, markers in (("domain", s.truth.domain_markers), ("cell_type", s.truth.cell_type_markers)):
        labels = obs[column].to_numpy()
        assert set(np.unique(labels)) == set(markers)
        for label, marker_genes in markers.items():
            idx = genes.get_indexer(marker_genes)
            inside = np.asarray(X[labels == label][:, idx].mean(axis=0)).ravel()
            outside = np.asarray(X[labels != label][:, idx].mean(axis=0)).ravel()
            ratio = inside / np.maximum(outside, 1e-9)
            assert np.median(ratio) > 2.5, (column, label, ratio)
            assert ratio.min() > 1.2, (column, label, ratio)
    # cell-type composition depends on the domain: each domain's favoured type is over-represented there
    tab = pd.crosstab(obs["domain"], obs["cell_type"], normalize="index")
    overall = obs["cell_type"].value_counts(normalize=True)
    for d, dom in enumerate(s.domain_names):
        favoured = s.cell_type_names[d % len(s.cell_type_names)]
        assert tab.loc[dom, favoured] > overall[favoured]


def test_domain_shapes_layers_are_bands_regions_are_blobs():
    layers = synthetic_slice(n_obs=2000, n_genes=150, layout="visium", seed=2, n_markers=5)
    regions = synthetic_slice(n_obs=2000, n_genes=150, layout="visium", seed=2, n_markers=5, domain_shape="regions")
    lay_obs, _ = _matrix(layers)
    reg_obs, _ = _matrix(regions)
    # bands: domain index increases with y (within warping), so y explains the domain almost entirely
    r_y = np.corrcoef(lay_obs["y"], lay_obs["domain"].cat.codes)[0, 1]
    assert r_y > 0.95
    # every band spans the full width
    for _, grp in lay_obs.groupby("domain", observed=True):
        assert np.ptp(grp["x"]) > 0.9 * np.ptp(lay_obs["x"])
    r_reg = abs(np.corrcoef(reg_obs["y"], reg_obs["domain"].cat.codes)[0, 1])
    assert r_reg < 0.9
    # domains are spatially coherent: most spots share the domain of their nearest neighbour
    for obs in (lay_obs, reg_obs):
        xy = obs[["x", "y"]].to_numpy()
        _, nn = cKDTree(xy).query(xy, k=2)
        codes = obs["domain"].cat.codes.to_numpy()
        assert np.mean(codes == codes[nn[:, 1]]) > 0.85


def test_planted_hotspots_enrich_spatial_coexpression(visium):
    s, obs, counts = visium
    X = counts.tocsc()
    xy = obs[["x", "y"]].to_numpy()
    tree = cKDTree(xy)
    neighbours = tree.query_ball_point(xy, r=110.0)  # the 6 hex neighbours (and self)
    for _, hot in s.truth.lr_pairs.iterrows():
        lig = X[:, s.var.index.get_loc(hot["ligand"])].toarray().ravel().astype(float)
        rec = X[:, s.var.index.get_loc(hot["receptor"])].toarray().ravel().astype(float)
        # stLearn-like score: ligand here x mean receptor around
        rec_around = np.array([rec[[j for j in nb if j != i]].mean() for i, nb in enumerate(neighbours)])
        score = lig * rec_around
        in_disc = np.hypot(xy[:, 0] - hot["x"], xy[:, 1] - hot["y"]) <= hot["radius"]
        assert np.array_equal(in_disc, (obs["hotspot"] == hot["name"]).to_numpy())
        assert in_disc.sum() > 30
        assert score[in_disc].mean() > 20 * max(score[~in_disc].mean(), 1e-3)
        # roles: ligand-up and receptor-up cells are neighbours inside the disc
        roles = obs.loc[in_disc, "hotspot_role"].value_counts()
        assert roles["ligand"] > 0.3 * in_disc.sum() and roles["receptor"] > 0.3 * in_disc.sum()
        role = obs["hotspot_role"].to_numpy()
        assert lig[in_disc & (role == "ligand")].mean() > 5 * lig[~in_disc].mean()
        assert rec[in_disc & (role == "receptor")].mean() > 5 * rec[~in_disc].mean()


def test_to_anndata(stereo):
    s, obs, counts = stereo
    adata = s.to_anndata()
    assert adata.shape == (900, 300)
    assert (adata.X != counts).nnz == 0
    assert np.array_equal(adata.obsm["spatial"], obs[["x", "y"]].to_numpy())
    assert adata.obsm["spatial"].dtype == np.float64
    assert adata.uns["synthetic"]["units"] == "DNB"
    assert adata.uns["synth_truth"]["lr_pairs"]["name"] == list(s.truth.lr_pairs["name"])


def test_synthetic_source_ingests_the_same_slice(tmp_path, visium):
    """A store built from the streamed source holds exactly the slice's counts, obs and coordinates."""
    from stdask.datasets import SyntheticSource

    s, obs, counts = visium
    src = SyntheticSource(s, obs_columns=("domain", "array_row"), chunk_size=137)
    ds = stdask.read(stdask.ingest(src, tmp_path / "s.zarr", progress=False))
    order = pd.Index(obs.index).get_indexer(ds.obs_names)  # the store sorts observations by tile
    assert (order >= 0).all() and len(order) == s.n_obs
    X = sp.csr_matrix(ds.X.compute())
    assert (X != counts[order]).nnz == 0
    assert np.array_equal(ds.obs["domain"].astype(str).to_numpy(), obs["domain"].astype(str).to_numpy()[order])
    assert np.allclose(np.asarray(ds.coords), obs[["x", "y"]].to_numpy()[order])


# ------------------------------------------------------------------------------------------ GEM
def _read_gem(path: Path) -> tuple[list[str], pd.DataFrame]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as fh:
        comments = []
        for line in fh:
            if not line.startswith("#"):
                break
            comments.append(line.rstrip("\n"))
    return comments, pd.read_csv(path, sep="\t", comment="#")


def test_stereo_bin1_gem_rebins_to_the_bin_counts(tmp_path, stereo):
    s, obs, counts = stereo
    path = tmp_path / "slice.gem.gz"
    info = write_gem(s, path, exon=True)
    comments, gem = _read_gem(path)
    assert "#FileFormat=GEMv0.1" in comments and "#OffsetX=0" in comments
    assert list(gem.columns) == ["geneID", "x", "y", "MIDCount", "ExonCount"]
    assert info["n_records"] == len(gem)
    assert (gem["MIDCount"] > 0).all() and (gem["ExonCount"] <= gem["MIDCount"]).all()
    assert not gem.duplicated(["geneID", "x", "y"]).any()
    assert len(gem) > 1.2 * counts.nnz  # counts really are spread over DNBs
    # Stereopy's binning: bin index = (x - x_min) // bin_size
    bx = (gem["x"] - gem["x"].min()) // 20
    by = (gem["y"] - gem["y"].min()) // 20
    binned = gem.assign(bx=bx, by=by).groupby(["by", "bx", "geneID"])["MIDCount"].sum()
    truth = sp.coo_matrix(counts)
    ncols = s.geometry.n_cols
    expected = pd.Series(
        truth.data.astype(np.int64),
        index=pd.MultiIndex.from_arrays([(truth.row // ncols).astype(np.int64), (truth.row % ncols).astype(np.int64),
                                         s.var.index[truth.col]],
                                        names=["by", "bx", "geneID"]),
    ).sort_index()
    pd.testing.assert_series_equal(binned.sort_index(), expected, check_names=False)
    # absolute binning agrees (the origin is a multiple of the bin size)
    assert np.array_equal((gem["x"] // 20 - gem["x"].min() // 20).to_numpy(), bx.to_numpy())
    assert gem["x"].min() == obs["x"].min()


def test_cellbin_gem_groups_by_cell(tmp_path, cells):
    s, obs, counts = cells
    path = tmp_path / "cells.gem"
    write_gem(s, path, gene_name_column=True)
    _, gem = _read_gem(path)
    assert list(gem.columns) == ["geneID", "geneName", "x", "y", "MIDCount", "CellID"]
    assert (gem["geneID"] == s.var["gene_ids"].reindex(gem["geneName"]).to_numpy()).all()
    background = gem["CellID"] == 0
    assert 0.01 < background.mean() < 0.1
    cell = gem[~background]
    got = sp.csr_matrix((cell["MIDCount"], (cell["CellID"] - 1, s.var.index.get_indexer(cell["geneName"]))),
                        shape=counts.shape)
    assert (got != counts).nnz == 0
    # a DNB belongs to one cell at most, background DNBs to none
    owners = gem.groupby(["x", "y"])["CellID"].nunique()
    assert owners.max() == 1
    # a cell's DNBs lie within 5 um of its centre
    centre = obs[["x", "y"]].to_numpy()[cell["CellID"] - 1] / 0.5
    dist = np.hypot(cell["x"] - centre[:, 0], cell["y"] - centre[:, 1])
    assert dist.max() <= 10.0 + 1e-9


def test_big_bin1_gem_has_exactly_n_records(tmp_path):
    path = tmp_path / "big.gem"
    info = write_bin1_gem(path, 30_000, n_genes=200, seed=4, bin_size=50)
    _, gem = _read_gem(path)
    assert len(gem) == info["n_records"] == 30_000
    assert info["records_per_second"] > 0
    # it is the prefix of the full slice's GEM
    s = synthetic_slice(n_obs=info["n_obs"], n_genes=200, layout="stereo", seed=4, bin_size=50)
    full = write_gem(s, tmp_path / "full.gem", max_records=40_000)
    _, gem_full = _read_gem(tmp_path / "full.gem")
    assert full["n_records"] == 40_000
    pd.testing.assert_frame_equal(gem, gem_full.iloc[:30_000])


# ------------------------------------------------------------------------------------------ 10x
def test_mtx_directory_and_cell_locations(tmp_path, visium):
    s, obs, counts = visium
    out = tmp_path / "mtx"
    info = write_mtx(s, out, chunk_size=600)
    m = scipy.io.mmread(out / "matrix.mtx.gz")
    assert m.shape == (s.n_genes, s.n_obs) and info["nnz"] == counts.nnz
    assert np.issubdtype(m.dtype, np.integer)
    assert (sp.csr_matrix(m.T) != counts).nnz == 0
    features = pd.read_csv(out / "features.tsv.gz", sep="\t", header=None)
    assert list(features[1]) == list(s.var.index) and set(features[2]) == {"Gene Expression"}
    barcodes = pd.read_csv(out / "barcodes.tsv.gz", header=None)[0]
    assert list(barcodes) == list(obs.index)
    loc = pd.read_csv(out / "cell_locations.tsv", sep="\t", index_col=0)
    assert list(loc.columns) == ["x", "y"] and len(loc) == s.n_obs + 25
    assert not loc.index[s.n_obs:].isin(barcodes).any()  # extra beads not in the matrix
    um = loc.loc[obs.index] * 0.265385  # the stLearn tutorial's pixel size
    assert np.allclose(um["x"], obs["x"], atol=1e-3) and np.allclose(um["y"], obs["y"], atol=1e-3)
    # the files do not depend on the chunk size they were generated with
    write_mtx(s, tmp_path / "mtx2", chunk_size=1700)
    for name in ("matrix.mtx.gz", "barcodes.tsv.gz", "cell_locations.tsv"):
        assert (out / name).read_bytes() == (tmp_path / "mtx2" / name).read_bytes()


def test_visium_outs(tmp_path, visium):
    s, obs, counts = visium
    outs = tmp_path / "outs"
    write_visium(s, outs, chunk_size=800)
    with h5py.File(outs / "filtered_feature_bc_matrix.h5", "r") as f:
        m = f["matrix"]
        shape = tuple(m["shape"][:])
        assert shape == (s.n_genes, s.n_obs)
        assert m["data"].dtype == np.int32 and m["indices"].dtype == np.int64 and m["indptr"].shape == (s.n_obs + 1,)
        csc = sp.csc_matrix((m["data"][:], m["indices"][:], m["indptr"][:]), shape=shape)
        assert (csc.T.tocsr() != counts).nnz == 0
        assert [b.decode() for b in m["barcodes"][:]] == list(obs.index)
        assert [g.decode() for g in m["features/name"][:]] == list(s.var.index)
        assert set(m["features/feature_type"][:]) == {b"Gene Expression"}
        assert m["features/id"].shape == m["features/genome"].shape == (s.n_genes,)
    pos = pd.read_csv(outs / "spatial" / "tissue_positions.csv")
    assert list(pos.columns) == ["barcode", "in_tissue", "array_row", "array_col", "pxl_row_in_fullres",
                                 "pxl_col_in_fullres"]
    tissue = pos[pos["in_tissue"] == 1].set_index("barcode").loc[obs.index]
    assert len(tissue) == s.n_obs and (pos["in_tissue"] == 0).sum() > 0
    assert np.array_equal(tissue["array_row"], obs["array_row"])
    assert np.array_equal(tissue["array_col"], obs["array_col"])
    assert np.allclose(tissue["pxl_col_in_fullres"] * 0.5, obs["x"], atol=0.5)
    assert np.allclose(tissue["pxl_row_in_fullres"] * 0.5, obs["y"], atol=0.5)
    scale = json.loads((outs / "spatial" / "scalefactors_json.json").read_text())
    assert scale["spot_diameter_fullres"] == 110.0
    assert {"tissue_hires_scalef", "tissue_lowres_scalef", "fiducial_diameter_fullres"} <= set(scale)


# ------------------------------------------------------------------------------------------ h5ad
def test_h5ad_stlearn_and_scanpy_styles(tmp_path, visium):
    s, obs, counts = visium
    write_h5ad(s, tmp_path / "st.h5ad", style="stlearn", normalize=True)
    a = ad.read_h5ad(tmp_path / "st.h5ad")
    assert (a.layers["counts"] != counts).nnz == 0
    assert a.X.dtype == np.float32
    assert np.allclose(np.asarray(a.X.sum(axis=1)).ravel(), 1e4, rtol=1e-4)
    assert np.allclose(a.obs["imagecol"], obs["x"]) and np.allclose(a.obs["imagerow"], obs["y"])
    sf = a.uns["spatial"]["synthetic"]
    assert sf["use_quality"] == "hires" and sf["scalefactors"]["spot_diameter_fullres"] == 55.0
    assert sf["scalefactors"]["tissue_hires_scalef"] == 1.0
    assert list(a.uns["synth_truth"]["lr_pairs"]["name"]) == list(s.truth.lr_pairs["name"])
    pd.testing.assert_frame_equal(a.obs[obs.columns], obs)

    write_h5ad(s, tmp_path / "sc.h5ad", style="scanpy", pixel_size=2.0)
    b = ad.read_h5ad(tmp_path / "sc.h5ad")
    assert (b.X != counts).nnz == 0
    assert np.allclose(b.obsm["spatial"], obs[["x", "y"]].to_numpy() / 2.0)
    assert "imagecol" not in b.obs
    with pytest.raises(ValueError, match="style"):
        write_h5ad(s, tmp_path / "x.h5ad", style="squidpy")


# ------------------------------------------------------------------------------------------ GEF
def test_square_bin_gef(tmp_path, stereo):
    s, obs, counts = stereo
    path = tmp_path / "slice.gef"
    write_gef(s, path, bins=(1, 20, 100), exon=True)
    gem_info = write_gem(s, tmp_path / "same.gem")
    with h5py.File(path, "r") as f:
        assert f.attrs["bin_type"][0] == b"Bin" and f.attrs["omics"][0] == b"Transcriptomics"
        for n in (1, 20, 100):
            exp = f[f"geneExp/bin{n}/expression"]
            gene = f[f"geneExp/bin{n}/gene"][:]
            assert exp.dtype.names == ("x", "y", "count")
            assert exp.dtype["x"] == np.int32 and exp.dtype["count"].kind == "u"
            assert gene.dtype == np.dtype([("gene", "S64"), ("offset", "<u4"), ("count", "<u4")])
            assert np.array_equal(gene["offset"][1:], np.cumsum(gene["count"].astype(np.int64))[:-1])
            assert [g.decode() for g in gene["gene"]] == list(s.var.index)
            assert int(exp.attrs["resolution"][0]) == 500
            e = exp[:]
            assert int(exp.attrs["maxExp"][0]) == e["count"].max()
            assert e["count"].astype(np.int64).sum() == counts.sum()
            assert f[f"geneExp/bin{n}/exon"].shape == exp.shape
            gidx = np.repeat(np.arange(len(gene)), gene["count"].astype(np.int64))
            assert not pd.DataFrame({"g": gidx, "x": e["x"], "y": e["y"]}).duplicated().any()
        assert f["geneExp/bin1/expression"].shape[0] == gem_info["n_records"]
        # bin 20 is the slice's own binning: it gives back the count matrix
        e = f["geneExp/bin20/expression"][:]
        gene = f["geneExp/bin20/gene"][:]
        gidx = np.repeat(np.arange(len(gene)), gene["count"].astype(np.int64))
        row = (e["y"] - e["y"].min()) * s.geometry.n_cols + (e["x"] - e["x"].min())
        got = sp.csr_matrix((e["count"].astype(np.int64), (row, gidx)), shape=counts.shape)
        assert (got != counts).nnz == 0
        whole = f["wholeExp/bin20"]
        assert whole.dtype.names == ("MIDcount", "genecount")
        assert whole.shape == (s.geometry.n_cols, s.geometry.n_rows)
        assert whole[:]["MIDcount"].astype(np.int64).sum() == counts.sum()
        assert whole[:]["genecount"].astype(np.int64).sum() == counts.nnz
        stat = f["stat/gene"][:]
        assert np.array_equal(stat["MIDcount"], np.asarray(counts.sum(axis=0)).ravel())
        assert ((stat["E10"] >= 0) & (stat["E10"] <= 100)).all()


def test_cellbin_gef(tmp_path, cells):
    s, obs, counts = cells
    path = tmp_path / "cells.cellbin.gef"
    info = write_cellbin_gef(s, path)
    assert info["n_cells"] == s.n_obs
    with h5py.File(path, "r") as f:
        assert f.attrs["bin_type"][0] == b"CellBin" and int(f.attrs["resolution"][0]) == 500
        cb = f["cellBin"]
        cell, cexp, gexp, gene = cb["cell"][:], cb["cellExp"][:], cb["geneExp"][:], cb["gene"][:]
        assert cell.dtype.names == ("id", "x", "y", "offset", "geneCount", "expCount", "dnbCount", "area",
                                    "cellTypeID", "clusterID")
        assert cell.dtype["id"] == np.uint32 and cell.dtype["x"] == np.int32 and cell.dtype["area"] == np.uint16
        assert cexp.dtype == np.dtype([("geneID", "<u4"), ("count", "<u2")])
        assert gexp.dtype == np.dtype([("cellID", "<u4"), ("count", "<u2")])
        assert gene.dtype.names == ("geneName", "offset", "cellCount", "expCount", "maxMIDcount")
        assert cb["cellBorder"].shape == (s.n_obs, 32, 2) and cb["cellBorder"].dtype == np.int16
        assert np.array_equal(cell["id"], np.arange(s.n_obs))
        # map GEF cells to observations by their centre DNB
        centre = np.floor(obs[["x", "y"]].to_numpy() / 0.5).astype(np.int64)
        lookup = pd.Series(np.arange(s.n_obs), index=centre[:, 0] * 1_000_000 + centre[:, 1])
        obs_of_cell = lookup.loc[cell["x"].astype(np.int64) * 1_000_000 + cell["y"]].to_numpy()
        assert len(np.unique(obs_of_cell)) == s.n_obs
        rows = np.repeat(obs_of_cell, cell["geneCount"].astype(np.int64))
        got = sp.csr_matrix((cexp["count"].astype(np.int64), (rows, cexp["geneID"].astype(np.int64))),
                            shape=counts.shape)
        assert (got != counts).nnz == 0
        assert np.array_equal(cell["expCount"], np.asarray(counts.sum(axis=1)).ravel()[obs_of_cell])
        assert np.array_equal(cell["cellTypeID"], obs["cell_type"].cat.codes.to_numpy()[obs_of_cell])
        gidx = np.repeat(np.arange(len(gene)), gene["cellCount"].astype(np.int64))
        got = sp.csr_matrix((gexp["count"].astype(np.int64), (obs_of_cell[gexp["cellID"]], gidx)), shape=counts.shape)
        assert (got != counts).nnz == 0
        assert np.array_equal(gene["expCount"], np.asarray(counts.sum(axis=0)).ravel())
        assert (cell["dnbCount"] <= cell["area"]).all() and (cell["dnbCount"] > 0).all()
        # cells are sorted by 256-DNB block and blockIndex points at each block's first cell
        size = cb["blockSize"][:]
        assert list(size[:2]) == [256, 256]
        block = cell["x"] // 256 + (cell["y"] // 256) * size[2]
        index = cb["blockIndex"][:]
        assert len(index) == size[2] * size[3] + 1 and index[-1] == s.n_obs
        assert np.array_equal(np.searchsorted(index, np.arange(s.n_obs), side="right") - 1, block)
        assert [t.decode() for t in cb["cellTypeList"][:]] == s.cell_type_names


def test_gef_writers_do_not_depend_on_their_working_slice_size(tmp_path, monkeypatch, stereo, cells):
    """The gene-major spool moves records in slices; small slices must give the same files' datasets."""
    import stdask.datasets.gef as gef

    paths = {}
    for label, size in (("default", gef.SLICE), ("small", 997)):
        monkeypatch.setattr(gef, "SLICE", size)
        paths[label] = (tmp_path / f"{label}.gef", tmp_path / f"{label}.cellbin.gef")
        write_gef(stereo[0], paths[label][0], bins=(1, 40))
        write_cellbin_gef(cells[0], paths[label][1])
    for a_path, b_path in zip(paths["default"], paths["small"]):
        with h5py.File(a_path, "r") as a, h5py.File(b_path, "r") as b:
            names = [n for n in _walk(a) if isinstance(a[n], h5py.Dataset)]
            assert names
            for name in names:
                assert np.array_equal(a[name][()], b[name][()]), name


def _walk(group: h5py.Group) -> list[str]:
    found: list[str] = []
    group.visit(found.append)
    return found
