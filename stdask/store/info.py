"""A store's summary: shape, entries, tiles, units and what its materialisations would cost in memory
(what ``stdask info`` prints)."""
from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from .reader import StoreReader
from .tables import table_shapes


def human_bytes(n: float) -> str:
    """``n`` bytes in binary units, one decimal (``"1.5 MiB"``)."""
    for u in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024:
            return f"{n:.1f} {u}"
        n /= 1024
    return f"{n:.1f} PiB"


@dataclass(frozen=True)
class StoreInfo:
    """Summary of a store; ``str()`` of it is the ``stdask info`` report.

    Attributes
    ----------
    path
        The store.
    n_obs, n_vars, nnz
        Shape and stored entries of ``X``; ``density`` = nnz / (n_obs n_vars).
    matrices
        ``X`` and the CSR layers.
    unit, spot_diameter
        Coordinate unit; spot / cell / bin diameter (``None`` when unknown).
    tile_size, tile_grid, tiles_occupied, rows_per_tile
        Tile side (``unit``), grid (ny, nx), tiles holding rows, (min, median, max) rows per occupied tile.
    disk_bytes
        Bytes of every file of the store.
    csr_in_memory_bytes, dense_float32_bytes, largest_tile_csr_bytes
        Memory of the whole ``X`` as CSR (int32 indices), as dense float32, and of the largest tile as CSR.
    provenance
        What made the store.
    tables
        (n_obs, n_vars) of each further table (:mod:`stdask.store.tables`) by name; the main one left out.
    """

    path: str
    n_obs: int
    n_vars: int
    nnz: int
    density: float
    matrices: list[str]
    unit: str
    spot_diameter: float | None
    tile_size: float
    tile_grid: tuple[int, int]
    tiles_occupied: int
    rows_per_tile: tuple[int, int, int]
    disk_bytes: int
    csr_in_memory_bytes: int
    dense_float32_bytes: int
    largest_tile_csr_bytes: int
    provenance: dict
    tables: dict[str, tuple[int, int]]

    @classmethod
    def of(cls, store: StoreReader) -> "StoreInfo":
        X = store.matrix_info("X")
        nnz, n_obs, n_vars = int(X.nnz), store.n_obs, store.n_vars
        rows = np.diff(store.tile_row_start)
        occ = rows[rows > 0]
        data_b = X.dtype.itemsize
        return cls(
            path=str(store.path), n_obs=n_obs, n_vars=n_vars, nnz=nnz, density=nnz / max(1, n_obs * n_vars),
            matrices=store.matrix_names(), unit=store.unit, spot_diameter=store.spot_diameter,
            tile_size=store.tiling.tile_size, tile_grid=(store.tiling.ny, store.tiling.nx),
            tiles_occupied=int(len(occ)),
            rows_per_tile=(int(occ.min()), int(np.median(occ)), int(occ.max())) if len(occ) else (0, 0, 0),
            disk_bytes=sum(f.stat().st_size for f in Path(store.path).rglob("*") if f.is_file()),
            csr_in_memory_bytes=nnz * (data_b + 4) + 8 * (n_obs + 1),
            dense_float32_bytes=4 * n_obs * n_vars,
            largest_tile_csr_bytes=int(occ.max() * (nnz / max(1, n_obs)) * (data_b + 4)) if len(occ) else 0,
            provenance=dict(store.tile_index.provenance),
            tables=table_shapes(store.root),
        )

    def as_dict(self) -> dict:
        """The fields as a dict (JSON-able but for numpy values in ``provenance``)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def __str__(self) -> str:
        sd = f", spot diameter {self.spot_diameter:g}" if self.spot_diameter else ""
        lines = [
            f"store          {self.path}",
            f"shape          {self.n_obs:,} obs x {self.n_vars:,} vars, nnz {self.nnz:,} (density {self.density:.4f})",
            f"matrices       {', '.join(self.matrices)}",
            f"units          {self.unit}{sd}",
            f"tiles          {self.tiles_occupied} occupied of {self.tile_grid[0]} x {self.tile_grid[1]}, "
            f"side {self.tile_size:g} {self.unit}; rows per tile min/median/max {self.rows_per_tile}",
            f"on disk        {human_bytes(self.disk_bytes)}",
            f"memory         whole CSR {human_bytes(self.csr_in_memory_bytes)}; dense float32 "
            f"{human_bytes(self.dense_float32_bytes)}; largest tile {human_bytes(self.largest_tile_csr_bytes)}",
        ]
        if self.tables:
            shapes = (f"{n} {r:,} obs x {c:,} vars" for n, (r, c) in self.tables.items())
            lines.append("tables         " + "; ".join(shapes))
        if self.provenance:
            lines.append("provenance     " + ", ".join(f"{k}={v}" for k, v in self.provenance.items()))
        return "\n".join(lines)


__all__ = ["StoreInfo", "human_bytes"]
