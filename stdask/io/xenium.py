"""10x Xenium Onboard Analysis ``outs/`` reader: cells x genes from the cell-feature matrix, cell table, metadata.

Layout read (10x's "Understanding Xenium Outputs", XOA 1.x-3.x)::

    outs/
      experiment.xenium          JSON: pixel_size (um per image pixel), analysis_sw_version, run metadata
      cell_feature_matrix.h5     10x feature-barcode HDF5 (CSC by barcode): genes and control features
      cells.parquet              (or cells.csv.gz) cell_id, x_centroid, y_centroid (um), per-cell counts, areas
      cell_boundaries.parquet    cell_id, vertex_x, vertex_y (um), label_id: one row per polygon vertex, a cell's
                                 rows contiguous, its ring closed, cells in cells.parquet order

Observations are the cells, in ``cells.parquet`` order, which must be the matrix's barcode order (XOA writes
both in one order). Coordinates are the cell centroids in micrometres. ``X`` holds the ``Gene Expression``
features only; the control features (negative control probes and codewords, unassigned / deprecated codewords,
genomic controls) stay out of ``X`` and their per-cell counts are kept as the obs columns XOA writes for them
(``control_probe_counts``, ``control_codeword_counts``, ``unassigned_codeword_counts``...). transcripts.parquet
is streamed by :meth:`XeniumSource.iter_points`, the cell polygons by :meth:`XeniumSource.iter_boundaries`.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd

from stdask.io.base import EntryChunk, InputError, PointChunk, TableSource, median_disc_diameter, register_source
from stdask.io.parquet import iter_parquet
from stdask.io.text import coordinate_columns
from stdask.io.visium import TenxH5Matrix

__all__ = ["XeniumSource", "CELL_FILES", "EXPERIMENT_FILE", "MATRIX_FILE", "REQUIRED_CELL_COLUMNS",
           "TRANSCRIPTS_FILE", "REQUIRED_TRANSCRIPT_COLUMNS", "BOUNDARIES_FILE", "REQUIRED_BOUNDARY_COLUMNS",
           "arrow_strings", "transcript_columns"]

EXPERIMENT_FILE = "experiment.xenium"
MATRIX_FILE = "cell_feature_matrix.h5"
#: the per-cell table, in the order tried
CELL_FILES = ("cells.parquet", "cells.csv.gz")
REQUIRED_CELL_COLUMNS = ("cell_id", "x_centroid", "y_centroid")
TRANSCRIPTS_FILE = "transcripts.parquet"
REQUIRED_TRANSCRIPT_COLUMNS = ("x_location", "y_location", "feature_name")
#: the cells' segmentation polygons, one row per vertex (nucleus_boundaries.parquet has the nuclei's)
BOUNDARIES_FILE = "cell_boundaries.parquet"
REQUIRED_BOUNDARY_COLUMNS = ("cell_id", "vertex_x", "vertex_y")
#: transcripts.parquet columns kept with each point, and their dtype (those present; XOA 2.0 added
#: codeword_index, XOA 3.0 is_gene); cell_id is kept as str whatever the file's type
_POINT_COLUMNS = {"transcript_id": np.uint64, "cell_id": str, "overlaps_nucleus": np.uint8,
                  "z_location": np.float32, "qv": np.float32, "nucleus_distance": np.float32,
                  "codeword_index": np.int32, "is_gene": np.bool_}
#: experiment.xenium keys copied to ``uns['xenium']`` (scalars only, so AnnData can write them)
_EXPERIMENT_KEYS = ("pixel_size", "analysis_sw_version", "instrument_sw_version", "run_name", "region_name",
                    "panel_name", "panel_organism", "panel_design_id", "preservation_method", "z_step_size",
                    "num_cells", "major_version", "minor_version")


def _outs_folder(path: Path) -> Path:
    """``path`` itself, or ``path/outs`` when given the run folder holding it."""
    if not (path / EXPERIMENT_FILE).is_file() and (path / "outs" / EXPERIMENT_FILE).is_file():
        return path / "outs"
    return path


def _read_cells(outs: Path) -> tuple[Path, pd.DataFrame]:
    """The per-cell table; its cell_id as str. Checks the required columns before reading the rows."""
    path = next((outs / n for n in CELL_FILES if (outs / n).is_file()), None)
    if path is None:
        raise InputError(f"{outs}: no {CELL_FILES[0]} (nor {CELL_FILES[1]}): the per-cell table (cell_id, "
                         f"x_centroid, y_centroid in um) that Xenium Onboard Analysis writes next to "
                         f"{MATRIX_FILE}; copy it from the instrument's outs/ folder")
    try:
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            columns = list(pq.ParquetFile(path).schema_arrow.names)
            _check_columns(path, columns)
            table = pq.read_table(path).to_pandas()
        else:
            columns = list(pd.read_csv(path, nrows=0).columns)
            _check_columns(path, columns)
            table = pd.read_csv(path, dtype={"cell_id": str})
    except InputError:
        raise
    except Exception as exc:  # pyarrow / pandas raise many types for a corrupt file
        raise InputError(f"{path}: not a readable {'Parquet' if path.suffix == '.parquet' else 'CSV'} file "
                         f"({type(exc).__name__}: {exc})") from None
    # XOA 1.x wrote integer cell ids; later versions 'aaabbbcc-1' strings. Either way the matrix has them as text.
    table["cell_id"] = table["cell_id"].map(lambda v: v.decode() if isinstance(v, bytes) else str(v))
    return path, table


def arrow_strings(array) -> np.ndarray:
    """(n,) object array of str from a pyarrow string, binary (XOA 1.x), integer (XOA 1.x cell ids) or dictionary
    column; converted by pyarrow in C, never per value in Python. Nulls become ``""``."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if pa.types.is_dictionary(array.type):
        array = array.cast(array.type.value_type)
    if not pa.types.is_string(array.type):
        array = array.cast(pa.string())  # binary: validated as UTF-8; numbers: their decimal text
    return pc.fill_null(array, "").to_numpy(zero_copy_only=False)


def transcript_columns(path: Path) -> list[str]:
    """The column names of a transcripts.parquet; refuses one without the required columns."""
    return _parquet_columns(path, REQUIRED_TRANSCRIPT_COLUMNS, "x_location, y_location in um and feature_name")


def _parquet_columns(path: Path, required: tuple[str, ...], what: str) -> list[str]:
    """The column names of a Parquet file; refuses an unreadable file or one without the ``required`` columns
    (``what`` says what they are in the message)."""
    import pyarrow.parquet as pq

    try:
        names = list(pq.ParquetFile(path).schema_arrow.names)
    except Exception as exc:  # pyarrow raises several types for a corrupt file
        raise InputError(f"{path}: not a readable Parquet file ({type(exc).__name__}: {exc})") from None
    missing = [c for c in required if c not in names]
    if missing:
        raise InputError(f"{path}: no column(s) {', '.join(missing)} ({what} are required); columns found: "
                         f"{', '.join(names)}")
    return names


def _numbers(batch, name: str, dtype, path: Path, offset: int, record: str = "transcript") -> np.ndarray:
    """A numeric column of a record batch as ``dtype``; refuses nulls (naming the row) rather than inventing values."""
    col = batch.column(name)
    if col.null_count:
        row = offset + int(np.argmax(col.is_null().to_numpy(zero_copy_only=False)))
        raise InputError(f"{path}: row {row}: {name} is empty; every {record} needs one")
    return col.to_numpy(zero_copy_only=False).astype(dtype, copy=False)


def _check_columns(path: Path, columns: list[str]) -> None:
    missing = [c for c in REQUIRED_CELL_COLUMNS if c not in columns]
    if missing:
        raise InputError(f"{path}: no column(s) {', '.join(missing)}; columns found: {', '.join(columns)}")


@register_source
class XeniumSource(TableSource):
    """10x Xenium: an XOA ``outs/`` folder (or the folder holding ``outs/``): cells x genes, centroids in um.

    Parameters
    ----------
    path
        The ``outs`` folder (``experiment.xenium``, ``cell_feature_matrix.h5``, ``cells.parquet``).

    Notes
    -----
    * ``obs``: index = cell_id (str), columns = every column of ``cells.parquet`` except cell_id and the
      centroids, among them the control counts ``control_probe_counts``, ``control_codeword_counts``,
      ``unassigned_codeword_counts`` (and ``deprecated_codeword_counts`` / ``genomic_control_counts`` where XOA
      writes them), ``transcript_counts``, ``total_counts``, ``cell_area``, ``nucleus_area`` (um^2).
    * ``X``: uint32 counts of the ``Gene Expression`` features (transcripts with qv >= 20 assigned to the cell);
      streamed from the HDF5 by barcode ranges, never the whole matrix at once.
    * ``var``: the gene features (index = unique names; ``gene_ids``, ``feature_types``, ``genome``).
    * :attr:`spot_diameter`: the diameter of a disc of the median ``cell_area`` (um), when the table has it.
    * ``uns['xenium']``: scalar run metadata of ``experiment.xenium`` (``pixel_size``, ``analysis_sw_version``...).
    """

    format_name = "xenium"
    kind = "obs"

    @classmethod
    def detect(cls, path: Path) -> bool:
        return path.is_dir() and all((_outs_folder(path) / n).is_file() for n in (EXPERIMENT_FILE, MATRIX_FILE))

    def __init__(self, path: str | Path) -> None:
        super().__init__(path)
        outs = _outs_folder(self.path)
        for name in (EXPERIMENT_FILE, MATRIX_FILE):
            if not (outs / name).is_file():
                raise InputError(f"{outs}: no {name}; a Xenium outs/ folder holds {EXPERIMENT_FILE}, {MATRIX_FILE} "
                                 f"and {CELL_FILES[0]}")
        self._outs = outs
        self._experiment = self._read_experiment(outs / EXPERIMENT_FILE)
        # the cell table is checked first: a missing file or column is the commoner mistake and cheaper to find
        cells_path, cells = _read_cells(outs)
        self._matrix = TenxH5Matrix(outs / MATRIX_FILE, gex_only=True)
        self._check_barcodes(cells_path, cells["cell_id"])
        self._coords = coordinate_columns(cells, ("x_centroid", "y_centroid"), cells["cell_id"].to_numpy(object),
                                          cells_path)
        obs = cells.drop(columns=list(REQUIRED_CELL_COLUMNS))
        obs.index = pd.Index(cells["cell_id"].to_numpy(dtype=object), dtype=object)
        self._obs = obs
        self._spot_diameter = median_disc_diameter(obs["cell_area"]) if "cell_area" in obs else None

    @staticmethod
    def _read_experiment(path: Path) -> dict[str, Any]:
        try:
            meta = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InputError(f"{path}: not valid JSON ({exc})") from None
        if not isinstance(meta, dict):
            raise InputError(f"{path}: expected a JSON object of run metadata, got {type(meta).__name__}")
        return meta

    def _check_barcodes(self, cells_path: Path, cell_ids: pd.Series) -> None:
        """The matrix barcodes must be the table's cell ids in the same order (XOA writes them so)."""
        barcodes = self._matrix.barcodes
        matrix_path = self._outs / MATRIX_FILE
        if len(barcodes) != len(cell_ids):
            raise InputError(f"{matrix_path}: {len(barcodes)} barcodes, but {cells_path} has {len(cell_ids)} cells; "
                             f"both come from one Xenium run and list the same cells in one order")
        ids = cell_ids.to_numpy(dtype=object)
        differ = barcodes.to_numpy(dtype=object) != ids
        if differ.any():
            i = int(np.argmax(differ))
            raise InputError(f"{matrix_path}: matrix/barcodes[{i}] is {barcodes[i]!r}, but {cells_path} row {i} has "
                             f"cell_id {ids[i]!r}; the two files must list the same cells in one order "
                             f"(are they from the same run?)")

    @property
    def outs(self) -> Path:
        """The ``outs/`` folder read (``path`` itself or ``path/outs``)."""
        return self._outs

    # unit: the base class's "um" (every Xenium table is in micrometres)
    @property
    def spot_diameter(self) -> float | None:
        """Diameter (um) of a disc with the median cell area, or ``None`` without ``cell_area``."""
        return self._spot_diameter

    @property
    def var(self) -> pd.DataFrame:
        return self._matrix.var

    @property
    def uns(self) -> dict:
        meta = {k: self._experiment[k] for k in _EXPERIMENT_KEYS
                if isinstance(self._experiment.get(k), (str, int, float)) and not isinstance(self._experiment[k], bool)}
        return {"xenium": meta}

    @property
    def pixel_size(self) -> float | None:
        """Micrometres per morphology-image pixel (``experiment.xenium``'s ``pixel_size``), if given."""
        value = self._experiment.get("pixel_size")
        return float(value) if isinstance(value, (int, float)) else None

    @property
    def size_hint(self) -> int | None:
        return self._matrix.nnz

    def iter_entries(self, chunk_size: int = 2_000_000) -> Iterator[EntryChunk]:
        """Stream (cell, gene, count) entries of the gene features by barcode ranges of ~``chunk_size`` entries."""
        return self._matrix.iter_entries(chunk_size)

    @property
    def points_name(self) -> str | None:
        """``"transcripts"`` when the folder holds ``transcripts.parquet``, else ``None``."""
        return "transcripts" if (self._outs / TRANSCRIPTS_FILE).is_file() else None

    def iter_points(self, chunk_size: int = 2_000_000) -> Iterator[PointChunk]:
        """Stream ``transcripts.parquet`` in file order, ``chunk_size`` rows at a time.

        Yields
        ------
        PointChunk
            ``x``, ``y``: (n,) float64 ``x_location``, ``y_location`` (um); ``feature``: (n,) str ``feature_name``
            (genes and controls); ``columns``: those of ``transcript_id`` (uint64), ``cell_id`` (str; XOA 1.x
            integer ids as text), ``overlaps_nucleus`` (uint8), ``z_location``, ``qv``, ``nucleus_distance``
            (float32), ``codeword_index`` (int32), ``is_gene`` (bool) the file has.
        """
        path = self._outs / TRANSCRIPTS_FILE
        if not path.is_file():
            raise TypeError(f"{self._outs}: no {TRANSCRIPTS_FILE}, so no molecule-level points")
        names = transcript_columns(path)
        keep = [c for c in _POINT_COLUMNS if c in names]
        offset = 0
        for batch in iter_parquet(path, chunk_size, list(REQUIRED_TRANSCRIPT_COLUMNS) + keep):
            columns = {c: (arrow_strings(batch.column(c)) if _POINT_COLUMNS[c] is str
                           else _numbers(batch, c, _POINT_COLUMNS[c], path, offset)) for c in keep}
            yield PointChunk(_numbers(batch, "x_location", np.float64, path, offset),
                             _numbers(batch, "y_location", np.float64, path, offset),
                             arrow_strings(batch.column("feature_name")), columns)
            offset += batch.num_rows

    @property
    def boundaries_file(self) -> Path | None:
        """``outs/cell_boundaries.parquet`` (the cells' segmentation polygons), or ``None`` when absent."""
        path = self._outs / BOUNDARIES_FILE
        return path if path.is_file() else None

    def iter_boundaries(self, chunk_size: int = 2_000_000) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Stream ``cell_boundaries.parquet`` in file order, ``chunk_size`` vertices at a time.

        Yields
        ------
        tuple
            ``(cell, x, y)``: (m,) int64 row of each vertex's cell in ``cells.parquet`` (the source row),
            (m,) float64 ``vertex_x``, ``vertex_y`` (um). A cell's vertices are contiguous; its run may continue
            in the next batch (:func:`stdask.store.polygons.write_polygons` joins them).

        Raises
        ------
        InputError
            No boundaries file, a missing column, an empty value, or a cell_id that ``cells.parquet`` lacks.
        """
        import pyarrow as pa
        import pyarrow.compute as pc

        path = self.boundaries_file
        if path is None:
            raise InputError(f"{self._outs}: no {BOUNDARIES_FILE}, so no cell polygons; copy it from the "
                             f"instrument's outs/ folder, or keep the default circle shapes")
        _parquet_columns(path, REQUIRED_BOUNDARY_COLUMNS, "cell_id and vertex_x, vertex_y in um")
        index = self._obs.index
        if not index.is_unique:
            raise InputError(f"{self._outs}: cell_id {index[index.duplicated()][0]!r} is listed twice in the cell "
                             f"table; cell ids must be unique")
        offset = 0
        for batch in iter_parquet(path, chunk_size, list(REQUIRED_BOUNDARY_COLUMNS)):
            col = batch.column("cell_id")
            if col.null_count:
                row = offset + int(np.argmax(col.is_null().to_numpy(zero_copy_only=False)))
                raise InputError(f"{path}: row {row}: cell_id is empty; every vertex needs its cell's id")
            # each id repeats for every vertex of its cell: look up the batch's distinct ids only
            coded = col if pa.types.is_dictionary(col.type) else pc.dictionary_encode(col)
            rows = index.get_indexer(arrow_strings(coded.dictionary))
            codes = coded.indices.to_numpy(zero_copy_only=False)
            cell = rows[codes].astype(np.int64, copy=False)
            if (cell < 0).any():
                i = int(np.argmax(cell < 0))
                raise InputError(f"{path}: row {offset + i}: cell_id {arrow_strings(coded.dictionary)[codes[i]]!r} "
                                 f"is not in the cell table (cells.parquet); are both files from the same run?")
            yield (cell, _numbers(batch, "vertex_x", np.float64, path, offset, "vertex"),
                   _numbers(batch, "vertex_y", np.float64, path, offset, "vertex"))
            offset += batch.num_rows
