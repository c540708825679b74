"""Graph clustering of the kNN connectivities: Leiden (leidenalg) and Louvain (igraph), on an igraph graph.

The graph (``obsp["connectivities"]``, n_obs x n_neighbors entries) fits in memory for any slice we target,
so clustering runs in one process; it is deterministic for a given ``random_state``, and the same for any
tiling of the slice (the graph is handed to igraph with vertices in observation-name order).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..dataset import SpatialDataset
from ..results import writes_results


def _import_leidenalg():
    try:
        import igraph  # noqa: F401
        import leidenalg
    except ImportError as e:
        raise ImportError("Leiden / Louvain clustering needs leidenalg and igraph: pip install leidenalg") from e
    return leidenalg


def _graph(ds: SpatialDataset, neighbors_key: str | None, obsp: str | None, directed: bool, upper: bool = False):
    import igraph as ig

    if obsp is None:
        try:
            info = ds.get_result("uns", neighbors_key or "neighbors")
            obsp = info["connectivities_key"]
        except KeyError:
            raise KeyError(f"no uns[{neighbors_key or 'neighbors'!r}]; run stdask.pp.neighbors first") from None
    adj = sp.csr_matrix(ds.get_result("obsp", obsp))
    # vertices in observation-name order: the store's row order follows its tiling, and leidenalg / igraph
    # visit vertices in index order, so this makes the clusters independent of the tile size
    order = canonical_order(ds)
    adj = adj[order][:, order]
    if upper:  # an undirected graph needs each edge of the symmetric matrix once
        adj = sp.triu(adj, format="csr")
    # the same edge list and weights as scanpy's get_igraph_from_adjacency
    sources, targets = adj.nonzero()
    weights = np.asarray(adj[sources, targets]).ravel().astype(np.float64)
    g = ig.Graph(directed=directed)
    g.add_vertices(adj.shape[0])
    g.add_edges(list(zip(sources.tolist(), targets.tolist())))
    g.es["weight"] = weights
    return g, weights, obsp, order


def canonical_order(ds: SpatialDataset) -> np.ndarray:
    """Row indices of the observations sorted by name (names are unique in a store)."""
    return np.argsort(np.asarray(ds.obs_names, dtype=object).astype(str), kind="stable")


def _in_store_order(membership, order: np.ndarray) -> np.ndarray:
    out = np.empty(len(order), dtype=np.int64)
    out[order] = np.asarray(membership)
    return out


def _store_labels(ds: SpatialDataset, key_added: str, membership, params: dict) -> pd.Series:
    groups = np.asarray(membership)
    cats = sorted({str(x) for x in np.unique(groups)}, key=int)
    labels = pd.Categorical(groups.astype(str), categories=cats)
    ds.set_result("obs", key_added, labels)
    ds.set_result("uns", key_added, {"params": params})
    return pd.Series(labels, index=ds.obs_names, name=key_added)


@writes_results
def leiden(ds: SpatialDataset, resolution: float = 1.0, *, random_state: int = 0, n_iterations: int = -1,
           directed: bool = True, use_weights: bool = True, neighbors_key: str | None = None,
           obsp: str | None = None, key_added: str = "leiden") -> pd.Series:
    """Leiden clustering (scanpy's ``leiden`` with ``flavor="leidenalg"``).

    Parameters
    ----------
    ds
        The dataset, with a neighbour graph.
    resolution
        Resolution of the RB configuration model; higher gives more clusters.
    random_state
        Seed of leidenalg; the same seed and graph give the same clusters.
    n_iterations
        Leiden iterations; -1 runs until no improvement (scanpy's default).
    directed
        Treat the connectivities as a directed graph (scanpy's default for leidenalg).
    use_weights
        Use the connectivities as edge weights.
    neighbors_key, obsp
        Where the graph is: ``uns[neighbors_key or "neighbors"]["connectivities_key"]``, or an ``obsp`` key.
    key_added
        ``obs`` column of the labels.

    Returns
    -------
    pandas.Series
        Categorical labels ``"0", "1", ...`` (cluster 0 the largest) indexed by observation; also written as
        ``obs[key_added]``, with ``uns[key_added]["params"]``.
    """
    la = _import_leidenalg()
    g, weights, used, order = _graph(ds, neighbors_key, obsp, directed)
    kwargs = {"n_iterations": n_iterations, "seed": random_state, "resolution_parameter": resolution}
    if use_weights:
        kwargs["weights"] = weights
    part = la.find_partition(g, la.RBConfigurationVertexPartition, **kwargs)
    return _store_labels(ds, key_added, _in_store_order(part.membership, order), {
        "resolution": resolution, "random_state": random_state, "n_iterations": n_iterations, "obsp": used,
        "directed": directed})


@writes_results
def louvain(ds: SpatialDataset, resolution: float = 1.0, *, random_state: int = 0, use_weights: bool = True,
            neighbors_key: str | None = None, obsp: str | None = None, key_added: str = "louvain") -> pd.Series:
    """Louvain clustering (igraph's ``community_multilevel``, scanpy's ``louvain`` with ``flavor="igraph"``).

    Parameters
    ----------
    ds
        The dataset, with a neighbour graph.
    resolution
        Modularity resolution; higher gives more clusters.
    random_state
        Seed of igraph's random generator (set for this call only); the same seed and graph give the same
        clusters.
    use_weights
        Use the connectivities as edge weights.
    neighbors_key, obsp, key_added
        As for :func:`leiden`.

    Returns
    -------
    pandas.Series
        Categorical labels ``"0", "1", ...`` (cluster 0 the largest), also written as ``obs[key_added]``.
    """
    import random

    import igraph as ig

    _import_leidenalg()
    g, _, used, order = _graph(ds, neighbors_key, obsp, directed=False, upper=True)
    # igraph draws from Python's `random` by default: give it a seeded generator for this call only
    ig.set_random_number_generator(random.Random(random_state))
    try:
        part = g.community_multilevel(weights="weight" if use_weights else None, resolution=resolution)
    finally:
        ig.set_random_number_generator(random)
    membership = np.asarray(part.membership)
    # number clusters by decreasing size (ties: first appearance in name order), as leidenalg does
    ids, first, sizes = np.unique(membership, return_index=True, return_counts=True)
    by_size = ids[np.lexsort((first, -sizes))]
    rank = np.empty(ids.max() + 1, dtype=np.int64)
    rank[by_size] = np.arange(len(by_size))
    return _store_labels(ds, key_added, _in_store_order(rank[membership], order), {
        "resolution": resolution, "random_state": random_state, "obsp": used})


__all__ = ["leiden", "louvain"]
