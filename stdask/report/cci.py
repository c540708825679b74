"""``stdask.tl.cci.report``: a results folder of the LR hotspot and cell-type interaction analyses.

The folder holds the tables (TSV), stLearn's diagnostic and interaction plots (png + pdf), spatial maps of
the top LR pairs' hotspots and a ``README.md`` that says what each file shows. It is written under a
temporary sibling name and renamed into place at the end, so an interrupted report leaves no half folder.

The plots come from :mod:`stdask.pl` (imported when the report runs: ``pl`` sits above ``tl`` in the
layers, and this function is the one place an analysis calls its plots).
"""
from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from ...store.atomic import atomic_directory


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", str(name))


def _open(data):
    if isinstance(data, (str, Path)):
        path = Path(data)
        if path.suffix == ".h5ad":
            import anndata as ad

            return ad.read_h5ad(path)
        from ...dataset import read

        return read(path)
    return data


def _placeholder(message: str, figsize=(6, 4)):
    from ...pl._save import new_figure

    fig = new_figure(figsize)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.axis("off")
    ax.text(0.5, 0.5, message, ha="center", va="center", wrap=True)
    return fig


def report(data, outdir: str | Path, use_label: str | None = None, n_top_lrs: int = 5, *, n_top_summary: int = 50,
           n_top_bars: int = 100, hotspot_result: str = "-log10(p_adjs)", image=None, extent=None,
           overwrite: bool = False, verbose: bool = True) -> Path:
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
        Replace an existing ``outdir``.

    Returns
    -------
    Path of the folder. Files: see the ``README.md`` it contains.
    """
    from ... import pl
    from ...pl._data import MissingResultError, as_plotdata
    from ...pl._save import save_figure

    pdata = as_plotdata(_open(data))
    summary = pdata.lr_summary()  # raises with "run stdask.tl.cci.run first"
    try:
        label = pdata.resolve_label(use_label)
        it = pdata.interactions(label)
    except MissingResultError:
        if use_label is not None:
            raise
        label, it = None, None
    outdir = Path(outdir)
    files: list[tuple[str, str]] = []
    notes: list[str] = []

    def log(msg: str) -> None:
        if verbose:
            print(f"[report] {msg}", flush=True)

    with atomic_directory(outdir, overwrite=overwrite) as tmp:
        def fig_out(fig, stem: str, what: str) -> None:
            save_figure(fig, tmp / stem)
            files.append((f"{stem}.png`, `{stem}.pdf", what))

        def table_out(df: pd.DataFrame, name: str, what: str, **kw) -> None:
            path = tmp / name
            path.parent.mkdir(parents=True, exist_ok=True)
            df.to_csv(path, sep="\t", **kw)
            files.append((name, what))

        def plot(stem: str, what: str, f, *args, **kw) -> None:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    fig = f(*args, **kw)
                except (ValueError, KeyError) as e:
                    fig = _placeholder(str(e))
                    notes.append(f"`{stem}`: {e}")
            for w in caught:
                if "stdask" in str(w.filename) or issubclass(w.category, RuntimeWarning):
                    notes.append(f"`{stem}`: {w.message}")
            fig_out(fig, stem, what)

        # ---- LR hotspots -------------------------------------------------------------------------------
        log(f"{len(summary)} LR pairs")
        table_out(summary, "lr_summary.tsv",
                  "one row per valid LR pair, ranked by `n_spots_sig` (cells with BH-adjusted p < cutoff; "
                  "`n_spots_sig_pval` uses raw p-values; `n_spots` = cells with score > min_expr)"
                  + (f"; `n_cci_sig_{label}`, `n-spot_cci_{label}`, `n-spot_cci_sig_{label}` from run_cci"
                     if label else ""), index_label="lr")
        if pdata.has_uns("lrfeatures"):
            table_out(pdata.lrfeatures(), "lrfeatures.tsv",
                      "expression features of each LR (median non-zero expression, zero proportion, quantiles)",
                      index_label="lr")
            plot("lr_diagnostic_plots", "rank of each LR against its ligand/receptor median non-zero expression "
                 "(left) and zero proportion (right); a flat cloud means the background controls for expression "
                 "level and frequency, a trend suggests more background pairs (`n_pairs`)", pl.lr_diagnostics, pdata)
        plot("lr_significant_scatter", f"`n_spots_sig` of the top {n_top_summary} LR pairs by rank",
             pl.lr_summary, pdata, n_top=n_top_summary)
        plot("lr_significant_bar", f"significant and non-significant cells per LR pair (top {n_top_bars})",
             pl.lr_n_spots, pdata, n_top=n_top_bars)
        top_hot = list(summary.index[:n_top_lrs])
        for lr in top_hot:
            plot(f"hotspot_{_safe(lr)}", f"spatial map of `{hotspot_result}` of {lr} (rank "
                 f"{summary.index.get_loc(lr) + 1} by n_spots_sig; per pixel the maximum when cells are binned)",
                 pl.lr_result_plot, pdata, lr, hotspot_result, image=image, extent=extent)
        log(f"LR tables and plots, {len(top_hot)} hotspot maps")

        # ---- cell-type interactions ----------------------------------------------------------------------
        if it is not None:
            if label in pdata.obs.columns:
                plot(f"{_safe(label)}_spatial", f"the `{label}` labels over the tissue", pl.spatial, pdata, label,
                     image=image, extent=extent)
            for sig, key in ((True, f"lr_cci_{label}"), (False, f"lr_cci_raw_{label}")):
                try:
                    m = pdata.cci_matrix(label, None, sig)
                except MissingResultError:
                    continue
                table_out(m, f"{_safe(key)}.tsv", ("significant" if sig else "all") + " cell-type interactions "
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
                table_out(long, f"per_lr/{_safe(lr)}.tsv", f"{lr}: interaction count, permutation p-value and "
                          "significant count for every (sender, receiver) type pair", index=False)
            plot("celltype_lr_diagnostic_plots", f"cells per `{label}` type (bars) against the significant "
                 "(LR, partner type) interactions each type takes part in (line); a strong correlation suggests "
                 "more permutations", pl.cci_check, pdata, label)
            for lr in [None] + top:
                tag = "all" if lr is None else _safe(lr)
                who = "all LR pairs" if lr is None else lr
                plot(f"CCI_network_plots_{_safe(label)}_{tag}", f"network of significant `{label}` interactions "
                     f"for {who} (node size: interactions a type takes part in; edge colour: the edge's share of "
                     "its sender's and receiver's interactions)", pl.ccinet_plot, pdata, label, lr)
                plot(f"CCI_chord_plots_{_safe(label)}_{tag}", f"chord diagram of significant `{label}` "
                     f"interactions for {who} (arc: signals a type receives; ribbon ends: counts each way)",
                     pl.lr_chord_plot, pdata, label, lr)
            plot("CCI_heatmap_plots", f"LR pairs x `{label}` interactions (\"sender->receiver\"): the top "
                 f"{n_top_lrs} LRs and the 15 interactions with the most significant counts",
                 pl.lr_cci_map, pdata, label, n_top_lrs=n_top_lrs)
            plot(f"CCI_map_{_safe(label)}_all", f"sender x receiver heatmap of significant `{label}` interactions "
                 "summed over LR pairs (types ordered by total interactions)", pl.cci_map, pdata, label)
            log(f"cell-type interactions for {label!r}: {len(top)} top LRs")
        else:
            notes.append("no cell-type interaction results (run stdask.tl.cci.run_cci): only the LR hotspot files "
                         "were written")

        readme = ["# CCI results", "",
                  f"LR hotspot analysis (stLearn's method, stdask) of {pdata.n_obs:,} cells/spots: "
                  f"{len(summary)} valid LR pairs."
                  + (f" Cell-type interactions by `{label}` ({len(it.types)} types, {len(it.lrs)} LR pairs tested"
                     + (f", {it.n_perms} permutations" if it.n_perms is not None else "") + ")." if it is not None
                     else ""),
                  "", "Every figure is written as png and pdf. Files:", ""]
        readme += [f"- `{name}`: {what}." for name, what in files]
        if notes:
            readme += ["", "## Notes", ""] + [f"- {n}" for n in dict.fromkeys(notes)]
        (tmp / "README.md").write_text("\n".join(readme) + "\n")
    log(f"wrote {outdir}/ (see README.md)")
    return outdir
