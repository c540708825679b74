"""AnnData ``.h5ad`` reader (files as scanpy and stLearn users keep them).

The small parts (obs, var, obsm, ``uns['spatial']``) are read with anndata's element readers, which
keep categoricals and every encoding anndata knows; ``X`` and ``layers`` are streamed from HDF5 by
row ranges (CSR, dense) or column ranges (CSC) so a file larger than memory can be ingested.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import h5py
import numpy as np
import pandas as pd

from stdask.io.base import COUNT_MAX, EntryChunk, InputError, TableSource, register_source
from stdask.io.hdf5 import open_hdf5, pointer_ranges

__all__ = ["H5adSource", "IMAGE_COLUMNS", "library_spot_diameter"]



#: stLearn's per-observation coordinates x, y: full-resolution pixels times ``tissue_<use_quality>_scalef``
IMAGE_COLUMNS = ("imagecol", "imagerow")


def library_spot_diameter(uns_spatial: dict | None, image_units: bool) -> float | None:
    """Spot diameter of the first library of ``uns['spatial']`` (scanpy / stLearn layout), if it records one.

    Parameters
    ----------
    uns_spatial
        ``uns['spatial']``: library id -> ``{"scalefactors": {...}, "use_quality": ...}``.
    image_units
        Coordinates are stLearn's image pixels (:data:`IMAGE_COLUMNS`): the diameter is
        ``spot_diameter_fullres * tissue_<use_quality>_scalef`` (stLearn's ``distance=None`` basis). Otherwise
        full-resolution pixels: ``spot_diameter_fullres``.
    """
    if not isinstance(uns_spatial, dict) or not uns_spatial:
        return None
    lib = next(iter(uns_spatial.values()))
    if not isinstance(lib, dict):
        return None
    sf = lib.get("scalefactors") or {}
    if "spot_diameter_fullres" not in sf:
        return None
    fullres = float(sf["spot_diameter_fullres"])
    if not image_units:
        return fullres
    quality = lib.get("use_quality", "hires")
    quality = quality.decode() if isinstance(quality, bytes) else str(quality)
    return fullres * float(sf.get(f"tissue_{quality}_scalef", 1.0))


def _read_elem(elem: h5py.Group | h5py.Dataset) -> Any:
    try:
        from anndata.io import read_elem
    except ImportError:  # anndata < 0.11
        from anndata.experimental import read_elem  # type: ignore[no-redef]
    return read_elem(elem)


def _encoding(elem: h5py.Group | h5py.Dataset) -> str:
    """anndata encoding of an element: ``csr_matrix``, ``csc_matrix``, ``array``, ``dataframe``...

    Files from anndata < 0.7 carry no ``encoding-type``; their sparse matrices say ``h5sparse_format``.
    """
    enc = elem.attrs.get("encoding-type")
    if isinstance(enc, bytes):
        enc = enc.decode()
    if enc:
        return str(enc)
    legacy = elem.attrs.get("h5sparse_format")
    if legacy is not None:
        legacy = legacy.decode() if isinstance(legacy, bytes) else str(legacy)
        return f"{legacy}_matrix"
    return "array" if isinstance(elem, h5py.Dataset) else "dict"


class _H5Matrix:
    """One obs x var matrix of an h5ad (``X`` or a layer) streamed as (row, gene, value) entries."""

    def __init__(self, path: Path, key: str, elem: h5py.Group | h5py.Dataset, n_obs: int, n_vars: int) -> None:
        self.path, self.key = path, key
        self.encoding = _encoding(elem)
        if self.encoding in ("csr_matrix", "csc_matrix"):
            if not isinstance(elem, h5py.Group) or not {"data", "indices", "indptr"} <= set(elem):
                raise InputError(f"{path}: {key} is marked {self.encoding} but lacks data/indices/indptr")
            shape = elem.attrs.get("shape", elem.attrs.get("h5sparse_shape"))
            self.disk_dtype = elem["data"].dtype
        elif self.encoding == "array" and isinstance(elem, h5py.Dataset):
            shape = elem.shape
            self.disk_dtype = elem.dtype
        else:
            raise InputError(f"{path}: {key} has encoding {self.encoding!r}; readable: csr_matrix, csc_matrix, "
                             f"dense array")
        if shape is None or tuple(int(s) for s in shape) != (n_obs, n_vars):
            raise InputError(f"{path}: {key} has shape {None if shape is None else tuple(shape)}, but obs x var "
                             f"is ({n_obs}, {n_vars})")
        if self.disk_dtype.kind not in "biuf":
            raise InputError(f"{path}: {key} has dtype {self.disk_dtype}; expected numbers")
        self.n_obs, self.n_vars = n_obs, n_vars
        self.nnz = int(elem["data"].shape[0]) if isinstance(elem, h5py.Group) else None

    @property
    def value_dtype(self) -> np.dtype:
        """uint32 when stored as integers (or bools), float32 otherwise."""
        return np.dtype(np.uint32) if self.disk_dtype.kind in "biu" else np.dtype(np.float32)

    def iter_entries(self, f: h5py.File, chunk_size: int, obs_names: pd.Index,
                     var_names: pd.Index) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Yield ``(row int64, gene int32, value)`` with ``value`` in :attr:`value_dtype`, zeros dropped."""
        elem = f[self.key]
        if self.encoding == "array":
            rows_per = max(1, chunk_size // max(self.n_vars, 1))
            for r0 in range(0, self.n_obs, rows_per):
                block = elem[r0:r0 + rows_per]
                row, gene = np.nonzero(block)
                values = block[row, gene]
                yield from self._finish(row.astype(np.int64) + r0, gene, values, obs_names, var_names)
            return
        major_is_row = self.encoding == "csr_matrix"
        n_major = self.n_obs if major_is_row else self.n_vars
        n_minor = self.n_vars if major_is_row else self.n_obs
        indptr = elem["indptr"][()].astype(np.int64)  # (n_major + 1,): small, plans the ranges
        if len(indptr) != n_major + 1 or indptr[0] != 0 or (np.diff(indptr) < 0).any() \
                or indptr[-1] != elem["data"].shape[0]:
            raise InputError(f"{self.path}: {self.key}/indptr is not a valid pointer over {n_major} "
                             f"{'rows' if major_is_row else 'columns'} and {elem['data'].shape[0]} entries")
        data, indices = elem["data"], elem["indices"]
        for m0, m1, a, b in pointer_ranges(indptr, chunk_size):
            minor = indices[a:b].astype(np.int64)
            bad = (minor < 0) | (minor >= n_minor)
            if bad.any():
                k = int(np.argmax(bad))
                raise InputError(f"{self.path}: {self.key}/indices[{a + k}] = {minor[k]} is out of range "
                                 f"0..{n_minor - 1}")
            major = np.repeat(np.arange(m0, m1, dtype=np.int64), np.diff(indptr[m0:m1 + 1]))
            row, gene = (major, minor) if major_is_row else (minor, major)
            yield from self._finish(row, gene, data[a:b], obs_names, var_names)

    def _finish(self, row: np.ndarray, gene: np.ndarray, values: np.ndarray, obs_names: pd.Index,
                var_names: pd.Index) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        def where(k: int) -> str:
            return f"{self.path}: {self.key}[{obs_names[row[k]]!r}, {var_names[gene[k]]!r}]"

        kind = values.dtype.kind
        if kind == "f":
            finite = np.isfinite(values)
            if not finite.all():
                k = int(np.argmax(~finite))
                raise InputError(f"{where(k)} is {values[k]}; values must be finite")
            out = values.astype(np.float32)
        else:
            if kind == "i" and (values < 0).any():
                k = int(np.argmax(values < 0))
                raise InputError(f"{where(k)} is {values[k]}; integer counts must be >= 0")
            if kind in "iu" and values.size and values.max() > COUNT_MAX:
                k = int(np.argmax(values > COUNT_MAX))
                raise InputError(f"{where(k)} is {values[k]}; counts above {COUNT_MAX} are not supported")
            out = values.astype(np.uint32)
        keep = out != 0
        if not keep.all():
            row, gene, out = row[keep], gene[keep], out[keep]
        if len(out):
            yield row, gene.astype(np.int32), out


@register_source
class H5adSource(TableSource):
    """AnnData ``.h5ad`` file: observations x genes with coordinates.

    Parameters
    ----------
    path
        The ``.h5ad`` file.
    coords
        Where the coordinates come from: ``"auto"`` (default: ``obsm[spatial_key]`` if present,
        else stLearn's ``obs['imagecol']`` / ``obs['imagerow']``), ``"obsm"`` or ``"imagecol"``.
    spatial_key
        The ``obsm`` key holding (n_obs, >= 2) x, y (default ``"spatial"``).
    layers
        Stream ``layers`` too: True (all, default), False, or a list of layer names.

    Notes
    -----
    ``X`` and each layer stream as :class:`EntryChunk` (``layer`` = None for ``X``). Values are uint32
    when stored as integers on disk (negative values are an error) and float32 otherwise; a float
    matrix holding whole numbers (raw counts saved as float32) stays float32.

    :attr:`spot_diameter` (unit ``"pixel"``) comes from the first library of ``uns['spatial']``,
    in the units of the coordinates used: stLearn's ``imagecol`` / ``imagerow`` are full-resolution
    pixels times ``tissue_<use_quality>_scalef``, so with them the diameter is
    ``spot_diameter_fullres * tissue_<use_quality>_scalef`` (stLearn's ``distance=None`` basis; its
    default neighbourhood radius is twice this). ``obsm['spatial']`` is normally full-resolution
    pixels (scanpy, squidpy), giving ``spot_diameter_fullres``; when the file also has ``imagecol``,
    the two are compared to tell which scale ``obsm['spatial']`` is in.

    ``obs`` (all columns, categoricals kept), ``var``, dense ``obsm`` arrays (:attr:`obsm`, read on
    access) and ``uns['spatial']`` are kept; other ``uns`` entries, ``obsp``, ``varm`` and ``raw`` are not.
    """

    format_name = "h5ad"
    kind = "obs"
    suffixes = (".h5ad",)

    def __init__(self, path: str | Path, *, coords: str = "auto", spatial_key: str = "spatial",
                 layers: bool | list[str] = True) -> None:
        super().__init__(path, coords=coords, spatial_key=spatial_key, layers=layers)
        if coords not in ("auto", "obsm", "imagecol"):
            raise ValueError(f"coords must be 'auto', 'obsm' or 'imagecol', not {coords!r}")
        self._spatial_key = spatial_key
        with open_hdf5(self.path, "h5ad") as f:
            for key in ("obs", "var"):
                if key not in f:
                    raise InputError(f"{self.path}: no {key!r} (not an AnnData file); top-level keys: {', '.join(f)}")
            if "encoding-type" in f["obs"].attrs:
                obs, var = _read_elem(f["obs"]), _read_elem(f["var"])
                uns_spatial = _read_elem(f["uns/spatial"]) if "uns/spatial" in f else None
            else:  # anndata < 0.7 layout: let anndata convert it
                import anndata

                legacy = anndata.read_h5ad(self.path, backed="r")
                obs, var = legacy.obs.copy(), legacy.var.copy()
                uns_spatial = legacy.uns.get("spatial")
                legacy.file.close()
            self._obs = self._checked_frame(obs, "obs")
            self._var = self._checked_frame(var, "var")
            n_obs, n_vars = len(self._obs), len(self._var)
            if "X" not in f:
                raise InputError(f"{self.path}: no X matrix")
            self._x = _H5Matrix(self.path, "X", f["X"], n_obs, n_vars)
            self._layers: dict[str, _H5Matrix] = {}
            if layers and "layers" in f:
                names = list(f["layers"]) if layers is True else list(layers)
                for name in names:
                    if name not in f["layers"]:
                        raise InputError(f"{self.path}: no layer {name!r}; layers: {', '.join(f['layers'])}")
                    self._layers[name] = _H5Matrix(self.path, f"layers/{name}", f["layers"][name], n_obs, n_vars)
            self._obsm_keys = []
            if "obsm" in f:
                for key, elem in f["obsm"].items():
                    if key != spatial_key and isinstance(elem, h5py.Dataset) and _encoding(elem) == "array" \
                            and elem.ndim >= 1 and elem.shape[0] == n_obs and elem.dtype.kind in "biuf":
                        self._obsm_keys.append(key)
            spatial = None
            if f"obsm/{spatial_key}" in f:
                elem = f[f"obsm/{spatial_key}"]
                spatial = _read_elem(elem) if isinstance(elem, h5py.Group) else elem[()]
                spatial = np.asarray(spatial.to_numpy() if isinstance(spatial, pd.DataFrame) else spatial)
        self._uns_spatial = uns_spatial if isinstance(uns_spatial, dict) else None
        self._coords, self._coord_source, self._obsm_scaled = self._pick_coords(spatial, coords)

    def _checked_frame(self, frame: pd.DataFrame, what: str) -> pd.DataFrame:
        frame = frame.copy()
        frame.index = pd.Index(frame.index.astype(str), dtype=object)
        frame.index.name = None
        if not frame.index.is_unique:
            dup = frame.index[frame.index.duplicated()][0]
            raise InputError(f"{self.path}: {what} name {dup!r} appears more than once; make the names unique "
                             f"(e.g. {what}_names_make_unique()) before ingesting")
        return frame

    def _pick_coords(self, spatial: np.ndarray | None, mode: str) -> tuple[np.ndarray, str, bool]:
        """(n_obs, 2) float64 coordinates, where they came from, and whether obsm is in image-scaled pixels."""
        col, row = IMAGE_COLUMNS
        has_image = {col, row} <= set(self._obs.columns)
        if spatial is not None and (spatial.ndim != 2 or spatial.shape[0] != len(self._obs) or spatial.shape[1] < 2):
            raise InputError(f"{self.path}: obsm[{self._spatial_key!r}] has shape {spatial.shape}; expected "
                             f"({len(self._obs)}, 2)")
        if mode == "obsm" and spatial is None:
            raise InputError(f"{self.path}: no obsm[{self._spatial_key!r}]")
        if mode == "imagecol" and not has_image:
            raise InputError(f"{self.path}: no obs['imagecol'] / obs['imagerow']")
        if spatial is not None and mode != "imagecol":
            xy, source = spatial[:, :2].astype(np.float64), f"obsm['{self._spatial_key}']"
        elif has_image:
            xy = np.column_stack([pd.to_numeric(self._obs[col], errors="coerce").to_numpy(dtype=np.float64),
                                  pd.to_numeric(self._obs[row], errors="coerce").to_numpy(dtype=np.float64)])
            source = "obs['imagecol'], obs['imagerow']"
        else:
            raise InputError(f"{self.path}: no coordinates: looked for obsm[{self._spatial_key!r}] and for "
                             f"obs['imagecol'] with obs['imagerow'] (stLearn)")
        bad = ~np.isfinite(xy).all(axis=1)
        if bad.any():
            i = int(np.argmax(bad))
            raise InputError(f"{self.path}: {source}: observation {self._obs.index[i]!r} has coordinate "
                             f"({float(xy[i, 0])}, {float(xy[i, 1])}) (NaN coordinate: x and y must be finite numbers; "
                             f"{int(bad.sum())} observation(s) in all); remove or fix them before ingest")
        obsm_scaled = False
        if source.startswith("obsm") and has_image:
            image = self._obs[list(IMAGE_COLUMNS)].to_numpy(dtype=np.float64)
            obsm_scaled = bool(np.allclose(xy, image, rtol=1e-6, atol=1e-6))
        return xy, source, obsm_scaled

    # --- metadata -------------------------------------------------------------------------------
    @property
    def unit(self) -> str:
        return "pixel"

    @property
    def spot_diameter(self) -> float | None:
        image_units = self._coord_source.startswith("obs[") or self._obsm_scaled
        return library_spot_diameter(self._uns_spatial, image_units)

    @property
    def coordinate_source(self) -> str:
        """Where :attr:`coords` was read from (``obsm['spatial']`` or ``obs['imagecol'], obs['imagerow']``)."""
        return self._coord_source

    @property
    def uns(self) -> dict:
        return {} if self._uns_spatial is None else {"spatial": self._uns_spatial}

    @property
    def value_dtype(self) -> np.dtype:
        return self._x.value_dtype

    @property
    def var(self) -> pd.DataFrame:
        return self._var.copy()

    @property
    def layers(self) -> dict[str, np.dtype]:
        return {name: m.value_dtype for name, m in self._layers.items()}

    @property
    def obsm(self) -> dict[str, np.ndarray]:
        """Dense obsm arrays other than the coordinates, read now (n_obs rows each)."""
        with h5py.File(self.path, "r") as f:
            return {key: f["obsm"][key][()] for key in self._obsm_keys}

    @property
    def size_hint(self) -> int | None:
        sizes = [m.nnz for m in (self._x, *self._layers.values())]
        return None if any(s is None for s in sizes) else int(sum(sizes))  # type: ignore[arg-type]

    def iter_entries(self, chunk_size: int = 2_000_000) -> Iterator[EntryChunk]:
        """Stream ``X`` then each layer.

        Yields
        ------
        EntryChunk
            row (n,) int64, gene (n,) int32, value (n,) uint32 or float32 (:attr:`value_dtype` for
            ``X``, :attr:`layers` for layers), zeros dropped; ``layer`` None for ``X``.
        """
        with h5py.File(self.path, "r") as f:
            for name, matrix in [(None, self._x), *self._layers.items()]:
                for row, gene, value in matrix.iter_entries(f, chunk_size, self._obs.index, self._var.index):
                    yield EntryChunk(row=row, gene=gene, value=value, layer=name)
