"""Shared machinery of the text formats (GEM, MTX, the 10x tables): reading plain or gzipped text, streaming
a delimited table through Arrow with exact line numbers, matching header spellings, and the errors that name
the file, the line and the field.

Parsing dominates ingest time, so :func:`stream_table` parses large blocks with Arrow's multithreaded CSV
reader and explicit column types, and every check runs vectorised on a whole block. Rows map one to one to
lines (no quoting, empty lines kept as all-null rows), so the line number of any row is the block's first
line plus the row's position. When Arrow itself rejects a block (a field that is not an integer, a wrong
number of fields) the block is re-read line by line in Python, which is slow but only runs on the way to an
error, to say which line and which field.
"""
from __future__ import annotations

import csv
import gzip
import re
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from stdask.io.base import InputError

__all__ = ["TextColumn", "stream_table", "text_lines", "check_text",
           "open_binary", "is_gzip", "gzip_error", "uncompressed_size",
           "block_size_for", "first_bad_line", "int_column", "float_column", "match_columns", "read_tsv_table",
           "first_duplicate", "rows_for_barcodes"]

_GZIP_MAGIC = b"\x1f\x8b"
#: Python-side gzip failures: a cut file ends without the end-of-stream marker (EOFError), damaged
#: deflate data (zlib.error), a bad header (BadGzipFile).
_GZIP_ERRORS = (EOFError, zlib.error, gzip.BadGzipFile)
#: Field spellings read as "missing" in numeric columns (then reported with their line number).
_NULL_VALUES = ["", "NA", "NaN", "nan", "NAN", "N/A", "n/a", "null", "NULL", "None"]
_INT_RE = re.compile(r"^\s*-?\d+\s*$")
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def is_gzip(path: Path) -> bool:
    """Whether ``path`` is gzip-compressed (by its magic bytes, not its name)."""
    with open(path, "rb") as fh:
        return fh.read(2) == _GZIP_MAGIC


#: leading bytes of files that are not text, and what to tell the user about each
_SIGNATURES = (
    (b"\x89HDF\r\n\x1a\n", "an HDF5 file", "an AnnData .h5ad is read with format='h5ad' (CLI: --format h5ad) and "
     "a Stereo-seq .gef with format='gef'; give the file its real suffix or pass the format"),
    (b"PK\x03\x04", "a zip archive", "unzip it and pass the file (or folder) inside"),
    (b"BZh", "a bzip2-compressed file", "decompress it (bunzip2) or recompress it with gzip"),
    (b"\xfd7zXZ\x00", "an xz-compressed file", "decompress it (unxz) or recompress it with gzip"),
    (b"\x28\xb5\x2f\xfd", "a zstd-compressed file", "decompress it (unzstd) or recompress it with gzip"),
)
_PEEK = 8192


def check_text(path: Path, what: str = "text") -> None:
    """Refuse a file that is not text (HDF5, zip, other compressions, binary data), by its leading bytes, with
    an :class:`InputError` that says what the file is. ``what`` names the text format expected (``"GEM"``).
    A gzip file is judged by its decompressed content."""
    try:
        with open_binary(path) as fh:
            head = fh.read(_PEEK)
    except _GZIP_ERRORS as exc:
        raise gzip_error(path, exc) from None
    gz = " (inside gzip)" if is_gzip(path) else ""
    for magic, kind, hint in _SIGNATURES:
        if head.startswith(magic):
            raise InputError(f"{path}: this is {kind}{gz}, not a {what} file; {hint}")
    nul = head.find(b"\x00")
    if nul >= 0:
        raise InputError(f"{path}: binary data{gz} (a NUL byte at offset {nul}), not a {what} file; "
                         "check the file and its format")


def open_binary(path: Path) -> BinaryIO:
    """Open a plain or gzipped file for binary reading (decompressed transparently)."""
    return gzip.open(path, "rb") if is_gzip(path) else open(path, "rb")  # type: ignore[return-value]


def gzip_error(path: Path, exc: BaseException) -> InputError:
    """The error for a gzip stream that cannot be decompressed to its end."""
    return InputError(f"{path}: truncated or corrupt gzip ({exc}); the file is incomplete or damaged, "
                      f"download or compress it again")


@contextmanager
def text_lines(path: Path, what: str = "text") -> Iterator[Iterator[str]]:
    """Iterate the decoded lines of a plain or gzipped file (newline stripped); gzip damage, or a file that is
    not text at all (:func:`check_text`; ``what`` names the format expected), -> InputError."""
    check_text(path, what)
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


def match_columns(header: Sequence[str], aliases: Mapping[str, Sequence[str]]) -> dict[str, str]:
    """Map roles to the header's spelling of them: for each role the first alias present as written, else the
    first present ignoring case. Roles with no match are left out (the caller says which are required).

    Parameters
    ----------
    header
        Column names as in the file.
    aliases
        Role -> accepted spellings, preferred first (e.g. ``{"count": ("MIDCount", "UMICount")}``).
    """
    found: dict[str, str] = {}
    lower = {str(h).lower(): h for h in header}
    for role, names in aliases.items():
        for alias in names:
            if alias in header:
                found[role] = alias
                break
        else:
            for alias in names:
                if alias.lower() in lower:
                    found[role] = lower[alias.lower()]
                    break
    return found


def read_tsv_table(path: Path, header: bool) -> pd.DataFrame:
    """A small tab-separated table (plain or gzipped) read as strings, nothing turned into NaN."""
    check_text(path, "tab-separated text")
    try:
        return pd.read_csv(
            path, sep="\t", header=0 if header else None, dtype=str, keep_default_na=False,
            na_filter=False, quoting=csv.QUOTE_NONE, compression="gzip" if is_gzip(path) else None,
        )
    except pd.errors.EmptyDataError:
        return pd.DataFrame()
    except pd.errors.ParserError as exc:
        raise InputError(f"{path}: {exc}") from None
    except (EOFError, OSError) as exc:
        raise gzip_error(path, exc) from None


def first_duplicate(index: pd.Index) -> Any:
    """The first value that occurs a second time in ``index``."""
    return index[index.duplicated()][0]


def rows_for_barcodes(table: pd.DataFrame, barcodes: pd.Index, path: Path, what: str) -> pd.DataFrame:
    """The rows of a per-barcode table (indexed by barcode) for the matrix ``barcodes``, in their order.

    Rows of other barcodes are dropped; a duplicated barcode, or a matrix barcode without a row, is an
    :class:`InputError` naming ``path`` and (``"no <what>"``) what the row gives.
    """
    if not table.index.is_unique:
        raise InputError(f"{path}: barcode {first_duplicate(table.index)!r} appears more than once")
    present = barcodes.isin(table.index)
    if not present.all():
        absent = barcodes[~present]
        raise InputError(f"{path}: {len(absent)} of {len(barcodes)} matrix barcodes have no {what}, "
                         f"e.g. {', '.join(map(repr, absent[:5]))}")
    return table.loc[barcodes]


def coordinate_columns(table: pd.DataFrame, columns: Sequence[str], names: Sequence[Any], path: Path,
                       first_line: int | None = None, unit: str = "um") -> np.ndarray:
    """The x and y columns of a per-observation table as (n, 2) float64.

    A value that is not a finite number is an :class:`InputError` naming the file, the line (``first_line`` = the
    file line of row 0) or row, the observation (``names[i]``) and both values.
    """
    coords = np.column_stack([pd.to_numeric(table[c], errors="coerce").to_numpy(np.float64) for c in columns])
    bad = ~np.isfinite(coords).all(1)
    if bad.any():
        i = int(np.argmax(bad))
        where = f"line {i + first_line}" if first_line is not None else f"row {i}"
        raise InputError(f"{path}: cell {names[i]!r} ({where}): {columns[0]}, {columns[1]} = "
                         f"{table[columns[0]].iloc[i]!r}, {table[columns[1]].iloc[i]!r}; expected numbers ({unit})")
    return coords
