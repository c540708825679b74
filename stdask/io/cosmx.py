"""NanoString / Bruker CosMx SMI reader: the AtoMx flat-file export (cells x targets, cell metadata, transcripts).

Layout read (AtoMx SIP "flat files"; NanoString's SMI ReadMe and the CosMx Analysis Scratch Space)::

    <folder>/
      <run>_exprMat_file.csv[.gz]        dense counts: fov, cell_ID, [cell,] then one column per target
      <run>_metadata_file.csv[.gz]       one row per cell: fov, cell_ID, [cell,] Area, AspectRatio,
                                         CenterX/Y_local_px, CenterX/Y_global_px, Width, Height, Mean.* / Max.* ...
      <run>_fov_positions_file.csv[.gz]  (optional) fov or FOV, x_global_px, y_global_px [, x/y_global_mm]
      <run>_tx_file.csv[.gz]             (optional) one row per decoded molecule: fov, cell_ID, cell,
                                         x/y_local_px, x/y_global_px, z, target, CellComp

A cell is identified by ``(fov, cell_ID)``; ``cell_ID`` 0 collects the molecules outside every cell (the matrix
has one such row per FOV) and is dropped. Positions are in pixels of 0.12028 um (CosMx SMI; early instruments
0.18 um: the ``pixel_size_um`` option). The files are written without quoting, so they are parsed without it
(one row per line, exact line numbers in errors).

Observations are the metadata's cells in its row order; matrix rows are matched to them by the integer key
``(fov, cell_ID)``, so the two files may list the cells in different orders but must list the same cells.
``X`` holds the genes; the control targets (negative probes ``NegPrb*`` / ``Negative*``, false codes
``SystemControl*`` / ``FalseCode*``) stay out of it and their per-cell sums are obs columns.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa

from stdask.io.base import (COUNT_MAX, EntryChunk, InputError, PointChunk, TableSource, make_unique,
                            median_disc_diameter, register_source)
from stdask.io.text import (TextColumn, block_size_for, check_text, float_column, gzip_error, int_column, is_gzip,
                            match_columns, stream_table, text_lines)

__all__ = ["CosMxSource", "COSMX_PIXEL_SIZE_UM", "CONTROL_GROUPS", "control_group", "find_flat_file"]

#: micrometres per pixel of the CosMx SMI cameras (global and local pixel coordinates)
COSMX_PIXEL_SIZE_UM = 0.12028
#: control target name prefixes, by the obs column that sums them per cell
CONTROL_GROUPS = {
    "negprobe_counts": ("NegPrb", "Negative"),  # negative control probes (early exports NegPrb1.., AtoMx Negative1..)
    "falsecode_counts": ("SystemControl", "FalseCode"),  # codewords with no probe (false codes)
}
#: columns of the matrix that are not targets
_KEY_COLUMNS = ("fov", "cell_ID", "cell")
_REQUIRED_META = ("fov", "cell_ID", "CenterX_global_px", "CenterY_global_px")
_REQUIRED_TX = ("fov", "cell_ID", "x_global_px", "y_global_px", "target")
#: cell ids pack into one int64 as fov << 32 | cell_ID
_ID_LIMIT = 1 << 31
#: bytes of one dense count field ("0,"), for sizing Arrow blocks of the matrix; a transcript line is ~60 bytes
_BYTES_PER_FIELD = 2.0
_BYTES_PER_TX_LINE = 60.0


def control_group(name: str) -> str | None:
    """The obs column counting target ``name`` (a :data:`CONTROL_GROUPS` key), or ``None`` for a gene."""
    for column, prefixes in CONTROL_GROUPS.items():
        if name.startswith(prefixes):
            return column
    return None


def find_flat_file(folder: Path, kind: str, required: bool = True) -> Path | None:
    """The folder's one ``*<kind>.csv`` or ``*<kind>.csv.gz`` (``kind`` e.g. ``"exprMat_file"``).

    Raises
    ------
    InputError
        Several runs' files in one folder, or (``required``) none.
    """
    found = sorted(p for suffix in (".csv", ".csv.gz") for p in folder.glob(f"*{kind}{suffix}") if p.is_file())
    if len(found) > 1:
        raise InputError(f"{folder}: {len(found)} {kind} files ({', '.join(p.name for p in found)}); a CosMx folder "
                         f"holds one run's flat files: put each run in its own folder")
    if not found:
        if required:
            raise InputError(f"{folder}: no *_{kind}.csv(.gz); an AtoMx flat-file export holds <run>_exprMat_file.csv "
                             f"and <run>_metadata_file.csv (optionally gzipped)")
        return None
    return found[0]


def _header(path: Path) -> list[str]:
    """Field names of a CSV's first line (surrounding quotes removed)."""
    with text_lines(path, "CSV") as lines:
        first = next(lines, None)
    if first is None or not first.strip():
        raise InputError(f"{path}: empty file; expected a CSV header line")
    names = [f.strip().strip('"') for f in first.split(",")]
    seen: set[str] = set()
    for n in names:
        if n in seen:
            raise InputError(f"{path}: column {n!r} appears twice in the header")
        seen.add(n)
    return names


def _require(path: Path, header: Sequence[str], required: Sequence[str]) -> None:
    missing = [c for c in required if c not in header]
    if missing:
        raise InputError(f"{path}: no column(s) {', '.join(missing)}; columns found: {', '.join(header[:20])}"
                         f"{' ...' if len(header) > 20 else ''}")


def _cell_keys(fov: np.ndarray, cell: np.ndarray) -> np.ndarray:
    """(n,) int64 key ``fov << 32 | cell_ID`` of each cell (both checked to lie in 0 .. 2**31 - 1)."""
    return (np.asarray(fov, np.int64) << 32) | np.asarray(cell, np.int64)


def _count_check(value: float) -> str | None:
    if value < 0:
        return f"is {int(value)}; counts must be >= 0"
    return f"is {int(value)}, above the uint32 range" if value > COUNT_MAX else None


def _check_ids(path: Path, first_line: int, fov: np.ndarray, cell: np.ndarray, nulls: Sequence) -> None:
    """fov and cell_ID must be present integers in 0 .. 2**31 - 1; names the first bad line."""
    bad = np.zeros(len(fov), bool)
    for v, null in ((fov, nulls[0]), (cell, nulls[1])):
        bad |= (v < 0) | (v >= _ID_LIMIT)
        if null is not None:
            bad |= null
    if bad.any():
        i = int(np.argmax(bad))
        raise InputError(f"{path}: line {first_line + i}: fov, cell_ID = {fov[i]}, {cell[i]}; both must be integers "
                         f"in 0 .. {_ID_LIMIT - 1}")


def _check_counts(path: Path, first_line: int, names: Sequence[str], block: np.ndarray,
                  nulls: np.ndarray | None) -> None:
    """Refuse an empty, negative or over-uint32 count in a (rows, targets) int64 block, naming line and column."""
    bad = (block < 0) | (block > COUNT_MAX)
    if nulls is not None:
        bad |= nulls
    if bad.any():
        row, col = divmod(int(np.argmax(bad.ravel())), block.shape[1])
        why = "is empty" if nulls is not None and nulls[row, col] else _count_check(float(block[row, col]))
        raise InputError(f"{path}: line {first_line + row}: {names[col]} {why}")


@register_source
class CosMxSource(TableSource):
    """NanoString CosMx SMI: an AtoMx flat-file folder, cells x genes, cell centres in um.

    Parameters
    ----------
    path
        The folder holding ``<run>_exprMat_file.csv[.gz]`` and ``<run>_metadata_file.csv[.gz]`` (and optionally
        ``<run>_fov_positions_file`` and ``<run>_tx_file``).
    pixel_size_um
        Micrometres per pixel (0.12028 for CosMx SMI; 0.18 for early instruments).

    Notes
    -----
    * ``obs``: index = the metadata's ``cell`` column (AtoMx ``c_<slide>_<fov>_<cell_ID>``) when it has one,
      else ``"<fov>_<cell_ID>"``; columns = the metadata's (``fov``, ``cell_ID``, ``Area`` in px^2, the pixel
      centres, stain intensities...) plus ``negprobe_counts`` and ``falsecode_counts`` (uint32 sums of the
      control targets of :data:`CONTROL_GROUPS` in the matrix).
    * coordinates: ``CenterX_global_px``, ``CenterY_global_px`` times ``pixel_size_um`` (um).
    * ``X``: uint32 counts of the gene targets, streamed from the dense CSV by blocks of lines.
    * :attr:`spot_diameter`: the diameter (um) of a disc with the median ``Area``.
    * points ``transcripts`` (when the tx file is present): global positions in um, ``feature`` = target,
      columns ``cell_id`` (the obs id, ``"UNASSIGNED"`` for cell_ID 0), ``fov`` int32, ``z`` float32 (z-slice
      number), ``CellComp`` str.
    """

    format_name = "cosmx"
    kind = "obs"

    @classmethod
    def detect(cls, path: Path) -> bool:
        # next(glob, None): a glob is a generator, truthy whether or not it finds anything
        return path.is_dir() and all(any(next(path.glob(f"*{k}.csv{gz}"), None) is not None for gz in ("", ".gz"))
                                     for k in ("exprMat_file", "metadata_file"))

    def __init__(self, path: str | Path, pixel_size_um: float = COSMX_PIXEL_SIZE_UM) -> None:
        super().__init__(path)
        if not self.path.is_dir():
            raise InputError(f"{self.path}: not a folder; give the folder holding the AtoMx flat files")
        if isinstance(pixel_size_um, bool) or not (np.isfinite(pixel_size_um) and pixel_size_um > 0):
            raise ValueError(f"pixel_size_um must be a positive number (um per pixel), got {pixel_size_um!r}")
        self.pixel_size_um = float(pixel_size_um)
        self._expr = find_flat_file(self.path, "exprMat_file")
        self._meta = find_flat_file(self.path, "metadata_file")
        self._fov_file = find_flat_file(self.path, "fov_positions_file", required=False)
        self._tx = find_flat_file(self.path, "tx_file", required=False)
        # the metadata first: a missing column is the commoner mistake and cheaper to find than a matrix problem
        meta, self._keys, self._coords, self._meta_lines = self._read_metadata()
        self._expr_names = _header(self._expr)
        _require(self._expr, self._expr_names, ("fov", "cell_ID"))
        targets = [n for n in self._expr_names if n not in _KEY_COLUMNS]
        self._genes = [n for n in targets if control_group(n) is None]
        self._controls = [n for n in targets if control_group(n) is not None]
        # obs rows by key, for the vectorised matching of matrix and transcript rows
        self._order = np.argsort(self._keys, kind="stable")
        self._sorted_keys = self._keys[self._order]
        sums = self._scan_matrix(len(meta))
        for column in CONTROL_GROUPS:
            meta[column] = sums[column]
        ids = meta.pop("cell").astype(str).to_numpy(dtype=object) if "cell" in meta else np.array(
            [f"{f}_{c}" for f, c in zip(meta["fov"], meta["cell_ID"])], dtype=object)
        meta.index = pd.Index(ids, dtype=object)
        if not meta.index.is_unique:
            dup = meta.index[meta.index.duplicated()][0]
            raise InputError(f"{self._meta}: cell {dup!r} appears more than once")
        self._obs = meta
        self._fov_positions = self._read_fov_positions() if self._fov_file is not None else None

    # --- metadata --------------------------------------------------------------------------------
    def _read_metadata(self) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, np.ndarray]:
        """The per-cell table without cell_ID 0 rows, its (n,) int64 cell keys, (n, 2) float64 centres (um) and
        (n,) int64 line numbers."""
        path = self._meta
        _require(path, _header(path), _REQUIRED_META)
        check_text(path, "CSV")
        try:
            table = pd.read_csv(path, dtype={"cell": str}, compression="gzip" if is_gzip(path) else None,
                                float_precision="round_trip")  # exact: coordinates are compared to the text
        except pd.errors.ParserError as exc:
            raise InputError(f"{path}: {exc}") from None
        except (EOFError, OSError) as exc:
            raise gzip_error(path, exc) from None
        line = np.arange(len(table)) + 2  # header is line 1
        ids = {}
        for column in ("fov", "cell_ID"):
            v = pd.to_numeric(table[column], errors="coerce").to_numpy(np.float64)
            bad = ~np.isfinite(v) | (v != np.round(v)) | (v < 0) | (v >= _ID_LIMIT)
            if bad.any():
                i = int(np.argmax(bad))
                raise InputError(f"{path}: line {line[i]}: {column} is {table[column].iloc[i]!r}; expected an "
                                 f"integer >= 0")
            ids[column] = v.astype(np.int64)
        keep = ids["cell_ID"] != 0  # molecules outside every cell, not a cell
        table = table.loc[keep].reset_index(drop=True)
        line = line[keep]
        keys = _cell_keys(ids["fov"][keep], ids["cell_ID"][keep])
        uniq, counts = np.unique(keys, return_counts=True)
        if (counts > 1).any():
            k = uniq[np.argmax(counts > 1)]
            dup = line[np.flatnonzero(keys == k)]
            raise InputError(f"{path}: lines {dup[0]} and {dup[1]}: cell fov {k >> 32}, cell_ID {k & 0xFFFFFFFF} "
                             f"appears twice")
        xy = np.column_stack([pd.to_numeric(table[c], errors="coerce").to_numpy(np.float64)
                              for c in ("CenterX_global_px", "CenterY_global_px")])
        bad = ~np.isfinite(xy).all(1)
        if bad.any():
            i = int(np.argmax(bad))
            raise InputError(f"{path}: line {line[i]}: CenterX_global_px, CenterY_global_px = "
                             f"{table['CenterX_global_px'].iloc[i]!r}, {table['CenterY_global_px'].iloc[i]!r}; "
                             f"expected numbers (pixels)")
        return table, keys, xy * self.pixel_size_um, line

    def _read_fov_positions(self) -> pd.DataFrame:
        """(n_fovs, 3) fov (int64), x_px, y_px (float64) of the FOV positions file (mm columns converted)."""
        path = self._fov_file
        header = _header(path)
        roles = match_columns(header, {"fov": ("fov", "FOV"), "x_px": ("x_global_px",), "y_px": ("y_global_px",),
                                       "x_mm": ("x_global_mm",), "y_mm": ("y_global_mm",)})
        scale = 1.0
        if "x_px" not in roles or "y_px" not in roles:
            roles["x_px"], roles["y_px"] = roles.get("x_mm"), roles.get("y_mm")
            scale = 1000.0 / self.pixel_size_um
        if roles.get("fov") is None or roles["x_px"] is None or roles["y_px"] is None:
            raise InputError(f"{path}: no column(s) fov, x_global_px, y_global_px (nor x_global_mm, y_global_mm); "
                             f"columns found: {', '.join(header)}")
        table = pd.read_csv(path, usecols=[roles["fov"], roles["x_px"], roles["y_px"]])
        out = pd.DataFrame({"fov": pd.to_numeric(table[roles["fov"]], errors="coerce"),
                            "x_px": pd.to_numeric(table[roles["x_px"]], errors="coerce") * scale,
                            "y_px": pd.to_numeric(table[roles["y_px"]], errors="coerce") * scale})
        bad = out.isna().any(axis=1).to_numpy()
        if bad.any():
            i = int(np.argmax(bad))
            raise InputError(f"{path}: line {i + 2}: fov, x, y = {table.iloc[i].tolist()}; expected numbers")
        return out.astype({"fov": np.int64})

    # --- matrix ----------------------------------------------------------------------------------
    def _stream_matrix(self, names: Sequence[str], chunk_size: int) -> Iterator[tuple[int, np.ndarray, dict]]:
        """Stream the matrix's ``fov``, ``cell_ID`` and ``names`` columns by blocks of lines.

        Yields
        ------
        (first_line, rows, values)
            The 1-based line of the block's first row, (n,) int64 obs row of each cell row (background rows
            with cell_ID 0 removed) and, per name, the (n,) int64 counts of those rows.
        """
        columns = [TextColumn("fov", "int"), TextColumn("cell_ID", "int")]
        columns += [TextColumn(n, "int", check=_count_check) for n in names]
        block = block_size_for(max(1, chunk_size // max(len(self._expr_names), 1)),
                               _BYTES_PER_FIELD * len(self._expr_names))
        for batch, first_line in stream_table(self._expr, names=self._expr_names, columns=columns, skip_lines=1,
                                              delimiter=",", block_size=block):
            fov, fov_null = int_column(batch, "fov")
            cell, cell_null = int_column(batch, "cell_ID")
            _check_ids(self._expr, first_line, fov, cell, (fov_null, cell_null))
            counts = np.empty((batch.num_rows, len(names)), np.int64)
            nulls = None
            for j, n in enumerate(names):
                counts[:, j], null = int_column(batch, n)
                if null is not None:
                    nulls = np.zeros(counts.shape, bool) if nulls is None else nulls
                    nulls[:, j] = null
            _check_counts(self._expr, first_line, names, counts, nulls)
            inside = cell != 0
            rows = self._rows_of(_cell_keys(fov[inside], cell[inside]))
            if (rows < 0).any():
                i = int(np.flatnonzero(inside)[np.argmax(rows < 0)])
                raise InputError(f"{self._expr}: line {first_line + i}: cell fov {fov[i]}, cell_ID {cell[i]} has no "
                                 f"row in {self._meta}; the two files must list the same cells (same run?)")
            yield first_line, rows, counts[inside]

    def _rows_of(self, keys: np.ndarray) -> np.ndarray:
        """(n,) int64 obs row of each cell key, -1 where the metadata has no such cell."""
        rows = np.full(len(keys), -1, np.int64)
        if len(keys) and len(self._sorted_keys):
            pos = np.minimum(np.searchsorted(self._sorted_keys, keys), len(self._sorted_keys) - 1)
            found = self._sorted_keys[pos] == keys
            rows[found] = self._order[pos[found]]
        return rows

    def _scan_matrix(self, n_obs: int) -> dict[str, np.ndarray]:
        """One pass over the matrix's keys and control columns: checks that it lists every metadata cell once and
        returns the per-cell control sums ((n_obs,) uint32 per :data:`CONTROL_GROUPS` column)."""
        group = np.array([list(CONTROL_GROUPS).index(control_group(n)) for n in self._controls], np.int64)
        sums = np.zeros((n_obs, len(CONTROL_GROUPS)), np.uint64)
        seen = np.zeros(n_obs, np.int64)
        for _line, rows, counts in self._stream_matrix(self._controls, 2_000_000):
            np.add.at(seen, rows, 1)
            if len(self._controls):
                per_group = np.zeros((len(rows), len(CONTROL_GROUPS)), np.uint64)
                for g in range(len(CONTROL_GROUPS)):
                    per_group[:, g] = counts[:, group == g].sum(1)
                np.add.at(sums, rows, per_group)
        if (seen > 1).any():
            raise InputError(f"{self._expr}: cell {self._describe(int(np.argmax(seen > 1)))} has more than one row")
        if (seen == 0).any():
            i = int(np.argmax(seen == 0))
            raise InputError(f"{self._meta}: line {self._meta_lines[i]}: cell {self._describe(i)} has no row in "
                             f"{self._expr}; the two files must list the same cells (same run?)")
        if sums.size and sums.max() > COUNT_MAX:
            raise InputError(f"{self._expr}: a cell's control counts sum above the uint32 range")
        return {c: sums[:, g].astype(np.uint32) for g, c in enumerate(CONTROL_GROUPS)}

    def _describe(self, row: int) -> str:
        key = int(self._keys[row])
        return f"fov {key >> 32}, cell_ID {key & 0xFFFFFFFF}"

    # --- Source interface --------------------------------------------------------------------------
    @property
    def var(self) -> pd.DataFrame:
        """The gene targets (index = unique names; ``feature_types`` 'Gene Expression')."""
        return pd.DataFrame({"feature_types": "Gene Expression"}, index=make_unique(self._genes))

    @property
    def spot_diameter(self) -> float | None:
        """Diameter (um) of a disc with the median ``Area`` (px^2 converted to um^2), or ``None`` without it."""
        return median_disc_diameter(self._obs["Area"], self.pixel_size_um ** 2) if "Area" in self._obs else None

    @property
    def uns(self) -> dict:
        meta: dict = {"pixel_size_um": self.pixel_size_um, "expr_file": self._expr.name,
                      "controls": np.array(self._controls, dtype=object)}
        if self._fov_positions is not None:
            meta["fov_positions"] = {"fov": self._fov_positions["fov"].to_numpy(np.int64),
                                     "x_global_px": self._fov_positions["x_px"].to_numpy(np.float64),
                                     "y_global_px": self._fov_positions["y_px"].to_numpy(np.float64)}
        return {"cosmx": meta}

    def iter_entries(self, chunk_size: int = 2_000_000) -> Iterator[EntryChunk]:
        """Stream (cell, gene, count) entries of the gene columns, one chunk per block of about ``chunk_size``
        dense fields (lines of the matrix; a block holds whole lines)."""
        for _line, rows, counts in self._stream_matrix(self._genes, chunk_size):
            r, g = np.nonzero(counts)
            yield EntryChunk(rows[r], g.astype(np.int32), counts[r, g].astype(np.uint32))

    # --- transcripts -------------------------------------------------------------------------------
    @property
    def points_name(self) -> str | None:
        return "transcripts" if self._tx is not None else None

    def iter_points(self, chunk_size: int = 2_000_000) -> Iterator[PointChunk]:
        """Stream the tx file's molecules in file order, at most ``chunk_size`` per chunk (see the class notes)."""
        if self._tx is None:
            return super().iter_points(chunk_size)
        return self._iter_tx(chunk_size)

    def _iter_tx(self, chunk_size: int) -> Iterator[PointChunk]:
        path = self._tx
        header = _header(path)
        _require(path, header, _REQUIRED_TX)
        columns = [TextColumn("fov", "int"), TextColumn("cell_ID", "int"), TextColumn("x_global_px", "float"),
                   TextColumn("y_global_px", "float"), TextColumn("target", "str", required=True)]
        columns += [TextColumn(n, k) for n, k in (("z", "float"), ("CellComp", "str")) if n in header]
        obs_ids = self._obs.index.to_numpy(dtype=object)
        block = block_size_for(chunk_size, _BYTES_PER_TX_LINE)
        for batch, first_line in stream_table(path, names=header, columns=columns, skip_lines=1, delimiter=",",
                                              block_size=block):
            for lo in range(0, batch.num_rows, chunk_size):
                yield self._tx_chunk(batch.slice(lo, chunk_size), first_line + lo, obs_ids)

    def _tx_chunk(self, batch: pa.RecordBatch, first_line: int, obs_ids: np.ndarray) -> PointChunk:
        path = self._tx
        fov, fov_null = int_column(batch, "fov")
        cell, cell_null = int_column(batch, "cell_ID")
        _check_ids(path, first_line, fov, cell, (fov_null, cell_null))
        xy = []
        for name in ("x_global_px", "y_global_px"):
            v, _null = float_column(batch, name)
            if not np.isfinite(v).all():
                i = int(np.argmax(~np.isfinite(v)))
                raise InputError(f"{path}: line {first_line + i}: {name} is empty or not finite")
            xy.append(v * self.pixel_size_um)
        rows = np.full(len(fov), -1, np.int64)
        inside = cell != 0
        rows[inside] = self._rows_of(_cell_keys(fov[inside], cell[inside]))
        missing = inside & (rows < 0)
        if missing.any():
            i = int(np.argmax(missing))
            raise InputError(f"{path}: line {first_line + i}: molecule of cell fov {fov[i]}, cell_ID {cell[i]}, "
                             f"which {self._meta} does not list; the files must come from the same run")
        cell_id = np.full(len(fov), "UNASSIGNED", dtype=object)
        cell_id[inside] = obs_ids[rows[inside]]
        z = (float_column(batch, "z")[0] if "z" in batch.schema.names else np.full(len(fov), np.nan))
        comp = _strings(batch, "CellComp") if "CellComp" in batch.schema.names else np.full(len(fov), "", object)
        return PointChunk(xy[0], xy[1], _strings(batch, "target"),
                          {"cell_id": cell_id, "fov": fov.astype(np.int32), "z": z.astype(np.float32),
                           "CellComp": comp})


def _strings(batch: pa.RecordBatch, name: str) -> np.ndarray:
    """A dictionary-encoded string column as an (n,) object array of str (decoded through its dictionary)."""
    arr = batch.column(name)
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    words = np.asarray(arr.dictionary.to_pylist(), dtype=object)
    return words[arr.indices.to_numpy(zero_copy_only=False)]
