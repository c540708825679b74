"""LR hotspot results kept out of the driver (issue 17): pass 2's tasks write their entries to parts inside the
store, ``ds.write()`` streams the matrices, ``run_cci`` reads significance a row block at a time, and the
scratch folder lives exactly as long as something uses it."""
from __future__ import annotations

import gc
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import stdask
from stdask.tl import cci
from stdask.store import scratch
from stdask.tl.cci import entries
from stdask.tl.cci.interactions import _tested_lrs
from stdask.tl.cci.result import CCIResult

DATA = Path(__file__).parent / "data"
RUN = dict(min_spots=20, n_pairs=100, seed=4, progress=False, verbose=False)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return stdask.ingest(DATA / "ref_N2000.h5ad", tmp_path_factory.mktemp("entries") / "ref.zarr", progress=False,
                         tile_size=1000)


@pytest.fixture(scope="module")
def lrs():
    return cci.load_lrs()


@pytest.fixture(scope="module")
def few(lrs):
    """A fifth of the database: runs of a few seconds for the folder's lifetime."""
    return cci.database.LRPairs(lrs.ligand[::5], lrs.receptor[::5])


@pytest.fixture(scope="module")
def one(store, lrs):
    """The run on a single task (whole slice), not recorded."""
    return cci.run(stdask.read(store), lrs, scheduler="sync", copy=True, **RUN)


@pytest.fixture(scope="module")
def split(store, lrs):
    """The run in tasks of 300 rows, not recorded."""
    return cci.run(stdask.read(store), lrs, rows_per_task=300, scheduler="sync", copy=True, **RUN)


def _folders(path: Path) -> list[Path]:
    return sorted(Path(path).glob(entries.PREFIX + "*"))


def _never_gathered(self, kind):
    raise AssertionError(f"the whole {kind!r} matrix was read into the driver")


def test_run_write_and_run_cci_never_gather_the_matrices(store, lrs, one, tmp_path, monkeypatch):
    ds = stdask.read(store)
    assert ds.n_tiles > 4
    before = set(_folders(store))  # the module's other results keep theirs
    with monkeypatch.context() as m:
        m.setattr(CCIResult, "_matrix", _never_gathered)
        res = cci.run(ds, lrs, rows_per_task=300, scheduler="sync", **RUN)
        assert res.lazy is not None and res.lazy["score"].numblocks[0] > 4
        assert len(set(_folders(store)) - before) == 1  # the parts, inside the store
        ds.write()
        loaded = CCIResult.load(ds)  # lazy: read from the store a row block at a time
        inter = cci.run_cci(ds, "cell_type", n_perms=20, seed=1, progress=False, scheduler="sync")
    # what was written is what the run computed; the same run on one tile gives the same matrices
    pd.testing.assert_frame_equal(res.lr_summary, one.lr_summary)
    for kind, key in (("score", "lr_scores"), ("count", "lr_pval_counts"), ("padj", "p_adjs")):
        written = sp.csr_matrix(ds.store.read("obsm", key))
        for other in (res, loaded, one):
            assert (written != other._matrix(kind)).nnz == 0, (kind, key)
    # run_cci on the lazily loaded result equals run_cci on the same result held in memory
    coo_s, coo_c, coo_p = (one._matrix(k).tocoo() for k in ("score", "count", "padj"))
    in_memory = CCIResult(one.obs_names, one.pairs, one.lr_summary, one.lrfeatures, one.scores, one.counts,
                          one.padj, one.n_pairs, one.min_expr, one.cutoff, dict(one.params))
    assert np.array_equal(coo_s.row, coo_p.row) and np.array_equal(coo_c.col, coo_s.col)
    ref = cci.run_cci(stdask.read(store), "cell_type", result=in_memory, n_perms=20, seed=1, progress=False,
                      scheduler="sync", copy=True)
    for name in ("raw", "sig", "pvals"):
        assert np.array_equal(getattr(inter, name), getattr(ref, name)), name


@pytest.mark.parametrize("sig_spots", [True, False])
def test_senders_read_by_block_equal_a_whole_matrix_computation(split, sig_spots):
    res = split
    got = _tested_lrs(res, 10, sig_spots)
    # independently: the whole matrices, in CSC
    keep = res.scores.copy()
    if sig_spots:
        keep.data = ((res.scores.data > 0) & (res.padj.data < res.cutoff)).astype(np.float64)
    keep.eliminate_zeros()
    csc = sp.csc_matrix(keep[:, got.index])
    csc.sort_indices()
    assert np.array_equal(got.s_ptr, csc.indptr) and np.array_equal(got.s_rows, csc.indices)
    assert len(got.index) > 3


def test_scratch_folder_lifetime_and_damage(store, few, tmp_path):
    import shutil

    path = tmp_path / "copy.zarr"
    shutil.copytree(store, path, ignore=shutil.ignore_patterns(entries.PREFIX + "*"))
    # a folder left by a process that no longer runs (pid 2**22 + 12345 is above Linux's pid_max default) is
    # removed by the next run; one of a running process is not; other hidden names are never touched
    dead = path / f"{entries.PREFIX}{scratch.host()}-{2**22 + 12345}-abc"
    alive = path / f"{entries.PREFIX}{scratch.host()}-{os.getpid()}-abc"
    other = path / ".cci-entries-elsewhere"
    for d in (dead, alive, other):
        d.mkdir()
    ds = stdask.read(path)
    res = cci.run(ds, few, rows_per_task=300, scheduler="sync", **RUN)
    assert not dead.exists() and alive.exists() and other.exists()
    (folder,) = [d for d in _folders(path) if d not in (alive, other)]
    assert len(list(folder.glob("part-*.npz"))) > 4
    # a missing part is an error that names it, never an empty block
    part = sorted(folder.glob("part-*.npz"))[2]
    part.rename(part.with_suffix(".moved"))
    with pytest.raises(FileNotFoundError, match=part.name):
        res.scores
    part.with_suffix(".moved").rename(part)
    ds.write()  # the pending lazy matrices are streamed; the result still reads its parts after the write
    assert res.scores.nnz == ds.store.element_info("obsm", "lr_scores").nnz
    assert folder.exists()
    del res
    gc.collect()
    assert not folder.exists()  # nothing uses the parts any more
    # a run whose pending result is replaced before it is written leaves nothing behind either
    cci.run(ds, few, **RUN)
    first = [d for d in _folders(path) if d not in (alive, other)]
    cci.run(ds, few, **RUN)
    gc.collect()
    now = [d for d in _folders(path) if d not in (alive, other)]
    assert len(first) == 1 and len(now) == 1 and now != first
    ds.write()
    gc.collect()
    assert [d for d in _folders(path) if d not in (alive, other)] == []
    alive.rmdir()


def test_covering_adds_empty_ranges_and_refuses_overlaps():
    starts, stops, nnz = entries.covering(10, [(5, 8, 3), (0, 2, 1)])
    assert starts.tolist() == [0, 2, 5, 8] and stops.tolist() == [2, 5, 8, 10] and nnz.tolist() == [1, 0, 3, 0]
    with pytest.raises(ValueError, match="overlap"):
        entries.covering(10, [(0, 5, 1), (4, 6, 1)])



def test_store_that_cannot_be_written_keeps_its_parts_in_the_temporary_folder(store, lrs, split, monkeypatch):
    import pathlib
    import tempfile

    mkdir = pathlib.Path.mkdir

    def refused(self, *a, **k):  # the store's folder refuses new entries, as a read-only share would
        if self.parent == Path(store):
            raise PermissionError(13, "Permission denied", str(self))
        return mkdir(self, *a, **k)

    in_store = set(_folders(store))
    monkeypatch.setattr(pathlib.Path, "mkdir", refused)
    before = set(Path(tempfile.gettempdir()).glob(entries.PREFIX + "*"))
    res = cci.run(stdask.read(store), lrs, rows_per_task=300, scheduler="sync", copy=True, **RUN)
    (folder,) = set(Path(tempfile.gettempdir()).glob(entries.PREFIX + "*")) - before
    assert set(_folders(store)) == in_store and len(list(folder.glob("part-*.npz"))) > 4
    monkeypatch.undo()
    assert (res.scores != split.scores).nnz == 0 and (res.padj != split.padj).nnz == 0
    del res
    gc.collect()
    assert not folder.exists()


def test_gene_columns_serve_every_gene_across_parts_and_groups(tmp_path):
    """Each gene's values from parts of CSC columns, in groups of a few values, against the whole matrix."""
    from stdask.tl.cci.gene_columns import GeneColumns, write_columns

    rng = np.random.default_rng(2)
    X = sp.random(700, 40, density=0.1, format="csr", random_state=rng, dtype=np.float32)
    X[:, 7] = 0.0  # a gene with no value at all
    X = sp.csr_matrix(X)
    X.eliminate_zeros()
    starts = [0, 150, 151, 420]  # parts of 150, 1, 269 and 280 rows
    for a, b in zip(starts, starts[1:] + [700]):
        own = sp.csc_matrix(X[a:b])
        write_columns(str(tmp_path), a, own.indptr, own.data)
    whole = sp.csc_matrix(X)
    for group_values in (1, 37, 10**9):  # one gene per group, a few genes, all genes
        cols = GeneColumns(str(tmp_path), starts, 40, group_values=group_values)
        assert np.array_equal(cols.nnz, np.diff(whole.indptr))
        for g in list(range(40)) + [3, 39, 0]:  # ascending, then back (a group is re-read)
            got = np.sort(cols.values(g))
            assert np.array_equal(got, np.sort(whole.data[whole.indptr[g]:whole.indptr[g + 1]])), (group_values, g)
    (tmp_path / "p1-000000000150-indptr.npy").unlink()  # a part missing is an error naming it
    with pytest.raises(FileNotFoundError, match="p1-000000000150-indptr"):
        GeneColumns(str(tmp_path), starts, 40)
    cols.remove()
    assert list(tmp_path.iterdir()) == []
