"""10x Genomics formats: MTX directory (+ SeekSpace ``cell_locations.tsv``) and a Space Ranger ``outs/`` folder.

Both writers stream chunk by chunk; memory holds one chunk of the count matrix.
"""
from __future__ import annotations

import gzip
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd

from ..io.mtx import BARCODE_FILES, FEATURE_FILES, GEX, LOCATION_FILES, MATRIX_FILES, SEEKSPACE_PIXEL_SIZE
from ..io.visium import POSITION_COLUMNS
from .textfmt import ByteSink, format_rows

#: full-resolution image pixel size of the synthetic Visium slide, micrometres per pixel
VISIUM_UM_PER_PIXEL = 0.5


class _GzipText:
    """Text writer to a gzip file with a zero timestamp (identical bytes on every run)."""

    def __init__(self, path: Path):
        self._raw = open(path, "wb")
        self._gz = gzip.GzipFile(filename="", mode="wb", fileobj=self._raw, compresslevel=6, mtime=0)

    def write(self, text: str) -> None:
        self._gz.write(text.encode("utf-8"))

    def __enter__(self) -> "_GzipText":
        return self

    def __exit__(self, *exc) -> None:
        try:
            self._gz.close()
        finally:
            self._raw.close()


def _write_lines(path: Path, lines: list[str]) -> None:
    with _GzipText(path) as fh:
        fh.write("".join(f"{line}\n" for line in lines))


def write_mtx(
    slice_,
    directory: str | Path,
    *,
    locations: bool = True,
    extra_locations: float = 0.01,
    chunk_size: int | None = None,
    compresslevel: int = 1,
) -> dict[str, Any]:
    """Write a 10x MTX directory and (optionally) a SeekSpace-style ``cell_locations.tsv``.

    Files
    -----
    ``matrix.mtx.gz``
        MatrixMarket ``coordinate integer general``, genes x barcodes, 1-based, entries sorted by
        barcode then gene. The header needs the number of entries before them, so entries go to a
        temporary file first and are appended after the header (two streams, no second generation).
    ``features.tsv.gz``
        ``gene_id<TAB>symbol<TAB>Gene Expression``.
    ``barcodes.tsv.gz``
        One barcode a line, in matrix column order.
    ``cell_locations.tsv``
        Tab-separated, header ``barcode<TAB>x<TAB>y``, positions in pixels of
        :data:`stdask.io.mtx.SEEKSPACE_PIXEL_SIZE` um (``pixels = um / 0.265385``). ``extra_locations`` (a fraction of
        ``n_obs``) rows with barcodes that are not in the matrix are appended, as real location files list
        beads the matrix filtered out; readers must keep only barcodes present in the matrix.

    Parameters
    ----------
    slice_
        The :class:`~stdask.datasets.synthetic.SyntheticSlice`.
    directory
        Created if missing.
    locations
        Write ``cell_locations.tsv``.
    extra_locations
        Fraction of extra, matrix-less location rows.
    chunk_size
        Observations per generated chunk (does not change the data).
    compresslevel
        gzip level of ``matrix.mtx.gz``.

    Returns
    -------
    dict
        ``directory``, ``nnz``, ``seconds``.
    """
    if not extra_locations >= 0:
        raise ValueError(f"extra_locations must be >= 0, got {extra_locations!r}")
    t0 = time.perf_counter()
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    var = slice_.var
    _write_lines(out / FEATURE_FILES[0],
                 [f"{gid}\t{sym}\t{GEX}" for gid, sym in zip(var["gene_ids"], var.index)])
    nnz = 0
    scale = slice_.um_per_unit / SEEKSPACE_PIXEL_SIZE
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        entries = Path(tmp) / "entries.txt"
        with ByteSink(entries) as body, _GzipText(out / BARCODE_FILES[0]) as bc_fh, \
                (open(out / LOCATION_FILES[0], "w") if locations else _NullFile()) as loc_fh:
            if locations:
                loc_fh.write("barcode\tx\ty\n")
            for batch in slice_.iter_batches(chunk_size):
                bcs = slice_.barcodes(batch.index, batch.x, batch.y)
                bc_fh.write("".join(f"{b}\n" for b in bcs))
                c = batch.counts.tocoo()
                # MatrixMarket is 1-based: row = gene, column = barcode
                body.write(format_rows([c.col.astype(np.int64) + 1, c.row.astype(np.int64) + 1 + batch.start,
                                        c.data], sep=" "))
                nnz += c.nnz
                if locations:
                    _write_locations(loc_fh, bcs, batch.x * scale, batch.y * scale)
            if locations and extra_locations > 0:
                n_extra = int(round(extra_locations * slice_.n_obs))
                extra = np.arange(slice_.n_obs, slice_.n_obs + n_extra, dtype=np.int64)
                ex, ey = slice_.geometry.nominal_xy(extra)
                _write_locations(loc_fh, slice_.barcodes(extra, ex, ey), ex * scale, ey * scale)
        header = ("%%MatrixMarket matrix coordinate integer general\n"
                  f'%metadata_json: {{"software_version": "stdask-synthetic", "format_version": 2}}\n'
                  f"{slice_.n_genes} {slice_.n_obs} {nnz}\n").encode()
        with open(out / MATRIX_FILES[0], "wb") as raw, \
                gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=compresslevel, mtime=0) as gz, \
                open(entries, "rb") as src:
            gz.write(header)
            shutil.copyfileobj(src, gz, length=16 << 20)
    return dict(directory=str(out), nnz=nnz, seconds=time.perf_counter() - t0)


class _NullFile:
    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None

    def write(self, _text: str) -> None:
        return None


def _write_locations(fh, barcodes: np.ndarray, x: np.ndarray, y: np.ndarray) -> None:
    frame = pd.DataFrame({"x": np.round(x, 3), "y": np.round(y, 3)}, index=barcodes)
    frame.to_csv(fh, sep="\t", header=False)


def tenx_matrix_group(f: h5py.File, ids, names, types, *, genome: str, software_version: str,
                      chemistry: str) -> h5py.Group:
    """The parts of a 10x feature-barcode HDF5 every writer shares: the file attributes Cell / Space Ranger and XOA
    write and ``matrix/features/{id, name, feature_type, genome, _all_tag_keys}`` as fixed-length ASCII. Returns the
    ``matrix`` group; the caller adds ``data``, ``indices``, ``indptr``, ``shape`` and ``barcodes``."""
    f.attrs["filetype"] = "matrix"
    f.attrs["version"] = np.int64(2)
    f.attrs["software_version"] = software_version
    f.attrs["chemistry_description"] = chemistry
    f.attrs["library_ids"] = np.array([b"synthetic"])
    f.attrs["original_gem_groups"] = np.array([1], dtype=np.int64)
    g = f.create_group("matrix")
    feat = g.create_group("features")
    feat.create_dataset("id", data=np.asarray(ids, dtype=str).astype("S"))
    feat.create_dataset("name", data=np.asarray(names, dtype=str).astype("S"))
    feat.create_dataset("feature_type", data=np.asarray(types, dtype=str).astype("S"))
    feat.create_dataset("genome", data=np.full(len(ids), genome.encode()))
    feat.create_dataset("_all_tag_keys", data=np.array([b"genome"]))
    return g


def write_visium(
    slice_,
    outs: str | Path,
    *,
    chunk_size: int | None = None,
    um_per_pixel: float = VISIUM_UM_PER_PIXEL,
    n_border_spots: int | None = None,
    images: bool = False,
) -> dict[str, Any]:
    """Write a Space Ranger ``outs/`` folder of a ``"visium"`` slice (tissue images only with ``images=True``).

    Files
    -----
    ``filtered_feature_bc_matrix.h5``
        10x HDF5 (CSC by barcode): ``matrix/data`` int32, ``matrix/indices`` int64 (gene of each entry),
        ``matrix/indptr`` int64 (n_barcodes + 1), ``matrix/shape`` int32 ``[n_genes, n_barcodes]``,
        ``matrix/barcodes`` S, ``matrix/features/{id, name, feature_type, genome, _all_tag_keys}``; file
        attrs ``filetype = "matrix"``, ``version = 2``. Streams: datasets grow chunk by chunk.
    ``spatial/tissue_positions.csv``
        Header ``barcode,in_tissue,array_row,array_col,pxl_row_in_fullres,pxl_col_in_fullres``; every
        observation (``in_tissue = 1``) plus ``n_border_spots`` off-tissue lattice spots (``in_tissue = 0``,
        not in the matrix) that complete the last row and add one more. Pixels of the full-resolution
        image, ``um_per_pixel`` um each: ``pxl_col = x / um_per_pixel``, ``pxl_row = y / um_per_pixel``
        (rounded to integers, as Space Ranger writes them).
    ``spatial/scalefactors_json.json``
        ``spot_diameter_fullres = 55 / um_per_pixel`` (110 px at 0.5 um/px), ``fiducial_diameter_fullres``
        (65 um), ``tissue_hires_scalef`` (hires image 2,000 px on its long side), ``tissue_lowres_scalef``
        (600 px).

    Parameters
    ----------
    slice_
        A ``"visium"`` :class:`~stdask.datasets.synthetic.SyntheticSlice`.
    outs
        Folder to create (``outs/``).
    chunk_size
        Observations per generated chunk (does not change the data).
    um_per_pixel
        Full-resolution pixel size.
    n_border_spots
        Off-tissue spots to list (default: complete the last lattice row plus one row).
    images
        Also write ``spatial/tissue_{hires,lowres}_image.png`` (2,000 and 600 px): pink spots on white.

    Returns
    -------
    dict
        ``outs``, ``nnz``, ``seconds``.
    """
    if slice_.layout != "visium":
        raise ValueError(f"write_visium needs the 'visium' layout, got {slice_.layout!r}")
    if n_border_spots is not None and n_border_spots < 0:
        raise ValueError(f"n_border_spots must be >= 0, got {n_border_spots!r}")
    t0 = time.perf_counter()
    outs = Path(outs)
    (outs / "spatial").mkdir(parents=True, exist_ok=True)
    geo = slice_.geometry
    var = slice_.var
    n = slice_.n_obs
    nnz = 0
    with h5py.File(outs / "filtered_feature_bc_matrix.h5", "w") as f, \
            open(outs / "spatial" / "tissue_positions.csv", "w") as pos_fh:
        g = tenx_matrix_group(f, var["gene_ids"].to_numpy(str), var.index.to_numpy(str), [GEX] * len(var),
                              genome="GRCh38", software_version="stdask-synthetic", chemistry="Spatial 3' v1")
        data = g.create_dataset("data", shape=(0,), maxshape=(None,), dtype=np.int32, chunks=(1 << 18,),
                                compression="gzip", compression_opts=4)
        indices = g.create_dataset("indices", shape=(0,), maxshape=(None,), dtype=np.int64, chunks=(1 << 18,),
                                   compression="gzip", compression_opts=4)
        indptr = g.create_dataset("indptr", shape=(n + 1,), dtype=np.int64)
        g.create_dataset("shape", data=np.array([slice_.n_genes, n], dtype=np.int32))
        bc_width = 18
        barcodes = g.create_dataset("barcodes", shape=(n,), dtype=f"S{bc_width}")
        indptr[0] = 0
        pos_fh.write(",".join(POSITION_COLUMNS) + "\n")
        for batch in slice_.iter_batches(chunk_size):
            lo, hi = batch.start, batch.start + len(batch)
            c = batch.counts
            data.resize((nnz + c.nnz,))
            indices.resize((nnz + c.nnz,))
            data[nnz:] = c.data.astype(np.int32)
            indices[nnz:] = c.indices.astype(np.int64)
            indptr[lo + 1:hi + 1] = c.indptr[1:].astype(np.int64) + nnz
            nnz += c.nnz
            bcs = slice_.barcodes(batch.index)
            barcodes[lo:hi] = np.array(bcs, dtype=f"S{bc_width}")
            _write_positions(pos_fh, geo, bcs, np.ones(len(batch), np.int64), batch.index, batch.x, batch.y,
                             um_per_pixel)
        if n_border_spots is None:
            n_border_spots = (geo.n_rows * geo.n_cols - n) + geo.n_cols
        extra = np.arange(n, n + n_border_spots, dtype=np.int64)
        ex, ey = geo.nominal_xy(extra)
        _write_positions(pos_fh, geo, slice_.barcodes(extra), np.zeros(len(extra), np.int64), extra, ex, ey,
                         um_per_pixel)
    long_side = max(geo.x0 + geo.width, geo.y0 + geo.height + geo.step_y) / um_per_pixel
    scalefactors = {
        "spot_diameter_fullres": 55.0 / um_per_pixel,
        "tissue_hires_scalef": 2000.0 / long_side,
        "fiducial_diameter_fullres": 65.0 / um_per_pixel,
        "tissue_lowres_scalef": 600.0 / long_side,
    }
    (outs / "spatial" / "scalefactors_json.json").write_text(json.dumps(scalefactors, indent=2))
    if images:
        _write_images(outs / "spatial", slice_, scalefactors, um_per_pixel)
    return dict(outs=str(outs), nnz=nnz, seconds=time.perf_counter() - t0)


def _write_images(spatial: Path, slice_, scalefactors: dict[str, float], um_per_pixel: float) -> None:
    """``tissue_{hires,lowres}_image.png``: an H&E-like RGB picture, tissue pink where spots are, white elsewhere;
    image pixel ``p`` of quality ``q`` shows full-resolution pixel ``p / tissue_<q>_scalef``."""
    from matplotlib.image import imsave

    geo = slice_.geometry
    x, y = geo.nominal_xy(np.arange(slice_.n_obs, dtype=np.int64))
    for quality, size in (("hires", 2000), ("lowres", 600)):
        s = scalefactors[f"tissue_{quality}_scalef"]
        h = w = size
        img = np.ones((h, w, 3), np.float32)
        col = np.clip((x / um_per_pixel * s).astype(np.int64), 0, w - 1)
        row = np.clip((y / um_per_pixel * s).astype(np.int64), 0, h - 1)
        r = max(1, int(round(scalefactors["spot_diameter_fullres"] * s / 2)))
        for dr in range(-r, r + 1):  # a disc of the spot's size, drawn by offsets (r is a few pixels)
            for dc in range(-r, r + 1):
                if dr * dr + dc * dc <= r * r:
                    img[np.clip(row + dr, 0, h - 1), np.clip(col + dc, 0, w - 1)] = (0.85, 0.45, 0.65)
        imsave(spatial / f"tissue_{quality}_image.png", img)


def _write_positions(fh, geo, barcodes, in_tissue, index, x, y, um_per_pixel) -> None:
    row, col = geo.visium_array(index)
    frame = pd.DataFrame({
        "barcode": barcodes,
        "in_tissue": in_tissue,
        "array_row": row,
        "array_col": col,
        "pxl_row_in_fullres": np.rint(y / um_per_pixel).astype(np.int64),
        "pxl_col_in_fullres": np.rint(x / um_per_pixel).astype(np.int64),
    })
    frame.to_csv(fh, header=False, index=False)
