"""From observations to DNB-level records: what a Stereo-seq chip would have measured.

* Stereo-seq bins (``"stereo"`` layout): each molecule of a bin lands on a uniformly random DNB of the
  bin's ``bin_size x bin_size`` square; molecules of one gene on one DNB merge into one record. Summing
  the records of a bin (``(x - x_min) // bin_size`` or ``x // bin_size``, the origin being a multiple
  of ``bin_size``) gives back the bin's counts exactly. To pin ``x_min`` / ``y_min`` to the grid origin,
  the first molecule of every bin in lattice column 0 sits on the bin's first DNB column (and likewise
  for lattice row 0).
* Single cells (``"cells"`` layout): a cell covers the DNBs within 5 um of its centre that are nearer to
  it than to any neighbouring cell (a disc clipped by the Voronoi cell, like a segmentation mask); its
  molecules land on random DNBs of that footprint. Background molecules (``CellID`` 0, ~4% of a cell's
  counts, genes drawn from the cell's own molecules as ambient RNA) land in the ring between 5 and 5.8 um,
  on DNBs that belong to no cell.

DNB randomness comes from stream ``(seed, DNB, block)`` of the observation block, so records are
independent of how a writer chunks its work.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..random_streams import sequence_stream
from .layouts import CELL_JITTER_UM, CELL_PITCH_UM, DNB_PITCH_UM
from .purposes import DNB

#: exon fraction of MIDs when ExonCount is written
EXON_FRACTION = 0.8
#: cell footprint radius and background ring outer radius, micrometres
CELL_RADIUS_UM = 5.0
RING_RADIUS_UM = 5.8
#: expected background molecules per cell molecule
BACKGROUND_RATE = 0.04


@dataclass
class DnbRecords:
    """DNB-level records of a block of observations.

    Attributes
    ----------
    gene
        (m,) int64 gene index (column of the count matrix).
    x, y
        (m,) int64 DNB coordinates.
    count
        (m,) uint32 MID count (> 0).
    exon
        (m,) uint32 exon count (<= count) or ``None``.
    cell
        (m,) int64 cell id (observation index + 1; 0 = background), or ``None`` for bins.
    obs
        (m,) int64 observation index, -1 for background records.
    """

    gene: np.ndarray
    x: np.ndarray
    y: np.ndarray
    count: np.ndarray
    exon: np.ndarray | None
    cell: np.ndarray | None
    obs: np.ndarray

    def __len__(self) -> int:
        return len(self.gene)

    def take(self, n: int) -> "DnbRecords":
        """The first ``n`` records."""
        cut = lambda a: None if a is None else a[:n]  # noqa: E731
        return DnbRecords(self.gene[:n], self.x[:n], self.y[:n], self.count[:n], cut(self.exon), cut(self.cell),
                          self.obs[:n])


def _entries(counts) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row, gene and count of each stored entry of a CSR matrix."""
    rows = np.repeat(np.arange(counts.shape[0], dtype=np.int64), np.diff(counts.indptr))
    return rows, counts.indices.astype(np.int64), counts.data.astype(np.int64)


def _exon(rng: np.random.Generator, count: np.ndarray, exon: bool) -> np.ndarray | None:
    return rng.binomial(count.astype(np.int64), EXON_FRACTION).astype(np.uint32) if exon else None


def split_bins(slice_, batch, block: int, exon: bool = False) -> DnbRecords:
    """DNB records of a block of Stereo-seq bins (see the module docstring).

    Parameters
    ----------
    slice_
        The :class:`~stdask.datasets.synthetic.SyntheticSlice` (``"stereo"`` layout).
    batch
        :class:`~stdask.datasets.batch.ObsBatch` holding exactly random block ``block``.
    block
        Index of the random block.
    exon
        Also draw exon counts.
    """
    bs = int(slice_.params.bin_size)
    b2 = bs * bs
    rng = sequence_stream(slice_.params.seed, DNB, block)
    rows, genes, cnt = _entries(batch.counts)
    n_mol = int(cnt.sum())
    mol_entry = np.repeat(np.arange(len(cnt), dtype=np.int64), cnt)
    local = rng.integers(0, b2, size=n_mol, dtype=np.int64)
    if bs > 1 and len(batch):
        # first molecule of each bin: entry indptr[row], molecule offset = molecules before that entry
        mol_start = np.zeros(len(cnt) + 1, dtype=np.int64)
        np.cumsum(cnt, out=mol_start[1:])
        first = mol_start[batch.counts.indptr[:-1]]
        lat_row, lat_col = slice_.geometry.row_col(batch.index)
        col0 = first[lat_col == 0]
        local[col0] = (local[col0] // bs) * bs  # dx = 0
        row0 = first[lat_row == 0]
        local[row0] = local[row0] % bs  # dy = 0
    key, merged = np.unique(mol_entry * b2 + local, return_counts=True)
    entry, loc = key // b2, key % b2
    obs_row = rows[entry]
    x = batch.x.astype(np.int64)[obs_row] + loc % bs
    y = batch.y.astype(np.int64)[obs_row] + loc // bs
    count = merged.astype(np.uint32)
    return DnbRecords(genes[entry], x, y, count, _exon(rng, count, exon), None, obs_row + batch.start)


@dataclass
class CellFootprints:
    """DNB footprints of a block of cells (CSR-like: cell ``i`` owns ``offsets[i]:offsets[i+1]``).

    Attributes
    ----------
    centre_x, centre_y
        (n,) float64 centres in DNB units.
    offsets, x, y
        Footprint DNBs: (n+1,) int64 offsets, (m,) int64 coordinates.
    ring_offsets, ring_x, ring_y
        Background-ring DNBs, same layout.
    border
        (n, 32, 2) int16 polygon vertices relative to the (integer) centre.
    """

    centre_x: np.ndarray
    centre_y: np.ndarray
    offsets: np.ndarray
    x: np.ndarray
    y: np.ndarray
    ring_offsets: np.ndarray
    ring_x: np.ndarray
    ring_y: np.ndarray
    border: np.ndarray

    @property
    def area(self) -> np.ndarray:
        """(n,) int64 footprint size in DNBs."""
        return np.diff(self.offsets)


def cell_footprints(slice_, batch) -> CellFootprints:
    """Footprints of the cells of ``batch`` (``"cells"`` layout), clipped by their lattice neighbours."""
    geo = slice_.geometry
    seed, bsz = slice_.params.seed, slice_.block_size
    idx = batch.index
    cx, cy = batch.x / DNB_PITCH_UM, batch.y / DNB_PITCH_UM
    nb = geo.hex_neighbours(idx)
    valid = nb >= 0
    if valid.any():
        lo, hi = int(nb[valid].min()), int(nb[valid].max()) + 1
        ax, ay = geo.xy(lo, hi, seed, bsz)
        safe = np.where(valid, nb - lo, 0)
        nx, ny = ax[safe] / DNB_PITCH_UM, ay[safe] / DNB_PITCH_UM
    else:
        nx = ny = np.zeros(nb.shape)
    r_in = CELL_RADIUS_UM / DNB_PITCH_UM
    r_out = RING_RADIUS_UM / DNB_PITCH_UM
    # a ring DNB must be nearer this centre than any second-ring cell: guaranteed while r_out stays below
    # half the smallest second-ring distance
    assert r_out < (math.sqrt(3) * CELL_PITCH_UM - 2 * math.sqrt(2) * CELL_JITTER_UM) / 2 / DNB_PITCH_UM
    k = int(math.ceil(r_out)) + 1
    off = np.arange(-k, k + 1, dtype=np.int64)
    ox, oy = np.meshgrid(off, off, indexing="xy")
    ox, oy = ox.ravel(), oy.ravel()
    qx = np.floor(cx).astype(np.int64)[:, None] + ox[None, :]
    qy = np.floor(cy).astype(np.int64)[:, None] + oy[None, :]
    d_own = (qx - cx[:, None]) ** 2 + (qy - cy[:, None]) ** 2
    nearer = np.ones(d_own.shape, dtype=bool)  # nearest, ties to the lower index
    strictly = np.ones(d_own.shape, dtype=bool)
    for j in range(nb.shape[1]):
        d_j = (qx - nx[:, j, None]) ** 2 + (qy - ny[:, j, None]) ** 2
        ok = valid[:, j, None]
        lower = (nb[:, j] < idx)[:, None]
        nearer &= ~ok | (d_own < d_j) | ((d_own == d_j) & ~lower)
        strictly &= ~ok | (d_own < d_j)
    fp = nearer & (d_own <= r_in ** 2)
    ring = strictly & (d_own > r_in ** 2) & (d_own <= r_out ** 2)

    def pack(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        offsets = np.zeros(len(idx) + 1, dtype=np.int64)
        np.cumsum(mask.sum(axis=1), out=offsets[1:])
        return offsets, qx[mask], qy[mask]

    offsets, fx, fy = pack(fp)
    ring_offsets, rx, ry = pack(ring)

    # border: 32 vertices where rays from the centre leave the disc or cross a bisector with a neighbour
    theta = np.arange(32) * (2 * np.pi / 32)
    ex, ey = np.cos(theta), np.sin(theta)
    t = np.full((len(idx), 32), r_in)
    for j in range(nb.shape[1]):
        dx, dy = nx[:, j] - cx, ny[:, j] - cy
        proj = dx[:, None] * ex[None, :] + dy[:, None] * ey[None, :]
        with np.errstate(divide="ignore", invalid="ignore"):
            tj = np.where(proj > 0, (dx ** 2 + dy ** 2)[:, None] / (2 * proj), np.inf)
        t = np.where(valid[:, j, None], np.minimum(t, tj), t)
    icx, icy = np.floor(cx), np.floor(cy)
    border = np.empty((len(idx), 32, 2), dtype=np.int16)
    border[:, :, 0] = np.rint(cx[:, None] + t * ex[None, :] - icx[:, None]).astype(np.int16)
    border[:, :, 1] = np.rint(cy[:, None] + t * ey[None, :] - icy[:, None]).astype(np.int16)
    return CellFootprints(cx, cy, offsets, fx, fy, ring_offsets, rx, ry, border)


def place_cells(slice_, batch, block: int, exon: bool = False,
                footprints: CellFootprints | None = None) -> DnbRecords:
    """DNB records (with ``cell``) of a block of single cells, background records included.

    ``slice_`` (here of the ``"cells"`` layout), ``batch``, ``block`` and ``exon`` are as for :func:`split_bins`.

    Parameters
    ----------
    footprints
        Precomputed :func:`cell_footprints` of ``batch`` (computed when ``None``).
    """
    fp = footprints if footprints is not None else cell_footprints(slice_, batch)
    rng = sequence_stream(slice_.params.seed, DNB, block)
    rows, genes, cnt = _entries(batch.counts)
    n_genes = slice_.n_genes
    area = fp.area
    if np.any(area[np.unique(rows)] == 0):
        raise RuntimeError("a cell with counts has an empty footprint")  # geometry guarantees otherwise
    mol_entry = np.repeat(np.arange(len(cnt), dtype=np.int64), cnt)
    mol_row = rows[mol_entry]
    pick = np.floor(rng.random(len(mol_entry)) * area[mol_row]).astype(np.int64)
    dnb = fp.offsets[mol_row] + pick  # global index into fp.x / fp.y
    big = max(1, len(fp.x))
    key, merged = np.unique(mol_entry * big + dnb, return_counts=True)
    entry, dnb = key // big, key % big
    obs_row = rows[entry]
    count = merged.astype(np.uint32)

    # background (ambient) molecules: a copy of a random molecule of the cell, on a random ring DNB
    totals = np.asarray(batch.counts.sum(axis=1)).ravel()
    n_bg = rng.poisson(BACKGROUND_RATE * totals)
    ring_size = np.diff(fp.ring_offsets)
    n_bg[ring_size == 0] = 0
    bg_row = np.repeat(np.arange(len(batch), dtype=np.int64), n_bg)
    mol_start = np.zeros(len(batch) + 1, dtype=np.int64)
    np.cumsum(totals, out=mol_start[1:])
    # molecules of a row are contiguous in mol_entry because CSR entries are row-major
    src = mol_start[bg_row] + np.floor(rng.random(len(bg_row)) * totals[bg_row]).astype(np.int64)
    bg_gene = genes[mol_entry[src]] if len(src) else np.zeros(0, np.int64)
    ring_pick = fp.ring_offsets[bg_row] + np.floor(rng.random(len(bg_row)) * ring_size[bg_row]).astype(np.int64)
    bkey, bmerged = np.unique(ring_pick * n_genes + bg_gene, return_counts=True)
    ring_dnb, bg_gene = bkey // n_genes, bkey % n_genes

    gene = np.concatenate([genes[entry], bg_gene])
    x = np.concatenate([fp.x[dnb], fp.ring_x[ring_dnb]])
    y = np.concatenate([fp.y[dnb], fp.ring_y[ring_dnb]])
    count = np.concatenate([count, bmerged.astype(np.uint32)])
    obs = np.concatenate([obs_row + batch.start, np.full(len(bkey), -1, dtype=np.int64)])
    cell = np.where(obs >= 0, obs + 1, 0)
    return DnbRecords(gene, x, y, count, _exon(rng, count, exon), cell, obs)


def iter_dnb_records(slice_, exon: bool = False):
    """DNB records of a ``"stereo"`` or ``"cells"`` slice, one random block at a time.

    Yields
    ------
    (block, batch, records)
        Block index, its :class:`~stdask.datasets.batch.ObsBatch` and :class:`DnbRecords`.
    """
    if slice_.layout not in ("stereo", "cells"):
        raise ValueError(f"DNB-level records exist for the 'stereo' and 'cells' layouts, not {slice_.layout!r}")
    place = split_bins if slice_.layout == "stereo" else place_cells
    for block, batch in enumerate(slice_.iter_batches(slice_.block_size)):
        yield block, batch, place(slice_, batch, block, exon=exon)
