"""``learned_graph_cci``: cell-type interaction counts of a learned graph against hand counts, its threshold and
quantile, p-values against an independent pure-Python replay of run_cci's permutation streams, determinism, the
CCI plots, ``copy=True`` and the errors on bad input."""
from __future__ import annotations

import anndata as ad
import matplotlib
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import stdask
from stdask import pl
from stdask.backend.cpu.interactions import STREAM_TAG
from stdask.io.memory import AnnDataSource
from stdask.random_streams import name_key
from stdask.tl import cci
from stdask.tl.cci.interaction_result import CCIInteractions, mark_stale
from stdask.tl.cci.learned import LR_NAME

matplotlib.use("Agg")
RUN = dict(progress=False, scheduler="sync")
N = 40
TYPES = ["B", "T", "mac"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A 40-cell store; obs names are not in row order, so the canonical (obs-name) order matters."""
    rng = np.random.default_rng(3)
    names = [f"cell{i:02d}" for i in rng.permutation(N)]
    obs = pd.DataFrame({"ct": pd.Categorical(rng.choice(TYPES, N))}, index=pd.Index(names))
    a = ad.AnnData(X=sp.csr_matrix(rng.poisson(1.0, (N, 5)).astype(np.float32)), obs=obs,
                   var=pd.DataFrame(index=pd.Index([f"g{j}" for j in range(5)])))
    a.obsm["spatial"] = rng.uniform(0, 1000, (N, 2))
    return stdask.ingest(AnnDataSource(a, spot_diameter=55.0), tmp_path_factory.mktemp("lcci") / "s.zarr",
                         progress=False)


def random_graph(seed: int, density: float = 0.25) -> sp.csr_matrix:
    """Symmetric sparse S in [0, 1] with a stored diagonal (which must be ignored)."""
    rng = np.random.default_rng(seed)
    upper = sp.triu(sp.random(N, N, density=density, random_state=rng, data_rvs=lambda n: rng.uniform(0.01, 1, n)), k=1)
    return sp.csr_matrix(upper + upper.T + sp.identity(N))


def dataset(store, S=None, key="stague_adj_raw"):
    ds = stdask.read(store)
    if S is not None:
        ds.set_result("obsp", key, S)
    return ds


def codes_of(ds) -> np.ndarray:
    return np.searchsorted(TYPES, ds.obs["ct"].astype(str).to_numpy())


def hand_count(S: sp.csr_matrix, codes: np.ndarray, thr: float) -> np.ndarray:
    """M by looping over every (i, j) of the dense matrix."""
    D = S.toarray()
    M = np.zeros((len(TYPES), len(TYPES)), np.int64)
    for i in range(N):
        for j in range(N):
            if i != j and D[i, j] != 0 and D[i, j] > thr:
                M[codes[i], codes[j]] += 1
    return M


# ---------------------------------------------------------------------------------------------------------
# an independent replay of the permutation streams (numpy's Philox, Python integers)
# ---------------------------------------------------------------------------------------------------------
def uint32_draws(seed: int, k: int):
    """32-bit draws of permutation k: numpy Philox keyed (seed, name_key(LR_NAME)), counter (0, 0, k, tag),
    each 64-bit output giving its low half first."""
    bg = np.random.Philox(key=np.array([seed, name_key("learned_graph")], dtype=np.uint64),
                          counter=np.array([0, 0, k, STREAM_TAG], dtype=np.uint64))
    while True:
        for r in bg.random_raw(64).tolist():
            yield r & 0xFFFFFFFF
            yield r >> 32


def ordered_sample(K: int, n: int, draws) -> list[int]:
    """Partial Fisher-Yates over range(n), step i swapping i with i + r, r uniform on [0, n - i) (Lemire)."""
    pos = list(range(n))
    for i in range(K):
        m = n - i
        prod = next(draws) * m
        if prod & 0xFFFFFFFF < m:
            t = (2**32 - m) % m
            while prod & 0xFFFFFFFF < t:
                prod = next(draws) * m
        j = i + (prod >> 32)
        pos[i], pos[j] = pos[j], pos[i]
    return pos[:K]


def brute_force_pvalues(ds, S, thr, n_perms, seed) -> np.ndarray:
    """p[a, b] = #{k : M^k >= M} / n_perms with permutation k replayed in Python: cells in obs-name order,
    the kept edges' endpoints (ascending canonical rank) get the labels of an ordered sample of cells."""
    canon = np.argsort(np.asarray(ds.obs_names).astype(str), kind="stable")
    rank = np.empty(N, np.int64)
    rank[canon] = np.arange(N)
    codes_canon = codes_of(ds)[canon]
    coo = sp.coo_matrix(S)
    keep = (coo.row != coo.col) & (coo.data != 0) & (coo.data > thr)
    ru, rv = rank[coo.row[keep]], rank[coo.col[keep]]
    endpoints = np.unique(np.concatenate([ru, rv]))
    M = np.zeros((3, 3), np.int64)
    np.add.at(M, (codes_canon[ru], codes_canon[rv]), 1)
    ge = np.zeros((3, 3), np.int64)
    for k in range(n_perms):
        sample = ordered_sample(len(endpoints), N, uint32_draws(seed, k))
        lab = dict(zip(endpoints.tolist(), codes_canon[sample].tolist()))
        Mk = np.zeros((3, 3), np.int64)
        np.add.at(Mk, ([lab[u] for u in ru.tolist()], [lab[v] for v in rv.tolist()]), 1)
        ge += Mk >= M
    return np.where(M > 0, ge / n_perms, 1.0)


# ---------------------------------------------------------------------------------------------------------
# counts, threshold, p-values
# ---------------------------------------------------------------------------------------------------------
def test_counts_match_hand_count_and_user_threshold(store):
    S = random_graph(0)
    ds = dataset(store, S)
    res = cci.learned_graph_cci(ds, "ct", threshold=0.5, n_perms=5, **RUN)
    assert list(res.types) == TYPES and list(res.lrs) == [LR_NAME]
    expected = hand_count(S, codes_of(ds), 0.5)
    np.testing.assert_array_equal(res.raw[0], expected)
    assert res.params["threshold"] == 0.5 and res.params["threshold_from"] == "user"
    assert res.params["n_edges"] == expected.sum()
    # symmetric S: every kept pair counts both ways, so M is symmetric
    np.testing.assert_array_equal(expected, expected.T)


def test_quantile_threshold_is_the_quantile_of_offdiagonal_values(store):
    S = random_graph(1)
    ds = dataset(store, S)
    res = cci.learned_graph_cci(ds, "ct", quantile=0.8, n_perms=5, **RUN)
    off = sp.triu(S, k=1).data  # the diagonal (all 1, above every off-diagonal value) must not shift it
    thr = np.quantile(np.concatenate([off, off]), 0.8)
    assert res.params["threshold"] == pytest.approx(thr) and res.params["threshold_from"] == "quantile"
    np.testing.assert_array_equal(res.raw[0], hand_count(S, codes_of(ds), thr))
    same = cci.learned_graph_cci(ds, "ct", threshold=thr, n_perms=5, **RUN)
    np.testing.assert_array_equal(same.raw, res.raw)
    assert res.params["n_edges"] == int((np.concatenate([off, off]) > thr).sum())


def test_pvalues_equal_an_independent_replay_of_the_streams(store):
    S = random_graph(2)
    ds = dataset(store, S)
    res = cci.learned_graph_cci(ds, "ct", threshold=0.4, n_perms=60, seed=11, p_cutoff=0.1, **RUN)
    expected = brute_force_pvalues(ds, S, 0.4, 60, 11)
    np.testing.assert_array_equal(res.pvals[0], expected)
    np.testing.assert_array_equal(res.sig[0], np.where(expected > 0.1, 0, res.raw[0]))
    assert res.params["n_cci_sig"] == int((expected < 0.1).sum())


def test_planted_type_pair_is_significant(store):
    ds = dataset(store)
    codes = codes_of(ds)
    b, t = np.flatnonzero(codes == 0), np.flatnonzero(codes == 1)
    rng = np.random.default_rng(5)
    S = random_graph(4, density=0.05) * 0.3  # weak background edges, all below the threshold
    rows, cols = (x.ravel() for x in np.meshgrid(b, t, indexing="ij"))
    planted = sp.coo_matrix((np.full(len(rows), 0.9), (rows, cols)), shape=(N, N))
    S = sp.csr_matrix(S + planted + planted.T)
    ds.set_result("obsp", "stague_adj_raw", S)
    res = cci.learned_graph_cci(ds, "ct", threshold=0.5, n_perms=200, seed=rng.integers(1000), **RUN)
    p = res.pvals[0]
    assert p[0, 1] == 0 and p[1, 0] == 0  # B <-> T: every kept edge, never reached by a permutation
    assert res.sig[0, 0, 1] == len(b) * len(t)
    assert (p[2] == 1).all() and (p[:, 2] == 1).all()  # no edge touches mac


def test_seed_determinism(store):
    ds = dataset(store, random_graph(6))
    a = cci.learned_graph_cci(ds, "ct", threshold=0.3, n_perms=50, seed=1, copy=True, **RUN)
    b = cci.learned_graph_cci(ds, "ct", threshold=0.3, n_perms=50, seed=1, copy=True, **RUN)
    c = cci.learned_graph_cci(ds, "ct", threshold=0.3, n_perms=50, seed=2, copy=True, **RUN)
    np.testing.assert_array_equal(a.pvals, b.pvals)
    np.testing.assert_array_equal(a.raw, c.raw)
    assert not np.array_equal(a.pvals, c.pvals)


# ---------------------------------------------------------------------------------------------------------
# storage, plots, copy
# ---------------------------------------------------------------------------------------------------------
def test_stored_keys_plots_and_copy(store):
    S = random_graph(7)
    ds = dataset(store, S)
    before = set(ds.pending)
    res = cci.learned_graph_cci(ds, "ct", threshold=0.3, n_perms=20, copy=True, **RUN)
    assert set(ds.pending) == before  # copy=True left ds untouched
    res = cci.learned_graph_cci(ds, "ct", threshold=0.3, n_perms=20, **RUN)
    key = "ct_stague_adj_raw"
    assert res.label == key
    new = {k for s, k in ds.pending if s == "uns"}
    assert new == {f"cci_interactions_{key}", f"lr_cci_{key}", f"lr_cci_raw_{key}"}  # never lr_summary
    ds.write()
    back = CCIInteractions.load(stdask.read(store), key)
    np.testing.assert_array_equal(back.pvals, res.pvals)
    assert mark_stale(ds) == [] and not CCIInteractions.load(ds, key).stale  # adj_pvals leaves it valid
    assert back.params["threshold"] == 0.3 and back.params["adj_key"] == "stague_adj_raw"
    raw = pd.DataFrame(res.raw[0], index=TYPES, columns=TYPES)
    fig = pl.cci_map(ds, use_label=key, sig_interactions=False)
    m = fig.stdask_data["matrix"]
    assert m.shape == (3, 3)
    pd.testing.assert_frame_equal(m.loc[TYPES, TYPES], raw, check_dtype=False, check_names=False)
    fig = pl.ccinet_plot(ds, use_label=key, lr=LR_NAME, sig_interactions=False)
    assert len(fig.axes) >= 1
    fig = pl.lr_chord_plot(ds, use_label=key, sig_interactions=False, min_ints=0)
    np.testing.assert_array_equal(np.asarray(fig.stdask_data["flux"]).sum(), raw.to_numpy().sum())
    fig = pl.lr_cci_map(ds, use_label=key, lrs=[LR_NAME], sig_interactions=False)
    assert list(fig.stdask_data["table"].index) == [LR_NAME]


# ---------------------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------------------
def test_bad_inputs_name_the_key(store):
    ds = dataset(store)
    with pytest.raises(KeyError, match="obsp\\['learned'\\].*sd.tl.stague"):
        cci.learned_graph_cci(ds, "ct", adj_key="learned", **RUN)
    ds.set_result("obsp", "rect", sp.csr_matrix((N, N + 3)))
    with pytest.raises(ValueError, match="obsp\\['rect'\\] has shape"):
        cci.learned_graph_cci(ds, "ct", adj_key="rect", **RUN)
    ds.set_result("obsp", "empty", sp.csr_matrix(sp.identity(N)))
    with pytest.raises(ValueError, match="obsp\\['empty'\\] has no nonzero off-diagonal"):
        cci.learned_graph_cci(ds, "ct", adj_key="empty", **RUN)
    S = random_graph(8)
    ds.set_result("obsp", "stague_adj_raw", S)
    with pytest.raises(ValueError, match="'nope'"):
        cci.learned_graph_cci(ds, "nope", **RUN)
    for q in (0, 1, 1.5):
        with pytest.raises(ValueError, match="quantile"):
            cci.learned_graph_cci(ds, "ct", quantile=q, **RUN)
    with pytest.raises(ValueError, match="n_perms"):
        cci.learned_graph_cci(ds, "ct", n_perms=0, **RUN)
    bad = S.copy()
    bad.data[0] = np.nan
    ds.set_result("obsp", "nan", bad)
    with pytest.raises(ValueError, match="obsp\\['nan'\\] holds NaN"):
        cci.learned_graph_cci(ds, "ct", adj_key="nan", **RUN)
    ds.set_result("uns", "cci_interactions_ct", {"lrs": np.array(["L_R"]), "params": {}})  # run_cci's
    with pytest.raises(ValueError, match="cci_interactions_ct.*key_added"):
        cci.learned_graph_cci(ds, "ct", key_added="ct", **RUN)


def test_wrong_size_graph(store, monkeypatch):
    ds = dataset(store)
    real = ds.get_result
    monkeypatch.setattr(ds, "get_result", lambda slot, key: sp.csr_matrix((N + 1, N + 1)) if slot == "obsp"
                        else real(slot, key))
    with pytest.raises(ValueError, match=f"obsp\\['stague_adj_raw'\\] has shape \\({N + 1}, {N + 1}\\)"):
        cci.learned_graph_cci(ds, "ct", **RUN)
