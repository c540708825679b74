"""Neighbour retrieval in latent space and the neighbour-feature gather (spec ``stimpute.md`` §3).

Each spatial cell's K nearest reference cells by cosine distance ``1 - cos`` between AE codes, nearest first,
ties by reference index. Cosine as scikit-learn's ``metric='cosine'``: a zero code (possible after the ReLU)
is at distance 1 from every code.

* exact (``n_spatial * n_reference <= exact_max_pairs``): blocked brute force in float64, blocks of spatial
  cells against all reference codes, about 32 MB of distances per block (the reference codes are held as float64
  unit rows, the query codes are normalised block by block);
* approximate above: pynndescent (``metric='cosine'``, seeded) over the reference codes, queried with the
  spatial codes. Its neighbour *sets* may miss true neighbours (recall below 1); the returned distances are
  recomputed exactly for the cells found, and ordered as the exact path orders them. pynndescent's kernels
  compile on first use in a process (~20 s).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp

__all__ = ["CodeIndex", "METHODS", "approximate_cosine_neighbours", "cosine_neighbours", "exact_cosine_neighbours", "gather"]

METHODS = ("auto", "exact", "pynndescent")
#: float64 distances per block of the exact search (32 MB)
_BLOCK_VALUES = 1 << 22
#: output values (cells x K x genes) gathered per block (64 MB of float32, plus the sparse rows)
_GATHER_VALUES = 1 << 24
#: query rows per pynndescent query and distance recomputation
QUERY_ROWS = 1 << 16


def _unit_rows(codes: np.ndarray, name: str) -> np.ndarray:
    c = np.asarray(codes, dtype=np.float64)
    if c.ndim != 2:
        raise ValueError(f"{name} must be 2-D (cells x latent), got shape {c.shape}")
    if not np.all(np.isfinite(c)):
        raise ValueError(f"{name} holds NaN or inf; the autoencoder diverged or its input was not finite")
    norms = np.sqrt(np.einsum("ij,ij->i", c, c))
    return c * np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)[:, None]


def _prepare(query: np.ndarray, reference: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, int]:
    """The query codes checked for shape (normalised later, per block, to bound memory), the reference codes as
    float64 unit rows, and k checked against the reference size."""
    query = np.asarray(query)
    r = _unit_rows(reference, "reference")
    if query.ndim != 2 or query.shape[1] != r.shape[1]:
        raise ValueError(f"query codes must be (cells, {r.shape[1]}) like the reference codes, got shape "
                         f"{query.shape}")
    k = int(k)
    if not 1 <= k <= r.shape[0]:
        raise ValueError(f"k = {k} neighbours requested from {r.shape[0]} reference cells; need 1 <= k <= "
                         "the number of reference cells")
    return query, r, k


def _smallest_k(dist: np.ndarray, k: int) -> np.ndarray:
    """(b, k) column indices of each row's k smallest values, ascending, ties by column."""
    b, m = dist.shape
    if k == m:
        return np.argsort(dist, axis=1, kind="stable")
    kth = np.partition(dist, k - 1, axis=1)[:, k - 1:k]
    rows, cols = np.nonzero(dist <= kth)  # the k smallest and every value tied with the k-th
    order = np.lexsort((cols, dist[rows, cols], rows))
    rows, cols = rows[order], cols[order]
    first = np.searchsorted(rows, np.arange(b))
    rank = np.arange(rows.size) - first[rows]
    keep = rank < k
    return cols[keep].reshape(b, k)


def exact_cosine_neighbours(query: np.ndarray, reference: np.ndarray, k: int,
                            block_rows: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact K nearest reference rows by cosine distance, blocked brute force.

    Parameters
    ----------
    query
        (N, d) float codes of the spatial cells.
    reference
        (M, d) float codes of the reference cells.
    k
        Neighbours per query row, ``1 <= k <= M``.
    block_rows
        Query rows per block (default: about 2^22 / M, i.e. 32 MB of float64 distances).

    Returns
    -------
    indices
        (N, k) int64 reference rows, nearest first, ties by reference index.
    distances
        (N, k) float32 ``1 - cos`` (computed in float64), ascending.
    """
    return CodeIndex(reference, k, np.shape(query)[0], method="exact").query(query, block_rows)


def approximate_cosine_neighbours(query: np.ndarray, reference: np.ndarray, k: int,
                                  seed: int = 42) -> tuple[np.ndarray, np.ndarray]:
    """Approximate K nearest reference rows by cosine distance (pynndescent).

    Same parameters and returns as :func:`exact_cosine_neighbours`, with ``seed`` the index's
    ``random_state``. The neighbour sets are approximate; the distances of the cells found are recomputed
    exactly (float64, cast to float32) and each row is ordered by (distance, reference index).
    """
    return CodeIndex(reference, k, np.shape(query)[0], method="pynndescent", seed=seed).query(query)


def _row_order(d: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """(n, k) positions sorting each row by (distance, index)."""
    rows = np.repeat(np.arange(d.shape[0]), d.shape[1])
    order = np.lexsort((idx.ravel(), d.ravel(), rows))
    return (order - rows * d.shape[1]).reshape(d.shape)


def cosine_neighbours(query: np.ndarray, reference: np.ndarray, k: int, *, method: str = "auto",
                      exact_max_pairs: int = 10**9, seed: int = 42) -> tuple[np.ndarray, np.ndarray, str]:
    """Each spatial cell's K nearest reference cells in latent space (spec §3).

    Parameters
    ----------
    query, reference
        (N, d) and (M, d) float AE codes of the spatial and reference cells.
    k
        K, ``1 <= K <= M``.
    method
        ``"exact"``, ``"pynndescent"`` (approximate), or ``"auto"``: exact while ``N * M <= exact_max_pairs``.
    exact_max_pairs
        The ``"auto"`` threshold (``StImputeConfig.exact_max_pairs``).
    seed
        pynndescent's ``random_state``.

    Returns
    -------
    indices
        (N, K) int64, nearest first, ties by reference index.
    distances
        (N, K) float32 cosine distances, ascending.
    method
        The search used, ``"exact"`` or ``"pynndescent"``.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method == "auto":
        method = "exact" if int(np.shape(query)[0]) * int(np.shape(reference)[0]) <= exact_max_pairs \
            else "pynndescent"
    if method == "exact":
        return (*exact_cosine_neighbours(query, reference, k), method)
    return (*approximate_cosine_neighbours(query, reference, k, seed=seed), method)


def gather(reference_expr: np.ndarray | sp.spmatrix | sp.sparray, idx: np.ndarray,
           genes: Any = None, block_cells: int | None = None) -> np.ndarray:
    """The neighbour features X_nb[i, k, g] = reference expression of gene g in the k-th neighbour of cell i.

    Parameters
    ----------
    reference_expr
        (M, G_all) float reference expression, dense or scipy sparse (CSR is gathered row-wise without
        densifying the reference).
    idx
        (n, K) int reference rows (from :func:`cosine_neighbours`).
    genes
        Columns of ``reference_expr`` to keep, in the output order (int positions or a boolean mask); ``None``:
        all. Selected once, before gathering.
    block_cells
        Cells gathered per vectorised step (default: about 2^24 / (K * G) cells, 64 MB of output).

    Returns
    -------
    (n, K, G) float32 ndarray.
    """
    idx = np.asarray(idx)
    if idx.ndim != 2 or not np.issubdtype(idx.dtype, np.integer):
        raise ValueError(f"idx must be a 2-D integer array (cells x K), got {idx.dtype} of shape {idx.shape}")
    ref = reference_expr.tocsr() if sp.issparse(reference_expr) else np.asarray(reference_expr)
    if ref.ndim != 2:
        raise ValueError(f"reference_expr must be 2-D (cells x genes), got shape {ref.shape}")
    if idx.size and (idx.min() < 0 or idx.max() >= ref.shape[0]):
        raise ValueError(f"idx holds rows outside the reference's {ref.shape[0]} cells")
    if genes is not None:
        ref = ref[:, np.asarray(genes)]
    if not sp.issparse(ref):
        ref = np.asarray(ref, dtype=np.float32)
    n, k = idx.shape
    g = ref.shape[1]
    out = np.empty((n, k, g), dtype=np.float32)
    step = int(block_cells) if block_cells else max(1, _GATHER_VALUES // max(k * g, 1))
    for start in range(0, n, step):
        rows = idx[start:start + step].ravel()
        block = ref[rows].toarray() if sp.issparse(ref) else ref[rows]
        out[start:start + step] = block.reshape(-1, k, g)
    return out


class CodeIndex:
    """The reference codes of one AE state, searchable tile after tile (spec §3, §8).

    Built once; :meth:`query` finds any spatial cells' K nearest reference cells, so a prediction walks the
    slice tile by tile without rebuilding the search structure. ``method`` is resolved as in
    :func:`cosine_neighbours` from the *whole* query size (``n_query``), so every tile of one slice searches the
    same way. The exact search treats each query row alone (a row's result does not depend on the rows beside it);
    pynndescent's queries are checked for that in the tests.

    Parameters
    ----------
    reference
        (M, d) float reference codes.
    k
        Neighbours per query, ``1 <= k <= M``.
    n_query
        Spatial cells that will be queried in all (for the ``"auto"`` choice).
    method, exact_max_pairs, seed
        As :func:`cosine_neighbours`.
    """

    def __init__(self, reference: np.ndarray, k: int, n_query: int, *, method: str = "auto",
                 exact_max_pairs: int = 10**9, seed: int = 42) -> None:
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        if method == "auto":
            method = "exact" if int(n_query) * int(np.shape(reference)[0]) <= exact_max_pairs else "pynndescent"
        _, self.unit, self.k = _prepare(np.zeros((0, np.shape(reference)[1])), reference, k)
        self.method = method
        self._index = None
        if method == "pynndescent":
            from pynndescent import NNDescent

            self._index = NNDescent(self.unit.astype(np.float32), metric="cosine", n_neighbors=max(self.k, 15),
                                    random_state=int(seed), low_memory=True, verbose=False)

    def query(self, codes: np.ndarray, block_rows: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(n, K) int64 reference rows (nearest first, ties by index) and (n, K) float32 cosine distances of the
        (n, d) query ``codes``; the exact search takes ``block_rows`` rows at a time (default: about 2^22 / M,
        32 MB of float64 distances)."""
        codes = np.asarray(codes)
        if codes.ndim != 2 or codes.shape[1] != self.unit.shape[1]:
            raise ValueError(f"query codes must be (cells, {self.unit.shape[1]}) like the reference codes, got "
                             f"shape {codes.shape}")
        idx = np.empty((codes.shape[0], self.k), dtype=np.int64)
        dist = np.empty((codes.shape[0], self.k), dtype=np.float32)
        if self._index is None:
            step = int(block_rows) if block_rows else max(1, _BLOCK_VALUES // max(self.unit.shape[0], 1))
            for start in range(0, codes.shape[0], step):
                d = 1.0 - _unit_rows(codes[start:start + step], "query") @ self.unit.T
                cols = _smallest_k(d, self.k)
                idx[start:start + step] = cols
                dist[start:start + step] = np.take_along_axis(d, cols, axis=1)
            return idx, dist
        for start in range(0, codes.shape[0], QUERY_ROWS):
            q = _unit_rows(codes[start:start + QUERY_ROWS], "query")
            found, _ = self._index.query(q.astype(np.float32), k=self.k)
            found = np.asarray(found, dtype=np.int64)
            d = 1.0 - np.einsum("nd,nkd->nk", q, self.unit[found])
            order = _row_order(d, found)
            idx[start:start + q.shape[0]] = np.take_along_axis(found, order, axis=1)
            dist[start:start + q.shape[0]] = np.take_along_axis(d, order, axis=1)
        return idx, dist
