"""Molecule-level points (decoded transcripts) as a SpatialData points element, partitioned by the store's tiles.

Layout written (what spatialdata 0.7 writes itself, plus stdask's record of the parts)::

    points/<name>/zarr.json                          {"encoding-type": "ngff:points", "axes": ["x", "y"],
                                                      "coordinateTransformations": [<store units -> global (um)>],
                                                      "spatialdata_attrs": {"feature_key": "feature_name",
                                                                            "version": "0.2"},
                                                      "stdask": {"encoding": "stdask-points", "version": 1,
                                                                 "n_points": N, "parts": [...], ...}}
    points/<name>/points.parquet/part.<i>.parquet    x, y float64 (store units), feature_name dictionary<string>,
                                                     the source's other columns, tile int32

Rows are grouped by the store's tile (``tile`` = the tile index, ascending; ``-1`` after them for points in no
store tile), so a tile's points are one or two contiguous byte ranges, and ``dask.dataframe.read_parquet`` of the
folder (what ``spatialdata.read_zarr`` does) gives one lazy frame. Every part carries the same sorted feature
dictionary, so dask sees one categorical dtype. Points arrive in any order and any number: they are spilled to
disk by tile (:class:`~stdask.store.spill.TileSpill`) and written a part at a time, so memory is bounded by the
spill's run size, ``rows_per_part`` and the largest tile, never by the number of points.

The ``stdask`` attribute is written last: an element without it was never completed. It records each part's
row count and byte size, so a missing or truncated part is a :class:`~stdask.store.format.StoreDamageError`,
never a silently shorter frame.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import zarr

from .format import StoreDamageError, StoreFormatError
from .sdata_view import global_transform
from .spill import TileSpill
from .tiling import Tiling, check_coordinates

__all__ = ["POINTS", "PointsWriter", "open_points", "points_names", "points_attrs", "check_points", "FEATURE_KEY"]

POINTS = "points"
PARTS = "points.parquet"
POINTS_ENCODING, POINTS_VERSION = "stdask-points", 1
#: name of the feature (gene) column, SpatialData's ``feature_key``
FEATURE_KEY = "feature_name"
#: columns the writer adds itself; a source column may not take these names
_OWN = ("x", "y", FEATURE_KEY, "tile")


def _as_spillable(name: str, values: np.ndarray) -> np.ndarray:
    """A column as a fixed-width array :meth:`numpy.ndarray.tofile` can spill: str -> UTF-8 bytes (``S``)."""
    a = np.asarray(values)
    if a.dtype.kind in "OU":
        try:
            return a.astype("S")  # C-speed path for ASCII text (cell ids, fov names)
        except UnicodeEncodeError:
            return np.char.encode(a.astype("U"), "utf-8")
    if a.dtype.kind not in "biufS":
        raise TypeError(f"points column {name!r}: dtype {a.dtype} cannot be stored; use numbers, bool or str")
    return a


class PointsWriter:
    """Stream points into a points element partitioned by the tiles of ``tiling``.

    Parameters
    ----------
    tiling
        The store's tiling; points are grouped by its tiles. Points in a grid cell that holds no store tile, or
        outside its bounding grid, are kept with ``tile = -1`` (grouped by grid cell, the far ones by border strip).
    spill_dir
        Where the spill's temporary files go (removed by :meth:`close`).
    rows_per_part
        Most rows in one Parquet part; a tile with more is split over consecutive parts.
    run_entries
        Points buffered in memory before a spill run is written (memory ~ this x the bytes per point).
    feature_key
        Name of the feature column.

    Use as a context manager (spill files are removed on error too)::

        with PointsWriter(tiling, tmp) as w:
            for chunk in source.iter_points():
                w.add(chunk)
            n = w.write(store / "points" / "transcripts", microns_per_unit=1.0, unit="um")
    """

    def __init__(self, tiling: Tiling, spill_dir: str | Path | None = None, *, rows_per_part: int = 2_000_000,
                 run_entries: int = 2_000_000, feature_key: str = FEATURE_KEY) -> None:
        if int(rows_per_part) < 1:
            raise ValueError(f"rows_per_part must be >= 1, got {rows_per_part!r}")
        self.tiling = tiling
        self.rows_per_part = int(rows_per_part)
        self.run_entries = int(run_entries)
        self.feature_key = feature_key
        self.spill_dir = spill_dir
        self._spill: TileSpill | None = None
        self._columns: dict[str, np.dtype] | None = None  # source column -> dtype kind reference
        self._features: dict[str, int] = {}  # feature -> provisional code (arrival order)
        self.n_points = 0
        n_tiles = len(tiling.tiles)
        # keys of points in no store tile come after the tile indices; a key per cell of the bounding grid grown
        # by one ring (the ring holds everything beyond the grid) unless that many keys would overflow int64
        self._ring = (tiling.nx + 2) * (tiling.ny + 2) + n_tiles < (1 << 63)

    # --- streaming ------------------------------------------------------------------------------
    def _keys(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """(n,) int64 spill key: the store tile index, or ``n_tiles + ...`` for points in no store tile."""
        t = self.tiling
        n_tiles = len(t.tiles)
        # clip in float before the cast: a far point must not overflow int64
        gx = np.clip(np.floor(x / t.tile_size) - t.ix0, -1, t.nx).astype(np.int64)
        gy = np.clip(np.floor(y / t.tile_size) - t.iy0, -1, t.ny).astype(np.int64)
        inside = (gx >= 0) & (gx < t.nx) & (gy >= 0) & (gy < t.ny)
        if self._ring:
            key = n_tiles + (gy + 1) * (t.nx + 2) + (gx + 1)
        else:
            key = np.full(len(x), n_tiles, np.int64)
        grid = gy[inside] * t.nx + gx[inside]
        pos = np.searchsorted(t.tiles, grid)
        listed = pos < n_tiles
        listed[listed] = t.tiles[pos[listed]] == grid[listed]
        idx = np.flatnonzero(inside)[listed]
        key[idx] = pos[listed]
        return key

    def _feature_codes(self, feature: np.ndarray) -> np.ndarray:
        codes, uniques = pd.factorize(np.asarray(feature, dtype=object))
        if (codes < 0).any():
            raise ValueError(f"points: feature {self.n_points + int(np.argmax(codes < 0))} is missing; every point "
                             "needs a feature name")
        lut = np.array([self._features.setdefault(str(u), len(self._features)) for u in uniques], np.int32)
        return lut[codes]

    def add(self, chunk) -> None:
        """Spill one :class:`~stdask.io.base.PointChunk` (x, y float64 in store units; the same column names in
        every chunk)."""
        n = len(chunk)
        if n == 0:
            return
        x = np.asarray(chunk.x, dtype=np.float64)
        y = np.asarray(chunk.y, dtype=np.float64)
        check_coordinates(x, y, "points", offset=self.n_points)
        cols = {k: _as_spillable(k, v) for k, v in chunk.columns.items()}
        if self._columns is None:
            clash = [k for k in cols if k in _OWN]
            if clash:
                raise ValueError(f"points column(s) {', '.join(clash)} clash with the writer's own {_OWN}")
            self._columns = {k: v.dtype for k, v in cols.items()}
            fields = ("x", "y", "feature") + tuple(f"c{i}" for i in range(len(cols)))
            self._spill = TileSpill(fields, self.spill_dir, run_entries=self.run_entries)
        elif list(cols) != list(self._columns):
            raise ValueError(f"points chunk columns {list(cols)} differ from the first chunk's {list(self._columns)}")
        for k, v in cols.items():
            if len(v) != n:
                raise ValueError(f"points column {k!r} has {len(v)} values for {n} points")
            if v.dtype.kind != self._columns[k].kind:
                raise ValueError(f"points column {k!r} is {v.dtype} here but {self._columns[k]} in the first chunk")
        arrays = {f"c{i}": (v if v.dtype.kind == "S" else v.astype(self._columns[k], copy=False))
                  for i, (k, v) in enumerate(cols.items())}
        self._spill.add(self._keys(x, y), x=x, y=y, feature=self._feature_codes(chunk.feature), **arrays)
        self.n_points += n

    def flush(self) -> None:
        """Spill the points still buffered in memory (after the last :meth:`add`, before other work)."""
        if self._spill is not None:
            self._spill.flush()

    # --- writing --------------------------------------------------------------------------------
    def _schema(self) -> pa.Schema:
        fields = [pa.field("x", pa.float64()), pa.field("y", pa.float64()),
                  pa.field(self.feature_key, pa.dictionary(pa.int32(), pa.string()))]
        for k, dt in (self._columns or {}).items():
            fields.append(pa.field(k, pa.string() if dt.kind == "S" else pa.from_numpy_dtype(dt)))
        return pa.schema(fields + [pa.field("tile", pa.int32())])

    def _table(self, block: dict[str, np.ndarray], schema: pa.Schema, dictionary: pa.Array,
               remap: np.ndarray) -> pa.Table:
        codes = pa.array(remap[block["feature"]], pa.int32())
        cols = [pa.array(block["x"]), pa.array(block["y"]), pa.DictionaryArray.from_arrays(codes, dictionary)]
        for i, (k, dt) in enumerate((self._columns or {}).items()):
            v = block[f"c{i}"]
            cols.append(pa.array(v, pa.binary()).cast(pa.string()) if dt.kind == "S" else pa.array(v))
        cols.append(pa.array(block["tile"], pa.int32()))
        return pa.Table.from_arrays(cols, schema=schema)

    def _blocks(self) -> Iterable[dict[str, np.ndarray]]:
        """Blocks of at most ``rows_per_part`` rows in key order, the last block of store tiles apart from the
        points in no store tile (so a part's ``tiles`` range is either store tiles or ``[-1, -1]``)."""
        if self._spill is None:
            return
        n_tiles = len(self.tiling.tiles)
        pending: list[dict[str, np.ndarray]] = []
        rows = 0
        outside = False

        def cut(k: int) -> dict[str, np.ndarray]:
            nonlocal pending, rows
            merged = {f: np.concatenate([p[f] for p in pending]) for f in pending[0]}
            head = {f: a[:k] for f, a in merged.items()}
            rest = {f: a[k:] for f, a in merged.items()}
            pending, rows = ([rest], len(rest["x"])) if len(rest["x"]) else ([], 0)
            return head

        for key in self._spill.nonempty_tiles().tolist():
            if key >= n_tiles and not outside:
                outside = True
                if rows:
                    yield cut(rows)
            # a tile is read in pieces: a crowded tile (10^6-10^7 transcripts) never sits in memory whole
            for group in self._spill.tile_pieces(key, self.rows_per_part):
                group["tile"] = np.full(len(group["x"]), key if key < n_tiles else -1, np.int32)
                pending.append(group)
                rows += len(group["x"])
                while rows >= self.rows_per_part:
                    yield cut(self.rows_per_part)
        if rows:
            yield cut(rows)

    def write(self, element_dir: str | Path, *, microns_per_unit: float | None, unit: str) -> int:
        """Write the points element at ``element_dir`` (``<store>/points/<name>``); returns the number of points.

        ``microns_per_unit`` scales store units to the ``global`` coordinate system (identity when ``None``/1);
        ``unit`` names the store unit (recorded). The parts are written first and the ``stdask`` attribute last.
        """
        element_dir = Path(element_dir)
        # the parent must be a zarr group for spatialdata to list the element; mode "a" keeps what it holds
        zarr.open_group(str(element_dir.parent), mode="a", zarr_format=3)
        group = zarr.open_group(str(element_dir), mode="w", zarr_format=3)  # empties a previous element
        (element_dir / PARTS).mkdir()
        categories = sorted(self._features)
        remap = np.empty(len(categories), np.int32)
        rank = {f: i for i, f in enumerate(categories)}
        for f, code in self._features.items():
            remap[code] = rank[f]
        dictionary = pa.array(categories, pa.string())
        schema = self._schema()
        parts = []
        empty = {f: np.empty(0, dt) for f, dt in (("x", np.float64), ("y", np.float64), ("feature", np.int32),
                                                   ("tile", np.int32))}
        empty.update({f"c{i}": np.empty(0, dt) for i, dt in enumerate((self._columns or {}).values())})
        # an element with no points still gets one (empty) part: readers take the schema from it
        for i, block in enumerate(self._blocks() if self.n_points else [empty]):
            rel = f"{PARTS}/part.{i}.parquet"
            pq.write_table(self._table(block, schema, dictionary, remap), element_dir / rel, compression="zstd")
            tiles = block["tile"]
            parts.append({"path": rel, "rows": int(len(tiles)), "bytes": (element_dir / rel).stat().st_size,
                          "tiles": [int(tiles[0]), int(tiles[-1])] if len(tiles) else [-1, -1]})
        written = sum(p["rows"] for p in parts)
        if written != self.n_points:  # the spill lost or doubled points: never commit such an element
            raise RuntimeError(f"points: {written} rows written for {self.n_points} points added")
        group.attrs.update({
            "encoding-type": "ngff:points", "axes": ["x", "y"],
            "coordinateTransformations": global_transform(microns_per_unit),
            "spatialdata_attrs": {"feature_key": self.feature_key, "version": "0.2"},
            "stdask": {"encoding": POINTS_ENCODING, "version": POINTS_VERSION, "n_points": int(self.n_points),
                       "parts": parts, "feature_key": self.feature_key, "unit": unit,
                       "n_features": len(categories)},
        })
        return int(self.n_points)

    def close(self) -> None:
        """Remove the spill files."""
        if self._spill is not None:
            self._spill.close()
            self._spill = None

    def __enter__(self) -> "PointsWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ------------------------------------------------------------------------------------------------
# reading
# ------------------------------------------------------------------------------------------------
def points_names(store_path: str | Path) -> list[str]:
    """Sorted names of the points elements of a store (folders under ``points/`` that are ``ngff:points``)."""
    folder = Path(store_path) / POINTS
    if not folder.is_dir():
        return []
    names = []
    for d in folder.iterdir():
        meta = d / "zarr.json"
        if meta.is_file() and json.loads(meta.read_text()).get("attributes", {}).get("encoding-type") == "ngff:points":
            names.append(d.name)
    return sorted(names)


def points_attrs(store_path: str | Path, name: str) -> dict:
    """The ``stdask`` record of ``points/<name>``; refuses an element that was never completed or a newer one."""
    element = Path(store_path) / POINTS / name
    meta = element / "zarr.json"
    if not meta.is_file():
        raise KeyError(f"{store_path}: no points element {name!r}; found: {', '.join(points_names(store_path))}")
    rec = json.loads(meta.read_text()).get("attributes", {}).get("stdask")
    if not isinstance(rec, dict) or rec.get("encoding") != POINTS_ENCODING:
        raise StoreDamageError(f"{element}: no completed stdask points record (the write did not finish); "
                               "ingest the input again")
    if rec.get("version") != POINTS_VERSION:
        raise StoreFormatError(f"{element}: points encoding version {rec.get('version')!r}; this stdask reads "
                               f"version {POINTS_VERSION}: upgrade stdask")
    return rec


def _check_part(element: Path, part: dict) -> None:
    path = element / part["path"]
    if not path.is_file():
        raise StoreDamageError(f"{element}: part {part['path']} is missing; the store is damaged")
    size = path.stat().st_size
    if size != part["bytes"]:
        raise StoreDamageError(f"{element}: part {part['path']} has {size} bytes, {part['bytes']} were written; "
                               "the store is damaged")
    try:
        rows = pq.ParquetFile(path).metadata.num_rows
    except Exception as e:  # pyarrow raises several types for a corrupt footer
        raise StoreDamageError(f"{element}: part {part['path']} is not readable Parquet ({e})") from None
    if rows != part["rows"]:
        raise StoreDamageError(f"{element}: part {part['path']} holds {rows} rows, {part['rows']} were written")


def open_points(store_path: str | Path, name: str, tiles: Iterable[int] | None = None):
    """The points of ``points/<name>`` as a lazy ``dask.dataframe.DataFrame``.

    Parameters
    ----------
    store_path
        The store (``*.zarr``).
    name
        The points element (see :func:`points_names`).
    tiles
        Store tile indices (``-1`` = points in no store tile) to keep; only the parts holding them are read.

    Returns
    -------
    dask.dataframe.DataFrame
        Columns ``x``, ``y`` (float64, store units), the feature column (categorical, the same categories in
        every partition), the source's columns and ``tile`` (int32); one partition per part read.
    """
    import dask.dataframe as dd

    element = Path(store_path) / POINTS / name
    rec = points_attrs(store_path, name)
    parts = rec["parts"]
    for part in parts:
        _check_part(element, part)
    if tiles is None:
        return dd.read_parquet([str(element / p["path"]) for p in parts])
    wanted = sorted({int(t) for t in tiles})
    w = np.asarray(wanted, np.int64)

    def holds(p: dict) -> bool:
        # a part holds store tiles [a, b] or, as [-1, -1], only points in no store tile (never both)
        a, b = p["tiles"]
        return bool(((w >= a) & (w <= b)).any())

    chosen = [p for p in parts if holds(p)] or parts[:1]  # no part: an empty frame of the right schema
    df = dd.read_parquet([str(element / p["path"]) for p in chosen])
    return df[df["tile"].isin(wanted)]


def check_points(store_path: str | Path, name: str) -> None:
    """Refuse ``points/<name>`` when its record is missing or a part is missing, truncated or holds other rows."""
    element = Path(store_path) / POINTS / name
    for part in points_attrs(store_path, name)["parts"]:
        _check_part(element, part)
