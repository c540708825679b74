"""10x Visium (Space Ranger ``outs/``) reader, and the 10x feature-barcode HDF5 matrix it uses.

Layout read::

    outs/
      filtered_feature_bc_matrix.h5          (or the filtered_feature_bc_matrix/ MTX folder)
      spatial/tissue_positions.csv           (Space Ranger >= 2: header) or tissue_positions_list.csv
      spatial/scalefactors_json.json
      spatial/tissue_{hires,lowres}_image.png (optional)

Coordinates follow scanpy's ``read_visium``: x = ``pxl_col_in_fullres``, y = ``pxl_row_in_fullres``,
in full-resolution image pixels.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterator

import h5py
import numpy as np
import pandas as pd

from stdask.io.base import COUNT_MAX, EntryChunk, InputError, TableSource, make_unique, register_source
from stdask.io.hdf5 import decode_strings, open_hdf5, pointer_ranges
from stdask.io.mtx import GEX, TenxMatrix, TenxMtxMatrix
from stdask.io.text import first_duplicate, rows_for_barcodes

__all__ = ["VisiumSource", "TenxH5Matrix", "read_positions", "read_scalefactors", "read_images", "store_images", "SpaceRangerImages", "library_uns",
           "default_library_id", "POSITION_COLUMNS"]

#: diameter of a Visium (v1/v2/CytAssist 6.5 mm) capture spot, um
VISIUM_SPOT_UM = 55.0
#: a Visium HD resolution's folder under outs/binned_outputs/ (bin side in um): read by stdask.io.visium_hd
HD_BIN_FOLDER = re.compile(r"square_(\d{3})um")
#: columns of spatial/tissue_positions.csv (the header Space Ranger >= 2 writes)
POSITION_COLUMNS = ["barcode", "in_tissue", "array_row", "array_col", "pxl_row_in_fullres", "pxl_col_in_fullres"]


def _strings(dset: h5py.Dataset) -> list[str]:
    return decode_strings(dset[()])


class TenxH5Matrix(TenxMatrix):
    """A Cell Ranger / Space Ranger feature-barcode matrix HDF5 (``matrix/``, CSC by barcode).

    Parameters
    ----------
    path
        The ``.h5`` file (format of Cell Ranger >= 3: ``matrix/{data, indices, indptr, shape,
        barcodes, features/{id, name, feature_type}}``).
    gex_only
        Keep only ``Gene Expression`` features (scanpy's ``read_10x_h5`` default).
    barcode_index
        Keep the barcodes as a ``pd.Index`` of Python strings, checked unique (default). ``False`` keeps only
        :attr:`barcode_bytes`, the dataset's fixed-width bytes (about 25 bytes a barcode instead of about 80): a
        Visium HD 2 um matrix has 10^6-10^7 barcodes, and its reader checks their uniqueness through integer keys.
    """

    barcodes: pd.Index | None
    barcode_bytes: np.ndarray | None

    def __init__(self, path: Path, *, gex_only: bool = True, barcode_index: bool = True) -> None:
        self.path = path
        with open_hdf5(path) as f:
            if "matrix" not in f:
                raise InputError(f"{path}: no 'matrix' group (only the Cell Ranger >= 3 layout is read); "
                                 f"top-level keys: {', '.join(f)}")
            m = f["matrix"]
            for key in ("data", "indices", "indptr", "shape", "barcodes", "features"):
                if key not in m:
                    raise InputError(f"{path}: matrix/{key} is missing")
            n_features, n_barcodes = (int(v) for v in m["shape"][()])
            raw = m["barcodes"][()]
            if barcode_index:
                self.barcodes, self.barcode_bytes = pd.Index(decode_strings(raw), dtype=object), None
            else:
                self.barcodes = None
                self.barcode_bytes = (raw if raw.dtype.kind == "S" else
                                      np.char.encode(np.asarray(decode_strings(raw), dtype=str), "utf-8"))
            del raw
            n_read = len(self.barcode_bytes if self.barcodes is None else self.barcodes)
            feats = m["features"]
            ids = _strings(feats["id"])
            names = _strings(feats["name"]) if "name" in feats else ids
            types = _strings(feats["feature_type"]) if "feature_type" in feats else [GEX] * len(ids)
            if len(ids) != n_features:
                raise InputError(f"{path}: matrix/features has {len(ids)} features but matrix/shape says {n_features}")
            if n_read != n_barcodes:
                raise InputError(f"{path}: matrix/barcodes has {n_read} barcodes but matrix/shape says {n_barcodes}")
            if self.barcodes is not None and not self.barcodes.is_unique:
                raise InputError(f"{path}: matrix/barcodes: barcode {first_duplicate(self.barcodes)!r} appears "
                                 f"more than once")
            self.nnz = int(m["data"].shape[0])
            if m["indices"].shape[0] != self.nnz:
                raise InputError(f"{path}: matrix/indices has {m['indices'].shape[0]} entries, matrix/data {self.nnz}")
            # (n_barcodes + 1,) int64: small next to the entries, read whole to plan the ranges
            self._indptr = m["indptr"][()].astype(np.int64)
            ip = self._indptr
            if len(ip) != n_barcodes + 1 or ip[0] != 0 or ip[-1] != self.nnz or (np.diff(ip) < 0).any():
                raise InputError(f"{path}: matrix/indptr is not a valid CSC pointer over {n_barcodes} barcodes "
                                 f"and {self.nnz} entries")
            self.attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
            genome = _strings(feats["genome"]) if "genome" in feats else None
        self.n_genes = n_features
        var = pd.DataFrame({"gene_ids": ids, "feature_types": types}, index=make_unique(names))
        if genome is not None:
            var["genome"] = genome
        self._keep_features(var, np.asarray(types, dtype=object), gex_only, path)

    @property
    def library_ids(self) -> list[str]:
        ids = self.attrs.get("library_ids")
        if ids is None:
            return []
        return [v.decode() if isinstance(v, bytes) else str(v) for v in np.atleast_1d(ids)]

    def iter_entries(self, chunk_size: int = 2_000_000) -> Iterator[EntryChunk]:
        """Stream the entries (see :meth:`TenxMatrix.iter_entries`) by barcode ranges of about ``chunk_size``."""
        ip = self._indptr
        with h5py.File(self.path, "r") as f:
            data, indices = f["matrix/data"], f["matrix/indices"]
            for b0, b1, a, b in pointer_ranges(ip, chunk_size):
                value = data[a:b]
                gene = indices[a:b].astype(np.int64)
                bad = (gene < 0) | (gene >= self.n_genes)
                if bad.any():
                    k = int(np.argmax(bad))
                    raise InputError(f"{self.path}: matrix/indices[{a + k}] = {gene[k]} is out of range "
                                     f"0..{self.n_genes - 1}")
                if value.dtype.kind == "f":
                    nonint = ~np.isfinite(value) | (value != np.round(value))
                    if nonint.any():
                        k = int(np.argmax(nonint))
                        raise InputError(f"{self.path}: matrix/data[{a + k}] = {value[k]} is not a whole count")
                if value.dtype.kind in "if" and (value < 0).any():
                    k = int(np.argmax(value < 0))
                    raise InputError(f"{self.path}: matrix/data[{a + k}] = {value[k]}; counts must be >= 0")
                if value.dtype.kind in "iuf" and value.size and value.max() > COUNT_MAX:
                    k = int(np.argmax(value > COUNT_MAX))
                    raise InputError(f"{self.path}: matrix/data[{a + k}] = {value[k]} exceeds {COUNT_MAX}")
                row = np.repeat(np.arange(b0, b1, dtype=np.int64), np.diff(ip[b0:b1 + 1]))
                keep = value > 0
                if not self._all_kept:
                    keep &= self._gene_lut[gene] >= 0
                if not keep.all():
                    row, gene, value = row[keep], gene[keep], value[keep]
                if len(row):
                    yield EntryChunk(row=row, gene=self._gene_lut[gene], value=value.astype(np.uint32))


def _outs_folder(path: Path) -> Path:
    """``path`` itself, or ``path/outs`` when given the Space Ranger run folder."""
    if not (path / "spatial").is_dir() and (path / "outs" / "spatial").is_dir():
        return path / "outs"
    return path


def read_scalefactors(path: Path) -> dict[str, float]:
    """The numeric entries of a Space Ranger ``scalefactors_json.json`` (``{}`` when the file is absent)."""
    if not path.is_file():
        return {}
    try:
        return {k: float(v) for k, v in json.loads(path.read_text()).items()
                if isinstance(v, (int, float))}
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not valid JSON ({exc})") from None


def read_images(folders: list[Path]) -> dict[str, np.ndarray]:
    """``tissue_{hires,lowres}_image.png`` as (h, w, 3 or 4) float32 RGB(A) in [0, 1] (as scanpy keeps them), each
    from the first of ``folders`` that holds it; qualities without a file are left out."""
    images: dict[str, np.ndarray] = {}
    for quality in ("hires", "lowres"):
        img = next((d / f"tissue_{quality}_image.png" for d in folders
                    if (d / f"tissue_{quality}_image.png").is_file()), None)
        if img is not None:
            from matplotlib.image import imread

            images[quality] = np.asarray(imread(img), dtype=np.float32)
    return images


def store_images(images: dict[str, np.ndarray], scalefactors: dict[str, float],
                 library_id: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The ``tissue_<quality>_image.png`` images as :attr:`Source.images`: ``<library_id>_<quality>_image`` ->
    ((C, H, W) float32, the (3, 3) scale ``1 / tissue_<quality>_scalef`` from image pixels to full-resolution
    pixels, the store's unit); an image without its scale factor is left out."""
    out = {}
    for quality, img in images.items():
        scale = scalefactors.get(f"tissue_{quality}_scalef")
        if scale:
            chw = np.moveaxis(np.asarray(img, np.float32)[..., :3], -1, 0) if img.ndim == 3 else img[None]
            out[f"{library_id}_{quality}_image"] = (np.ascontiguousarray(chw), np.diag([1 / scale, 1 / scale, 1.0]))
    return out


class SpaceRangerImages:
    """:attr:`Source.images` of a Space Ranger source holding ``_images``, ``_scalefactors`` and ``library_id``."""

    _images: dict[str, np.ndarray]
    _scalefactors: dict[str, float]
    library_id: str

    @property
    def images(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """The hires / lowres tissue images, scaled to full-resolution pixels (:func:`store_images`)."""
        return store_images(self._images, self._scalefactors, self.library_id)


def default_library_id(matrix: TenxMatrix, outs: Path) -> str:
    """The h5's first ``library_ids`` attribute, else the run folder's name (the folder holding ``outs/``)."""
    ids = matrix.library_ids if isinstance(matrix, TenxH5Matrix) else []
    return ids[0] if ids else (outs.parent.name if outs.name == "outs" else outs.name)


def library_uns(images: dict[str, np.ndarray], scalefactors: dict[str, float], matrix: TenxMatrix) -> dict[str, Any]:
    """One library's ``uns['spatial'][library_id]`` entry as scanpy's ``read_visium`` writes it: images,
    scalefactors, ``use_quality`` and the h5's chemistry / software version as ``metadata``."""
    lib: dict[str, Any] = {"images": dict(images), "scalefactors": dict(scalefactors), "use_quality": "hires"}
    if isinstance(matrix, TenxH5Matrix):
        meta = {k: str(matrix.attrs[k]) for k in ("chemistry_description", "software_version") if k in matrix.attrs}
        if meta:
            lib["metadata"] = meta
    return lib


def read_positions(spatial: Path, barcodes: pd.Index) -> pd.DataFrame:
    """Spot positions for the matrix barcodes, in matrix order.

    Returns
    -------
    DataFrame indexed like ``barcodes`` with in_tissue, array_row, array_col (int64) and
    pxl_row_in_fullres, pxl_col_in_fullres (float64).
    """
    new, old = spatial / "tissue_positions.csv", spatial / "tissue_positions_list.csv"
    if new.is_file():
        path, table = new, pd.read_csv(new, dtype={"barcode": str})
        missing = [c for c in POSITION_COLUMNS if c not in table.columns]
        if missing:
            raise InputError(f"{path}: no column(s) {', '.join(missing)}; columns found: {', '.join(table.columns)}")
    elif old.is_file():
        path, table = old, pd.read_csv(old, header=None, dtype={0: str})
        if table.shape[1] != 6:
            raise InputError(f"{path}: {table.shape[1]} columns; expected 6 ({', '.join(POSITION_COLUMNS)})")
        table.columns = POSITION_COLUMNS
    else:
        raise InputError(f"{spatial}: no tissue_positions.csv or tissue_positions_list.csv")
    table = table.set_index("barcode")
    table.index = pd.Index(table.index.astype(str), dtype=object)
    table = rows_for_barcodes(table, barcodes, path, "position")
    out = pd.DataFrame(index=barcodes)
    for col in POSITION_COLUMNS[1:]:
        num = pd.to_numeric(table[col], errors="coerce").to_numpy(dtype=np.float64)
        bad = ~np.isfinite(num)
        if bad.any():
            i = int(np.argmax(bad))
            raise InputError(f"{path}: barcode {barcodes[i]!r}: {col} is {table[col].iloc[i]!r}; expected a number "
                             f"(NaN coordinate)")
        out[col] = num.astype(np.int64) if col in ("in_tissue", "array_row", "array_col") else num
    return out


@register_source
class VisiumSource(SpaceRangerImages, TableSource):
    """10x Visium: a Space Ranger ``outs/`` folder (or the run folder containing it): spots x genes.

    Parameters
    ----------
    path
        The ``outs`` folder (``spatial/`` plus the count matrix).
    count_file
        Matrix to read, relative to ``path``: default ``filtered_feature_bc_matrix.h5``, falling back
        to the ``filtered_feature_bc_matrix/`` MTX folder when the h5 is absent.
    library_id
        Key under ``uns['spatial']``; default the h5's ``library_ids`` attribute, else the folder name.
    gex_only
        Keep only ``Gene Expression`` features (default True, as scanpy).
    load_images
        Read ``spatial/tissue_{hires,lowres}_image.png`` into ``uns['spatial'][library_id]['images']``
        (float32 RGB in [0, 1], as scanpy) when present (default True).

    Notes
    -----
    Coordinates are full-resolution pixels (unit ``"pixel"``): x = ``pxl_col_in_fullres``,
    y = ``pxl_row_in_fullres``. :attr:`spot_diameter` is ``spot_diameter_fullres``. ``obs`` keeps
    in_tissue, array_row, array_col; only barcodes of the matrix are kept.
    """

    format_name = "visium"
    kind = "obs"
    shapes_name = "spots"

    @classmethod
    def detect(cls, path: Path) -> bool:
        if not path.is_dir():
            return False
        outs = _outs_folder(path)
        if HD_BIN_FOLDER.fullmatch(outs.name) or (outs / "binned_outputs").is_dir():
            return False  # Visium HD (stdask.io.visium_hd): a square_NNNum folder has spatial/ and a matrix too
        return (outs / "spatial").is_dir() and (
            (outs / "filtered_feature_bc_matrix.h5").is_file() or (outs / "filtered_feature_bc_matrix").is_dir()
            or (outs / "raw_feature_bc_matrix.h5").is_file()
        )

    def __init__(self, path: str | Path, *, count_file: str = "filtered_feature_bc_matrix.h5",
                 library_id: str | None = None, gex_only: bool = True, load_images: bool = True) -> None:
        super().__init__(path, count_file=count_file, library_id=library_id, gex_only=gex_only,
                         load_images=load_images)
        outs = _outs_folder(self.path)
        self._outs = outs
        spatial = outs / "spatial"
        if not spatial.is_dir():
            raise InputError(f"{outs}: no spatial/ folder (tissue positions and scale factors)")
        target = outs / count_file
        if target.is_file() and target.suffix == ".h5":
            self._matrix: TenxH5Matrix | TenxMtxMatrix = TenxH5Matrix(target, gex_only=gex_only)
        elif target.is_dir():
            self._matrix = TenxMtxMatrix(target, gex_only=gex_only)
        elif count_file.endswith(".h5") and (outs / count_file[:-3]).is_dir():
            self._matrix = TenxMtxMatrix(outs / count_file[:-3], gex_only=gex_only)
        else:
            raise InputError(f"{outs}: no {count_file} (nor a {count_file.removesuffix('.h5')}/ MTX folder)")
        self.library_id = library_id if library_id is not None else default_library_id(self._matrix, outs)
        positions = read_positions(spatial, self._matrix.barcodes)
        self._coords = np.column_stack([positions["pxl_col_in_fullres"].to_numpy(),
                                        positions["pxl_row_in_fullres"].to_numpy()]).astype(np.float64)
        self._obs = positions[["in_tissue", "array_row", "array_col"]].copy()
        self._scalefactors = read_scalefactors(spatial / "scalefactors_json.json")
        self._images = read_images([spatial]) if load_images else {}

    @property
    def unit(self) -> str:
        return "pixel"

    @property
    def spot_diameter(self) -> float | None:
        """``spot_diameter_fullres`` (full-resolution pixels), if the scale factors give it."""
        return self._scalefactors.get("spot_diameter_fullres")

    @property
    def microns_per_unit(self) -> float | None:
        """um per full-resolution pixel: Visium spots are 55 um across, ``spot_diameter_fullres`` pixels."""
        d = self.spot_diameter
        return VISIUM_SPOT_UM / d if d else None

    @property
    def var(self) -> pd.DataFrame:
        return self._matrix.var

    @property
    def uns(self) -> dict:
        return {"spatial": {self.library_id: library_uns(self._images, self._scalefactors, self._matrix)}}

    @property
    def size_hint(self) -> int | None:
        return self._matrix.nnz

    def iter_entries(self, chunk_size: int = 2_000_000) -> Iterator[EntryChunk]:
        """Stream (spot, gene, count) entries by barcode ranges."""
        return self._matrix.iter_entries(chunk_size)
