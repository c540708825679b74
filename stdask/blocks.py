"""The one block primitive: where a dataset's matrix comes from, row-wise transforms of its row chunks, and
reductions over them whose numbers do not depend on how the rows are chunked (used by :mod:`stdask.pp` and
:mod:`stdask.tl`).

Why this module exists: dask's own reductions (``x.sum(axis=0)``) neither work on chunks that are scipy CSR
matrices nor give the same float result for two chunkings of the same rows. Two reductions are used here:

* :func:`column_moments` sums per-column values and squares **exactly** (a fixed-point superaccumulator of
  32-bit limbs; integer addition is associative), so column sums, means and variances are bit-identical for
  any chunking, any tile size (any row order) and any scheduler. It is cheap: a few integer operations per
  stored entry.
* :func:`tree_reduce` combines per-chunk partials of any other exact reduction (maxima, integer sums:
  the PCA gram matrix of :mod:`stdask.pp.pca`).

Conventions for matrices (see :func:`get_matrix`): ``"X"`` is the store's counts; any other name is a layer,
taken from the dataset's pending results first (a lazy dask array from an earlier ``stdask.pp`` step), then
from the store.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Iterator, Sequence

import dask
import dask.array as da
import numpy as np
import pandas as pd
import scipy.sparse as sp

from . import cluster
from .backend import get_kernel
from .backend.cpu.exact import EMAX, EMIN, LIMB_BITS, N_LIMBS
from .dataset import SpatialDataset


def compute(*collections: Any, progress: bool = True, desc: str | None = None) -> tuple:
    """Every computation of :mod:`stdask.pp` goes through here, to :func:`stdask.cluster.compute` (so it runs
    where the user's settings say; tests point this one function at another scheduler)."""
    return cluster.compute(*collections, progress=progress, desc=desc)


# ----------------------------------------------------------------------------------------------------
# where matrices come from
# ----------------------------------------------------------------------------------------------------
def get_matrix(ds: SpatialDataset, layer: str = "X") -> da.Array:
    """A matrix of the dataset as a dask array whose row chunks are whole-tile groups.

    Parameters
    ----------
    ds
        The dataset.
    layer
        ``"X"`` (the store's counts), or a layer: a pending result of an earlier step (e.g. ``"normalized"``
        from :func:`stdask.pp.normalize_total`, not yet written) or a layer stored in the store (CSR or
        dense).

    Returns
    -------
    (n_obs, n_vars) dask array; chunks are scipy CSR matrices or dense numpy arrays.
    """
    if layer in (None, "X"):
        return ds.X
    if ds.is_pending("layers", layer):
        value = ds.get_result("layers", layer)
        if isinstance(value, da.Array):
            return align_to_tiles(ds, value)
        return _wrap_in_memory(ds, value)
    if ds.is_stored("layers", layer):
        arr = ds.stored_matrix(layer)
        if ds.matrix_info(layer).kind == "dense":  # stored chunks -> the tile groups of the CSR matrices
            arr = arr.rechunk((ds.X.chunks[0], (ds.n_vars,)))
        return arr
    stored = ds.result_keys("layers", pending=False)
    pend = ds.result_keys("layers", stored=False)
    raise KeyError(f"no layer {layer!r}: stored layers {stored}, pending layers {pend}, or 'X'")


def _wrap_in_memory(ds: SpatialDataset, value: Any) -> da.Array:
    chunks = (ds.X.chunks[0], (value.shape[1],))
    if sp.issparse(value):
        value = sp.csr_matrix(value)
        return da.from_array(value, chunks=chunks, asarray=False, fancy=False,
                             meta=sp.csr_matrix((0, 0), dtype=value.dtype))
    return da.from_array(np.asarray(value), chunks=chunks)


def align_to_tiles(ds: SpatialDataset, arr: da.Array) -> da.Array:
    """``arr`` with one column chunk and row chunk boundaries on tile boundaries (rechunked only if not)."""
    if len(arr.chunks[1]) != 1:
        arr = arr.rechunk({1: -1})
    bounds = np.cumsum((0,) + arr.chunks[0])
    if not np.isin(bounds, ds.tile_row_start).all():
        arr = arr.rechunk({0: ds.X.chunks[0]})
    return arr


def row_blocks(arr: da.Array) -> list:
    """The row chunks of a 2-D dask array with one column chunk, as ``dask.delayed`` objects."""
    if len(arr.chunks[1]) != 1:
        arr = arr.rechunk({1: -1})
    return list(arr.to_delayed().ravel())


def to_csr(block) -> sp.csr_matrix:
    """A chunk as CSR with sorted int32/int64 indices (dense chunks are converted)."""
    if sp.issparse(block):
        return sp.csr_matrix(block)
    return sp.csr_matrix(np.asarray(block))


# ----------------------------------------------------------------------------------------------------
# per-gene annotations (the var table)
# ----------------------------------------------------------------------------------------------------
def set_var_table(ds: SpatialDataset, key: str, table: pd.DataFrame) -> None:
    """Record per-gene results as ``varm[key]``, a DataFrame indexed by gene name.

    The dataset has no pending ``var`` slot, so per-gene columns (e.g. ``highly_variable``) are kept as one
    DataFrame per producing step in ``varm``; AnnData writes and reads DataFrames in ``varm``.
    :func:`var_column` finds a column by name in ``var`` and in these tables.
    """
    table = table.copy()
    table.index = ds.var_names
    ds.set_result("varm", key, table)


def var_column(ds: SpatialDataset, name: str) -> np.ndarray:
    """A per-gene column by name: from ``var``, else from a ``varm`` DataFrame (pending first, then stored,
    each in key order).

    Raises
    ------
    KeyError
        No such column; the message lists where it was looked for.
    """
    if name in ds.var.columns:
        return ds.var[name].to_numpy()
    for slot, key in ds.pending:
        value = ds.get_result(slot, key)
        if slot == "varm" and isinstance(value, pd.DataFrame) and name in value.columns:
            return value[name].to_numpy()
    for key in sorted(ds.result_keys("varm", pending=False)):
        info = ds.element_info("varm", key)
        if info.kind == "dataframe" and name in (info.columns or ()):
            return np.asarray(ds.get_result("varm", key)[name].to_numpy())
    raise KeyError(f"no per-gene column {name!r} in var or in any varm DataFrame; run the step that makes it "
                   "(e.g. stdask.pp.highly_variable_genes for 'highly_variable')")


def gene_mask(ds: SpatialDataset, mask: np.ndarray | str | None) -> np.ndarray | None:
    """A boolean (n_vars,) mask from a mask, a per-gene column name, or ``None`` (all genes)."""
    if mask is None:
        return None
    m = var_column(ds, mask) if isinstance(mask, str) else np.asarray(mask)
    if m.dtype != bool or m.shape != (ds.n_vars,):
        raise ValueError(f"gene mask must be a boolean array of length n_vars={ds.n_vars}, got {m.dtype} {m.shape}")
    if not m.any():
        raise ValueError("the gene mask selects no gene")
    return m


# ----------------------------------------------------------------------------------------------------
# exact column sums
# ----------------------------------------------------------------------------------------------------
def _moments_block(block, squares: bool, transform: Callable | None, clip: np.ndarray | None):
    m = to_csr(block)
    data = m.data
    if transform is not None:
        data = transform(data)
    if clip is not None:
        data = np.minimum(data.astype(np.float64), clip[m.indices])
    s1, s2, nnz, err = get_kernel("csr_moments")(m.indptr.astype(np.int64), m.indices.astype(np.int64), data,
                                                 m.shape[1], squares)
    if err & 1:
        raise ValueError("the matrix holds NaN or infinite values; column statistics are undefined")
    if err & 2:
        raise ValueError(f"a value (or its square) exceeds 2**{EMAX}; column statistics are not supported")
    return s1, s2, nnz


def _moments_add(a, b):
    s1 = a[0] + b[0]
    s2 = a[1] + b[1]
    normalise = get_kernel("normalise_limbs")
    normalise(s1)
    if len(s2):
        normalise(s2)
    return s1, s2, a[2] + b[2]


def _tree(parts: list, combine: Callable) -> Any:
    # a balanced binary tree of delayed combines (the combine is exact, so the shape does not matter)
    while len(parts) > 1:
        nxt = [dask.delayed(combine, pure=True)(parts[i], parts[i + 1]) for i in range(0, len(parts) - 1, 2)]
        if len(parts) % 2:
            nxt.append(parts[-1])
        parts = nxt
    return parts[0]


def limbs_to_int(row: np.ndarray) -> int:
    """The exact integer (value * 2**-EMIN) held by one normalised accumulator row."""
    low = row[:-1].astype("<u4").tobytes()
    return int.from_bytes(low, "little") + (int(row[-1]) << (LIMB_BITS * (N_LIMBS - 1)))


class ColumnMoments:
    """Exact per-column sums (and sums of squares) of a matrix's rows.

    Attributes
    ----------
    n_rows
        Number of rows summed.
    nnz
        (n_cols,) int64 number of non-zero entries per column.
    """

    def __init__(self, n_rows: int, s1: np.ndarray, s2: np.ndarray, nnz: np.ndarray) -> None:
        self.n_rows = int(n_rows)
        self._s1 = s1
        self._s2 = s2
        self.nnz = nnz

    def sums(self) -> np.ndarray:
        """(n_cols,) float64 column sums, correctly rounded from the exact sums."""
        return np.array([math.ldexp(float(limbs_to_int(r)), EMIN) for r in self._s1], dtype=np.float64)

    def sums_of_squares(self) -> np.ndarray:
        """(n_cols,) float64 column sums of squares, correctly rounded (needs ``squares=True``)."""
        if not len(self._s2):
            raise ValueError("sums of squares need squares=True")
        return np.array([math.ldexp(float(limbs_to_int(r)), EMIN) for r in self._s2], dtype=np.float64)

    def means(self) -> np.ndarray:
        """(n_cols,) float64 column means, correctly rounded (sum / n_rows)."""
        n = self.n_rows
        scale = 1 << -EMIN
        return np.array([limbs_to_int(r) / (n * scale) for r in self._s1], dtype=np.float64)

    def variances(self, ddof: int = 1) -> np.ndarray:
        """(n_cols,) float64 column variances ``sum((x - mean)**2) / (n_rows - ddof)``, correctly rounded
        from the exact sums (no cancellation). Needs squares; ``n_rows - ddof <= 0`` gives 0."""
        if not len(self._s2):
            raise ValueError("variances need the sums of squares (squares=True)")
        n = self.n_rows
        if n - ddof <= 0:
            return np.zeros(len(self._s1))
        scale = 1 << -EMIN
        out = np.empty(len(self._s1))
        for c, (r1, r2) in enumerate(zip(self._s1, self._s2)):
            i1, i2 = limbs_to_int(r1), limbs_to_int(r2)
            # n * S2 - S1**2 with S1 = i1 / scale, S2 = i2 / scale  ->  (n*i2*scale - i1**2) / scale**2
            out[c] = max(0, n * i2 * scale - i1 * i1) / (n * (n - ddof) * scale * scale)
        return out


def column_moments(arr: da.Array, *, squares: bool = True, transform: Callable | None = None,
                   clip: np.ndarray | None = None, progress: bool = True,
                   desc: str | None = None) -> ColumnMoments:
    """Exact per-column sums (and sums of squares) of a dask matrix of CSR or dense chunks.

    Parameters
    ----------
    arr
        (n_rows, n_cols) dask array.
    squares
        Also accumulate the squares (for variances).
    transform
        Applied to each chunk's stored values first (e.g. ``np.expm1``); must map 0 to 0.
    clip
        (n_cols,) float64 upper bound per column applied to the values (after ``transform``), for Seurat v3.
    progress, desc
        As for :func:`stdask.cluster.compute`.

    Returns
    -------
    ColumnMoments
        Identical (bit for bit) for any chunking and any order of the rows.
    """
    res = tree_reduce(arr, _moments_block, _moments_add, progress=progress, desc=desc, squares=squares,
                      transform=transform, clip=clip)
    return ColumnMoments(arr.shape[0], *res)


def tree_reduce(arr: da.Array, func: Callable, combine: Callable, *, progress: bool = True,
                desc: str | None = None, **kwargs: Any) -> Any:
    """``combine``-reduction of ``func(chunk, **kwargs)`` over the row chunks, as a balanced tree.

    Only for reductions whose ``combine`` is exact (integer sums, maxima, logical or): the tree's shape
    follows the chunking, so a rounding ``combine`` would make the result depend on it.
    """
    parts = [dask.delayed(func, pure=True)(b, **kwargs) for b in row_blocks(arr)]
    (res,) = compute(_tree(parts, combine), progress=progress, desc=desc)
    return res


# ----------------------------------------------------------------------------------------------------
# row-wise transforms and per-row values
# ----------------------------------------------------------------------------------------------------
def map_rows(arr: da.Array, func: Callable, *, dtype, sparse: bool, n_cols: int | None = None,
             **kwargs: Any) -> da.Array:
    """A lazy row-wise transform: ``func(chunk, **kwargs)`` per row chunk (results must depend on each row
    alone, so any chunking gives the same numbers).

    Parameters
    ----------
    arr
        (n_obs, n_vars) dask array with one column chunk.
    func
        Chunk -> chunk of the same rows.
    dtype
        Output dtype.
    sparse
        Whether the output chunks are CSR (else dense numpy).
    n_cols
        Output columns if they differ from the input's.
    """
    n_cols = arr.shape[1] if n_cols is None else n_cols
    meta = sp.csr_matrix((0, 0), dtype=dtype) if sparse else np.empty((0, 0), dtype=dtype)
    return arr.map_blocks(func, dtype=dtype, meta=meta, chunks=(arr.chunks[0], (n_cols,)), **kwargs)


def row_values(arr: da.Array, func: Callable, *, progress: bool = True, desc: str | None = None,
               **kwargs: Any) -> Any:
    """Eagerly compute ``func(chunk, **kwargs)`` for every row chunk and concatenate the per-row results
    (numpy arrays or DataFrames) in row order."""
    parts = [dask.delayed(func, pure=True)(b, **kwargs) for b in row_blocks(arr)]
    res = compute(*parts, progress=progress, desc=desc)
    if res and isinstance(res[0], pd.DataFrame):
        return pd.concat(res, ignore_index=True)
    return np.concatenate(res) if res else np.empty(0)


def iter_blocks(arr: da.Array, *, batch: int = 8, progress: bool = True,
                desc: str | None = None) -> Iterator[tuple[int, Any]]:
    """The row chunks of ``arr`` computed ``batch`` at a time, in row order: yields ``(first row, chunk)``.

    For passes that fold the chunks into running state on the client (memory: one batch of chunks).
    """
    blocks = row_blocks(arr)
    r0 = 0
    for i in range(0, len(blocks), batch):
        for b in compute(*blocks[i:i + batch], progress=progress, desc=desc):
            yield r0, b
            r0 += b.shape[0]


def any_columns(arr: da.Array, func: Callable, *, progress: bool = True, desc: str | None = None,
                **kwargs: Any) -> np.ndarray:
    """OR over row chunks of a per-chunk boolean (n_cols,) vector ``func(chunk, **kwargs)``."""
    res = tree_reduce(arr, func, np.logical_or, progress=progress, desc=desc, **kwargs)
    return np.asarray(res, dtype=bool)


__all__: Sequence[str] = [
    "ColumnMoments", "align_to_tiles", "any_columns", "column_moments", "gene_mask", "get_matrix", "iter_blocks",
    "map_rows", "row_blocks", "row_values", "set_var_table", "to_csr", "tree_reduce", "var_column",
]
