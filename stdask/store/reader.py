"""Lazy reader of a committed slice store: metadata up front, matrix rows on demand.

Reading a tile costs one ``indptr`` slice and one contiguous range of ``indices``/``data``, because rows
are stored grouped by tile (see :mod:`stdask.store.writer`). Every element is read through the encoding
registry (:mod:`stdask.store.encoding`), so an element of an unknown encoding or version is refused with
its name, never misread; and every read refuses a chunk its array recorded as written but that is missing or
fails its checksum, naming the element and the chunk (:mod:`stdask.store.chunks`), never reading it as zeros.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
import zarr

from .chunks import CheckedArray, arrays_of, check_element, damage_error, damaged_chunk, read_checked
from .commit import settle
from .csr import CSR_MATRIX, read_csr_range
from .elements import ARRAY, DATAFRAME
from .encoding import REGISTRY, IOSpec, read_element, register_read, spec_of
from .format import STORE_ENCODING, STORE_VERSION, TABLE_PATH, StoreFormatError
from .tile_index import TileIndex

STORE = IOSpec(STORE_ENCODING, STORE_VERSION)

#: the table's result slots (``obs`` columns are elements of the ``obs`` dataframe)
SLOTS = ("obs", "obsm", "obsp", "layers", "uns", "varm")


@register_read(STORE)
def read_store_attrs(root: zarr.Group) -> dict:
    """The root's ``stdask`` attributes (encoding, version, completion mark, table path, uuid)."""
    return dict(root.attrs["stdask"])


def _where(group: zarr.Group, key: str) -> str:
    root = getattr(group.store, "root", None)
    return "/".join(str(p) for p in (root, group.path, key) if p)


def child(group: zarr.Group, key: str):
    """``group[key]``; metadata that zarr cannot parse is a :class:`StoreFormatError` naming its ``zarr.json``."""
    try:
        return group[key]
    except Exception as e:  # zarr raises JSONDecodeError, ValueError, TypeError ... for garbled metadata
        meta = Path(_where(group, key)) / "zarr.json"
        if isinstance(e, KeyError) and not meta.exists():
            raise  # a missing element, not a damaged one
        raise StoreFormatError(f"{meta}: unreadable zarr metadata ({type(e).__name__}: {e}); the store is "
                               "damaged: restore it or re-run the ingest") from e


def read_elem(group: zarr.Group, key: str) -> Any:
    """Read ``group[key]`` whole, through the encoding registry; a recorded chunk that is missing or damaged
    raises :class:`~stdask.store.format.StoreDamageError` naming it."""
    return read_whole(group[key], lambda node: read_element(node, _where(group, key)))


def read_whole(node, read: Any) -> Any:
    """``read(node)`` after checking that every recorded chunk under ``node`` exists; a decoding failure is
    traced to the chunk that causes it."""
    check_element(node)
    try:
        return read(node)
    except StoreFormatError:
        raise
    except Exception as e:
        for arr in arrays_of(node):
            found = damaged_chunk(arr)
            if found is not None:
                raise damage_error(arr, *found) from e
        raise


def open_root(path: str | Path, mode: str = "r") -> zarr.Group:
    """Open and validate the root group of a store; refuse incomplete or unknown-version stores."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such store")
    if not (path / TABLE_PATH).exists():  # a writer killed between the two renames of a fallback switch
        settle(path)
    try:
        root = zarr.open_group(str(path), mode=mode, zarr_format=3)
    except Exception as e:  # zarr raises several types for a missing/garbled zarr.json
        raise StoreFormatError(f"{path}: not a zarr v3 group ({e}); the store is missing or was not committed") from e
    attrs = root.attrs.get("stdask")
    if not isinstance(attrs, dict) or not attrs.get("complete"):
        raise StoreFormatError(f"{path}: not a complete stdask store (no commit mark); re-run the ingest")
    read_element(root, f"{path} (store)")
    return root


@dataclass(frozen=True)
class ElementInfo:
    """What a stored element is, read from its metadata alone.

    Attributes
    ----------
    slot, key
        Where it is (``slot`` ``""`` for ``X``).
    spec
        Its encoding and version.
    shape
        Matrix or table shape (``None`` for other elements).
    dtype
        Value dtype of a matrix (``None`` otherwise).
    nnz
        Stored entries of a CSR matrix (``None`` otherwise).
    columns
        Column names of a dataframe (``None`` otherwise).
    """

    slot: str
    key: str
    spec: IOSpec
    shape: tuple[int, ...] | None = None
    dtype: np.dtype | None = None
    nnz: int | None = None
    columns: tuple[str, ...] | None = None

    @property
    def kind(self) -> str:
        """``"csr"``, ``"dense"``, ``"dataframe"`` or the encoding name."""
        return {CSR_MATRIX: "csr", ARRAY: "dense"}.get(self.spec, self.spec.encoding)


class StoreReader:
    """Read access to one store's table.

    Attributes
    ----------
    n_obs, n_vars
        Matrix shape.
    tile_index
        The :class:`~stdask.store.tile_index.TileIndex` (``uns/stdask``).
    tiling
        The :class:`~stdask.store.tiling.Tiling` grid.
    tile_row_start
        (n_tiles + 1,) int64; rows of tile ``t`` are ``tile_row_start[t]:tile_row_start[t+1]``.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.root = open_root(self.path)
        self.uuid = self.root.attrs["stdask"].get("uuid", "")
        self.table = child(self.root, TABLE_PATH)
        self._csr: dict[str, zarr.Group] = {}
        shape = child(self.table, "X").attrs.get("shape")
        if shape is None:
            raise StoreFormatError(f"{self.path}: table X has no shape attribute")
        self.n_obs, self.n_vars = int(shape[0]), int(shape[1])
        index = read_elem(self.table["uns"], "stdask")
        if not isinstance(index, TileIndex):
            raise StoreFormatError(f"{self.path}: uns/stdask records no stdask tile index; not a stdask store")
        self.tile_index = index
        self.tiling = index.tiling
        self.tile_row_start = index.tile_row_start
        if self.tile_row_start[-1] != self.n_obs or len(self.tile_row_start) != self.tiling.n_tiles + 1:
            raise StoreFormatError(f"{self.path}: tile index does not match the table ({self.n_obs} rows)")
        self.unit = index.unit
        self.spot_diameter = index.spot_diameter
        self.microns_per_unit = index.microns_per_unit

    @property
    def version(self) -> str:
        """A token that changes whenever a new ingest replaces the store or its ``obs`` table is rewritten.

        The ingest uuid alone is not enough for caches keyed on it: ``ds.write()`` rewrites ``obs`` (a new
        column, or new values under an old name) as a new ``obs`` element whose metadata file is a new
        file (a new inode); a commit that leaves ``obs`` alone hard-links its files into the new table, so
        the inode stays (:mod:`stdask.store.commit`). Matrices are read by path, so a rewritten layer is read
        afresh under any version.
        """
        st = os.stat(self.path / TABLE_PATH / "obs" / "zarr.json")
        return f"{self.uuid}-{st.st_ino}-{st.st_mtime_ns}"

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
        return np.asarray(read_checked(self.table["obsm"]["spatial"]), dtype=np.float64)

    # --- elements -----------------------------------------------------------------------------
    def keys(self, slot: str) -> list[str]:
        """Names stored in ``slot`` (for ``obs``: its columns), in the store's order."""
        if slot == "obs":
            return list(self.table["obs"].attrs.get("column-order", []))
        return list(self.table[slot].keys()) if slot in self.table else []

    def has(self, slot: str, key: str) -> bool:
        """Whether ``slot[key]`` is stored (``slot=""``: a member of the table itself, e.g. ``X``)."""
        if slot == "obs":
            return key in self.keys("obs")
        if slot == "":  # the table's own members: X, obs, var, ...
            return key in self.table
        return slot in self.table and key in self.table[slot]

    def _node(self, slot: str, key: str):
        if not self.has(slot, key):
            raise KeyError(f"no {slot}[{key!r}] in {self.path}")
        return child(self.table, f"{slot}/{key}" if slot else key)

    def read(self, slot: str, key: str) -> Any:
        """A stored element (an ``obs`` column, or a whole element of another slot), read into memory."""
        if slot == "obs":
            return self.obs[key]
        return read_elem(self.table[slot], key)

    def _spec(self, node, slot: str, key: str) -> IOSpec:
        """The element's encoding, refused unless this stdask reads it."""
        spec = spec_of(node)
        where = _where(self.table, f"{slot}/{key}" if slot else key)
        return REGISTRY.check(where, spec and spec.encoding, spec and spec.version)

    def element_info(self, slot: str, key: str) -> ElementInfo:
        """Encoding, shape, dtype and entries of ``slot[key]`` (``slot=""``, ``key="X"`` for the counts)."""
        node = self._node(slot, key)
        spec = self._spec(node, slot, key)
        if spec == CSR_MATRIX:
            return ElementInfo(slot, key, spec, tuple(int(v) for v in node.attrs["shape"]),
                               child(node, "data").dtype,
                               int(read_checked(child(node, "indptr"), slice(-1, None))[0]))
        if spec == ARRAY:
            return ElementInfo(slot, key, spec, tuple(int(v) for v in node.shape), node.dtype)
        if spec == DATAFRAME:
            columns = tuple(node.attrs.get("column-order", []))
            n = int(node[node.attrs["_index"]].shape[0])
            return ElementInfo(slot, key, spec, (n, len(columns)), columns=columns)
        return ElementInfo(slot, key, spec)

    def column(self, slot: str, key: str, j: int, fill: float = 0.0, rows_per_read: int = 1 << 18) -> np.ndarray:
        """(n_rows,) float64 column ``j`` of the stored matrix ``slot[key]``, read in row blocks (memory: one
        block). For a CSR element, rows that store no entry in column ``j`` get ``fill``."""
        info = self.element_info(slot, key)
        g = self._node(slot, key)
        if info.kind == "dense":
            return np.asarray(read_checked(g, (slice(None), j)), dtype=np.float64).ravel()
        if info.kind != "csr":
            raise TypeError(f"{self.path}: {slot}[{key!r}] is a {info.spec.encoding!r} element, not a matrix")
        indptr = g["indptr"]
        n = indptr.shape[0] - 1
        out = np.full(n, fill, dtype=np.float64)
        for a in range(0, n, rows_per_read):
            b = min(n, a + rows_per_read)
            ip = np.asarray(read_checked(indptr, slice(a, b + 1)), dtype=np.int64)
            lo, hi = int(ip[0]), int(ip[-1])
            if hi == lo:
                continue
            hit = np.flatnonzero(read_checked(g["indices"], slice(lo, hi)) == j)
            if len(hit):
                rows = np.searchsorted(ip, hit + lo, side="right") - 1
                out[a + rows] = read_checked(g["data"], slice(lo, hi))[hit]
        return out

    def result_rows(self, slot: str, key: str, start: int, stop: int) -> sp.csr_matrix:
        """Rows ``start:stop`` of the stored CSR element ``slot[key]`` (one contiguous read per array)."""
        info = self.element_info(slot, key)
        if info.kind != "csr":
            raise TypeError(f"{self.path}: {slot}[{key!r}] is a {info.spec.encoding!r} element, not a CSR matrix")
        return read_csr_range(self._node(slot, key), start, stop, info.shape[1])

    def row_counts(self, slot: str, key: str) -> np.ndarray:
        """(n_rows,) int64 stored entries per row of the CSR element ``slot[key]``; only its ``indptr`` is read."""
        info = self.element_info(slot, key)
        if info.kind != "csr":
            raise TypeError(f"{self.path}: {slot}[{key!r}] is a {info.spec.encoding!r} element, not a CSR matrix")
        return np.diff(np.asarray(read_checked(self._node(slot, key)["indptr"]), dtype=np.int64))

    def dense_array(self, slot: str, key: str) -> CheckedArray:
        """The dense (``array``) matrix element, for lazy reading (``dask.array.from_array(a, chunks=a.chunks)``);
        its reads refuse missing or damaged chunks."""
        info = self.element_info(slot, key)
        if info.kind != "dense":
            raise TypeError(f"{self.path}: {slot}[{key!r}] is a {info.spec.encoding!r} element, not a dense array")
        return CheckedArray(self._node(slot, key))

    def read_table(self):
        """The whole table as an in-memory AnnData (read by ``anndata.read_zarr``), refused with the element and
        chunk named if a recorded chunk is missing or damaged."""
        import anndata as ad

        return read_whole(self.table, lambda node: ad.read_zarr(str(self.path / TABLE_PATH)))

    # --- matrices -----------------------------------------------------------------------------
    def matrix_names(self) -> list[str]:
        """``X`` and the CSR layers."""
        names = ["X"]
        if "layers" in self.table:
            names += sorted(k for k in self.table["layers"].group_keys())
        return names

    def matrix_info(self, name: str) -> ElementInfo:
        """:class:`ElementInfo` of ``X`` or of a stored layer (CSR or dense)."""
        if name == "X":
            return self.element_info("", "X")
        try:
            return self.element_info("layers", name)
        except KeyError:
            raise KeyError(f"{self.path}: no matrix {name!r}; available: {self.matrix_names()}") from None

    def matrix_dtype(self, name: str) -> np.dtype:
        """Value dtype of the CSR matrix ``name`` (metadata only, unlike :meth:`matrix_info`'s entry count)."""
        return self._csr_group(name)["data"].dtype

    def _csr_group(self, name: str) -> zarr.Group:
        g = self._csr.get(name)
        if g is None:
            slot = "" if name == "X" else "layers"
            if name != "X" and not self.has(slot, name):
                raise KeyError(f"{self.path}: no matrix {name!r}; available: {self.matrix_names()}")
            g = self._node(slot, name)
            for part in ("indptr", "indices", "data"):  # their metadata parses, or the error names the file
                child(g, part)
            spec = self._spec(g, slot, name)
            if spec != CSR_MATRIX:
                raise KeyError(f"{self.path}: no CSR matrix {name!r} (it is a {spec.encoding!r} element); "
                               f"CSR matrices: {self.matrix_names()}")
            self._csr[name] = g
        return g

    # --- rows ---------------------------------------------------------------------------------
    def read_rows(self, start: int, stop: int, name: str = "X") -> sp.csr_matrix:
        """Rows ``start:stop`` of a matrix as a CSR (int32 indices), one contiguous read per array."""
        return read_csr_range(self._csr_group(name), start, stop, self.n_vars)

    def read_tile_rows(self, t0: int, t1: int, name: str = "X") -> sp.csr_matrix:
        """All rows of tiles ``t0:t1``."""
        return self.read_rows(int(self.tile_row_start[t0]), int(self.tile_row_start[t1]), name)


__all__ = ["STORE", "SLOTS", "ElementInfo", "StoreReader", "open_root", "read_elem", "read_whole"]
