"""What :func:`~stdask.tl.impute.impute` and :func:`~stdask.tl.impute.impute_cv` share: the reference, normalised,
matched to the panel; the spatial normalisation target; the training sample; the gene graphs; a trained model;
and the panel's normalised rows tile after tile.

Both datasets are normalised the spec's way (§1), each separately: counts / total x median total, ``log1p``.
The spatial totals are the panel's (all genes of ``X``), found in one pass over the tiles.

The training sample is drawn in the order of the observation names (``numpy`` ``default_rng(seed)``), so the
same cells are drawn and trained in the same order whatever the store's tiling.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import scipy.sparse as sp

from ...blocks import get_matrix, row_values
from ...dataset import SpatialDataset
from ...models.stimpute.config import StImputeConfig
from ...models.stimpute.fit import StImputeFit, fit, node_macs
from ...models.stimpute.gene_graph import GeneGraph, gene_graph
from ...models.stimpute.reliability import FEATURES
from ...pp.clustering import canonical_order
from ...pp.normalize import totals_block
from .reference import GeneMatch, check_reference, load_reference, match_genes, normalise_log, normalise_log_block

__all__ = ["BLOCK_CELLS", "ImputeInputs", "MIN_TRAIN_CELLS", "TRAIN_CELLS", "TRAIN_MACS", "build_graph",
           "default_train_cells", "panel_rows", "panel_tiles", "prepare", "train_model", "training_sample"]

#: at most this many spatial cells train the model by default (the prediction covers every cell)
TRAIN_CELLS = 20_000
#: ... and about this many multiply-adds per forward pass of the Trans network over the training sample: each
#: of the ``e_epochs x em_rounds`` steps runs it on every (cell, training gene) node, forward and backward; 2e9
#: is about a minute per 10 steps on 2 CPU cores
TRAIN_MACS = 2_000_000_000
#: ... and at least this many cells
MIN_TRAIN_CELLS = 500
#: cells predicted at a time: 2,048 cells x 2,000 genes hold about 16 MB per float32 copy
BLOCK_CELLS = 2048


@dataclass
class ImputeInputs:
    """The reference and the panel, matched and normalised.

    Attributes
    ----------
    reference
        The reference AnnData (as given or read).
    reference_norm
        (M, G_ref) float32 CSR: the reference, normalised and log-transformed.
    match
        :class:`~.reference.GeneMatch` of the panel and the reference.
    spatial_target, reference_target
        The normalisation targets (median totals) used.
    info
        Provenance: reference size, case folding, targets.
    """

    reference: Any
    reference_norm: sp.csr_matrix
    match: GeneMatch
    spatial_target: float
    reference_target: float
    info: dict = field(default_factory=dict)


def _check_panel_counts(ds: SpatialDataset) -> None:
    """Warn when the panel's ``X`` does not look like raw counts (stImpute normalises the panel itself)."""
    first = ds.store.read_rows(0, min(ds.n_obs, 2000))
    values = first.data
    if values.size and not np.allclose(values, np.round(values)):
        warnings.warn(f"{ds.path}: X holds non-integer values; stImpute expects raw counts in X and normalises "
                      "them itself (counts / total x median total, log1p)", UserWarning, stacklevel=4)


def prepare(ds: SpatialDataset, reference: Any, *, reference_layer: str | None = None,
            case_insensitive: bool | None = None, reliability: str = "quantiles",
            progress: bool = True) -> ImputeInputs:
    """Load, check, match and normalise (see the module docstring). Raises ``ValueError`` for a reference with
    NaN / negative values / duplicated genes, for gene-name case that differs, for no shared gene, and for an
    unknown ``reliability`` input (checked first, before any work)."""
    if reliability not in FEATURES:
        raise ValueError(f"reliability must be one of {FEATURES}, got {reliability!r}")
    ref = load_reference(reference, layer=reference_layer)
    check_reference(ref, name="reference" if hasattr(reference, "obs") else f"reference {str(reference)!r}")
    match = match_genes(ds.var_names, ref.var_names, case_insensitive=case_insensitive)
    _check_panel_counts(ds)
    ref_norm, ref_target = normalise_log(ref.X)
    totals = row_values(get_matrix(ds, "X"), totals_block, keep=np.ones(ds.n_vars, dtype=bool),
                        progress=progress, desc="stimpute: cell totals")
    positive = totals[totals > 0]
    if positive.size == 0:
        raise ValueError(f"{ds.path}: every cell has a total count of 0; nothing to impute from")
    target = float(np.median(positive))
    info = {"reference_cells": int(ref.n_obs), "reference_genes": int(ref.n_vars), "shared_genes": len(match.shared),
            "case_folded": match.case_folded, "spatial_target_sum": target, "reference_target_sum": ref_target}
    return ImputeInputs(ref, ref_norm.tocsr(), match, target, ref_target, info)


def training_sample(ds: SpatialDataset, n_cells: int | None, seed: int) -> np.ndarray:
    """Store rows of the training cells, in observation-name order: all cells when ``n_cells`` is None or not
    below ``n_obs``, else ``n_cells`` drawn without replacement by ``default_rng(seed)`` over the name order."""
    order = canonical_order(ds)
    if n_cells is None or n_cells >= ds.n_obs:
        return order
    if n_cells < 2:
        raise ValueError(f"train_cells must be >= 2, got {n_cells}")
    picked = np.sort(np.random.default_rng(seed).choice(ds.n_obs, size=int(n_cells), replace=False))
    return order[picked]


def panel_rows(ds: SpatialDataset, rows: np.ndarray, inputs: ImputeInputs, cols: np.ndarray) -> np.ndarray:
    """(len(rows), len(cols)) float32 normalised-log panel values of the store rows ``rows`` (in that order),
    read tile group by tile group."""
    out = np.empty((len(rows), len(cols)), dtype=np.float32)
    where = np.argsort(rows, kind="stable")
    sorted_rows = rows[where]
    starts = ds.tile_row_start
    for t0, t1 in ds.tile_groups():
        a, b = int(starts[t0]), int(starts[t1])
        lo, hi = np.searchsorted(sorted_rows, [a, b])
        if lo == hi:
            continue
        block = ds.store.read_rows(a, b)[sorted_rows[lo:hi] - a]
        out[where[lo:hi]] = normalise_log_block(block, inputs.spatial_target)[:, cols].toarray()
    return out


def panel_tiles(ds: SpatialDataset, inputs: ImputeInputs, cols: np.ndarray,
                block_cells: int = BLOCK_CELLS) -> Iterator[tuple[int, np.ndarray]]:
    """``(start_row, (n, len(cols)) float32)`` normalised-log panel values in store row order: each tile group is
    read (sparse) and normalised at once, then handed out in blocks of at most ``block_cells`` rows, so that the
    dense predictions of one block (cells x imputed genes, several copies) bound memory, not the tile group."""
    starts = ds.tile_row_start
    for t0, t1 in ds.tile_groups():
        a, b = int(starts[t0]), int(starts[t1])
        group = normalise_log_block(ds.store.read_rows(a, b), inputs.spatial_target)[:, cols]
        for lo in range(0, b - a, block_cells):
            yield a + lo, group[lo:lo + block_cells].toarray()


def build_graph(names: np.ndarray, reference_cols: np.ndarray, inputs: ImputeInputs, config: StImputeConfig,
                gene_embedding: Any) -> GeneGraph:
    """The gene graph (spec §4) over ``names`` whose reference columns are ``reference_cols``."""
    return gene_graph(names, inputs.reference_norm[:, reference_cols], gene_embedding, weighting=config.weighting,
                      k=config.topk, case_insensitive=inputs.match.case_folded)


def default_train_cells(n_train_genes: int, config: StImputeConfig) -> int:
    """Training cells by default: ``TRAIN_MACS / (n_train_genes x node_macs(config))`` within
    ``[MIN_TRAIN_CELLS, TRAIN_CELLS]`` (about 1,000 cells for 377 genes with the large-data settings, 500 with the
    small-data ones, whose MLP is 33 times wider).

    The Trans network is shared by every cell and gene, so some 10^5 (cell, gene) examples train it; more cells
    cost time linearly (the reference trains on all cells, on a GPU)."""
    per_cell = max(int(n_train_genes), 1) * node_macs(config)
    return int(min(TRAIN_CELLS, max(MIN_TRAIN_CELLS, TRAIN_MACS // per_cell)))


def train_model(x_train: np.ndarray, inputs: ImputeInputs, train_ref_cols: np.ndarray, names: np.ndarray,
                config: StImputeConfig, gene_embedding: Any, *, device: str | None, threads: int | None,
                progress: bool) -> tuple[StImputeFit, GeneGraph]:
    """Build the training-gene graph and fit the model on the (N_train, G_train) normalised rows."""
    graph = build_graph(names, train_ref_cols, inputs, config, gene_embedding)
    model = fit(x_train, inputs.reference_norm[:, train_ref_cols], graph.matrix, config, device=device,
                threads=threads, progress=progress)
    return model, graph
