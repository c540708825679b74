"""Each gene's non-zero values over the whole slice, kept on disk by pass 1's tasks and read a group of genes at a
time.

The background of stLearn's LR test matches genes by 12 expression quantiles over all observations, which needs
every gene's non-zero values (at 10^6 bins ~5 x 10^7 values, at 10^7 ten times more). Pass 1's tasks write their
own rows' values column by column (CSC: ``indptr`` per gene and ``data``) as two ``.npy`` files in the run's
scratch folder (:mod:`.entries`); :class:`GeneColumns` serves ``values(g)`` from a cache of one group of
consecutive genes, assembled from every part's slice of the group, so the driver holds one group (at most
``GROUP_VALUES`` values, or one gene's) instead of the slice's values. The quantiles are order statistics, so the
order of a gene's values (part by part) changes nothing.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ...store.scratch import save_npy

#: values (all genes of a group together) held at once; a single larger gene is its own group
GROUP_VALUES = 1 << 24


def write_columns(folder: str, start: int, indptr: np.ndarray, data: np.ndarray) -> None:
    """Write the CSC values (``indptr``: (n_vars + 1,) int64, ``data``: (nnz,)) of the rows starting at ``start``,
    each file atomically (a task run twice writes the same content)."""
    base = Path(folder) / f"p1-{start:012d}"
    save_npy(base.with_name(base.name + "-data.npy"), np.ascontiguousarray(data))
    # the pointers last: a part is complete once they exist
    save_npy(base.with_name(base.name + "-indptr.npy"), np.ascontiguousarray(indptr, dtype=np.int64))


class GeneColumns:
    """``values(g)``: (nnz_g,) the non-zero values of gene ``g`` over all parts (pass 1's tiles).

    Parameters
    ----------
    folder
        The run's scratch folder.
    starts
        First row of each part written (the ``start`` of :func:`write_columns`).
    n_vars
        Genes.
    group_values
        Values held per group of genes.
    """

    def __init__(self, folder: str, starts: list[int], n_vars: int, group_values: int = GROUP_VALUES) -> None:
        self._base = [Path(folder) / f"p1-{int(s):012d}" for s in sorted(starts)]
        self.n_vars = int(n_vars)
        self.nnz = np.zeros(n_vars, np.int64)  # per gene, over all parts
        for b in self._base:
            self.nnz += np.diff(self._indptr(b))
        # consecutive genes grouped while their values fit in group_values
        bounds, size = [0], 0
        for g, n in enumerate(self.nnz):
            if size and size + n > group_values:
                bounds.append(g)
                size = 0
            size += int(n)
        bounds.append(n_vars)
        self._bounds = np.unique(np.array(bounds, dtype=np.int64))
        self._group = -1
        self._ptr = self._values = None

    def _indptr(self, base: Path, ga: int = 0, gb: int | None = None) -> np.ndarray:
        """Pointers ``ga..gb`` (inclusive) of a part: only their pages are read."""
        path = base.with_name(base.name + "-indptr.npy")
        if not path.is_file():
            raise FileNotFoundError(f"{path}: a part of the LR run's gene values is missing (the run's scratch "
                                    "folder was changed while it ran?); re-run stdask.tl.cci.run")
        m = np.load(path, mmap_mode="r")
        out = np.array(m[ga:(len(m) if gb is None else gb + 1)])
        del m
        return out

    def _load(self, k: int) -> None:
        """Gather group ``k`` (genes bounds[k]..bounds[k+1]) from every part, gene-major."""
        ga, gb = int(self._bounds[k]), int(self._bounds[k + 1])
        pieces, genes = [], []
        for b in self._base:
            ip = self._indptr(b, ga, gb)
            if ip[-1] == ip[0]:
                continue
            data = np.load(b.with_name(b.name + "-data.npy"), mmap_mode="r")
            pieces.append(np.array(data[ip[0]:ip[-1]]))  # a copy: the mapping is closed at once
            del data
            genes.append(np.repeat(np.arange(gb - ga, dtype=np.int32), np.diff(ip)))
        self._values = self._ptr = None  # the previous group is released before the next is assembled
        if pieces:
            values, gene = np.concatenate(pieces), np.concatenate(genes)
            del pieces, genes
            values = values[np.argsort(gene, kind="stable")]
        else:
            values = np.empty(0)
        ptr = np.zeros(gb - ga + 1, np.int64)
        np.cumsum(self.nnz[ga:gb], out=ptr[1:])
        self._group, self._ptr, self._values = k, ptr, values

    def values(self, g: int) -> np.ndarray:
        k = int(np.searchsorted(self._bounds, g, side="right") - 1)
        if k != self._group:
            self._load(k)
        i = g - int(self._bounds[k])
        return self._values[self._ptr[i]:self._ptr[i + 1]]

    def remove(self) -> None:
        """Delete the parts' files (the run no longer needs them)."""
        self._values = self._ptr = None
        for b in self._base:
            for suffix in ("-data.npy", "-indptr.npy"):
                b.with_name(b.name + suffix).unlink(missing_ok=True)
