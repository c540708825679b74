"""k-nearest-neighbour graph in PCA space (scanpy's ``neighbors`` with ``method="umap"``).

The embedding is small (n_obs x n_pcs float32: 200 MB for a million cells and 50 components), so it is
materialised once and searched in memory: exactly (scikit-learn brute force, scanpy's choice for small data)
up to ``EXACT_MAX_OBS`` observations, approximately with pynndescent above (scanpy's choice for large data,
with umap's defaults for trees and iterations). Connectivities are umap's fuzzy simplicial set, computed here
with the same formulas as ``umap.umap_.fuzzy_simplicial_set`` (so umap-learn is not needed).
"""
from __future__ import annotations

import math

import numba
import numpy as np
import scipy.sparse as sp

from ..dataset import SpatialDataset
from ..results import writes_results
from .. import blocks as _blocks

#: up to this many observations ``method="auto"`` searches exactly
EXACT_MAX_OBS = 50_000
METHODS = ("auto", "exact", "pynndescent")
_SMOOTH_K_TOLERANCE = 1e-5
_MIN_K_DIST_SCALE = 1e-3


def get_obsm(ds: SpatialDataset, key: str, progress: bool = True) -> np.ndarray:
    """``obsm[key]`` as an in-memory numpy array (a pending lazy result is computed)."""
    try:
        value = ds.get_result("obsm", key)
    except KeyError:
        raise KeyError(f"no obsm[{key!r}]; run stdask.pp.pca first (or pass use_rep=)") from None
    if hasattr(value, "dask"):
        (value,) = _blocks.compute(value, progress=progress, desc=f"neighbors: obsm[{key!r}]")
    return np.asarray(value)


def knn(X: np.ndarray, n_neighbors: int, method: str = "auto", metric: str = "euclidean",
        random_state: int = 0) -> tuple[np.ndarray, np.ndarray, str]:
    """The ``n_neighbors`` nearest neighbours of each row of ``X``, the row itself first.

    Returns
    -------
    indices
        (n, n_neighbors) int64; column 0 is the row itself.
    distances
        (n, n_neighbors) float32; column 0 is 0.
    method
        ``"exact"`` or ``"pynndescent"``: the search used.
    """
    n = X.shape[0]
    if method == "auto":
        method = "exact" if n <= EXACT_MAX_OBS else "pynndescent"
    if method == "exact":
        from sklearn.neighbors import NearestNeighbors

        nn = NearestNeighbors(n_neighbors=n_neighbors, algorithm="brute", metric=metric).fit(X)
        dist, ind = nn.kneighbors(X)
    else:
        from pynndescent import NNDescent

        index = NNDescent(X, n_neighbors=n_neighbors, metric=metric, random_state=random_state,
                          n_trees=min(64, 5 + int(round(n**0.5 / 20.0))),
                          n_iters=max(5, int(round(np.log2(n)))), low_memory=True, verbose=False)
        ind, dist = index.neighbor_graph
    ind, dist = _self_first(np.asarray(ind, dtype=np.int64), np.asarray(dist, dtype=np.float32))
    return ind, dist, method


def _self_first(ind: np.ndarray, dist: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # with duplicate points the row itself may not come first (or at all): put it in column 0. Its distance is
    # 0 by definition (brute force gives ~1e-7 through |x|^2 - 2 x.y + |y|^2; scanpy also zeroes it)
    dist[:, 0] = np.where(ind[:, 0] == np.arange(ind.shape[0]), 0, dist[:, 0])
    rows = np.arange(ind.shape[0])
    bad = np.flatnonzero(ind[:, 0] != rows)
    for i in bad:
        others = [(d, j) for j, d in zip(ind[i], dist[i]) if j != i][: ind.shape[1] - 1]
        ind[i] = [i] + [j for _, j in others]
        dist[i] = [0.0] + [d for d, _ in others]
    return ind, dist


@numba.njit(cache=True)
def _smooth_knn_dist(distances, k, mean_distances, n_iter=64):  # pragma: no cover - numba
    # umap.umap_.smooth_knn_dist with local_connectivity=1, bandwidth=1
    target = np.log2(k)
    n = distances.shape[0]
    rho = np.zeros(n, dtype=np.float32)
    result = np.zeros(n, dtype=np.float32)
    for i in range(n):
        lo = 0.0
        hi = np.inf
        mid = 1.0
        ith = distances[i]
        non_zero = ith[ith > 0.0]
        if non_zero.shape[0] >= 1:
            rho[i] = non_zero[0]
        for _ in range(n_iter):
            psum = 0.0
            for j in range(1, distances.shape[1]):
                d = distances[i, j] - rho[i]
                if d > 0:
                    psum += np.exp(-(d / mid))
                else:
                    psum += 1.0
            if np.fabs(psum - target) < _SMOOTH_K_TOLERANCE:
                break
            if psum > target:
                hi = mid
                mid = (lo + hi) / 2.0
            else:
                lo = mid
                if hi == np.inf:
                    mid *= 2
                else:
                    mid = (lo + hi) / 2.0
        result[i] = mid
        if rho[i] > 0.0:
            m = np.mean(ith)
            if result[i] < _MIN_K_DIST_SCALE * m:
                result[i] = _MIN_K_DIST_SCALE * m
        elif result[i] < _MIN_K_DIST_SCALE * mean_distances:
            result[i] = _MIN_K_DIST_SCALE * mean_distances
    return result, rho


@numba.njit(cache=True)
def _membership(ind, dist, sigmas, rhos):  # pragma: no cover - numba
    n, k = ind.shape
    vals = np.zeros(n * k, dtype=np.float32)
    for i in range(n):
        for j in range(k):
            if ind[i, j] == i:
                val = 0.0
            elif dist[i, j] - rhos[i] <= 0.0 or sigmas[i] == 0.0:
                val = 1.0
            else:
                val = np.exp(-((dist[i, j] - rhos[i]) / sigmas[i]))
            vals[i * k + j] = val
    return vals


def fuzzy_connectivities(ind: np.ndarray, dist: np.ndarray) -> sp.csr_matrix:
    """umap's fuzzy simplicial set of a kNN graph (``set_op_mix_ratio=1``, ``local_connectivity=1``).

    Parameters
    ----------
    ind, dist
        (n, k) neighbour indices (self first) and float32 distances.

    Returns
    -------
    (n, n) float32 symmetric CSR: ``P + P^T - P * P^T`` of the membership strengths ``P``.
    """
    n, k = ind.shape
    dist = dist.astype(np.float32)
    # a global mean is used only for rows whose neighbours all sit at distance 0; fsum makes it exact
    mean_d = math.fsum(dist.ravel().astype(np.float64).tolist()) / dist.size if dist.size else 0.0
    sigmas, rhos = _smooth_knn_dist(dist, float(k), mean_d)
    vals = _membership(ind, dist, sigmas, rhos)
    P = sp.coo_matrix((vals, (np.repeat(np.arange(n), k), ind.ravel())), shape=(n, n))
    P.eliminate_zeros()
    P = P.tocsr()
    Pt = P.T.tocsr()
    out = (P + Pt - P.multiply(Pt)).tocsr()
    out.eliminate_zeros()
    out.sort_indices()
    return out.astype(np.float32)


def knn_distances(ind: np.ndarray, dist: np.ndarray) -> sp.csr_matrix:
    """(n, n) CSR of the kNN distances without the self column (scanpy's ``distances``)."""
    n, k = ind.shape
    ind, dist = ind[:, 1:], dist[:, 1:]
    indptr = np.arange(0, n * (k - 1) + 1, k - 1)
    return sp.csr_matrix((dist.ravel().copy(), ind.ravel().copy(), indptr), shape=(n, n))


@writes_results(returns_dataset=True)
def neighbors(ds: SpatialDataset, n_neighbors: int = 15, n_pcs: int | None = None, *, use_rep: str = "X_pca",
              method: str = "auto", metric: str = "euclidean", random_state: int = 0,
              key_added: str | None = None, progress: bool = True) -> None:
    """kNN graph and umap connectivities in an embedding (scanpy's ``neighbors``).

    Parameters
    ----------
    ds
        The dataset.
    n_neighbors
        Neighbourhood size, the observation itself included (scanpy's convention: 15 gives 14 others).
    n_pcs
        Use the first ``n_pcs`` columns of the embedding; ``None``: all.
    use_rep
        ``obsm`` key of the embedding.
    method
        ``"exact"`` (brute force), ``"pynndescent"`` (approximate), or ``"auto"``: exact up to 50,000
        observations.
    metric
        Distance metric known to scikit-learn and pynndescent (``"euclidean"``, ``"cosine"``, ...).
    random_state
        Seed of the approximate search.
    key_added
        ``None``: ``obsp["distances"]``, ``obsp["connectivities"]``, ``uns["neighbors"]``; else
        ``obsp[key_added + "_distances"]``, ``obsp[key_added + "_connectivities"]``, ``uns[key_added]``.
    progress
        Show progress while a lazy embedding is computed.

    Notes
    -----
    The embedding is read into memory (n_obs x n_pcs float32). Writes ``obsp`` distances ((n_obs, n_obs)
    float32 CSR, ``n_neighbors - 1`` entries per row) and connectivities ((n_obs, n_obs) float32 symmetric
    CSR), and ``uns`` with ``connectivities_key``, ``distances_key`` and ``params`` (``n_neighbors``,
    ``method="umap"``, ``metric``, ``n_pcs``, ``use_rep``, ``knn_search``), as scanpy does.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    X = get_obsm(ds, use_rep, progress=progress)
    if n_pcs is not None:
        if not 1 <= n_pcs <= X.shape[1]:
            raise ValueError(f"n_pcs={n_pcs} but obsm[{use_rep!r}] has {X.shape[1]} columns")
        X = X[:, :n_pcs]
    if not np.isfinite(X).all():
        raise ValueError(f"obsm[{use_rep!r}] holds NaN or infinite values")
    n = X.shape[0]
    if n < 2:
        raise ValueError("neighbors needs at least 2 observations")
    if n_neighbors > n:
        n_neighbors = 1 + int(0.5 * n)  # scanpy's adjustment for very small data
    if n_neighbors < 2:
        raise ValueError(f"n_neighbors must be >= 2 (the observation itself counts), got {n_neighbors}")
    ind, dist, used = knn(np.ascontiguousarray(X), n_neighbors, method=method, metric=metric,
                          random_state=random_state)
    conn = fuzzy_connectivities(ind, dist)
    dmat = knn_distances(ind, dist)
    key = "neighbors" if key_added is None else key_added
    dkey = "distances" if key_added is None else f"{key_added}_distances"
    ckey = "connectivities" if key_added is None else f"{key_added}_connectivities"
    ds.set_result("obsp", dkey, dmat)
    ds.set_result("obsp", ckey, conn)
    ds.set_result("uns", key, {
        "connectivities_key": ckey, "distances_key": dkey,
        "params": {"n_neighbors": int(n_neighbors), "method": "umap", "metric": metric,
                   "n_pcs": None if n_pcs is None else int(n_pcs), "use_rep": use_rep, "knn_search": used,
                   "random_state": int(random_state)},
    })


__all__ = ["neighbors", "knn", "fuzzy_connectivities", "knn_distances", "get_obsm", "EXACT_MAX_OBS"]
