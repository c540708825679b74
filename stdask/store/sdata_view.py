"""The SpatialData view of a store: a shapes element with one geometry per observation, the table annotating it,
and the ``global`` coordinate system in micrometres.

``spatialdata.read_zarr`` then lists the shapes element, ``sdata["table"]`` knows which element each row belongs
to (``region`` / ``region_key`` / ``instance_key``, as SpatialData's ``TableModel`` requires), and spatialdata-plot
or napari-spatialdata draw the slice coloured by a gene. Layout written (what spatialdata 0.7 writes itself)::

    shapes/<name>/zarr.json        {"encoding-type": "ngff:shapes", "axes": ["x", "y"],
                                    "coordinateTransformations": [<store units -> global (um)>],
                                    "spatialdata_attrs": {"version": "0.3"},
                                    "stdask": {"encoding": "stdask-shapes", "version": 1, "n": ..., "bytes": ...}}
    shapes/<name>/shapes.parquet   GeoParquet 1.1: geometry (WKB Points + radius for circles, Polygons for squares),
                                   index ``instance_id`` (int64) = the observation's row in the table

The geometries are read back from the table's ``obs/x`` and ``obs/y`` a block of rows at a time, so writing them
costs memory bounded by the block, whatever the number of observations.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import zarr

from .chunks import read_checked
from .elements import write_anndata
from .format import StoreDamageError

__all__ = ["ShapeSpec", "REGION_KEY", "INSTANCE_KEY", "SHAPES", "global_transform", "write_view", "check_shapes"]

SHAPES = "shapes"
#: obs columns naming each row's element and its geometry (SpatialData's region_key / instance_key)
REGION_KEY = "region"
INSTANCE_KEY = "instance_id"
SHAPES_ENCODING, SHAPES_VERSION = "stdask-shapes", 1
#: rows of obs read (and one Parquet row group written) at a time
BLOCK_ROWS = 1 << 20
#: SpatialData's axes of a 2-D element; its own writer names the unit "unit" whatever the space
_AXES = [{"name": "x", "type": "space", "unit": "unit"}, {"name": "y", "type": "space", "unit": "unit"}]


@dataclass(frozen=True)
class ShapeSpec:
    """The geometry each observation gets.

    Attributes
    ----------
    name
        Element name under ``shapes/`` (``"cells"``, ``"spots"``, ``"bins"``).
    geometry
        ``"circle"`` (a point and a radius) or ``"square"`` (an axis-aligned polygon centred on the observation).
    diameter
        Circle diameter or square side in store units; ``None`` = the typical spacing of the observations
        (``sqrt(bounding-box area / n_obs)``).
    """

    name: str
    geometry: str = "circle"
    diameter: float | None = None

    def __post_init__(self) -> None:
        if self.geometry not in ("circle", "square"):
            raise ValueError(f"geometry must be 'circle' or 'square', got {self.geometry!r}")
        if not self.name or "/" in self.name or self.name.startswith("."):
            raise ValueError(f"invalid shapes element name {self.name!r}")


def global_transform(microns_per_unit: float | None) -> list[dict]:
    """The element's ``coordinateTransformations``: store units -> ``global`` micrometres (identity when the
    scale is unknown, so ``global`` is then in store units)."""
    io = {"input": {"name": "xy", "axes": _AXES}, "output": {"name": "global", "axes": _AXES}}
    if microns_per_unit and microns_per_unit != 1.0:
        return [{"type": "scale", "scale": [float(microns_per_unit)] * 2, **io}]
    return [{"type": "identity", **io}]


def _free_name(taken: list[str], name: str) -> str:
    """``name``, or ``name`` with a ``stdask_`` prefix when the table already has a column of that name."""
    return name if name not in taken else f"stdask_{name}"


def _diameter(spec: ShapeSpec, bounds: np.ndarray, n_obs: int) -> float:
    if spec.diameter and np.isfinite(spec.diameter) and spec.diameter > 0:
        return float(spec.diameter)
    area = float((bounds[2] - bounds[0]) * (bounds[3] - bounds[1]))
    spacing = np.sqrt(area / n_obs) if n_obs and area > 0 else 0.0
    return float(spacing) if spacing > 0 else 1.0


def _schema(geometry: str, key: str) -> pa.Schema:
    """GeoParquet 1.1 schema as geopandas writes it (WKB geometry, ``key`` as the pandas index)."""
    wkb = pa.field("geometry", pa.binary(), metadata={"ARROW:extension:name": "geoarrow.wkb",
                                                      "ARROW:extension:metadata": "{}"})
    fields = [wkb] + ([pa.field("radius", pa.float64())] if geometry == "circle" else []) + \
             [pa.field(key, pa.int64())]
    columns = [{"name": f.name, "field_name": f.name, "pandas_type": "bytes" if f.name == "geometry" else
                ("float64" if f.name == "radius" else "int64"),
                "numpy_type": "object" if f.name == "geometry" else str(f.type), "metadata": None} for f in fields]
    pandas_meta = {"index_columns": [key], "column_indexes": [{"name": None, "field_name": None,
                                                              "pandas_type": "unicode", "numpy_type": "object",
                                                              "metadata": {"encoding": "UTF-8"}}],
                   "columns": columns, "creator": {"library": "pyarrow", "version": pa.__version__},
                   "pandas_version": pd.__version__}
    geo = {"primary_column": "geometry", "version": "1.1.0", "creator": {"library": "stdask"},
           "columns": {"geometry": {"encoding": "WKB", "crs": None,
                                    "geometry_types": ["Point" if geometry == "circle" else "Polygon"]}}}
    return pa.schema(fields, metadata={"pandas": json.dumps(pandas_meta), "geo": json.dumps(geo)})


def _geometries(x: np.ndarray, y: np.ndarray, geometry: str, size: float) -> np.ndarray:
    """(n,) object array of WKB bytes: points (circles) or squares of side ``size`` centred on (x, y)."""
    import shapely

    if geometry == "circle":
        geoms = shapely.points(x, y)
    else:
        h = size / 2.0
        geoms = shapely.box(x - h, y - h, x + h, y + h)
    return shapely.to_wkb(geoms, output_dimension=2, byte_order=1)


def write_shapes(root: zarr.Group, root_path: Path, obs: zarr.Group, n_obs: int, bounds: np.ndarray,
                 spec: ShapeSpec, microns_per_unit: float | None, key: str = INSTANCE_KEY) -> float:
    """Write ``shapes/<spec.name>`` from the table's ``obs/x``, ``obs/y`` (store order); returns the diameter used.

    Parameters
    ----------
    root
        The store's root group (its temporary directory while the store is being built).
    root_path
        Its path on disk (the Parquet file is written there directly).
    obs
        The table's obs group, holding ``x`` and ``y`` (float64, store units).
    n_obs, bounds
        Number of observations and their (4,) bounding box ``xmin, ymin, xmax, ymax``.
    spec, microns_per_unit
        The geometry; the scale of the ``global`` coordinate system.
    key
        Name of the instance-id column (the index of the GeoDataFrame spatialdata reads).
    """
    size = _diameter(spec, bounds, n_obs)
    group = root.require_group(SHAPES).create_group(spec.name)
    path = root_path / SHAPES / spec.name / "shapes.parquet"
    schema = _schema(spec.geometry, key)
    with pq.ParquetWriter(path, schema) as w:
        for a in range(0, n_obs, BLOCK_ROWS):
            b = min(n_obs, a + BLOCK_ROWS)
            x = read_checked(obs["x"], slice(a, b))
            y = read_checked(obs["y"], slice(a, b))
            cols = [pa.array(_geometries(x, y, spec.geometry, size), pa.binary())]
            if spec.geometry == "circle":
                cols.append(pa.array(np.full(b - a, size / 2.0)))
            cols.append(pa.array(np.arange(a, b, dtype=np.int64)))
            w.write_table(pa.Table.from_arrays(cols, schema=schema))
    group.attrs.update({
        "encoding-type": "ngff:shapes", "axes": ["x", "y"],
        "coordinateTransformations": global_transform(microns_per_unit),
        "spatialdata_attrs": {"version": "0.3"},
        "stdask": {"encoding": SHAPES_ENCODING, "version": SHAPES_VERSION, "n": int(n_obs),
                   "bytes": path.stat().st_size, "geometry": spec.geometry, "diameter": size},
    })
    return size


def annotate_table(table: zarr.Group, n_obs: int, region: str) -> tuple[str, str]:
    """Add the region and instance-id obs columns and SpatialData's table attributes; returns their names.

    The region column is a one-category categorical (every row belongs to ``region``); the instance ids are the
    rows ``0..n_obs-1``, the index of the shapes element.
    """
    obs = table["obs"]
    order = list(obs.attrs.get("column-order", []))
    region_key, instance_key = _free_name(order, REGION_KEY), _free_name(order, INSTANCE_KEY)
    write_anndata(obs, region_key, pd.Categorical.from_codes(np.zeros(n_obs, np.int8), categories=[region]))
    write_anndata(obs, instance_key, np.arange(n_obs, dtype=np.int64))
    obs.attrs["column-order"] = order + [region_key, instance_key]
    attrs = {"region": region, "region_key": region_key, "instance_key": instance_key}
    write_anndata(table["uns"], "spatialdata_attrs", attrs)
    table.attrs.update(attrs)
    return region_key, instance_key


def write_view(root: zarr.Group, root_path: Path, table: zarr.Group, n_obs: int, bounds: np.ndarray,
               spec: ShapeSpec, microns_per_unit: float | None) -> float:
    """Annotate the table and write the shapes element it annotates (see the module docstring)."""
    _, instance_key = annotate_table(table, n_obs, spec.name)
    return write_shapes(root, root_path, table["obs"], n_obs, bounds, spec, microns_per_unit, key=instance_key)


def check_shapes(root_path: Path, name: str) -> None:
    """Refuse a shapes element whose Parquet file is missing or not the size it was written with."""
    group = zarr.open_group(str(root_path / SHAPES / name), mode="r")
    meta = group.attrs.get("stdask", {})
    path = root_path / SHAPES / name / "shapes.parquet"
    if not path.is_file():
        raise StoreDamageError(f"{path}: the shapes element's Parquet file is missing")
    if meta.get("bytes") is not None and path.stat().st_size != meta["bytes"]:
        raise StoreDamageError(f"{path}: {path.stat().st_size} bytes, but {meta['bytes']} were written")
