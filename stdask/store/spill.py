"""External bucketing of matrix entries by tile, for inputs larger than memory.

Entries arrive in any order (a GEM file is gene-major; an MTX file is in any order). Each incoming chunk
is sorted by tile and written to disk as one *run* with a per-tile offset table; afterwards each tile's
entries are gathered from every run with one slice per run. Memory is bounded by the chunk size and by
the largest tile, never by the input size.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np


class TileSpill:
    """Disk-backed buckets of (key, gene, value...) entries grouped by tile.

    Tiles are named by any int64 id (a sparse grid's grid ids): each run records only the tiles it holds, so
    memory follows the occupied tiles, never the range of the ids.

    Parameters
    ----------
    fields
        Names of the per-entry arrays stored (e.g. ``("key", "gene", "value")``).
    directory
        Where runs are written (a fresh temporary folder inside it is used and removed on close).
    run_entries
        Entries buffered in memory before a run is written (bounds memory at ~16 bytes per entry).
    """

    def __init__(self, fields: tuple[str, ...], directory: str | Path | None = None,
                 run_entries: int = 4_000_000) -> None:
        self.fields = tuple(fields)
        self.dir = Path(tempfile.mkdtemp(prefix="stdask-spill-", dir=directory))
        self.run_entries = int(run_entries)
        # per run: field -> (file, dtype), the run's sorted tile ids and where each one's entries start
        self.runs: list[tuple[dict[str, tuple[Path, np.dtype]], np.ndarray, np.ndarray]] = []
        self._occupied = np.empty(0, dtype=np.int64)
        self._buf: list[tuple[np.ndarray, dict[str, np.ndarray]]] = []
        self._buffered = 0

    def add(self, tile: np.ndarray, **arrays: np.ndarray) -> None:
        """Spill one chunk; ``tile`` is the (n,) int64 tile id of each entry.

        Small chunks are buffered up to ``run_entries`` entries first: every run costs one look-up per tile
        when tiles are gathered, so few large runs keep the gather cheap.
        """
        if len(tile) == 0:
            return
        self._buf.append((np.asarray(tile, dtype=np.int64), {f: np.asarray(arrays[f]) for f in self.fields}))
        self._buffered += len(tile)
        if self._buffered >= self.run_entries:
            self._write_run()

    def flush(self) -> None:
        """Write the buffered entries as a run now (frees their memory)."""
        self._write_run()

    @property
    def n_occupied(self) -> int:
        """Tiles holding an entry among the runs written so far (buffered entries are not yet counted)."""
        return len(self._occupied)

    def _write_run(self) -> None:
        if not self._buf:
            return
        tile = np.concatenate([t for t, _ in self._buf])
        arrays = {f: np.concatenate([a[f] for _, a in self._buf]) for f in self.fields}
        self._buf, self._buffered = [], 0
        order = np.argsort(tile, kind="stable")
        ids, counts = np.unique(tile, return_counts=True)
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        run = self.dir / f"run{len(self.runs):06d}"
        run.mkdir()
        maps = {}
        for f in self.fields:
            a = arrays[f][order]
            path = run / f"{f}.bin"
            a.tofile(path)
            maps[f] = (path, a.dtype)
        self.runs.append((maps, ids, offsets))
        self._occupied = np.union1d(self._occupied, ids)

    def tile(self, t: int) -> dict[str, np.ndarray]:
        """All entries of tile ``t``, concatenated over runs in arrival order."""
        self._write_run()
        parts: dict[str, list[np.ndarray]] = {f: [] for f in self.fields}
        for maps, ids, off in self.runs:
            i = int(np.searchsorted(ids, t))
            if i == len(ids) or ids[i] != t:
                continue
            a, b = off[i], off[i + 1]
            for f in self.fields:
                path, dtype = maps[f]
                # plain reads, not memory maps: mapped pages would stay resident and grow the process's
                # RSS with the input size
                with open(path, "rb") as fh:
                    fh.seek(int(a) * dtype.itemsize)
                    parts[f].append(np.fromfile(fh, dtype=dtype, count=int(b - a)))
        out = {}
        for f in self.fields:
            out[f] = np.concatenate(parts[f]) if parts[f] else None
        return out

    def tile_pieces(self, t: int, max_rows: int) -> Iterator[dict[str, np.ndarray]]:
        """The entries of tile ``t`` as :meth:`tile` gives them (arrival order), in pieces of at most ``max_rows``:
        memory is bounded by the piece, not by the tile."""
        self._write_run()
        for maps, ids, off in self.runs:
            i = int(np.searchsorted(ids, t))
            if i == len(ids) or ids[i] != t:
                continue
            for a in range(int(off[i]), int(off[i + 1]), max_rows):
                n = min(max_rows, int(off[i + 1]) - a)
                piece = {}
                for f in self.fields:
                    path, dtype = maps[f]
                    with open(path, "rb") as fh:  # plain reads: see tile()
                        fh.seek(a * dtype.itemsize)
                        piece[f] = np.fromfile(fh, dtype=dtype, count=n)
                yield piece

    def nonempty_tiles(self) -> np.ndarray:
        """Sorted ids of the tiles holding an entry."""
        self._write_run()
        return self._occupied

    def close(self) -> None:
        self.runs.clear()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "TileSpill":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class ChunkSpill:
    """Raw chunks kept on disk until a global statistic (bounds, cell centroids) is known."""

    def __init__(self, directory: str | Path | None = None) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="stdask-raw-", dir=directory))
        self.chunks: list[Path] = []

    def add(self, **arrays: np.ndarray | None) -> None:
        d = self.dir / f"chunk{len(self.chunks):06d}"
        d.mkdir()
        for k, v in arrays.items():
            if v is not None:
                np.save(d / f"{k}.npy", v)
        self.chunks.append(d)

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        for d in self.chunks:
            yield {p.stem: np.load(p) for p in d.glob("*.npy")}

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "ChunkSpill":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def csr_from_entries(row: np.ndarray, col: np.ndarray, value: np.ndarray, n_rows: int, n_cols: int,
                     dtype: np.dtype) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sum duplicate (row, col) entries and return CSR arrays with sorted column indices.

    Integer values are summed in uint64 and checked against ``dtype``'s range, so an overflow is an
    error rather than a silent wrap-around.
    """
    dtype = np.dtype(dtype)
    if len(row) == 0:
        return np.zeros(n_rows + 1, np.int64), np.empty(0, np.int64), np.empty(0, dtype)
    key = np.asarray(row, dtype=np.int64) * n_cols + np.asarray(col, dtype=np.int64)
    order = np.argsort(key, kind="stable")
    key = key[order]
    value = np.asarray(value)[order]
    first = np.concatenate([[True], key[1:] != key[:-1]])
    starts = np.flatnonzero(first)
    if len(starts) == len(key):
        summed = value
    elif dtype.kind in "ui":
        summed = np.add.reduceat(value.astype(np.uint64), starts)
    else:
        summed = np.add.reduceat(value.astype(np.float64), starts)
    if dtype.kind in "ui" and len(summed) and summed.max() > np.iinfo(dtype).max:
        raise OverflowError(f"a summed count ({int(summed.max())}) exceeds the {dtype} range")
    ukey = key[starts]
    rows = ukey // n_cols
    cols = ukey - rows * n_cols
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=n_rows))]).astype(np.int64)
    return indptr, cols, summed.astype(dtype)
