"""Records that arrive in any order, read back grouped by gene, in bounded memory.

The GEF writers get observations in order but store expression gene-major: :class:`GeneMajorSpool`
spools records to a temporary file and scatters them into a disk-backed gene-major array, a slice of
records at a time (:data:`SLICE` by default); :func:`gene_groups` cuts that array into consecutive gene
ranges of about a slice each, for copying into HDF5.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

#: records read or written per slice when moving data between the spool and HDF5
SLICE = 1 << 22


class GeneMajorSpool:
    """Collect records in any order and read them back grouped by gene, with bounded memory.

    :meth:`append` writes records to a temporary file and counts them per gene; :meth:`finish` scatters
    them into a disk-backed gene-major array (order within a gene = order of arrival).

    Parameters
    ----------
    directory
        Temporary directory for the spool files.
    n_genes
        Number of genes.
    dtype
        Structured dtype of a record (without the gene).
    name
        File name stem.
    slice_records
        Records read back per slice by :meth:`finish` (bounds its memory).
    """

    def __init__(self, directory: Path, n_genes: int, dtype: np.dtype, name: str, slice_records: int = SLICE):
        self.dtype = np.dtype(dtype)
        self.slice_records = slice_records
        self.n_genes = n_genes
        self._rec_path = directory / f"{name}.rec"
        self._gene_path = directory / f"{name}.gene"
        self._major_path = directory / f"{name}.major"
        self._rec = open(self._rec_path, "wb")
        self._gene = open(self._gene_path, "wb")
        self.counts = np.zeros(n_genes, dtype=np.int64)
        self.total = 0

    def append(self, gene: np.ndarray, records: np.ndarray) -> None:
        """Add records ((m,) structured ``dtype``) of genes ``gene`` ((m,) int)."""
        self._rec.write(np.ascontiguousarray(records, dtype=self.dtype).tobytes())
        self._gene.write(np.asarray(gene, dtype=np.int32).tobytes())
        self.counts += np.bincount(gene, minlength=self.n_genes)
        self.total += len(gene)

    def finish(self) -> tuple[np.ndarray, np.memmap | np.ndarray]:
        """Scatter to gene-major order.

        Returns
        -------
        offsets
            (n_genes + 1,) int64: gene ``g`` owns ``major[offsets[g]:offsets[g+1]]``.
        major
            (total,) structured ``dtype``, disk-backed.
        """
        self._rec.close()
        self._gene.close()
        offsets = np.zeros(self.n_genes + 1, dtype=np.int64)
        np.cumsum(self.counts, out=offsets[1:])
        if self.total == 0:
            return offsets, np.zeros(0, dtype=self.dtype)
        major = np.memmap(self._major_path, dtype=self.dtype, mode="w+", shape=(self.total,))
        cursor = offsets[:-1].copy()
        for lo in range(0, self.total, self.slice_records):
            n = min(self.slice_records, self.total - lo)
            rec = np.fromfile(self._rec_path, dtype=self.dtype, count=n, offset=lo * self.dtype.itemsize)
            gene = np.fromfile(self._gene_path, dtype=np.int32, count=n, offset=lo * 4)
            order = np.argsort(gene, kind="stable")
            g_sorted = gene[order]
            genes, first, per_gene = np.unique(g_sorted, return_index=True, return_counts=True)
            rank = np.arange(n, dtype=np.int64) - np.repeat(first, per_gene)
            major[cursor[g_sorted] + rank] = rec[order]
            cursor[genes] += per_gene
        major.flush()
        return offsets, major


def gene_groups(offsets: np.ndarray, limit: int | None = None) -> Iterator[tuple[int, int]]:
    """Consecutive gene ranges holding about ``limit`` (default :data:`SLICE`) records each (at least one gene)."""
    limit = SLICE if limit is None else limit
    g = 0
    n = len(offsets) - 1
    while g < n:
        stop = int(np.searchsorted(offsets, offsets[g] + limit, side="right")) - 1
        stop = min(max(stop, g + 1), n)
        yield g, stop
        g = stop
