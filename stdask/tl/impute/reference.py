"""stImpute's inputs (spec ``stimpute.md`` §1): the scRNA-seq reference, its checks, the shared genes of the
spatial panel and the reference, and the normalisation both datasets get.

* :func:`load_reference` takes an AnnData, an ``.h5ad`` file or a stdask store and gives an in-memory AnnData;
* :func:`check_reference` refuses NaN/inf, negative values and duplicated gene names, and warns when the values
  are not raw counts (stImpute normalises each dataset itself);
* :func:`match_genes` finds the shared genes (the sorted intersection of the names) and refuses, with examples,
  tables whose gene-name case differs (mouse ``Gapdh`` vs human ``GAPDH``) unless asked to fold case;
* :func:`normalise_log` is SpaGE's protocol: each cell's counts divided by its total, times the median total, then
  ``log1p``; :func:`normalise_log_block` applies a known target to one block (tile) of cells.
"""
from __future__ import annotations

import os
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import scipy.sparse as sp

from ...pp.normalize import log1p_block, normalize_block, totals_block
from ..cci.scale_check import SAMPLE_ROWS, classify_scale

__all__ = ["GeneMatch", "check_reference", "load_reference", "match_genes", "normalise_log", "normalise_log_block"]

#: names shown in an error message that lists genes
_EXAMPLES = 5


def load_reference(reference: Any, *, layer: str | None = None):
    """The scRNA-seq reference as an in-memory AnnData.

    Parameters
    ----------
    reference
        An ``anndata.AnnData`` (returned as is when ``layer`` is None), a path to an ``.h5ad`` file (read whole
        with anndata) or a path to a stdask store (``stdask.read(path).to_anndata()``).
    layer
        Use ``adata.layers[layer]`` as the expression (raw counts) instead of ``X``; the returned AnnData shares
        ``obs`` and ``var`` with the input.

    Returns
    -------
    anndata.AnnData
        (M cells, G genes); not checked (see :func:`check_reference`).

    Raises
    ------
    FileNotFoundError
        The path does not exist.
    ValueError
        The path is neither an ``.h5ad`` file nor a folder (store).
    TypeError
        ``reference`` is neither an AnnData nor a path.
    KeyError
        ``layer`` is not one of the reference's layers.
    """
    import anndata as ad

    if isinstance(reference, ad.AnnData):
        adata = reference
    elif isinstance(reference, (str, os.PathLike)):
        path = Path(reference)
        if not path.exists():
            raise FileNotFoundError(f"reference {str(path)!r} does not exist; pass an AnnData, an .h5ad file or a "
                                    "stdask store")
        if path.is_dir():
            from ...dataset import read

            adata = read(path).to_anndata()
        elif path.suffix.lower() == ".h5ad":
            adata = ad.read_h5ad(path)
        else:
            raise ValueError(f"reference {str(path)!r} is neither an .h5ad file nor a stdask store (a folder); "
                             "convert it to .h5ad (anndata) first")
    else:
        raise TypeError(f"reference must be an anndata.AnnData or a path to an .h5ad file or stdask store, got "
                        f"{type(reference).__name__}")
    if layer is None:
        return adata
    if layer not in adata.layers:
        raise KeyError(f"reference has no layer {layer!r}; its layers are {sorted(adata.layers.keys())} "
                       "(layer=None uses X)")
    return ad.AnnData(X=adata.layers[layer], obs=adata.obs, var=adata.var)


def _values(X) -> np.ndarray:
    """The stored values of a matrix: the explicit entries of a sparse one, every entry of a dense one."""
    return X.data if sp.issparse(X) else np.asarray(X).ravel()


def check_reference(adata, name: str = "reference") -> None:
    """Refuse a reference stImpute cannot use, and warn when it is not raw counts.

    Parameters
    ----------
    adata
        AnnData (M cells, G genes); ``X`` dense or scipy sparse.
    name
        What to call it in messages.

    Raises
    ------
    ValueError
        NaN or inf in ``X`` (with their count), negative values, or duplicated gene names (a few listed).

    Warns
    -----
    UserWarning
        The first rows (:data:`~stdask.tl.cci.scale_check.SAMPLE_ROWS`) hold non-integer values: the input looks
        normalised or log-transformed, while stImpute expects raw counts and normalises each dataset itself
        (spec §1); normalising twice changes the neighbours and the imputed values.
    """
    X = adata.X
    vals = _values(X)
    bad = int(vals.size - np.count_nonzero(np.isfinite(vals)))
    if bad:
        raise ValueError(f"{name}: X holds {bad:,} NaN or infinite values; stImpute needs finite raw counts: "
                         "replace them (e.g. by 0) or drop the affected cells/genes first")
    if vals.size and vals.min() < 0:
        raise ValueError(f"{name}: X holds {int(np.count_nonzero(vals < 0)):,} negative values (min "
                         f"{float(vals.min()):.4g}); stImpute needs raw counts (>= 0), not scaled or centred data")
    dup = [g for g, c in Counter(map(str, adata.var_names)).items() if c > 1]
    if dup:
        raise ValueError(f"{name}: {len(dup)} gene names occur more than once (e.g. {dup[:_EXAMPLES]}); make them "
                         "unique (adata.var_names_make_unique()) or aggregate the duplicates first")
    sample = sp.csr_matrix(X[:SAMPLE_ROWS])
    kind = classify_scale(sample)
    if kind != "counts" and sample.nnz:
        looks = "log-transformed" if kind == "log" else "normalised (non-integer values)"
        warnings.warn(f"{name}: X looks {looks} in its first {sample.shape[0]:,} cells; stImpute expects raw counts "
                      "and normalises each dataset itself (normalize_total to the median total, then log1p; spec "
                      "§1): pass the raw counts (layer='counts', or adata.raw.to_adata())", UserWarning,
                      stacklevel=2)


@dataclass
class GeneMatch:
    """The genes a spatial panel and a reference share.

    Attributes
    ----------
    shared
        (S,) object array of the shared genes' spatial names, sorted (spec §1).
    spatial_index, reference_index
        (S,) int64 positions of the shared genes in the spatial and reference gene lists, in ``shared`` order.
    reference_only
        (R,) object array of the reference genes not in the panel (the genes to impute), sorted.
    reference_only_index
        (R,) int64 positions of ``reference_only`` in the reference gene list.
    case_folded
        True when names were matched by upper-cased symbol (``case_insensitive=True``).
    """

    shared: np.ndarray
    spatial_index: np.ndarray
    reference_index: np.ndarray
    reference_only: np.ndarray
    reference_only_index: np.ndarray
    case_folded: bool


def _positions(names: list[str], what: str) -> dict[str, int]:
    """name -> position; duplicated names are refused (a duplicated gene cannot be matched to one column)."""
    dup = [g for g, c in Counter(names).items() if c > 1]
    if dup:
        raise ValueError(f"{what} gene names are not unique ({len(dup)} duplicated, e.g. {dup[:_EXAMPLES]}); make "
                         "them unique first")
    return {g: i for i, g in enumerate(names)}


def _folded(names: list[str], keys: set[str], what: str) -> dict[str, int]:
    """upper-cased name -> position for the names whose folded key is in ``keys``; refuses keys that two names
    share (``Gapdh`` and ``GAPDH`` in one table), since either could be the match."""
    pos: dict[str, list[int]] = {}
    for i, g in enumerate(names):
        if g.upper() in keys:
            pos.setdefault(g.upper(), []).append(i)
    clash = [[names[i] for i in p] for p in pos.values() if len(p) > 1]
    if clash:
        raise ValueError(f"case_insensitive=True: {len(clash)} {what} gene symbols are ambiguous once upper-cased "
                         f"(e.g. {clash[:_EXAMPLES]}); rename or drop one of each group first")
    return {k: p[0] for k, p in pos.items()}


def match_genes(spatial_genes: Sequence[str], reference_genes: Sequence[str], *,
                case_insensitive: bool | None = None) -> GeneMatch:
    """The shared genes of a spatial panel and a reference, and the reference genes to impute.

    Parameters
    ----------
    spatial_genes, reference_genes
        Gene names of the two tables (each unique).
    case_insensitive
        ``None``: match exact names, and refuse tables whose names agree only up to case (exact matching would
        share fewer genes than upper-cased matching). ``True``: match by upper-cased symbol. ``False``: exact
        names, whatever the case.

    Returns
    -------
    GeneMatch

    Raises
    ------
    ValueError
        Duplicated names in either list; gene-name case that differs between the tables (``case_insensitive``
        None; three example pairs given); symbols ambiguous after upper-casing (``case_insensitive=True``); no
        shared gene.
    """
    sp_names = [str(g) for g in spatial_genes]
    ref_names = [str(g) for g in reference_genes]
    sp_pos = _positions(sp_names, "spatial")
    ref_pos = _positions(ref_names, "reference")
    if case_insensitive:
        keys = {g.upper() for g in sp_names} & {g.upper() for g in ref_names}
        sp_key, ref_key = _folded(sp_names, keys, "spatial"), _folded(ref_names, keys, "reference")
        pairs = sorted((sp_names[sp_key[k]], ref_key[k]) for k in keys)  # by spatial name
        ref_in = {i for _, i in pairs}
    else:
        pairs = sorted((g, ref_pos[g]) for g in sp_pos.keys() & ref_pos.keys())
        ref_in = {i for _, i in pairs}
        if case_insensitive is None:
            _refuse_case_mismatch(sp_names, ref_names, len(pairs))
    if not pairs:
        raise ValueError(f"the spatial panel ({len(sp_names):,} genes, e.g. {sp_names[:3]}) and the reference "
                         f"({len(ref_names):,} genes, e.g. {ref_names[:3]}) share no gene name; check that both use "
                         "the same gene identifiers (symbols vs Ensembl IDs) and species")
    shared = np.array([g for g, _ in pairs], dtype=object)
    only = sorted((g, i) for i, g in enumerate(ref_names) if i not in ref_in)
    return GeneMatch(
        shared=shared,
        spatial_index=np.array([sp_pos[g] for g in shared], dtype=np.int64),
        reference_index=np.array([i for _, i in pairs], dtype=np.int64),
        reference_only=np.array([g for g, _ in only], dtype=object),
        reference_only_index=np.array([i for _, i in only], dtype=np.int64),
        case_folded=bool(case_insensitive))


def _refuse_case_mismatch(sp_names: list[str], ref_names: list[str], n_exact: int) -> None:
    """ValueError when upper-cased matching would share more genes than exact matching."""
    ref_upper: dict[str, str] = {}
    for g in ref_names:
        ref_upper.setdefault(g.upper(), g)
    exact = set(ref_names)
    only_folded = [(g, ref_upper[g.upper()]) for g in sp_names if g not in exact and g.upper() in ref_upper]
    if only_folded:
        raise ValueError(
            f"the spatial and reference tables differ in gene-name case: {len(only_folded):,} spatial genes match a "
            f"reference gene only up to case (e.g. {only_folded[:3]}; {n_exact:,} match exactly). Both tables must "
            "come from the same species with the same naming (mouse 'Gapdh' vs human 'GAPDH' are different "
            "conventions); pass case_insensitive=True to match by upper-cased symbol, or case_insensitive=False "
            "to keep exact matches only")


def _valid_target(target: float) -> np.float32:
    if not (np.isfinite(target) and target > 0):
        raise ValueError(f"target must be a finite number > 0, got {target!r}")
    return np.float32(target)


def _median_total(totals: np.ndarray) -> np.float32:
    """The median of the totals above 0 (cells without counts do not pull the target down)."""
    positive = totals[totals > 0]
    if positive.size == 0:
        raise ValueError(f"every one of the {totals.size:,} cells has a total count of 0; nothing to normalise")
    return np.float32(np.median(positive))


def normalise_log_block(X, target: float) -> sp.csr_matrix:
    """One block of cells normalised with a known target (for tiles streamed after the target is known).

    Parameters
    ----------
    X
        (n, G) counts, dense or scipy sparse.
    target
        Total each cell is scaled to (from :func:`normalise_log`).

    Returns
    -------
    (n, G) float32 CSR: ``log1p(x / total * target)`` per cell (float32 arithmetic, as ``stdask.pp``); a cell
    with total 0 stays all zero.
    """
    keep = np.ones(X.shape[1], dtype=bool)
    return log1p_block(normalize_block(X, _valid_target(target), keep), None)


def normalise_log(X, target: float | None = None) -> tuple[sp.csr_matrix, float]:
    """SpaGE's preprocessing (spec §1): per-cell counts / total * median total, then ``log1p``.

    Parameters
    ----------
    X
        (n, G) raw counts, dense or scipy sparse.
    target
        Total each cell is scaled to; ``None``: the median of the per-cell totals over the cells whose total is
        above 0 (totals summed in float32, as ``stdask.pp.normalize_total``).

    Returns
    -------
    normalised
        (n, G) float32 CSR (a dense input is converted); cells with total 0 stay all zero.
    target
        The target used (float).

    Raises
    ------
    ValueError
        ``target`` not finite and > 0, or (``target=None``) no cell with counts.
    """
    keep = np.ones(X.shape[1], dtype=bool)
    t = _median_total(totals_block(X, keep)) if target is None else _valid_target(target)
    return log1p_block(normalize_block(X, t, keep), None), float(t)
