"""run_cci's edge inputs hold nothing that grows with the slice's edges: the neighbour lists a task builds from
the coordinates' cell list against the radius graph and cKDTree (exact ties included), the expressed rows
against the matrix, the task split bounded by edges against the default split (same numbers), and no read of a
stored graph."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from scipy.spatial import cKDTree

import stdask
from stdask.dataset import SpatialDataset
from stdask.gr import spatial_neighbors
from stdask.gr.radius import CellList
from stdask.tl import cci
from stdask.tl.cci import interactions
from stdask.tl.cci.edges import EdgeInputs, expressed_rows, qualifying_edges

from test_run_cci import DATA, RUN, reference_result  # noqa: E402

RNG = np.random.default_rng(11)


@pytest.fixture(scope="module")
def ref_ds(tmp_path_factory):
    """The shipped stLearn reference slice (Visium, 2,000 spots) with small tiles: many row blocks."""
    store = stdask.ingest(DATA / "ref_N2000.h5ad", tmp_path_factory.mktemp("ref") / "ref.zarr", progress=False,
                          tile_size=1500)
    return stdask.read(store)


@pytest.fixture(scope="module")
def ref_result(ref_ds):
    return reference_result(ref_ds)


def _inputs(ds: SpatialDataset, result) -> EdgeInputs:
    tested = interactions._tested_lrs(result, 20, True)
    rank = np.argsort(np.argsort(np.asarray(ds.obs_names, dtype=str), kind="stable"), kind="stable")
    return qualifying_edges(ds, result, tested, rank, "sync", False)


def test_cell_list_equals_ckdtree_with_exact_ties():
    # an integer lattice scaled by 0.1 with r = 0.1 * sqrt(2): diagonal neighbours sit exactly on the radius
    xy = np.stack(np.meshgrid(np.arange(30), np.arange(20)), -1).reshape(-1, 2) * 0.1
    xy = np.concatenate([xy, RNG.random((200, 2)) * 3.0])  # plus scattered points
    r = 0.1 * np.sqrt(2)
    cells = CellList.build(xy, np.arange(len(xy)), r)
    q = RNG.choice(len(xy), 150, replace=False)
    block = cells.query(xy[q, 0], xy[q, 1], q)
    tree = cKDTree(xy)
    offsets = np.concatenate([[0], np.cumsum(block.counts)])
    for i, row in enumerate(q):
        want = sorted(set(tree.query_ball_point(xy[row], r)) - {row})
        assert block.cols[offsets[i]:offsets[i + 1]].tolist() == want
    assert np.array_equal(cells.count(xy[q, 0], xy[q, 1], q), block.counts)


def test_neighbour_lists_equal_the_radius_graph(ref_ds, ref_result):
    inputs = _inputs(ref_ds, ref_result)
    graph = spatial_neighbors(ref_ds, distance=inputs.radius, copy=True, progress=False, verbose=False,
                              scheduler="sync").connectivities.tocsr()
    rows = np.sort(RNG.choice(ref_ds.n_obs, 300))  # repeated rows, as the LRs' significant rows repeat
    g_ptr, g_idx, g_row = inputs.neighbour_lists(rows)
    for p, u in enumerate(rows):
        g = g_row[p]
        assert np.array_equal(g_idx[g_ptr[g]:g_ptr[g + 1]], graph.indices[graph.indptr[u]:graph.indptr[u + 1]])
    assert np.array_equal(inputs.degree, np.diff(graph.indptr))
    assert inputs.degree.dtype == np.int32 and inputs.s_rows.dtype == np.int32
    # the tasks' memory is the driver's cell list, about 40 bytes a spot, not the graph's 12 bytes an edge
    assert graph.nnz > 5 * ref_ds.n_obs


def test_expressed_rows_against_the_matrix(ref_ds):
    ds = stdask.read(ref_ds.path, rows_per_chunk=300)
    assert ds.matrix("X").numblocks[0] > 3  # several row blocks are placed into each gene's rows
    genes = np.sort(RNG.choice(ds.n_vars, 40, replace=False))
    ptr, rows = expressed_rows(ds, genes, "X", "sync", False)
    X = sp.csc_matrix(ds.matrix("X").compute()[:, genes])
    assert rows.dtype == np.int32 and ptr[-1] == len(rows)
    for j in range(len(genes)):
        col = X[:, j]
        want = col.indices[col.data > 0]
        assert np.array_equal(rows[ptr[j]:ptr[j + 1]], np.sort(want))


def test_batches_bounded_by_task_edges():
    cost = np.ones(6)
    edges = np.array([5, 5, 5, 20, 1, 1])
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(interactions, "MAX_TASK_EDGES", 10)
        mp.setattr(interactions.dask.system, "CPU_COUNT", 1)  # target: 6 / 4 per task
        batches = interactions._batches(cost, None, edges)
    # consecutive, covering, each within the bound unless it is one LR
    assert batches[0][0] == 0 and batches[-1][1] == 6
    assert all(b0[1] == b1[0] for b0, b1 in zip(batches, batches[1:]))
    assert all(edges[a:b].sum() <= 10 or b - a == 1 for a, b in batches)
    assert (3, 4) in batches


def test_edge_bounded_tasks_change_no_number_and_no_graph_is_read(ref_ds, ref_result, monkeypatch):
    # a stored radius graph of run's radius used to be read whole; now nothing reads it
    spatial_neighbors(ref_ds, distance=None, progress=False, verbose=False, scheduler="sync")
    base = cci.run_cci(ref_ds, "cell_type", result=ref_result, n_perms=30, seed=4, **RUN)

    def refuse(*args, **kwargs):
        raise AssertionError("run_cci read a whole sparse result")

    monkeypatch.setattr(SpatialDataset, "result_csr", refuse)
    monkeypatch.setattr(interactions, "MAX_TASK_EDGES", 2000)
    seen = []
    batches = interactions._batches
    monkeypatch.setattr(interactions, "_batches", lambda *a: seen.append(batches(*a)) or seen[-1])
    small = cci.run_cci(ref_ds, "cell_type", result=ref_result, n_perms=30, seed=4, **RUN)
    assert len(seen[0]) > 40  # far more tasks than the default split
    for m in ("raw", "pvals", "sig"):
        assert np.array_equal(getattr(base, m), getattr(small, m)), m
    pd.testing.assert_frame_equal(base.lr_summary, small.lr_summary)
