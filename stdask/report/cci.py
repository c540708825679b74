"""``stdask.report.cci_report``: a results folder of the LR hotspot and cell-type interaction analyses.

The folder holds the tables (TSV), stLearn's diagnostic and interaction plots (png + pdf), spatial maps of
the top LR pairs' hotspots and a ``README.md`` that says what each file shows. It is written under a
temporary sibling name and renamed into place at the end, so an interrupted report leaves no half folder.

The report sits above :mod:`stdask.pl` in the layers: it reads the results through
:class:`stdask.pl.plotdata.PlotData` and draws them with the ``stdask.pl`` functions.
"""
from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from .. import pl
from ..dataset import read
from ..pl.figures import new_figure, save_figure
from ..pl.plotdata import MissingResultError, as_plotdata
from .._version import __version__
from ..store.atomic import atomic_directory
from ..store.markers import REPORT_MARKER, check_not_input, check_replaceable, write_report_marker

__all__ = ["cci_report"]


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", str(name))


def _open(data):
    if isinstance(data, (str, Path)):
        path = Path(data)
        if path.suffix == ".h5ad":
            import anndata as ad

            return ad.read_h5ad(path)
        return read(path)
    return data


def _input_paths(data) -> list[Path]:
    """The paths the report reads: a store or ``.h5ad`` path, or the store of a dataset (none for AnnData)."""
    if isinstance(data, (str, Path)):
        return [Path(data)]
    path = getattr(data, "path", None)
    return [Path(path)] if isinstance(path, (str, Path)) else []


def _placeholder(message: str, figsize=(6, 4)):
    fig = new_figure(figsize)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.axis("off")
    ax.text(0.5, 0.5, message, ha="center", va="center", wrap=True)
    return fig


class _Folder:
    """The files of a report being written into ``tmp``: each table and figure with what it shows (the README
    lists them in order) and the notes the README ends with."""

    def __init__(self, tmp: Path, verbose: bool) -> None:
        self.tmp = tmp
        self.verbose = verbose
        self.files: list[tuple[str, str]] = []
        self.notes: list[str] = []

    def log(self, msg: str) -> None:
        if self.verbose:
            print(f"[report] {msg}", flush=True)

    def table(self, df: pd.DataFrame, name: str, what: str, **kw) -> None:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        df.to_csv(path, sep="\t", **kw)
        self.files.append((name, what))

    def plot(self, stem: str, what: str, f, *args, **kw) -> None:
        """Draw ``f(*args, **kw)`` as ``<stem>.png`` and ``.pdf``; a plot that cannot be drawn becomes a
        placeholder naming why, and the warnings it raised become notes."""
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                fig = f(*args, **kw)
            except (ValueError, KeyError) as e:
                fig = _placeholder(str(e))
                self.notes.append(f"`{stem}`: {e}")
        for w in caught:
            if "stdask" in str(w.filename) or issubclass(w.category, RuntimeWarning):
                self.notes.append(f"`{stem}`: {w.message}")
        save_figure(fig, self.tmp / stem)
        self.files.append((f"{stem}.png`, `{stem}.pdf", what))


def cci_report(data, outdir: str | Path, use_label: str | None = None, n_top_lrs: int = 5, *,
               n_top_summary: int = 50, n_top_bars: int = 100, hotspot_result: str = "-log10(p_adjs)", image=None,
               extent=None, overwrite: bool = False, verbose: bool = True) -> Path:
    """Write a results folder for the CCI analysis of ``data``.

    Parameters
    ----------
    data
        AnnData (stLearn layout, e.g. stLearn's own output) or :class:`~stdask.dataset.SpatialDataset` with
        :func:`stdask.tl.cci.run` results, and optionally :func:`run_cci` results; or a path to a store or an
        ``.h5ad``.
    outdir
        The folder to create.
    use_label
        The label of the ``run_cci`` results (default: the only one stored; none -> LR-only report).
    n_top_lrs
        LR pairs that get their own tables, interaction plots and hotspot maps (the first of ``lr_summary``
        among those with significant cell-type interactions; for hotspot maps, the first of ``lr_summary``).
    n_top_summary, n_top_bars
        LRs in the rank scatter and in the bar plot.
    hotspot_result
        Per-cell matrix of the hotspot maps (``'-log10(p_adjs)'``, ``'lr_sig_scores'``, ...).
    image, extent
        Optional background image for the spatial maps (see :func:`stdask.pl.spatial`).
    overwrite
        Replace an existing ``outdir``; only a stdask report folder (one holding ``.stdask-report.json``) is
        ever replaced, never a folder of other files, a file, a link or the store being reported on.

    Returns
    -------
    Path of the folder. Files: see the ``README.md`` it contains.
    """
    outdir = Path(outdir)
    # before any work: the folder may never be (or hold, or sit inside) the store it reports on, and an
    # existing one is replaced only when it is a stdask report folder
    check_not_input(outdir, _input_paths(data))
    if (outdir.exists() or outdir.is_symlink()) and not overwrite:
        raise FileExistsError(f"{outdir} exists; pass overwrite=True (CLI: --overwrite) to replace it")
    check_replaceable(outdir, "report")
    pdata = as_plotdata(_open(data))
    summary = pdata.lr_summary()  # raises with "run stdask.tl.cci.run first"
    try:
        label = pdata.resolve_label(use_label)
        it = pdata.interactions(label)
    except MissingResultError:
        if use_label is not None:
            raise
        label, it = None, None
    with atomic_directory(outdir, overwrite=overwrite) as tmp:
        write_report_marker(tmp, "cci", __version__)  # what lets a later overwrite=True replace this folder
        folder = _Folder(tmp, verbose)
        _lr_files(folder, pdata, summary, label, n_top_lrs, n_top_summary, n_top_bars, hotspot_result, image,
                  extent)
        if it is not None:
            _interaction_files(folder, pdata, summary, label, it, n_top_lrs, image, extent)
        else:
            folder.notes.append("no cell-type interaction results (run stdask.tl.cci.run_cci): only the LR hotspot "
                                "files were written")
        _readme(folder, pdata, summary, label, it)
    folder.log(f"wrote {outdir}/ (see README.md)")
    return outdir


def _lr_files(folder: _Folder, pdata, summary: pd.DataFrame, label: str | None, n_top_lrs: int,
              n_top_summary: int, n_top_bars: int, hotspot_result: str, image, extent) -> None:
    """The LR hotspot tables and plots: lr_summary, LR features and diagnostics, rank plots, hotspot maps."""
    folder.log(f"{len(summary)} LR pairs")
    folder.table(summary, "lr_summary.tsv",
                 "one row per valid LR pair, ranked by `n_spots_sig` (cells with BH-adjusted p < cutoff; "
                 "`n_spots_sig_pval` uses raw p-values; `n_spots` = cells with score > min_expr)"
                 + (f"; `n_cci_sig_{label}`, `n-spot_cci_{label}`, `n-spot_cci_sig_{label}` from run_cci"
                    if label else ""), index_label="lr")
    if pdata.has_uns("lrfeatures"):
        folder.table(pdata.lrfeatures(), "lrfeatures.tsv",
                     "expression features of each LR (median non-zero expression, zero proportion, quantiles)",
                     index_label="lr")
        folder.plot("lr_diagnostic_plots", "rank of each LR against its ligand/receptor median non-zero "
                    "expression (left) and zero proportion (right); a flat cloud means the background controls for "
                    "expression level and frequency, a trend suggests more background pairs (`n_pairs`)",
                    pl.lr_diagnostics, pdata)
    folder.plot("lr_significant_scatter", f"`n_spots_sig` of the top {n_top_summary} LR pairs by rank",
                pl.lr_summary, pdata, n_top=n_top_summary)
    folder.plot("lr_significant_bar", f"significant and non-significant cells per LR pair (top {n_top_bars})",
                pl.lr_n_spots, pdata, n_top=n_top_bars)
    top_hot = list(summary.index[:n_top_lrs])
    for lr in top_hot:
        folder.plot(f"hotspot_{_safe(lr)}", f"spatial map of `{hotspot_result}` of {lr} (rank "
                    f"{summary.index.get_loc(lr) + 1} by n_spots_sig; per pixel the maximum when cells are binned)",
                    pl.lr_result_plot, pdata, lr, hotspot_result, image=image, extent=extent)
    folder.log(f"LR tables and plots, {len(top_hot)} hotspot maps")


def _interaction_files(folder: _Folder, pdata, summary: pd.DataFrame, label: str, it, n_top_lrs: int, image,
                       extent) -> None:
    """The cell-type interaction tables and plots of ``label``: summed matrices, per-LR tables of the top LRs,
    diagnostics, networks, chord diagrams and heatmaps."""
    if label in pdata.obs.columns:
        folder.plot(f"{_safe(label)}_spatial", f"the `{label}` labels over the tissue", pl.spatial, pdata, label,
                    image=image, extent=extent)
    for sig, key in ((True, f"lr_cci_{label}"), (False, f"lr_cci_raw_{label}")):
        try:
            m = pdata.cci_matrix(label, None, sig)
        except MissingResultError:
            continue
        folder.table(m, f"{_safe(key)}.tsv", ("significant" if sig else "all") + " cell-type interactions "
                     "summed over LR pairs (rows = sender, the type of the significant cell; columns = "
                     "receiver, the neighbour's type)", index_label="sender")
    sig_tot = it.sig.reshape(len(it.lrs), -1).sum(axis=1) if it.sig is not None else np.zeros(len(it.lrs))
    tested = dict(zip(it.lrs, sig_tot))
    ranked = [lr for lr in summary.index if lr in tested]
    top = [lr for lr in ranked if tested[lr] > 0][:n_top_lrs] or ranked[:n_top_lrs]
    for lr in top:
        i = it.index(lr)
        T = len(it.types)
        long = pd.DataFrame({"sender": np.repeat(it.types, T), "receiver": np.tile(it.types, T)})
        long["raw_count"] = it.raw[i].ravel() if it.raw is not None else np.nan
        long["pval"] = it.pvals[i].ravel() if it.pvals is not None else np.nan
        long["sig_count"] = it.sig[i].ravel() if it.sig is not None else np.nan
        folder.table(long, f"per_lr/{_safe(lr)}.tsv", f"{lr}: interaction count, permutation p-value and "
                     "significant count for every (sender, receiver) type pair", index=False)
    folder.plot("celltype_lr_diagnostic_plots", f"cells per `{label}` type (bars) against the significant "
                "(LR, partner type) interactions each type takes part in (line); a strong correlation suggests "
                "more permutations", pl.cci_check, pdata, label)
    for lr in [None] + top:
        tag = "all" if lr is None else _safe(lr)
        who = "all LR pairs" if lr is None else lr
        folder.plot(f"CCI_network_plots_{_safe(label)}_{tag}", f"network of significant `{label}` interactions "
                    f"for {who} (node size: interactions a type takes part in; edge colour: the edge's share of "
                    "its sender's and receiver's interactions)", pl.ccinet_plot, pdata, label, lr)
        folder.plot(f"CCI_chord_plots_{_safe(label)}_{tag}", f"chord diagram of significant `{label}` "
                    f"interactions for {who} (arc: signals a type receives; ribbon ends: counts each way)",
                    pl.lr_chord_plot, pdata, label, lr)
    folder.plot("CCI_heatmap_plots", f"LR pairs x `{label}` interactions (\"sender->receiver\"): the top "
                f"{n_top_lrs} LRs and the 15 interactions with the most significant counts",
                pl.lr_cci_map, pdata, label, n_top_lrs=n_top_lrs)
    folder.plot(f"CCI_map_{_safe(label)}_all", f"sender x receiver heatmap of significant `{label}` interactions "
                "summed over LR pairs (types ordered by total interactions)", pl.cci_map, pdata, label)
    folder.log(f"cell-type interactions for {label!r}: {len(top)} top LRs")


def _readme(folder: _Folder, pdata, summary: pd.DataFrame, label: str | None, it) -> None:
    """``README.md``: what was analysed, then every file with what it shows, then the notes."""
    readme = ["# CCI results", "",
              f"LR hotspot analysis (stLearn's method, stdask) of {pdata.n_obs:,} cells/spots: "
              f"{len(summary)} valid LR pairs."
              + (f" Cell-type interactions by `{label}` ({len(it.types)} types, {len(it.lrs)} LR pairs tested"
                 + (f", {it.n_perms} permutations" if it.n_perms is not None else "") + ")." if it is not None
                 else ""),
              "", "Every figure is written as png and pdf. Files:", ""]
    readme += [f"- `{REPORT_MARKER}`: marks this folder as a stdask report, which `overwrite=True` (`--overwrite`) "
               "may replace; stdask replaces no folder without it."]
    readme += [f"- `{name}`: {what}." for name, what in folder.files]
    if folder.notes:
        readme += ["", "## Notes", ""] + [f"- {n}" for n in dict.fromkeys(folder.notes)]
    (folder.tmp / "README.md").write_text("\n".join(readme) + "\n")
