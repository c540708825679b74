"""adj_pvals on a lazy result streams its row blocks: the same numbers, bit for bit, as the whole-matrix
correction for every axis, the per-LR Benjamini-Hochberg table against statsmodels, nothing read whole, and the
dataset round trip (re-correct, write, load)."""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from statsmodels.stats.multitest import multipletests

import stdask
from stdask.tl import cci
from stdask.tl.cci.readjust import bh_table
from stdask.tl.cci.result import CCIResult

DATA = Path(__file__).parent / "data"
RUN = dict(progress=False, scheduler="sync")


@pytest.fixture(scope="module")
def lazy_run(tmp_path_factory):
    ds = stdask.read(stdask.ingest(DATA / "ref_N2000.h5ad", tmp_path_factory.mktemp("adj") / "ref.zarr",
                                   progress=False, tile_size=700))
    res = cci.run(ds, cci.load_lrs(), min_spots=20, n_pairs=100, verbose=False, **RUN)
    assert res.lazy is not None and res.lazy["count"].numblocks[0] > 3
    return ds, res


def _in_memory(res: CCIResult) -> CCIResult:
    mem = copy.copy(res)
    for m in ("scores", "counts", "padj"):
        getattr(mem, m)
    return mem


def _same(a: CCIResult, b: CCIResult) -> None:
    pd.testing.assert_frame_equal(a.lr_summary, b.lr_summary)
    for m in ("scores", "counts", "padj"):
        x, y = getattr(a, m), getattr(b, m)
        assert np.array_equal(x.indptr, y.indptr) and np.array_equal(x.indices, y.indices), m
        assert np.array_equal(x.data, y.data), m


@pytest.mark.parametrize("axis, method", [("spot", "fdr_bh"), ("LR", "fdr_bh"), (None, "fdr_bh"),
                                          ("spot", "bonferroni")])
def test_streamed_equals_whole_matrix(lazy_run, monkeypatch, axis, method):
    _, res = lazy_run
    whole = _in_memory(res).adjusted(axis, 0.1, method)
    assert whole.lazy is None
    monkeypatch.setattr(CCIResult, "_matrix", lambda *a: pytest.fail("the matrices were read whole"))
    streamed = res.adjusted(axis, 0.1, method, **RUN)
    monkeypatch.undo()
    assert streamed.lazy is not None and streamed.params["correct_axis"] == axis
    _same(streamed, whole)


def test_bh_table_against_statsmodels():
    rng = np.random.default_rng(3)
    n_pairs, n_lr = 50, 6
    counts = [rng.integers(0, n_pairs + 1, rng.integers(1, 80)) for _ in range(n_lr)]  # ties, count 0 and 1
    hist = np.zeros((n_lr, n_pairs + 1), np.int64)
    for j, c in enumerate(counts):
        np.add.at(hist[j], np.maximum(c, 1), 1)
    table = bh_table(hist, n_pairs)
    for j, c in enumerate(counts):
        p = np.maximum(c, 1) / float(n_pairs)
        assert np.array_equal(table[j, np.maximum(c, 1)], multipletests(p, method="fdr_bh")[1])
    assert np.isnan(table[hist == 0]).all()


def test_other_methods_along_lrs_read_the_matrices(lazy_run):
    _, res = lazy_run
    got = copy.copy(res).adjusted("LR", 0.05, "bonferroni")
    _same(got, _in_memory(res).adjusted("LR", 0.05, "bonferroni"))
    with pytest.raises(ValueError, match="correct_axis"):
        res.adjusted("cells")


def test_dataset_round_trip(lazy_run, tmp_path):
    ds, res = lazy_run
    res.store(ds)
    ds.write()
    expect = _in_memory(res).adjusted("LR", 0.05, "fdr_bh")
    got = cci.adj_pvals(ds, correct_axis="LR", **RUN)
    ds.write()
    _same(got, expect)  # the returned result reads its own parts, not the replaced elements
    _same(CCIResult.load(stdask.read(ds.path)), expect)

