"""Read-only access to zarr groups stdask did not write (inputs such as a SpatialData zarr).

The store layer is the one place that opens zarr; readers of foreign zarr inputs reach their arrays through the
group returned here.
"""
from __future__ import annotations

from pathlib import Path

import zarr

__all__ = ["open_foreign_group"]


def open_foreign_group(path: str | Path, key: str = "") -> zarr.Group:
    """The zarr group ``path/key``, opened read-only (zarr v3 or v2, whichever the input is)."""
    root = zarr.open_group(str(path), mode="r")
    return root[key] if key else root
