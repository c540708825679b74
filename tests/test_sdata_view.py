"""The SpatialData view of an ingested store: shapes element, table annotation, ``global`` coordinates in um."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import stdask
from stdask.datasets import synthetic_slice
from stdask.datasets.gem import write_gem
from stdask.datasets.tenx import write_visium
from stdask.store.format import StoreDamageError
from stdask.store.sdata_view import ShapeSpec, global_transform

spatialdata = pytest.importorskip("spatialdata")
from spatialdata.transformations import get_transformation  # noqa: E402

UM_PER_PIXEL = 0.5


@pytest.fixture(scope="module")
def visium_store(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("vis")
    s = synthetic_slice(n_obs=300, n_genes=40, layout="visium", seed=4, n_markers=2)
    write_visium(s, d / "outs", um_per_pixel=UM_PER_PIXEL)
    return stdask.ingest(d / "outs", d / "vis.zarr", progress=False, tile_size=1500.0)


@pytest.fixture(scope="module")
def gem_store(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("gem")
    s = synthetic_slice(n_obs=1500, n_genes=40, layout="stereo", seed=5, n_markers=2)
    write_gem(s, d / "a.gem")
    return stdask.ingest(d / "a.gem", d / "g.zarr", bin_size=20, progress=False)


def annotated(store: Path):
    """(sdata, table, element, attrs): the store as spatialdata reads it and the element its table annotates."""
    sdata = spatialdata.read_zarr(store)
    table = sdata.tables["table"]
    attrs = table.uns["spatialdata_attrs"]
    return sdata, table, sdata.shapes[attrs["region"]], attrs


def check_annotation(store: Path) -> tuple:
    """The table's attributes point at an element that exists, each row's instance id names one geometry."""
    sdata, table, element, attrs = annotated(store)
    assert list(sdata.shapes) == [attrs["region"]]
    assert set(table.obs[attrs["region_key"]].astype(str)) == {attrs["region"]}
    ids = table.obs[attrs["instance_key"]].to_numpy()
    assert len(element) == len(table) and np.array_equal(np.sort(ids), np.sort(element.index.to_numpy()))
    assert "global" in get_transformation(element, get_all=True)
    return sdata, table, element, attrs


def centres(element) -> np.ndarray:
    return np.column_stack([element.geometry.centroid.x.to_numpy(), element.geometry.centroid.y.to_numpy()])


def test_visium_spots_are_circles_in_microns(visium_store):
    sdata, table, element, attrs = check_annotation(visium_store)
    ds = stdask.read(visium_store)
    assert attrs["region"] == "spots"
    # the geometry of row i is the observation's position, its radius the spot's (55 um = spot_diameter px)
    rows = element.loc[table.obs[attrs["instance_key"]].to_numpy()]
    np.testing.assert_array_equal(centres(rows), ds.coords)
    np.testing.assert_allclose(rows["radius"].to_numpy(), ds.spot_diameter / 2)
    # global = store pixels x um per pixel; the spot is 55 um across there
    mpu = ds.microns_per_unit
    assert mpu == pytest.approx(UM_PER_PIXEL)
    matrix = get_transformation(element, "global").to_affine_matrix(input_axes=("x", "y"), output_axes=("x", "y"))
    np.testing.assert_allclose(matrix, np.diag([mpu, mpu, 1.0]))
    assert 2 * rows["radius"].iloc[0] * matrix[0, 0] == pytest.approx(55.0)


def test_gem_bins_are_squares_of_the_bin(gem_store):
    sdata, table, element, attrs = check_annotation(gem_store)
    ds = stdask.read(gem_store)
    assert attrs["region"] == "bins" and ds.microns_per_unit == pytest.approx(0.5)
    rows = element.loc[table.obs[attrs["instance_key"]].to_numpy()]
    b = rows.geometry.bounds.to_numpy()
    np.testing.assert_allclose(b[:, 2] - b[:, 0], 20.0)
    np.testing.assert_allclose(b[:, 3] - b[:, 1], 20.0)
    np.testing.assert_allclose(centres(rows), ds.coords)
    # each bin's square holds exactly the DNBs of the bin: its lower corner is on the 20-DNB grid
    assert np.allclose((b[:, 0] + 0.5) % 20, 0) and np.allclose((b[:, 1] + 0.5) % 20, 0)


def test_annotation_survives_a_write(visium_store, tmp_path):
    p = tmp_path / "w.zarr"
    shutil.copytree(visium_store, p)
    ds = stdask.read(p)
    ds.set_result("obs", "domain", pd.Categorical(np.arange(ds.n_obs) % 3))
    ds.write()
    sdata, table, element, attrs = check_annotation(p)
    assert "domain" in table.obs
    assert stdask.read(p).verify().ok


def test_to_spatialdata_uses_the_stores_element(visium_store):
    ds = stdask.read(visium_store)
    s = ds.to_spatialdata()
    attrs = s.tables["table"].uns["spatialdata_attrs"]
    assert list(s.shapes) == ["spots"] and attrs["region"] == "spots"
    np.testing.assert_allclose(get_transformation(s.shapes["spots"], "global").scale, [UM_PER_PIXEL] * 2)


def test_damaged_shapes_are_reported(visium_store, tmp_path):
    from stdask.store.verify import verify_store

    p = tmp_path / "d.zarr"
    shutil.copytree(visium_store, p)
    assert verify_store(p).ok
    f = p / "shapes" / "spots" / "shapes.parquet"
    f.write_bytes(f.read_bytes()[:-100])
    report = verify_store(p)
    assert not report.ok and "shapes.parquet" in str(report)
    with pytest.raises(StoreDamageError, match="shapes.parquet"):
        stdask.read(p).to_spatialdata()


def test_spatialdata_plot_draws_a_gene(visium_store):
    """spatialdata-plot draws one shape per spot, coloured by the gene's counts."""
    pytest.importorskip("spatialdata_plot")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sdata, table, element, attrs = annotated(visium_store)
    ds = stdask.read(visium_store)
    X = ds.X.compute()
    gene = ds.var_names[int(np.argmax(np.asarray(X.sum(0)).ravel()))]
    ax = sdata.pl.render_shapes(attrs["region"], color=gene).pl.show(return_ax=True)
    drawn = [c for c in ax.collections if len(c.get_paths()) == ds.n_obs]
    assert len(drawn) == 1, "no collection with one shape per spot"
    # the face colours are the colour map at the gene's counts, shape by shape of the element: map each colour back
    # to its position on the map, which must order the spots as their counts do (equal counts, equal colours)
    counts = np.asarray(X[:, list(ds.var_names).index(gene)].todense()).ravel().astype(float)
    order = table.obs[attrs["instance_key"]].to_numpy()
    by_instance = pd.Series(counts, index=order).loc[element.index.to_numpy()].to_numpy()
    lut = matplotlib.colormaps["viridis"](np.linspace(0, 1, 256))[:, :3]
    faces = np.asarray(drawn[0].get_facecolors())[:, :3]
    pos = np.argmin(((faces[:, None, :] - lut[None]) ** 2).sum(-1), axis=1)
    for value in np.unique(by_instance):
        assert len(np.unique(pos[by_instance == value])) == 1
    levels = [pos[by_instance == v][0] for v in np.unique(by_instance)]
    assert levels == sorted(levels) and levels[0] < levels[-1]
    plt.close("all")


def test_shape_spec_and_transform_checks():
    with pytest.raises(ValueError, match="geometry"):
        ShapeSpec("cells", "hexagon")
    with pytest.raises(ValueError, match="name"):
        ShapeSpec("a/b")
    assert global_transform(None)[0]["type"] == "identity"
    t = global_transform(0.25)[0]
    assert t["type"] == "scale" and t["scale"] == [0.25, 0.25] and t["output"]["name"] == "global"


@pytest.fixture(scope="module")
def xenium_store(tmp_path_factory) -> tuple[Path, Path]:
    from stdask.datasets import write_xenium

    d = tmp_path_factory.mktemp("xen")
    write_xenium(d / "outs", n_cells=300, n_genes=40, seed=6, chunk_size=120)
    return d / "outs", stdask.ingest(d / "outs", d / "x.zarr", points=True, progress=False, tile_size=60.0)


def test_xenium_keeps_every_transcript_as_points(xenium_store):
    """Every transcripts.parquet row is in the points element, by tile; spatialdata reads shapes and points."""
    import pyarrow.parquet as pq

    outs, store = xenium_store
    tx = pq.read_table(outs / "transcripts.parquet").to_pandas()
    ds = stdask.read(store)
    assert ds.points_names() == ["transcripts"] and ds.provenance["n_points"] == len(tx)
    pts = ds.points().compute()
    assert len(pts) == len(tx)
    got = pts.set_index("transcript_id").loc[tx["transcript_id"].to_numpy()]
    np.testing.assert_array_equal(got["x"].to_numpy(), tx["x_location"].to_numpy(np.float64))
    np.testing.assert_array_equal(got["feature_name"].astype(str).to_numpy(), tx["feature_name"].to_numpy())
    # the tile column is the store tile holding the point (-1 outside every tile), and a tile reads alone
    inside = got["tile"].to_numpy() >= 0
    np.testing.assert_array_equal(got["tile"].to_numpy()[inside],
                                  ds.tiling.tile_of(got["x"].to_numpy()[inside], got["y"].to_numpy()[inside]))
    one = ds.points(tiles=[3]).compute()
    assert len(one) == int((got["tile"] == 3).sum()) and (one["tile"] == 3).all()
    sdata, table, element, attrs = check_annotation(store)
    assert attrs["region"] == "cells" and list(sdata.points) == ["transcripts"]
    assert len(sdata.points["transcripts"]) == len(tx)
    assert ds.verify().ok


def test_points_refused_without_transcripts(tmp_path, visium_store):
    s = synthetic_slice(n_obs=50, n_genes=40, layout="visium", seed=4, n_markers=2)
    write_visium(s, tmp_path / "outs")
    with pytest.raises(ValueError, match="no molecule-level points"):
        stdask.ingest(tmp_path / "outs", tmp_path / "v.zarr", points=True, progress=False)
    assert not (tmp_path / "v.zarr").exists()


def test_visium_images_in_the_global_frame(tmp_path):
    """The tissue images become images elements whose 'global' frame is the spots': a spot's image pixel maps to
    the spot's centre in um."""
    s = synthetic_slice(n_obs=120, n_genes=40, layout="visium", seed=4, n_markers=2)
    write_visium(s, tmp_path / "outs", um_per_pixel=UM_PER_PIXEL, images=True)
    store = stdask.ingest(tmp_path / "outs", tmp_path / "v.zarr", progress=False)
    sdata = spatialdata.read_zarr(store)
    assert sorted(sdata.images) == ["synthetic_hires_image", "synthetic_lowres_image"]
    ds = stdask.read(store)
    lib = ds.to_anndata().uns["spatial"]["synthetic"]
    for quality in ("hires", "lowres"):
        image = sdata.images[f"synthetic_{quality}_image"]
        assert image.shape[0] == 3 and max(image.shape[1:]) == (2000 if quality == "hires" else 600)
        m = get_transformation(image, "global").to_affine_matrix(("x", "y"), ("x", "y"))
        scalef = lib["scalefactors"][f"tissue_{quality}_scalef"]
        pix = np.vstack([ds.coords[:, 0] * scalef, ds.coords[:, 1] * scalef, np.ones(ds.n_obs)])
        np.testing.assert_allclose((m @ pix)[:2].T, ds.coords * UM_PER_PIXEL, rtol=1e-9)
        # the picture shows tissue at the spots: pink (green channel < 0.6) at each spot's pixel
        img = np.asarray(image)
        r = np.clip(pix[1].astype(int), 0, img.shape[1] - 1)
        c = np.clip(pix[0].astype(int), 0, img.shape[2] - 1)
        assert (img[1, r, c] < 0.6).all()


def test_xenium_cell_polygons_annotated(xenium_store, tmp_path):
    """shapes='polygons': the table annotates the cells' segmentation polygons, each holding its cell's centroid."""
    import shapely

    outs, _ = xenium_store
    store = stdask.ingest(outs, tmp_path / "poly.zarr", shapes="polygons", progress=False, tile_size=60.0)
    sdata, table, element, attrs = check_annotation(store)
    assert attrs["region"] == "cell_boundaries" and list(sdata.shapes) == ["cell_boundaries"]
    assert set(element.geom_type) == {"Polygon"}
    ds = stdask.read(store)
    rows = element.loc[table.obs[attrs["instance_key"]].to_numpy()]
    assert shapely.contains_xy(rows.geometry.to_numpy(), ds.coords[:, 0], ds.coords[:, 1]).all()
    assert ds.verify().ok
    with pytest.raises(ValueError, match="polygons"):
        stdask.ingest(outs, tmp_path / "bad.zarr", shapes="hexagons", progress=False)


def test_a_subset_store_annotates_its_own_element(visium_store, tmp_path):
    """A store written from another (subset) gets its own shapes and ids, not the parent's region columns."""
    ds = stdask.read(visium_store)
    keep = np.arange(ds.n_obs) % 2 == 0
    sub = stdask.pp.subset(ds, tmp_path / "sub.zarr", obs=keep, progress=False)
    sdata, table, element, attrs = check_annotation(sub.path)
    assert attrs["region_key"] == "region" and attrs["instance_key"] == "instance_id"
    assert not {"stdask_region", "stdask_instance_id"} & set(table.obs.columns)
    assert len(element) == int(keep.sum())
