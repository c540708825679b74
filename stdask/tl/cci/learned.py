"""``stdask.tl.cci.learned_graph_cci``: cell-type x cell-type interaction counts from a learned cell-cell
graph (STAGUE's raw learned adjacency S, spec ``stague.md`` section 9), tested against a label-permutation null.

The learned graph takes the place of run_cci's qualifying edges: its edges above a threshold are built once as
integer arrays, and the observed and permuted counts come from run_cci's own machinery
(:func:`~stdask.tl.cci.interactions._permutation_counts`: the same compiled kernel, the same counter-based
Philox streams, spots in obs-name order), as one "LR" named :data:`LR_NAME`. The result is a
:class:`~stdask.tl.cci.interaction_result.CCIInteractions`, so every CCI plot draws it.
"""
from __future__ import annotations

import time

import dask.array as da
import numpy as np
import scipy.sparse as sp

from ...dataset import SpatialDataset
from ...results import writes_results
from .interaction_result import KEY_PREFIX, CCIInteractions
from .edges import Edges
from .interactions import _cell_types, _check_stream_range, _permutation_counts, _pvalues

#: the single entry of the result's LR dimension; also the name that keys the permutation streams
LR_NAME = "learned_graph"
#: ``params['method']`` of a stored result, which tells it apart from a run_cci result under the same key
METHOD = "learned_graph_cci"


@writes_results
def learned_graph_cci(ds: SpatialDataset, use_label: str, *, adj_key: str = "stague_adj_raw",
                      threshold: float | None = None, quantile: float = 0.95, n_perms: int = 1000, seed: int = 0,
                      p_cutoff: float = 0.05, key_added: str | None = None, progress: bool = True,
                      scheduler=None) -> CCIInteractions:
    """Cell-type x cell-type interaction counts of a learned cell-cell graph, with a label-permutation test.

    The edges are the stored nonzero off-diagonal entries of ``obsp[adj_key]``; edge i -> j is kept when
    S[i, j] > ``threshold`` (strict). M[a, b] counts the kept ordered edges i -> j whose sender i (row of S)
    has label a and receiver j (column) label b, so a kept pair of a symmetric S counts in M[a, b] and
    M[b, a] (twice on the diagonal). Labels are permuted ``n_perms`` times (one permutation of all N cells
    per draw) and p[a, b] = #{k : M^k[a, b] >= M[a, b]} / n_perms, as in :func:`run_cci` (no pseudo-count:
    p = 0 is possible; M[a, b] = 0 gives p = 1).

    Parameters
    ----------
    ds
        Dataset holding the learned graph (``stdask.tl.stague`` writes it).
    use_label
        obs column of discrete labels; types T are its sorted unique values as strings (as run_cci).
    adj_key
        obsp key of the learned adjacency (N x N sparse).
    threshold
        Keep edges with S[i, j] > ``threshold``; ``None``: the ``quantile`` of the stored nonzero
        off-diagonal values.
    quantile
        In (0, 1); used when ``threshold`` is None (``np.quantile``, linear interpolation).
    n_perms
        Label permutations, >= 1.
    seed
        Keys the random streams exactly as run_cci does for an LR named :data:`LR_NAME`: permutation k is
        drawn from ``np.random.Philox(key=np.array([seed, name_key('learned_graph')], dtype=np.uint64),
        counter=[0, 0, k, STREAM_TAG])``, over the cells in obs-name order; the same for any worker count
        or store row order.
    p_cutoff
        ``sig`` keeps entries with p <= ``p_cutoff``; ``params['n_cci_sig']`` counts p < ``p_cutoff``
        (run_cci's Q5 convention).
    key_added
        Label of the result (default ``f"{use_label}_{adj_key}"``). It is stored as
        ``uns['cci_interactions_<key>']``, ``uns['lr_cci_<key>']`` and ``uns['lr_cci_raw_<key>']`` (T x T,
        index = sender type, columns = receiver type); ``uns['lr_summary']`` is left as it is. Plot with
        ``use_label=<key>`` (e.g. ``stdask.pl.cci_map(ds, use_label=key)``). A key holding run_cci's results
        is refused.
    progress, scheduler
        Whether to show progress, and where the permutation task runs (:func:`stdask.cluster.compute`).
    copy
        Return the result without recording it on ``ds``.

    Returns
    -------
    :class:`CCIInteractions` with one LR, :data:`LR_NAME`: ``raw`` (1, T, T) M, ``sig``, ``pvals``;
    ``params`` records the method, ``adj_key``, the threshold used and where it came from, ``quantile``,
    ``n_edges`` (kept ordered edges), ``n_candidate_edges``, ``n_cci_sig`` and the run time.
    """
    t_start = time.perf_counter()
    n_perms = _checked_args(quantile, n_perms, threshold)
    _check_stream_range(ds.n_obs, seed, "learned_graph_cci")
    key = f"{use_label}_{adj_key}" if key_added is None else str(key_added)
    _refuse_run_cci_key(ds, key)
    S = _learned_graph(ds, adj_key)
    cells = _cell_types(ds, use_label, False, None, 0.5)  # one label per cell: run_cci's discrete mode
    rows, cols, candidates = _candidate_edges(S)
    used = _threshold(S.data[candidates], threshold, quantile, adj_key)
    keep = S.data[candidates] > used
    edges = _edges(rows[keep], cols[keep], cells.rank)
    raw, ge, _ = _permutation_counts(edges, cells, np.array([LR_NAME]), n_perms, seed, None, scheduler, progress,
                                     caller="learned_graph_cci")
    pvals, sig_m = _pvalues(raw, ge, n_perms, p_cutoff)
    inter = CCIInteractions(
        key, np.array([LR_NAME]), np.asarray(cells.types, dtype=str), raw.astype(np.int64), sig_m, pvals, None,
        n_perms, int(seed), float(p_cutoff), False,
        {"method": METHOD, "use_label": str(use_label), "adj_key": str(adj_key), "threshold": float(used),
         "threshold_from": "quantile" if threshold is None else "user", "quantile": float(quantile),
         "n_edges": int(len(edges.eu)), "n_candidate_edges": int(len(rows)),
         "n_cci_sig": int((pvals < p_cutoff).sum()), "counting": "ordered edges, sender = row of S",
         "seconds": round(time.perf_counter() - t_start, 3)})
    inter.store(ds)
    return inter


def _checked_args(quantile: float, n_perms: int, threshold: float | None) -> int:
    if not 0 < float(quantile) < 1:
        raise ValueError(f"quantile must be in (0, 1), got {quantile}")
    if int(n_perms) != n_perms or int(n_perms) < 1:
        raise ValueError(f"n_perms must be an integer >= 1, got {n_perms}")
    if threshold is not None and not np.isfinite(float(threshold)):
        raise ValueError(f"threshold must be a finite number or None (use quantile=), got {threshold}")
    return int(n_perms)


def _refuse_run_cci_key(ds: SpatialDataset, key: str) -> None:
    """Never overwrite run_cci's results: a stored or pending result under ``key`` must be ours."""
    try:
        old = ds.get_result("uns", KEY_PREFIX + key)
    except KeyError:
        return
    method = dict(old.get("params", {})).get("method") if isinstance(old, dict) else None
    if method != METHOD:
        raise ValueError(f"uns[{KEY_PREFIX + key!r}] holds run_cci results; pass another key_added= so that "
                         "learned_graph_cci does not overwrite them")


def _learned_graph(ds: SpatialDataset, adj_key: str) -> sp.csr_matrix:
    """``obsp[adj_key]`` as an N x N CSR matrix with finite values (no copy when it is one already)."""
    try:
        S = ds.get_result("obsp", adj_key)
    except KeyError:
        raise KeyError(f"no learned graph obsp[{adj_key!r}] in {ds.path}: run sd.tl.stague(ds, ...) first or pass "
                       f"adj_key= (obsp keys: {ds.result_keys('obsp')})") from None
    if isinstance(S, da.Array):  # a pending graph of row blocks (spatial_neighbors' radius and kNN graphs)
        S = ds.result_csr("obsp", adj_key)
    if getattr(S, "ndim", None) != 2:
        raise ValueError(f"obsp[{adj_key!r}] must be an N x N matrix, got {type(S).__name__}")
    n = ds.n_obs
    if S.shape != (n, n):
        raise ValueError(f"obsp[{adj_key!r}] has shape {S.shape}; a cell-cell graph of this dataset is "
                         f"{n} x {n} (square, one row and column per observation)")
    S = sp.csr_matrix(S)
    if not np.isfinite(S.data).all():
        raise ValueError(f"obsp[{adj_key!r}] holds NaN or infinite values; recompute the learned graph")
    return S


def _candidate_edges(S: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows, cols, positions in ``S.data``) of the stored nonzero off-diagonal entries; O(nnz) memory."""
    n = S.shape[0]
    idx = np.int32 if n < 2**31 else np.int64
    rows = np.repeat(np.arange(n, dtype=idx), np.diff(S.indptr))
    pos = np.flatnonzero((S.indices != rows) & (S.data != 0))
    return rows[pos], S.indices[pos], pos


def _threshold(values: np.ndarray, threshold: float | None, quantile: float, adj_key: str) -> float:
    """The user's threshold, or the ``quantile`` of the candidate edges' values."""
    if threshold is not None:
        return float(threshold)
    if len(values) == 0:
        raise ValueError(f"obsp[{adj_key!r}] has no nonzero off-diagonal entries, so it has no quantile; check "
                         "the learned graph or pass threshold=")
    return float(np.quantile(values, quantile))


def _edges(rows: np.ndarray, cols: np.ndarray, rank: np.ndarray) -> Edges:
    """Kept edges as run_cci's one-LR edge arrays: every ordered edge one-way (never mutual), endpoints the
    distinct cells touched, numbered in canonical (obs-name) order as run_cci numbers them. O(N + E)."""
    ru, rv = rank[rows], rank[cols]
    touched = np.zeros(len(rank), bool)
    touched[ru] = True
    touched[rv] = True
    endpoints = np.flatnonzero(touched).astype(np.int64)
    local = np.cumsum(touched, dtype=np.int64) - 1  # canonical rank -> position among the endpoints
    E, K = len(rows), len(endpoints)
    return Edges(float("nan"), np.array([0, E], np.int64), local[ru], local[rv], np.zeros(E, np.uint8),
                  np.array([0, K], np.int64), endpoints)
