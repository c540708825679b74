"""The one tile-with-halo primitive: load tile t and the rows within ``halo`` of it, run ``func``, keep the
result for t's own rows. Neighbourhood sums, graph building, LR scoring and model inference all go
through :func:`map_tiles`, so tiling, halos and scheduling are written once.

Tasks carry only the store path, a tile range and the function, never arrays, so they are small, pure and
retry-safe: a worker lost mid-run costs a recomputation, not a different result.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import dask

from .dataset import SpatialDataset, Tile


@functools.lru_cache(maxsize=8)
def _open(path: str, uuid: str) -> SpatialDataset:
    # one open dataset per worker process and store version (coordinates are read once, then shared)
    return SpatialDataset(path)


def _run_tiles(path: str, uuid: str, tiles: Sequence[int], halo: float, layer: str, func: Callable,
               kwargs: dict) -> list[Any]:
    ds = _open(path, uuid)
    return [func(ds.tile(int(t), halo=halo, layer=layer), **kwargs) for t in tiles]


#: tiles with more stored entries than this are not kept by :func:`reuse_tiles` (~100 MB of CSR)
_REUSE_MAX_NNZ = 1 << 23


#: tiles kept by :func:`reuse_tiles` (None outside such a block)
_reused: contextvars.ContextVar[dict | None] = contextvars.ContextVar("stdask_reused_tiles", default=None)


@contextlib.contextmanager
def reuse_tiles() -> Iterator[None]:
    """Within the block, :func:`map_tiles` calls that run inline (one task on this machine) read each
    (tile, halo, layer) once and hand the same :class:`Tile` to later calls; the tiles are released when the
    block ends. For several passes over the same tiles by functions that do not modify their tile."""
    token = _reused.set({})
    try:
        yield
    finally:
        _reused.reset(token)


def _inline_tile(ds: SpatialDataset, t: int, halo: float, layer: str) -> Tile:
    memo = _reused.get()
    if memo is None:
        return ds.tile(t, halo=halo, layer=layer)
    key = (str(ds.path), ds.store.uuid, t, halo, layer)
    tile = memo.get(key)
    if tile is None:
        tile = ds.tile(t, halo=halo, layer=layer)
        if getattr(tile.X, "nnz", 0) <= _REUSE_MAX_NNZ:  # large tiles are read again rather than held
            memo[key] = tile
    return tile


def tile_batches(ds: SpatialDataset, rows_per_task: int | None = None) -> list[list[int]]:
    """Occupied tiles grouped into tasks of about ``rows_per_task`` own rows (whole tiles, in order)."""
    groups = ds.tile_groups(rows_per_task)
    starts = ds.tile_row_start
    out = []
    for a, b in groups:
        tiles = [t for t in range(a, b) if starts[t + 1] > starts[t]]
        if tiles:
            out.append(tiles)
    return out


def map_tiles_delayed(ds: SpatialDataset, func: Callable[..., Any], *, halo: float = 0.0, layer: str = "X",
                      rows_per_task: int | None = None, **kwargs: Any) -> list:
    """One ``dask.delayed`` per task; each returns ``[func(tile) for tile in its tiles]``.

    ``func(tile: Tile, **kwargs)`` must be a pure, picklable (module-level) function.
    """
    path, uuid = str(Path(ds.path).resolve()), ds.store.uuid
    run = dask.delayed(_run_tiles, pure=True)
    return [run(path, uuid, tiles, float(halo), layer, func, kwargs) for tiles in tile_batches(ds, rows_per_task)]


def _nested_collection(v: Any) -> bool:
    """Whether a dask collection sits inside a list, tuple, set or dict (the graph path resolves those)."""
    if isinstance(v, (list, tuple, set)):
        return any(dask.is_dask_collection(x) or _nested_collection(x) for x in v)
    if isinstance(v, dict):
        return any(dask.is_dask_collection(x) or _nested_collection(x) for x in v.values())
    return False


def map_tiles(ds: SpatialDataset, func: Callable[..., Any], *, halo: float = 0.0, layer: str = "X",
              rows_per_task: int | None = None, scheduler=None, progress: bool = True, desc: str | None = None,
              **kwargs: Any) -> list[tuple[int, Any]]:
    """Run ``func`` on every occupied tile (with halo) where :mod:`stdask.cluster` says.

    Parameters
    ----------
    ds
        The dataset.
    func
        ``func(tile: Tile, **kwargs) -> result`` for the tile's own rows (``tile.rows[:tile.n_own]``).
    halo
        Halo distance in store units (inclusive).
    layer
        Matrix read into ``tile.X``.
    rows_per_task
        Target own rows per dask task (whole tiles are grouped).
    scheduler, progress, desc
        As for :func:`stdask.cluster.compute`.

    Returns
    -------
    ``[(tile_id, result), ...]`` in tile order.

    Work that is one task and would run on this machine runs inline, on ``ds`` itself, without a task graph
    (a progress bar then counts tiles); the results are the same either way.
    """
    from .cluster import compute, runs_embedded
    from .progress import progress_bar

    batches = tile_batches(ds, rows_per_task)
    inline = len(batches) == 1 and runs_embedded(scheduler)
    if inline and not any(_nested_collection(v) for v in kwargs.values()):
        # one task on the local machine: run it here, on ``ds`` itself, without a graph (no tokenizing of the
        # arguments, no second open of the store); arguments given as dask collections (inputs shared by
        # the tasks, built by a task of their own) are computed first, inline
        lazy = [k for k, v in kwargs.items() if dask.is_dask_collection(v)]
        if lazy:
            kwargs = {**kwargs, **dict(zip(lazy, dask.compute(*(kwargs[k] for k in lazy), scheduler="sync")))}
        tiles = progress_bar(batches[0], desc=desc or getattr(func, "__name__", None), unit="tile",
                             disable=not progress)
        return [(t, func(_inline_tile(ds, int(t), float(halo), layer), **kwargs)) for t in tiles]
    tasks = map_tiles_delayed(ds, func, halo=halo, layer=layer, rows_per_task=rows_per_task, **kwargs)
    if inline:
        # one task on the local machine: run it here, without shipping a graph to the embedded scheduler
        scheduler = "sync"
    results = compute(*tasks, scheduler=scheduler, progress=progress, desc=desc or getattr(func, "__name__", None))
    return [(t, r) for tiles, res in zip(batches, results) for t, r in zip(tiles, res)]


__all__ = ["Tile", "map_tiles", "map_tiles_delayed", "reuse_tiles", "tile_batches"]
