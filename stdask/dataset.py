"""The lazy dataset: one slice store opened for analysis.

``ds = stdask.read("slice.zarr")`` reads only metadata. The matrix is a dask array whose chunks are tile
groups, each read with one contiguous range per zarr array; ``ds.tile(i, halo=r)`` gives one tile with the
neighbouring rows within ``r`` (the primitive every neighbourhood computation builds on). Results are kept
on the dataset until :meth:`SpatialDataset.write` puts them into the store, all in one atomic commit.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Generic, Iterator, TypeVar, overload

import dask.array as da
import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.spatial import cKDTree

from .store.elements import RowBlocks
from .store.format import TABLE, TABLE_PATH
from .store.info import StoreInfo
from .store.points import open_points, points_names
from .store.sdata_view import SHAPES, check_shapes
from .store.reader import SLOTS as _SLOTS
from .store.reader import ElementInfo, StoreReader
from .store.row_parts import gather
from .store.tables import TableReader, open_table
from .store.tiling import Tiling
from .store.update import check_element_name, write_elements
from .store.verify import StoreVerification, verify_store

#: default number of rows per dask chunk (whole tiles are grouped up to about this many rows)
ROWS_PER_CHUNK = 50_000

#: ``"module:function"`` names of functions ``f(ds, adata)`` that rewrite stored results into the layout other
#: tools expect on AnnData export (e.g. stLearn's dense CCI matrices). The front door (``stdask/__init__.py``)
#: registers them explicitly with :func:`register_exporter`; :meth:`SpatialDataset.to_anndata` imports each
#: when it runs, so the export never depends on which modules happen to have been imported, and this layer
#: imports no analysis module.
EXPORTERS: list[str] = []


def register_exporter(name: str) -> None:
    """Register an AnnData exporter by ``"package.module:function"`` name (idempotent)."""
    module, sep, func = name.partition(":")
    if not sep or not module or not func:
        raise ValueError(f"an exporter is named 'package.module:function', got {name!r}")
    if name not in EXPORTERS:
        EXPORTERS.append(name)


def _exporter(name: str):
    import importlib

    module, _, func = name.partition(":")
    return getattr(importlib.import_module(module), func)


@dataclass
class Tile:
    """One tile with its halo.

    Attributes
    ----------
    index
        Tile id.
    rows
        (n_own + n_halo,) int64 global row numbers: the tile's own rows first (ascending), then halo rows
        (ascending).
    n_own
        Number of the tile's own rows.
    X
        (n_own + n_halo, n_vars) CSR matrix of those rows (int32 indices); of a further table
        (:mod:`stdask.store.tables`), a dense float32 ndarray.
    coords
        (n_own + n_halo, 2) float64 coordinates in store units.
    """

    index: int
    rows: np.ndarray
    n_own: int
    X: sp.csr_matrix | np.ndarray
    coords: np.ndarray

    @property
    def own(self) -> slice:
        return slice(0, self.n_own)


@functools.lru_cache(maxsize=8)
def open_cached(path: str, version: str, table: str = TABLE) -> "SpatialDataset":
    """The dataset at ``path`` (its table ``table``), opened once per process and store version
    (:attr:`StoreReader.version`).

    The worker-side cache of every task that reads a store by path (matrix blocks, tiles, graph halos):
    metadata and coordinates are read once, then shared. ``version`` is in the key so a store replaced by a
    new ingest, or whose ``obs`` was rewritten, is opened afresh, never served stale. Values derived from
    the store are cached on the dataset itself (:meth:`SpatialDataset.derived`), so they share this key.
    """
    return SpatialDataset(path, table=table)


def _read_block(path: str, version: str, name: str, start: int, stop: int, n_vars: int,
                table: str = TABLE) -> sp.csr_matrix | np.ndarray:
    return open_cached(path, version, table).store.read_rows(start, stop, name)


def _read_result_block(path: str, version: str, slot: str, key: str, start: int, stop: int) -> sp.csr_matrix:
    return open_cached(path, version).store.result_rows(slot, key, start, stop)


T = TypeVar("T")


class _FromStore(Generic[T]):
    """A read-only attribute of :class:`SpatialDataset` that is the attribute of the same name of its
    :class:`~stdask.store.reader.StoreReader` (the store holds the metadata; the dataset adds the lazy parts)."""

    def __init__(self, doc: str) -> None:
        self.__doc__ = doc

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, ds: None, owner: type) -> "_FromStore[T]": ...

    @overload
    def __get__(self, ds: "SpatialDataset", owner: type) -> T: ...

    def __get__(self, ds, owner=None):
        return self if ds is None else getattr(ds.store, self.name)

    def __set__(self, ds: "SpatialDataset", value: Any) -> None:
        raise AttributeError(f"{self.name} is read from the store and cannot be set")


class SpatialDataset:
    """A tiled slice store opened lazily.

    Parameters
    ----------
    path
        Path of a committed store.
    rows_per_chunk
        Target rows per dask chunk; chunks are whole tiles.
    table
        Which table of the store: ``"table"`` (the main one), or a further table (:mod:`stdask.store.tables`)
        whose dense float32 ``X`` and genes replace the main table's while observations, coordinates and
        tiles stay the main table's.
    """

    def __init__(self, path: str | Path, rows_per_chunk: int = ROWS_PER_CHUNK, table: str = TABLE) -> None:
        self.store: StoreReader = open_table(path, table)
        self.table = table
        self.path = self.store.path
        self.rows_per_chunk = int(rows_per_chunk)
        self._pending: dict[tuple[str, str], Any] = {}
        self._derived: dict[Any, Any] = {}

    # --- shape and metadata ---------------------------------------------------------------------
    # read from the store under the same name
    n_obs = _FromStore[int]("Number of observations (rows).")
    n_vars = _FromStore[int]("Number of genes (columns).")
    var = _FromStore[pd.DataFrame]("Gene table (pandas).")
    obs_names = _FromStore[pd.Index]("Observation names (the obs index).")
    var_names = _FromStore[pd.Index]("Gene names (the var index).")
    coords = _FromStore[np.ndarray]("(n_obs, 2) float64 x, y in :attr:`unit`.")
    unit = _FromStore[str]('Coordinate unit (e.g. ``"um"``, ``"DNB"``).')
    spot_diameter = _FromStore[float | None]("Spot / cell / bin diameter in :attr:`unit`, if known.")
    microns_per_unit = _FromStore[float | None]("Micrometres per coordinate unit (scale of the ``global`` "
                                                "coordinate system), if known.")
    tiling = _FromStore[Tiling]("The tile grid.")
    tile_row_start = _FromStore[np.ndarray]("(n_tiles + 1,) int64: tile t holds rows ``[start[t], start[t+1])``.")

    @property
    def shape(self) -> tuple[int, int]:
        return (self.n_obs, self.n_vars)

    @property
    def obs(self) -> pd.DataFrame:
        """Observation table (pandas), with pending obs columns applied."""
        obs = self.store.obs
        pend = {k: v for (slot, k), v in self._pending.items() if slot == "obs"}
        if pend:
            obs = obs.copy()
            for k, v in pend.items():
                obs[k] = _obs_values(v)
        return obs

    @property
    def n_tiles(self) -> int:
        return self.tiling.n_tiles

    @property
    def bounds(self) -> np.ndarray:
        """(4,) float64 ``xmin, ymin, xmax, ymax`` of the observations in :attr:`unit`."""
        return self.store.tile_index.bounds

    @property
    def provenance(self) -> dict:
        return dict(self.store.tile_index.provenance)

    def info(self) -> StoreInfo:
        """Summary of the store (shape, entries, tiles, units, memory of its materialisations); ``str()`` of
        it is what ``stdask info`` prints (the main table's, whichever table this dataset opened)."""
        return StoreInfo.of(self.store if self.table == TABLE else StoreReader(self.path))

    def verify(self) -> StoreVerification:
        """Check the whole store: metadata parses, every recorded chunk exists and decodes (checksums);
        ``str()`` of the result is what ``stdask verify`` prints, ``.ok`` whether nothing is wrong."""
        return verify_store(self.path)

    def derived(self, key: Any, make: Callable[[], Any]) -> Any:
        """``make()``, computed once per open dataset and ``key``: for values workers derive from the stored
        data (e.g. library codes of an obs column); through :func:`open_cached` they live as long as the
        store version they were computed from."""
        if key not in self._derived:
            self._derived[key] = make()
        return self._derived[key]

    def __repr__(self) -> str:
        nnz = self.matrix_info("X").nnz
        values = f"nnz {nnz:,}" if nnz is not None else f"table {self.table!r} (dense)"
        return (f"SpatialDataset {self.path.name}: {self.n_obs:,} obs x {self.n_vars:,} vars, {values}, "
                f"{int((np.diff(self.tile_row_start) > 0).sum())}/{self.n_tiles} tiles occupied "
                f"(tile {self.tiling.tile_size:g} {self.unit})")

    # --- lazy matrices ------------------------------------------------------------------------
    def tile_groups(self, rows_per_chunk: int | None = None) -> list[tuple[int, int]]:
        """Consecutive tile ranges ``(t0, t1)`` of about ``rows_per_chunk`` rows each (whole tiles)."""
        target = rows_per_chunk or self.rows_per_chunk
        starts = self.tile_row_start
        groups, t0 = [], 0
        for t in range(self.n_tiles):
            if starts[t + 1] - starts[t0] >= target:
                groups.append((t0, t + 1))
                t0 = t + 1
        if t0 < self.n_tiles and (starts[-1] > starts[t0] or not groups):
            groups.append((t0, self.n_tiles))
        return [(a, b) for a, b in groups if starts[b] > starts[a]] or [(0, self.n_tiles)]

    def matrix(self, name: str = "X", rows_per_chunk: int | None = None) -> da.Array:
        """A matrix of the store as a dask array of CSR chunks (row chunks = tile groups); a further table's
        ``X``: dense float32 ndarray chunks."""
        if name not in self.store.matrix_names():
            raise KeyError(f"no matrix {name!r} in {self.path}; available: {self.store.matrix_names()}")
        groups = self.tile_groups(rows_per_chunk)
        starts = self.tile_row_start
        version = self.store.version
        key = f"stdask-{self.table}-{name}-{version}-{rows_per_chunk or self.rows_per_chunk}"
        dsk = {
            (key, i, 0): (_read_block, str(self.path), version, name, int(starts[a]), int(starts[b]), self.n_vars,
                          self.table)
            for i, (a, b) in enumerate(groups)
        }
        chunks = (tuple(int(starts[b] - starts[a]) for a, b in groups), (self.n_vars,))
        dtype = self.store.matrix_dtype(name)
        dense = isinstance(self.store, TableReader) and name == "X"
        meta = np.empty((0, 0), dtype=dtype) if dense else sp.csr_matrix((0, 0), dtype=dtype)
        return da.Array(dsk, key, chunks, meta=meta)

    @property
    def X(self) -> da.Array:
        """(n_obs, n_vars) counts as a dask array of scipy CSR chunks (a further table: dense float32)."""
        return self.matrix("X")

    def layer(self, name: str) -> da.Array:
        return self.matrix(name)

    # --- tiles with halos ---------------------------------------------------------------------
    def tile_rows(self, t: int) -> tuple[int, int]:
        if not 0 <= t < self.n_tiles:
            raise IndexError(f"tile {t} out of range (0..{self.n_tiles - 1})")
        return int(self.tile_row_start[t]), int(self.tile_row_start[t + 1])

    def halo_rows(self, t: int, halo: float) -> np.ndarray:
        """Rows of other tiles within distance ``halo`` (inclusive) of any of tile ``t``'s own observations."""
        if halo < 0 or not np.isfinite(halo):
            raise ValueError(f"halo must be a finite distance >= 0, got {halo!r}")
        r0, r1 = self.tile_rows(t)
        if halo == 0 or r1 == r0:
            return np.empty(0, dtype=np.int64)
        coords = self.coords
        cand = [np.arange(*self.tile_rows(int(u))) for u in self.tiling.tiles_within(t, halo) if u != t]
        cand = np.concatenate(cand) if cand else np.empty(0, np.int64)
        if len(cand) == 0:
            return cand.astype(np.int64)
        tree = cKDTree(coords[r0:r1])
        # a tiny relative slack for the tree's bound, then the exact inclusive test
        d, _ = tree.query(coords[cand], k=1, distance_upper_bound=halo * (1 + 1e-12) + 1e-300)
        return np.sort(cand[d <= halo]).astype(np.int64)

    def tile(self, t: int, halo: float = 0.0, layer: str = "X") -> Tile:
        """Tile ``t`` with the rows of neighbouring tiles within ``halo`` store units of its observations."""
        r0, r1 = self.tile_rows(t)
        extra = self.halo_rows(t, halo)
        rows = np.concatenate([np.arange(r0, r1, dtype=np.int64), extra])
        own = self.store.read_rows(r0, r1, layer)
        if len(extra):
            # read each neighbouring tile's contiguous range once, then pick the halo rows
            parts = []
            tiles = np.searchsorted(self.tile_row_start, extra, side="right") - 1
            for u in np.unique(tiles):
                a, b = self.tile_rows(int(u))
                block = self.store.read_rows(a, b, layer)
                parts.append(block[extra[tiles == u] - a])
            dense = isinstance(own, np.ndarray)  # a further table's X
            X = np.concatenate([own] + parts) if dense else sp.vstack([own] + parts, format="csr")
        else:
            X = own
        return Tile(int(t), rows, r1 - r0, X, self.coords[rows])

    # --- results ------------------------------------------------------------------------------
    def set_result(self, slot: str, key: str, value: Any) -> None:
        """Attach a result (``obs`` column, ``obsm``/``obsp``/``layers``/``uns``/``varm`` element) to write later."""
        if slot not in _SLOTS:
            raise ValueError(f"slot must be one of {_SLOTS}, got {slot!r}")
        # refused now, not at write(): an empty or path-like key would name the slot's group itself or
        # another group of the store
        check_element_name(key)
        if slot in ("obs", "obsm", "obsp", "layers") and hasattr(value, "shape") and value.shape[0] != self.n_obs:
            raise ValueError(f"{slot}[{key!r}] has {value.shape[0]} rows; the dataset has {self.n_obs}")
        if slot == "varm" and value.shape[0] != self.n_vars:
            raise ValueError(f"varm[{key!r}] has {value.shape[0]} rows; the dataset has {self.n_vars} genes")
        self._pending[(slot, key)] = value

    def get_result(self, slot: str, key: str) -> Any:
        """A pending or stored result."""
        if (slot, key) in self._pending:
            return self._pending[(slot, key)]
        if slot == "obs":
            return self.store.obs[key]
        if not self.store.has(slot, key):
            raise KeyError(f"no {slot}[{key!r}] in {self.path} or pending")
        return self.store.read(slot, key)

    def result_csr(self, slot: str, key: str) -> sp.csr_matrix:
        """A pending or stored sparse result as one in-memory CSR (a pending dask array of row blocks is computed
        here, a block at a time)."""
        value = self.get_result(slot, key)
        if isinstance(value, da.Array):
            return gather(value)
        return sp.csr_matrix(value)

    @property
    def pending(self) -> list[tuple[str, str]]:
        return list(self._pending)

    def result_keys(self, slot: str, *, stored: bool = True, pending: bool = True) -> list[str]:
        """Names of the results in ``slot`` (``obs``: its columns): stored ones in the store's order, then
        pending ones that are not stored yet."""
        if slot not in _SLOTS:
            raise ValueError(f"slot must be one of {_SLOTS}, got {slot!r}")
        keys = self.store.keys(slot) if stored else []
        if pending:
            keys += [k for s, k in self._pending if s == slot and k not in keys]
        return keys

    def is_stored(self, slot: str, key: str) -> bool:
        """Whether ``slot[key]`` is in the store (whatever is pending)."""
        return self.store.has(slot, key)

    def is_pending(self, slot: str, key: str) -> bool:
        """Whether ``slot[key]`` waits for :meth:`write`."""
        return (slot, key) in self._pending

    def has_result(self, slot: str, key: str) -> bool:
        """Whether ``slot[key]`` is pending or stored."""
        return self.is_pending(slot, key) or self.is_stored(slot, key)

    def element_info(self, slot: str, key: str) -> ElementInfo:
        """Encoding, shape, dtype (and entries or columns) of the stored element ``slot[key]``."""
        return self.store.element_info(slot, key)

    def matrix_info(self, name: str | None = None) -> ElementInfo | dict[str, ElementInfo]:
        """:class:`~stdask.store.reader.ElementInfo` (kind ``"csr"`` or ``"dense"``, shape, dtype, nnz) of the
        stored matrix ``name``, or of ``X`` and every stored layer by name when ``name`` is ``None``.

        Raises ``KeyError`` naming the available matrices when ``name`` is not stored.
        """
        if name is not None:
            return self.store.matrix_info(name)
        return {n: self.store.matrix_info(n) for n in ["X"] + sorted(self.store.keys("layers"))}

    def stored_matrix(self, name: str) -> da.Array:
        """``X`` or a stored layer as a dask array: CSR matrices with tile-group row chunks (:meth:`matrix`),
        dense layers with the chunks they are stored with (a further table's dense ``X``: tile-group chunks)."""
        if name != "X" and self.store.matrix_info(name).kind == "dense":
            arr = self.store.dense_array("layers", name)
            return da.from_array(arr, chunks=arr.chunks)
        return self.matrix(name)

    def result_row_counts(self, slot: str, key: str) -> np.ndarray:
        """(n_rows,) int64 stored entries per row of the stored CSR matrix ``slot[key]`` (reads its row
        pointers only)."""
        return self.store.row_counts(slot, key)

    def result_column(self, slot: str, key: str, j: int, fill: float = 0.0,
                      rows_per_read: int = 1 << 18) -> np.ndarray:
        """(n_rows,) float64 column ``j`` of the stored matrix ``slot[key]``, read ``rows_per_read`` rows at a
        time without holding the matrix; for a CSR matrix, rows that store no entry in column ``j`` get
        ``fill``."""
        return self.store.column(slot, key, j, fill, rows_per_read)

    def stored_result_rows(self, slot: str, key: str, rows_per_block: int = 1 << 16) -> da.Array:
        """The stored CSR matrix ``slot[key]`` (as written, whatever is pending) as a dask array of CSR row
        blocks of ``rows_per_block`` rows, read from the store when computed."""
        info = self.store.element_info(slot, key)
        if info.kind != "csr":
            raise TypeError(f"{self.path}: {slot}[{key!r}] is a {info.spec.encoding!r} element, not a CSR matrix")
        n, version = info.shape[0], self.store.version
        bounds = [(a, min(n, a + rows_per_block)) for a in range(0, n, rows_per_block)] or [(0, 0)]
        # the element's own metadata file: a rewrite of the element (a new commit) is a new file
        st = (self.path / TABLE_PATH / slot / key / "zarr.json").stat()
        name = f"stdask-{slot}-{key}-{version}-{st.st_ino}-{st.st_mtime_ns}-{rows_per_block}"
        dsk = {(name, i, 0): (_read_result_block, str(self.path), version, slot, key, a, b)
               for i, (a, b) in enumerate(bounds)}
        chunks = (tuple(b - a for a, b in bounds), (info.shape[1],))
        return da.Array(dsk, name, chunks, meta=sp.csr_matrix((0, 0), dtype=info.dtype))

    def copy(self) -> "SpatialDataset":
        """The same store opened again, with a copy of the pending results (the values themselves are shared:
        results are replaced, never modified in place). What is recorded on the copy does not reach ``self``;
        this is what an analysis called with ``copy=True`` works on."""
        other = SpatialDataset(self.path, rows_per_chunk=self.rows_per_chunk, table=self.table)
        other._pending = dict(self._pending)
        return other

    def write(self, lock_timeout: float | None = None) -> None:
        """Write pending results into the store as one commit: a crash leaves the old results or all the new
        ones, never a mixture (:mod:`stdask.store.commit`).

        ``lock_timeout``: seconds to wait while another process writes the store before failing with
        :class:`~stdask.store.lock.StoreLockedError` (default :data:`stdask.store.lock.LOCK_TIMEOUT_S`).
        """
        if not self._pending:
            return
        if self.table != TABLE:
            raise ValueError(f"results of table {self.table!r} are not written into the store (its results would "
                             "belong to the main table's observations); open the main table to write them, or "
                             "export them with to_anndata()")
        obs_cols = {k: v for (slot, k), v in self._pending.items() if slot == "obs"}
        items = [(f"{TABLE_PATH}/{slot}", k, _storable(v))
                 for (slot, k), v in self._pending.items() if slot != "obs"]
        if obs_cols:
            obs = self.store.obs.copy()
            for k, v in obs_cols.items():
                obs[k] = _obs_values(v)
            items.append((TABLE_PATH, "obs", obs))
        write_elements(self.path, items, lock_timeout)
        self._pending.clear()
        # re-open so cached metadata reflects what is now on disk
        self.store = StoreReader(self.path)

    # --- export -------------------------------------------------------------------------------
    def to_anndata(self):
        """Materialise the whole table (and pending results) as an in-memory AnnData."""
        adata = self.store.read_table()
        for (slot, key), value in self._pending.items():
            if isinstance(value, da.Array):
                from .cluster import compute

                (value,) = compute(value, progress=False)
            if slot == "obs":
                adata.obs[key] = _obs_values(value)
            else:
                getattr(adata, slot)[key] = value
        for name in EXPORTERS:
            _exporter(name)(self, adata)
        return adata

    def write_h5ad(self, path: str | Path) -> Path:
        """Export to ``.h5ad`` (materialises the table)."""
        path = Path(path)
        self.to_anndata().write_h5ad(path)
        return path

    def points_names(self) -> list[str]:
        """Names of the store's points elements (``"transcripts"`` when the ingest kept them)."""
        return points_names(self.path)

    def points(self, name: str = "transcripts", tiles=None):
        """The points element ``name`` as a lazy ``dask.dataframe.DataFrame`` (x, y in :attr:`unit`, the feature,
        the input's columns and the store ``tile``; ``tile == -1`` outside every tile); ``tiles`` (store tile
        indices) reads only the parts holding them."""
        return open_points(self.path, name, tiles)

    def to_spatialdata(self, shapes: bool = True):
        """Export as a :class:`spatialdata.SpatialData` in memory: the table (pending results included) and, with
        ``shapes``, the shapes element it annotates: the store's own (:mod:`stdask.store.sdata_view`, in its
        ``global`` coordinate system) or, for a store written before it had one, circles at the observation
        coordinates (radius = spot diameter / 2, or 1 unit when unknown)."""
        import spatialdata as sd
        from spatialdata.models import ShapesModel, TableModel

        adata = self.to_anndata()
        attrs = adata.uns.pop("spatialdata_attrs", None)
        if not shapes:
            return sd.SpatialData(tables={"table": TableModel.parse(adata)})
        if attrs is not None and (self.path / SHAPES / str(attrs["region"])).is_dir():
            check_shapes(self.path, str(attrs["region"]))
            elements = sd.read_zarr(self.path, selection=("shapes",)).shapes
            table = TableModel.parse(adata, region=attrs["region"], region_key=attrs["region_key"],
                                     instance_key=attrs["instance_key"])
            return sd.SpatialData(shapes={attrs["region"]: elements[attrs["region"]]}, tables={"table": table})
        radius = (self.spot_diameter or 2.0) / 2.0
        circles = ShapesModel.parse(self.coords, geometry=0, radius=np.full(self.n_obs, radius),
                                    index=pd.RangeIndex(self.n_obs))
        adata.obs["region"] = pd.Categorical(["cells"] * self.n_obs)
        adata.obs["instance_id"] = np.arange(self.n_obs)
        table = TableModel.parse(adata, region="cells", region_key="region", instance_key="instance_id")
        return sd.SpatialData(shapes={"cells": circles}, tables={"table": table})


def _obs_values(v):
    """Values of a pending obs column, keeping categoricals (their categories and order) intact."""
    if isinstance(v, pd.Series):
        v = v.array if isinstance(v.dtype, pd.CategoricalDtype) else v.to_numpy()
    return v if isinstance(v, pd.Categorical) else np.asarray(v)


def _storable(value: Any) -> Any:
    """What the store's writers take: a dask array becomes :class:`~stdask.store.elements.RowBlocks`, its row
    chunks computed ``batch`` at a time as the writer consumes them (CSR chunks become an AnnData
    ``csr_matrix`` element, dense chunks an AnnData ``array``)."""
    if not isinstance(value, da.Array):
        return value
    from .cluster import compute

    arr = value
    if arr.ndim != 2 or len(arr.chunks[1]) != 1:
        arr = arr.rechunk({1: -1}) if arr.ndim == 2 else arr
    blocks = [arr.blocks[i] for i in range(arr.numblocks[0])]
    batch = 8

    def computed() -> Iterator:
        for i in range(0, len(blocks), batch):
            yield from compute(*blocks[i : i + batch], progress=False)

    return RowBlocks(arr.shape, arr.dtype, sp.issparse(arr._meta), max(arr.chunks[0]), computed())


def read(path: str | Path, rows_per_chunk: int = ROWS_PER_CHUNK, table: str = TABLE, *,
         converted: str | Path | None = None, progress: bool = True) -> SpatialDataset:
    """Open a store lazily (metadata only); ``table`` names a further table of it
    (:func:`stdask.store.tables.table_names`), opened with the main table's observations and tiles.

    A SpatialData zarr written by spatialdata or spatialdata-io (not a stdask store) is ingested first
    (:class:`stdask.io.spatialdata_zarr.SpatialDataZarrSource`: its table and the element it annotates) into
    ``converted``, by default ``<name>.stdask.zarr`` next to it, and that store is opened. A later ``read`` of the
    same input reuses the converted store while it is newer than the input's metadata; the input is never changed.
    """
    from .io.spatialdata_zarr import is_spatialdata_zarr

    path = Path(path)
    if table == TABLE and is_spatialdata_zarr(path):
        return SpatialDataset(_converted(path, converted, progress), rows_per_chunk=rows_per_chunk)
    return SpatialDataset(path, rows_per_chunk=rows_per_chunk, table=table)


def _converted(source: Path, target: str | Path | None, progress: bool) -> Path:
    """The stdask store ingested from the SpatialData zarr ``source`` (ingested now unless a current one exists)."""
    import os

    from .io.ingest import ingest

    target = Path(target) if target is not None else source.with_name(source.name.removesuffix(".zarr")
                                                                       + ".stdask.zarr")
    # the metadata of the root and of each element (what a rewrite of the input replaces), not the chunk files:
    # walking every chunk of a large SpatialData zarr would cost more than the read
    meta = [source / n for n in ("zarr.json", ".zattrs")]
    meta += [p for pattern in ("*/*/zarr.json", "*/*/.zattrs") for p in source.glob(pattern)]
    newest = max((p.stat().st_mtime for p in meta if p.is_file()), default=0.0)
    if (target / "zarr.json").is_file():
        try:
            reader = StoreReader(target)
            same = reader.tile_index.provenance.get("source_path") == os.path.abspath(str(source))
        except Exception:  # noqa: BLE001 -- not a readable stdask store: refused below as ingest would
            same = False
        if same and (target / "zarr.json").stat().st_mtime >= newest:
            return target
        if not same:
            raise FileExistsError(f"{target} exists and was not converted from {source}; pass converted= another "
                                  "path for the stdask store of this SpatialData zarr")
    if progress:
        print(f"{source} is a SpatialData zarr: converting it to the stdask store {target} (done once)")
    return ingest(source, target, overwrite=(target / "zarr.json").is_file(), progress=progress)
