"""Stereo-seq GEM writers: bin1 GEM of binned slices, cell-bin GEM of single-cell slices, big benchmark GEMs.

GEM layout (see ``specs/formats.md``): ``#`` comment lines, a header row, then one tab-separated row per
(gene, DNB) with a non-zero count::

    #FileFormat=GEMv0.1
    #SortedBy=None
    #BinSize=1
    #Omics=Transcriptomics
    #Stereo-seqChip=SYNTHETIC
    #OffsetX=0
    #OffsetY=0
    geneID  x  y  MIDCount  [ExonCount]  [CellID]

Rows are grouped by observation (bin or cell), the order a streaming generator produces. ``x`` and ``y``
are absolute DNB coordinates (offsets 0).
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..io.gem import GEM_ALIASES
from .dnb import DnbRecords, iter_dnb_records, split_bins
from .synthetic import synthetic_slice
from .textfmt import ByteSink, StringTable, format_rows


def gem_header(columns: list[str], chip: str = "SYNTHETIC") -> bytes:
    """Comment lines and the header row of a GEM file."""
    lines = [
        "#FileFormat=GEMv0.1",
        "#SortedBy=None",
        "#BinSize=1",
        "#Omics=Transcriptomics",
        f"#Stereo-seqChip={chip}",
        "#OffsetX=0",
        "#OffsetY=0",
        "\t".join(columns),
    ]
    return ("\n".join(lines) + "\n").encode()


def write_gem(
    slice_,
    path: str | Path,
    *,
    exon: bool = False,
    gene_name_column: bool = False,
    cell_bin: bool | None = None,
    max_records: int | None = None,
    compresslevel: int = 1,
) -> dict[str, Any]:
    """Write a Stereo-seq GEM (``.gem``, or gzip ``.gem.gz``) of a ``"stereo"`` or ``"cells"`` slice, streaming.

    * ``"stereo"``: a bin1 GEM. Each bin's counts are split over the DNBs of the bin
      (:func:`stdask.datasets.dnb.split_bins`). Guarantee: grouping the records by
      ``((x - x_min) // bin_size, (y - y_min) // bin_size)`` -- or by ``x // bin_size``, the origin being a
      multiple of ``bin_size`` -- and gene recovers every bin's counts exactly (every bin has >= 1 count),
      and bin ``(i, j)`` is observation ``j * n_cols + i``.
    * ``"cells"``: a cell-bin GEM with a ``CellID`` column (observation index + 1; 0 = background DNBs in
      no cell, ~4% extra molecules). Grouping records with ``CellID > 0`` by cell and gene recovers every
      cell's counts exactly (:func:`stdask.datasets.dnb.place_cells`).

    Parameters
    ----------
    slice_
        The :class:`~stdask.datasets.synthetic.SyntheticSlice`.
    path
        Output file; a ``.gz`` suffix compresses.
    exon
        Add an ``ExonCount`` column (binomial 80% of ``MIDCount``).
    gene_name_column
        Write ``geneID`` (the ``gene_ids``, e.g. ``SYNG0000042``) and ``geneName`` (symbol) columns instead
        of a single ``geneID`` column holding the symbol.
    cell_bin
        Write the ``CellID`` column (default: True for ``"cells"``; must be False for ``"stereo"``).
    max_records
        Stop after this many records (the last bin written may then be incomplete).
    compresslevel
        gzip level for ``.gz`` output (1 = fastest).

    Returns
    -------
    dict
        ``path``, ``n_records``, ``n_obs_written``, ``bytes`` (uncompressed), ``seconds``.
    """
    if cell_bin is None:
        cell_bin = slice_.layout == "cells"
    if cell_bin and slice_.layout != "cells":
        raise ValueError("cell_bin GEM needs the 'cells' layout")
    if max_records is not None and max_records < 0:
        raise ValueError(f"max_records must be >= 0, got {max_records}")
    t0 = time.perf_counter()
    var = slice_.var
    if gene_name_column:
        table = StringTable.from_strings([f"{gid}\t{sym}" for gid, sym in zip(var["gene_ids"], var.index)])
        roles = ["gene", "name"]
    else:
        table = StringTable.from_strings(list(var.index))
        roles = ["gene"]
    roles += ["x", "y", "count"] + (["exon"] if exon else []) + (["cell"] if cell_bin else [])
    columns = [GEM_ALIASES[role][0] for role in roles]  # the reader's preferred spellings
    n_records = 0
    n_obs = 0
    with ByteSink(path, compresslevel=compresslevel) as sink:
        sink.write(gem_header(columns))
        for _block, batch, rec in iter_dnb_records(slice_, exon=exon):
            if max_records is not None and n_records + len(rec) > max_records:
                rec = rec.take(max_records - n_records)
            sink.write(_format_records(rec, table, exon, cell_bin))
            n_records += len(rec)
            n_obs = batch.start + len(batch)
            if max_records is not None and n_records >= max_records:
                break
        written = sink.bytes_written
    return dict(path=str(path), n_records=n_records, n_obs_written=n_obs, bytes=written,
                seconds=time.perf_counter() - t0)


def _format_records(rec: DnbRecords, table: StringTable, exon: bool, cell_bin: bool) -> bytes:
    ints = [rec.x, rec.y, rec.count]
    if exon:
        ints.append(rec.exon)
    if cell_bin:
        ints.append(rec.cell)
    return format_rows(ints, strings=(rec.gene, table))


def write_bin1_gem(
    path: str | Path,
    n_records: int,
    *,
    n_genes: int = 2_000,
    seed: int = 0,
    bin_size: int = 50,
    exon: bool = False,
    compresslevel: int = 1,
    **slice_kwargs: Any,
) -> dict[str, Any]:
    """Write a bin1 GEM of exactly ``n_records`` records (ingest benchmarks), fast and in bounded memory.

    The file is the first ``n_records`` records of :meth:`write_gem` of a ``"stereo"`` slice sized so
    that it holds at least that many records (a pilot block estimates records per bin). The returned
    ``n_obs`` rebuilds that slice: ``synthetic_slice(n_obs=..., n_genes=..., layout="stereo", seed=...,
    bin_size=...)``; every bin but the last one written is complete.

    Parameters
    ----------
    path
        Output ``.gem`` or ``.gem.gz``.
    n_records
        Number of records (rows) to write, > 0.
    n_genes, seed, bin_size, slice_kwargs
        Passed to :func:`~stdask.datasets.synthetic.synthetic_slice`.
    exon
        Add an ``ExonCount`` column.
    compresslevel
        gzip level for ``.gz`` output.

    Returns
    -------
    dict
        As :func:`write_gem`, plus ``n_obs`` (bins of the slice), ``n_genes``, ``seed``, ``bin_size`` and
        ``records_per_second``.
    """
    if isinstance(n_records, bool) or not isinstance(n_records, (int, np.integer)) or n_records < 1:
        raise ValueError(f"n_records must be a positive integer, got {n_records!r}")
    kwargs = dict(n_genes=n_genes, layout="stereo", seed=seed, bin_size=bin_size, **slice_kwargs)
    pilot = synthetic_slice(n_obs=4096, **kwargs)
    batch = pilot.batch(0, min(pilot.block_size, pilot.n_obs))
    per_bin = len(split_bins(pilot, batch, 0)) / max(1, len(batch))
    # 10% head-room plus a block: record counts per bin vary little over a whole slice
    n_obs = int(math.ceil(1.1 * n_records / per_bin)) + pilot.block_size
    while True:
        slice_ = synthetic_slice(n_obs=n_obs, **kwargs)
        info = write_gem(slice_, path, exon=exon, max_records=int(n_records), compresslevel=compresslevel)
        if info["n_records"] == n_records:
            break
        n_obs = int(n_obs * 1.5)  # the estimate was short (tiny pilots): regenerate larger
    info.update(n_obs=n_obs, n_genes=n_genes, seed=seed, bin_size=bin_size,
                records_per_second=info["n_records"] / info["seconds"])
    return info
