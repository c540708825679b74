"""Cell-type x cell-type interaction plots (``stdask.tl.cci.run_cci`` results): stLearn's ``ccinet_plot``,
``lr_chord_plot``, ``lr_cci_map``, ``cci_map`` and ``cci_check`` (spec §13).

"Matrix" means: with ``lr=None``, ``lr_cci_<label>`` (``sig_interactions=True``) or ``lr_cci_raw_<label>``;
otherwise the LR's ``per_lr_cci_<label>`` or ``per_lr_cci_raw_<label>`` entry. Rows are senders (the type
of the significant cell), columns receivers, re-indexed to ``obs[use_label].cat.categories``.

Each function returns the matplotlib Figure, writes ``<save>.png`` / ``.pdf`` on request and records what it
drew in ``fig.stdask_data``. The computations are separate functions (``ccinet_layout``, ``chord_keep``,
``lr_cci_table``, ``cci_map_order``, ``cci_check_counts``) so they can be checked without a figure.
"""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from .plotdata import MissingResultError, as_plotdata
from .figures import finish, new_figure

_GREY = (0.7, 0.7, 0.7, 0.4)


def _stable_desc(x: np.ndarray) -> np.ndarray:
    """Indices sorting ``x`` descending; ties keep their order."""
    return np.argsort(-np.asarray(x, dtype=np.float64), kind="stable")


def _matrix(pdata, use_label, lr, sig_interactions) -> tuple[str, pd.DataFrame]:
    label = pdata.resolve_label(use_label)
    if lr is not None:
        pdata.interactions(label).index(lr)  # "no significant interactions for LR ..." when untested
    return label, pdata.cci_matrix(label, lr, sig_interactions)


# ---------------------------------------------------------------------------------------------------------
# ccinet_plot
# ---------------------------------------------------------------------------------------------------------
def circular_layout(types) -> dict:
    """networkx's circular layout: type k of n at angle 2πk/n on the unit circle (one type: the origin)."""
    types = list(types)
    if len(types) == 1:
        return {types[0]: np.zeros(2)}
    theta = np.linspace(0, 1, len(types) + 1)[:-1] * 2 * np.pi
    return {t: np.array([np.cos(a), np.sin(a)]) for t, a in zip(types, theta)}


def ccinet_layout(M: np.ndarray, min_counts: float = 0, node_size_exp: float = 1, node_size_scaler: float = 1):
    """Edges and node sizes of stLearn's interaction network.

    Parameters
    ----------
    M
        (T, T) counts, rows = sender, columns = receiver.

    Returns
    -------
    (M0, node_sizes, edges): M0 = M with entries <= ``min_counts`` zeroed; node_sizes (T,) float64 =
    ((row_a + col_a - M0[a,a]) / total x 10^4 x scaler)^exp with 0 -> 0.1; edges = list of
    (a, b, count, w) for M0[a,b] > ``min_counts`` (self-loops included), w = M0[a,b] / (row_a + col_b -
    M0[a,b]) in (0, 1], the edge's Blues colour value.
    """
    M = np.asarray(M, dtype=np.float64)
    keep = M > min_counts
    M0 = M * keep
    total = M0.sum()
    row, col = M0.sum(axis=1), M0.sum(axis=0)
    inv = row + col - np.diag(M0)
    with np.errstate(invalid="ignore", divide="ignore"):
        sizes = ((inv / total if total > 0 else np.zeros_like(inv)) * 10000 * node_size_scaler) ** node_size_exp
    sizes = np.where(np.isfinite(sizes) & (sizes != 0), sizes, 0.1)
    edges = []
    for a, b in zip(*np.nonzero(keep)):
        w = M0[a, b] / (row[a] + col[b] - M0[a, b])
        edges.append((int(a), int(b), float(M0[a, b]), float(w)))
    return M0, sizes, edges


def ccinet_plot(data, use_label: str | None = None, lr: str | None = None, pos: dict | None = None, *,
                min_counts: float = 0, sig_interactions: bool = True, node_size_exp: float = 1,
                node_size_scaler: float = 1, pad: float = 0.25, font_size: float = 12, title: str | None = None,
                figsize: tuple[float, float] = (10, 10), dpi: float | None = None, save=None, show: bool = False):
    """Directed network of cell-type interactions (stLearn ``ccinet_plot``).

    Nodes are the types (circular layout unless ``pos`` is given), sized by the interactions they take part
    in; an edge a -> b (self-loops included) where M[a,b] > ``min_counts``, coloured Blues(w) with w =
    M[a,b] / (row_a + col_b - M[a,b]) (see :func:`ccinet_layout`).

    Parameters
    ----------
    data
        AnnData or SpatialDataset with ``run_cci`` results.
    use_label
        The label ``run_cci`` used (default: the only one stored).
    lr
        One LR, or ``None`` for all LRs together.
    pos
        Type -> (x, y); reuse ``fig.stdask_data['pos']`` for the same layout across LRs.

    Returns
    -------
    matplotlib Figure (``fig.stdask_data``: ``types``, ``matrix``, ``node_sizes``, ``edges``, ``pos``).
    """
    import matplotlib
    from matplotlib.patches import Arc, FancyArrowPatch

    pdata = as_plotdata(data)
    label, df = _matrix(pdata, use_label, lr, sig_interactions)
    types = list(df.index)
    M0, sizes, edges = ccinet_layout(df.to_numpy(), min_counts, node_size_exp, node_size_scaler)
    pos = circular_layout(types) if pos is None else {t: np.asarray(pos[t], dtype=np.float64) for t in types}
    xy = np.array([pos[t] for t in types])
    colors = pdata.label_colors(label, types)
    blues = matplotlib.colormaps["Blues"]

    fig = new_figure(figsize, dpi, show, facecolor=_GREY)
    ax = fig.add_axes((0.03, 0.03, 0.82, 0.88))
    ax.set_facecolor((0, 0, 0, 0))
    lo, hi = xy.min(axis=0) - 0.15 - pad, xy.max(axis=0) + 0.15 + pad
    ax.set_xlim(lo[0], hi[0])
    ax.set_ylim(lo[1], hi[1])
    ax.set_aspect("equal", adjustable="box")
    ax.axis("off")
    ppu = 0.82 * figsize[0] * 72 / (hi[0] - lo[0])  # points per data unit (approximate, equal aspect)
    radius_pt = np.sqrt(sizes) / 2
    for a, b, count, w in edges:
        if a == b:
            u = xy[a] / (np.linalg.norm(xy[a]) or 1.0)
            if not np.linalg.norm(xy[a]):
                u = np.array([0.0, 1.0])
            r_node = radius_pt[a] / ppu
            lr_ = 0.08
            c = xy[a] + u * (r_node + 0.6 * lr_)
            face = np.degrees(np.arctan2(-u[1], -u[0]))
            ax.add_patch(Arc(c, 2 * lr_, 2 * lr_, theta1=face + 40, theta2=face + 320, lw=4, color=blues(w),
                             zorder=1))
        else:
            ax.add_patch(FancyArrowPatch(xy[a], xy[b], arrowstyle="-|>", mutation_scale=25, lw=4, color=blues(w),
                                         connectionstyle="arc3,rad=0.12", shrinkA=radius_pt[a],
                                         shrinkB=radius_pt[b], zorder=1))
    ax.scatter(xy[:, 0], xy[:, 1], s=sizes, c=colors, zorder=2, edgecolors="none")
    for t, p in zip(types, xy):
        ax.text(p[0], p[1], t, ha="center", va="center", fontsize=font_size, fontweight="bold", zorder=3)
    cax = fig.add_axes((0.88, 0.3, 0.02, 0.4))
    cb = fig.colorbar(matplotlib.cm.ScalarMappable(norm=matplotlib.colors.Normalize(0, 1), cmap=blues), cax=cax)
    cb.set_label("edge share: M[a,b] / (out_a + in_b - M[a,b])", fontsize=8)
    fig.suptitle(title if title is not None else
                 (f"Cell-Cell {lr} interactions" if lr is not None else "Cell-Cell LR Interactions"), fontsize=20)
    fig.stdask_data = {"types": types, "matrix": M0, "node_sizes": dict(zip(types, sizes)),
                       "edges": [(types[a], types[b], c, w) for a, b, c, w in edges], "pos": pos}
    return finish(fig, save, show)


# ---------------------------------------------------------------------------------------------------------
# lr_chord_plot
# ---------------------------------------------------------------------------------------------------------
def chord_keep(flux: np.ndarray, min_ints: float = 2, n_top_ccis: int = 10) -> np.ndarray:
    """Indices of the types a chord diagram shows (stLearn's rule, on the transposed matrix ``flux``).

    total_t = row + column - diagonal; keep totals > ``min_ints``; if more than ``n_top_ccis`` remain, the
    ``n_top_ccis`` largest totals (descending; ties in order); then drop kept types whose row and column
    are zero over the kept types (a self-interaction counts, as in stLearn 1.2.2).
    """
    flux = np.asarray(flux, dtype=np.float64)
    total = flux.sum(axis=1) + flux.sum(axis=0) - np.diag(flux)
    keep = np.flatnonzero(total > min_ints)
    if len(keep) > n_top_ccis:
        keep = _stable_desc(total)[:n_top_ccis]
    if len(keep) == 0:
        return keep
    sub = flux[np.ix_(keep, keep)]
    alone = (sub == 0).all(axis=1) & (sub == 0).all(axis=0)
    return keep[~alone]


def _arc_points(r: float, a0: float, a1: float, n: int | None = None) -> np.ndarray:
    n = n or max(2, int(abs(a1 - a0) / np.radians(2)) + 2)
    t = np.linspace(a0, a1, n)
    return np.column_stack([r * np.cos(t), r * np.sin(t)])


def _ribbon(r: float, a: tuple[float, float], b: tuple[float, float]):
    """Closed path: along the circle over ``a``, a quadratic Bezier through the centre to ``b``, along ``b``
    and back through the centre."""
    from matplotlib.path import Path

    pa, pb = _arc_points(r, *a), _arc_points(r, *b)
    verts = [pa[0], *pa[1:], (0.0, 0.0), pb[0], *pb[1:], (0.0, 0.0), pa[0], pa[0]]
    codes = ([Path.MOVETO] + [Path.LINETO] * (len(pa) - 1) + [Path.CURVE3, Path.CURVE3]
             + [Path.LINETO] * (len(pb) - 1) + [Path.CURVE3, Path.CURVE3, Path.CLOSEPOLY])
    return Path(np.asarray(verts, dtype=np.float64), codes)


def _petal(r: float, a0: float, a1: float):
    """Closed path of a self ribbon: along the circle from a0 to a1, back through the centre."""
    from matplotlib.path import Path

    pa = _arc_points(r, a0, a1)
    verts = [*pa, (0.0, 0.0), pa[0], pa[0]]
    codes = [Path.MOVETO] + [Path.LINETO] * (len(pa) - 1) + [Path.CURVE3, Path.CURVE3, Path.CLOSEPOLY]
    return Path(np.asarray(verts, dtype=np.float64), codes)


def draw_chord(ax, flux: np.ndarray, names, colors, *, label_size: float = 10, gap_deg: float = 2.0,
               min_arc_frac: float = 0.01) -> dict:
    """Draw a chord diagram of ``flux`` (n x n, >= 0) on ``ax`` with matplotlib patches.

    Type i gets an outer arc proportional to its row sum (at least ``min_arc_frac`` of the circle). The
    ribbon between i and j is flux[i,j] wide at i's arc and flux[j,i] wide at j's arc; a self ribbon
    returns to its own arc. A ribbon takes the colour of the larger end's partner (the dominant sender when
    ``flux`` is the transposed sender x receiver matrix).

    Returns
    -------
    dict: name -> (start, end) angle in degrees of its arc.
    """
    from matplotlib.patches import PathPatch, Wedge

    flux = np.asarray(flux, dtype=np.float64)
    n = len(flux)
    rows = flux.sum(axis=1)
    gap = np.radians(gap_deg if n > 1 else 0.0)
    free = 2 * np.pi - gap * n
    frac = rows / rows.sum() if rows.sum() > 0 else np.full(n, 1.0 / n)
    frac = np.maximum(frac, min_arc_frac)
    frac = frac / frac.sum()
    span = frac * free
    start = np.concatenate([[0.0], np.cumsum(span + gap)[:-1]]) + np.pi / 2
    r = 1.0
    arcs = {}
    seg = {}
    for i in range(n):
        arcs[names[i]] = (np.degrees(start[i]), np.degrees(start[i] + span[i]))
        ax.add_patch(Wedge((0, 0), r + 0.1, arcs[names[i]][0], arcs[names[i]][1], width=0.08, color=colors[i],
                           lw=0))  # outer ring 1.02..1.10; ribbons end at r = 1
        mid = start[i] + span[i] / 2
        ax.text(1.25 * np.cos(mid), 1.25 * np.sin(mid), names[i], ha="center", va="center", fontsize=label_size,
                rotation=0)
        scale = span[i] / rows[i] if rows[i] > 0 else 0.0
        a = start[i]
        order = [i] + [j for j in range(n) if j != i]
        for j in order:
            w = flux[i, j] * scale
            seg[(i, j)] = (a, a + w)
            a += w
    for i in range(n):
        for j in range(i, n):
            if flux[i, j] <= 0 and flux[j, i] <= 0:
                continue
            col = colors[j] if flux[i, j] >= flux[j, i] else colors[i]
            if i == j:
                path = _petal(r, *seg[(i, i)])
            else:
                path = _ribbon(r, seg[(i, j)], seg[(j, i)][::-1])
            ax.add_patch(PathPatch(path, facecolor=col, edgecolor=col, alpha=0.6, lw=0.3))
    ax.set_xlim(-1.35, 1.35)
    ax.set_ylim(-1.35, 1.35)
    ax.set_aspect("equal")
    ax.axis("off")
    return arcs


def lr_chord_plot(data, use_label: str | None = None, lr: str | None = None, min_ints: float = 2,
                  n_top_ccis: int = 10, *, sig_interactions: bool = True, label_size: float = 10,
                  title: str | None = None, figsize: tuple[float, float] = (8, 8), dpi: float | None = None, save=None,
                  show: bool = False):
    """Chord diagram of cell-type interactions (stLearn ``lr_chord_plot``).

    The matrix is transposed first (row = receiver), so a type's arc is proportional to the signals it
    receives, and the ribbon between a and b is M[b,a] wide at a and M[a,b] wide at b. Types shown:
    :func:`chord_keep`. When no type is left, a warning is issued and the figure says so.

    Returns
    -------
    matplotlib Figure (``fig.stdask_data``: ``kept`` type names, ``flux`` = kept transposed matrix).
    """
    pdata = as_plotdata(data)
    label, df = _matrix(pdata, use_label, lr, sig_interactions)
    flux_df = df.T
    flux = flux_df.to_numpy(dtype=np.float64)
    keep = chord_keep(flux, min_ints, n_top_ccis)
    names = [str(x) for x in flux_df.index[keep]]
    fig = new_figure(figsize, dpi, show)
    ax = fig.add_axes((0.02, 0.02, 0.96, 0.9))
    if len(keep) == 0:
        warnings.warn(f"for {lr if lr is not None else 'all LRs'} at min_ints={min_ints} there are no interactions "
                      "to display; lower min_ints", stacklevel=2)
        ax.axis("off")
        ax.text(0.5, 0.5, f"no interactions above min_ints={min_ints}", ha="center", va="center",
                transform=ax.transAxes)
        sub = np.zeros((0, 0))
    else:
        sub = flux[np.ix_(keep, keep)]
        draw_chord(ax, sub, names, pdata.label_colors(label, names), label_size=label_size)
    fig.suptitle(title if title is not None else
                 (f"Cell-Cell {lr} interactions" if lr is not None else "Cell-Cell LR Interactions"), fontsize=14)
    fig.stdask_data = {"kept": names, "flux": sub}
    return finish(fig, save, show)


# ---------------------------------------------------------------------------------------------------------
# heatmaps
# ---------------------------------------------------------------------------------------------------------
def _box_map(fig, ax, values: np.ndarray, rows, cols, *, cmap: str, square_scaler: float, xlabel: str,
             ylabel: str) -> None:
    """Squares sized and coloured by ``values`` (rows listed top to bottom)."""
    import matplotlib

    nr, nc = values.shape
    yy, xx = np.meshgrid(np.arange(nr), np.arange(nc), indexing="ij")
    v = values.ravel().astype(np.float64)
    tot = v.sum()
    s = v / tot * square_scaler if tot > 0 else np.zeros_like(v)
    norm = matplotlib.colors.Normalize(v.min() if len(v) else 0, max(v.max() if len(v) else 1, 1e-12))
    sc = ax.scatter(xx.ravel(), yy.ravel(), s=s, c=v, cmap=cmap, norm=norm, marker="s")
    cb = fig.colorbar(sc, ax=ax)
    cb.ax.get_yaxis().labelpad = 15
    cb.ax.set_ylabel("# of interactions", rotation=270)
    ax.set_xticks(np.arange(nc))
    ax.set_xticklabels(list(cols), rotation=45, ha="right")
    ax.set_yticks(np.arange(nr))
    ax.set_yticklabels(list(rows))
    ax.set_xlim(-0.5, nc - 0.5)
    ax.set_ylim(nr - 0.5, -0.5)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)


def lr_cci_table(counts: np.ndarray, lrs, types, summary_order=None, *, rows=None, n_top_lrs: int = 5,
                 n_top_ccis: int = 15, min_total: float = 0) -> pd.DataFrame:
    """The LR x "A->B" table ``lr_cci_map`` draws.

    Parameters
    ----------
    counts
        (n_lr, T, T) per-LR matrices (rows = sender) of the LRs ``lrs``, types ``types``.
    summary_order
        ``lr_summary`` index (the LR ranking) for ``rows=None``.
    rows
        LRs to show (all kept), or ``None``: the first ``n_top_lrs`` LRs of ``summary_order`` that were
        tested (all tested LRs when there are no more than ``n_top_lrs``).

    Columns ``"A->B"`` for every ordered type pair; totals over all LRs of ``lrs`` (when ``rows`` is None)
    or over ``rows``; columns with total <= ``min_total`` are dropped (Q14: applied, unlike stLearn 1.2.2),
    then the ``n_top_ccis`` largest totals are kept. Rows and columns are then sorted by descending totals
    of the shown table (ties keep their order).
    """
    lrs = [str(x) for x in lrs]
    types = [str(t) for t in types]
    T = len(types)
    flat = np.asarray(counts, dtype=np.float64).reshape(len(lrs), T * T)
    ccis = [f"{a}->{b}" for a in types for b in types]
    table = pd.DataFrame(flat, index=pd.Index(lrs, dtype=object), columns=pd.Index(ccis, dtype=object))
    if rows is not None:
        rows = [rows] if isinstance(rows, str) else [str(r) for r in rows]
        table = table.loc[rows]
    total = table.to_numpy().sum(axis=0)
    cand = np.flatnonzero(total > min_total)
    cand = cand[_stable_desc(total[cand])][:n_top_ccis]
    table = table.iloc[:, cand]
    if rows is None and n_top_lrs < len(lrs):
        tested = set(lrs)
        order = [lr for lr in (summary_order if summary_order is not None else lrs) if lr in tested]
        table = table.loc[order[:n_top_lrs]]
    v = table.to_numpy()
    return table.iloc[_stable_desc(v.sum(axis=1)), _stable_desc(v.sum(axis=0))]


def lr_cci_map(data, use_label: str | None = None, lrs=None, n_top_lrs: int = 5, n_top_ccis: int = 15,
               min_total: float = 0, *, sig_interactions: bool = True, cmap: str = "Spectral_r",
               square_scaler: float = 700, figsize: tuple[float, float] = (6.48, 4.8), dpi: float | None = None,
               save=None, show: bool = False):
    """Heatmap of LRs x cell-type interactions "A->B" (stLearn ``lr_cci_map``); see :func:`lr_cci_table`.

    Raises ``ValueError`` when no interaction has a total above ``min_total``.

    Returns
    -------
    matplotlib Figure (``fig.stdask_data['table']``: the DataFrame drawn).
    """
    pdata = as_plotdata(data)
    it = pdata.interactions(use_label)
    counts = it.counts(sig_interactions)
    if lrs is not None:
        lrs = [lrs] if isinstance(lrs, str) else list(lrs)
        for lr in lrs:
            it.index(lr)
    summary_order = list(pdata.lr_summary().index) if lrs is None else None
    table = lr_cci_table(counts, it.lrs, it.types, summary_order, rows=lrs, n_top_lrs=n_top_lrs,
                         n_top_ccis=n_top_ccis, min_total=min_total)
    if table.shape[0] == 0 or table.shape[1] == 0:
        raise ValueError(f"No interactions greater than min_total ({min_total}) for the selected LRs")
    fig = new_figure(figsize, dpi, show)
    ax = fig.add_subplot(1, 1, 1)
    _box_map(fig, ax, table.to_numpy(), table.index, table.columns, cmap=cmap, square_scaler=square_scaler,
             xlabel="Cell-cell interaction", ylabel="LR-pair")
    fig.tight_layout()
    fig.stdask_data = {"table": table}
    return finish(fig, save, show)


def cci_map_order(df: pd.DataFrame) -> pd.DataFrame:
    """Rows by descending total_t = row + column - diagonal (ties in order), columns in the reverse order."""
    v = df.to_numpy(dtype=np.float64)
    order = _stable_desc(v.sum(axis=1) + v.sum(axis=0) - np.diag(v))
    return df.iloc[order, order[::-1]]


def cci_map(data, use_label: str | None = None, lr: str | None = None, *, sig_interactions: bool = True,
            cmap: str = "Spectral_r", square_scaler: float = 700, title: str | None = None,
            figsize: tuple[float, float] | None = None, dpi: float | None = None, save=None, show: bool = False):
    """Sender (rows) x receiver (columns) heatmap of interaction counts (stLearn ``cci_map``).

    Order: :func:`cci_map_order`. Default size (6.4 + 0.1 T, 4.8 + 0.05 T) inches for T types.

    Returns
    -------
    matplotlib Figure (``fig.stdask_data['matrix']``: the ordered DataFrame).
    """
    pdata = as_plotdata(data)
    _, df = _matrix(pdata, use_label, lr, sig_interactions)
    df = cci_map_order(df)
    T = df.shape[0]
    figsize = figsize or (6.4 + 0.1 * T, 4.8 + 0.05 * T)
    fig = new_figure(figsize, dpi, show)
    ax = fig.add_subplot(1, 1, 1)
    _box_map(fig, ax, df.to_numpy(), df.index, df.columns, cmap=cmap, square_scaler=square_scaler,
             xlabel="Receiver", ylabel="Sender")
    fig.suptitle(title if title is not None else
                 (f"Cell-Cell {lr} interactions" if lr is not None else "Cell-Cell LR Interactions"))
    fig.tight_layout()
    fig.stdask_data = {"matrix": df}
    return finish(fig, save, show)


# ---------------------------------------------------------------------------------------------------------
# cci_check
# ---------------------------------------------------------------------------------------------------------
def cci_check_counts(sig: np.ndarray, types, labels) -> pd.DataFrame:
    """Cells per type and significant (LR, partner type) interactions per type.

    Parameters
    ----------
    sig
        (n_lr, T, T) significant counts sig_M of the types ``types``.
    labels
        pd.Categorical of ``obs[use_label]``; one row per category.

    Returns
    -------
    DataFrame indexed by type (category order): ``n_cells`` and ``n_interactions`` = Σ over LRs of
    #{b : sig_M[t,b] > 0} + #{a : sig_M[a,t] > 0} - 1(sig_M[t,t] > 0) (0 for a type ``run_cci`` did not see).
    """
    B = np.asarray(sig) > 0
    per_type = (B.sum(axis=2) + B.sum(axis=1) - np.diagonal(B, axis1=1, axis2=2)).sum(axis=0) if len(B) else \
        np.zeros(len(types), np.int64)
    lut = dict(zip([str(t) for t in types], per_type.astype(np.int64)))
    cats = [str(c) for c in labels.categories]
    n_cells = np.bincount(np.asarray(labels.codes)[np.asarray(labels.codes) >= 0], minlength=len(cats))
    return pd.DataFrame({"n_cells": n_cells.astype(np.int64), "n_interactions": [int(lut.get(c, 0)) for c in cats]},
                        index=pd.Index(cats, dtype=object))


def cci_check(data, use_label: str | None = None, *, figsize: tuple[float, float] = (12, 7),
              cell_label_size: float = 12, axis_text_size: float = 12, tick_size: float = 10,
              dpi: float | None = None, save=None, show: bool = False):
    """Cell-type frequency (bars) against significant CCI-LR interactions (line) per type (stLearn
    ``cci_check``); see :func:`cci_check_counts`. Types in ascending cell count (ties in category order),
    bars in the label colours. Little correlation is expected; a strong one suggests more permutations.

    Returns
    -------
    matplotlib Figure (``fig.stdask_data['counts']``: the DataFrame in plotted order).
    """
    pdata = as_plotdata(data)
    label = pdata.resolve_label(use_label)
    it = pdata.interactions(label)
    labels = pdata.labels(label)
    counts = cci_check_counts(it.counts(True), it.types, labels)
    colors = pdata.label_colors(label, counts.index)
    order = np.argsort(counts["n_cells"].to_numpy(), kind="stable")
    counts = counts.iloc[order]
    colors = [colors[i] for i in order]
    xs = np.arange(len(counts))
    fig = new_figure(figsize, dpi, show)
    ax = fig.add_subplot(1, 1, 1)
    ax.bar(xs, counts["n_cells"].to_numpy(), color=colors)
    dist = max(1, counts["n_cells"].max()) * 0.015
    for x, (t, n) in zip(xs, counts["n_cells"].items()):
        ax.text(x, n + dist, t, rotation=90, fontweight="bold", fontsize=cell_label_size, ha="center", va="bottom")
    ax.set_ylabel("Cell type frequency", fontweight="bold", fontsize=axis_text_size)
    ax.set_xlabel("Cell type rank", fontweight="bold", fontsize=axis_text_size)
    ax.spines["top"].set_visible(False)
    ax.tick_params(labelsize=tick_size)
    ax.set_ylim(0, max(1, counts["n_cells"].max()) * 1.25)
    ax2 = ax.twinx()
    ax2.plot(xs, counts["n_interactions"].to_numpy(), color="blue", linewidth=2)
    ax2.set_ylabel("CCI-LR interactions", color="blue", fontweight="bold", fontsize=axis_text_size)
    ax2.tick_params(axis="y", labelcolor="blue", labelsize=tick_size)
    ax2.spines["top"].set_visible(False)
    fig.tight_layout()
    fig.stdask_data = {"counts": counts}
    return finish(fig, save, show)


__all__ = ["ccinet_plot", "lr_chord_plot", "lr_cci_map", "cci_map", "cci_check", "MissingResultError"]
