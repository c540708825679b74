"""``stdask.tl.svg``: domain-specific spatially variable genes with SpaSEG's criteria (spec §8).

For every domain D (one against the rest) and gene g, on **normalised counts** (``normalize_total``, no
log):

* a Wilcoxon rank-sum test (scanpy's ``rank_genes_groups(method="wilcoxon")``: normal approximation,
  no tie correction unless ``tie_correct=True``), BH-adjusted over the genes of D;
* ``in_fraction`` / ``out_fraction``: share of observations with expression > 0 inside / outside D;
  ``max_fraction``, ``max_expr_domain``: the largest expressing fraction among the other domains and that
  domain (the first in category order on ties);
* ``log2_fc = log2((mean_D + eps) / (mean_rest + eps))`` and
  ``log2_fc_in_max = log2((mean_D + eps) / (mean_maxdom + eps))``, eps = 1e-9;
* ``in_expr_cv`` = std / mean inside D (std with ddof=1), ``max_expr_cv`` the same in the max domain,
  ``cv_r = in_expr_cv / max_expr_cv``; ``in_out_fraction``, ``in_max_fraction`` the fraction ratios.

A gene is an SVG of D iff padj < 0.05, in_fraction > 0.8, log2_fc_in_max > 1.5, log2_fc > 1.5,
in_max_fraction > 0.95 and in_out_fraction > 1, **and** one of (a) in_out_fraction > 1.2 or
in_max_fraction > 1.2; (b) log2_fc > 3, log2_fc_in_max > 3, in_expr_cv < 0.6 and cv_r < 1; (c) log2_fc > 8
or log2_fc_in_max > 8. Rows are sorted by ``out_fraction`` ascending within each domain.

Out of core: one pass over the row chunks for the per-domain moments, then the rank sums from each gene's
non-zero values only (zeros share one average rank), gathered in gene batches of at most ``max_nnz``
entries, so memory is bounded by a batch, not by the matrix.

Differences from the reference (``downstream/svg/svg.py``)
----------------------------------------------------------
S4: both fold changes are computed once on normalised counts. The reference feeds ``expm1`` of the log
data to scanpy, which assumes log data and applies ``expm1`` again (log2FC ~ 98 for MBP), and applies
``expm1`` to the already exponentiated means for ``log2_fc_in_max``; ``fold_change="reference"``
reproduces that double transform. The thresholds are unchanged, so clause (c) (> 8, tuned on inflated
values) rarely fires and fewer SVGs than the reference are expected. The Wilcoxon test is rank based, so its
p-values equal those on log data. All domains are tested (the reference's default is ``['0', '1', '2']``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.stats import norm

from .. import blocks
from ..dataset import SpatialDataset
from ..results import writes_results
from .cci.correction import adjust_grouped

EPS = 1e-9
#: the reference's thresholds (``detect_svg`` defaults)
THRESHOLDS = {
    "max_p": 0.05, "min_in_frac": 0.8, "min_log2fc": 1.5, "min_log2fc_in_max": 1.5, "min_in_out_frac": 1.0,
    "min_in_max_frac": 0.95, "cut_min_in_out_frac": 1.2, "cut_min_in_max_frac": 1.2, "cut_min_log2fc": 3.0,
    "cut_min_log2fc_in_max": 3.0, "cut_max_in_expr_cv": 0.6, "cut_max_cv_r": 1.0, "min_high_log2_fc": 8.0,
}
#: non-zero entries gathered per gene batch of the rank pass
MAX_NNZ = 20_000_000


def _normalized(block, target, keep):
    from ..pp.normalize import normalize_block

    return normalize_block(block, target, keep)


def _expression(ds: SpatialDataset, layer: str | None, progress: bool):
    """Normalised counts as a dask matrix: ``layer`` as stored, or normalize_total of ``X`` (median target)."""
    from ..pp.normalize import totals_block

    if layer is not None:
        return blocks.get_matrix(ds, layer), {"layer": layer}
    X = blocks.get_matrix(ds, "X")
    keep = np.ones(ds.n_vars, dtype=bool)
    totals = blocks.row_values(X, totals_block, keep=keep, progress=progress, desc="svg: totals")
    target = np.median(totals)
    if not target > 0:
        raise ValueError("svg: the median total count is 0; pass a normalised layer=")
    arr = blocks.map_rows(X, _normalized, dtype=np.float32, sparse=True, target=target, keep=keep)
    return arr, {"layer": "X", "normalize_total_target": float(target)}


def _blocks_of(arr, codes: np.ndarray, cols: np.ndarray, progress: bool):
    """Row blocks of ``arr`` restricted to labelled rows (``codes >= 0``) and columns ``cols``:
    yields (domain codes of the rows, CSR float64 block)."""
    for r0, b in blocks.iter_blocks(arr, progress=progress, desc="svg: pass over the data"):
        m = sp.csr_matrix(b, dtype=np.float64)
        c = codes[r0:r0 + m.shape[0]]
        keep = c >= 0
        m = m[keep][:, cols] if not keep.all() else m[:, cols]
        yield c[keep], sp.csr_matrix(m)


def _moments(arr, codes: np.ndarray, cols: np.ndarray, n_dom: int, progress: bool):
    G = len(cols)
    npos = np.zeros((n_dom, G))
    s1 = np.zeros((n_dom, G))
    s2 = np.zeros((n_dom, G))
    nnz = np.zeros(G, dtype=np.int64)
    for c, m in _blocks_of(arr, codes, cols, progress):
        rows = np.repeat(np.arange(m.shape[0]), np.diff(m.indptr))
        key = c[rows] * G + m.indices
        pos = m.data > 0
        npos += np.bincount(key[pos], minlength=n_dom * G).reshape(n_dom, G)
        s1 += np.bincount(key, weights=m.data, minlength=n_dom * G).reshape(n_dom, G)
        s2 += np.bincount(key, weights=m.data ** 2, minlength=n_dom * G).reshape(n_dom, G)
        nnz += np.bincount(m.indices[pos], minlength=G)
    return npos, s1, s2, nnz


def _gene_batches(nnz: np.ndarray, max_nnz: int) -> list[tuple[int, int]]:
    bounds, acc = [0], 0
    for g in range(len(nnz)):
        if acc + nnz[g] > max_nnz and g > bounds[-1]:
            bounds.append(g)
            acc = 0
        acc += int(nnz[g])
    bounds.append(len(nnz))
    return list(zip(bounds[:-1], bounds[1:]))


def _rank_sums(arr, codes, cols, n_dom, nnz, n_obs, max_nnz, progress, tie_correct):
    """Per (domain, gene) Wilcoxon rank sums over the labelled observations (average ranks; the zeros of a
    gene share rank (z + 1) / 2), and the tie-correction factor per gene (1 without ``tie_correct``)."""
    G = len(cols)
    R = np.zeros((n_dom, G))
    T = np.ones(G)
    dom_size = np.bincount(codes[codes >= 0], minlength=n_dom).astype(np.float64)
    for g0, g1 in _gene_batches(nnz, max_nnz):
        nb = g1 - g0
        vals, genes, doms = [], [], []
        for c, m in _blocks_of(arr, codes, cols[g0:g1], progress):
            rows = np.repeat(np.arange(m.shape[0]), np.diff(m.indptr))
            pos = m.data > 0
            vals.append(m.data[pos])
            genes.append(m.indices[pos].astype(np.int64))
            doms.append(c[rows[pos]])
        v = np.concatenate(vals) if vals else np.empty(0)
        gg = np.concatenate(genes) if genes else np.empty(0, np.int64)
        dd = np.concatenate(doms) if doms else np.empty(0, np.int64)
        order = np.lexsort((v, gg))
        v, gg, dd = v[order], gg[order], dd[order]
        zeros = (n_obs - nnz[g0:g1]).astype(np.float64)
        Rb = np.zeros((n_dom, nb))
        npos_dom = np.zeros((n_dom, nb))
        tie = np.zeros(nb)
        if len(v):
            start = np.searchsorted(gg, np.arange(nb))  # first entry of each gene
            new = np.ones(len(v), dtype=bool)
            new[1:] = (gg[1:] != gg[:-1]) | (v[1:] != v[:-1])
            first = np.flatnonzero(new)  # tie groups are contiguous after the sort
            last = np.r_[first[1:], len(v)] - 1
            grp = np.cumsum(new) - 1
            # average 1-based rank among the gene's non-zeros, after its zeros
            avg = (first[grp] + last[grp]) / 2.0 - start[gg] + 1.0 + zeros[gg]
            Rb = np.bincount(dd * nb + gg, weights=avg, minlength=n_dom * nb).reshape(n_dom, nb)
            npos_dom = np.bincount(dd * nb + gg, minlength=n_dom * nb).reshape(n_dom, nb).astype(np.float64)
            t = (last - first + 1).astype(np.float64)
            tie = np.bincount(gg[first], weights=t ** 3 - t, minlength=nb)
        Rb += (dom_size[:, None] - npos_dom) * (zeros[None, :] + 1.0) / 2.0
        R[:, g0:g1] = Rb
        if tie_correct and n_obs > 1:
            n = float(n_obs)
            T[g0:g1] = 1.0 - (tie + zeros ** 3 - zeros) / (n ** 3 - n)
    return R, T


def _log2_expm1_ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """log2((expm1(a) + eps) / (expm1(b) + eps)) without overflow (the reference's double transform)."""
    def log2e(x):
        x = np.asarray(x, dtype=np.float64)
        big = x > 30
        out = np.empty_like(x)
        out[~big] = np.log2(np.expm1(x[~big]) + EPS)
        out[big] = x[big] / np.log(2.0)
        return out
    return log2e(a) - log2e(b)


@writes_results
def svg(ds: SpatialDataset, domain_key: str, *, layer: str | None = None, domains=None, filter_mt: bool = True,
        fold_change: str = "corrected", tie_correct: bool = False, do_filter: bool = True,
        thresholds: dict | None = None, key_added: str | None = "svg", max_nnz: int = MAX_NNZ,
        progress: bool = True) -> pd.DataFrame:
    """Domain-specific spatially variable genes (module docstring).

    Parameters
    ----------
    ds
        The dataset.
    domain_key
        ``obs`` column of domain labels (e.g. ``"spaseg"``); observations with a missing label are left out.
    layer
        Matrix of normalised counts (not log). ``None``: ``normalize_total`` of the counts (median target),
        computed on the fly.
    domains
        Domains to report (default all, in category order).
    filter_mt
        Leave out mitochondrial genes (names starting with ``MT-``, any case).
    fold_change
        ``"corrected"`` (stdask) or ``"reference"`` (the double-exponentiated fold changes, S4).
    tie_correct
        Tie-corrected Wilcoxon variance (scanpy's ``tie_correct``; default off, as scanpy).
    do_filter
        Apply the SVG criteria; ``False`` returns every (domain, gene) row.
    thresholds
        Overrides of :data:`THRESHOLDS` (e.g. ``{"min_in_frac": 0.75}``, the 151673 notebook's value).
    key_added
        The table is recorded as ``uns[key_added]`` (pending until ``ds.write()``); ``copy=True`` (or
        ``key_added=None``) leaves ``ds`` untouched.
    max_nnz
        Non-zeros per gene batch of the rank pass (bounds memory).
    progress
        Show progress.

    Returns
    -------
    pandas.DataFrame
        One row per SVG (or per tested pair with ``do_filter=False``): ``domain``, ``gene``, ``scores``,
        ``pvals``, ``pvals_adj``, ``log2_fc``, ``log2_fc_in_max``, ``in_fraction``, ``out_fraction``,
        ``max_fraction``, ``max_expr_domain``, ``in_out_fraction``, ``in_max_fraction``, ``in_expr_mean``,
        ``max_expr_mean``, ``in_expr_cv``, ``max_expr_cv``, ``cv_r``. ``df.attrs`` holds the number of SVGs per
        domain and the parameters.
    """
    th = _thresholds(fold_change, thresholds)
    names, codes = _domain_codes(ds, domain_key)
    arr, info = _expression(ds, layer, progress)
    genes = pd.Index(ds.var_names).astype(str)
    gmask = ~genes.str.upper().str.startswith("MT-") if filter_mt else np.ones(len(genes), bool)
    gidx = np.flatnonzero(gmask)
    stats = _domain_stats(arr, codes, gidx, len(names), max_nnz, progress, tie_correct)
    chosen = range(len(names)) if domains is None else [names.index(str(d)) for d in domains]
    out = []
    for d in chosen:
        df = _domain_table(stats, d, names, genes[gidx], fold_change)
        if do_filter:
            df = df[select(df, th)]
        out.append(df.sort_values("out_fraction", kind="stable"))
    res = pd.concat(out, ignore_index=True)
    counts = res["domain"].value_counts().reindex([names[d] for d in chosen], fill_value=0)
    res.attrs = {"n_svgs": {k: int(v) for k, v in counts.items()}, "fold_change": fold_change,
                 "thresholds": th, "tie_correct": tie_correct, **info}
    if key_added:
        ds.set_result("uns", key_added, res.astype({"domain": str, "gene": str, "max_expr_domain": str}))
    return res


def _thresholds(fold_change: str, thresholds: dict | None) -> dict:
    """:data:`THRESHOLDS` with the user's overrides, after checking them and ``fold_change``."""
    if fold_change not in ("corrected", "reference"):
        raise ValueError(f"fold_change must be 'corrected' or 'reference', got {fold_change!r}")
    th = dict(THRESHOLDS)
    if thresholds:
        unknown = set(thresholds) - set(th)
        if unknown:
            raise ValueError(f"unknown thresholds {sorted(unknown)}; known: {sorted(th)}")
        th.update(thresholds)
    return th


def _domain_codes(ds: SpatialDataset, domain_key: str) -> tuple[list[str], np.ndarray]:
    """Domain names (categories in use, in category order) and each observation's int64 code (-1: no label)."""
    lab = ds.obs[domain_key]
    cat = lab.astype("category") if not isinstance(lab.dtype, pd.CategoricalDtype) else lab
    cat = cat.cat.remove_unused_categories()
    names = [str(c) for c in cat.cat.categories]
    if len(names) < 2:
        raise ValueError(f"obs[{domain_key!r}] has {len(names)} domain(s); SVGs need at least 2")
    return names, cat.cat.codes.to_numpy().astype(np.int64)


@dataclass
class _DomainStats:
    """Per (domain, gene) statistics over the ``n`` labelled observations; arrays are (n_dom, G)."""

    n: int
    size: np.ndarray  # (n_dom, 1) float64 observations per domain
    npos: np.ndarray  # observations with expression > 0
    s1: np.ndarray  # sum of expression
    mean: np.ndarray
    std: np.ndarray  # ddof=1
    frac: np.ndarray  # npos / size
    R: np.ndarray  # Wilcoxon rank sums
    T: np.ndarray  # (G,) tie-correction factors


def _domain_stats(arr, codes: np.ndarray, gidx: np.ndarray, n_dom: int, max_nnz: int, progress: bool,
                  tie_correct: bool) -> _DomainStats:
    """The moment pass and the rank pass over genes ``gidx``, and the statistics derived from them."""
    ok = codes >= 0
    n = int(ok.sum())
    npos, s1, s2, nnz = _moments(arr, codes, gidx, n_dom, progress)
    R, T = _rank_sums(arr, codes, gidx, n_dom, nnz, n, max_nnz, progress, tie_correct)
    size = np.bincount(codes[ok], minlength=n_dom).astype(np.float64)[:, None]
    mean = s1 / np.maximum(size, 1)
    var = np.maximum(s2 - size * mean ** 2, 0) / np.maximum(size - 1, 1)
    return _DomainStats(n, size, npos, s1, mean, np.sqrt(var), npos / np.maximum(size, 1), R, T)


def _domain_table(st: _DomainStats, d: int, names: list[str], gnames: pd.Index, fold_change: str) -> pd.DataFrame:
    """Every gene's row for domain ``d`` against the rest (module docstring), unfiltered."""
    n, n_dom = st.n, len(names)
    nD = st.size[d, 0]
    nR = n - nD
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (st.R[d] - nD * (n + 1) / 2.0) / np.sqrt(nD * nR * (n + 1) / 12.0 * st.T)
    z = np.nan_to_num(z)
    p = 2.0 * norm.sf(np.abs(z))
    padj = adjust_grouped(p, np.zeros(len(p), dtype=np.int64))  # BH over the genes of the domain
    others = [k for k in range(n_dom) if k != d]
    of = st.frac[others]
    arg = np.argmax(of, axis=0)  # first maximum: category order
    maxdom = np.asarray(others)[arg]
    cols = np.arange(len(gnames))
    max_frac = st.frac[maxdom, cols]
    in_frac = st.frac[d]
    out_frac = (st.npos.sum(0) - st.npos[d]) / max(nR, 1)
    mean_d = st.mean[d]
    mean_rest = (st.s1.sum(0) - st.s1[d]) / max(nR, 1)
    mean_max = st.mean[maxdom, cols]
    if fold_change == "corrected":
        lfc = np.log2((mean_d + EPS) / (mean_rest + EPS))
        lfc_max = np.log2((mean_d + EPS) / (mean_max + EPS))
    else:
        lfc = _log2_expm1_ratio(mean_d, mean_rest)
        lfc_max = _log2_expm1_ratio(np.where(mean_d == 0, 1e-12, mean_d), np.where(mean_max == 0, 1e-12, mean_max))
    with np.errstate(divide="ignore", invalid="ignore"):
        cv_in = st.std[d] / np.where(mean_d == 0, 1e-12, mean_d)
        cv_max = st.std[maxdom, cols] / np.where(mean_max == 0, 1e-12, mean_max)
        return pd.DataFrame({
            "domain": names[d], "gene": gnames, "scores": z, "pvals": p, "pvals_adj": padj, "log2_fc": lfc,
            "log2_fc_in_max": lfc_max, "in_fraction": in_frac, "out_fraction": out_frac,
            "max_fraction": max_frac, "max_expr_domain": [names[k] for k in maxdom],
            "in_out_fraction": in_frac / out_frac, "in_max_fraction": in_frac / max_frac,
            "in_expr_mean": mean_d, "max_expr_mean": mean_max, "in_expr_cv": cv_in, "max_expr_cv": cv_max,
            "cv_r": cv_in / cv_max,
        })


def select(df: pd.DataFrame, th: dict | None = None) -> np.ndarray:
    """Boolean rows of a per-(domain, gene) table that pass the SVG criteria (module docstring)."""
    t = dict(THRESHOLDS, **(th or {}))
    pre = ((df["pvals_adj"] < t["max_p"]) & (df["in_fraction"] > t["min_in_frac"])
           & (df["log2_fc_in_max"] > t["min_log2fc_in_max"]) & (df["log2_fc"] > t["min_log2fc"])
           & (df["in_max_fraction"] > t["min_in_max_frac"]) & (df["in_out_fraction"] > t["min_in_out_frac"]))
    a = (df["in_out_fraction"] > t["cut_min_in_out_frac"]) | (df["in_max_fraction"] > t["cut_min_in_max_frac"])
    b = ((df["log2_fc"] > t["cut_min_log2fc"]) & (df["log2_fc_in_max"] > t["cut_min_log2fc_in_max"])
         & (df["in_expr_cv"] < t["cut_max_in_expr_cv"]) & (df["cv_r"] < t["cut_max_cv_r"]))
    c = (df["log2_fc"] > t["min_high_log2_fc"]) | (df["log2_fc_in_max"] > t["min_high_log2_fc"])
    return (pre & (a | b | c)).to_numpy()


__all__ = ["svg", "select", "THRESHOLDS"]
