"""stImpute's training and prediction (stdask.models.stimpute: twopass, fit, predict, reliability) against
independent computations: the tiled loss gradient against the whole-batch autograd gradient, the kNN weights
against the spec's formula, the blends against their definitions, tiles against the whole slice."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

torch = pytest.importorskip("torch")

from stdask.models.stimpute.blocks import make_trans  # noqa: E402
from stdask.models.stimpute.config import StImputeConfig  # noqa: E402
from stdask.models.stimpute.fit import fit  # noqa: E402
from stdask.models.stimpute.gene_graph import gene_graph  # noqa: E402
from stdask.models.stimpute.loss import stimpute_loss  # noqa: E402
from stdask.models.stimpute.neighbours import CodeIndex  # noqa: E402
from stdask.models.stimpute.predict import Predictor, knn_weights  # noqa: E402
from stdask.models.stimpute.reliability import profile_features, train_reliability, uncentred_cosine  # noqa: E402
from stdask.models.stimpute.twopass import target_stats, tile_slices, tiled_loss_backward  # noqa: E402

SMALL = dict(k=20, hidden=16, e_epochs=25, ae_epochs=5, m_epochs=2, reliability_epochs=30, ae_latent=12)


def _grads(module) -> np.ndarray:
    return torch.cat([p.grad.flatten() for p in module.parameters()]).numpy().copy()


@pytest.mark.parametrize("tile", [1, 16, 33, 70])
def test_tiled_gradient_equals_full_batch(tile):
    gen = torch.Generator().manual_seed(3)
    n, g, k = 70, 9, 5
    x = torch.rand(n, g, k, generator=gen)
    y = torch.rand(n, g, generator=gen) * 3
    y[5] = 0  # an all-zero cell: its centred row is not zero, but the eps clamp must not break the gradient
    a = torch.rand(g, g, generator=gen)
    a = a / a.sum(1, keepdim=True)
    trans = make_trans(k, 8, seed=1)
    trans.zero_grad()
    full = stimpute_loss(trans(x, a), y)
    full.backward()
    want = _grads(trans)
    trans.zero_grad()
    value = tiled_loss_backward(lambda r: trans(x[r], a), lambda r: y[r], tile_slices(n, tile),
                                target_stats(y.numpy()), g)
    np.testing.assert_allclose(value, float(full.detach()), rtol=1e-6)
    np.testing.assert_allclose(_grads(trans), want, rtol=2e-4, atol=2e-6)


def test_tile_slices_cover_once():
    s = tile_slices(10, 4)
    assert [(t.start, t.stop) for t in s] == [(0, 4), (4, 8), (8, 10)]


def test_knn_weights_formula_and_edge_cases():
    d = np.array([[0.1, 0.2, 0.3, 1.2],      # 3 kept
                  [0.5, 1.0, 1.1, 1.3],      # n' = 1 -> weight 1 (the reference divides by zero)
                  [1.0, 1.0, 1.5, 1.7]])     # n' = 0 -> zeros
    w, kept = knn_weights(d)
    assert kept.tolist() == [3, 1, 0]
    tot = 0.6
    np.testing.assert_allclose(w[0], [(1 - 0.1 / (tot + 1e-12)) / 2, (1 - 0.2 / (tot + 1e-12)) / 2,
                                      (1 - 0.3 / (tot + 1e-12)) / 2, 0.0])
    np.testing.assert_allclose(w[0].sum(), 1.0)
    assert w[1].tolist() == [1.0, 0.0, 0.0, 0.0]
    assert w[2].tolist() == [0.0] * 4


def test_uncentred_cosine_and_fixed_width_features():
    rng = np.random.default_rng(0)
    a, b = rng.random((50, 4)), rng.random((50, 4))
    a[:, 3] = 0
    want = [a[:, j] @ b[:, j] / np.linalg.norm(a[:, j]) / np.linalg.norm(b[:, j]) for j in range(3)] + [0.0]
    np.testing.assert_allclose(uncentred_cosine(a, b), want)
    # the quantile features have the same width whatever the number of cells; the reference's are N wide
    assert profile_features(a).shape == profile_features(rng.random((500, 4))).shape == (4, 67)
    assert profile_features(a, "profile").shape == (4, 50)
    with pytest.raises(ValueError, match="features"):
        profile_features(a, "median")


def test_reliability_learns_the_cosine():
    """Genes whose predicted profile is a noisy copy of the truth, at noise levels that set their cosine: the
    scores of unseen genes rank them as their true cosines do."""
    rng = np.random.default_rng(1)
    n, g = 300, 80
    truth = rng.gamma(0.6, 1.0, size=(n, g)) * (rng.random((n, g)) < 0.5)
    noise = np.linspace(0.0, 3.0, g)[rng.permutation(g)]
    pred = np.abs(truth + noise * rng.gamma(0.6, 1.0, size=(n, g)))
    train, test = np.arange(0, g, 2), np.arange(1, g, 2)
    cfg = StImputeConfig(hidden=16, reliability_epochs=150)
    rel = train_reliability(pred[:, train], truth[:, train], cfg)
    assert rel.losses[-1] < rel.losses[0]
    score = rel.score(pred[:, test])
    rho = np.corrcoef(np.argsort(np.argsort(score)), np.argsort(np.argsort(uncentred_cosine(pred[:, test],
                                                                                            truth[:, test]))))[0, 1]
    assert rho > 0.5


@pytest.fixture(scope="module")
def trained():
    rng = np.random.default_rng(0)
    m, n, g_train, g_all = 120, 90, 10, 16
    state_ref = rng.integers(0, 4, m)
    means = rng.gamma(1.0, 1.0, size=(4, g_all))
    ref = np.log1p(rng.poisson(means[state_ref] * 3)).astype(np.float32)
    state_sp = rng.integers(0, 4, n)
    spatial = np.log1p(rng.poisson(means[state_sp, :g_train] * 2)).astype(np.float32)
    cfg = StImputeConfig(**SMALL)
    graph_train = gene_graph([f"g{i}" for i in range(g_train)], ref[:, :g_train], k=3).matrix
    graph_all = gene_graph([f"g{i}" for i in range(g_all)], ref, k=3).matrix
    model = fit(spatial, sp.csr_matrix(ref[:, :g_train]), graph_train, cfg, tile_cells=32)
    return model, spatial, ref, graph_all, cfg, g_train, g_all


def test_fit_is_deterministic(trained):
    model, spatial, ref, graph_all, cfg, g_train, g_all = trained
    graph_train = gene_graph([f"g{i}" for i in range(g_train)], ref[:, :g_train], k=3).matrix
    again = fit(spatial, ref[:, :g_train], graph_train, cfg, tile_cells=32)
    for a, b in zip(model.trans.state_dict().values(), again.trans.state_dict().values()):
        assert torch.equal(a, b)
    assert model.history["rounds"][0]["e_losses"] == again.history["rounds"][0]["e_losses"]
    np.testing.assert_array_equal(model.neighbours_gnn, again.neighbours_gnn)
    assert len(model.history["rounds"]) == cfg.em_rounds
    assert all(len(r["e_losses"]) == cfg.e_epochs and len(r["m_losses"]) == cfg.m_epochs
               for r in model.history["rounds"])


def test_prediction_by_tiles_equals_whole(trained):
    model, spatial, ref, graph_all, cfg, g_train, g_all = trained
    p = Predictor(model, sp.csr_matrix(ref), graph_all, np.arange(g_train), np.arange(g_train, g_all),
                  spatial.shape[0], tile_cells=25)
    whole = p.parts(spatial)
    pieces = [p.parts(spatial[a:b]) for a, b in ((0, 7), (7, 50), (50, 90))]
    for name in ("knn", "mean", "n_kept"):
        np.testing.assert_array_equal(np.concatenate([getattr(q, name) for q in pieces]), getattr(whole, name))
    # the GNN's matrix products may take other BLAS kernels for other row counts: float32 rounding only
    np.testing.assert_allclose(np.concatenate([q.gnn for q in pieces]), whole.gnn, rtol=1e-5, atol=1e-6)


def test_blends_follow_their_definitions(trained):
    model, spatial, ref, graph_all, cfg, g_train, g_all = trained
    p = Predictor(model, ref, graph_all, np.arange(g_train), np.arange(g_train, g_all), spatial.shape[0])
    parts = p.parts(spatial)
    a = np.float32(cfg.alpha)
    np.testing.assert_allclose(p.blend(parts), a * parts.gnn + (1 - a) * parts.mean, rtol=1e-6)
    gmax, kmax = p.maxima([spatial[:40], spatial[40:]])
    np.testing.assert_array_equal(gmax, parts.gnn.max(0))
    p.model.config.blend = "code"
    try:
        np.testing.assert_allclose(p.blend(parts, (gmax, kmax)), a * parts.gnn + (1 - a) * parts.knn * (gmax / kmax),
                                   rtol=1e-5)
        with pytest.raises(ValueError, match="maxima"):
            p.blend(parts)
        p.model.config.blend = "global"
        np.testing.assert_allclose(p.blend(parts, (gmax, kmax)),
                                   a * parts.gnn + (1 - a) * parts.knn * (gmax.max() / kmax.max()), rtol=1e-5)
    finally:
        p.model.config.blend = "paper"
    # the plain mean is the mean of the final AE's K neighbours, found independently here
    idx, _ = CodeIndex(model.reference_codes, cfg.k, spatial.shape[0]).query(
        model.ae.encoder(torch.as_tensor(spatial)).detach().numpy())
    np.testing.assert_allclose(parts.mean, ref[idx][:, :, g_train:].mean(1), rtol=1e-5)


def test_gnn_prediction_of_training_genes_beats_a_constant(trained):
    """After training, P_gnn of the training genes tracks the measured values better than their mean does."""
    model, spatial, ref, graph_all, cfg, g_train, g_all = trained
    p = Predictor(model, ref, graph_all, np.arange(g_train), np.arange(g_train), spatial.shape[0])
    pred = p.gnn(spatial, model.neighbours_gnn)
    assert np.mean((pred - spatial) ** 2) < np.mean((spatial - spatial.mean(0)) ** 2)
