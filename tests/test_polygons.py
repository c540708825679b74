"""Xenium cell boundary polygons as a shapes element (:mod:`stdask.store.polygons`,
``XeniumSource.iter_boundaries``)."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zarr

from stdask.datasets import write_xenium
from stdask.io.base import InputError
from stdask.io.xenium import BOUNDARIES_FILE, XeniumSource
from stdask.store.format import StoreDamageError
from stdask.store.polygons import PolygonError, write_polygons
from stdask.store.sdata_view import check_shapes

shapely = pytest.importorskip("shapely")
gpd = pytest.importorskip("geopandas")

N_CELLS = 300
NAME = "cell_boundaries"


@pytest.fixture(scope="module")
def outs(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("xen") / "outs"
    write_xenium(d, n_cells=N_CELLS, n_genes=40, seed=3, chunk_size=120)
    return d


@pytest.fixture(scope="module")
def rank() -> np.ndarray:
    """A known permutation: source row i is store row rank[i]."""
    return np.random.default_rng(11).permutation(N_CELLS).astype(np.int64)


@pytest.fixture(scope="module")
def file_rings(outs):
    """The boundary file read whole (small here), independently of the reader: (n, 13) vertex x, y per cell."""
    t = pq.read_table(outs / BOUNDARIES_FILE).to_pandas()
    cells = pq.read_table(outs / "cells.parquet").to_pandas()
    rows = source_rows(cells["cell_id"], t["cell_id"])
    k = len(t) // N_CELLS
    assert (np.diff(rows) >= 0).all() and np.array_equal(np.bincount(rows, minlength=N_CELLS), np.full(N_CELLS, k))
    vx = t["vertex_x"].to_numpy(np.float64).reshape(N_CELLS, k)
    return vx, t["vertex_y"].to_numpy(np.float64).reshape(N_CELLS, k), cells


def source_rows(cell_ids, vertex_ids) -> np.ndarray:
    """Row in the cell table of each vertex's cell id (a plain dict, not the reader's lookup)."""
    lookup = {c: i for i, c in enumerate(cell_ids)}
    return np.array([lookup[c] for c in vertex_ids])


def scratch_root(path: Path) -> Path:
    g = zarr.open_group(str(path), mode="w", zarr_format=3)
    g.attrs["spatialdata_attrs"] = {"version": "0.2"}
    return path


def written(root: Path):
    return gpd.read_parquet(root / "shapes" / NAME / "shapes.parquet")


@pytest.fixture(scope="module")
def store(outs, rank, tmp_path_factory) -> Path:
    src = XeniumSource(outs)
    root = scratch_root(tmp_path_factory.mktemp("poly") / "s.zarr")
    n = write_polygons(root, NAME, src.iter_boundaries(1000), N_CELLS, rank, None, source=str(src.boundaries_file),
                       names=src.obs.index.to_numpy())
    assert n == N_CELLS
    return root


def test_polygons_are_the_files_rings(store, rank, file_rings):
    vx, vy, cells = file_rings
    gdf = written(store)
    assert gdf.index.name == "instance_id" and len(gdf) == N_CELLS
    assert set(shapely.get_type_id(gdf.geometry.to_numpy())) == {shapely.GeometryType.POLYGON}
    # polygons come in file order (= cells.parquet order); each one's index is its cell's store row
    np.testing.assert_array_equal(gdf.index.to_numpy(), rank)
    coords = shapely.get_coordinates(shapely.get_exterior_ring(gdf.geometry.to_numpy())).reshape(N_CELLS, -1, 2)
    np.testing.assert_array_equal(coords[:, :, 0], vx)
    np.testing.assert_array_equal(coords[:, :, 1], vy)
    assert np.array_equal(coords[:, 0], coords[:, -1])  # closed rings
    # area = cells.parquet's cell_area (the writer's shoelace over the same float32 vertices)
    np.testing.assert_allclose(shapely.area(gdf.geometry.to_numpy()), cells["cell_area"].to_numpy(), rtol=1e-6)
    assert shapely.contains_xy(gdf.geometry.to_numpy(), cells["x_centroid"].to_numpy(),
                               cells["y_centroid"].to_numpy()).all()


@pytest.mark.parametrize("chunk", [7, 20])
def test_cells_split_across_batches_are_rebuilt_whole(outs, rank, store, chunk, tmp_path):
    """13 rows per cell: with 20-row batches cell 1 spans rows 13-25, with 7-row batches every cell spans 2-3."""
    src = XeniumSource(outs)
    batches = list(src.iter_boundaries(chunk))
    assert len(batches[0][0]) == chunk and batches[0][0][-1] == batches[1][0][0]  # a cell does cross a boundary
    root = scratch_root(tmp_path / "s.zarr")
    write_polygons(root, NAME, iter(batches), N_CELLS, rank, None)
    small, whole = written(root), written(store)
    np.testing.assert_array_equal(small.index.to_numpy(), whole.index.to_numpy())
    assert shapely.equals_exact(small.geometry.to_numpy(), whole.geometry.to_numpy(), tolerance=0).all()
    assert (shapely.get_num_coordinates(small.geometry.to_numpy()) == 13).all()


def test_spatialdata_reads_the_element_and_check_shapes(store, rank):
    spatialdata = pytest.importorskip("spatialdata")
    from spatialdata.models import ShapesModel
    from spatialdata.transformations import get_transformation

    element = spatialdata.read_zarr(store).shapes[NAME]
    ShapesModel.validate(element)
    assert np.array_equal(np.sort(element.index.to_numpy()), np.arange(N_CELLS))
    assert "global" in get_transformation(element, get_all=True)
    meta = zarr.open_group(str(store / "shapes" / NAME), mode="r").attrs["stdask"]
    assert meta["geometry"] == "polygon" and meta["n"] == N_CELLS
    check_shapes(store, NAME)


def test_check_shapes_refuses_a_truncated_file(outs, rank, tmp_path):
    root = scratch_root(tmp_path / "s.zarr")
    write_polygons(root, NAME, XeniumSource(outs).iter_boundaries(500), N_CELLS, rank, 0.5)
    check_shapes(root, NAME)
    path = root / "shapes" / NAME / "shapes.parquet"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(StoreDamageError, match="bytes"):
        check_shapes(root, NAME)


def ring(cx: float, cy: float, n: int = 5) -> tuple[np.ndarray, np.ndarray]:
    a = np.linspace(0, 2 * np.pi, n, endpoint=False)
    x, y = cx + np.cos(a), cy + np.sin(a)
    return np.append(x, x[0]), np.append(y, y[0])


def batch_of(*cells: tuple[int, np.ndarray, np.ndarray]):
    return (np.concatenate([np.full(len(x), c, np.int64) for c, x, _ in cells]),
            np.concatenate([x for _, x, _ in cells]), np.concatenate([y for _, _, y in cells]))


def test_open_rings_are_closed_and_bad_cells_refused(tmp_path):
    ok = [(0, *ring(0, 0)), (1, *ring(5, 0)), (2, *ring(10, 0))]
    rank = np.array([2, 0, 1])
    open_ring = (1, ok[1][1][:-1], ok[1][2][:-1])  # the closing vertex left out
    root = scratch_root(tmp_path / "a.zarr")
    write_polygons(root, NAME, [batch_of(ok[0], open_ring, ok[2])], 3, rank, None)
    gdf = written(root)
    assert list(gdf.index) == [2, 0, 1] and (shapely.get_num_coordinates(gdf.geometry.to_numpy()) == 6).all()

    names = np.array(["a", "b", "c"], dtype=object)
    two = (1, np.array([5.0, 6.0, 5.0, 6.0, 5.0]), np.array([0.0, 1.0, 0.0, 1.0, 0.0]))  # 2 distinct vertices
    cases = {
        "'b' \\(row 1\\) has 2 distinct vertices": [batch_of(ok[0], two, ok[2])],
        "'c' \\(row 2\\) has no boundary \\(1 of 3": [batch_of(ok[0], ok[1])],
        "'a' \\(row 0\\) has vertices in two places": [batch_of(ok[0], ok[1]), batch_of(ok[2], ok[0])],
        "row 3 is outside": [batch_of(*ok, (3, *ring(0, 9)))],
        "'a' \\(row 0\\) has a vertex \\(nan": [batch_of((0, np.array([0.0, np.nan, 1.0]), np.zeros(3)), *ok[1:])],
    }
    for i, (message, batches) in enumerate(cases.items()):
        with pytest.raises(PolygonError, match=f"boundaries.parquet: cell {message}"):
            write_polygons(scratch_root(tmp_path / f"{i}.zarr"), NAME, batches, 3, rank, None,
                           source="boundaries.parquet", names=names)


def edited_outs(outs: Path, tmp_path: Path, edit) -> XeniumSource:
    """A copy of ``outs`` whose boundary table is ``edit(table)``."""
    copy = tmp_path / "outs"
    shutil.copytree(outs, copy)
    pq.write_table(edit(pq.read_table(outs / BOUNDARIES_FILE)), copy / BOUNDARIES_FILE)
    return XeniumSource(copy)


def test_unknown_cell_id_and_missing_column_are_refused(outs, tmp_path):
    def unknown(t: pa.Table) -> pa.Table:
        ids = t.column("cell_id").to_pylist()
        ids[40] = "zzzzzzzz-1"
        return t.set_column(0, "cell_id", pa.array(ids, pa.string()))

    src = edited_outs(outs, tmp_path / "a", unknown)
    with pytest.raises(InputError, match=r"cell_boundaries.parquet: row 40: cell_id 'zzzzzzzz-1' is not in"):
        list(src.iter_boundaries(30))
    src = edited_outs(outs, tmp_path / "b", lambda t: t.drop(["vertex_y"]))
    with pytest.raises(InputError, match=r"cell_boundaries.parquet: no column\(s\) vertex_y"):
        list(src.iter_boundaries(30))
    (src.outs / BOUNDARIES_FILE).unlink()
    assert src.boundaries_file is None
    with pytest.raises(InputError, match="no cell_boundaries.parquet"):
        list(src.iter_boundaries(30))


def test_iter_boundaries_gives_cells_parquet_rows(outs, file_rings):
    vx, vy, cells = file_rings
    cell, x, y = (np.concatenate(a) for a in zip(*XeniumSource(outs).iter_boundaries(50)))
    k = vx.shape[1]
    np.testing.assert_array_equal(cell, np.repeat(np.arange(N_CELLS), k))
    np.testing.assert_array_equal(x, vx.ravel())
    np.testing.assert_array_equal(y, vy.ravel())
    assert cell.dtype == np.int64 and x.dtype == np.float64
