"""stImpute's network components on arrays (spec ``stimpute.md`` §2, §3, §5, §6 and the default-parameter table):
the size rule, the autoencoder's pre-training, neighbour retrieval and gather, the GraphSAGE-style block, Trans and
the loss, each against an independent numpy computation or an explicit loop."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

torch = pytest.importorskip("torch")

from stdask.models.stimpute import (SIZE_RULE_CELLS, SIZE_RULE_GENES, StImputeConfig, ae_optimizer,  # noqa: E402
                                    ae_step, cosine_neighbours, encode, exact_cosine_neighbours, gather,
                                    graph_tensor, gs_block, gs_block_class, make_autoencoder, make_trans,
                                    stimpute_loss, train_autoencoder)


@pytest.fixture(autouse=True)
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


# ------------------------------------------------------------------------------------------------------------
# config
# ------------------------------------------------------------------------------------------------------------
SMALL = {"k": 50, "e_epochs": 10, "hidden": 256, "alpha": 0.7, "reliability_epochs": 100}
LARGE = {"k": 20, "e_epochs": 50, "hidden": 32, "alpha": 0.5, "reliability_epochs": 200}


@pytest.mark.parametrize("n, g, branch", [(9_999, 499, "small"), (10_000, 499, "large"), (9_999, 500, "large"),
                                          (10_000, 500, "large"), (1, 1, "small")])
def test_size_rule_on_the_boundary(n, g, branch):
    assert (SIZE_RULE_CELLS, SIZE_RULE_GENES) == (10_000, 500)
    c = StImputeConfig.for_size(n, g)
    want = SMALL if branch == "small" else LARGE
    assert {key: getattr(c, key) for key in want} == want
    assert c.size_rule["branch"] == branch and (c.size_rule["n_spatial"], c.size_rule["n_train_genes"]) == (n, g)
    # the settings the rule does not switch (spec table)
    fixed = dict(ae_latent=100, ae_epochs=30, ae_batch_size=512, ae_lr=1e-2, ae_weight_decay=1e-4, gnn_layers=2,
                 em_rounds=2, m_epochs=10, lr=1e-2, weight_decay=1e-2, seed=42, weighting="similarity_topk",
                 topk=10, blend="paper")
    assert {key: getattr(c, key) for key in fixed} == fixed


def test_size_rule_overrides_are_recorded_and_validated():
    c = StImputeConfig.for_size(20_000, 100, k=7)
    assert c.k == 7 and c.hidden == 32 and c.size_rule["overridden"] == ["k"]
    assert c.replace(blend="code").size_rule["overridden"] == ["blend", "k"]
    assert StImputeConfig().size_rule is None
    with pytest.raises(ValueError, match="no setting"):
        StImputeConfig.for_size(10, 10, kk=3)
    for bad, field in [({"alpha": 1.5}, "alpha"), ({"k": 0}, "k"), ({"blend": "mean"}, "blend"),
                       ({"weighting": "cosine"}, "weighting"), ({"lr": -1.0}, "lr"), ({"seed": -1}, "seed"),
                       ({"ae_batch_size": 2.0}, "ae_batch_size")]:
        with pytest.raises(ValueError, match=f"StImputeConfig.{field} "):
            StImputeConfig(**bad).validate()


# ------------------------------------------------------------------------------------------------------------
# autoencoder
# ------------------------------------------------------------------------------------------------------------
def _ae_data(n=40, m=300, g=6, seed=0):
    rng = np.random.default_rng(seed)
    return rng.gamma(2.0, 1.0, (n, g)).astype(np.float32), rng.gamma(2.0, 1.0, (m, g)).astype(np.float32)


TINY = StImputeConfig(ae_latent=4, ae_epochs=6, ae_batch_size=32)


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_autoencoder_deterministic_and_learns():
    x, ref = _ae_data()
    a = train_autoencoder(x, ref, TINY, seed=3, threads=1)
    b = train_autoencoder(x, sp.csr_matrix(ref), TINY, seed=3, threads=1)
    c = train_autoencoder(x, ref, TINY, seed=4, threads=1)
    assert a.losses == b.losses
    assert all(torch.equal(v, _state(b.model)[k]) for k, v in _state(a.model).items())
    assert a.losses != c.losses
    assert a.losses[-1] < 0.8 * a.losses[0], a.losses
    assert a.n_steps + a.n_skipped == TINY.ae_epochs * int(np.ceil(340 / 32))
    z = encode(a.model, x, batch_size=7)
    w, bias = a.model.encoder[0].weight.detach().numpy(), a.model.encoder[0].bias.detach().numpy()
    np.testing.assert_allclose(z, np.maximum(x @ w.T + bias, 0), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(encode(a.model, sp.csr_matrix(x), batch_size=7), z)


def test_autoencoder_loss_is_over_spatial_rows_only():
    """The reference rows' values never change training; the loss of a one-batch epoch is the MSE of the
    untrained AE over the spatial rows alone (computed here in numpy)."""
    x, ref = _ae_data()
    a = train_autoencoder(x, ref, TINY, seed=3, threads=1)
    b = train_autoencoder(x, ref * 5 + 1, TINY, seed=3, threads=1)
    assert a.losses == b.losses
    assert all(torch.equal(v, _state(b.model)[k]) for k, v in _state(a.model).items())
    one = StImputeConfig(ae_latent=4, ae_epochs=1, ae_batch_size=340)
    got = train_autoencoder(x, ref, one, seed=5, threads=1).losses[0]
    ae = make_autoencoder(x.shape[1], 4, seed=5)
    (w1, b1), (w2, b2) = [(layer[0].weight.detach().numpy().astype(np.float64),
                           layer[0].bias.detach().numpy().astype(np.float64)) for layer in (ae.encoder, ae.decoder)]
    recon = np.maximum(np.maximum(x @ w1.T + b1, 0) @ w2.T + b2, 0)
    assert got == pytest.approx(np.mean((recon - x) ** 2), rel=1e-5)


def test_batch_without_spatial_rows_changes_nothing():
    x, _ = _ae_data()
    ae = make_autoencoder(6, 4, seed=1)
    opt = ae_optimizer(ae, TINY)
    assert ae_step(ae, opt, torch.as_tensor(x[:8])) is not None  # Adam now has moments
    before, moments = _state(ae), {k: v.clone() for s in opt.state.values() for k, v in s.items()}
    assert ae_step(ae, opt, torch.as_tensor(x[:0])) is None
    assert all(torch.equal(v, _state(ae)[k]) for k, v in before.items())
    assert all(torch.equal(v, {k: v for s in opt.state.values() for k, v in s.items()}[k])
               for k, v in moments.items())
    ae_step(ae, opt, torch.as_tensor(x[8:16]))  # a real step moves the weights (the check above can fail)
    assert not all(torch.equal(v, _state(ae)[k]) for k, v in before.items())


def test_training_skips_exactly_the_batches_without_spatial_rows():
    x, ref = _ae_data(n=3, m=200)
    cfg = StImputeConfig(ae_latent=4, ae_epochs=4, ae_batch_size=16)
    out = train_autoencoder(x, ref, cfg, seed=9, threads=1)
    gen = torch.Generator()
    gen.manual_seed(9)
    empty = 0
    for _ in range(cfg.ae_epochs):
        perm = torch.randperm(203, generator=gen).numpy()
        empty += sum(not np.any(perm[s:s + 16] < 3) for s in range(0, 203, 16))
    assert empty > 0 and out.n_skipped == empty and out.n_steps == cfg.ae_epochs * 13 - empty
    assert np.all(np.isfinite(out.losses))


def test_autoencoder_input_errors():
    x, ref = _ae_data()
    with pytest.raises(ValueError, match="reference has 5"):
        train_autoencoder(x, ref[:, :5], TINY)
    bad = ref.copy()
    bad[3, 2] = np.nan
    with pytest.raises(ValueError, match="reference holds NaN"):
        train_autoencoder(x, bad, TINY)


# ------------------------------------------------------------------------------------------------------------
# neighbours and gather
# ------------------------------------------------------------------------------------------------------------
def _brute(q, r, k):
    """Cosine distance as scikit-learn (a zero row is at distance 1), stable argsort: ties by index."""
    qn, rn = np.linalg.norm(q, axis=1), np.linalg.norm(r, axis=1)
    cos = (q @ r.T) / np.where(qn > 0, qn, 1)[:, None] / np.where(rn > 0, rn, 1)[None, :]
    d = 1 - cos
    order = np.argsort(d, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(d, order, axis=1)


def _nice_codes(n, rng):
    """Vectors with entries in {-1, 0, 1}, one or four non-zeros (norm 1 or 2), so every cosine is exact and
    ties are exact; row 0 is zero."""
    out = np.zeros((n, 4))
    for i in range(1, n):
        if rng.random() < 0.5:
            out[i, rng.integers(4)] = rng.choice([-1, 1])
        else:
            out[i] = rng.choice([-1, 1], 4)
    return out


def test_exact_neighbours_equal_brute_force_with_ties_by_index():
    rng = np.random.default_rng(0)
    q, r = _nice_codes(30, rng), _nice_codes(60, rng)
    idx, dist = exact_cosine_neighbours(q, r, 12, block_rows=7)
    want_idx, want_d = _brute(q, r, 12)
    np.testing.assert_array_equal(idx, want_idx)
    np.testing.assert_array_equal(dist, want_d.astype(np.float32))
    assert idx.dtype == np.int64 and dist.dtype == np.float32
    assert np.all(dist[0] == 1) and list(idx[0]) == list(range(12))  # a zero code: all at 1, lowest indices
    # continuous codes, K = M, through the public entry point
    q, r = rng.normal(size=(9, 5)), rng.normal(size=(11, 5))
    idx, dist, method = cosine_neighbours(q, r, 11)
    want_idx, want_d = _brute(q, r, 11)
    assert method == "exact"
    np.testing.assert_array_equal(idx, want_idx)
    np.testing.assert_allclose(dist, want_d, atol=1e-6)
    with pytest.raises(ValueError, match="k = 12 neighbours requested from 11"):
        cosine_neighbours(q, r, 12)


@pytest.mark.slow
def test_pynndescent_neighbours_recover_exact_ones(monkeypatch):
    """Cost: pynndescent's kernels compile on first use in a process (~20 s); the search itself is instant."""
    pytest.importorskip("pynndescent")
    import importlib

    monkeypatch.setattr(importlib.import_module("stdask.models.stimpute.neighbours"), "QUERY_ROWS", 128)
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(6, 16))
    r = np.repeat(centres, 100, axis=0) + 0.4 * rng.normal(size=(600, 16))
    q = np.repeat(centres, 50, axis=0) + 0.4 * rng.normal(size=(300, 16))
    idx, dist, method = cosine_neighbours(q, r, 10, method="pynndescent", seed=0)
    exact, _ = exact_cosine_neighbours(q, r, 10)
    assert method == "pynndescent" and idx.shape == (300, 10) and idx.dtype == np.int64
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(idx, exact)])
    assert recall >= 0.9, recall
    d_true = 1 - np.einsum("nd,nkd->nk", q / np.linalg.norm(q, axis=1)[:, None],
                           (r / np.linalg.norm(r, axis=1)[:, None])[idx])
    np.testing.assert_allclose(dist, d_true, atol=1e-6)
    assert np.all(np.diff(dist, axis=1) >= 0)
    auto = cosine_neighbours(q, r, 10, exact_max_pairs=300 * 600 - 1, seed=0)
    assert auto[2] == "pynndescent" and np.array_equal(auto[0], idx)
    # one index queried tile by tile (as tl.impute predicts) gives what one query of all cells gives
    from stdask.models.stimpute.neighbours import CodeIndex

    index = CodeIndex(r, 10, 300, method="pynndescent", seed=0)
    whole = index.query(q)
    pieces = [index.query(q[s:s + 70]) for s in range(0, 300, 70)]
    np.testing.assert_array_equal(np.concatenate([p[0] for p in pieces]), whole[0])
    np.testing.assert_array_equal(np.concatenate([p[1] for p in pieces]), whole[1])
    np.testing.assert_array_equal(whole[0], idx)


def test_gather_equals_loops():
    rng = np.random.default_rng(2)
    ref = sp.random(20, 9, density=0.4, random_state=3, format="csr", dtype=np.float64)
    idx = rng.integers(0, 20, (7, 4))
    genes = np.array([8, 0, 3, 3, 5])
    dense = ref.toarray()
    want = np.array([[[dense[idx[i, k], g] for g in genes] for k in range(4)] for i in range(7)], dtype=np.float32)
    for source in (ref, dense):
        got = gather(source, idx, genes, block_cells=3)
        assert got.dtype == np.float32 and got.shape == (7, 4, 5)
        np.testing.assert_array_equal(got, want)
    mask = np.zeros(9, bool)
    mask[[1, 4]] = True
    np.testing.assert_array_equal(gather(ref, idx, mask), dense[idx][:, :, [1, 4]].astype(np.float32))
    np.testing.assert_array_equal(gather(dense, idx), dense[idx].astype(np.float32))
    with pytest.raises(ValueError, match="outside the reference"):
        gather(ref, idx + 20)


# ------------------------------------------------------------------------------------------------------------
# GraphSAGE-style block, Trans, loss
# ------------------------------------------------------------------------------------------------------------
def _numpy_gs(h, a, w):
    m = np.einsum("gj,cjk->cgk", a, h)
    z = np.maximum(np.concatenate([h, m], axis=-1) @ w, 0)
    return z / np.maximum(np.linalg.norm(z, axis=-1, keepdims=True), 1e-12)


def test_gs_block_equals_numpy_dense_and_csr():
    rng = np.random.default_rng(4)
    c, g, k = 3, 6, 5
    h = rng.normal(size=(c, g, k))
    a = (sp.random(g, g, density=0.5, random_state=5) - sp.eye(g) * 0.3).tolil()  # a negative self term
    a[0] = 0  # gene 0 aggregates nothing ...
    a = a.tocsr()
    h[1, 0] = 0  # ... and has a zero feature in cell 1: its ReLU output is zero, normalised to zero (eps)
    w = rng.normal(size=(2 * k, k))
    want = _numpy_gs(h, a.toarray(), w)
    assert np.all(want[1, 0] == 0)
    ht = torch.tensor(h, dtype=torch.float64, requires_grad=True)
    wt = torch.tensor(w, dtype=torch.float64, requires_grad=True)
    grads = []
    for graph in (graph_tensor(a.toarray(), dtype=torch.float64), graph_tensor(a, dtype=torch.float64)):
        out = gs_block(ht, graph, wt)
        np.testing.assert_allclose(out.detach().numpy(), want, rtol=1e-12, atol=1e-12)
        out.pow(2).sum().backward()
        grads.append((ht.grad.clone(), wt.grad.clone()))
        ht.grad, wt.grad = None, None
    np.testing.assert_allclose(grads[0][0].numpy(), grads[1][0].numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(grads[0][1].numpy(), grads[1][1].numpy(), rtol=1e-10, atol=1e-12)
    # the module: W (2K, K), Kaiming-uniform bound sqrt(6 / fan_in) with fan_in = K
    block = gs_block_class()(50)
    wb = block.weight.detach().numpy()
    assert wb.shape == (100, 50) and np.abs(wb).max() <= np.sqrt(6 / 50) and np.abs(wb).max() > 0.9 * np.sqrt(6 / 50)
    with pytest.raises(ValueError, match="graph covers 6 genes but the features hold 4"):
        gs_block(ht[:, :4], graph_tensor(a), wt)


def test_trans_shape_composition_and_cell_independence():
    rng = np.random.default_rng(6)
    x = torch.tensor(rng.random((8, 7, 5)), dtype=torch.float32)
    a = graph_tensor(sp.random(7, 7, density=0.4, random_state=1, format="csr"))
    net, same = make_trans(5, 3, 2, seed=1), make_trans(5, 3, 2, seed=1)
    out = net(x, a)
    assert out.shape == (8, 7) and out.dtype == torch.float32
    assert torch.equal(out, same(x, a)) and not torch.equal(out, make_trans(5, 3, 2, seed=2)(x, a))
    assert [tuple(p.shape) for p in net.parameters()] == [(10, 5), (10, 5), (6, 5), (6,), (3, 6), (3,), (1, 3), (1,)]
    h = x
    for block in net.blocks:
        h = gs_block(h, a, block.weight)
    lin = [m for m in net.mlp if isinstance(m, torch.nn.Linear)]
    manual = lin[2](torch.relu(lin[1](torch.relu(lin[0](h))))).squeeze(-1)
    torch.testing.assert_close(out, manual, rtol=0, atol=0)
    torch.testing.assert_close(net(x[2:5], a), out[2:5], rtol=1e-6, atol=1e-6)  # a tile of cells alone


def _numpy_loss(p, y, eps=1e-8):
    pc, yc = p - p.mean(), y - y.mean()

    def cos(a, b, axis):
        na = np.maximum(np.linalg.norm(a, axis=axis), eps)
        nb = np.maximum(np.linalg.norm(b, axis=axis), eps)
        return np.sum(a * b, axis=axis) / (na * nb)

    return 2 * ((1 - cos(pc, yc, 1).mean()) + (1 - cos(pc, yc, 0).mean())) + np.mean((p - y) ** 2)


def test_loss_equals_numpy_including_eps():
    rng = np.random.default_rng(7)
    p, y = rng.normal(size=(9, 6)), rng.normal(size=(9, 6)) + 1
    got = stimpute_loss(torch.tensor(p), torch.tensor(y))
    assert float(got) == pytest.approx(_numpy_loss(p, y), rel=1e-12)
    # integers with exactly representable means: a prediction row and a target column equal to the global mean,
    # so the centred vectors are exactly zero (cosine 0 by eps, NaN without it)
    p, y = rng.integers(-3, 4, (8, 4)).astype(float), rng.integers(-3, 4, (8, 4)).astype(float)
    p[0], y[:, 0] = 1.0, 2.0
    p[-1, -1] += 8 * 4 * 1.0 - p.sum()
    y[-1, -1] += 8 * 4 * 2.0 - y.sum()
    assert p.mean() == 1.0 and y.mean() == 2.0
    got = float(stimpute_loss(torch.tensor(p), torch.tensor(y)))
    assert np.isfinite(got) and got == pytest.approx(_numpy_loss(p, y), rel=1e-12)
    # a tiny centred row (norm below eps): eps clamps each norm separately, as torch's cosine_similarity
    p = rng.normal(size=(5, 3))
    p -= p.mean()
    p[0] = [1e-10, -1e-10, 0.0]
    p[1] -= p.sum() / 3  # restore a zero global mean exactly enough
    y = rng.normal(size=(5, 3))
    assert float(stimpute_loss(torch.tensor(p), torch.tensor(y))) == pytest.approx(_numpy_loss(p, y), rel=1e-9)
