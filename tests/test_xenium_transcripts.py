"""Xenium transcripts: streamed as points (every row, every value) and re-binned / re-assigned to cells as records
(the cell-feature matrix rebuilt exactly; square bins checked against pandas counts of the file)."""
from __future__ import annotations

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
import stdask.io.xenium_transcripts  # noqa: F401  (registers the format until readers.py imports it)
from stdask.datasets import write_xenium
from stdask.io import InputError, open_source
from stdask.io.xenium import XeniumSource
from stdask.io.xenium_transcripts import XeniumTranscriptsSource
from stdask.store.points import PointsWriter, open_points
from stdask.store.tiling import Tiling

GEX = "Gene Expression"


@pytest.fixture(scope="module")
def outs(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("xenium_tx") / "outs"
    write_xenium(folder, n_cells=300, n_genes=40, seed=5, chunk_size=120)
    return folder


@pytest.fixture(scope="module")
def files(outs):
    """transcripts.parquet, cells.parquet and the matrix's features and (features x cells) matrix, read whole."""
    tx = pq.read_table(outs / "transcripts.parquet").to_pandas()
    cells = pq.read_table(outs / "cells.parquet").to_pandas()
    with h5py.File(outs / "cell_feature_matrix.h5", "r") as f:
        m = f["matrix"]
        mat = sp.csc_matrix((m["data"][()], m["indices"][()], m["indptr"][()]),
                            shape=tuple(int(v) for v in m["shape"][()]))
        feats = pd.DataFrame({k: m["features"][k][()].astype(str) for k in ("name", "feature_type")})
    genes = feats.loc[feats["feature_type"] == GEX, "name"].tolist()
    tx["is_counted"] = (tx["qv"] >= 20) & tx["feature_name"].isin(genes)
    return tx, cells, mat, feats, genes


def ingest(outs: Path, store: Path, **kw) -> ad.AnnData:
    stdask.ingest(outs, store, format="xenium_transcripts", progress=False, chunk_size=1_000, **kw)
    return ad.read_zarr(store / "tables" / "table")


def concat_points(src: XeniumSource, chunk_size: int) -> pd.DataFrame:
    chunks = list(src.iter_points(chunk_size))
    assert len(chunks) > 1 and all(len(c) <= chunk_size for c in chunks)
    return pd.DataFrame({"x": np.concatenate([c.x for c in chunks]), "y": np.concatenate([c.y for c in chunks]),
                         "feature": np.concatenate([c.feature for c in chunks]),
                         **{k: np.concatenate([c.columns[k] for c in chunks]) for k in chunks[0].columns}})


def test_every_transcript_is_a_point(outs, files):
    tx = files[0]
    src = XeniumSource(outs)
    assert src.points_name == "transcripts"
    got = concat_points(src, chunk_size=700)
    assert len(got) == len(tx)
    assert got["x"].dtype == np.float64 and np.array_equal(got["x"], tx["x_location"].astype(np.float64))
    assert np.array_equal(got["y"], tx["y_location"].astype(np.float64))
    assert list(got["feature"]) == list(tx["feature_name"]) and isinstance(got["feature"][0], str)
    expected = {"transcript_id": np.uint64, "cell_id": object, "overlaps_nucleus": np.uint8,
                "z_location": np.float32, "qv": np.float32, "nucleus_distance": np.float32}
    assert set(got.columns) == {"x", "y", "feature", *expected}
    for col, dtype in expected.items():
        assert got[col].dtype == dtype and np.array_equal(got[col].to_numpy(), tx[col].to_numpy()), col


def test_xoa1_bytes_and_integer_ids_are_decoded(outs, files, tmp_path):
    """XOA 1.x wrote feature_name as binary and cell_id as int (-1 outside cells); the points carry str."""
    tx = files[0]
    folder = tmp_path / "outs"
    shutil.copytree(outs, folder)
    ids = np.where(tx["cell_id"] == "UNASSIGNED", -1, pd.factorize(tx["cell_id"])[0]).astype(np.int32)
    old = pq.read_table(outs / "transcripts.parquet")
    old = old.set_column(old.schema.get_field_index("feature_name"), "feature_name",
                         pa.array([s.encode() for s in tx["feature_name"]], pa.binary()))
    old = old.set_column(old.schema.get_field_index("cell_id"), "cell_id", pa.array(ids))
    pq.write_table(old, folder / "transcripts.parquet")
    got = concat_points(XeniumSource(folder), chunk_size=1000)
    assert list(got["feature"]) == list(tx["feature_name"])
    assert list(got["cell_id"]) == [str(v) for v in ids]


def test_missing_transcript_column_is_refused(outs, tmp_path):
    folder = tmp_path / "outs"
    shutil.copytree(outs, folder)
    table = pq.read_table(outs / "transcripts.parquet")
    pq.write_table(table.drop_columns(["y_location"]), folder / "transcripts.parquet")
    with pytest.raises(InputError, match=r"transcripts\.parquet: no column\(s\) y_location"):
        next(XeniumSource(folder).iter_points())
    with pytest.raises(InputError, match=r"transcripts\.parquet: no column\(s\) y_location"):
        XeniumTranscriptsSource(folder)
    (folder / "transcripts.parquet").unlink()
    assert XeniumSource(folder).points_name is None
    with pytest.raises(InputError, match="no transcripts.parquet"):
        XeniumTranscriptsSource(folder)


def test_transcripts_stream_into_a_points_element(outs, files, tmp_path):
    """XeniumSource -> PointsWriter on the cells' tiling -> open_points: every transcript, with its values."""
    tx, cells = files[0], files[1]
    tiling = Tiling.of_points(40.0, cells["x_centroid"].to_numpy(), cells["y_centroid"].to_numpy())
    with PointsWriter(tiling, tmp_path, rows_per_part=1_500) as w:
        for chunk in XeniumSource(outs).iter_points(2_000):
            w.add(chunk)
        assert w.write(tmp_path / "s.zarr" / "points" / "transcripts", microns_per_unit=1.0, unit="um") == len(tx)
    df = open_points(tmp_path / "s.zarr", "transcripts").compute().sort_values("transcript_id")
    want = tx.sort_values("transcript_id")
    assert np.array_equal(df["x"].to_numpy(), want["x_location"].to_numpy(np.float64))
    assert list(df["feature_name"].astype(str)) == list(want["feature_name"])
    assert list(df["cell_id"].astype(str)) == list(want["cell_id"])
    listed = df["tile"].to_numpy() >= 0
    assert np.array_equal(df["tile"].to_numpy()[listed],
                          tiling.tile_of(df["x"].to_numpy()[listed], df["y"].to_numpy()[listed]))


def test_cellbin_rebuilds_the_cell_feature_matrix(outs, files, tmp_path):
    tx, cells, mat, feats, genes = files
    t = ingest(outs, tmp_path / "c.zarr", cellbin=True)
    assert list(t.var_names) == genes
    # observation k is cells.parquet row k - 1
    rows = t.obs_names.astype(int).to_numpy() - 1
    assert (rows >= 0).all() and len(set(rows)) == t.n_obs
    assert np.array_equal(t.obs["cell_id"].to_numpy(), rows + 1)
    gex = np.flatnonzero(feats["feature_type"].to_numpy() == GEX)
    ref = mat[gex].T.tocsr()  # cells x genes
    assert (sp.csr_matrix(t.X) != ref[rows]).nnz == 0  # cell by cell, gene by gene
    absent = np.setdiff1d(np.arange(len(cells)), rows)
    assert ref[absent].sum() == 0  # a cell left out holds no counted gene transcript
    assert int(t.X.sum()) == int(ref.sum()) == int((tx["is_counted"] & (tx["cell_id"] != "UNASSIGNED")).sum())
    # the centroid of a cell bin is the mean of its counted transcripts' grid positions
    k = int(np.argmax(np.asarray(t.X.sum(1)).ravel()))
    mine = tx[tx["is_counted"] & (tx["cell_id"] == cells["cell_id"].iloc[rows[k]])]
    assert np.isclose(t.obs["x"].iloc[k], np.floor(mine["x_location"].to_numpy(np.float64)).mean())


def test_square_bins_count_the_gene_transcripts(outs, files, tmp_path):
    tx, _, _, feats, genes = files
    t = ingest(outs, tmp_path / "b.zarr", bin_size=10)
    counted = tx[tx["is_counted"]]
    per_gene = counted["feature_name"].value_counts().reindex(genes, fill_value=0).to_numpy()
    assert np.array_equal(np.asarray(t.X.sum(0)).ravel(), per_gene)
    assert not set(feats.loc[feats["feature_type"] != GEX, "name"]) & set(t.var_names)
    assert t.uns["xenium"]["transcripts_pitch_um"] == 1.0 and t.uns["xenium"]["transcripts_min_qv"] == 20.0
    # the bin holding one chosen transcript: its centre is within half a bin of the transcript's grid position,
    # and it counts exactly the counted transcripts of that gene in its 10 x 10 um square
    px, py = (np.floor(counted[c].to_numpy(np.float64)) for c in ("x_location", "y_location"))
    i = len(counted) // 2
    cx, cy = t.obs["x"].to_numpy(), t.obs["y"].to_numpy()
    near = np.flatnonzero((np.abs(cx - px[i]) <= 4.5) & (np.abs(cy - py[i]) <= 4.5))
    assert len(near) == 1
    row = near[0]
    inside = (np.abs(px - cx[row]) <= 4.5) & (np.abs(py - cy[row]) <= 4.5)
    gene = counted["feature_name"].iloc[i]
    assert t.X[row, genes.index(gene)] == int((inside & (counted["feature_name"] == gene).to_numpy()).sum()) >= 1
    assert int(t.X[row].sum()) == int(inside.sum())


def test_min_qv_and_pitch(outs, files, tmp_path):
    tx, _, _, _, genes = files
    every = ingest(outs, tmp_path / "q0.zarr", bin_size=10, min_qv=0.0)
    n_gene_tx = int(tx["feature_name"].isin(genes).sum())
    assert int(every.X.sum()) == n_gene_tx > int(tx["is_counted"].sum())
    coarse = ingest(outs, tmp_path / "p2.zarr", bin_size=5, pitch_um=2.0)  # 10 um bins on a 2 um grid
    assert int(coarse.X.sum()) == int(tx["is_counted"].sum())
    assert coarse.uns["xenium"]["transcripts_pitch_um"] == 2.0
    # coordinates in 2 um steps: the bins span half the extent in store units
    assert np.ptp(coarse.obs["x"]) < 0.5 * np.ptp(tx["x_location"]) + 5


def test_chosen_by_name_only(outs):
    assert isinstance(open_source(outs), XeniumSource)
    src = open_source(outs, format="xenium_transcripts", pitch_um=0.5)
    assert isinstance(src, XeniumTranscriptsSource) and src.microns_per_unit == 0.5 and src.kind == "records"
    assert src.size_hint == pq.ParquetFile(outs / "transcripts.parquet").metadata.num_rows
    for bad in (0, -1.0, float("nan"), True):
        with pytest.raises(ValueError, match="pitch_um"):
            XeniumTranscriptsSource(outs, pitch_um=bad)
