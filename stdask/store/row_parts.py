"""A matrix kept as part files of consecutive row ranges in a scratch folder (:mod:`.scratch`), read as dask
arrays of CSR row blocks: how results that grow with the slice leave the tasks that compute them without
passing through the driver, and reach the store block by block on ``ds.write()``.
"""
from __future__ import annotations

import shutil
import weakref
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import dask
import dask.array as da
import numpy as np
import scipy.sparse as sp


def part_path(folder: str | Path, start: int) -> Path:
    """The file of the part whose rows start at ``start``."""
    return Path(folder) / f"part-{int(start):012d}.npz"


@dataclass
class RowParts(ABC):
    """Parts of (n_rows, n_cols) matrices: row ranges ``starts[i]:stops[i]`` covering every row in order, each
    with ``nnz[i]`` entries in the file :func:`part_path` (none when ``nnz[i] == 0``).

    A subclass names its matrices and their dtypes in ``KINDS`` and builds one block in :meth:`block`.
    """

    folder: str
    starts: np.ndarray
    stops: np.ndarray
    nnz: np.ndarray
    n_cols: int

    KINDS: ClassVar[dict[str, type]] = {}
    WHAT: ClassVar[str] = "a result"

    def own(self):
        """Remove the folder once this object is collected (call once, in the process that made the folder);
        the dask arrays of :meth:`arrays` hold it, so a pending result keeps its parts."""
        weakref.finalize(self, shutil.rmtree, self.folder, True)
        return self

    def load(self, i: int) -> dict[str, np.ndarray] | None:
        """The arrays of part ``i`` (``None`` for a part without entries); a missing file is an error naming it."""
        if self.nnz[i] == 0:
            return None
        path = part_path(self.folder, self.starts[i])
        if not path.is_file():
            raise FileNotFoundError(f"{path}: a part of {self.WHAT} is missing (removed while the result was "
                                    "pending?); compute it again")
        with np.load(path) as z:
            return {k: z[k] for k in z.files}

    def empty(self, i: int, kind: str) -> sp.csr_matrix:
        return sp.csr_matrix((int(self.stops[i] - self.starts[i]), self.n_cols), dtype=self.KINDS[kind])

    @abstractmethod
    def block(self, i: int, kind: str) -> sp.csr_matrix:
        """Rows ``starts[i]:stops[i]`` of matrix ``kind``, CSR with sorted column indices."""

    def arrays(self) -> dict[str, da.Array]:
        """Each matrix of ``KINDS`` as a dask array of CSR row blocks, one block per part. Each array is
        registered as made from this object, so :func:`iter_blocks` reads its blocks directly."""
        src = dask.delayed(self, pure=True, traverse=False)
        meta = sp.csr_matrix((0, self.n_cols))
        out = {}
        for kind, dtype in self.KINDS.items():
            blocks = [da.from_delayed(dask.delayed(type(self).block, pure=True)(src, i, kind),
                                      shape=(int(b - a), self.n_cols), dtype=dtype, meta=meta)
                      for i, (a, b) in enumerate(zip(self.starts, self.stops))]
            out[kind] = da.concatenate(blocks, axis=0)
            _SOURCES[out[kind].name] = (weakref.ref(self), kind)
        return out

    def __dask_tokenize__(self):
        return (type(self).__qualname__, self.folder, self.starts.tobytes(), self.stops.tobytes(), self.n_cols)


def covering(n_rows: int, ranges: list[tuple[int, int, int]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(starts, stops, nnz) of the parts ``ranges`` = [(start, stop, nnz)] with the rows no part covers added
    as empty ranges, in row order."""
    ranges = sorted(ranges)
    out, at = [], 0
    for a, b, n in ranges:
        if a < at:
            raise ValueError(f"row parts overlap at row {a}")
        if a > at:
            out.append((at, a, 0))
        out.append((a, b, n))
        at = b
    if at < n_rows:
        out.append((at, n_rows, 0))
    arr = np.array(out, dtype=np.int64).reshape(-1, 3)
    return arr[:, 0], arr[:, 1], arr[:, 2]


#: dask array name -> (the RowParts it reads, its kind): lets :func:`iter_blocks` skip dask for the arrays made
#: by :meth:`RowParts.arrays` (computing block i of a concatenation through dask walks the whole graph each time)
_SOURCES: dict[str, tuple[weakref.ref, str]] = {}


def iter_blocks(arr: da.Array):
    """The row blocks of a dask array of CSR row blocks, one at a time, computed in this process."""
    entry = _SOURCES.get(arr.name)
    src = entry[0]() if entry is not None else None
    if src is not None and (len(src.starts), ) == (arr.numblocks[0], ):
        for i in range(len(src.starts)):
            yield src.block(i, entry[1])
        return
    for i in range(arr.numblocks[0]):
        yield dask.compute(arr.blocks[i], scheduler="sync")[0]


def gather(arr: da.Array) -> sp.csr_matrix:
    """A dask array of CSR row blocks as one CSR (sorted indices; int32 pointers and indices while they fit), its
    blocks computed in this process one at a time."""
    blocks = [sp.csr_matrix(b) for b in iter_blocks(arr)]
    m = sp.vstack(blocks, format="csr") if blocks else sp.csr_matrix(arr.shape, dtype=arr.dtype)
    m.sort_indices()
    if m.nnz < 2**31 and m.shape[1] <= np.iinfo(np.int32).max:
        m.indptr, m.indices = m.indptr.astype(np.int32), m.indices.astype(np.int32)
    return m


__all__ = ["RowParts", "covering", "gather", "iter_blocks", "part_path"]
