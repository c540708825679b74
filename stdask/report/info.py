"""A store's summary as a plain dict (what ``stdask info`` prints and the demo saves as ``info_<name>.json``)."""
from __future__ import annotations

from pathlib import Path

from ..dataset import read

__all__ = ["store_info"]


def store_info(path: str | Path) -> dict:
    """:meth:`stdask.dataset.SpatialDataset.info` of the store at ``path`` as a dict: shape, nnz, tiles, units,
    size on disk and the in-memory size of a few materialisations (see :class:`stdask.store.info.StoreInfo`)."""
    return read(path).info().as_dict()
