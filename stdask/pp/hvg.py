"""Highly variable genes: scanpy's ``seurat``, ``cell_ranger`` and ``seurat_v3`` flavours, out of core.

Every flavour needs only per-gene sums over cells (means, variances, and for ``seurat_v3`` sums of clipped
values), which :func:`stdask.blocks.column_moments` computes exactly in one pass per statistic over the
tiles. The selection itself runs on (n_vars,) vectors with scanpy's own formulas, so the gene sets equal
scanpy's on data that fits in memory, and are identical for any tiling and scheduler.
"""
from __future__ import annotations

import functools
import warnings

import numpy as np
import pandas as pd

from ..dataset import SpatialDataset
from ..results import writes_results
from ..blocks import column_moments, get_matrix, set_var_table

FLAVORS = ("seurat", "cell_ranger", "seurat_v3")


def _expm1(data: np.ndarray, log_base: float | None) -> np.ndarray:
    # undo log1p on stored values (float32, as scanpy does on its copy of the matrix)
    if log_base is not None:
        data = data * np.float32(np.log(log_base))
    return np.expm1(data)


def _log1p_base(ds: SpatialDataset) -> float | None:
    try:
        info = ds.get_result("uns", "log1p")
    except KeyError:
        return None
    base = info.get("base") if isinstance(info, dict) else None
    return None if base is None or (isinstance(base, float) and np.isnan(base)) else float(base)


@writes_results
def highly_variable_genes(ds: SpatialDataset, *, layer: str | None = None, flavor: str = "seurat",
                          n_top_genes: int | None = None, min_disp: float = 0.5, max_disp: float = np.inf,
                          min_mean: float = 0.0125, max_mean: float = 3, span: float = 0.3, n_bins: int = 20,
                          key_added: str = "hvg", progress: bool = True) -> pd.DataFrame:
    """Annotate highly variable genes (scanpy's ``highly_variable_genes``, without batches).

    Parameters
    ----------
    ds
        The dataset.
    layer
        Input matrix. ``None``: ``"log1p"`` for ``seurat`` / ``cell_ranger`` (log-normalised data expected),
        ``"X"`` (counts) for ``seurat_v3``.
    flavor
        ``"seurat"``, ``"cell_ranger"`` or ``"seurat_v3"`` (needs ``scikit-misc`` for the loess fit).
    n_top_genes
        Number of genes to select; required for ``seurat_v3``. Otherwise, with ``None`` the cutoffs
        ``min_mean < mean < max_mean`` and ``min_disp < dispersions_norm < max_disp`` select.
    min_disp, max_disp, min_mean, max_mean
        Cutoffs (``seurat`` / ``cell_ranger`` without ``n_top_genes``); means are log1p of the mean of
        ``expm1`` of the data, as in scanpy.
    span
        Loess span (``seurat_v3``).
    n_bins
        Number of mean bins (``seurat``).
    key_added
        ``varm`` key of the result table.
    progress
        Show progress of the statistics passes.

    Returns
    -------
    pandas.DataFrame
        Indexed by gene name; ``highly_variable`` (bool), ``means``, and ``dispersions``,
        ``dispersions_norm`` (``seurat``, ``cell_ranger``) or ``variances``, ``variances_norm``,
        ``highly_variable_rank`` (``seurat_v3``), with scanpy's dtypes (float64; ``dispersions_norm``
        float32, ``highly_variable_rank`` float32 with NaN outside the top genes). The same table is
        recorded as ``varm[key_added]`` (found by name by :func:`stdask.pp.pca`'s ``mask_var``), and
        ``uns["hvg"] = {"flavor": flavor}``.

    Notes
    -----
    scanpy's ``subset=True`` has no equivalent: the store keeps all genes; pass the mask on
    (``stdask.pp.pca(ds, mask_var="highly_variable")``, the default when the column exists), or write a
    subset store with :func:`stdask.pp.subset`.
    """
    if flavor not in FLAVORS:
        raise ValueError(f"flavor must be one of {FLAVORS}, got {flavor!r}")
    if n_top_genes is not None and n_top_genes < 1:
        raise ValueError(f"n_top_genes must be >= 1, got {n_top_genes}")
    if flavor == "seurat_v3":
        if n_top_genes is None:
            raise ValueError("flavor='seurat_v3' needs n_top_genes")
        df = _seurat_v3(ds, layer or "X", n_top_genes, span, progress)
    else:
        cutoffs = (min_disp, max_disp, min_mean, max_mean)
        if n_top_genes is not None and cutoffs != (0.5, np.inf, 0.0125, 3):
            warnings.warn("If you pass `n_top_genes`, all cutoffs are ignored.", UserWarning, stacklevel=2)
        df = _dispersion(ds, layer or "log1p", flavor, n_top_genes, cutoffs, n_bins, progress)
    df.index = ds.var_names
    set_var_table(ds, key_added, df)
    ds.set_result("uns", "hvg", {"flavor": flavor, "key_added": key_added})
    return df


def _dispersion(ds: SpatialDataset, layer: str, flavor: str, n_top_genes: int | None, cutoffs: tuple,
                n_bins: int, progress: bool) -> pd.DataFrame:
    X = get_matrix(ds, layer)
    transform = functools.partial(_expm1, log_base=_log1p_base(ds)) if flavor == "seurat" else None
    mom = column_moments(X, squares=True, transform=transform, progress=progress, desc="hvg: gene statistics")
    mean, var = mom.means(), mom.variances(ddof=1)
    mean[mean == 0] = 1e-12
    dispersion = var / mean
    if flavor == "seurat":
        dispersion[dispersion == 0] = np.nan
        dispersion = np.log(dispersion)
        mean = np.log1p(mean)
    df = pd.DataFrame({"means": mean, "dispersions": dispersion})
    if flavor == "seurat":
        bins = n_bins
    else:
        bins = np.r_[-np.inf, np.percentile(df["means"], np.arange(10, 105, 5)), np.inf]
    df["mean_bin"] = pd.cut(df["means"], bins=bins)
    grouped = df.groupby("mean_bin", observed=True)["dispersions"]
    if flavor == "seurat":
        stats = grouped.agg(avg="mean", dev="std")
        # a bin holding a single gene has no std: scanpy sets its normalised dispersion to 1
        one = stats["dev"].isnull()
        stats.loc[one, "dev"] = stats.loc[one, "avg"]
        stats.loc[one, "avg"] = 0
    else:
        from statsmodels.robust import mad

        def _mad(a):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", category=RuntimeWarning)
                return mad(a)

        stats = grouped.agg(avg="median", dev=_mad)
    stats = stats.loc[df["mean_bin"]].set_index(df.index)
    df["dispersions_norm"] = (df["dispersions"] - stats["avg"]) / stats["dev"]
    disp_norm = df["dispersions_norm"].to_numpy()
    if n_top_genes is None:
        min_disp, max_disp, min_mean, max_mean = cutoffs
        dn = np.nan_to_num(disp_norm)
        hv = (mean > min_mean) & (mean < max_mean) & (dn > min_disp) & (dn < max_disp)
    else:
        n = min(n_top_genes, ds.n_vars)
        finite = disp_norm[~np.isnan(disp_norm)]
        if n > finite.size:
            warnings.warn("`n_top_genes` > number of normalized dispersions, returning all genes with normalized "
                          "dispersions.", UserWarning, stacklevel=3)
            n = finite.size
        if n == 0:
            raise ValueError("no gene has a defined normalized dispersion (all genes constant?)")
        cut = np.sort(finite)[::-1][n - 1]
        # ties at the cutoff are all kept, as scanpy does
        hv = np.nan_to_num(disp_norm, nan=-np.inf) >= cut
    df["highly_variable"] = hv
    df["dispersions_norm"] = df["dispersions_norm"].astype(np.float32)  # scanpy stores it as float32
    df = df.drop(columns="mean_bin")
    return df[["highly_variable", "means", "dispersions", "dispersions_norm"]]


def _seurat_v3(ds: SpatialDataset, layer: str, n_top_genes: int, span: float, progress: bool) -> pd.DataFrame:
    try:
        from skmisc.loess import loess
    except ImportError as e:
        raise ImportError("flavor='seurat_v3' needs scikit-misc for its loess fit: pip install scikit-misc") from e
    X = get_matrix(ds, layer)
    mom = column_moments(X, squares=True, progress=progress, desc="hvg seurat_v3: gene statistics")
    n = ds.n_obs
    if n < 2:
        raise ValueError("flavor='seurat_v3' needs at least 2 observations")
    mean, var = mom.means(), mom.variances(ddof=1)
    not_const = var > 0
    if not_const.sum() < 3:
        raise ValueError(f"flavor='seurat_v3': only {int(not_const.sum())} genes vary; the loess fit needs more")
    estimat_var = np.zeros(ds.n_vars, dtype=np.float64)
    model = loess(np.log10(mean[not_const]), np.log10(var[not_const]), span=span, degree=2)
    model.fit()
    estimat_var[not_const] = model.outputs.fitted_values
    reg_std = np.sqrt(10**estimat_var)
    # clip each count at mean + sqrt(n) * fitted std, as Seurat does
    clip_val = reg_std * np.sqrt(n) + mean
    clipped = column_moments(X, squares=True, clip=clip_val, progress=progress, desc="hvg seurat_v3: clipped sums")
    s1, s2 = clipped.sums(), clipped.sums_of_squares()
    norm_gene_var = (1 / ((n - 1) * np.square(reg_std))) * (n * np.square(mean) + s2 - 2 * s1 * mean)
    ranks = np.argsort(np.argsort(-norm_gene_var)).astype(np.float32)
    nbatches = (ranks < n_top_genes).astype(int)
    ranks[ranks >= n_top_genes] = np.nan
    df = pd.DataFrame({"means": mean, "variances": var, "variances_norm": norm_gene_var,
                       "highly_variable_rank": ranks, "highly_variable_nbatches": nbatches})
    order = df.sort_values(["highly_variable_rank", "highly_variable_nbatches"], ascending=[True, False],
                           na_position="last").index
    hv = np.zeros(ds.n_vars, dtype=bool)
    hv[order[: int(n_top_genes)]] = True
    df["highly_variable"] = hv
    return df[["highly_variable", "means", "variances", "variances_norm", "highly_variable_rank"]]


__all__ = ["highly_variable_genes", "FLAVORS"]
