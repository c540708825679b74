"""Categorical obs columns (SpaSEG / STAGUE domains) as SpatialData labels elements."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import stdask
from stdask.datasets import synthetic_slice
from stdask.datasets.gem import write_gem
from stdask.raster import read_labels, write_labels
from stdask.raster.grid import dataset_grid
from stdask.raster.labels import pixel_labels


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("lab")
    s = synthetic_slice(n_obs=1500, n_genes=40, layout="stereo", seed=5, n_markers=2)
    write_gem(s, d / "a.gem")
    return stdask.ingest(d / "a.gem", d / "g.zarr", bin_size=20, progress=False)


def test_pixel_labels_commonest_wins():
    # pixel 0: labels 2, 2, 3 -> 2; pixel 1: 3, 1 (tie) -> 1; pixel 2: only a missing category -> 0; pixel 3 empty
    pixel = np.array([0, 0, 0, 1, 1, 2])
    label = np.array([2, 3, 2, 3, 1, 0], np.int32)
    np.testing.assert_array_equal(pixel_labels(pixel, label, 4), [2, 1, 0, 0])


def test_domains_as_labels(store, tmp_path):
    p = tmp_path / "g.zarr"
    shutil.copytree(store, p)
    ds = stdask.read(p)
    rng = np.random.default_rng(0)
    dom = pd.Categorical(rng.choice(["L1", "L2", "WM"], ds.n_obs), categories=["L1", "L2", "WM"])
    ds.set_result("obs", "domain", dom)  # pending, as a fresh tl.spaseg result is
    write_labels(ds, "domain")
    grid = dataset_grid(ds)
    image = np.asarray(read_labels(ds, "domain"))
    # one bin per pixel: each bin's pixel holds its domain's code + 1, every other pixel is background
    assert grid.collisions().n_shared_pixels == 0
    np.testing.assert_array_equal(image[grid.row, grid.col], dom.codes + 1)
    assert (image > 0).sum() == ds.n_obs
    assert read_labels(ds, "domain").attrs["categories"] == ["L1", "L2", "WM"]
    spatialdata = pytest.importorskip("spatialdata")
    from spatialdata.transformations import get_transformation

    sdata = spatialdata.read_zarr(p)
    assert list(sdata.labels) == ["domain"] and "bins" in sdata.shapes
    # the labels' 'global' frame is the shapes' (um): a bin's pixel centre lands on the bin's centre
    m = get_transformation(sdata.labels["domain"], "global").to_affine_matrix(("x", "y"), ("x", "y"))
    centres = m @ np.vstack([grid.col + 0.5, grid.row + 0.5, np.ones(ds.n_obs)])
    np.testing.assert_allclose(centres[:2].T, ds.coords * ds.microns_per_unit, atol=1e-6)
    with pytest.raises(KeyError, match="categorical columns: .*domain"):
        write_labels(ds, "nope")
