"""A synthetic slice as an ingest source, so ``stdask.ingest`` can build a store of any size from
:func:`stdask.datasets.synthetic_slice` in bounded memory (the benchmarks' out-of-core inputs)."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pandas as pd

from ..io.base import EntryChunk, Source
from .synthetic import SyntheticSlice


class SyntheticSource(Source):
    """Observations and coordinates of a :class:`SyntheticSlice` up front, its counts streamed.

    The observation table costs one generation pass; the counts are regenerated (bit-identically) when
    streamed, so at no point is the whole count matrix in memory.

    Parameters
    ----------
    sl
        The synthetic slice.
    obs_columns
        Columns of :meth:`SyntheticSlice.obs_frame` to keep in ``obs`` (those the layout lacks are skipped);
        ``()`` keeps only the barcodes.
    chunk_size
        Observations generated per batch.
    """

    format_name = "synthetic"
    kind = "obs"

    def __init__(self, sl: SyntheticSlice, obs_columns: Sequence[str] = (), chunk_size: int = 100_000) -> None:
        self.path = Path("<synthetic>")
        self.options = {}
        self._sl = sl
        self._chunk = int(chunk_size)
        frames = []
        for batch in sl.iter_batches(self._chunk):
            if obs_columns:
                f = sl.obs_frame(batch)
                frames.append(f[["x", "y"] + [c for c in obs_columns if c in f.columns]])
            else:
                frames.append(pd.DataFrame({"x": batch.x, "y": batch.y},
                                           index=sl.barcodes(batch.index, batch.x, batch.y)))
        self._obs = pd.concat(frames)

    @property
    def var(self) -> pd.DataFrame:
        return self._sl.var

    @property
    def obs(self) -> pd.DataFrame:
        return self._obs.drop(columns=["x", "y"])

    @property
    def coords(self) -> np.ndarray:
        return self._obs[["x", "y"]].to_numpy()

    @property
    def unit(self) -> str:
        return self._sl.units

    @property
    def spot_diameter(self) -> float:
        return self._sl.spot_diameter

    def iter_entries(self, chunk_size: int = 2_000_000) -> Iterator[EntryChunk]:
        r0 = 0
        for _, counts in self._sl.iter_chunks(self._chunk):
            coo = counts.tocoo()
            yield EntryChunk(coo.row.astype(np.int64) + r0, coo.col.astype(np.int32), coo.data.astype(np.uint32))
            r0 += counts.shape[0]


__all__ = ["SyntheticSource"]
