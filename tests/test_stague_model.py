"""STAGUE's torch core (``stdask.models.stague``) on tiny arrays: GCN propagation, learner, losses,
bootstrapping, determinism and a two-population recovery check. Reference values are independent numpy."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from stdask.models import stague as sg  # noqa: E402


def _dense_gcn(A, X, W, b):
    """Spec §5.1 in numpy: D~^-1/2 A~^T D~^-1/2 X W + b, A~ = A with diagonal 1, D~ column sums."""
    At = A.copy()
    np.fill_diagonal(At, 1.0)
    d = At.sum(axis=0)
    P = At.T / np.sqrt(d)[:, None] / np.sqrt(d)[None, :]
    return P @ X @ W + b


def _random_graph(n=12, p=0.3, seed=0, symmetric=True):
    rng = np.random.default_rng(seed)
    A = (rng.random((n, n)) < p) * rng.uniform(0.1, 1.0, (n, n))
    np.fill_diagonal(A, 0)
    if symmetric:
        A = np.triu(A) + np.triu(A).T
    return A


def _coo(A):
    r, c = np.nonzero(A)
    return torch.as_tensor(np.stack([r, c])), torch.as_tensor(A[r, c], dtype=torch.float64)


@pytest.mark.parametrize("symmetric", [True, False])
def test_gcn_propagation_matches_dense_numpy(symmetric):
    A = _random_graph(symmetric=symmetric, seed=1)
    rng = np.random.default_rng(2)
    X, W, b = rng.normal(size=(12, 5)), rng.normal(size=(5, 3)), rng.normal(size=3)
    idx, val = _coo(A)
    out = sg.gcn_propagate(torch.as_tensor(X @ W), idx, val, 12).numpy() + b
    np.testing.assert_allclose(out, _dense_gcn(A, X, W, b), rtol=1e-10, atol=1e-12)
    # a stored diagonal is replaced by 1, not added to
    A2 = A.copy()
    np.fill_diagonal(A2, 0.3)
    out2 = sg.gcn_propagate(torch.as_tensor(X @ W), *_coo(A2), 12).numpy() + b
    np.testing.assert_allclose(out2, _dense_gcn(A, X, W, b), rtol=1e-10, atol=1e-12)
    # renormalize=False propagates with A^T as given
    plain = sg.gcn_propagate(torch.as_tensor(X), idx, val, 12, renormalize=False).numpy()
    np.testing.assert_allclose(plain, A.T @ X, rtol=1e-12)


@pytest.mark.parametrize("drop", [0.0, 0.5])
def test_gcn_layer_matches_pyg_gcnconv(drop):
    pyg = pytest.importorskip("torch_geometric.nn")
    A = _random_graph(n=15, seed=3)
    idx, val = _coo(A)
    g = torch.Generator().manual_seed(0)
    idx, val = sg.dropout_edge(idx, val.float(), drop, g)
    x = torch.randn(15, 6, generator=g)
    ours = sg.gcn_layer_class()(6, 4)
    ref = pyg.GCNConv(6, 4)
    with torch.no_grad():
        ref.lin.weight.copy_(ours.weight.T)
        ref.bias.copy_(torch.randn(4, generator=g))
        ours.bias.copy_(ref.bias)
    np.testing.assert_allclose(ours(x, (idx, val, 15)).detach().numpy(),
                               ref(x, idx, val).detach().numpy(), rtol=1e-5, atol=1e-6)


def test_identity_graph_is_per_cell():
    x = torch.randn(7, 3, dtype=torch.float64)
    eye = (torch.arange(7).repeat(2, 1), torch.ones(7, dtype=torch.float64))
    np.testing.assert_allclose(sg.gcn_propagate(x, *eye, 7).numpy(), x.numpy())


def _nt_xent_numpy(p1, p2, T):
    n1 = p1 / np.linalg.norm(p1, axis=1, keepdims=True)
    n2 = p2 / np.linalg.norm(p2, axis=1, keepdims=True)
    out = 0.0
    for a, b in ((n1, n2), (n2, n1)):  # column loss of (p1, p2) = row loss of (p2, p1)
        terms = []
        for i in range(len(a)):
            e = [np.exp(a[i] @ b[j] / T) for j in range(len(b))]
            terms.append(-np.log(e[i] / (sum(e) - e[i])))
        out += np.mean(terms) / 2
    return out


def test_nt_xent_without_positive_in_denominator():
    rng = np.random.default_rng(4)
    p1, p2 = rng.normal(size=(9, 4)), rng.normal(size=(9, 4))
    got = float(sg.nt_xent(torch.as_tensor(p1), torch.as_tensor(p2), 0.3))
    assert got == pytest.approx(_nt_xent_numpy(p1, p2, 0.3), rel=1e-10)
    # batched: consecutive chunks of 3 cells, in-chunk negatives, each weighted by 3 / 9
    got_b = float(sg.nt_xent(torch.as_tensor(p1), torch.as_tensor(p2), 0.3, batch_size=3))
    want = sum(_nt_xent_numpy(p1[s:s + 3], p2[s:s + 3], 0.3) * 3 / 9 for s in (0, 3, 6))
    assert got_b == pytest.approx(want, rel=1e-10)
    assert got_b != pytest.approx(got, rel=1e-3)


def test_triplet_margin_loss():
    rng = np.random.default_rng(5)
    p1, p2, pn = (rng.normal(size=(8, 3)) for _ in range(3))
    m = 0.5
    dp = np.linalg.norm(p2 - p1 + 1e-6, axis=1)
    dn = np.linalg.norm(p2 - pn + 1e-6, axis=1)
    want = np.maximum(0, dp - dn + m).mean()
    got = float(sg.triplet_loss(*(torch.as_tensor(a) for a in (p1, p2, pn)), m))
    assert got == pytest.approx(want, rel=1e-10)
    assert 0 < want  # some terms active, some clipped
    assert (dp - dn + m < 0).any() and (dp - dn + m > 0).any()


def test_bootstrap_formula_and_support_growth():
    n = 5
    anchor = (torch.tensor([[0, 1], [1, 0]]), torch.tensor([0.5, 0.5], dtype=torch.float64))
    learned = (torch.tensor([[0, 1, 2], [1, 0, 3]]), torch.tensor([0.2, 0.2, 0.7], dtype=torch.float64))
    idx, val = sg.bootstrap(anchor, learned, 0.9, n)
    dense = np.zeros((n, n))
    dense[idx[0].numpy(), idx[1].numpy()] = val.numpy()
    want = np.zeros((n, n))
    want[0, 1] = want[1, 0] = 0.9 * 0.5 + 0.1 * 0.2
    want[2, 3] = 0.1 * 0.7
    np.testing.assert_allclose(dense, want, rtol=1e-12)
    assert idx.shape[1] == 3 > anchor[0].shape[1]


def test_spatial_prior_decays():
    d = np.array([0.1, 0.5, 1.0, 2.0])
    p = sg.spatial_prior(d, d_cut=2.0, gamma=2.0)
    np.testing.assert_allclose(p, np.exp(-2.0 * (d / 2.0) ** 2), rtol=1e-6)
    assert np.all(np.diff(p) < 0)
    assert p[-1] == pytest.approx(np.exp(-2.0))


def _two_populations(n=240, g=40, seed=0):
    rng = np.random.default_rng(seed)
    lab = np.repeat([0, 1], n // 2)
    X = rng.gamma(1.0, 1.0, (n, g)).astype(np.float32)
    X[lab == 1, : g // 4] += 1.2  # weak enough that an untrained network fails
    X = np.log1p(X).astype(np.float32)
    coords = rng.uniform(0, 10, (n, 2))
    coords[lab == 1, 0] += 14
    return X, coords, lab


SMALL = dict(exp_out=64, hidden_dim=32, rep_dim=16, proj_dim=16, epochs=20, lr=3e-3, k=8, a_k=5)


def test_learner_graph_symmetric_sparse_on_candidates():
    X, coords, _ = _two_populations()
    cfg = sg.STAGUEConfig(**SMALL)
    d_cut = sg.cutoff_distance(coords, cfg.k)
    cand, dist = sg.candidate_pairs(coords, d_cut, 1000)
    assert np.all(dist <= d_cut) and np.all(cand[0] != cand[1])
    # drop a random third of the candidates in one direction: symmetrisation must still cover them
    rng = np.random.default_rng(1)
    cand = cand[:, rng.random(cand.shape[1]) > 0.3]
    fit = sg.fit(X, coords, sg.STAGUEConfig(**{**SMALL, "epochs": 2}), candidates=cand, d_cut=d_cut)
    S, A = fit.adj_raw, fit.adj_normalized
    n = len(X)
    assert S.shape == (n, n) and S.nnz < 0.2 * n * n
    assert abs(S - S.T).max() == 0 and abs(A - A.T).max() < 1e-6
    allowed = {(i, j) for i, j in cand.T} | {(j, i) for i, j in cand.T}
    r, c = S.nonzero()
    assert set(zip(r.tolist(), c.tolist())) <= allowed
    assert S.diagonal().max() == 0
    assert (S.data >= (1 - cfg.adj_weight) * np.exp(-cfg.gamma) - 1e-6).all() and S.data.max() <= 1 + 1e-6
    deg = np.asarray(S.sum(axis=1)).ravel()
    Sd = S.toarray()
    with np.errstate(divide="ignore"):
        dinv = np.where(deg > 0, deg ** -0.5, 0)
    np.testing.assert_allclose(A.toarray(), dinv[:, None] * Sd * dinv[None, :], rtol=1e-5, atol=1e-7)


def test_symmetrize_mean():
    idx = torch.tensor([[0, 1, 2], [1, 0, 0]])
    val = torch.tensor([0.2, 0.6, 0.9], dtype=torch.float64)
    i, v = sg.symmetrize_mean(idx, val, 3)
    got = {(a, b): x for a, b, x in zip(i[0].tolist(), i[1].tolist(), v.tolist())}
    assert got == pytest.approx({(0, 1): 0.4, (1, 0): 0.4, (2, 0): 0.9, (0, 2): 0.9})


def test_column_mask_zeroes_whole_columns():
    f = torch.ones(6, 10)
    out = sg.column_mask(f, 0.6, torch.Generator().manual_seed(0))
    zero_cols = (out == 0).all(dim=0)
    assert int(zero_cols.sum()) == 6 and bool((out[:, ~zero_cols] == 1).all())


def test_deterministic_for_a_seed():
    X, coords, _ = _two_populations(n=120)
    cfg = sg.STAGUEConfig(**{**SMALL, "epochs": 3})
    torch.manual_seed(123)  # different global states: the fit must seed its own (forked) RNG
    before = torch.random.get_rng_state()
    a = sg.fit(X, coords, cfg)
    assert torch.equal(before, torch.random.get_rng_state())  # caller's RNG untouched
    torch.manual_seed(456)
    b = sg.fit(X, coords, cfg)
    np.testing.assert_array_equal(a.embedding, b.embedding)
    assert (a.adj_raw != b.adj_raw).nnz == 0
    c = sg.fit(X, coords, cfg, seed=1)
    assert not np.array_equal(a.embedding, c.embedding)


def test_two_populations_recovered():
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score

    X, coords, lab = _two_populations()
    fit = sg.fit(X, coords, sg.STAGUEConfig(**SMALL))
    assert fit.embedding.shape == (len(X), 16) and fit.embedding.dtype == np.float32
    assert np.isfinite(fit.history["loss"]).all()
    assert fit.history["anchor_nnz"][-1] > sg.anchor_edges(coords, 5)[0].shape[1]
    def score(embedding):
        return adjusted_rand_score(lab, KMeans(2, random_state=0, n_init=10).fit_predict(embedding))

    trained = score(fit.embedding)
    assert trained > 0.9
    # training is what separates them: the same network with lr = 0 scores clearly lower (0.69 here)
    untrained = sg.fit(X, coords, sg.STAGUEConfig(**{**SMALL, "lr": 0.0}))
    assert score(untrained.embedding) < trained - 0.1
