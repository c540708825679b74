"""``stdask.tl.cci.run``: stLearn's LR hotspot analysis, tile by tile.

Two passes over the tiles (each tile with a halo of the neighbourhood radius):

1. neighbour means of the LR genes, observed scores of every database pair present, and each gene's
   non-zero values (for the expression quantiles);
2. after the valid pairs, matched genes and random pairs are fixed globally: observed scores of the valid
   pairs, background exceedance counts at the tested spots only (a |S| x n_pairs score matrix is never
   kept), p-values and the per-spot BH correction, which needs only the spot's own LRs and so stays inside
   the tile.

Random pairs come from streams keyed by (seed, LR name) and every per-tile computation is independent of
the tiling, so results are identical for any tile size and any number of workers.
"""
from __future__ import annotations

import contextlib
import gc
import shutil
import time
import warnings
from dataclasses import dataclass
from functools import partial
from typing import Any, Mapping

import dask
import numpy as np
import pandas as pd
import scipy.sparse as sp

from ...backend import get_kernel
from ...dataset import SpatialDataset, Tile
from ...gr.neighbors import resolve_distance
from ...results import writes_results
from ...settings import settings
from ...tilemap import map_tiles, reuse_tiles
from .correction import adjust_grouped
from .entries import new_folder, write_part
from .gene_columns import GeneColumns, write_columns
from .database import LRPairs, PairMatch, as_pairs, match_pairs
from .background import Background, BackgroundPairs, background_tables, matched_background
from .features import GeneValues, column_quantiles_and_median, lr_features
from .neighbourhood import neighbour_means, neighbour_means_sparse, neighbour_sums_sparse, tile_neighbourhood
from .pairs import check_possible
from .result import CCIResult
from .scale_check import SAMPLE_ROWS, scale_warning

REFERENCE = "stLearn 1.2.2"
DEVIATIONS = ("Q1", "Q2", "Q3", "Q7", "Q8", "Q9", "Q13", "Q15", "Q16", "Q17", "Q18", "Q20", "Q21")
_ROW_BLOCK = 4096


def _tile_matrix(tile: Tile) -> sp.csc_matrix:
    X = tile.X
    return sp.csc_matrix(X, dtype=np.float64 if X.dtype.kind in "ui" else X.dtype)


def _observed(x_own: sp.csr_matrix, means_of, lcol: np.ndarray, rcol: np.ndarray, min_expr: float):
    """Scores > 0 of pairs (lcol, rcol) at own rows, in row blocks: (rows, pair, score), grouped by row.

    ``x_own`` is (n_own, k) expression of the pairs' genes; ``means_of(a, b)`` gives the dense (b - a, k)
    neighbour means of own rows a..b.
    """
    rows, pair, score = [], [], []
    for a in range(0, x_own.shape[0], _ROW_BLOCK):
        b = min(a + _ROW_BLOCK, x_own.shape[0])
        s = get_kernel("pair_scores")(np.ascontiguousarray(x_own[a:b].toarray(), dtype=np.float64),
                                      np.ascontiguousarray(means_of(a, b)), lcol, rcol, float(min_expr))
        i, j = np.nonzero(s > 0)  # row-major: entries come grouped by row
        rows.append(i + a)
        pair.append(j)
        score.append(s[i, j])
    if not rows:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0)
    return np.concatenate(rows), np.concatenate(pair), np.concatenate(score)


def _pass1(tile: Tile, *, radius: float, genes: np.ndarray, lcol: np.ndarray, rcol: np.ndarray, min_expr: float,
           order_of: Mapping | None, n_vars: int, folder: str, backend: str = "cpu") -> dict:
    """Per candidate pair, the own rows scoring > 0; the own rows' non-zeros by gene written to ``folder``
    (:func:`.gene_columns.write_columns`)."""
    nb = tile_neighbourhood(tile, radius, order_of=order_of)
    X = _tile_matrix(tile)
    Xg = X[:, genes]
    own = X[: tile.n_own]
    own.eliminate_zeros()
    x_own = Xg[: tile.n_own]
    # only what the global steps need: per-pair positive counts (valid-pair filter) and the non-zero values
    # by gene (expression quantiles), never the per-cell scores of every database pair
    n_pos = np.zeros(len(lcol), np.int64)
    for a in range(0, tile.n_own, _ROW_BLOCK):
        b = min(a + _ROW_BLOCK, tile.n_own)
        rows = None if (a, b) == (0, tile.n_own) else np.arange(a, b)  # one block: no row-subset copy of W
        s = get_kernel("pair_scores")(np.ascontiguousarray(x_own[a:b].toarray(), dtype=np.float64),
                                      np.ascontiguousarray(neighbour_means(nb, Xg, rows, backend)), lcol, rcol,
                                      float(min_expr))
        n_pos += np.count_nonzero(s > 0, axis=0)
    start = int(tile.rows[0]) if tile.n_own else 0
    write_columns(folder, start, own.indptr, own.data)
    return {"n_pos": n_pos, "n_neighbours": nb.counts, "start": start,
            "min_value": float(own.data.min()) if own.nnz else 0.0}


def _dense_means(means: sp.csr_matrix, genes: np.ndarray, divisor: np.ndarray | None, i: int, j: int) -> np.ndarray:
    """(j - i, len(genes)) dense neighbour means of block rows i..j for columns ``genes``: ``means`` divided by
    ``divisor`` when given (sums; each value divided once, as :func:`.neighbourhood.neighbour_means_sparse`)."""
    d = np.asarray(means[i:j][:, genes].toarray())
    return d if divisor is None else d / divisor[i:j, None]


def _pass2(tile: Tile, *, radius: float, columns: np.ndarray, genes: np.ndarray, lcol: np.ndarray,
           rcol: np.ndarray, min_expr: float, order_of: Mapping | None, tables: tuple, n_pairs: int,
           adj_method: str, cutoff: float, folder: str, backend: str = "cpu") -> dict:
    """Observed scores of the valid pairs, background exceedance counts and per-spot adjusted p-values of the
    tile's own rows, written to a part in ``folder`` (:func:`.entries.write_part`); returns the part's row
    range and entries and the tile's per-pair ``lr_summary`` counts at ``cutoff``.

    Only ``columns`` (the var indices of the LR genes and of their matched genes) are read; ``genes``,
    ``lcol``/``rcol`` and the pair tables index into them.
    """
    pl, pr = tables
    nb = tile_neighbourhood(tile, radius, order_of=order_of)
    # only the needed columns, selected on the CSR itself (no CSC copy of the whole tile)
    X = sp.csr_matrix(sp.csr_matrix(tile.X)[:, columns], dtype=np.float64)
    out = {k: [] for k in ("rows", "pair", "score", "count", "padj")}
    # row blocks bound the memory of a task: neighbour means of all background genes for ~4k rows at a time
    for a in range(0, tile.n_own, _ROW_BLOCK):
        b = min(a + _ROW_BLOCK, tile.n_own)
        if backend == "cpu":  # the CPU kernel divides the sums as it reads them: no divided copy of the block
            means, divisor = neighbour_sums_sparse(nb, X, a, b, backend)
            kw = {"divisor": divisor}
        else:
            means, divisor, kw = neighbour_means_sparse(nb, X, a, b, backend), None, {}
        x_own = X[a:b]
        rows, pair, score = _observed(x_own[:, genes], partial(_dense_means, means, genes, divisor), lcol, rcol,
                                      min_expr)
        counts = get_kernel("background_counts", backend)(x_own, means, rows, pair, score, pl, pr, float(min_expr),
                                                          **kw)
        p = np.maximum(counts, 1) / float(n_pairs)
        for k, v in (("rows", rows + a), ("pair", pair), ("score", score), ("count", counts),
                     ("padj", adjust_grouped(p, rows, adj_method))):
            out[k].append(v)
    rows, pair, score, counts, padj = (np.concatenate(out[k]) if out[k] else np.empty(0)
                                       for k in ("rows", "pair", "score", "count", "padj"))
    pair, counts = pair.astype(np.int32), counts.astype(np.int32)
    # this tile's share of lr_summary; its entries go to a part file, never back to the driver (at 10^6 cells
    # ~5 x 10^7 tested entries)
    n_spots, n_sig, n_sig_p = get_kernel("summary_counts")(pair, score, counts, padj, len(lcol), float(n_pairs),
                                                           float(min_expr), float(cutoff))
    start = int(tile.rows[0]) if tile.n_own else 0
    if tile.n_own and int(tile.rows[tile.n_own - 1]) - start != tile.n_own - 1:
        raise AssertionError("a tile's own rows are not one contiguous range of the store's rows")
    if len(rows):
        write_part(folder, start, start + tile.n_own, rows.astype(np.int32), pair, score, counts, padj)
    return {"start": start, "stop": start + tile.n_own, "nnz": len(rows), "n_spots": n_spots, "n_sig": n_sig,
            "n_sig_p": n_sig_p}


@dataclass
class _Prepared:
    pairs: LRPairs
    lcol: np.ndarray
    rcol: np.ndarray
    genes: np.ndarray  # var indices of the LR genes, in column order of lcol/rcol
    match: PairMatch  # how the table matched var_names (pairs dropped, and how many the other case would match)


def _prepare_pairs(ds: SpatialDataset, pairs: LRPairs) -> _Prepared:
    """The pairs with both genes in ``var_names`` and their genes' columns; how many were dropped is kept in
    ``match`` (a table in the other species' case drops most pairs, and says so)."""
    var = pd.Index(ds.var_names)
    match = match_pairs(pairs, var)
    keep = match.keep
    if not keep.any():
        hint = match.hint() or f"var_names begin {', '.join(map(str, var[:3]))}"
        raise ValueError(f"none of the LR pairs ({match.n_table:,} in the table) has both genes in var_names "
                         f"(matching is exact and case-sensitive); {hint}")
    pairs = LRPairs(pairs.ligand[keep], pairs.receptor[keep], pairs.species)
    li, ri = var.get_indexer(pairs.ligand), var.get_indexer(pairs.receptor)
    genes = np.unique(np.concatenate([li, ri]))
    pos = {g: k for k, g in enumerate(genes)}
    return _Prepared(pairs, np.array([pos[g] for g in li]), np.array([pos[g] for g in ri]), genes, match)


def _order_map(ds: SpatialDataset, neighbour_order) -> dict[int, np.ndarray] | None:
    """Exact-parity mode: obs name -> ordered neighbour names, as global rows."""
    if neighbour_order is None:
        return None
    idx = pd.Index(ds.obs_names)
    out = {}
    for name, nbrs in dict(neighbour_order).items():
        r = idx.get_indexer([name])[0]
        nb = idx.get_indexer(list(nbrs))
        if r < 0 or (nb < 0).any():
            raise ValueError(f"neighbour_order refers to observations not in the dataset (at {name!r})")
        out[int(r)] = nb.astype(np.int64)
    return out


@contextlib.contextmanager
def _old_objects_frozen():
    """Keep the objects that exist at entry out of the cyclic GC's full passes until exit.

    The first call in a process loads numba's compiled kernels, and numba's one-time set-up allocates some
    10^5 long-lived objects; that triggers a full collection which walks every object of the imported
    libraries (~0.15 s with pandas, dask and scipy loaded) although none of them is garbage. Frozen
    objects are only skipped, never lost: they return to the oldest generation at exit. Not done when the
    caller has frozen objects itself (their freeze is left as it is).
    """
    if gc.get_freeze_count() or not gc.isenabled():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


@writes_results
@reuse_tiles()  # a slice run as one task reads its tile once for both passes
@_old_objects_frozen()
def run(
    ds: SpatialDataset,
    lrs,
    min_spots: int = 10,
    distance: float | None = None,
    n_pairs: int = 1000,
    min_expr: float = 0.0,
    use_label: str | None = None,
    adj_method: str = "fdr_bh",
    pval_adj_cutoff: float = 0.05,
    seed: int = 0,
    layer: str = "X",
    background_pairs: Mapping[str, Any] | None = None,
    neighbour_order: Mapping[str, Any] | None = None,
    allow_negative: bool = False,
    neg_binom: bool = False,
    n_cpus: int | None = None,
    save_bg: bool = False,
    rows_per_task: int | None = None,
    scheduler=None,
    progress: bool = True,
    verbose: bool = True,
) -> CCIResult:
    """LR hotspot analysis as in stLearn ``st.tl.cci.run`` (per-spot backgrounds, per-spot BH).

    Parameters
    ----------
    ds
        The dataset; expression from matrix ``layer`` (stLearn's tutorial uses ``normalize_total`` output,
        no log1p). Values must be >= 0.
    lrs
        Pairs from :func:`load_lrs` (or ``L_R`` strings). Pairs with a gene missing from ``var_names`` are
        dropped.
    min_spots
        A pair is valid when more than ``min_spots`` observations have a score > 0 (strict).
    distance
        Neighbourhood radius in store units (inclusive, self excluded); ``None`` = 2 x the recorded spot
        diameter (stLearn's default); ``0`` = within-spot mode.
    n_pairs
        Random background pairs per LR (>= 100; the tutorial recommends ~10,000).
    min_expr
        m in the score's expression indicators.
    use_label
        Accepted for compatibility; the heterogeneity weight is 1 as in stLearn in practice (Q8).
    adj_method, pval_adj_cutoff
        statsmodels method for the per-spot correction (``fdr_bh`` native) and the significance cutoff.
    seed
        Keys the random streams: the same seed gives the same result on any cluster and tiling.
    layer
        Matrix to analyse.
    background_pairs
        Replay recorded backgrounds: ``{"L_R": (n_pairs, 2) array of gene names (ligand side, receptor
        side)}`` for every valid pair (exact parity with a recorded stLearn run).
    neighbour_order
        Test-only exact mode (Q7): ``{obs_name: [neighbour names in stLearn's order]}``; neighbour sums are
        then accumulated in the matrix dtype in that order, as stLearn does.
    allow_negative
        Accept negative values (the method assumes non-negative expression; Q16).
    neg_binom, n_cpus, save_bg
        stLearn arguments: ``neg_binom=True`` is not implemented and raises; ``n_cpus`` is ignored (the dask
        cluster sets the parallelism); ``save_bg`` is not supported (backgrounds are never materialised).
    rows_per_task, scheduler, progress
        Work splitting and where it runs (:mod:`stdask.cluster`).
    verbose
        Print stLearn's neighbour and valid-pair messages.
    copy
        Return the result without recording it on ``ds`` (by default it is recorded, pending until
        ``ds.write()``: stLearn's keys ``obsm['lr_scores' | 'p_adjs' | 'lr_pval_counts']``,
        ``uns['lr_summary' | 'lrfeatures' | 'lr_cci']``).

    Returns
    -------
    :class:`CCIResult` with ``lr_summary`` (n_spots, n_spots_sig using adjusted p-values, n_spots_sig_pval
    using raw p-values, both against ``pval_adj_cutoff``), ``lrfeatures`` and the per-cell matrices
    (observations x valid LRs, in ``lr_summary`` order) stored sparse over the tested entries.

    Differences from stLearn 1.2.2
    ------------------------------
    Q1 stable ordering (n_spots_sig desc, then name); Q2 matched-gene ties by var position; Q3 seeded
    counter-based streams; Q7 float64 neighbour sums in ascending index order (exact float32 mode via
    ``neighbour_order``); Q8 h = 1; Q13 int64 summary; Q16 negative values raise; Q17/Q18 impossible
    backgrounds and empty results raise; Q20 hash-set duplicate check; Q21 stable lrfeatures ranks.
    """
    t_start = time.perf_counter()
    _check_arguments(ds, n_pairs, layer, neg_binom, save_bg, min_spots, pval_adj_cutoff)
    _warn_scale(ds, layer)
    radius = resolve_distance(ds, distance, within_spot=True)
    prep = _prepare_pairs(ds, as_pairs(lrs))
    if verbose and prep.match.n_dropped:
        print(prep.match.message())
    order_of = _order_map(ds, neighbour_order)
    tiles = {"rows_per_task": rows_per_task, "scheduler": scheduler, "progress": progress}
    folder = new_folder(ds.path)
    try:
        parts = _run_pass1(ds, prep, radius, layer, min_expr, order_of, str(folder), tiles)
        valid = _valid_pairs(ds, parts, radius, layer, min_spots, allow_negative, verbose)
        vpairs = LRPairs(prep.pairs.ligand[valid], prep.pairs.receptor[valid])
        columns = GeneColumns(str(folder), [p["start"] for p in parts], ds.n_vars)
        del parts
        feats, bg = _background_setup(ds, vpairs, columns, n_pairs, seed, background_pairs)
        columns.remove()  # the genes' values on disk are no longer needed (at 10^6 cells ~0.4 GB)
        parts = _run_pass2(ds, bg, radius, layer, min_expr, order_of, n_pairs, adj_method, pval_adj_cutoff,
                           str(folder), tiles)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    result = CCIResult.from_parts(
        parts=parts, n_obs=ds.n_obs, obs_names=ds.obs_names, pairs=vpairs, folder=str(folder), n_pairs=n_pairs,
        min_expr=min_expr, cutoff=pval_adj_cutoff, lrfeatures=feats,
        params={"reference": REFERENCE, "deviations": list(DEVIATIONS), "seed": int(seed), "n_pairs": int(n_pairs),
                "min_spots": int(min_spots), "distance": float(radius), "min_expr": float(min_expr),
                "adj_method": adj_method, "pval_adj_cutoff": float(pval_adj_cutoff), "layer": layer,
                "replayed_background": background_pairs is not None, "exact_order": order_of is not None,
                **prep.match.params(), "seconds": round(time.perf_counter() - t_start, 3)},
        background_pairs=BackgroundPairs(bg, pd.Index(ds.var_names).to_numpy()))
    result.store(ds)
    return result


def _check_arguments(ds: SpatialDataset, n_pairs: int, layer: str, neg_binom: bool, save_bg: bool,
                     min_spots: int, pval_adj_cutoff: float) -> None:
    """Refuse, before any work, stLearn options outside stdask's scope, too few background pairs, counts and
    cutoffs out of range and a layer that is not stored."""
    if not (isinstance(min_spots, (int, np.integer)) and not isinstance(min_spots, bool) and min_spots >= 0):
        raise ValueError(f"min_spots={min_spots!r} (CLI: --min-spots) must be an integer >= 0: a pair is valid "
                         "when more than min_spots observations score > 0")
    if not (isinstance(pval_adj_cutoff, (int, float, np.number)) and 0 < pval_adj_cutoff <= 1):
        raise ValueError(f"pval_adj_cutoff={pval_adj_cutoff!r} (CLI: --cutoff) must be a p-value cutoff in (0, 1], "
                         "e.g. 0.05")
    if neg_binom:
        raise ValueError("neg_binom=True (negative-binomial p-values) is outside stdask's scope; "
                         "use the empirical background (neg_binom=False)")
    if save_bg:
        raise ValueError("save_bg=True is not supported: stdask never materialises the background score matrix")
    if n_pairs < 100:
        raise ValueError(f"n_pairs={n_pairs} is too small for a per-spot background; use >= 100 (stLearn "
                         "recommends ~1,000-10,000)")
    if layer not in ds.store.matrix_names():
        raise ValueError(f"no stored matrix {layer!r} in {ds.path} (have {ds.store.matrix_names()}); "
                         "write pending layers first with ds.write()")


def _warn_scale(ds: SpatialDataset, layer: str) -> None:
    """Warn when matrix ``layer`` looks like raw counts or log-transformed data (judged on its first rows)."""
    try:
        sample = ds.store.read_rows(0, min(ds.n_obs, SAMPLE_ROWS), layer)
    except KeyError:  # a dense layer: the values are whatever the user made them, not judged here
        return
    message = scale_warning(sample, layer)
    if message:
        # attributed to the user's line: above run are its two context-manager decorators and writes_results
        warnings.warn(message, UserWarning, stacklevel=6)


def _run_pass1(ds: SpatialDataset, prep: _Prepared, radius: float, layer: str, min_expr: float,
               order_of: dict | None, folder: str, tiles: dict[str, Any]) -> list[dict]:
    """Pass 1 over the tiles: each tile's :func:`_pass1` output (per pair, the rows scoring > 0; the own rows'
    non-zeros by gene written to ``folder``), in tile order."""
    res1 = map_tiles(ds, _pass1, halo=radius, layer=layer, **tiles, desc="cci: observed scores", radius=radius,
                     folder=folder,
                     genes=prep.genes, lcol=prep.lcol, rcol=prep.rcol, min_expr=min_expr, n_vars=ds.n_vars,
                     backend=settings.backend,
                     order_of=dask.delayed(order_of, pure=True, traverse=False) if order_of is not None else None)
    return [r for _, r in res1]


def _valid_pairs(ds: SpatialDataset, parts: list[dict], radius: float, layer: str, min_spots: int,
                 allow_negative: bool, verbose: bool) -> np.ndarray:
    """Positions (in the prepared pairs) of the pairs scoring > 0 in more than ``min_spots`` observations,
    after pass 1's checks: stLearn's neighbour line, some spot with a neighbour, no negative values."""
    if radius > 0:
        n_nb = np.concatenate([p["n_neighbours"] for p in parts])
        if verbose:  # stLearn's diagnostic line
            print(f"{int((n_nb == 0).sum())} spots with no neighbours, {int(np.median(n_nb))} median spot neighbours.")
        if np.all(n_nb == 0):
            raise ValueError(f"every spot has zero neighbours at distance {radius:g} {ds.unit}; use a larger "
                             "distance, or distance=0 for within-spot mode")
    min_value = min((p["min_value"] for p in parts), default=0.0)
    if min_value < 0 and not allow_negative:
        raise ValueError(f"matrix {layer!r} has negative values (min {min_value:g}); the LR score assumes "
                         "non-negative expression (e.g. normalize_total output without scaling). Pass "
                         "allow_negative=True to run anyway")
    n_pos = np.sum([p["n_pos"] for p in parts], axis=0)
    valid = np.flatnonzero(n_pos > min_spots)
    if verbose:
        print(f"Altogether {len(valid)} valid L-R pairs")
    if len(valid) == 0:
        raise ValueError(f"no valid L-R pairs: no pair has a score > 0 in more than min_spots={min_spots} "
                         "observations; lower min_spots or check that the LR genes are expressed")
    return valid


def _background_setup(ds: SpatialDataset, vpairs: LRPairs, columns: GeneColumns, n_pairs: int, seed: int,
                      background_pairs: Mapping[str, Any] | None) -> tuple[pd.DataFrame, Background]:
    """The valid pairs' ``lrfeatures`` and their :class:`Background`: expression-matched genes, with the
    recorded pairs to replay when ``background_pairs`` is given. ``columns`` serves each gene's non-zero values
    from disk, a group of genes at a time (genes are asked for in ascending order)."""
    n_obs, n_vars = ds.n_obs, ds.n_vars
    nz = columns.values

    var = pd.Index(ds.var_names)
    vl = var.get_indexer(vpairs.ligand)
    vr = var.get_indexer(vpairs.receptor)
    lr_genes = np.unique(np.concatenate([vl, vr]))
    lr_q, lr_med = column_quantiles_and_median(GeneValues(nz, lr_genes), n_obs)
    matched = matched_background(nz, lr_genes, n_vars, n_obs, n_pairs, var, lr_q)
    gq = {int(g): q for g, q in zip(lr_genes, lr_q.T)}
    lq = np.array([gq[int(g)] for g in vl])
    rq = np.array([gq[int(g)] for g in vr])
    nzmed = {int(g): m for g, m in zip(lr_genes, lr_med)}
    zero = {int(g): 1.0 - int(columns.nnz[g]) / n_obs for g in lr_genes}
    names = vpairs.names
    feats = lr_features(lq, rq, np.array([nzmed[int(g)] for g in vl]), np.array([nzmed[int(g)] for g in vr]),
                        np.array([zero[int(g)] for g in vl]), np.array([zero[int(g)] for g in vr]), names)
    replay = None
    if background_pairs is not None:
        replay = _replayed_pairs(background_pairs, names, var, n_pairs)
    else:
        for j, name in enumerate(names):  # fail here, not in a task, if a pair has too few distinct draws
            check_possible(matched[int(vl[j])], matched[int(vr[j])], n_pairs, name)
    return feats, Background(names, vl, vr, matched, int(n_pairs), int(seed), replay)


def _replayed_pairs(background_pairs: Mapping[str, Any], names, var: pd.Index,
                    n_pairs: int) -> tuple[np.ndarray, np.ndarray]:
    """(n_lr, n_pairs) int32 var indices (ligand side, receptor side) of the recorded background pairs."""
    pl = np.empty((len(names), n_pairs), dtype=np.int32)
    pr = np.empty_like(pl)
    for j, name in enumerate(names):
        if name not in background_pairs:
            raise KeyError(f"background_pairs has no entry for valid pair {name!r}")
        gp = np.asarray(background_pairs[name])
        bp = np.column_stack([var.get_indexer(gp[:, 0]), var.get_indexer(gp[:, 1])])
        if (bp < 0).any():
            raise ValueError(f"background_pairs[{name!r}] names genes not in var_names")
        if len(bp) != n_pairs:
            raise ValueError(f"background_pairs[{name!r}] has {len(bp)} pairs; n_pairs is {n_pairs}")
        pl[j], pr[j] = bp[:, 0], bp[:, 1]
    return pl, pr


def _run_pass2(ds: SpatialDataset, bg: Background, radius: float, layer: str, min_expr: float,
               order_of: dict | None, n_pairs: int, adj_method: str, cutoff: float, folder: str,
               tiles: dict[str, Any]) -> list[dict]:
    """Pass 2 over the tiles (:func:`_pass2`: backgrounds, p-values, per-spot BH, entries written to parts in
    ``folder``): each tile's row range and per-pair counts, in tile order."""
    vl, vr, replay = bg.ligand, bg.receptor, bg.replay
    # pass 2 reads only the genes the LRs and their backgrounds use (a few thousand of a 20-30k panel)
    bg_genes = [np.ravel(t) for t in (replay if replay is not None else bg.matched.values())]
    columns = np.unique(np.concatenate([vl, vr, *bg_genes]))
    genes2 = np.searchsorted(columns, np.unique(np.concatenate([vl, vr])))
    pos2 = {g: k for k, g in enumerate(np.unique(np.concatenate([vl, vr])))}
    lcol2 = np.array([pos2[g] for g in vl])
    rcol2 = np.array([pos2[g] for g in vr])
    # the tables are expanded once, by one task, and shared by all tiles (the graph carries the recipe)
    # (``bg`` as one literal with its own cheap token: an argument is otherwise walked field by field)
    tables_d = dask.delayed(background_tables, pure=True)(dask.delayed(bg, pure=True, traverse=False), columns)
    order_d = dask.delayed(order_of, pure=True, traverse=False) if order_of is not None else None
    return map_tiles(ds, _pass2, halo=radius, layer=layer, **tiles, desc="cci: backgrounds", radius=radius,
                     columns=columns, genes=genes2, lcol=lcol2, rcol=rcol2, min_expr=min_expr, order_of=order_d,
                     tables=tables_d, n_pairs=n_pairs, backend=settings.backend, adj_method=adj_method,
                     cutoff=float(cutoff), folder=folder, combine=list)
