"""LR scores on spatial domains (SpaSEG's downstream CCI, SpaSEG spec §9), on the machinery of :func:`.run`.

Three steps:

1. a domain-level test (squidpy ``ligrec`` as documented) picks, per LR pair, the domains where it is
   significant;
2. at the observations of those domains, the geometric-mean LR score over lattice-ring neighbours (per tile
   with a halo, :func:`stdask.tilemap.map_tiles`);
3. its significance as :func:`.run` tests stLearn's score: the same expression-matched background genes
   (:func:`.background.matched_background`), background pairs (:class:`.background.Background`), background
   count kernel (``background_counts_geometric``, the score variant of ``background_counts``,
   :func:`stdask.backend.get_kernel`) and per-observation BH (:func:`.correction.adjust_grouped`).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import dask
import numpy as np
import pandas as pd
import scipy.sparse as sp

from ... import blocks
from ...backend import get_kernel
from ...dataset import SpatialDataset
from ...random_streams import philox_stream
from ...results import writes_results
from ...settings import settings
from ...tilemap import map_tiles
from .background import Background, matched_background
from .correction import adjust_grouped
from .database import LRPairs, as_pairs, load_lrs
from .run import _prepare_pairs


@dataclass
class DomainLRResult:
    """What :func:`lr_score` returns.

    Attributes
    ----------
    pairs
        Valid LR pairs (``LRPairs``), in column order of the matrices.
    domain_means, domain_pvalues
        (n_db_pairs, n_domains^2) DataFrames, index ``"L_R"``, columns ``"a|b"`` (sender|receiver): the
        ligrec statistic (mean of the ligand's mean in a and the receptor's mean in b) and its BH-adjusted
        permutation p-value (NaN where not tested).
    scores, pvals, padj
        (n_obs, n_valid) CSR float64: the score at observations with a score > 0, their p-values and
        per-observation BH-adjusted p-values (untested entries are absent: p = 1).
    summary
        Per valid pair: ``n_spots`` (score > 0), ``n_spots_sig`` (padj < cutoff), ``n_spots_sig_pval``.
    params
        Parameters, the reference and the deviations.
    """

    pairs: Any
    domain_means: pd.DataFrame
    domain_pvalues: pd.DataFrame
    scores: sp.csr_matrix
    pvals: sp.csr_matrix
    padj: sp.csr_matrix
    summary: pd.DataFrame
    params: dict


# ---------------------------------------------------------------------------------------------------------
# expression and per-tile scores
# ---------------------------------------------------------------------------------------------------------
def _expr_block(block, target, log: bool):
    """Expression from counts: normalize_total (all genes, global target) then log1p; ``target=None``:
    the stored values as they are."""
    if target is None:
        return sp.csr_matrix(block, dtype=np.float64)
    from ...pp.normalize import normalize_block

    m = normalize_block(block, np.float32(target), np.ones(block.shape[1], dtype=bool))
    m = sp.csr_matrix(m, dtype=np.float64)
    if log:
        m.data = np.log1p(m.data)
    return m


def _sqrt_expr(m: sp.csr_matrix, min_expr: float) -> sp.csr_matrix:
    m = sp.csr_matrix(m, dtype=np.float64, copy=True)
    m.data = np.where(m.data > min_expr, np.sqrt(np.maximum(m.data, 0.0)), 0.0)
    m.eliminate_zeros()
    return m


def _tile_lr_inputs(tile, graph, target, log, min_expr):
    """Own rows' sqrt-expression and ring-neighbour means of sqrt-expression (CSR, all genes)."""
    E = _expr_block(tile.X, target, log)
    Y = _sqrt_expr(E, min_expr)
    own = tile.rows[:tile.n_own]
    A = graph[own]
    A.sort_indices()
    sorter = np.argsort(tile.rows, kind="stable")
    pos = np.searchsorted(tile.rows, A.indices, sorter=sorter)
    pos = np.minimum(pos, len(sorter) - 1)
    local = sorter[pos]
    if not np.array_equal(tile.rows[local], A.indices):
        raise RuntimeError("a ring neighbour lies outside the tile's halo; report this as a bug")
    deg = np.diff(A.indptr)
    W = sp.csr_matrix((np.ones(len(local)), local, A.indptr), shape=(tile.n_own, len(tile.rows)))
    M = sp.csr_matrix(W @ Y)
    rep = np.repeat(np.where(deg > 0, deg, 1).astype(np.float64), np.diff(M.indptr))
    M.data = M.data / rep
    M.sort_indices()
    Yo = sp.csr_matrix(Y[:tile.n_own])
    Yo.sort_indices()
    return Yo, M


def _tile_scores(tile, graph, target, log, min_expr, lg, rg, cand_dom, codes, h):
    """The tile's inputs and its observed scores > 0: (Yo, M, own rows, local row, pair, score), entries
    grouped by row. The score ``h/2 (sqrt(L) m_R + sqrt(R) m_L)`` is taken at candidate entries only."""
    Yo, M = _tile_lr_inputs(tile, graph, target, log, min_expr)
    own = tile.rows[:tile.n_own]
    cand = cand_dom[:, codes[own]].T  # (n_own, n_pairs)
    s = h[own][:, None] * 0.5 * (Yo[:, lg].toarray() * M[:, rg].toarray() + Yo[:, rg].toarray() * M[:, lg].toarray())
    s = np.where(cand, s, 0.0)
    i, j = np.nonzero(s > 0)  # row-major: entries come grouped by row
    return Yo, M, own, i, j, s[i, j]


def _lr_pass1(tile, *, graph, target, log, min_expr, lg, rg, cand_dom, codes, h) -> np.ndarray:
    """(n_entries,) pair index of every observed score > 0 of the tile's own rows."""
    return _tile_scores(tile, graph, target, log, min_expr, lg, rg, cand_dom, codes, h)[4]


def _lr_pass2(tile, *, graph, target, log, min_expr, lg, rg, cand_dom, codes, h, pl, pr, n_pairs, adj_method,
              backend) -> dict:
    """Observed scores of the valid pairs, their background exceedance counts, p-values and per-observation
    BH-adjusted p-values."""
    Yo, M, own, i, j, score = _tile_scores(tile, graph, target, log, min_expr, lg, rg, cand_dom, codes, h)
    counts = get_kernel("background_counts_geometric", backend)(Yo, M, i, j, score, pl, pr,
                                                                 np.ascontiguousarray(h[own], dtype=np.float64))
    p = np.maximum(counts, 1) / float(n_pairs)
    return {"rows": own[i], "pair": j, "score": score, "p": p, "padj": adjust_grouped(p, i, adj_method)}


# ---------------------------------------------------------------------------------------------------------
# the domain-level test
# ---------------------------------------------------------------------------------------------------------
def _ligrec(entries, codes, n_dom, lg, rg, n_perms, threshold, seed, progress):
    """squidpy ``ligrec`` on domains: statistic (mean_L(a) + mean_R(b)) / 2 per ordered domain pair,
    p = #(permuted > observed) / n_perms with domain labels permuted over observations, NaN where a mean is
    0 or an expressing fraction is below ``threshold``; BH across interactions within each domain pair."""
    from ...progress import progress_bar

    rows, gcol, vals = entries
    n_g = int(max(lg.max(), rg.max())) + 1 if len(lg) else 0
    size = np.bincount(codes, minlength=n_dom).astype(np.float64)
    inv = 1.0 / np.maximum(size, 1)

    def means(lab):
        s = np.bincount(lab[rows] * n_g + gcol, weights=vals, minlength=n_dom * n_g).reshape(n_dom, n_g)
        return s * inv[:, None]

    obs = means(codes)
    frac = np.bincount(codes[rows] * n_g + gcol, weights=(vals > 0).astype(float),
                       minlength=n_dom * n_g).reshape(n_dom, n_g) * inv[:, None]
    mL, mR = obs[:, lg], obs[:, rg]  # (n_dom, n_lr)
    fL, fR = frac[:, lg], frac[:, rg]
    valid = ((mL[:, None, :] > 0) & (mR[None, :, :] > 0) & (fL[:, None, :] >= threshold)
             & (fR[None, :, :] >= threshold))  # (a, b, lr)
    stat = mL[:, None, :] + mR[None, :, :]
    count = np.zeros_like(stat, dtype=np.int64)
    for k in progress_bar(range(n_perms), desc="spaseg lr: domain permutations", unit="perm",
                          disable=not progress):
        perm = philox_stream(seed, "spaseg-ligrec", k).permutation(codes)
        m = means(perm)
        count += (m[:, lg][:, None, :] + m[:, rg][None, :, :]) > stat
    p = count / float(n_perms)
    p[~valid] = np.nan
    mean_stat = np.where(valid | ((mL[:, None, :] > 0) & (mR[None, :, :] > 0)), stat / 2.0, 0.0)
    # BH across interactions for each domain pair (squidpy corr_axis="clusters")
    padj = np.full_like(p, np.nan)
    tested = ~np.isnan(p)
    domain_pair = np.broadcast_to(np.arange(n_dom * n_dom).reshape(n_dom, n_dom, 1), p.shape)
    padj[tested] = adjust_grouped(p[tested], domain_pair[tested], "fdr_bh")
    return mean_stat, padj


# ---------------------------------------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------------------------------------
def _domain_codes(ds: SpatialDataset, domain_key: str) -> tuple[list[str], np.ndarray]:
    """Domain names (category order, unused ones dropped) and (n_obs,) int64 codes."""
    lab = ds.obs[domain_key]
    cat = lab.astype("category") if not isinstance(lab.dtype, pd.CategoricalDtype) else lab
    cat = cat.cat.remove_unused_categories()
    codes = cat.cat.codes.to_numpy().astype(np.int64)
    if (codes < 0).any():
        raise ValueError(f"obs[{domain_key!r}] has missing labels; every observation needs a domain")
    return [str(c) for c in cat.cat.categories], codes


def _expression(ds: SpatialDataset, layer: str | None, log: bool, lr_genes: np.ndarray, progress: bool):
    """The normalize_total target (``None`` for a stored layer), the LR genes' entries (rows, position in
    ``lr_genes``, value) and ``nz(g)``, every gene's non-zero values, from one pass over the row blocks."""
    from ...pp.normalize import totals_block

    X = blocks.get_matrix(ds, layer or "X")
    target = None
    if layer is None:
        totals = blocks.row_values(X, totals_block, keep=np.ones(ds.n_vars, bool), progress=progress,
                                   desc="spaseg lr: totals")
        target = float(np.median(totals))
    E = blocks.map_rows(X, _expr_block, dtype=np.float64, sparse=True, target=target, log=log)
    gpos = np.full(ds.n_vars, -1, dtype=np.int64)
    gpos[lr_genes] = np.arange(len(lr_genes))
    nz_parts, ent = [], ([], [], [])
    for r0, b in blocks.iter_blocks(E, progress=progress, desc="spaseg lr: expression"):
        m = sp.csr_matrix(b)
        m.eliminate_zeros()
        c = sp.csc_matrix(m)
        nz_parts.append((c.indptr.copy(), c.data.copy()))
        rows = np.repeat(np.arange(m.shape[0]), np.diff(m.indptr)) + r0
        sel = gpos[m.indices] >= 0
        ent[0].append(rows[sel])
        ent[1].append(gpos[m.indices[sel]])
        ent[2].append(m.data[sel])

    def nz(g: int) -> np.ndarray:
        return np.concatenate([d[p[g]:p[g + 1]] for p, d in nz_parts])

    return target, tuple(np.concatenate(e) for e in ent), nz


def _entropy_weight(ds: SpatialDataset, fractions) -> np.ndarray:
    """(n_obs,) Shannon entropy (base 2) of each observation's cell-type fractions, or 1 without them."""
    if fractions is None:
        return np.ones(ds.n_obs)
    from scipy.stats import entropy

    f = ds.get_result("obsm", fractions) if isinstance(fractions, str) else fractions
    if isinstance(f, pd.DataFrame):
        f = f.reindex(ds.obs_names).to_numpy(dtype=np.float64)
    f = np.asarray(f, dtype=np.float64)
    if f.shape[0] != ds.n_obs:
        raise ValueError(f"cell_type_fractions has {f.shape[0]} rows; the dataset has {ds.n_obs}")
    return np.nan_to_num(entropy(f, base=2, axis=1))


def _ring_graph(ds: SpatialDataset, n_neighs: int, n_rings: int, progress: bool) -> tuple[sp.csr_matrix, float]:
    """The lattice-ring graph and the tile halo that holds every ring neighbour (its longest edge)."""
    from ...gr import spatial_neighbors

    graph = spatial_neighbors(ds, method="grid", n_neighs=n_neighs, n_rings=n_rings, copy=True, progress=progress,
                              verbose=False).connectivities.tocsr()
    coo = graph.tocoo()
    cxy = ds.coords
    halo = float(np.sqrt(((cxy[coo.row] - cxy[coo.col]) ** 2).sum(axis=1)).max()) * (1 + 1e-9) if coo.nnz else 0.0
    return graph, halo


# ---------------------------------------------------------------------------------------------------------
# lr_score
# ---------------------------------------------------------------------------------------------------------
@writes_results
def lr_score(ds: SpatialDataset, domain_key: str = "spaseg", lrs=None, *, layer: str | None = None,
             log: bool = True, min_expr: float = 0.0, min_spot: int = 1, n_pairs: int = 1000,
             n_perms: int = 1000, threshold: float = 0.01, alpha: float = 0.05, n_rings: int = 2,
             n_neighs: int = 10, cell_type_fractions=None, seed: int = 0, adj_method: str = "fdr_bh",
             pval_cutoff: float = 0.05, progress: bool = True) -> DomainLRResult:
    """Per-observation LR scores restricted to domains where the pair is significant (SpaSEG, spec §9).

    1. Domain-level test (squidpy ``ligrec`` as documented): for every LR pair and ordered domain pair
       (a, b), ``(mean_L(a) + mean_R(b)) / 2`` against ``n_perms`` permutations of the domain labels
       (p = share of permutations strictly above), untested where a mean is 0 or an expressing fraction is
       below ``threshold``; BH across pairs within each domain pair. An observation is a candidate for (L, R)
       if its domain appears in a domain pair with adjusted p < ``alpha``.
    2. Neighbours: lattice rings (``stdask.gr.spatial_neighbors(method="grid", n_neighs, n_rings)``,
       squidpy's ``coord_type="grid"``).
    3. Score at a candidate observation s: ``h_s (t1 + t2) / 2`` with ``t1 = mean_n sqrt(L_s R_n)``,
       ``t2 = mean_n sqrt(R_s L_n)`` over its neighbours n (values <= ``min_expr`` count as 0; no
       neighbours: 0). ``h_s`` is the Shannon entropy (base 2) of the observation's cell-type fractions,
       or 1. Pairs scoring > 0 at more than ``min_spot`` observations are kept.
    4. Significance as stLearn (the machinery of :func:`stdask.tl.cci.run`): ``n_pairs`` random background
       pairs of genes matched on 12 expression quantiles (Canberra distance, round(2 sqrt(n_pairs)) genes per
       LR gene, drawn from streams keyed by (seed, pair)), scored at the observations where the real score
       is > 0; p = max(1, #background >= real) / n_pairs; BH per observation over its tested pairs.

    Parameters
    ----------
    ds
        The dataset, with ``obs[domain_key]``.
    domain_key
        Domain labels.
    lrs
        LR pairs (:func:`stdask.tl.cci.load_lrs` output, ``"L_R"`` strings or a ligand/receptor table);
        default the shipped connectomeDB2020_lit table (the reference downloads OmniPath's CellPhoneDB
        resource, which is not reachable here: S6).
    layer, log
        Expression: ``layer=None`` computes ``normalize_total`` (median target) of the counts, then
        ``log1p`` when ``log`` (the reference's log-normalised X); a named stored layer is used as is.
    min_expr, min_spot, n_pairs
        As in the reference (``min_spot`` 1, ``n_pairs`` 1000; the notebook uses 400).
    n_perms, threshold, alpha
        The domain-level test.
    n_rings, n_neighs
        Ring neighbourhood.
    cell_type_fractions
        Optional (n_obs, n_types) proportions (DataFrame indexed by observation name, array, or an
        ``obsm`` key) for the entropy weight.
    seed
        Keys every random stream (domain permutations, background pairs).
    adj_method, pval_cutoff
        Per-observation correction and the significance cutoff of the summary.
    copy
        Return the result without recording it on ``ds`` (by default ``obsm["spot_lr_score"]``,
        ``obsm["spot_lr_padj"]`` (sparse, columns = valid pairs) and ``uns["spaseg_lr"]`` (pairs, summary,
        domain tables) are recorded, pending until ``ds.write()``).
    progress
        Show progress.

    Returns
    -------
    :class:`DomainLRResult`

    Differences from the reference
    ------------------------------
    S6 shipped LR table instead of OmniPath; the domain test is a re-implementation of squidpy's documented
    method (no complexes); random pairs and permutations come from seeded counter-based streams, so results
    do not depend on workers or tiles; matched-gene ties are broken by gene position.
    """
    t0 = time.perf_counter()
    if n_pairs < 100:
        raise ValueError(f"n_pairs={n_pairs} is too small for a background; use >= 100 (the reference: 1000)")
    dnames, codes = _domain_codes(ds, domain_key)
    n_dom, n_obs = len(dnames), ds.n_obs
    prep = _prepare_pairs(ds, load_lrs() if lrs is None else as_pairs(lrs))
    pairs, li, ri = prep.pairs, prep.genes[prep.lcol], prep.genes[prep.rcol]
    target, entries, nz = _expression(ds, layer, log, prep.genes, progress)

    # ---- 1. domain-level test ------------------------------------------------------------------------------
    means, padj_dom = _ligrec(entries, codes, n_dom, prep.lcol, prep.rcol, n_perms, threshold, seed, progress)
    cols = [f"{a}|{b}" for a in dnames for b in dnames]
    dom_means = pd.DataFrame(means.reshape(n_dom * n_dom, -1).T, index=pairs.names, columns=cols)
    dom_p = pd.DataFrame(padj_dom.reshape(n_dom * n_dom, -1).T, index=pairs.names, columns=cols)
    sig = np.nan_to_num(padj_dom, nan=1.0) < alpha  # (a, b, lr)
    cand_dom = (sig.any(axis=1) | sig.any(axis=0)).T  # (lr, domain): domain is a sender or a receiver
    pidx = np.flatnonzero(cand_dom.any(axis=1))
    if not len(pidx):
        raise ValueError(f"no LR pair is significant (adjusted p < {alpha}) between any two domains")

    # ---- 2-3. ring neighbours, observed scores of the candidate pairs --------------------------------------
    graph, halo = _ring_graph(ds, n_neighs, n_rings, progress)
    h = _entropy_weight(ds, cell_type_fractions)
    # one shared copy of the big arguments for all tasks
    common = dict(graph=dask.delayed(graph, pure=True), target=target, log=log, min_expr=float(min_expr),
                  codes=dask.delayed(codes, pure=True), h=dask.delayed(h, pure=True))
    pair1 = map_tiles(ds, _lr_pass1, halo=halo, layer=layer or "X", progress=progress,
                      desc="spaseg lr: observed scores", lg=li[pidx], rg=ri[pidx], cand_dom=cand_dom[pidx],
                      combine="concat", **common)
    valid = pidx[np.bincount(pair1, minlength=len(pidx)) > min_spot]
    if len(valid) == 0:
        raise ValueError(f"no LR pair scores > 0 at more than min_spot={min_spot} observations")
    vpairs = LRPairs(pairs.ligand[valid], pairs.receptor[valid])
    vl, vr = li[valid], ri[valid]

    # ---- 4. backgrounds (stdask.tl.cci.run's machinery) ------------------------------------------------------
    matched = matched_background(nz, np.unique(np.concatenate([vl, vr])), ds.n_vars, n_obs, n_pairs,
                                 ds.var_names)
    pl, pr = Background(vpairs.names, vl, vr, matched, int(n_pairs), int(seed)).tables()
    out = map_tiles(ds, _lr_pass2, halo=halo, layer=layer or "X", progress=progress,
                    desc="spaseg lr: backgrounds", lg=vl, rg=vr, cand_dom=cand_dom[valid],
                    pl=dask.delayed(pl, pure=True), pr=dask.delayed(pr, pure=True), n_pairs=n_pairs,
                    adj_method=adj_method, backend=settings.backend, combine="concat", **common)
    res = _result(ds, out, vpairs, dom_means, dom_p, pval_cutoff)
    res.params.update({
        "reference": "SpaSEG downstream/cci/cci.py (squidpy ligrec + stLearn-style background)",
        "deviations": ["S6"], "domain_key": domain_key, "seed": int(seed), "n_pairs": int(n_pairs),
        "n_perms": int(n_perms), "threshold": float(threshold), "alpha": float(alpha), "n_rings": int(n_rings),
        "n_neighs": int(n_neighs), "min_expr": float(min_expr), "min_spot": int(min_spot), "log": bool(log),
        "layer": layer or "X (normalize_total)", "entropy_weight": cell_type_fractions is not None,
        "seconds": round(time.perf_counter() - t0, 3)})
    _store(ds, res)
    return res


def _result(ds: SpatialDataset, out: dict, vpairs: LRPairs, dom_means: pd.DataFrame, dom_p: pd.DataFrame,
            pval_cutoff: float) -> DomainLRResult:
    """The result from the concatenated per-tile entries of the valid pairs."""
    rows, pair = out["rows"], out["pair"]
    shape = (ds.n_obs, len(vpairs))
    scores, pvals, padj = (sp.csr_matrix((out[k], (rows, pair)), shape=shape) for k in ("score", "p", "padj"))

    def count(sel):
        return np.bincount(pair[sel], minlength=len(vpairs)).astype(np.int64)

    summary = pd.DataFrame({"n_spots": np.bincount(pair, minlength=len(vpairs)).astype(np.int64),
                            "n_spots_sig": count(out["padj"] < pval_cutoff),
                            "n_spots_sig_pval": count(out["p"] < pval_cutoff)},
                           index=pd.Index(vpairs.names.astype(str), name="lr"))
    return DomainLRResult(vpairs, dom_means, dom_p, scores, pvals, padj, summary, {})


def _store(ds: SpatialDataset, res: DomainLRResult) -> None:
    ds.set_result("obsm", "spot_lr_score", res.scores)
    ds.set_result("obsm", "spot_lr_padj", res.padj)
    ds.set_result("uns", "spaseg_lr", {"lr_pairs": res.pairs.names.astype(str), "summary": res.summary.reset_index(),
                                       "domain_pvalues": res.domain_pvalues.reset_index(names="lr"),
                                       "params": res.params})


__all__ = ["lr_score", "DomainLRResult"]
