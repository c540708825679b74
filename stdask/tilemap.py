"""The one tile-with-halo primitive: load tile t and the rows within ``halo`` of it, run ``func``, keep the
result for t's own rows. Neighbourhood sums, graph building, LR scoring and model inference all go
through :func:`map_tiles`, so tiling, halos and scheduling are written once.

Tasks carry only the store path, a tile range and the function, never arrays, so they are small, pure and
retry-safe: a worker lost mid-run costs a recomputation, not a different result.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Callable, Sequence

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
    """
    from .cluster import compute, runs_embedded

    batches = tile_batches(ds, rows_per_task)
    tasks = map_tiles_delayed(ds, func, halo=halo, layer=layer, rows_per_task=rows_per_task, **kwargs)
    if len(tasks) == 1 and runs_embedded(scheduler):
        # one task on the local machine: run it here, without shipping a graph to the embedded scheduler
        scheduler = "sync"
    results = compute(*tasks, scheduler=scheduler, progress=progress, desc=desc or getattr(func, "__name__", None))
    return [(t, r) for tiles, res in zip(batches, results) for t, r in zip(tiles, res)]


__all__ = ["Tile", "map_tiles", "map_tiles_delayed", "tile_batches"]
