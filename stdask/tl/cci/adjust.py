"""``stdask.tl.cci.adj_pvals``: re-correct stored LR p-values along another axis (stLearn ``adj_pvals``)."""
from __future__ import annotations

import warnings

from .interaction_result import mark_stale
from .result import CCIResult


def adj_pvals(data, correct_axis: str | None = "spot", pval_adj_cutoff: float = 0.05, adj_method: str = "fdr_bh",
              *, copy: bool = False, scheduler=None, progress: bool = True) -> CCIResult:
    """Recompute adjusted p-values, significance counts and the ``lr_summary`` order.

    Parameters
    ----------
    data
        A :class:`CCIResult` (a new one is returned) or a dataset holding stored results (updated in place,
        pending until ``ds.write()``).
    correct_axis
        ``'spot'``: BH per spot over the LRs tested there (as ``run``); ``'LR'``: per LR over the spots where it
        was tested; ``None``: no correction.
    pval_adj_cutoff
        Cutoff for both counts: ``n_spots_sig`` uses adjusted p-values, ``n_spots_sig_pval`` raw p-values.
    adj_method
        statsmodels ``multipletests`` method (``fdr_bh`` runs natively, vectorised).
    copy
        With a dataset: return the re-corrected result without recording it (the package's write convention,
        :mod:`stdask.results`). A :class:`CCIResult` given is never modified.
    scheduler, progress
        Where the row blocks are re-corrected (:func:`stdask.cluster.compute`), and whether to show it.

    Returns
    -------
    The re-corrected :class:`CCIResult`.

    Notes
    -----
    Cell-type interaction results computed from the old significance calls become stale (stLearn leaves them
    in place silently; stdask warns, Q19). The matrices are re-corrected a row block at a time
    (:mod:`.readjust`): nothing that grows with the slice is gathered, except along LRs with a method other than
    ``'fdr_bh'``.
    """
    kw = {"scheduler": scheduler, "progress": progress}
    if isinstance(data, CCIResult):
        return data.adjusted(correct_axis, pval_adj_cutoff, adj_method, **kw)
    res = CCIResult.load(data).adjusted(correct_axis, pval_adj_cutoff, adj_method, store=data.path, **kw)
    if copy:
        return res
    res.store(data)
    stale = mark_stale(data)
    if stale:
        warnings.warn(f"adj_pvals changed the significance calls; cell-type interaction results {stale} are stale: "
                      "re-run run_cci", stacklevel=2)
    return res
