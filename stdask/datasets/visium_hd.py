"""A synthetic 10x Visium HD run (Space Ranger 3.x ``binned_outputs/``), written row band by row band.

Files (10x's "Visium HD Space Ranger outputs"; field names, dtypes and barcode form as Space Ranger 3 writes them)::

    <folder>/outs/
      spatial/scalefactors_json.json                    the 2 um scale factors
      binned_outputs/square_{002,008,016}um/
        filtered_feature_bc_matrix.h5                   in-tissue bins (zero-count ones included), CSC by barcode
        raw_feature_bc_matrix.h5                        every bin with >= 1 UMI, in and out of tissue
        spatial/tissue_positions.parquet                every bin of the slide, barcode order
        spatial/scalefactors_json.json                  spot_diameter_fullres = bin_size_um / microns_per_pixel

The resolutions agree as Space Ranger's do: one 2 um count matrix is drawn; an N um bin (N / 2 x N / 2 bins of
2 um, ``row_N = row_2 // (N / 2)``) holds the exact sum of its 2 um bins and is in tissue when any of them is.
A tissue mask (an irregular blob) decides ``in_tissue`` per 2 um bin; bins out of tissue keep a little ambient
signal, so the raw matrices list bins out of tissue too. Bin centres sit on a grid rotated by ``angle_deg`` and
offset on the full-resolution image (the transform Space Ranger applies from grid to image).

Expression: :func:`stdask.datasets.synthetic.synthetic_slice` with the ``"stereo"`` layout (a square lattice of
4 x 4 DNB = 2 um bins, ``regions`` domains), one lattice site per 2 um bin, then binomially thinned (in tissue to
``capture``, out of tissue to ``ambient``): mostly zeros at 2 um, as on a real slide.
"""
from __future__ import annotations

import json
import math
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
from .purposes import VISIUM_HD
from .synthetic import synthetic_slice
from .tenx import tenx_matrix_group

__all__ = ["write_visium_hd", "bin_barcodes", "MICRONS_PER_PIXEL", "SPACERANGER_VERSION"]

#: um per full-resolution image pixel (a typical Visium HD microscope image)
MICRONS_PER_PIXEL = 0.2737
SPACERANGER_VERSION = "spaceranger-3.0.0"
#: image pixels of the first 2 um bin's centre (the grid's offset on the image)
_OFFSET_PX = (1734.25, 2081.5)
#: default 2 um bins per generated row band
_CHUNK_BINS = 500_000

_POSITION_SCHEMA = pa.schema([
    ("barcode", pa.string()), ("in_tissue", pa.uint8()), ("array_row", pa.uint32()), ("array_col", pa.uint32()),
    ("pxl_row_in_fullres", pa.float64()), ("pxl_col_in_fullres", pa.float64()),
])


def bin_barcodes(size_um: int, row: np.ndarray, col: np.ndarray) -> np.ndarray:
    """Space Ranger bin barcodes ``s_{size:03}um_{row:05}_{col:05}-1``, built as bytes (no Python loop).

    Parameters
    ----------
    size_um
        Bin side in um (< 1000).
    row, col
        (n,) grid indices of the bins at that size, each < 100,000.

    Returns
    -------
    (n,) ``S21`` array.
    """
    row, col = np.asarray(row, np.int64), np.asarray(col, np.int64)
    out = np.empty((len(row), 21), dtype=np.uint8)
    out[:] = np.frombuffer(f"s_{size_um:03d}um_00000_00000-1".encode(), dtype=np.uint8)
    powers = 10 ** np.arange(4, -1, -1, dtype=np.int64)
    out[:, 8:13] = (row[:, None] // powers) % 10 + ord("0")
    out[:, 14:19] = (col[:, None] // powers) % 10 + ord("0")
    return out.view("S21").ravel()


def write_visium_hd(
    folder: str | Path,
    n_rows: int = 400,
    n_cols: int = 400,
    n_genes: int = 200,
    seed: int = 0,
    *,
    bin_sizes: tuple[int, ...] = (2, 8, 16),
    tissue_fraction: float = 0.5,
    angle_deg: float = 0.7,
    capture: float = 0.6,
    ambient: float = 0.02,
    chunk_size: int | None = None,
) -> dict[str, Any]:
    """Write a synthetic Visium HD run folder (``<folder>/outs/binned_outputs/square_NNNum/...``).

    Parameters
    ----------
    folder
        The run folder to create (may exist); the files go to ``folder/outs``.
    n_rows, n_cols
        The slide's grid of 2 um bins (a real 6.5 mm slide has 3,350 x 3,350).
    n_genes, seed
        The expression (:func:`synthetic_slice`, ``"stereo"`` layout of 2 um bins).
    bin_sizes
        Resolutions to write, in um: even numbers (Space Ranger writes 2, 8 and 16).
    tissue_fraction
        About this fraction of the 2 um bins is in tissue (an irregular blob in the middle of the slide).
    angle_deg
        Rotation of the bin grid on the image, degrees.
    capture, ambient
        Fraction of the drawn molecules kept in 2 um bins in and out of tissue (binomial thinning).
    chunk_size
        2 um bins per generated row band (default 500,000); bands are whole rows of the largest bin. The data do
        not depend on it: each 2 um row draws from its own stream.

    Returns
    -------
    dict
        ``outs`` (str); per bin size (int um): ``n_positions`` (all bins), ``n_bins`` (in tissue), ``n_raw`` (bins
        with >= 1 UMI), ``nnz`` (filtered matrix entries), ``raw_nnz``; ``n_genes``, ``seconds``.
    """
    scales = _check_args(n_rows, n_cols, bin_sizes, tissue_fraction, capture, ambient)
    if not np.isfinite(angle_deg):
        raise ValueError(f"angle_deg must be a finite number of degrees, got {angle_deg!r}")
    t0 = time.perf_counter()
    outs = Path(folder) / "outs"
    side = max(n_rows, n_cols)  # lattice site of 2 um bin (r, c) = r * side + c
    n_markers = max(1, min(10, (n_genes - 16) // 11))
    zero_fraction = max(0.9, 1.0 - 10.0 / n_genes)  # about 10 genes or fewer detected per 2 um bin before thinning
    slice_ = synthetic_slice(n_obs=side * side, n_genes=n_genes, layout="stereo", bin_size=4, seed=seed,
                             domain_shape="regions", n_markers=n_markers, zero_fraction=zero_fraction)
    mask = _TissueMask(n_rows, n_cols, tissue_fraction, seed)
    step = math.lcm(*scales.values())
    band = max(step, ((chunk_size or _CHUNK_BINS) // max(n_cols, 1)) // step * step)
    writers = {s: _BinWriter(outs / "binned_outputs" / f"square_{s:03d}um", s, k, (n_rows, n_cols), angle_deg,
                             slice_.var) for s, k in scales.items()}
    try:
        for r0 in range(0, n_rows, band):
            r1 = min(r0 + band, n_rows)
            counts, inside = _band_counts(slice_, mask, r0, r1, side, n_cols, seed, capture, ambient)
            for w in writers.values():
                w.add_band(r0, r1, counts, inside)
    finally:
        for w in writers.values():
            w.close()
    sf2 = _scalefactors(2, n_rows, n_cols)
    (outs / "spatial").mkdir(parents=True, exist_ok=True)
    (outs / "spatial" / "scalefactors_json.json").write_text(json.dumps(sf2, indent=2))
    out: dict[str, Any] = {"outs": str(outs), "n_genes": n_genes}
    for key in ("n_positions", "n_bins", "n_raw", "nnz", "raw_nnz"):
        out[key] = {s: w.stats[key] for s, w in writers.items()}
    out["seconds"] = time.perf_counter() - t0
    return out


def _check_args(n_rows, n_cols, bin_sizes, tissue_fraction, capture, ambient) -> dict[int, int]:
    """Validate; returns bin size (um) -> its side in 2 um bins."""
    for name, v in (("n_rows", n_rows), ("n_cols", n_cols)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 1 <= v < 100_000:
            raise ValueError(f"{name} must be an integer in 1..99,999 (barcodes hold 5 digits), got {v!r}")
    scales = {}
    for s in bin_sizes:
        if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 2 or s % 2 or s > 998:
            raise ValueError(f"bin_sizes must be even sizes in um (2, 8, 16...), got {s!r}")
        scales[int(s)] = int(s) // 2
    if not scales:
        raise ValueError("bin_sizes is empty")
    for name, v in (("tissue_fraction", tissue_fraction), ("capture", capture), ("ambient", ambient)):
        if not (np.isfinite(v) and 0 <= v <= 1):
            raise ValueError(f"{name} must lie in [0, 1], got {v!r}")
    return dict(sorted(scales.items()))


class _TissueMask:
    """An irregular blob centred on the slide: 2 um bin (r, c) is in tissue when its distance to the centre is
    below ``R * (1 + sum_k a_k cos(k * theta + phi_k))`` (harmonics 2..5), R set for ``fraction`` of the slide."""

    def __init__(self, n_rows: int, n_cols: int, fraction: float, seed: int) -> None:
        rng = sequence_stream(seed, VISIUM_HD, 0)
        self._k = np.arange(2, 6)
        self._amp = rng.uniform(0.04, 0.12, len(self._k))
        self._phase = rng.uniform(0, 2 * np.pi, len(self._k))
        self._cx, self._cy = (n_cols - 1) / 2.0, (n_rows - 1) / 2.0
        theta = np.linspace(0, 2 * np.pi, 3600, endpoint=False)
        shape = self._shape(theta)
        # blob area = R^2 / 2 * integral of shape^2 over theta
        self._r = math.sqrt(2.0 * fraction * n_rows * n_cols / float(np.mean(shape ** 2) * 2 * np.pi))

    def _shape(self, theta: np.ndarray) -> np.ndarray:
        return 1.0 + (self._amp * np.cos(self._k * theta[..., None] + self._phase)).sum(-1)

    def inside(self, row: np.ndarray, col: np.ndarray) -> np.ndarray:
        """(n,) bool: 2 um bins (row, col) in tissue."""
        dx, dy = col - self._cx, row - self._cy
        return np.hypot(dx, dy) <= self._r * self._shape(np.arctan2(dy, dx))


def _band_counts(slice_, mask: _TissueMask, r0: int, r1: int, side: int, n_cols: int, seed: int,
                 capture: float, ambient: float) -> tuple[sp.csr_matrix, np.ndarray]:
    """2 um counts and tissue flags of grid rows ``r0 .. r1-1``.

    Returns
    -------
    ((r1 - r0) * n_cols, n_genes) CSR uint32 counts in row-major bin order; (same,) bool in tissue.
    """
    raw = slice_.batch(r0 * side, r1 * side).counts
    local = (np.arange(r1 - r0)[:, None] * side + np.arange(n_cols)[None, :]).ravel()
    counts = raw[local].tocsr()
    row = np.repeat(np.arange(r0, r1), n_cols)
    col = np.tile(np.arange(n_cols), r1 - r0)
    inside = mask.inside(row, col)
    keep_p = np.repeat(np.where(inside, capture, ambient), np.diff(counts.indptr))
    data = np.empty(counts.nnz, dtype=np.int64)
    # one stream per 2 um row (block 1 + row): the same counts whatever the band height
    for r in range(r0, r1):
        a, b = counts.indptr[(r - r0) * n_cols], counts.indptr[(r - r0 + 1) * n_cols]
        data[a:b] = sequence_stream(seed, VISIUM_HD, 1 + r).binomial(counts.data[a:b].astype(np.int64), keep_p[a:b])
    counts = sp.csr_matrix((data.astype(np.uint32), counts.indices, counts.indptr), shape=counts.shape)
    counts.eliminate_zeros()
    return counts, inside


def _scalefactors(size_um: int, n_rows: int, n_cols: int) -> dict[str, float]:
    """scalefactors_json.json of one resolution (Space Ranger 3 keys); images of 6,000 / 600 px on the long side."""
    long_side = max(n_rows, n_cols) * 2.0 / MICRONS_PER_PIXEL + 2 * max(_OFFSET_PX)
    return {
        "spot_diameter_fullres": size_um / MICRONS_PER_PIXEL,
        "bin_size_um": float(size_um),
        "microns_per_pixel": MICRONS_PER_PIXEL,
        "tissue_lowres_scalef": 600.0 / long_side,
        "fiducial_diameter_fullres": 80.0 / MICRONS_PER_PIXEL,  # placeholder: no reader uses it
        "tissue_hires_scalef": 6000.0 / long_side,
        "regist_target_img_scalef": 6000.0 / long_side,
    }


class _BinWriter:
    """One resolution's folder: positions and the two matrices, appended row band by row band."""

    def __init__(self, folder: Path, size_um: int, scale: int, grid: tuple[int, int], angle_deg: float,
                 var) -> None:
        (folder / "spatial").mkdir(parents=True, exist_ok=True)
        self.folder, self.size, self.scale, self._grid, self._angle = folder, size_um, scale, grid, angle_deg
        self._n_cols2 = grid[1]
        self.n_cols = -(-grid[1] // scale)  # edge bins may hold fewer 2 um bins, as on a real slide
        self._positions = pq.ParquetWriter(folder / "spatial" / "tissue_positions.parquet", _POSITION_SCHEMA,
                                           compression="zstd")
        self._filtered = _H5Matrix(folder / "filtered_feature_bc_matrix.h5", var)
        self._raw = _H5Matrix(folder / "raw_feature_bc_matrix.h5", var)
        self.stats = dict(n_positions=0, n_bins=0, n_raw=0, nnz=0, raw_nnz=0)

    def add_band(self, r0: int, r1: int, counts: sp.csr_matrix, inside: np.ndarray) -> None:
        """Bins of 2 um rows ``r0 .. r1-1`` (``r0`` a multiple of the scale): their sums, positions, matrices."""
        s, nc = self.scale, self.n_cols
        rows = np.arange(r0 // s, -(-r1 // s))
        bin_row = np.repeat(rows, nc)
        bin_col = np.tile(np.arange(nc), len(rows))
        if s > 1:
            r2 = np.repeat(np.arange(r0, r1), self._n_cols2)
            c2 = np.tile(np.arange(self._n_cols2), r1 - r0)
            target = (r2 // s - r0 // s) * nc + c2 // s
            fold = sp.csr_matrix((np.ones(len(target), np.uint32), (target, np.arange(len(target)))),
                                 shape=(len(bin_row), len(target)))
            counts = (fold @ counts).tocsr()
            inside = np.bincount(target, weights=inside, minlength=len(bin_row)) > 0
        counts.sort_indices()
        barcodes = bin_barcodes(self.size, bin_row, bin_col)
        px_row, px_col = _bin_pixels(bin_row, bin_col, s, self._angle)
        self._positions.write_table(pa.table({
            "barcode": pa.array(barcodes, type=pa.binary()).cast(pa.string()),
            "in_tissue": inside.astype(np.uint8), "array_row": bin_row.astype(np.uint32),
            "array_col": bin_col.astype(np.uint32), "pxl_row_in_fullres": px_row, "pxl_col_in_fullres": px_col,
        }, schema=_POSITION_SCHEMA))
        detected = np.diff(counts.indptr) > 0
        self._filtered.append(barcodes[inside], counts[inside])
        self._raw.append(barcodes[detected], counts[detected])
        st = self.stats
        st["n_positions"] += len(barcodes)
        st["n_bins"] += int(inside.sum())
        st["n_raw"] += int(detected.sum())
        st["nnz"] = self._filtered.nnz
        st["raw_nnz"] = self._raw.nnz

    def close(self) -> None:
        self._positions.close()
        self._filtered.close()
        self._raw.close()
        (self.folder / "spatial" / "scalefactors_json.json").write_text(
            json.dumps(_scalefactors(self.size, *self._grid), indent=2))


def _bin_pixels(row: np.ndarray, col: np.ndarray, scale: int, angle_deg: float) -> tuple[np.ndarray, np.ndarray]:
    """Full-resolution pixel centre (pxl_row, pxl_col) of bins (row, col) that are ``scale`` x ``scale`` 2 um bins:
    the grid position of the bin's centre, ``row * scale + (scale - 1) / 2`` in 2 um bins, rotated and offset."""
    pitch = 2.0 / MICRONS_PER_PIXEL  # pixels per 2 um bin
    gr = row * scale + (scale - 1) / 2.0
    gc = col * scale + (scale - 1) / 2.0
    a = math.radians(angle_deg)
    px_col = _OFFSET_PX[0] + pitch * (math.cos(a) * gc - math.sin(a) * gr)
    px_row = _OFFSET_PX[1] + pitch * (math.sin(a) * gc + math.cos(a) * gr)
    return px_row, px_col


class _H5Matrix:
    """A 10x feature-barcode HDF5 (CSC by barcode) whose barcodes are appended in order; ``shape`` at close."""

    def __init__(self, path: Path, var) -> None:
        self._f = f = h5py.File(path, "w")
        g = tenx_matrix_group(f, var["gene_ids"].to_numpy(str), var.index.to_numpy(str), [GEX] * len(var),
                              genome="GRCh38", software_version=SPACERANGER_VERSION, chemistry="Visium HD v1")
        grow: dict[str, Any] = dict(maxshape=(None,), chunks=(1 << 16,), compression="gzip", compression_opts=4)
        self._data = g.create_dataset("data", shape=(0,), dtype=np.int32, **grow)
        self._indices = g.create_dataset("indices", shape=(0,), dtype=np.int64, **grow)
        self._indptr = g.create_dataset("indptr", shape=(1,), dtype=np.int64, maxshape=(None,), chunks=(1 << 16,))
        self._barcodes = g.create_dataset("barcodes", shape=(0,), dtype="S21", maxshape=(None,), chunks=(1 << 14,))
        self.n_genes = len(var)
        self.n = self.nnz = 0

    def append(self, barcodes: np.ndarray, counts: sp.csr_matrix) -> None:
        """Add bins (``(m,) S21`` barcodes, (m, n_genes) CSR uint32 counts with sorted indices)."""
        m, k = len(barcodes), counts.nnz
        for dset, values, at in ((self._data, counts.data.astype(np.int32), self.nnz),
                                 (self._indices, counts.indices.astype(np.int64), self.nnz),
                                 (self._indptr, counts.indptr[1:].astype(np.int64) + self.nnz, self.n + 1),
                                 (self._barcodes, barcodes, self.n)):
            dset.resize((at + len(values),))
            dset[at:] = values
        self.n += m
        self.nnz += k

    def close(self) -> None:
        if self._f.id.valid:
            self._f["matrix"].create_dataset("shape", data=np.array([self.n_genes, self.n], dtype=np.int32))
            self._f.close()
