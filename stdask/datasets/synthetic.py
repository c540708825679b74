"""Synthetic spatial transcriptomics slices with planted ground truth, at any size.

:func:`synthetic_slice` describes a slice (a few kB of parameters); its observations are generated on
demand, block by block, so a slice of 10^7 observations streams in bounded memory. Each block of
``block_size`` observations draws all its randomness from its own streams keyed by
``(seed, purpose, block)`` (:mod:`stdask.random_streams`, :mod:`.purposes`), so the same arguments give
bit-identical data whatever chunk size the caller reads with.

Model
-----
* Positions: :mod:`stdask.datasets.layouts` (Visium spots, Stereo-seq bins or jittered single cells,
  filling a roughly square tissue).
* Spatial domains: ``"layers"`` are cortex-like bands, parallel to x, of random widths with smoothly
  warped and curved boundaries; ``"regions"`` are irregular blobs, the Voronoi cells of ``3 * n_domains``
  random seeds (each labelled with a domain) evaluated on smoothly warped coordinates.
* Cell types: each observation gets one of ``n_cell_types`` types, drawn from a composition that depends
  on its domain (each domain favours one type).
* Counts: negative binomial, ``mu = library_size * scale * base_gene * domain_effect * type_effect``,
  inverse dispersion per gene. ``scale`` is calibrated so that the expected fraction of zero entries is
  ``zero_fraction`` (0.9 by default). Library sizes vary log-normally and along a smooth spatial trend.
  Every observation has at least one count (a zero row gets one count in its most expected gene),
  because real files list only observations with reads.
* Domain markers (``n_markers`` per domain, up 3-6 fold in their domain) and cell-type markers
  (``n_markers`` per type, up 4-8 fold in their type) are moderately to highly expressed genes drawn
  from the synthetic genes (then from LR genes not used by a hotspot, if the synthetic ones run out).
* Ligand-receptor hotspots: ``n_hotspots`` pairs of connectomeDB2020 (both genes in the panel, no gene
  shared between hotspots, no self pairs), each with a disc; inside it each observation is a "ligand"
  or a "receptor" cell (probability 1/2 each) and the gene of its role is raised
  (``mu -> 6 * mu + 3 * library_size``), so neighbouring observations co-express the pair. Outside
  the discs the hotspot genes have a typical baseline (about the median gene's) with no domain or
  cell-type structure, so the discs are the planted truth an LR method should recover.
* Genes: ``round(lr_fraction * n_genes)`` symbols from the packaged connectomeDB2020_lit table (capped
  at the 1,424 it holds), the rest synthetic ``Gene00042``-style names, in random order.
"""
from __future__ import annotations

import math
from dataclasses import asdict
from operator import attrgetter
from typing import Any, Iterator

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.optimize import brentq

from ..random_streams import sequence_key, sequence_stream
from .counts import nb_counts
from .batch import ObsBatch
from .layouts import VISIUM_SPOT_UM, Geometry, barcodes_10x
from .params import SyntheticParams, SyntheticTruth, read_lr_pairs
from .purposes import COUNTS, OBS, PARAMS

#: hotspot up-regulation: mu -> HOTSPOT_FOLD * mu + HOTSPOT_BOOST * library_size
HOTSPOT_FOLD = 6.0
HOTSPOT_BOOST = 3.0
#: hotspot disc radius as a fraction of the tissue side
HOTSPOT_RADIUS = 0.08
#: hotspot role codes in :attr:`ObsBatch.role`
ROLE_NAMES = ("", "ligand", "receptor")
#: default number of observations per chunk yielded by :meth:`SyntheticSlice.iter_chunks`
DEFAULT_CHUNK_SIZE = 100_000


def _block_size(n_genes: int) -> int:
    """Observations per random block: ~2**20 matrix entries, between 64 and 8,192 observations.

    Depends only on ``n_genes`` (part of the data's definition), never on how data are read.
    """
    return int(min(8192, max(64, 2 ** 20 // max(1, n_genes))))


class SyntheticSlice:
    """A synthetic slice, generated on demand chunk by chunk (see the module docstring for the model).

    Build one with :func:`synthetic_slice`.

    Attributes
    ----------
    params
        The arguments that define the slice.
    geometry
        Its lattice (:class:`stdask.datasets.layouts.Geometry`).
    var
        (n_genes, ...) DataFrame indexed by gene symbol: ``gene_ids`` (``SYNG0000042``-style ids),
        ``feature_types`` (``"Gene Expression"``) and ``in_lr_db`` (bool, symbol is in the LR table).
    truth
        :class:`SyntheticTruth`.
    theta
        (n_genes,) float64 negative-binomial inverse dispersion of each gene.
    domain_names, cell_type_names, hotspot_names
        Category names (``domain_0``, ``celltype_0``, ``<ligand>_<receptor>``), in code order.
    block_size
        Observations per random block (depends on ``n_genes`` only).
    """

    def __init__(self, params: SyntheticParams):
        params.validate()
        self.params = params
        self.geometry = Geometry.build(params.layout, params.n_obs, params.bin_size)
        self.block_size = _block_size(params.n_genes)
        self.domain_names = [f"domain_{d}" for d in range(params.n_domains)]
        self.cell_type_names = [f"celltype_{t}" for t in range(params.n_cell_types)]
        self._cache: dict[int, ObsBatch] = {}
        self._build_model(sequence_stream(params.seed, PARAMS))

    # ------------------------------------------------------------------ description
    # read-only views of the parameters and the lattice
    n_obs = property(attrgetter("params.n_obs"), doc="Number of observations (int).")
    n_genes = property(attrgetter("params.n_genes"), doc="Number of genes (int).")
    layout = property(attrgetter("params.layout"), doc='``"visium"``, ``"stereo"`` or ``"cells"``.')
    units = property(attrgetter("geometry.unit"),
                     doc='Coordinate unit: ``"um"`` (Visium, cells) or ``"DNB"`` (Stereo-seq, 500 nm).')
    um_per_unit = property(attrgetter("geometry.um_per_unit"), doc="Micrometres per coordinate unit (float).")

    @property
    def spot_diameter(self) -> float:
        """Diameter of one observation's footprint, coordinate units (Visium spot, bin side, cell)."""
        if self.layout == "visium":
            return VISIUM_SPOT_UM
        if self.layout == "stereo":
            return float(self.params.bin_size)
        return 10.0

    @property
    def n_blocks(self) -> int:
        """Number of random blocks."""
        return math.ceil(self.n_obs / self.block_size)

    def __repr__(self) -> str:
        p = self.params
        return (f"SyntheticSlice(layout={p.layout!r}, n_obs={p.n_obs:,}, n_genes={p.n_genes:,}, seed={p.seed}, "
                f"domains={p.n_domains} {p.domain_shape}, cell_types={p.n_cell_types}, hotspots={p.n_hotspots})")

    # ------------------------------------------------------------------ global model
    def _build_model(self, rng: np.random.Generator) -> None:
        """Draw the global model from ``rng``, step by step.

        The steps draw from the one stream in this order; changing the order changes every slice.
        """
        hot_pairs, lr_genes, syn_genes = self._draw_genes(rng)
        gene_pos = {g: i for i, g in enumerate(self.var.index)}
        hot_genes = [g for pair in hot_pairs for g in pair]
        marker_idx = self._draw_expression(rng, gene_pos, hot_genes, lr_genes, syn_genes)
        comp = self._draw_composition(rng)
        self._draw_domains(rng)
        # --- smooth library-size trend
        self._size_field = dict(freq=rng.uniform(0.5, 1.5, 2), phase=rng.uniform(0, 1, 2))
        self._size_sigma = 0.4
        self._place_hotspots(rng, hot_pairs, gene_pos)
        # --- calibrate the scale to the requested zero fraction
        self._scale = self._calibrate(comp)
        self.truth = self._planted_truth(hot_pairs, marker_idx, comp)

    def _draw_genes(self, rng: np.random.Generator) -> tuple[list[tuple[str, str]], list[str], list[str]]:
        """Gene panel: hotspot pairs first (disjoint genes, no self pairs), then other LR symbols, then
        synthetic names, shuffled; sets :attr:`var`. Returns (hotspot pairs, LR genes, synthetic genes)."""
        p = self.params
        G = p.n_genes
        pairs = read_lr_pairs(p.lr_db)
        db_genes = np.array(sorted(set(pairs["ligand"]) | set(pairs["receptor"])), dtype=object)
        n_lr = min(int(round(p.lr_fraction * G)), len(db_genes))
        if p.n_hotspots and n_lr < 2 * p.n_hotspots:
            raise ValueError(
                f"n_hotspots={p.n_hotspots} needs at least {2 * p.n_hotspots} ligand-receptor genes, but "
                f"lr_fraction={p.lr_fraction} of n_genes={G} gives {n_lr}; raise lr_fraction or n_genes")
        hot_pairs = self._hotspot_pairs(rng, pairs)
        used = {g for pair in hot_pairs for g in pair}
        hot_genes = [g for pair in hot_pairs for g in pair]
        rest = np.array([g for g in db_genes if g not in used], dtype=object)
        lr_genes = hot_genes + list(rng.choice(rest, size=n_lr - len(hot_genes), replace=False))
        n_syn = G - n_lr
        width = max(5, len(str(max(n_syn - 1, 0))))
        syn_genes = [f"Gene{i:0{width}d}" for i in range(n_syn)]
        names = np.array(lr_genes + syn_genes, dtype=object)
        order = rng.permutation(G)
        names = names[order]
        self.var = pd.DataFrame(
            {
                "gene_ids": [f"SYNG{i:07d}" for i in range(G)],
                "feature_types": "Gene Expression",
                "in_lr_db": np.isin(names, db_genes),
            },
            index=pd.Index(names.astype(str), name="gene"),
        )
        return hot_pairs, lr_genes, syn_genes

    def _hotspot_pairs(self, rng: np.random.Generator, pairs: pd.DataFrame) -> list[tuple[str, str]]:
        """``n_hotspots`` pairs of the LR table in random order, skipping self pairs and shared genes."""
        p = self.params
        hot_pairs: list[tuple[str, str]] = []
        used: set[str] = set()
        ligands, receptors = pairs["ligand"].to_numpy(), pairs["receptor"].to_numpy()
        for i in rng.permutation(len(pairs)):
            if len(hot_pairs) == p.n_hotspots:
                break
            lig, rec = ligands[i], receptors[i]
            if lig == rec or lig in used or rec in used:
                continue
            hot_pairs.append((lig, rec))
            used |= {lig, rec}
        if len(hot_pairs) < p.n_hotspots:
            raise ValueError(f"the {p.lr_db} table holds only {len(hot_pairs)} gene-disjoint pairs; "
                             f"n_hotspots={p.n_hotspots} is too many")
        return hot_pairs

    def _draw_expression(self, rng: np.random.Generator, gene_pos: dict[str, int], hot_genes: list[str],
                         lr_genes: list[str], syn_genes: list[str]) -> np.ndarray:
        """Per-gene base expression, dispersion, markers and domain / type effects; sets :attr:`theta`
        and the (D, T, G) relative means. Returns the (D + T, n_markers) marker gene indices."""
        p = self.params
        G, D, T = p.n_genes, p.n_domains, p.n_cell_types
        # --- per-gene base expression (relative) and inverse dispersion
        log_m = rng.normal(0.0, 1.5, G)
        self.theta = np.exp(rng.normal(math.log(2.0), 0.6, G))
        marker_idx = self._draw_markers(rng, gene_pos, hot_genes, lr_genes, syn_genes)
        # markers are moderately to highly expressed genes, as markers found in real data are
        hi = np.quantile(log_m, 0.6)
        flat = marker_idx.ravel()
        log_m[flat] = np.maximum(log_m[flat], hi) + rng.uniform(0.0, 0.7, flat.size)

        dom_lf = rng.normal(0.0, 0.2, (D, G))
        typ_lf = rng.normal(0.0, 0.25, (T, G))
        # Hotspot genes: a typical baseline (the middle of the gene distribution, so about the median
        # gene's detection rate) with no domain or cell-type structure, so their disc is the only place
        # where ligand and receptor are co-expressed beyond chance. (Set after all draws above, so every
        # other gene is unchanged.)
        hot_idx = np.array([gene_pos[g] for g in hot_genes], dtype=np.int64)
        if hot_idx.size:
            log_m[hot_idx] = np.quantile(log_m, 0.22) + np.linspace(-0.25, 0.25, hot_idx.size)
            dom_lf[:, hot_idx] = 0.0
            typ_lf[:, hot_idx] = 0.0
            self.theta[hot_idx] = 2.0  # moderate dispersion: most ligand/receptor cells in a disc detect their gene
        for d in range(D):
            dom_lf[d, marker_idx[d]] += np.log(rng.uniform(3.0, 6.0, p.n_markers))
        for t in range(T):
            typ_lf[t, marker_idx[D + t]] += np.log(rng.uniform(4.0, 8.0, p.n_markers))
        # (D, T, G) relative means of every domain x cell-type combination
        self._base = np.exp(log_m[None, None, :] + dom_lf[:, None, :] + typ_lf[None, :, :])
        self._base2d = self._base.reshape(D * T, G)
        return marker_idx

    def _draw_markers(self, rng: np.random.Generator, gene_pos: dict[str, int], hot_genes: list[str],
                      lr_genes: list[str], syn_genes: list[str]) -> np.ndarray:
        """(D + T, n_markers) marker genes: synthetic genes first (keeps the LR signal clean), then
        non-hotspot LR genes."""
        p = self.params
        D, T = p.n_domains, p.n_cell_types
        n_needed = p.n_markers * (D + T)
        pool = [gene_pos[g] for g in syn_genes] + [gene_pos[g] for g in lr_genes[len(hot_genes):]]
        if n_needed > len(pool):
            raise ValueError(
                f"n_genes={p.n_genes} is too small for {p.n_markers} markers per domain and cell type "
                f"({n_needed} marker genes besides the {len(hot_genes)} hotspot genes); lower n_markers")
        n_syn = len(syn_genes)
        syn_idx = rng.permutation(np.array(pool[:n_syn], dtype=np.int64))
        lr_idx = rng.permutation(np.array(pool[n_syn:], dtype=np.int64))
        if not n_needed:
            return np.zeros((D + T, 0), dtype=np.int64)
        return np.concatenate([syn_idx, lr_idx])[:n_needed].reshape(D + T, p.n_markers)

    def _draw_composition(self, rng: np.random.Generator) -> np.ndarray:
        """(D, T) cell-type composition per domain: random, with one favoured type per domain."""
        D, T = self.params.n_domains, self.params.n_cell_types
        comp = rng.dirichlet(np.full(T, 0.8), size=D)
        comp[np.arange(D), np.arange(D) % T] += 1.0
        comp /= comp.sum(axis=1, keepdims=True)
        self._comp_cum = np.cumsum(comp, axis=1)
        return comp

    def _draw_domains(self, rng: np.random.Generator) -> None:
        """Domain geometry in normalised coordinates u = (x - x0) / L, v = (y - y0) / L: warped layer
        edges, or labelled Voronoi seeds."""
        D = self.params.n_domains
        geo = self.geometry
        w_n, h_n = geo.width / geo.extent, geo.height / geo.extent
        self._w_n, self._h_n = w_n, h_n
        if self.params.domain_shape == "layers":
            widths = rng.dirichlet(np.full(D, 6.0))
            self._layer_edges = np.cumsum(widths)[:-1] * h_n
            self._warp = dict(
                amp=rng.uniform(0.015, 0.03, 2) * h_n, freq=rng.uniform(0.6, 1.6, 2), phase=rng.uniform(0, 1, 2),
                curve=rng.uniform(-0.15, 0.15) * h_n,
            )
        else:
            n_seeds = 3 * D
            self._seeds = np.column_stack([rng.uniform(0, w_n, n_seeds), rng.uniform(0, h_n, n_seeds)])
            labels = np.concatenate([np.arange(D), rng.integers(0, D, n_seeds - D)])
            self._seed_domain = labels.astype(np.int16)
            self._warp = dict(amp=rng.uniform(0.03, 0.06, 2), freq=rng.uniform(1.0, 2.5, 2),
                              phase=rng.uniform(0, 1, 2))

    def _place_hotspots(self, rng: np.random.Generator, hot_pairs: list[tuple[str, str]],
                        gene_pos: dict[str, int]) -> None:
        """Hotspot discs (normalised units), kept apart where possible; sets their names and genes."""
        radius = HOTSPOT_RADIUS
        w_n, h_n = self._w_n, self._h_n
        centres: list[tuple[float, float]] = []
        for _ in range(len(hot_pairs)):
            best = None
            for _try in range(200):
                c = (rng.uniform(radius, max(radius, w_n - radius)), rng.uniform(radius, max(radius, h_n - radius)))
                gap = min((math.dist(c, o) for o in centres), default=np.inf)
                if best is None or gap > best[0]:
                    best = (gap, c)
                if gap > 2.5 * radius:
                    break
            centres.append(best[1])
        geo = self.geometry
        L = geo.extent
        self._hot = [
            dict(lig=gene_pos[lig], rec=gene_pos[rec], cx=geo.x0 + c[0] * L, cy=geo.y0 + c[1] * L, r=radius * L)
            for (lig, rec), c in zip(hot_pairs, centres)
        ]
        self.hotspot_names = [f"{lig}_{rec}" for lig, rec in hot_pairs]

    def _planted_truth(self, hot_pairs: list[tuple[str, str]], marker_idx: np.ndarray,
                       comp: np.ndarray) -> SyntheticTruth:
        """The :class:`SyntheticTruth` of the drawn model."""
        D, T = self.params.n_domains, self.params.n_cell_types
        lr_table = pd.DataFrame(
            {
                "name": self.hotspot_names,
                "ligand": [lig for lig, _ in hot_pairs],
                "receptor": [rec for _, rec in hot_pairs],
                "x": [h["cx"] for h in self._hot],
                "y": [h["cy"] for h in self._hot],
                "radius": [h["r"] for h in self._hot],
            }
        )
        genes = self.var.index
        return SyntheticTruth(
            lr_pairs=lr_table,
            domain_markers={self.domain_names[d]: list(genes[marker_idx[d]]) for d in range(D)},
            cell_type_markers={self.cell_type_names[t]: list(genes[marker_idx[D + t]]) for t in range(T)},
            composition=pd.DataFrame(comp, index=self.domain_names, columns=self.cell_type_names),
            scale=self._scale,
        )

    def _calibrate(self, comp: np.ndarray) -> float:
        """Scale whose expected zero fraction (over domains, types, genes and library sizes) is the target."""
        D, T, G = self._base.shape
        genes = np.arange(0, G, max(1, G // 512))
        base = self._base[:, :, genes]  # (D, T, g)
        weight = (comp / D)[:, :, None] * np.ones(len(genes))[None, None, :] / len(genes)
        q = (np.arange(12) + 0.5) / 12
        from scipy.stats import norm

        sizes = np.exp(self._size_sigma * norm.ppf(q) - self._size_sigma ** 2 / 2)
        th = self.theta[genes][None, None, :]

        def zero_fraction(log_scale: float) -> float:
            z = 0.0
            for s in sizes:
                mu = s * math.exp(log_scale) * base
                z += float(np.sum(weight * np.exp(-th * np.log1p(mu / th)))) / len(sizes)
            return z - self.params.zero_fraction

        return math.exp(brentq(zero_fraction, -30.0, 30.0, xtol=1e-6))

    # ------------------------------------------------------------------ per-observation model
    def _domain_of(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        geo = self.geometry
        u = (x - geo.x0) / geo.extent
        v = (y - geo.y0) / geo.extent
        w = self._warp
        if self.params.domain_shape == "layers":
            vv = v + sum(w["amp"][k] * np.sin(2 * np.pi * (w["freq"][k] * u / self._w_n + w["phase"][k]))
                         for k in range(2))
            vv = vv + w["curve"] * (u / self._w_n - 0.5) ** 2
            return np.searchsorted(self._layer_edges, vv, side="right").astype(np.int16)
        uu = u + w["amp"][0] * np.sin(2 * np.pi * (w["freq"][0] * v + w["phase"][0]))
        vv = v + w["amp"][1] * np.sin(2 * np.pi * (w["freq"][1] * u + w["phase"][1]))
        d2 = (uu[:, None] - self._seeds[None, :, 0]) ** 2 + (vv[:, None] - self._seeds[None, :, 1]) ** 2
        return self._seed_domain[np.argmin(d2, axis=1)]

    def _size_trend(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        geo = self.geometry
        u = (x - geo.x0) / geo.extent
        v = (y - geo.y0) / geo.extent
        f = self._size_field
        g = 0.5 + 0.25 * (np.sin(2 * np.pi * (f["freq"][0] * u + f["phase"][0]))
                          + np.sin(2 * np.pi * (f["freq"][1] * v + f["phase"][1])))
        return 0.7 + 0.6 * g

    def _generate_block(self, b: int) -> ObsBatch:
        """All data of random block ``b`` (observations ``b * block_size`` onwards)."""
        p = self.params
        start = b * self.block_size
        stop = min(start + self.block_size, p.n_obs)
        n = stop - start
        x, y = self.geometry.xy(start, stop, p.seed, self.block_size)
        domain = self._domain_of(x, y)

        rng = sequence_stream(p.seed, OBS, b)
        type_u = rng.random(n)
        z = rng.standard_normal(n)
        role_u = rng.random(n)

        cum = self._comp_cum[domain]
        cell_type = np.minimum((type_u[:, None] > cum).sum(axis=1), p.n_cell_types - 1).astype(np.int16)
        size = np.exp(self._size_sigma * z - self._size_sigma ** 2 / 2) * self._size_trend(x, y)

        hotspot = np.full(n, -1, dtype=np.int16)
        for h, spot in enumerate(self._hot):
            inside = ((x - spot["cx"]) ** 2 + (y - spot["cy"]) ** 2 <= spot["r"] ** 2) & (hotspot < 0)
            hotspot[inside] = h
        role = np.where(hotspot >= 0, np.where(role_u < 0.5, 1, 2), 0).astype(np.int8)

        hot_gene = np.full(n, -1, dtype=np.int64)
        for h, spot in enumerate(self._hot):
            hot_gene[(hotspot == h) & (role == 1)] = spot["lig"]
            hot_gene[(hotspot == h) & (role == 2)] = spot["rec"]
        combo = domain.astype(np.int64) * p.n_cell_types + cell_type
        # the kernel adds boost * (size * scale); dividing by scale makes the boost HOTSPOT_BOOST * size
        counts = nb_counts(sequence_key(p.seed, COUNTS, b), size * self._scale, combo, self._base2d,
                              self.theta, hot_gene, HOTSPOT_FOLD, HOTSPOT_BOOST / self._scale)
        return ObsBatch(start, x, y, domain, cell_type, hotspot, role, counts)

    def _block(self, b: int) -> ObsBatch:
        # a few recent blocks are kept: overlapping range reads (band-wise writers) reuse them
        if b not in self._cache:
            if len(self._cache) >= 4:
                self._cache.pop(next(iter(self._cache)))
            self._cache[b] = self._generate_block(b)
        return self._cache[b]

    # ------------------------------------------------------------------ access
    def batch(self, start: int, stop: int) -> ObsBatch:
        """Observations ``start .. stop-1`` as an :class:`ObsBatch` (arrays, for writers)."""
        if not 0 <= start <= stop <= self.n_obs:
            raise IndexError(f"observation range {start}..{stop} outside 0..{self.n_obs}")
        if start == stop:
            return self._block(0).take(0, 0)
        bs = self.block_size
        parts = []
        for b in range(start // bs, (stop - 1) // bs + 1):
            blk = self._block(b)
            parts.append(blk.take(max(start, blk.start) - blk.start, min(stop, blk.start + len(blk)) - blk.start))
        return ObsBatch.concat(parts)

    def iter_batches(self, chunk_size: int | None = None) -> Iterator[ObsBatch]:
        """Consecutive :class:`ObsBatch` of ``chunk_size`` observations (the last may be shorter)."""
        chunk_size = self._check_chunk(chunk_size)
        pending: list[ObsBatch] = []
        n_pending = 0
        for b in range(self.n_blocks):
            blk = self._generate_block(b)
            lo = 0
            while lo < len(blk):
                take = min(len(blk) - lo, chunk_size - n_pending)
                pending.append(blk.take(lo, lo + take))
                n_pending += take
                lo += take
                if n_pending == chunk_size:
                    yield ObsBatch.concat(pending)
                    pending, n_pending = [], 0
            del blk
        if pending:
            yield ObsBatch.concat(pending)

    def iter_chunks(self, chunk_size: int | None = None) -> Iterator[tuple[pd.DataFrame, sp.csr_matrix]]:
        """Stream the slice as ``(obs, counts)`` chunks.

        Parameters
        ----------
        chunk_size
            Observations per chunk (default 100,000; the last chunk may be shorter). The data do not
            depend on it.

        Yields
        ------
        obs : pandas.DataFrame
            (n_chunk, ...) indexed by unique barcodes (``str``): ``x``, ``y`` (float64, slice units),
            ``domain``, ``cell_type``, ``hotspot`` (pair name or ``""``), ``hotspot_role`` (``"ligand"``,
            ``"receptor"`` or ``""``) as categoricals with the full category list, and for Visium
            ``array_row``, ``array_col`` (int64).
        counts : scipy.sparse.csr_matrix
            (n_chunk, n_genes) uint32.
        """
        for batch in self.iter_batches(chunk_size):
            yield self.obs_frame(batch), batch.counts

    def obs_frame(self, batch: ObsBatch) -> pd.DataFrame:
        """The ``obs`` DataFrame of a batch (see :meth:`iter_chunks`)."""
        idx = batch.index
        data: dict[str, Any] = {"x": batch.x, "y": batch.y}
        if self.layout == "visium":
            data["array_row"], data["array_col"] = self.geometry.visium_array(idx)
        data["domain"] = pd.Categorical.from_codes(batch.domain, categories=self.domain_names)
        data["cell_type"] = pd.Categorical.from_codes(batch.cell_type, categories=self.cell_type_names)
        data["hotspot"] = pd.Categorical.from_codes(batch.hotspot.astype(np.int64) + 1,
                                                     categories=[""] + self.hotspot_names)
        data["hotspot_role"] = pd.Categorical.from_codes(batch.role, categories=list(ROLE_NAMES))
        return pd.DataFrame(data, index=pd.Index(self.barcodes(idx, batch.x, batch.y), name="barcode"))

    def barcodes(self, index: np.ndarray, x: np.ndarray | None = None, y: np.ndarray | None = None) -> np.ndarray:
        """Barcodes of observations ``index``: 10x-style ``ACGT...-1`` (Visium, cells) or ``"<x>_<y>"``
        (the bin origin's DNB coordinates, Stereo-seq)."""
        if self.layout == "stereo":
            if x is None or y is None:
                x, y = self.geometry.nominal_xy(index)
            xs, ys = pd.Series(x.astype(np.int64)).astype(str), pd.Series(y.astype(np.int64)).astype(str)
            return (xs + "_" + ys).to_numpy(object)
        return barcodes_10x(index)

    def to_anndata(self):
        """The whole slice as an in-memory :class:`anndata.AnnData` (use for sizes that fit in memory).

        ``X`` (n_obs, n_genes) CSR uint32 counts; ``obs`` as in :meth:`iter_chunks`; ``var`` as
        :attr:`var`; ``obsm['spatial']`` (n_obs, 2) float64 x, y in slice units; ``uns['synthetic']``
        the parameters and units, ``uns['synth_truth']`` :meth:`SyntheticTruth.to_dict`.
        """
        import anndata as ad

        batches = list(self.iter_batches(self.n_obs))
        batch = ObsBatch.concat(batches)
        adata = ad.AnnData(X=batch.counts, obs=self.obs_frame(batch), var=self.var.copy())
        adata.obsm["spatial"] = np.column_stack([batch.x, batch.y]).astype(np.float64)
        adata.uns["synthetic"] = self.describe()
        adata.uns["synth_truth"] = self.truth.to_dict()
        return adata

    def describe(self) -> dict[str, Any]:
        """Parameters plus units, as a JSON-able dict."""
        out = asdict(self.params)
        out.update(units=self.units, um_per_unit=self.um_per_unit, spot_diameter=self.spot_diameter,
                   block_size=self.block_size)
        return out

    @staticmethod
    def _check_chunk(chunk_size: int | None) -> int:
        if chunk_size is None:
            return DEFAULT_CHUNK_SIZE
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
        return int(chunk_size)


def synthetic_slice(
    n_obs: int = 10_000,
    n_genes: int = 2_000,
    layout: str = "visium",
    seed: int = 0,
    n_domains: int = 5,
    domain_shape: str = "layers",
    n_cell_types: int = 6,
    n_hotspots: int = 4,
    lr_fraction: float = 0.5,
    bin_size: int = 50,
    zero_fraction: float = 0.9,
    n_markers: int = 10,
    lr_db: str = "connectomeDB2020_lit",
) -> SyntheticSlice:
    """A synthetic spatial transcriptomics slice with planted domains, cell types and LR hotspots.

    Nothing is generated here: the returned object streams its observations on demand
    (:meth:`SyntheticSlice.iter_chunks`), identically for any chunk size.

    Parameters
    ----------
    n_obs
        Number of observations (spots, bins or cells), ``1 <= n_obs < 2**32``.
    n_genes
        Number of genes.
    layout
        ``"visium"`` (hex spots, um), ``"stereo"`` (square bins, DNB units) or ``"cells"`` (jittered single
        cells, um); see :mod:`stdask.datasets.layouts`.
    seed
        Non-negative seed; the same arguments give bit-identical data.
    n_domains
        Number of spatial domains.
    domain_shape
        ``"layers"`` (cortex-like bands) or ``"regions"`` (irregular blobs).
    n_cell_types
        Number of cell types.
    n_hotspots
        Number of planted ligand-receptor hotspots (needs ``2 * n_hotspots`` LR genes).
    lr_fraction
        Fraction of genes taken from the ligand-receptor table (real symbols).
    bin_size
        Stereo-seq bin side in DNB (``"stereo"`` only).
    zero_fraction
        Target expected fraction of zero entries of the count matrix.
    n_markers
        Marker genes per domain and per cell type.
    lr_db
        Packaged LR table the LR genes and hotspot pairs come from.

    Returns
    -------
    SyntheticSlice
    """
    return SyntheticSlice(SyntheticParams(
        n_obs=n_obs, n_genes=n_genes, layout=layout, seed=seed, n_domains=n_domains, domain_shape=domain_shape,
        n_cell_types=n_cell_types, n_hotspots=n_hotspots, lr_fraction=lr_fraction, bin_size=bin_size,
        zero_fraction=zero_fraction, n_markers=n_markers, lr_db=lr_db,
    ))
