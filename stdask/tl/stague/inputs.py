"""STAGUE's expression input (spec §1): log-normalised expression of the highly variable genes, no PCA.

The matrix is read from the dataset as a lazy dask matrix (a pending ``log1p`` layer included). When no
log-normalised layer exists, the reference's own preprocessing runs on the counts, lazily, per chunk:
``normalize_total`` to the median total and ``log1p``.

Mini-batch training reads the rows of many overlapping batches many times; recomputing the lazy chain for
each would re-read the store every step. :class:`SpilledRows` computes the matrix once, chunk by chunk, into
a CSR kept in memory-mapped files of a private temporary folder (removed when the run ends), so reading a
batch is a gather of its rows and memory stays bounded by the batch."""
from __future__ import annotations

import mmap
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import dask.array as da
import numpy as np
import scipy.sparse as sp

from ...blocks import get_matrix, iter_blocks, map_rows, row_values, var_column
from ...dataset import SpatialDataset
from ...models.stague.subgraph import row_positions
from ...pp.normalize import log1p_block, normalize_block, totals_block
from ...pp.pca import pca_input


@dataclass
class ModelInput:
    """The (n_obs, n_genes) lazy float32 input and how it was made.

    Attributes
    ----------
    matrix
        (n_obs, n_genes) dask array, CSR chunks, float32.
    genes
        (n_genes,) gene names.
    info
        ``layer``, ``use_highly_variable``, ``n_genes`` and, when stdask normalised, ``normalized_here``
        with ``target_sum``.
    """

    matrix: da.Array
    genes: np.ndarray
    info: dict


def _prep_counts(block, target, keep) -> sp.csr_matrix:
    return sp.csr_matrix(log1p_block(normalize_block(block, target, keep), None), dtype=np.float32)


def _to_float32(block) -> sp.csr_matrix:
    return sp.csr_matrix(block, dtype=np.float32)


def _hvg_mask(ds: SpatialDataset, use_highly_variable: bool | None) -> np.ndarray | None:
    if use_highly_variable is False:
        return None
    try:
        mask = np.asarray(var_column(ds, "highly_variable"), dtype=bool)
    except KeyError:
        if use_highly_variable:
            raise KeyError(f"{ds.path}: use_highly_variable=True but there is no 'highly_variable' column; run "
                           "stdask.pp.highly_variable_genes(ds, flavor='seurat_v3', n_top_genes=3000) on the "
                           "counts first (the reference's choice), or pass use_highly_variable=False") from None
        return None
    if not mask.any():
        raise ValueError(f"{ds.path}: the 'highly_variable' column selects no gene")
    return mask


def model_input(ds: SpatialDataset, layer: str | None = None, use_highly_variable: bool | None = None,
                progress: bool = True) -> ModelInput:
    """The expression STAGUE trains on.

    Parameters
    ----------
    ds
        The dataset.
    layer
        Matrix of log-normalised expression. ``None``: ``"log1p"`` when the dataset has it (written or
        pending, e.g. after ``stdask.pp.normalize_total`` and ``stdask.pp.log1p``), else ``X`` taken as counts
        and normalised here as the reference does (``normalize_total`` to the median total, ``log1p``).
    use_highly_variable
        ``None``: the ``highly_variable`` genes when that column exists, else all genes; ``True``: require
        it; ``False``: all genes.
    progress
        Show progress for the pass that finds the median total.
    """
    mask = _hvg_mask(ds, use_highly_variable)
    info: dict = {"use_highly_variable": mask is not None}
    if layer is None and not ds.has_result("layers", "log1p"):
        X = get_matrix(ds, "X")
        keep = np.ones(ds.n_vars, dtype=bool)
        totals = row_values(X, totals_block, keep=keep, progress=progress, desc="stague: cell totals")
        target = np.median(totals)
        if not target > 0:
            raise ValueError(f"{ds.path}: the median total count per cell is {float(target)}; filter empty cells "
                             "first (stdask.pp.filter_cells(ds, min_counts=1))")
        X = map_rows(X, _prep_counts, dtype=np.float32, sparse=True, target=target, keep=keep)
        info.update(layer="X", normalized_here=True, target_sum=float(target))
        if mask is not None:
            X = map_rows(X, _take, dtype=np.float32, sparse=True, n_cols=int(mask.sum()), idx=np.flatnonzero(mask))
    else:
        layer = "log1p" if layer is None else layer
        X = pca_input(ds, layer, mask)
        X = map_rows(X, _to_float32, dtype=np.float32, sparse=True)
        info.update(layer=layer, normalized_here=False)
    genes = np.asarray(ds.var_names)[mask] if mask is not None else np.asarray(ds.var_names)
    info["n_genes"] = int(len(genes))
    return ModelInput(X, genes, info)


def _take(block, idx) -> sp.csr_matrix:
    return sp.csr_matrix(block)[:, idx]


def check_scale(sample: sp.csr_matrix, where: str) -> None:
    """Warn when the input looks like raw counts (STAGUE expects log-normalised expression)."""
    from ..cci.scale_check import classify_scale

    if classify_scale(sample) == "counts":
        warnings.warn(f"{where}: the STAGUE input holds integers only and looks like raw counts; STAGUE expects "
                      "log-normalised expression (stdask.pp.normalize_total then stdask.pp.log1p, or layer=None)",
                      UserWarning, stacklevel=3)


class SpilledRows:
    """A CSR computed once from a dask matrix into memory-mapped files, read back row by row.

    Use as a context manager; the temporary folder (created here, holding only these files) is removed on
    exit. ``spill(rows)`` returns the dense (len(rows), n_cols) float32 rows."""

    def __init__(self, matrix: da.Array, *, progress: bool = True, workdir: str | None = None) -> None:
        self.shape = matrix.shape
        self._dir = Path(tempfile.mkdtemp(prefix="stdask-stague-", dir=workdir))
        indptr = np.zeros(matrix.shape[0] + 1, np.int64)
        nnz = 0
        with open(self._dir / "data.f32", "wb") as fd, open(self._dir / "indices.i32", "wb") as fi:
            for r0, block in iter_blocks(matrix, progress=progress, desc="stague: input"):
                m = sp.csr_matrix(block, dtype=np.float32)
                fd.write(np.ascontiguousarray(m.data, np.float32).tobytes())
                fi.write(np.ascontiguousarray(m.indices, np.int32).tobytes())
                indptr[r0 + 1:r0 + m.shape[0] + 1] = nnz + m.indptr[1:]
                nnz += m.nnz
        self.indptr = indptr
        self.nnz = int(nnz)
        self._maps = []
        self._data = self._map("data.f32", np.float32)
        self._indices = self._map("indices.i32", np.int32)

    def _map(self, name: str, dtype) -> np.ndarray:
        if self.nnz == 0:  # mmap refuses an empty file
            return np.zeros(0, dtype)
        with open(self._dir / name, "rb") as fh:
            mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        self._maps.append(mm)
        return np.frombuffer(mm, dtype=dtype)

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        pos, lengths = row_positions(self.indptr, rows)
        out = np.zeros((len(rows), self.shape[1]), np.float32)
        out[np.repeat(np.arange(len(rows)), lengths), self._indices[pos]] = self._data[pos]
        # drop the pages just read from this process's resident set (they stay in the page cache): over an
        # epoch every page is read, and a slice's whole input would otherwise count against its memory
        for mm in self._maps:
            mm.madvise(mmap.MADV_DONTNEED)
        return out

    def sample(self, n_rows: int = 2000) -> sp.csr_matrix:
        """The first ``n_rows`` rows as CSR (for :func:`check_scale`)."""
        m = min(int(n_rows), self.shape[0])
        return sp.csr_matrix(self(np.arange(m)))

    def close(self) -> None:
        self._data = self._indices = None
        for mm in self._maps:
            try:
                mm.close()
            except BufferError:  # an array still views the map; it is unmapped when that array goes
                pass
        self._maps = []
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> "SpilledRows":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
