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

import dask.array as da
import numpy as np
import pandas as pd
import scipy.sparse as sp

from .. import blocks
from ..dataset import SpatialDataset
from ..memory import release_memory
from ..results import writes_results
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
    from ..pp.normalize import totals_block

    return totals_block(block, keep_genes)


def _prep_block(block, keep_rows, target, keep_genes, cols, zero_dropped: bool) -> sp.csr_matrix:
    """normalize_total (totals over ``keep_genes``) -> log1p -> columns ``cols``; dropped rows zeroed when
    ``zero_dropped`` (the PCA fit), kept otherwise (the projection)."""
    from ..pp.normalize import log1p_block, normalize_block

    m = log1p_block(normalize_block(block, target, keep_genes), None)[:, cols]
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
    from ..pp.pca import MAX_GENES_EIGH, project_block, fit_pca

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
        X = blocks.get_matrix(ds, layer)
        r = (0.05 if _stereo(ds) else 0.0) if drop_cell_ratio is None else float(drop_cell_ratio)
        if not 0 <= r < 1:
            raise ValueError(f"drop_cell_ratio must be in [0, 1), got {r!r}")
        ratios.append(r)
        if r > 0:
            ng = blocks.row_values(X, _n_genes_block, progress=progress, desc="spaseg: genes per observation")
            kept.append(ng >= np.quantile(ng, r))
        else:
            kept.append(np.ones(ds.n_obs, dtype=bool))

    # 2. genes detected in >= min_cells kept observations of every slice
    gene_ok = np.ones(len(names), dtype=bool)
    for ds, k, ix in zip(datasets, kept, idx):
        X = blocks.get_matrix(ds, layer)
        det = da.map_blocks(_detected_block, X, _column(k, X.chunks[0]), dtype=np.float32,
                            meta=sp.csr_matrix((0, 0), dtype=np.float32))
        n_cells = blocks.column_moments(det, squares=False, progress=progress, desc="spaseg: filter genes").nnz
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
        X = blocks.get_matrix(ds, layer)
        t = blocks.row_values(X, _totals_of, keep_genes=kg, progress=progress, desc="spaseg: totals")
        totals.append(np.asarray(t)[k])
    target = np.median(np.concatenate(totals).astype(np.float32))
    if not target > 0:
        raise ValueError("the median total count of the kept observations is 0; nothing to normalise")

    def prepared(ds, k, kg, c, zero):
        X = blocks.get_matrix(ds, layer)
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
        pcs.append(blocks.map_rows(arr, project_block, dtype=np.float32, sparse=False, n_cols=n_pcs, V=Vt.T.copy(),
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
    """Compute a (n_k, C) array block by block into ``out`` (rows ``offset:`` of the builder's source) and add
    its kept rows to the raster."""
    if not isinstance(arr, da.Array):
        out[:] = np.asarray(arr, dtype=np.float32)
        builder.add(np.flatnonzero(keep) + offset)
        builder.skip(np.flatnonzero(~keep) + offset)
        return
    for r0, b in blocks.iter_blocks(arr, batch=batch, progress=progress, desc="spaseg: PCs -> raster"):
        n = len(b)
        out[r0:r0 + n] = np.asarray(b, dtype=np.float32)
        sel = keep[r0:r0 + n]
        builder.add(np.flatnonzero(sel) + r0 + offset)
        builder.skip(np.flatnonzero(~sel) + r0 + offset)


@writes_results
def spaseg(
    ds: SpatialDataset | Sequence[SpatialDataset], n_domains: int = 7, *, key_added: str = "spaseg",
    seed: int = 1029, use_rep: str | None = None, n_pcs: int | None = None, min_cells: int = 5,
    drop_cell_ratio: float | None = None, layer: str = "X",
    pitch: float | None = None, scale: float | None = None, use_array: bool | None = None,
    alpha: float | None = None, beta: float | None = None,
    iterations: int = 2100, pretrain_epochs: int = 400, n_channel: int | None = None, n_conv: int = 2,
    lr: float = 0.002, weight_decay: float = 1e-5, merge_start: int = 2000, merge_stop: int | None = None,
    mask_empty: bool = False, min_label: int | None = None,
    mode: str = "auto", tile: int = 128, batch_pixels: int = 1 << 16, max_pixels: int = 1 << 18,
    device: str | None = None, threads: int | None = None, raster_key: str | None = None, progress: bool = True,
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
    copy
        Leave the datasets untouched and only return the result.

    Returns
    -------
    :class:`SpaSEGResult`; by default results are pending on each dataset (``ds.write()`` stores them).

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
    feats, kept, n_pcs, pre_info = _features(datasets, use_rep, n_pcs, min_cells, drop_cell_ratio, layer, progress)
    grid = dataset_grid(datasets, pitch=pitch, scale=scale, use_array=use_array)
    image, count, pcs_np = _pca_image(grid, datasets, feats, kept, n_pcs, progress)
    release_memory()  # the raster's temporaries: freed heap pages back before training
    fit = train(image, count > 0, cfg, mode=mode, device=device, tile=tile, batch_pixels=batch_pixels,
                max_pixels=max_pixels, threads=threads, progress=progress)
    present, codes, emb = _read_pixels(fit, grid)
    info = _run_info(fit, cfg, grid, present, pre_info, seed=seed, min_label=min_label, n_slices=len(datasets),
                     n_pcs=n_pcs, min_cells=min_cells, tile=tile, batch_pixels=batch_pixels)
    labels_out = _record_results(datasets, key_added, len(present), codes, emb, pcs_np if use_rep is None else None,
                                 info, raster_key=raster_key, grid=grid, image=image, count=count, n_pcs=n_pcs)
    info["seconds"] = round(time.perf_counter() - t_start, 3)
    raw_to_domain = {int(r): i for i, r in enumerate(present)}
    return SpaSEGResult(labels_out if multi else labels_out[0], fit, grid, image, count, raw_to_domain, info)


def _features(datasets: list[SpatialDataset], use_rep: str | None, n_pcs: int, min_cells: int, drop_cell_ratio,
              layer: str, progress: bool) -> tuple[list, list[np.ndarray], int, dict]:
    """Per-dataset (n_k, n_pcs) features (PCs computed here, or ``obsm[use_rep]``), kept-observation masks,
    the number of PCs and what ``uns[key_added]['preprocessing']`` records."""
    if use_rep is None:
        prep = preprocess(datasets, n_pcs, min_cells=min_cells, drop_cell_ratio=drop_cell_ratio, layer=layer,
                          progress=progress)
        feats, kept = prep.pcs, prep.kept
        pre_info = {"n_genes": prep.n_genes, "target_sum": prep.target_sum,
                    "variance_ratio": prep.variance_ratio, "drop_cell_ratio": np.asarray(prep.drop_cell_ratio),
                    "n_dropped": np.array([int((~k).sum()) for k in kept])}
        return feats, kept, feats[0].shape[1], pre_info
    feats = []
    for d in datasets:
        v = _obsm(d, use_rep)
        feats.append(v[:, :n_pcs])
    kept = [np.ones(d.n_obs, dtype=bool) for d in datasets]
    return feats, kept, int(feats[0].shape[1]), {"use_rep": use_rep}


def _pca_image(grid: PixelGrid, datasets: list[SpatialDataset], feats: list, kept: list[np.ndarray], n_pcs: int,
               progress: bool) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """The z-scored (B, C, H, W) float32 image of the kept observations' features, the (B, H, W) int32
    observations per pixel, and every observation's features as (n_k, n_pcs) float32 arrays."""
    # every observation's features in one array, which the builder reads back (it holds no per-channel sums)
    source = np.empty((sum(d.n_obs for d in datasets), n_pcs), dtype=np.float32)
    builder = RasterBuilder(grid, n_pcs, source=source)
    pcs_np = []
    off = 0
    for d, f, k in zip(datasets, feats, kept):
        out = source[off:off + d.n_obs]
        _stream_into(builder, f, off, k, out, progress=progress)
        pcs_np.append(out)
        off += d.n_obs
    image, count = builder.finish(zscore=True)
    return image, count, pcs_np


def _read_pixels(fit, grid: PixelGrid) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Raw labels present at observations (ascending), each observation's domain code (its label's
    position among them) and its float32 network output vector."""
    raw = sample_pixels(fit.labels, grid)
    present = np.unique(raw)
    codes = np.searchsorted(present, raw)
    return present, codes, sample_pixels(fit.embedding, grid).astype(np.float32, copy=False)


def _run_info(fit, cfg, grid: PixelGrid, present: np.ndarray, pre_info: dict, *, seed: int, min_label: int,
              n_slices: int, n_pcs: int, min_cells: int, tile: int, batch_pixels: int) -> dict:
    """What ``uns[key_added]`` records (without the per-slice entries and the total time)."""
    coll = grid.collisions()
    return {
        "reference": REFERENCE, "deviations": list(DEVIATIONS), "seed": int(seed), "n_domains_arg": int(min_label),
        "n_domains_found": int(len(present)), "stop_iteration": int(fit.stop_iteration), "stopped": bool(fit.stopped),
        "n_labels": int(fit.n_labels), "mode": fit.mode, "device": fit.device, "threads": int(fit.threads),
        "seconds_train": round(fit.seconds, 3),
        "n_slices": n_slices, "n_pcs": int(n_pcs),
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


def _record_results(datasets: list[SpatialDataset], key_added: str, n_found: int, codes: np.ndarray,
                    emb: np.ndarray, pcs_np: list[np.ndarray] | None, info: dict, *, raster_key: str | None,
                    grid: PixelGrid, image: np.ndarray, count: np.ndarray, n_pcs: int) -> list[pd.Series]:
    """Set each dataset's results (module docstring; the PCs only when computed here, ``pcs_np``) and, with
    ``raster_key``, write its input raster into its store as ``images/<raster_key>``; returns each
    dataset's labels as a categorical Series indexed by observation name."""
    cats = [str(i) for i in range(n_found)]
    labels_out = []
    off = 0
    for b, d in enumerate(datasets):
        sl = slice(off, off + d.n_obs)
        lab = pd.Categorical.from_codes(codes[sl], categories=cats)
        d.set_result("obs", key_added, lab)
        d.set_result("obsm", f"{key_added}_embedding", emb[sl])
        if pcs_np is not None:
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
    return labels_out


#: the name users of Stereopy know (``st.tl.spa_seg(data, n_domains=6)``)
spa_seg = spaseg

__all__ = ["spaseg", "spa_seg", "SpaSEGResult", "preprocess"]
