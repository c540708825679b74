"""The paired synthetic data for imputation (stdask.datasets.paired): shapes, determinism, the panel being
the truth's columns, gene programs, the platform effect, spatial domains, a kNN baseline that can impute
(and is not trivial), gene embeddings tracking loading similarity, and the file writer."""
from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from sklearn.decomposition import PCA
from sklearn.neighbors import NearestNeighbors

from stdask.datasets.paired import (paired_model, paired_reference, paired_synthetic, spatial_obs, spatial_panel_chunks,
                                    write_paired)

N_SPATIAL, N_REFERENCE, N_GENES, N_PANEL = 3000, 1500, 600, 150


@pytest.fixture(scope="module")
def paired():
    return paired_synthetic(N_SPATIAL, N_REFERENCE, N_GENES, N_PANEL, seed=0)


def _lognorm(x: sp.spmatrix) -> np.ndarray:
    """Dense log1p of counts scaled to the median cell total (the spec's SpaGE protocol)."""
    x = sp.csr_matrix(x, dtype=np.float64)
    total = np.asarray(x.sum(axis=1)).ravel()
    x = sp.diags(np.median(total) / np.maximum(total, 1.0)) @ x
    x.data = np.log1p(x.data)
    return x.toarray()


def _gene_cosine(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Uncentred cosine per column (gene), as stImpute's evaluation."""
    den = np.linalg.norm(pred, axis=0) * np.linalg.norm(truth, axis=0)
    return (pred * truth).sum(axis=0) / np.maximum(den, 1e-12)


def test_shapes_dtypes_counts(paired):
    sp_, tr, ref = paired.spatial, paired.spatial_truth, paired.reference
    assert sp_.shape == (N_SPATIAL, N_PANEL) and tr.shape == (N_SPATIAL, N_GENES) and ref.shape == (N_REFERENCE, N_GENES)
    for a in (sp_, tr, ref):
        assert sp.isspmatrix_csr(a.X) and a.X.dtype == np.int32 and a.X.indices.dtype == np.int32
        assert a.X.data.min() >= 1  # stored entries are positive counts
        assert list(a.obs["state"].cat.categories) == [f"state_{s}" for s in range(8)]
    assert list(tr.var_names[:3]) == ["gene_0000", "gene_0001", "gene_0002"]
    assert list(ref.var_names) == list(tr.var_names)
    assert list(sp_.var_names) == list(paired.panel) and list(paired.panel) == sorted(paired.panel)
    assert tr.var["in_panel"].sum() == N_PANEL
    assert sp_.obsm["spatial"].shape == (N_SPATIAL, 2) and np.isfinite(sp_.obsm["spatial"]).all()
    assert list(sp_.obs_names) == list(tr.obs_names)
    emb = paired.gene_embedding
    assert emb.vectors.shape == (N_GENES, 64) and emb.vectors.dtype == np.float32
    assert list(emb.genes) == list(tr.var_names)
    assert paired.truth.loadings.shape == (N_GENES, 20) and paired.truth.program.shape == (N_GENES,)
    # realistic sparsity: ~0.85 zeros in space, ~0.9 in the reference
    zeros = {k: 1 - a.X.nnz / np.prod(a.shape) for k, a in (("s", sp_), ("t", tr), ("r", ref))}
    assert 0.8 <= zeros["s"] <= 0.9 and 0.8 <= zeros["t"] <= 0.9 and 0.88 <= zeros["r"] <= 0.92
    # every state is present in both modalities (shared states, other proportions)
    assert (np.bincount(tr.obs["state"].cat.codes, minlength=8) > 0).all()
    assert (np.bincount(ref.obs["state"].cat.codes, minlength=8) > 0).all()


def test_deterministic_for_a_seed():
    kw = dict(n_spatial=400, n_reference=300, n_genes=120, n_panel=30)
    a, b, c = paired_synthetic(**kw, seed=3), paired_synthetic(**kw, seed=3), paired_synthetic(**kw, seed=4)
    for x, y in ((a.spatial_truth, b.spatial_truth), (a.reference, b.reference)):
        assert (x.X != y.X).nnz == 0 and x.obs.equals(y.obs)
    np.testing.assert_array_equal(a.spatial.obsm["spatial"], b.spatial.obsm["spatial"])
    np.testing.assert_array_equal(a.gene_embedding.vectors, b.gene_embedding.vectors)
    np.testing.assert_array_equal(a.panel, b.panel)
    assert (a.spatial_truth.X != c.spatial_truth.X).nnz > 0
    assert (a.reference.X != c.reference.X).nnz > 0
    assert not np.array_equal(a.panel, c.panel)


def test_panel_is_the_truth_restricted(paired):
    cols = paired.spatial_truth.var_names.get_indexer(paired.panel)
    assert (cols >= 0).all()
    assert (paired.spatial.X != paired.spatial_truth.X[:, cols]).nnz == 0


def test_genes_of_one_program_correlate(paired):
    x = _lognorm(paired.spatial_truth.X)
    keep = x.std(axis=0) > 0
    corr = np.corrcoef(x[:, keep].T)
    prog = paired.truth.program[keep]
    same = prog[:, None] == prog[None, :]
    off = ~np.eye(len(prog), dtype=bool)
    within, between = corr[same & off].mean(), corr[~same].mean()
    assert within > between + 0.15, (within, between)


def test_platform_effect(paired):
    """Per-gene log ratio of reference to truth, within each state (composition differs between modalities),
    centred per state (library sizes and capture differ): its sd across genes is about platform_effect."""
    tr, ref = paired.spatial_truth, paired.reference
    norm = {}
    for key, a in (("t", tr), ("r", ref)):
        x = sp.csr_matrix(a.X, dtype=np.float64)
        norm[key] = (sp.diags(1.0 / np.asarray(x.sum(axis=1)).ravel()) @ x).tocsr()
    ratios = []
    for s in range(8):
        mt = np.asarray(norm["t"][tr.obs["state"].cat.codes.to_numpy() == s].mean(axis=0)).ravel()
        mr = np.asarray(norm["r"][ref.obs["state"].cat.codes.to_numpy() == s].mean(axis=0)).ravel()
        ok = (mt > 0) & (mr > 0)
        r = np.full(len(mt), np.nan)
        r[ok] = np.log(mr[ok] / mt[ok])
        ratios.append(r - np.nanmedian(r))
    ratios = np.array(ratios)
    # genes well measured in several states: sampling noise stays small next to the platform effect
    counts_t = np.asarray(tr.X.sum(axis=0)).ravel()
    good = (np.isfinite(ratios).sum(axis=0) >= 4) & (counts_t >= np.quantile(counts_t, 0.5))
    est = np.nanmean(ratios[:, good], axis=0)
    sd = float(np.std(est))
    assert 0.35 <= sd <= 0.7, sd
    assert np.corrcoef(est, paired.truth.platform[good])[0, 1] > 0.8


def test_states_form_spatial_domains(paired):
    xy = paired.spatial.obsm["spatial"]
    state = paired.spatial.obs["state"].cat.codes.to_numpy()
    _, nb = NearestNeighbors(n_neighbors=7).fit(xy).kneighbors(xy)
    agree = (state[nb[:, 1:]] == state[:, None]).mean()
    chance = float(np.sum((np.bincount(state) / len(state)) ** 2))
    assert agree > chance + 0.3, (agree, chance)


def test_knn_average_imputes_held_out_genes(paired):
    """A plain kNN average (joint PCA of the per-modality standardised panel, 20 reference neighbours)
    predicts the unmeasured genes well above shuffled neighbours, but not perfectly."""
    in_panel = paired.spatial_truth.var["in_panel"].to_numpy()
    s = _lognorm(paired.spatial.X)
    r = _lognorm(paired.reference.X[:, np.flatnonzero(in_panel)])

    def z(a):
        return (a - a.mean(axis=0)) / (a.std(axis=0) + 1e-9)

    pca = PCA(30, random_state=0).fit(np.vstack([z(s), z(r)]))
    _, idx = NearestNeighbors(n_neighbors=20).fit(pca.transform(z(r))).kneighbors(pca.transform(z(s)))
    ref_held = _lognorm(paired.reference.X)[:, ~in_panel]
    truth_held = _lognorm(paired.spatial_truth.X)[:, ~in_panel]
    knn = np.median(_gene_cosine(ref_held[idx].mean(axis=1), truth_held))
    shuffled = idx[np.random.default_rng(0).permutation(len(idx))]
    control = np.median(_gene_cosine(ref_held[shuffled].mean(axis=1), truth_held))
    print(f"kNN-average median gene-wise cosine {knn:.3f}, shuffled neighbours {control:.3f}")
    assert knn > control + 0.25, (knn, control)
    assert 0.5 <= knn <= 0.9, knn


def test_embedding_tracks_loading_similarity():
    def pair_corr(noise: float) -> float:
        p = paired_synthetic(50, 50, 300, 20, embedding_noise=noise, seed=1)
        lo = p.truth.loadings / np.linalg.norm(p.truth.loadings, axis=1, keepdims=True)
        v = p.gene_embedding.vectors.astype(np.float64)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        iu = np.triu_indices(len(lo), 1)
        return float(np.corrcoef((lo @ lo.T)[iu], (v @ v.T)[iu])[0, 1])

    default, noisy = pair_corr(0.5), pair_corr(3.0)
    assert default > 0.6, default
    assert 0 < noisy < default - 0.2, (noisy, default)


def test_write_paired(tmp_path):
    p = paired_synthetic(200, 150, 80, 20, seed=2)
    out = write_paired(p, tmp_path / "paired")
    assert sorted(q.name for q in (tmp_path / "paired").iterdir()) == [
        "gene_embedding.parquet", "reference.h5ad", "spatial.h5ad", "truth.h5ad"]
    for key, a in (("spatial", p.spatial), ("truth", p.spatial_truth), ("reference", p.reference)):
        back = ad.read_h5ad(out[key])
        assert (back.X != a.X).nnz == 0 and list(back.var_names) == list(a.var_names)
        assert back.obs["state"].equals(a.obs["state"])
    np.testing.assert_array_equal(ad.read_h5ad(out["spatial"]).obsm["spatial"], p.spatial.obsm["spatial"])
    frame = pd.read_parquet(out["gene_embedding"])
    assert list(frame["gene"]) == list(p.gene_embedding.genes)
    np.testing.assert_array_equal(frame.drop(columns="gene").to_numpy(), p.gene_embedding.vectors)
    write_paired(p, tmp_path / "paired")  # rewriting replaces the files, leaving no temporaries
    assert len(list((tmp_path / "paired").iterdir())) == 4


@pytest.mark.parametrize("kw, word", [(dict(n_panel=600), "n_panel"), (dict(layout="hex"), "layout"),
                                      (dict(platform_effect=-1.0), "platform_effect"), (dict(seed=-1), "seed")])
def test_bad_arguments(kw, word):
    args = dict(n_spatial=50, n_reference=50, n_genes=600, n_panel=100) | kw
    with pytest.raises(ValueError, match=word):
        paired_synthetic(**args)


def test_write_paired_npz_without_pyarrow(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "pyarrow", None)  # "import pyarrow" now raises ImportError
    p = paired_synthetic(100, 100, 60, 10, seed=5)
    out = write_paired(p, tmp_path)
    assert out["gene_embedding"].name == "gene_embedding.npz"
    with np.load(out["gene_embedding"]) as npz:
        assert list(npz["genes"]) == list(p.gene_embedding.genes)
        np.testing.assert_array_equal(npz["vectors"], p.gene_embedding.vectors)
    assert sorted(q.name for q in tmp_path.iterdir()) == [
        "gene_embedding.npz", "reference.h5ad", "spatial.h5ad", "truth.h5ad"]


def test_streamed_panel_equals_paired_synthetic():
    """paired_model + spatial_panel_chunks + paired_reference (the bench's streamed inputs) give paired_synthetic's
    panel and reference bit for bit; 2,400 genes make count blocks of 873 cells, so the chunks span several."""
    kw = dict(n_spatial=1800, n_reference=200, n_genes=2400, n_panel=100, seed=7)
    p, model = paired_synthetic(**kw), paired_model(**kw)
    chunks = list(spatial_panel_chunks(model, chunk_size=1000))
    assert [start for start, _ in chunks] == [0, 1746]  # two whole blocks, then the rest
    assert [c.shape[0] for _, c in chunks] == [1746, 54] and all(c.shape[1] == 100 for _, c in chunks)
    x = sp.vstack([c for _, c in chunks]).tocsr()
    assert all(c.dtype == np.int32 for _, c in chunks)
    assert x.shape == p.spatial.shape and (x != p.spatial.X).nnz == 0
    assert list(model.genes[model.panel_idx]) == list(p.spatial.var_names)
    assert spatial_obs(model).equals(p.spatial.obs)
    np.testing.assert_array_equal(model.coords, p.spatial.obsm["spatial"])
    ref = paired_reference(model)
    assert (ref.X != p.reference.X).nnz == 0 and ref.obs.equals(p.reference.obs) and ref.var.equals(p.reference.var)
    with pytest.raises(ValueError, match="chunk_size"):
        next(spatial_panel_chunks(model, chunk_size=0))


def test_reference_and_genes_do_not_depend_on_n_spatial():
    """The bench builds one reference for every spatial size: the gene-level model, the panel and the reference
    cells are drawn before (and apart from) the spatial cells."""
    a, b = (paired_model(n, 300, 200, 40, seed=2) for n in (100, 700))
    np.testing.assert_array_equal(a.panel_idx, b.panel_idx)
    np.testing.assert_array_equal(a.truth.loadings, b.truth.loadings)
    ra, rb = paired_reference(a), paired_reference(b)
    assert (ra.X != rb.X).nnz == 0 and ra.obs.equals(rb.obs)
    assert a.truth.scale_spatial != b.truth.scale_spatial  # the spatial side is recalibrated per size
