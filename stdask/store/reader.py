"""Lazy reader of a committed slice store: metadata up front, matrix rows on demand.

Reading a tile costs one ``indptr`` slice and one contiguous range of ``indices``/``data``, because rows
are stored grouped by tile (see :mod:`stdask.store.writer`).
"""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
import zarr

from .format import STORE_ENCODING, StoreFormatError, TABLE_PATH, check_encoding
from .tiling import Tiling


def read_elem(group, key):
    from anndata.io import read_elem as _read

    return _read(group[key])


def open_root(path: str | Path, mode: str = "r") -> zarr.Group:
    """Open and validate the root group of a store; refuse incomplete or unknown-version stores."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such store")
    try:
        root = zarr.open_group(str(path), mode=mode, zarr_format=3)
    except Exception as e:  # zarr raises several types for a missing/garbled zarr.json
        raise StoreFormatError(f"{path}: not a zarr v3 group ({e}); the store is missing or was not committed") from e
    attrs = root.attrs.get("stdask")
    if not isinstance(attrs, dict) or not attrs.get("complete"):
        raise StoreFormatError(f"{path}: not a complete stdask store (no commit mark); re-run the ingest")
    check_encoding(f"{path} (store)", attrs.get("encoding"), attrs.get("version"))
    return root


class StoreReader:
    """Read access to one store's table.

    Attributes
    ----------
    n_obs, n_vars
        Matrix shape.
    tiling
        The :class:`~stdask.store.tiling.Tiling` grid.
    tile_row_start
        (n_tiles + 1,) int64; rows of tile ``t`` are ``tile_row_start[t]:tile_row_start[t+1]``.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.root = open_root(self.path)
        self.uuid = self.root.attrs["stdask"].get("uuid", "")
        self.table = self.root[TABLE_PATH]
        shape = self.table["X"].attrs.get("shape")
        if shape is None:
            raise StoreFormatError(f"{self.path}: table X has no shape attribute")
        self.n_obs, self.n_vars = int(shape[0]), int(shape[1])
        meta = read_elem(self.table["uns"], "stdask")
        check_encoding(f"{self.path} uns/stdask", meta.get("encoding"), int(meta.get("version", -1)))
        self.meta = meta
        self.tiling = Tiling.from_attrs(meta["tiling"])
        self.tile_row_start = np.asarray(meta["tile_row_start"], dtype=np.int64)
        if self.tile_row_start[-1] != self.n_obs or len(self.tile_row_start) != self.tiling.n_tiles + 1:
            raise StoreFormatError(f"{self.path}: tile index does not match the table ({self.n_obs} rows)")
        self.unit = str(meta.get("unit", ""))
        sd = float(meta.get("spot_diameter", np.nan))
        self.spot_diameter = None if not np.isfinite(sd) else sd

    # --- metadata -----------------------------------------------------------------------------
    @functools.cached_property
    def obs(self) -> pd.DataFrame:
        return read_elem(self.table, "obs")

    @functools.cached_property
    def var(self) -> pd.DataFrame:
        return read_elem(self.table, "var")

    @functools.cached_property
    def obs_names(self) -> pd.Index:
        """The ``obs`` index alone (reading only its column: the table can hold many more)."""
        return self._index_of("obs")

    @functools.cached_property
    def var_names(self) -> pd.Index:
        return self._index_of("var")

    def _index_of(self, name: str) -> pd.Index:
        if name in self.__dict__:  # the whole table is already loaded
            return self.__dict__[name].index
        g = self.table[name]
        key = g.attrs["_index"]
        # as anndata's dataframe reader names it
        return pd.Index(read_elem(g, key), name=None if key == "_index" else key)

    @functools.cached_property
    def coords(self) -> np.ndarray:
        """(n_obs, 2) float64 x, y in store units."""
        return np.asarray(self.table["obsm"]["spatial"][:], dtype=np.float64)

    def matrix_names(self) -> list[str]:
        names = ["X"]
        if "layers" in self.table:
            names += sorted(k for k in self.table["layers"].group_keys())
        return names

    def _csr_group(self, name: str) -> zarr.Group:
        if name == "X":
            return self.table["X"]
        try:
            return self.table["layers"][name]
        except KeyError:
            raise KeyError(f"{self.path}: no matrix {name!r}; available: {self.matrix_names()}") from None

    # --- rows ---------------------------------------------------------------------------------
    def read_rows(self, start: int, stop: int, name: str = "X") -> sp.csr_matrix:
        """Rows ``start:stop`` of a matrix as a CSR (int32 indices), one contiguous read per array."""
        g = self._csr_group(name)
        return read_csr_range(g, start, stop, self.n_vars)

    def read_tile_rows(self, t0: int, t1: int, name: str = "X") -> sp.csr_matrix:
        """All rows of tiles ``t0:t1``."""
        return self.read_rows(int(self.tile_row_start[t0]), int(self.tile_row_start[t1]), name)


def read_csr_range(g: zarr.Group, start: int, stop: int, n_vars: int) -> sp.csr_matrix:
    indptr = np.asarray(g["indptr"][start : stop + 1], dtype=np.int64)
    a, b = int(indptr[0]), int(indptr[-1])
    indices = np.asarray(g["indices"][a:b]).astype(np.int32)
    data = np.asarray(g["data"][a:b])
    return sp.csr_matrix((data, indices, indptr - a), shape=(stop - start, n_vars))
