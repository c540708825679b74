"""Further tables of a store (``tables/<name>``, next to the main ``tables/table``): a dense float32 matrix
over the main table's observations, in its row order, with its own genes (e.g. the imputed genes of
:func:`stdask.tl.impute` with their ``var['reliability']``).

:func:`write_table` streams the matrix one block at a time into an AnnData ``array`` element and commits the
whole table as one unit (:mod:`stdask.store.commit`): a failure while the blocks stream leaves the previous
version of that table (or none) and the main table untouched. The table stands alone for
``anndata.read_zarr``: its ``obs`` repeats the main table's names, ``x``, ``y`` and ``tile``, its
``uns/stdask`` the main table's tile index. :class:`TableReader` opens it for :func:`stdask.read`
(``table=``): observations, coordinates and tiles come from the main table, genes and matrix from this one.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp
import zarr

from .elements import ANNDATA, RowBlocks
from .encoding import register_write, write_element
from .chunks import read_checked
from .format import TABLE
from .reader import StoreReader, child, open_root, read_elem, read_whole
from .tile_index import TileIndex
from .update import check_element_name, write_elements

#: the group attributes with which SpatialData reads a table that annotates no element (as the main table's)
REGIONS_TABLE_ATTRS = {"spatialdata-encoding-type": "ngff:regions_table", "region": None, "region_key": None,
                       "instance_key": None, "version": "0.2"}
#: obs columns every further table takes from the main table
OWN_OBS = ("x", "y", "tile")


@dataclass
class DenseTable:
    """A whole further table, written as one AnnData group by :func:`write_dense_table`.

    Attributes
    ----------
    X
        The dense float32 matrix as streamed row blocks.
    obs, var
        Observation and gene tables (obs: the main table's row order).
    obsm
        ``{"spatial": (n_obs, 2) float64}`` coordinates in store units.
    uns
        The caller's unstructured metadata (anndata-writable).
    tile_index
        Called once ``X`` is written (its blocks consumed) for the ``uns/stdask`` tile index.
    """

    X: RowBlocks
    obs: pd.DataFrame
    var: pd.DataFrame
    obsm: dict[str, np.ndarray]
    uns: dict
    tile_index: Any


@register_write(ANNDATA, DenseTable)
def write_dense_table(parent, key: str, t: DenseTable) -> None:
    # X first: the tile index records the largest value, known once the blocks are consumed
    g = parent.create_group(key)
    write_element(g, "X", t.X)
    for name, value in (("obs", t.obs), ("var", t.var), ("obsm", t.obsm), ("layers", {}), ("varm", {}),
                        ("obsp", {}), ("varp", {}), ("uns", t.uns)):
        write_element(g, name, value)
    write_element(g["uns"], "stdask", t.tile_index())
    g.attrs.update({**ANNDATA.attrs(), **REGIONS_TABLE_ATTRS})


class _BlockCheck:
    """The caller's blocks, checked as they stream: (rows, n_vars) finite values, the announced row counts,
    no more rows than the main table; as float32. Keeps the largest value for the tile index."""

    def __init__(self, blocks: Iterable[np.ndarray], n_obs: int, n_vars: int, sizes: Sequence[int] | None) -> None:
        self.blocks, self.n_obs, self.n_vars, self.sizes = blocks, n_obs, n_vars, sizes
        self.max_value = float("nan")

    def __iter__(self) -> Iterator[np.ndarray]:
        r = 0
        for i, b in enumerate(self.blocks):
            b = b.toarray() if sp.issparse(b) else np.asarray(b)
            if b.ndim != 2 or b.shape[1] != self.n_vars:
                raise ValueError(f"block {i} has shape {b.shape}; blocks are (rows, {self.n_vars}): one column per "
                                 "gene of var")
            if self.sizes is not None and (i >= len(self.sizes) or b.shape[0] != self.sizes[i]):
                want = self.sizes[i] if i < len(self.sizes) else "no"
                raise ValueError(f"block {i} has {b.shape[0]} rows; n_rows_per_block announced {want} rows")
            if r + b.shape[0] > self.n_obs:
                raise ValueError(f"the blocks hold more than {self.n_obs} rows (the main table's row count): "
                                 f"{r + b.shape[0]} after block {i}")
            b = b.astype(np.float32, copy=False)
            if b.size:
                if not np.isfinite(b).all():
                    raise ValueError(f"block {i} holds NaN or infinite values")
                self.max_value = float(np.fmax(self.max_value, b.max()))
            r += b.shape[0]
            yield b
        if r != self.n_obs:
            raise ValueError(f"the blocks hold {r} rows; the main table has {self.n_obs}")


def _table_obs(main: StoreReader, obs_names: pd.Index, obs: pd.DataFrame | None) -> pd.DataFrame:
    """The further table's obs: the main table's names, ``x``, ``y``, ``tile``, then the caller's columns."""
    coords = main.coords
    tile = (read_elem(main.table["obs"], "tile") if "tile" in main.keys("obs")
            else np.repeat(np.arange(main.tiling.n_tiles, dtype=np.int32), np.diff(main.tile_row_start)))
    out = pd.DataFrame({"x": coords[:, 0], "y": coords[:, 1], "tile": np.asarray(tile)},
                       index=pd.Index(main.obs_names.astype(str)))
    if obs is not None:
        if len(obs) != main.n_obs or not pd.Index(obs.index.astype(str)).equals(out.index):
            raise ValueError(f"obs has {len(obs)} rows; its index must be the main table's {main.n_obs} "
                             "observation names in their row order")
        taken = [c for c in obs.columns if c in OWN_OBS]
        if taken:
            raise ValueError(f"obs columns {taken} are taken from the main table; rename them")
        out = pd.concat([out, obs.set_axis(out.index)], axis=1)
    return out


def _check_names(main: StoreReader, obs_names: pd.Index) -> None:
    if len(obs_names) != main.n_obs:
        raise ValueError(f"obs_names has {len(obs_names)} names; the main table has {main.n_obs} rows")
    names = pd.Index(obs_names).astype(str)
    ref = main.obs_names.astype(str)
    if not names.equals(ref):
        i = int(np.flatnonzero(np.asarray(names) != np.asarray(ref))[0])
        raise ValueError(f"obs_names differ from the main table's at row {i} ({names[i]!r} vs {ref[i]!r}): the "
                         "rows must be the main table's, in its row (tile) order")


def check_table_name(name: str) -> None:
    """Refuse the main table's name and names that are not valid element names (``ValueError``); callers that
    compute a table for long check the name before they start."""
    if name == TABLE:
        raise ValueError(f"{name!r} is the main table's name; write a further table under another name")
    try:
        check_element_name(name)
    except ValueError:
        raise ValueError(f"invalid table name {name!r}: a name is non-empty, without '/', '\\' or a leading '.'") \
            from None


def write_table(path: str | Path, name: str, *, obs_names: pd.Index, var: pd.DataFrame,
                blocks: Iterable[np.ndarray], n_rows_per_block: Sequence[int] | None = None,
                uns: dict | None = None, obs: pd.DataFrame | None = None, lock_timeout: float | None = None) -> None:
    """Write (or replace) the table ``tables/<name>`` of the store at ``path`` in one atomic commit.

    Parameters
    ----------
    path
        A committed store.
    name
        The table's name (not ``"table"``, the main table's; a valid element name).
    obs_names
        (n_obs,) the main table's observation names in its row order (checked: the rows are the main table's).
    var
        The table's genes: index = unique gene names (one per column of the blocks), any columns (e.g. a float
        ``reliability``).
    blocks
        Consecutive row blocks, each (rows, n_vars) and cast to float32, in the main table's row (tile) order,
        e.g. one per tile group of :meth:`stdask.dataset.SpatialDataset.tile_groups`. Consumed one at a time
        (memory: one block); NaN or infinite values are refused.
    n_rows_per_block
        Rows of each block when known: checked up front (sum = n_obs) and per block; the longest bounds the
        zarr chunk length.
    uns
        The table's unstructured metadata (anndata-writable, e.g. a provenance dict); ``uns['stdask']`` is the
        main table's tile index, written here.
    obs
        Extra observation columns (index = ``obs_names``); ``x``, ``y`` and ``tile`` come from the main table.
    lock_timeout
        Seconds to wait for another writer's lock (default :data:`stdask.store.lock.LOCK_TIMEOUT_S`).

    Raises
    ------
    ValueError
        For ``name == "table"`` or an invalid name, obs names or row counts that are not the main table's
        (both counts named), blocks of the wrong width, or ``uns['stdask']``. A failure while the blocks stream
        (theirs or these checks) leaves the store as it was.
    """
    check_table_name(name)
    main = StoreReader(path)
    _check_names(main, pd.Index(obs_names))
    var = var.copy()
    var.index = var.index.astype(str)
    if not var.index.is_unique:
        raise ValueError(f"duplicate gene name {var.index[var.index.duplicated()][0]!r} in var")
    uns = dict(uns or {})
    if "stdask" in uns:
        raise ValueError("uns['stdask'] is the table's tile index, written by stdask; use another key")
    sizes = None if n_rows_per_block is None else [int(s) for s in n_rows_per_block]
    if sizes is not None and sum(sizes) != main.n_obs:
        raise ValueError(f"n_rows_per_block sums to {sum(sizes)} rows; the main table has {main.n_obs}")
    check = _BlockCheck(blocks, main.n_obs, len(var), sizes)
    # without announced sizes the chunk length is bounded by the writer's ~1 MiB rule alone
    max_rows = max(sizes, default=1) if sizes is not None else max(1, main.n_obs)
    X = RowBlocks((main.n_obs, len(var)), np.dtype(np.float32), False, max(1, max_rows), iter(check))
    ti = main.tile_index

    def tile_index() -> TileIndex:
        return TileIndex(ti.tiling, ti.tile_row_start, ti.bounds, ti.unit, ti.spot_diameter, check.max_value,
                         {"source_table": TABLE}, ti.curve, ti.microns_per_unit)

    table = DenseTable(X, _table_obs(main, obs_names, obs), var, {"spatial": main.coords}, uns, tile_index)
    write_elements(main.path, [("tables", name, table)], lock_timeout)


def table_names(path: str | Path) -> list[str]:
    """The store's tables: ``"table"`` (the main one) first, then the others by name."""
    return _names(open_root(path))


def _names(root: zarr.Group) -> list[str]:
    names = sorted(k for k in root["tables"].group_keys() if not k.startswith("."))
    return [TABLE] + [n for n in names if n != TABLE]


def table_shapes(root: zarr.Group) -> dict[str, tuple[int, int]]:
    """(n_obs, n_vars) of each further table's ``X`` (the main table left out), by name (metadata only)."""
    out = {}
    for n in _names(root)[1:]:
        X = child(root["tables"][n], "X")
        shape = X.attrs.get("shape") if isinstance(X, zarr.Group) else X.shape  # CSR groups keep it as attribute
        out[n] = (int(shape[0]), int(shape[1]))
    return out


class TableReader(StoreReader):
    """A further table opened as a dataset's store: observations (``obs`` with the table's own extra
    columns, names, coordinates), tile index and tiling from the main table; genes, ``X`` (dense) and the
    other elements from ``tables/<name>``.

    Attributes
    ----------
    name
        The table's name.
    table_path
        ``tables/<name>``.
    main
        The main table's reader (observations, coordinates).
    """

    def __init__(self, path: str | Path, name: str) -> None:
        super().__init__(path)
        names = _names(self.root)
        if name not in names:
            raise KeyError(f"{self.path}: no table {name!r}; its tables: {names}")
        self.name = name
        self.table_path = f"tables/{name}"
        # the main table's observations are read through a reader of its own (lazily, as that reader does)
        self.main = StoreReader(path)
        self.table = child(self.root, self.table_path)
        info = self.element_info("", "X")
        if info.kind != "dense" or info.shape[0] != self.n_obs:
            raise ValueError(f"{self.path}/{self.table_path}: X is a {info.kind} matrix of shape {info.shape}; a "
                             f"further table holds a dense matrix of the main table's {self.n_obs} rows")
        self.n_vars = int(info.shape[1])

    @property
    def version(self) -> str:
        """The main table's version, and this table's generation (a rewrite replaces its group metadata)."""
        st = os.stat(self.path / self.table_path / "zarr.json")
        return f"{super().version}-{st.st_ino}-{st.st_mtime_ns}"

    @functools.cached_property
    def obs(self) -> pd.DataFrame:
        """The main table's obs, then the columns only this table holds (same rows)."""
        main = self.main.obs
        own = read_elem(self.table, "obs")
        extra = [c for c in own.columns if c not in main.columns]
        return pd.concat([main, own[extra].set_axis(main.index)], axis=1) if extra else main

    @property
    def obs_names(self) -> pd.Index:
        return self.main.obs_names

    @property
    def coords(self) -> np.ndarray:
        """(n_obs, 2) float64 x, y in store units (the main table's)."""
        return self.main.coords

    def keys(self, slot: str) -> list[str]:
        return list(self.obs.columns) if slot == "obs" else super().keys(slot)

    def matrix_dtype(self, name: str) -> np.dtype:
        return self.table["X"].dtype if name == "X" else super().matrix_dtype(name)

    def read_rows(self, start: int, stop: int, name: str = "X") -> np.ndarray | sp.csr_matrix:
        """Rows ``start:stop`` of ``X`` as a (rows, n_vars) float32 ndarray (of a CSR layer: a CSR matrix)."""
        if name != "X":
            return super().read_rows(start, stop, name)
        return read_checked(self.table["X"], slice(start, stop))

    def read_table(self):
        """The whole table as an in-memory AnnData, with :attr:`obs` (the main table's and its own columns)."""
        import anndata as ad

        adata = read_whole(self.table, lambda node: ad.read_zarr(str(self.path / self.table_path)))
        adata.obs = self.obs.set_axis(adata.obs_names)
        return adata


def open_table(path: str | Path, table: str = TABLE) -> StoreReader:
    """The reader of ``table``: a :class:`StoreReader` of the main table, else a :class:`TableReader`."""
    return StoreReader(path) if table == TABLE else TableReader(path, table)


__all__ = ["check_table_name", "DenseTable", "TableReader", "open_table", "table_names", "table_shapes", "write_dense_table",
           "write_table"]
