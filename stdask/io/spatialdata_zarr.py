"""SpatialData zarr reader: a store written by ``spatialdata`` itself (e.g. after ``spatialdata-io`` converted
Visium, Visium HD or Xenium output), ingested into a tiled stdask store.

Layout read (spatialdata 0.2-0.7; zarr v3 ``zarr.json`` or zarr v2 ``.zattrs``, both through zarr)::

    data.zarr/                     root attributes: spatialdata_attrs (container format version),
                                   spatialdata_io_reader (which spatialdata-io reader wrote it, 2025+)
      tables/<name>/               AnnData; group attributes region, region_key, instance_key
      shapes/<name>/shapes.parquet GeoParquet, WKB geometry: Points + radius (circles) or Polygons; index =
                                   instance ids; group attribute coordinateTransformations (NGFF)
      labels/<name>/, points/<name>/, images/<name>/

Observations are the table's rows (of one annotated region); ``X`` streams from the zarr arrays by row ranges
(CSR, dense) or gene ranges (CSC) through the h5ad reader's matrix walker. Coordinates are the centre of each
row's geometry (a circle's point, a polygon's centroid) matched by ``obs[instance_key]`` to the shapes index and
mapped to the chosen coordinate system by the element's affine transformation; for a table annotating a labels
or points element, ``obsm['spatial']`` is used instead.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd

from stdask.io.base import COUNT_MAX, EntryChunk, InputError, TableSource, make_unique, register_source
from stdask.io.h5ad import H5adSource, _H5Matrix
from stdask.io.visium import VISIUM_SPOT_UM
from stdask.io.parquet import iter_parquet
from stdask.store.foreign import open_foreign_group

__all__ = ["SpatialDataZarrSource", "is_spatialdata_zarr", "MICROMETRE_UNITS"]

#: NGFF axis units read as micrometres
MICROMETRE_UNITS = frozenset({"micrometer", "micrometre", "micron", "um", "µm"})
#: shapes rows decoded per Parquet batch (bounds the shapely objects alive at once)
SHAPES_BATCH = 65_536
#: float values scanned per block when deciding whether a float matrix holds whole counts
SCAN_BLOCK = 4_000_000


def _group_attrs(folder: Path) -> dict | None:
    """Attributes of the zarr group at ``folder`` read from ``zarr.json`` (v3) or ``.zattrs`` (v2), or ``None``
    when ``folder`` is not a zarr group (cheap: one small JSON file, for :meth:`detect`)."""
    try:
        if (folder / "zarr.json").is_file():
            doc = json.loads((folder / "zarr.json").read_bytes())
            return doc.get("attributes", {}) if doc.get("node_type") == "group" else None
        if (folder / ".zgroup").is_file():
            return json.loads((folder / ".zattrs").read_bytes()) if (folder / ".zattrs").is_file() else {}
    except (OSError, ValueError, AttributeError):
        return None
    return None


def is_spatialdata_zarr(path: Path) -> bool:
    """Whether ``path`` is a SpatialData zarr with a ``tables`` group, and not a stdask store (those carry a
    ``stdask`` root attribute and are opened with :func:`stdask.read`)."""
    attrs = _group_attrs(path) if path.is_dir() else None
    # a stdask store whose completion mark is missing (a killed ingest, a damaged root) is still a stdask store:
    # its table holds the tile index, and reading it must fail as incomplete, never convert it
    return attrs is not None and "spatialdata_attrs" in attrs and "stdask" not in attrs \
        and _group_attrs(path / "tables") is not None and not (path / "tables" / "table" / "uns" / "stdask").is_dir()


def _read_elem(group: Any) -> Any:
    from anndata.io import read_elem

    return read_elem(group)


@dataclass
class _Geometry:
    """One shapes element, reduced to what ingest needs.

    Attributes
    ----------
    ids
        (n,) instance ids (the element's index).
    xy
        (n, 2) float64 centre of each geometry (circle centre, polygon centroid), element coordinates.
    radius
        (n,) float64 circle radii, or ``None`` for polygons.
    area
        (n,) float64 polygon areas, or ``None`` for circles.
    """

    ids: pd.Index
    xy: np.ndarray
    radius: np.ndarray | None
    area: np.ndarray | None


def _geometry_of(geoms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(n, 2) centres and (n,) areas of shapely geometries."""
    import shapely

    centre = shapely.centroid(geoms)
    return np.column_stack([shapely.get_x(centre), shapely.get_y(centre)]), shapely.area(geoms)


def _read_geometry(folder: Path) -> _Geometry:
    """The centres of a shapes element, read batch by batch from its GeoParquet (WKB); other encodings (the
    zarr-array format 0.1, GeoArrow) through spatialdata's own element reader."""
    parquet = folder / "shapes.parquet"
    meta = {}
    if parquet.is_file():
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(parquet)
        md = pf.schema_arrow.metadata or {}
        geo = json.loads(md.get(b"geo", b"{}"))
        meta = json.loads(md.get(b"pandas", b"{}"))
        column = geo.get("primary_column", "geometry")
        wkb = str(geo.get("columns", {}).get(column, {}).get("encoding", "")).upper() == "WKB"
    if not parquet.is_file() or not wkb:
        from spatialdata._io.io_shapes import _read_shapes

        gdf = _read_shapes(str(folder))
        xy, area = _geometry_of(gdf.geometry.to_numpy())
        radius = gdf["radius"].to_numpy(np.float64) if "radius" in gdf else None
        return _Geometry(pd.Index(gdf.index), xy, radius, None if radius is not None else area)
    import shapely

    index_cols = meta.get("index_columns") or []
    index_col = index_cols[0] if index_cols and isinstance(index_cols[0], str) else None
    names = pf.schema_arrow.names
    columns = [column] + [c for c in ("radius",) if c in names] + ([index_col] if index_col else [])
    xys, radii, areas, ids = [], [], [], []
    for batch in iter_parquet(parquet, SHAPES_BATCH, columns):
        xy, area = _geometry_of(shapely.from_wkb(batch.column(column).to_numpy(zero_copy_only=False)))
        xys.append(xy)
        areas.append(area)
        if "radius" in columns:
            radii.append(batch.column("radius").to_numpy(zero_copy_only=False).astype(np.float64))
        if index_col:
            ids.append(batch.column(index_col).to_numpy(zero_copy_only=False))
    n = pf.metadata.num_rows
    if index_col:
        index = pd.Index(np.concatenate(ids) if ids else [])
    elif index_cols and isinstance(index_cols[0], dict):  # a RangeIndex, stored as start / stop / step
        r = index_cols[0]
        index = pd.RangeIndex(r.get("start", 0), r.get("stop", n), r.get("step", 1))
    else:
        index = pd.RangeIndex(n)
    xy = np.concatenate(xys) if xys else np.zeros((0, 2))
    radius = np.concatenate(radii) if radii else None
    return _Geometry(index, xy, radius, None if radius is not None else (np.concatenate(areas) if areas else None))


def _ngff_transformations(encoded: list[dict] | None) -> dict[str, Any]:
    """Coordinate system name -> spatialdata transformation, from an element's NGFF ``coordinateTransformations``."""
    from spatialdata.transformations.ngff.ngff_transformations import NgffBaseTransformation
    from spatialdata.transformations.transformations import BaseTransformation

    out = {}
    for d in encoded or []:
        ngff = NgffBaseTransformation.from_dict(d)
        out[ngff.output_coordinate_system.name] = (BaseTransformation.from_ngff(ngff), d)
    return out


def _element_transformations(root: Path, kind: str, name: str) -> dict[str, Any]:
    """The transformations of element ``kind/name`` (shapes, points: group attributes; rasters: multiscales)."""
    attrs = _group_attrs(root / kind / name) or {}
    if kind in ("images", "labels"):
        ms = attrs.get("ome", attrs).get("multiscales") or [{}]  # NGFF 0.5 nests under "ome"
        return _ngff_transformations(ms[0].get("coordinateTransformations"))
    return _ngff_transformations(attrs.get("coordinateTransformations"))


def _micrometre_axes(encoded: dict) -> bool:
    axes = (encoded.get("output") or {}).get("axes") or []
    units = {str(a.get("unit", "")).lower() for a in axes if a.get("name") in ("x", "y")}
    return bool(units) and units <= MICROMETRE_UNITS


class _ZarrMatrix(_H5Matrix):
    """One obs x var matrix of a zarr AnnData (``X`` or ``layers/<name>``), streamed by the h5ad walker.

    Unlike h5ad, a float matrix holding whole counts (spatialdata-io stores scanpy's float32 counts) streams as
    uint32: :attr:`whole` scans ``data`` once, block by block, stopping at the first value that is not one.
    """

    def __init__(self, path: Path, key: str, elem: Any, n_obs: int, n_vars: int) -> None:
        self.path, self.key = path, key
        attrs = dict(elem.attrs)
        self.encoding = str(attrs.get("encoding-type", "array"))
        if self.encoding in ("csr_matrix", "csc_matrix"):
            shape, self.disk_dtype = attrs.get("shape"), elem["data"].dtype
            self.nnz = int(elem["data"].shape[0])
        elif self.encoding == "array" and hasattr(elem, "dtype"):
            shape, self.disk_dtype, self.nnz = elem.shape, elem.dtype, None
        else:
            raise InputError(f"{path}: {key} has encoding {self.encoding!r}; readable: csr_matrix, csc_matrix, "
                             f"dense array")
        if shape is None or tuple(int(s) for s in shape) != (n_obs, n_vars):
            raise InputError(f"{path}: {key} has shape {shape}, but obs x var is ({n_obs}, {n_vars})")
        if self.disk_dtype.kind not in "biuf":
            raise InputError(f"{path}: {key} has dtype {self.disk_dtype}; expected numbers")
        self.n_obs, self.n_vars = n_obs, n_vars
        self._elem = elem
        self._whole: bool | None = None

    @property
    def whole(self) -> bool:
        """Whether every value is a whole count 0..COUNT_MAX (integers on disk, or floats found so by a scan)."""
        if self._whole is None:
            self._whole = self.disk_dtype.kind in "biu" or self._scan_whole()
        return self._whole

    def _scan_whole(self) -> bool:
        sparse = self.encoding != "array"
        values = self._elem["data"] if sparse else self._elem
        total = values.shape[0]
        step = SCAN_BLOCK if sparse else max(1, SCAN_BLOCK // max(self.n_vars, 1))
        for a in range(0, total, step):
            v = np.asarray(values[a:a + step])
            if not (np.isfinite(v) & (v >= 0) & (v <= COUNT_MAX) & (v == np.floor(v))).all():
                return False
        return True

    @property
    def value_dtype(self) -> np.dtype:
        return np.dtype(np.uint32) if self.whole else np.dtype(np.float32)

    def _finish(self, row, gene, values, obs_names, var_names):
        if values.dtype.kind == "f" and self.whole:
            values = values.astype(np.int64)  # whole by the scan; the walker's checks then give uint32
        return super()._finish(row, gene, values, obs_names, var_names)


@register_source
class SpatialDataZarrSource(TableSource):
    """A SpatialData zarr (``spatialdata.read_zarr`` opens it): one table's rows x genes, centres of its shapes.

    Parameters
    ----------
    path
        The ``.zarr`` folder.
    table
        Which table (default: the only one, or the one named ``"table"``).
    coordinate_system
        Where coordinates are mapped (default: ``"global"`` when the element has it, else the coordinate system
        the element maps to unchanged, as spatialdata-io's Visium ``<dataset_id>``).
    layer
        Which matrix holds the raw counts: ``"X"`` or a layer name. Default: ``X`` when it holds whole counts,
        else the layer ``"counts"`` if there is one, else ``X`` (as float32).
    region
        Which annotated element, for a table annotating several (its rows for that element only).

    Notes
    -----
    * ``obs``: the table's obs (index = obs names; ``region_key`` / ``instance_key`` columns kept); ``var``: the
      table's var (index made unique). Dense ``obsm`` arrays other than ``spatial`` are kept.
    * Coordinates: circle centres / polygon centroids of the annotated shapes element, mapped to
      ``coordinate_system`` by its affine transformation; a labels or points element: ``obsm['spatial']`` with
      that element's transformation (Xenium from spatialdata-io: ``obsm['spatial']`` is in um, mapped like its
      ``cell_circles`` / ``cell_boundaries`` / ``transcripts``).
    * :attr:`unit`: ``"um"`` when the coordinate system's axes say micrometres; ``"pixel"`` when an image maps
      to it unchanged (the system is that image's pixel grid) or spatialdata-io's Visium / Visium HD / Xenium
      wrote it; ``"unit"`` otherwise. :attr:`microns_per_unit` where known: 1 for um, Xenium's um-to-pixel
      scale, Visium's 55 um spots, Visium HD's ``square_NNNum`` bins.
    * :attr:`spot_diameter`: twice the median circle radius, or the diameter of a disc of the median polygon
      area, after the transformation's scale.
    * ``uns``: the table's uns without ``spatialdata_attrs``; entries anndata cannot write are skipped and
      named in ``uns['spatialdata_import']['uns_skipped']``, beside the table, region, coordinate system and
      matrix read.
    """

    format_name = "spatialdata"
    kind = "obs"

    @classmethod
    def detect(cls, path: Path) -> bool:
        return is_spatialdata_zarr(path)

    def __init__(self, path: str | Path, *, table: str | None = None, coordinate_system: str | None = None,
                 layer: str | None = None, region: str | None = None) -> None:
        super().__init__(path, table=table, coordinate_system=coordinate_system, layer=layer, region=region)
        if not is_spatialdata_zarr(self.path):
            raise InputError(f"{self.path}: not a SpatialData zarr (no 'spatialdata_attrs' root attribute and "
                             f"'tables' group, or a stdask store: open that with stdask.read)")
        self._root_attrs = _group_attrs(self.path) or {}
        self._table = self._pick_table(table)
        where = f"{self.path}: table {self._table!r}"
        group = open_foreign_group(self.path, f"tables/{self._table}")
        self._group = group
        attrs = self._region_attrs(group, where)
        for key in ("obs", "var"):
            if key not in group:
                raise InputError(f"{where}: no {key!r}; not an AnnData table")
        obs = _read_elem(group["obs"])
        self._obs_names = pd.Index(obs.index.astype(str))
        self._region, rows = self._pick_region(attrs, obs, region, where)
        self._rows = rows  # table rows kept (None: all), in table order
        if rows is not None:
            obs = obs.iloc[rows]
        self._obs = H5adSource._checked_frame(self, obs, "obs")  # str index, unique (the h5ad rule)
        var = _read_elem(group["var"])
        var.index = make_unique(var.index.astype(str))
        self._var = var
        self._matrix = self._pick_matrix(group, layer, len(self._obs_names), len(var), where)
        self._coords, self._scale, self._geometry = self._locate(group, attrs, coordinate_system, where)

    # --- choosing what to read --------------------------------------------------------------------------
    def _pick_table(self, table: str | None) -> str:
        names = sorted(p.name for p in (self.path / "tables").iterdir() if _group_attrs(p) is not None)
        if table is not None:
            if table not in names:
                raise InputError(f"{self.path}: no table {table!r}; tables: {', '.join(names) or 'none'}")
            return table
        if len(names) == 1:
            return names[0]
        if "table" in names:
            return "table"
        raise InputError(f"{self.path}: {len(names)} tables ({', '.join(names) or 'none'}) and none named 'table'; "
                         f"pass table=NAME (stdask.ingest) to pick one")

    def _region_attrs(self, group: Any, where: str) -> dict:
        attrs = dict(group.attrs)
        if "region" not in attrs and "uns" in group and "spatialdata_attrs" in group["uns"]:
            attrs = dict(_read_elem(group["uns"]["spatialdata_attrs"]))  # spatialdata < 0.1 kept them in uns
        missing = [k for k in ("region", "instance_key") if attrs.get(k) is None]
        if missing:
            raise InputError(f"{where}: no {', '.join(missing)} attribute; the table annotates no element "
                             f"(spatialdata's TableModel.parse(region=..., instance_key=...) sets them)")
        return attrs

    def _pick_region(self, attrs: dict, obs: pd.DataFrame, region: str | None,
                     where: str) -> tuple[str, np.ndarray | None]:
        regions = attrs["region"] if isinstance(attrs["region"], list) else [attrs["region"]]
        regions = [str(r) for r in regions]
        if region is None and len(regions) == 1:
            return regions[0], None
        if region is None or region not in regions:
            what = "annotates several elements" if region is None else f"does not annotate {region!r}"
            raise InputError(f"{where} {what}; regions: {', '.join(regions)}; pass region= one of them")
        key = attrs.get("region_key")
        if key not in obs:
            raise InputError(f"{where}: region_key column {key!r} is not in obs")
        return region, np.flatnonzero(obs[key].astype(str).to_numpy() == region)

    def _pick_matrix(self, group: Any, layer: str | None, n_obs: int, n_vars: int, where: str) -> _ZarrMatrix:
        """The counts matrix: ``layer``; by default X if it holds whole counts, else layer 'counts', else X."""
        layers = list(group["layers"]) if "layers" in group else []

        def matrix(key: str) -> _ZarrMatrix:
            self._matrix_key = key
            return _ZarrMatrix(self.path, f"tables/{self._table}/{key}", group[key], n_obs, n_vars)

        if layer is None:
            x = matrix("X") if "X" in group else None
            if x is not None and (x.whole or "counts" not in layers):
                return x
            layer = "counts"
        key = "X" if layer == "X" else f"layers/{layer}"
        if key not in group:
            raise InputError(f"{where}: no {key}; the matrices are {', '.join(['X'] * ('X' in group) + layers)}: "
                             f"pass layer= one of them")
        return matrix(key)

    # --- coordinates --------------------------------------------------------------------------------------
    def _element_kind(self, where: str) -> str:
        for kind in ("shapes", "labels", "points"):
            if _group_attrs(self.path / kind / self._region) is not None:
                return kind
        found = [f"{k}/{p.name}" for k in ("shapes", "labels", "points", "images") if (self.path / k).is_dir()
                 for p in sorted((self.path / k).iterdir()) if p.is_dir()]
        raise InputError(f"{where} annotates region {self._region!r}, but the store has no element of that name; "
                         f"elements: {', '.join(found) or 'none'}")

    def _transform(self, kind: str, name: str, system: str | None, where: str) -> tuple[str, np.ndarray, dict]:
        """(coordinate system, 3 x 3 affine x, y -> system, its NGFF dict) of element ``kind/name``."""
        ts = _element_transformations(self.path, kind, name)
        if system is None:
            identity = [cs for cs, (t, _d) in ts.items()
                        if np.allclose(t.to_affine_matrix(input_axes=("x", "y"), output_axes=("x", "y")), np.eye(3))]
            system = "global" if "global" in ts or not identity else identity[0]
        if system not in ts:
            raise InputError(f"{where}: element {kind}/{name} has no transformation to coordinate system "
                             f"{system!r}; it has {', '.join(ts) or 'none'}: pass coordinate_system= one of them")
        t, encoded = ts[system]
        return system, t.to_affine_matrix(input_axes=("x", "y"), output_axes=("x", "y")), encoded

    def _locate(self, group: Any, attrs: dict, system: str | None,
                where: str) -> tuple[np.ndarray, float, _Geometry | None]:
        """(n_obs, 2) float64 coordinates in the chosen system, the transformation's length scale, the geometry."""
        kind = self._element_kind(where)
        element = f"{kind}/{self._region}"
        geometry, source_kind, source = None, kind, self._region
        if kind == "shapes":
            try:
                geometry = _read_geometry(self.path / element)
            except Exception as exc:  # pyarrow, shapely and spatialdata raise many types for a damaged element
                raise InputError(f"{self.path / element}: not a readable shapes element ({type(exc).__name__}: "
                                 f"{exc})") from None
            xy = geometry.xy[self._instances(geometry.ids, attrs["instance_key"], element, where)]
        else:
            if "obsm" not in group or "spatial" not in group["obsm"]:
                raise InputError(f"{where} annotates {element}, which has no geometry to take centres from, and "
                                 f"has no obsm['spatial']; add the coordinates to obsm['spatial']")
            xy = np.asarray(_read_elem(group["obsm"]["spatial"]), dtype=np.float64)[:, :2]
            xy = xy if self._rows is None else xy[self._rows]
            if self.reader == "xenium":  # obsm['spatial'] is in um, the frame of these elements, not the labels'
                for k, n in (("shapes", "cell_circles"), ("shapes", "cell_boundaries"), ("points", "transcripts")):
                    if _group_attrs(self.path / k / n) is not None:
                        source_kind, source = k, n
                        break
        self._system, affine, encoded = self._transform(source_kind, source, system, where)
        self._frame = (source_kind, encoded)
        xy = xy @ affine[:2, :2].T + affine[:2, 2]
        bad = ~np.isfinite(xy).all(axis=1)
        if bad.any():
            i = int(np.argmax(bad))
            raise InputError(f"{where}: observation {self._obs.index[i]!r} of {element} has no finite centre "
                             f"({xy[i, 0]}, {xy[i, 1]}); empty geometry?")
        scale = float(np.sqrt(abs(np.linalg.det(affine[:2, :2]))))
        return xy, scale, geometry

    def _instances(self, ids: pd.Index, instance_key: str, element: str, where: str) -> np.ndarray:
        """Position in the element of each kept row's ``obs[instance_key]``; a missing id is an InputError."""
        if instance_key not in self._obs:
            raise InputError(f"{where}: instance_key column {instance_key!r} is not in obs")
        wanted = self._obs[instance_key]
        if not ids.is_unique:
            raise InputError(f"{self.path / element}: instance id {ids[ids.duplicated()][0]!r} appears more than "
                             f"once in the element's index")
        # ids match by value: int64 when both sides are integers (exact beyond 2**53), float64 for other numbers
        # (an int index against float ids), else as text (Xenium's 'aaabbbcc-1', an int index against str ids)
        kinds = {np.asarray(ids).dtype.kind, np.asarray(wanted).dtype.kind}
        key = np.int64 if kinds <= set("iu") else np.float64 if kinds <= set("iuf") else str
        pos = pd.Index(np.asarray(ids).astype(key)).get_indexer(pd.Index(np.asarray(wanted).astype(key)))
        if (pos < 0).any():
            i = int(np.argmax(pos < 0))
            missing = wanted.iloc[i].item() if hasattr(wanted.iloc[i], "item") else wanted.iloc[i]
            raise InputError(f"{where}: row {self._obs.index[i]!r} has {instance_key} = {missing!r}, which is "
                             f"not in {element} ({int((pos < 0).sum())} row(s) unmatched); the table and the "
                             f"element must share instance ids")
        return pos

    # --- metadata -----------------------------------------------------------------------------------------
    @property
    def reader(self) -> str | None:
        """The spatialdata-io reader that wrote the store (root attribute ``spatialdata_io_reader``), if recorded."""
        value = self._root_attrs.get("spatialdata_io_reader")
        return str(value) if value else None

    @property
    def coordinate_system(self) -> str:
        return self._system

    @property
    def unit(self) -> str:
        if _micrometre_axes(self._frame[1]):
            return "um"
        if self.reader in ("visium", "visium_hd", "xenium"):  # full-resolution / morphology image pixels
            return "um" if self.microns_per_unit == 1.0 else "pixel"
        images = self.path / "images"
        for p in sorted(images.iterdir()) if images.is_dir() else []:
            ts = _element_transformations(self.path, "images", p.name)
            if self._system in ts and np.allclose(
                    ts[self._system][0].to_affine_matrix(input_axes=("x", "y"), output_axes=("x", "y")), np.eye(3)):
                return "pixel"
        return "unit"

    @property
    def microns_per_unit(self) -> float | None:
        if _micrometre_axes(self._frame[1]):
            return 1.0
        if self.reader == "xenium" and self._frame[0] != "labels":  # element coordinates are um
            return 1.0 / self._scale
        size = self._feature_size()
        if self.reader == "visium" and size:
            return VISIUM_SPOT_UM / size
        bins = re.search(r"square_(\d+)um", self._region)
        if self.reader == "visium_hd" and bins and size:
            return float(bins.group(1)) / size
        return None

    def _feature_size(self) -> float | None:
        """Circle diameter or polygon side (sqrt of the median area), in the coordinate system's units."""
        g = self._geometry
        if g is None:
            return None
        if g.radius is not None and len(g.radius):
            return 2.0 * float(np.median(g.radius)) * self._scale
        if g.area is not None and len(g.area):
            return float(np.sqrt(np.median(g.area))) * self._scale
        return None

    @property
    def spot_diameter(self) -> float | None:
        g = self._geometry
        if g is None or (g.radius is None and g.area is None):
            return None
        if g.radius is not None:
            d = 2.0 * float(np.median(g.radius)) * self._scale
        else:
            d = 2.0 * float(np.sqrt(np.median(g.area) / np.pi)) * self._scale
        return d if np.isfinite(d) and d > 0 else None

    @property
    def uns(self) -> dict:
        import h5py
        from anndata.io import write_elem

        uns = _read_elem(self._group["uns"]) if "uns" in self._group else {}
        uns.pop("spatialdata_attrs", None)
        kept, skipped = {}, []
        # an in-memory HDF5 file (never written to disk) tells what anndata can write: the rest would fail the
        # store's commit, so it is skipped and named
        with h5py.File(f"scratch-{id(self)}.h5", "w", driver="core", backing_store=False) as scratch:
            for key, value in uns.items():
                try:
                    write_elem(scratch, key, value)
                    kept[key] = value
                except Exception:
                    skipped.append(key)
        note = {"table": self._table, "region": self._region, "coordinate_system": self._system,
                "matrix": self._matrix_key}
        if skipped:
            note["uns_skipped"] = skipped
        kept["spatialdata_import"] = note
        return kept

    @property
    def value_dtype(self) -> np.dtype:
        return self._matrix.value_dtype

    @property
    def var(self) -> pd.DataFrame:
        return self._var.copy()

    @property
    def obsm(self) -> dict[str, np.ndarray]:
        """Dense numeric obsm arrays other than ``spatial``, read now (rows in :attr:`obs` order)."""
        out = {}
        if "obsm" in self._group:
            for key in self._group["obsm"]:
                elem = self._group["obsm"][key]
                dense = dict(elem.attrs).get("encoding-type") == "array"
                if key == "spatial" or not dense or elem.dtype.kind not in "biuf":
                    continue
                values = np.asarray(elem[...])
                out[key] = values if self._rows is None else values[self._rows]
        return out

    @property
    def size_hint(self) -> int | None:
        return self._matrix.nnz

    def iter_entries(self, chunk_size: int = 2_000_000) -> Iterator[EntryChunk]:
        """Stream the counts matrix (``X`` or the chosen layer) as ``X``.

        Yields
        ------
        EntryChunk
            row (n,) int64 into :attr:`obs`, gene (n,) int32, value (n,) :attr:`value_dtype`, zeros dropped.
        """
        keep = None
        if self._rows is not None:  # table row -> kept row, -1 for rows of other regions
            keep = np.full(len(self._obs_names), -1, dtype=np.int64)
            keep[self._rows] = np.arange(len(self._rows))
        root = open_foreign_group(self.path)
        for row, gene, value in self._matrix.iter_entries(root, chunk_size, self._obs_names, self._var.index):
            if keep is not None:
                row = keep[row]
                ok = row >= 0
                row, gene, value = row[ok], gene[ok], value[ok]
            if len(row):
                yield EntryChunk(row=row, gene=gene, value=value)
