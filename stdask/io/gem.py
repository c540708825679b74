"""Stereo-seq GEM reader, and the GEM field names (the GEM writer of :mod:`stdask.datasets.gem` uses them too).

A GEM file is tab-separated text (often gzipped), one row per (gene, DNB) with a non-zero count::

    #FileFormat=GEMv0.1
    #OffsetX=0
    geneID  geneName  x  y  MIDCount  ExonCount  CellID

The text is streamed in Arrow blocks by :func:`stdask.io.text.stream_table`, every check runs vectorised on
a whole block, and errors name the exact line and field.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
import pyarrow as pa

from stdask.io.base import COUNT_MAX, DNB_PITCH_UM, InputError, RecordChunk, Source, make_unique, register_source
from stdask.io.text import (
    TextColumn,
    block_size_for,
    first_bad_line,
    int_column,
    match_columns,
    stream_table,
    text_lines,
    uncompressed_size,
)

__all__ = ["GemSource", "GEM_ALIASES", "GEM_REQUIRED"]

#: Accepted header spellings of each role (first match wins; then matched case-insensitively); the first
#: spelling is the one GEM writers use.
GEM_ALIASES: dict[str, tuple[str, ...]] = {
    "gene": ("geneID", "geneId", "gene_id", "gene"),
    "name": ("geneName", "gene_name"),
    "x": ("x",),
    "y": ("y",),
    "count": ("MIDCount", "MIDCounts", "MIDcount", "UMICount", "UMICounts", "UMI_count"),
    "exon": ("ExonCount", "exonCount", "exon"),
    "cell": ("CellID", "cellID", "cell_id", "label"),
}
GEM_REQUIRED = ("gene", "x", "y", "count")


def _count_rule(value: int) -> str | None:
    if value < 0:
        return f"is negative ({value}); counts must be >= 0"
    if value > COUNT_MAX:
        return f"is {value}; counts above {COUNT_MAX} are not supported"
    return None


def _cell_rule(value: int) -> str | None:
    return f"is negative ({value}); cell ids must be >= 0 (0 = not in a cell)" if value < 0 else None


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
        with text_lines(self.path, "GEM text") as lines:
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
        roles = match_columns(header, GEM_ALIASES)
        for role in GEM_REQUIRED:
            if role not in roles:
                raise InputError(
                    f"{self.path}: line {self._header_line}: no {GEM_ALIASES[role][0]} column "
                    f"(accepted: {', '.join(GEM_ALIASES[role])}); columns found: {', '.join(header)}"
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
    def microns_per_unit(self) -> float:
        """The DNB pitch of a Stereo-seq chip (500 nm; a GEM does not record it)."""
        return DNB_PITCH_UM

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
            (count > COUNT_MAX, names["count"]),
            (None if exon is None else (exon < 0) | (exon > COUNT_MAX), names["exon"]),
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
