"""stdask.pl: stLearn's CCI plots and spatial maps, from an AnnData with stLearn 1.2.2's own outputs and from a
SpatialDataset with stdask's stored results; plotted numbers checked against independent computations, drawn
pixels against the data (every axes has content; a cell's pixel has its value's colour); show= semantics."""
from __future__ import annotations

from pathlib import Path

import anndata as ad
import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import scipy.sparse as sp  # noqa: E402
from PIL import Image  # noqa: E402

import stdask  # noqa: E402
from stdask import pl  # noqa: E402
from stdask.pl.plotdata import STLEARN_RESULTS  # noqa: E402
from stdask.pl.cci_network import chord_keep  # noqa: E402
from stdask.tl.cci.database import LRPairs  # noqa: E402
from stdask.tl.cci.result import CCIResult  # noqa: E402

DATA = Path(__file__).parent / "data"
REF = DATA / "stlearn_N2000"
LABEL = "cell_type"
LR = "LAMC2_ITGA3"


# ---------------------------------------------------------------------------------------------------------
# fixtures: stLearn's outputs as an AnnData, and the same numbers stored in a SpatialDataset
# ---------------------------------------------------------------------------------------------------------
def reference_interactions():
    """stLearn's per-LR run_cci results as (lrs, types, raw, sig, pvals) arrays (lrs in file order)."""
    d = pd.read_csv(REF / "per_lr_cci_cell_type_long.csv.gz")
    lrs = pd.unique(d["lr"])
    types = np.array(sorted(d["sender"].unique()), dtype=object)
    li = pd.Index(lrs).get_indexer(d["lr"])
    si, ri = pd.Index(types).get_indexer(d["sender"]), pd.Index(types).get_indexer(d["receiver"])

    def arr(col, dtype):
        x = np.zeros((len(lrs), len(types), len(types)), dtype)
        x[li, si, ri] = d[col].to_numpy()
        return x

    return np.asarray(lrs, dtype=object), types, arr("raw_count", np.int64), arr("sig_count", np.int64), \
        arr("pval", np.float64)


def build_reference_adata() -> ad.AnnData:
    """ref_N2000.h5ad with stLearn's per_lr dicts rebuilt from the long table (stLearn's uns layout)."""
    a = ad.read_h5ad(DATA / "ref_N2000.h5ad")
    lrs, types, raw, sig, pv = reference_interactions()
    for key, x in ((f"per_lr_cci_{LABEL}", sig), (f"per_lr_cci_raw_{LABEL}", raw),
                   (f"per_lr_cci_pvals_{LABEL}", pv)):
        a.uns[key] = {lr: pd.DataFrame(x[i], index=types, columns=types) for i, lr in enumerate(lrs)}
    return a


def build_reference_store(adata: ad.AnnData, path: Path):
    """A store of the same slice holding stLearn's numbers in stdask's storage: the sparse ``run`` result
    and the ``run_cci`` contract (``cci_interactions_<label>`` dict, ``lr_cci_<label>`` tables)."""
    ds = stdask.read(stdask.ingest(DATA / "ref_N2000.h5ad", path, progress=False))
    rows = pd.Index(adata.obs_names).get_indexer(ds.obs_names)
    scores = adata.obsm["lr_scores"][rows]
    r, c = np.nonzero(scores > 0)
    shape = scores.shape
    n_pairs = 1000
    counts = np.rint(adata.obsm["p_vals"][rows][r, c] * n_pairs).astype(np.int64)
    csr = lambda v: sp.csr_matrix((v, (r, c)), shape=shape)  # noqa: E731
    summary = adata.uns["lr_summary"].copy()
    summary = summary.astype(np.int64)
    names = summary.index.to_numpy()
    pairs = LRPairs(np.array([n.split("_")[0] for n in names], dtype=object),
                    np.array([n.split("_")[1] for n in names], dtype=object))
    res = CCIResult(pd.Index(ds.obs_names), pairs, summary, adata.uns["lrfeatures"], csr(scores[r, c]), csr(counts),
                    csr(adata.obsm["p_adjs"][rows][r, c]), n_pairs, 0.0, 0.05, {})
    res.store(ds)
    lrs, types, raw, sig, pv = reference_interactions()
    ds.set_result("uns", f"cci_interactions_{LABEL}", {
        "lrs": lrs.astype(str), "types": types.astype(str), "raw": raw, "sig": sig, "pvals": pv, "n_perms": 100,
        "seed": 0, "p_cutoff": 0.05, "stale": False})
    ds.set_result("uns", f"lr_cci_{LABEL}", adata.uns[f"lr_cci_{LABEL}"])
    ds.set_result("uns", f"lr_cci_raw_{LABEL}", adata.uns[f"lr_cci_raw_{LABEL}"])
    ds.write()
    return stdask.read(path)


@pytest.fixture(scope="module")
def adata():
    return build_reference_adata()


@pytest.fixture(scope="module")
def ds(adata, tmp_path_factory):
    return build_reference_store(adata, tmp_path_factory.mktemp("pl") / "ref.zarr")


@pytest.fixture(params=["anndata", "dataset"])
def data(request, adata, ds):
    return adata if request.param == "anndata" else ds


def only_first_unless_anndata(data, cases):
    """All cases for the AnnData input; the first for the SpatialDataset, whose tables are checked equal to the
    AnnData's in test_anndata_and_dataset_give_the_same_tables."""
    return cases if isinstance(data, ad.AnnData) else cases[:1]


def png_size(path: Path) -> tuple[int, int]:
    assert path.exists() and path.stat().st_size > 0, path
    return Image.open(path).size


def rendered(fig) -> np.ndarray:
    """The figure drawn by Agg: (H, W, 4) uint8 RGBA, row 0 at the top (pyplot-free figures get an Agg canvas)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba()).copy()


def inside(img: np.ndarray, ax, margin: int = 2) -> np.ndarray:
    """The pixels of ``img`` strictly inside ``ax`` (``margin`` pixels in from its frame)."""
    bb = ax.get_window_extent()  # display pixels from the bottom left, valid once the figure was drawn
    H = img.shape[0]
    return img[H - int(bb.y1) + margin:H - int(np.ceil(bb.y0)) - margin,
               int(np.ceil(bb.x0)) + margin:int(bb.x1) - margin]


def drawn_share(fig, ax) -> float:
    """Share of the pixels inside ``ax`` that its data artists (collections, patches, lines, images, texts)
    change: the figure drawn with and without them (frame, ticks, legend and background are in both)."""
    full = inside(rendered(fig), ax)
    artists = [a for a in (*ax.collections, *ax.patches, *ax.lines, *ax.images, *ax.texts) if a.get_visible()]
    for a in artists:
        a.set_visible(False)
    try:
        bare = inside(rendered(fig), ax)
    finally:
        for a in artists:
            a.set_visible(True)
    return float(np.any(full != bare, axis=-1).mean())


def assert_drawn(fig, min_share: float = 0.002) -> None:
    """Every axes of ``fig`` (plot, colour bar, twin) has data drawn inside it: an empty axes fails."""
    for k, ax in enumerate(fig.axes):
        share = drawn_share(fig, ax)
        assert share >= min_share, f"axes {k} ({ax.get_label() or ax.get_title()!r}): {share:.4f} of it drawn"


def colours_at(fig, ax, xy: np.ndarray) -> np.ndarray:
    """(n, 3) uint8 RGB of the pixels under the data points ``xy`` ((n, 2) in ``ax``'s data coordinates)."""
    img = rendered(fig)
    disp = ax.transData.transform(np.asarray(xy, dtype=np.float64))
    cols = np.floor(disp[:, 0]).astype(np.int64)
    rows = img.shape[0] - 1 - np.floor(disp[:, 1]).astype(np.int64)
    return img[rows, cols, :3]


def off_frame(ax, xy: np.ndarray, margin: float = 3) -> np.ndarray:
    """Mask of the points ``xy`` drawn more than ``margin`` pixels inside ``ax``'s frame (the frame's line covers
    the outermost pixels)."""
    disp = ax.transData.transform(np.asarray(xy, dtype=np.float64))
    bb = ax.get_window_extent()
    return ((disp[:, 0] > bb.x0 + margin) & (disp[:, 0] < bb.x1 - margin) & (disp[:, 1] > bb.y0 + margin)
            & (disp[:, 1] < bb.y1 - margin))


def share_matching(got: np.ndarray, want_rgba: np.ndarray, tol: int = 2) -> float:
    """Share of rows of ``got`` (uint8 RGB) within ``tol`` levels of ``want_rgba`` ((n, 4) floats in [0, 1])."""
    want = np.rint(np.asarray(want_rgba)[:, :3] * 255)
    return float((np.abs(got.astype(np.int64) - want).max(axis=1) <= tol).mean())


def check_saved(fig, tmp_path: Path, name: str, data=None) -> None:
    """save= writes a non-empty png of figsize x dpi pixels and a non-empty pdf, and every axes has data drawn
    inside it (once per plot: neither depends on the input kind, so a SpatialDataset-input figure is not checked
    again)."""
    if data is not None and not isinstance(data, ad.AnnData):
        return
    pl.save_figure(fig, tmp_path / name)
    w, h = fig.get_size_inches() * fig.dpi
    assert png_size(tmp_path / f"{name}.png") == (round(w), round(h))
    assert (tmp_path / f"{name}.pdf").stat().st_size > 0
    assert_drawn(fig)


# ---------------------------------------------------------------------------------------------------------
# one read interface for both inputs
# ---------------------------------------------------------------------------------------------------------
def test_anndata_and_dataset_give_the_same_tables(adata, ds):
    a, d = pl.PlotData(adata), pl.PlotData(ds)
    pd.testing.assert_frame_equal(a.lr_summary().astype(np.int64), d.lr_summary(), check_dtype=False)
    assert a.cci_labels() == [LABEL] and d.cci_labels() == [LABEL]
    for lr in (None, LR):
        for sig in (True, False):
            pd.testing.assert_frame_equal(a.cci_matrix(LABEL, lr, sig).astype(np.int64),
                                          d.cci_matrix(LABEL, lr, sig).astype(np.int64))
    # the stored dict gives stLearn's per-LR dicts back
    lrs, types, raw, sig, pv = reference_interactions()
    per = d.interactions(LABEL).per_lr("pvals")
    assert list(per) == list(lrs) and np.array_equal(per[LR].to_numpy(), pv[list(lrs).index(LR)])
    # one LR column of each of stLearn's five matrices, from the dense obsm and from the sparse store
    rows = pd.Index(adata.obs_names).get_indexer(ds.obs_names)
    for lr in (LR, adata.uns["lr_summary"].index[400]):
        for key in STLEARN_RESULTS:
            va, vd = a.lr_values(lr, key), d.lr_values(lr, key)
            assert np.allclose(va[rows], vd, rtol=0, atol=1e-12), (lr, key)
    j = list(adata.uns["lr_summary"].index).index(LR)
    assert np.array_equal(a.lr_values(LR, "-log10(p_adjs)"), -np.log10(adata.obsm["p_adjs"][:, j]))
    # the stored sparse columns are streamed in row blocks; any block size, and pending (unwritten) results,
    # give the same column
    assert np.array_equal(d._sparse_column("p_adjs", j, 1.0, rows_per_read=333), d._sparse_column("p_adjs", j, 1.0))
    pending = stdask.read(ds.path)
    CCIResult.load(pending).store(pending)
    assert ("obsm", "lr_scores") in pending.pending
    for key in ("p_vals", "lr_sig_scores"):
        assert np.array_equal(pl.PlotData(pending).lr_values(LR, key), d.lr_values(LR, key))
    # a gene column, read lazily from the store's tiles
    g = adata.X[:, adata.var_names.get_loc("LAMC2")].toarray().ravel()
    assert np.array_equal(d.gene_values("LAMC2")[np.argsort(rows)], g)


def test_missing_results_say_what_to_run(adata):
    bare = ad.AnnData(X=np.ones((3, 2), np.float32), obs=pd.DataFrame({"t": list("aab")}, index=list("xyz")))
    bare.obsm["spatial"] = np.arange(6, dtype=float).reshape(3, 2)
    with pytest.raises(KeyError, match=r"stdask\.tl\.cci\.run\("):
        pl.lr_summary(bare)
    with pytest.raises(KeyError, match="run_cci"):
        pl.ccinet_plot(bare, "t")
    no_cci = adata.copy()
    for k in [k for k in no_cci.uns if "cci_" in k]:
        del no_cci.uns[k]
    no_cci.uns["lr_summary"] = no_cci.uns["lr_summary"][["n_spots", "n_spots_sig", "n_spots_sig_pval"]]
    with pytest.raises(KeyError, match=r"run_cci\(data, use_label\)"):
        pl.cci_check(no_cci)
    with pytest.raises(KeyError, match=r"no significant interactions for LR 'NOPE_NOPE'"):
        pl.ccinet_plot(adata, LABEL, lr="NOPE_NOPE")
    with pytest.raises(KeyError, match="not in lr_summary"):
        pl.lr_result_plot(adata, "NOPE_NOPE")
    with pytest.raises(ValueError, match="use_result"):
        pl.lr_result_plot(adata, LR, use_result="scores")
    with pytest.raises(KeyError, match="neither an obs column"):
        pl.spatial(adata, "NOT_A_THING")


# ---------------------------------------------------------------------------------------------------------
# LR overview plots
# ---------------------------------------------------------------------------------------------------------
def test_lr_overview_plots(data, adata, tmp_path):
    summary = adata.uns["lr_summary"]
    fig = pl.lr_diagnostics(data, highlight_lrs=[LR])
    assert list(fig.stdask_data["lrs"]) == list(summary.index)
    assert np.array_equal(fig.stdask_data["zero-prop"], adata.uns["lrfeatures"].loc[summary.index, "zero-prop"])
    check_saved(fig, tmp_path, "diag", data)
    assert fig.get_size_inches().tolist() == [10, 4]

    fig = pl.lr_summary(data, n_top=20, y="n_spots")
    assert np.array_equal(fig.stdask_data["y"], summary["n_spots"].to_numpy()[:20])
    assert len(fig.axes[0].texts) == 20  # names drawn when n_top <= max_text
    assert len(pl.lr_summary(data, n_top=60).axes[0].texts) == 0
    with pytest.raises(ValueError, match="must be one of"):
        pl.lr_summary(data, y="n_cci_sig_cell_type")
    with pytest.raises(ValueError, match="highlight_lrs"):
        pl.lr_summary(data, highlight_lrs=["X_Y"])

    fig = pl.lr_n_spots(data, n_top=30)
    sig = summary["n_spots_sig"].to_numpy()[:30]
    assert np.array_equal(fig.stdask_data["sig"], sig)
    assert np.array_equal(fig.stdask_data["non_sig"] + sig, summary["n_spots"].to_numpy()[:30])
    assert fig.axes[0].get_xlabel() == "LRs Ranked (n_spots_sig)"
    check_saved(fig, tmp_path, "bars", data)


# ---------------------------------------------------------------------------------------------------------
# cell-type interaction plots, checked against computations straight from stLearn's per-LR dicts
# ---------------------------------------------------------------------------------------------------------
def test_ccinet_plot(data, adata, tmp_path):
    cats = list(adata.obs[LABEL].cat.categories)
    for lr, min_counts in only_first_unless_anndata(data, ((None, 50), (LR, 0), (None, 0))):
        M = (adata.uns[f"lr_cci_{LABEL}"] if lr is None else adata.uns[f"per_lr_cci_{LABEL}"][lr])
        M = M.loc[cats, cats].to_numpy().astype(float)
        M = M * (M > min_counts)
        total = M.sum()
        fig = pl.ccinet_plot(data, LABEL, lr=lr, min_counts=min_counts)
        got = fig.stdask_data
        for i, t in enumerate(cats):
            expect = (M[i, :].sum() + M[:, i].sum() - M[i, i]) / total * 10000
            assert got["node_sizes"][t] == pytest.approx(expect if expect else 0.1)
        edges = {(a, b): (c, w) for a, b, c, w in got["edges"]}
        expect_edges = {(cats[i], cats[j]) for i in range(len(cats)) for j in range(len(cats)) if M[i, j] > 0}
        assert set(edges) == expect_edges
        for (a, b), (c, w) in edges.items():
            i, j = cats.index(a), cats.index(b)
            assert c == M[i, j] and w == pytest.approx(M[i, j] / (M[i, :].sum() + M[:, j].sum() - M[i, j]))
    # the same layout can be reused
    fig2 = pl.ccinet_plot(data, LABEL, lr=LR, pos=fig.stdask_data["pos"], node_size_exp=2, node_size_scaler=0.5)
    assert fig2.stdask_data["pos"].keys() == fig.stdask_data["pos"].keys()
    check_saved(fig2, tmp_path, "net", data)


def stlearn_chord_keep(flux, min_ints, n_top):
    total = flux.sum(axis=1) + flux.sum(axis=0) - flux.diagonal()
    keep = np.where(total > min_ints)[0]
    if len(keep) > n_top:
        keep = np.argsort(-total, kind="stable")[:n_top]
    alone = np.array([np.all(np.logical_and(flux[i, keep] == 0, flux[keep, i] == 0)) for i in keep], dtype=bool)
    return keep[~alone]


def test_chord_keep_rule():
    flux = np.array([[5, 0, 0, 0, 0],
                     [0, 0, 4, 0, 0],
                     [0, 3, 0, 0, 1],
                     [0, 0, 0, 0, 0],
                     [0, 0, 2, 0, 9]], dtype=float)
    # totals 5, 7, 8, 0, 12: type 3 fails min_ints; type 0 only self-interacts (kept, as in stLearn)
    assert chord_keep(flux, 2, 10).tolist() == [0, 1, 2, 4]
    # top 2 totals are types 4 and 2, which interact
    assert chord_keep(flux, 2, 2).tolist() == [4, 2]
    # the two largest types (0: 10, 1: 9) do not interact with each other: both dropped after the cut
    flux2 = np.zeros((6, 6))
    flux2[0, 2] = flux2[0, 4] = flux2[1, 5] = 5
    flux2[1, 3] = 4
    assert chord_keep(flux2, 0, 2).tolist() == []
    assert chord_keep(flux2, 0, 10).tolist() == [0, 1, 2, 3, 4, 5]
    assert chord_keep(np.zeros((3, 3)), 2, 10).tolist() == []
    rng = np.random.default_rng(0)
    for _ in range(50):
        f = rng.integers(0, 3, (7, 7)) * (rng.random((7, 7)) < 0.3)
        assert chord_keep(f, 1, 4).tolist() == stlearn_chord_keep(f.astype(float), 1, 4).tolist()


def test_lr_chord_plot(data, adata, tmp_path):
    cats = list(adata.obs[LABEL].cat.categories)
    lrs, types, raw, sig, pv = reference_interactions()
    for lr in only_first_unless_anndata(data, (None, LR, lrs[5])):
        M = adata.uns[f"lr_cci_{LABEL}"] if lr is None else adata.uns[f"per_lr_cci_{LABEL}"][lr]
        flux = M.loc[cats, cats].T.to_numpy().astype(float)  # computed on the transposed matrix
        keep = stlearn_chord_keep(flux, 2, 10)
        fig = pl.lr_chord_plot(data, LABEL, lr=lr)
        assert fig.stdask_data["kept"] == [cats[k] for k in keep]
        assert np.array_equal(fig.stdask_data["flux"], flux[np.ix_(keep, keep)])
    check_saved(fig, tmp_path, "chord", data)
    with pytest.warns(UserWarning, match="no interactions to display"):
        fig = pl.lr_chord_plot(data, LABEL, min_ints=10**9)
    assert fig.stdask_data["kept"] == []


def stlearn_lr_cci_table(per_lr: dict, summary_index, lrs=None, n_top_lrs=5, n_top_ccis=15, min_total=0):
    """stLearn 1.2.2's lr_cci_map table (loops over its dict), with Q14's min_total filter and stable ties."""
    n_top_lrs = len(lrs) if lrs is not None else n_top_lrs
    lrs = np.array(list(per_lr.keys()) if lrs is None else lrs)
    cell_types = list(per_lr.values())[0].index.values.astype(str)
    new = np.zeros((len(lrs), len(cell_types) ** 2))
    ccis = []
    for lr_i, lr in enumerate(lrs):
        col_i, ccis = 0, []
        values = per_lr[lr].values
        for c_i, ci in enumerate(cell_types):
            for c_j, cj in enumerate(cell_types):
                new[lr_i, col_i] = values[c_i, c_j]
                ccis.append(f"{ci}->{cj}")
                col_i += 1
    df = pd.DataFrame(new, index=lrs, columns=ccis)
    total = df.values.sum(axis=0)
    order = [i for i in np.argsort(-total, kind="stable") if total[i] > min_total]
    df = df.iloc[:, order[:n_top_ccis]]
    if n_top_lrs < len(lrs):
        df = df.loc[summary_index[:n_top_lrs], :]
    return df.iloc[np.argsort(-df.values.sum(axis=1), kind="stable"),
                   np.argsort(-df.values.sum(axis=0), kind="stable")]


def test_lr_cci_map(data, adata, tmp_path):
    per_lr = adata.uns[f"per_lr_cci_{LABEL}"]
    summary = adata.uns["lr_summary"].index
    for kw in only_first_unless_anndata(data, ({}, {"lrs": [LR, "MCAM_MCAM", "WNT7B_FZD4"], "min_total": 5},
                                              {"n_top_lrs": 8, "n_top_ccis": 6})):
        fig = pl.lr_cci_map(data, LABEL, **kw)
        got = fig.stdask_data["table"]
        expect = stlearn_lr_cci_table(per_lr, summary, **kw)
        assert list(got.index) == list(expect.index) and list(got.columns) == list(expect.columns), kw
        assert np.array_equal(got.to_numpy(), expect.to_numpy())
    # Q14: min_total is applied, every shown "A->B" column exceeds it over all tested LRs
    fig = pl.lr_cci_map(data, LABEL, min_total=40, n_top_ccis=36)
    totals = sum(df.to_numpy() for df in per_lr.values()).ravel()
    assert len(fig.stdask_data["table"].columns) == (totals > 40).sum()
    raw = pl.lr_cci_map(data, LABEL, sig_interactions=False).stdask_data["table"]
    pd.testing.assert_frame_equal(raw, stlearn_lr_cci_table(adata.uns[f"per_lr_cci_raw_{LABEL}"], summary),
                                  check_dtype=False, check_index_type=False, check_column_type=False)
    check_saved(fig, tmp_path, "lrccimap", data)
    with pytest.raises(ValueError, match="No interactions greater than min_total"):
        pl.lr_cci_map(data, LABEL, min_total=10**9)
    with pytest.raises(KeyError, match="no significant interactions"):
        pl.lr_cci_map(data, LABEL, lrs=["NOPE_X"])


def test_cci_map_order(data, adata, tmp_path):
    cats = list(adata.obs[LABEL].cat.categories)
    for lr, sig in only_first_unless_anndata(data, ((None, True), (LR, False))):
        M = adata.uns[f"lr_cci_{LABEL}"] if lr is None else adata.uns[f"per_lr_cci_raw_{LABEL}"][lr]
        M = M.loc[cats, cats]
        v = M.to_numpy()
        order = np.argsort(-(v.sum(1) + v.sum(0) - v.diagonal()), kind="stable")
        fig = pl.cci_map(data, LABEL, lr=lr, sig_interactions=sig)
        got = fig.stdask_data["matrix"]
        assert list(got.index) == [cats[i] for i in order]
        assert list(got.columns) == [cats[i] for i in order[::-1]]
        assert np.array_equal(got.to_numpy(), v[np.ix_(order, order[::-1])])
        assert fig.axes[0].get_ylabel() == "Sender" and fig.axes[0].get_xlabel() == "Receiver"
    check_saved(fig, tmp_path, "ccimap", data)


def test_cci_check(data, adata, tmp_path):
    labels = adata.obs[LABEL].astype(str).to_numpy()
    cats = list(adata.obs[LABEL].cat.categories)
    per_lr = adata.uns[f"per_lr_cci_{LABEL}"]
    cells, ints = [], []
    for label in cats:  # stLearn's loop
        cells.append(int((labels == label).sum()))
        n = 0
        for df in per_lr.values():
            k = np.where(df.index.values == label)[0][0]
            b = df.values > 0
            n += b[k, :].sum() + b[:, k].sum() - b[k, k]
        ints.append(int(n))
    order = np.argsort(cells, kind="stable")
    fig = pl.cci_check(data, LABEL)
    got = fig.stdask_data["counts"]
    assert list(got.index) == [cats[i] for i in order]
    assert got["n_cells"].tolist() == [cells[i] for i in order]
    assert got["n_interactions"].tolist() == [ints[i] for i in order]
    line = fig.axes[1].lines[0].get_ydata()
    assert np.array_equal(line, np.array(ints)[order])
    check_saved(fig, tmp_path, "check", data)


# ---------------------------------------------------------------------------------------------------------
# spatial maps
# ---------------------------------------------------------------------------------------------------------
def legend_colours(fig, labels) -> np.ndarray:
    """(n, 4) RGBA of each observation's label, as the figure's legend assigns colours to labels."""
    lut = {h.get_label(): matplotlib.colors.to_rgba(h.get_color()) for h in fig.axes[0].get_legend().legend_handles}
    return np.array([lut[str(c)] for c in labels])


def test_spatial_obs_gene_and_lr(data, tmp_path):
    coords, cell_type = pl.PlotData(data).coords, data.obs[LABEL].to_numpy()
    fig = pl.spatial(data, LABEL)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [f"CT{i}" for i in range(6)]
    assert len(fig.axes) == 1 and fig.stdask_data["mode"] == "scatter"
    check_saved(fig, tmp_path, "labels", data)
    # the pixel under every cell has its cell type's legend colour (a cell one place off: ~2/3 of them)
    assert share_matching(colours_at(fig, ax, coords), legend_colours(fig, cell_type)) >= 0.99
    fig = pl.spatial(data, "total_counts")
    assert len(fig.axes) == 2  # colour bar
    v = data.obs["total_counts"].to_numpy(np.float64)
    want = matplotlib.colormaps["viridis"](matplotlib.colors.Normalize(v.min(), v.max())(v))
    assert share_matching(colours_at(fig, fig.axes[0], coords), want) >= 0.99
    fig = pl.spatial(data, "LAMC2", raster=True)
    assert fig.stdask_data["mode"] == "raster" and len(fig.axes[0].images) == 1
    assert_drawn(fig)
    fig = pl.spatial(data, LR, use_result="-log10(p_adjs)")
    assert fig.axes[1].get_ylabel() == "-log10(p_adjs)"
    fig = pl.lr_result_plot(data, LR, save=tmp_path / "lr.png")
    assert png_size(tmp_path / "lr.png") == (700, 600) and (tmp_path / "lr.pdf").stat().st_size > 0
    # a categorical raster keeps the legend and one image
    fig = pl.spatial(data, LABEL, raster=True, figsize=(5, 5), dpi=80)
    assert len(fig.axes[0].images) == 1 and fig.axes[0].get_legend() is not None
    check_saved(fig, tmp_path, "labels_raster", data)
    assert share_matching(colours_at(fig, fig.axes[0], coords), legend_colours(fig, cell_type)) >= 0.99


def test_spatial_a_million_points_is_one_image(tmp_path):
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 5000, (1_000_000, 2))
    v = np.sin(xy[:, 0] / 500.0)
    fig = pl.spatial(xy, v, agg="max")
    ax = fig.axes[0]
    assert fig.stdask_data["mode"] == "raster"
    assert len(ax.images) == 1 and len(ax.collections) == 0
    check_saved(fig, tmp_path, "million")
    # a pixel shows the largest value of its ~10 x 10 units, where sin(x / 500) moves by < 0.02
    some = rng.choice(len(xy), 5000, replace=False)
    some = some[off_frame(ax, xy[some])]
    want = matplotlib.colormaps["viridis"](matplotlib.colors.Normalize(v.min(), v.max())(v[some]))
    assert share_matching(colours_at(fig, ax, xy[some]), want, tol=6) >= 0.99  # 0.36 for x shifted by 30
    cats = np.where(xy[:, 1] < 2500, "top", "bottom")
    fig = pl.spatial(xy, cats)
    assert len(fig.axes[0].images) == 1 and len(fig.axes[0].collections) == 0
    away = some[np.abs(xy[some, 1] - 2500) > 3 * fig.stdask_data["pixel"]]  # pixels that hold one category
    assert share_matching(colours_at(fig, fig.axes[0], xy[away]), legend_colours(fig, cats[away])) == 1.0


def test_rasterize_aggregates_per_pixel():
    from stdask.pl.spatial import rasterize

    xy = np.array([[0.5, 0.5], [0.6, 0.4], [1.5, 0.5], [0.5, 1.5], [0.4, 1.6], [0.3, 1.2]])
    v = np.array([1.0, 3.0, 5.0, 2.0, np.nan, 4.0])
    mean = rasterize(xy, v, "numeric", extent=(0, 0, 1, 1), shape=(2, 2), agg="mean")
    assert mean[0, 0] == 2.0 and mean[0, 1] == 5.0 and mean[1, 0] == 3.0 and np.isnan(mean[1, 1])
    assert rasterize(xy, v, "numeric", extent=(0, 0, 1, 1), shape=(2, 2), agg="max")[0, 0] == 3.0
    assert rasterize(xy, v, "numeric", extent=(0, 0, 1, 1), shape=(2, 2), agg="min")[1, 0] == 2.0
    codes = np.array([1, 1, 0, 2, 0, 0])
    cat = rasterize(xy, codes, "categorical", extent=(0, 0, 1, 1), shape=(2, 2))
    assert cat.tolist() == [[1, 0], [0, -1]]
    # empty pixels within the radius take their nearest filled pixel's value
    assert rasterize(xy, codes, "categorical", extent=(0, 0, 1, 1), shape=(2, 2), radius_px=1)[1, 1] in (0, 1)


def test_spatial_background_image(tmp_path):
    img = np.zeros((50, 100, 3))  # black, the right half white, the top left quarter red
    img[:, 50:] = 1.0
    img[:25, :50, 0] = 1.0
    path = tmp_path / "tissue.png"
    matplotlib.image.imsave(path, img)
    xy = np.array([[10.0, 10.0], [90.0, 40.0], [50.0, 25.0]])
    fig = pl.spatial(xy, np.array([1.0, 2.0, 3.0]), image=path, extent=(0, 200, 0, 100))
    ax = fig.axes[0]
    assert len(ax.images) == 1 and tuple(ax.images[0].get_extent()) == (0, 200, 100, 0)
    check_saved(fig, tmp_path, "image")
    # image pixels land at their extent (x 0-200, rows 0-49 at y 0-100, y downwards), cells on top
    spots = np.array([[30.0, 20.0], [30.0, 60.0], [110.0, 60.0], *xy])
    want = [(1, 0, 0, 1), (0, 0, 0, 1), (1, 1, 1, 1), *matplotlib.colormaps["viridis"]([0.0, 0.5, 1.0])]
    assert share_matching(colours_at(fig, ax, spots), np.array(want)) == 1.0


def test_show_never_blocks(adata, monkeypatch):
    """Every plot: show=False leaves pyplot untouched (no figure registered, no show call), so loops that draw
    hundreds of plots hold no figures; show=True registers the figure and shows it with block=False."""
    import matplotlib.pyplot as plt

    calls = []
    monkeypatch.setattr(plt, "show", lambda *args, **kwargs: calls.append((args, kwargs)))
    plt.close("all")
    xy = np.random.default_rng(1).uniform(0, 10, (100, 2))
    plots = {"spatial": lambda **kw: pl.spatial(xy, xy[:, 0], **kw),
             "lr_result_plot": lambda **kw: pl.lr_result_plot(adata, LR, **kw),
             "lr_summary": lambda **kw: pl.lr_summary(adata, **kw),
             "lr_diagnostics": lambda **kw: pl.lr_diagnostics(adata, **kw),
             "lr_n_spots": lambda **kw: pl.lr_n_spots(adata, **kw),
             **{f.__name__: (lambda f: lambda **kw: f(adata, LABEL, **kw))(f)
                for f in (pl.ccinet_plot, pl.lr_chord_plot, pl.lr_cci_map, pl.cci_map, pl.cci_check)}}
    for name, plot in plots.items():
        fig = plot(show=False)
        assert plt.get_fignums() == [] and calls == [], name
        fig = plot(show=True)
        assert [plt.figure(n) for n in plt.get_fignums()] == [fig], name
        assert calls == [((), {"block": False})], (name, calls)
        plt.close("all")
        calls.clear()


def test_type_order_colours_and_stale_results():
    """Categories order the types (an unused category is skipped, a type outside the categories goes last),
    stored label colours are used, a type run_cci did not see counts 0 in cci_check, stale results warn."""
    obs = pd.DataFrame({"t": pd.Categorical(list("aabbcc"), categories=["c", "a", "b", "z"])},
                       index=[f"cell{i}" for i in range(6)])
    a = ad.AnnData(X=np.ones((6, 2), np.float32), obs=obs)
    a.obsm["spatial"] = np.column_stack([np.arange(6.0), np.zeros(6)])
    a.uns["t_colors"] = ["#0000ff", "#ff0000", "#00ff00", "#000000"]
    a.uns["lr_summary"] = pd.DataFrame({"n_spots": [5, 4], "n_spots_sig": [3, 2], "n_spots_sig_pval": [3, 3]},
                                       index=["L1_R1", "L2_R2"])
    types = np.array(["a", "b", "c", "extra"])
    sig = np.zeros((2, 4, 4), np.int64)
    sig[0, 0, 1] = 2  # a -> b
    sig[1, 2, 2] = 1  # c -> c
    sig[1, 3, 0] = 4  # extra -> a
    a.uns["cci_interactions_t"] = {"lrs": np.array(["L1_R1", "L2_R2"]), "types": types, "raw": sig * 2, "sig": sig,
                                   "pvals": np.where(sig > 0, 0.01, 1.0), "n_perms": 100, "seed": 0,
                                   "p_cutoff": 0.05, "stale": True}
    p = pl.PlotData(a)
    with pytest.warns(UserWarning, match="stale|predate"):
        m = p.cci_matrix(None, "L2_R2")
    assert list(m.index) == ["c", "a", "b", "extra"] and m.loc["extra", "a"] == 4 and m.loc["c", "c"] == 1
    assert p.label_colors("t", ["a", "extra"])[0] == matplotlib.colors.to_rgba("#ff0000")
    counts = pl.cci_check(p).stdask_data["counts"]
    assert counts.to_dict("index") == {"z": {"n_cells": 0, "n_interactions": 0},
                                       "c": {"n_cells": 2, "n_interactions": 1},
                                       "a": {"n_cells": 2, "n_interactions": 2},
                                       "b": {"n_cells": 2, "n_interactions": 1}}
    fig = pl.spatial(p, "t")
    handles = fig.axes[0].get_legend().legend_handles
    assert [h.get_label() for h in handles] == ["c", "a", "b", "z"]
    assert matplotlib.colors.to_hex(handles[1].get_color()) == "#ff0000"
    # ccinet: the whole-matrix sum is used when lr_cci_<label> is not stored
    net = pl.ccinet_plot(p).stdask_data
    assert {(x, y) for x, y, _, _ in net["edges"]} == {("a", "b"), ("c", "c"), ("extra", "a")}
