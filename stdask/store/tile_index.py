"""The tile index element (encoding ``stdask-tiling``): the tile grid, where each tile's rows start, the
bounds of the observations and the store's units, kept as ``uns/stdask`` of the table.

Version 2 (written) lists only the occupied tiles: ``tile_ids`` holds their sorted grid ids and
``tile_row_start`` one start per listed tile, so the element's size follows the occupied tiles. Version 1
(still read) has no ``tile_ids``: every tile of the bounding grid is listed, occupied or not.

It is stored as an AnnData ``dict`` whose members ``encoding`` and ``version`` name it, so anndata reads it
as plain ``uns`` while stdask finds its reader through :mod:`stdask.store.encoding`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .elements import read_anndata, write_anndata
from .encoding import IOSpec, register_read, register_write
from .format import StoreFormatError
from .tiling import Tiling

TILE_INDEX = IOSpec("stdask-tiling", 2)
#: the dense layout, read but no longer written
TILE_INDEX_V1 = IOSpec("stdask-tiling", 1)


@dataclass
class TileIndex:
    """What a store records about its tiling.

    Attributes
    ----------
    tiling
        The tile grid and its listed tiles.
    tile_row_start
        (n_tiles + 1,) int64; rows of listed tile ``t`` are ``tile_row_start[t]:tile_row_start[t+1]``.
    bounds
        (4,) float64 ``xmin, ymin, xmax, ymax`` of the observations, store units (zeros when empty).
    unit
        Coordinate unit (e.g. ``"um"``, ``"DNB"``).
    spot_diameter
        Spot / cell / bin diameter in ``unit``, or ``None`` when unknown.
    max_count
        Largest value of ``X``.
    provenance
        What made the store (input, options).
    curve
        Row order inside a tile.
    microns_per_unit
        Micrometres per coordinate unit (the scale of the ``global`` coordinate system), ``None`` when the input
        did not say.
    """

    tiling: Tiling
    tile_row_start: np.ndarray
    bounds: np.ndarray
    unit: str
    spot_diameter: float | None
    max_count: float
    provenance: dict = field(default_factory=dict)
    curve: str = "hilbert"
    microns_per_unit: float | None = None

    def as_dict(self) -> dict:
        """The ``uns/stdask`` dict as it is stored."""
        return {
            "encoding": TILE_INDEX.encoding,
            "version": TILE_INDEX.version,
            "tiling": self.tiling.to_attrs(),
            "tile_ids": np.asarray(self.tiling.tiles, dtype=np.int64),
            "tile_row_start": np.asarray(self.tile_row_start, dtype=np.int64),
            "bounds": np.asarray(self.bounds, dtype=np.float64),
            "curve": self.curve,
            "unit": self.unit,
            "spot_diameter": float(self.spot_diameter) if self.spot_diameter else float("nan"),
            "max_count": float(self.max_count),
            "provenance": self.provenance or {},
            "microns_per_unit": float(self.microns_per_unit) if self.microns_per_unit else float("nan"),
        }


@register_write(TILE_INDEX, TileIndex)
def write_tile_index(parent, key: str, index: TileIndex) -> None:
    write_anndata(parent, key, index.as_dict())


@register_read(TILE_INDEX, TILE_INDEX_V1)
def read_tile_index(node) -> TileIndex:
    meta = read_anndata(node)
    sd = float(meta.get("spot_diameter", np.nan))
    mpu = float(meta.get("microns_per_unit", np.nan))  # absent in stores written before it was recorded
    tiles = meta.get("tile_ids")  # absent in version 1: the whole bounding grid is listed
    try:
        tiling = Tiling.from_attrs(meta["tiling"], None if tiles is None else np.asarray(tiles, dtype=np.int64))
    except ValueError as exc:  # ids out of order or outside the grid: a damaged index, not a bad argument
        raise StoreFormatError(f"uns/stdask: damaged tile index ({exc})") from exc
    return TileIndex(
        tiling=tiling,
        tile_row_start=np.asarray(meta["tile_row_start"], dtype=np.int64),
        bounds=np.asarray(meta["bounds"], dtype=np.float64),
        unit=str(meta.get("unit", "")),
        spot_diameter=sd if np.isfinite(sd) else None,
        max_count=float(meta.get("max_count", np.nan)),
        provenance=dict(meta.get("provenance", {})),
        curve=str(meta.get("curve", "hilbert")),
        microns_per_unit=mpu if np.isfinite(mpu) and mpu > 0 else None,
    )


__all__ = ["TILE_INDEX", "TILE_INDEX_V1", "TileIndex", "read_tile_index", "write_tile_index"]
