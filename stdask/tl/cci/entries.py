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

import os
import shutil
import socket
import tempfile
import uuid
import weakref
from dataclasses import dataclass
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import scipy.sparse as sp

from ...backend import get_kernel

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
def _host() -> str:
    return socket.gethostname().replace("-", "_") or "host"


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale(store: str | Path) -> list[Path]:
    """Remove the scratch folders in ``store`` left by processes of this host that no longer run; the folders
    removed. Only folders this module names (``.cci-entries-<host>-<pid>-<id>``) are touched."""
    removed = []
    for d in Path(store).glob(PREFIX + "*"):
        parts = d.name[len(PREFIX):].split("-")
        if len(parts) != 3 or parts[0] != _host() or not parts[1].isdigit():
            continue
        if not _running(int(parts[1])):
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
    return removed


def new_folder(store: str | Path) -> Path:
    """A fresh scratch folder inside ``store`` (stale ones of this host removed first); for a store this process
    may not write to (a shared read-only slice), one in the system's temporary folder, which workers on this
    machine reach too."""
    name = f"{PREFIX}{_host()}-{os.getpid()}-{uuid.uuid4().hex[:12]}"
    try:
        remove_stale(store)
        d = Path(store) / name
        d.mkdir()
    except OSError:
        d = Path(tempfile.mkdtemp(prefix=name + "-"))
    return d


def write_part(folder: str, start: int, stop: int, rows: np.ndarray, pair: np.ndarray, score: np.ndarray,
               count: np.ndarray, padj: np.ndarray) -> None:
    """Write the entries of global rows ``start:stop`` (``rows`` relative to ``start``, grouped by row) as one
    part, atomically (temporary name, then rename)."""
    final = Path(folder) / f"part-{start:012d}.npz"
    tmp = final.with_name(f".{final.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    with open(tmp, "wb") as f:
        np.savez(f, stop=np.int64(stop), rows=rows, pair=pair, score=score, count=count, padj=padj)
    os.replace(tmp, final)


# ---- reading ------------------------------------------------------------------------------------------------
@dataclass
class EntryParts:
    """The parts of one run: row ranges ``starts[i]:stops[i]`` (covering 0..n_obs in order), the column of each
    pair (``rank``: position in ``lr_summary``) and the folder they are in.

    Attributes
    ----------
    folder
        The scratch folder (inside the store).
    starts, stops
        (n_parts,) int64 row ranges; a range without a file has no entries.
    nnz
        (n_parts,) int64 entries of each part.
    rank
        (n_lr,) int64 column of each pair.
    n_obs
        Rows of the matrices.
    """

    folder: str
    starts: np.ndarray
    stops: np.ndarray
    nnz: np.ndarray
    rank: np.ndarray
    n_obs: int

    def own(self) -> "EntryParts":
        """Remove the folder once this object is collected (call once, in the process that made the folder);
        the dask arrays of :meth:`arrays` hold it, so a pending result keeps its parts."""
        weakref.finalize(self, shutil.rmtree, self.folder, True)
        return self

    def block(self, i: int, kind: str) -> sp.csr_matrix:
        """Rows ``starts[i]:stops[i]`` of matrix ``kind`` (``'score'``, ``'count'`` or ``'padj'``), CSR with
        sorted column indices."""
        n_rows, n_lr = int(self.stops[i] - self.starts[i]), len(self.rank)
        path = Path(self.folder) / f"part-{int(self.starts[i]):012d}.npz"
        if self.nnz[i] == 0:
            return sp.csr_matrix((n_rows, n_lr), dtype=_DTYPES[kind])
        if not path.is_file():
            raise FileNotFoundError(f"{path}: a part of the LR run's tested entries is missing (removed while the "
                                    "result was pending?); re-run stdask.tl.cci.run")
        with np.load(path) as z:
            rows, pair = z["rows"], z["pair"]
            values = [np.array(z[k], dtype=_DTYPES[k]) for k in KINDS]
        indptr, indices, values = csr_structure(n_rows, rows, self.rank.astype(np.int32)[pair], values)
        m = sp.csr_matrix((values[KINDS.index(kind)], indices, indptr), shape=(n_rows, n_lr))
        m.has_sorted_indices = True
        return m

    def arrays(self) -> dict[str, da.Array]:
        """The three (n_obs, n_lr) matrices as dask arrays of CSR row blocks (one block per part)."""
        src = dask.delayed(self, pure=True, traverse=False)
        meta = sp.csr_matrix((0, len(self.rank)))
        out = {}
        for kind in KINDS:
            blocks = [da.from_delayed(dask.delayed(EntryParts.block, pure=True)(src, i, kind),
                                      shape=(int(b - a), len(self.rank)), dtype=_DTYPES[kind], meta=meta)
                      for i, (a, b) in enumerate(zip(self.starts, self.stops))]
            out[kind] = da.concatenate(blocks, axis=0)
        return out

    def __dask_tokenize__(self):
        return ("stdask.cci.entries", self.folder, self.rank.tobytes(), self.starts.tobytes(), self.stops.tobytes())


def covering(n_obs: int, ranges: list[tuple[int, int, int]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(starts, stops, nnz) of the parts ``ranges`` = [(start, stop, nnz)] with the rows no part covers added
    as empty ranges, in row order."""
    ranges = sorted(ranges)
    out, at = [], 0
    for a, b, n in ranges:
        if a < at:
            raise ValueError(f"LR run parts overlap at row {a}")
        if a > at:
            out.append((at, a, 0))
        out.append((a, b, n))
        at = b
    if at < n_obs:
        out.append((at, n_obs, 0))
    arr = np.array(out, dtype=np.int64).reshape(-1, 3)
    return arr[:, 0], arr[:, 1], arr[:, 2]
