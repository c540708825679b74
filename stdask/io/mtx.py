"""10x Genomics MTX folders (``matrix.mtx``, ``features.tsv``, ``barcodes.tsv``) plus cell locations.

SeekSpace (and similar single-cell-resolution platforms) ship a Cell Ranger-style MTX folder and a
``cell_locations.tsv`` with each barcode's x, y in image pixels. :class:`TenxMtxMatrix` reads the
matrix part (also used by the Visium reader for ``filtered_feature_bc_matrix/``); :class:`MtxSource`
adds the locations.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import pandas as pd

from stdask.io.base import COUNT_MAX, EntryChunk, InputError, TableSource, make_unique, register_source
from stdask.io.text import (
    TextColumn,
    first_bad_line,
    first_duplicate,
    float_column,
    int_column,
    match_columns,
    read_tsv_table,
    rows_for_barcodes,
    stream_table,
    text_lines,
)

__all__ = ["MtxSource", "TenxMatrix", "TenxMtxMatrix", "read_locations", "MATRIX_FILES", "FEATURE_FILES",
           "BARCODE_FILES", "LOCATION_FILES", "LOCATION_ALIASES", "GEX", "SEEKSPACE_PIXEL_SIZE"]

#: SeekSpace / stLearn tutorial pixel size of the cell-location image, um per pixel.
SEEKSPACE_PIXEL_SIZE = 0.265385

MATRIX_FILES = ("matrix.mtx.gz", "matrix.mtx")
FEATURE_FILES = ("features.tsv.gz", "features.tsv", "genes.tsv.gz", "genes.tsv")
BARCODE_FILES = ("barcodes.tsv.gz", "barcodes.tsv")
LOCATION_FILES = ("cell_locations.tsv", "cell_locations.tsv.gz")
#: coordinate columns of the locations table (pixels; matched as written, then ignoring case)
LOCATION_ALIASES = {"x": ("x",), "y": ("y",)}
#: feature type of genes in features.tsv (scanpy keeps only these by default)
GEX = "Gene Expression"
#: field names of a matrix.mtx entry line, as errors name them
_MTX_COLUMNS = ("row (gene) index", "column (barcode) index", "value")


def _find(folder: Path, names: Sequence[str]) -> Path | None:
    for name in names:
        if (folder / name).is_file():
            return folder / name
    return None


class TenxMatrix(ABC):
    """What the two 10x matrix files (MTX folder, feature-barcode ``.h5``) share: a genes x barcodes count
    matrix whose features are filtered to ``Gene Expression`` (scanpy's ``gex_only``) as entries stream.

    Subclasses read ``barcodes`` (pd.Index), ``n_genes`` (features before the filter) and ``nnz`` at open and
    call :meth:`_keep_features`.
    """

    barcodes: pd.Index
    n_genes: int
    nnz: int

    def _keep_features(self, var: pd.DataFrame, types: np.ndarray, gex_only: bool, where: Path) -> None:
        """Keep the features of ``var`` (all, or the ``Gene Expression`` ones with ``gex_only``) and map the
        file's feature index to the kept one (``_gene_lut``, -1 = dropped)."""
        keep = np.ones(len(var), dtype=bool)
        if gex_only:
            keep = types == GEX
            if not keep.any() and len(var):
                kinds = ", ".join(sorted(set(types)))
                raise InputError(f"{where}: no '{GEX}' features (types: {kinds}); pass gex_only=False")
        self._var = var[keep]
        self._gene_lut = np.full(len(var), -1, dtype=np.int32)
        self._gene_lut[keep] = np.arange(int(keep.sum()), dtype=np.int32)
        self._all_kept = bool(keep.all())

    @property
    def var(self) -> pd.DataFrame:
        """Kept features: index = unique symbols (str), columns ``gene_ids``, ``feature_types`` (and ``genome``
        when the ``.h5`` has it)."""
        return self._var.copy()

    @abstractmethod
    def iter_entries(self, chunk_size: int = 2_000_000) -> Iterator[EntryChunk]:
        """Stream the matrix entries.

        Yields
        ------
        EntryChunk
            row (n,) int64 barcode index (0-based), gene (n,) int32 feature index (0-based, after the
            ``gex_only`` filter), value (n,) uint32 > 0.
        """


class TenxMtxMatrix(TenxMatrix):
    """The matrix of a 10x MTX folder: genes x barcodes MatrixMarket plus its feature / barcode tables.

    Parameters
    ----------
    folder
        Folder holding ``matrix.mtx[.gz]``, ``features.tsv[.gz]`` (or ``genes.tsv[.gz]``) and
        ``barcodes.tsv[.gz]``.
    gex_only
        Keep only ``Gene Expression`` features (scanpy's ``read_10x_mtx`` default).

    Notes
    -----
    Gene names are the symbol column made unique (``-1``, ``-2``; scanpy's
    ``var_names='gene_symbols'``), computed over all features before the ``gex_only`` filter as
    scanpy does. The header must be ``coordinate integer general``; ``coordinate real general``
    (R's ``writeMM``) is accepted when every value is a whole number.
    """

    def __init__(self, folder: Path, *, gex_only: bool = True) -> None:
        self.folder = folder
        matrix = _find(folder, MATRIX_FILES)
        features = _find(folder, FEATURE_FILES)
        barcodes = _find(folder, BARCODE_FILES)
        missing = [n for n, p in (("matrix.mtx[.gz]", matrix), ("features.tsv[.gz] or genes.tsv[.gz]", features),
                                  ("barcodes.tsv[.gz]", barcodes)) if p is None]
        if missing:
            present = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
            raise InputError(f"{folder}: no {', '.join(missing)}; the folder holds: {', '.join(present) or 'nothing'}")
        assert matrix is not None and features is not None and barcodes is not None
        self.matrix_path, self.features_path, self.barcodes_path = matrix, features, barcodes
        self._read_header()

        feats = read_tsv_table(features, header=False)
        if feats.shape[0] != self.n_genes:
            raise InputError(
                f"{features}: {feats.shape[0]} features, but {matrix.name} (line {self._size_line}) has "
                f"{self.n_genes} rows (genes x barcodes){self._transposed_hint(feats.shape[0], None)}"
            )
        ids = feats.iloc[:, 0].to_numpy(dtype=object) if feats.shape[1] else np.array([], dtype=object)
        symbols = feats.iloc[:, 1].to_numpy(dtype=object) if feats.shape[1] > 1 else ids
        types = feats.iloc[:, 2].to_numpy(dtype=object) if feats.shape[1] > 2 else np.full(len(ids), GEX, dtype=object)
        var = pd.DataFrame({"gene_ids": ids, "feature_types": types}, index=make_unique(list(symbols)))
        self._keep_features(var, types, gex_only, features)

        bcs = read_tsv_table(barcodes, header=False)
        if bcs.shape[0] != self.n_barcodes:
            raise InputError(
                f"{barcodes}: {bcs.shape[0]} barcodes, but {matrix.name} (line {self._size_line}) has "
                f"{self.n_barcodes} columns (genes x barcodes){self._transposed_hint(None, bcs.shape[0])}"
            )
        self.barcodes = pd.Index(bcs.iloc[:, 0].to_numpy(dtype=object) if bcs.shape[1] else [], dtype=object)
        if not self.barcodes.is_unique:
            raise InputError(f"{barcodes}: barcode {first_duplicate(self.barcodes)!r} appears more than once")

    def _transposed_hint(self, n_features: int | None, n_barcodes: int | None) -> str:
        if n_features is not None and n_features == self.n_barcodes:
            return "; the matrix looks transposed (barcodes x genes)"
        if n_barcodes is not None and n_barcodes == self.n_genes:
            return "; the matrix looks transposed (barcodes x genes)"
        return ""

    def _read_header(self) -> None:
        path = self.matrix_path
        with text_lines(path, "MatrixMarket text") as lines:
            banner = next(lines, "")
            tokens = banner.lower().split()
            if len(tokens) < 5 or tokens[0] != "%%matrixmarket" or tokens[1] != "matrix":
                raise InputError(f"{path}: line 1: not a MatrixMarket header: {banner[:100]!r}")
            if tokens[2:5] not in (["coordinate", "integer", "general"], ["coordinate", "real", "general"]):
                raise InputError(f"{path}: line 1: MatrixMarket '{' '.join(tokens[2:5])}'; expected "
                                 f"'coordinate integer general' (a sparse count matrix)")
            self._real = tokens[3] == "real"
            lineno = 1
            for line in lines:
                lineno += 1
                if line.startswith("%") or not line.strip():
                    continue
                parts = line.split()
                if len(parts) != 3 or not all(p.isdigit() for p in parts):
                    raise InputError(f"{path}: line {lineno}: expected the size line 'rows columns entries', "
                                     f"found {line[:100]!r}")
                self.n_genes, self.n_barcodes, self.nnz = (int(p) for p in parts)
                self._size_line = lineno
                self._has_entries = next(lines, None) is not None
                return
        raise InputError(f"{path}: no size line after the MatrixMarket header")

    def iter_entries(self, chunk_size: int = 2_000_000) -> Iterator[EntryChunk]:
        """Stream the matrix entries (see :meth:`TenxMatrix.iter_entries`) from ``matrix.mtx``, line by line.

        Raises
        ------
        InputError
            With the line number: index out of range, negative or non-integer value, wrong field
            count, more or fewer entries than the size line declares, truncated gzip.
        """
        path = self.matrix_path
        gene_name, bc_name, val_name = _MTX_COLUMNS
        rules = {gene_name: self._gene_rule, bc_name: self._barcode_rule, val_name: self._value_rule}
        columns = [TextColumn(gene_name, "int", check=self._gene_rule),
                   TextColumn(bc_name, "int", check=self._barcode_rule),
                   TextColumn(val_name, "float" if self._real else "int", check=self._value_rule)]
        seen = 0
        block = int(min(max(chunk_size * 12, 1 << 20), 256 << 20))  # ~10 bytes per "i j v" line
        batches = stream_table(path, names=list(_MTX_COLUMNS), columns=columns, skip_lines=self._size_line,
                               delimiter=" ", block_size=block) if self._has_entries else iter(())
        for batch, first_line in batches:
            n = batch.num_rows
            if n == 0:
                continue
            gene, g_null = int_column(batch, gene_name)
            bc, b_null = int_column(batch, bc_name)
            if self._real:
                val_f, v_null = float_column(batch, val_name)
                finite = np.isfinite(val_f)
                # NaN from an empty field is reported as empty, not as "not finite"
                bad_value = (~finite if v_null is None else ~finite & ~v_null) | (finite & (val_f != np.round(val_f)))
                # clip before the cast so huge values stay huge (and fail the range check) instead of wrapping
                val = np.where(finite, np.clip(val_f, -1.0, 2.0**40), 0).astype(np.int64)
            else:
                val, v_null = int_column(batch, val_name)
                bad_value = None
            blank = None
            if g_null is not None and b_null is not None and v_null is not None:
                blank = g_null & b_null & v_null  # an empty line
                if not blank.any():
                    blank = None

            def real(mask: np.ndarray | None) -> np.ndarray | None:
                return mask if mask is None or blank is None else mask & ~blank

            n_real = n if blank is None else n - int(blank.sum())
            extra = None
            if seen + n_real > self.nnz:  # entries beyond the declared count: the first extra one is bad
                is_entry = np.ones(n, dtype=bool) if blank is None else ~blank
                extra = (seen + np.cumsum(is_entry) > self.nnz) & is_entry
            bad = first_bad_line(first_line, [
                (real(g_null), f"{gene_name} is empty or NaN"),
                (real(b_null), f"{bc_name} is empty or NaN"),
                (real(v_null), f"{val_name} is empty or NaN"),
                (real((gene < 1) | (gene > self.n_genes)), gene_name),
                (real((bc < 1) | (bc > self.n_barcodes)), bc_name),
                (real((val < 0) | (val > COUNT_MAX)), val_name),
                (real(bad_value), val_name),
                (extra, f"more entries than the {self.nnz} declared on line {self._size_line}"),
            ])
            if bad is not None:
                line, message = bad
                if message in rules:  # a value rule: the same words as the line-by-line check
                    value = batch.column(message)[line - first_line].as_py()
                    message = f"{message} {rules[message](value)}"
                raise InputError(f"{path}: line {line}: {message}")
            seen += n_real
            keep = val > 0  # empty lines were filled with 0
            if not self._all_kept:
                keep &= self._gene_lut[np.clip(gene - 1, 0, self.n_genes - 1)] >= 0
            if not keep.all():
                gene, bc, val = gene[keep], bc[keep], val[keep]
            if len(gene) == 0:
                continue
            row = bc - 1
            g = self._gene_lut[gene - 1]
            value = val.astype(np.uint32)
            for a in range(0, len(row), chunk_size):
                yield EntryChunk(row=row[a:a + chunk_size], gene=g[a:a + chunk_size], value=value[a:a + chunk_size])
        if seen != self.nnz:
            raise InputError(f"{path}: {seen} entries, but line {self._size_line} declares {self.nnz}; "
                             f"the file is incomplete")

    def _gene_rule(self, value: int) -> str | None:
        if 1 <= value <= self.n_genes:
            return None
        return f"{value} is out of range 1..{self.n_genes} (the {self.features_path.name} rows)"

    def _barcode_rule(self, value: int) -> str | None:
        if 1 <= value <= self.n_barcodes:
            return None
        return f"{value} is out of range 1..{self.n_barcodes} (the {self.barcodes_path.name} rows)"

    @staticmethod
    def _value_rule(value: float) -> str | None:
        if value != value or value in (np.inf, -np.inf):
            return f"{value} is not finite"
        if value != round(value):
            return f"{value} is not a whole number; counts must be integers"
        if value < 0:
            return f"is negative ({value:g}); counts must be >= 0"
        if value > COUNT_MAX:
            return f"is {value:g}; counts above {COUNT_MAX} are not supported"
        return None


def read_locations(path: Path, barcodes: pd.Index) -> pd.DataFrame:
    """Read a cell-locations table and align it to the matrix barcodes.

    Parameters
    ----------
    path
        Tab-separated table with a header; first column = barcode, columns ``x``, ``y`` (pixels);
        other columns are kept.
    barcodes
        The matrix barcodes; rows for other barcodes are dropped (as the stLearn SeekSpace tutorial
        does), and every matrix barcode must have a row.

    Returns
    -------
    DataFrame indexed like ``barcodes``: ``x``, ``y`` float64 (pixels) and the other columns.
    """
    table = read_tsv_table(path, header=True)
    if table.shape[1] < 3:
        raise InputError(f"{path}: expected a header with a barcode column and x, y; columns found: "
                         f"{', '.join(map(str, table.columns))}")
    table.index = pd.Index(table.iloc[:, 0].to_numpy(dtype=object), dtype=object)
    table = table.iloc[:, 1:]
    cols = match_columns(list(table.columns), LOCATION_ALIASES)
    for axis in LOCATION_ALIASES:
        if axis not in cols:
            raise InputError(f"{path}: no {axis!r} column; columns found: {', '.join(map(str, table.columns))}")
    table = rows_for_barcodes(table, barcodes, path, "location")
    out = pd.DataFrame(index=barcodes)
    for axis in ("x", "y"):
        raw = table[cols[axis]]
        num = pd.to_numeric(raw.where(~raw.str.strip().isin(["", "NA", "NaN", "nan"]), None), errors="coerce")
        bad = ~np.isfinite(num.to_numpy(dtype=np.float64))
        if bad.any():
            i = int(np.argmax(bad))
            raise InputError(f"{path}: barcode {barcodes[i]!r}: {axis} is {raw.iloc[i]!r}; coordinates must "
                             f"be finite numbers (NaN coordinate)")
        out[axis] = num.to_numpy(dtype=np.float64)
    for col in table.columns:
        if col in (cols["x"], cols["y"]):
            continue
        values = table[col]
        try:
            out[str(col)] = pd.to_numeric(values).to_numpy()
        except (ValueError, TypeError):
            out[str(col)] = values.to_numpy(dtype=object)
    return out


@register_source
class MtxSource(TableSource):
    """10x MTX folder with per-barcode locations (SeekSpace and similar): cells x genes.

    Parameters
    ----------
    path
        Folder with ``matrix.mtx[.gz]``, ``features.tsv[.gz]`` / ``genes.tsv[.gz]``,
        ``barcodes.tsv[.gz]`` and (unless ``locations`` is given) ``cell_locations.tsv``.
    locations
        Path of the locations table (tab-separated, header; first column barcode, columns ``x``,
        ``y`` in pixels). Default: ``cell_locations.tsv`` in the folder.
    pixel_size
        Micrometres per pixel (default 0.265385, the SeekSpace value the stLearn tutorial uses);
        coordinates are ``x * pixel_size``, ``y * pixel_size`` and :attr:`unit` is ``"um"``.
        ``None`` keeps pixels (:attr:`unit` ``"pixel"``).
    spot_diameter
        Cell / spot diameter in :attr:`unit`, if known (default ``None``).
    gex_only
        Keep only ``Gene Expression`` features (default True, as scanpy).

    Notes
    -----
    ``obs`` is indexed by barcode in matrix order, with any extra location columns. Locations of
    barcodes not in the matrix are ignored; a matrix barcode without a location is an error.
    """

    format_name = "mtx"
    kind = "obs"

    @classmethod
    def detect(cls, path: Path) -> bool:
        return path.is_dir() and _find(path, MATRIX_FILES) is not None

    def __init__(self, path: str | Path, *, locations: str | Path | None = None,
                 pixel_size: float | None = SEEKSPACE_PIXEL_SIZE, spot_diameter: float | None = None,
                 gex_only: bool = True) -> None:
        super().__init__(path, locations=None if locations is None else str(locations), pixel_size=pixel_size,
                         spot_diameter=spot_diameter, gex_only=gex_only)
        if not self.path.is_dir():
            raise InputError(f"{self.path}: an MTX input is a folder (matrix.mtx, features.tsv, barcodes.tsv)")
        self._matrix = TenxMtxMatrix(self.path, gex_only=gex_only)
        if locations is None:
            loc_path = _find(self.path, LOCATION_FILES)
            if loc_path is None:
                raise InputError(f"{self.path}: no cell_locations.tsv; pass locations= the table of barcode, x, y")
        else:
            loc_path = Path(locations)
            if not loc_path.is_file():
                raise FileNotFoundError(f"{loc_path}: no such file")
        self._locations_path = loc_path
        loc = read_locations(loc_path, self._matrix.barcodes)
        scale = 1.0 if pixel_size is None else float(pixel_size)
        self._coords = np.column_stack([loc["x"].to_numpy(), loc["y"].to_numpy()]) * scale
        self._obs = loc.drop(columns=["x", "y"])
        self._pixel_size = pixel_size
        self._spot_diameter = None if spot_diameter is None else float(spot_diameter)

    @property
    def unit(self) -> str:
        return "pixel" if self._pixel_size is None else "um"

    @property
    def spot_diameter(self) -> float | None:
        return self._spot_diameter

    @property
    def var(self) -> pd.DataFrame:
        return self._matrix.var

    @property
    def uns(self) -> dict:
        out: dict[str, Any] = {"locations_file": str(self._locations_path.name)}
        if self._pixel_size is not None:
            out["pixel_size_um"] = float(self._pixel_size)
        return out

    @property
    def size_hint(self) -> int | None:
        return self._matrix.nnz

    def iter_entries(self, chunk_size: int = 2_000_000) -> Iterator[EntryChunk]:
        """Stream (barcode, gene, count) entries; see :meth:`TenxMtxMatrix.iter_entries`."""
        return self._matrix.iter_entries(chunk_size)
