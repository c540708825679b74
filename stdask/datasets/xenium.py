"""A synthetic 10x Xenium Onboard Analysis ``outs/`` folder (XOA 2.x layout), written chunk by chunk.

Files (10x's "Understanding Xenium Outputs"; field names, dtypes and id forms as XOA 2.0 writes them)::

    outs/
      experiment.xenium            JSON run metadata: pixel_size (um per image pixel), analysis_sw_version...
      cell_feature_matrix.h5       10x feature-barcode HDF5, CSC by barcode, genes then control features
      cells.parquet                one row per cell, matrix barcode order; centroids and areas in um
      transcripts.parquet          one row per decoded transcript, um; cell_id 'UNASSIGNED' outside cells
      cell_boundaries.parquet      closed polygon rings, one row per vertex, um

The files agree the way XOA's do: a matrix entry (cell, feature) is the number of transcripts of that feature
with ``qv >= 20`` assigned to the cell; ``cells.parquet``'s ``transcript_counts`` / ``control_probe_counts`` /
``control_codeword_counts`` / ``unassigned_codeword_counts`` are the row sums of the matrix over the gene /
control feature types. Low-quality (``qv < 20``) transcripts inside cells and transcripts outside every cell
are written too and counted nowhere.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import scipy.sparse as sp

from ..io.mtx import GEX
from ..random_streams import sequence_stream
from .purposes import XENIUM
from .synthetic import synthetic_slice
from .tenx import tenx_matrix_group

__all__ = ["write_xenium", "xenium_cell_ids", "CONTROL_TYPES", "XENIUM_PIXEL_SIZE", "XENIUM_SW_VERSION"]

#: um per morphology-image pixel of every Xenium instrument
XENIUM_PIXEL_SIZE = 0.2125
XENIUM_SW_VERSION = "xenium-2.0.0.10"
#: control feature types of the matrix and the cells.parquet column counting each (XOA 2.x)
CONTROL_TYPES = {
    "Negative Control Probe": ("NegControlProbe_{:05d}", "control_probe_counts"),
    "Negative Control Codeword": ("NegControlCodeword_{:04d}", "control_codeword_counts"),
    "Unassigned Codeword": ("UnassignedCodeword_{:04d}", "unassigned_codeword_counts"),
}
#: QV threshold of the cell-feature matrix (XOA counts transcripts with qv >= 20)
QV_MIN = 20.0
#: most rows in one row group of transcripts.parquet
TX_ROW_GROUP = 1 << 20
#: first transcript_id (XOA's ids are large uint64s)
_TRANSCRIPT_ID0 = 281_608_120_700_000
#: vertices of a cell polygon before the ring is closed (XOA writes 13 rows per cell: 12 + the first again)
_N_VERTICES = 12

_CELL_SCHEMA = pa.schema([
    ("cell_id", pa.string()), ("x_centroid", pa.float64()), ("y_centroid", pa.float64()),
    ("transcript_counts", pa.uint32()), ("control_probe_counts", pa.uint32()),
    ("control_codeword_counts", pa.uint32()), ("unassigned_codeword_counts", pa.uint32()),
    ("deprecated_codeword_counts", pa.uint32()), ("total_counts", pa.uint32()),
    ("cell_area", pa.float64()), ("nucleus_area", pa.float64()), ("nucleus_count", pa.uint32()),
    ("segmentation_method", pa.string()),
])
_TRANSCRIPT_SCHEMA = pa.schema([
    ("transcript_id", pa.uint64()), ("cell_id", pa.string()), ("overlaps_nucleus", pa.uint8()),
    ("feature_name", pa.string()), ("x_location", pa.float32()), ("y_location", pa.float32()),
    ("z_location", pa.float32()), ("qv", pa.float32()), ("fov_name", pa.string()),
    ("nucleus_distance", pa.float32()),
])
_BOUNDARY_SCHEMA = pa.schema([
    ("cell_id", pa.string()), ("vertex_x", pa.float32()), ("vertex_y", pa.float32()), ("label_id", pa.uint32()),
])


def xenium_cell_ids(prefix: np.ndarray, suffix: int = 1) -> np.ndarray:
    """XOA cell ids: each uint32 ``prefix`` as 8 hex digits written with the letters a..p, plus ``-suffix``.

    Parameters
    ----------
    prefix
        (n,) uint32 cell id prefixes.
    suffix
        Dataset suffix (1 for a single region).

    Returns
    -------
    (n,) object array of str, e.g. ``1 -> 'aaaaaaab-1'``, ``0x55AF1010 -> 'ffkpbaba-1'``.
    """
    p = np.asarray(prefix, dtype=np.uint32)
    nibbles = (p[:, None] >> np.arange(28, -1, -4, dtype=np.uint32)) & 0xF  # (n, 8), most significant first
    letters = (nibbles.astype(np.uint8) + ord("a")).view("S1").reshape(len(p), 8)
    return np.array([b"".join(row).decode() + f"-{suffix}" for row in letters], dtype=object)


def write_xenium(
    folder: str | Path,
    n_cells: int = 2_000,
    n_genes: int = 100,
    seed: int = 0,
    *,
    n_controls: tuple[int, int, int] = (4, 4, 4),
    control_rate: float = 0.05,
    low_qv_fraction: float = 0.1,
    unassigned_fraction: float = 0.1,
    chunk_size: int | None = None,
    zero_fraction: float = 0.9,
) -> dict[str, Any]:
    """Write a synthetic Xenium ``outs/`` folder whose gene counts come from :func:`synthetic_slice` (``"cells"``).

    Parameters
    ----------
    folder
        The ``outs/`` folder to create (may exist).
    n_cells, n_genes, seed
        The cells x genes expression (the ``"cells"`` layout: 10 um hexagonal lattice, um coordinates).
    n_controls
        Number of 'Negative Control Probe', 'Negative Control Codeword' and 'Unassigned Codeword' features.
    control_rate
        Mean count of each control feature in each cell (Poisson).
    low_qv_fraction
        Extra ``qv < 20`` transcripts inside cells, as a fraction of each cell's counted transcripts.
    unassigned_fraction
        Transcripts outside every cell (``cell_id = 'UNASSIGNED'``), as a fraction of the counted ones.
    chunk_size
        Cells per generated chunk. The expression does not depend on it; transcript positions, qv and control
        counts are drawn per chunk, so the same arguments give identical files.
    zero_fraction
        Fraction of zero (cell, gene) counts (:func:`synthetic_slice`); lower gives more transcripts per cell
        (0.7 with 377 genes: about 200 transcripts per cell, a Xenium 5K-like density).

    Returns
    -------
    dict
        ``outs`` (str), ``n_cells``, ``n_features`` (genes + controls), ``nnz`` (matrix entries),
        ``n_transcripts`` (all rows of transcripts.parquet), ``seconds``.
    """
    for name, v in (("control_rate", control_rate), ("low_qv_fraction", low_qv_fraction),
                    ("unassigned_fraction", unassigned_fraction)):
        if not (np.isfinite(v) and v >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
    if len(n_controls) != 3 or min(n_controls) < 0:
        raise ValueError(f"n_controls must be three counts >= 0, got {n_controls!r}")
    t0 = time.perf_counter()
    outs = Path(folder)
    outs.mkdir(parents=True, exist_ok=True)
    # small panels: fewer markers per domain / cell type (11 groups), so tests can use a few dozen genes
    n_markers = max(1, min(10, (n_genes - 16) // 11))
    slice_ = synthetic_slice(n_obs=n_cells, n_genes=n_genes, layout="cells", seed=seed, n_markers=n_markers,
                             zero_fraction=zero_fraction)
    names, ids, types = _features(slice_.var, n_controls)
    n_features = len(names)
    # a seeded start keeps ids varied across seeds, still sorted like XOA's
    first_prefix = int(sequence_stream(seed, XENIUM).integers(1, 1 << 24))
    nnz = n_tx = 0
    with h5py.File(outs / "cell_feature_matrix.h5", "w") as f, \
            pq.ParquetWriter(outs / "cells.parquet", _CELL_SCHEMA) as cells_w, \
            pq.ParquetWriter(outs / "transcripts.parquet", _TRANSCRIPT_SCHEMA) as tx_w, \
            pq.ParquetWriter(outs / "cell_boundaries.parquet", _BOUNDARY_SCHEMA) as bound_w:
        data, indices, indptr, barcodes = _matrix_datasets(f, n_cells, names, ids, types)
        for batch in slice_.iter_batches(chunk_size):
            n = len(batch)
            lo = batch.start
            rng = sequence_stream(seed, XENIUM, lo + 1)
            cell_ids = xenium_cell_ids(np.arange(first_prefix + lo, first_prefix + lo + n, dtype=np.uint32))
            controls = sp.csr_matrix(rng.poisson(control_rate, size=(n, n_features - n_genes)).astype(np.uint32))
            counts = sp.hstack([batch.counts, controls], format="csr", dtype=np.uint32)
            counts.sort_indices()
            data.resize((nnz + counts.nnz,))
            indices.resize((nnz + counts.nnz,))
            data[nnz:] = counts.data.astype(np.int32)
            indices[nnz:] = counts.indices.astype(np.int64)
            indptr[lo + 1:lo + n + 1] = counts.indptr[1:].astype(np.int64) + nnz
            nnz += counts.nnz
            barcodes[lo:lo + n] = cell_ids.astype("S10")
            radius = rng.uniform(2.5, 3.0, n)  # cells of the 10 um lattice, jittered <= 2 um, stay apart
            ring_x, ring_y, area = _polygons(rng, batch.x, batch.y, radius)
            bound_w.write_table(pa.table({
                "cell_id": np.repeat(cell_ids, _N_VERTICES + 1), "vertex_x": ring_x.ravel().astype(np.float32),
                "vertex_y": ring_y.ravel().astype(np.float32),
                "label_id": np.repeat(np.arange(lo + 1, lo + n + 1, dtype=np.uint32), _N_VERTICES + 1),
            }, schema=_BOUNDARY_SCHEMA))
            cells_w.write_table(_cells_table(cell_ids, batch, counts, n_genes, types, area, radius))
            tx = _transcripts(rng, counts, names, cell_ids, batch.x, batch.y, radius, low_qv_fraction,
                              unassigned_fraction)
            tx["transcript_id"] = np.arange(n_tx, n_tx + len(tx["qv"]), dtype=np.uint64) + np.uint64(_TRANSCRIPT_ID0)
            n_tx += len(tx["qv"])
            # row groups of at most 2^20 rows: a reader decodes a whole row group at a time
            tx_w.write_table(pa.table(tx, schema=_TRANSCRIPT_SCHEMA), row_group_size=TX_ROW_GROUP)
    _write_experiment(outs / "experiment.xenium", n_cells, n_tx, n_genes)
    return dict(outs=str(outs), n_cells=n_cells, n_features=n_features, nnz=nnz, n_transcripts=n_tx,
                seconds=time.perf_counter() - t0)


def _features(var, n_controls: tuple[int, int, int]) -> tuple[list[str], list[str], list[str]]:
    """Names, ids and feature types of the panel: the genes, then each control type's features."""
    names, ids = list(var.index.astype(str)), list(var["gene_ids"].astype(str))
    types = [GEX] * len(names)
    for (ftype, (pattern, _col)), k in zip(CONTROL_TYPES.items(), n_controls):
        ctl = [pattern.format(i + 1) for i in range(k)]
        names += ctl
        ids += ctl  # XOA gives control features their name as id
        types += [ftype] * k
    return names, ids, types


def _matrix_datasets(f: h5py.File, n_cells: int, names: list[str], ids: list[str], types: list[str]):
    """Create the 10x HDF5 layout (fixed-length ASCII strings, as 10x writes them); return the growing datasets
    ``data`` int32, ``indices`` int64, ``indptr`` int64 (n_cells + 1) and ``barcodes`` S10."""
    g = tenx_matrix_group(f, ids, names, types, genome="Unknown", software_version=XENIUM_SW_VERSION,
                          chemistry="Xenium")
    kw: dict[str, Any] = dict(maxshape=(None,), chunks=(1 << 16,), compression="gzip", compression_opts=4)
    data = g.create_dataset("data", shape=(0,), dtype=np.int32, **kw)
    indices = g.create_dataset("indices", shape=(0,), dtype=np.int64, **kw)
    indptr = g.create_dataset("indptr", shape=(n_cells + 1,), dtype=np.int64, fillvalue=0)
    g.create_dataset("shape", data=np.array([len(names), n_cells], dtype=np.int32))
    barcodes = g.create_dataset("barcodes", shape=(n_cells,), dtype="S10")
    return data, indices, indptr, barcodes


def _polygons(rng: np.random.Generator, x: np.ndarray, y: np.ndarray, radius: np.ndarray):
    """Closed rings around each centroid. Returns (n, 13) float64 vertex x, y (um) and (n,) float64 areas (um^2,
    shoelace over the float32 vertices written)."""
    angle = np.linspace(0.0, 2 * np.pi, _N_VERTICES, endpoint=False)
    r = radius[:, None] * rng.uniform(0.9, 1.1, (len(x), _N_VERTICES))
    vx = (x[:, None] + r * np.cos(angle)).astype(np.float32).astype(np.float64)
    vy = (y[:, None] + r * np.sin(angle)).astype(np.float32).astype(np.float64)
    vx, vy = np.hstack([vx, vx[:, :1]]), np.hstack([vy, vy[:, :1]])  # close each ring
    area = 0.5 * np.abs((vx[:, :-1] * vy[:, 1:] - vx[:, 1:] * vy[:, :-1]).sum(1))
    return vx, vy, area


def _cells_table(cell_ids, batch, counts: sp.csr_matrix, n_genes: int, types: list[str], area, radius) -> pa.Table:
    """cells.parquet rows of one chunk: per-type row sums of the matrix, centroids, areas (um^2)."""
    t = np.asarray(types, dtype=object)
    sums = {"transcript_counts": np.asarray(counts[:, :n_genes].sum(1)).ravel()}
    for ftype, (_pattern, col) in CONTROL_TYPES.items():
        sums[col] = np.asarray(counts[:, np.flatnonzero(t == ftype)].sum(1)).ravel()
    n = len(cell_ids)
    table = {"cell_id": cell_ids, "x_centroid": batch.x, "y_centroid": batch.y,
             **{k: v.astype(np.uint32) for k, v in sums.items()},
             "deprecated_codeword_counts": np.zeros(n, np.uint32),
             "total_counts": sum(sums.values()).astype(np.uint32),
             "cell_area": area, "nucleus_area": np.pi * (0.5 * radius) ** 2,
             "nucleus_count": np.ones(n, np.uint32),
             "segmentation_method": np.full(n, "Segmented by nucleus expansion of 5.0µm", dtype=object)}
    return pa.table(table, schema=_CELL_SCHEMA)


def _transcripts(rng: np.random.Generator, counts: sp.csr_matrix, names: list[str], cell_ids, x, y, radius,
                 low_qv_fraction: float, unassigned_fraction: float) -> dict[str, np.ndarray]:
    """transcripts.parquet columns (all but transcript_id) of one chunk: one row per counted molecule
    (qv >= 20, in its cell), plus low-qv molecules in cells and molecules outside every cell."""
    coo = counts.tocoo()
    reps = coo.data.astype(np.int64)
    cell = np.repeat(coo.row.astype(np.int64), reps)
    feat = np.repeat(coo.col.astype(np.int64), reps)
    # most decoded molecules saturate at qv 40; the rest spread over the counted range [20, 40)
    qv = np.where(rng.random(len(cell)) < 0.7, 40.0, rng.uniform(QV_MIN, 40.0, len(cell)))
    n_low = rng.poisson(low_qv_fraction * len(cell))
    low_cell = rng.integers(0, len(cell_ids), n_low)
    cell = np.concatenate([cell, low_cell])
    feat = np.concatenate([feat, rng.integers(0, len(names), n_low)])
    qv = np.concatenate([qv, rng.uniform(0.0, QV_MIN - 0.5, n_low)])
    # positions uniform in a disc of 0.85 radius: inside the cell's polygon whatever its vertex noise
    rho = 0.85 * radius[cell] * np.sqrt(rng.random(len(cell)))
    phi = rng.uniform(0, 2 * np.pi, len(cell))
    tx_x, tx_y = x[cell] + rho * np.cos(phi), y[cell] + rho * np.sin(phi)
    nuc = 0.5 * radius[cell]
    ids = np.asarray(cell_ids, dtype=object)[cell]
    # outside cells: between the cell rings of the chunk's bounding box (not checked against rings: 'UNASSIGNED'
    # is the segmentation's answer, not a geometric one)
    n_out = rng.poisson(unassigned_fraction * len(coo.data))
    ox = rng.uniform(x.min() - 5, x.max() + 5, n_out)
    oy = rng.uniform(y.min() - 5, y.max() + 5, n_out)
    names_arr = np.asarray(names, dtype=object)
    all_x, all_y = np.concatenate([tx_x, ox]), np.concatenate([tx_y, oy])
    dist = np.concatenate([np.maximum(rho - nuc, 0.0), rng.uniform(0.5, 20.0, n_out)])
    return {
        "cell_id": np.concatenate([ids, np.full(n_out, "UNASSIGNED", dtype=object)]),
        "overlaps_nucleus": (dist == 0).astype(np.uint8),
        "feature_name": names_arr[np.concatenate([feat, rng.integers(0, len(names), n_out)])],
        "x_location": all_x.astype(np.float32), "y_location": all_y.astype(np.float32),
        "z_location": rng.uniform(10.0, 20.0, len(all_x)).astype(np.float32),
        "qv": np.concatenate([qv, rng.uniform(0.0, 40.0, n_out)]).astype(np.float32),
        "fov_name": _fov_names(all_x, all_y), "nucleus_distance": dist.astype(np.float32),
    }


def _fov_names(x: np.ndarray, y: np.ndarray, fov_um: float = 240.0) -> np.ndarray:
    """XOA field-of-view names: a row letter and a column number of a ``fov_um`` grid (e.g. 'B3')."""
    row = np.clip(y // fov_um, 0, 25).astype(np.int64)
    col = np.clip(x // fov_um, 0, None).astype(np.int64) + 1
    # vectorised (a Python loop per transcript dominated writing 10^8 of them)
    return np.char.add(np.asarray([chr(65 + r) for r in range(26)])[row], col.astype(str)).astype(object)


def _write_experiment(path: Path, n_cells: int, n_transcripts: int, n_genes: int) -> None:
    """experiment.xenium: the run's JSON metadata (XOA 2.x keys; instrument fields are placeholders)."""
    meta = {
        "major_version": 5, "minor_version": 0, "patch_version": 0,
        "run_name": "stdask-synthetic", "run_start_time": "2024-01-01T00:00:00Z", "region_name": "region_0",
        "preservation_method": "FFPE", "num_cells": n_cells,
        "transcripts_per_cell": int(round(n_transcripts / max(n_cells, 1))),
        "cassette_name": "synthetic", "slide_id": "0000000", "panel_design_id": "synthetic",
        "panel_name": "stdask synthetic panel", "panel_organism": "Human", "panel_tissue_type": "synthetic",
        "panel_num_targets_predesigned": n_genes, "panel_num_targets_custom": 0,
        "pixel_size": XENIUM_PIXEL_SIZE, "instrument_sn": "N/A", "instrument_sw_version": "N/A",
        "analysis_sw_version": XENIUM_SW_VERSION, "experiment_uuid": "", "cassette_uuid": "", "roi_uuid": "",
        "z_step_size": 3.0, "well_uuid": "", "calibration_uuid": "N/A",
        "images": {"morphology_filepath": "morphology.ome.tif",
                   "morphology_focus_filepath": "morphology_focus/morphology_focus_0000.ome.tif"},
        "xenium_explorer_files": {"transcripts_zarr_filepath": "transcripts.zarr.zip",
                                  "cells_zarr_filepath": "cells.zarr.zip",
                                  "cell_features_zarr_filepath": "cell_feature_matrix.zarr.zip"},
    }
    path.write_text(json.dumps(meta, indent=2))
