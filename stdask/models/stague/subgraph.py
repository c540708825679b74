"""The graph pieces of mini-batch STAGUE (spec §11): the union support of the anchor and the candidate pairs
with per-entry values, spatially compact batches of cells, k-hop closures and induced subgraphs.

Everything here is numpy / scipy on O(edges) arrays; no N x N object is ever built."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp


@dataclass
class UnionGraph:
    """The union of the initial anchor's and the candidate pairs' supports, one entry per stored (i, j).

    Attributes
    ----------
    n
        Number of cells.
    indptr, indices
        CSR structure (N + 1,) int64 and (E,) int64, columns ascending in each row.
    anchor0
        (E,) float32 normalised initial anchor value (0 where (i, j) is not an anchor edge).
    anchor
        (E,) float32 current (bootstrapped) anchor value, updated in place by training.
    candidate
        (E,) bool: (i, j) is a candidate pair of the learner.
    prior
        (E,) float32 spatial prior of candidate pairs (0 elsewhere).
    """

    n: int
    indptr: np.ndarray
    indices: np.ndarray
    anchor0: np.ndarray
    anchor: np.ndarray
    candidate: np.ndarray
    prior: np.ndarray

    @property
    def structure(self) -> sp.csr_matrix:
        """(N, N) boolean CSR of the support (for row gathers)."""
        return sp.csr_matrix((np.ones(len(self.indices), dtype=bool), self.indices, self.indptr),
                             shape=(self.n, self.n))


def union_graph(n: int, anchor_index: np.ndarray, anchor_value: np.ndarray, cand_index: np.ndarray,
                prior: np.ndarray) -> UnionGraph:
    """Build the :class:`UnionGraph`.

    Parameters
    ----------
    n
        Number of cells.
    anchor_index, anchor_value
        (2, Ea) int64 unique pairs and (Ea,) float32 normalised anchor values.
    cand_index, prior
        (2, Ec) int64 candidate pairs and (Ec,) float32 spatial prior (the support is made symmetric).
    """
    n = int(n)
    ka = anchor_index[0].astype(np.int64) * n + anchor_index[1]
    # the candidate support made symmetric: S is symmetric by construction (symmetric cosine and prior), so a
    # pair stored one way is worth the same both ways, as the learner's mean-symmetrisation makes it
    kc = np.concatenate([cand_index[0].astype(np.int64) * n + cand_index[1],
                         cand_index[1].astype(np.int64) * n + cand_index[0]])
    kc, first = np.unique(kc, return_index=True)
    prior = np.concatenate([prior, prior])[first]
    keys = np.union1d(ka, kc)
    rows, cols = keys // n, keys % n
    a0 = np.zeros(len(keys), np.float32)
    a0[np.searchsorted(keys, ka)] = anchor_value
    cand = np.zeros(len(keys), bool)
    at = np.searchsorted(keys, kc)
    cand[at] = True
    pr = np.zeros(len(keys), np.float32)
    pr[at] = prior
    indptr = np.zeros(n + 1, np.int64)
    np.cumsum(np.bincount(rows, minlength=n), out=indptr[1:])
    return UnionGraph(n, indptr, cols.astype(np.int64), a0, a0.copy(), cand, pr)


def _part1by1(v: np.ndarray) -> np.ndarray:
    """Spread the low 21 bits of ``v`` to the even bit positions (for Morton keys)."""
    v = v.astype(np.uint64) & np.uint64(0x1FFFFF)
    for shift, mask in ((16, 0x0000FFFF0000FFFF), (8, 0x00FF00FF00FF00FF), (4, 0x0F0F0F0F0F0F0F0F),
                        (2, 0x3333333333333333), (1, 0x5555555555555555)):
        v = (v | (v << np.uint64(shift))) & np.uint64(mask)
    return v


def spatial_batches(coords: np.ndarray, batch_cells: int) -> list[np.ndarray]:
    """Cells cut into spatially compact batches of at most ``batch_cells`` (near-equal sizes).

    Cells are ordered by the Morton (Z-order) key of a fine square grid (about ``batch_cells / 16`` cells
    per grid square), ties by row, and the order is cut into consecutive runs. The batches depend only on
    the coordinates and ``batch_cells`` -- never on the store's tiles -- so a result does not depend on how
    the store is tiled.

    Parameters
    ----------
    coords
        (N, 2) float coordinates.
    batch_cells
        Own cells per batch, >= 2.

    Returns
    -------
    list of (n_b,) int64 ascending row arrays partitioning ``range(N)``.
    """
    coords = np.asarray(coords, dtype=np.float64)
    n = coords.shape[0]
    if n <= batch_cells:
        return [np.arange(n, dtype=np.int64)]
    lo, hi = coords.min(axis=0), coords.max(axis=0)
    span = np.maximum(hi - lo, 0.0)
    area = max(span[0] * span[1], max(span.max(), 1e-300) ** 2 / max(n, 1))
    side = np.sqrt(area * (batch_cells / 16.0) / n)
    if not side > 0:
        side = 1.0
    g = np.minimum(np.floor((coords - lo) / side), (1 << 21) - 1).astype(np.uint64)
    key = _part1by1(g[:, 0]) | (_part1by1(g[:, 1]) << np.uint64(1))
    order = np.lexsort((np.arange(n), key))
    n_batches = -(-n // int(batch_cells))
    return [np.sort(part).astype(np.int64) for part in np.array_split(order, n_batches)]


def closure(graph: sp.csr_matrix, own: np.ndarray, hops: int) -> np.ndarray:
    """``own`` and every cell within ``hops`` edges of it in ``graph``.

    Parameters
    ----------
    graph
        (N, N) boolean CSR (:attr:`UnionGraph.structure`).
    own
        (m,) int64 rows.
    hops
        Number of expansions, >= 0.

    Returns
    -------
    (m',) int64 ascending rows (a superset of ``own``).
    """
    seen = np.zeros(graph.shape[0], dtype=bool)
    seen[own] = True
    frontier = np.asarray(own, dtype=np.int64)
    for _ in range(int(hops)):
        if len(frontier) == 0:
            break
        nb = np.unique(graph[frontier].indices)
        frontier = nb[~seen[nb]]
        seen[frontier] = True
    return np.flatnonzero(seen).astype(np.int64)


@dataclass
class Subgraph:
    """The subgraph induced by ``nodes``.

    Attributes
    ----------
    nodes
        (m,) int64 ascending global rows; local id = position.
    own
        (m,) bool: local cells whose results this batch keeps.
    index
        (2, e) int64 local (row, col) of the union entries with both ends in ``nodes``, row-major sorted.
    position
        (e,) int64 positions of those entries in the :class:`UnionGraph` arrays.
    """

    nodes: np.ndarray
    own: np.ndarray
    index: np.ndarray
    position: np.ndarray


def row_positions(indptr: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions of the stored entries of CSR ``rows``, in row order, and each row's entry count.

    Parameters
    ----------
    indptr
        (N + 1,) int64 CSR row pointer.
    rows
        (m,) int64 rows.

    Returns
    -------
    (positions (sum of lengths,) int64, lengths (m,) int64)
    """
    starts = indptr[rows]
    lengths = indptr[rows + 1] - starts
    offsets = np.repeat(starts - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
    return offsets + np.arange(int(lengths.sum()), dtype=np.int64), lengths


def induced(graph: UnionGraph, nodes: np.ndarray, own_rows: np.ndarray) -> Subgraph:
    """The :class:`Subgraph` of ``graph`` on ``nodes`` (ascending), ``own_rows`` (ascending) among them."""
    pos, lengths = row_positions(graph.indptr, nodes)
    cols = graph.indices[pos]
    loc = np.searchsorted(nodes, cols)
    loc_c = np.minimum(loc, len(nodes) - 1)
    inside = nodes[loc_c] == cols
    rows = np.repeat(np.arange(len(nodes), dtype=np.int64), lengths)
    own = np.zeros(len(nodes), dtype=bool)
    own[np.searchsorted(nodes, own_rows)] = True
    return Subgraph(nodes, own, np.stack([rows[inside], loc_c[inside]]), pos[inside])
