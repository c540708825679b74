"""Principal component analysis of a slice of any size, tile by tile.

Exact path (``svd_solver="covariance_eigh"``, the same algorithm as scanpy / scikit-learn's
``covariance_eigh``): a cheap pass finds each gene's largest |value|, then one pass accumulates the gene x
gene gram matrix ``X^T X`` and the column sums exactly in integers (:mod:`stdask.pp._gram`: each value
held to 40 bits relative to its gene's maximum; a numba kernel over the stored entries of sparse blocks,
exact-integer BLAS on dense ones). The covariance ``(X^T X - n mu mu^T) / (n - 1)`` is formed without ever
centring the (sparse) data and eigendecomposed (``numpy.linalg.eigh``; Lanczos above 600 genes); the data
are projected chunk by chunk (lazily) as ``X V - mu V``. Memory: two (genes x genes) int64 matrices per
chunk in flight, so it is meant for up to a few thousand genes (highly variable genes).

Randomized path (``svd_solver="randomized"``, the default above 4,000 genes): subspace iteration on the
same implicitly centred covariance operator; each iteration is one pass computing ``X^T (X W)`` exactly
in integers (a genes x (n_comps + oversampling) matrix), followed by a Rayleigh-Ritz step. Memory is linear
in genes.

Either way the result is float32 ``obsm["X_pca"]`` (lazy), ``varm["PCs"]`` and ``uns["pca"]`` with
``variance`` and ``variance_ratio``, as scanpy writes them, and is bit-identical for any tile size (row
order), any grouping of tiles into chunks and any scheduler.
"""
from __future__ import annotations

import dask.array as da
import numpy as np
import scipy.sparse as sp

from ..dataset import SpatialDataset
from ..results import writes_results
from ..settings import settings
from . import _gram
from ..blocks import gene_mask, get_matrix, map_rows, tree_reduce, var_column
from .normalize import scale_block

SOLVERS = ("auto", "covariance_eigh", "randomized")
#: above this many genes, ``svd_solver="auto"`` picks the randomized path
MAX_GENES_EIGH = 4000


def _take_columns(block, idx: np.ndarray):
    return block[:, idx]


def _scaled_columns(block, idx: np.ndarray, mean: np.ndarray, std: np.ndarray, zero_center: bool,
                    max_value: float | None):
    return scale_block(block[:, idx], mean, std, zero_center, max_value)


def pca_input(ds: SpatialDataset, layer: str, mask: np.ndarray | None):
    """The (n_obs, n_genes_used) dask matrix PCA reads: ``layer`` restricted to the genes of ``mask``.

    A pending (not yet written) ``scale`` layer is rebuilt from its input layer restricted to the masked
    genes first, so only the used genes are ever densified.
    """
    idx = np.flatnonzero(mask) if mask is not None else None
    try:
        info = ds.get_result("uns", "scale") if ("layers", layer) in ds.pending else None
    except KeyError:
        info = None
    if isinstance(info, dict) and info.get("key_added") == layer and idx is not None:
        src = get_matrix(ds, info["layer"])
        tab = ds.get_result("varm", "scale")
        mean, std = tab["mean"].to_numpy()[idx], tab["std"].to_numpy()[idx]
        zc = bool(info["zero_center"])
        return map_rows(src, _scaled_columns, dtype=np.float32, sparse=not zc, n_cols=len(idx), idx=idx,
                        mean=mean, std=std, zero_center=zc, max_value=info["max_value"])
    X = get_matrix(ds, layer)
    if idx is None:
        return X
    return map_rows(X, _take_columns, dtype=X.dtype, sparse=sp.issparse(X._meta), n_cols=len(idx), idx=idx)


def _reduce_all(arrays: list[da.Array], func, combine, progress: bool, desc: str, **kwargs):
    # an exact reduction (maxima, integer sums) over the row chunks of every array
    out = None
    for X in arrays:
        p = tree_reduce(X, func, combine, progress=progress, desc=desc, **kwargs)
        out = p if out is None else combine(out, p)
    return out


def fit_pca(arrays: list[da.Array], n_comps: int, *, zero_center: bool = True, solver: str = "covariance_eigh",
            n_iter: int = 7, n_oversamples: int = 20, random_state: int = 0,
            progress: bool = True) -> tuple[np.ndarray, np.ndarray, float, np.ndarray]:
    """Principal axes of the rows of one or several (n_i, g) dask matrices taken together.

    The gram matrix (or ``X^T X W``) is accumulated exactly (:mod:`stdask.pp._gram`), so the result is
    bit-identical for any chunking, tiling, row order and scheduler.

    Returns
    -------
    Vt
        (n_comps, g) float64 components, signs as scikit-learn.
    variance
        (n_comps,) explained variance (``zero_center=False``: the variance of each projected coordinate).
    total
        Total variance (sum over genes), so ``variance / total`` is scanpy's ``variance_ratio``.
    mean
        (g,) column means.
    """
    n = int(sum(X.shape[0] for X in arrays))
    colmax, rowmax = _reduce_all(arrays, _gram.block_bounds, _gram.merge_bounds, progress, "pca: bounds")
    exps = _gram.column_exponents(colmax)
    b = _gram.slice_bits(n)
    if solver == "covariance_eigh":
        _, acc, sums = _reduce_all(arrays, _gram.gram_block, _gram.add_partials, progress, "pca: covariance",
                                     exps=exps, b=b, backend=settings.backend)
        G, s = _gram.finish_gram(acc, sums, exps, b)
        mean = s / n
        M = G - n * np.outer(mean, mean) if zero_center else G
        Vt, evals = top_eigen(M, n_comps)
        Vt = _flip(Vt)
        if zero_center:
            variance, total = evals / (n - 1), float(np.trace(M)) / (n - 1)
        else:
            variance = evals / n - (Vt @ mean) ** 2
            total = float((np.diag(G) / n - mean**2).sum())
        return Vt, variance, total, mean
    g = len(colmax)
    l = min(g, n_comps + max(0, int(n_oversamples)))
    rng = np.random.default_rng(random_state)
    W, _ = np.linalg.qr(rng.standard_normal((g, l)))
    for it in range(max(0, int(n_iter)) + 1):
        yexps = _gram.y_exponents(rowmax, W)
        _, acc, sums = _reduce_all(arrays, _gram.xtxw_block, _gram.add_partials, progress,
                                     f"pca: randomized pass {it + 1}/{n_iter + 1}", W=W, exps=exps, yexps=yexps,
                                     b=b, backend=settings.backend)
        Y, s, s2 = _gram.finish_xtxw(acc, sums, exps, yexps, b)
        mean = s / n
        MW = Y - n * np.outer(mean, mean @ W) if zero_center else Y
        if it < n_iter:
            W, _ = np.linalg.qr(MW)
    # Rayleigh-Ritz on the last subspace: W^T M W (M symmetric)
    B = W.T @ MW
    B = (B + B.T) / 2
    evals, evecs = np.linalg.eigh(B)
    evals, evecs = np.clip(evals[::-1], 0, None), evecs[:, ::-1]
    Vt = _flip((W @ evecs[:, :n_comps]).T)
    if zero_center:
        variance = evals[:n_comps] / (n - 1)
        total = float(((s2 - n * mean**2) / (n - 1)).sum())
    else:
        variance = evals[:n_comps] / n - (Vt @ mean) ** 2
        total = float((s2 / n - mean**2).sum())
    return Vt, variance, total, mean


def top_eigen(M: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k leading eigenpairs of a symmetric PSD matrix: (k, g) eigenvectors (rows) and (k,) eigenvalues,
    descending, clipped at 0. Up to 600 rows: full ``eigh``; larger: Lanczos (ARPACK, a fixed start vector,
    so deterministic) on the in-memory matrix, O(g^2) per step instead of O(g^3)."""
    g = M.shape[0]
    if g <= 600 or k >= g - 1:
        evals, evecs = np.linalg.eigh(M)
        evals, evecs = np.clip(evals[::-1], 0, None), evecs[:, ::-1]
        return evecs[:, :k].T, evals[:k]
    from scipy.sparse.linalg import eigsh

    evals, evecs = eigsh(M, k=k, which="LA", v0=np.full(g, 1.0 / np.sqrt(g)), tol=0)
    order = np.argsort(evals)[::-1]
    return evecs[:, order].T, np.clip(evals[order], 0, None)


def project_block(block, V: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """(n_rows, k) float32 scores ``block @ V - shift`` of a (n_rows, n_genes) block on loadings ``V``
    (n_genes, k); ``shift`` (k,) is ``mean @ V`` for centred PCA."""
    # (x - mu) V computed as x V - mu V (sparse rows stay sparse), float64, stored float32
    out = block @ V if sp.issparse(block) else np.asarray(block, dtype=np.float64) @ V
    return (np.asarray(out) - shift).astype(np.float32)


def _flip(Vt: np.ndarray) -> np.ndarray:
    # scikit-learn's svd_flip(u_based_decision=False): the largest |loading| of each component is positive
    i = np.argmax(np.abs(Vt), axis=1)
    signs = np.sign(Vt[np.arange(Vt.shape[0]), i])
    signs[signs == 0] = 1
    return Vt * signs[:, None]


@writes_results(returns_dataset=True)
def pca(ds: SpatialDataset, n_comps: int | None = None, *, layer: str = "log1p", zero_center: bool = True,
        mask_var: np.ndarray | str | None = "auto", svd_solver: str = "auto", n_iter: int = 7,
        n_oversamples: int = 20, random_state: int = 0, key_added: str | None = None,
        progress: bool = True) -> None:
    """PCA of a layer (scanpy's ``pca``), exact on sparse data with implicit centring.

    Parameters
    ----------
    ds
        The dataset.
    n_comps
        Number of components; ``None``: ``min(50, n_genes_used - 1, n_obs - 1)``.
    layer
        Input matrix (default the log-normalised ``"log1p"``; use ``"scaled"`` after :func:`stdask.pp.scale`).
    zero_center
        Centre each gene (PCA). ``False``: truncated SVD of the uncentred data, as scanpy's
        ``zero_center=False`` (explained variance is then the variance of each projected coordinate).
    mask_var
        Genes to use: a boolean (n_vars,) mask, the name of a boolean per-gene column, ``None`` (all genes),
        or ``"auto"``: ``"highly_variable"`` when that column exists (as scanpy), else all genes.
    svd_solver
        ``"covariance_eigh"`` (exact), ``"randomized"`` (subspace iteration) or ``"auto"`` (exact up to
        4,000 genes used).
    n_iter, n_oversamples, random_state
        Randomized path: subspace iterations, extra vectors beyond ``n_comps``, seed of the start block.
    key_added
        ``None``: ``obsm["X_pca"]``, ``varm["PCs"]``, ``uns["pca"]`` (scanpy's keys); else all three use
        this key.
    progress
        Show progress of the passes over the data.

    Notes
    -----
    Writes ``obsm["X_pca"]`` ((n_obs, n_comps) float32, a lazy dask array computed tile by tile),
    ``varm["PCs"]`` ((n_vars, n_comps) float64 loadings, zero for genes outside the mask),
    ``uns["pca"] = {"variance": (n_comps,), "variance_ratio": (n_comps,), "params": {...}}``. Component signs
    follow scikit-learn (the largest absolute loading of each component is positive).
    """
    if svd_solver not in SOLVERS:
        raise ValueError(f"svd_solver must be one of {SOLVERS}, got {svd_solver!r}")
    mask_param = mask_var
    if isinstance(mask_var, str) and mask_var == "auto":
        try:
            var_column(ds, "highly_variable")
            mask_var = mask_param = "highly_variable"
        except KeyError:
            mask_var = mask_param = None
    mask = gene_mask(ds, mask_var)
    g = int(mask.sum()) if mask is not None else ds.n_vars
    min_dim = min(g, ds.n_obs)
    if n_comps is None:
        n_comps = min(50, min_dim - 1)
    if not 1 <= n_comps <= min_dim - (1 if zero_center else 0):
        raise ValueError(f"n_comps={n_comps} must be in [1, {min_dim - (1 if zero_center else 0)}] for "
                         f"{ds.n_obs} observations x {g} genes")
    solver = svd_solver if svd_solver != "auto" else ("covariance_eigh" if g <= MAX_GENES_EIGH else "randomized")
    X = pca_input(ds, layer, mask)
    Vt, variance, total, mean = fit_pca([X], n_comps, zero_center=zero_center, solver=solver, n_iter=n_iter,
                                        n_oversamples=n_oversamples, random_state=random_state,
                                        progress=progress)
    shift = (mean @ Vt.T) if zero_center else np.zeros(n_comps)
    X_pca = map_rows(X, project_block, dtype=np.float32, sparse=False, n_cols=n_comps, V=Vt.T.copy(), shift=shift)

    key_obsm, key_varm, key_uns = ("X_pca", "PCs", "pca") if key_added is None else (key_added,) * 3
    PCs = np.zeros((ds.n_vars, n_comps))
    if mask is not None:
        PCs[mask] = Vt.T
    else:
        PCs[:] = Vt.T
    ds.set_result("obsm", key_obsm, X_pca)
    ds.set_result("varm", key_varm, PCs)
    params = {"zero_center": bool(zero_center), "use_highly_variable": mask_param == "highly_variable",
              "mask_var": mask_param if isinstance(mask_param, str) else (None if mask_param is None else "mask"),
              "layer": layer, "svd_solver": solver}
    ds.set_result("uns", key_uns, {"params": params, "variance": np.asarray(variance, dtype=np.float64),
                                   "variance_ratio": np.asarray(variance / total, dtype=np.float64)})


__all__ = ["pca", "pca_input", "fit_pca", "top_eigen", "SOLVERS", "MAX_GENES_EIGH"]
