"""Paired synthetic data for reference-based imputation: a spatial gene panel and an scRNA-seq reference.

:func:`paired_synthetic` draws one latent model and two modalities from it:

* ``spatial``: ``n_spatial`` cells measured on a panel of ``n_panel`` genes (an imaging platform:
  Xenium, MERFISH, CosMx), with coordinates and spatial domains;
* ``spatial_truth``: the same cells over **all** ``n_genes`` genes, so the imputation of unmeasured genes
  can be scored (``spatial`` is exactly ``spatial_truth`` restricted to the panel's columns);
* ``reference``: ``n_reference`` scRNA-seq cells over all genes, from the same states in other
  proportions, with a platform effect;
* ``gene_embedding``: a random vector per gene whose cosine tracks the genes' true loading similarity
  (a stand-in for protein-language-model gene vectors).

Model
-----
* Gene programs: each gene loads on one primary program (loading 0.5-1.0; genes spread evenly over the
  ``n_programs`` programs) and on 0-2 secondary programs (loading +-0.15-0.4), so genes of one program
  co-vary: gene-gene structure for a gene graph to exploit.
* Cell states: ``n_states`` latent states. A state's mean activity of a program is normal (sd 1) plus 5
  where the state switches the program on (each program is on in one home state and, with probability
  0.08, in each other state), so programs act like cell-type marker modules; a cell's activity is its
  state's plus per-cell noise (sd 0.5), within-state variation a good embedding can follow. Both
  modalities share states and activities; the reference samples states in other (Dirichlet) proportions.
  Genes have a log baseline of sd 0.4.
* Expression: ``mu[i, j] = scale * library[i] * exp(base[j] + loadings[j] . activity[i]) * platform[j]``,
  counts negative binomial with inverse dispersion ``theta[j]`` (the compiled, counter-based sampler of
  :mod:`stdask.datasets.counts`, so counts do not depend on threads). ``platform[j] = 1`` for the spatial
  data and ``exp(N(0, platform_effect))`` for the reference; library sizes are log-normal (sd 0.3 spatial,
  0.5 reference); the imaging platform is closer to Poisson (``theta`` 4x the reference's). Each modality's
  ``scale`` is calibrated so that the expected zero fraction is 0.85 (spatial truth, all genes) and 0.90
  (reference), so library size / capture efficiency also differs between them.
* Space: cells sit on a layout of :mod:`stdask.datasets.layouts`; the tissue is cut into irregular domains
  (Voronoi cells of ``3 * n_states`` warped seeds, each labelled with a state) and a cell takes its domain's
  state with probability 0.8, a random state otherwise.
* Panel: ``n_panel`` genes drawn at random (then sorted), so every program is represented.

Everything comes from keyed streams of ``seed`` (:mod:`stdask.random_streams`, purposes ``PAIRED_*`` of
:mod:`.purposes`), so the same arguments give identical data.

Size and memory: :func:`paired_synthetic` holds the data in memory; :func:`paired_model` +
:func:`spatial_panel_chunks` + :func:`paired_reference` give the same panel and reference with the panel streamed
(no truth held). The truth is CSR int32 (about ``0.15 * n_spatial * n_genes`` stored entries, 8 bytes each:
100,000 cells x 2,000 genes hold 3e7 entries, 240 MB); expected means are computed per block of cells (2**21
entries, 16 MiB), never dense; per-cell arrays are ``(n, n_programs)`` float64. Measured: 100,000 spatial cells
x 2,000 genes (panel 200) plus a 2,000-cell reference take about 11 s and 0.8 GB peak RSS on 2 shared cores,
most of it the negative-binomial sampler (2e8 entries).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.optimize import brentq

from ..random_streams import sequence_key, sequence_stream
from ..store.atomic import tmp_sibling
from .counts import nb_counts
from .layouts import LAYOUTS, Geometry
from .purposes import PAIRED_CELLS, PAIRED_MODEL, PAIRED_REFERENCE, PAIRED_SPATIAL

__all__ = ["CellLatents", "GeneEmbedding", "PairedModel", "PairedSynthetic", "PairedTruth", "paired_model",
           "paired_reference", "paired_synthetic", "spatial_obs", "spatial_panel_chunks", "write_paired"]

#: expected zero fraction of the spatial truth (all genes) and of the reference
SPATIAL_ZERO_FRACTION = 0.85
REFERENCE_ZERO_FRACTION = 0.90
#: sd of the state mean activities and of the per-cell activity noise
STATE_SD = 1.0
CELL_SD = 0.5
BASE_SD = 0.4
PROGRAM_ON = 5.0
PROGRAM_ON_RATE = 0.08
#: log-normal library-size sd per modality
SPATIAL_LIBRARY_SD = 0.3
REFERENCE_LIBRARY_SD = 0.5
#: typical negative-binomial inverse dispersion per modality (imaging is closer to Poisson)
SPATIAL_THETA = 8.0
REFERENCE_THETA = 2.0
#: probability that a spatial cell takes its domain's state
DOMAIN_PURITY = 0.8
#: Stereo-seq bin side (only the "stereo" layout uses it)
STEREO_BIN = 50


@dataclass(frozen=True)
class GeneEmbedding:
    """Gene vectors: ``genes`` (n_genes,) str and ``vectors`` (n_genes, embedding_dim) float32."""

    genes: np.ndarray
    vectors: np.ndarray

    def to_frame(self) -> pd.DataFrame:
        """The file layout the gene-embedding readers accept: a ``gene`` column plus ``e0 .. e{d-1}``."""
        frame = pd.DataFrame(self.vectors, columns=[f"e{k}" for k in range(self.vectors.shape[1])])
        frame.insert(0, "gene", self.genes)
        return frame


@dataclass(frozen=True)
class PairedTruth:
    """The drawn latent model (G genes, P programs, S states).

    Attributes
    ----------
    loadings
        (G, P) float64 gene loadings on the programs.
    program
        (G,) int64 primary program of each gene.
    state_activity
        (S, P) float64 mean program activity of each state.
    base
        (G,) float64 log baseline expression.
    platform
        (G,) float64 log platform factor of the reference relative to the spatial platform.
    theta_spatial, theta_reference
        (G,) float64 negative-binomial inverse dispersions.
    scale_spatial, scale_reference
        Calibrated expression scales (capture efficiency times depth).
    proportions_spatial, proportions_reference
        (S,) float64 state proportions (spatial: realised fractions; reference: sampling probabilities).
    """

    loadings: np.ndarray
    program: np.ndarray
    state_activity: np.ndarray
    base: np.ndarray
    platform: np.ndarray
    theta_spatial: np.ndarray
    theta_reference: np.ndarray
    scale_spatial: float
    scale_reference: float
    proportions_spatial: np.ndarray
    proportions_reference: np.ndarray


@dataclass
class PairedSynthetic:
    """What :func:`paired_synthetic` returns.

    Attributes
    ----------
    spatial
        AnnData, n_spatial x n_panel raw counts (CSR int32); ``obs['state']``, ``obs['domain']``
        (categoricals), ``obsm['spatial']`` (n, 2) float64 coordinates (layout units).
    spatial_truth
        AnnData, the same cells x all n_genes genes (CSR int32), same ``obs`` and ``obsm``;
        ``var['in_panel']``, ``var['program']``.
    reference
        AnnData, n_reference x n_genes raw counts (CSR int32); ``obs['state']``.
    gene_embedding
        :class:`GeneEmbedding` of every gene.
    panel
        (n_panel,) str, the measured genes (sorted, in ``spatial.var_names`` order).
    truth
        :class:`PairedTruth`.
    params
        The arguments.
    """

    spatial: Any
    spatial_truth: Any
    reference: Any
    gene_embedding: GeneEmbedding
    panel: np.ndarray
    truth: PairedTruth
    params: dict[str, Any] = field(default_factory=dict)


def _check_args(n_spatial: int, n_reference: int, n_genes: int, n_panel: int, n_states: int, n_programs: int,
                platform_effect: float, layout: str, embedding_dim: int, embedding_noise: float, seed: int) -> None:
    for name, value, lo in (("n_spatial", n_spatial, 1), ("n_reference", n_reference, 1), ("n_genes", n_genes, 2),
                            ("n_panel", n_panel, 1), ("n_states", n_states, 1), ("n_programs", n_programs, 1),
                            ("embedding_dim", embedding_dim, 1), ("seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
            raise ValueError(f"paired_synthetic: {name} must be an integer >= {lo}, got {value!r}")
    if n_panel >= n_genes:
        raise ValueError(f"paired_synthetic: n_panel={n_panel} must be below n_genes={n_genes}, "
                         "so that some genes are left to impute")
    for name, value in (("platform_effect", platform_effect), ("embedding_noise", embedding_noise)):
        if not (np.isfinite(value) and value >= 0):
            raise ValueError(f"paired_synthetic: {name} must be a finite number >= 0, got {value!r}")
    if layout not in LAYOUTS:
        raise ValueError(f"paired_synthetic: unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")


def _draw_loadings(rng: np.random.Generator, n_genes: int, n_programs: int) -> tuple[np.ndarray, np.ndarray]:
    """(G, P) loadings and (G,) primary programs: even primary assignment, 0-2 weaker secondary loadings."""
    program = rng.permutation(np.arange(n_genes) % n_programs).astype(np.int64)
    loadings = np.zeros((n_genes, n_programs))
    loadings[np.arange(n_genes), program] = rng.uniform(0.5, 1.0, n_genes)
    n_second = rng.choice(3, size=n_genes, p=[0.4, 0.4, 0.2])
    for j in np.flatnonzero(n_second):
        others = np.delete(np.arange(n_programs), program[j])
        picks = rng.choice(others, size=min(int(n_second[j]), others.size), replace=False)
        loadings[j, picks] = rng.uniform(0.15, 0.4, picks.size) * rng.choice([-1.0, 1.0], picks.size)
    return loadings, program


def _draw_activity(rng: np.random.Generator, n_states: int, n_programs: int) -> np.ndarray:
    """(S, P) mean activities: normal (sd STATE_SD) plus PROGRAM_ON where a state switches a program on
    (probability PROGRAM_ON_RATE), so programs behave like cell-type marker modules (on in a few states)."""
    activity = rng.normal(0.0, STATE_SD, (n_states, n_programs))
    on = rng.random((n_states, n_programs)) < PROGRAM_ON_RATE
    # every program has a home state where it is on (and every state a program when P >= S): a program
    # on nowhere would leave its genes faint everywhere, with nothing for an imputation to recover
    on[rng.permutation(n_programs) % n_states, np.arange(n_programs)] = True
    return activity + PROGRAM_ON * on


def _draw_embedding(rng: np.random.Generator, loadings: np.ndarray, dim: int, noise: float) -> np.ndarray:
    """(G, dim) float32: unit loading rows through a random projection (which keeps inner products near
    their value, Johnson-Lindenstrauss) plus isotropic noise of norm about ``noise``."""
    norms = np.linalg.norm(loadings, axis=1, keepdims=True)
    unit = loadings / np.where(norms > 0, norms, 1.0)
    proj = rng.normal(0.0, 1.0 / math.sqrt(dim), (loadings.shape[1], dim))
    vec = unit @ proj + rng.normal(0.0, noise / math.sqrt(dim), (loadings.shape[0], dim))
    return vec.astype(np.float32)


def _spatial_states(rng: np.random.Generator, geometry: Geometry, x: np.ndarray, y: np.ndarray,
                    n_states: int) -> tuple[np.ndarray, np.ndarray]:
    """(n,) domain and state codes: warped Voronoi domains labelled by state, impure by 1 - DOMAIN_PURITY."""
    n_seeds = 3 * n_states
    w_n, h_n = geometry.width / geometry.extent, geometry.height / geometry.extent
    seeds = rng.uniform(0.0, 1.0, (n_seeds, 2)) * np.array([w_n, h_n])
    label = rng.permutation(np.arange(n_seeds) % n_states)
    freq, phase = rng.uniform(1.0, 2.5, 2), rng.uniform(0.0, 1.0, 2)
    u = (x - geometry.x0) / geometry.extent
    v = (y - geometry.y0) / geometry.extent
    # warped coordinates make the domain borders wavy rather than straight Voronoi edges
    uu = u + 0.06 * np.sin(2 * np.pi * (freq[0] * v + phase[0]))
    vv = v + 0.06 * np.sin(2 * np.pi * (freq[1] * u + phase[1]))
    nearest = np.zeros(len(x), dtype=np.int64)
    best = np.full(len(x), np.inf)
    for s in range(n_seeds):  # one seed at a time: (n,) temporaries, never (n, n_seeds)
        d2 = (uu - seeds[s, 0]) ** 2 + (vv - seeds[s, 1]) ** 2
        closer = d2 < best
        best[closer], nearest[closer] = d2[closer], s
    domain = label[nearest]
    stray = rng.random(len(x)) >= DOMAIN_PURITY
    state = np.where(stray, rng.integers(0, n_states, len(x)), domain)
    return domain.astype(np.int64), state.astype(np.int64)


def _log_means(activity: np.ndarray, loadings: np.ndarray, base: np.ndarray) -> np.ndarray:
    """(n, G) float64 log relative means ``base + activity @ loadings.T`` (one block of cells)."""
    out = activity @ loadings.T
    out += base  # in place: these blocks are the generator's largest temporaries
    return out


def _calibrate(log_rel: np.ndarray, library: np.ndarray, theta: np.ndarray, zero_fraction: float) -> float:
    """The scale whose expected NB zero fraction over these cells and genes is ``zero_fraction``."""
    rel = np.exp(log_rel) * library[:, None]

    def excess(log_scale: float) -> float:
        mu = rel * math.exp(log_scale)
        return float(np.mean(np.exp(-theta * np.log1p(mu / theta)))) - zero_fraction

    return math.exp(brentq(excess, -40.0, 40.0, xtol=1e-8))


def _block_rows(n_genes: int) -> int:
    """Cells per count block: about 2**21 entries (the block is also the unit of the counter-based key)."""
    return int(max(64, 2 ** 21 // n_genes))


def _count_blocks(seed: int, purpose: int, activity: np.ndarray, loadings: np.ndarray, log_gene: np.ndarray,
                  size: np.ndarray, theta: np.ndarray) -> Iterator[sp.csr_matrix]:
    """(m, G) CSR uint32 negative-binomial counts of consecutive blocks of :func:`_block_rows` cells.

    Block ``b`` draws from the counter-based key ``(seed, purpose, b)``, so a block's counts do not depend on
    how many blocks are drawn or kept; only one block of means (about 16 MiB) exists at a time.
    """
    n, n_genes = activity.shape[0], loadings.shape[0]
    rows = _block_rows(n_genes)
    for b, start in enumerate(range(0, n, rows)):
        stop = min(n, start + rows)
        mu = _log_means(activity[start:stop], loadings, log_gene)
        np.exp(mu, out=mu)
        m = stop - start
        yield nb_counts(sequence_key(seed, purpose, b), size[start:stop], np.arange(m, dtype=np.int64), mu, theta,
                        np.full(m, -1, dtype=np.int64), 1.0, 0.0)
        del mu


def _concat_rows(parts: list[sp.csr_matrix], n_genes: int) -> sp.csr_matrix:
    """Row-wise concatenation of CSR blocks as CSR int32 (counts < 2**31) with int32 indices, int64 indptr."""
    data = np.concatenate([p.data for p in parts], dtype=np.int32, casting="unsafe")
    indices = np.concatenate([p.indices for p in parts], dtype=np.int32)
    offsets = np.cumsum([0] + [p.nnz for p in parts[:-1]])
    indptr = np.concatenate([[0]] + [p.indptr[1:] + o for p, o in zip(parts, offsets)]).astype(np.int64)
    out = sp.csr_matrix((data, indices, indptr), shape=(int(indptr.size - 1), n_genes))
    out.has_sorted_indices = True
    return out


def _counts(seed: int, purpose: int, activity: np.ndarray, loadings: np.ndarray, log_gene: np.ndarray,
            size: np.ndarray, theta: np.ndarray) -> sp.csr_matrix:
    """(n, G) CSR int32 negative-binomial counts, block by block of cells (:func:`_count_blocks`)."""
    parts = list(_count_blocks(seed, purpose, activity, loadings, log_gene, size, theta))
    return _concat_rows(parts, loadings.shape[0])


def _spread(n: int, k: int) -> np.ndarray:
    """Up to ``k`` indices spread evenly over ``range(n)`` (the cells and genes a scale is calibrated on)."""
    return np.unique(np.linspace(0, n - 1, min(n, k)).astype(np.int64))


def _anndata(counts: sp.csr_matrix, obs: pd.DataFrame, var: pd.DataFrame, uns: dict[str, Any]):
    import anndata as ad

    adata = ad.AnnData(X=counts, obs=obs, var=var)
    adata.uns["paired_synthetic"] = dict(uns)
    return adata


def _state_obs(names: np.ndarray, state: np.ndarray, n_states: int) -> pd.DataFrame:
    categories = [f"state_{s}" for s in range(n_states)]
    return pd.DataFrame({"state": pd.Categorical.from_codes(state, categories=categories)},
                        index=pd.Index(names, name="cell"))


@dataclass(frozen=True)
class CellLatents:
    """One modality's cells: ``state`` (n,) int64 codes, ``activity`` (n, P) float64 program activities, ``size``
    (n,) float64 library size times the modality's calibrated scale (the NB mean's per-cell factor)."""

    state: np.ndarray
    activity: np.ndarray
    size: np.ndarray


@dataclass(frozen=True)
class PairedModel:
    """Everything :func:`paired_synthetic` draws before the counts (what :func:`paired_model` returns).

    Attributes
    ----------
    params
        The arguments. ``genes``: (G,) str names; ``panel_idx``: (n_panel,) int64 sorted measured columns;
        ``vectors``: (G, embedding_dim) float32 gene embedding.
    truth
        :class:`PairedTruth`.
    coords, domain
        (n_spatial, 2) float64 coordinates (layout units) and (n_spatial,) int64 domain of the spatial cells.
    spatial, reference
        :class:`CellLatents` of the spatial and of the reference cells.
    """

    params: dict[str, Any]
    genes: np.ndarray
    panel_idx: np.ndarray
    vectors: np.ndarray
    truth: PairedTruth
    coords: np.ndarray
    domain: np.ndarray
    spatial: CellLatents
    reference: CellLatents


def paired_model(n_spatial: int = 5000, n_reference: int = 2000, n_genes: int = 2000, n_panel: int = 200, *,
                 n_states: int = 8, n_programs: int = 20, platform_effect: float = 0.5, layout: str = "cells",
                 embedding_dim: int = 64, embedding_noise: float = 0.5, seed: int = 0) -> PairedModel:
    """The latent model and every cell's latent values of :func:`paired_synthetic` (same arguments), no counts.

    Draw the counts from it with :func:`spatial_panel_chunks` (the spatial panel, streamed) and
    :func:`paired_reference`; they equal :func:`paired_synthetic`'s ``spatial`` and ``reference`` for the same
    arguments. The gene-level model, the panel and the reference cells do not depend on ``n_spatial``.

    Memory: per-cell arrays only, about ``8 * (n_programs + 6)`` bytes per spatial cell (1.35M cells and 20
    programs: 280 MB), plus the reference's; no count matrix.
    """
    _check_args(n_spatial, n_reference, n_genes, n_panel, n_states, n_programs, platform_effect, layout,
                embedding_dim, embedding_noise, seed)
    params = dict(n_spatial=int(n_spatial), n_reference=int(n_reference), n_genes=int(n_genes),
                  n_panel=int(n_panel), n_states=int(n_states), n_programs=int(n_programs),
                  platform_effect=float(platform_effect), layout=layout, embedding_dim=int(embedding_dim),
                  embedding_noise=float(embedding_noise), seed=int(seed))
    rng = sequence_stream(seed, PAIRED_MODEL)
    # --- the latent model: genes, programs, states, platform, panel, embedding (this order is part of the data)
    width = max(4, len(str(n_genes - 1)))
    genes = np.array([f"gene_{j:0{width}d}" for j in range(n_genes)], dtype=object)
    loadings, program = _draw_loadings(rng, n_genes, n_programs)
    base = rng.normal(0.0, BASE_SD, n_genes)
    state_activity = _draw_activity(rng, n_states, n_programs)
    dispersion = np.exp(rng.normal(0.0, 0.5, n_genes))
    theta_s, theta_r = SPATIAL_THETA * dispersion, REFERENCE_THETA * dispersion
    platform = rng.normal(0.0, platform_effect, n_genes)
    prop_ref = rng.dirichlet(np.ones(n_states))
    prop_ref = np.maximum(prop_ref, 0.2 / n_states)  # every state is sampled by the reference
    prop_ref /= prop_ref.sum()
    panel_idx = np.sort(rng.choice(n_genes, size=n_panel, replace=False))
    vectors = _draw_embedding(rng, loadings, embedding_dim, embedding_noise)
    geometry = Geometry.build(layout, n_spatial, STEREO_BIN)

    # --- cells: spatial (states from domains) and reference (states from prop_ref)
    rng_s = sequence_stream(seed, PAIRED_CELLS, 0)
    x, y = geometry.xy(0, n_spatial, seed, max(1, n_spatial))
    domain, state_s = _spatial_states(rng_s, geometry, x, y, n_states)
    act_s = state_activity[state_s] + rng_s.normal(0.0, CELL_SD, (n_spatial, n_programs))
    lib_s = np.exp(rng_s.normal(-SPATIAL_LIBRARY_SD ** 2 / 2, SPATIAL_LIBRARY_SD, n_spatial))
    rng_r = sequence_stream(seed, PAIRED_CELLS, 1)
    state_r = rng_r.choice(n_states, size=n_reference, p=prop_ref).astype(np.int64)
    act_r = state_activity[state_r] + rng_r.normal(0.0, CELL_SD, (n_reference, n_programs))
    lib_r = np.exp(rng_r.normal(-REFERENCE_LIBRARY_SD ** 2 / 2, REFERENCE_LIBRARY_SD, n_reference))

    # --- capture efficiency: each modality's scale gives its target zero fraction
    cs, cr, cg = _spread(n_spatial, 1000), _spread(n_reference, 1000), _spread(n_genes, 500)
    scale_s = _calibrate(_log_means(act_s[cs], loadings[cg], base[cg]), lib_s[cs], theta_s[cg],
                         SPATIAL_ZERO_FRACTION)
    scale_r = _calibrate(_log_means(act_r[cr], loadings[cg], (base + platform)[cg]), lib_r[cr], theta_r[cg],
                         REFERENCE_ZERO_FRACTION)
    truth = PairedTruth(loadings=loadings, program=program, state_activity=state_activity, base=base,
                        platform=platform, theta_spatial=theta_s, theta_reference=theta_r,
                        scale_spatial=scale_s, scale_reference=scale_r,
                        proportions_spatial=np.bincount(state_s, minlength=n_states) / n_spatial,
                        proportions_reference=prop_ref)
    return PairedModel(params=params, genes=genes.astype(str), panel_idx=panel_idx.astype(np.int64), vectors=vectors,
                       truth=truth, coords=np.column_stack([x, y]).astype(np.float64), domain=domain,
                       spatial=CellLatents(state_s, act_s, lib_s * scale_s),
                       reference=CellLatents(state_r, act_r, lib_r * scale_r))


def _var(model: PairedModel) -> pd.DataFrame:
    """Every gene's ``program`` and ``in_panel``, indexed by gene name."""
    n_genes = model.genes.size
    return pd.DataFrame({"program": model.truth.program, "in_panel": np.isin(np.arange(n_genes), model.panel_idx)},
                        index=pd.Index(model.genes, name="gene"))


def spatial_obs(model: PairedModel) -> pd.DataFrame:
    """The spatial cells' ``obs``: index ``spatial_0`` ..., categoricals ``state`` and ``domain``
    (``state_0`` ...); as :func:`paired_synthetic`'s ``spatial.obs``."""
    n_states = model.params["n_states"]
    names = np.array([f"spatial_{i}" for i in range(model.coords.shape[0])], dtype=object)
    obs = _state_obs(names, model.spatial.state, n_states)
    obs["domain"] = pd.Categorical.from_codes(model.domain, categories=[f"state_{s}" for s in range(n_states)])
    return obs


def spatial_panel_chunks(model: PairedModel, chunk_size: int = 100_000) -> Iterator[tuple[int, sp.csr_matrix]]:
    """The spatial panel counts, a chunk of cells at a time: ``(first_row, (m, n_panel) CSR int32)``.

    The chunks, stacked, equal :func:`paired_synthetic`'s ``spatial.X`` for the same arguments: each count
    block is drawn over every gene (a cell with no count anywhere gets one in its most expected gene, which may
    be a panel gene) and cut to the panel. So the cost is that of the truth, ``n_spatial * n_genes`` draws
    (1.35M cells x 2,377 genes: a few minutes on 2 cores), but memory holds one chunk of panel counts.

    Parameters
    ----------
    model
        :func:`paired_model`'s result.
    chunk_size
        Cells per chunk, at least (whole count blocks of about ``2**21 / n_genes`` cells are kept together);
        the last chunk may be smaller.
    """
    if chunk_size < 1:
        raise ValueError(f"spatial_panel_chunks: chunk_size must be >= 1, got {chunk_size}")
    t, cells, n_panel = model.truth, model.spatial, model.panel_idx.size
    start, parts, m = 0, [], 0
    for block in _count_blocks(model.params["seed"], PAIRED_SPATIAL, cells.activity, t.loadings, t.base, cells.size,
                               t.theta_spatial):
        parts.append(block[:, model.panel_idx].tocsr())
        m += block.shape[0]
        if m >= chunk_size:
            yield start, _concat_rows(parts, n_panel)
            start, parts, m = start + m, [], 0
    if parts:
        yield start, _concat_rows(parts, n_panel)


def paired_reference(model: PairedModel):
    """The reference AnnData of :func:`paired_synthetic` (n_reference x n_genes raw counts, CSR int32;
    ``obs['state']``, ``var['program']``)."""
    t, cells = model.truth, model.reference
    ref_x = _counts(model.params["seed"], PAIRED_REFERENCE, cells.activity, t.loadings, t.base + t.platform,
                    cells.size, t.theta_reference)
    names = np.array([f"reference_{i}" for i in range(cells.state.size)], dtype=object)
    obs = _state_obs(names, cells.state, model.params["n_states"])
    return _anndata(ref_x, obs, _var(model).drop(columns="in_panel"), model.params)


def paired_synthetic(n_spatial: int = 5000, n_reference: int = 2000, n_genes: int = 2000, n_panel: int = 200, *,
                     n_states: int = 8, n_programs: int = 20, platform_effect: float = 0.5, layout: str = "cells",
                     embedding_dim: int = 64, embedding_noise: float = 0.5, seed: int = 0) -> PairedSynthetic:
    """A spatial panel, its all-gene truth and an scRNA-seq reference from one latent model.

    See the module docstring for the model. Raw counts everywhere (``stdask`` normalises downstream).

    Parameters
    ----------
    n_spatial, n_reference
        Cells of the spatial data and of the reference.
    n_genes
        Genes of the reference and of the truth, named ``gene_0000`` ...
    n_panel
        Genes measured in space (``< n_genes``), drawn at random.
    n_states
        Latent cell states shared by both modalities.
    n_programs
        Gene programs (sources of gene-gene correlation).
    platform_effect
        sd of the reference's per-gene log multiplicative factor relative to the spatial platform.
    layout
        ``"cells"`` (um), ``"visium"`` (um) or ``"stereo"`` (DNB, 50-DNB bins): positions of the spatial cells.
    embedding_dim
        Length of each gene vector.
    embedding_noise
        Norm of the noise added to the (unit-norm) projected loadings; 0 gives vectors whose cosine is the
        loading cosine up to the projection's distortion.
    seed
        Non-negative seed; the same arguments give identical data.

    Returns
    -------
    PairedSynthetic

    Notes
    -----
    Cost is linear in ``(n_spatial + n_reference) * n_genes`` (the truth covers every gene, whatever the
    panel): 100,000 x 2,000 take about 11 s on 2 shared cores and 0.8 GB, the truth's 3e7 int32 entries
    included; memory beyond the outputs is bounded by one block of 2**21 means.
    """
    model = paired_model(n_spatial, n_reference, n_genes, n_panel, n_states=n_states, n_programs=n_programs,
                         platform_effect=platform_effect, layout=layout, embedding_dim=embedding_dim,
                         embedding_noise=embedding_noise, seed=seed)
    t, params, panel_idx = model.truth, model.params, model.panel_idx
    truth_x = _counts(seed, PAIRED_SPATIAL, model.spatial.activity, t.loadings, t.base, model.spatial.size,
                      t.theta_spatial)
    var = _var(model)
    obs_s = spatial_obs(model)
    spatial_truth = _anndata(truth_x, obs_s, var, params)
    spatial_truth.obsm["spatial"] = model.coords
    spatial = _anndata(truth_x[:, panel_idx], obs_s.copy(), var.iloc[panel_idx].copy(), params)
    spatial.obsm["spatial"] = model.coords.copy()
    return PairedSynthetic(spatial=spatial, spatial_truth=spatial_truth, reference=paired_reference(model),
                           gene_embedding=GeneEmbedding(genes=model.genes, vectors=model.vectors),
                           panel=model.genes[panel_idx], truth=t, params=params)


def _replace_file(path: Path, write) -> None:
    """Write through ``write(tmp_path)`` to a temporary sibling, then rename onto ``path`` (atomic on POSIX)."""
    tmp = tmp_sibling(path).with_suffix(path.suffix)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_paired(paired: PairedSynthetic, folder: str | Path) -> dict[str, Path]:
    """Write the paired data as files for notebooks and benchmarks.

    ``spatial.h5ad`` (panel counts), ``truth.h5ad`` (all genes), ``reference.h5ad`` and
    ``gene_embedding.parquet`` (a ``gene`` column plus ``e0 ..``; ``gene_embedding.npz`` with ``genes`` and
    ``vectors`` where pyarrow is not installed). Each file is written under a temporary name and renamed
    into place, so a crash never leaves a half-written file under its final name; existing files of these
    names are replaced.

    Parameters
    ----------
    paired
        What :func:`paired_synthetic` returned.
    folder
        Output folder (created if missing).

    Returns
    -------
    dict
        ``spatial``, ``truth``, ``reference``, ``gene_embedding``: the paths written.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for key, adata in (("spatial", paired.spatial), ("truth", paired.spatial_truth), ("reference", paired.reference)):
        out[key] = folder / f"{key}.h5ad"
        _replace_file(out[key], adata.write_h5ad)
    emb = paired.gene_embedding
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        out["gene_embedding"] = folder / "gene_embedding.npz"
        _replace_file(out["gene_embedding"], lambda p: _save_npz(p, emb))
    else:
        out["gene_embedding"] = folder / "gene_embedding.parquet"
        _replace_file(out["gene_embedding"], lambda p: emb.to_frame().to_parquet(p, index=False))
    return out


def _save_npz(path: Path, emb: GeneEmbedding) -> None:
    with open(path, "wb") as fh:  # a file object: np.savez would append ".npz" to a temporary name
        np.savez(fh, genes=emb.genes.astype(str), vectors=emb.vectors)
