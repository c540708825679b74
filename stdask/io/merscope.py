"""Vizgen MERSCOPE region folder reader: cells x genes from ``cell_by_gene.csv``, cell metadata, transcripts.

Layout read (Vizgen's MERSCOPE output and the Vizgen Post-processing Tool (vpt) "output data formats")::

    region_0/
      cell_by_gene.csv           dense: ``cell`` (EntityID), then one column per codebook entry: genes and
                                 ``Blank-*`` blank barcodes; whole counts (some tools write them as 3.0)
      cell_metadata.csv          ``EntityID`` (older releases: an unnamed first column), fov, volume (um^3),
                                 center_x, center_y, min_x, max_x, min_y, max_y (um), anisotropy,
                                 transcript_count (blanks included), perimeter_area_ratio, solidity
      detected_transcripts.csv   unnamed per-fov index, barcode_id, global_x, global_y (um), global_z (z-plane
                                 index), x, y (fov pixels), fov, gene, transcript_id, [cell_id: EntityID, -1 outside]
      images/micron_to_mosaic_pixel_transform.csv   3 x 3 affine um -> mosaic pixels, space-separated

Any of the CSVs may be gzipped (``cell_by_gene.csv.gz``...). Observations are the cells of ``cell_metadata.csv``
in its order; ``cell_by_gene.csv`` rows are matched to them by EntityID (64-bit integers, compared as integers;
older releases' non-integer ids are compared as text), so the two files may list the cells in different orders,
but both must list the same cells. The dense matrix is streamed in row blocks (Arrow's CSV reader), never read
whole: it is read twice, once for the cell ids and blank columns when the folder is opened, once for the genes.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from stdask.io.base import COUNT_MAX, EntryChunk, InputError, PointChunk, TableSource, make_unique, register_source
from stdask.io.text import (TextColumn, block_size_for, coordinate_columns, first_bad_line, first_duplicate,
                            float_column, int_column, is_gzip, stream_table, text_lines)

__all__ = ["MerscopeSource", "COUNTS_FILE", "METADATA_FILE", "TRANSCRIPTS_FILE", "TRANSFORM_FILE",
           "is_blank", "UNASSIGNED"]

COUNTS_FILE = "cell_by_gene.csv"
METADATA_FILE = "cell_metadata.csv"
TRANSCRIPTS_FILE = "detected_transcripts.csv"
#: micrometre -> mosaic-image pixel affine, relative to the region folder
TRANSFORM_FILE = "images/micron_to_mosaic_pixel_transform.csv"
#: the cell id column: vpt names it after the entity type ('cell' in cell_by_gene, 'EntityID' in metadata)
ID_COLUMNS = ("EntityID", "cell")
REQUIRED_METADATA_COLUMNS = ("center_x", "center_y")
#: the bounding-box columns that give :attr:`MerscopeSource.spot_diameter`
BOX_COLUMNS = ("min_x", "max_x", "min_y", "max_y")
REQUIRED_TRANSCRIPT_COLUMNS = ("global_x", "global_y", "gene")
#: cell_id of a transcript outside every cell in the points element (MERSCOPE writes -1; Xenium 'UNASSIGNED')
UNASSIGNED = "UNASSIGNED"
#: optional detected_transcripts.csv columns kept with the points: (file column, kind, points column, dtype)
_POINT_COLUMNS = (("global_z", "float", "global_z", np.float32), ("fov", "int", "fov", np.int32),
                  ("barcode_id", "int", "barcode_id", np.int32), ("transcript_id", "str", "transcript_id", None),
                  ("cell_id", "str", "cell_id", None))


def is_blank(name: str) -> bool:
    """Whether a codebook entry is a blank barcode (``Blank-12``), kept out of ``X``."""
    return name.lower().startswith("blank")


def find_file(folder: Path, name: str) -> Path | None:
    """``folder/name`` or its gzipped ``name.gz``, whichever exists (plain first); ``None`` if neither."""
    return next((p for p in (folder / name, folder / f"{name}.gz") if p.is_file()), None)


def _header(path: Path) -> list[str]:
    """The header line's field names (surrounding double quotes removed); duplicates -> InputError."""
    with text_lines(path, "CSV") as lines:
        line = next(lines, None)
    if not line:
        raise InputError(f"{path}: empty file; expected a header line of comma-separated column names")
    names = [n.strip().strip('"') for n in next(csv.reader([line]))]
    index = pd.Index(names)
    if not index.is_unique:
        raise InputError(f"{path}: column {first_duplicate(index)!r} appears twice in the header")
    return names


def _id_column(path: Path, header: Sequence[str]) -> str:
    """The cell id column: ``EntityID`` / ``cell``, else an unnamed first column (older MERSCOPE releases)."""
    for name in ID_COLUMNS:
        if name in header:
            return name
    if header and header[0] == "":
        return ""
    raise InputError(f"{path}: no column {' or '.join(ID_COLUMNS)} (the cell's EntityID); columns found: "
                     f"{', '.join(header[:12])}{' ...' if len(header) > 12 else ''}")


def _missing(path: Path, header: Sequence[str], required: Sequence[str]) -> None:
    absent = [c for c in required if c not in header]
    if absent:
        raise InputError(f"{path}: no column(s) {', '.join(absent)}; MERSCOPE writes them in every {path.name}")


def _int64_keys(text: np.ndarray | pa.Array) -> np.ndarray | None:
    """(n,) str (object array or Arrow string array) -> (n,) int64, or ``None`` if any is not a 64-bit integer."""
    arr = text if isinstance(text, pa.Array) else pa.array(text, pa.string())
    try:
        return pc.cast(pc.utf8_trim_whitespace(arr), pa.int64()).to_numpy()
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None


def _dictionary(column: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """A dictionary-encoded Arrow string column as its distinct values ((k,) object array of str, whitespace
    stripped) and each row's position among them ((n,) int64): per-value work then runs once per distinct value."""
    values = np.array([v.strip() for v in column.dictionary.to_pylist()], dtype=object)
    return values, column.indices.to_numpy(zero_copy_only=False).astype(np.int64)


def _strings(column: pa.Array) -> np.ndarray:
    """A dictionary-encoded Arrow string column as an (n,) object array of (stripped) str."""
    values, codes = _dictionary(column)
    return values[codes]


class _CellIndex:
    """EntityID -> row of ``cell_metadata.csv``; integer ids compared as int64, other ids as text."""

    def __init__(self, text: np.ndarray) -> None:
        text = np.array([str(t).strip() for t in text], dtype=object)
        keys = _int64_keys(text)
        self.integer = keys is not None
        # the obs index: canonical integers when the ids are integers ('0042' and '42' are one cell)
        self.names = keys.astype(str).astype(object) if keys is not None else text
        self._index = pd.Index(keys if keys is not None else text)

    def lookup(self, column: pa.Array) -> np.ndarray:
        """(n,) int64 metadata rows of the ids of a dictionary-encoded Arrow column; -1 where absent."""
        codes = column.indices.to_numpy(zero_copy_only=False).astype(np.int64)
        keys = _int64_keys(column.dictionary) if self.integer else None
        if keys is not None:  # the common case, without a Python string per cell
            return self._index.get_indexer(keys)[codes]
        values, codes = _dictionary(column)
        if not self.integer:
            return self._index.get_indexer(values)[codes]
        found = np.full(len(values), -1, dtype=np.int64)  # some ids are not integers: those cannot match
        ok = np.array([_int64_keys(np.array([v], dtype=object)) is not None for v in values], dtype=bool)
        found[ok] = self._index.get_indexer(_int64_keys(values[ok]))
        return found[codes]


def _whole_counts(batch: pa.RecordBatch, names: Sequence[str], path: Path, first_line: int) -> np.ndarray:
    """The ``names`` columns of a batch as an (n, k) float64 array, checked to be whole counts in the uint32 range.

    Raises InputError naming the file, the line and the column of the first bad value.
    """
    dense = np.empty((batch.num_rows, len(names)), dtype=np.float64)
    for j, name in enumerate(names):
        dense[:, j] = float_column(batch, name)[0]
    checks = []
    for why, bad in (("is empty or NaN", ~np.isfinite(dense)), ("is negative", dense < 0),
                     ("is not a whole number; MERSCOPE counts are integers (3 or 3.0)", dense != np.floor(dense)),
                     (f"exceeds {COUNT_MAX}", dense > COUNT_MAX)):
        rows = bad.any(1)
        if rows.any():
            i = int(np.argmax(rows))
            j = int(np.argmax(bad[i]))
            checks.append((rows, f"column {names[j]} {why} ({batch.column(names[j])[i].as_py()!r})"))
    bad_line = first_bad_line(first_line, checks)
    if bad_line is not None:
        raise InputError(f"{path}: line {bad_line[0]}: {bad_line[1]}")
    return dense


@register_source
class MerscopeSource(TableSource):
    """Vizgen MERSCOPE: a region folder (``cell_by_gene.csv``, ``cell_metadata.csv``): cells x genes, centres in um.

    Parameters
    ----------
    path
        The region folder (``region_0/``), or a vpt output folder holding the same two files.

    Notes
    -----
    * ``obs``: index = EntityID (str), in ``cell_metadata.csv`` order; columns = every metadata column except the
      id and the centre (``fov``, ``volume`` um^3, ``min_x`` ... ``max_y`` um, ``anisotropy``,
      ``transcript_count``, ...), plus ``blank_counts`` (uint32): the cell's total over the ``Blank-*`` columns.
    * coordinates: ``center_x``, ``center_y`` (um).
    * ``X``: uint32 counts of the gene columns (``Blank-*`` columns excluded), streamed in row blocks.
    * ``var``: the gene columns in file order (index = unique names; ``feature_types`` = 'Gene Expression').
    * :attr:`spot_diameter`: the median over cells of the mean of the bounding-box width and height
      (``max_x - min_x``, ``max_y - min_y``; um): a circular cell's diameter, an elongated cell's mean axis.
      ``None`` without the box columns.
    * ``uns['merscope']['micron_to_mosaic_pixel_transform']``: the (3, 3) float64 affine from
      ``images/micron_to_mosaic_pixel_transform.csv``, when the file exists.
    * points ``transcripts`` (when ``detected_transcripts.csv`` exists): see :meth:`iter_points`.
    """

    format_name = "merscope"
    kind = "obs"

    @classmethod
    def detect(cls, path: Path) -> bool:
        return path.is_dir() and all(find_file(path, n) is not None for n in (COUNTS_FILE, METADATA_FILE))

    def __init__(self, path: str | Path) -> None:
        super().__init__(path)
        files = {n: find_file(self.path, n) for n in (COUNTS_FILE, METADATA_FILE)}
        for name, found in files.items():
            if found is None:
                raise InputError(f"{self.path}: no {name} (nor {name}.gz); a MERSCOPE region folder holds "
                                 f"{COUNTS_FILE} and {METADATA_FILE} (and {TRANSCRIPTS_FILE})")
        self._counts_path, self._meta_path = files[COUNTS_FILE], files[METADATA_FILE]
        meta_cells = self._read_metadata()
        header = _header(self._counts_path)
        self._count_id = _id_column(self._counts_path, header)
        self._count_names = header
        features = [n for n in header if n != self._count_id]
        self._genes = [n for n in features if not is_blank(n)]
        self._blanks = [n for n in features if is_blank(n)]
        self._row_of, blank_counts = self._match_rows(meta_cells)
        self._obs["blank_counts"] = blank_counts
        self._transcripts_path = find_file(self.path, TRANSCRIPTS_FILE)
        self._transform = self._read_transform(self.path / TRANSFORM_FILE)

    # --- opening ---------------------------------------------------------------------------------
    def _read_metadata(self) -> _CellIndex:
        """Read cell_metadata.csv (one row per cell: small next to the matrix): obs, coords, spot diameter."""
        path = self._meta_path
        header = _header(path)
        id_col = _id_column(path, header)
        _missing(path, header, REQUIRED_METADATA_COLUMNS)
        names = [n if n != "" else "EntityID" for n in header]  # pandas would call an unnamed column 'Unnamed: 0'
        id_name = id_col or "EntityID"
        try:
            table = pd.read_csv(path, header=0, names=names, dtype={id_name: str}, keep_default_na=False,
                                na_values=["", "NaN", "nan", "NA"], compression="gzip" if is_gzip(path) else None)
        except (pd.errors.ParserError, ValueError, EOFError, OSError) as exc:
            raise InputError(f"{path}: not a readable CSV table ({type(exc).__name__}: {exc})") from None
        ids = table[id_name].fillna("").to_numpy(dtype=object)
        empty = np.flatnonzero(ids == "")
        if len(empty):
            raise InputError(f"{path}: line {int(empty[0]) + 2}: {id_name} is empty")
        cells = _CellIndex(ids)
        index = pd.Index(cells.names, dtype=object)
        if not index.is_unique:
            raise InputError(f"{path}: cell {first_duplicate(index)!r} appears twice ({id_name} must be unique)")
        self._coords = coordinate_columns(table, REQUIRED_METADATA_COLUMNS, index, path, first_line=2)
        obs = table.drop(columns=[id_name, *REQUIRED_METADATA_COLUMNS])
        obs.index = index
        self._obs = obs
        self._spot_diameter = None
        if all(c in obs for c in BOX_COLUMNS) and len(obs):
            box = {c: pd.to_numeric(obs[c], errors="coerce").to_numpy(np.float64) for c in BOX_COLUMNS}
            size = 0.5 * ((box["max_x"] - box["min_x"]) + (box["max_y"] - box["min_y"]))
            median = float(np.nanmedian(size)) if np.isfinite(size).any() else float("nan")
            if np.isfinite(median) and median > 0:
                self._spot_diameter = median
        return cells

    def _stream_counts(self, columns: Sequence[str], rows_per_block: int) -> Iterator[tuple[pa.RecordBatch, int]]:
        """Stream ``columns`` of cell_by_gene.csv (the id column as text, the others as float) with line numbers."""
        kinds = [TextColumn(c, "str") if c == self._count_id else TextColumn(c, "float") for c in columns]
        # a line holds the id and one small count a column: about two bytes a column
        per_line = 20 + 2.5 * len(self._count_names)
        return stream_table(self._counts_path, names=self._count_names, columns=kinds, skip_lines=1, delimiter=",",
                            block_size=block_size_for(rows_per_block, per_line))

    def _match_rows(self, cells: _CellIndex) -> tuple[np.ndarray, np.ndarray]:
        """First pass over cell_by_gene.csv (ids and blank columns only): the metadata row of each matrix row
        ((n_matrix_rows,) int64) and each cell's blank total ((n_obs,) uint32). Every matrix cell must be in the
        metadata and every metadata cell in the matrix, once."""
        path, n_obs = self._counts_path, len(self._obs)
        rows, blank = [], np.zeros(n_obs, dtype=np.uint32)
        seen = np.zeros(n_obs, dtype=bool)
        for batch, line0 in self._stream_counts([self._count_id, *self._blanks], 1 << 16):
            column = batch.column(self._count_id)
            row = cells.lookup(column)
            absent = np.flatnonzero(row < 0)
            if len(absent):
                i = int(absent[0])
                cell = _strings(column.slice(i, 1))[0]
                if cell == "":
                    raise InputError(f"{path}: line {line0 + i}: the {self._count_id or 'first'} field (the cell's "
                                     f"EntityID) is empty")
                raise InputError(f"{path}: line {line0 + i}: cell {cell!r} is not in {self._meta_path} (no row "
                                 f"with that EntityID); both files must come from one segmentation (the same "
                                 f"region, or one vpt run)")
            # the first line of a cell already seen, in an earlier batch or earlier in this one
            again = seen[row] | _later_duplicate(row)
            if again.any():
                i = int(np.argmax(again))
                raise InputError(f"{path}: line {line0 + i}: cell {_strings(column.slice(i, 1))[0]!r} has a "
                                 f"second row; each cell has one row")
            seen[row] = True
            if self._blanks:
                blank[row] = _whole_counts(batch, self._blanks, path, line0).sum(1).astype(np.uint32)
            rows.append(row)
        if not seen.all():
            missing = self._obs.index[~seen]
            raise InputError(f"{self._meta_path}: {len(missing)} of {n_obs} cells have no row in {path}, e.g. "
                             f"{', '.join(map(repr, missing[:5]))}; both files must list the same cells")
        return (np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)), blank

    @staticmethod
    def _read_transform(path: Path) -> np.ndarray | None:
        """The (3, 3) micron -> mosaic pixel affine, or ``None`` when the file is absent."""
        if not path.is_file():
            return None
        try:
            text = path.read_text().replace(",", " ")
            matrix = np.array([[float(v) for v in line.split()] for line in text.splitlines() if line.strip()])
        except (ValueError, UnicodeDecodeError) as exc:
            raise InputError(f"{path}: not a table of numbers ({exc}); expected 3 lines of 3 space-separated "
                             f"numbers (the micron -> mosaic pixel affine)") from None
        if matrix.shape != (3, 3) or not np.isfinite(matrix).all():
            raise InputError(f"{path}: expected 3 lines of 3 finite numbers (a 3 x 3 affine), got shape "
                             f"{matrix.shape}")
        return matrix

    # --- metadata ------------------------------------------------------------------------------------
    # unit: the base class's "um" (every MERSCOPE table is in micrometres)
    @property
    def spot_diameter(self) -> float | None:
        """Median cell bounding-box size in um (see the class notes), or ``None`` without the box columns."""
        return self._spot_diameter

    @property
    def var(self) -> pd.DataFrame:
        index = make_unique(self._genes)
        return pd.DataFrame({"feature_types": np.full(len(index), "Gene Expression", dtype=object)}, index=index)

    @property
    def uns(self) -> dict:
        if self._transform is None:
            return {}
        return {"merscope": {"micron_to_mosaic_pixel_transform": self._transform.copy()}}

    @property
    def micron_to_mosaic_pixel_transform(self) -> np.ndarray | None:
        """(3, 3) float64 affine taking (x_um, y_um, 1) to mosaic-image pixels, or ``None`` without the file."""
        return None if self._transform is None else self._transform.copy()

    # --- matrix ------------------------------------------------------------------------------------
    def iter_entries(self, chunk_size: int = 2_000_000) -> Iterator[EntryChunk]:
        """Stream the non-zero gene counts of cell_by_gene.csv in row blocks of at most ``chunk_size`` entries
        (a block of ``chunk_size // n_genes`` rows, at least one row). Rows are metadata (obs) rows."""
        n_genes = len(self._genes)
        if n_genes == 0:
            return
        rows_per_chunk = max(1, chunk_size // n_genes)
        for batch, line0 in self._stream_counts(self._genes, rows_per_chunk):
            dense = _whole_counts(batch, self._genes, self._counts_path, line0)
            first = line0 - 2  # matrix row of the batch's first line (line 1 is the header)
            for lo in range(0, len(dense), rows_per_chunk):
                block = dense[lo:lo + rows_per_chunk]
                r, g = np.nonzero(block)
                yield EntryChunk(row=self._row_of[first + lo + r], gene=g.astype(np.int32),
                                 value=block[r, g].astype(np.uint32))

    # --- points --------------------------------------------------------------------------------------
    @property
    def points_name(self) -> str | None:
        return "transcripts" if self._transcripts_path is not None else None

    def iter_points(self, chunk_size: int = 2_000_000) -> Iterator[PointChunk]:
        """Stream detected_transcripts.csv in file order, chunks of at most ``chunk_size`` transcripts.

        Yields
        ------
        PointChunk
            ``x``, ``y`` = global_x, global_y (float64 um); ``feature`` = gene (genes and ``Blank-*``); columns,
            those the file has: ``global_z`` float32 (the z-plane index as MERSCOPE writes it, not um),
            ``fov`` int32, ``barcode_id`` int32 (codebook row), ``transcript_id`` str, ``cell_id`` str (the
            EntityID as text, 'UNASSIGNED' for MERSCOPE's -1).
        """
        path = self._transcripts_path
        if path is None:
            raise TypeError(f"{self.path}: no {TRANSCRIPTS_FILE}; this MERSCOPE folder has no molecule-level points")
        header = _header(path)
        _missing(path, header, REQUIRED_TRANSCRIPT_COLUMNS)
        kept = [spec for spec in _POINT_COLUMNS if spec[0] in header]
        kinds = [TextColumn("global_x", "float"), TextColumn("global_y", "float"), TextColumn("gene", "str"),
                 *(TextColumn(name, kind) for name, kind, _out, _dt in kept)]
        # lines of ~90 bytes: ',747,0,2123.7725,156.28409,1.0,349.0,1891.4949,0,PDK4,ENST00000005178,-1'
        for batch, line0 in stream_table(path, names=header, columns=kinds, skip_lines=1, delimiter=",",
                                         block_size=block_size_for(chunk_size, 90.0)):
            x, x_null = float_column(batch, "global_x")
            y, y_null = float_column(batch, "global_y")
            for name, values, nulls in (("global_x", x, x_null), ("global_y", y, y_null)):
                bad = first_bad_line(line0, [(nulls, f"{name} is empty or NaN"), (~np.isfinite(values), "not finite")])
                if bad is not None:
                    raise InputError(f"{path}: line {bad[0]}: {name} is empty or not a finite number (um)")
            columns = {out: self._point_column(batch, name, kind, dtype) for name, kind, out, dtype in kept}
            feature = _strings(batch.column("gene"))
            for lo in range(0, batch.num_rows, chunk_size):
                hi = lo + chunk_size
                yield PointChunk(x=x[lo:hi], y=y[lo:hi], feature=feature[lo:hi],
                                 columns={k: v[lo:hi] for k, v in columns.items()})

    @staticmethod
    def _point_column(batch: pa.RecordBatch, name: str, kind: str, dtype) -> np.ndarray:
        if kind == "float":
            return float_column(batch, name)[0].astype(dtype)
        if kind == "int":
            return int_column(batch, name)[0].astype(dtype)
        values, codes = _dictionary(batch.column(name))
        if name == "cell_id":  # MERSCOPE's -1 (outside every cell) as Xenium's word for it
            values[(values == "-1") | (values == "")] = UNASSIGNED
        return values[codes]


def _later_duplicate(row: np.ndarray) -> np.ndarray:
    """(n,) bool: True at every occurrence of a value after its first in ``row``."""
    later = np.ones(len(row), dtype=bool)
    later[np.unique(row, return_index=True)[1]] = False
    return later
