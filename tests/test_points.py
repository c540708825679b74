"""The points element: streamed by tile into Parquet parts, read back whole or by tile, checked for damage, and
read by spatialdata itself."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import zarr

from stdask.io.base import PointChunk
from stdask.store.format import StoreDamageError
from stdask.store.points import PointsWriter, open_points, points_attrs, points_names
from stdask.store.tiling import Tiling

TILE = 50.0
N = 12_000
ROWS_PER_PART = 1_500
FEATURES = [f"Gene{i:02d}" for i in range(25)] + ["NegControlProbe_00001", "Zß-gene"]


def make_points(seed: int = 0) -> pd.DataFrame:
    """N points over [-100, 600) x [-50, 400) (the obs tiling below covers [0, 500) x [0, 300) less a hole), a
    sixth of them crowded into [60, 90) x [10, 40), one tile."""
    rng = np.random.default_rng(seed)
    crowd = N // 6
    return pd.DataFrame({
        "x": np.concatenate([rng.uniform(60, 90, crowd), rng.uniform(-100, 600, N - crowd)]),
        "y": np.concatenate([rng.uniform(10, 40, crowd), rng.uniform(-50, 400, N - crowd)]),
        "feature": rng.choice(np.array(FEATURES, dtype=object), N),
        "id": rng.permutation(N).astype(np.uint64) + np.uint64(10**12),
        "cell_id": rng.choice(np.array(["UNASSIGNED", "aaaaaaab-1", "ffkpbaba-1", "zelle-ü"], dtype=object), N),
        "qv": rng.uniform(0, 40, N).astype(np.float32),
        "flag": rng.random(N) < 0.3,
    })


def make_tiling() -> Tiling:
    """Tiles of the obs: a grid over [0, 500) x [0, 300) with no obs in [200, 300) x [100, 200) (an unlisted cell)."""
    rng = np.random.default_rng(1)
    x, y = rng.uniform(0, 500, 3000), rng.uniform(0, 300, 3000)
    keep = ~((x >= 200) & (x < 300) & (y >= 100) & (y < 200))
    return Tiling.of_points(TILE, x[keep], y[keep])


def expected_tile(tiling: Tiling, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Store tile index of each point, -1 where its grid cell holds no store tile (computed with a dict)."""
    index = {int(g): i for i, g in enumerate(tiling.tiles)}
    gx = np.floor(x / TILE).astype(np.int64) - tiling.ix0
    gy = np.floor(y / TILE).astype(np.int64) - tiling.iy0
    out = np.full(len(x), -1, np.int64)
    for i in range(len(x)):
        if 0 <= gx[i] < tiling.nx and 0 <= gy[i] < tiling.ny:
            out[i] = index.get(int(gy[i] * tiling.nx + gx[i]), -1)
    return out


def write(root: Path, pts: pd.DataFrame, tiling: Tiling, chunk: int = 2_500, microns_per_unit=0.5) -> Path:
    """A minimal SpatialData store root holding points/transcripts; returns the root."""
    g = zarr.open_group(str(root), mode="w", zarr_format=3)
    g.attrs["spatialdata_attrs"] = {"version": "0.2"}
    spill = root.parent / f"{root.name}-spill"
    spill.mkdir()
    with PointsWriter(tiling, spill, rows_per_part=ROWS_PER_PART, run_entries=4_000) as w:
        for a in range(0, len(pts), chunk):
            p = pts.iloc[a:a + chunk]
            w.add(PointChunk(p["x"].to_numpy(), p["y"].to_numpy(), p["feature"].to_numpy(),
                             {c: p[c].to_numpy() for c in ("id", "cell_id", "qv", "flag")}))
        n = w.write(root / "points" / "transcripts", microns_per_unit=microns_per_unit, unit="um")
    assert n == len(pts)
    assert list(spill.iterdir()) == []  # spill files removed on close
    return root


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    tiling = make_tiling()
    pts = make_points()
    root = write(tmp_path_factory.mktemp("points") / "s.zarr", pts, tiling)
    pts["tile"] = expected_tile(tiling, pts["x"].to_numpy(), pts["y"].to_numpy())
    return root, pts, tiling


def test_fixture_has_every_kind_of_point(case):
    _, pts, tiling = case
    t = pts["tile"].to_numpy()
    outside_box = (pts["x"] < 0) | (pts["x"] >= 500) | (pts["y"] < 0) | (pts["y"] >= 300)
    in_hole = (pts["x"] >= 200) & (pts["x"] < 300) & (pts["y"] >= 100) & (pts["y"] < 200)
    assert outside_box.sum() > 1000 and in_hole.sum() > 100
    assert (t[outside_box | in_hole] == -1).all() and (t[~(outside_box | in_hole)] >= 0).all()
    # one tile holds more points than a part: it must be split over parts
    per_tile = np.sort(np.bincount(t[t >= 0]))
    assert per_tile[-1] > ROWS_PER_PART > per_tile[-2]


def test_every_point_once_with_its_values(case):
    root, pts, _ = case
    df = open_points(root, "transcripts").compute()
    assert len(df) == N and df["id"].is_unique
    got = df.sort_values("id").reset_index(drop=True)
    want = pts.sort_values("id").reset_index(drop=True)
    for c in ("x", "y", "qv", "flag", "tile"):
        assert np.array_equal(got[c].to_numpy(), want[c].to_numpy()), c
    assert got["id"].dtype == np.uint64 and got["qv"].dtype == np.float32 and got["x"].dtype == np.float64
    assert list(got["feature_name"].astype(str)) == list(want["feature"])
    assert list(got["cell_id"].astype(str)) == list(want["cell_id"])
    assert points_names(root) == ["transcripts"]


def test_parts_are_sorted_by_tile_with_one_dictionary(case):
    root, pts, _ = case
    rec = points_attrs(root, "transcripts")
    element = root / "points" / "transcripts"
    assert rec["n_points"] == N and sum(p["rows"] for p in rec["parts"]) == N
    tiles, dictionaries = [], []
    for p in rec["parts"]:
        table = pq.read_table(element / p["path"])
        assert 0 < table.num_rows <= ROWS_PER_PART and table.num_rows == p["rows"]
        t = table.column("tile").to_numpy()
        assert [t[0], t[-1]] == p["tiles"]
        # store-tile parts and points in no store tile are never mixed in one part
        assert (t >= 0).all() or (t == -1).all()
        dictionaries.append(table.column("feature_name").combine_chunks().dictionary.to_pylist())
        tiles.append(t)
    t = np.concatenate(tiles)
    store = t[t >= 0]
    # tiles ascending, then the points in no store tile: each tile is one contiguous run of rows
    assert (np.diff(store) >= 0).all() and (t[len(store):] == -1).all()
    assert all(d == sorted(set(pts["feature"])) for d in dictionaries)
    # dask sees one categorical dtype over the parts
    df = open_points(root, "transcripts")
    assert df.npartitions == len(rec["parts"]) and df["feature_name"].cat.known


def test_read_by_tile(case):
    root, pts, tiling = case
    counts = pts["tile"].value_counts()
    n_parts = len(points_attrs(root, "transcripts")["parts"])
    for k in (0, int(counts[counts.index >= 0].idxmax()), len(tiling.tiles) - 1, -1):
        df = open_points(root, "transcripts", tiles=[k])
        got = np.sort(df["id"].compute().to_numpy())
        assert np.array_equal(got, np.sort(pts.loc[pts["tile"] == k, "id"].to_numpy())), k
        if k >= 0:  # only the parts holding the tile are read (a tile spans at most two parts here)
            assert df.npartitions <= 2 < n_parts
    both = open_points(root, "transcripts", tiles=np.array([1, 3]))
    assert len(both) == int(((pts["tile"] == 1) | (pts["tile"] == 3)).sum())


def test_spatialdata_reads_it(case):
    import spatialdata
    from spatialdata.transformations import Scale, get_transformation

    root, pts, _ = case
    sdata = spatialdata.read_zarr(root)
    assert list(sdata.points) == ["transcripts"]
    df = sdata.points["transcripts"]
    assert len(df.compute()) == N
    assert df.attrs["spatialdata_attrs"]["feature_key"] == "feature_name"
    tr = get_transformation(df, "global")
    assert isinstance(tr, Scale) and list(tr.scale) == [0.5, 0.5]


def test_attributes_match_spatialdatas_writer(case, tmp_path):
    """The element's attributes (less stdask's record) are those spatialdata writes for the same points."""
    import dask.dataframe as dd
    from spatialdata import SpatialData
    from spatialdata.models import PointsModel
    from spatialdata.transformations import Identity, Scale

    root, pts, tiling = case
    ours = json.loads((root / "points" / "transcripts" / "zarr.json").read_text())["attributes"]
    frame = pts[["x", "y"]].assign(feature_name=pd.Categorical(pts["feature"]))
    for scale, transform in ((0.5, Scale([0.5, 0.5], axes=("x", "y"))), (1.0, Identity())):
        parsed = PointsModel.parse(dd.from_pandas(frame, npartitions=2), feature_key="feature_name",
                                   transformations={"global": transform})
        SpatialData(points={"p": parsed}).write(tmp_path / f"sd{scale}.zarr")
        theirs = json.loads((tmp_path / f"sd{scale}.zarr" / "points" / "p" / "zarr.json").read_text())["attributes"]
        if scale != 0.5:
            ours = json.loads((write(tmp_path / "id.zarr", pts.drop(columns="tile").iloc[:100], tiling,
                                     microns_per_unit=None) / "points" / "transcripts" / "zarr.json")
                              .read_text())["attributes"]
        assert {k: v for k, v in ours.items() if k != "stdask"} == theirs


def test_damage_is_refused(case, tmp_path):
    root, _, _ = case
    parts = points_attrs(root, "transcripts")["parts"]
    for damage in ("delete", "truncate", "uncommitted"):
        copy = tmp_path / damage
        shutil.copytree(root, copy)
        element = copy / "points" / "transcripts"
        victim = element / parts[2]["path"]
        if damage == "delete":
            victim.unlink()
            match = "part.2.parquet is missing"
        elif damage == "truncate":
            victim.write_bytes(victim.read_bytes()[:-100])
            match = "part.2.parquet has"
        else:
            meta = json.loads((element / "zarr.json").read_text())
            del meta["attributes"]["stdask"]
            (element / "zarr.json").write_text(json.dumps(meta))
            match = "did not finish"
        with pytest.raises(StoreDamageError, match=match):
            open_points(copy, "transcripts")
    with pytest.raises(KeyError, match="no points element 'nope'"):
        open_points(root, "nope")


def test_spill_removed_on_error_and_bad_chunks(tmp_path):
    tiling = make_tiling()
    spill = tmp_path / "spill"
    spill.mkdir()
    x = np.array([1.0, 2.0])
    with pytest.raises(ValueError, match="differ from the first chunk"):
        with PointsWriter(tiling, spill) as w:
            w.add(PointChunk(x, x, np.array(["a", "b"], dtype=object), {"qv": np.ones(2, np.float32)}))
            w.add(PointChunk(x, x, np.array(["a", "b"], dtype=object), {"other": np.ones(2, np.float32)}))
    assert list(spill.iterdir()) == []
    with pytest.raises(ValueError, match="NaN"):
        PointsWriter(tiling, spill).add(PointChunk(np.array([np.nan]), x[:1], np.array(["a"], dtype=object), {}))
    with pytest.raises(ValueError, match="clash"):
        PointsWriter(tiling, spill).add(PointChunk(x, x, np.array(["a", "b"], dtype=object),
                                                   {"tile": np.ones(2, np.int32)}))


def test_no_points_gives_an_empty_element(tmp_path):
    root = tmp_path / "e.zarr"
    zarr.open_group(str(root), mode="w", zarr_format=3).attrs["spatialdata_attrs"] = {"version": "0.2"}
    with PointsWriter(make_tiling(), tmp_path) as w:
        assert w.write(root / "points" / "transcripts", microns_per_unit=1.0, unit="um") == 0
    df = open_points(root, "transcripts").compute()
    assert len(df) == 0 and {"x", "y", "feature_name", "tile"} <= set(df.columns)
