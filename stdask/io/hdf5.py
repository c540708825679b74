"""What the HDF5 readers (GEF, the 10x feature-barcode ``.h5``, ``.h5ad``) share: opening a file with a
readable error, decoding string datasets, and walking a compressed-sparse pointer in bounded ranges."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import h5py
import numpy as np

from stdask.io.base import InputError

__all__ = ["open_hdf5", "decode_strings", "pointer_ranges"]


def open_hdf5(path: Path, kind: str | None = None) -> h5py.File:
    """``path`` opened read-only; an unreadable file is an :class:`InputError` naming ``kind`` (``"GEF"``...)."""
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        what = "HDF5" if kind is None else f"HDF5 / {kind}"
        raise InputError(f"{path}: not a readable {what} file ({exc})") from None


def decode_strings(values: np.ndarray) -> list[str]:
    """(n,) strings as HDF5 stores them (fixed-length bytes, NUL padded, or str) -> str."""
    return [v.decode("utf-8", errors="replace").rstrip("\x00") if isinstance(v, bytes) else str(v) for v in values]


def pointer_ranges(indptr: np.ndarray, chunk_size: int) -> Iterator[tuple[int, int, int, int]]:
    """Split a CSR / CSC pointer into ranges of whole major items holding about ``chunk_size`` entries.

    Parameters
    ----------
    indptr
        (n_major + 1,) int64 valid pointer (starts at 0, non-decreasing).
    chunk_size
        Entries per range; an item with more entries is a range on its own.

    Yields
    ------
    (m0, m1, a, b)
        Major items ``m0..m1-1`` owning entries ``a..b-1``; only ranges with entries (``b > a``).
    """
    n_major = len(indptr) - 1
    m0 = 0
    while m0 < n_major:
        # last item whose entries still fit (at least one item per range)
        m1 = int(np.searchsorted(indptr, indptr[m0] + chunk_size, side="right")) - 1
        m1 = min(max(m1, m0 + 1), n_major)
        a, b = int(indptr[m0]), int(indptr[m1])
        if b > a:
            yield m0, m1, a, b
        m0 = m1
