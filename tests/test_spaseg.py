"""SpaSEG (stdask.models.spaseg, stdask.tl.spaseg): the merge and stopping rules, tiled training and
prediction against the whole image, determinism, domains recovered on synthetic tissues (against Leiden on
PCA), multi-slice label correspondence, result layout and the CLI, LR scores on domains, metrics."""
from __future__ import annotations

import argparse

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import stdask
import stdask.pp as pp
from stdask.datasets import synthetic_slice
from stdask.io.memory import AnnDataSource
from stdask.tl.metrics import ari, evaluate, label_free, nmi

torch = pytest.importorskip("torch")
from stdask.models.spaseg import (SpaSEGConfig, build_net, merge_decision, merge_outliers,  # noqa: E402
                                  predict, train)
from stdask.tl.cci.domains import lr_score  # noqa: E402
from stdask.tl.spaseg import spaseg  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")
#: torch threads in tests (the machines running them are shared; results do not depend on it)
THREADS = 1


@pytest.fixture(scope="module", autouse=True)
def quiet(quiet_progress):
    yield


def make_store(adata, path, unit="um", spot=55.0):
    return stdask.read(stdask.ingest(AnnDataSource(adata, unit=unit, spot_diameter=spot), path, progress=False))


def leiden_ari(ds, truth="domain"):
    """Leiden on PCA (stdask.pp, scanpy's defaults) at three resolutions: the best ARI."""
    pp.normalize_total(ds)
    pp.log1p(ds)
    pp.pca(ds, n_comps=15, progress=False)
    pp.neighbors(ds, progress=False)
    best = -1.0
    for res in (0.3, 0.6, 1.0):
        lab = pp.leiden(ds, resolution=res, key_added=f"leiden_{res}")
        best = max(best, ari(ds.obs[truth], lab))
    return best


@pytest.fixture(scope="module")
def layered(tmp_path_factory):
    """Cortex-like bands on Visium geometry (5 layers)."""
    s = synthetic_slice(n_obs=2000, n_genes=800, layout="visium", seed=11, n_domains=5, domain_shape="layers",
                        n_hotspots=0)
    return make_store(s.to_anndata(), tmp_path_factory.mktemp("layered") / "v.zarr")


@pytest.fixture(scope="module")
def regions(tmp_path_factory):
    """Irregular regions on a Stereo-seq bin20 lattice (DNB units)."""
    s = synthetic_slice(n_obs=2500, n_genes=800, layout="stereo", bin_size=20, seed=12, n_domains=5,
                        domain_shape="regions", n_hotspots=0)
    return make_store(s.to_anndata(), tmp_path_factory.mktemp("regions") / "s.zarr", unit="DNB", spot=20.0)


@pytest.fixture(scope="module")
def layered_run(layered):
    res = spaseg(layered, n_domains=6, threads=THREADS)
    return res, ari(layered.obs["domain"], res.labels)


# ------------------------------------------------------------------------------------------- merge rule
def test_merge_rule_on_hand_made_means():
    # four labels; labels 1 and 3 nearly coincide: the minimum distance is an outlier -> merge 3 into 1
    means = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.2, 0.0]])
    assert merge_decision(means) == (1, 3)
    # evenly spread labels: the minimum is not an outlier -> no merge
    even = np.array([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0], [3.0, 0.0]])
    assert merge_decision(even) is None
    assert merge_decision(np.zeros((1, 2))) is None and merge_decision(np.zeros((2, 2))) is None
    # on pixels: every pixel of u_j takes u_i (raw labels, not positions)
    lab = torch.tensor([7, 2, 5, 9, 9, 2, 5, 7])
    feats = torch.tensor([[0.0, 0], [10, 0], [0, 10], [10.2, 0], [10.2, 0], [10, 0], [0, 10], [0, 0]])
    out, merged = merge_outliers(lab, feats, n_classes=10)
    assert merged == (2, 9)
    assert out.tolist() == [7, 2, 5, 2, 2, 2, 5, 7]
    assert lab.tolist() == [7, 2, 5, 9, 9, 2, 5, 7]  # input untouched
    # the first pair of minimum distance wins (row-major order over i < j)
    tie = np.array([[0.0, 0.0], [1.0, 0.0], [50.0, 0.0], [51.0, 0.0], [100.0, 40.0]])
    d = merge_decision(tie)
    assert d == (0, 1)


def test_network_layout_and_seeded_init():
    net = build_net(15, SpaSEGConfig())
    kinds = [type(m).__name__ for m in net.seq]
    assert kinds == ["BatchNorm2d", "Conv2d", "BatchNorm2d", "LeakyReLU", "Conv2d", "BatchNorm2d", "LeakyReLU",
                     "Conv2d", "BatchNorm2d"]
    assert net.seq[1].kernel_size == (3, 3) and net.seq[7].kernel_size == (1, 1)
    assert net.seq[3].negative_slope == 0.2
    a, b = build_net(15, SpaSEGConfig(seed=3)), build_net(15, SpaSEGConfig(seed=3))
    c = build_net(15, SpaSEGConfig(seed=4))
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a.seq[1].weight, c.seq[1].weight)
    state = torch.random.get_rng_state()
    build_net(15, SpaSEGConfig(seed=5))
    assert torch.equal(state, torch.random.get_rng_state())  # the caller's RNG is untouched
    three = build_net(8, SpaSEGConfig(n_conv=3, n_channel=12))
    assert sum(isinstance(m, torch.nn.Conv2d) for m in three.seq) == 4


def _toy_image(seed=0, shape=(1, 6, 37, 45)):
    rng = np.random.default_rng(seed)
    img = rng.normal(size=shape).astype(np.float32)
    img[:, :3, : shape[2] // 2] += 2.0
    img[:, 3:, :, : shape[3] // 3] -= 2.0
    return img


def test_tiled_training_equals_whole_image():
    img = _toy_image()
    cfg = SpaSEGConfig(iterations=30, pretrain_epochs=10, min_label=1, merge_start=15)
    full = train(img, config=cfg, mode="full", progress=False, threads=THREADS)
    tiled = train(img, config=cfg, mode="tiled", tile=16, progress=False, threads=THREADS)
    assert tiled.mode == "tiled" and full.mode == "full"
    np.testing.assert_allclose(tiled.history["loss"], full.history["loss"], rtol=1e-4, atol=1e-5)
    assert tiled.history["n_labels"] == full.history["n_labels"]
    assert tiled.history["merges"] == full.history["merges"]
    assert (tiled.labels == full.labels).mean() > 0.999
    np.testing.assert_allclose(tiled.embedding, full.embedding, atol=1e-3)


def test_tiled_prediction_equals_whole_prediction():
    img = _toy_image(1, (2, 5, 41, 33))
    fit = train(img, config=SpaSEGConfig(iterations=20, pretrain_epochs=5, min_label=1), progress=False,
                threads=THREADS)
    whole_lab, whole_y = predict(fit.net, img)
    for tile in (7, 16):
        lab, y = predict(fit.net, img, tile=tile)
        np.testing.assert_allclose(y, whole_y, atol=2e-5)
        assert (lab == whole_lab).all()


def test_stopping_rule_and_returned_labels():
    img = _toy_image(2)
    cfg = SpaSEGConfig(iterations=400, pretrain_epochs=20, min_label=4)
    fit = train(img, config=cfg, progress=False, threads=THREADS)
    hist = fit.history["n_labels"]
    assert fit.stopped and hist[-1] <= 4 and all(n > 4 for n in hist[:-1])
    assert fit.stop_iteration == len(hist) - 1
    assert len(np.unique(fit.labels)) == fit.n_labels == hist[-1]
    # empty pixels are counted by default (S3 parity); mask_empty leaves them out of the count
    occ = np.zeros(img.shape[:1] + img.shape[2:], bool)
    occ[:, ::2] = True
    masked = train(img, occ, SpaSEGConfig(iterations=60, pretrain_epochs=20, min_label=1, mask_empty=True),
                   progress=False, threads=THREADS)
    assert masked.history["n_labels"][-1] == len(np.unique(masked.labels[occ]))


# ---------------------------------------------------------------------------------------- synthetic tissues
def test_layered_visium_domains(layered, layered_run):
    res, a = layered_run
    ds = layered
    base = leiden_ari(ds)
    print(f"\nlayered Visium: SpaSEG ARI {a:.3f} (stopped at {res.info['stop_iteration']}, "
          f"{res.n_domains} domains), Leiden-on-PCA best ARI {base:.3f}")
    assert a >= 0.6 and a > base
    assert res.info["stopped"] and res.info["grid"]["mode"] == "array"
    assert res.n_domains <= 6 and res.info["n_labels"] <= 6
    lab = ds.obs["spaseg"]
    assert isinstance(lab.dtype, pd.CategoricalDtype)
    assert list(lab.cat.categories) == [str(i) for i in range(res.n_domains)]
    emb = ds.get_result("obsm", "spaseg_embedding")
    assert emb.shape == (ds.n_obs, 15) and emb.dtype == np.float32
    assert ds.get_result("obsm", "spaseg_pca").shape == (ds.n_obs, 15)
    # each observation reads its own pixel: label = argmax of its embedding, renumbered by raw label
    raw = emb.argmax(1)
    np.testing.assert_array_equal(np.searchsorted(res.info["raw_labels"], raw), lab.cat.codes.to_numpy())
    assert nmi(ds.obs["domain"], lab) > 0.6
    scores = evaluate(ds, "spaseg")
    assert np.isfinite([scores["CHS"], scores["SC"], scores["DBS"]]).all()


def test_regions_stereo_domains(regions):
    ds = regions
    res = spaseg(ds, n_domains=6, threads=THREADS, raster_key="spaseg_input")
    a = ari(ds.obs["domain"], res.labels)
    base = leiden_ari(ds)
    print(f"\nregions Stereo-seq: SpaSEG ARI {a:.3f} (stopped at {res.info['stop_iteration']}), "
          f"Leiden-on-PCA best ARI {base:.3f}")
    assert a > base and a >= 0.6
    assert res.info["grid"]["mode"] == "pitch" and res.info["grid"]["pitch"] == pytest.approx(20.0)
    assert res.info["preprocessing"]["drop_cell_ratio"][0] == 0.05  # Stereo-seq: the reference's drop rule
    assert res.info["preprocessing"]["n_dropped"][0] > 0
    # the input raster was stored as an images/ element and reads back as the image trained on
    r = stdask.raster.read_raster(ds, "spaseg_input")
    np.testing.assert_allclose(r.values, res.image[0])
    ds.write()
    back = stdask.read(ds.path)
    pd.testing.assert_series_equal(back.obs["spaseg"], ds.obs["spaseg"], check_names=False)
    assert back.get_result("uns", "spaseg")["n_domains_found"] == res.n_domains
    assert back.get_result("obsm", "spaseg_embedding").shape == (ds.n_obs, 15)


def test_minibatch_on_four_tiles_matches_whole_image(layered, layered_run):
    res_full, a_full = layered_run
    H, W = res_full.grid.height, res_full.grid.width
    tile = int(np.ceil(max(H, W) / 2))
    res = spaseg(layered, n_domains=6, threads=THREADS, mode="minibatch", tile=tile, batch_pixels=2 * tile * tile,
                 key_added="spaseg_tiles")
    assert res.info["mode"] == "minibatch"
    a_tiles = ari(layered.obs["domain"], res.labels)
    print(f"\n4 tiles, 2 per batch: ARI {a_tiles:.3f} vs one image {a_full:.3f}")
    assert abs(a_tiles - a_full) <= 0.05


def test_same_seed_same_labels(regions):
    kw = dict(n_domains=1, iterations=30, pretrain_epochs=15, threads=THREADS, key_added="det")
    a = spaseg(regions, seed=7, **kw)
    b = spaseg(regions, seed=7, **kw)
    assert (a.labels.to_numpy() == b.labels.to_numpy()).all()
    np.testing.assert_array_equal(a.fit.embedding, b.fit.embedding)
    kw["use_rep"] = "det_pca"  # the PCs of the first run: no third preprocessing (and no cell drop)
    c7 = spaseg(regions, seed=7, **kw)
    c8 = spaseg(regions, seed=8, **kw)
    assert not np.array_equal(c7.fit.embedding, c8.fit.embedding)
    m = spaseg(regions, seed=7, mode="minibatch", tile=20, batch_pixels=800, **kw)
    m2 = spaseg(regions, seed=7, mode="minibatch", tile=20, batch_pixels=800, **kw)
    np.testing.assert_array_equal(m.fit.embedding, m2.fit.embedding)
    assert (m.labels.to_numpy() == m2.labels.to_numpy()).all()


def test_multi_slice_labels_correspond(tmp_path):
    # two consecutive slices: the molecules of one synthetic slice split at random between two sections
    # of the same geometry (independent sampling noise, shared domains)
    s = synthetic_slice(n_obs=1600, n_genes=600, layout="visium", seed=21, n_domains=4, n_hotspots=0,
                        zero_fraction=0.8)
    a = s.to_anndata()
    rng = np.random.default_rng(0)
    X = a.X.tocsr()
    half = X.copy()
    half.data = rng.binomial(X.data.astype(np.int64), 0.5).astype(X.data.dtype)
    other = X.copy()
    other.data = X.data - half.data
    slices = []
    for k, m in enumerate((half, other)):
        b = a.copy()
        dense_first = np.asarray(m[:, 0].todense()) + 1  # every observation keeps a count
        b.X = sp.csr_matrix(sp.hstack([sp.csr_matrix(dense_first), m[:, 1:]]))
        slices.append(make_store(b, tmp_path / f"s{k}.zarr"))
    # 15 PCs here (the multi-slice default is 30): this small 600-gene panel has little signal beyond 15
    kw = dict(n_domains=5, threads=THREADS, pretrain_epochs=200, n_pcs=15)
    joint = spaseg(slices, **kw)
    assert joint.info["n_slices"] == 2 and joint.info["n_pcs"] == 15
    assert joint.info["params"]["alpha"] == 0.2 and joint.info["params"]["beta"] == 0.4  # multi-slice weights
    truth = np.concatenate([d.obs["domain"].to_numpy() for d in slices])
    joint_ari = ari(truth, np.concatenate([lab.to_numpy() for lab in joint.labels]))
    sep = [spaseg(d, key_added="alone", **kw) for d in slices]
    per_slice = [ari(d.obs["domain"], r.labels) for d, r in zip(slices, sep)]
    pooled = ari(truth, np.concatenate([r.labels.to_numpy() for r in sep]))
    print(f"\nmulti-slice: joint ARI {joint_ari:.3f} (per slice "
          f"{[round(ari(d.obs['domain'], lab), 3) for d, lab in zip(slices, joint.labels)]}); separate runs ARI "
          f"{[round(v, 3) for v in per_slice]}, pooled {pooled:.3f}")
    assert joint_ari >= pooled
    # one label space: every planted domain gets the same majority label in both slices
    for d in slices:
        assert ari(d.obs["domain"], d.obs["spaseg"]) > 0.6
    maj = [pd.crosstab(d.obs["domain"].to_numpy(), d.obs["spaseg"].to_numpy()).idxmax(axis=1) for d in slices]
    assert (maj[0] == maj[1]).all()


def test_cli_segment(regions, capsys):
    from stdask.cli import main

    # through the real `stdask` entry point
    assert main(["segment", str(regions.path), "--n-domains", "3", "--iterations", "30",
                 "--pretrain-epochs", "10", "--key", "cli", "--truth", "domain", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "ARI" in out and "obs['cli']" in out
    back = stdask.read(regions.path)
    assert "cli" in back.obs and back.get_result("uns", "cli")["stop_iteration"] <= 29
    assert "cli_input" in stdask.raster.raster_names(back)


def test_argument_errors(layered):
    with pytest.raises(ValueError, match="min_label"):
        spaseg(layered, n_domains=0)
    with pytest.raises(KeyError, match="no obsm"):
        spaseg(layered, use_rep="X_nothing")
    with pytest.raises(ValueError, match="mode"):
        train(np.zeros((1, 2, 4, 4), np.float32), mode="tiles")


# ------------------------------------------------------------------------------------------- LR on domains
@pytest.fixture(scope="module")
def two_domains(tmp_path_factory):
    """Two domains side by side on a square lattice. Ligand CXCL12 and receptor CXCR4 are both expressed in
    domain 0 only (co-expressed in every neighbourhood there); 60 'scattered' genes have the same marginal
    distribution (zero in about half of the observations) at random places, so the expression-matched
    background pairs co-occur only by chance; WNT5A / FZD8 are two of the scattered genes (a null pair)."""
    rng = np.random.default_rng(3)
    r, c = np.meshgrid(np.arange(24), np.arange(30), indexing="ij")
    r, c = r.ravel(), c.ravel()
    n = len(r)
    dom = (c >= 15).astype(int)
    G = 200
    mu = rng.lognormal(-1.0, 1.0, G)[None, :] * np.ones((n, 1))
    names = [f"G{i}" for i in range(G)]
    names[0], names[1], names[2], names[3] = "CXCL12", "CXCR4", "WNT5A", "FZD8"
    mu[:, 0] = np.where(dom == 0, 6.0, 0.0)
    mu[:, 1] = np.where(dom == 0, 6.0, 0.0)
    for g in range(2, 62):
        mu[:, g] = np.where(rng.random(n) < 0.5, 6.0, 0.0)
    X = rng.poisson(mu).astype(np.int32)
    X[:, 100] += 1
    a = ad.AnnData(sp.csr_matrix(X), obs=pd.DataFrame({"dom": pd.Categorical(dom.astype(str))},
                                                       index=[f"b{i}" for i in range(n)]),
                   var=pd.DataFrame(index=names))
    a.obsm["spatial"] = np.column_stack([c * 10.0, r * 10.0])
    return make_store(a, tmp_path_factory.mktemp("lr") / "lr.zarr", unit="DNB", spot=10.0)


def test_lr_score_on_domains(two_domains):
    ds = two_domains
    lrs = pd.DataFrame({"ligand": ["CXCL12", "WNT5A"], "receptor": ["CXCR4", "FZD8"]})
    res = lr_score(ds, "dom", lrs, n_pairs=100, n_perms=200, seed=1, progress=False)
    assert list(res.pairs.names) == ["CXCL12_CXCR4"]  # the null pair is significant in no domain pair
    assert res.domain_pvalues.loc["CXCL12_CXCR4", "0|0"] < 0.05
    assert np.isnan(res.domain_pvalues.loc["CXCL12_CXCR4", "1|1"])  # not expressed there: untested
    s = res.scores[:, 0].toarray().ravel()
    pos = np.flatnonzero(s > 0)
    col = np.rint(ds.coords[:, 0] / 10).astype(int)  # store order differs from the input order
    dom_s = ds.obs["dom"].to_numpy().astype(int)
    # candidate observations are those of the significant domain (own expression masked elsewhere)
    assert len(pos) > 0 and (dom_s[pos] == 0).all()
    # independent score: (t1 + t2) / 2 over the ring neighbours, on log-normalised values
    g = stdask.gr.spatial_neighbors(ds, method="grid", n_neighs=10, n_rings=2, copy=True, progress=False,
                                    verbose=False).connectivities.tocsr()
    Xd = sp.csr_matrix(ds.to_anndata().X).toarray().astype(np.float64)
    tot = Xd.sum(1)
    E = np.log1p(Xd / (tot / np.median(tot))[:, None])
    lig, rec = list(ds.var_names).index("CXCL12"), list(ds.var_names).index("CXCR4")
    for i in pos[:25]:
        nb = g.indices[g.indptr[i]:g.indptr[i + 1]]
        t1 = np.mean(np.sqrt(E[i, lig] * E[nb, rec]))
        t2 = np.mean(np.sqrt(E[i, rec] * E[nb, lig]))
        assert s[i] == pytest.approx((t1 + t2) / 2, rel=1e-5)
    padj = res.padj[:, 0].toarray().ravel()
    sig = (padj > 0) & (padj < 0.05)
    assert res.summary.loc["CXCL12_CXCR4", "n_spots"] == len(pos)
    assert res.summary.loc["CXCL12_CXCR4", "n_spots_sig"] == int(sig.sum())
    interior = pos[col[pos] <= 12]
    assert sig[interior].mean() > 0.5  # co-expression beyond chance inside domain 0
    again = lr_score(ds, "dom", lrs, n_pairs=100, n_perms=200, seed=1, progress=False, copy=True)
    assert (again.pvals != res.pvals).nnz == 0
    assert ds.get_result("obsm", "spot_lr_score").shape == (ds.n_obs, 1)


# ------------------------------------------------------------------------------------------------ metrics
def test_metrics():
    """ARI, NMI and the label-free scores against values worked by hand from their definitions."""
    # contingency of truth (rows) x prediction (columns): [[2, 1, 0], [0, 1, 2]], n = 6.
    # ARI: sum C(n_ij, 2) = 2; rows 2 C(3, 2) = 6; columns 3 C(2, 2) = 3; expected 6 * 3 / C(6, 2) = 1.2;
    # max (6 + 3) / 2 = 4.5 -> (2 - 1.2) / (4.5 - 1.2) = 8/33.
    # NMI: MI = 2 * (2/6) ln((2/6) / ((3/6)(2/6))) = (2/3) ln 2, H(truth) = ln 2, H(pred) = ln 3;
    # arithmetic normalisation MI / ((ln 2 + ln 3) / 2) = (4/3) ln 2 / ln 6.
    truth = ["a", "a", "a", "b", "b", "b"]
    pred = [0, 0, 1, 1, 2, 2]
    assert ari(truth, pred) == pytest.approx(8 / 33, rel=1e-12)
    assert nmi(truth, pred) == pytest.approx(4 * np.log(2) / (3 * np.log(6)), rel=1e-12)
    # symmetric, and blind to the label names
    assert ari(pred, truth) == pytest.approx(8 / 33, rel=1e-12)
    assert ari(["x", "x", "x", "y", "y", "y"], ["k", "k", "m", "m", "z", "z"]) == pytest.approx(8 / 33, rel=1e-12)
    # the same partition: 1; independent halves ([[1, 1], [1, 1]]): ARI (0 - 2/3) / (2 - 2/3) = -1/2, MI = 0
    assert ari([1, 1, 2, 2], ["p", "p", "q", "q"]) == 1.0 and nmi([1, 1, 2, 2], [9, 9, 4, 4]) == pytest.approx(1.0)
    assert ari([0, 0, 1, 1], [0, 1, 0, 1]) == pytest.approx(-0.5, rel=1e-12)
    assert nmi([0, 0, 1, 1], [0, 1, 0, 1]) == pytest.approx(0.0, abs=1e-12)
    # an observation with a missing label on either side is left out (the 6-observation case again)
    assert ari(truth + [None, "a"], pred + [1, None]) == pytest.approx(8 / 33, rel=1e-12)
    assert nmi(np.array(truth + ["b"], dtype=object), pd.Series(pred + [np.nan])) == pytest.approx(
        4 * np.log(2) / (3 * np.log(6)), rel=1e-12)
    with pytest.raises(ValueError, match="labels"):
        ari(truth, pred[:5])
    # label-free scores of 0, 2 | 10, 12 on a line: centroids 1 and 11, overall mean 6.
    # Calinski-Harabasz: between 2 * 5^2 + 2 * 5^2 = 100 over k - 1 = 1; within 4 * 1^2 = 4 over n - k = 2 -> 50.
    # silhouette: (11 - 2) / 11 at the ends, (9 - 2) / 9 inside -> (9/11 + 7/9) / 2 = 79/99.
    # Davies-Bouldin: spreads 1 and 1, centroids 10 apart -> (1 + 1) / 10 = 0.2.
    X = np.array([[0.0], [2.0], [10.0], [12.0]])
    s = label_free(X, ["u", "u", "v", "v"])
    assert s["CHS"] == pytest.approx(50.0, rel=1e-12)
    assert s["SC"] == pytest.approx(79 / 99, rel=1e-12)
    assert s["DBS"] == pytest.approx(0.2, rel=1e-12)
    # a second dimension that is constant changes nothing; a missing label drops its observation
    X2 = np.column_stack([np.r_[X[:, 0], 100.0], np.full(5, 3.0)])
    assert label_free(X2, ["u", "u", "v", "v", None]) == pytest.approx(s, rel=1e-12)
    # undefined with one label or one observation per label
    assert all(np.isnan(v) for v in label_free(X, ["u"] * 4).values())
    assert all(np.isnan(v) for v in label_free(X, ["a", "b", "c", "d"]).values())
    # above sample_size the silhouette is a seeded estimate on a random sample: close to the exact value,
    # identical for the same seed; the other two scores still use every observation
    rng = np.random.default_rng(0)
    t = rng.integers(0, 4, 500)
    Xr = rng.normal(size=(500, 5)) + t[:, None] * 3
    full = label_free(Xr, t)
    sub = label_free(Xr, t, sample_size=200, seed=3)
    assert sub != full and abs(sub["SC"] - full["SC"]) < 0.05
    assert sub == label_free(Xr, t, sample_size=200, seed=3)
    assert (sub["CHS"], sub["DBS"]) == (full["CHS"], full["DBS"])
