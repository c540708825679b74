"""Aggregate observations into bins: square bins of a given pitch (:func:`bin`), and the machinery
:func:`stdask.tl.grid` shares (:func:`aggregate`).

Every cell lands in exactly one bin: along each axis bin i holds ``edges[i] <= x < edges[i+1]``, and the
last bin also holds ``x == edges[-1]`` (NumPy's histogram convention), so the bin counts equal
``numpy.histogram2d`` on the same edges and sum to the number of cells. A bin's expression is the sum of
its cells' rows of the chosen matrix; empty bins are dropped.

The result is a new store, written by the ingest pipeline: :class:`BinnedSource` presents the bins as an
observation source whose entries are streamed from the input store tile group by tile group (each entry
re-labelled with its cell's bin), and :func:`stdask.ingest` buckets, sums duplicates (integers in uint64
with an overflow check, floats in float64), orders and commits the store atomically. Memory: the
per-cell bin index (8 bytes per cell), per-bin tables, and one chunk of entries.

Integer sums (raw counts, the default) are exact, so any tiling of the input gives the same store.
Float sums are added in float64 in input-row order and rounded to float32; two inputs tiled differently
can differ in the last float32 bit.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd

from ..dataset import SpatialDataset
from ..gr.neighbors import BINNING_KEY  # uns key of the pitch, which spatial_neighbors(distance=None) reports
from ..io.base import EntryChunk, Source
from ..store.tiling import check_bin_grid


def bin_index(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """(n,) int64 bin of each value: i with ``edges[i] <= v < edges[i+1]``; ``v == edges[-1]`` goes to the
    last bin. Values outside ``[edges[0], edges[-1]]`` are an error (they would silently be dropped)."""
    values = np.asarray(values, dtype=np.float64)
    n_bins = len(edges) - 1
    idx = np.searchsorted(edges, values, side="right") - 1
    idx[values == edges[-1]] = n_bins - 1
    if len(idx) and (idx.min() < 0 or idx.max() >= n_bins):
        raise ValueError(f"values outside the bin edges [{edges[0]!r}, {edges[-1]!r}]")
    return idx.astype(np.int64)


class BinnedSource(Source):
    """Bins of a dataset as an ingest source (``kind == "obs"``).

    Parameters
    ----------
    ds
        The input dataset.
    cell_bin
        (n_obs,) int64 index of each input row's bin in ``obs`` (0 .. n_bins - 1).
    obs
        (n_bins,) bins: index = unique bin names, extra columns kept.
    coords
        (n_bins, 2) float64 bin centres in the input's unit.
    layer
        Matrix of the input summed into the bins' ``X``.
    uns, obsm
        Extra ``uns`` elements and per-bin dense arrays (rows in ``obs`` order) for the new store.
    """

    format_name = "binned-store"
    kind = "obs"

    def __init__(self, ds: SpatialDataset, cell_bin: np.ndarray, obs: pd.DataFrame, coords: np.ndarray,
                 layer: str = "X", uns: dict | None = None, obsm: dict[str, np.ndarray] | None = None) -> None:
        self.path = Path(ds.path)
        self.options = {}
        self.ds = ds
        self.cell_bin = np.asarray(cell_bin, dtype=np.int64)
        self._obs = obs
        self._coords = np.asarray(coords, dtype=np.float64)
        self.layer = layer
        self._uns = dict(uns or {})
        self._obsm = dict(obsm or {})
        dtype = ds.matrix_info(layer).dtype  # KeyError names the available matrices
        self._dtype = np.dtype(np.uint32) if dtype.kind in "ui" else np.dtype(np.float32)

    @property
    def var(self) -> pd.DataFrame:
        return self.ds.var

    @property
    def obs(self) -> pd.DataFrame:
        return self._obs

    @property
    def coords(self) -> np.ndarray:
        return self._coords

    @property
    def unit(self) -> str:
        return self.ds.unit

    @property
    def spot_diameter(self) -> float | None:
        # bins of cells have no spot diameter; the pitch is in uns['binning'] and distance=None reports it
        return None

    @property
    def uns(self) -> dict:
        return self._uns

    @property
    def obsm(self) -> dict[str, np.ndarray]:
        return self._obsm

    @property
    def value_dtype(self) -> np.dtype:
        return self._dtype

    @property
    def size_hint(self) -> int | None:
        return int(self.ds.matrix_info(self.layer).nnz)

    def iter_entries(self, chunk_size: int = 2_000_000) -> Iterator[EntryChunk]:
        """The input's non-zero entries tile group by tile group, each row replaced by its bin."""
        ds = self.ds
        nnz = self.size_hint or 0
        per_row = max(1.0, nnz / max(ds.n_obs, 1))
        rows_per_read = max(1, int(chunk_size / per_row))
        starts = ds.tile_row_start
        for a, b in ds.tile_groups(rows_per_read):
            r0, r1 = int(starts[a]), int(starts[b])
            if r1 == r0:
                continue
            m = ds.store.read_rows(r0, r1, self.layer)
            if m.nnz == 0:
                continue
            local = np.repeat(np.arange(r1 - r0, dtype=np.int64), np.diff(m.indptr))
            value = m.data
            if self._dtype.kind == "u" and value.dtype.kind == "i" and value.size and value.min() < 0:
                raise ValueError(f"{ds.path}: matrix {self.layer!r} has negative integer values; cannot sum as counts")
            yield EntryChunk(self.cell_bin[r0 + local], m.indices.astype(np.int32), value.astype(self._dtype))


def _label_tables(ds: SpatialDataset, use_label: str, cell_bin: np.ndarray, n_cells: np.ndarray,
                  names: pd.Index) -> tuple[pd.Categorical, np.ndarray, list[str], pd.DataFrame]:
    """Per-bin label fractions (columns in sorted label order) and the arg-max label (first in sorted
    order on ties), categorical with the input's categories."""
    obs = ds.obs
    if use_label not in obs.columns:
        raise KeyError(f"{ds.path}: use_label {use_label!r} is not an obs column; columns: {list(obs.columns)}")
    col = obs[use_label]
    if not isinstance(col.dtype, pd.CategoricalDtype):
        raise TypeError(f"{ds.path}: obs[{use_label!r}] must be categorical (as stLearn requires), got {col.dtype}; "
                        "convert it with .astype('category') and write it first")
    cats = col.cat.categories
    sorted_cats = cats.sort_values()
    # rank of each category in sorted order; code -1 (missing label) stays out of every fraction
    rank = sorted_cats.get_indexer(cats).astype(np.int64)
    codes = col.cat.codes.to_numpy()
    ok = codes >= 0
    n_bins, n_lab = len(n_cells), len(cats)
    counts = np.bincount(cell_bin[ok] * n_lab + rank[codes[ok]], minlength=n_bins * n_lab).reshape(n_bins, n_lab)
    frac = counts / n_cells[:, None]
    top = np.argmax(frac, axis=1)  # first maximum = first in sorted order
    labelled = counts.sum(axis=1) > 0
    arg = pd.Categorical(np.where(labelled, np.asarray(sorted_cats, dtype=object)[top], None), categories=cats)
    columns = [str(c) for c in sorted_cats]
    table = pd.DataFrame(frac, index=names, columns=columns)
    return arg, frac, columns, table


def aggregate(ds: SpatialDataset, cell_bin: np.ndarray, n_bins: int, names_of, centres_of, out: str | Path, *,
              method: str, pitch: tuple[float, float], layer: str = "X", use_label: str | None = None,
              obs_columns_of=None, extra_uns: dict | None = None, binning_info: dict | None = None,
              tile_size: float | None = None, overwrite: bool = False, progress: bool = True) -> SpatialDataset:
    """Write a new store whose observations are the occupied bins.

    Parameters
    ----------
    ds
        The input dataset.
    cell_bin
        (n_obs,) int64 bin id of each input row in ``0 .. n_bins - 1``.
    n_bins
        Number of bins of the full grid (occupied or not).
    names_of, centres_of
        Functions of an int64 array of occupied bin ids giving their names (str array) and (m, 2) centres.
    out
        Path of the new store.
    method
        ``"grid"`` or ``"bin"``, recorded in ``uns['binning']``.
    pitch
        (bin width, bin height) in the input's unit.
    layer
        Input matrix summed into the new ``X``.
    use_label
        Categorical obs column whose per-bin fractions and arg-max are recorded.
    obs_columns_of
        Function of the occupied ids giving extra obs columns (dict of arrays).
    extra_uns, binning_info
        More ``uns`` elements; more entries of ``uns['binning']``.
    tile_size, overwrite, progress
        Passed to :func:`stdask.ingest`.

    Returns
    -------
    The new store, opened.
    """
    from ..io.ingest import ingest

    counts = np.bincount(cell_bin, minlength=n_bins)
    occupied = np.flatnonzero(counts)
    compact = np.searchsorted(occupied, cell_bin)
    n_cells = counts[occupied].astype(np.int64)
    names = pd.Index(np.asarray(names_of(occupied)).astype(str))
    obs = pd.DataFrame(index=names)
    for key, value in (obs_columns_of(occupied) if obs_columns_of else {}).items():
        obs[key] = value
    obs["n_cells"] = n_cells
    uns: dict[str, Any] = dict(extra_uns or {})
    obsm: dict[str, np.ndarray] = {}
    info: dict[str, Any] = {
        "method": method,
        "bin_width": float(pitch[0]),
        "bin_height": float(pitch[1]),
        "unit": ds.unit or "",
        "layer": layer,
        "n_cells": int(ds.n_obs),
        "n_bins_occupied": int(len(occupied)),
        "source_store": str(Path(ds.path).resolve()),
        "source_uuid": ds.store.uuid,
        "edge_rule": "edges[i] <= x < edges[i+1], last bin closed (numpy.histogram)",
    }
    info.update(binning_info or {})
    if use_label is not None:
        arg, frac, columns, table = _label_tables(ds, use_label, compact, n_cells, names)
        obs[use_label] = arg
        obsm[f"{use_label}_fractions"] = frac
        uns[use_label] = table
        info["label_columns"] = np.asarray(columns, dtype=object)
        if ds.is_stored("uns", f"{use_label}_colors"):
            uns[f"{use_label}_colors"] = ds.store.read("uns", f"{use_label}_colors")
    if ds.is_stored("uns", "spatial"):
        # images and scale factors still describe the tissue the bins cover
        uns["spatial"] = ds.store.read("uns", "spatial")
    uns[BINNING_KEY] = info
    src = BinnedSource(ds, compact, obs, centres_of(occupied), layer=layer, uns=uns, obsm=obsm)
    path = ingest(src, out, tile_size=tile_size, overwrite=overwrite, progress=progress)
    return SpatialDataset(path)


def bin(ds: SpatialDataset, bin_size: float, out: str | Path, *, origin: tuple[float, float] | None = None,
        layer: str = "X", use_label: str | None = None, tile_size: float | None = None, overwrite: bool = False,
        progress: bool = True) -> SpatialDataset:
    """Aggregate observations into square bins of side ``bin_size`` (a new store).

    Parameters
    ----------
    ds
        The input dataset (cells or fine bins).
    bin_size
        Bin side in store units (``ds.unit``), > 0.
    out
        Path of the new store (``*.zarr``).
    origin
        (x, y) of the lower-left corner of bin (0, 0), in store units; default the minimum x and y of the
        coordinates. Bin (i, j) covers ``origin + [i, i+1) x [j, j+1) * bin_size``.
    layer
        Input matrix summed into the new ``X`` (default the counts ``X``); integer matrices give uint32
        counts (an overflow is an error), float ones float32 (summed in float64).
    use_label
        Categorical obs column: ``uns[use_label]`` (DataFrame, bins x sorted labels) and
        ``obsm[f"{use_label}_fractions"]`` get the per-bin label fractions, ``obs[use_label]`` the label with
        the largest fraction (the first in sorted order on ties).
    tile_size, overwrite, progress
        As for :func:`stdask.ingest`.

    Returns
    -------
    The new :class:`~stdask.dataset.SpatialDataset`: one observation per occupied bin, named
    ``bin<size>_<i>_<j>``, at the bin centre; obs ``bin_x``, ``bin_y`` (int64 bin column / row),
    ``n_cells`` (int64); ``uns['binning']`` records the pitch, origin and source. The store has no spot
    diameter: ``spatial_neighbors(distance=None)`` on it raises and reports the pitch.
    """
    b = float(bin_size)
    if isinstance(bin_size, bool) or not (np.isfinite(b) and b > 0):
        raise ValueError(f"bin_size must be a positive, finite length in {ds.unit or 'store units'}, got {bin_size!r}")
    xy = ds.coords
    if ds.n_obs == 0:
        raise ValueError(f"{ds.path}: no observations to bin")
    if origin is None:
        x0, y0 = float(xy[:, 0].min()), float(xy[:, 1].min())
    else:
        x0, y0 = float(origin[0]), float(origin[1])
    edges = []
    for v, o in ((xy[:, 0], x0), (xy[:, 1], y0)):
        if v.min() < o:
            raise ValueError(f"origin {o!r} lies above the smallest coordinate {float(v.min())!r}")
        n = int(np.floor((float(v.max()) - o) / b)) + 1
        e = o + np.arange(n + 1, dtype=np.float64) * b
        if e[-1] <= v.max():  # rounding put the maximum on the closing edge: add a bin so it stays half-open
            e = o + np.arange(n + 2, dtype=np.float64) * b
        edges.append(e)
    xe, ye = edges
    nx, ny = len(xe) - 1, len(ye) - 1
    check_bin_grid(nx, ny, f"bin size {b:g}")
    bx, by = bin_index(xy[:, 0], xe), bin_index(xy[:, 1], ye)
    cell_bin = bx * ny + by
    tag = f"bin{b:g}_"

    def names_of(ids):
        i, j = np.divmod(ids, ny)
        return np.char.add(np.char.add(np.char.add(tag, i.astype(str)), "_"), j.astype(str))

    def centres_of(ids):
        i, j = np.divmod(ids, ny)
        return np.column_stack([(xe[i] + xe[i + 1]) / 2, (ye[j] + ye[j + 1]) / 2])

    def columns_of(ids):
        i, j = np.divmod(ids, ny)
        return {"bin_x": i.astype(np.int64), "bin_y": j.astype(np.int64)}

    return aggregate(ds, cell_bin, nx * ny, names_of, centres_of, out, method="bin", pitch=(b, b), layer=layer,
                     use_label=use_label, obs_columns_of=columns_of,
                     binning_info={"origin": np.array([x0, y0]), "n_bins_x": nx, "n_bins_y": ny},
                     tile_size=tile_size, overwrite=overwrite, progress=progress)
