"""Vizgen MERSCOPE: the synthetic region writer (files agree as MERSCOPE's do) and the streaming reader (values,
points, errors)."""
from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import stdask
from stdask.datasets.merscope import FOV_PIXELS, MICRONS_PER_PIXEL, write_merscope
from stdask.io import InputError, open_source
from stdask.io.merscope import MerscopeSource

TRANSFORM = "images/micron_to_mosaic_pixel_transform.csv"


@pytest.fixture(scope="module")
def region(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("merscope") / "region_0"
    info = write_merscope(folder, n_cells=300, n_genes=40, seed=5, n_blanks=4, blank_rate=0.3, chunk_size=110)
    assert info["n_cells"] == 300 and info["n_transcripts"] > 0
    return folder


def csv_tables(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """cell_by_gene (index = cell), cell_metadata (index = EntityID), detected_transcripts, read with pandas."""
    return (pd.read_csv(folder / "cell_by_gene.csv", index_col="cell"),
            pd.read_csv(folder / "cell_metadata.csv", index_col="EntityID"),
            pd.read_csv(folder / "detected_transcripts.csv", index_col=0))


def copy_region(region: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "run" / "region_0"
    shutil.copytree(region, dst)
    return dst


def refused(folder: Path, tmp_path: Path, match: str) -> None:
    """Ingesting ``folder`` raises an InputError matching ``match`` and leaves no store (nor temporary) behind."""
    with pytest.raises(InputError, match=match):
        stdask.ingest(folder, tmp_path / "bad.zarr", format="merscope", progress=False)
    assert not (tmp_path / "bad.zarr").exists()
    assert not [p for p in tmp_path.iterdir() if "stdask-tmp" in p.name or p.name.startswith(".bad.zarr")]


def test_written_files_agree(region):
    cbg, meta, tx = csv_tables(region)
    # one row per cell in both tables, same ids, 19-digit int64 EntityIDs like vpt's
    assert cbg.index.dtype == np.int64 and meta.index.dtype == np.int64
    assert list(cbg.index) == list(meta.index) and cbg.index.is_unique and len(cbg) == 300
    assert (cbg.index > 10**17).all()
    blanks = [c for c in cbg.columns if c.startswith("Blank-")]
    assert len(blanks) == 4 and list(cbg.columns[-4:]) == blanks and cbg[blanks].to_numpy().sum() > 0
    # transcript_count counts blanks too (vpt's definition); the box holds the centre
    assert np.array_equal(meta["transcript_count"].to_numpy(), cbg.to_numpy().sum(1))
    assert ((meta["min_x"] < meta["center_x"]) & (meta["center_x"] < meta["max_x"])).all()
    assert ((meta["min_y"] < meta["center_y"]) & (meta["center_y"] < meta["max_y"])).all()
    # a (cell, feature) count is the number of its transcripts with that cell_id; -1 marks those outside cells
    inside = tx[tx["cell_id"] != -1]
    assert (tx["cell_id"] == -1).any() and set(inside["cell_id"]) <= set(cbg.index)
    from_tx = pd.crosstab(inside["cell_id"], inside["gene"]).reindex(index=cbg.index, columns=cbg.columns,
                                                                    fill_value=0)
    assert np.array_equal(from_tx.to_numpy(), cbg.to_numpy())
    # each transcript of a cell lies in the cell's bounding box (um)
    box = meta.loc[inside["cell_id"]]
    assert ((inside["global_x"].to_numpy() >= box["min_x"].to_numpy() - 1e-3)
            & (inside["global_x"].to_numpy() <= box["max_x"].to_numpy() + 1e-3)).all()
    # codebook: barcode_id indexes the cell_by_gene columns (genes then blanks); blanks have no transcript id
    assert (cbg.columns[tx["barcode_id"].to_numpy()] == tx["gene"].to_numpy()).all()
    assert tx.loc[tx["gene"].str.startswith("Blank-"), "transcript_id"].isna().all()
    assert set(tx["global_z"]) <= {float(z) for z in range(7)}
    # fov pixel positions stay inside a 2048-pixel field of view, and the unnamed index ascends
    assert tx["x"].between(0, FOV_PIXELS).all() and tx["y"].between(0, FOV_PIXELS).all()
    assert (np.diff(tx.index.to_numpy()) > 0).all()
    transform = np.loadtxt(region / TRANSFORM)
    assert transform.shape == (3, 3) and np.allclose(transform[2], [0, 0, 1])
    assert transform[0, 0] == pytest.approx(1 / MICRONS_PER_PIXEL) and transform[1, 1] == transform[0, 0]
    pixels = transform @ np.vstack([tx["global_x"], tx["global_y"], np.ones(len(tx))])
    assert pixels[:2].min() >= 0  # the mosaic starts at the region's corner


def test_detected_from_the_folder(region):
    assert MerscopeSource.detect(region)
    # among all registered formats, by the folder's contents (no other reader claims it)
    assert isinstance(open_source(region), MerscopeSource)


def test_ingest_round_trip(region, tmp_path):
    store = stdask.ingest(region, tmp_path / "m.zarr", format="merscope", progress=False, chunk_size=500)
    t = ad.read_zarr(store / "tables" / "table")
    cbg, meta, _tx = csv_tables(region)
    genes = [c for c in cbg.columns if not c.startswith("Blank-")]
    blanks = [c for c in cbg.columns if c.startswith("Blank-")]
    assert t.n_obs == len(meta) and list(t.var_names) == genes  # blanks are not genes
    ref = cbg.loc[t.obs_names.astype(np.int64), genes]
    # X equals the gene columns exactly: per gene, per cell and entry by entry
    assert np.array_equal(np.asarray(t.X.sum(0)).ravel(), ref.to_numpy().sum(0))
    assert np.array_equal(np.asarray(t.X.sum(1)).ravel(), ref.to_numpy().sum(1))
    assert np.array_equal(t.X.toarray(), ref.to_numpy())
    assert np.array_equal(t.obs["blank_counts"].to_numpy(), cbg.loc[ref.index, blanks].to_numpy().sum(1))
    m = meta.loc[ref.index]
    assert np.array_equal(t.obsm["spatial"], m[["center_x", "center_y"]].to_numpy())
    for column in ("fov", "volume", "transcript_count", "anisotropy"):
        assert np.array_equal(t.obs[column].to_numpy(), m[column].to_numpy())
    assert np.allclose(t.uns["merscope"]["micron_to_mosaic_pixel_transform"], np.loadtxt(region / TRANSFORM))
    box = 0.5 * ((meta["max_x"] - meta["min_x"]) + (meta["max_y"] - meta["min_y"]))
    assert stdask.read(store).spot_diameter == pytest.approx(float(np.median(box)))


def test_rows_matched_by_entity_id_and_float_counts(region, tmp_path):
    """cell_by_gene in another row order, counts written as 3.0, files gzipped: the same matrix."""
    d = copy_region(region, tmp_path)
    cbg = pd.read_csv(d / "cell_by_gene.csv")
    shuffled = cbg.sample(frac=1.0, random_state=1)
    body = shuffled.astype({c: np.float64 for c in cbg.columns[1:]})
    for name in ("cell_by_gene.csv", "cell_metadata.csv"):
        (d / name).unlink()
    with gzip.open(d / "cell_by_gene.csv.gz", "wt") as fh:
        body.to_csv(fh, index=False)
    with gzip.open(d / "cell_metadata.csv.gz", "wt") as fh:
        fh.write((region / "cell_metadata.csv").read_text())
    assert "3.0" in gzip.open(d / "cell_by_gene.csv.gz", "rt").read(20000)
    assert MerscopeSource.detect(d)  # gzipped files are found too
    src = MerscopeSource(d)
    dense = np.zeros((len(src.obs), len(src.var)), dtype=np.int64)
    chunks = list(src.iter_entries(chunk_size=400))
    assert len(chunks) > 3 and max(len(c) for c in chunks) <= 400  # row blocks of 400 // 40 genes
    for c in chunks:
        np.add.at(dense, (c.row, c.gene), c.value.astype(np.int64))
    ref = cbg.set_index("cell").loc[src.obs.index.astype(np.int64), list(src.var.index)]
    assert np.array_equal(dense, ref.to_numpy())


def test_older_release_ids(region, tmp_path):
    """2021-22 releases: cell_metadata.csv's id column unnamed and 38-digit ids (beyond int64): matched as text."""
    d = copy_region(region, tmp_path)
    cbg = pd.read_csv(region / "cell_by_gene.csv", dtype={"cell": str})
    meta = pd.read_csv(region / "cell_metadata.csv", dtype={"EntityID": str})
    long_id = {i: i + "1234567890123456789" for i in cbg["cell"]}
    # rows in another order than the metadata's, so only matching by id gives the right rows
    cbg.assign(cell=cbg["cell"].map(long_id)).iloc[::-1].to_csv(d / "cell_by_gene.csv", index=False)
    meta.assign(EntityID=meta["EntityID"].map(long_id)).rename(columns={"EntityID": ""}).to_csv(
        d / "cell_metadata.csv", index=False)
    assert (d / "cell_metadata.csv").read_text().startswith(",fov,")
    src = MerscopeSource(d)
    assert list(src.obs.index) == [long_id[i] for i in meta["EntityID"]]
    total = np.zeros(len(src.obs), dtype=np.int64)
    for c in src.iter_entries():
        np.add.at(total, c.row, c.value.astype(np.int64))
    genes = [c for c in cbg.columns[1:] if not c.startswith("Blank-")]
    assert np.array_equal(total, cbg.set_index(cbg["cell"].map(long_id)).loc[src.obs.index, genes].sum(1))


def test_points_stream_every_transcript(region):
    src = MerscopeSource(region)
    assert src.points_name == "transcripts"
    tx = pd.read_csv(region / "detected_transcripts.csv", index_col=0, dtype={"transcript_id": str})
    chunks = list(src.iter_points(chunk_size=700))
    assert len(chunks) > 3 and max(len(c) for c in chunks) <= 700
    assert sum(len(c) for c in chunks) == len(tx)
    cat = {k: np.concatenate([c.columns[k] for c in chunks]) for k in chunks[0].columns}
    assert np.array_equal(np.concatenate([c.x for c in chunks]), tx["global_x"].to_numpy())
    assert np.array_equal(np.concatenate([c.y for c in chunks]), tx["global_y"].to_numpy())
    assert list(np.concatenate([c.feature for c in chunks])) == list(tx["gene"])
    expected = np.where(tx["cell_id"] == -1, "UNASSIGNED", tx["cell_id"].astype(str))
    assert list(cat["cell_id"]) == list(expected)
    assert set(cat["cell_id"]) - {"UNASSIGNED"} <= set(src.obs.index)  # ids as the obs names
    assert cat["global_z"].dtype == np.float32 and np.array_equal(cat["global_z"], tx["global_z"])
    assert cat["fov"].dtype == np.int32 and np.array_equal(cat["fov"], tx["fov"])
    assert np.array_equal(cat["barcode_id"], tx["barcode_id"])
    assert list(cat["transcript_id"]) == list(tx["transcript_id"].fillna(""))


def test_not_detected_without_metadata(region, tmp_path):
    d = copy_region(region, tmp_path)
    (d / "cell_metadata.csv").unlink()
    assert not MerscopeSource.detect(d)
    with pytest.raises(InputError, match=r"no cell_metadata\.csv"):
        MerscopeSource(d)


def test_missing_columns(region, tmp_path):
    d = copy_region(region, tmp_path)
    meta = pd.read_csv(region / "cell_metadata.csv")
    meta.drop(columns=["center_y"]).to_csv(d / "cell_metadata.csv", index=False)
    refused(d, tmp_path, r"cell_metadata\.csv: no column\(s\) center_y")
    shutil.copy(region / "cell_metadata.csv", d / "cell_metadata.csv")
    cbg = pd.read_csv(region / "cell_by_gene.csv")
    cbg.rename(columns={"cell": "id"}).to_csv(d / "cell_by_gene.csv", index=False)
    refused(d, tmp_path, r"cell_by_gene\.csv: no column EntityID or cell")


def test_matrix_cell_absent_from_metadata(region, tmp_path):
    d = copy_region(region, tmp_path)
    meta = pd.read_csv(region / "cell_metadata.csv")
    gone = int(meta["EntityID"].iloc[17])
    meta.drop(index=17).to_csv(d / "cell_metadata.csv", index=False)
    # cell_by_gene line 19 (header + 18th cell) names a cell cell_metadata.csv lacks
    refused(d, tmp_path, rf"cell_by_gene\.csv: line 19: cell '{gone}' is not in .*cell_metadata\.csv")
    # and the other way: a metadata cell without a matrix row, or a cell with two rows
    shutil.copy(region / "cell_metadata.csv", d / "cell_metadata.csv")
    cbg = pd.read_csv(region / "cell_by_gene.csv")
    cbg.drop(index=17).to_csv(d / "cell_by_gene.csv", index=False)
    refused(d, tmp_path, rf"cell_metadata\.csv: 1 of 300 cells have no row in .*cell_by_gene\.csv, e\.g\. '{gone}'")
    pd.concat([cbg, cbg.iloc[[3]]]).to_csv(d / "cell_by_gene.csv", index=False)
    refused(d, tmp_path, rf"cell_by_gene\.csv: line 302: cell '{int(cbg['cell'].iloc[3])}' has a second row")


def test_fractional_count_refused(region, tmp_path):
    d = copy_region(region, tmp_path)
    cbg = pd.read_csv(region / "cell_by_gene.csv").astype({"Gene00003": np.float64})
    cbg.loc[41, "Gene00003"] = 2.5
    cbg.to_csv(d / "cell_by_gene.csv", index=False)
    refused(d, tmp_path, r"cell_by_gene\.csv: line 43: column Gene00003 is not a whole number.*2\.5")
