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


def igraph_from_adjacency(adj, *, directed: bool, upper: bool = False):
    """An igraph graph of a (n, n) sparse adjacency, with the entries as edge attribute ``"weight"``.

    The same edge list and weights as scanpy's ``get_igraph_from_adjacency``: one edge per stored entry, in
    CSR order; ``upper=True`` keeps only the upper triangle (an undirected graph needs each edge of a
    symmetric matrix once). Vertices are the rows, in index order.
    """
    import igraph as ig

    adj = sp.csr_matrix(adj)
    if upper:
        adj = sp.triu(adj, format="csr")
    sources, targets = adj.nonzero()
    weights = np.asarray(adj[sources, targets]).ravel().astype(np.float64)
    g = ig.Graph(directed=directed)
    g.add_vertices(adj.shape[0])
    g.add_edges(list(zip(sources.tolist(), targets.tolist())))
    g.es["weight"] = weights
    return g


def relabel_by_size(membership) -> np.ndarray:
    """Cluster ids renumbered 0, 1, ... by decreasing size, ties by first appearance; (n,) int64."""
    membership = np.asarray(membership)
    ids, first, inverse, sizes = np.unique(membership, return_index=True, return_inverse=True,
                                           return_counts=True)
    by_size = np.lexsort((first, -sizes))
    rank = np.empty(len(ids), dtype=np.int64)
    rank[by_size] = np.arange(len(ids))
    return rank[inverse.ravel()]


def leiden_membership(g, resolution: float = 1.0, *, random_state: int = 0, n_iterations: int = -1,
                      use_weights: bool = True) -> np.ndarray:
    """Leiden communities (leidenalg, RB configuration model) of an igraph graph from
    :func:`igraph_from_adjacency`: (n,) int64, community 0 the largest (leidenalg's numbering)."""
    la = _import_leidenalg()
    kwargs = {"n_iterations": n_iterations, "seed": random_state, "resolution_parameter": resolution}
    if use_weights:
        kwargs["weights"] = np.asarray(g.es["weight"], dtype=np.float64)
    part = la.find_partition(g, la.RBConfigurationVertexPartition, **kwargs)
    return np.asarray(part.membership, dtype=np.int64)


def louvain_membership(g, resolution: float = 1.0, *, random_state: int = 0, use_weights: bool = True) -> np.ndarray:
    """Louvain communities (igraph's ``community_multilevel``) of an undirected igraph graph from
    :func:`igraph_from_adjacency` (``upper=True``): (n,) int64, renumbered by :func:`relabel_by_size`."""
    import random

    import igraph as ig

    _import_leidenalg()
    # igraph draws from Python's `random` by default: give it a seeded generator for this call only
    ig.set_random_number_generator(random.Random(random_state))
    try:
        part = g.community_multilevel(weights="weight" if use_weights else None, resolution=resolution)
    finally:
        ig.set_random_number_generator(random)
    return relabel_by_size(part.membership)


def _graph(ds: SpatialDataset, neighbors_key: str | None, obsp: str | None, directed: bool, upper: bool = False):
    if obsp is None:
        try:
            info = ds.get_result("uns", neighbors_key or "neighbors")
            obsp = info["connectivities_key"]
        except KeyError:
            raise KeyError(f"no uns[{neighbors_key or 'neighbors'!r}]; run stdask.pp.neighbors first") from None
    adj = ds.result_csr("obsp", obsp)
    # vertices in observation-name order: the store's row order follows its tiling, and leidenalg / igraph
    # visit vertices in index order, so this makes the clusters independent of the tile size
    order = canonical_order(ds)
    return igraph_from_adjacency(adj[order][:, order], directed=directed, upper=upper), obsp, order


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
    _import_leidenalg()
    g, used, order = _graph(ds, neighbors_key, obsp, directed)
    membership = leiden_membership(g, resolution, random_state=random_state, n_iterations=n_iterations,
                                   use_weights=use_weights)
    return _store_labels(ds, key_added, _in_store_order(membership, order), {
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
    _import_leidenalg()
    g, used, order = _graph(ds, neighbors_key, obsp, directed=False, upper=True)
    # clusters numbered by decreasing size (ties: first appearance in name order), as leidenalg does
    membership = louvain_membership(g, resolution, random_state=random_state, use_weights=use_weights)
    return _store_labels(ds, key_added, _in_store_order(membership, order), {
        "resolution": resolution, "random_state": random_state, "obsp": used})


__all__ = ["leiden", "louvain", "igraph_from_adjacency", "leiden_membership", "louvain_membership",
           "relabel_by_size"]
