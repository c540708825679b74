"""SpatialData zarr input: stores written by spatialdata itself ingested into stdask stores (values, centres,
diameters, the counts matrix chosen, errors)."""
from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

sd = pytest.importorskip("spatialdata")
shapely = pytest.importorskip("shapely")

import stdask  # noqa: E402
from stdask.io import InputError, open_source  # noqa: E402
from stdask.io.spatialdata_zarr import SpatialDataZarrSource  # noqa: E402  (registers 'spatialdata')
from spatialdata.models import ShapesModel, TableModel  # noqa: E402
from spatialdata.transformations import Identity, Scale, Sequence, Translation  # noqa: E402

N_CELLS, N_GENES, SCALE = 240, 25, 0.5


def counts(rng: np.random.Generator, n: int = N_CELLS, n_genes: int = N_GENES) -> sp.csr_matrix:
    """(n, n_genes) int32 CSR of sparse Poisson counts, every row non-empty."""
    dense = rng.poisson(0.6, size=(n, n_genes)).astype(np.int32)
    dense[np.arange(n), rng.integers(0, n_genes, n)] += 1
    return sp.csr_matrix(dense)


def table(x, ids: np.ndarray, region: str = "cells", layers: dict | None = None) -> ad.AnnData:
    """A table of ``x`` whose rows annotate ``region`` by instance ids ``ids`` (int64 or str)."""
    obs = pd.DataFrame({"region": pd.Categorical([region] * len(ids)), "cell_id": ids},
                       index=[f"cell{i:04d}" for i in range(len(ids))])
    var = pd.DataFrame(index=[f"g{j}" for j in range(x.shape[1])])
    adata = ad.AnnData(X=x, obs=obs, var=var, layers=layers)
    adata.uns["note"] = {"made_by": "test", "n": 3}
    return TableModel.parse(adata, region=region, region_key="region", instance_key="cell_id")


def circles(rng: np.random.Generator, n: int = N_CELLS):
    """Circles with instance ids not 0..n-1, listed in an order other than the table's.

    Returns the element, the ids in table order, and the (n, 2) centres and (n,) radii in table order.
    """
    ids = 1000 + 7 * rng.permutation(n)  # table order
    centre = rng.uniform(0, 2000, size=(n, 2))
    radius = rng.uniform(4, 9, size=n)
    order = rng.permutation(n)  # element order differs from the table's
    shapes = ShapesModel.parse(centre[order], geometry=0, radius=radius[order], index=ids[order],
                               transformations={"global": Scale([SCALE, SCALE], axes=("x", "y"))})
    return shapes, ids, centre, radius


def write(path: Path, shapes: dict, tables: dict) -> Path:
    sd.SpatialData(shapes=shapes, tables=tables).write(path)
    return path


def ingested(path: Path, tmp_path: Path, **options):
    store = stdask.ingest(path, tmp_path / "out.zarr", progress=False, **options)
    ds = stdask.read(store)
    return ds, sp.csr_matrix(ds.matrix("X").compute())


def refused(path: Path, tmp_path: Path, match: str, **options) -> None:
    """Ingesting ``path`` raises an InputError naming the path (and ``match``) and leaves no store behind."""
    with pytest.raises(InputError, match=match) as info:
        stdask.ingest(path, tmp_path / "bad.zarr", progress=False, **options)
    assert str(path) in str(info.value)
    assert not (tmp_path / "bad.zarr").exists()
    assert not [p for p in tmp_path.iterdir() if "stdask-tmp" in p.name]


@pytest.fixture(scope="module")
def circles_store(tmp_path_factory):
    rng = np.random.default_rng(5)
    shapes, ids, centre, radius = circles(rng)
    x = counts(rng)
    path = write(tmp_path_factory.mktemp("sd") / "circles.zarr", {"cells": shapes}, {"table": table(x, ids)})
    return path, x, centre, radius


@pytest.fixture(scope="module")
def circles_ingested(circles_store, tmp_path_factory):
    path = circles_store[0]
    assert isinstance(open_source(path), SpatialDataZarrSource)  # detected from the root attributes
    return ingested(path, tmp_path_factory.mktemp("out"), chunk_size=500)  # several row ranges


def test_circles_round_trip(circles_store, circles_ingested):
    path, x, centre, radius = circles_store
    ds, got = circles_ingested
    names = [f"cell{i:04d}" for i in range(N_CELLS)]
    assert set(ds.obs_names) == set(names) and ds.n_obs == N_CELLS
    rows = pd.Index(names).get_indexer(ds.obs_names)
    assert got.dtype == np.uint32 and (got != x[rows]).nnz == 0  # every entry, exactly
    assert list(ds.var_names) == [f"g{j}" for j in range(N_GENES)]
    # centres: the table row's instance id -> its circle -> the Scale to 'global'
    np.testing.assert_allclose(ds.coords, centre[rows] * SCALE, rtol=0, atol=1e-9)
    assert ds.spot_diameter == pytest.approx(2 * np.median(radius) * SCALE)
    assert ds.unit == "unit" and ds.microns_per_unit is None  # spatialdata's axes say "unit"
    t = ad.read_zarr(ds.path / "tables" / "table")
    assert dict(t.uns["note"]) == {"made_by": "test", "n": 3}
    assert dict(t.uns["spatialdata_import"]) == {"table": "table", "region": "cells", "coordinate_system": "global",
                                                 "matrix": "X"}
    assert np.array_equal(t.obs.loc[ds.obs_names, "cell_id"].to_numpy(),
                          ad.read_zarr(path / "tables" / "table").obs.loc[ds.obs_names, "cell_id"].to_numpy())


def test_polygons_centroids(tmp_path):
    rng = np.random.default_rng(8)
    n = 120
    ids = np.array([f"c-{v}" for v in rng.permutation(5 * n)[:n]])
    centre = rng.uniform(0, 500, size=(n, 2))
    half = rng.uniform(2, 6, size=n)
    # triangles: their centroid is not the bounding box's centre, so a wrong centre formula shows
    polys = [shapely.Polygon([(cx - h, cy - h), (cx + 2 * h, cy - h), (cx - h, cy + 3 * h)])
             for (cx, cy), h in zip(centre, half)]
    import geopandas as gpd

    order = rng.permutation(n)
    gdf = gpd.GeoDataFrame(geometry=[polys[i] for i in order], index=ids[order])
    affine = Sequence([Scale([2.0, 2.0], axes=("x", "y")), Translation([10.0, -5.0], axes=("x", "y"))])
    shapes = ShapesModel.parse(gdf, transformations={"global": affine, "local": Identity()})
    x = counts(rng, n)
    adata = table(x, ids)  # string ids
    path = write(tmp_path / "poly.zarr", {"cells": shapes}, {"table": adata})
    ds, got = ingested(path, tmp_path)
    rows = pd.Index(adata.obs_names).get_indexer(ds.obs_names)
    truth = np.array([[p.centroid.x, p.centroid.y] for p in polys])[rows] * 2.0 + [10.0, -5.0]
    np.testing.assert_allclose(ds.coords, truth, rtol=0, atol=1e-9)
    area = np.median([p.area for p in polys]) * 4.0
    assert ds.spot_diameter == pytest.approx(2 * np.sqrt(area / np.pi))
    assert (got != x[rows]).nnz == 0
    # another coordinate system: the element's own coordinates
    src = SpatialDataZarrSource(path, coordinate_system="local")
    np.testing.assert_allclose(src.coords, np.array([[p.centroid.x, p.centroid.y] for p in polys]), atol=1e-9)


def test_counts_layer_and_float_x(tmp_path):
    rng = np.random.default_rng(11)
    shapes, ids, _c, _r = circles(rng, 60)
    raw = counts(rng, 60)
    norm = sp.csr_matrix(raw.multiply(1.0 / raw.sum(1)) * 1e4, dtype=np.float32)
    path = write(tmp_path / "layer.zarr", {"cells": shapes}, {"table": table(norm, ids, layers={"counts": raw})})
    ds, got = ingested(path, tmp_path)
    rows = pd.Index([f"cell{i:04d}" for i in range(60)]).get_indexer(ds.obs_names)
    assert got.dtype == np.uint32 and (got != raw[rows]).nnz == 0  # the counts layer, not the normalised X
    assert ad.read_zarr(ds.path / "tables" / "table").uns["spatialdata_import"]["matrix"] == "layers/counts"
    # layer='X' keeps the float X, as float32
    src = SpatialDataZarrSource(path, layer="X")
    assert src.value_dtype == np.float32
    entries = list(src.iter_entries(chunk_size=100))
    dense = np.zeros(norm.shape, np.float32)
    for c in entries:
        dense[c.row, c.gene] = c.value
    assert np.array_equal(dense, norm.toarray())
    # whole counts saved as float32 (scanpy's read_10x_h5, so spatialdata-io's tables) stream as uint32
    path2 = write(tmp_path / "floatcounts.zarr", {"cells": shapes},
                  {"table": table(raw.astype(np.float32), ids)})
    src2 = SpatialDataZarrSource(path2)
    assert src2.value_dtype == np.uint32
    chunks = list(src2.iter_entries(chunk_size=50))
    assert {c.value.dtype for c in chunks} == {np.dtype(np.uint32)}  # the chunks hold what value_dtype declares
    assert sum(int(c.value.sum()) for c in chunks) == int(raw.sum())


def entries_matrix(src: SpatialDataZarrSource, chunk_size: int = 2_000_000) -> sp.csr_matrix:
    """The source's streamed entries as one CSR (obs x genes), duplicates summed."""
    chunks = list(src.iter_entries(chunk_size))
    return sp.csr_matrix((np.concatenate([c.value for c in chunks]),
                          (np.concatenate([c.row for c in chunks]), np.concatenate([c.gene for c in chunks]))),
                         shape=(len(src.obs), len(src.var)))


def test_dense_x(tmp_path):
    rng = np.random.default_rng(12)
    shapes, ids, _c, _r = circles(rng, 50)
    x = counts(rng, 50).toarray().astype(np.int64)
    path = write(tmp_path / "dense.zarr", {"cells": shapes}, {"table": table(x, ids)})
    src = SpatialDataZarrSource(path)
    assert src.value_dtype == np.uint32 and src.size_hint is None
    assert len(list(src.iter_entries(chunk_size=60))) > 5  # row blocks of ~60 entries' worth of rows
    assert np.array_equal(entries_matrix(src, 60).toarray(), x)


def test_several_regions(tmp_path):
    rng = np.random.default_rng(13)
    a, ids_a, centre_a, _ = circles(rng, 40)
    b, ids_b, centre_b, _ = circles(rng, 30)
    x = counts(rng, 70)
    obs = pd.DataFrame({"region": pd.Categorical(["a"] * 40 + ["b"] * 30), "cell_id": np.r_[ids_a, ids_b]},
                       index=[f"cell{i:04d}" for i in range(70)])
    t = TableModel.parse(ad.AnnData(X=x, obs=obs), region=["a", "b"], region_key="region", instance_key="cell_id")
    path = write(tmp_path / "two.zarr", {"a": a, "b": b}, {"table": t})
    refused(path, tmp_path, r"annotates several elements; regions: a, b")
    src = SpatialDataZarrSource(path, region="b")
    assert list(src.obs.index) == [f"cell{i:04d}" for i in range(40, 70)]
    np.testing.assert_allclose(src.coords, centre_b * SCALE)
    assert (entries_matrix(src) != x[40:]).nnz == 0


def test_missing_instance_and_region(circles_store, tmp_path):
    _path, x, _c, _r = circles_store
    rng = np.random.default_rng(5)
    shapes, ids, _centre, _radius = circles(rng)
    bad = ids.copy()
    bad[17] = 99_999_999
    path = write(tmp_path / "badid.zarr", {"cells": shapes}, {"table": table(x, bad)})
    refused(path, tmp_path, r"table 'table': row 'cell0017' has cell_id = 99999999, which is not in shapes/cells")
    path2 = write(tmp_path / "noregion.zarr", {"cells": shapes}, {"table": table(x, ids, region="nuclei")})
    refused(path2, tmp_path, r"annotates region 'nuclei', but the store has no element of that name; "
                             r"elements: shapes/cells")


def test_table_choice(circles_store, tmp_path):
    _path, x, _c, _r = circles_store
    rng = np.random.default_rng(5)
    shapes, ids, _centre, _radius = circles(rng)
    path = write(tmp_path / "tables.zarr", {"cells": shapes}, {"bins_8um": table(x, ids), "bins_16um": table(x, ids)})
    refused(path, tmp_path, r"2 tables \(bins_16um, bins_8um\) and none named 'table'")
    refused(path, tmp_path, r"no table 'cells'; tables: bins_16um, bins_8um", table="cells")
    assert SpatialDataZarrSource(path, table="bins_8um").obs.shape[0] == N_CELLS


def test_stdask_store_is_not_an_input(circles_store, circles_ingested, tmp_path):
    path, store = circles_store[0], circles_ingested[0].path
    # a stdask store is itself a SpatialData zarr (spatialdata_attrs, tables/), but it is opened, not ingested
    import json

    attrs = json.loads((store / "zarr.json").read_text())["attributes"]
    assert "spatialdata_attrs" in attrs and "stdask" in attrs and (store / "tables").is_dir()
    assert SpatialDataZarrSource.detect(path) and not SpatialDataZarrSource.detect(store)
    with pytest.raises(InputError, match=r"out\.zarr: not a SpatialData zarr .*stdask\.read"):
        SpatialDataZarrSource(store)
    assert not SpatialDataZarrSource.detect(tmp_path)  # a plain folder


def test_units_points_and_zarr_v2(tmp_path):
    import json

    from spatialdata._io.format import ShapesFormatV01, SpatialDataContainerFormatV01, TablesFormatV01
    from spatialdata.models import PointsModel

    rng = np.random.default_rng(14)
    shapes, ids, centre, radius = circles(rng, 30)
    x = counts(rng, 30)
    # spatialdata-io's Xenium: circles in um, Scale(1 / pixel_size) to 'global' (morphology pixels)
    data = sd.SpatialData(shapes={"cells": shapes}, tables={"table": table(x, ids)})
    data.attrs["spatialdata_io_reader"] = "xenium"
    data.write(tmp_path / "xenium.zarr")
    src = SpatialDataZarrSource(tmp_path / "xenium.zarr")
    assert src.unit == "pixel" and src.microns_per_unit == pytest.approx(1 / SCALE)
    # axes declaring micrometres
    meta = tmp_path / "xenium.zarr" / "shapes" / "cells" / "zarr.json"
    doc = json.loads(meta.read_text())
    for axis in doc["attributes"]["coordinateTransformations"][0]["output"]["axes"]:
        axis["unit"] = "micrometer"
    meta.write_text(json.dumps(doc))
    src = SpatialDataZarrSource(tmp_path / "xenium.zarr")
    assert src.unit == "um" and src.microns_per_unit == 1.0
    # a table annotating a points element: obsm['spatial'] mapped by that element's transformation
    pts = pd.DataFrame({"x": rng.uniform(0, 9, 90), "y": rng.uniform(0, 9, 90), "cell_id": rng.choice(ids, 90)})
    points = PointsModel.parse(pts, instance_key="cell_id",
                               transformations={"global": Scale([3.0, 3.0], axes=("x", "y"))})
    t = table(x, ids, region="tx")
    t.obsm["spatial"] = centre
    sd.SpatialData(points={"tx": points}, tables={"table": t}).write(tmp_path / "points.zarr")
    src = SpatialDataZarrSource(tmp_path / "points.zarr")
    np.testing.assert_allclose(src.coords, centre * 3.0)
    assert src.spot_diameter is None
    # zarr v2, spatialdata's first formats (shapes as zarr arrays, not GeoParquet)
    v2 = tmp_path / "v2.zarr"
    data.write(v2, sdata_formats=[SpatialDataContainerFormatV01(), ShapesFormatV01(), TablesFormatV01()])
    assert (v2 / ".zattrs").is_file() and (v2 / "shapes" / "cells" / "coords").exists()
    src = SpatialDataZarrSource(v2)
    rows = pd.Index([f"cell{i:04d}" for i in range(30)]).get_indexer(src.obs.index)
    np.testing.assert_allclose(src.coords, centre[rows] * SCALE)
    assert src.spot_diameter == pytest.approx(2 * np.median(radius) * SCALE)
    assert sum(int(c.value.sum()) for c in src.iter_entries()) == int(x.sum())


def test_read_converts_a_spatialdata_zarr_once(circles_store, tmp_path):
    """stdask.read of a SpatialData zarr ingests it into <name>.stdask.zarr next to it, then reuses that store."""
    import os
    import shutil

    src = tmp_path / "circles.zarr"
    shutil.copytree(circles_store[0], src)
    ds = stdask.read(src, progress=False)
    target = tmp_path / "circles.stdask.zarr"
    assert ds.path == target and ds.n_obs == N_CELLS
    assert ds.provenance["source_format"] == "spatialdata"
    stamp = (target / "zarr.json").stat().st_mtime_ns
    assert stdask.read(src, progress=False).path == target
    assert (target / "zarr.json").stat().st_mtime_ns == stamp  # reused, not converted again
    # the input changes (its table metadata is rewritten): converted again
    meta = src / "tables" / "table" / "zarr.json"
    later = (target / "zarr.json").stat().st_mtime + 10
    os.utime(meta, (later, later))
    assert stdask.read(src, progress=False).path == target
    assert (target / "zarr.json").stat().st_mtime_ns != stamp
    # a store converted from another input is never replaced
    other = tmp_path / "other.zarr"
    shutil.copytree(src, other)
    with pytest.raises(FileExistsError, match="was not converted from"):
        stdask.read(other, converted=target, progress=False)
    assert stdask.read(target).n_obs == N_CELLS


def test_cli_ingest_with_table_options(circles_store, tmp_path, capsys):
    from stdask.cli import main as cli

    path = circles_store[0]
    assert cli(["ingest", str(path), str(tmp_path / "c.zarr"), "--table", "table",
                "--coordinate-system", "global"]) == 0
    ds = stdask.read(tmp_path / "c.zarr")
    assert ds.n_obs == N_CELLS and ds.provenance["source_format"] == "spatialdata"
    assert cli(["ingest", str(path), str(tmp_path / "d.zarr"), "--table", "nope"]) != 0
    assert "nope" in capsys.readouterr().err and not (tmp_path / "d.zarr").exists()
