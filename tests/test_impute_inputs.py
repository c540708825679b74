"""stImpute's inputs, folds, metrics and kNN baseline (``stdask.tl.impute``; spec ``stimpute.md`` §1, §11): each
against an independent numpy / scikit-learn computation, and each refusal (no shared genes, fewer shared genes
than folds, mouse-vs-human gene-name case, NaN or negative reference values, duplicated genes)."""
from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from sklearn.model_selection import KFold

import stdask
from stdask.io.memory import AnnDataSource
from stdask.tl.impute.baseline import knn_average, knn_average_blocks
from stdask.tl.impute.folds import gene_folds
from stdask.tl.impute.metrics import (GeneMetrics, cell_cosine, cell_mse, gene_cosine, gene_mse,
                                      summary_table)
from stdask.tl.impute.reference import (check_reference, load_reference, match_genes, normalise_log,
                                        normalise_log_block)


def _counts(n=60, g=12, seed=0) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    X = sp.csr_matrix(rng.poisson(1.5, (n, g)).astype(np.float32))
    a = ad.AnnData(X=X, obs=pd.DataFrame(index=[f"c{i}" for i in range(n)]),
                   var=pd.DataFrame(index=[f"Gene{j}" for j in range(g)]))
    a.obsm["spatial"] = rng.uniform(0, 100, (n, 2))
    return a


# ------------------------------------------------------------------------------------------------------------
# load_reference / check_reference
# ------------------------------------------------------------------------------------------------------------
def test_load_reference_from_anndata_h5ad_and_store(tmp_path):
    a = _counts()
    a.layers["counts"] = a.X * 2
    assert load_reference(a) is a
    from_layer = load_reference(a, layer="counts")
    assert (from_layer.X != a.X * 2).nnz == 0 and list(from_layer.var_names) == list(a.var_names)
    with pytest.raises(KeyError, match="no layer 'raw'.*'counts'"):
        load_reference(a, layer="raw")

    a.write_h5ad(tmp_path / "ref.h5ad")
    h = load_reference(tmp_path / "ref.h5ad")
    assert (h.X != a.X).nnz == 0 and list(h.obs_names) == list(a.obs_names)

    store = stdask.ingest(AnnDataSource(a), tmp_path / "ref.zarr", progress=False)
    s = load_reference(str(store))
    assert list(s.var_names) == list(a.var_names) and s.n_obs == a.n_obs
    # the store orders rows by tile: compare cell by cell
    back = a[list(s.obs_names)].X.toarray()
    np.testing.assert_array_equal(np.asarray(s.X.toarray() if sp.issparse(s.X) else s.X), back)


def test_load_reference_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.h5ad"):
        load_reference(tmp_path / "missing.h5ad")
    (tmp_path / "ref.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match="neither an .h5ad"):
        load_reference(tmp_path / "ref.csv")
    with pytest.raises(TypeError, match="ndarray"):
        load_reference(np.zeros((3, 3)))


def test_check_reference_refusals_and_warning():
    a = _counts()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_reference(a)  # raw counts: silent

    nan = a.copy()
    nan.X = nan.X.toarray()
    nan.X[[1, 5, 7], [0, 2, 3]] = [np.nan, np.inf, np.nan]
    with pytest.raises(ValueError, match=r"atlas: X holds 3 NaN or infinite.*replace"):
        check_reference(nan, name="atlas")

    neg = a.copy()
    neg.X = neg.X.toarray() - 1.0
    n_neg = int((neg.X < 0).sum())
    with pytest.raises(ValueError, match=f"reference: X holds {n_neg:,} negative"):
        check_reference(neg)

    dup = a.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # anndata's own warning about non-unique names
        dup.var_names = ["Gene0", "Gene1", "Gene0"] + list(a.var_names[3:])
    with pytest.raises(ValueError, match=r"1 gene names occur more than once.*Gene0"):
        check_reference(dup)

    logged = a.copy()
    logged.X = normalise_log(a.X)[0]
    with pytest.warns(UserWarning, match="raw counts"):
        check_reference(logged)


# ------------------------------------------------------------------------------------------------------------
# match_genes
# ------------------------------------------------------------------------------------------------------------
def test_match_genes_exact_against_python_sets():
    spatial = ["Sox2", "Actb", "Gfap", "Pvalb", "Olig2"]
    reference = ["Zic1", "Pvalb", "Actb", "Mbp", "Sox2", "Aqp4", "Gad1"]
    m = match_genes(spatial, reference)
    shared = sorted(set(spatial) & set(reference))
    assert list(m.shared) == shared and not m.case_folded
    assert [spatial[i] for i in m.spatial_index] == shared
    assert [reference[i] for i in m.reference_index] == shared
    only = sorted(set(reference) - set(spatial))
    assert list(m.reference_only) == only
    assert [reference[i] for i in m.reference_only_index] == only
    assert m.spatial_index.dtype == m.reference_index.dtype == np.int64


def test_match_genes_mouse_vs_human_case():
    spatial = ["Gapdh", "Actb", "Sox2", "Mt-co1", "Xist"]  # mouse symbols
    reference = ["GAPDH", "ACTB", "SOX2", "MT-CO1", "CD3E", "Xist"]  # human symbols (Xist spelt alike)
    with pytest.raises(ValueError, match=r"differ in gene-name case.*4 spatial genes.*\('Actb', 'ACTB'\).*"
                                         r"case_insensitive=True"):
        match_genes(spatial, reference)
    exact = match_genes(spatial, reference, case_insensitive=False)
    assert list(exact.shared) == ["Xist"]
    m = match_genes(spatial, reference, case_insensitive=True)
    assert m.case_folded
    assert list(m.shared) == sorted(spatial)  # spatial names, sorted
    assert [reference[i].upper() for i in m.reference_index] == [g.upper() for g in m.shared]
    assert [spatial[i] for i in m.spatial_index] == list(m.shared)
    assert list(m.reference_only) == ["CD3E"] and list(m.reference_only_index) == [4]
    # two reference symbols that fold to one key: ambiguous
    with pytest.raises(ValueError, match=r"ambiguous.*\['Gapdh', 'GAPDH'\]"):
        match_genes(spatial, ["Gapdh", "GAPDH", "ACTB"], case_insensitive=True)


def test_match_genes_refusals():
    with pytest.raises(ValueError, match=r"spatial panel \(3 genes, e.g. \['A', 'B', 'C'\]\) and the reference "
                                         r"\(2 genes, e.g. \['X', 'Y'\]\) share no gene"):
        match_genes(["A", "B", "C"], ["X", "Y"])
    with pytest.raises(ValueError, match=r"reference gene names are not unique.*'B'"):
        match_genes(["A", "B"], ["B", "A", "B"])


# ------------------------------------------------------------------------------------------------------------
# normalise_log
# ------------------------------------------------------------------------------------------------------------
def test_normalise_log_against_numpy():
    rng = np.random.default_rng(1)
    X = rng.poisson(2.0, (40, 9)).astype(np.float64)
    X[[3, 17]] = 0  # empty cells: excluded from the median, left at zero
    totals = X.sum(1)
    median = np.median(totals[totals > 0])
    want = np.log1p(X / np.where(totals > 0, totals, 1)[:, None] * median)
    for given in (X, sp.csr_matrix(X), sp.csc_matrix(X)):
        out, target = normalise_log(given)
        assert sp.isspmatrix_csr(out) and out.dtype == np.float32
        assert target == pytest.approx(median, rel=1e-6)
        np.testing.assert_allclose(out.toarray(), want, rtol=2e-6, atol=1e-6)
    assert not out[[3, 17]].nnz
    # a given target, and the block function streaming tiles with the whole table's target
    out, target = normalise_log(X, target=1e4)
    assert target == 1e4
    np.testing.assert_allclose(out.toarray(), np.log1p(X / np.where(totals > 0, totals, 1)[:, None] * 1e4),
                               rtol=2e-6)
    whole, t = normalise_log(sp.csr_matrix(X))
    tiles = sp.vstack([normalise_log_block(sp.csr_matrix(X[a:b]), t) for a, b in [(0, 7), (7, 30), (30, 40)]])
    np.testing.assert_array_equal(tiles.toarray(), whole.toarray())
    with pytest.raises(ValueError, match="total count of 0"):
        normalise_log(np.zeros((3, 4)))
    with pytest.raises(ValueError, match="finite number > 0"):
        normalise_log_block(X, 0.0)


# ------------------------------------------------------------------------------------------------------------
# gene_folds
# ------------------------------------------------------------------------------------------------------------
def _kfold_numpy(n, k, seed):
    """KFold(shuffle=True) written out: a RandomState permutation cut into k parts, the first n % k one larger."""
    perm = np.arange(n)
    np.random.RandomState(seed).shuffle(perm)
    sizes = np.full(k, n // k) + (np.arange(k) < n % k)
    return [np.sort(part) for part in np.split(perm, np.cumsum(sizes)[:-1])]


@pytest.mark.parametrize("n, k, seed", [(33, 5, 0), (10, 5, 0), (151, 5, 0), (7, 3, 11)])
def test_gene_folds_equal_sklearn_kfold(n, k, seed):
    genes = np.array(sorted(f"g{i:03d}" for i in range(n)), dtype=object)
    folds = gene_folds(genes, folds=k, seed=seed)
    want = [test for _, test in KFold(n_splits=k, shuffle=True, random_state=seed).split(genes)]
    assert len(folds) == k
    for got, ref, mine in zip(folds, want, _kfold_numpy(n, k, seed)):
        np.testing.assert_array_equal(got, ref)
        np.testing.assert_array_equal(got, mine)
    assert np.array_equal(np.sort(np.concatenate(folds)), np.arange(n))
    # the folds belong to the genes, not to the order they are given in
    shuffled = genes[np.random.default_rng(0).permutation(n)]
    by_name = [set(shuffled[f]) for f in gene_folds(shuffled, folds=k, seed=seed)]
    assert by_name == [set(genes[f]) for f in folds]


def test_gene_folds_refusals():
    with pytest.raises(ValueError, match="4 shared genes cannot be split into 5 folds"):
        gene_folds(["a", "b", "c", "d"], folds=5)
    with pytest.raises(ValueError, match="at least 2"):
        gene_folds(["a", "b", "c"], folds=1)
    with pytest.raises(ValueError, match="duplicated"):
        gene_folds(["a", "b", "a"], folds=2)


# ------------------------------------------------------------------------------------------------------------
# metrics
# ------------------------------------------------------------------------------------------------------------
def _loop_cosine(a, b):
    na, nb = np.sqrt((a * a).sum()), np.sqrt((b * b).sum())
    return 0.0 if na == 0 or nb == 0 else float((a * b).sum() / (na * nb))


def test_metrics_against_loops():
    rng = np.random.default_rng(2)
    pred = rng.gamma(1.0, 1.0, (30, 8)).astype(np.float32)
    truth = rng.gamma(1.0, 1.0, (30, 8))
    truth[:, 3] = 0  # a gene never measured: cosine 0
    pred[5] = 0  # a cell predicted all zero: cosine 0
    p, t = pred.astype(np.float64), truth
    np.testing.assert_allclose(gene_cosine(pred, truth), [_loop_cosine(p[:, j], t[:, j]) for j in range(8)],
                               rtol=1e-12)
    np.testing.assert_allclose(cell_cosine(pred, truth), [_loop_cosine(p[i], t[i]) for i in range(30)], rtol=1e-12)
    np.testing.assert_allclose(gene_mse(pred, truth), ((p - t) ** 2).mean(0), rtol=1e-12)
    np.testing.assert_allclose(cell_mse(pred, sp.csr_matrix(truth)), ((p - t) ** 2).mean(1), rtol=1e-12)
    assert gene_cosine(pred, truth)[3] == 0 and cell_cosine(pred, truth)[5] == 0
    with pytest.raises(ValueError, match="one shape"):
        gene_cosine(pred, truth[:, :5])


def test_streaming_gene_metrics_equal_dense_on_uneven_blocks():
    rng = np.random.default_rng(3)
    pred = rng.normal(size=(101, 13)).astype(np.float32)
    truth = sp.random(101, 13, density=0.3, random_state=4, format="csr")
    acc = GeneMetrics(13)
    assert np.isnan(acc.mse()).all()
    cells_cos, cells_mse = [], []
    for a, b in [(0, 1), (1, 40), (40, 41), (41, 100), (100, 101)]:
        c, m = acc.update(pred[a:b], truth[a:b])
        cells_cos.append(c)
        cells_mse.append(m)
    assert acc.n_cells == 101
    np.testing.assert_allclose(acc.cosine(), gene_cosine(pred, truth), rtol=1e-12)
    np.testing.assert_allclose(acc.mse(), gene_mse(pred, truth), rtol=1e-12)
    np.testing.assert_allclose(np.concatenate(cells_cos), cell_cosine(pred, truth), rtol=1e-12)
    np.testing.assert_allclose(np.concatenate(cells_mse), cell_mse(pred, truth), rtol=1e-12)
    with pytest.raises(ValueError, match="12 genes, the accumulator 13"):
        acc.update(pred[:3, :12], truth[:3, :12])


def test_summary_table_medians_means_and_top_half():
    rng = np.random.default_rng(5)
    gc, gm, cc, cm = rng.uniform(size=9), rng.uniform(size=9), rng.uniform(size=20), rng.uniform(size=20)
    rel = np.array([0.5, 0.9, 0.1, 0.9, 0.3, 0.5, 0.2, 0.8, 0.5])
    tab = summary_table(gc, gm, pd.Series(cc), cm, reliability=rel)
    assert list(tab.index) == ["gene_cosine", "gene_mse", "cell_cosine", "cell_mse", "top50_cosine"]
    for key, v in [("gene_cosine", gc), ("gene_mse", gm), ("cell_cosine", cc), ("cell_mse", cm)]:
        assert tab.loc[key, "median"] == pytest.approx(np.median(v))
        assert tab.loc[key, "mean"] == pytest.approx(np.mean(v))
        assert tab.loc[key, "n"] == v.size
    # floor(9 / 2) = 4 most reliable: 0.9 (genes 1, 3), 0.8 (gene 7), then 0.5 tied at genes 0, 5, 8 -> gene 0
    top = gc[[1, 3, 7, 0]]
    assert tab.loc["top50_cosine", "median"] == pytest.approx(np.median(top))
    assert tab.loc["top50_cosine", "n"] == 4
    assert "top50_cosine" not in summary_table(gc, gm, cc, cm).index
    with pytest.raises(ValueError, match="3 values for 9 genes"):
        summary_table(gc, gm, cc, cm, reliability=rel[:3])


# ------------------------------------------------------------------------------------------------------------
# kNN-average baseline
# ------------------------------------------------------------------------------------------------------------
def _brute_knn_mean(spatial, ref, target, k):
    """Cosine distance of every pair in float64, each cell's k smallest (ties by reference index), plain mean."""
    def unit(x):
        n = np.linalg.norm(x, axis=1, keepdims=True)
        return np.divide(x, n, out=np.zeros_like(x), where=n > 0)

    d = 1.0 - unit(spatial) @ unit(ref).T
    out = np.empty((spatial.shape[0], target.shape[1]))
    for i in range(spatial.shape[0]):
        nn = sorted(range(ref.shape[0]), key=lambda j: (d[i, j], j))[:k]
        out[i] = target[nn].mean(0)
    return out


def test_knn_average_equals_brute_force():
    rng = np.random.default_rng(6)
    spatial = rng.poisson(1.0, (37, 6)).astype(np.float64)
    spatial[4] = 0  # no expression: distance 1 to all, takes the first k reference cells
    ref = rng.poisson(1.0, (50, 6)).astype(np.float64)
    target = rng.gamma(1.0, 1.0, (50, 11)) * (rng.uniform(size=(50, 11)) < 0.4)
    want = _brute_knn_mean(spatial, ref, target, 5)
    got = knn_average(spatial, ref, target, 5)
    assert got.shape == (37, 11) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got[4], target[:5].mean(0), rtol=1e-6)
    # sparse inputs and small uneven blocks give the same numbers
    blocked = knn_average(sp.csr_matrix(spatial), sp.csr_matrix(ref), sp.csr_matrix(target), 5, block_cells=8,
                          method="exact")
    np.testing.assert_array_equal(blocked, got)
    starts = [s for s, _ in knn_average_blocks(spatial, ref, target, 5, block_cells=10)]
    assert starts == [0, 10, 20, 30]
    with pytest.raises(ValueError, match="6 training genes and reference_train 5"):
        knn_average(spatial, ref[:, :5], target, 5)
    with pytest.raises(ValueError, match="reference_target has 49 cells"):
        knn_average_blocks(spatial, ref, target[:49], 5)  # at the call, before any block is asked for
    with pytest.raises(ValueError, match="method must be one of"):
        knn_average(spatial, ref, target, 5, method="ball_tree")


def test_knn_average_builds_one_index_and_queries_it_per_block(monkeypatch):
    """Above exact_max_pairs the search is pynndescent, decided from the whole query and built once over the
    reference; each block of cells queries it. pynndescent itself (tested in test_stimpute_model, ~20 s to
    compile) is replaced by the exact search here; what the index is asked is recorded."""
    from stdask.tl.impute import baseline
    from stdask.models.stimpute.neighbours import CodeIndex

    calls = []

    class Recorded(CodeIndex):
        def __init__(self, reference, k, n_query, *, method, exact_max_pairs, seed):
            super().__init__(reference, k, n_query, method=method, exact_max_pairs=exact_max_pairs, seed=seed)
            calls.append(("build", n_query, self.method, seed))
            self._index = None  # search exactly whatever was chosen

        def query(self, codes, block_rows=None):
            calls.append(("query", codes.shape[0]))
            return super().query(codes, block_rows)

    monkeypatch.setattr(baseline, "CodeIndex", Recorded)
    monkeypatch.setattr("pynndescent.NNDescent", lambda *a, **kw: None)  # no index built, no compile
    rng = np.random.default_rng(7)
    spatial, ref, target = rng.gamma(1.0, 1.0, (45, 8)), rng.gamma(1.0, 1.0, (120, 8)), rng.gamma(1.0, 1.0, (120, 5))
    got = knn_average(spatial, ref, target, 4, seed=3, block_cells=20, exact_max_pairs=45 * 120 - 1)
    assert calls == [("build", 45, "pynndescent", 3), ("query", 20), ("query", 20), ("query", 5)]
    np.testing.assert_allclose(got, _brute_knn_mean(spatial, ref, target, 4), rtol=1e-6)
    calls.clear()
    knn_average(spatial, ref, target, 4, exact_max_pairs=45 * 120)  # at the threshold: exact
    assert calls[0] == ("build", 45, "exact", 42)
