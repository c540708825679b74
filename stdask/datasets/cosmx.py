"""A synthetic NanoString CosMx SMI AtoMx flat-file export, written chunk by chunk.

Files (as AtoMx 1.3 writes them; see :mod:`stdask.io.cosmx` for the sources)::

    <run>_exprMat_file.csv       fov, cell_ID, then one count column per target (genes, Negative*, SystemControl*);
                                 one cell_ID 0 row per FOV counts its molecules outside every cell
    <run>_metadata_file.csv      one row per cell: fov, cell_ID, cell ('c_1_<fov>_<cell_ID>'), Area (px^2),
                                 AspectRatio, CenterX/Y_local_px, CenterX/Y_global_px, Width, Height (px),
                                 Mean.* / Max.* stain intensities, nCount_* / nFeature_* per target group
    <run>_fov_positions_file.csv FOV, x_global_mm, y_global_mm, x_global_px, y_global_px (the FOV's corner)
    <run>_tx_file.csv            one row per molecule: fov, cell_ID, cell, x/y_local_px, x/y_global_px, z, target,
                                 CellComp (Nuclear / Cytoplasm / Membrane; 'None' outside cells)

The cells are those of :func:`stdask.datasets.synthetic.synthetic_slice` (``"cells"`` layout, um), cut into square
FOVs of 4,256 px (512 um at 0.12028 um/px, CosMx's) on a grid from the origin; a cell's global pixel position is
its FOV's corner plus its local position (both written with 2 decimals, so the sum is exact in the text). Rows are
in the slice's order (not sorted by FOV); cell_ID counts from 1 within each FOV. The files agree as AtoMx's do:
a matrix entry (fov, cell_ID, target) is the number of tx rows of that cell and target, background rows
included, and the metadata's nCount_* columns are row sums of the matrix.
"""
from __future__ import annotations

import gzip as gz
import math
import time
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..io.cosmx import COSMX_PIXEL_SIZE_UM
from ..random_streams import sequence_stream
from .synthetic import synthetic_slice
from .purposes import COSMX

__all__ = ["write_cosmx", "COSMX_FOV_PX", "COSMX", "STAINS"]

#: random-stream purpose of this writer (cell shapes, stains, controls, molecule positions; background per FOV).
#: side of a CosMx SMI field of view, pixels
COSMX_FOV_PX = 4256
#: morphology stains of the 1k-panel RNA assay (metadata Mean.<stain> / Max.<stain> columns)
STAINS = ("MembraneStain", "PanCK", "CD45", "CD3", "DAPI")
#: the slide number of AtoMx's cell ids ('c_<slide>_<fov>_<cell_ID>')
_SLIDE = 1
_TX_COLUMNS = ["fov", "cell_ID", "cell", "x_local_px", "y_local_px", "x_global_px", "y_global_px", "z", "target",
               "CellComp"]
#: z-slices a molecule may be imaged in
_N_Z = 9


def write_cosmx(
    folder: str | Path,
    n_cells: int = 2_000,
    n_genes: int = 100,
    seed: int = 0,
    *,
    n_fovs: int | None = None,
    n_negprobes: int = 10,
    n_falsecodes: int = 10,
    control_rate: float = 0.05,
    background_rate: float = 0.02,
    run: str = "Run5001_S1",
    chunk_size: int | None = None,
    gzip: bool = False,
) -> dict[str, Any]:
    """Write a synthetic CosMx flat-file folder whose gene counts come from :func:`synthetic_slice` (``"cells"``).

    Parameters
    ----------
    folder
        The folder to write the four files into (created if needed).
    n_cells, n_genes, seed
        The cells x genes expression (10 um hexagonal lattice, um coordinates).
    n_fovs
        Cut the slice into about this many FOVs: a g x g grid over the slice, g = ceil(sqrt(n_fovs)), of which the
        squares holding cells become FOVs (small test slices span several FOVs this way). Default ``None``:
        CosMx's 4,256 x 4,256 px FOVs.
    n_negprobes, n_falsecodes
        Number of negative-probe (``Negative<i>``) and false-code (``SystemControl<i>``) targets.
    control_rate
        Mean count of each control target in each cell (Poisson).
    background_rate
        Mean count of each target outside cells, per FOV and per cell of the FOV (Poisson).
    run
        The file-name prefix (AtoMx's run / slide name).
    chunk_size
        Cells per generated chunk (default: about 2 million matrix fields). The expression does not depend on it;
        cell shapes, controls and molecule positions are drawn per chunk, so the same arguments give the same files.
    gzip
        Write ``.csv.gz`` files.

    Returns
    -------
    dict
        ``folder`` (str), ``n_cells``, ``n_targets`` (genes + controls), ``n_fovs``, ``nnz`` (non-zero matrix
        fields, background rows included), ``n_transcripts`` (tx rows), ``seconds``.
    """
    for name, v in (("control_rate", control_rate), ("background_rate", background_rate)):
        if not (np.isfinite(v) and v >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
    if min(n_negprobes, n_falsecodes) < 0:
        raise ValueError(f"n_negprobes and n_falsecodes must be >= 0, got {n_negprobes}, {n_falsecodes}")
    if n_fovs is not None and n_fovs < 1:
        raise ValueError(f"n_fovs must be >= 1 or None, got {n_fovs!r}")
    t0 = time.perf_counter()
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    n_markers = max(1, min(10, (n_genes - 16) // 11))  # small panels: fewer markers per domain / cell type
    slice_ = synthetic_slice(n_obs=n_cells, n_genes=n_genes, layout="cells", seed=seed, n_markers=n_markers)
    targets = (list(slice_.var.index.astype(str)) + [f"Negative{i + 1}" for i in range(n_negprobes)]
               + [f"SystemControl{i + 1}" for i in range(n_falsecodes)])
    ps = COSMX_PIXEL_SIZE_UM
    fov_px = COSMX_FOV_PX
    if n_fovs is not None:
        geo = slice_.geometry
        side_um = geo.extent + 2 * geo.x0  # the lattice and its margins
        fov_px = max(1, math.ceil(side_um / math.ceil(math.sqrt(n_fovs)) / ps))
    grid = _FovGrid.of_slice(slice_, fov_px, ps)
    chunk = chunk_size if chunk_size is not None else max(256, min(100_000, 2_000_000 // len(targets)))
    ext = ".csv.gz" if gzip else ".csv"
    names = {k: out / f"{run}_{k}{ext}" for k in ("exprMat_file", "metadata_file", "fov_positions_file", "tx_file")}
    nnz = n_tx = 0
    next_id = np.ones(grid.n_fovs + 1, np.int64)  # next cell_ID of each FOV (index = fov number)
    with _open(names["exprMat_file"], gzip) as expr, _open(names["metadata_file"], gzip) as meta, \
            _open(names["tx_file"], gzip) as tx:
        expr.write(",".join(["fov", "cell_ID", *targets]) + "\n")
        tx.write(",".join(_TX_COLUMNS) + "\n")
        for i, batch in enumerate(slice_.iter_batches(chunk)):
            rng = sequence_stream(seed, COSMX, batch.start + 1)
            n = len(batch)
            controls = rng.poisson(control_rate, size=(n, n_negprobes + n_falsecodes))
            counts = np.hstack([batch.counts.toarray(), controls]).astype(np.int64)
            fov, col, row = grid.fov_of(batch.x / ps, batch.y / ps)
            cell_id = _number_cells(fov, next_id)
            cells = _cell_frame(rng, fov, cell_id, batch.x / ps - col * fov_px, batch.y / ps - row * fov_px,
                                col * fov_px, row * fov_px, ps)
            sums = _group_sums(counts, n_genes, n_negprobes)
            pd.concat([cells, sums], axis=1).to_csv(meta, header=i == 0, index=False)
            _write_matrix(expr, fov, cell_id, counts)
            nnz += int(np.count_nonzero(counts))
            n_tx += _write_cell_molecules(tx, rng, cells, counts, targets, col * fov_px, row * fov_px, fov_px)
        for f in range(1, grid.n_fovs + 1):  # the molecules outside cells, one matrix row per FOV
            rng = sequence_stream(seed, COSMX, n_cells + f)  # blocks above every chunk's (start + 1 <= n_cells)
            bg = rng.poisson(background_rate * (next_id[f] - 1), size=(1, len(targets)))
            _write_matrix(expr, np.array([f]), np.array([0]), bg)
            nnz += int(np.count_nonzero(bg))
            n_tx += _write_background(tx, rng, f, bg[0], targets, grid.corner(f), fov_px)
    grid.positions(ps).to_csv(names["fov_positions_file"], index=False,
                              compression="gzip" if gzip else None)
    return dict(folder=str(out), n_cells=n_cells, n_targets=len(targets), n_fovs=grid.n_fovs, nnz=nnz,
                n_transcripts=n_tx, seconds=time.perf_counter() - t0)


class _FovGrid:
    """The square FOVs holding cells, numbered from 1 in row-major order of the grid."""

    def __init__(self, codes: np.ndarray, fov_px: int):
        self.codes = codes  # (n_fovs,) sorted int64 row << 32 | col of each FOV
        self.fov_px = fov_px

    @classmethod
    def of_slice(cls, slice_, fov_px: int, ps: float) -> "_FovGrid":
        """One pass over the cell positions (no counts), chunk by chunk, collecting the occupied squares."""
        codes = np.zeros(0, np.int64)
        bs = slice_.block_size
        for lo in range(0, slice_.n_obs, bs):
            x, y = slice_.geometry.xy(lo, min(lo + bs, slice_.n_obs), slice_.params.seed, bs)
            col, row = (np.floor(v / ps / fov_px).astype(np.int64) for v in (x, y))
            codes = np.union1d(codes, (row << 32) | col)
        return cls(codes, fov_px)

    @property
    def n_fovs(self) -> int:
        return len(self.codes)

    def fov_of(self, x_px: np.ndarray, y_px: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """FOV number (1-based), grid column and row of global pixel positions ((n,) int64 each)."""
        col, row = (np.floor(v / self.fov_px).astype(np.int64) for v in (x_px, y_px))
        return np.searchsorted(self.codes, (row << 32) | col) + 1, col, row

    def corner(self, fov: int) -> tuple[int, int]:
        """Global pixel position (x, y) of FOV ``fov``'s corner."""
        code = int(self.codes[fov - 1])
        return (code & 0xFFFFFFFF) * self.fov_px, (code >> 32) * self.fov_px

    def positions(self, ps: float) -> pd.DataFrame:
        """The FOV positions table (AtoMx 1.3: 'FOV', mm and px of each FOV's corner)."""
        xy = np.array([self.corner(f) for f in range(1, self.n_fovs + 1)], dtype=np.float64).reshape(-1, 2)
        return pd.DataFrame({"FOV": np.arange(1, self.n_fovs + 1), "x_global_mm": np.round(xy[:, 0] * ps / 1000, 6),
                             "y_global_mm": np.round(xy[:, 1] * ps / 1000, 6), "x_global_px": xy[:, 0],
                             "y_global_px": xy[:, 1]})


def _open(path: Path, gzip: bool) -> TextIO:
    return gz.open(path, "wt", newline="") if gzip else open(path, "w", newline="")


def _number_cells(fov: np.ndarray, next_id: np.ndarray) -> np.ndarray:
    """cell_ID of each cell of a chunk, continuing each FOV's numbering (``next_id`` updated in place)."""
    order = np.argsort(fov, kind="stable")
    sorted_fov = fov[order]
    start = np.flatnonzero(np.concatenate([[True], sorted_fov[1:] != sorted_fov[:-1]]))
    rank = np.arange(len(fov)) - np.repeat(start, np.diff(np.append(start, len(fov))))
    cell_id = np.empty(len(fov), np.int64)
    cell_id[order] = next_id[sorted_fov] + rank
    np.add.at(next_id, fov, 1)
    return cell_id


def _cell_frame(rng: np.random.Generator, fov, cell_id, lx, ly, fx, fy, ps: float) -> pd.DataFrame:
    """Metadata rows of one chunk: ids, shape (px), centres (local and global px, 2 decimals), stains.
    Cells are ellipses of area pi * r^2, r ~ U(4.5, 5.5) um, elongated up to 1.25x."""
    n = len(fov)
    r = rng.uniform(4.5, 5.5, n) / ps
    elong = np.sqrt(rng.uniform(1.0, 1.25, n))
    width, height = np.round(2 * r * elong), np.round(2 * r / elong)
    lx, ly = np.round(lx, 2), np.round(ly, 2)
    frame = {"fov": fov, "cell_ID": cell_id,
             "cell": [f"c_{_SLIDE}_{f}_{c}" for f, c in zip(fov, cell_id)],
             "Area": np.round(np.pi * r * r).astype(np.int64), "AspectRatio": np.round(width / height, 2),
             "CenterX_local_px": lx, "CenterY_local_px": ly,
             "CenterX_global_px": np.round(fx + lx, 2), "CenterY_global_px": np.round(fy + ly, 2),
             "Width": width.astype(np.int64), "Height": height.astype(np.int64)}
    mean = rng.lognormal(np.log(2000.0), 0.6, size=(n, len(STAINS)))
    for j, stain in enumerate(STAINS):
        frame[f"Mean.{stain}"] = np.round(mean[:, j]).astype(np.int64)
        frame[f"Max.{stain}"] = np.round(mean[:, j] * rng.uniform(1.5, 3.0, n)).astype(np.int64)
    return pd.DataFrame(frame)


def _group_sums(counts: np.ndarray, n_genes: int, n_neg: int) -> pd.DataFrame:
    """AtoMx's per-cell nCount_* (row sums) and nFeature_* (non-zero targets) of genes, negprobes, false codes."""
    out = {}
    for group, cols in (("RNA", slice(0, n_genes)), ("negprobes", slice(n_genes, n_genes + n_neg)),
                        ("falsecode", slice(n_genes + n_neg, None))):
        out[f"nCount_{group}"] = counts[:, cols].sum(1)
        out[f"nFeature_{group}"] = np.count_nonzero(counts[:, cols], axis=1)
    return pd.DataFrame(out)


def _write_matrix(fh: TextIO, fov: np.ndarray, cell_id: np.ndarray, counts: np.ndarray) -> None:
    pd.DataFrame(np.column_stack([fov, cell_id, counts])).to_csv(fh, header=False, index=False)


def _write_cell_molecules(fh: TextIO, rng: np.random.Generator, cells: pd.DataFrame, counts: np.ndarray,
                          targets: list[str], corner_x: np.ndarray, corner_y: np.ndarray, fov_px: int) -> int:
    """tx rows of one chunk's cells (``corner_x/y``: (n,) global px of each cell's FOV corner): one per counted
    molecule, uniform in 0.85 of the cell's ellipse; the compartment by radius (inner half Nuclear, outer fifth
    Membrane). Returns the rows written."""
    coo = sp.coo_matrix(counts)
    reps = coo.data.astype(np.int64)
    cell = np.repeat(coo.row.astype(np.int64), reps)
    target = np.repeat(coo.col.astype(np.int64), reps)
    rho = np.sqrt(rng.random(len(cell)))
    phi = rng.uniform(0.0, 2 * np.pi, len(cell))
    half_w = 0.85 * cells["Width"].to_numpy(np.float64)[cell] / 2
    half_h = 0.85 * cells["Height"].to_numpy(np.float64)[cell] / 2
    lx = cells["CenterX_local_px"].to_numpy()[cell] + half_w * rho * np.cos(phi)
    ly = cells["CenterY_local_px"].to_numpy()[cell] + half_h * rho * np.sin(phi)
    comp = np.where(rho < 0.5, "Nuclear", np.where(rho > 0.8, "Membrane", "Cytoplasm"))
    return _write_tx(fh, rng, cells["fov"].to_numpy()[cell], cells["cell_ID"].to_numpy()[cell],
                     cells["cell"].to_numpy()[cell], lx, ly, corner_x[cell], corner_y[cell],
                     np.asarray(targets, dtype=object)[target],
                     comp, fov_px)


def _write_background(fh: TextIO, rng: np.random.Generator, fov: int, counts: np.ndarray, targets: list[str],
                      corner: tuple[int, int], fov_px: int) -> int:
    """tx rows of FOV ``fov``'s molecules outside cells (cell_ID 0), uniform over the FOV."""
    target = np.repeat(np.arange(len(targets)), counts)
    n = len(target)
    lx, ly = rng.uniform(0, fov_px, n), rng.uniform(0, fov_px, n)
    return _write_tx(fh, rng, np.full(n, fov), np.zeros(n, np.int64), np.full(n, f"c_{_SLIDE}_{fov}_0"), lx, ly,
                     np.full(n, corner[0]), np.full(n, corner[1]), np.asarray(targets, dtype=object)[target],
                     np.full(n, "None"), fov_px)


def _write_tx(fh: TextIO, rng: np.random.Generator, fov, cell_id, cell, lx, ly, fx, fy, target, comp,
              fov_px: int) -> int:
    """Write tx rows; local positions are kept inside the FOV and global = FOV corner + local (2 decimals)."""
    lx = np.round(np.clip(lx, 0.0, fov_px - 0.01), 2)
    ly = np.round(np.clip(ly, 0.0, fov_px - 0.01), 2)
    pd.DataFrame({"fov": fov, "cell_ID": cell_id, "cell": cell, "x_local_px": lx, "y_local_px": ly,
                  "x_global_px": np.round(fx + lx, 2), "y_global_px": np.round(fy + ly, 2),
                  "z": rng.integers(0, _N_Z, len(lx)), "target": target, "CellComp": comp},
                 columns=_TX_COLUMNS).to_csv(fh, header=False, index=False)
    return len(lx)
