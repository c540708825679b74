"""The tested entries of an LR hotspot run, kept next to the store by the tasks that compute them.

At 10^6 cells a run tests ~5 x 10^7 (cell, LR) entries; gathered in the driver they are ~1.4 GB, and they grow
with the slice. Pass 2's tasks therefore write each tile's entries as one part file in a scratch folder inside
the store (hidden, so never read as part of it) and return only per-LR counts. The result matrices are dask
arrays of CSR row blocks read from the parts, with the columns in ``lr_summary`` order (known only once every
tile is counted); ``ds.write()`` streams them into the store block by block.

A part is written to a temporary name and renamed, so a task run twice (a killed worker's task re-run) leaves
one whole part with the same content. The folder is removed when the last object using it is collected, and a
folder left by a process that was killed is removed by the next run on the same host.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from ...backend import get_kernel
from ...store import scratch
from ...store.row_parts import RowParts, covering, part_path

PREFIX = ".cci-entries-"
KINDS = ("score", "count", "padj")
_DTYPES = {"score": np.float64, "count": np.int32, "padj": np.float64}


def csr_structure(n_rows: int, rows: np.ndarray, cols: np.ndarray, values: list[np.ndarray]):
    """CSR ``indptr``/``indices`` of entries (rows, cols), with the three ``values`` reordered in place to match.

    Entries come grouped by row (tile order, then row order inside a tile) but not sorted by column: each
    row's few entries are sorted in place, so no whole-size permutation or value copy is made. Unsorted rows
    fall back to one global sort.
    """
    rows = np.asarray(rows)
    if len(rows) > 1 and not np.all(rows[1:] >= rows[:-1]):
        perm = np.lexsort((cols, rows))
        rows, cols = rows[perm], cols[perm]
        for k, v in enumerate(values):
            values[k] = v[perm]
    indptr = np.zeros(n_rows + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=n_rows), out=indptr[1:])
    indices = np.ascontiguousarray(cols, dtype=np.int32)
    get_kernel("sort_rows_inplace")(indptr, indices, *values)
    if indptr[-1] < 2**31:
        indptr = indptr.astype(np.int32)
    return indptr, indices, values


# ---- the scratch folder ------------------------------------------------------------------------------------
def remove_stale(store: str | Path) -> list[Path]:
    """Remove the folders of LR runs in ``store`` left by processes of this host that no longer run."""
    return scratch.remove_stale(store, PREFIX)


def new_folder(store: str | Path) -> Path:
    """A fresh scratch folder for an LR run (:func:`stdask.store.scratch.new_folder`)."""
    return scratch.new_folder(store, PREFIX)


def write_part(folder: str, start: int, stop: int, rows: np.ndarray, pair: np.ndarray, score: np.ndarray,
               count: np.ndarray, padj: np.ndarray) -> None:
    """Write the entries of global rows ``start:stop`` (``rows`` relative to ``start``, grouped by row) as one
    part, atomically."""
    scratch.save_npz(part_path(folder, start), stop=np.int64(stop), rows=rows, pair=pair,
                     score=score, count=count, padj=padj)


# ---- reading ------------------------------------------------------------------------------------------------
@dataclass
class EntryParts(RowParts):
    """The parts of one run (:class:`~stdask.store.row_parts.RowParts`, ``n_cols`` = valid pairs) and the column
    of each pair: ``rank`` (n_lr,) int64, its position in ``lr_summary`` (known once every part is counted)."""

    rank: np.ndarray = None

    KINDS = _DTYPES
    WHAT = "the LR run's tested entries (re-run stdask.tl.cci.run)"

    def block(self, i: int, kind: str) -> sp.csr_matrix:
        """Rows ``starts[i]:stops[i]`` of matrix ``kind`` (``'score'``, ``'count'`` or ``'padj'``), CSR with
        columns in ``lr_summary`` order, sorted."""
        z = self.load(i)
        if z is None:
            return self.empty(i, kind)
        values = [np.array(z[k], dtype=_DTYPES[k]) for k in KINDS]
        n_rows = int(self.stops[i] - self.starts[i])
        indptr, indices, values = csr_structure(n_rows, z["rows"], self.rank.astype(np.int32)[z["pair"]], values)
        m = sp.csr_matrix((values[KINDS.index(kind)], indices, indptr), shape=(n_rows, self.n_cols))
        m.has_sorted_indices = True
        return m

    def __dask_tokenize__(self):
        return (*super().__dask_tokenize__(), self.rank.tobytes())


__all__ = ["PREFIX", "KINDS", "EntryParts", "covering", "csr_structure", "new_folder", "remove_stale", "write_part"]
