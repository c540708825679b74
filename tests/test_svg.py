"""stdask.tl.svg: SpaSEG's domain-specific SVG criteria on synthetic data with planted markers and on a hand-made
slice with a gene on each side of every threshold; every statistic recomputed with numpy / scipy; the Wilcoxon
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
from stdask.tl.svg import select, svg

N_DOM = 4
N_MARK = 12


@pytest.fixture(autouse=True)
def quiet(quiet_progress):
    yield


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


# ---------------------------------------------------------------------------------------------------------
# the criteria, worked by hand: a tiny slice where each gene sits on one side of one threshold
# ---------------------------------------------------------------------------------------------------------
#: spots per domain of the hand-made slice
N_HAND = 20


def alternating(a: float, b: float, n: int = N_HAND) -> list[float]:
    """n values alternating a, b (mean (a + b) / 2; std with ddof=1 |b - a| / 2 * sqrt(n / (n - 1)))."""
    return [a, b] * (n // 2)


def some(k: int, value: float, n: int = N_HAND) -> list[float]:
    """k spots at ``value``, the other n - k at 0."""
    return [value] * k + [0.0] * (n - k)


#: gene -> (values in domain A, in B, in C), 20 spots each; the comment is the hand-worked row of domain A
#: (in = in_fraction, max = max_fraction, out = out_fraction, fc = log2_fc, fc_max = log2_fc_in_max).
HAND_GENES = {
    # in 1, max 0.5 (B), out 0.25: in/max 2, in/out 4; fc log2(4 / 0.25) = 4, fc_max log2(4 / 0.5) = 3 -> (a)
    "Pass": (some(20, 4), some(10, 1), some(0, 1)),
    # in = 0.8 exactly (not > 0.8) / 0.85; max 0.2, out 0.1; fc log2(6.4 / 0.1) = 6 -> (a)
    "In80": (some(16, 8), some(4, 1), some(0, 1)),
    "In85": (some(17, 8), some(4, 1), some(0, 1)),
    # everything passes but the test: A's ranks are those of B's 2s but for one 1000 (z = 0.31, p = 0.75);
    # fc log2(50.95 / 1) = 5.67, in/out 2
    "NotSig": ([1.0] * 19 + [1000.0], some(20, 2), some(0, 1)),
    # fc_max log2(28 / 10) = 1.485 (fails > 1.5) / log2(29 / 10) = 1.536; fc = fc_max + 1 (rest mean 5), in/out 2
    "FcMax28": (some(20, 28), some(20, 10), some(0, 1)),
    "FcMax29": (some(20, 29), some(20, 10), some(0, 1)),
    # B is the max domain (fraction 1, mean 1) so fc_max log2(10) = 3.32; the rest mean is (20 + 4 v) / 40:
    # v = 31 -> 3.6, fc log2(10 / 3.6) = 1.474 (fails > 1.5); v = 30 -> 3.5, fc 1.515; in/out 1 / 0.6
    "Fc31": (some(20, 10), some(20, 1), some(4, 31)),
    "Fc30": (some(20, 10), some(20, 1), some(4, 30)),
    # in 0.95, max 1 -> in/max = 0.95 exactly (not > 0.95) / max 0.95 -> 1.0; in/out 1.9 / 2, fc >= 3
    "InMax95": (some(19, 8), some(20, 1), some(0, 1)),
    "InMax100": (some(19, 8), some(19, 1), some(0, 1)),
    # in = out = 1 -> in/out = 1.0 exactly (not > 1) although fc log2(300) = 8.2 > 8 ...
    "InOut1": (alternating(100, 500), some(20, 1), some(20, 1)),
    # ... out 39/40 -> in/out 1.026: only clause (c) can pass (in/out, in/max <= 1.2; cv_in 0.69 >= 0.6):
    # fc log2(300 / 0.975) = 8.27 > 8 passes (c); with mean 200, fc log2(200 / 0.975) = 7.68 and
    # fc_max log2(200) = 7.64 do not
    "Clause_c": (alternating(100, 500), some(20, 1), some(19, 1)),
    "Fc7": (alternating(50, 350), some(20, 1), some(19, 1)),
    # clause (a) alone (fc_max = log2(4) = 2 < 3 rules out (b) and (c)): out (20 + k) / 40 with k of C's spots
    # at 1: k = 14 -> in/out 40 / 34 = 1.18 (no clause: not an SVG); k = 12 -> 40 / 32 = 1.25 (a)
    "CutA118": (some(20, 4), some(20, 1), some(14, 1)),
    "CutA125": (some(20, 4), some(20, 1), some(12, 1)),
    # clause (b) alone: in/out 40 / 34 = 1.18 rules out (a); A mean 20 with cv_in 4 * 1.026 / 20 = 0.21,
    # B mean 2 with cv 1.026 / 2 = 0.51: cv_r 0.40; fc_max log2(10) = 3.32, fc log2(20 / 1.35) = 3.89 -> (b)
    "CutB": (alternating(16, 24), alternating(1, 3), some(14, 1)),
    # B mean 2.5: fc_max = log2((20 + eps) / (2.5 + eps)) just under 3 -> no clause
    "CutB_fcmax3": (alternating(16, 24), alternating(1, 4), some(14, 1)),
    # cv_in: A alternating 9, 31 -> 11 * 1.026 / 20 = 0.564 (b); 8, 32 -> 0.615 >= 0.6 (no clause); B is
    # 15 x 1 + 5 x 5 (mean 2, cv 0.889) so cv_r < 1 in both
    "CutB_cv056": (alternating(9, 31), [1.0] * 15 + [5.0] * 5, some(14, 1)),
    "CutB_cv062": (alternating(8, 32), [1.0] * 15 + [5.0] * 5, some(14, 1)),
    # cv_r: A alternating 40, 120 (mean 80, cv 0.513; fc_max log2(16) = 4, fc log2(80 / 2.85) = 4.81); B mean 5,
    # alternating 3, 7 (cv 0.410: cv_r 1.25, no clause) or 2, 8 (cv 0.616: cv_r 0.83, (b))
    "CutB_cvr125": (alternating(40, 120), alternating(3, 7), some(14, 1)),
    "CutB_cvr083": (alternating(40, 120), alternating(2, 8), some(14, 1)),
}
#: the SVGs of domain A, by the rows worked out above (no gene passes in B or C)
HAND_SVGS = {"Pass", "In85", "FcMax29", "Fc30", "InMax100", "Clause_c", "CutA125", "CutB", "CutB_cv056",
             "CutB_cvr083"}


def hand_made() -> ad.AnnData:
    """The 60-spot slice of HAND_GENES (domains A, B, C in vertical bands of a 6 x 10 grid) plus a gene
    "Fill" that brings every spot to the same total, so normalize_total (median target) leaves the counts as
    they are and the rows above hold for the normalised values too."""
    names = list(HAND_GENES)
    X = np.column_stack([np.concatenate(HAND_GENES[g]) for g in names])
    fill = X.sum(1).max() + 1 - X.sum(1)
    X = np.column_stack([X, fill])
    n = len(X)
    dom = np.repeat(["A", "B", "C"], N_HAND)
    r, c = np.divmod(np.arange(n), 10)
    a = ad.AnnData(sp.csr_matrix(X.astype(np.float32)),
                   obs=pd.DataFrame({"domain": pd.Categorical(dom)}, index=[f"h{i}" for i in range(n)]),
                   var=pd.DataFrame(index=names + ["Fill"]))
    a.obsm["spatial"] = np.column_stack([c * 100.0, r * 100.0])
    return a


@pytest.fixture(scope="module")
def hand(tmp_path_factory):
    a = hand_made()
    path = stdask.ingest(AnnDataSource(a), tmp_path_factory.mktemp("svg_hand") / "h.zarr", progress=False)
    return stdask.read(path), a


def test_criteria_on_hand_worked_genes(hand):
    ds, _ = hand
    res = svg(ds, "domain", key_added=None)
    assert set(res.loc[res["domain"] == "A", "gene"]) == HAND_SVGS
    assert set(res["domain"]) == {"A"} and res.attrs["n_svgs"] == {"A": len(HAND_SVGS), "B": 0, "C": 0}
    full = svg(ds, "domain", do_filter=False, key_added=None)
    a = full[full["domain"] == "A"].set_index("gene")
    # the hand-worked numbers of the comments (exact where they are ratios of small integers)
    assert a.loc["In80", "in_fraction"] == 0.8 and a.loc["In85", "in_fraction"] == 0.85
    assert a.loc["InMax95", "in_max_fraction"] == 0.95 and a.loc["InMax100", "in_max_fraction"] == 1.0
    assert a.loc["InOut1", "in_out_fraction"] == 1.0 and a.loc["Clause_c", "in_out_fraction"] == 1 / 0.975
    assert a.loc["Pass", ["in_fraction", "max_fraction", "out_fraction"]].tolist() == [1.0, 0.5, 0.25]
    assert a.loc["Pass", "max_expr_domain"] == "B" and a.loc["Fc31", "max_expr_domain"] == "B"
    assert a.loc["Pass", ["log2_fc", "log2_fc_in_max"]].tolist() == pytest.approx([4.0, 3.0], abs=1e-8)
    for g, fc_max, fc in (("FcMax28", np.log2(2.8), np.log2(5.6)), ("FcMax29", np.log2(2.9), np.log2(5.8)),
                          ("Fc31", np.log2(10), np.log2(10 / 3.6)), ("Fc30", np.log2(10), np.log2(10 / 3.5)),
                          ("Clause_c", np.log2(300), np.log2(300 / 0.975)), ("Fc7", np.log2(200), np.log2(200 / 0.975)),
                          ("CutB", np.log2(10), np.log2(20 / 1.35)), ("CutB_fcmax3", 3.0, np.log2(20 / 1.6)),
                          ("CutB_cvr125", 4.0, np.log2(80 / 2.85))):
        assert a.loc[g, "log2_fc_in_max"] == pytest.approx(fc_max, abs=1e-8), g
        assert a.loc[g, "log2_fc"] == pytest.approx(fc, abs=1e-8), g
    assert a.loc["CutB_fcmax3", "log2_fc_in_max"] < 3.0
    k = np.sqrt(N_HAND / (N_HAND - 1))  # std (ddof=1) of alternating values, per unit of half-difference
    for g, cv, cv_r in (("CutB", 4 * k / 20, (4 * k / 20) / (k / 2)), ("CutB_cv056", 11 * k / 20, None),
                        ("CutB_cv062", 12 * k / 20, None), ("CutB_cvr125", 0.5 * k, 0.5 * k / (2 * k / 5)),
                        ("CutB_cvr083", 0.5 * k, 0.5 * k / (3 * k / 5))):
        assert a.loc[g, "in_expr_cv"] == pytest.approx(cv, rel=1e-12), g
        if cv_r is not None:
            assert a.loc[g, "cv_r"] == pytest.approx(cv_r, rel=1e-12), g
    assert a.loc["CutB_cv056", "cv_r"] < 1 and a.loc["CutB_cv062", "cv_r"] < 1
    # the only gene that fails the test alone: z = (630 - 610) / sqrt(20 * 40 * 61 / 12)
    assert a.loc["NotSig", "scores"] == pytest.approx(20 / np.sqrt(20 * 40 * 61 / 12), rel=1e-12)
    assert a.loc["NotSig", "pvals_adj"] > 0.05 and (a.drop(index=["NotSig", "Fill"])["pvals_adj"] < 1e-3).all()
    # the 151673 notebook's in_fraction threshold (0.75) lets In80 in
    loose = svg(ds, "domain", key_added=None, thresholds={"min_in_frac": 0.75})
    assert set(loose["gene"]) == HAND_SVGS | {"In80"}


def test_statistics_match_independent_computation(hand):
    """Every column of every (domain, gene) row, recomputed here with numpy / scipy from the counts."""
    from scipy.stats import false_discovery_control, mannwhitneyu, norm, rankdata

    ds, a = hand
    X = a.X.toarray().astype(np.float64)  # normalize_total leaves these counts unchanged (equal totals)
    assert np.ptp(X.sum(1)) == 0
    dom = a.obs["domain"].astype(str).to_numpy()
    doms = ["A", "B", "C"]
    n = len(X)
    full = svg(ds, "domain", do_filter=False, key_added=None)
    tied = svg(ds, "domain", do_filter=False, key_added=None, tie_correct=True)
    for d in doms:
        got = full[full["domain"] == d].set_index("gene").loc[a.var_names]
        ins = dom == d
        nD, nR = ins.sum(), (~ins).sum()
        others = [k for k in doms if k != d]
        frac = {k: (X[dom == k] > 0).mean(0) for k in doms}
        # max_expr_domain: the largest fraction among the other domains, the first in order on ties
        kmax = [others[int(np.argmax([frac[k][j] for k in others]))] for j in range(X.shape[1])]
        xmax = np.column_stack([X[dom == kmax[j], j] for j in range(X.shape[1])])
        m_in, m_rest, m_max = X[ins].mean(0), X[~ins].mean(0), xmax.mean(0)
        with np.errstate(divide="ignore", invalid="ignore"):
            cv_in = X[ins].std(0, ddof=1) / m_in
            cv_max = xmax.std(0, ddof=1) / m_max
        ranks = np.apply_along_axis(rankdata, 0, X)
        z = (ranks[ins].sum(0) - nD * (n + 1) / 2) / np.sqrt(nD * nR * (n + 1) / 12)
        p = 2 * norm.sf(np.abs(z))
        want = {"scores": z, "pvals": p, "pvals_adj": false_discovery_control(p),
                "in_fraction": frac[d], "out_fraction": (X[~ins] > 0).mean(0), "max_fraction": (xmax > 0).mean(0),
                "log2_fc": np.log2((m_in + 1e-9) / (m_rest + 1e-9)),
                "log2_fc_in_max": np.log2((m_in + 1e-9) / (m_max + 1e-9)),
                "in_expr_mean": m_in, "max_expr_mean": m_max, "in_expr_cv": cv_in, "max_expr_cv": cv_max}
        with np.errstate(divide="ignore", invalid="ignore"):
            want["in_out_fraction"] = want["in_fraction"] / want["out_fraction"]
            want["in_max_fraction"] = want["in_fraction"] / want["max_fraction"]
            want["cv_r"] = cv_in / cv_max
        assert got["max_expr_domain"].tolist() == kmax, d
        # a CV with mean 0 is undefined (stdask reports 0); compare where it is defined
        defined = {"in_expr_cv": m_in > 0, "max_expr_cv": m_max > 0, "cv_r": (m_in > 0) & (m_max > 0) & (cv_max > 0)}
        for col, v in want.items():
            ok = defined.get(col, np.ones(len(v), bool))
            np.testing.assert_allclose(got[col].to_numpy(np.float64)[ok], v[ok], rtol=1e-9, atol=1e-12,
                                       err_msg=f"{d} {col}")
        # tie-corrected variance: scipy's asymptotic Mann-Whitney test without continuity correction
        mw = mannwhitneyu(X[ins], X[~ins], method="asymptotic", use_continuity=False, axis=0)
        got_t = tied[tied["domain"] == d].set_index("gene").loc[a.var_names]
        np.testing.assert_allclose(got_t["pvals"].to_numpy(), mw.pvalue, rtol=1e-9, err_msg=d)


# ---------------------------------------------------------------------------------------------------------
# select(): every threshold of the published criteria, at its value (fails: the criteria are strict) and one
# float step to the passing side
# ---------------------------------------------------------------------------------------------------------
def up(x: float) -> float:
    return float(np.nextafter(x, np.inf))


def down(x: float) -> float:
    return float(np.nextafter(x, -np.inf))


#: a row that meets the preconditions with margin and no clause: in/out and in/max 1.1 (a needs > 1.2),
#: fold changes 2 (b needs > 3, c needs > 8), cv_in 0.9 (b needs < 0.6)
PRE_ONLY = {"pvals_adj": 0.01, "in_fraction": 0.9, "log2_fc": 2.0, "log2_fc_in_max": 2.0, "in_out_fraction": 1.1,
            "in_max_fraction": 1.1, "in_expr_cv": 0.9, "cv_r": 1.5}
#: preconditions at the edge, each with a row that passes through clause (c) otherwise
PRE_EDGES = [("pvals_adj", 0.05, down), ("in_fraction", 0.8, up), ("log2_fc", 1.5, up),
             ("log2_fc_in_max", 1.5, up), ("in_max_fraction", 0.95, up), ("in_out_fraction", 1.0, up)]
#: clause (b): all four at once
CLAUSE_B = {"log2_fc": 4.0, "log2_fc_in_max": 4.0, "in_expr_cv": 0.3, "cv_r": 0.5}
CLAUSE_B_EDGES = [("log2_fc", 3.0, up), ("log2_fc_in_max", 3.0, up), ("in_expr_cv", 0.6, down), ("cv_r", 1.0, down)]


def one_row(**kw) -> pd.DataFrame:
    return pd.DataFrame([{**PRE_ONLY, **kw}])


def test_select_thresholds_both_sides():
    assert not select(one_row())[0]
    # each precondition at its threshold fails, one step inside passes (clause (c) carries the rest)
    for col, edge, inside in PRE_EDGES:
        other = "log2_fc_in_max" if col == "log2_fc" else "log2_fc"
        assert not select(one_row(**{other: 9.0, col: edge}))[0], col
        assert select(one_row(**{other: 9.0, col: inside(edge)}))[0], col
    # clause (a): either fraction ratio above 1.2
    for col in ("in_out_fraction", "in_max_fraction"):
        assert not select(one_row(**{col: 1.2}))[0] and select(one_row(**{col: up(1.2)}))[0], col
    # clause (b): all four conditions; each at its threshold fails
    assert select(one_row(**CLAUSE_B))[0]
    for col, edge, inside in CLAUSE_B_EDGES:
        assert not select(one_row(**{**CLAUSE_B, col: edge}))[0], col
        assert select(one_row(**{**CLAUSE_B, col: inside(edge)}))[0], col
    # clause (c): either fold change above 8
    for col in ("log2_fc", "log2_fc_in_max"):
        assert not select(one_row(**{col: 8.0}))[0] and select(one_row(**{col: up(8.0)}))[0], col
    # a missing statistic (NaN, e.g. 0/0 fractions) never passes
    assert not select(one_row(**{"in_out_fraction": np.nan, "log2_fc": 9.0}))[0]
    # overrides: the 151673 notebook's in_fraction > 0.75
    row = one_row(in_fraction=0.76, log2_fc=9.0)
    assert not select(row)[0] and select(row, {"min_in_frac": 0.75})[0]


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
