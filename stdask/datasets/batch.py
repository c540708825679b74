"""A contiguous range of observations of a synthetic slice, as arrays: what the generator yields and the
writers consume."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

__all__ = ["ObsBatch"]


@dataclass
class ObsBatch:
    """A contiguous range of observations, as arrays (what writers consume).

    Attributes
    ----------
    start
        Index of the first observation.
    x, y
        (n,) float64 coordinates, slice units (``um`` or ``DNB``).
    domain, cell_type
        (n,) int16 codes into :attr:`SyntheticSlice.domain_names` / :attr:`SyntheticSlice.cell_type_names`.
    hotspot
        (n,) int16 hotspot index, -1 outside every hotspot disc.
    role
        (n,) int8 0 = none, 1 = ligand-up, 2 = receptor-up.
    counts
        (n, n_genes) CSR uint32 counts (sorted indices).
    """

    start: int
    x: np.ndarray
    y: np.ndarray
    domain: np.ndarray
    cell_type: np.ndarray
    hotspot: np.ndarray
    role: np.ndarray
    counts: sp.csr_matrix

    def __len__(self) -> int:
        return len(self.x)

    @property
    def index(self) -> np.ndarray:
        """(n,) int64 observation indices."""
        return np.arange(self.start, self.start + len(self), dtype=np.int64)

    def take(self, lo: int, hi: int) -> "ObsBatch":
        """Rows ``lo .. hi-1`` of this batch (positions relative to the batch)."""
        return ObsBatch(self.start + lo, self.x[lo:hi], self.y[lo:hi], self.domain[lo:hi], self.cell_type[lo:hi],
                        self.hotspot[lo:hi], self.role[lo:hi], self.counts[lo:hi])

    @staticmethod
    def concat(batches: list["ObsBatch"]) -> "ObsBatch":
        """Concatenation of consecutive batches."""
        if len(batches) == 1:
            return batches[0]
        cat = np.concatenate
        return ObsBatch(batches[0].start, cat([b.x for b in batches]), cat([b.y for b in batches]),
                        cat([b.domain for b in batches]), cat([b.cell_type for b in batches]),
                        cat([b.hotspot for b in batches]), cat([b.role for b in batches]),
                        sp.vstack([b.counts for b in batches], format="csr"))
