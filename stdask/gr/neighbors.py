"""``stdask.gr.spatial_neighbors``: the spatial graph of a slice, built tile by tile, stored in ``obsp``.

Four graphs, chosen by ``method``:

``"radius"`` (default, stLearn's CCI neighbourhood)
    j is a neighbour of i iff j != i and ``dx*dx + dy*dy <= r*r`` (Euclidean, inclusive, self excluded,
    symmetric); ``distance=None`` means r = 2 x the spot diameter. Per tile with a halo of r
    (:mod:`.radius`).
``"knn"``
    The ``n_neighs`` nearest observations, self excluded, ties at equal distance to the smaller row
    number. Per tile with a halo that is grown until it provably holds every row's k nearest
    (:mod:`.knn`). Directed: j in kNN(i) does not imply i in kNN(j).
``"delaunay"``
    Delaunay triangulation edges, one global triangulation per library, up to a size limit
    (:mod:`.delaunay`).
``"grid"``
    Lattice rings with squidpy's ``coord_type='grid'`` semantics (:mod:`.rings`): ``n_neighs=6`` for
    Visium hexagons, 4 (or 8 with diagonals) for square bins, ``n_rings`` rings.

Every graph is exact: it equals the one built from all observations at once (a global
``scipy.spatial.cKDTree`` query for radius and kNN), for any tile size and any number of workers. With
``library_key`` no edge joins two libraries / slices.
"""
from __future__ import annotations

import math
import shutil
from dataclasses import dataclass
from numbers import Real
from typing import Any

import numpy as np
import scipy.sparse as sp

from ..dataset import SpatialDataset
from ..results import writes_results
from ..tilemap import map_tiles
from . import delaunay as _delaunay
from ..store import scratch
from ..store.row_parts import covering, gather
from .graph import RowBlock, assemble, library_codes_of, to_matrices
from .parts import PREFIX as PARTS_PREFIX
from .parts import GraphParts, write_block
from .knn import knn_tile
from .radius import HALO_SLACK, radius_tile
from .rings import CUTOFF_FACTOR, grid_rings

METHODS = ("radius", "knn", "delaunay", "grid")

#: ``uns`` key where :func:`stdask.tl.grid` and :func:`stdask.pp.binning.bin` record the bin pitch
BINNING_KEY = "binning"


@dataclass
class NeighbourSummary:
    """Neighbour counts of a spatial graph.

    Attributes
    ----------
    counts
        (n_obs,) int64 neighbours per observation (the row sums of the connectivities).
    n_without_neighbours
        Observations with no neighbour.
    median_neighbours
        Median of ``counts``, truncated to an integer as stLearn prints it.
    """

    counts: np.ndarray
    n_without_neighbours: int
    median_neighbours: int

    def __str__(self) -> str:
        # stLearn's wording, so users recognise the line
        return (f"{self.n_without_neighbours} spots with no neighbours, "
                f"{self.median_neighbours} median spot neighbours.")


#: radius and kNN graphs of at least this many observations are written by the tiles' tasks as parts
#: (:mod:`stdask.gr.parts`); smaller ones are built in memory
PARTS_MIN_OBS = 100_000


class SpatialGraph:
    """What ``spatial_neighbors`` returns (and records on the dataset unless ``copy=True``).

    Attributes
    ----------
    connectivities
        (n_obs, n_obs) CSR float32, 1.0 per edge; row i lists i's neighbours, columns ascending.
    distances
        (n_obs, n_obs) CSR float64 with the same structure: Euclidean distance in store units (ring
        number for ``method='grid'``).
    summary
        The :class:`NeighbourSummary`.
    lazy
        ``{"connectivities" | "distances": dask array of CSR row blocks}`` for a graph whose tiles wrote their
        blocks to parts (radius and kNN graphs): the two matrices above are then read whole only when asked
        for; ``None`` for a graph built in memory.
    """

    def __init__(self, connectivities, distances, summary: NeighbourSummary, lazy: dict | None = None) -> None:
        self._matrices = {"connectivities": connectivities, "distances": distances}
        self.summary = summary
        self.lazy = lazy

    def _matrix(self, kind: str) -> sp.csr_matrix:
        if self._matrices[kind] is None:
            self._matrices[kind] = gather(self.lazy[kind])
        return self._matrices[kind]

    @property
    def connectivities(self) -> sp.csr_matrix:
        return self._matrix("connectivities")

    @property
    def distances(self) -> sp.csr_matrix:
        return self._matrix("distances")


def summarise_counts(counts: np.ndarray) -> NeighbourSummary:
    """:class:`NeighbourSummary` of per-observation neighbour counts."""
    counts = np.asarray(counts, dtype=np.int64)
    median = int(np.median(counts)) if len(counts) else 0
    return NeighbourSummary(counts, int((counts == 0).sum()), median)


def neighbour_summary(ds: SpatialDataset, key: str = "spatial") -> NeighbourSummary:
    """Neighbour counts of the graph ``obsp[f"{key}_connectivities"]`` (pending or stored).

    Parameters
    ----------
    ds
        The dataset.
    key
        The ``key_added`` the graph was built with.

    Returns
    -------
    :class:`NeighbourSummary`; ``str()`` of it is stLearn's diagnostic line.
    """
    name = f"{key}_connectivities"
    if ds.is_pending("obsp", name):
        return summarise_counts(np.diff(np.asarray(ds.result_csr("obsp", name).indptr, dtype=np.int64)))
    if not ds.is_stored("obsp", name):
        raise KeyError(f"{ds.path}: no obsp[{name!r}]; run stdask.gr.spatial_neighbors(ds, key_added={key!r}) first")
    return summarise_counts(ds.result_row_counts("obsp", name))  # the counts need the row pointers only


def resolve_distance(ds: SpatialDataset, distance: float | None, *, within_spot: bool = False) -> float:
    """The neighbourhood radius in store units: ``distance``, or 2 x the spot diameter when it is ``None``.

    Parameters
    ----------
    ds
        The dataset (its spot diameter, unit and binning pitch).
    distance
        A radius in store units, or ``None``.
    within_spot
        What ``distance=0`` means: ``True`` (the CCI analyses, :func:`stdask.tl.cci.run`) -- within-spot
        mode, every observation its own neighbourhood, returned as 0.0; ``False`` (graph building) -- an
        error, since no graph has radius 0.

    Raises
    ------
    ValueError
        ``distance`` is negative, NaN or infinite, or 0 without ``within_spot``; or it is ``None`` and the
        dataset records no spot diameter (for a binned / gridded dataset the message gives the bin pitch and
        radii to use).
    TypeError
        ``distance`` is neither a number nor ``None``.
    """
    unit = ds.unit or "store units"
    zero_hint = ", or distance=0 for within-spot mode" if within_spot else ""
    if distance is None:
        sd = ds.spot_diameter
        if sd is not None:
            return 2.0 * float(sd)
        pitch = binning_pitch(ds)
        if pitch is not None:
            w, h = pitch
            p = max(w, h)
            raise ValueError(
                f"distance=None means 2 x the spot diameter, but {ds.path.name} holds {w:g} x {h:g} {unit} bins "
                f"aggregated from single cells, which have no spot diameter; pass distance= in {unit}, e.g. "
                f"distance={1.2 * p:g} (1.2 x pitch) for the 4 adjacent bins or {1.5 * p:g} (1.5 x pitch) for the 8 "
                f"surrounding ones{zero_hint}"
            )
        raise ValueError(
            f"distance=None means 2 x the spot diameter, and {ds.path.name} records no spot diameter; "
            f"pass distance= as a radius in {unit}{zero_hint}"
        )
    if isinstance(distance, bool) or not isinstance(distance, Real):
        raise TypeError(f"distance must be a number in {unit} or None, got {distance!r}")
    d = float(distance)
    if d == 0 and within_spot:
        return 0.0
    if d == 0:
        raise ValueError(
            "distance=0 is the within-spot mode of the CCI analysis (each spot its own neighbourhood; pass it to "
            f"stdask.tl.cci.run), not a graph; use distance=None (2 x spot diameter) or a positive radius in {unit}"
        )
    if not math.isfinite(d) or d < 0:
        raise ValueError(f"distance must be a positive, finite radius in {unit} (or None{zero_hint[1:]}), "
                         f"got {distance!r}")
    return d


def binning_pitch(ds: SpatialDataset) -> tuple[float, float] | None:
    """(bin width, bin height) of a dataset made by :func:`stdask.tl.grid` / :func:`stdask.pp.binning.bin`."""
    if not ds.is_stored("uns", BINNING_KEY):
        return None
    info = ds.get_result("uns", BINNING_KEY)
    return float(info["bin_width"]), float(info["bin_height"])


def _check_count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def _knn_halos(ds: SpatialDataset, k: int) -> tuple[float, float]:
    """First halo for kNN (twice the radius holding k + 1 points at the slice's mean density) and the
    bounding-box diagonal, a halo that holds every row.

    The density is taken over the occupied tiles when they cover less than the bounding box: one far-away
    observation stretches the box, and a first halo sized from it would give every tile the whole slice.
    """
    xmin, ymin, xmax, ymax = (float(v) for v in ds.bounds)
    w, h = xmax - xmin, ymax - ymin
    diag = math.hypot(w, h)
    n = max(ds.n_obs, 1)
    if w * h > 0:
        area = min(w * h, ds.n_tiles * ds.tiling.tile_size ** 2)
        h0 = 2.0 * math.sqrt((k + 1) * area / (math.pi * n))
    else:  # points on an axis-parallel line (or one point)
        h0 = 2.0 * (k + 1) * max(w, h) / n
    max_halo = diag * (1 + 1e-9) + 1e-300 if diag > 0 else 0.0
    return min(h0, max_halo), max_halo


def _graph_block(ds: SpatialDataset, func, halo: float, *, rows_per_task: int | None, scheduler, progress: bool,
                 desc: str, **kwargs: Any) -> RowBlock | None:
    """The row block of every row: ``func`` on coordinates-only tiles (no expression is read), the tiles'
    blocks concatenated in row order."""
    return map_tiles(ds, func, halo=halo, layer=None, rows_per_task=rows_per_task, scheduler=scheduler,
                     progress=progress, desc=desc, combine="concat", **kwargs)


def _written_block(tile, *, builder, folder: str, n_obs: int, **kwargs: Any) -> dict:
    """``builder``'s row block of the tile's own rows, written to a part in ``folder``; returns the part's row
    range and its rows' neighbour counts."""
    block = builder(tile, **kwargs)
    start = int(tile.rows[0]) if tile.n_own else 0
    if tile.n_own and int(tile.rows[tile.n_own - 1]) - start != tile.n_own - 1:
        raise AssertionError("a tile's own rows are not one contiguous range of the store's rows")
    if len(block.cols):
        write_block(folder, start, block, n_obs)
    return {"start": start, "stop": start + tile.n_own, "nnz": len(block.cols), "counts": block.counts.astype(np.int32)}


def _graph_parts(ds: SpatialDataset, func, halo: float, *, rows_per_task: int | None, scheduler, progress: bool,
                 desc: str, **kwargs: Any) -> tuple[GraphParts, np.ndarray]:
    """The graph as parts written by the tiles' tasks (nothing of it passes through here) and (n_obs,) int64
    neighbour counts."""
    folder = scratch.new_folder(ds.path, PARTS_PREFIX)
    try:
        out = map_tiles(ds, _written_block, halo=halo, layer=None, rows_per_task=rows_per_task, scheduler=scheduler,
                        progress=progress, desc=desc, builder=func, folder=str(folder), n_obs=ds.n_obs, **kwargs)
        starts, stops, nnz = covering(ds.n_obs, [(r["start"], r["stop"], r["nnz"]) for _, r in out])
        counts = np.zeros(ds.n_obs, np.int64)
        for _, r in out:
            counts[r["start"]:r["stop"]] = r["counts"]
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return GraphParts(str(folder), starts, stops, nnz, ds.n_obs).own(), counts


@writes_results
def spatial_neighbors(
    ds: SpatialDataset,
    method: str = "radius",
    *,
    distance: float | None = None,
    n_neighs: int = 6,
    n_rings: int = 1,
    library_key: str | None = None,
    key_added: str = "spatial",
    delaunay_max_points: int = _delaunay.MAX_POINTS,
    rows_per_task: int | None = None,
    scheduler=None,
    progress: bool = True,
    verbose: bool = True,
) -> SpatialGraph:
    """Build the spatial neighbour graph of a dataset, tile by tile.

    Parameters
    ----------
    ds
        The dataset (coordinates ``ds.coords``, (n_obs, 2) float64 in ``ds.unit``).
    method
        ``"radius"``, ``"knn"``, ``"delaunay"`` or ``"grid"`` (see the module docstring).
    distance
        ``method="radius"``: the radius in store units, inclusive. ``None``: 2 x ``ds.spot_diameter``
        (stLearn's default; on Visium 2 x 55 um = 110 um, the 6 adjacent spots). ``0`` is an error: in the
        CCI analysis ``distance=0`` means *within-spot mode* (every spot is its own neighbourhood), which is
        not a graph; pass ``distance=0`` to ``stdask.tl.cci.run`` for that. Negative, NaN or infinite values
        are errors too. On a dataset made by ``stdask.tl.grid`` / ``stdask.pp.bin`` (no spot diameter)
        ``None`` raises and reports the bin pitch.
    n_neighs
        ``method="knn"``: neighbours per observation. ``method="grid"``: candidates for ring 1 (6 for
        Visium hexagons, 4 for square bins, 8 for square bins with diagonals).
    n_rings
        ``method="grid"``: number of rings.
    library_key
        obs column naming each observation's library / slice; no edge joins two libraries. Must be a
        column of the stored obs (written, not only pending).
    key_added
        Results go to ``obsp[f"{key_added}_connectivities"]``, ``obsp[f"{key_added}_distances"]`` and
        ``uns[f"{key_added}_neighbors"]`` (squidpy's names).
    delaunay_max_points
        ``method="delaunay"``: the largest library triangulated (one global triangulation per library).
    rows_per_task
        Own rows per dask task (whole tiles are grouped).
    scheduler, progress
        Where the tiles run and whether to show progress (see :func:`stdask.cluster.compute`).
    verbose
        Print stLearn's line ``"N spots with no neighbours, M median spot neighbours."``.
    copy
        Return the graph without recording it on ``ds``.

    Returns
    -------
    The :class:`SpatialGraph` (also recorded on ``ds``, pending until ``ds.write()``, unless ``copy=True``).

    Stored results
    --------------
    ``obsp[f"{key_added}_connectivities"]``
        (n_obs, n_obs) CSR float32, 1.0 per edge, no diagonal, columns ascending in each row.
    ``obsp[f"{key_added}_distances"]``
        Same structure, float64: Euclidean distances in store units, or the ring number for
        ``method="grid"``. float64 so that a later exact re-threshold (``d <= r``) agrees with the graph.
    ``uns[f"{key_added}_neighbors"]``
        ``connectivities_key``, ``distances_key``, ``params`` (method, radius / k / rings, library key,
        unit) and ``summary`` (``n_edges``, ``n_without_neighbours``, ``median_neighbours``).

    Raises
    ------
    ValueError
        Bad ``distance`` / ``n_neighs`` / ``n_rings``; an unknown ``method``; every observation without a
        neighbour (as stLearn; use a larger distance); a Delaunay library above ``delaunay_max_points``.

    Notes
    -----
    Differences from stLearn 1.2.2 (``calc_neighbours``): neighbourhoods never cross libraries when
    ``library_key`` is given (Q12); the graph is a sparse adjacency rather than comma-joined strings.
    The radius test is ``dx*dx + dy*dy <= r*r`` in float64, exactly ``cKDTree.query_ball_point``'s, so
    at an exact tie the stored distance ``sqrt(dx*dx + dy*dy)`` of an edge can exceed ``r`` by one unit
    in the last place.

    Memory: radius and kNN graphs of at least :data:`PARTS_MIN_OBS` observations are written by the tiles'
    tasks as parts in a scratch folder inside the store (:mod:`stdask.gr.parts`); this process holds only the neighbour counts (8 bytes per observation),
    ``ds.write()`` streams the matrices a block at a time, and the returned graph's ``connectivities`` /
    ``distances`` are read whole only when asked for. Grid and Delaunay graphs are built in memory: 20 bytes
    per edge for the two matrices, plus 16 bytes per edge while the tiles' blocks are concatenated.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    codes = _library_codes(ds, library_key)
    params: dict[str, Any] = {"method": method, "unit": ds.unit or ""}
    if library_key is not None:
        params["library_key"] = library_key
    tiles = {"rows_per_task": rows_per_task, "scheduler": scheduler, "progress": progress}
    if method in ("radius", "knn") and ds.n_obs >= PARTS_MIN_OBS:
        # built by the tiles' tasks into parts: nothing whole in this process
        parts, counts, extra = (_radius_graph(ds, distance, library_key, tiles) if method == "radius" else
                                _knn_graph(ds, n_neighs, library_key, tiles))
        params.update(extra)
        summary = _checked_summary(counts, ds.n_obs, method, params, verbose)
        del counts
        arrays = parts.arrays()
        return _record_graph(ds, key_added, arrays["connectivities"], arrays["distances"], params, summary,
                             int(parts.nnz.sum()), lazy=arrays)
    if method == "grid":
        indptr, indices, dist, extra = _grid_graph(ds, n_neighs, n_rings, codes, library_key, tiles)
    elif method in ("radius", "knn"):
        indptr, indices, dist, extra = _small_graph(ds, method, distance, n_neighs, library_key, tiles)
    else:
        limit = _check_count("delaunay_max_points", delaunay_max_points)
        indptr, indices, dist = assemble(_delaunay.delaunay_graph(ds.coords, codes, limit), ds.n_obs)
        extra = {"distances": "euclidean"}
    params.update(extra)
    summary = _checked_summary(np.diff(indptr), ds.n_obs, method, params, verbose)
    conn, dst = to_matrices(indptr, indices, dist, ds.n_obs)
    return _record_graph(ds, key_added, conn, dst, params, summary, int(conn.nnz))


def _library_codes(ds: SpatialDataset, library_key: str | None) -> np.ndarray | None:
    """Per-observation library codes of the stored obs column ``library_key`` (``None`` without one)."""
    if library_key is None:
        return None
    path_name = str(ds.path)
    if library_key not in ds.store.obs.columns:
        raise KeyError(f"{path_name}: library_key {library_key!r} is not a stored obs column (pending obs "
                       f"columns must be written with ds.write() first); columns: {list(ds.store.obs.columns)}")
    return library_codes_of(ds.store.obs, library_key, path_name)


def _radius_graph(ds: SpatialDataset, distance: float | None, library_key: str | None, tiles: dict[str, Any]):
    """The radius graph's parts, neighbour counts and ``params`` entries."""
    r = resolve_distance(ds, distance)
    parts, counts = _graph_parts(ds, radius_tile, r * (1 + HALO_SLACK), desc="spatial_neighbors (radius)", r=r,
                                 library_key=library_key, **tiles)
    return parts, counts, {"distance": r, "inclusive": True, "distances": "euclidean"}


def _knn_graph(ds: SpatialDataset, n_neighs: int, library_key: str | None, tiles: dict[str, Any]):
    """The kNN graph's parts, neighbour counts and ``params`` entries."""
    k = _check_count("n_neighs", n_neighs)
    h0, max_halo = _knn_halos(ds, k)
    parts, counts = _graph_parts(ds, knn_tile, h0, desc="spatial_neighbors (knn)", k=k, max_halo=max_halo,
                                 library_key=library_key, **tiles)
    return parts, counts, {"n_neighs": k, "ties": "smaller row first", "distances": "euclidean"}


def _small_graph(ds: SpatialDataset, method: str, distance: float | None, n_neighs: int, library_key: str | None,
                 tiles: dict[str, Any]):
    """A radius or kNN graph of fewer than :data:`PARTS_MIN_OBS` observations, built in memory (parts would cost
    a file per tile for a graph of a few MB): CSR parts (indptr, indices, distances) and its ``params``
    entries, the same as the parts give."""
    if method == "radius":
        r = resolve_distance(ds, distance)
        block = _graph_block(ds, radius_tile, r * (1 + HALO_SLACK), desc="spatial_neighbors (radius)", r=r,
                             library_key=library_key, **tiles)
        return (*assemble(block, ds.n_obs), {"distance": r, "inclusive": True, "distances": "euclidean"})
    k = _check_count("n_neighs", n_neighs)
    h0, max_halo = _knn_halos(ds, k)
    block = _graph_block(ds, knn_tile, h0, desc="spatial_neighbors (knn)", k=k, max_halo=max_halo,
                         library_key=library_key, **tiles)
    return (*assemble(block, ds.n_obs), {"n_neighs": k, "ties": "smaller row first", "distances": "euclidean"})


def _grid_graph(ds: SpatialDataset, n_neighs: int, n_rings: int, codes: np.ndarray | None, library_key: str | None,
                tiles: dict[str, Any]):
    """CSR parts (indptr, indices, distances) of the grid rings, built in memory from the kNN graph (rings need
    every row's neighbours' rings), and its ``params`` entries."""
    n = ds.n_obs
    k = _check_count("n_neighs", n_neighs)
    rings = _check_count("n_rings", n_rings)
    h0, max_halo = _knn_halos(ds, k)
    block = _graph_block(ds, knn_tile, h0, desc="spatial_neighbors (grid)", k=k, max_halo=max_halo,
                         library_key=library_key, **tiles)
    indptr, indices, dist = grid_rings(*assemble(block, n), codes, rings)
    indices = indices.astype(np.int32) if n <= np.iinfo(np.int32).max else indices
    return indptr, indices, dist, {"n_neighs": k, "n_rings": rings, "cutoff_factor": CUTOFF_FACTOR,
                                   "distances": "ring"}


def _checked_summary(counts: np.ndarray, n: int, method: str, params: dict, verbose: bool) -> NeighbourSummary:
    """The :class:`NeighbourSummary` of (n,) neighbour counts, printed when ``verbose``; raises when no observation
    has a neighbour (as stLearn)."""
    summary = summarise_counts(counts)
    if verbose:
        print(summary)
    if n and summary.n_without_neighbours == n:
        raise ValueError(
            f"no observation has a neighbour ({_describe(method, params)}); "
            + ("set distance to a larger value (or use distance=0 in the CCI analysis for within-spot mode)"
               if method == "radius" else "check the coordinates and library_key")
        )
    return summary


def _record_graph(ds: SpatialDataset, key_added: str, conn, dst, params: dict, summary: NeighbourSummary,
                  n_edges: int, lazy: dict | None = None) -> SpatialGraph:
    """Record the two matrices (CSR, or dask arrays of CSR row blocks written by ``ds.write()`` block by block)
    and the ``uns`` entry on ``ds`` (squidpy's keys)."""
    ckey, dkey = f"{key_added}_connectivities", f"{key_added}_distances"
    ds.set_result("obsp", ckey, conn)
    ds.set_result("obsp", dkey, dst)
    ds.set_result("uns", f"{key_added}_neighbors", {
        "connectivities_key": ckey,
        "distances_key": dkey,
        "params": params,
        "summary": {"n_obs": int(ds.n_obs), "n_edges": int(n_edges),
                    "n_without_neighbours": summary.n_without_neighbours,
                    "median_neighbours": summary.median_neighbours},
    })
    if lazy is not None:
        return SpatialGraph(None, None, summary, lazy)
    return SpatialGraph(conn, dst, summary)


def _describe(method: str, params: dict) -> str:
    if method == "radius":
        return f"radius {params['distance']:g} {params['unit']}".rstrip()
    if method == "grid":
        return f"grid with n_neighs={params['n_neighs']}"
    return method
