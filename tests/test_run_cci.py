"""stLearn-compatible cell-type interactions (``run_cci``): the counting rule on hand-made neighbourhoods,
exact raw counts and statistically equal p-values against stLearn 1.2.2 on the shipped reference, mixture mode
against a brute-force oracle, determinism across workers, task splits and tilings, storage and export."""
from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import stdask
from stdask.gr import spatial_neighbors
from stdask.io.memory import AnnDataSource
from stdask.random_streams import philox_raw
from stdask.tl import cci
from stdask.backend.cpu import interactions as ik
from stdask.tl.cci.database import LRPairs
from stdask.tl.cci.interaction_result import CCIInteractions, mark_stale
from stdask.tl.cci.result import CCIResult
from stdask.gr.neighbors import resolve_distance

DATA = Path(__file__).parent / "data"
REF = DATA / "stlearn_N2000"
RUN = dict(progress=False, scheduler="sync")


# ---------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------
def small_dataset(tmp_path, name, coords, X, genes, obs, spot_diameter=55.0):
    a = ad.AnnData(X=sp.csr_matrix(np.asarray(X, dtype=np.float32)), obs=obs,
                   var=pd.DataFrame(index=pd.Index(genes)))
    a.obsm["spatial"] = np.asarray(coords, dtype=np.float64)
    return stdask.read(stdask.ingest(AnnDataSource(a, spot_diameter=spot_diameter), tmp_path / f"{name}.zarr",
                                     progress=False))


def make_result(ds, obs_names, lrs, scores, sig, distance):
    """A CCIResult with given scores (> 0 = tested) and significance, rows given in ``obs_names`` order."""
    rows_of = pd.Index(ds.obs_names).get_indexer(pd.Index(obs_names))
    assert (rows_of >= 0).all()
    i, j = np.nonzero(scores > 0)
    pairs = LRPairs(np.array([s.split("_")[0] for s in lrs], dtype=object),
                    np.array([s.split("_")[1] for s in lrs], dtype=object))
    return CCIResult.from_entries(
        n_obs=ds.n_obs, obs_names=ds.obs_names, pairs=pairs, rows=rows_of[i], pair=j, score=scores[i, j],
        count=np.ones(len(i), np.int64), padj=np.where(sig[i, j], 0.01, 0.5), n_pairs=100, min_expr=0.0,
        cutoff=0.05, lrfeatures=pd.DataFrame(), params={"distance": float(distance), "layer": "X"})


def reference_result(ds):
    """stLearn's own significance calls (obsm matrices of the reference run) as a CCIResult on ``ds``."""
    o = np.load(REF / "obsm_results.npz", allow_pickle=True)
    rows_of = pd.Index(ds.obs_names).get_indexer(pd.Index(o["obs_names"]))
    sc = o["lr_scores"]
    i, j = np.nonzero(sc > 0)
    lrs = o["lrs"].astype(str)
    pairs = LRPairs(np.array([s.split("_")[0] for s in lrs], dtype=object),
                    np.array([s.split("_")[1] for s in lrs], dtype=object))
    return CCIResult.from_entries(
        n_obs=ds.n_obs, obs_names=ds.obs_names, pairs=pairs, rows=rows_of[i], pair=j, score=sc[i, j],
        count=np.rint(o["p_vals"][i, j] * 1000).astype(np.int64), padj=o["p_adjs"][i, j], n_pairs=1000,
        min_expr=0.0, cutoff=0.05, lrfeatures=pd.DataFrame(),
        params={"distance": resolve_distance(ds, None), "layer": "X"})


# the 7-spot hexagon: A in the centre; B..G clockwise from the top-left (unit 100, radius 110)
HEX_NAMES = list("ABCDEFG")
_ang = {"B": 120, "C": 60, "D": 0, "E": -60, "F": -120, "G": 180}
HEX_XY = np.array([[0.0, 0.0]] + [[100 * np.cos(np.radians(_ang[n])), 100 * np.sin(np.radians(_ang[n]))]
                                  for n in HEX_NAMES[1:]])
HEX_NEIGH = {"A": list("BCDEFG"), "B": list("GAC"), "C": list("BAD"), "D": list("EAC"), "E": list("FAD"),
             "F": list("GAE"), "G": list("FAB")}


# ---------------------------------------------------------------------------------------------------------
# random streams and sampling
# ---------------------------------------------------------------------------------------------------------
def test_stream_is_numpy_philox_and_samples_are_uniform():
    for k0, k1, c1, c2, c3 in [(0, 0, 0, 0, 0), (12345, 2**63 + 7, 3, 77, ik.STREAM_TAG), (2**64 - 1, 5, 1, 2, 3)]:
        mine = philox_raw(np.uint64(k0), np.uint64(k1), np.uint64(c1), np.uint64(c2), np.uint64(c3), 13)
        ref = np.random.Philox(key=np.array([k0, k1], dtype=np.uint64),
                               counter=np.array([0, c1, c2, c3], dtype=np.uint64)).random_raw(13)
        assert np.array_equal(mine, ref)
    u = np.uint64
    # K = N: a permutation; K < N: distinct; keyed: same counter, same sample
    full = ik.sample_positions(50, 50, u(1), u(2), u(0), u(3), u(ik.STREAM_TAG))
    assert sorted(full) == list(range(50))
    part = ik.sample_positions(30, 1000, u(1), u(2), u(0), u(3), u(ik.STREAM_TAG))
    assert len(set(part)) == 30 and part.max() < 1000
    assert np.array_equal(part, ik.sample_positions(30, 1000, u(1), u(2), u(0), u(3), u(ik.STREAM_TAG)))
    # the restricted permutation: every ordered pair of 2 out of 4 spots equally likely (12 cells)
    counts = np.zeros((4, 4))
    for k in range(6000):
        a, b = ik.sample_positions(2, 4, u(9), u(1), u(0), u(k), u(ik.STREAM_TAG))
        counts[a, b] += 1
    assert np.all(np.diag(counts) == 0)
    off = counts[~np.eye(4, dtype=bool)]
    assert np.abs(off - 500).max() < 5 * np.sqrt(500)


# ---------------------------------------------------------------------------------------------------------
# the counting rule on the hexagon (spec section 14)
# ---------------------------------------------------------------------------------------------------------
def hex_edges(sig, L, R):
    """Unique undirected qualifying edges {u, v} (names) of one LR on the hexagon, via build_edges."""
    idx = {n: i for i, n in enumerate(HEX_NAMES)}
    rows = [idx[a] for a in HEX_NAMES for b in HEX_NEIGH[a]]
    cols = [idx[b] for a in HEX_NAMES for b in HEX_NEIGH[a]]
    g = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(7, 7))
    g.sort_indices()
    s_rows = np.array(sorted(idx[n] for n in sig), np.int64)
    x_l = sorted(idx[n] for n in L)
    x_r = sorted(idx[n] for n in R)
    e_ptr, eu, ev, mut, k_ptr, ep = ik.build_edges(
        7, g.indptr.astype(np.int64), g.indices.astype(np.int64), s_rows, False, np.array([0, len(s_rows)], np.int64),
        s_rows, np.array([0, len(x_l), len(x_l) + len(x_r)], np.int64), np.array(x_l + x_r, np.int64),
        np.array([0]), np.array([1]), int(g.nnz))
    return {frozenset((HEX_NAMES[ep[a]], HEX_NAMES[ep[b]])) for a, b in zip(eu, ev)}, len(eu)


def test_edge_collection_cases():
    allspots = set(HEX_NAMES)
    full = {frozenset((a, b)) for a in HEX_NAMES for b in HEX_NEIGH[a]}
    assert len(full) == 12
    edges, n = hex_edges(allspots, allspots, allspots)
    assert edges == full and n == 12  # mutual pairs are stored once
    # B and E not valid receivers, still valid senders: unchanged
    assert hex_edges(allspots, allspots, allspots - {"B", "E"})[0] == full
    # B and C not valid receivers: only B-C goes
    assert hex_edges(allspots, allspots, allspots - {"B", "C"})[0] == full - {frozenset("BC")}
    # centre neither sender nor receiver nor expressing: every edge with A goes
    rest = allspots - {"A"}
    assert hex_edges(rest, rest, rest)[0] == {e for e in full if "A" not in e}
    # corner B a valid receiver but no sender: edges with B remain only as one-way edges into B
    edges, _ = hex_edges(allspots - {"B"}, allspots - {"B"}, allspots)
    assert edges == full


def test_hexagon_interaction_matrix(tmp_path):
    labels = dict(zip(HEX_NAMES, ["CT1", "CT2", "CT3", "CT2", "CT1", "CT3", "CT2"]))
    L = np.array([n == "A" for n in HEX_NAMES], float)
    R = np.array([n in "DEG" for n in HEX_NAMES], float)
    obs = pd.DataFrame({"ct": [labels[n] for n in HEX_NAMES]}, index=HEX_NAMES)
    ds = small_dataset(tmp_path, "hex", HEX_XY, np.column_stack([L, R, np.ones(7)]), ["LIG", "REC", "OTHER"], obs)
    scores = np.zeros((7, 1))
    scores[0, 0] = 1.0
    res = make_result(ds, HEX_NAMES, ["LIG_REC"], scores, scores > 0, 110.0)
    inter = cci.run_cci(ds, "ct", result=res, min_spots=0, n_perms=50, **RUN)
    M = inter.per_lr("raw")["LIG_REC"]
    expect = pd.DataFrame(0, index=["CT1", "CT2", "CT3"], columns=["CT1", "CT2", "CT3"])
    expect.loc["CT1", "CT1"] = 1  # A-E
    expect.loc["CT1", "CT2"] = 2  # A-D, A-G
    pd.testing.assert_frame_equal(M, expect, check_dtype=False)
    assert M.to_numpy().dtype == np.int64
    # sig_spots=False: every spot with a score > 0 sends; D (receptor, CT2) now also reaches A (ligand)
    scores[3, 0] = 0.5
    res_all = make_result(ds, HEX_NAMES, ["LIG_REC"], scores, np.arange(7)[:, None] == 0, 110.0)
    M_all = cci.run_cci(ds, "ct", result=res_all, min_spots=0, sig_spots=False, n_perms=0, **RUN).raw[0]
    expect_all = expect.to_numpy().copy()
    expect_all[1, 0] = 1  # D -> A
    assert np.array_equal(M_all, expect_all)
    # all spots significant, expressing both genes, one type: 12 distinct pairs on the diagonal
    both = np.ones(7)
    ds2 = small_dataset(tmp_path, "hex2", HEX_XY, np.column_stack([both, both]), ["LIG", "REC"],
                        pd.DataFrame({"ct": ["T"] * 7}, index=HEX_NAMES))
    res2 = make_result(ds2, HEX_NAMES, ["LIG_REC"], np.ones((7, 1)), np.ones((7, 1), bool), 110.0)
    inter2 = cci.run_cci(ds2, "ct", result=res2, min_spots=0, n_perms=0, **RUN)
    assert inter2.raw[0, 0, 0] == 12
    # within-spot mode: self-edges, sig & L & R in the same spot
    res3 = make_result(ds2, HEX_NAMES, ["LIG_REC"], np.ones((7, 1)), np.ones((7, 1), bool), 0.0)
    assert cci.run_cci(ds2, "ct", result=res3, min_spots=0, n_perms=0, **RUN).raw[0, 0, 0] == 7


# ---------------------------------------------------------------------------------------------------------
# parity with stLearn 1.2.2 on the shipped reference
# ---------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ref_ds(tmp_path_factory):
    store = stdask.ingest(DATA / "ref_N2000.h5ad", tmp_path_factory.mktemp("ref") / "ref.zarr", progress=False,
                          tile_size=1000)
    ds = stdask.read(store)
    # a stored graph of run's radius: run_cci finds the same neighbours from the coordinates, never reads it
    spatial_neighbors(ds, distance=None, progress=False, verbose=False, scheduler="sync")
    return ds


@pytest.fixture(scope="module")
def ref_result(ref_ds):
    return reference_result(ref_ds)


@pytest.fixture(scope="module")
def ref_inter(ref_ds, ref_result):
    return cci.run_cci(ref_ds, "cell_type", result=ref_result, n_perms=100, seed=0, **RUN)


@pytest.fixture(scope="module")
def ref_long():
    return pd.read_csv(REF / "per_lr_cci_cell_type_long.csv.gz")


def test_raw_counts_equal_stlearn(ref_ds, ref_result, ref_inter, ref_long):
    o = np.load(REF / "obsm_results.npz", allow_pickle=True)
    # the significant spots fed in are stLearn's
    rows_of = pd.Index(ref_ds.obs_names).get_indexer(pd.Index(o["obs_names"]))
    cols = pd.Index(ref_result.lrs).get_indexer(o["lrs"])
    assert np.array_equal(ref_result.dense("lr_sig_scores")[rows_of][:, cols], o["lr_sig_scores"])
    assert set(ref_inter.lrs) == set(ref_long.lr) and len(ref_inter.lrs) == 801
    raw = ref_inter.per_lr("raw")
    mine = np.array([raw[r.lr].loc[r.sender, r.receiver] for r in ref_long.itertuples()])
    assert np.array_equal(mine, ref_long.raw_count.to_numpy())  # every LR, every cell
    pd.testing.assert_frame_equal(ref_inter.lr_cci_raw, pd.read_csv(REF / "lr_cci_raw_cell_type.csv", index_col=0),
                                  check_dtype=False)
    ref_sum = ad.read_h5ad(DATA / "ref_N2000.h5ad").uns["lr_summary"]
    got = ref_inter.lr_summary.loc[ref_sum.index, "n-spot_cci_cell_type"]
    assert np.array_equal(got.to_numpy(), ref_sum["n-spot_cci_cell_type"].to_numpy())
    # lr_summary: int64 columns, 0 for the untested LR
    for c in ("n_cci_sig_cell_type", "n-spot_cci_cell_type", "n-spot_cci_sig_cell_type"):
        assert ref_inter.lr_summary[c].dtype == np.int64
    untested = ref_inter.lr_summary.index.difference(pd.Index(ref_inter.lrs))
    assert len(untested) == 1 and (ref_inter.lr_summary.loc[untested].iloc[:, 3:] == 0).all().all()


def test_pvalues_agree_with_stlearn_within_monte_carlo_error(ref_inter, ref_long):
    pv = ref_inter.per_lr("pvals")
    mine = np.array([pv[r.lr].loc[r.sender, r.receiver] for r in ref_long.itertuples()])
    theirs = ref_long.pval.to_numpy()
    tested = ref_long.raw_count.to_numpy() > 0
    d = np.abs(mine - theirs)
    sig_agree = ((mine < 0.05) == (theirs < 0.05))[tested].mean()
    print(f"run_cci p: mean |dp| {d.mean():.4f} over all cells, {d[tested].mean():.4f} where M > 0 "
          f"(stLearn vs itself: 0.045); p<0.05 agreement {sig_agree:.3f}")
    assert np.all(mine[~tested] == 1.0) and np.all(theirs[~tested] == 1.0)
    assert d[tested].mean() < 0.05 and sig_agree > 0.9
    # the significance rules (Q5): sig keeps p == cutoff, n_cci_sig counts p < cutoff only
    p, raw, sig = ref_inter.pvals, ref_inter.raw, ref_inter.sig
    assert (p == 0.05).any()
    assert np.array_equal(sig, np.where(p <= 0.05, raw, 0))
    s = ref_inter.lr_summary.loc[ref_inter.lrs]
    assert np.array_equal(s["n_cci_sig_cell_type"].to_numpy(), (p < 0.05).sum(axis=(1, 2)))
    assert np.array_equal(s["n-spot_cci_sig_cell_type"].to_numpy(), sig.sum(axis=(1, 2)))


def test_no_permutations_and_zero_counts(ref_ds, ref_result, ref_inter):
    zero = ref_inter.raw == 0
    assert zero.any() and np.all(ref_inter.pvals[zero] == 1.0)
    none = cci.run_cci(ref_ds, "cell_type", result=ref_result, n_perms=0, **RUN)
    assert np.array_equal(none.raw, ref_inter.raw)
    assert np.all(none.pvals == 1.0) and not none.sig.any()
    assert (none.lr_summary["n_cci_sig_cell_type"] == 0).all()


def test_same_seed_same_result_any_workers_tasks_and_tiling(ref_ds, ref_result, ref_inter, tmp_path):
    from distributed import Client, LocalCluster

    many = cci.run_cci(ref_ds, "cell_type", result=ref_result, n_perms=100, seed=0, lrs_per_task=7,
                       scheduler="threads", progress=False)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0") as lc, \
            Client(lc) as client:
        dist = cci.run_cci(ref_ds, "cell_type", result=ref_result, n_perms=100, seed=0, lrs_per_task=50,
                           scheduler=client, progress=False)
    for other in (many, dist):
        for m in ("raw", "pvals", "sig"):
            assert np.array_equal(getattr(ref_inter, m), getattr(other, m)), m
        pd.testing.assert_frame_equal(ref_inter.lr_summary, other.lr_summary)
    # another tiling (another row order in the store): the same draws, by obs name
    src = ad.read_h5ad(DATA / "ref_N2000.h5ad")
    ds2 = stdask.read(stdask.ingest(AnnDataSource(src), tmp_path / "t5000.zarr", tile_size=5000, progress=False))
    assert not np.array_equal(np.asarray(ds2.obs_names), np.asarray(ref_ds.obs_names))
    other = cci.run_cci(ds2, "cell_type", result=reference_result(ds2), n_perms=100, seed=0, **RUN)
    order = pd.Index(other.lrs).get_indexer(ref_inter.lrs)
    assert np.array_equal(other.pvals[order], ref_inter.pvals)
    # another seed: other draws
    s1 = cci.run_cci(ref_ds, "cell_type", result=ref_result, n_perms=100, seed=1, **RUN)
    assert not np.array_equal(s1.pvals, ref_inter.pvals) and np.array_equal(s1.raw, ref_inter.raw)


# ---------------------------------------------------------------------------------------------------------
# mixture mode against a brute-force oracle
# ---------------------------------------------------------------------------------------------------------
def oracle_counts(P, nbrs, sig, L, R):
    """stLearn's definition, literally: for every (a, b), the distinct spot pairs {i, n} with i significant,
    a present in i, n a neighbour of i with b present, and L_i R_n or R_i L_n."""
    N, T = P.shape
    M = np.zeros((T, T), np.int64)
    for a in range(T):
        for b in range(T):
            pairs = set()
            for i in range(N):
                if not (sig[i] and P[i, a]):
                    continue
                for n in nbrs[i]:
                    if P[n, b] and ((L[i] and R[n]) or (R[i] and L[n])):
                        pairs.add((min(i, n), max(i, n)))
            M[a, b] = len(pairs)
    return M


def oracle_pair_counts(P, qual):
    """The same counts from the qualifying spot pairs: per pair, the union over its qualifying orientations
    (u -> v) of (types of u) x (types of v)."""
    M = np.zeros((P.shape[1], P.shape[1]), np.int64)
    for orients in qual.values():
        cell = np.zeros_like(M, dtype=bool)
        for u, v in orients:
            cell |= np.outer(P[u], P[v])
        M += cell
    return M


@pytest.fixture(scope="module")
def mixture_case(tmp_path_factory):
    rng = np.random.default_rng(5)
    N, types = 40, ["Ta", "Tb", "Tc", "Td"]
    xy = rng.uniform(0, 500, (N, 2))
    names = [f"s{k:02d}" for k in range(N)]
    X = (rng.random((N, 4)) < 0.6) * rng.uniform(1, 5, (N, 4))
    lrs = ["G0_G1", "G2_G3", "G1_G1"]
    sig = rng.random((N, 3)) < 0.35
    scores = np.where(sig | (rng.random((N, 3)) < 0.2), 1.0, 0.0)
    # proportions: Dirichlet, so spots hold 1-3 types above 0.2
    D = rng.dirichlet([0.6] * 4, N)
    labels = np.array(types)[D.argmax(axis=1)]
    obs = pd.DataFrame({"ct": labels}, index=names)
    build = lambda path, name: small_dataset(path, name, xy, X, ["G0", "G1", "G2", "G3"], obs)  # noqa: E731
    ds = build(tmp_path_factory.mktemp("mix"), "mix")
    radius = 130.0
    res = make_result(ds, names, lrs, scores, sig, radius)
    table = pd.DataFrame(D, index=names, columns=types).iloc[::-1]  # rows in another order: aligned by name
    d2 = ((xy[:, None, :] - xy[None, :, :]) ** 2).sum(-1)
    nbrs = [np.flatnonzero((d2[i] <= radius**2) & (np.arange(N) != i)) for i in range(N)]
    return dict(ds=ds, res=res, table=table, D=D, X=X, sig=sig, scores=scores, nbrs=nbrs, lrs=lrs, names=names,
                types=types, build=build)


def test_mixture_counts_and_pvalues_match_oracle(mixture_case):
    c = mixture_case
    ds, D, X, nbrs = c["ds"], c["D"], c["X"], c["nbrs"]
    inter = cci.run_cci(ds, "ct", result=c["res"], spot_mixtures=True, mixture_key=c["table"], min_spots=0,
                        n_perms=2000, seed=3, **RUN)
    assert list(inter.types) == c["types"] and inter.params["permutation"] == "columns"
    P = D > 0.2
    assert (P.sum(axis=1) >= 2).sum() >= 5  # the de-dup rule is exercised
    rng = np.random.default_rng(11)
    diffs = []
    n_mutual_multi = 0
    for j, lr in enumerate(c["lrs"]):
        gl, gr = (int(g[1]) for g in lr.split("_"))
        L, R, sig = X[:, gl] > 0, X[:, gr] > 0, c["sig"][:, j]
        M = oracle_counts(P, nbrs, sig, L, R)
        k = list(inter.lrs).index(lr)
        assert np.array_equal(inter.raw[k], M), lr
        # the qualifying pairs, and a Monte Carlo p-value with independent column permutations
        qual: dict = {}
        for i in range(len(P)):
            for n in nbrs[i]:
                if sig[i] and ((L[i] and R[n]) or (R[i] and L[n])):
                    qual.setdefault((min(i, n), max(i, n)), set()).add((i, n))
        n_mutual_multi += sum(len(o) == 2 and P[list(o)[0][0]].sum() > 1 for o in qual.values())
        assert np.array_equal(oracle_pair_counts(P, qual), M)
        ge = np.zeros_like(M)
        for _ in range(1000):
            Pp = np.column_stack([P[rng.permutation(len(P)), t] for t in range(P.shape[1])])
            ge += oracle_pair_counts(Pp, qual) >= M
        p_oracle = np.where(M > 0, ge / 1000, 1.0)
        diffs.append(np.abs(inter.pvals[k] - p_oracle)[M > 0])
    assert n_mutual_multi > 0
    d = np.concatenate(diffs)
    print(f"mixture p vs oracle (2000 / 1000 permutations): mean |dp| {d.mean():.4f}, max {d.max():.4f}")
    assert d.mean() < 0.02 and d.max() < 0.08


def test_mixture_of_one_hot_rows_equals_discrete(mixture_case):
    c = mixture_case
    labels = c["ds"].obs["ct"].astype(str)
    onehot = pd.get_dummies(labels).astype(float)
    disc = cci.run_cci(c["ds"], "ct", result=c["res"], min_spots=0, n_perms=200, seed=2, **RUN)
    mix = cci.run_cci(c["ds"], "ct", result=c["res"], spot_mixtures=True, mixture_key=onehot, min_spots=0,
                      n_perms=200, seed=2, **RUN)
    assert mix.params["permutation"] == "rows"
    for m in ("raw", "pvals", "sig"):
        assert np.array_equal(getattr(disc, m), getattr(mix, m))
    # cutoffs outside [0, 1) take the general path: every type present (cutoff < 0) or none (>= 1)
    none = cci.run_cci(c["ds"], "ct", result=c["res"], min_spots=0, n_perms=10, cell_prop_cutoff=1.0, **RUN)
    assert not none.raw.any() and np.all(none.pvals == 1)
    every = cci.run_cci(c["ds"], "ct", result=c["res"], min_spots=0, n_perms=10, cell_prop_cutoff=-1, **RUN)
    assert np.all(every.raw == every.raw[:, :1, :1])  # each LR: every cell counts all its pairs


# ---------------------------------------------------------------------------------------------------------
# storage, export, staleness, errors
# ---------------------------------------------------------------------------------------------------------
def test_store_load_export_and_stale(mixture_case, tmp_path):
    c = mixture_case
    ds = c["build"](tmp_path, "store")
    make_result(ds, c["names"], c["lrs"], c["scores"], c["sig"], 130.0).store(ds)
    inter = cci.run_cci(ds, "ct", min_spots=0, n_perms=50, **RUN)  # result loaded from ds
    back = CCIInteractions.load(ds, "ct")  # pending
    ds.write()
    stored = CCIInteractions.load(ds, "ct")
    d = ds.get_result("uns", "cci_interactions_ct")
    assert set(d) >= {"lrs", "types", "raw", "sig", "pvals", "n_perms", "seed", "p_cutoff", "stale"}
    for other in (back, stored):
        for m in ("raw", "sig", "pvals"):
            assert np.array_equal(getattr(inter, m), getattr(other, m))
        assert list(other.lrs) == list(inter.lrs) and list(other.types) == list(inter.types)
        assert other.n_perms == 50 and other.seed == 0 and other.p_cutoff == 0.05 and not other.stale
    pd.testing.assert_frame_equal(ds.get_result("uns", "lr_cci_ct"), inter.lr_cci, check_dtype=False)
    assert ds.get_result("uns", "lr_summary")["n-spot_cci_ct"].dtype == np.int64
    adata = ds.to_anndata()
    uns = inter.stlearn_uns()
    for key in ("lr_cci_ct", "lr_cci_raw_ct", "per_lr_cci_ct", "per_lr_cci_pvals_ct", "per_lr_cci_raw_ct"):
        assert key in adata.uns
    pd.testing.assert_frame_equal(adata.uns["lr_cci_raw_ct"], uns["lr_cci_raw_ct"], check_dtype=False)
    for lr in inter.lrs:
        pd.testing.assert_frame_equal(adata.uns["per_lr_cci_pvals_ct"][lr], uns["per_lr_cci_pvals_ct"][lr])
        pd.testing.assert_frame_equal(adata.uns["per_lr_cci_ct"][lr], uns["per_lr_cci_ct"][lr],
                                      check_dtype=False)
    assert "n_cci_sig_ct" in adata.uns["lr_summary"].columns
    adata.write_h5ad(tmp_path / "export.h5ad")  # stLearn's layout writes
    # adj_pvals makes the counts stale (Q19)
    assert mark_stale(ds) == ["cci_interactions_ct"]
    with pytest.warns(UserWarning, match="stale"):
        assert CCIInteractions.load(ds, "ct").stale


def test_bad_inputs(mixture_case):
    c = mixture_case
    ds, res = c["ds"], c["res"]
    with pytest.raises(ValueError, match="obs has no column 'nope'"):
        cci.run_cci(ds, "nope", result=res, **RUN)
    with pytest.raises(ValueError, match=r"missing from its columns: \['Tb'\]"):
        cci.run_cci(ds, "ct", result=res, spot_mixtures=True, mixture_key=c["table"].drop(columns="Tb"), **RUN)
    with pytest.raises(ValueError, match=r"1 of 40 observations missing from its rows, e.g. \['s07'\]"):
        cci.run_cci(ds, "ct", result=res, spot_mixtures=True, mixture_key=c["table"].drop(index="s07"), **RUN)
    with pytest.raises(ValueError, match="no proportion table"):
        cci.run_cci(ds, "ct", result=res, spot_mixtures=True, **RUN)
    with pytest.raises(ValueError, match="no LR pair has n_spots_sig > min_spots=1000"):
        cci.run_cci(ds, "ct", result=res, min_spots=1000, **RUN)
    with pytest.raises(ValueError, match="n_perms"):
        cci.run_cci(ds, "ct", result=res, n_perms=-1, **RUN)
    with pytest.raises(KeyError, match="no run_cci results"):  # earlier tests recorded theirs on ds, unwritten
        CCIInteractions.load(stdask.read(ds.path), "ct")


def test_cli_hotspots_interactions_report(tmp_path):
    """`stdask cci run` -> `stdask cci interactions` -> `stdask report` on a store, as a user runs them."""
    from stdask.cli import main
    from stdask.io.memory import AnnDataSource

    src = ad.read_h5ad(DATA / "ref_N2000.h5ad")
    store = stdask.ingest(AnnDataSource(src), tmp_path / "s.zarr", progress=False)
    assert main(["cci", "run", str(store), "--min-spots", "20", "--n-pairs", "100", "--out",
                 str(tmp_path / "lr.tsv")]) == 0
    assert main(["cci", "interactions", str(store), "--use-label", "cell_type", "--n-perms", "20"]) == 0
    ds = stdask.read(store)
    inter = CCIInteractions.load(ds, "cell_type")
    # the stored totals are the sums of the per-LR matrices (sig and raw)
    raw = ds.get_result("uns", "cci_interactions_cell_type")["raw"]
    assert np.array_equal(inter.lr_cci_raw.to_numpy(), raw.sum(axis=0))
    assert inter.n_perms == 20 and len(inter.lrs) > 0
    summary = ds.get_result("uns", "lr_summary")
    assert (summary.loc[list(inter.lrs), "n-spot_cci_cell_type"].to_numpy() == raw.sum(axis=(1, 2))).all()
    assert main(["report", str(store), str(tmp_path / "rep"), "--use-label", "cell_type"]) == 0
    assert (tmp_path / "rep" / "CCI_heatmap_plots.png").stat().st_size > 0
