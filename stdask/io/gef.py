"""Stereo-seq GEF (HDF5) readers: square-bin GEF (DNB records) and cell-bin GEF (cells x genes).

Real GEFs reach 7.7e8 bin1 records (48 GB): nothing here reads a whole ``expression`` / ``cellExp``
dataset. Records are read in contiguous row ranges that cover whole genes (square-bin, gene-major) or
whole cells (cell-bin, cell-major), each range holding about ``chunk_size`` rows.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Iterator

import h5py
import numpy as np
import pandas as pd

from stdask.io.base import (DNB_PITCH_UM, EntryChunk, InputError, RecordChunk, Source, TableSource, make_unique,
                             register_source)
from stdask.io.hdf5 import decode_strings, open_hdf5

__all__ = ["GefSource", "CellbinGefSource"]


def _plain(value: Any) -> Any:
    """An HDF5 attribute as an AnnData-writable Python value (bytes decoded, 1-element arrays unwrapped)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace").rstrip("\x00")
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "SO":
            value = np.array([_plain(v) for v in value.ravel()], dtype=object).reshape(value.shape)
            return value.item() if value.size == 1 else [str(v) for v in value.ravel()]
        return value.item() if value.size == 1 else value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _attrs(obj: h5py.HLObject) -> dict[str, Any]:
    return {k: _plain(v) for k, v in obj.attrs.items()}


def _file_attrs(f: h5py.File, dset: h5py.Dataset, prefix: str) -> dict[str, Any]:
    """The file's attributes, then those of its main dataset named ``<prefix>_<name>`` (``uns['gef_attrs']``)."""
    return {**_attrs(f), **{f"{prefix}_{k}": v for k, v in _attrs(dset).items()}}


def _has_cellbin(path: Path) -> tuple[bool, bool] | None:
    """(has ``cellBin``, has ``geneExp``) for an HDF5 file, ``None`` if it is not readable as one."""
    try:
        with h5py.File(path, "r") as f:
            return "cellBin" in f, "geneExp" in f
    except (OSError, ValueError):
        return None


def _gene_table(path: Path, dset: h5py.Dataset, name_fields: tuple[str, ...]) -> tuple[list[str], list[str] | None]:
    """Gene ids and (if the file has both) gene symbols from a GEF gene table.

    Newer GEFs store ``geneID`` and ``geneName``; older ones a single ``gene`` (or ``geneName``) field.
    """
    fields = dset.dtype.names or ()
    table = dset[()]  # the gene table is small (one row per gene)
    if "geneID" in fields and "geneName" in fields:
        return decode_strings(table["geneID"]), decode_strings(table["geneName"])
    for field in name_fields:
        if field in fields:
            return decode_strings(table[field]), None
    raise InputError(f"{path}: {dset.name} has no gene name field (fields: {', '.join(fields)})")


def _gene_var(ids: list[str], names: list[str] | None) -> pd.DataFrame:
    """var: index = unique symbols when known (scanpy's make_unique), else ids; ``gene_ids`` column."""
    var = pd.DataFrame({"gene_ids": pd.Series(ids, dtype=object)})
    if names is not None:
        var["gene_name"] = pd.Series(names, dtype=object)
    var.index = make_unique(names if names is not None else ids)
    return var


def _contiguous_groups(offset: np.ndarray, count: np.ndarray, n_rows: int, chunk_size: int,
                       path: Path, what: str) -> Iterator[tuple[int, int, int, int]]:
    """Split items (genes or cells) owning rows ``[offset, offset + count)`` into row ranges.

    Yields ``(first_item, stop_item, row_start, row_stop)`` for runs of consecutive items whose rows
    follow each other without gaps, each run holding at most ``chunk_size`` rows (an item larger than
    ``chunk_size`` is one run on its own). Validates that every range lies inside the dataset.
    """
    offset = offset.astype(np.int64)
    count = count.astype(np.int64)
    end = offset + count
    bad = np.flatnonzero((count < 0) | (offset < 0) | (end > n_rows))
    if len(bad):
        i = int(bad[0])
        raise InputError(f"{path}: {what} {i}: rows [{offset[i]}, {end[i]}) lie outside the "
                         f"{n_rows} rows of the expression dataset")
    n = len(offset)
    i = 0
    while i < n:
        j = i + 1
        rows = count[i]
        while j < n and offset[j] == end[j - 1] and rows + count[j] <= chunk_size:
            rows += count[j]
            j += 1
        yield i, j, int(offset[i]), int(end[j - 1])
        i = j


def _check_counts(values: np.ndarray, a: int, where: str) -> None:
    """Counts read as signed integers from rows ``a..`` of ``where`` must be >= 0."""
    if values.dtype.kind == "i" and (values < 0).any():
        k = int(np.argmax(values < 0))
        raise InputError(f"{where} row {a + k}: count is {values[k]}; counts must be >= 0")


class _GefFile:
    """What both GEF kinds share, read at open: DNB coordinates, the gene table, the file's attributes, and a
    main dataset whose rows belong to items (the genes of a square-bin GEF, the cells of a cell-bin one)."""

    path: Path
    _ids: list[str]
    _names: list[str] | None
    #: ``uns['gef_attrs']``
    _attrs: dict[str, Any]
    #: (n_items,) int64: item i owns rows ``_offset[i]:_offset[i] + _count[i]`` of the main dataset
    _offset: np.ndarray
    _count: np.ndarray
    #: rows of the main dataset
    _n_rows: int
    #: what an item is ("gene" or "cell"), as errors name it
    _item: ClassVar[str]

    @property
    def unit(self) -> str:
        return "DNB"

    @property
    def microns_per_unit(self) -> float:
        """The DNB pitch: the ``resolution`` attribute (nm) of the file or its main dataset, else 500 nm."""
        for key in ("resolution", "expression_resolution", "cellBin_resolution", "cell_resolution"):
            value = self._attrs.get(key)
            if isinstance(value, (int, float, np.integer, np.floating)) and np.isfinite(value) and value > 0:
                return float(value) / 1000.0
        return DNB_PITCH_UM

    @property
    def var(self) -> pd.DataFrame:
        return _gene_var(self._ids, self._names)

    @property
    def uns(self) -> dict:
        return {"gef_attrs": dict(self._attrs)}

    @property
    def size_hint(self) -> int | None:
        return self._n_rows

    def _check_items(self) -> None:
        """Fail at open, not half way through the stream, on an item table that points outside the data."""
        for _ in _contiguous_groups(self._offset, self._count, self._n_rows, self._n_rows or 1, self.path, self._item):
            pass

    def _row_blocks(self, chunk_size: int, dtype: type) -> Iterator[tuple[int, int, np.ndarray]]:
        """Blocks of at most ``chunk_size`` rows of the main dataset, with the item owning each row.

        Items are taken in order of their offset and grouped by :func:`_contiguous_groups`; an item larger
        than ``chunk_size`` is split over several blocks.

        Yields
        ------
        (a, b, owner)
            Rows ``a..b-1`` and the (b - a,) ``dtype`` item index of each.
        """
        order = np.argsort(self._offset, kind="stable")  # item-major files: offsets normally already sorted
        offset, count = self._offset[order], self._count[order]
        for i, j, start, stop in _contiguous_groups(offset, count, self._n_rows, chunk_size, self.path, self._item):
            owner_of_row = np.repeat(order[i:j].astype(dtype), count[i:j]) if j - i > 1 else None
            for a in range(start, stop, chunk_size):
                b = min(a + chunk_size, stop)
                yield a, b, (owner_of_row[a - start:b - start] if owner_of_row is not None
                             else np.full(b - a, order[i], dtype))


@register_source
class GefSource(_GefFile, Source):
    """Square-bin Stereo-seq GEF (``.gef``, ``.raw.gef``, ``.tissue.gef``): DNB records.

    Parameters
    ----------
    path
        The GEF file.
    bin_level
        Which ``geneExp/bin{N}`` group to read (default 1: single DNBs). For ``N > 1`` GEF stores
        bin indices (DNB coordinate // N, geftools' convention); they are multiplied by N so the
        records stay in DNB units (each record is then an N x N DNB square at its lower corner).

    Notes
    -----
    ``expression`` is read gene by gene (``gene`` table ``offset`` / ``count``), in ranges of about
    ``chunk_size`` rows. GEF attributes (file and ``expression``: ``minX``, ``minY``, ``resolution``
    ...) are kept in ``uns['gef_attrs']``. Exon counts come from ``geneExp/bin{N}/exon`` when present.
    """

    format_name = "gef"
    kind = "records"
    suffixes = (".gef",)
    _item = "gene"

    @classmethod
    def detect(cls, path: Path) -> bool:
        name = path.name.lower()
        if not name.endswith(".gef") or name.endswith(".cellbin.gef"):
            return False
        groups = _has_cellbin(path) if path.is_file() else None
        return groups is None or groups[1] or not groups[0]

    def __init__(self, path: str | Path, *, bin_level: int = 1) -> None:
        super().__init__(path, bin_level=bin_level)
        self.bin_level = int(bin_level)
        self._group = f"geneExp/bin{self.bin_level}"
        with open_hdf5(self.path, "GEF") as f:
            if "geneExp" not in f:
                hint = " (it is a cell-bin GEF: use format='cellbin-gef')" if "cellBin" in f else ""
                raise InputError(f"{self.path}: no geneExp group{hint}; top-level keys: {', '.join(f)}")
            if self._group not in f:
                raise InputError(f"{self.path}: no {self._group}; bins in the file: {', '.join(f['geneExp'])}")
            grp = f[self._group]
            for key in ("expression", "gene"):
                if key not in grp:
                    raise InputError(f"{self.path}: {self._group} has no {key!r} dataset")
            exp = grp["expression"]
            missing = {"x", "y", "count"} - set(exp.dtype.names or ())
            if missing:
                raise InputError(f"{self.path}: {exp.name} lacks field(s) {', '.join(sorted(missing))} "
                                 f"(fields: {', '.join(exp.dtype.names or ())})")
            self._n_rows = int(exp.shape[0])
            self._has_exon = "exon" in grp and grp["exon"].shape[0] == self._n_rows
            gene = grp["gene"]
            gfields = gene.dtype.names or ()
            if "offset" not in gfields or "count" not in gfields:
                raise InputError(f"{self.path}: {gene.name} lacks offset/count (fields: {', '.join(gfields)})")
            self._ids, self._names = _gene_table(self.path, gene, ("gene", "geneName", "geneID"))
            table = gene.fields(["offset", "count"])[()]
            self._offset = table["offset"].astype(np.int64)
            self._count = table["count"].astype(np.int64)
            self._attrs = dict(_file_attrs(f, exp, "expression"), bin_level=self.bin_level)
        self._check_items()

    def iter_records(self, chunk_size: int = 2_000_000) -> Iterator[RecordChunk]:
        """Stream records gene by gene.

        Yields
        ------
        RecordChunk
            x, y (n,) int64 DNB; gene (n,) int32 (row of :attr:`var`); count (n,) uint32 > 0;
            exon (n,) uint32 or None; cell None.
        """
        with h5py.File(self.path, "r") as f:
            grp = f[self._group]
            exp = grp["expression"]
            exon_ds = grp["exon"] if self._has_exon else None
            for a, b, gene in self._row_blocks(chunk_size, np.int32):
                rec = exp[a:b]
                cnt = rec["count"]
                _check_counts(cnt, a, f"{self.path}: {exp.name}")
                keep = cnt > 0
                x = rec["x"].astype(np.int64) * self.bin_level
                y = rec["y"].astype(np.int64) * self.bin_level
                exon = exon_ds[a:b].astype(np.uint32) if exon_ds is not None else None
                cnt = cnt.astype(np.uint32)
                if not keep.all():
                    x, y, gene, cnt = x[keep], y[keep], gene[keep], cnt[keep]
                    exon = None if exon is None else exon[keep]
                if len(x):
                    yield RecordChunk(x=x, y=y, gene=gene, count=cnt, exon=exon)


@register_source
class CellbinGefSource(_GefFile, TableSource):
    """Cell-bin Stereo-seq GEF (``.cellbin.gef``): segmented cells x genes.

    Parameters
    ----------
    path
        The cell-bin GEF file (group ``cellBin/``).
    cell_border
        Keep ``cellBin/cellBorder`` as ``obsm['cell_border']``: (n_cells, 32, 2) int16 DNB offsets
        from the centroid, padded with 32767 (default True; 128 bytes per cell).

    Notes
    -----
    ``obs`` comes from ``cellBin/cell`` (index = cell id as str; columns area, dnbCount, cellTypeID,
    clusterID, geneCount, expCount), coordinates are the cell centroids x, y in DNB, genes from
    ``cellBin/gene`` and counts from ``cellExp`` read by cell ranges (cell-major, CSR-like).
    """

    format_name = "cellbin-gef"
    kind = "obs"
    suffixes = (".cellbin.gef",)
    _item = "cell"

    _OBS_FIELDS = ("area", "dnbCount", "cellTypeID", "clusterID", "geneCount", "expCount")

    @classmethod
    def detect(cls, path: Path) -> bool:
        name = path.name.lower()
        if name.endswith(".cellbin.gef"):
            return True
        if name.endswith(".gef") and path.is_file():
            groups = _has_cellbin(path)
            return groups is not None and groups[0] and not groups[1]
        return False

    def __init__(self, path: str | Path, *, cell_border: bool = True) -> None:
        super().__init__(path, cell_border=cell_border)
        self._want_border = bool(cell_border)
        with open_hdf5(self.path, "GEF") as f:
            if "cellBin" not in f:
                raise InputError(f"{self.path}: no cellBin group (not a cell-bin GEF); top-level keys: "
                                 f"{', '.join(f)}")
            cb = f["cellBin"]
            for key in ("cell", "cellExp", "gene"):
                if key not in cb:
                    raise InputError(f"{self.path}: cellBin has no {key!r} dataset")
            cell = cb["cell"]
            cfields = cell.dtype.names or ()
            missing = {"id", "x", "y", "offset", "geneCount"} - set(cfields)
            if missing:
                raise InputError(f"{self.path}: {cell.name} lacks field(s) {', '.join(sorted(missing))} "
                                 f"(fields: {', '.join(cfields)})")
            efields = cb["cellExp"].dtype.names or ()
            if "geneID" not in efields or "count" not in efields:
                raise InputError(f"{self.path}: cellBin/cellExp lacks geneID/count (fields: {', '.join(efields)})")
            self._n_rows = int(cb["cellExp"].shape[0])
            self._ids, self._names = _gene_table(self.path, cb["gene"], ("geneName", "gene", "geneID"))
            # one row per cell: read whole (tens of bytes per cell), it becomes obs anyway
            table = cell[()]
            ids = table["id"]
            obs = pd.DataFrame(index=pd.Index(ids.astype(str), dtype=object, name=None))
            for name in self._OBS_FIELDS:
                if name in cfields:
                    obs[name] = table[name]
            if "cellTypeList" in cb and "cellTypeID" in cfields:
                types = decode_strings(np.asarray(cb["cellTypeList"][()]).ravel())
                tid = table["cellTypeID"].astype(np.int64)
                if len(types) and tid.min(initial=0) >= 0 and tid.max(initial=0) < len(types):
                    obs["cell_type"] = pd.Categorical(np.asarray(types, dtype=object)[tid])
            if not obs.index.is_unique:
                dup = obs.index[obs.index.duplicated()][0]
                raise InputError(f"{self.path}: cellBin/cell: cell id {dup} appears more than once")
            self._obs = obs
            self._coords = np.column_stack([table["x"], table["y"]]).astype(np.float64)
            self._offset = table["offset"].astype(np.int64)
            self._count = table["geneCount"].astype(np.int64)
            self._border = None
            if self._want_border and "cellBorder" in cb and cb["cellBorder"].shape[0] == len(obs):
                self._border = cb["cellBorder"][()]
            self._attrs = _file_attrs(f, cell, "cell")
        self._check_items()

    @property
    def obsm(self) -> dict[str, np.ndarray]:
        return {} if self._border is None else {"cell_border": self._border}

    def iter_entries(self, chunk_size: int = 2_000_000) -> Iterator[EntryChunk]:
        """Stream (cell, gene, count) entries by cell ranges.

        Yields
        ------
        EntryChunk
            row (n,) int64 (row of :attr:`obs`), gene (n,) int32, value (n,) uint32 > 0.
        """
        n_genes = len(self._ids)
        with h5py.File(self.path, "r") as f:
            exp = f["cellBin/cellExp"]
            for a, b, row in self._row_blocks(chunk_size, np.int64):
                rec = exp[a:b]
                gene = rec["geneID"].astype(np.int64)
                bad = (gene < 0) | (gene >= n_genes)
                if bad.any():
                    k = int(np.argmax(bad))
                    raise InputError(f"{self.path}: cellBin/cellExp row {a + k}: geneID {gene[k]} is out "
                                     f"of range (cellBin/gene has {n_genes} genes)")
                value = rec["count"]
                _check_counts(value, a, f"{self.path}: cellBin/cellExp")
                value = value.astype(np.uint32)
                keep = value > 0
                if not keep.all():
                    row, gene, value = row[keep], gene[keep], value[keep]
                if len(row):
                    yield EntryChunk(row=row, gene=gene.astype(np.int32), value=value)
