"""A synthetic Vizgen MERSCOPE region folder (vpt-era layout), written chunk by chunk.

Files (Vizgen's MERSCOPE output and the Vizgen Post-processing Tool's "output data formats"; column names, id
forms and units as they are written there)::

    region_0/
      cell_by_gene.csv                          cell (EntityID), one column per gene, then Blank-0, Blank-1 ...
      cell_metadata.csv                         EntityID, fov, volume, center_x, center_y, min_x, max_x, min_y,
                                                max_y, anisotropy, transcript_count, perimeter_area_ratio, solidity
      detected_transcripts.csv                  (unnamed index), barcode_id, global_x, global_y, global_z, x, y,
                                                fov, gene, transcript_id, cell_id
      images/micron_to_mosaic_pixel_transform.csv   3 x 3 affine, um -> mosaic pixels, space-separated

The files agree the way MERSCOPE's do: a ``cell_by_gene.csv`` entry (cell, gene or blank) is the number of
``detected_transcripts.csv`` rows of that gene with that ``cell_id``; ``transcript_count`` is the cell's row sum,
blanks included (as vpt counts it); transcripts outside every cell have ``cell_id = -1`` and are counted nowhere.
Cells are ellipses around the :func:`synthetic_slice` ``"cells"`` positions (um); their transcripts lie inside
the ellipse, their bounding box is ``min_x`` ... ``max_y``. Fields of view are a grid of 2048-pixel squares of
0.108 um pixels (221.184 um); ``x``, ``y`` are a transcript's pixel position in its field of view.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import scipy.sparse as sp

from ..random_streams import sequence_stream
from .purposes import MERSCOPE
from .synthetic import synthetic_slice

__all__ = ["write_merscope", "MICRONS_PER_PIXEL", "FOV_PIXELS", "N_Z_PLANES"]

#: um per camera / mosaic pixel (the transform's scale is its inverse, ~9.259 px/um)
MICRONS_PER_PIXEL = 0.108
#: side of a field of view, pixels
FOV_PIXELS = 2048
FOV_UM = FOV_PIXELS * MICRONS_PER_PIXEL
#: z planes imaged (global_z is the plane index 0..6) and their spacing (um), which gives the cell volumes
N_Z_PLANES = 7
Z_STEP_UM = 1.5
#: border (um) between the lattice's outer sites and the first field of view: jitter + cell radius + slack
_MARGIN_UM = 10.0
#: EntityID = timestamp x 10^10 + fov x 10^5 + index in the fov (vpt: analysis timestamp, tile, geometry index)
_FOV_FACTOR, _TS_FACTOR = 10**5, 10**10


class _FovGrid:
    """The fields of view: ``n_cols`` x ``n_rows`` squares of :data:`FOV_UM` from (``x0``, ``y0``), row-major."""

    def __init__(self, x0: float, y0: float, width: float, height: float) -> None:
        self.x0, self.y0 = x0, y0
        self.n_cols = max(1, math.ceil(width / FOV_UM))
        self.n_rows = max(1, math.ceil(height / FOV_UM))

    def locate(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(n,) int64 fov index and (n,) float64 pixel x, y inside it of positions in um."""
        col = np.clip(np.floor((x - self.x0) / FOV_UM), 0, self.n_cols - 1).astype(np.int64)
        row = np.clip(np.floor((y - self.y0) / FOV_UM), 0, self.n_rows - 1).astype(np.int64)
        px = (x - (self.x0 + col * FOV_UM)) / MICRONS_PER_PIXEL
        py = (y - (self.y0 + row * FOV_UM)) / MICRONS_PER_PIXEL
        return row * self.n_cols + col, px, py


def write_merscope(
    folder: str | Path,
    n_cells: int = 2_000,
    n_genes: int = 100,
    seed: int = 0,
    *,
    n_blanks: int = 5,
    blank_rate: float = 0.05,
    unassigned_fraction: float = 0.1,
    chunk_size: int | None = None,
) -> dict[str, Any]:
    """Write a synthetic MERSCOPE region folder whose gene counts come from :func:`synthetic_slice` (``"cells"``).

    Parameters
    ----------
    folder
        The region folder to create (may exist), e.g. ``.../region_0``.
    n_cells, n_genes, seed
        The cells x genes expression (the ``"cells"`` layout: 10 um lattice, um coordinates).
    n_blanks
        Number of ``Blank-*`` barcodes (columns of cell_by_gene.csv after the genes, codebook rows after them).
    blank_rate
        Mean count of each blank in each cell (Poisson).
    unassigned_fraction
        Transcripts outside every cell (``cell_id = -1``), as a fraction of those in cells.
    chunk_size
        Cells per generated chunk (default about 2^22 matrix fields). The expression does not depend on it;
        cell shapes, transcript positions and blank counts are drawn per chunk, so the same arguments give
        identical files.

    Returns
    -------
    dict
        ``folder`` (str), ``n_cells``, ``n_genes``, ``n_blanks``, ``nnz`` (non-zero gene entries of
        cell_by_gene.csv: the ``X`` an ingest stores), ``n_transcripts`` (rows of detected_transcripts.csv),
        ``seconds``.
    """
    for name, v in (("blank_rate", blank_rate), ("unassigned_fraction", unassigned_fraction)):
        if not (np.isfinite(v) and v >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
    if isinstance(n_blanks, bool) or not isinstance(n_blanks, (int, np.integer)) or n_blanks < 0:
        raise ValueError(f"n_blanks must be an integer >= 0, got {n_blanks!r}")
    t0 = time.perf_counter()
    out = Path(folder)
    (out / "images").mkdir(parents=True, exist_ok=True)
    # small panels: fewer markers per domain / cell type (11 groups), so tests can use a few dozen genes
    n_markers = max(1, min(10, (n_genes - 16) // 11))
    slice_ = synthetic_slice(n_obs=n_cells, n_genes=n_genes, layout="cells", seed=seed, n_markers=n_markers)
    genes = list(slice_.var.index.astype(str))
    features = np.array(genes + [f"Blank-{i}" for i in range(n_blanks)], dtype=object)
    # codebook transcript ids: an Ensembl-like id per gene; blanks have none (an empty field)
    tx_ids = np.array([g.replace("SYNG", "SYNT") for g in slice_.var["gene_ids"].astype(str)] + [""] * n_blanks,
                      dtype=object)
    geo = slice_.geometry
    grid = _FovGrid(geo.x0 - _MARGIN_UM, geo.y0 - _MARGIN_UM, geo.width + 2 * _MARGIN_UM,
                    geo.height + 2 * _MARGIN_UM)
    if grid.n_cols * grid.n_rows >= _TS_FACTOR // _FOV_FACTOR:
        raise ValueError(f"{n_cells} cells need {grid.n_cols * grid.n_rows} fields of view; EntityIDs hold < 10^5")
    # a seeded analysis 'timestamp' keeps ids varied across seeds and below 2^63, like vpt's 19-digit ids
    timestamp = int(sequence_stream(seed, MERSCOPE).integers(100_000_000, 900_000_000))
    in_fov = np.zeros(grid.n_cols * grid.n_rows, dtype=np.int64)  # cells numbered so far in each fov
    chunk = chunk_size or max(1, (1 << 22) // max(1, len(features)))
    nnz = n_tx = last_index = 0
    for batch in slice_.iter_batches(chunk):
        rng = sequence_stream(seed, MERSCOPE, batch.start + 1)
        n = len(batch)
        blanks = sp.csr_matrix(rng.poisson(blank_rate, size=(n, n_blanks)).astype(np.uint32))
        counts = sp.hstack([batch.counts, blanks], format="csr", dtype=np.uint32)
        fov, _px, _py = grid.locate(batch.x, batch.y)
        ids = timestamp * _TS_FACTOR + fov * _FOV_FACTOR + _number_in_fov(fov, in_fov)
        shape = _ellipses(rng, n)
        first = batch.start == 0
        dense = np.ascontiguousarray(counts.toarray().T)  # (n_features, n): one contiguous row a column
        _write_csv(out / "cell_by_gene.csv", {"cell": ids, **dict(zip(features, dense))}, first)
        _write_csv(out / "cell_metadata.csv",
                   _metadata(ids, fov, batch.x, batch.y, shape, np.asarray(counts.sum(1)).ravel()), first)
        tx = _transcripts(rng, counts, ids, batch.x, batch.y, shape, unassigned_fraction, grid, (features, tx_ids))
        # the unnamed first column: ascending with gaps (MERSCOPE's per-fov index is non-consecutive, ascending)
        tx[""] = last_index + np.cumsum(rng.integers(1, 6, len(tx["fov"])))
        last_index = int(tx[""][-1]) if len(tx[""]) else last_index
        _write_csv(out / "detected_transcripts.csv", tx, first)
        nnz += int(batch.counts.nnz)
        n_tx += len(tx[""])
    scale = 1.0 / MICRONS_PER_PIXEL
    transform = np.array([[scale, 0.0, -grid.x0 * scale], [0.0, scale, -grid.y0 * scale], [0.0, 0.0, 1.0]])
    np.savetxt(out / "images" / "micron_to_mosaic_pixel_transform.csv", transform, fmt="%.10g", delimiter=" ")
    return dict(folder=str(out), n_cells=n_cells, n_genes=n_genes, n_blanks=n_blanks, nnz=nnz, n_transcripts=n_tx,
                seconds=time.perf_counter() - t0)


def _write_csv(path: Path, columns: dict[str, np.ndarray], create: bool) -> None:
    """Append rows to a CSV (create it with its header line when ``create``): Arrow's writer, several times
    faster than pandas', with nothing quoted (MERSCOPE quotes neither names nor values)."""
    with open(path, "wb" if create else "ab") as fh:
        if create:
            fh.write((",".join(columns) + "\n").encode())
        table = pa.Table.from_arrays([pa.array(v) for v in columns.values()], names=list(columns))
        pacsv.write_csv(table, fh, pacsv.WriteOptions(include_header=False, quoting_style="none"))


def _number_in_fov(fov: np.ndarray, in_fov: np.ndarray) -> np.ndarray:
    """Each cell's index among the cells of its fov (in writing order), continuing ``in_fov``, which is updated."""
    order = np.argsort(fov, kind="stable")
    sorted_fov = fov[order]
    start = np.flatnonzero(np.concatenate([[True], sorted_fov[1:] != sorted_fov[:-1]]))
    rank = np.arange(len(fov)) - np.repeat(start, np.diff(np.concatenate([start, [len(fov)]])))
    number = np.empty(len(fov), dtype=np.int64)
    number[order] = in_fov[sorted_fov] + rank
    np.add.at(in_fov, fov, 1)
    if len(number) and number.max() >= _FOV_FACTOR:
        raise ValueError("more than 10^5 cells in one field of view")
    return number


def _ellipses(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """Cell shapes: semi-axes ``a >= b`` (um; the 10 um lattice jittered <= 2 um keeps centres >= 6 um apart)
    and orientation ``theta`` (radians), each (n,) float64."""
    b = rng.uniform(2.4, 2.9, n)
    a = b * rng.uniform(1.0, 1.25, n)
    return {"a": a, "b": b, "theta": rng.uniform(0.0, np.pi, n)}


def _metadata(ids, fov, x, y, shape: dict[str, np.ndarray], total: np.ndarray) -> dict[str, np.ndarray]:
    """cell_metadata.csv rows of one chunk: the ellipses' bounding boxes, volumes and shape measures."""
    a, b, t = shape["a"], shape["b"], shape["theta"]
    half_w = np.hypot(a * np.cos(t), b * np.sin(t))
    half_h = np.hypot(a * np.sin(t), b * np.cos(t))
    area = np.pi * a * b
    h = ((a - b) / (a + b)) ** 2
    perimeter = np.pi * (a + b) * (1 + 3 * h / (10 + np.sqrt(4 - 3 * h)))  # Ramanujan's approximation
    return {
        "EntityID": ids, "fov": fov, "volume": area * N_Z_PLANES * Z_STEP_UM, "center_x": x, "center_y": y,
        "min_x": x - half_w, "max_x": x + half_w, "min_y": y - half_h, "max_y": y + half_h,
        "anisotropy": a / b, "transcript_count": total.astype(np.int64),
        "perimeter_area_ratio": perimeter / area, "solidity": np.ones(len(ids)),  # an ellipse is convex
    }


def _transcripts(rng: np.random.Generator, counts: sp.csr_matrix, ids: np.ndarray, x, y, shape, unassigned: float,
                 grid: _FovGrid, codebook: tuple[np.ndarray, np.ndarray]) -> dict[str, np.ndarray]:
    """detected_transcripts.csv rows of one chunk (the unnamed index column left 0): one row per counted molecule,
    inside its cell's ellipse, then molecules outside every cell (``cell_id = -1``) spread over the chunk's
    bounding box. ``codebook``: (n_features,) gene names and transcript ids, indexed by ``barcode_id``."""
    coo = counts.tocoo()
    reps = coo.data.astype(np.int64)
    cell = np.repeat(coo.row.astype(np.int64), reps)
    feat = np.repeat(coo.col.astype(np.int64), reps)
    # uniform in the ellipse shrunk to 0.9: inside the cell and its bounding box
    rho = 0.9 * np.sqrt(rng.random(len(cell)))
    phi = rng.uniform(0.0, 2 * np.pi, len(cell))
    u, v = shape["a"][cell] * rho * np.cos(phi), shape["b"][cell] * rho * np.sin(phi)
    t = shape["theta"][cell]
    cx, cy = x[cell] + u * np.cos(t) - v * np.sin(t), y[cell] + u * np.sin(t) + v * np.cos(t)
    n_out = rng.poisson(unassigned * len(cell))
    ox = rng.uniform(x.min() - 5, x.max() + 5, n_out)
    oy = rng.uniform(y.min() - 5, y.max() + 5, n_out)
    gx = np.concatenate([cx, ox]).astype(np.float32)
    gy = np.concatenate([cy, oy]).astype(np.float32)
    fov, px, py = grid.locate(gx.astype(np.float64), gy.astype(np.float64))
    code = np.concatenate([feat, rng.integers(0, counts.shape[1], n_out)])
    return {
        "": np.zeros(len(gx), dtype=np.int64), "barcode_id": code, "global_x": gx, "global_y": gy,
        # the z-plane index, written as MERSCOPE writes it ('3.0'; Arrow would write a float 3.0 as '3')
        "global_z": np.array([f"{z}.0" for z in range(N_Z_PLANES)], dtype=object)[rng.integers(0, N_Z_PLANES, len(gx))],
        "x": px.astype(np.float32), "y": py.astype(np.float32), "fov": fov,
        "gene": codebook[0][code], "transcript_id": codebook[1][code],
        "cell_id": np.concatenate([ids[cell], np.full(n_out, -1, dtype=np.int64)]),
    }
