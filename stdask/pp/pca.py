"""Principal component analysis of a slice of any size, tile by tile.

Exact path (``svd_solver="covariance_eigh"``, the same algorithm as scanpy / scikit-learn's
``covariance_eigh``): one pass accumulates the gene x gene gram matrix ``X^T X`` and the column sums in
float64, one tile at a time (a sparse product for sparse tiles, dense BLAS for dense ones) and added in tile
order; the covariance ``(X^T X - n mu mu^T) / (n - 1)`` is
formed without ever centring the (sparse) data, eigendecomposed with ``numpy.linalg.eigh``, and the data are
projected chunk by chunk (lazily) as ``X V - mu V``. Memory: one (genes x genes) float64 matrix per tile in
flight, so it is meant for up to a few thousand genes (highly variable genes).

Randomized path (``svd_solver="randomized"``, the default above 4,000 genes): subspace iteration on the
same implicitly centred covariance operator; each iteration is one pass computing ``X^T (X W)`` per tile
(a genes x (n_comps + oversampling) matrix), followed by a Rayleigh-Ritz step. Memory is linear in genes.

Either way the result is float32 ``obsm["X_pca"]`` (lazy), ``varm["PCs"]`` and ``uns["pca"]`` with
``variance`` and ``variance_ratio``, as scanpy writes them, and is bit-identical for any grouping of tiles
into chunks and any scheduler.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from ..dataset import SpatialDataset
from ._blocks import fold_tiles, gene_mask, get_matrix, map_rows, var_column
from .normalize import scale_block

SOLVERS = ("auto", "covariance_eigh", "randomized")
#: above this many genes, ``svd_solver="auto"`` picks the randomized path
MAX_GENES_EIGH = 4000
#: rows densified at a time inside a tile (bounds memory: 2,048 x 2,000 genes float64 = 33 MB)
_ROWS_PER_BLOCK = 2048
#: below this fraction of non-zeros a tile's gram matrix is a sparse product
_SPARSE_GRAM_DENSITY = 0.15


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


def _dense64(block, r0: int, r1: int) -> np.ndarray:
    b = block[r0:r1]
    return b.toarray().astype(np.float64) if sp.issparse(b) else np.asarray(b, dtype=np.float64)


def _gram_tile(block) -> tuple:
    # (rows, X^T X, column sums) of one tile. Sparse tiles use scipy's sparse product (single-threaded,
    # ~2x faster than dense BLAS on both cores below ~15% density); denser ones are densified
    # _ROWS_PER_BLOCK rows at a time (fixed offsets from the tile's first row). Either way the arithmetic
    # depends on the tile alone, not on the chunk it sits in.
    n, g = block.shape
    if sp.issparse(block) and block.nnz < _SPARSE_GRAM_DENSITY * n * g:
        B = sp.csr_matrix(block, dtype=np.float64)
        return n, (B.T @ B).toarray(), np.asarray(B.sum(axis=0)).ravel()
    G = np.zeros((g, g))
    s = np.zeros(g)
    for r0 in range(0, n, _ROWS_PER_BLOCK):
        B = _dense64(block, r0, r0 + _ROWS_PER_BLOCK)
        G += B.T @ B
        s += B.sum(axis=0)
    return n, G, s


def _xtxw_tile(block, W: np.ndarray) -> tuple:
    # (rows, X^T (X W), column sums, column sums of squares) of one tile
    n, g = block.shape
    Y = np.zeros((g, W.shape[1]))
    s = np.zeros(g)
    s2 = np.zeros(g)
    for r0 in range(0, n, _ROWS_PER_BLOCK):
        b = block[r0 : r0 + _ROWS_PER_BLOCK]
        if sp.issparse(b):
            b = sp.csr_matrix(b, dtype=np.float64)
            Y += np.asarray(b.T @ (b @ W))
            s += np.asarray(b.sum(axis=0)).ravel()
            s2 += np.asarray(b.multiply(b).sum(axis=0)).ravel()
        else:
            B = np.asarray(b, dtype=np.float64)
            Y += B.T @ (B @ W)
            s += B.sum(axis=0)
            s2 += np.square(B).sum(axis=0)
    return n, Y, s, s2


def _add(a: tuple, b: tuple) -> tuple:
    return (a[0] + b[0],) + tuple(x + y for x, y in zip(a[1:], b[1:]))


def _project(block, V: np.ndarray, shift: np.ndarray) -> np.ndarray:
    # (x - mu) V computed as x V - mu V (sparse rows stay sparse), float64, stored float32
    out = block @ V if sp.issparse(block) else np.asarray(block, dtype=np.float64) @ V
    return (np.asarray(out) - shift).astype(np.float32)


def _flip(Vt: np.ndarray) -> np.ndarray:
    # scikit-learn's svd_flip(u_based_decision=False): the largest |loading| of each component is positive
    i = np.argmax(np.abs(Vt), axis=1)
    signs = np.sign(Vt[np.arange(Vt.shape[0]), i])
    signs[signs == 0] = 1
    return Vt * signs[:, None]


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

    if solver == "covariance_eigh":
        n, G, s = fold_tiles(ds, X, _gram_tile, _add, progress=progress, desc="pca: covariance")
        mean = s / n
        M = G - n * np.outer(mean, mean) if zero_center else G.copy()
        evals, evecs = np.linalg.eigh(M)
        evals, evecs = evals[::-1], evecs[:, ::-1]
        evals = np.clip(evals, 0, None)
        Vt = _flip(evecs[:, :n_comps].T)
        if zero_center:
            ev_all = evals / (n - 1)
            variance = ev_all[:n_comps]
            total = ev_all.sum()
        else:
            variance = evals[:n_comps] / n - (Vt @ mean) ** 2
            total = (np.diag(G) / n - mean**2).sum()
    else:
        Vt, variance, total, mean = _randomized(ds, X, g, n_comps, zero_center, n_iter, n_oversamples,
                                                random_state, progress)
    shift = (mean @ Vt.T) if zero_center else np.zeros(n_comps)
    X_pca = map_rows(X, _project, dtype=np.float32, sparse=False, n_cols=n_comps, V=Vt.T.copy(), shift=shift)

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


def _randomized(ds, X, g, k, zero_center, n_iter, n_oversamples, random_state, progress):
    l = min(g, k + max(0, int(n_oversamples)))
    rng = np.random.default_rng(random_state)
    W, _ = np.linalg.qr(rng.standard_normal((g, l)))
    n = mean = s2 = None
    for it in range(max(0, int(n_iter)) + 1):
        n, Y, s, s2 = fold_tiles(ds, X, _xtxw_tile, _add, W=W, progress=progress,
                                 desc=f"pca: randomized pass {it + 1}/{n_iter + 1}")
        mean = s / n
        MW = Y - n * np.outer(mean, mean @ W) if zero_center else Y
        if it < n_iter:
            W, _ = np.linalg.qr(MW)
    # Rayleigh-Ritz on the last subspace: W^T M W (M symmetric)
    B = W.T @ MW
    B = (B + B.T) / 2
    evals, evecs = np.linalg.eigh(B)
    evals, evecs = np.clip(evals[::-1], 0, None), evecs[:, ::-1]
    Vt = _flip((W @ evecs[:, :k]).T)
    if zero_center:
        variance = evals[:k] / (n - 1)
        total = ((s2 - n * mean**2) / (n - 1)).sum()
    else:
        variance = evals[:k] / n - (Vt @ mean) ** 2
        total = (s2 / n - mean**2).sum()
    return Vt, variance, total, mean


__all__ = ["pca", "pca_input", "SOLVERS", "MAX_GENES_EIGH"]
