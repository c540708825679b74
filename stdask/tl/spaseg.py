"""``stdask.tl.spaseg``: SpaSEG spatial domains of one slice or of several slices jointly.

Pipeline (SpaSEG spec §1-§7), every step out of core, tile group by tile group:

1. Stereo-seq (``unit == "DNB"``) only: observations below the ``drop_cell_ratio`` quantile of detected
   genes are left out (of the gene filter, the normalisation target, the PCA fit and the image).
2. Genes detected in fewer than ``min_cells`` observations are left out (per slice; several slices keep the
   genes shared by all -- an inner join).
3. ``normalize_total`` (target: the median total over all kept observations of all slices, totals over the
   kept genes), ``log1p``, PCA (15 components, 30 for several slices; one joint basis), no HVG selection.
4. Each PC is z-scored per slice and the observations are placed on a pixel grid
   (:mod:`stdask.raster`): Visium array positions, else ``round((s - min) / pitch)``; observations sharing
   a pixel are averaged.
5. The SpaSEG CNN (:mod:`stdask.models.spaseg`) segments the (B, C, H, W) image; several slices are the
   batch dimension of one shared frame, so one network and one label space serve all slices.
6. Every observation reads its pixel's label and output vector.

Results (pending on each dataset until ``ds.write()``): ``obs[key_added]`` (categorical ``"0", "1", ...``:
labels present at observations, renumbered consecutively in raw-label order), ``obsm[key_added +
"_embedding"]`` ((n_obs, K) float32 network output at the observation's pixel), ``obsm[key_added + "_pca"]``
((n_obs, n_pcs) float32 PCs before z-scoring, when computed here) and ``uns[key_added]`` (parameters, the
stopping iteration, label counts, the grid and its collisions, deviations).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import dask
import dask.array as da
import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..dataset import SpatialDataset
from ..raster.build import RasterBuilder, sample_pixels
from ..raster.grid import PixelGrid, dataset_grid

REFERENCE = "SpaSEG (y-bai/SpaSEG @ dfa96c5e; Stereopy stereo/algorithm/spa_seg @ 2b21b001)"
DEVIATIONS = ("S1", "S2", "S3", "S5", "S7")

#: the reference's defaults for one slice and for several slices
SINGLE = {"n_pcs": 15, "alpha": 0.4, "beta": 0.7}
MULTI = {"n_pcs": 30, "alpha": 0.2, "beta": 0.4}


@dataclass
class SpaSEGResult:
    """What :func:`spaseg` returns.

    Attributes
    ----------
    labels
        A categorical ``pandas.Series`` of domain labels indexed by observation name (also written as
        ``obs[key_added]``); for several datasets, a list of them.
    fit
        The :class:`stdask.models.spaseg.SpaSEGFit` (raw label image, output image, history, network).
    grid
        The :class:`stdask.raster.grid.PixelGrid` of all observations (datasets concatenated in order).
    image, count
        (B, C, H, W) float32 input image and (B, H, W) int32 observations per pixel.
    raw_to_domain
        Raw label (argmax channel) -> consecutive domain number.
    info
        What ``uns[key_added]`` holds.
    """

    labels: list
    fit: Any
    grid: PixelGrid
    image: np.ndarray
    count: np.ndarray
    raw_to_domain: dict
    info: dict = field(default_factory=dict)

    @property
    def n_domains(self) -> int:
        return len(self.raw_to_domain)


# ----------------------------------------------------------------------------------------------------
# block functions (module level: picklable for any scheduler)
# ----------------------------------------------------------------------------------------------------
def _to_csr(block) -> sp.csr_matrix:
    return sp.csr_matrix(block)


def _n_genes_block(block) -> np.ndarray:
    m = _to_csr(block)
    pos = sp.csr_matrix(((m.data > 0).astype(np.int64), m.indices, m.indptr), shape=m.shape)
    return np.asarray(pos.sum(axis=1)).ravel()


def _detected_block(block, keep_rows) -> sp.csr_matrix:
    # 1.0 where a kept row has a count > 0
    m = _to_csr(block)
    rows = np.repeat(np.arange(m.shape[0]), np.diff(m.indptr))
    ok = (m.data > 0) & np.asarray(keep_rows).ravel()[rows]
    out = sp.csr_matrix((ok.astype(np.float32), m.indices, m.indptr), shape=m.shape)
    out.eliminate_zeros()
    return out


def _totals_of(block, keep_genes) -> np.ndarray:
    from ..pp.normalize import _totals_block

    return _totals_block(block, keep_genes)


def _prep_block(block, keep_rows, target, keep_genes, cols, zero_dropped: bool) -> sp.csr_matrix:
    """normalize_total (totals over ``keep_genes``) -> log1p -> columns ``cols``; dropped rows zeroed when
    ``zero_dropped`` (the PCA fit), kept otherwise (the projection)."""
    from ..pp.normalize import _log1p_block, _normalize_block

    m = _log1p_block(_normalize_block(block, target, keep_genes), None)[:, cols]
    m = sp.csr_matrix(m, dtype=np.float32)
    if zero_dropped:
        k = np.asarray(keep_rows).ravel().astype(np.float32)
        m = sp.csr_matrix(sp.diags(k) @ m)
        m.eliminate_zeros()
    return m


def _column(mask: np.ndarray, chunks) -> da.Array:
    return da.from_array(mask.reshape(-1, 1), chunks=(chunks, (1,)))


# ----------------------------------------------------------------------------------------------------
# preprocessing: joint normalisation and PCA of one or several slices
# ----------------------------------------------------------------------------------------------------
@dataclass
class _Prepared:
    pcs: list  # per dataset (n_k, n_pcs) float32 dask arrays
    kept: list  # per dataset (n_k,) bool observations used
    n_genes: int
    target_sum: float
    variance_ratio: np.ndarray
    drop_cell_ratio: list


def _stereo(ds: SpatialDataset) -> bool:
    return (ds.unit or "").upper() == "DNB"


def preprocess(datasets: Sequence[SpatialDataset], n_pcs: int, *, min_cells: int = 5, drop_cell_ratio=None,
               layer: str = "X", progress: bool = True) -> _Prepared:
    """Joint SpaSEG preprocessing (module docstring steps 1-3); nothing is added to the datasets.

    Returns lazy (n_k, n_pcs) float32 PCs per dataset and the kept-observation masks.
    """
    from ..pp import _blocks
    from ..pp.pca import MAX_GENES_EIGH, _project, fit_pca

    # common genes (inner join, in the first dataset's order)
    names = pd.Index(datasets[0].var_names)
    for ds in datasets[1:]:
        names = names[names.isin(pd.Index(ds.var_names))]
    if len(names) == 0:
        raise ValueError("the datasets share no gene names; several slices need common genes (inner join)")
    idx = [pd.Index(ds.var_names).get_indexer(names) for ds in datasets]

    # 1. low-gene observations (Stereo-seq / Slide-seq)
    kept, ratios = [], []
    for ds in datasets:
        X = _blocks.get_matrix(ds, layer)
        r = (0.05 if _stereo(ds) else 0.0) if drop_cell_ratio is None else float(drop_cell_ratio)
        if not 0 <= r < 1:
            raise ValueError(f"drop_cell_ratio must be in [0, 1), got {r!r}")
        ratios.append(r)
        if r > 0:
            ng = _blocks.row_values(X, _n_genes_block, progress=progress, desc="spaseg: genes per observation")
            kept.append(ng >= np.quantile(ng, r))
        else:
            kept.append(np.ones(ds.n_obs, dtype=bool))

    # 2. genes detected in >= min_cells kept observations of every slice
    gene_ok = np.ones(len(names), dtype=bool)
    for ds, k, ix in zip(datasets, kept, idx):
        X = _blocks.get_matrix(ds, layer)
        det = da.map_blocks(_detected_block, X, _column(k, X.chunks[0]), dtype=np.float32,
                            meta=sp.csr_matrix((0, 0), dtype=np.float32))
        n_cells = _blocks.column_moments(det, squares=False, progress=progress, desc="spaseg: filter genes").nnz
        gene_ok &= n_cells[ix] >= min_cells
    if not gene_ok.any():
        raise ValueError(f"no gene is detected in >= min_cells={min_cells} observations of every slice")
    cols = [ix[gene_ok] for ix in idx]
    keep_genes = []
    for ds, c in zip(datasets, cols):
        kg = np.zeros(ds.n_vars, dtype=bool)
        kg[c] = True
        keep_genes.append(kg)

    # 3. normalize_total target: median total (over kept genes) of all kept observations
    totals = []
    for ds, k, kg in zip(datasets, kept, keep_genes):
        X = _blocks.get_matrix(ds, layer)
        t = _blocks.row_values(X, _totals_of, keep_genes=kg, progress=progress, desc="spaseg: totals")
        totals.append(np.asarray(t)[k])
    target = np.median(np.concatenate(totals).astype(np.float32))
    if not target > 0:
        raise ValueError("the median total count of the kept observations is 0; nothing to normalise")

    def prepared(ds, k, kg, c, zero):
        X = _blocks.get_matrix(ds, layer)
        return da.map_blocks(_prep_block, X, _column(k, X.chunks[0]), target=target, keep_genes=kg, cols=c,
                             zero_dropped=zero, dtype=np.float32, chunks=(X.chunks[0], (len(c),)),
                             meta=sp.csr_matrix((0, 0), dtype=np.float32))

    fit_arrays = [prepared(ds, k, kg, c, True) for ds, k, kg, c in zip(datasets, kept, keep_genes, cols)]
    n_eff = int(sum(k.sum() for k in kept))
    g = int(gene_ok.sum())
    n_pcs = int(min(n_pcs, g, n_eff - 1))
    if n_pcs < 1:
        raise ValueError(f"cannot compute PCs from {n_eff} observations x {g} genes")
    solver = "covariance_eigh" if g <= MAX_GENES_EIGH else "randomized"
    Vt, variance, total, mean = fit_pca(fit_arrays, n_pcs, solver=solver, progress=progress)
    ratio = variance / max(total, 1e-300)
    shift = mean @ Vt.T
    pcs = []
    for ds, k, kg, c in zip(datasets, kept, keep_genes, cols):
        arr = prepared(ds, k, kg, c, False)
        pcs.append(_blocks.map_rows(arr, _project, dtype=np.float32, sparse=False, n_cols=n_pcs, V=Vt.T.copy(),
                                    shift=shift))
    return _Prepared(pcs, kept, g, float(target), np.asarray(ratio), ratios)


# ----------------------------------------------------------------------------------------------------
# the API
# ----------------------------------------------------------------------------------------------------
def _obsm(ds: SpatialDataset, key: str) -> np.ndarray | da.Array:
    try:
        v = ds.get_result("obsm", key)
    except KeyError:
        raise KeyError(f"{ds.path}: no obsm[{key!r}] (pending or stored); run the step that makes it, or "
                       "use_rep=None to let spaseg compute its PCs") from None
    return v if isinstance(v, da.Array) else np.asarray(v)


def _stream_into(builder: RasterBuilder, arr, offset: int, keep: np.ndarray, out: np.ndarray, batch: int = 8,
                 progress: bool = True) -> None:
    """Compute a (n_k, C) array block by block; add kept rows to the raster and copy all rows to ``out``."""
    from ..cluster import compute

    if not isinstance(arr, da.Array):
        arr = np.asarray(arr, dtype=np.float32)
        out[:] = arr
        builder.add(np.flatnonzero(keep) + offset, arr[keep])
        builder.skip(np.flatnonzero(~keep) + offset)
        return
    arr = arr.rechunk({1: -1})
    blocks = [arr.blocks[i] for i in range(arr.numblocks[0])]
    r0 = 0
    for i in range(0, len(blocks), batch):
        for b in compute(*blocks[i:i + batch], progress=progress, desc="spaseg: PCs -> raster"):
            b = np.asarray(b, dtype=np.float32)
            n = len(b)
            out[r0:r0 + n] = b
            sel = keep[r0:r0 + n]
            builder.add(np.flatnonzero(sel) + r0 + offset, b[sel])
            builder.skip(np.flatnonzero(~sel) + r0 + offset)
            r0 += n


def spaseg(
    ds: SpatialDataset | Sequence[SpatialDataset],
    n_domains: int = 7,
    *,
    key_added: str = "spaseg",
    seed: int = 1029,
    use_rep: str | None = None,
    n_pcs: int | None = None,
    min_cells: int = 5,
    drop_cell_ratio: float | None = None,
    layer: str = "X",
    pitch: float | None = None,
    scale: float | None = None,
    use_array: bool | None = None,
    alpha: float | None = None,
    beta: float | None = None,
    iterations: int = 2100,
    pretrain_epochs: int = 400,
    n_channel: int | None = None,
    n_conv: int = 2,
    lr: float = 0.002,
    weight_decay: float = 1e-5,
    merge_start: int = 2000,
    merge_stop: int | None = None,
    mask_empty: bool = False,
    min_label: int | None = None,
    mode: str = "auto",
    tile: int = 128,
    batch_pixels: int = 1 << 16,
    max_pixels: int = 1 << 18,
    device: str | None = None,
    threads: int | None = None,
    raster_key: str | None = None,
    progress: bool = True,
) -> SpaSEGResult:
    """SpaSEG spatial domains (unsupervised CNN on the PCA image of a slice).

    Parameters
    ----------
    ds
        A dataset, or a list of datasets (one slice each, coordinates already aligned): several slices are
        segmented jointly (shared weights and label space; 30 PCs, alpha 0.2, beta 0.4 by default).
    n_domains
        The reference's ``min_label`` stopping rule: training stops at the first iteration with at most
        this many labels (empty pixels included, as in the reference). It is an upper bound, not k: the
        number of domains found is what remains then (often ``n_domains``, sometimes fewer), and empty
        background pixels may take one label of their own.
    key_added
        Result keys (module docstring).
    seed
        Seeds the network weights (and the tile order of minibatch training): the same seed gives the same
        labels on the same machine.
    use_rep
        Use ``obsm[use_rep]`` (first ``n_pcs`` columns) instead of computing PCs; the z-scoring per slice
        still happens.
    n_pcs
        Principal components = image channels (15 for one slice, 30 for several).
    min_cells
        Gene filter (per slice).
    drop_cell_ratio
        Quantile of detected genes below which observations are left out; ``None``: 0.05 for Stereo-seq
        stores (unit ``DNB``), else 0. Left-out observations still read their pixel's label.
    layer
        Count matrix the preprocessing reads.
    pitch, scale, use_array
        The pixel grid (:func:`stdask.raster.grid.dataset_grid`): Visium array positions when present,
        else quantisation by ``pitch`` (default the bin size or the median nearest-neighbour distance), or
        the reference's truncation by ``scale``.
    alpha, beta
        Cross-entropy and continuity weights (``sim_weight``, ``con_weight``); defaults per slice count.
    iterations, pretrain_epochs, n_channel, n_conv, lr, weight_decay, merge_start, merge_stop, mask_empty
        See :class:`stdask.models.spaseg.SpaSEGConfig`.
    min_label
        Alias of ``n_domains`` (the reference's name); wins when given.
    mode, tile, batch_pixels, max_pixels
        Whole image or tiles (:func:`stdask.models.spaseg.train`): ``"auto"`` trains images up to
        ``max_pixels`` pixels whole, larger ones on random batches of ``tile``-pixel tiles with a halo
        (about ``batch_pixels`` pixels per iteration) and predicts tile by tile, so memory is bounded.
    device
        ``None``: CUDA when available, else CPU.
    threads
        Torch threads for the run (default: torch's setting, capped at one thread per ~100k pixels of an
        iteration; see :func:`stdask.models.spaseg.auto_threads`).
    raster_key
        Also write each slice's input raster into its store now, as ``images/<raster_key>``
        (:func:`stdask.raster.write_raster`).
    progress
        Show progress.

    Returns
    -------
    :class:`SpaSEGResult`; results are pending on each dataset (``ds.write()`` stores them).

    Differences from the reference
    ------------------------------
    S1 pixel grid ``round((s - min) / pitch)`` with collisions averaged and reported (``scale=`` gives the
    reference's truncation, ``use_array`` Visium's positions); S2 merging from ``merge_start`` to the end;
    S3 optional ``mask_empty``; S5 frame H from rows, W from columns; S7 labels taken before the final
    optimiser step (kept). Also: observations dropped by ``drop_cell_ratio`` stay in the dataset and read
    their pixel's label (the reference removes them); the PCA is exact (covariance eigendecomposition up to
    4,000 genes, randomized above) where scanpy uses ARPACK; ``n_domains`` is the reference's ``min_label``.
    """
    from ..models.spaseg import SpaSEGConfig, train

    t_start = time.perf_counter()
    datasets = list(ds) if isinstance(ds, (list, tuple)) else [ds]
    if not datasets:
        raise ValueError("no dataset given")
    multi = len(datasets) > 1
    defaults = MULTI if multi else SINGLE
    min_label = int(min_label if min_label is not None else n_domains)
    n_pcs = int(n_pcs or defaults["n_pcs"])
    cfg = SpaSEGConfig(n_channel=n_channel, n_conv=n_conv, lr=lr, weight_decay=weight_decay,
                       pretrain_epochs=pretrain_epochs, iterations=iterations,
                       sim_weight=defaults["alpha"] if alpha is None else float(alpha),
                       con_weight=defaults["beta"] if beta is None else float(beta), min_label=min_label,
                       merge_start=merge_start, merge_stop=merge_stop, mask_empty=mask_empty, seed=seed)
    cfg.validate()

    # ---- features -------------------------------------------------------------------------------------
    if use_rep is None:
        prep = preprocess(datasets, n_pcs, min_cells=min_cells, drop_cell_ratio=drop_cell_ratio, layer=layer,
                          progress=progress)
        feats, kept = prep.pcs, prep.kept
        n_pcs = feats[0].shape[1]
        pre_info = {"n_genes": prep.n_genes, "target_sum": prep.target_sum,
                    "variance_ratio": prep.variance_ratio, "drop_cell_ratio": np.asarray(prep.drop_cell_ratio),
                    "n_dropped": np.array([int((~k).sum()) for k in kept])}
    else:
        feats = []
        for d in datasets:
            v = _obsm(d, use_rep)
            feats.append(v[:, :n_pcs])
        n_pcs = int(feats[0].shape[1])
        kept = [np.ones(d.n_obs, dtype=bool) for d in datasets]
        pre_info = {"use_rep": use_rep}

    # ---- grid and image ---------------------------------------------------------------------------------
    grid = dataset_grid(datasets, pitch=pitch, scale=scale, use_array=use_array)
    builder = RasterBuilder(grid, n_pcs)
    pcs_np = []
    off = 0
    for d, f, k in zip(datasets, feats, kept):
        out = np.empty((d.n_obs, n_pcs), dtype=np.float32)
        _stream_into(builder, f, off, k, out, progress=progress)
        pcs_np.append(out)
        off += d.n_obs
    image, count = builder.finish(zscore=True)

    # ---- train ------------------------------------------------------------------------------------------
    fit = train(image, count > 0, cfg, mode=mode, device=device, tile=tile, batch_pixels=batch_pixels,
                max_pixels=max_pixels, threads=threads, progress=progress)

    # ---- labels back to observations -----------------------------------------------------------------------
    raw = sample_pixels(fit.labels, grid)
    present = np.unique(raw)
    raw_to_domain = {int(r): i for i, r in enumerate(present)}
    codes = np.searchsorted(present, raw)
    cats = [str(i) for i in range(len(present))]
    emb = sample_pixels(fit.embedding, grid).astype(np.float32)
    coll = grid.collisions()
    info = {
        "reference": REFERENCE, "deviations": list(DEVIATIONS), "seed": int(seed), "n_domains_arg": int(min_label),
        "n_domains_found": int(len(present)), "stop_iteration": int(fit.stop_iteration), "stopped": bool(fit.stopped),
        "n_labels": int(fit.n_labels), "mode": fit.mode, "device": fit.device, "threads": int(fit.threads),
        "seconds_train": round(fit.seconds, 3),
        "n_slices": len(datasets), "n_pcs": int(n_pcs),
        "params": {"alpha": cfg.sim_weight, "beta": cfg.con_weight, "iterations": cfg.iterations,
                   "pretrain_epochs": cfg.pretrain_epochs, "n_conv": cfg.n_conv,
                   "n_channel": int(cfg.n_channel or n_pcs), "lr": cfg.lr, "weight_decay": cfg.weight_decay,
                   "merge_start": cfg.merge_start, "merge_stop": -1 if cfg.merge_stop is None else cfg.merge_stop,
                   "mask_empty": cfg.mask_empty, "min_cells": int(min_cells), "tile": int(tile),
                   "batch_pixels": int(batch_pixels)},
        "grid": {k: v for k, v in grid.meta().items() if v is not None and k != "collisions"},
        "collisions": coll.to_dict(),
        "raw_labels": present.astype(np.int64),
        "n_labels_history": np.asarray(fit.history.get("n_labels", []), dtype=np.int64),
        "merges": np.asarray(fit.history.get("merges", []), dtype=np.int64).reshape(-1, 3),
        "preprocessing": pre_info,
    }
    labels_out = []
    off = 0
    for b, d in enumerate(datasets):
        sl = slice(off, off + d.n_obs)
        lab = pd.Categorical.from_codes(codes[sl], categories=cats)
        d.set_result("obs", key_added, lab)
        d.set_result("obsm", f"{key_added}_embedding", emb[sl])
        if use_rep is None:
            d.set_result("obsm", f"{key_added}_pca", pcs_np[b])
        slice_info = dict(info, slice=b, n_domains_slice=int(len(np.unique(codes[sl]))))
        d.set_result("uns", key_added, slice_info)
        labels_out.append(pd.Series(lab, index=d.obs_names, name=key_added))
        if raster_key:
            from ..raster.store import pixel_affine, write_raster

            rows = np.arange(sl.start, sl.stop)
            aff = pixel_affine(grid.row[rows], grid.col[rows], d.coords)
            write_raster(d, raster_key, image[b], count[b], channels=[f"PC{i + 1}" for i in range(n_pcs)],
                         grid=info["grid"], affine=aff, attrs={"slice": b, "key_added": key_added})
        off += d.n_obs
    info["seconds"] = round(time.perf_counter() - t_start, 3)
    return SpaSEGResult(labels_out if multi else labels_out[0], fit, grid, image, count, raw_to_domain, info)


#: the name users of Stereopy know (``st.tl.spa_seg(data, n_domains=6)``)
spa_seg = spaseg

__all__ = ["spaseg", "spa_seg", "SpaSEGResult", "preprocess"]


# ====================================================================================================
# LR scores on SpaSEG domains (spec §9), on the machinery of stdask.tl.cci
# ====================================================================================================
@dataclass
class DomainLRResult:
    """What :func:`lr_score` returns.

    Attributes
    ----------
    pairs
        Valid LR pairs (``LRPairs``), in column order of the matrices.
    domain_means, domain_pvalues
        (n_db_pairs, n_domains^2) DataFrames, index ``"L_R"``, columns ``"a|b"`` (sender|receiver): the
        ligrec statistic (mean of the ligand's mean in a and the receptor's mean in b) and its BH-adjusted
        permutation p-value (NaN where not tested).
    scores, pvals, padj
        (n_obs, n_valid) CSR float64: the score at observations with a score > 0, their p-values and
        per-observation BH-adjusted p-values (untested entries are absent: p = 1).
    summary
        Per valid pair: ``n_spots`` (score > 0), ``n_spots_sig`` (padj < cutoff), ``n_spots_sig_pval``.
    params
        Parameters, the reference and the deviations.
    """

    pairs: Any
    domain_means: pd.DataFrame
    domain_pvalues: pd.DataFrame
    scores: sp.csr_matrix
    pvals: sp.csr_matrix
    padj: sp.csr_matrix
    summary: pd.DataFrame
    params: dict


def _expr_block(block, target, log: bool):
    """Expression from counts: normalize_total (all genes, global target) then log1p; ``target=None``:
    the stored values as they are."""
    if target is None:
        return sp.csr_matrix(block, dtype=np.float64)
    from ..pp.normalize import _normalize_block

    m = _normalize_block(block, np.float32(target), np.ones(block.shape[1], dtype=bool))
    m = sp.csr_matrix(m, dtype=np.float64)
    if log:
        m.data = np.log1p(m.data)
    return m


def _sqrt_expr(m: sp.csr_matrix, min_expr: float) -> sp.csr_matrix:
    m = sp.csr_matrix(m, dtype=np.float64, copy=True)
    m.data = np.where(m.data > min_expr, np.sqrt(np.maximum(m.data, 0.0)), 0.0)
    m.eliminate_zeros()
    return m


def _tile_lr_inputs(tile, graph, target, log, min_expr):
    """Own rows' sqrt-expression and ring-neighbour means of sqrt-expression (CSR, all genes)."""
    E = _expr_block(tile.X, target, log)
    Y = _sqrt_expr(E, min_expr)
    own = tile.rows[:tile.n_own]
    A = graph[own]
    A.sort_indices()
    sorter = np.argsort(tile.rows, kind="stable")
    pos = np.searchsorted(tile.rows, A.indices, sorter=sorter)
    pos = np.minimum(pos, len(sorter) - 1)
    local = sorter[pos]
    if not np.array_equal(tile.rows[local], A.indices):
        raise RuntimeError("a ring neighbour lies outside the tile's halo; report this as a bug")
    deg = np.diff(A.indptr)
    W = sp.csr_matrix((np.ones(len(local)), local, A.indptr), shape=(tile.n_own, len(tile.rows)))
    M = sp.csr_matrix(W @ Y)
    rep = np.repeat(np.where(deg > 0, deg, 1).astype(np.float64), np.diff(M.indptr))
    M.data = M.data / rep
    M.sort_indices()
    Yo = sp.csr_matrix(Y[:tile.n_own])
    Yo.sort_indices()
    return Yo, M


def _observed_geo(Yo, M, lg, rg, cand, h):
    """Dense (n_own, n_pairs) scores h/2 (sqrt(L) m_R + sqrt(R) m_L) at candidate entries, 0 elsewhere."""
    yl = Yo[:, lg].toarray()
    yr = Yo[:, rg].toarray()
    ml = M[:, lg].toarray()
    mr = M[:, rg].toarray()
    s = h[:, None] * 0.5 * (yl * mr + yr * ml)
    return np.where(cand, s, 0.0)


def _lr_pass1(tile, *, graph, target, log, min_expr, lg, rg, cand_dom, codes, h):
    Yo, M = _tile_lr_inputs(tile, graph, target, log, min_expr)
    own = tile.rows[:tile.n_own]
    cand = cand_dom[:, codes[own]].T  # (n_own, n_pairs)
    s = _observed_geo(Yo, M, lg, rg, cand, h[own])
    i, j = np.nonzero(s > 0)
    return {"rows": own[i], "pair": j, "score": s[i, j]}


def _lr_pass2(tile, *, graph, target, log, min_expr, lg, rg, cand_dom, codes, h, pl, pr, n_pairs, adj_method):
    from .cci.correction import adjust_grouped

    Yo, M = _tile_lr_inputs(tile, graph, target, log, min_expr)
    own = tile.rows[:tile.n_own]
    cand = cand_dom[:, codes[own]].T
    s = _observed_geo(Yo, M, lg, rg, cand, h[own])
    i, j = np.nonzero(s > 0)
    score = s[i, j]
    t_ptr = np.concatenate([[0], np.cumsum(np.bincount(i, minlength=tile.n_own))]).astype(np.int64)
    counts = _geo_background_counts(Yo.indptr.astype(np.int64), Yo.indices.astype(np.int64), Yo.data,
                                    M.indptr.astype(np.int64), M.indices.astype(np.int64), M.data, Yo.shape[1],
                                    t_ptr, j.astype(np.int64), score, np.ascontiguousarray(h[own], dtype=np.float64),
                                    pl, pr)
    p = np.maximum(counts, 1) / float(n_pairs)
    padj = adjust_grouped(p, i, adj_method)
    return {"rows": own[i], "pair": j, "score": score, "p": p, "padj": padj}


def _geo_kernel():
    from numba import njit, prange

    @njit(parallel=True, cache=True)
    def kernel(y_ptr, y_idx, y_val, m_ptr, m_idx, m_val, n_genes, t_ptr, t_lr, t_obs, h, pl, pr):  # pragma: no cover
        n_rows = t_ptr.shape[0] - 1
        out = np.zeros(t_lr.shape[0], dtype=np.int64)
        n_bg = pl.shape[1]
        for i in prange(n_rows):
            if t_ptr[i + 1] == t_ptr[i]:
                continue
            yd = np.zeros(n_genes)
            md = np.zeros(n_genes)
            for k in range(y_ptr[i], y_ptr[i + 1]):
                yd[y_idx[k]] = y_val[k]
            for k in range(m_ptr[i], m_ptr[i + 1]):
                md[m_idx[k]] = m_val[k]
            for e in range(t_ptr[i], t_ptr[i + 1]):
                j = t_lr[e]
                s = t_obs[e]
                c = 0
                for k in range(n_bg):
                    a = pl[j, k]
                    b = pr[j, k]
                    if h[i] * 0.5 * (yd[a] * md[b] + yd[b] * md[a]) >= s:
                        c += 1
                out[e] = c
        return out

    return kernel


def _geo_background_counts(*args):
    """Background exceedance counts of the geometric-mean score (numba; compiled on first use)."""
    global _GEO
    try:
        k = _GEO
    except NameError:
        k = _GEO = _geo_kernel()
    return k(*args)


def _ligrec(entries, codes, n_dom, n_obs, lg, rg, n_perms, threshold, seed, progress):
    """squidpy ``ligrec`` on domains: statistic (mean_L(a) + mean_R(b)) / 2 per ordered domain pair,
    p = #(permuted > observed) / n_perms with domain labels permuted over observations, NaN where a mean is
    0 or an expressing fraction is below ``threshold``; BH across interactions within each domain pair."""
    from ..progress import progress_bar
    from .cci.pairs import stream

    rows, gcol, vals = entries
    n_g = int(max(lg.max(), rg.max())) + 1 if len(lg) else 0
    size = np.bincount(codes, minlength=n_dom).astype(np.float64)
    inv = 1.0 / np.maximum(size, 1)

    def means(lab):
        s = np.bincount(lab[rows] * n_g + gcol, weights=vals, minlength=n_dom * n_g).reshape(n_dom, n_g)
        return s * inv[:, None]

    obs = means(codes)
    frac = np.bincount(codes[rows] * n_g + gcol, weights=(vals > 0).astype(float),
                       minlength=n_dom * n_g).reshape(n_dom, n_g) * inv[:, None]
    mL, mR = obs[:, lg], obs[:, rg]  # (n_dom, n_lr)
    fL, fR = frac[:, lg], frac[:, rg]
    valid = ((mL[:, None, :] > 0) & (mR[None, :, :] > 0) & (fL[:, None, :] >= threshold)
             & (fR[None, :, :] >= threshold))  # (a, b, lr)
    stat = mL[:, None, :] + mR[None, :, :]
    count = np.zeros_like(stat, dtype=np.int64)
    rng_codes = codes.copy()
    for k in progress_bar(range(n_perms), desc="spaseg lr: domain permutations", unit="perm",
                          disable=not progress):
        perm = stream(seed, "spaseg-ligrec", k).permutation(rng_codes)
        m = means(perm)
        count += (m[:, lg][:, None, :] + m[:, rg][None, :, :]) > stat
    p = count / float(n_perms)
    p[~valid] = np.nan
    mean_stat = np.where(valid | ((mL[:, None, :] > 0) & (mR[None, :, :] > 0)), stat / 2.0, 0.0)
    # BH across interactions for each domain pair (squidpy corr_axis="clusters")
    padj = np.full_like(p, np.nan)
    for a in range(n_dom):
        for b in range(n_dom):
            v = p[a, b]
            ok = ~np.isnan(v)
            if ok.any():
                from .svg import _bh

                padj[a, b, ok] = _bh(v[ok])
    return mean_stat, padj


def lr_score(ds: SpatialDataset, domain_key: str = "spaseg", lrs=None, *, layer: str | None = None,
             log: bool = True, min_expr: float = 0.0, min_spot: int = 1, n_pairs: int = 1000,
             n_perms: int = 1000, threshold: float = 0.01, alpha: float = 0.05, n_rings: int = 2,
             n_neighs: int = 10, cell_type_fractions=None, seed: int = 0, adj_method: str = "fdr_bh",
             pval_cutoff: float = 0.05, write: bool = True, progress: bool = True) -> DomainLRResult:
    """Per-observation LR scores restricted to domains where the pair is significant (SpaSEG, spec §9).

    1. Domain-level test (squidpy ``ligrec`` as documented): for every LR pair and ordered domain pair
       (a, b), ``(mean_L(a) + mean_R(b)) / 2`` against ``n_perms`` permutations of the domain labels
       (p = share of permutations strictly above), untested where a mean is 0 or an expressing fraction is
       below ``threshold``; BH across pairs within each domain pair. An observation is a candidate for (L, R)
       if its domain appears in a domain pair with adjusted p < ``alpha``.
    2. Neighbours: lattice rings (``stdask.gr.spatial_neighbors(method="grid", n_neighs, n_rings)``,
       squidpy's ``coord_type="grid"``).
    3. Score at a candidate observation s: ``h_s (t1 + t2) / 2`` with ``t1 = mean_n sqrt(L_s R_n)``,
       ``t2 = mean_n sqrt(R_s L_n)`` over its neighbours n (values <= ``min_expr`` count as 0; no
       neighbours: 0). ``h_s`` is the Shannon entropy (base 2) of the observation's cell-type fractions,
       or 1. Pairs scoring > 0 at more than ``min_spot`` observations are kept.
    4. Significance as stLearn (reusing :mod:`stdask.tl.cci`): ``n_pairs`` random background pairs of
       genes matched on 12 expression quantiles (Canberra distance, round(2 sqrt(n_pairs)) genes per LR gene,
       drawn from streams keyed by (seed, pair)), scored at the observations where the real score is > 0;
       p = max(1, #background >= real) / n_pairs; BH per observation over its tested pairs.

    Parameters
    ----------
    ds
        The dataset, with ``obs[domain_key]``.
    domain_key
        Domain labels.
    lrs
        LR pairs (:func:`stdask.tl.cci.load_lrs` output, ``"L_R"`` strings or a ligand/receptor table);
        default the shipped connectomeDB2020_lit table (the reference downloads OmniPath's CellPhoneDB
        resource, which is not reachable here: S6).
    layer, log
        Expression: ``layer=None`` computes ``normalize_total`` (median target) of the counts, then
        ``log1p`` when ``log`` (the reference's log-normalised X); a named stored layer is used as is.
    min_expr, min_spot, n_pairs
        As in the reference (``min_spot`` 1, ``n_pairs`` 1000; the notebook uses 400).
    n_perms, threshold, alpha
        The domain-level test.
    n_rings, n_neighs
        Ring neighbourhood.
    cell_type_fractions
        Optional (n_obs, n_types) proportions (DataFrame indexed by observation name, array, or an
        ``obsm`` key) for the entropy weight.
    seed
        Keys every random stream (domain permutations, background pairs).
    adj_method, pval_cutoff
        Per-observation correction and the significance cutoff of the summary.
    write
        Store ``obsm["spot_lr_score"]``, ``obsm["spot_lr_padj"]`` (sparse, columns = valid pairs) and
        ``uns["spaseg_lr"]`` (pairs, summary, domain tables) on ``ds`` (pending).
    progress
        Show progress.

    Returns
    -------
    :class:`DomainLRResult`

    Differences from the reference
    ------------------------------
    S6 shipped LR table instead of OmniPath; the domain test is a re-implementation of squidpy's documented
    method (no complexes); random pairs and permutations come from seeded counter-based streams, so results
    do not depend on workers or tiles; matched-gene ties are broken by gene position.
    """
    from ..cluster import compute
    from ..gr import spatial_neighbors
    from ..pp import _blocks
    from ..pp.normalize import _totals_block
    from ..tilemap import map_tiles
    from .cci.database import LRPairs, as_pairs, load_lrs
    from .cci.features import column_quantiles, matched_genes
    from .cci.pairs import random_pairs

    t0 = time.perf_counter()
    if n_pairs < 100:
        raise ValueError(f"n_pairs={n_pairs} is too small for a background; use >= 100 (the reference: 1000)")
    lab = ds.obs[domain_key]
    cat = lab.astype("category") if not isinstance(lab.dtype, pd.CategoricalDtype) else lab
    cat = cat.cat.remove_unused_categories()
    dnames = [str(c) for c in cat.cat.categories]
    codes = cat.cat.codes.to_numpy().astype(np.int64)
    if (codes < 0).any():
        raise ValueError(f"obs[{domain_key!r}] has missing labels; every observation needs a domain")
    n_dom, n_obs = len(dnames), ds.n_obs
    pairs = load_lrs() if lrs is None else as_pairs(lrs)
    var = pd.Index(ds.var_names)
    li, ri = var.get_indexer(pairs.ligand), var.get_indexer(pairs.receptor)
    ok = (li >= 0) & (ri >= 0)
    if not ok.any():
        raise ValueError("no LR pair has both genes in var_names (exact, case-sensitive match)")
    pairs = LRPairs(pairs.ligand[ok], pairs.receptor[ok])
    li, ri = li[ok], ri[ok]

    # ---- expression: counts -> normalised (-> log) values, computed per block -----------------------------
    X = _blocks.get_matrix(ds, layer or "X")
    if layer is None:
        totals = _blocks.row_values(X, _totals_block, keep=np.ones(ds.n_vars, bool), progress=progress,
                                    desc="spaseg lr: totals")
        target = float(np.median(totals))
    else:
        target = None
    E = _blocks.map_rows(X, _expr_block, dtype=np.float64, sparse=True, target=target, log=log)
    # one pass: every gene's non-zero values (quantiles) and the LR genes' entries (domain test)
    lr_genes = np.unique(np.concatenate([li, ri]))
    gpos = np.full(ds.n_vars, -1, dtype=np.int64)
    gpos[lr_genes] = np.arange(len(lr_genes))
    nz_parts, ent = [], ([], [], [])
    blocks = [E.blocks[i] for i in range(E.numblocks[0])]
    r0 = 0
    for i in range(0, len(blocks), 8):
        for b in compute(*blocks[i:i + 8], progress=progress, desc="spaseg lr: expression"):
            m = sp.csr_matrix(b)
            m.eliminate_zeros()
            c = sp.csc_matrix(m)
            nz_parts.append((c.indptr.copy(), c.data.copy()))
            rows = np.repeat(np.arange(m.shape[0]), np.diff(m.indptr)) + r0
            sel = gpos[m.indices] >= 0
            ent[0].append(rows[sel])
            ent[1].append(gpos[m.indices[sel]])
            ent[2].append(m.data[sel])
            r0 += m.shape[0]
    entries = tuple(np.concatenate(e) for e in ent)

    def nonzeros(g):
        return np.concatenate([d[p[g]:p[g + 1]] for p, d in nz_parts])

    # ---- 1. domain-level test --------------------------------------------------------------------------------
    lg_all, rg_all = gpos[li], gpos[ri]
    means, padj_dom = _ligrec(entries, codes, n_dom, n_obs, lg_all, rg_all, n_perms, threshold, seed, progress)
    cols = [f"{a}|{b}" for a in dnames for b in dnames]
    names_all = pairs.names
    dom_means = pd.DataFrame(means.reshape(n_dom * n_dom, -1).T, index=names_all, columns=cols)
    dom_p = pd.DataFrame(padj_dom.reshape(n_dom * n_dom, -1).T, index=names_all, columns=cols)
    sig = np.nan_to_num(padj_dom, nan=1.0) < alpha  # (a, b, lr)
    cand_dom = (sig.any(axis=1) | sig.any(axis=0)).T  # (lr, domain): domain is a sender or a receiver
    keep_lr = cand_dom.any(axis=1)
    if not keep_lr.any():
        raise ValueError(f"no LR pair is significant (adjusted p < {alpha}) between any two domains")

    # ---- 2. ring neighbours -----------------------------------------------------------------------------------
    graph = spatial_neighbors(ds, method="grid", n_neighs=n_neighs, n_rings=n_rings, copy=True, progress=progress,
                              verbose=False).connectivities.tocsr()
    coo = graph.tocoo()
    cxy = ds.coords
    halo = float(np.sqrt(((cxy[coo.row] - cxy[coo.col]) ** 2).sum(axis=1)).max()) * (1 + 1e-9) if coo.nnz else 0.0

    h = np.ones(n_obs)
    if cell_type_fractions is not None:
        from scipy.stats import entropy

        f = cell_type_fractions
        if isinstance(f, str):
            f = ds.get_result("obsm", f)
        if isinstance(f, pd.DataFrame):
            f = f.reindex(ds.obs_names).to_numpy(dtype=np.float64)
        f = np.asarray(f, dtype=np.float64)
        if f.shape[0] != n_obs:
            raise ValueError(f"cell_type_fractions has {f.shape[0]} rows; the dataset has {n_obs}")
        h = np.nan_to_num(entropy(f, base=2, axis=1))

    # ---- 3. observed scores of the candidate pairs ------------------------------------------------------------
    pidx = np.flatnonzero(keep_lr)
    lg1, rg1 = li[pidx], ri[pidx]
    graph_d = dask.delayed(graph, pure=True)
    # one shared copy of the big arguments for all tasks
    common = dict(graph=graph_d, target=target, log=log, min_expr=float(min_expr),
                  codes=dask.delayed(codes, pure=True), h=dask.delayed(h, pure=True))
    res1 = map_tiles(ds, _lr_pass1, halo=halo, layer=layer or "X", progress=progress,
                     desc="spaseg lr: observed scores", lg=lg1, rg=rg1, cand_dom=cand_dom[pidx], **common)
    pair1 = np.concatenate([r["pair"] for _, r in res1])
    n_pos = np.bincount(pair1, minlength=len(pidx))
    valid = pidx[n_pos > min_spot]
    if len(valid) == 0:
        raise ValueError(f"no LR pair scores > 0 at more than min_spot={min_spot} observations")
    vpairs = LRPairs(pairs.ligand[valid], pairs.receptor[valid])
    vl, vr = li[valid], ri[valid]

    # ---- 4. backgrounds (stdask.tl.cci machinery) ---------------------------------------------------------------
    vgenes = np.unique(np.concatenate([vl, vr]))
    n_genes = int(round(2 * np.sqrt(n_pairs)))
    candidates = np.setdiff1d(np.arange(ds.n_vars), vgenes)
    if len(candidates) < n_genes:
        raise ValueError(f"only {len(candidates)} genes outside the valid LR pairs; {n_genes} matched genes are "
                         f"needed for n_pairs={n_pairs}")
    ref_q = column_quantiles([nonzeros(g) for g in vgenes], n_obs).T  # (n_ref, 12)
    cand_q = column_quantiles([nonzeros(g) for g in candidates], n_obs).T
    idx, n_found = matched_genes(ref_q, cand_q, n_genes)
    matched = {int(g): candidates[idx[k, :int(n_found[k])]] for k, g in enumerate(vgenes)}
    names = vpairs.names
    pl = np.empty((len(names), n_pairs), dtype=np.int64)
    pr = np.empty((len(names), n_pairs), dtype=np.int64)
    for j, name in enumerate(names):
        bp = random_pairs(matched[int(vl[j])], matched[int(vr[j])], n_pairs, seed, str(name))
        pl[j], pr[j] = bp[:, 0], bp[:, 1]
    res2 = map_tiles(ds, _lr_pass2, halo=halo, layer=layer or "X", progress=progress,
                     desc="spaseg lr: backgrounds", lg=vl, rg=vr, cand_dom=cand_dom[valid],
                     pl=dask.delayed(pl, pure=True), pr=dask.delayed(pr, pure=True), n_pairs=n_pairs,
                     adj_method=adj_method, **common)
    out = [r for _, r in res2]
    rows = np.concatenate([o["rows"] for o in out])
    pair = np.concatenate([o["pair"] for o in out])
    shape = (n_obs, len(valid))
    scores = sp.csr_matrix((np.concatenate([o["score"] for o in out]), (rows, pair)), shape=shape)
    pvals = sp.csr_matrix((np.concatenate([o["p"] for o in out]), (rows, pair)), shape=shape)
    padj = sp.csr_matrix((np.concatenate([o["padj"] for o in out]), (rows, pair)), shape=shape)
    n_sp = np.bincount(pair, minlength=len(valid))
    pad = np.concatenate([o["padj"] for o in out])
    pv = np.concatenate([o["p"] for o in out])
    def count(sel):
        return np.bincount(pair[sel], minlength=len(valid)).astype(np.int64)

    summary = pd.DataFrame({"n_spots": n_sp.astype(np.int64), "n_spots_sig": count(pad < pval_cutoff),
                            "n_spots_sig_pval": count(pv < pval_cutoff)},
                           index=pd.Index(names.astype(str), name="lr"))
    params = {"reference": "SpaSEG downstream/cci/cci.py (squidpy ligrec + stLearn-style background)",
              "deviations": ["S6"], "domain_key": domain_key, "seed": int(seed), "n_pairs": int(n_pairs),
              "n_perms": int(n_perms), "threshold": float(threshold), "alpha": float(alpha),
              "n_rings": int(n_rings), "n_neighs": int(n_neighs), "min_expr": float(min_expr),
              "min_spot": int(min_spot), "log": bool(log), "layer": layer or "X (normalize_total)",
              "entropy_weight": cell_type_fractions is not None, "seconds": round(time.perf_counter() - t0, 3)}
    res = DomainLRResult(vpairs, dom_means, dom_p, scores, pvals, padj, summary, params)
    if write:
        ds.set_result("obsm", "spot_lr_score", scores)
        ds.set_result("obsm", "spot_lr_padj", padj)
        ds.set_result("uns", "spaseg_lr", {"lr_pairs": names.astype(str), "summary": summary.reset_index(),
                                           "domain_pvalues": dom_p.reset_index(names="lr"), "params": params})
    return res


__all__ += ["lr_score", "DomainLRResult"]
