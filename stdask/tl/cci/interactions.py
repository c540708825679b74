"""``stdask.tl.cci.run_cci``: stLearn's cell-type x cell-type interaction counts per LR pair, with a
label-permutation test.

For every tested LR the qualifying spot edges (a significant spot next to a spot expressing the partner
gene) are built once, as integer arrays; they do not depend on the labels. The observed matrix M and every
permuted M^k are then one pass over those edges (O(E) per permutation, no strings). LRs are processed in
dask tasks, and permutation k of an LR is drawn from a counter-based Philox stream keyed by
(seed, LR name, k[, column]), so results are identical for any number of workers and any task split.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import dask
import dask.system
import numpy as np
import pandas as pd

from ...backend import get_kernel
from ...backend.cpu.interactions import STREAM_TAG
from ...dataset import SpatialDataset
from ...random_streams import name_key
from ...results import writes_results
from ...settings import settings
from .edges import EdgeInputs, Edges, qualifying_edges, row_dtype
from .interaction_result import CCIInteractions
from .result import CCIResult

REFERENCE = "stLearn 1.2.2"
#: deviations from the reference (spec section 15) that apply to run_cci; Q5/Q6 are quirks kept for parity
DEVIATIONS = ("Q3", "Q5", "Q6", "Q10", "Q13", "Q19")


# ---------------------------------------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------------------------------------
def _keys_of(use_label: str) -> tuple[str, str]:
    if use_label in ("label_transfer", "predictions"):
        return "predictions", "label_transfer"
    return use_label, use_label


def _labels(ds: SpatialDataset, obs_key: str) -> np.ndarray:
    obs = ds.obs
    if obs_key not in obs.columns:
        raise ValueError(f"obs has no column {obs_key!r} (needed even in mixture mode); obs columns: "
                         f"{list(obs.columns)}")
    col = obs[obs_key]
    if col.isna().any():
        raise ValueError(f"obs[{obs_key!r}] has {int(col.isna().sum())} missing labels; fill or drop them first")
    return col.astype(str).to_numpy()


def _mixture(ds: SpatialDataset, key, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(types, D): the proportion table aligned to ``ds.obs_names`` by barcode, columns by exact name."""
    if isinstance(key, pd.DataFrame):
        table, where = key, "the mixture table"
    else:
        try:
            table = ds.get_result("uns", key)
        except KeyError:
            raise ValueError(f"spot_mixtures=True but there is no proportion table uns[{key!r}]; attach it with "
                             f"ds.set_result('uns', {key!r}, DataFrame) (rows = obs names, columns = cell "
                             "types) or pass mixture_key=") from None
        where = f"uns[{key!r}]"
    if not isinstance(table, pd.DataFrame):
        raise ValueError(f"{where} must be a DataFrame (rows = obs names, columns = cell types), got "
                         f"{type(table).__name__}")
    table = table.copy()
    table.index = table.index.astype(str)
    table.columns = table.columns.astype(str)
    if table.index.has_duplicates:
        dup = table.index[table.index.duplicated()].unique()
        raise ValueError(f"{where} has duplicated row names, e.g. {list(dup[:5])}")
    if table.columns.has_duplicates:
        raise ValueError(f"{where} has duplicated columns {list(table.columns[table.columns.duplicated()])}")
    obs_names = pd.Index(ds.obs_names).astype(str)
    missing_rows = obs_names[~obs_names.isin(table.index)]
    all_set = np.unique(labels)
    missing_cols = [t for t in all_set if t not in table.columns]
    if len(missing_rows) or missing_cols:
        msg = [f"{where} does not match the dataset:"]
        if missing_cols:
            msg.append(f"cell types (labels of obs) missing from its columns: {missing_cols}; columns are "
                       f"{list(table.columns)} (names must match exactly)")
        if len(missing_rows):
            msg.append(f"{len(missing_rows)} of {len(obs_names)} observations missing from its rows, e.g. "
                       f"{list(missing_rows[:5])}")
        raise ValueError("\n  ".join(msg))
    types = table.columns.to_numpy(dtype=str) if table.shape[1] > len(all_set) else all_set
    D = table.loc[obs_names, list(types)].to_numpy(dtype=np.float64)
    if not np.isfinite(D).all():
        raise ValueError(f"{where} has NaN or infinite proportions")
    return np.asarray(types, dtype=str), D


#: most qualifying edges (an upper bound: the significant rows' degrees) one task's LRs may have: a task holds
#: about 50 bytes per edge (edges, endpoints, neighbour lists), so ~0.4 GB; one LR with more is still one task
MAX_TASK_EDGES = 1 << 23


def _batches(cost: np.ndarray, lrs_per_task: int | None, edges: np.ndarray | None = None) -> list[tuple[int, int]]:
    """LR ranges (a, b) of the tasks: ``lrs_per_task`` LRs each, or about 4 tasks per core of equal ``cost``,
    split further so that no task's ``edges`` exceed :data:`MAX_TASK_EDGES` (memory bounded by the task, not the
    slice). The split changes no number: each LR's permutations come from its own streams."""
    n = len(cost)
    if lrs_per_task is not None:
        if int(lrs_per_task) < 1:
            raise ValueError(f"lrs_per_task must be >= 1, got {lrs_per_task}")
        step = int(lrs_per_task)
        return [(a, min(a + step, n)) for a in range(0, n, step)]
    edges = np.zeros(n, np.int64) if edges is None else edges
    n_tasks = max(1, min(n, 4 * dask.system.CPU_COUNT))
    target = cost.sum() / n_tasks
    out, a, acc, acc_e = [], 0, 0.0, 0
    for j in range(n):
        if j > a and acc_e + int(edges[j]) > MAX_TASK_EDGES:
            out.append((a, j))
            a, acc, acc_e = j, 0.0, 0
        acc += cost[j]
        acc_e += int(edges[j])
        if acc >= target and j + 1 < n:
            out.append((a, j + 1))
            a, acc, acc_e = j + 1, 0.0, 0
    out.append((a, n))
    return out


def _batch_task(data, a: int, b: int, source, keys, n_perms: int, columns, backend: str = "cpu"):
    """One dask task: LRs a..b-1 (``data`` is the shared (N,) codes or (N, T) presence array), on the client's
    ``backend`` (read by the caller: a worker's own setting is not the user's). ``source`` is the LRs' edges
    (:class:`.edges.Edges`) or what they are built from (:class:`.edges.EdgeInputs`: built here, for these LRs
    only, so no process ever holds the edges of every LR). Returns the kernel's (raw, ge) and the number of
    edges."""
    e_ptr, eu, ev, mut, k_ptr, endpoints = source.lr_range(a, b)
    args = (e_ptr, eu, ev, mut, k_ptr, endpoints, keys[a:b], int(n_perms), STREAM_TAG)
    if columns is None:
        codes, T = data
        raw, ge = get_kernel("discrete_batch", backend)(codes, T, *args)
    else:
        raw, ge = get_kernel("sets_batch", backend)(data, bool(columns), *args)
    return raw, ge, len(eu)


# ---------------------------------------------------------------------------------------------------------
# run_cci
# ---------------------------------------------------------------------------------------------------------
@writes_results
def run_cci(
    ds: SpatialDataset,
    use_label: str,
    result: CCIResult | None = None,
    min_spots: int = 3,
    sig_spots: bool = True,
    spot_mixtures: bool = False,
    cell_prop_cutoff: float = 0.2,
    p_cutoff: float = 0.05,
    n_perms: int = 100,
    seed: int = 0,
    mixture_key: str | pd.DataFrame | None = None,
    n_cpus: int | None = None,
    scheduler=None,
    progress: bool = True,
    lrs_per_task: int | None = None,
) -> CCIInteractions:
    """Cell-type x cell-type interactions per LR pair, as stLearn ``st.tl.cci.run_cci``.

    For each tested LR (L, R), an oriented edge u -> v *qualifies* when v is a neighbour of u (the
    neighbourhood ``run`` used: same radius, or u itself in within-spot mode), u is significant for the LR,
    and (L expressed in u and R in v) or (R in u and L in v), expression meaning a value > 0 in the layer
    ``run`` analysed. M[a, b] counts the distinct spot pairs joined by a qualifying edge whose **sender**
    (the significant spot, the row) holds type a and whose **receiver** (its neighbour, the column) holds
    type b; a pair qualifying in both directions counts once per cell. Labels are then permuted
    ``n_perms`` times (discrete: the rows of the one-hot table with one permutation of all N spots; mixture:
    each type's column independently) and p[a, b] = #{k : M^k[a, b] >= M[a, b]} / n_perms.

    Parameters
    ----------
    ds
        The dataset ``run`` analysed.
    use_label
        obs column of discrete labels, required in mixture mode too (``'label_transfer'`` or
        ``'predictions'``: obs ``'predictions'``, uns ``'label_transfer'``). Types T are the sorted unique
        labels (as strings).
    result
        The :class:`CCIResult` of ``run`` (default: the one stored on ``ds``).
    min_spots
        LRs with ``n_spots_sig > min_spots`` (``sig_spots=True``) or ``n_spots > min_spots`` are tested
        (strict).
    sig_spots
        Senders are the spots significant for the LR (``lr_sig_scores > 0``); ``False``: every spot with
        ``lr_scores > 0``.
    spot_mixtures
        Use a proportion table (rows = obs names, columns = cell types) instead of one label per spot:
        ``uns[use_label]`` or ``mixture_key``. Rows are aligned by barcode, columns matched by exact name;
        if the table has more columns than there are labels, T is its columns in table order.
    cell_prop_cutoff
        Type t is present in a spot iff its proportion > ``cell_prop_cutoff`` (strict; one-hot labels
        count as proportions 0/1).
    p_cutoff
        ``sig`` keeps entries with p <= ``p_cutoff``; ``n_cci_sig`` counts p < ``p_cutoff`` (Q5).
    n_perms
        Permutations; 0 gives raw counts only, with p = 1 everywhere.
    seed
        Keys the random streams: permutation k of LR j is drawn from the stream of
        ``np.random.Philox(key=np.array([seed, name_key(name)], dtype=np.uint64), counter=[0, column, k,
        STREAM_TAG])`` (``name_key``: BLAKE2b-64 of the name; column 0 for row permutations).
    mixture_key
        uns key (or the DataFrame itself) of the proportion table, overriding the default.
    n_cpus
        Ignored (the dask cluster sets the parallelism); accepted for stLearn compatibility.
    scheduler, progress
        Where the tasks run and whether to show progress (:func:`stdask.cluster.compute`).
    copy
        Return the result without recording it on ``ds`` (by default it is recorded, pending until
        ``ds.write()``: the updated ``uns['lr_summary']``, ``uns['lr_cci_<label>']``,
        ``uns['lr_cci_raw_<label>']`` and ``uns['cci_interactions_<label>']``; see :meth:`CCIInteractions.store`).
    lrs_per_task
        LRs per dask task (default: about 4 tasks per core, balanced by cost). Results do not depend on it.

    Returns
    -------
    :class:`CCIInteractions`; ``.stlearn_uns()`` gives stLearn's keys: ``lr_summary`` with int64
    ``n_cci_sig_<label>`` (#p < p_cutoff), ``n-spot_cci_<label>`` (sum M) and ``n-spot_cci_sig_<label>``
    (sum of the significant M), 0 for untested LRs; ``lr_cci_<label>`` / ``lr_cci_raw_<label>`` (T x T
    sums over LRs, index = sender type, columns = receiver type); ``per_lr_cci_<label>``,
    ``per_lr_cci_pvals_<label>`` and ``per_lr_cci_raw_<label>`` ({LR: T x T DataFrame}).

    Differences from stLearn 1.2.2
    ------------------------------
    - Q3: permutations come from counter-based Philox streams keyed by (seed, LR name, permutation
      index[, column]) instead of numba's unseeded RNG: reproducible, identical for any number of workers
      or tasks. Spots are put in obs-name order before sampling, so the store's row order (its tiling)
      does not change the draws either.
    - A permutation needs the permuted labels only at the K endpoints of the LR's qualifying edges, so
      stdask draws those directly: an ordered sample of K distinct spots without replacement (a partial
      Fisher-Yates shuffle, O(K)), giving endpoint i the label of the i-th sampled spot. For a uniform
      random permutation pi of all N spots, (pi(u_1), ..., pi(u_K)) is exactly such a sample, so M^k has
      exactly the distribution of stLearn's full row (or, per column, column) permutation. Each step draws
      an exactly uniform integer (32-bit draws, Lemire's multiply-shift with rejection; N < 2**32).
    - Q10: the mixture table's rows are aligned by barcode (extra rows ignored) and its columns matched by
      exact name, with errors listing what is missing; stLearn requires rows in obs order and takes the
      first column whose name *contains* the label. A missing table raises instead of falling back to
      discrete mode, and missing labels (NaN) raise instead of becoming the type ``'nan'``.
    - Q13: the three ``lr_summary`` columns are int64 (float64 in stLearn).
    - Q19: ``adj_pvals`` marks stored results stale (``stale=True``) and :meth:`CCIInteractions.load`
      warns.
    - Kept for parity: p == p_cutoff stays in ``sig`` but is not counted in ``n_cci_sig`` (Q5); no
      pseudo-count, so p = 0 is possible (Q6); a mixture table whose entries are all 0 or 1 is permuted
      by rows, as stLearn decides "discrete" from the content.
    """
    t_start = time.perf_counter()
    result, n_perms = _checked_inputs(ds, result, n_perms, seed)
    cells = _cell_types(ds, use_label, spot_mixtures, mixture_key, cell_prop_cutoff)
    tested = _tested_lrs(result, min_spots, sig_spots)
    edges = qualifying_edges(ds, result, tested, cells.rank, scheduler, progress)
    raw, ge, n_e = _permutation_counts(edges, cells, tested.names, n_perms, seed, lrs_per_task, scheduler, progress)
    pvals, sig_m, summary = _pvalues_and_summary(raw, ge, n_perms, p_cutoff, result.lr_summary, tested.index, use_label)
    inter = CCIInteractions(
        str(use_label), tested.names, np.asarray(cells.types, dtype=str), raw.astype(np.int64), sig_m, pvals,
        summary, n_perms, int(seed), float(p_cutoff), False,
        {"reference": REFERENCE, "deviations": list(DEVIATIONS), "min_spots": int(min_spots),
         "sig_spots": bool(sig_spots), "spot_mixtures": bool(spot_mixtures),
         "cell_prop_cutoff": float(cell_prop_cutoff), "distance": edges.radius,
         "permutation": "rows" if cells.columns is None or not cells.columns else "columns",
         "n_edges": n_e, "seconds": round(time.perf_counter() - t_start, 3)})
    inter.store(ds)
    return inter


def _checked_inputs(ds: SpatialDataset, result: CCIResult | None, n_perms: int, seed: int) -> tuple[CCIResult, int]:
    """The ``run`` result to use (``result``, or the one stored on ``ds``) and ``n_perms`` as an int, after
    checking that the result belongs to ``ds`` and that ``n_perms``, ``seed`` and the size are in range."""
    if result is None:
        result = CCIResult.load(ds)
    n_obs = ds.n_obs
    if result.shape[0] != n_obs or not pd.Index(result.obs_names).equals(pd.Index(ds.obs_names)):
        raise ValueError("result does not belong to this dataset (its observations differ); pass the "
                         "CCIResult that run() returned for ds")
    n_perms = int(n_perms)
    if n_perms < 0:
        raise ValueError(f"n_perms must be >= 0, got {n_perms}")
    _check_stream_range(n_obs, seed, "run_cci")
    return result, n_perms


def _check_stream_range(n_obs: int, seed: int, caller: str) -> None:
    """The permutation streams take a 64-bit seed and sample with 32-bit draws (N < 2**32)."""
    if not 0 <= int(seed) < 2**64:
        raise ValueError(f"seed must be in [0, 2**64), got {seed}")
    if n_obs >= 2**32:
        raise ValueError(f"{caller} permutes at most 2**32 - 1 observations; the dataset has {n_obs:,}")


@dataclass
class _Cells:
    """The spots' cell types as the permutation kernels take them."""

    types: np.ndarray  # (T,) str type names
    shared: Any  # one label per spot: ((N,) int64 codes in canonical order, T); else (N, T) uint8 presence
    columns: bool | None  # None: one label per spot; False: presence rows permuted; True: each column alone
    rank: np.ndarray  # (N,) int64 canonical (obs-name) rank of each row


def _cell_types(ds: SpatialDataset, use_label: str, spot_mixtures: bool, mixture_key,
                cell_prop_cutoff: float) -> _Cells:
    """Types, per-spot presence and permutation mode, in canonical spot order (by obs name, so the draws do
    not depend on the store's row order)."""
    obs_key, uns_key = _keys_of(use_label)
    labels = _labels(ds, obs_key)
    if spot_mixtures:
        types, D = _mixture(ds, uns_key if mixture_key is None else mixture_key, labels)
    else:
        types = np.unique(labels)
        D = None
    T = len(types)
    if D is None:
        codes = np.searchsorted(types, labels).astype(np.int64)
        row_perm = True
        one_label = 0 <= cell_prop_cutoff < 1
        # one-hot labels with a cutoff outside [0, 1): every type present in every spot, or none
        pres_rows = None if one_label else np.eye(T)[codes] > cell_prop_cutoff
    else:
        row_perm = bool(np.all((D == 0) | (D == 1)))  # stLearn decides "discrete" from the content
        pres_rows = D > cell_prop_cutoff
        one_label = row_perm and bool(np.all(pres_rows.sum(axis=1) == 1))
        codes = np.argmax(pres_rows, axis=1).astype(np.int64) if one_label else None
    n_obs = ds.n_obs
    canon = np.argsort(pd.Index(ds.obs_names).astype(str).to_numpy(), kind="stable")
    rank = np.empty(n_obs, np.int64)
    rank[canon] = np.arange(n_obs)
    if one_label:
        return _Cells(types, (np.ascontiguousarray(codes[canon]), T), None, rank)
    return _Cells(types, np.ascontiguousarray(pres_rows[canon].astype(np.uint8)), not row_perm, rank)


@dataclass
class _Tested:
    """The LRs tested and their senders."""

    index: np.ndarray  # positions in lr_summary
    names: np.ndarray  # str LR names
    s_ptr: np.ndarray  # (n_tested + 1,) int64: LR j's senders are s_rows[s_ptr[j]:s_ptr[j + 1]]
    s_rows: np.ndarray  # rows (int32 below 2**31 rows), ascending per LR


def _tested_lrs(result: CCIResult, min_spots: int, sig_spots: bool) -> _Tested:
    """LRs with more than ``min_spots`` (significant) spots, and each one's sender spots."""
    summary = result.lr_summary
    col = "n_spots_sig" if sig_spots else "n_spots"
    tested = np.flatnonzero(summary[col].to_numpy() > min_spots)
    if len(tested) == 0:
        raise ValueError(f"no LR pair has {col} > min_spots={min_spots}; lower min_spots, use sig_spots=False, "
                         "or re-run run() with more relaxed parameters")
    lrs = summary.index.to_numpy()[tested].astype(str)
    # two reads of the matrices a row block at a time (a run's matrices stay in its parts or in the store):
    # the counts per LR, then each LR's rows in place; only the (tested LR, row) pairs that count are held
    col_of = np.full(len(summary), -1, np.int64)
    col_of[tested] = np.arange(len(tested))
    s_ptr = np.zeros(len(tested) + 1, np.int64)
    for _, cols, _ in _senders(result, col_of, sig_spots):
        s_ptr[1:] += np.bincount(cols, minlength=len(tested))
    np.cumsum(s_ptr, out=s_ptr)
    s_rows = np.empty(int(s_ptr[-1]), row_dtype(result.shape[0]))
    fill = s_ptr[:-1].copy()
    for start, cols, rows in _senders(result, col_of, sig_spots):
        o = np.argsort(cols, kind="stable")  # rows stay ascending within each LR
        cols, rows = cols[o], rows[o]
        per = np.bincount(cols, minlength=len(tested))
        first = np.cumsum(per) - per  # each LR's first position in this block's sorted entries
        s_rows[fill[cols] + np.arange(len(cols)) - first[cols]] = rows + start
        fill += per
    return _Tested(tested, lrs, s_ptr, s_rows)


def _senders(result: CCIResult, col_of: np.ndarray, sig_spots: bool):
    """Per row block of the result: (first row, tested-LR column, row in block) of the entries with score > 0
    (and p_adj < cutoff with ``sig_spots``), grouped by row."""
    for start, (score, padj) in result.row_blocks(("score", "padj")):
        keep = score.data > 0
        if sig_spots:
            keep &= padj.data < result.cutoff
        rows = np.repeat(np.arange(score.shape[0], dtype=np.int64), np.diff(score.indptr))[keep]
        cols = col_of[score.indices[keep]]
        yield start, cols[cols >= 0], rows[cols >= 0]


def _permutation_counts(edges: Edges | EdgeInputs, cells: _Cells, lrs: np.ndarray, n_perms: int, seed: int,
                        lrs_per_task: int | None, scheduler, progress: bool,
                        caller: str = "run_cci") -> tuple[np.ndarray, np.ndarray, int]:
    """(n_tested, T, T) observed counts M and #{k : M^k >= M}, in LR batches (dask tasks), and the number of
    qualifying edges; ``caller`` names the progress bar."""
    from ...cluster import compute, share

    T = len(cells.types)
    keys = np.array([[int(seed), name_key(name)] for name in lrs], dtype=np.uint64).reshape(-1, 2)
    n_e, n_k = edges.costs()
    cost = (n_perms + 1) * (n_e + n_k * (1 if cells.columns is None else T)) + 1.0
    batches = _batches(cost, lrs_per_task, n_e)
    # the inputs grow with the slice (the edge inputs: ~100 bytes a spot): placed once, referenced by the tasks
    shared_d, source, keys_d = share(cells.shared, edges, keys, scheduler=scheduler)
    task = dask.delayed(_batch_task, pure=True)
    tasks = [task(shared_d, a, b, source, keys_d, n_perms, cells.columns, settings.backend) for a, b in batches]
    out = compute(*tasks, scheduler=scheduler, progress=progress, desc=f"{caller}: {n_perms} permutations")
    raw = np.concatenate([o[0] for o in out]).reshape(len(lrs), T, T)
    ge = np.concatenate([o[1] for o in out]).reshape(len(lrs), T, T)
    return raw, ge, int(sum(o[2] for o in out))


def _pvalues_and_summary(raw: np.ndarray, ge: np.ndarray, n_perms: int, p_cutoff: float, summary: pd.DataFrame,
                         tested: np.ndarray, use_label: str) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """p-values, the significant counts (M where p <= ``p_cutoff``) and ``lr_summary`` with stLearn's three
    ``run_cci`` columns (0 for untested LRs)."""
    pvals, sig_m = _pvalues(raw, ge, n_perms, p_cutoff)
    new = summary.copy()
    for name, vals in ((f"n_cci_sig_{use_label}", (pvals < p_cutoff).sum(axis=(1, 2))),
                       (f"n-spot_cci_{use_label}", raw.sum(axis=(1, 2))),
                       (f"n-spot_cci_sig_{use_label}", sig_m.sum(axis=(1, 2)))):
        column = np.zeros(len(new), np.int64)
        column[tested] = vals
        new[name] = column
    return pvals, sig_m, new


def _pvalues(raw: np.ndarray, ge: np.ndarray, n_perms: int, p_cutoff: float) -> tuple[np.ndarray, np.ndarray]:
    """p = #{k : M^k >= M} / n_perms (1 where M = 0 or n_perms = 0, no pseudo-count) and the significant
    counts: M where p <= ``p_cutoff``, else 0."""
    if n_perms > 0:
        pvals = np.where(raw > 0, ge / float(n_perms), 1.0)
    else:
        pvals = np.ones(raw.shape)
    return pvals, np.where(pvals > p_cutoff, 0, raw).astype(np.int64)
