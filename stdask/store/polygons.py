"""Cell segmentation polygons as the store's shapes element (e.g. Xenium's ``cell_boundaries.parquet``).

The element has the layout of :mod:`stdask.store.sdata_view` (``shapes/<name>/zarr.json`` + GeoParquet 1.1
``shapes.parquet`` with WKB geometries and the int64 index ``instance_id`` = the observation's row in the table),
but its geometries are the cells' own polygons, streamed from the input's boundary vertices::

    shapes/<name>/zarr.json        ... "stdask": {"encoding": "stdask-shapes", "version": 1, "n": ..., "bytes": ...,
                                                  "geometry": "polygon"}
    shapes/<name>/shapes.parquet   one Polygon per observation, in the input's order; index = its store row

The vertices arrive in batches in file order (one polygon's vertices contiguous, possibly split across two
batches); the polygons of a batch are built by shapely in one vectorised call and written as one Parquet row
group, so memory is bounded by a batch (plus a (n_obs,) bool array of the cells seen).

Every observation of the table must get exactly one polygon: SpatialData (and spatialdata-plot) look up each
table row's ``instance_id`` in the element, so a cell without a boundary is refused (:class:`PolygonError`
naming the first one and how many lack one), as are a cell whose vertices are not contiguous (two polygons for
one cell), a cell with fewer than 3 distinct vertices and non-finite vertices. The ring is closed if the input
left it open (XOA writes closed rings: the first vertex again as the last).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import zarr

from .sdata_view import BLOCK_ROWS, INSTANCE_KEY, SHAPES, SHAPES_ENCODING, SHAPES_VERSION, _schema, global_transform

__all__ = ["PolygonError", "write_polygons", "MIN_VERTICES"]

#: distinct vertices a polygon needs
MIN_VERTICES = 3


class PolygonError(ValueError):
    """Boundary vertices that do not give one polygon per observation. The message names the source and the cell;
    an input reader's caller turns it into an :class:`stdask.io.base.InputError` (the store layer imports no io)."""


def write_polygons(root_path: Path, name: str, batches: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]],
                   n_obs: int, rank: np.ndarray, microns_per_unit: float | None, *, key: str = INSTANCE_KEY,
                   source: str = "cell boundaries", names: Sequence[str] | None = None) -> int:
    """Write ``shapes/<name>``: one polygon per observation from streamed boundary vertices; returns their number.

    Parameters
    ----------
    root_path
        The store's root directory (its temporary directory while the store is being built); a zarr v3 group.
    name
        Element name under ``shapes/`` (e.g. ``"cell_boundaries"``); the table's ``region`` must be set to it
        (:func:`stdask.store.sdata_view.annotate_table`).
    batches
        Iterable of ``(cell, x, y)``: (m,) int64 source row of each vertex's cell (the observation's row in the
        input's order), (m,) float64 vertex x and y in store units; file order, one cell's vertices contiguous,
        possibly continued in the next batch.
    n_obs
        Number of observations of the table.
    rank
        (n_obs,) int64 store row of each source row (the ingest's permutation); the polygon's index.
    microns_per_unit
        Micrometres per store unit (the ``global`` coordinate system's scale; ``None`` = identity).
    key
        Name of the index column (the table's ``instance_key``).
    source
        What the vertices were read from (a file path), named in error messages.
    names
        (n_obs,) observation names by source row (cell ids), named in error messages; row numbers otherwise.

    Raises
    ------
    PolygonError
        A cell with < 3 distinct vertices, non-finite vertices, a cell outside ``0..n_obs-1``, a cell whose
        vertices are split (two polygons), or an observation without any polygon.
    """
    rank = np.asarray(rank, dtype=np.int64)
    if rank.shape != (n_obs,):
        raise ValueError(f"rank has shape {rank.shape}, expected ({n_obs},)")
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"invalid shapes element name {name!r}")
    label = _Labeller(source, names)
    group = zarr.open_group(str(root_path), mode="r+").require_group(SHAPES).create_group(name)
    path = Path(root_path) / SHAPES / name / "shapes.parquet"
    schema = _schema("polygon", key)
    seen = np.zeros(n_obs, dtype=bool)
    carry: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    with pq.ParquetWriter(path, schema) as w:
        for batch in batches:
            cell, x, y = _vertices(batch, label)
            if carry is not None:  # the unfinished last cell of the previous batch comes first
                cell, x, y = (np.concatenate([c, b]) for c, b in zip(carry, (cell, x, y)))
            if len(cell) == 0:  # (then there was no carry either)
                continue
            starts = np.flatnonzero(np.concatenate([[True], cell[1:] != cell[:-1]]))
            last = int(starts[-1])  # the last cell may go on in the next batch: hold it back
            carry = (cell[last:], x[last:], y[last:])
            if last:
                _write_batch(w, schema, cell[:last], x[:last], y[:last], starts[:-1], n_obs, rank, seen, label)
        if carry is not None:
            _write_batch(w, schema, *carry, np.zeros(1, np.int64), n_obs, rank, seen, label)
    if not seen.all():
        missing = np.flatnonzero(~seen)
        raise PolygonError(f"{source}: {label.cell(int(missing[0]))} has no boundary ({len(missing)} of {n_obs} "
                           f"cells have none); every cell of the table needs its polygon (are the boundaries "
                           f"from the same run as the cells?)")
    group.attrs.update({
        "encoding-type": "ngff:shapes", "axes": ["x", "y"],
        "coordinateTransformations": global_transform(microns_per_unit),
        "spatialdata_attrs": {"version": "0.3"},
        "stdask": {"encoding": SHAPES_ENCODING, "version": SHAPES_VERSION, "n": int(n_obs),
                   "bytes": path.stat().st_size, "geometry": "polygon"},
    })
    return int(n_obs)


class _Labeller:
    """Names a cell in messages: its name when known, else its row in the input."""

    def __init__(self, source: str, names: Sequence[str] | None) -> None:
        self.source, self.names = source, names

    def cell(self, row: int) -> str:
        if self.names is None or not 0 <= row < len(self.names):
            return f"cell row {row}"
        return f"cell {self.names[row]!r} (row {row})"


def _vertices(batch, label: _Labeller) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A batch's (cell int64, x float64, y float64), checked for equal lengths and finite vertices."""
    cell, x, y = (np.asarray(a) for a in batch)
    if not (cell.ndim == x.ndim == y.ndim == 1 and len(cell) == len(x) == len(y)):
        raise ValueError(f"{label.source}: a batch's cell, x and y must be 1-D of one length, got shapes "
                         f"{cell.shape}, {x.shape}, {y.shape}")
    x, y = x.astype(np.float64, copy=False), y.astype(np.float64, copy=False)
    bad = ~(np.isfinite(x) & np.isfinite(y))
    if bad.any():
        i = int(np.argmax(bad))
        raise PolygonError(f"{label.source}: {label.cell(int(cell[i]))} has a vertex ({x[i]}, {y[i]}); vertices "
                           f"must be finite numbers")
    return cell.astype(np.int64, copy=False), x, y


def _write_batch(w: pq.ParquetWriter, schema: pa.Schema, cell: np.ndarray, x: np.ndarray, y: np.ndarray,
                 starts: np.ndarray, n_obs: int, rank: np.ndarray, seen: np.ndarray, label: _Labeller) -> None:
    """Build and write the polygons of complete cells: vertices ``cell``/``x``/``y`` (m,), (k,) run ``starts``."""
    import shapely

    run_cell = cell[starts]
    out = (run_cell < 0) | (run_cell >= n_obs)
    if out.any():
        raise PolygonError(f"{label.source}: cell row {int(run_cell[np.argmax(out)])} is outside the table's "
                           f"{n_obs} cells")
    # a cell met twice (earlier batch, or two runs here) has its vertices split in two polygons
    uniq, counts = np.unique(run_cell, return_counts=True)
    twice = seen[run_cell] | np.isin(run_cell, uniq[counts > 1])
    if twice.any():
        raise PolygonError(f"{label.source}: {label.cell(int(run_cell[np.argmax(twice)]))} has vertices in two "
                           f"places; one cell's vertices must be contiguous (one polygon per cell)")
    seen[run_cell] = True
    k = len(starts)
    run = np.repeat(np.arange(k, dtype=np.int64), np.diff(np.append(starts, len(cell))))
    # distinct vertices per cell: sort by (cell, x, y), count the rows differing from their predecessor
    order = np.lexsort((y, x, run))
    rs, xs, ys = run[order], x[order], y[order]
    new = np.concatenate([[True], (rs[1:] != rs[:-1]) | (xs[1:] != xs[:-1]) | (ys[1:] != ys[:-1])])
    distinct = np.bincount(rs[new], minlength=k)
    few = distinct < MIN_VERTICES
    if few.any():
        j = int(np.argmax(few))
        raise PolygonError(f"{label.source}: {label.cell(int(run_cell[j]))} has {int(distinct[j])} distinct "
                           f"vertices; a polygon needs at least {MIN_VERTICES}")
    # linearrings closes a ring left open; one call for all k rings of the batch
    polygons = shapely.polygons(shapely.linearrings(x, y, indices=run))
    wkb = shapely.to_wkb(polygons, output_dimension=2, byte_order=1)
    table = pa.Table.from_arrays([pa.array(wkb, pa.binary()), pa.array(rank[run_cell])], schema=schema)
    w.write_table(table, row_group_size=BLOCK_ROWS)
