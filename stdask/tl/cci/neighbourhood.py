"""Neighbour means x̄_{N(i),g} for a tile's own rows, from the tile and its halo.

Default numerics: neighbour sums in float64 over neighbours in ascending global row order, divided by
|N(i)| in float64 — independent of tiling. Exact-parity mode (Q7, for tests against stLearn): sums in the
matrix dtype (float32) in a supplied neighbour order, divided by |N(i)| in that dtype, as stLearn does.

The sparse products ``W @ X`` are written once against a sparse module (:func:`sparse_modules`): scipy.sparse
on the CPU backend, cupyx.scipy.sparse (cuSPARSE) on the GPU backend, so the CPU tests run the code the GPU
runs. W is binary, so each product term is a value of X exactly; only the order of a row's float64 sum can
differ on the GPU (cuSPARSE does not promise scipy's order). Sums of float32 values whose magnitudes span
less than ``2**(53 - 24 - log2(degree))`` are exact in float64, hence the same in any order: true of
normalised expression, but not guaranteed for arbitrary data.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from types import ModuleType

import numpy as np
import scipy.sparse as sp

from ...backend import get_kernel
from ...dataset import Tile
from ...gr.radius import radius_block
from ...settings import settings


@dataclass
class Neighbourhood:
    """Neighbours of a tile's own rows.

    Attributes
    ----------
    W
        (n_own, n_tile) binary CSR over the tile's local rows (own rows first, then halo).
    counts
        (n_own,) int64 |N(i)|.
    within
        Within-spot mode: N(i) = {i}.
    order
        Exact mode only: (n_own, max_deg) int64 local neighbour indices in the supplied order, -1 padded.
    """

    W: sp.csr_matrix
    counts: np.ndarray
    within: bool = False
    order: np.ndarray | None = None


def tile_neighbourhood(tile: Tile, radius: float, lib: np.ndarray | None = None,
                       order_of: dict[int, np.ndarray] | None = None) -> Neighbourhood:
    """Neighbourhoods of the own rows of ``tile`` (halo >= radius).

    Parameters
    ----------
    tile
        Tile with halo.
    radius
        Inclusive radius in store units; 0 = within-spot mode.
    lib
        (n_tile,) library codes of the tile rows, or None; neighbours never cross libraries.
    order_of
        Exact mode: global row -> (k,) global neighbour rows in the recorded order.
    """
    n_own, n_tile = tile.n_own, len(tile.rows)
    if radius == 0:
        W = sp.csr_matrix((np.ones(n_own), (np.arange(n_own), np.arange(n_own))), shape=(n_own, n_tile))
        return Neighbourhood(W, np.ones(n_own, np.int64), within=True)
    if order_of is not None:
        local = {int(g): i for i, g in enumerate(tile.rows)}
        lists = [np.array([local[int(g)] for g in order_of.get(int(r), ())], dtype=np.int64)
                 for r in tile.rows[:n_own]]
        counts = np.array([len(x) for x in lists], dtype=np.int64)
        deg = int(counts.max()) if n_own else 0
        order = np.full((n_own, max(deg, 1)), -1, dtype=np.int64)
        for i, x in enumerate(lists):
            order[i, : len(x)] = x
        cols = np.concatenate(lists) if lists else np.empty(0, np.int64)
    else:
        blk = radius_block(tile.coords, tile.rows, n_own, radius, lib)
        counts = blk.counts
        # own rows and halo rows are each ascending but not jointly: map global rows to local positions
        sorter = np.argsort(tile.rows, kind="stable")
        cols = sorter[np.searchsorted(tile.rows, blk.cols, sorter=sorter)]
        order = None
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    # entries stay in ascending *global* order inside each row (not local order): scipy's product
    # accumulates in stored order, so the sums do not depend on how rows were split into tiles
    W = sp.csr_matrix((np.ones(len(cols)), cols, indptr), shape=(n_own, n_tile))
    W.has_sorted_indices = True  # keep scipy from reordering the entries
    return Neighbourhood(W, counts, order=order)


#: multiply-adds (estimated) from which a CPU product runs on every core: below it scipy's one-core product is
#: as fast, and a process's first call does not pay for loading the parallel kernel (the arrays are the same)
_PARALLEL_PRODUCT_WORK = 5e6


def sparse_modules(backend: str | None = None) -> tuple[ModuleType, ModuleType]:
    """(array module, sparse module) of ``backend`` (default :attr:`stdask.settings.backend`).

    numpy and scipy.sparse on ``"cpu"``; cupy and cupyx.scipy.sparse on ``"gpu"``, except under numba's CUDA
    simulator (``NUMBA_ENABLE_CUDASIM=1``, a GPU backend on a machine without one), which has no cupy: there
    the GPU backend's numba.cuda kernels are simulated and its array code runs on numpy and scipy.
    """
    backend = settings.backend if backend is None else backend
    if backend == "gpu" and os.environ.get("NUMBA_ENABLE_CUDASIM") != "1":  # pragma: no cover - needs a GPU
        import cupy
        import cupyx.scipy.sparse

        return cupy, cupyx.scipy.sparse
    return np, sp


def sparse_product(W, X, xsp: ModuleType, dtype=None) -> sp.csr_matrix:
    """``W @ X`` computed by the sparse module ``xsp``, returned on the host.

    Parameters
    ----------
    W
        (n, m) host CSR (kept as it is by scipy: its stored entry order is the summation order).
    X
        (m, k) host matrix (CSR, CSC or dense).
    xsp
        ``scipy.sparse`` or ``cupyx.scipy.sparse`` (from :func:`sparse_modules`).
    dtype
        Convert X to this dtype first (None: keep it).

    Returns
    -------
    (n, k) host scipy CSR of ``upcast(W.dtype, X.dtype)`` (scipy: a dense ndarray when X is dense): scipy's
    result, or cuSPARSE's copied back. On the CPU, a product of two float64 CSR matrices runs on every core
    (:func:`stdask.backend.cpu.sparse.csr_product`, scipy's arrays byte for byte).
    """
    if not xsp.issparse(W):
        W = xsp.csr_matrix(W)
    if dtype is not None or xsp is not sp:  # else scipy takes X as it is (CSR, CSC or dense)
        X = xsp.csr_matrix(X if sp.issparse(X) else sp.csr_matrix(X), dtype=dtype)
    if (xsp is sp and W.format == "csr" and sp.issparse(X) and X.format == "csr" and W.dtype == np.float64
            and X.dtype == np.float64 and W.nnz * (X.nnz / max(X.shape[0], 1)) >= _PARALLEL_PRODUCT_WORK):
        return get_kernel("csr_product", "cpu")(W, X)
    out = W @ X
    return out if xsp is sp else out.get()  # cupyx sparse -> scipy sparse


def neighbour_means(nb: Neighbourhood, X_cols: sp.spmatrix, rows: np.ndarray | None = None,
                    backend: str | None = None) -> np.ndarray:
    """Dense neighbour means of some own rows for some genes.

    Parameters
    ----------
    nb
        The tile's neighbourhoods.
    X_cols
        (n_tile, k) tile matrix restricted to the genes needed (CSC or CSR).
    rows
        Own-row positions wanted (default all own rows).
    backend
        Where the product runs (:func:`sparse_modules`; default :attr:`stdask.settings.backend`).

    Returns
    -------
    (n_rows, k) float64 means (0 for rows without neighbours).
    """
    W = nb.W if rows is None else nb.W[rows]
    counts = nb.counts if rows is None else nb.counts[rows]
    if nb.order is not None:
        # exact mode: sequential float32 accumulation in the recorded neighbour order
        order = nb.order if rows is None else nb.order[rows]
        Xd = np.asarray(X_cols.toarray(), dtype=np.float32)
        acc = np.zeros((len(order), Xd.shape[1]), dtype=np.float32)
        for k in range(order.shape[1]):
            idx = order[:, k]
            valid = idx >= 0
            acc[valid] += Xd[idx[valid]]
        with np.errstate(invalid="ignore", divide="ignore"):
            out = acc / counts.astype(np.float32)[:, None]
        out[counts == 0] = 0
        return out.astype(np.float64)
    _, xsp = sparse_modules(backend)
    if nb.within:
        return np.asarray(sparse_product(W, X_cols, xsp).toarray(), dtype=np.float64)
    sums = np.asarray(sparse_product(W, X_cols, xsp, np.float64).toarray())
    out = np.zeros_like(sums)
    nz = counts > 0
    out[nz] = sums[nz] / counts[nz, None]
    return out


def neighbour_sums_sparse(nb: Neighbourhood, X: sp.spmatrix, start: int = 0, stop: int | None = None,
                          backend: str | None = None) -> tuple[sp.csr_matrix, np.ndarray | None]:
    """Neighbour sums of own rows ``start:stop`` (default all) for all columns of ``X`` (tile rows, CSR), and
    what each row's sums are divided by to give the means; the product runs on ``backend``
    (:func:`sparse_modules`).

    Returns
    -------
    sums
        (stop - start, n_genes) CSR float64, indices unsorted (consumers scatter rows into dense vectors).
    divisor
        (stop - start,) float64 |N(i)| (1 for rows without neighbours); ``None`` when ``sums`` are the means
        already (within-spot mode, exact mode).
    """
    stop = nb.W.shape[0] if stop is None else stop
    if nb.order is not None:
        return sp.csr_matrix(neighbour_means(nb, X, np.arange(start, stop))), None
    sums = sp.csr_matrix(sparse_product(nb.W[start:stop], X, sparse_modules(backend)[1]))
    if nb.within:
        return sums, None
    counts = nb.counts[start:stop]
    # each row is divided by its count (not multiplied by 1/count: division is what stLearn does)
    return sums, np.where(counts > 0, counts, 1).astype(np.float64)


def neighbour_means_sparse(nb: Neighbourhood, X: sp.spmatrix, start: int = 0, stop: int | None = None,
                           backend: str | None = None) -> sp.csr_matrix:
    """(stop - start, n_genes) CSR float64 neighbour means of own rows ``start:stop`` (default all) for all
    columns of ``X`` (tile rows, CSR); indices unsorted; the product runs on ``backend``."""
    sums, divisor = neighbour_sums_sparse(nb, X, start, stop, backend)
    if divisor is not None:
        sums.data = sums.data / np.repeat(divisor, np.diff(sums.indptr))
    return sums
