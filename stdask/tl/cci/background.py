"""Each valid LR's background: its random gene pairs, and the tables the background kernel reads.

A :class:`Background` is the recipe (matched genes, seed, n_pairs; or recorded pairs to replay), a few MB
even for the tutorial's 1,500 LRs x 10,000 pairs. Tasks receive the recipe and one task expands it into the
pair tables (hundreds of MB at that size) on a worker, so the task graph a client ships to a remote
scheduler stays small; the expansion is deterministic (keyed streams), so any worker gets the same tables.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from .features import GeneValues, column_quantiles, matched_genes
from .pairs import random_pairs


@dataclass(frozen=True)
class Background:
    """Recipe of the background pairs of the valid LRs.

    Attributes
    ----------
    names
        (n_lr,) ``"L_R"`` names (they key the random streams).
    ligand, receptor
        (n_lr,) var indices of each LR's genes.
    matched
        var index of an LR gene -> (n_genes,) var indices of its expression-matched candidates.
    n_pairs, seed
        Pairs per LR and the stream seed.
    replay
        Recorded ``(pl, pr)`` (n_lr, n_pairs) var indices to use instead of drawing (parity tests).
    """

    names: np.ndarray
    ligand: np.ndarray
    receptor: np.ndarray
    matched: dict
    n_pairs: int
    seed: int
    replay: tuple | None = None

    def pairs(self, j: int) -> np.ndarray:
        """(n_pairs, 2) var indices (ligand side, receptor side) of LR ``j``."""
        if self.replay is not None:
            return np.column_stack([self.replay[0][j], self.replay[1][j]]).astype(np.int64)
        return random_pairs(self.matched[int(self.ligand[j])], self.matched[int(self.receptor[j])], self.n_pairs,
                            self.seed, str(self.names[j]))

    def __dask_tokenize__(self):
        # the matched genes as three flat arrays rather than a dict of thousands of small ones: tokenizing
        # those field by field costs more than the task itself on a small slice
        from dask.base import tokenize

        vals = [np.asarray(v) for v in self.matched.values()]
        return ("stdask.tl.cci.Background", tokenize(
            np.asarray(self.names, dtype=str), self.ligand, self.receptor,
            np.fromiter(self.matched, dtype=np.int64, count=len(self.matched)),
            np.array([len(v) for v in vals], dtype=np.int64),
            np.concatenate(vals) if vals else np.empty(0, np.int64), self.n_pairs, self.seed, self.replay))

    def tables(self) -> tuple[np.ndarray, np.ndarray]:
        """(n_lr, n_pairs) int32 ligand-side and receptor-side var indices of every LR."""
        if self.replay is not None:
            return self.replay
        pl = np.empty((len(self.names), self.n_pairs), dtype=np.int32)
        pr = np.empty_like(pl)
        for j in range(len(self.names)):
            bp = self.pairs(j)
            pl[j], pr[j] = bp[:, 0], bp[:, 1]
        return pl, pr


def background_tables(bg: Background, columns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(n_lr, n_pairs) int32 ligand-side and receptor-side positions in ``columns`` (sorted var indices that
    hold every background gene) of every LR's pairs. Run in a task."""
    pl, pr = bg.tables()
    lookup = np.full(int(columns.max()) + 1, -1, dtype=np.int32)
    lookup[columns] = np.arange(len(columns), dtype=np.int32)
    return lookup[pl], lookup[pr]


def matched_background(nz: Callable[[int], np.ndarray], lr_genes: np.ndarray, n_vars: int, n_obs: int,
                       n_pairs: int, var_names, lr_q: np.ndarray | None = None) -> dict[int, np.ndarray]:
    """Each LR gene's expression-matched background genes (stLearn's rule).

    The candidates are the genes outside ``lr_genes``; each LR gene keeps the ``round(2 sqrt(n_pairs))``
    candidates nearest in their 12 expression quantiles (:func:`~.features.matched_genes`).

    Parameters
    ----------
    nz
        ``nz(g)``: (nnz_g,) the non-zero values of gene ``g`` over all observations.
    lr_genes
        (n_lr_genes,) sorted var indices of the genes of the LR pairs tested.
    n_vars, n_obs
        Genes and observations of the dataset.
    n_pairs
        Background pairs per LR.
    var_names
        (n_vars,) gene names (for the warning about genes with too few matches).
    lr_q
        (12, n_lr_genes) quantiles of ``lr_genes`` when the caller has them already.

    Returns
    -------
    var index of an LR gene -> (n_found,) int64 var indices of its matched genes, nearest first.
    """
    n_genes = int(round(2 * np.sqrt(n_pairs)))
    candidates = np.setdiff1d(np.arange(n_vars), lr_genes)
    if len(candidates) < n_genes:
        raise ValueError(f"only {len(candidates)} genes outside the valid LR pairs, but {n_genes} background genes "
                         f"per LR gene are needed for n_pairs={n_pairs}; the background needs non-LR genes")
    if lr_q is None:
        lr_q = column_quantiles(GeneValues(nz, lr_genes), n_obs)
    cand_q = column_quantiles(GeneValues(nz, candidates), n_obs).astype(np.float32)
    idx, n_found = matched_genes(lr_q.T, cand_q.T, n_genes)
    matched = {int(g): candidates[idx[k, :n_found[k]]] for k, g in enumerate(lr_genes)}
    short = [var_names[g] for k, g in enumerate(lr_genes) if n_found[k] < n_genes]
    if short:
        warnings.warn(f"fewer than {n_genes} matched background genes for {len(short)} gene(s) (e.g. {short[:3]}); "
                      "using those available", stacklevel=3)
    return matched


class BackgroundPairs(Mapping):
    """``{"L_R": (n_pairs, 2) gene names}``, drawn on access (the draws are deterministic)."""

    def __init__(self, bg: Background, var_names: np.ndarray) -> None:
        self._bg = bg
        self._var = np.asarray(var_names)
        self._pos = {str(n): j for j, n in enumerate(bg.names)}

    def __getitem__(self, name: str) -> np.ndarray:
        return self._var[self._bg.pairs(self._pos[name])]

    def __iter__(self):
        return iter(self._pos)

    def __len__(self) -> int:
        return len(self._pos)
