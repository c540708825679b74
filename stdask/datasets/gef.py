"""Stereo-seq GEF (HDF5) writers: square-bin GEF and cell-bin GEF, laid out as geftools writes them.

GEF stores expression gene-major (square bin) or cell-major plus gene-major (cell bin), while the
generator produces observations in order. The writers therefore spool records to a temporary file,
scatter them gene-major into a disk-backed array (:class:`.spool.GeneMajorSpool`) and copy that into HDF5 in
slices: memory stays bounded by a chunk, disk holds a few copies of the records.

Square-bin GEF (:func:`write_gef`)
----------------------------------
``geneExp/bin{N}/expression``
    compound ``{x: int32, y: int32, count}`` per (gene, bin), gene-major, sorted by (x, y) within a gene;
    ``count`` is uint8, uint16 or uint32, the smallest that holds ``maxExp`` (geftools' rule). ``x, y`` are
    bin coordinates ``x_dnb // N`` (bin 1: DNB coordinates). Attrs ``minX, minY, maxX, maxY`` (int32,
    bin coordinates), ``maxExp`` (uint32), ``resolution`` (uint32, 500 nm).
``geneExp/bin{N}/gene``
    ``{gene: S64 (symbol), offset: uint32, count: uint32}``: gene ``i`` owns ``expression[offset:offset+count]``.
``geneExp/bin{N}/exon``
    exon counts parallel to ``expression`` (when ``exon=True``), attr ``maxExon``.
``wholeExp/bin{N}``
    dense ``(lenX, lenY)`` grid of ``{MIDcount, genecount: uint16}`` indexed ``[x - minX, y - minY]``,
    written when it has at most ``max_grid`` cells; attrs ``minX, lenX, minY, lenY`` (DNB), ``maxMID``,
    ``maxGene``, ``number``, ``resolution``.
``stat/gene``
    ``{gene: S64, MIDcount: uint32, E10: float32}``; E10 = percentage of a gene's MIDs in its top 10% bins,
    computed at bin 100 when written, else at the largest bin written.
file attrs
    ``version`` (uint32), ``geftool_ver`` (3 x uint32), ``omics``, ``bin_type`` = ``"Bin"``, ``sn`` (S32),
    ``gef_area`` (float32, mm^2 of DNBs holding expression).

Cell-bin GEF (:func:`write_cellbin_gef`), group ``cellBin/``
------------------------------------------------------------
``cell``
    ``{id: uint32, x: int32, y: int32, offset: uint32, geneCount: uint16, expCount: uint16, dnbCount: uint16,
    area: uint16, cellTypeID: uint16, clusterID: uint16}``; ``id`` = row position; cells sorted by 256 x 256
    DNB block (``x // 256 + (y // 256) * blockSize[2]``), ``x, y`` the centre DNB; ``area`` footprint DNBs,
    ``dnbCount`` DNBs with a record, ``cellTypeID`` index into ``cellTypeList``, ``clusterID`` domain index.
``cellExp``
    ``{geneID: uint32, count: uint16}`` cell-major: cell ``i`` owns ``cellExp[offset:offset+geneCount]``.
``gene``
    ``{geneName: S64, offset: uint32, cellCount: uint32, expCount: uint32, maxMIDcount: uint16}``.
``geneExp``
    ``{cellID: uint32, count: uint16}`` gene-major: gene ``j`` owns ``geneExp[offset:offset+cellCount]``.
``cellBorder``
    ``(n_cells, 32, 2)`` int16 polygon offsets from the centre (32767 = padding).
``blockIndex``, ``blockSize``
    uint32 ``(n_blocks + 1)`` start of each block's cells; ``[256, 256, x_blocks, y_blocks]``.
``cellTypeList``
    S32 cell-type names.
file attrs
    ``version``, ``resolution`` (500), ``offsetX``, ``offsetY`` (0: coordinates are absolute),
    ``geftool_ver``, ``omics``, ``bin_type`` = ``"CellBin"``.
"""
from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import h5py
import numpy as np

from .batch import ObsBatch
from .dnb import cell_footprints, iter_dnb_records, place_cells
from .layouts import DNB_PITCH_UM
from .spool import SLICE, GeneMajorSpool, gene_groups

GEF_VERSION = 4
CELLBIN_GEF_VERSION = 2
GEFTOOL_VERSION = (0, 7, 17)
RESOLUTION_NM = 500
#: side of a cell-bin GEF spatial block, DNB
CELL_BLOCK = 256


def _str_attr(obj, name: str, value: str, width: int = 32) -> None:
    obj.attrs.create(name, np.array([value.encode()], dtype=f"S{width}"))


def _u32_attr(obj, name: str, value) -> None:
    obj.attrs.create(name, np.atleast_1d(np.asarray(value, dtype=np.uint32)))


def _i32_attr(obj, name: str, value) -> None:
    obj.attrs.create(name, np.array([value], dtype=np.int32))


def _f32_attr(obj, name: str, value) -> None:
    obj.attrs.create(name, np.array([value], dtype=np.float32))


def _count_dtype(max_value: int) -> np.dtype:
    """geftools' choice: the smallest unsigned type holding ``max_value``."""
    if max_value > np.iinfo(np.uint16).max:
        return np.dtype("<u4")
    if max_value > np.iinfo(np.uint8).max:
        return np.dtype("<u2")
    return np.dtype("<u1")


_RAW = np.dtype([("x", "<i8"), ("y", "<i8"), ("count", "<u4"), ("exon", "<u4")])


def _aggregate(gene, x, y, count, exon):
    """Sum records sharing (gene, x, y)."""
    if len(gene) == 0:
        return gene, x, y, count, exon
    order = np.lexsort((y, x, gene))
    gene, x, y, count, exon = gene[order], x[order], y[order], count[order], exon[order]
    new = np.ones(len(gene), dtype=bool)
    new[1:] = (gene[1:] != gene[:-1]) | (x[1:] != x[:-1]) | (y[1:] != y[:-1])
    starts = np.flatnonzero(new)
    return (gene[starts], x[starts], y[starts], np.add.reduceat(count.astype(np.int64), starts),
            np.add.reduceat(exon.astype(np.int64), starts))


def write_gef(
    slice_,
    path: str | Path,
    *,
    bins: tuple[int, ...] | None = None,
    exon: bool = False,
    max_grid: int = 1 << 25,
    sn: str = "SYNTHETIC",
) -> dict[str, Any]:
    """Write a square-bin Stereo-seq GEF (see the module docstring for the layout).

    Records come from :func:`stdask.datasets.dnb.iter_dnb_records`, so ``geneExp/bin1`` holds exactly the
    records of :func:`stdask.datasets.gem.write_gem` (background DNBs included for ``"cells"``).

    Parameters
    ----------
    slice_
        A ``"stereo"`` or ``"cells"`` :class:`~stdask.datasets.synthetic.SyntheticSlice`.
    path
        Output ``.gef``.
    bins
        Bin sizes to write (default: 1 and the slice's ``bin_size`` for ``"stereo"``, 1 and 20 for ``"cells"``).
    exon
        Write ``geneExp/bin{N}/exon``.
    max_grid
        Largest ``wholeExp/bin{N}`` grid written (cells); larger grids are skipped.
    sn
        Chip serial number attribute.

    Returns
    -------
    dict
        ``path``, ``records`` (bin -> number of records), ``seconds``.
    """
    t0 = time.perf_counter()
    if bins is None:
        bins = (1, slice_.params.bin_size) if slice_.layout == "stereo" else (1, 20)
    bins = tuple(sorted({int(b) for b in bins}))
    if not bins or bins[0] < 1:
        raise ValueError(f"bins must be positive integers, got {bins!r}")
    G = slice_.n_genes
    names = slice_.var.index.to_numpy(str)
    out: dict[int, int] = {}
    with tempfile.TemporaryDirectory(dir=Path(path).parent) as tmp, h5py.File(path, "w") as f:
        tmpdir = Path(tmp)
        # this module's SLICE sets every slice size of the writers (one knob, rebound by tests)
        spools = {n: GeneMajorSpool(tmpdir, G, _RAW, f"bin{n}", SLICE) for n in bins}
        lo = {n: [np.iinfo(np.int64).max] * 2 for n in bins}
        hi = {n: [np.iinfo(np.int64).min] * 2 for n in bins}
        occupied = 0
        for _block, _batch, rec in iter_dnb_records(slice_, exon=exon):
            occupied += len(np.unique(rec.x * (1 << 32) + rec.y))
            ex = rec.exon if exon else np.zeros(len(rec), dtype=np.uint32)
            for n in bins:
                gene, x, y, count, e = _aggregate(rec.gene, rec.x // n, rec.y // n, rec.count, ex)
                raw = np.empty(len(gene), dtype=_RAW)
                raw["x"], raw["y"], raw["count"], raw["exon"] = x, y, count, e
                spools[n].append(gene, raw)
                if len(gene):
                    lo[n] = [min(lo[n][0], int(x.min())), min(lo[n][1], int(y.min()))]
                    hi[n] = [max(hi[n][0], int(x.max())), max(hi[n][1], int(y.max()))]

        _u32_attr(f, "version", GEF_VERSION)
        _u32_attr(f, "geftool_ver", GEFTOOL_VERSION)
        _str_attr(f, "omics", "Transcriptomics")
        _str_attr(f, "bin_type", "Bin")
        _str_attr(f, "sn", sn)
        # every DNB belongs to one observation's bin, footprint or ring, so per-block counts add up
        _f32_attr(f, "gef_area", occupied * (DNB_PITCH_UM * 1e-3) ** 2)
        stat_bin = 100 if 100 in bins else bins[-1]
        stat = None
        for n in bins:
            offsets, major = spools[n].finish()
            grid_shape = (hi[n][0] - lo[n][0] + 1, hi[n][1] - lo[n][1] + 1) if spools[n].total else (0, 0)
            grid = None
            if 0 < grid_shape[0] * grid_shape[1] <= max_grid:
                grid = (np.zeros(grid_shape, np.int64), np.zeros(grid_shape, np.int64))
            out[n], stat_n = _write_bin(f, n, offsets, major, names, lo[n], hi[n], exon, grid, tmpdir)
            if n == stat_bin:
                stat = stat_n
            if grid is not None:
                _write_whole_exp(f, n, grid, lo[n])
            del major
        st = f.create_group("stat")
        stat_dtype = np.dtype([("gene", "S64"), ("MIDcount", "<u4"), ("E10", "<f4")])
        table = np.zeros(G, dtype=stat_dtype)
        table["gene"] = np.char.encode(names.astype(str))
        table["MIDcount"], table["E10"] = stat
        ds = st.create_dataset("gene", data=table)
        _f32_attr(ds, "minE10", float(table["E10"].min()) if G else 0.0)
        _f32_attr(ds, "maxE10", float(table["E10"].max()) if G else 0.0)
        _f32_attr(ds, "cutoff", 0.1)
    return dict(path=str(path), records=out, seconds=time.perf_counter() - t0)


def _write_bin(f, n, offsets, major, names, lo, hi, exon, grid, tmpdir):
    """Merge duplicates per gene, then write geneExp/bin{n}; returns (n_records, (MIDcount, E10) per gene)."""
    G = len(names)
    merged = np.memmap(tmpdir / f"bin{n}.merged", dtype=_RAW, mode="w+", shape=(max(1, len(major)),))
    gene_off = np.zeros(G + 1, dtype=np.int64)
    mid = np.zeros(G, dtype=np.int64)
    e10 = np.zeros(G, dtype=np.float64)
    m = 0
    max_exp = max_exon = 0
    for g0, g1 in gene_groups(offsets, SLICE):
        part = np.asarray(major[offsets[g0]:offsets[g1]])
        gene = np.repeat(np.arange(g0, g1, dtype=np.int64), np.diff(offsets[g0:g1 + 1]))
        gene, x, y, count, e = _aggregate(gene, part["x"], part["y"], part["count"], part["exon"])
        k = len(gene)
        merged[m:m + k]["x"], merged[m:m + k]["y"] = x, y
        merged[m:m + k]["count"], merged[m:m + k]["exon"] = count, e
        per_gene = np.bincount(gene - g0, minlength=g1 - g0)
        gene_off[g0 + 1:g1 + 1] = m + np.cumsum(per_gene)
        mid[g0:g1] = np.bincount(gene - g0, weights=count, minlength=g1 - g0).astype(np.int64)
        if k:
            max_exp = max(max_exp, int(count.max()))
            max_exon = max(max_exon, int(e.max()))
            # E10: share of a gene's MIDs in its top 10% bins (int(0.1 * n_bins) of them, as geftools)
            order = np.lexsort((-count, gene))
            c_sorted = count[order].astype(np.int64)
            starts = gene_off[g0:g1] - m
            rank = np.arange(k) - np.repeat(starts, per_gene)
            top = rank < np.repeat((per_gene * 0.1).astype(np.int64), per_gene)
            top_sum = np.bincount(gene[order][top] - g0, weights=c_sorted[top], minlength=g1 - g0)
            with np.errstate(invalid="ignore", divide="ignore"):
                e10[g0:g1] = np.where(mid[g0:g1] > 0, top_sum / np.maximum(mid[g0:g1], 1) * 100.0, 0.0)
            if grid is not None:
                shape = grid[0].shape
                flat = (x - lo[0]) * shape[1] + (y - lo[1])
                np.add.at(grid[0].reshape(-1), flat, count)
                np.add.at(grid[1].reshape(-1), flat, 1)
        m += k
    total = m
    if total >= 2 ** 32:
        raise ValueError(f"bin{n}: {total} records exceed GEF's uint32 offsets")
    grp = f.require_group("geneExp").create_group(f"bin{n}")
    exp_dtype = np.dtype([("x", "<i4"), ("y", "<i4"), ("count", _count_dtype(max_exp))])
    ds = grp.create_dataset("expression", shape=(total,), dtype=exp_dtype,
                            chunks=(min(max(total, 1), 1 << 18),) if total else None, compression="gzip",
                            compression_opts=4) if total else grp.create_dataset("expression", shape=(0,),
                                                                                    dtype=exp_dtype)
    exon_ds = grp.create_dataset("exon", shape=(total,), dtype=_count_dtype(max_exon)) if exon else None
    for a in range(0, total, SLICE):
        b = min(total, a + SLICE)
        buf = np.empty(b - a, dtype=exp_dtype)
        src = merged[a:b]
        buf["x"], buf["y"], buf["count"] = src["x"], src["y"], src["count"]
        ds[a:b] = buf
        if exon_ds is not None:
            exon_ds[a:b] = src["exon"].astype(exon_ds.dtype)
    _i32_attr(ds, "minX", lo[0] if total else 0)
    _i32_attr(ds, "minY", lo[1] if total else 0)
    _i32_attr(ds, "maxX", hi[0] if total else 0)
    _i32_attr(ds, "maxY", hi[1] if total else 0)
    _u32_attr(ds, "maxExp", max_exp)
    _u32_attr(ds, "resolution", RESOLUTION_NM)
    if exon_ds is not None:
        _i32_attr(exon_ds, "maxExon", max_exon)
    gene_dtype = np.dtype([("gene", "S64"), ("offset", "<u4"), ("count", "<u4")])
    genes = np.zeros(G, dtype=gene_dtype)
    genes["gene"] = np.char.encode(names.astype(str))
    genes["offset"] = gene_off[:-1]
    genes["count"] = np.diff(gene_off)
    grp.create_dataset("gene", data=genes)
    del merged
    return total, (mid, e10.astype(np.float32))


def _write_whole_exp(f, n, grid, lo) -> None:
    mid, genes = grid
    max_mid = int(mid.max()) if mid.size else 0
    mid_type = np.dtype("<u2") if n == 1 else _count_dtype(max_mid)
    dtype = np.dtype([("MIDcount", mid_type), ("genecount", "<u2")])
    data = np.zeros(mid.shape, dtype=dtype)
    data["MIDcount"], data["genecount"] = mid, genes
    ds = f.require_group("wholeExp").create_dataset(f"bin{n}", data=data, compression="gzip", compression_opts=4)
    _i32_attr(ds, "minX", lo[0] * n)
    _i32_attr(ds, "lenX", mid.shape[0] * n)
    _i32_attr(ds, "minY", lo[1] * n)
    _i32_attr(ds, "lenY", mid.shape[1] * n)
    _u32_attr(ds, "maxMID", max_mid)
    _u32_attr(ds, "maxGene", int(genes.max()) if genes.size else 0)
    ds.attrs.create("number", np.array([int((genes > 0).sum())], dtype=np.uint64))
    _u32_attr(ds, "resolution", RESOLUTION_NM)


# ---------------------------------------------------------------------------------------------- cell bin
_CELL_DTYPE = np.dtype([
    ("id", "<u4"), ("x", "<i4"), ("y", "<i4"), ("offset", "<u4"), ("geneCount", "<u2"), ("expCount", "<u2"),
    ("dnbCount", "<u2"), ("area", "<u2"), ("cellTypeID", "<u2"), ("clusterID", "<u2"),
])
_CELL_EXP_DTYPE = np.dtype([("geneID", "<u4"), ("count", "<u2")])
_GENE_EXP_DTYPE = np.dtype([("cellID", "<u4"), ("count", "<u2")])
_CB_GENE_DTYPE = np.dtype([("geneName", "S64"), ("offset", "<u4"), ("cellCount", "<u4"), ("expCount", "<u4"),
                           ("maxMIDcount", "<u2")])
_U16_MAX = np.iinfo(np.uint16).max


class _CellBlocks:
    """Per-random-block cell data (counts, footprints, DNB counts), a few blocks cached."""

    def __init__(self, slice_):
        self.slice = slice_
        self.cache: dict[int, dict[str, np.ndarray]] = {}

    def block(self, b: int) -> dict[str, Any]:
        if b not in self.cache:
            if len(self.cache) >= 4:
                self.cache.pop(next(iter(self.cache)))
            s = self.slice
            start = b * s.block_size
            batch = s.batch(start, min(start + s.block_size, s.n_obs))
            fp = cell_footprints(s, batch)
            rec = place_cells(s, batch, b, footprints=fp)
            inside = rec.obs >= 0
            # DNBs holding at least one record of the cell
            key = np.unique(rec.obs[inside] * (1 << 40) + rec.x[inside] * (1 << 20) + rec.y[inside])
            dnb_count = np.bincount(key // (1 << 40) - batch.start, minlength=len(batch))
            self.cache[b] = dict(batch=batch, fp=fp, dnb_count=dnb_count)
        return self.cache[b]

    def rows(self, start: int, stop: int) -> dict[str, Any]:
        """Cells ``start .. stop-1``: batch, centre, area, dnbCount, border."""
        s = self.slice
        parts = []
        for b in range(start // s.block_size, (stop - 1) // s.block_size + 1):
            blk = self.block(b)
            b0 = blk["batch"].start
            lo, hi = max(start, b0) - b0, min(stop, b0 + len(blk["batch"])) - b0
            fp = blk["fp"]
            parts.append(dict(
                batch=blk["batch"].take(lo, hi), cx=fp.centre_x[lo:hi], cy=fp.centre_y[lo:hi],
                area=fp.area[lo:hi], dnb=blk["dnb_count"][lo:hi], border=fp.border[lo:hi],
            ))
        return dict(
            batch=ObsBatch.concat([p["batch"] for p in parts]),
            cx=np.concatenate([p["cx"] for p in parts]), cy=np.concatenate([p["cy"] for p in parts]),
            area=np.concatenate([p["area"] for p in parts]), dnb=np.concatenate([p["dnb"] for p in parts]),
            border=np.concatenate([p["border"] for p in parts]),
        )


def _append(ds, data: np.ndarray) -> None:
    n = ds.shape[0]
    ds.resize((n + len(data),))
    ds[n:] = data


def _cells_by_band(slice_, n_bands: int) -> Iterator[tuple[int, dict[str, Any], np.ndarray, np.ndarray, np.ndarray]]:
    """Each band of 256-DNB block rows with cells: (band, rows, gx, gy, sel); ``rows`` as
    :meth:`_CellBlocks.rows` of the lattice rows that can reach the band, ``gx, gy`` their centre DNBs and
    ``sel`` the positions of the band's cells, sorted by block column."""
    geo = slice_.geometry
    blocks = _CellBlocks(slice_)
    band_um = CELL_BLOCK * DNB_PITCH_UM
    for band in range(n_bands):
        # lattice rows whose jittered centres can fall in this band (plus one row of margin)
        r_lo = max(0, int(math.floor((band * band_um - geo.jitter - geo.y0) / geo.step_y)) - 1)
        r_hi = min(geo.n_rows - 1, int(math.ceil(((band + 1) * band_um + geo.jitter - geo.y0) / geo.step_y)) + 1)
        start, stop = r_lo * geo.n_cols, min(slice_.n_obs, (r_hi + 1) * geo.n_cols)
        if start >= stop:
            continue
        rows = blocks.rows(start, stop)
        gx = np.floor(rows["cx"]).astype(np.int64)
        gy = np.floor(rows["cy"]).astype(np.int64)
        sel = np.flatnonzero(gy // CELL_BLOCK == band)
        if sel.size:
            yield band, rows, gx, gy, sel[np.argsort(gx[sel] // CELL_BLOCK, kind="stable")]


class _CellTables:
    """The cell-major part of ``cellBin`` (``cell``, ``cellExp``, ``cellBorder``), filled band by band; the
    gene-major records go to ``spool``. Keeps the totals the block index and the attributes need."""

    def __init__(self, grp, n_obs: int, spool: GeneMajorSpool):
        self.cell = grp.create_dataset("cell", shape=(0,), maxshape=(None,), dtype=_CELL_DTYPE, chunks=(1 << 14,))
        self.exp = grp.create_dataset("cellExp", shape=(0,), maxshape=(None,), dtype=_CELL_EXP_DTYPE,
                                      chunks=(1 << 16,), compression="gzip", compression_opts=4)
        self.border = grp.create_dataset("cellBorder", shape=(n_obs, 32, 2), dtype=np.int16,
                                         chunks=(min(n_obs, 1 << 12), 32, 2))
        self.spool = spool
        self.n_cells = self.n_exp = self.max_count = self.x_max = 0
        self.block_counts: dict[tuple[int, int], int] = {}  # (block row, block column) -> cells

    def add_band(self, band: int, rows: dict[str, Any], gx: np.ndarray, gy: np.ndarray, sel: np.ndarray) -> None:
        """Append the cells ``sel`` of ``rows`` (one band, in block-column order) to every table."""
        batch = rows["batch"]
        counts = batch.counts[sel]
        k = len(sel)
        ids = np.arange(self.n_cells, self.n_cells + k, dtype=np.int64)
        gene_count = np.diff(counts.indptr)
        exp_count = np.asarray(counts.sum(axis=1)).ravel()
        too_big = [name for name, v in (("expCount", exp_count), ("area", rows["area"][sel]),
                                        ("dnbCount", rows["dnb"][sel])) if v.max() > _U16_MAX]
        if too_big or (counts.data.size and counts.data.max() > _U16_MAX):
            raise ValueError(f"cell-bin GEF stores {too_big or ['count']} as uint16; a cell exceeds 65535")
        cell = np.zeros(k, dtype=_CELL_DTYPE)
        cell["id"], cell["x"], cell["y"] = ids, gx[sel], gy[sel]
        cell["offset"] = self.n_exp + counts.indptr[:-1]
        cell["geneCount"], cell["expCount"] = gene_count, exp_count
        cell["dnbCount"], cell["area"] = rows["dnb"][sel], rows["area"][sel]
        cell["cellTypeID"], cell["clusterID"] = batch.cell_type[sel], batch.domain[sel]
        _append(self.cell, cell)
        cexp = np.zeros(counts.nnz, dtype=_CELL_EXP_DTYPE)
        cexp["geneID"], cexp["count"] = counts.indices, counts.data
        _append(self.exp, cexp)
        self.border[self.n_cells:self.n_cells + k] = rows["border"][sel]
        gexp = np.zeros(counts.nnz, dtype=_GENE_EXP_DTYPE)
        gexp["cellID"] = np.repeat(ids, gene_count)
        gexp["count"] = counts.data
        self.spool.append(counts.indices.astype(np.int64), gexp)
        for blk_x, c in zip(*np.unique(gx[sel] // CELL_BLOCK, return_counts=True)):
            self.block_counts[(band, int(blk_x))] = int(c)
        self.x_max = max(self.x_max, int(gx[sel].max()))
        self.max_count = max(self.max_count, int(counts.data.max()) if counts.nnz else 0)
        self.n_cells += k
        self.n_exp += counts.nnz

    def write_block_index(self, grp, n_bands: int) -> None:
        """``blockIndex`` (start of each block's cells, blocks row-major) and ``blockSize``."""
        x_blocks, y_blocks = self.x_max // CELL_BLOCK + 1, n_bands
        per_block = np.zeros(x_blocks * y_blocks, dtype=np.int64)
        for (by, bx), c in self.block_counts.items():
            per_block[by * x_blocks + bx] = c
        block_index = np.zeros(len(per_block) + 1, dtype=np.uint32)
        np.cumsum(per_block, out=block_index[1:], dtype=np.uint32)
        grp.create_dataset("blockIndex", data=block_index)
        grp.create_dataset("blockSize", data=np.array([CELL_BLOCK, CELL_BLOCK, x_blocks, y_blocks], dtype=np.uint32))


def _write_gene_major(grp, spool: GeneMajorSpool, names: np.ndarray):
    """``geneExp`` from the spool, then ``gene``; returns both datasets and the per-gene expression totals
    and cell counts."""
    G = len(names)
    offsets, major = spool.finish()
    gexp_ds = grp.create_dataset("geneExp", shape=(spool.total,), dtype=_GENE_EXP_DTYPE,
                                 chunks=(min(spool.total, 1 << 16),) if spool.total else None,
                                 compression="gzip" if spool.total else None)
    genes = np.zeros(G, dtype=_CB_GENE_DTYPE)
    genes["geneName"] = np.char.encode(names.astype(str))
    genes["offset"] = offsets[:-1]
    genes["cellCount"] = np.diff(offsets)
    exp_total = np.zeros(G, dtype=np.int64)
    max_mid = np.zeros(G, dtype=np.int64)
    for g0, g1 in gene_groups(offsets, SLICE):
        part = np.asarray(major[offsets[g0]:offsets[g1]])
        gexp_ds[offsets[g0]:offsets[g1]] = part
        owner = np.repeat(np.arange(g1 - g0), np.diff(offsets[g0:g1 + 1]))
        exp_total[g0:g1] = np.bincount(owner, weights=part["count"], minlength=g1 - g0)
        if len(part):
            np.maximum.at(max_mid[g0:g1], owner, part["count"].astype(np.int64))
    genes["expCount"], genes["maxMIDcount"] = exp_total, max_mid
    gene_ds = grp.create_dataset("gene", data=genes)
    del major
    return gexp_ds, gene_ds, exp_total, np.diff(offsets)


def _write_cellbin_attrs(f, sn: str, tables: _CellTables, gexp_ds, gene_ds, exp_total: np.ndarray,
                         cell_count: np.ndarray) -> None:
    """File attributes and the summary attributes of ``cell``, ``cellExp``, ``geneExp`` and ``gene``."""
    _u32_attr(f, "version", CELLBIN_GEF_VERSION)
    _u32_attr(f, "resolution", RESOLUTION_NM)
    _i32_attr(f, "offsetX", 0)
    _i32_attr(f, "offsetY", 0)
    _u32_attr(f, "geftool_ver", GEFTOOL_VERSION)
    _str_attr(f, "omics", "Transcriptomics")
    _str_attr(f, "bin_type", "CellBin")
    _str_attr(f, "sn", sn)
    cell_ds = tables.cell
    cells = cell_ds[:]  # n_cells x 28 bytes: the summary attributes need whole columns
    for field, label in (("geneCount", "GeneCount"), ("expCount", "ExpCount"), ("dnbCount", "DnbCount"),
                         ("area", "Area")):
        col = cells[field]
        _f32_attr(cell_ds, f"average{label}", float(col.mean()))
        _f32_attr(cell_ds, f"median{label}", float(np.median(col)))
        cell_ds.attrs.create(f"min{label}", np.array([col.min()], dtype=np.uint16))
        cell_ds.attrs.create(f"max{label}", np.array([col.max()], dtype=np.uint16))
    for field in ("x", "y"):
        _i32_attr(cell_ds, f"min{field.upper()}", int(cells[field].min()))
        _i32_attr(cell_ds, f"max{field.upper()}", int(cells[field].max()))
    tables.exp.attrs.create("maxCount", np.array([tables.max_count], dtype=np.uint16))
    gexp_ds.attrs.create("maxCount", np.array([tables.max_count], dtype=np.uint16))
    for name, values in (("ExpCount", exp_total), ("CellCount", cell_count)):
        _u32_attr(gene_ds, f"min{name}", int(values.min()))
        _u32_attr(gene_ds, f"max{name}", int(values.max()))


def write_cellbin_gef(slice_, path: str | Path, *, sn: str = "SYNTHETIC") -> dict[str, Any]:
    """Write a cell-bin Stereo-seq GEF of a ``"cells"`` slice (see the module docstring for the layout).

    Cells are emitted in 256-DNB block order, one band of block rows at a time (a band spans ~15 lattice
    rows, so memory holds a band). Cell ``id`` (its row in ``cell``) is therefore not the observation
    index; the centre ``x, y`` (DNB, ``floor(um / 0.5)``) identifies it, and cell ``i`` holds exactly the
    counts of its observation.

    Parameters
    ----------
    slice_
        A ``"cells"`` :class:`~stdask.datasets.synthetic.SyntheticSlice`.
    path
        Output ``.cellbin.gef``.
    sn
        Chip serial number attribute.

    Returns
    -------
    dict
        ``path``, ``n_cells``, ``seconds``.
    """
    if slice_.layout != "cells":
        raise ValueError(f"write_cellbin_gef needs the 'cells' layout, got {slice_.layout!r}")
    t0 = time.perf_counter()
    geo = slice_.geometry
    N = slice_.n_obs
    y_max_um = geo.y0 + (geo.n_rows - 1) * geo.step_y + geo.jitter
    n_bands = int(math.floor(y_max_um / (CELL_BLOCK * DNB_PITCH_UM))) + 1
    with tempfile.TemporaryDirectory(dir=Path(path).parent) as tmp, h5py.File(path, "w") as f:
        spool = GeneMajorSpool(Path(tmp), slice_.n_genes, _GENE_EXP_DTYPE, "geneExp", SLICE)
        grp = f.create_group("cellBin")
        tables = _CellTables(grp, N, spool)
        for band, rows, gx, gy, sel in _cells_by_band(slice_, n_bands):
            tables.add_band(band, rows, gx, gy, sel)
        if tables.n_cells != N:
            raise RuntimeError(f"cell-bin GEF placed {tables.n_cells} of {N} cells")  # band bounds are wrong
        tables.write_block_index(grp, n_bands)
        grp.create_dataset("cellTypeList", data=np.array([t.encode() for t in slice_.cell_type_names], dtype="S32"))
        gexp_ds, gene_ds, exp_total, cell_count = _write_gene_major(grp, spool, slice_.var.index.to_numpy(str))
        _write_cellbin_attrs(f, sn, tables, gexp_ds, gene_ds, exp_total, cell_count)
    return dict(path=str(path), n_cells=tables.n_cells, seconds=time.perf_counter() - t0)
