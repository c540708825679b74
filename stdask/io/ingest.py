"""Streaming ingest: any :class:`~stdask.io.base.Source` into a tiled slice store.

Memory is bounded by the chunk size and the largest tile: records are spilled to disk grouped by tile
(:mod:`stdask.store.spill`) and the store is written tile by tile (:mod:`stdask.store.writer`), committed
atomically at the end. A failed or killed ingest leaves no store that opens as valid.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .._version import __version__
from ..progress import progress_bar
from ..store.markers import check_not_input, check_replaceable
from ..store.spill import ChunkSpill, TileSpill, csr_from_entries
from ..store.tiling import (Tiling, check_bin_grid, check_coordinates, check_tile_count, check_tile_size, default_tile_size,
                            sort_order)
from ..store.writer import StoreBuilder
from ..store.polygons import PolygonError, write_polygons
from ..store.raster import write_source_image
from ..store.sdata_view import INSTANCE_KEY, REGION_KEY, ShapeSpec, annotate_table
from .base import InputError, Source, source_class

#: most points read per chunk: a transcript row holds several strings (feature, cell id) as Python objects, about
#: 300 bytes per point while a chunk is converted, so chunks of 2M points would cost ~0.6 GB alone
POINTS_PER_CHUNK = 500_000
#: shapes element of the cells' segmentation polygons (``ingest(..., shapes="polygons")``)
POLYGONS_NAME = "cell_boundaries"
#: default tile side in bins for square-bin stores (128 x 128 = 16,384 bins per full tile)
BINS_PER_TILE_SIDE = 128
MAX_BIN = 200


def ingest(
    input: str | Path | Source,
    store: str | Path,
    *,
    format: str | None = None,
    bin_size: int | None = None,
    cellbin: bool = False,
    tile_size: float | None = None,
    overwrite: bool = False,
    chunk_size: int = 2_000_000,
    spill_dir: str | Path | None = None,
    progress: bool = True,
    points: bool = False,
    shapes: str | None = None,
    **options: Any,
) -> Path:
    """Ingest an input file or folder into a new store.

    Parameters
    ----------
    input
        Path of the input (GEM, GEF, 10x MTX folder, Visium ``outs/``, h5ad) or an opened Source.
    store
        Path of the store to create (``*.zarr``).
    format
        Input format name (see :func:`stdask.io.base.source_formats`); guessed from the name if omitted.
    bin_size
        For DNB-level inputs (GEM/GEF): square bin side N in DNB (``binN``, 1..200). For inputs binned at several
        resolutions (Visium HD), the one to read (um).
    cellbin
        For DNB-level inputs with a ``CellID`` column: group records by cell instead of binning.
    tile_size
        Tile side in store units, a positive finite number (0 is refused, not replaced by the default); default
        ~16k bins or ~20k observations per tile.
    overwrite
        Replace an existing store (only a stdask store is ever replaced; never the input, a folder of other
        files, a file or a link).
    chunk_size
        Records / entries per streamed chunk (bounds memory).
    spill_dir
        Folder for temporary spill files (default: next to the store).
    progress
        Show progress bars.
    points
        Keep the input's molecule-level points (Xenium, CosMx, MERSCOPE transcripts) as the store's points
        element, partitioned by tile (every point, whether or not it lies in a cell).
    shapes
        ``None``: the store's shapes element has a circle (a square for binN) per observation; ``"polygons"``:
        the cells' segmentation polygons (Xenium's ``cell_boundaries.parquet``) as ``shapes/cell_boundaries``.
    **options
        Passed to the format's Source (e.g. ``pixel_size`` for MTX + cell_locations).

    Returns
    -------
    The store path.
    """
    store = Path(store)
    check_chunk_size(chunk_size)
    if tile_size is not None:  # refused, never replaced by the default (`--tile-size 0`)
        tile_size = check_tile_size(tile_size)
    # the output may never be (or hold, or sit inside) what this ingest reads: checked before the input is
    # opened, so `stdask ingest mtx/ mtx/ --overwrite` is refused without touching either
    check_not_input(store, [input.path if isinstance(input, Source) else input])
    if (store.exists() or store.is_symlink()) and not overwrite:
        raise FileExistsError(f"{store} exists; pass overwrite=True (CLI: --overwrite) to replace it")
    check_replaceable(store, "store")
    if isinstance(input, Source):
        src = input
    else:
        cls = source_class(input, format)
        if cls.takes_bin_size and bin_size is not None:  # a resolution to pick, not DNBs to bin
            options["bin_size"], bin_size = bin_size, None
        src = cls(Path(input), **options)
    if shapes not in (None, "polygons"):
        raise ValueError(f"shapes must be None (circles / squares) or 'polygons', got {shapes!r}")
    if shapes == "polygons" and getattr(src, "boundaries_file", None) is None:
        raise ValueError(f"{src.path}: shapes='polygons' (CLI: --shapes polygons) needs the cells' boundary "
                         f"polygons ({src.format_name} input has none: Xenium's cell_boundaries.parquet)")
    if points and src.points_name is None:
        raise ValueError(f"{src.path}: points=True (CLI: --points), but {src.format_name} input holds no "
                         "molecule-level points (transcripts) to keep")
    spill_dir = Path(spill_dir) if spill_dir is not None else store.parent
    spill_dir.mkdir(parents=True, exist_ok=True)
    prov = {
        "stdask_version": __version__,
        "source_format": src.format_name,
        "source_path": os.path.abspath(str(src.path)),
    }
    if src.kind == "records":
        return _ingest_records(src, store, bin_size, cellbin, tile_size, overwrite, chunk_size, spill_dir,
                               progress, prov)
    if bin_size is not None or cellbin:
        raise ValueError(f"{src.format_name} input has observations already; --bin/--cellbin apply to DNB-level "
                         "inputs (GEM, GEF) only")
    return _ingest_obs(src, store, tile_size, overwrite, chunk_size, spill_dir, progress, prov, points, shapes)


def check_chunk_size(chunk_size: int) -> None:
    """Refuse a ``chunk_size`` (records or entries per streamed chunk) that is not an integer >= 1."""
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
        raise ValueError(f"chunk_size (CLI: --chunk-size) must be an integer >= 1 (records per streamed chunk), "
                         f"got {chunk_size!r}")


# ----------------------------------------------------------------------------------------------------
# observation sources (MTX, Visium, h5ad, cell-bin GEF)
# ----------------------------------------------------------------------------------------------------
def _ingest_obs(src: Source, store: Path, tile_size, overwrite, chunk_size, spill_dir, progress, prov,
                points: bool = False, shapes: str | None = None) -> Path:
    obs, stream = _obs_table(src)
    coords = np.asarray(src.coords, dtype=np.float64)
    n_obs = len(obs)
    if coords.shape != (n_obs, 2):
        raise InputError(f"{src.path}: coordinates have shape {coords.shape}, expected ({n_obs}, 2)")
    if not isinstance(obs.index, pd.RangeIndex) and not obs.index.is_unique:
        dup = obs.index[obs.index.duplicated()][0]
        raise InputError(f"{src.path}: duplicate barcode {dup!r}; barcodes must be unique")
    check_coordinates(coords[:, 0], coords[:, 1], f"{src.path}")
    var = src.var
    if not var.index.is_unique:
        dup = var.index[var.index.duplicated()][0]
        raise InputError(f"{src.path}: duplicate gene name {dup!r}")
    n_vars = len(var)
    if tile_size is None:
        tile_size = default_tile_size(coords[:, 0], coords[:, 1])
    tiling = Tiling.of_points(tile_size, coords[:, 0], coords[:, 1])  # lists the occupied tiles only
    perm = sort_order(tiling, coords[:, 0], coords[:, 1])
    rank = np.empty(n_obs, dtype=np.int64)
    rank[perm] = np.arange(n_obs)
    final_tile = tiling.tile_of(coords[perm, 0], coords[perm, 1])
    tile_rows = np.bincount(final_tile, minlength=tiling.n_tiles)
    tile_start = np.concatenate([[0], np.cumsum(tile_rows)])
    matrices = {"X": src.value_dtype, **src.layers}
    spills = {name: TileSpill(("key", "gene", "value"), spill_dir) for name in matrices}
    point_spill = None
    try:
        if points:  # inside the try: the matrix spills above are removed if reading the points fails
            point_spill = _spill_points(src, tiling, spill_dir, chunk_size, progress)
        bar = progress_bar(total=src.size_hint, desc=f"read {src.path.name}", unit="entries", disable=not progress)
        for chunk in src.iter_entries(chunk_size):
            name = chunk.layer or "X"
            if name not in spills:
                raise InputError(f"{src.path}: entries for undeclared layer {name!r}")
            _check_entries(src, chunk.row, chunk.gene, n_obs, n_vars)
            r = rank[np.asarray(chunk.row, dtype=np.int64)]
            spills[name].add(final_tile[r], key=r, gene=chunk.gene, value=chunk.value)
            bar.update(len(chunk))
        bar.close()
        del final_tile  # per-observation arrays the write below does not need (memory grows with the slice)
        if shapes != "polygons":
            del rank
        with StoreBuilder(store, var, tiling, matrices, overwrite=overwrite) as b:
            tiles = np.flatnonzero(tile_rows)
            if stream:
                b.stream_obs({c: obs[c].dtype for c in obs.columns}, xy_first=False)
                # names held by the obs table are sliced per tile; a RangeIndex means the source makes them
                held = None if isinstance(obs.index, pd.RangeIndex) else np.asarray(obs.index.to_numpy(), dtype=str)
            for t in progress_bar(tiles, desc="write tiles", unit="tile", disable=not progress):
                r0, n = int(tile_start[t]), int(tile_rows[t])
                blocks = {}
                for name, dtype in matrices.items():
                    e = spills[name].tile(t)
                    if e["key"] is None:
                        continue
                    blocks[name] = csr_from_entries(e["key"] - r0, e["gene"], e["value"], n, n_vars, dtype)
                b.append_tile(int(t), n, blocks)
                if stream:
                    rows = perm[r0:r0 + n]
                    names = src.obs_names(rows) if held is None else held[rows]
                    b.append_obs(names, coords[rows, 0], coords[rows, 1],
                                 **{c: obs[c].to_numpy()[rows] for c in obs.columns})
            obsm = {k: np.asarray(v)[perm] for k, v in src.obsm.items()}
            if point_spill is not None:
                prov["n_points"] = _write_points(b, point_spill, src)
            for name, (image, affine) in src.images.items():
                write_source_image(b.root, name, image, affine, src.unit, src.microns_per_unit)
            polygons = shapes == "polygons"
            b.finish(None if stream else obs.iloc[perm], None if stream else coords[perm], unit=src.unit,
                     spot_diameter=src.spot_diameter, obsm=obsm, uns=src.uns, provenance=prov,
                     shapes=None if polygons else ShapeSpec(src.shapes_name, "circle", src.spot_diameter),
                     microns_per_unit=src.microns_per_unit)
            if polygons:
                _write_boundaries(b, src, n_obs, rank, chunk_size, src.obs_names(np.arange(n_obs)))
    finally:
        for s in spills.values():
            s.close()
        if point_spill is not None:
            point_spill.close()
    return store


def _obs_table(src: Source) -> tuple[pd.DataFrame, bool]:
    """The source's obs columns (less inherited region / instance-id columns) and whether they are streamed
    into the store a tile at a time (names from :meth:`Source.obs_names`): when every column is a plain
    numeric or bool array and there are no extra obsm arrays. Otherwise the obs table is written whole, with
    the names as its index."""
    obs = src.obs_columns
    # a store's region / instance-id columns name its own shapes element: those of the input (a store being
    # subset or binned, a SpatialData table) would point at elements the new store does not have
    inherited = [c for c in (REGION_KEY, INSTANCE_KEY) if c in obs.columns]
    plain = all(isinstance(c, str) and c not in ("x", "y", "tile") and isinstance(dt, np.dtype) and dt.kind in "biuf"
                for c, dt in obs.drop(columns=inherited).dtypes.items())
    stream = plain and not src.obsm
    if not stream and isinstance(obs.index, pd.RangeIndex):
        obs = src.obs  # the names, made whole only for a table that is written whole
    return (obs.drop(columns=inherited) if inherited else obs), stream


def _spill_points(src: Source, tiling: Tiling, spill_dir: Path, chunk_size: int, progress: bool):
    """Stream the source's points into a :class:`~stdask.store.points.PointsWriter` (spilled by tile)."""
    from ..store.points import PointsWriter

    writer = PointsWriter(tiling, spill_dir)
    try:
        bar = progress_bar(total=None, desc=f"read {src.points_name}", unit="points", disable=not progress)
        for chunk in src.iter_points(min(chunk_size, POINTS_PER_CHUNK)):
            writer.add(chunk)
            bar.update(len(chunk))
        writer.flush()  # what is still buffered goes to disk before the matrix is written
        bar.close()
    except BaseException:
        writer.close()
        raise
    return writer


def _write_boundaries(b: StoreBuilder, src: Source, n_obs: int, rank: np.ndarray, chunk_size: int,
                      names: np.ndarray) -> None:
    """The cells' polygons as ``shapes/cell_boundaries``, the element the table annotates (no circles)."""
    _, key = annotate_table(b.table, n_obs, POLYGONS_NAME)
    try:
        write_polygons(b.tmp, POLYGONS_NAME, src.iter_boundaries(min(chunk_size, POINTS_PER_CHUNK)), n_obs, rank,
                       src.microns_per_unit, key=key, source=str(src.boundaries_file), names=names)
    except PolygonError as e:
        raise InputError(str(e)) from None


def _write_points(b: StoreBuilder, writer, src: Source) -> int:
    """Write the spilled points as the store's ``points/<name>`` element; returns their number."""
    b.root.require_group("points")
    return int(writer.write(b.tmp / "points" / src.points_name, microns_per_unit=src.microns_per_unit,
                            unit=src.unit))


def _combine(key: np.ndarray, tile: np.ndarray, gene: np.ndarray, values: dict[str, np.ndarray], n_vars: int):
    """Sum entries sharing (key, gene); returns the combined key, tile, gene and value arrays."""
    code = np.asarray(key, dtype=np.int64) * n_vars + np.asarray(gene, dtype=np.int64)
    order = np.argsort(code, kind="stable")
    code = code[order]
    first = np.flatnonzero(np.concatenate([[True], code[1:] != code[:-1]]))
    if len(first) == len(code):
        return key, tile, gene, values
    out = {}
    for name, v in values.items():
        summed = np.add.reduceat(np.asarray(v, dtype=np.uint64)[order], first)
        if len(summed) and summed.max() > np.iinfo(np.uint32).max:
            raise OverflowError(f"a summed {name} ({int(summed.max())}) exceeds the uint32 range")
        out[name] = summed.astype(np.uint32)
    pick = order[first]
    return np.asarray(key)[pick], np.asarray(tile)[pick], np.asarray(gene)[pick], out


def _check_entries(src: Source, row, gene, n_obs: int, n_vars: int) -> None:
    if len(row) and (row.min() < 0 or row.max() >= n_obs):
        raise InputError(f"{src.path}: an entry refers to observation {int(row.max())} of {n_obs}")
    if len(gene) and (gene.min() < 0 or gene.max() >= n_vars):
        raise InputError(f"{src.path}: an entry refers to gene {int(gene.max())} of {n_vars}")


# ----------------------------------------------------------------------------------------------------
# DNB record sources (GEM, GEF): square bins or cell bins
# ----------------------------------------------------------------------------------------------------
def _spill_records(src: Source, raw: ChunkSpill, cellbin: bool, chunk_size: int, progress: bool):
    """First pass over a record source: spill every record to ``raw`` and gather what the binning needs.

    Returns
    -------
    (lo, hi, cells, n_records, has_exon, dropped)
        (2,) int64 minimum and maximum x, y of the records; for cell-bin input a DataFrame indexed by cell id
        with the count-weighted sums ``w``, ``wx``, ``wy`` (centroid = ``wx / w``, ``wy / w``), else ``None``;
        the number of records, whether they carry exon counts, and the records outside every cell.
    """
    bar = progress_bar(total=src.size_hint, desc=f"read {src.path.name}", unit="records", disable=not progress)
    lo = np.array([np.iinfo(np.int64).max] * 2)
    hi = np.array([np.iinfo(np.int64).min] * 2)
    cells: pd.DataFrame | None = None
    n_records = 0
    has_exon = False
    dropped = 0
    for ch in src.iter_records(chunk_size):
        if len(ch) == 0:
            continue
        check_coordinates(ch.x, ch.y, f"{src.path}", offset=n_records)
        n_records += len(ch)
        if cellbin:
            if ch.cell is None:
                raise InputError(f"{src.path}: --cellbin needs a CellID column, and this input has none")
            keep = ch.cell > 0
            dropped += int((~keep).sum())
            sub = pd.DataFrame({"cell": ch.cell[keep], "w": ch.count[keep].astype(np.float64)})
            sub["wx"] = ch.x[keep] * sub["w"].to_numpy()
            sub["wy"] = ch.y[keep] * sub["w"].to_numpy()
            part = sub.groupby("cell").sum()
            cells = part if cells is None else cells.add(part, fill_value=0.0)
        lo = np.minimum(lo, [ch.x.min(), ch.y.min()])
        hi = np.maximum(hi, [ch.x.max(), ch.y.max()])
        has_exon |= ch.exon is not None
        raw.add(x=np.asarray(ch.x, np.int64), y=np.asarray(ch.y, np.int64), gene=np.asarray(ch.gene, np.int32),
                count=np.asarray(ch.count, np.uint32), cell=ch.cell, exon=ch.exon)
        bar.update(len(ch))
    bar.close()
    return lo, hi, cells, n_records, has_exon, dropped


def _ingest_records(src: Source, store: Path, bin_size, cellbin, tile_size, overwrite, chunk_size, spill_dir,
                    progress, prov) -> Path:
    if cellbin == (bin_size is not None):
        raise ValueError(f"{src.path}: DNB-level input needs exactly one of bin_size=N (--bin N, 1..{MAX_BIN}) "
                         "or cellbin=True (--cellbin)")
    if bin_size is not None and not (isinstance(bin_size, (int, np.integer)) and 1 <= bin_size <= MAX_BIN):
        raise ValueError(f"bin_size must be an integer in 1..{MAX_BIN}, got {bin_size!r}")
    raw = ChunkSpill(spill_dir)
    try:
        lo, hi, cells, n_records, has_exon, dropped = _spill_records(src, raw, cellbin, chunk_size, progress)
        if n_records == 0:
            raise InputError(f"{src.path}: no records")
        var = src.var
        n_vars = len(var)
        matrices = {"X": np.dtype(np.uint32)}
        if has_exon:
            matrices["exon"] = np.dtype(np.uint32)

        if cellbin:
            if cells is None or len(cells) == 0:
                raise InputError(f"{src.path}: no record belongs to a cell (every CellID is 0 or empty)")
            cell_ids = cells.index.to_numpy(np.int64)  # sorted by groupby
            cx = (cells["wx"] / cells["w"]).to_numpy()
            cy = (cells["wy"] / cells["w"]).to_numpy()
            tile_size = default_tile_size(cx, cy) if tile_size is None else tile_size
            tiling = Tiling.covering(tile_size, cx.min(), cy.min(), cx.max(), cy.max())
            cell_tile = tiling.grid_of(cx, cy)

            def locate(chunk):
                keep = chunk["cell"] > 0
                idx = np.searchsorted(cell_ids, chunk["cell"][keep])
                return keep, idx.astype(np.int64), cell_tile[idx]

            def obs_of(keys):
                return cx[keys], cy[keys], cell_ids[keys].astype(str)

            unit_spot = None
        else:
            n = int(bin_size)
            xmin, ymin = int(lo[0]), int(lo[1])
            nby = (int(hi[1]) - ymin) // n + 1
            check_bin_grid((int(hi[0]) - xmin) // n + 1, nby, f"{src.path}: bin_size {n}")
            half = (n - 1) / 2.0
            tile_size = float(n * BINS_PER_TILE_SIDE) if tile_size is None else tile_size
            # the box of the bin centres: the last bin's centre may lie past the last record (up to half a bin)
            tiling = Tiling.covering(tile_size, xmin + half, ymin + half, xmin + (int(hi[0]) - xmin) // n * n + half,
                                     ymin + (int(hi[1]) - ymin) // n * n + half)

            def centres(key):
                bx, by = np.divmod(key, nby)
                return xmin + bx * n + half, ymin + by * n + half

            def locate(chunk):
                key = ((chunk["x"] - xmin) // n) * nby + (chunk["y"] - ymin) // n
                return None, key, tiling.grid_of(*centres(key))

            def obs_of(keys):
                x, y = centres(keys)
                bx, by = np.divmod(keys, nby)
                return x, y, np.char.add(np.char.add(f"bin{n}_", bx.astype(str)), np.char.add("_", by.astype(str)))

            unit_spot = float(n)

        fields = ("key", "gene", "value") + (("exon",) if has_exon else ())
        # the spill buckets by grid id; the tiling then lists the tiles that received records
        with TileSpill(fields, spill_dir) as spill:
            for chunk in progress_bar(raw, total=len(raw.chunks), desc="bucket by tile", unit="chunk",
                                      disable=not progress):
                keep, key, tile = locate(chunk)
                sel = (lambda a: a) if keep is None else (lambda a: a[keep])
                gene = sel(chunk["gene"])
                values = {"value": sel(chunk["count"])}
                if has_exon:
                    values["exon"] = sel(chunk["exon"]) if "exon" in chunk else np.zeros(len(key), np.uint32)
                # combine records of the same (observation, gene) inside the chunk before spilling: a bin of
                # N x N DNBs holds up to N^2 records per gene, so this bounds what a tile gathers later
                key, tile, gene, values = _combine(key, tile, gene, values, n_vars)
                spill.add(tile, key=key, gene=gene, **values)
                check_tile_count(spill.n_occupied, tiling.tile_size)
            raw.close()
            tiling = tiling.listing(spill.nonempty_tiles())
            with StoreBuilder(store, var, tiling, matrices, overwrite=overwrite) as b:
                # observations are born here: stream their names and coordinates to the store per tile
                b.stream_obs({"cell_id": np.dtype(np.int64)} if cellbin else {})
                for t, grid_id in enumerate(progress_bar(tiling.tiles.tolist(), desc="write tiles", unit="tile",
                                                         disable=not progress)):
                    e = spill.tile(grid_id)
                    ukeys, inv = np.unique(e["key"], return_inverse=True)
                    x, y, nm = obs_of(ukeys)
                    _, hk = tiling.order_key(x, y)
                    order = np.lexsort((ukeys, hk))
                    rank = np.empty(len(ukeys), np.int64)
                    rank[order] = np.arange(len(ukeys))
                    row = rank[inv]
                    blocks = {"X": csr_from_entries(row, e["gene"], e["value"], len(ukeys), n_vars, np.uint32)}
                    if has_exon:
                        blocks["exon"] = csr_from_entries(row, e["gene"], e["exon"], len(ukeys), n_vars, np.uint32)
                    b.append_tile(t, len(ukeys), blocks)
                    extra = {"cell_id": cell_ids[ukeys[order]]} if cellbin else {}
                    b.append_obs(nm[order], x[order], y[order], **extra)
                prov.update({"bin_size": int(bin_size) if bin_size else 0, "cellbin": bool(cellbin),
                             "n_records": int(n_records), "records_outside_cells": int(dropped)})
                spec = ShapeSpec("cells", "circle", None) if cellbin else ShapeSpec("bins", "square", unit_spot)
                b.finish(None, None, unit=src.unit, spot_diameter=unit_spot, uns=src.uns, provenance=prov,
                         shapes=spec, microns_per_unit=src.microns_per_unit)
    finally:
        raw.close()
    return store
