"""Stereo-seq GEM reader, and the streaming delimited-text engine the MTX reader shares.

A GEM file is tab-separated text (often gzipped), one row per (gene, DNB) with a non-zero count::

    #FileFormat=GEMv0.1
    #OffsetX=0
    geneID  geneName  x  y  MIDCount  ExonCount  CellID

Parsing dominates ingest time, so the text is parsed by Arrow's multithreaded CSV reader in large
blocks with explicit column types, and every check runs vectorised on a whole block. Rows map one to
one to lines (no quoting, empty lines kept as all-null rows), so the line number of any row is the
block's first line plus the row's position: errors name the exact line. When Arrow itself rejects a
block (a field that is not an integer, a wrong number of fields) the block is re-read line by line in
Python, which is slow but only runs on the way to an error, to say which line and which field.
"""
from __future__ import annotations

import gzip
import re
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from stdask.io.base import InputError, RecordChunk, Source, register_source

__all__ = ["GemSource", "TextColumn", "stream_table", "open_binary", "is_gzip", "gzip_error", "make_unique"]

# --------------------------------------------------------------------------------------------------
# Shared text machinery (also used by stdask.io.mtx)
# --------------------------------------------------------------------------------------------------

_GZIP_MAGIC = b"\x1f\x8b"
#: Python-side gzip failures: a cut file ends without the end-of-stream marker (EOFError), damaged
#: deflate data (zlib.error), a bad header (BadGzipFile).
_GZIP_ERRORS = (EOFError, zlib.error, gzip.BadGzipFile)
#: Field spellings read as "missing" in numeric columns (then reported with their line number).
_NULL_VALUES = ["", "NA", "NaN", "nan", "NAN", "N/A", "n/a", "null", "NULL", "None"]
_INT_RE = re.compile(r"^\s*-?\d+\s*$")
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_UINT32_MAX = np.iinfo(np.uint32).max


def is_gzip(path: Path) -> bool:
    """Whether ``path`` is gzip-compressed (by its magic bytes, not its name)."""
    with open(path, "rb") as fh:
        return fh.read(2) == _GZIP_MAGIC


def open_binary(path: Path) -> BinaryIO:
    """Open a plain or gzipped file for binary reading (decompressed transparently)."""
    return gzip.open(path, "rb") if is_gzip(path) else open(path, "rb")  # type: ignore[return-value]


def gzip_error(path: Path, exc: BaseException) -> InputError:
    """The error for a gzip stream that cannot be decompressed to its end."""
    return InputError(f"{path}: truncated or corrupt gzip ({exc}); the file is incomplete or damaged, "
                      f"download or compress it again")


@contextmanager
def text_lines(path: Path) -> Iterator[Iterator[str]]:
    """Iterate the decoded lines of a plain or gzipped file (newline stripped); gzip damage -> InputError."""
    fh = open_binary(path)

    def lines() -> Iterator[str]:
        try:
            for raw in fh:
                yield raw.decode("utf-8", errors="replace").rstrip("\r\n")
        except _GZIP_ERRORS as exc:
            raise gzip_error(path, exc) from None

    try:
        yield lines()
    finally:
        fh.close()


def make_unique(names: Sequence[str], join: str = "-") -> pd.Index:
    """Make names unique the way ``anndata.utils.make_index_unique`` (and scanpy's readers) do.

    The first occurrence keeps its name; later ones get ``-1``, ``-2``... skipping any name already
    present, so ``["A", "A", "A-1"]`` becomes ``["A", "A-2", "A-1"]``.
    """
    index = pd.Index(np.asarray(names, dtype=object), dtype=object)
    if index.is_unique:
        return index
    from anndata.utils import make_index_unique

    return pd.Index(make_index_unique(index, join=join), dtype=object)


@dataclass(frozen=True)
class TextColumn:
    """A column :func:`stream_table` converts.

    Attributes
    ----------
    name
        Column name as in the file's header (or as assigned for header-less tables).
    kind
        ``"int"`` (int64, missing values -> null), ``"float"`` (float64) or ``"str"``
        (dictionary-encoded strings, never null).
    check
        Optional value rule used when a block has to be re-read line by line (so the first bad line
        is found whatever the problem): returns the message tail (``"is negative; ..."``) or None.
    required
        For ``"str"`` columns: an empty field is an error.
    """

    name: str
    kind: str
    check: Callable[[Any], str | None] | None = None
    required: bool = False


_ARROW_TYPES = {"int": pa.int64(), "float": pa.float64(), "str": pa.dictionary(pa.int32(), pa.string())}


def stream_table(
    path: Path,
    *,
    names: Sequence[str],
    columns: Sequence[TextColumn],
    skip_lines: int,
    delimiter: str,
    block_size: int,
) -> Iterator[tuple[pa.RecordBatch, int]]:
    """Stream a delimited text table as Arrow record batches with exact line numbers.

    Parameters
    ----------
    path
        Plain or gzipped text file.
    names
        All field names of a data line, in order (the number of fields every line must have).
    columns
        The columns to convert (a subset of ``names``); the others are checked for count only.
    skip_lines
        Lines before the first data line (comments, header).
    delimiter
        One-character field separator.
    block_size
        Bytes of text parsed at a time (Arrow block); bounds memory.

    Yields
    ------
    (batch, first_line)
        A record batch of the converted columns and the 1-based line number of its first row.
        Empty lines come through as rows whose numeric fields are null and string fields empty.

    Raises
    ------
    InputError
        A line with the wrong number of fields or a field that does not convert (naming the line and
        the field), or a truncated / corrupt gzip stream.
    """
    read_opts = pacsv.ReadOptions(
        skip_rows=skip_lines, column_names=list(names), block_size=int(block_size), use_threads=True
    )
    # No quoting: GEM / MTX never quote, and it keeps one row per line (exact line numbers).
    parse_opts = pacsv.ParseOptions(delimiter=delimiter, quote_char=False, escape_char=False,
                                    newlines_in_values=False, ignore_empty_lines=False)
    convert_opts = pacsv.ConvertOptions(
        column_types={c.name: _ARROW_TYPES[c.kind] for c in columns},
        include_columns=[c.name for c in columns],
        null_values=_NULL_VALUES,
        strings_can_be_null=False,
        quoted_strings_can_be_null=False,
    )
    gz = is_gzip(path)
    first_line = skip_lines + 1
    stream = pa.input_stream(str(path), compression="gzip" if gz else None)
    try:
        try:
            reader = pacsv.open_csv(stream, read_options=read_opts, parse_options=parse_opts,
                                    convert_options=convert_opts)
            while True:
                try:
                    batch = reader.read_next_batch()
                except StopIteration:
                    break
                yield batch, first_line
                first_line += batch.num_rows
        except pa.ArrowInvalid as exc:
            raise _diagnose(path, first_line, names, columns, delimiter, str(exc)) from None
        except OSError as exc:
            # Arrow reports a cut or damaged gzip stream as an IO error ("Truncated compressed stream").
            if gz:
                raise gzip_error(path, exc) from None
            raise
    finally:
        stream.close()


def _check_field(value: str, column: TextColumn) -> str | None:
    """Why ``value`` is not valid for ``column`` (``None`` if it is), matching Arrow's conversion rules."""
    if column.kind == "str":
        return "is empty" if column.required and value == "" else None
    if value.strip() in _NULL_VALUES:
        return "is empty or NaN"
    number: int | float
    if column.kind == "int":
        if not _INT_RE.match(value):
            return f"{value!r} is not an integer"
        number = int(value)
        if not _INT64_MIN <= number <= _INT64_MAX:
            return f"{value!r} is out of the 64-bit integer range"
    else:
        try:
            number = float(value)
        except ValueError:
            return f"{value!r} is not a number"
    return column.check(number) if column.check is not None else None


def _diagnose(path: Path, start_line: int, names: Sequence[str], columns: Sequence[TextColumn],
              delimiter: str, arrow_message: str) -> InputError:
    """Re-read from ``start_line`` in Python and describe the first line Arrow could not convert."""
    by_name = {c.name: c for c in columns}
    positions = [(i, by_name[n]) for i, n in enumerate(names) if n in by_name]
    try:
        with text_lines(path) as lines:
            for lineno, line in enumerate(lines, 1):
                if lineno < start_line or line == "":
                    continue
                fields = line.split(delimiter)
                if len(fields) != len(names):
                    return InputError(
                        f"{path}: line {lineno}: {len(fields)} fields, expected {len(names)} "
                        f"({', '.join(names)}): {line[:200]!r}"
                    )
                for i, column in positions:
                    why = _check_field(fields[i], column)
                    if why is not None:
                        return InputError(f"{path}: line {lineno}: {column.name} {why}")
    except InputError as exc:  # a gzip stream that ends early (the likelier cause of the Arrow error)
        return exc
    return InputError(f"{path}: at or after line {start_line}: {arrow_message}")


def first_bad_line(first_line: int, checks: Sequence[tuple[np.ndarray, str]]) -> tuple[int, str] | None:
    """The earliest failing row over several vectorised checks.

    Parameters
    ----------
    first_line
        Line number of row 0.
    checks
        ``(mask, message)`` pairs; ``mask`` is a (n,) bool array, True where the row is bad.

    Returns
    -------
    ``(line, message)`` of the first bad row, or ``None``.
    """
    best: tuple[int, str] | None = None
    for mask, message in checks:
        if mask is None or not mask.any():
            continue
        row = int(np.argmax(mask))
        if best is None or row < best[0]:
            best = (row, message)
    if best is None:
        return None
    return first_line + best[0], best[1]


def int_column(batch: pa.RecordBatch, name: str) -> tuple[np.ndarray, np.ndarray | None]:
    """A converted int column as (n,) int64 (nulls as 0) and its (n,) bool null mask (``None`` if none)."""
    arr = batch.column(name)
    if arr.null_count:
        nulls = arr.is_null().to_numpy(zero_copy_only=False)
        return pc.fill_null(arr, 0).to_numpy(zero_copy_only=False).astype(np.int64, copy=False), nulls
    return arr.to_numpy(zero_copy_only=False).astype(np.int64, copy=False), None


def float_column(batch: pa.RecordBatch, name: str) -> tuple[np.ndarray, np.ndarray | None]:
    """A converted float column as (n,) float64 (nulls as NaN) and its null mask."""
    arr = batch.column(name)
    nulls = arr.is_null().to_numpy(zero_copy_only=False) if arr.null_count else None
    return pc.fill_null(arr, np.nan).to_numpy(zero_copy_only=False), nulls


#: largest Arrow block. Arrow's threaded streaming reader parses many blocks ahead of the consumer, so
#: memory is about (readahead x block size): 40 MiB blocks held 1.3 GiB at the start of a 1 GiB GEM,
#: 4 MiB blocks keep it near 150 MiB at the same parse speed
MAX_BLOCK = 4 << 20


def block_size_for(chunk_size: int, bytes_per_line: float) -> int:
    """Arrow block size (bytes) holding about ``chunk_size`` lines, within 1 MiB .. :data:`MAX_BLOCK`."""
    return int(min(max(chunk_size * bytes_per_line * 1.05, 1 << 20), MAX_BLOCK))


def uncompressed_size(path: Path) -> int:
    """Size of the decompressed content (the gzip trailer's ISIZE for gzip, exact below 4 GiB).

    ISIZE is stored modulo 2**32; a text file compresses by well over 2x, so multiples of 4 GiB are
    added back until the estimate exceeds twice the compressed size (good enough for a progress bar).
    """
    size = path.stat().st_size
    if not is_gzip(path):
        return size
    with open(path, "rb") as fh:
        fh.seek(max(size - 4, 0))
        isize = int.from_bytes(fh.read(4), "little")
    while isize < 2 * size:
        isize += 1 << 32
    return isize


# --------------------------------------------------------------------------------------------------
# GEM
# --------------------------------------------------------------------------------------------------

#: Accepted header spellings of each role (first match wins; then matched case-insensitively).
_GEM_ALIASES: dict[str, tuple[str, ...]] = {
    "gene": ("geneID", "geneId", "gene_id", "gene"),
    "name": ("geneName", "gene_name"),
    "x": ("x",),
    "y": ("y",),
    "count": ("MIDCount", "MIDCounts", "MIDcount", "UMICount", "UMICounts", "UMI_count"),
    "exon": ("ExonCount", "exonCount", "exon"),
    "cell": ("CellID", "cellID", "cell_id", "label"),
}
_GEM_REQUIRED = ("gene", "x", "y", "count")


def _count_rule(value: int) -> str | None:
    if value < 0:
        return f"is negative ({value}); counts must be >= 0"
    if value > _UINT32_MAX:
        return f"is {value}; counts above {_UINT32_MAX} are not supported"
    return None


def _cell_rule(value: int) -> str | None:
    return f"is negative ({value}); cell ids must be >= 0 (0 = not in a cell)" if value < 0 else None


def _resolve_columns(header: list[str]) -> dict[str, str]:
    """Map roles (gene, x, y, count, ...) to the header's spelling; absent optional roles left out."""
    found: dict[str, str] = {}
    lower = {h.lower(): h for h in header}
    for role, aliases in _GEM_ALIASES.items():
        for alias in aliases:
            if alias in header:
                found[role] = alias
                break
        else:
            for alias in aliases:
                if alias.lower() in lower:
                    found[role] = lower[alias.lower()]
                    break
    return found


def _parse_header_value(value: str) -> Any:
    """``#OffsetX=123`` metadata values: int or float when they parse as one, else the string."""
    for conv in (int, float):
        try:
            return conv(value)
        except ValueError:
            pass
    return value


@register_source
class GemSource(Source):
    """Stereo-seq GEM text file (``.gem`` or ``.gem.gz``): DNB-level records.

    Parameters
    ----------
    path
        The GEM file, plain or gzipped (detected from the content, not the name).
    var_names
        ``"auto"`` (default): gene symbols (``geneName``) when the file has them, else ``geneID``;
        ``"gene_id"`` or ``"gene_name"`` to choose. Symbols are made unique like scanpy
        (``-1``, ``-2`` suffixes); ``var['gene_ids']`` always holds ``geneID``.

    Notes
    -----
    Genes are numbered by ``geneID`` in the order they are first seen while streaming, so
    :attr:`var` is known only after :meth:`iter_records` has run to the end (it raises before).
    Rows whose count is 0 are dropped; empty lines are skipped. ``#Key=value`` comment lines are kept
    in ``uns['gem_header']``. Coordinates are the file's DNB x, y (offsets not applied).
    """

    format_name = "gem"
    kind = "records"
    suffixes = (".gem", ".gem.gz")

    def __init__(self, path: str | Path, *, var_names: str = "auto") -> None:
        super().__init__(path, var_names=var_names)
        if var_names not in ("auto", "gene_id", "gene_name"):
            raise ValueError(f"var_names must be 'auto', 'gene_id' or 'gene_name', not {var_names!r}")
        self._var_names = var_names
        self._header_meta: dict[str, Any] = {}
        comments: list[str] = []
        header: list[str] | None = None
        sample_bytes = sample_lines = 0
        n_lines = 0
        with text_lines(self.path) as lines:
            for line in lines:
                n_lines += 1
                if header is None:
                    if n_lines == 1:
                        line = line.lstrip("\ufeff")
                    if line.startswith("#"):
                        body = line[1:].strip()
                        if "=" in body:
                            key, _, value = body.partition("=")
                            self._header_meta[key.strip()] = _parse_header_value(value.strip())
                        elif body:
                            comments.append(body)
                        continue
                    header = line.split("\t")
                    self._header_line = n_lines
                    continue
                # a sample of data lines sizes the parse blocks and the record-count estimate
                sample_bytes += len(line) + 1
                sample_lines += 1
                if sample_lines >= 2000:
                    break
        if comments:
            self._header_meta["comments"] = comments
        if header is None:
            raise InputError(f"{self.path}: no header line (expected geneID, x, y, MIDCount after the # lines)")
        if len(set(header)) != len(header):
            dup = next(h for h in header if header.count(h) > 1)
            raise InputError(f"{self.path}: line {self._header_line}: column {dup!r} appears twice in the header")
        self._header = header
        roles = _resolve_columns(header)
        for role in _GEM_REQUIRED:
            if role not in roles:
                raise InputError(
                    f"{self.path}: line {self._header_line}: no {_GEM_ALIASES[role][0]} column "
                    f"(accepted: {', '.join(_GEM_ALIASES[role])}); columns found: {', '.join(header)}"
                )
        if var_names == "gene_name" and "name" not in roles:
            raise InputError(f"{self.path}: var_names='gene_name' but the header has no geneName column; "
                             f"columns found: {', '.join(header)}")
        self._roles = roles
        self._bytes_per_line = sample_bytes / sample_lines if sample_lines else 32.0
        self._has_data = sample_lines > 0
        # gene table, grown while streaming: geneID -> index, and the geneName of each index
        self._gene_index: dict[str, int] = {}
        self._gene_names: list[str] = []
        self._complete = False

    # --- metadata -------------------------------------------------------------------------------
    @property
    def unit(self) -> str:
        return "DNB"

    @property
    def uns(self) -> dict:
        return {"gem_header": dict(self._header_meta)} if self._header_meta else {}

    @property
    def has_cells(self) -> bool:
        """Whether the file has a cell-id column (cell-bin GEM)."""
        return "cell" in self._roles

    @property
    def size_hint(self) -> int | None:
        return max(int(uncompressed_size(self.path) / self._bytes_per_line) - self._header_line, 0)

    @property
    def var(self) -> pd.DataFrame:
        """Genes in first-seen order: index = unique names, column ``gene_ids`` (and ``gene_name``).

        Raises
        ------
        RuntimeError
            If :meth:`iter_records` has not been run to the end (the gene table is not final).
        """
        if not self._complete:
            raise RuntimeError(
                f"{self.path}: GEM genes are numbered while streaming; read .var after iter_records() has finished"
            )
        ids = list(self._gene_index)  # dict order = index order
        use_names = "name" in self._roles and self._var_names in ("auto", "gene_name")
        var = pd.DataFrame({"gene_ids": pd.Series(ids, dtype=object)})
        if "name" in self._roles:
            var["gene_name"] = pd.Series(self._gene_names, dtype=object)
        var.index = make_unique(self._gene_names if use_names else ids)
        return var

    # --- records --------------------------------------------------------------------------------
    def iter_records(self, chunk_size: int = 2_000_000) -> Iterator[RecordChunk]:
        """Stream the records in file order.

        Yields
        ------
        RecordChunk
            At most ``chunk_size`` records: x, y (n,) int64 DNB; gene (n,) int32 (index into
            :attr:`var`); count (n,) uint32 > 0; exon (n,) uint32 or None; cell (n,) int64 (0 = no
            cell) or None.

        Raises
        ------
        InputError
            Naming the file and line: missing or non-integer field, negative count, wrong number of
            fields, truncated gzip.
        """
        roles = self._roles
        columns = [TextColumn(roles["gene"], "str", required=True), TextColumn(roles["x"], "int"),
                   TextColumn(roles["y"], "int"), TextColumn(roles["count"], "int", check=_count_rule)]
        if "name" in roles:
            columns.append(TextColumn(roles["name"], "str"))
        if "exon" in roles:
            columns.append(TextColumn(roles["exon"], "int", check=_count_rule))
        if "cell" in roles:
            columns.append(TextColumn(roles["cell"], "int", check=_cell_rule))
        if not self._has_data:  # header only: Arrow cannot even skip to the (absent) first data line
            self._complete = True
            return
        block = block_size_for(chunk_size, self._bytes_per_line)
        for batch, first_line in stream_table(self.path, names=self._header, columns=columns,
                                              skip_lines=self._header_line, delimiter="\t", block_size=block):
            if batch.num_rows == 0:
                continue
            chunk = self._convert(batch, first_line)
            if chunk is None:
                continue
            for start in range(0, len(chunk), chunk_size):
                if start == 0 and len(chunk) <= chunk_size:
                    yield chunk
                else:
                    sl = slice(start, start + chunk_size)
                    yield RecordChunk(
                        x=chunk.x[sl], y=chunk.y[sl], gene=chunk.gene[sl], count=chunk.count[sl],
                        cell=None if chunk.cell is None else chunk.cell[sl],
                        exon=None if chunk.exon is None else chunk.exon[sl],
                    )
        self._complete = True

    def _convert(self, batch: pa.RecordBatch, first_line: int) -> RecordChunk | None:
        """Validate one parsed block (vectorised) and turn it into a RecordChunk (``None`` if empty)."""
        roles = self._roles
        gcol = batch.column(roles["gene"])
        codes = gcol.indices.to_numpy(zero_copy_only=False)
        dictionary = gcol.dictionary.to_pylist()
        x, x_null = int_column(batch, roles["x"])
        y, y_null = int_column(batch, roles["y"])
        count, c_null = int_column(batch, roles["count"])
        exon = exon_null = cell = cell_null = None
        if "exon" in roles:
            exon, exon_null = int_column(batch, roles["exon"])
        if "cell" in roles:
            cell, cell_null = int_column(batch, roles["cell"])

        # Empty lines arrive as rows with an empty gene and every number missing: skip them.
        empty_code = dictionary.index("") if "" in dictionary else -1
        gene_empty = codes == empty_code if empty_code >= 0 else None
        blank = None
        if gene_empty is not None and gene_empty.any():
            blank = gene_empty.copy()
            present = [x_null, y_null, c_null] + [m for r, m in (("exon", exon_null), ("cell", cell_null))
                                                  if r in roles]
            for nulls in present:
                if nulls is None:  # the column has no missing field, so no row of it is blank
                    blank[:] = False
                else:
                    blank &= nulls
            if "name" in roles and blank.any():
                ncol = batch.column(roles["name"])
                ndict = ncol.dictionary.to_pylist()
                if "" in ndict:
                    blank &= ncol.indices.to_numpy(zero_copy_only=False) == ndict.index("")
                else:
                    blank[:] = False
            if not blank.any():
                blank = None

        def real(mask: np.ndarray | None) -> np.ndarray | None:
            return mask if mask is None or blank is None else mask & ~blank

        names = {role: roles.get(role) for role in ("gene", "x", "y", "count", "exon", "cell")}
        bad = first_bad_line(first_line, [
            (real(gene_empty), f"{names['gene']} is empty"),
            (real(x_null), f"{names['x']} is empty or NaN"),
            (real(y_null), f"{names['y']} is empty or NaN"),
            (real(c_null), f"{names['count']} is empty or NaN"),
            (real(exon_null), f"{names['exon']} is empty or NaN"),
            (count < 0, names["count"]),
            (count > _UINT32_MAX, names["count"]),
            (None if exon is None else (exon < 0) | (exon > _UINT32_MAX), names["exon"]),
            (None if cell is None else cell < 0, names["cell"]),
        ])
        if bad is not None:
            line, message = bad
            if message in batch.schema.names:  # a value rule: the same words as the line-by-line check
                value = batch.column(message)[line - first_line].as_py()
                rule = _cell_rule if message == names["cell"] else _count_rule
                message = f"{message} {rule(value)}"
            raise InputError(f"{self.path}: line {line}: {message}")

        keep = count > 0  # zero-count rows carry nothing; blank lines have count 0 after fill
        if not keep.all():
            codes, x, y, count = codes[keep], x[keep], y[keep], count[keep]
            exon = None if exon is None else exon[keep]
            cell = None if cell is None else cell[keep]
        if len(codes) == 0:
            return None
        lut = self._assign_genes(batch, dictionary, codes, keep)
        return RecordChunk(
            x=x, y=y, gene=lut[codes], count=count.astype(np.uint32),
            cell=cell,  # empty CellID was filled with 0 = not in a cell
            exon=None if exon is None else exon.astype(np.uint32),
        )

    def _assign_genes(self, batch: pa.RecordBatch, dictionary: list[str], codes: np.ndarray,
                      keep: np.ndarray) -> np.ndarray:
        """Look-up table block-dictionary code -> global gene index; numbers genes seen for the first time."""
        used = np.bincount(codes, minlength=len(dictionary)) > 0
        lut = np.full(len(dictionary), -1, dtype=np.int32)
        new: list[int] = []
        for k in np.flatnonzero(used):
            idx = self._gene_index.get(dictionary[k])
            if idx is None:
                new.append(int(k))
            else:
                lut[k] = idx
        if new:
            if "name" in self._roles:
                # the geneName on each new gene's first kept row
                ncol = batch.column(self._roles["name"])
                name_codes = ncol.indices.to_numpy(zero_copy_only=False)
                if not keep.all():
                    name_codes = name_codes[keep]
                name_dict = ncol.dictionary.to_pylist()
                first_row = np.full(len(dictionary), len(codes), dtype=np.int64)
                np.minimum.at(first_row, codes, np.arange(len(codes), dtype=np.int64))
                names = [name_dict[name_codes[first_row[k]]] for k in new]
            else:
                names = [dictionary[k] for k in new]
            base = len(self._gene_index)
            for j, (k, name) in enumerate(zip(new, names)):
                self._gene_index[dictionary[k]] = base + j
                self._gene_names.append(name)
                lut[k] = base + j
        return lut
