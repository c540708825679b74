"""10x Xenium: the synthetic ``outs/`` writer (files agree as XOA's do) and the streaming reader (values, errors)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import scipy.sparse as sp

import stdask
from stdask.datasets import write_xenium
from stdask.datasets.xenium import CONTROL_TYPES, xenium_cell_ids
from stdask.io import InputError, open_source
from stdask.io.xenium import XeniumSource

GEX = "Gene Expression"


@pytest.fixture(scope="module")
def outs(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("xenium") / "outs"
    write_xenium(folder, n_cells=400, n_genes=40, seed=3, chunk_size=150)
    return folder


def copy_outs(outs: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "run" / "outs"
    shutil.copytree(outs, dst)
    return dst


def h5_matrix(path: Path) -> tuple[sp.csc_matrix, pd.DataFrame, np.ndarray]:
    """(features x cells) CSC, features (name, type), barcodes, read straight from the HDF5."""
    with h5py.File(path, "r") as f:
        m = f["matrix"]
        shape = tuple(int(v) for v in m["shape"][()])
        mat = sp.csc_matrix((m["data"][()], m["indices"][()], m["indptr"][()]), shape=shape)
        feats = pd.DataFrame({k: m["features"][k][()].astype(str) for k in ("name", "feature_type")})
        barcodes = m["barcodes"][()].astype(str)
    return mat, feats, barcodes


def no_store_left(tmp_path: Path, name: str) -> bool:
    return not (tmp_path / name).exists() and not [p for p in tmp_path.iterdir() if "stdask-tmp" in p.name]


def refused(folder: Path, tmp_path: Path, match: str) -> None:
    """Ingesting ``folder`` raises an InputError matching ``match`` and leaves no store behind."""
    with pytest.raises(InputError, match=match):
        stdask.ingest(folder, tmp_path / "bad.zarr", progress=False)
    assert no_store_left(tmp_path, "bad.zarr")


def test_cell_ids_are_xoa_form():
    assert list(xenium_cell_ids(np.array([1, 0x55AF1010, 0], dtype=np.uint32))) == [
        "aaaaaaab-1", "ffkpbaba-1", "aaaaaaaa-1"]


def test_written_files_agree(outs):
    mat, feats, barcodes = h5_matrix(outs / "cell_feature_matrix.h5")
    with h5py.File(outs / "cell_feature_matrix.h5", "r") as f:
        # 10x writes fixed-length ASCII strings, not variable-length ones
        for key in ("barcodes", "features/id", "features/name", "features/feature_type"):
            assert f[f"matrix/{key}"].dtype.kind == "S"
    assert set(feats["feature_type"]) == {GEX, *CONTROL_TYPES}
    cells = pq.read_table(outs / "cells.parquet").to_pandas()
    assert list(cells["cell_id"]) == list(barcodes)
    assert cells["cell_id"].str.fullmatch(r"[a-p]{8}-1").all()
    # counts = transcripts with qv >= 20 assigned to the cell, per (cell, feature)
    tx = pq.read_table(outs / "transcripts.parquet").to_pandas()
    assert tx["transcript_id"].dtype == np.uint64 and tx["transcript_id"].is_unique
    assert (tx["cell_id"] == "UNASSIGNED").any() and (tx["qv"] < 20).any()
    counted = tx[(tx["qv"] >= 20) & (tx["cell_id"] != "UNASSIGNED")]
    row = pd.Index(barcodes).get_indexer(counted["cell_id"])
    col = pd.Index(feats["name"]).get_indexer(counted["feature_name"])
    assert (row >= 0).all() and (col >= 0).all()
    from_tx = sp.csc_matrix((np.ones(len(row), np.int64), (col, row)), shape=mat.shape)
    assert (from_tx != mat).nnz == 0
    # per-type counts in cells.parquet are the matrix's column sums over that type
    for ftype, column in [(GEX, "transcript_counts")] + [(t, c) for t, (_p, c) in CONTROL_TYPES.items()]:
        rows = np.flatnonzero(feats["feature_type"].to_numpy() == ftype)
        assert np.array_equal(np.asarray(mat[rows].sum(0)).ravel(), cells[column].to_numpy())
    # boundaries: one closed ring per cell, in um around the centroid
    b = pq.read_table(outs / "cell_boundaries.parquet").to_pandas()
    first, last = b.groupby("cell_id", sort=False).first(), b.groupby("cell_id", sort=False).last()
    assert list(first.index) == list(barcodes)
    assert np.array_equal(first[["vertex_x", "vertex_y"]], last[["vertex_x", "vertex_y"]])
    centre = b.groupby("cell_id", sort=False)[["vertex_x", "vertex_y"]].mean().to_numpy()
    assert np.abs(centre - cells[["x_centroid", "y_centroid"]].to_numpy()).max() < 1.0
    meta = json.loads((outs / "experiment.xenium").read_text())
    assert meta["pixel_size"] == 0.2125 and meta["analysis_sw_version"].startswith("xenium-")


def test_ingest_round_trip(outs, tmp_path):
    # detection from the folder's contents, given the run folder above outs/
    run = copy_outs(outs, tmp_path).parent
    assert isinstance(open_source(run), XeniumSource)
    store = stdask.ingest(run, tmp_path / "x.zarr", progress=False, chunk_size=300)
    t = ad.read_zarr(store / "tables" / "table")
    mat, feats, barcodes = h5_matrix(outs / "cell_feature_matrix.h5")
    cells = pq.read_table(outs / "cells.parquet").to_pandas().set_index("cell_id")
    assert t.n_obs == len(cells) and set(t.obs_names) == set(barcodes)
    # X = the Gene Expression features only, exactly: per-gene and per-cell totals
    gex = feats["feature_type"].to_numpy() == GEX
    assert list(t.var_names) == list(feats["name"][gex]) and (t.var["feature_types"] == GEX).all()
    ref = mat[np.flatnonzero(gex)].T.tocsr()[pd.Index(barcodes).get_indexer(t.obs_names)]
    assert np.array_equal(np.asarray(t.X.sum(0)).ravel(), np.asarray(ref.sum(0)).ravel())
    assert np.array_equal(np.asarray(t.X.sum(1)).ravel(), np.asarray(ref.sum(1)).ravel())
    assert (sp.csr_matrix(t.X) != ref).nnz == 0
    # controls are not genes; their per-cell counts are obs columns equal to cells.parquet's
    assert not set(feats["name"][~gex]) & set(t.var_names)
    for column in [c for _p, c in CONTROL_TYPES.values()] + ["transcript_counts", "cell_area"]:
        assert np.array_equal(t.obs[column].to_numpy(), cells.loc[t.obs_names, column].to_numpy())
    # centroids in um, exactly
    assert np.array_equal(t.obsm["spatial"], cells.loc[t.obs_names, ["x_centroid", "y_centroid"]].to_numpy())
    assert t.uns["xenium"]["pixel_size"] == 0.2125
    ds = stdask.read(store)
    assert ds.spot_diameter == pytest.approx(2 * np.sqrt(np.median(cells["cell_area"]) / np.pi))


def test_entries_stream_in_barcode_ranges(outs):
    src = XeniumSource(outs)
    chunks = list(src.iter_entries(chunk_size=100))
    assert len(chunks) > 3 and max(len(c) for c in chunks) <= 100 + 40  # a range ends at a whole cell
    rows = np.concatenate([c.row for c in chunks])
    assert np.all(np.diff(rows) >= 0)  # cells in order, one range after another
    assert sum(int(c.value.sum()) for c in chunks) == int(src.obs["transcript_counts"].sum())


def test_missing_cells_table(outs, tmp_path):
    d = copy_outs(outs, tmp_path)
    (d / "cells.parquet").unlink()
    refused(d, tmp_path, r"no cells\.parquet.*copy it")


def test_barcodes_must_match_cells(outs, tmp_path):
    d = copy_outs(outs, tmp_path)
    cells = pq.read_table(d / "cells.parquet")
    order = np.arange(cells.num_rows)
    order[[7, 8]] = order[[8, 7]]
    pq.write_table(cells.take(order), d / "cells.parquet")
    refused(d, tmp_path, r"cell_feature_matrix\.h5: matrix/barcodes\[7\].*cells\.parquet row 7")
    pq.write_table(cells.slice(0, cells.num_rows - 1), d / "cells.parquet")
    refused(d, tmp_path, r"400 barcodes, but .*cells\.parquet has 399 cells")


def test_missing_column_and_bad_centroid(outs, tmp_path):
    d = copy_outs(outs, tmp_path)
    cells = pq.read_table(d / "cells.parquet")
    pq.write_table(cells.drop(["y_centroid"]), d / "cells.parquet")
    refused(d, tmp_path, r"cells\.parquet: no column\(s\) y_centroid")
    frame = cells.to_pandas()
    frame.loc[5, "x_centroid"] = np.nan
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), d / "cells.parquet")
    refused(d, tmp_path, r"cells\.parquet: cell '.*' \(row 5\)")
