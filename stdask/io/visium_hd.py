"""10x Visium HD (Space Ranger >= 3) reader: one resolution of ``binned_outputs/``, bins x genes.

Layout read (10x's "Visium HD Space Ranger outputs"; Space Ranger's ``BIN_COUNT_MATRIX`` stage)::

    outs/
      spatial/                                   tissue_{hires,lowres}_image.png, scalefactors_json.json (2 um)
      binned_outputs/square_{002,008,016}um/
        filtered_feature_bc_matrix.h5            in-tissue bins only (zero-count ones included)
        raw_feature_bc_matrix.h5                 every bin with >= 1 UMI, in and out of tissue
        spatial/tissue_positions.parquet         one row per bin of the whole slide: barcode, in_tissue (u8),
                                                 array_row, array_col (u32), pxl_row_in_fullres, pxl_col_in_fullres
        spatial/scalefactors_json.json           spot_diameter_fullres (bin side, pixels), bin_size_um,
                                                 microns_per_pixel, tissue_{hires,lowres}_scalef

Barcodes are ``s_008um_00301_00405-1``: bin size (um), grid row, grid column, GEM group. The grid is rotated and
offset on the image, so positions come from the pixel columns (x = ``pxl_col_in_fullres``, y =
``pxl_row_in_fullres``, full-resolution pixels, as for Visium), never from array_row / array_col.

Scale: a 6.5 mm slide has 3,350 x 3,350 bins of 2 um (1.1 x 10^7 position rows). The positions are read by
Parquet record batches, only their numeric columns are kept, and matrix barcodes meet positions through an int64
key (``row << 32 | col``) parsed vectorised from the barcode text, never through a join of string indexes.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import h5py
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from stdask.io.base import EntryChunk, InputError, TableSource, register_source
from stdask.io.parquet import iter_parquet
from stdask.io.visium import HD_BIN_FOLDER as BIN_FOLDER  # Visium's detect must know it: defined there
from stdask.io.visium import (POSITION_COLUMNS, TenxH5Matrix, default_library_id, library_uns, read_images,
                              read_scalefactors, SpaceRangerImages)

__all__ = ["VisiumHDSource", "bin_folders", "parse_bin_barcodes", "BIN_FOLDER", "POSITIONS_FILE",
           "FILTERED_MATRIX", "RAW_MATRIX"]

POSITIONS_FILE = "tissue_positions.parquet"
FILTERED_MATRIX = "filtered_feature_bc_matrix.h5"
RAW_MATRIX = "raw_feature_bc_matrix.h5"
#: 10x's recommended analysis resolution, read when no bin size is asked for and the run has it
DEFAULT_BIN_UM = 8
#: Space Ranger's SquareBinIndex text (binned.rs): ``s_{size:03}um_{row:05}_{col:05}`` plus ``-{gem group}``
_BARCODE = r"^s_(?P<size>\d{3})um_(?P<row>\d{5,})_(?P<col>\d{5,})(?:-\d+)?$"
#: matrix barcodes parsed per slice of the HDF5 dataset (bounded memory)
_BARCODE_SLICE = 1 << 20


def bin_folders(path: Path) -> tuple[int | None, dict[int, Path]]:
    """The resolutions under ``path``.

    Parameters
    ----------
    path
        A Space Ranger run folder, its ``outs/``, ``outs/binned_outputs/`` or one ``square_NNNum`` folder.

    Returns
    -------
    (given, folders)
        ``given``: the bin size (um) when ``path`` is itself a ``square_NNNum`` folder, else ``None``;
        ``folders``: bin size (um) -> its folder, ``{}`` when ``path`` holds no Visium HD bins.
    """
    if not path.is_dir():
        return None, {}
    m = BIN_FOLDER.fullmatch(path.name)
    if m:
        return int(m.group(1)), {int(m.group(1)): path}
    for base in (path, path / "binned_outputs", path / "outs" / "binned_outputs"):
        if base.is_dir():
            found = {int(m.group(1)): p for p in sorted(base.iterdir())
                     if p.is_dir() and (m := BIN_FOLDER.fullmatch(p.name))}
            if found:
                return None, found
    return None, {}


def parse_bin_barcodes(barcodes: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bin size and int64 key of each Visium HD barcode, vectorised (Arrow's regex kernel; no Python loop).

    Parameters
    ----------
    barcodes
        (n,) Arrow string or binary array of ``s_008um_00301_00405-1``-form barcodes.

    Returns
    -------
    (ok, size, key)
        (n,) bool: the barcode parses; (n,) int64 bin size in um and key ``row << 32 | col`` (0 where not ok).
    """
    if pa.types.is_dictionary(barcodes.type):
        barcodes = barcodes.cast(barcodes.type.value_type)
    if not (pa.types.is_string(barcodes.type) or pa.types.is_large_string(barcodes.type)):
        barcodes = barcodes.cast(pa.string())
    parts = pc.extract_regex(barcodes, _BARCODE)
    if isinstance(parts, pa.ChunkedArray):
        parts = parts.combine_chunks()
    ok = parts.is_valid().to_numpy(zero_copy_only=False)
    size = np.zeros(len(ok), dtype=np.int64)
    key = np.zeros(len(ok), dtype=np.int64)
    if ok.any():
        good = parts.filter(parts.is_valid())

        def field(name: str) -> np.ndarray:
            return pc.cast(good.field(name), pa.int64()).to_numpy()

        size[ok] = field("size")
        key[ok] = (field("row") << 32) | field("col")
    return ok, size, key


@register_source
class VisiumHDSource(SpaceRangerImages, TableSource):
    """10x Visium HD: one resolution of a Space Ranger >= 3 run's ``binned_outputs/``: in-tissue bins x genes.

    Parameters
    ----------
    path
        The run folder, its ``outs/``, ``outs/binned_outputs/`` or one ``square_NNNum`` folder.
    bin_size
        Bin side in um, one of the ``square_NNNum`` folders present; default 8 when present, else the smallest.
        With a ``square_NNNum`` folder as ``path``: ``None`` or that folder's size.
    count_file
        Matrix in the bin folder: ``filtered_feature_bc_matrix.h5`` (default, in-tissue bins) or
        ``raw_feature_bc_matrix.h5`` (bins with >= 1 UMI; only those in tissue are kept, so the in-tissue bins
        without a UMI, which the filtered matrix lists with zero counts, are absent).
    library_id
        Key under ``uns['spatial']``; default the h5's ``library_ids`` attribute, else the run folder's name.
    gex_only
        Keep only ``Gene Expression`` features (default True, as scanpy).
    load_images
        Read ``tissue_{hires,lowres}_image.png`` (the bin folder's ``spatial/``, else ``outs/spatial/``) into
        ``uns['spatial'][library_id]['images']``.

    Notes
    -----
    * Observations: the bins in tissue (``in_tissue == 1`` in ``tissue_positions.parquet``), in matrix order;
      ``obs`` keeps ``in_tissue`` (uint8), ``array_row``, ``array_col`` (uint32).
    * Coordinates: full-resolution pixels (unit ``"pixel"``), x = ``pxl_col_in_fullres``, y = ``pxl_row_in_fullres``;
      :attr:`microns_per_unit` = ``microns_per_pixel``; :attr:`spot_diameter` = ``spot_diameter_fullres`` (the bin's
      side in pixels).
    * ``uns``: ``spatial`` as for Visium (images, scalefactors, ``use_quality``, metadata) and
      ``visium_hd = {bin_size_um, microns_per_pixel}``.
    * ``X``: streamed from the HDF5 by barcode ranges; with the raw matrix the entries of bins out of tissue are
      dropped as they stream and the rows renumbered.
    """

    format_name = "visium_hd"
    kind = "obs"
    takes_bin_size = True
    shapes_name = "bins"

    @classmethod
    def detect(cls, path: Path) -> bool:
        return bool(bin_folders(path)[1])

    def __init__(self, path: str | Path, *, bin_size: int | None = None,
                 count_file: str = FILTERED_MATRIX, library_id: str | None = None, gex_only: bool = True,
                 load_images: bool = True) -> None:
        super().__init__(path, bin_size=bin_size, count_file=count_file, library_id=library_id, gex_only=gex_only,
                         load_images=load_images)
        self.bin_size = self._pick_bin_size(bin_size)
        folder = self._folder
        spatial = folder / "spatial"
        positions = spatial / POSITIONS_FILE
        if not positions.is_file():
            raise InputError(f"{folder}: no spatial/{POSITIONS_FILE} (the positions of every bin, which Space Ranger "
                             f">= 3 writes in each binned_outputs/square_NNNum folder); copy it from the run's outs/")
        matrix_path = folder / count_file
        if not matrix_path.is_file():
            raise InputError(f"{folder}: no {count_file} (a Visium HD bin folder holds {FILTERED_MATRIX} and "
                             f"{RAW_MATRIX})")
        # barcodes kept as bytes: at 2 um a slide has 10^6-10^7 bins (their uniqueness is checked on int keys)
        self._matrix = TenxH5Matrix(matrix_path, gex_only=gex_only, barcode_index=False)
        self._scalefactors = read_scalefactors(spatial / "scalefactors_json.json")
        sf_bin = self._scalefactors.get("bin_size_um")
        if sf_bin is not None and sf_bin != self.bin_size:
            raise InputError(f"{spatial / 'scalefactors_json.json'}: bin_size_um is {sf_bin:g}, but the folder is "
                             f"{folder.name}; the file belongs to another resolution")
        pos = _match_positions(positions, matrix_path, self.bin_size)
        keep = pos["in_tissue"] == 1
        # a raw matrix lists bins out of tissue too: its rows are renumbered to the kept ones as entries stream
        self._row_map: np.ndarray | None = None
        if not keep.all():
            self._row_map = np.full(len(keep), -1, dtype=np.int64)
            self._row_map[keep] = np.arange(int(keep.sum()), dtype=np.int64)
        self._coords = np.column_stack([pos["pxl_col_in_fullres"][keep], pos["pxl_row_in_fullres"][keep]])
        barcodes = self._matrix.barcode_bytes
        self._barcodes = barcodes if self._row_map is None else barcodes[keep]
        # a RangeIndex: the names are made a tile at a time by obs_names
        self._obs = pd.DataFrame({c: pos[c][keep] for c in ("in_tissue", "array_row", "array_col")})
        outs = folder.parent.parent if folder.parent.name == "binned_outputs" else folder
        self.library_id = library_id if library_id is not None else default_library_id(self._matrix, outs)
        self._images = read_images([spatial, outs / "spatial"]) if load_images else {}

    def _pick_bin_size(self, bin_size: int | None) -> int:
        """The bin size to read, checked against the folders present; sets ``self._folder``."""
        given, folders = bin_folders(self.path)
        if not folders:
            raise InputError(f"{self.path}: no binned_outputs/square_NNNum folders (Space Ranger >= 3 writes "
                             f"square_002um, square_008um and square_016um under outs/binned_outputs/)")
        present = ", ".join(f"{s} ({folders[s].name})" for s in sorted(folders))
        if bin_size is None:
            bin_size = given if given is not None else (DEFAULT_BIN_UM if DEFAULT_BIN_UM in folders else min(folders))
        if isinstance(bin_size, bool) or not isinstance(bin_size, (int, np.integer)) or bin_size not in folders:
            raise InputError(f"{self.path}: bin_size {bin_size!r} um is not present; bin sizes present (um): "
                             f"{present}")
        self._folder = folders[int(bin_size)]
        return int(bin_size)

    def obs_names(self, rows: np.ndarray) -> np.ndarray:
        """(len(rows),) str barcodes of the kept bins at positions ``rows``."""
        return np.char.decode(self._barcodes[rows], "utf-8")

    @property
    def obs(self) -> pd.DataFrame:
        """The kept bins' ``in_tissue``, ``array_row``, ``array_col``, indexed by barcode (a whole-slice index
        of strings: ingest reads :meth:`obs_names` a tile at a time instead)."""
        obs = self._obs.copy()
        obs.index = pd.Index(self.obs_names(np.arange(len(obs))), dtype=object)
        return obs

    # --- metadata -------------------------------------------------------------------------------------
    @property
    def unit(self) -> str:
        return "pixel"

    @property
    def microns_per_unit(self) -> float | None:
        """um per full-resolution pixel: ``microns_per_pixel``, else ``bin_size_um / spot_diameter_fullres``."""
        sf = self._scalefactors
        if sf.get("microns_per_pixel"):
            return sf["microns_per_pixel"]
        d = sf.get("spot_diameter_fullres")
        return self.bin_size / d if d else None

    @property
    def spot_diameter(self) -> float | None:
        """``spot_diameter_fullres``: the bin's side in full-resolution pixels, if the scale factors give it."""
        return self._scalefactors.get("spot_diameter_fullres")

    @property
    def var(self) -> pd.DataFrame:
        return self._matrix.var

    @property
    def uns(self) -> dict:
        hd = {"bin_size_um": float(self.bin_size)}
        if self.microns_per_unit is not None:
            hd["microns_per_pixel"] = float(self.microns_per_unit)
        return {"spatial": {self.library_id: library_uns(self._images, self._scalefactors, self._matrix)},
                "visium_hd": hd}

    @property
    def size_hint(self) -> int | None:
        return self._matrix.nnz

    def iter_entries(self, chunk_size: int = 2_000_000) -> Iterator[EntryChunk]:
        """Stream (bin, gene, count) entries by barcode ranges, those of bins out of tissue dropped."""
        for chunk in self._matrix.iter_entries(chunk_size):
            if self._row_map is None:
                yield chunk
                continue
            row = self._row_map[chunk.row]
            keep = row >= 0
            if keep.any():
                yield EntryChunk(row=row[keep], gene=chunk.gene[keep], value=chunk.value[keep])


def _matrix_keys(matrix_path: Path, bin_size: int) -> np.ndarray:
    """(n_barcodes,) int64 key of each matrix barcode, parsed slice by slice from ``matrix/barcodes``."""
    with h5py.File(matrix_path, "r") as f:
        dset = f["matrix/barcodes"]
        keys = np.empty(dset.shape[0], dtype=np.int64)
        for a in range(0, dset.shape[0], _BARCODE_SLICE):
            raw = dset[a:a + _BARCODE_SLICE]
            text = pa.array(raw, type=pa.binary()) if raw.dtype.kind == "S" else pa.array(raw.astype(str))
            ok, size, key = parse_bin_barcodes(text)
            _check_barcodes(matrix_path, "matrix/barcodes", a, text, ok, size, bin_size)
            keys[a:a + len(key)] = key
    return keys


def _check_barcodes(path: Path, where: str, offset: int, text, ok: np.ndarray, size: np.ndarray,
                    bin_size: int) -> None:
    """Refuse a barcode that does not parse or names another bin size (``where[offset + i]`` in ``path``)."""
    bad = ~ok | (size != bin_size)
    if bad.any():
        i = int(np.argmax(bad))
        value = text[i].as_py()
        value = value.decode(errors="replace") if isinstance(value, bytes) else value
        why = (f"is not a Visium HD bin barcode (s_{bin_size:03d}um_RRRRR_CCCCC-1)" if not ok[i]
               else f"is a {size[i]} um bin, but this is the {bin_size} um resolution (square_{bin_size:03d}um); "
                    f"files of two resolutions are mixed")
        raise InputError(f"{path}: {where}[{offset + i}] = {value!r} {why}")


def _match_positions(positions: Path, matrix_path: Path, bin_size: int,
                     batch_rows: int = 1 << 20) -> dict[str, np.ndarray]:
    """The position columns of each matrix barcode, in matrix order, read by Parquet record batches.

    Returns
    -------
    dict
        ``in_tissue`` (n,) uint8, ``array_row``, ``array_col`` (n,) uint32, ``pxl_row_in_fullres``,
        ``pxl_col_in_fullres`` (n,) float64; n = number of matrix barcodes.
    """
    import pyarrow.parquet as pq

    keys = _matrix_keys(matrix_path, bin_size)
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    if len(keys) > 1 and (sorted_keys[1:] == sorted_keys[:-1]).any():
        k = int(sorted_keys[1:][sorted_keys[1:] == sorted_keys[:-1]][0])
        raise InputError(f"{matrix_path}: two matrix barcodes name bin (row {k >> 32}, column {k & 0xFFFFFFFF})")
    n = len(keys)
    out = {"in_tissue": np.zeros(n, np.uint8), "array_row": np.zeros(n, np.uint32),
           "array_col": np.zeros(n, np.uint32), "pxl_row_in_fullres": np.full(n, np.nan),
           "pxl_col_in_fullres": np.full(n, np.nan)}
    found = np.zeros(n, dtype=bool)
    try:
        pf = pq.ParquetFile(positions)
    except Exception as exc:  # pyarrow raises several types for a file that is not Parquet
        raise InputError(f"{positions}: not a readable Parquet file ({type(exc).__name__}: {exc})") from None
    missing = [c for c in POSITION_COLUMNS if c not in pf.schema_arrow.names]
    if missing:
        raise InputError(f"{positions}: no column(s) {', '.join(missing)}; columns found: "
                         f"{', '.join(pf.schema_arrow.names)}")
    start = 0
    for batch in iter_parquet(positions, batch_rows, POSITION_COLUMNS):
        text = batch.column("barcode")
        ok, size, bkeys = parse_bin_barcodes(text)
        _check_barcodes(positions, "row", start, text, ok, size, bin_size)
        at = np.minimum(np.searchsorted(sorted_keys, bkeys), max(n - 1, 0))
        hit = np.flatnonzero(sorted_keys[at] == bkeys) if n else np.zeros(0, np.int64)
        rows = order[at[hit]]
        if found[rows].any() or len(np.unique(rows)) < len(rows):
            i = hit[int(np.argmax(found[rows]))] if found[rows].any() else hit[0]
            raise InputError(f"{positions}: barcode {text[int(i)].as_py()!r} has more than one row")
        found[rows] = True
        for col, values in out.items():
            column = batch.column(col)
            if column.null_count:
                i = int(np.argmax(column.is_null().to_numpy(zero_copy_only=False)))
                raise InputError(f"{positions}: row {start + i} (barcode {text[i].as_py()!r}): {col} is missing")
            values[rows] = column.to_numpy()[hit]
        start += batch.num_rows
    if not found.all():
        i = int(np.argmax(~found))
        with h5py.File(matrix_path, "r") as f:
            barcode = f["matrix/barcodes"][i]
        raise InputError(f"{positions}: {int((~found).sum())} of {n} barcodes of {matrix_path} have no position "
                         f"row, e.g. {barcode.decode() if isinstance(barcode, bytes) else barcode!r}; both files must "
                         f"come from one Space Ranger run and one bin size")
    bad = ~np.isfinite(out["pxl_row_in_fullres"]) | ~np.isfinite(out["pxl_col_in_fullres"])
    if bad.any():
        i = int(np.argmax(bad))
        raise InputError(f"{positions}: the position of matrix barcode {i} of {matrix_path} is not finite "
                         f"(pxl_row_in_fullres, pxl_col_in_fullres = {out['pxl_row_in_fullres'][i]}, "
                         f"{out['pxl_col_in_fullres'][i]})")
    return out
