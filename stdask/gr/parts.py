"""A spatial graph's row blocks kept next to the store by the tasks that build them.

At 10^6 bins a radius graph has ~2 x 10^7 edges; assembled in the driver it took ~40 bytes per edge (the tiles'
blocks, their concatenation and the two matrices), 7 GB at 10^7 bins. Each tile's task therefore writes its
:class:`~stdask.gr.graph.RowBlock` as one part in a scratch folder inside the store
(:mod:`stdask.store.scratch`) and returns only its rows' neighbour counts; the graph's two matrices are dask
arrays of CSR row blocks read from the parts (:class:`~stdask.store.row_parts.RowParts`) that ``ds.write()``
streams into the store.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from ..store import scratch
from ..store.row_parts import RowParts, part_path
from .graph import RowBlock

PREFIX = ".graph-parts-"


def write_block(folder: str, start: int, block: RowBlock, n_obs: int) -> None:
    """Write a tile's row block (its own rows start at global row ``start``) as one part, atomically."""
    idx = np.int32 if n_obs <= np.iinfo(np.int32).max else np.int64
    scratch.save_npz(part_path(folder, start), counts=block.counts.astype(np.int64), cols=block.cols.astype(idx),
                     dist=block.dist.astype(np.float64))


@dataclass
class GraphParts(RowParts):
    """The parts of one graph (``n_cols`` = observations): ``connectivities`` (1.0 per edge, float32) and
    ``distances`` (float64) with the same structure, columns ascending within each row."""

    KINDS = {"connectivities": np.float32, "distances": np.float64}
    WHAT = "the spatial graph (run stdask.gr.spatial_neighbors again)"

    def block(self, i: int, kind: str) -> sp.csr_matrix:
        z = self.load(i)
        if z is None:
            return self.empty(i, kind)
        n_rows = int(self.stops[i] - self.starts[i])
        indptr = np.zeros(n_rows + 1, np.int64)
        np.cumsum(z["counts"], out=indptr[1:])
        if indptr[-1] <= np.iinfo(np.int32).max and z["cols"].dtype == np.int32:
            indptr = indptr.astype(np.int32)
        data = np.ones(len(z["cols"]), np.float32) if kind == "connectivities" else z["dist"]
        m = sp.csr_matrix((data, z["cols"], indptr), shape=(n_rows, self.n_cols))
        m.has_sorted_indices = True
        return m


__all__ = ["PREFIX", "GraphParts", "write_block"]
