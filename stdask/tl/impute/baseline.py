"""The plain kNN-average baseline that stImpute is measured against (issue 15): each spatial cell takes the K
reference cells nearest to it by cosine on the training genes' normalised-log expression, and its prediction of
any gene is the plain mean of those cells' values.

The neighbours come from :class:`stdask.models.stimpute.neighbours.CodeIndex` (the search of
:func:`~stdask.models.stimpute.neighbours.cosine_neighbours`: exact blocked search, or pynndescent above
``exact_max_pairs`` spatial x reference pairs), built once over the reference and queried block by block. The
average is a sparse (cells x M) matrix with K ones per row times the reference, block by block of spatial cells,
so neither the (cells, K, genes) neighbour features nor a dense copy of the reference's target genes is built.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import scipy.sparse as sp

from ...models.stimpute.neighbours import CodeIndex

__all__ = ["knn_average", "knn_average_blocks", "neighbour_mean"]

#: output values (cells x target genes) per block by default: 64 MB of float32
_BLOCK_VALUES = 1 << 24


def _dense(X, rows: slice | None = None) -> np.ndarray:
    """Rows of X (dense or scipy sparse) as a dense float32 array."""
    X = X if rows is None else X[rows]
    return np.asarray(X.toarray() if sp.issparse(X) else X, dtype=np.float32)


def knn_average_blocks(spatial_train, reference_train, reference_target, k: int, *, method: str = "auto",
                       seed: int = 42, block_cells: int | None = None,
                       exact_max_pairs: int = 10**9) -> Iterator[tuple[int, np.ndarray]]:
    """The kNN-average prediction, one block of spatial cells at a time (see :func:`knn_average`).

    Yields
    ------
    start, block
        The first spatial row of the block and its (n, G_target) float32 prediction; the blocks cover the rows
        in order.
    """
    n, g_train = spatial_train.shape
    m = reference_train.shape[0]
    if reference_train.shape[1] != g_train:
        raise ValueError(f"spatial_train has {g_train} training genes and reference_train "
                         f"{reference_train.shape[1]}; pass the same genes in the same order")
    if reference_target.shape[0] != m:
        raise ValueError(f"reference_target has {reference_target.shape[0]} cells, reference_train {m}; they must "
                         "be the same reference cells in the same order")
    target = reference_target.tocsr() if sp.issparse(reference_target) else np.asarray(reference_target)
    target = target.astype(np.float32, copy=False)
    # one search structure for every block; "auto" is decided from the whole query (N x M pairs)
    index = CodeIndex(_dense(reference_train), k, n, method=method, exact_max_pairs=exact_max_pairs, seed=seed)
    step = int(block_cells) if block_cells else max(1, _BLOCK_VALUES // max(target.shape[1], g_train, 1))
    return _blocks(spatial_train, index, target, step)


def neighbour_mean(index: CodeIndex, spatial_block, target) -> np.ndarray:
    """(n, G_target) float32 plain mean of ``target`` (M, G_target) over each row's K nearest reference cells,
    for the (n, G_train) rows ``spatial_block`` searched in ``index``."""
    idx = index.query(_dense(spatial_block))[0]
    b, kk = idx.shape
    # (b, M) with a 1 at each neighbour: its product with the reference sums the neighbours' rows
    pick = sp.csr_matrix((np.ones(b * kk, np.float32), idx.ravel(), np.arange(0, b * kk + 1, kk)),
                         shape=(b, target.shape[0]))
    total = pick @ target
    total = total.toarray() if sp.issparse(total) else np.asarray(total)
    return (total / np.float32(kk)).astype(np.float32, copy=False)


def _blocks(spatial_train, index: CodeIndex, target, step: int) -> Iterator[tuple[int, np.ndarray]]:
    # a generator apart from knn_average_blocks, so that bad inputs fail at the call, not at the first block
    n = spatial_train.shape[0]
    for start in range(0, n, step):
        yield start, neighbour_mean(index, spatial_train[start:min(start + step, n)], target)


def knn_average(spatial_train, reference_train, reference_target, k: int, *, method: str = "auto", seed: int = 42,
                block_cells: int | None = None, exact_max_pairs: int = 10**9) -> np.ndarray:
    """Plain kNN-average imputation: the mean of each spatial cell's K nearest reference cells.

    Parameters
    ----------
    spatial_train
        (N, G_train) normalised-log expression of the spatial cells on the training genes (dense or scipy
        sparse; densified a block of cells at a time).
    reference_train
        (M, G_train) normalised-log expression of the reference cells on the same genes, same order (densified
        once as float32 for the neighbour search).
    reference_target
        (M, G_target) normalised-log reference expression of the genes to predict (dense or scipy sparse; kept
        as it is, cast to float32).
    k
        Neighbours per spatial cell, ``1 <= k <= M``.
    method
        ``"auto"``, ``"exact"`` or ``"pynndescent"``, as :func:`~stdask.models.stimpute.neighbours
        .cosine_neighbours` (``"auto"``: exact while ``N * M <= exact_max_pairs``, decided once for all cells;
        the pynndescent index is built once and queried per block).
    seed
        pynndescent's ``random_state``.
    block_cells
        Spatial cells per block (default: about 2^24 / G_target, 64 MB of output per block).
    exact_max_pairs
        The ``"auto"`` threshold.

    Returns
    -------
    (N, G_target) float32: row i is the plain mean of ``reference_target`` over cell i's K nearest reference
    cells (cosine distance ``1 - cos`` on the training genes, ties by reference index; a spatial cell with no
    expression on the training genes is at distance 1 from every reference cell and takes the first K). The
    sums are float32 (at most K terms).
    """
    out = np.empty((spatial_train.shape[0], reference_target.shape[1]), dtype=np.float32)
    for start, block in knn_average_blocks(spatial_train, reference_train, reference_target, k, method=method,
                                           seed=seed, block_cells=block_cells, exact_max_pairs=exact_max_pairs):
        out[start:start + block.shape[0]] = block
    return out
