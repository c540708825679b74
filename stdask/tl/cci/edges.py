"""run_cci's qualifying spot edges: what they are built from, and how a task builds those of a range of LRs.

Edge (u -> v) of an LR qualifies iff v is a neighbour of u (within the radius ``run`` used, inclusive, self
excluded), u is significant for the LR, and (L_u and R_v) or (R_u and L_v) (kernel ``build_edges``). The
edges of all LRs together grow with the slice (about 2 x 10^8 at 3 x 10^6 spots), so they are built in the
tasks, a range of LRs at a time, and never gathered.

Nothing here holds the neighbour graph either: a task finds the neighbours of its LRs' significant rows in
a cell list of the coordinates (:class:`stdask.gr.radius.CellList`, the exact test
``dx*dx + dy*dy <= r*r`` of ``spatial_neighbors``), so its lists equal the stored radius graph's rows bit for
bit while the driver holds about 40 bytes per spot instead of the graph (12 bytes per edge, ~37 edges per spot
on a bin20 Stereo-seq chip at stLearn's default radius).
"""
from __future__ import annotations

from dataclasses import dataclass

import dask
import numpy as np
import pandas as pd
import scipy.sparse as sp

from ...backend import get_kernel
from ...dataset import SpatialDataset
from ...gr.radius import CellList
from .result import CCIResult


def row_dtype(n_obs: int) -> type:
    """The integer type of row numbers of an ``n_obs``-row slice: int32 while it fits (half the memory)."""
    return np.int32 if n_obs <= np.iinfo(np.int32).max else np.int64


@dataclass
class Edges:
    """Every tested LR's qualifying edges (``build_edges``), endpoints renumbered canonically."""

    radius: float  # the neighbourhood radius run used (0: within-spot mode)
    e_ptr: np.ndarray  # (n_tested + 1,) LR j's edges are eu/ev/mut[e_ptr[j]:e_ptr[j + 1]]
    eu: np.ndarray  # sender endpoint of each edge (position among the LR's endpoints)
    ev: np.ndarray  # receiver endpoint
    mut: np.ndarray  # edge qualifies in both directions
    k_ptr: np.ndarray  # (n_tested + 1,) LR j's endpoints are endpoints[k_ptr[j]:k_ptr[j + 1]]
    endpoints: np.ndarray  # canonical rank of each endpoint spot

    def lr_range(self, a: int, b: int) -> tuple:
        """(e_ptr, eu, ev, mut, k_ptr, endpoints) of LRs a..b-1, pointers from 0."""
        ea, eb = self.e_ptr[a], self.e_ptr[b]
        ka, kb = self.k_ptr[a], self.k_ptr[b]
        return (self.e_ptr[a:b + 1] - ea, self.eu[ea:eb], self.ev[ea:eb], self.mut[ea:eb],
                self.k_ptr[a:b + 1] - ka, self.endpoints[ka:kb])

    def costs(self) -> tuple[np.ndarray, np.ndarray]:
        """(n_lr,) edges and endpoints of each LR."""
        return np.diff(self.e_ptr), np.diff(self.k_ptr)


@dataclass
class EdgeInputs:
    """What every tested LR's qualifying edges are built from, in the tasks, a range of LRs at a time."""

    radius: float  # the neighbourhood radius run used (0: within-spot mode)
    n_obs: int
    coords: np.ndarray | None  # (N, 2) float64 store coordinates (None within spot)
    cells: CellList | None  # the coordinates' cell list for the radius (None within spot)
    degree: np.ndarray  # (N,) int32 neighbours of each row (ones within spot)
    s_ptr: np.ndarray  # (n_tested + 1,) significant rows of each LR, CSC-like
    s_rows: np.ndarray
    x_ptr: np.ndarray  # rows expressing each needed gene, CSC-like
    x_rows: np.ndarray
    lgene: np.ndarray  # (n_tested,) column of x_ptr of each LR's ligand / receptor
    rgene: np.ndarray
    rank: np.ndarray  # (N,) canonical (obs-name) rank of each row

    def neighbour_lists(self, s_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(g_ptr, g_idx, g_row) for ``build_edges``: the neighbour lists of the distinct rows of ``s_rows``
        (global rows, ascending) and each entry's list."""
        if self.cells is None:
            return np.zeros(1, np.int64), np.zeros(0, np.int64), np.zeros(len(s_rows), np.int64)
        rows, g_row = np.unique(s_rows, return_inverse=True)
        block = self.cells.query(self.coords[rows, 0], self.coords[rows, 1], rows)
        g_ptr = np.zeros(len(rows) + 1, np.int64)
        np.cumsum(block.counts, out=g_ptr[1:])
        return g_ptr, block.cols, g_row.astype(np.int64)

    def lr_range(self, a: int, b: int) -> tuple:
        """(e_ptr, eu, ev, mut, k_ptr, endpoints) of LRs a..b-1: ``build_edges`` on their significant rows, then
        endpoints renumbered canonically -- per LR, so the same arrays as building all LRs and slicing."""
        sa, sb = self.s_ptr[a], self.s_ptr[b]
        s_rows = self.s_rows[sa:sb]
        g_ptr, g_idx, g_row = self.neighbour_lists(s_rows)
        # the rows' degrees only (not a diff of the whole graph's pointer in every task)
        cap = int(self.degree[s_rows].sum(dtype=np.int64))
        e_ptr, eu, ev, mut, k_ptr, endpoints = get_kernel("build_edges")(
            self.n_obs, g_ptr, g_idx, g_row, self.cells is None, self.s_ptr[a:b + 1] - sa, s_rows, self.x_ptr,
            self.x_rows, self.lgene[a:b], self.rgene[a:b], cap)
        eu, ev, k_ptr, endpoints = canonical(eu, ev, e_ptr, k_ptr, self.rank[endpoints])
        return e_ptr, eu, ev, mut, k_ptr, endpoints

    def costs(self) -> tuple[np.ndarray, np.ndarray]:
        """(n_lr,) upper bounds of each LR's edges and endpoints (its significant rows' degrees; 1 within spot)."""
        per_row = np.concatenate([[0], np.cumsum(self.degree[self.s_rows], dtype=np.int64)])
        cap = per_row[self.s_ptr[1:]] - per_row[self.s_ptr[:-1]]
        return cap, 2 * cap


def canonical(eu, ev, e_ptr, k_ptr, ep_rank):
    """Renumber each LR's endpoints in canonical (obs-name) order; endpoints become canonical ranks."""
    n_lr = len(k_ptr) - 1
    lr_of_k = np.repeat(np.arange(n_lr), np.diff(k_ptr))
    order = np.lexsort((ep_rank, lr_of_k))  # new position -> old position
    new_of_old = np.empty(len(order), np.int64)
    new_of_old[order] = np.arange(len(order))
    lr_of_e = np.repeat(np.arange(n_lr), np.diff(e_ptr))
    base = k_ptr[lr_of_e]
    eu = new_of_old[eu + base] - base
    ev = new_of_old[ev + base] - base
    return eu, ev, k_ptr, ep_rank[order]


# ---------------------------------------------------------------------------------------------------------
# the inputs, from the dataset
# ---------------------------------------------------------------------------------------------------------
def _expr_block(block, start: int, genes: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """(gene position, row in block) of every entry > 0 of the given genes in one row block, by gene then row;
    and the block's first row."""
    x = sp.csc_matrix(sp.csr_matrix(block)[:, genes])
    pos = x.data > 0
    col = np.repeat(np.arange(len(genes), dtype=np.int32), np.diff(x.indptr))
    return col[pos], x.indices[pos].astype(np.int32), start


def expressed_rows(ds: SpatialDataset, genes: np.ndarray, layer: str, scheduler,
                   progress) -> tuple[np.ndarray, np.ndarray]:
    """CSC-like (ptr, rows) of the rows with value > 0 of each gene (rows ascending, :func:`row_dtype`), one
    task per row chunk."""
    from ...cluster import compute

    arr = ds.matrix(layer)
    starts = np.concatenate([[0], np.cumsum(arr.chunks[0])])
    f = dask.delayed(_expr_block, pure=True)
    res = compute(*[f(blk, int(starts[i]), genes) for i, blk in enumerate(arr.to_delayed().ravel())],
                  scheduler=scheduler, progress=progress, desc="run_cci: expression")
    ptr = np.zeros(len(genes) + 1, np.int64)
    for col, _, _ in res:
        ptr[1:] += np.bincount(col, minlength=len(genes))
    np.cumsum(ptr, out=ptr)
    # each block's entries are by gene then row, and the blocks come in row order: placed block by block at
    # each gene's fill position, every gene's rows end ascending (no sort of all entries)
    rows = np.empty(int(ptr[-1]), row_dtype(ds.n_obs))
    fill = ptr[:-1].copy()
    for col, r, start in res:
        per = np.bincount(col, minlength=len(genes))
        first = np.cumsum(per) - per
        rows[fill[col] + np.arange(len(col)) - first[col]] = r.astype(rows.dtype) + start
        fill += per
    return ptr, rows


def _degrees(cells: CellList, coords: np.ndarray, chunk: int = 1 << 20) -> np.ndarray:
    """(N,) int32 neighbours of every row (the radius graph's degrees), counted a chunk of rows at a time."""
    n = len(coords)
    deg = np.empty(n, np.int32)
    for a in range(0, n, chunk):
        rows = np.arange(a, min(a + chunk, n), dtype=np.int64)
        deg[rows] = cells.count(coords[rows, 0], coords[rows, 1], rows)
    return deg


def qualifying_edges(ds: SpatialDataset, result: CCIResult, tested, rank: np.ndarray, scheduler,
                     progress: bool) -> EdgeInputs:
    """Expression of the tested LRs' genes and the neighbourhood ``run`` used: what the tasks build the
    qualifying edges from. ``tested`` has ``index`` (the LRs' positions in ``lr_summary``) and ``s_ptr``,
    ``s_rows`` (each one's significant rows, CSC-like); ``rank`` is each row's canonical (obs-name) rank."""
    index = tested.index
    n_obs = ds.n_obs
    var = pd.Index(ds.var_names)
    lig = var.get_indexer(result.pairs.ligand[index])
    rec = var.get_indexer(result.pairs.receptor[index])
    if (lig < 0).any() or (rec < 0).any():
        raise ValueError("the result names LR genes that are not in ds.var_names; pass the result of run() on ds")
    genes = np.unique(np.concatenate([lig, rec]))
    layer = str(result.params.get("layer", "X"))
    x_ptr, x_rows = expressed_rows(ds, genes, layer, scheduler, progress)
    radius = float(result.params.get("distance", np.nan))
    if not np.isfinite(radius):
        raise ValueError("the result records no neighbourhood distance (params['distance']); re-run run()")
    if radius == 0:
        coords, cells, degree = None, None, np.ones(n_obs, np.int32)
    else:
        coords = np.ascontiguousarray(ds.coords, dtype=np.float64)
        cells = CellList.build(coords, np.arange(n_obs, dtype=np.int64), radius)
        degree = _degrees(cells, coords)
    return EdgeInputs(radius, n_obs, coords, cells, degree, tested.s_ptr, tested.s_rows, x_ptr, x_rows,
                      np.searchsorted(genes, lig), np.searchsorted(genes, rec), rank)
