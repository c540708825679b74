"""stdask.tl.svg: SpaSEG's domain-specific SVG criteria on synthetic data with planted markers; the Wilcoxon
test against scanpy; fold changes on normalised counts (S4) and the reference's double transform."""
from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import stdask
from stdask.io.memory import AnnDataSource
from stdask.settings import settings
from stdask.tl.svg import THRESHOLDS, select, svg

N_DOM = 4
N_MARK = 12


@pytest.fixture(autouse=True)
def quiet():
    old = settings.progress
    settings.progress = False
    yield
    settings.progress = old


def planted(seed: int = 0):
    """Counts with planted domain markers (5-10 fold over a moderate baseline in one domain), null genes,
    'broad' genes (up in two domains), weak markers (1.5 fold), and MT- genes up in domain 0."""
    rng = np.random.default_rng(seed)
    r, c = np.meshgrid(np.arange(40), np.arange(50), indexing="ij")
    r, c = r.ravel(), c.ravel()
    n = len(r)
    dom = np.minimum(c // 13, N_DOM - 1)  # vertical bands
    names, mu = [], []
    markers = {}
    for d in range(N_DOM):
        for k in range(N_MARK):
            base = rng.uniform(0.5, 1.5)
            m = np.full(n, base)
            m[dom == d] *= rng.uniform(5, 10)
            names.append(f"Mark{d}_{k}")
            markers[f"Mark{d}_{k}"] = str(d)
            mu.append(m)
    for k in range(20):  # broad: up in domains 0 and 1 alike -> no fold change against the max domain
        m = np.full(n, rng.uniform(0.5, 1.5))
        m[dom <= 1] *= 6
        names.append(f"Broad{k}")
        mu.append(m)
    for k in range(20):  # weak: 1.5 fold, below the published log2FC threshold
        d = k % N_DOM
        m = np.full(n, rng.uniform(0.5, 1.5))
        m[dom == d] *= 1.5
        names.append(f"Weak{d}_{k}")
        mu.append(m)
    for k in range(5):
        m = np.full(n, 1.0)
        m[dom == 0] *= 10
        names.append(f"MT-G{k}")
        mu.append(m)
    for k in range(150):
        names.append(f"Null{k}")
        mu.append(np.full(n, rng.lognormal(-0.5, 1.0)))
    mu = np.array(mu).T * rng.lognormal(0, 0.3, n)[:, None]
    X = rng.poisson(mu).astype(np.int32)
    X[:, -1] += 1  # no empty observation
    a = ad.AnnData(sp.csr_matrix(X), obs=pd.DataFrame({"domain": pd.Categorical(dom.astype(str))},
                                                       index=[f"s{i}" for i in range(n)]),
                   var=pd.DataFrame(index=names))
    a.obsm["spatial"] = np.column_stack([c * 100.0, r * 100.0])
    return a, markers


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    a, markers = planted()
    path = stdask.ingest(AnnDataSource(a), tmp_path_factory.mktemp("svg") / "p.zarr", progress=False)
    return stdask.read(path), a, markers


def test_planted_markers_recovered(data):
    ds, a, markers = data
    res = svg(ds, "domain")
    found = set(zip(res["gene"], res["domain"]))
    truth = set(markers.items())
    recall = len(found & truth) / len(truth)
    precision = len(found & truth) / max(1, len(found))
    assert recall >= 0.9 and precision >= 0.9, (recall, precision)
    assert not res["gene"].str.startswith(("Broad", "Weak", "Null", "MT-")).any()
    # sorted by out_fraction within each domain; counts per domain recorded
    for _, g in res.groupby("domain"):
        assert g["out_fraction"].is_monotonic_increasing
    assert sum(res.attrs["n_svgs"].values()) == len(res)
    assert ds.get_result("uns", "svg").shape == res.shape
    # mitochondrial genes are tested when asked
    with_mt = svg(ds, "domain", filter_mt=False, key_added=None)
    assert with_mt["gene"].str.startswith("MT-").any()


def test_statistics_match_independent_computation(data):
    ds, a, _ = data
    full = svg(ds, "domain", do_filter=False, key_added=None)
    X = a[ds.obs_names].X.toarray().astype(np.float64)
    tot = X.sum(1)
    norm_x = X / (tot / np.median(tot))[:, None]
    dom = ds.obs["domain"].to_numpy()
    genes = list(a.var_names)
    for d in ["0", "3"]:
        sub = full[full["domain"] == d].set_index("gene")
        ins = dom == d
        for g in ["Mark0_1", "Broad3", "Null7", f"Mark{d}_4"]:
            j = genes.index(g)
            x = norm_x[:, j]
            assert sub.loc[g, "log2_fc"] == pytest.approx(np.log2((x[ins].mean() + 1e-9) / (x[~ins].mean() + 1e-9)),
                                                          rel=1e-5)
            fr = {k: (x[dom == k] > 0).mean() for k in sorted(set(dom)) if k != d}
            kmax = max(fr, key=fr.get)
            assert sub.loc[g, "max_expr_domain"] == kmax
            assert sub.loc[g, "max_fraction"] == pytest.approx(fr[kmax])
            assert sub.loc[g, "in_fraction"] == pytest.approx((x[ins] > 0).mean())
            assert sub.loc[g, "out_fraction"] == pytest.approx((x[~ins] > 0).mean())
            xm = x[dom == kmax]
            assert sub.loc[g, "log2_fc_in_max"] == pytest.approx(np.log2((x[ins].mean() + 1e-9) / (xm.mean() + 1e-9)),
                                                                 rel=1e-5)
            assert sub.loc[g, "in_expr_cv"] == pytest.approx(x[ins].std(ddof=1) / x[ins].mean(), rel=1e-5)
            assert sub.loc[g, "cv_r"] == pytest.approx(sub.loc[g, "in_expr_cv"] / (xm.std(ddof=1) / xm.mean()),
                                                       rel=1e-5)
    # the criteria as written in the reference
    assert (select(full) == svg(ds, "domain", do_filter=False, key_added=None).pipe(select)).all()
    assert THRESHOLDS["min_in_frac"] == 0.8


def test_wilcoxon_matches_scanpy(data):
    sc = pytest.importorskip("scanpy")
    ds, a, _ = data
    b = a[ds.obs_names].copy()
    sc.pp.normalize_total(b)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sc.tl.rank_genes_groups(b, "domain", method="wilcoxon", n_genes=b.n_vars)
    full = svg(ds, "domain", do_filter=False, filter_mt=False, key_added=None)
    rg = b.uns["rank_genes_groups"]
    for d in ["0", "2"]:
        sub = full[full["domain"] == d].set_index("gene")
        sc_scores = pd.Series(rg["scores"][d], index=rg["names"][d])
        sc_padj = pd.Series(rg["pvals_adj"][d], index=rg["names"][d])
        np.testing.assert_allclose(sub.loc[sc_scores.index, "scores"], sc_scores, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(sub.loc[sc_padj.index, "pvals_adj"], sc_padj, rtol=1e-4, atol=1e-12)


def test_gene_batches_and_missing_labels(data):
    ds, _, _ = data
    one = svg(ds, "domain", do_filter=False, key_added=None, tie_correct=True)
    many = svg(ds, "domain", do_filter=False, key_added=None, tie_correct=True, max_nnz=3000)
    pd.testing.assert_frame_equal(one, many)
    lab = ds.obs["domain"].astype(object).to_numpy().copy()
    lab[:100] = None
    ds.set_result("obs", "dom_missing", pd.Categorical(lab))
    part = svg(ds, "dom_missing", do_filter=False, key_added=None, tie_correct=True)
    assert set(part["domain"]) == {"0", "1", "2", "3"}
    assert not np.allclose(part["scores"].to_numpy(), one["scores"].to_numpy())
    assert (part["in_fraction"] <= 1).all() and part["pvals_adj"].notna().all()


def test_reference_fold_change_double_transform(data):
    ds, _, _ = data
    corr = svg(ds, "domain", do_filter=False, key_added=None)
    ref = svg(ds, "domain", do_filter=False, key_added=None, fold_change="reference")
    # means are of normalised counts in both; the reference applies expm1 to them once more
    m_in = corr["in_expr_mean"].to_numpy()
    lfc = corr["log2_fc"].to_numpy()
    m_rest = (m_in + 1e-9) / 2 ** lfc - 1e-9
    want = np.log2((np.expm1(m_in) + 1e-9) / (np.expm1(m_rest) + 1e-9))
    np.testing.assert_allclose(ref["log2_fc"].to_numpy(), want, rtol=1e-4, atol=1e-4)
    # inflated fold changes: the reference finds at least as many SVGs with the same thresholds
    assert select(ref).sum() >= select(corr).sum()
    with pytest.raises(ValueError, match="fold_change"):
        svg(ds, "domain", fold_change="log")
    with pytest.raises(ValueError, match="unknown thresholds"):
        svg(ds, "domain", thresholds={"min_in_fraction": 0.75})
