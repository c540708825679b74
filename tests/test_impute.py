"""``sd.tl.impute`` and ``sd.tl.impute_cv`` on stores: the second table, tiling invariance, the CV protocol and
its metrics against independent computations, and every bad input the issue names."""
from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

pytest.importorskip("torch")

import stdask as sd  # noqa: E402
from stdask.datasets.paired import paired_synthetic  # noqa: E402

#: small settings (the defaults train 50 Trans steps per round on the size rule's K, h): seconds, not minutes
FAST = dict(k=20, hidden=16, e_epochs=20, ae_epochs=5, m_epochs=2, reliability_epochs=30)


@pytest.fixture(scope="module")
def paired():
    return paired_synthetic(n_spatial=600, n_reference=400, n_genes=200, n_panel=50, seed=1)


def _store(paired, path, tile_size):
    paired.spatial.write_h5ad(path.parent / f"{path.stem}.h5ad")
    return sd.read(sd.ingest(path.parent / f"{path.stem}.h5ad", path, progress=False, tile_size=tile_size))


@pytest.fixture(scope="module")
def stores(paired, tmp_path_factory):
    d = tmp_path_factory.mktemp("impute")
    return _store(paired, d / "tiled.zarr", 60.0), _store(paired, d / "whole.zarr", 1000.0)


@pytest.fixture(scope="module")
def imputed(paired, stores):
    tiled, _ = stores
    return sd.tl.impute(tiled, paired.reference, progress=False, **FAST)


def _lognorm(counts) -> np.ndarray:
    x = np.asarray(counts.toarray() if sp.issparse(counts) else counts, dtype=np.float64)
    tot = x.sum(1)
    target = np.median(tot[tot > 0])
    return np.log1p(x / np.where(tot > 0, tot, 1)[:, None] * target)


def test_impute_writes_a_second_table(paired, stores, imputed):
    tiled, _ = stores
    assert tiled.n_tiles > 4 and (np.diff(tiled.tile_row_start) > 0).sum() > 4
    reopened = sd.read(tiled.path, table="imputed")
    unmeasured = sorted(set(paired.reference.var_names) - set(paired.panel))
    assert list(reopened.var_names) == unmeasured
    assert reopened.n_obs == tiled.n_obs and list(reopened.obs_names) == list(tiled.obs_names)
    a = reopened.to_anndata()
    assert a.X.dtype == np.float32 and a.shape == (tiled.n_obs, len(unmeasured))
    assert np.isfinite(a.X).all() and (a.X >= 0).all()
    rel = a.var["reliability"]
    assert rel.notna().all() and a.var["reliable"].sum() == len(unmeasured) // 2
    assert a.var["reliable"].to_numpy()[np.argsort(-rel.to_numpy(), kind="stable")[: len(unmeasured) // 2]].all()
    prov = a.uns["stimpute"]
    assert prov["config"]["k"] == FAST["k"] and prov["config"]["blend"] == "paper"
    assert prov["n_train_cells"] == tiled.n_obs and prov["inputs"]["shared_genes"] == 50
    # the main table is unchanged and knows nothing of the new one
    assert tiled.n_vars == 50 and "imputed" not in tiled.pending


def test_imputation_tracks_the_truth(paired, imputed):
    """Per unmeasured gene, the imputed values correlate with the true (never seen) values across cells."""
    a = imputed.to_anndata()
    truth = paired.spatial_truth[list(a.obs_names), list(a.var_names)]
    t = _lognorm(paired.spatial_truth[list(a.obs_names)].X)[:, [paired.spatial_truth.var_names.get_loc(g)
                                                                 for g in a.var_names]]
    assert truth.shape == a.shape
    cos = (a.X * t).sum(0) / np.maximum(np.linalg.norm(a.X, axis=0) * np.linalg.norm(t, axis=0), 1e-12)
    shuffled = (a.X[np.random.default_rng(0).permutation(a.n_obs)] * t).sum(0) / np.maximum(
        np.linalg.norm(a.X, axis=0) * np.linalg.norm(t, axis=0), 1e-12)
    assert np.median(cos) > np.median(shuffled) + 0.1


def test_tiles_do_not_change_the_imputation(paired, stores, imputed):
    _, whole = stores
    assert whole.n_tiles == 1
    other = sd.tl.impute(whole, paired.reference, progress=False, **FAST).to_anndata()
    mine = imputed.to_anndata()
    other = other[list(mine.obs_names)]
    np.testing.assert_array_equal(other.var["reliability"].to_numpy(), mine.var["reliability"].to_numpy())
    # float32 rounding only: BLAS kernels differ with the number of rows per batch (README design note)
    np.testing.assert_allclose(other.X, mine.X, rtol=1e-5, atol=1e-5)


def test_impute_of_named_genes_and_rewrite(paired, stores):
    tiled, _ = stores
    genes = sorted(set(paired.reference.var_names) - set(paired.panel))[:5]
    out = sd.tl.impute(tiled, paired.reference, genes=genes, key_added="few", progress=False, **FAST)
    assert list(out.var_names) == genes
    with pytest.raises(ValueError, match="not in the reference"):
        sd.tl.impute(tiled, paired.reference, genes=["nope"], progress=False, **FAST)


def test_cv_protocol_and_metrics(paired, stores):
    from sklearn.model_selection import KFold

    tiled, _ = stores
    cv = sd.tl.impute_cv(tiled, paired.reference, progress=False, **FAST)
    shared = np.array(sorted(paired.panel))
    assert list(cv.genes.index) == list(shared)
    for f, (_, test) in enumerate(KFold(5, shuffle=True, random_state=0).split(shared)):
        assert (cv.genes["fold"].to_numpy()[test] == f).all()
    # the metrics against an independent computation from the out-of-fold predictions and the measured panel
    pred = np.asarray(cv.predictions.X)
    truth = _lognorm(paired.spatial[list(cv.predictions.obs_names)].X)
    truth = truth[:, [list(paired.spatial.var_names).index(g) for g in shared]]
    gcos = (pred * truth).sum(0) / np.sqrt((pred ** 2).sum(0) * (truth ** 2).sum(0))
    np.testing.assert_allclose(cv.genes["cosine"], gcos, rtol=1e-4)
    np.testing.assert_allclose(cv.genes["mse"], ((pred - truth) ** 2).mean(0), rtol=1e-4)
    den = np.sqrt((pred ** 2).sum(1) * (truth ** 2).sum(1))
    ccos = np.divide((pred * truth).sum(1), den, out=np.zeros_like(den), where=den > 0)  # 0 for an empty cell
    np.testing.assert_allclose(cv.cells["cosine"], ccos, rtol=1e-4)
    assert cv.summary.loc["gene_cosine", "median"] == pytest.approx(np.median(gcos), rel=1e-4)
    top = np.argsort(-cv.reliability.to_numpy(), kind="stable")[: len(shared) // 2]
    assert cv.summary.loc["top50_cosine", "median"] == pytest.approx(np.median(gcos[top]), rel=1e-4)
    assert {"knn_median", "knn_mean"} <= set(cv.summary.columns)
    assert cv.summary.loc["gene_cosine", "median"] > 0.3


def _ref_with(paired, X=None, var_names=None):
    ref = paired.reference.copy()
    if X is not None:
        ref.X = X
    if var_names is not None:
        ref.var_names = var_names
    return ref


def test_bad_inputs(paired, stores, tmp_path):
    tiled, _ = stores
    ref = paired.reference
    with pytest.raises(ValueError, match="share no gene"):
        sd.tl.impute(tiled, _ref_with(paired, var_names=[f"other_{i}" for i in range(ref.n_vars)]),
                     progress=False, **FAST)
    # other gene-name case (mouse vs human symbols): refused with the remedy, accepted when asked
    upper = _ref_with(paired, var_names=[g.upper() for g in ref.var_names])
    with pytest.raises(ValueError, match="case"):
        sd.tl.impute(tiled, upper, progress=False, **FAST)
    nan = ref.X.astype(np.float32).copy()
    nan.data[0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        sd.tl.impute(tiled, _ref_with(paired, X=nan), progress=False, **FAST)
    # fewer shared genes than folds
    few = ref[:, list(paired.panel[:3]) + [g for g in ref.var_names if g not in set(paired.panel)]].copy()
    with pytest.raises(ValueError, match="fold"):
        sd.tl.impute_cv(tiled, few, folds=5, progress=False, **FAST)
    with pytest.raises(FileNotFoundError, match="missing.h5ad"):
        sd.tl.impute(tiled, tmp_path / "missing.h5ad", progress=False, **FAST)
    with pytest.raises(ValueError, match="reliability"):
        sd.tl.impute(tiled, ref, reliability="best", progress=False, **FAST)
    with pytest.raises(ValueError, match="nothing to impute"):
        sd.tl.impute(tiled, ref[:, list(paired.panel)].copy(), progress=False, **FAST)


def test_case_insensitive_matching_runs(paired, stores):
    tiled, _ = stores
    upper = _ref_with(paired, var_names=[g.upper() for g in paired.reference.var_names])
    genes = sorted(set(upper.var_names) - {g.upper() for g in paired.panel})[:3]
    out = sd.tl.impute(tiled, upper, genes=genes, key_added="upper", case_insensitive=True, progress=False, **FAST)
    assert list(out.var_names) == genes
    assert out.to_anndata().uns["stimpute"]["inputs"]["case_folded"]


def test_embedding_covering_few_genes_falls_back(paired, stores, tmp_path):
    """A gene-embedding file that covers only a few genes: the hybrid graph uses it where both genes have a
    vector and expression cosine elsewhere, and records the coverage; one covering none warns and falls back."""
    tiled, _ = stores
    emb = paired.gene_embedding.to_frame()
    part = emb[emb["gene"].isin(list(paired.panel[:5]))]
    part.to_csv(tmp_path / "few.csv", index=False)
    genes = sorted(set(paired.reference.var_names) - set(paired.panel))[:3]
    out = sd.tl.impute(tiled, paired.reference, genes=genes, gene_embedding=tmp_path / "few.csv", key_added="emb",
                       progress=False, **FAST)
    info = out.to_anndata().uns["stimpute"]["graph_all"]
    assert 0 < info["coverage"] < 0.2
    none = emb.copy()
    none["gene"] = [f"zz{i}" for i in range(len(none))]
    none.to_csv(tmp_path / "none.csv", index=False)
    with pytest.warns(UserWarning, match="cover"):
        sd.tl.impute(tiled, paired.reference, genes=genes, gene_embedding=tmp_path / "none.csv", key_added="emb0",
                     progress=False, **FAST)
