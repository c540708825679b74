"""Overview plots of the LR hotspot results (``stdask.tl.cci.run``): stLearn's ``lr_diagnostics``,
``lr_summary`` and ``lr_n_spots`` (positional arguments in stLearn 1.2.2's order).

Every function takes an AnnData (stLearn layout) or a SpatialDataset first, returns the matplotlib Figure,
writes ``<save>.png`` and ``<save>.pdf`` when ``save`` is given, and records the plotted numbers in
``fig.stdask_data``.
"""
from __future__ import annotations

import warnings

import numpy as np

from .plotdata import as_plotdata
from .figures import finish, new_figure

_SUMMARY_Y = ("n_spots", "n_spots_sig", "n_spots_sig_pval")


def _check_highlight(lrs_all, highlight_lrs):
    if highlight_lrs is None:
        return []
    highlight_lrs = [highlight_lrs] if isinstance(highlight_lrs, str) else list(highlight_lrs)
    missing = [lr for lr in highlight_lrs if lr not in set(lrs_all)]
    if missing:
        raise ValueError(f"highlight_lrs not in lr_summary: {missing}")
    return highlight_lrs


def _rank_scatter(ax, items: np.ndarray, y: np.ndarray, *, color, highlight: list, highlight_color, show_names: bool,
                  rot: float, ylabel: str, xlabel: str, fontsize: float = 7) -> None:
    ranks = np.arange(len(items))
    ax.scatter(ranks, y, c=color, alpha=0.5, edgecolors="none", rasterized=len(items) > 200)
    pos = {lr: i for i, lr in enumerate(items)}
    shown = [lr for lr in highlight if lr in pos]
    if len(shown) < len(highlight):
        warnings.warn(f"highlight_lrs outside the plotted top {len(items)}: "
                      f"{[lr for lr in highlight if lr not in pos]}", stacklevel=3)
    if shown:
        hr = np.array([pos[lr] for lr in shown])
        ax.scatter(hr, y[hr], c=highlight_color, alpha=0.8, edgecolors=color)
    lo, hi = ax.get_ylim()
    if show_names or shown:
        ax.set_ylim(lo, hi + 0.2 * (hi - lo))
    label = ranks if show_names else np.array([pos[lr] for lr in shown], dtype=np.int64)
    for i in label:
        ax.text(i - 0.2, y[i], items[i], rotation=rot, fontsize=fontsize, fontweight="bold",
                color=highlight_color if items[i] in shown else "black")
    ax.spines["top"].set_visible(False)
    ax.spines["right"].set_visible(False)
    ax.set_xlabel(xlabel, fontweight="bold")
    ax.set_ylabel(ylabel, fontweight="bold")


def lr_diagnostics(data, highlight_lrs=None, n_top: int | None = None, *, color0: str = "turquoise",
                   color1: str = "plum", highlight_color: str = "red", max_text: int = 100,
                   figsize: tuple[float, float] = (10, 4), dpi: float | None = None, save=None, show: bool = False):
    """Expression level and frequency of each LR against its rank (stLearn ``lr_diagnostics``).

    Left: ``lrfeatures['nonzero-median']`` (mean over L and R of the median non-zero expression); right:
    ``lrfeatures['zero-prop']`` (mean fraction of cells with zero expression); x = rank in ``lr_summary``
    order (by ``n_spots_sig``), over the first ``n_top`` LRs (all by default). A flat cloud means the
    background controls for expression level and frequency; a trend suggests more background pairs.

    Parameters
    ----------
    data
        AnnData or SpatialDataset with :func:`stdask.tl.cci.run` results.
    highlight_lrs
        LRs to colour ``highlight_color`` and label.
    n_top
        Number of top LRs (default all).
    max_text
        LR names are written next to every point when ``n_top <= max_text``.

    Returns
    -------
    matplotlib Figure (``fig.stdask_data``: ``lrs``, ``nonzero-median``, ``zero-prop``).
    """
    pdata = as_plotdata(data)
    summary = pdata.lr_summary()
    feats = pdata.lrfeatures()
    n_top = len(summary) if n_top is None else int(n_top)
    lrs = summary.index.to_numpy()[:n_top]
    highlight = _check_highlight(summary.index, highlight_lrs)
    missing = [lr for lr in lrs if lr not in feats.index]
    if missing:
        raise KeyError(f"lrfeatures lacks {len(missing)} LRs of lr_summary (e.g. {missing[:3]}); re-run "
                       "stdask.tl.cci.run")
    fig = new_figure(figsize, dpi, show)
    axes = fig.subplots(1, 2)
    data_out = {"lrs": lrs}
    for ax, feature, color in zip(axes, ("nonzero-median", "zero-prop"), (color0, color1)):
        y = feats.loc[lrs, feature].to_numpy(dtype=np.float64)
        data_out[feature] = y
        _rank_scatter(ax, lrs, y, color=color, highlight=highlight, highlight_color=highlight_color,
                      show_names=n_top <= max_text and not highlight, rot=90, ylabel=feature,
                      xlabel="LR Rank (n_spots_sig)")
    fig.tight_layout()
    fig.stdask_data = data_out
    return finish(fig, save, show)


def lr_summary(data, n_top: int = 50, highlight_lrs=None, y: str = "n_spots_sig", *, max_text: int = 50,
               color: str = "gold", highlight_color: str = "red", figsize: tuple[float, float] | None = None,
               dpi: float | None = None, save=None, show: bool = False):
    """Rank scatter of one ``lr_summary`` column over the top LRs (stLearn ``lr_summary``).

    Parameters
    ----------
    data
        AnnData or SpatialDataset with :func:`stdask.tl.cci.run` results.
    n_top
        The first ``n_top`` rows of ``lr_summary`` (its order: ``n_spots_sig`` descending, whatever ``y``).
    y
        ``'n_spots'``, ``'n_spots_sig'`` (adjusted p < cutoff) or ``'n_spots_sig_pval'`` (raw p < cutoff).
    max_text
        LR names are drawn when ``n_top <= max_text``; highlighted LRs are always labelled.
    figsize
        Default: 0.15 in per LR (6 to 20 in) when names are drawn, else 7.5 in; 4 in high.

    Returns
    -------
    matplotlib Figure (``fig.stdask_data``: ``lrs``, ``y``).
    """
    if y not in _SUMMARY_Y:
        raise ValueError(f"Got {y!r} for y; must be one of {list(_SUMMARY_Y)}")
    pdata = as_plotdata(data)
    summary = pdata.lr_summary()
    if y not in summary.columns:
        raise KeyError(f"lr_summary has no column {y!r}; columns: {list(summary.columns)}")
    lrs = summary.index.to_numpy()[:n_top]
    vals = summary[y].to_numpy(dtype=np.float64)[:n_top]
    highlight = _check_highlight(summary.index, highlight_lrs)
    names = n_top <= max_text
    if figsize is None:
        figsize = (float(np.clip(0.15 * len(lrs), 6, 20)) if names and not highlight else 7.5, 4.0)
    fig = new_figure(figsize, dpi, show)
    ax = fig.add_subplot(1, 1, 1)
    _rank_scatter(ax, lrs, vals, color=color, highlight=highlight, highlight_color=highlight_color, show_names=names,
                  rot=70 if y == "n_spots_sig" else 90, ylabel=y, xlabel="LR Rank (n_spots_sig)")
    fig.tight_layout()
    fig.stdask_data = {"lrs": lrs, "y": vals}
    return finish(fig, save, show)


def lr_n_spots(data, n_top: int = 100, max_text: int = 50, *, non_sig_color: str = "dodgerblue",
               sig_color: str = "springgreen", bar_width: float = 1.0, figsize: tuple[float, float] = (6, 4),
               dpi: float | None = None, save=None, show: bool = False):
    """Stacked bars per LR of non-significant and significant cells (stLearn ``lr_n_spots``).

    Bottom: ``n_spots - n_spots_sig`` ("non-sig"); top: ``n_spots_sig`` ("sig"); LRs in ``lr_summary``
    order, the first ``n_top``; names when ``n_top <= max_text``.

    Returns
    -------
    matplotlib Figure (``fig.stdask_data``: ``lrs``, ``non_sig``, ``sig``).
    """
    pdata = as_plotdata(data)
    summary = pdata.lr_summary()
    lrs = summary.index.to_numpy()[:n_top]
    sig = summary["n_spots_sig"].to_numpy(dtype=np.int64)[:n_top]
    non_sig = summary["n_spots"].to_numpy(dtype=np.int64)[:n_top] - sig
    rank = np.arange(len(lrs))
    fig = new_figure(figsize, dpi, show)
    ax = fig.add_subplot(1, 1, 1)
    ax.bar(rank, non_sig, bar_width, color=non_sig_color, label="non-sig")
    ax.bar(rank, sig, bar_width, bottom=non_sig, color=sig_color, label="sig")
    ax.set_ylabel("n_spots", fontweight="bold")
    ax.set_xlabel("LRs Ranked (n_spots_sig)", fontweight="bold")
    ax.set_title("Significant and non-significant spots per LR", fontweight="bold")
    ax.legend(loc="upper right")
    if n_top <= max_text:
        ax.set_xticks(rank)
        ax.set_xticklabels(lrs, rotation=90, fontsize=6, fontweight="bold")
    ax.spines["top"].set_visible(False)
    ax.spines["right"].set_visible(False)
    fig.tight_layout()
    fig.stdask_data = {"lrs": lrs, "non_sig": non_sig, "sig": sig}
    return finish(fig, save, show)
