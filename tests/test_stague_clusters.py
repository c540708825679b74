"""STAGUE's clustering of the embedding and the spatial refinement (stdask.tl.stague.clusters, spec §8)."""
from __future__ import annotations

import re

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from stdask.tl.stague.clusters import CLUSTER_METHODS, cluster_embedding, refine_labels


def blobs(sizes=(60, 45, 30, 25), dim=64, spread=12.0, seed=0):
    """Well-separated Gaussian blobs of unequal sizes (so the size ordering of labels is testable)."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0.0, spread, (len(sizes), dim))
    truth = np.repeat(np.arange(len(sizes)), sizes)
    perm = rng.permutation(len(truth))  # blobs interleaved, so label order is not the row order
    truth = truth[perm]
    X = (centers[truth] + rng.normal(0.0, 1.0, (len(truth), dim))).astype(np.float32)
    return X, truth


def test_kmeans_recovers_blobs_deterministic_and_numbered_by_size():
    X, truth = blobs()
    labels, info = cluster_embedding(X, 4)
    assert labels.dtype == np.int64 and labels.shape == truth.shape
    assert adjusted_rand_score(truth, labels) == 1.0
    assert info["method"] == "kmeans" and info["estimator"] == "KMeans"
    # 0 is the largest cluster, then decreasing size
    assert np.array_equal(np.bincount(labels), [60, 45, 30, 25])
    again, _ = cluster_embedding(X, 4, seed=0)
    assert np.array_equal(labels, again)


@pytest.mark.parametrize("method", ["kmeans", "gmm"])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_labels_numbered_by_decreasing_size(method, seed):
    X, truth = blobs(sizes=(20, 50, 35, 10), dim=6, seed=seed)
    labels, _ = cluster_embedding(X, 4, method)
    assert np.array_equal(np.bincount(labels), [50, 35, 20, 10])


def test_leiden_resolution_is_the_specs_bisection():
    """The first midpoint of the bisection over [0, 5] that gives exactly n_clusters (spec §8)."""
    from stdask.pp.clustering import igraph_from_adjacency, leiden_membership
    from stdask.pp.neighbors import fuzzy_connectivities, knn

    X, _ = blobs(sizes=(40, 40, 40, 40, 40), dim=8, spread=3.0, seed=4)
    ind, dist, _ = knn(X, 15)
    g = igraph_from_adjacency(fuzzy_connectivities(ind, dist), directed=True)
    for n_clusters in (5, 6, 8):
        lo, hi, steps = 0.0, 5.0, 0
        while steps < 100:
            res, steps = (lo + hi) / 2, steps + 1
            count = leiden_membership(g, res).max() + 1
            if count == n_clusters:
                break
            lo, hi = (res, hi) if count < n_clusters else (lo, res)
        labels, info = cluster_embedding(X, n_clusters, "leiden")
        assert (info["resolution"], info["steps"]) == (res, steps)
        assert adjusted_rand_score(leiden_membership(g, res), labels) == 1.0


def test_minibatch_kmeans_path_recovers_blobs():
    X, truth = blobs()
    labels, info = cluster_embedding(X, 4, minibatch_above=50)
    assert info["estimator"] == "MiniBatchKMeans"
    assert adjusted_rand_score(truth, labels) == 1.0
    assert np.array_equal(labels, cluster_embedding(X, 4, minibatch_above=50)[0])


@pytest.mark.parametrize("method", ["leiden", "louvain"])
@pytest.mark.parametrize("dim", [64, 8])
def test_graph_methods_hit_n_clusters(method, dim):
    X, truth = blobs(dim=dim)
    labels, info = cluster_embedding(X, 4, method)
    assert labels.max() + 1 == 4 and info["method"] == method
    assert 0.0 <= info["resolution"] <= 5.0 and 1 <= info["steps"] <= 100
    # scanpy's neighbors reads X_pca (50 comps) only when the embedding has more than 50 columns
    assert info["n_pcs"] == (50 if dim > 50 else None)
    assert adjusted_rand_score(truth, labels) == 1.0


def test_graph_method_impossible_count_names_the_closest():
    X, _ = blobs(sizes=(30, 30), dim=8)
    with pytest.raises(ValueError, match="closest") as err:
        cluster_embedding(X, 60, "leiden")
    m = re.search(r"closest: (\d+) clusters at resolution (\d+(?:\.\d+)?(?:e[+-]?\d+)?)", str(err.value))
    assert m, str(err.value)
    count, resolution = int(m.group(1)), float(m.group(2))
    assert 2 <= count < 60 and 0.0 <= resolution <= 5.0
    # the closest count is a real count: asking for it succeeds
    labels, info = cluster_embedding(X, count, "leiden")
    assert labels.max() + 1 == count


def test_gmm_recovers_blobs():
    X, truth = blobs(dim=16)
    labels, info = cluster_embedding(X, 4, "gmm")
    assert info["approximates"] == "mclust EEE"
    assert adjusted_rand_score(truth, labels) == 1.0


def test_refine_hand_example():
    # on a line, r = 2; cells 3 and 4 share a position (each is the other's neighbour, never its own)
    x = np.array([0.0, 1.0, 2.4, 3.5, 3.5, 7.0])
    coords = np.column_stack([x, np.zeros_like(x)])
    labels = np.array([4, 2, 9, 9, 2, 4])
    # c0: {c1:2, c2:9} tie -> 2; c1: {c0:4, c2:9} tie -> 4; c2: {c3:9, c4:2} -> 2; c3: {c4:2, c2:9} -> 2;
    # c4: {c3:9, c2:9} -> 9; c5: {c3:9, c4:2} -> 2
    assert np.array_equal(refine_labels(labels, coords, 2), [2, 4, 2, 2, 9, 2])
    # three coincident cells: the k-d tree returns all three; each votes with the other two only
    same = np.zeros((3, 2))
    assert np.array_equal(refine_labels(np.array([1, 2, 2]), same, 2), [2, 1, 1])


def test_refine_smooths_an_isolated_cell_in_a_lattice():
    yy, xx = np.mgrid[0:20, 0:20]
    coords = np.column_stack([xx.ravel(), yy.ravel()]).astype(float)
    truth = (coords[:, 0] >= 10).astype(np.int64)  # two half-planes
    noisy = truth.copy()
    noisy[5 * 20 + 5] = 1  # one mislabelled cell inside the left half
    refined = refine_labels(noisy, coords, 8)
    assert np.array_equal(refined, truth)


@pytest.mark.parametrize("kwargs, match", [
    ({"n_clusters": 0}, "n_clusters"),
    ({"n_clusters": 11}, "n_clusters"),
    ({"n_clusters": 2, "method": "mclust"}, "kmeans.*leiden.*louvain.*gmm"),
])
def test_cluster_bad_arguments(kwargs, match):
    X = np.random.default_rng(0).normal(size=(10, 3))
    with pytest.raises(ValueError, match=match):
        cluster_embedding(X, **kwargs)


def test_cluster_bad_embedding():
    X = np.random.default_rng(0).normal(size=(10, 3))
    X[4, 1] = np.nan
    with pytest.raises(ValueError, match="infinite values in 1 of 10 cells"):
        cluster_embedding(X, 2)
    with pytest.raises(ValueError, match="shape"):
        cluster_embedding(np.ones(10), 2)
    assert set(CLUSTER_METHODS) == {"kmeans", "leiden", "louvain", "gmm"}


def test_refine_bad_arguments():
    coords = np.random.default_rng(0).uniform(size=(5, 2))
    labels = np.arange(5)
    with pytest.raises(ValueError, match="n_neighbors"):
        refine_labels(labels, coords, 0)
    with pytest.raises(ValueError, match="n_neighbors"):
        refine_labels(labels, coords, 5)
    with pytest.raises(ValueError, match="coords"):
        refine_labels(labels[:4], coords, 2)
    bad = coords.copy()
    bad[2, 0] = np.inf
    with pytest.raises(ValueError, match="NaN or infinite"):
        refine_labels(labels, bad, 2)
