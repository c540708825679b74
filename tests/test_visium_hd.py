"""10x Visium HD: the synthetic run writer (resolutions agree as Space Ranger's do) and the streaming reader."""
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
from stdask.datasets import synthetic_slice, write_visium
from stdask.datasets.visium_hd import bin_barcodes, write_visium_hd
from stdask.io import InputError, open_source
from stdask.io.visium import VisiumSource
from stdask.io.visium_hd import VisiumHDSource, parse_bin_barcodes

SIZES = (2, 8, 16)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("visium_hd") / "run"
    # 90 columns: the last 16 um column holds 5 of 8 2 um columns (edge bins, as on a real slide); 3 row bands
    write_visium_hd(folder, n_rows=96, n_cols=90, n_genes=30, seed=2, chunk_size=3_000)
    return folder


def bin_dir(run: Path, size: int) -> Path:
    return run / "outs" / "binned_outputs" / f"square_{size:03d}um"


def h5_bins(path: Path) -> tuple[sp.csr_matrix, np.ndarray]:
    """(bins x genes) CSR and the barcodes, straight from a 10x HDF5."""
    with h5py.File(path, "r") as f:
        m = f["matrix"]
        n_genes, n_bins = (int(v) for v in m["shape"][()])
        csc = sp.csc_matrix((m["data"][()], m["indices"][()], m["indptr"][()]), shape=(n_genes, n_bins))
        return csc.T.tocsr(), m["barcodes"][()].astype(str)


def positions(run: Path, size: int) -> pd.DataFrame:
    return pq.read_table(bin_dir(run, size) / "spatial" / "tissue_positions.parquet").to_pandas().set_index("barcode")


def ingest(src: VisiumHDSource, store: Path) -> ad.AnnData:
    stdask.ingest(src, store, progress=False, chunk_size=500)
    return ad.read_zarr(store / "tables" / "table")


def refused(path: Path, tmp_path: Path, match: str, **options) -> None:
    """Opening ``path`` for ingest raises an InputError matching ``match`` and leaves no store behind."""
    with pytest.raises(InputError, match=match):
        stdask.ingest(VisiumHDSource(path, **options), tmp_path / "bad.zarr", progress=False)
    assert not (tmp_path / "bad.zarr").exists() and not [p for p in tmp_path.iterdir() if "stdask-tmp" in p.name]


def test_barcodes_are_space_ranger_form():
    codes = bin_barcodes(8, np.array([301, 0]), np.array([405, 12345]))
    assert list(codes.astype(str)) == ["s_008um_00301_00405-1", "s_008um_00000_12345-1"]
    ok, size, key = parse_bin_barcodes(pa.array(["s_016um_00001_00002-1", "s_8um_1_2-1", "s_002um_03349_00007"]))
    assert list(ok) == [True, False, True] and list(size) == [16, 0, 2]
    assert key[0] == (1 << 32) + 2 and key[2] == (3349 << 32) + 7


def test_written_files_agree(run):
    raw2, bc2 = h5_bins(bin_dir(run, 2) / "raw_feature_bc_matrix.h5")
    assert raw2.sum() > 0
    for size in SIZES:
        pos = positions(run, size)
        schema = pq.read_schema(bin_dir(run, size) / "spatial" / "tissue_positions.parquet")
        assert [(f.name, str(f.type)) for f in schema] == [
            ("barcode", "string"), ("in_tissue", "uint8"), ("array_row", "uint32"), ("array_col", "uint32"),
            ("pxl_row_in_fullres", "double"), ("pxl_col_in_fullres", "double")]
        scale = size // 2
        assert len(pos) == 96 // scale * -(-90 // scale)  # the whole slide, in and out of tissue
        assert list(pos.index) == sorted(pos.index)  # barcode (= row-major) order
        filt, bc = h5_bins(bin_dir(run, size) / "filtered_feature_bc_matrix.h5")
        raw, bc_raw = h5_bins(bin_dir(run, size) / "raw_feature_bc_matrix.h5")
        with h5py.File(bin_dir(run, size) / "filtered_feature_bc_matrix.h5", "r") as f:
            assert f["matrix/barcodes"].dtype.kind == "S" and f["matrix/features/name"].dtype.kind == "S"
        # filtered = the in-tissue bins, zero-count ones included; raw = bins with >= 1 UMI, some out of tissue
        assert list(bc) == list(pos.index[pos["in_tissue"] == 1])
        assert (np.diff(filt.indptr) == 0).any() or size > 2  # at 2 um some bins in tissue caught no UMI
        assert (np.diff(raw.indptr) > 0).all() and (pos.loc[bc_raw, "in_tissue"] == 0).any()
        assert raw.sum() == raw2.sum()  # every molecule is in exactly one bin of each size
        sf = json.loads((bin_dir(run, size) / "spatial" / "scalefactors_json.json").read_text())
        assert sf["bin_size_um"] == size and 0.2 < sf["microns_per_pixel"] < 0.35
        assert sf["spot_diameter_fullres"] == pytest.approx(size / sf["microns_per_pixel"])
    # the grid is rotated on the image: along a row, pixel rows drift
    pos8 = positions(run, 8)
    first_row = pos8[pos8["array_row"] == 0].sort_values("array_col")
    assert np.ptp(first_row["pxl_row_in_fullres"]) > 1.0
    # a bin's centre is the mean of its 2 um bins' centres (a full 8 um bin: 16 bins of 2 um)
    pos2 = positions(run, 2)
    sub = pos2[(pos2["array_row"] // 4 == 3) & (pos2["array_col"] // 4 == 5)]
    centre = pos8[(pos8["array_row"] == 3) & (pos8["array_col"] == 5)]
    assert len(sub) == 16
    for c in ("pxl_row_in_fullres", "pxl_col_in_fullres"):
        assert centre[c].iloc[0] == pytest.approx(sub[c].mean(), abs=1e-9)


@pytest.mark.parametrize("size", [8, 16])
def test_larger_bins_are_sums_of_2um_bins(run, size):
    """Filtered N um counts = the raw 2 um counts summed over the 2 um bins of each in-tissue N um bin, and an
    N um bin is in tissue exactly when one of its 2 um bins is."""
    scale = size // 2
    raw2, bc2 = h5_bins(bin_dir(run, 2) / "raw_feature_bc_matrix.h5")
    pos2, pos_n = positions(run, 2), positions(run, size)
    parent = bin_barcodes(size, pos2.loc[bc2, "array_row"].to_numpy() // scale,
                          pos2.loc[bc2, "array_col"].to_numpy() // scale).astype(str)
    filt, bc = h5_bins(bin_dir(run, size) / "filtered_feature_bc_matrix.h5")
    row = pd.Index(bc).get_indexer(parent)
    in_bin = row >= 0
    expect = sp.csr_matrix((np.ones(in_bin.sum()), (row[in_bin], np.flatnonzero(in_bin))),
                           shape=(len(bc), len(bc2))) @ raw2
    assert (sp.csr_matrix(expect, dtype=np.int64) != filt).nnz == 0
    assert np.array_equal(np.asarray(filt.sum(0)).ravel(), np.asarray(raw2[in_bin].sum(0)).ravel())
    parents_in = bin_barcodes(size, pos2.loc[pos2["in_tissue"] == 1, "array_row"].to_numpy() // scale,
                              pos2.loc[pos2["in_tissue"] == 1, "array_col"].to_numpy() // scale).astype(str)
    assert set(parents_in) == set(pos_n.index[pos_n["in_tissue"] == 1])


def test_same_data_for_any_chunk_size(run, tmp_path):
    write_visium_hd(tmp_path / "b", n_rows=96, n_cols=90, n_genes=30, seed=2, bin_sizes=(16,), chunk_size=10_000)
    a, _ = h5_bins(bin_dir(run, 16) / "raw_feature_bc_matrix.h5")
    b, _ = h5_bins(bin_dir(tmp_path / "b", 16) / "raw_feature_bc_matrix.h5")
    assert (a != b).nnz == 0
    assert not (bin_dir(tmp_path / "b", 8)).exists()


@pytest.mark.parametrize("size", SIZES)
def test_ingest_round_trip(run, tmp_path, size):
    src = VisiumHDSource(run, bin_size=size)
    t = ingest(src, tmp_path / "hd.zarr")
    filt, bc = h5_bins(bin_dir(run, size) / "filtered_feature_bc_matrix.h5")
    pos = positions(run, size)
    assert t.n_obs == int((pos["in_tissue"] == 1).sum()) == len(bc) and set(t.obs_names) == set(bc)
    ref = filt[pd.Index(bc).get_indexer(t.obs_names)]
    assert np.array_equal(np.asarray(t.X.sum(0)).ravel(), np.asarray(ref.sum(0)).ravel())
    assert np.array_equal(np.asarray(t.X.sum(1)).ravel(), np.asarray(ref.sum(1)).ravel())
    assert (sp.csr_matrix(t.X) != ref).nnz == 0
    # positions from the pixel columns: x = pxl_col, y = pxl_row; obs keeps the grid indices
    p = pos.loc[t.obs_names]
    assert np.array_equal(t.obsm["spatial"], p[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy())
    assert np.array_equal(t.obs["array_row"].to_numpy(), p["array_row"].to_numpy())
    assert (t.obs["in_tissue"] == 1).all()
    sf = json.loads((bin_dir(run, size) / "spatial" / "scalefactors_json.json").read_text())
    ds = stdask.read(tmp_path / "hd.zarr")
    assert ds.unit == "pixel" and ds.spot_diameter == pytest.approx(sf["spot_diameter_fullres"])
    assert ds.microns_per_unit == pytest.approx(sf["microns_per_pixel"])
    assert t.uns["visium_hd"]["bin_size_um"] == size
    assert t.uns["visium_hd"]["microns_per_pixel"] == pytest.approx(sf["microns_per_pixel"])
    assert t.uns["spatial"]["synthetic"]["scalefactors"]["bin_size_um"] == size


@pytest.mark.parametrize("count_file", ["filtered_feature_bc_matrix.h5", "raw_feature_bc_matrix.h5"])
def test_names_are_made_a_tile_at_a_time(run, count_file):
    """The source holds the barcodes as the h5's bytes and its obs columns under a RangeIndex (no whole-slice
    column of Python strings, which at 10^7 bins is ~1 GB); the names it makes equal the h5's barcodes of the
    kept bins, in obs order, and its ``obs`` carries them as the index."""
    src = VisiumHDSource(run, bin_size=2, count_file=count_file)
    assert src._matrix.barcodes is None and src._matrix.barcode_bytes.dtype.kind == "S"
    cols = src.obs_columns
    assert isinstance(cols.index, pd.RangeIndex) and all(dt.kind in "biuf" for dt in cols.dtypes)
    _, bc = h5_bins(bin_dir(run, 2) / count_file)
    tissue = positions(run, 2)["in_tissue"]
    kept = bc[tissue.loc[bc].to_numpy() == 1]
    rows = np.array([len(kept) - 1, 0, 7, 7])
    assert src.obs_names(rows).tolist() == kept[rows].tolist()
    assert src.obs.index.tolist() == kept.tolist() and src.obs[list(cols.columns)].equals(cols.set_axis(kept))


@pytest.mark.parametrize("size", [2, 8])
def test_raw_matrix_keeps_in_tissue_bins(run, tmp_path, size):
    """The raw matrix filtered by in_tissue while streaming gives the store the filtered matrix gives, less the
    in-tissue bins without a UMI (listed in the filtered matrix only; there are some at 2 um, none at 8 um)."""
    a = ingest(VisiumHDSource(run / "outs", bin_size=size), tmp_path / "f.zarr")
    src = VisiumHDSource(run / "outs" / "binned_outputs", bin_size=size, count_file="raw_feature_bc_matrix.h5")
    chunks = list(src.iter_entries(chunk_size=200))
    assert len(chunks) > 3 and max(int(c.row.max()) for c in chunks) < len(src.obs)
    b = ingest(src, tmp_path / "r.zarr")
    empty = np.asarray(a.X.sum(1)).ravel() == 0
    assert bool(empty.any()) == (size == 2)
    assert set(a.obs_names[~empty]) == set(b.obs_names)
    at = pd.Index(a.obs_names).get_indexer(b.obs_names)  # store order may differ: the tiling follows the bounds
    assert (sp.csr_matrix(a.X)[at] != sp.csr_matrix(b.X)).nnz == 0
    assert np.array_equal(a.obsm["spatial"][at], b.obsm["spatial"])


def test_bin_size_choice(run, tmp_path):
    assert VisiumHDSource(run).bin_size == 8  # 10x's analysis resolution by default
    # ingest(..., bin_size=N) picks the resolution of a Visium HD run rather than binning DNBs
    store = stdask.ingest(run, tmp_path / "s.zarr", format="visium_hd", bin_size=16, progress=False)
    assert ad.read_zarr(store / "tables" / "table").uns["visium_hd"]["bin_size_um"] == 16
    assert VisiumHDSource(bin_dir(run, 16)).bin_size == 16
    assert VisiumHDSource(bin_dir(run, 2), bin_size=2).bin_size == 2
    with pytest.raises(InputError, match=r"bin_size 8 um is not present; .* 16 \(square_016um\)"):
        VisiumHDSource(bin_dir(run, 16), bin_size=8)


def test_bad_input(run, tmp_path):
    d = tmp_path / "copy"
    shutil.copytree(run, d)
    refused(d, tmp_path, r"bin_size 4 um is not present; bin sizes present \(um\): 2 \(square_002um\), "
                         r"8 \(square_008um\), 16 \(square_016um\)", bin_size=4)
    # a matrix barcode with no position row: the positions file, the matrix and the barcode are named
    pos_path = bin_dir(d, 16) / "spatial" / "tissue_positions.parquet"
    table = pq.read_table(pos_path)
    _filt, bc = h5_bins(bin_dir(d, 16) / "filtered_feature_bc_matrix.h5")
    gone = bc[7]
    pq.write_table(table.filter(pa.compute.not_equal(table["barcode"], gone)), pos_path)
    refused(d, tmp_path, rf"tissue_positions\.parquet: 1 of {len(bc)} barcodes of .*square_016um/"
                         rf"filtered_feature_bc_matrix\.h5 have no position row, e\.g\. '{gone}'", bin_size=16)
    # barcodes of another resolution in the folder
    other = table.set_column(0, "barcode", pa.compute.replace_substring(table["barcode"], "s_016um", "s_008um"))
    pq.write_table(other, pos_path)
    refused(d, tmp_path, r"tissue_positions\.parquet: row\[0\] = 's_008um_00000_00000-1' is a 8 um bin, but this "
                         r"is the 16 um resolution", bin_size=16)
    pq.write_table(table.set_column(0, "barcode", pa.compute.replace_substring(table["barcode"], "_", "-")), pos_path)
    refused(d, tmp_path, r"row\[0\] = 's-016um-00000-00000-1' is not a Visium HD bin barcode", bin_size=16)
    # no positions file: the folder and the file are named
    (bin_dir(d, 8) / "spatial" / "tissue_positions.parquet").unlink()
    refused(d, tmp_path, r"square_008um: no spatial/tissue_positions\.parquet .*Space Ranger >= 3", bin_size=8)


def test_detection(run, tmp_path):
    for path in (run, run / "outs", run / "outs" / "binned_outputs", bin_dir(run, 2)):
        assert isinstance(open_source(path), VisiumHDSource), path
        assert not VisiumSource.detect(path)
    # a plain Visium outs/ stays Visium's
    outs = tmp_path / "visium" / "outs"
    write_visium(synthetic_slice(n_obs=60, n_genes=20, layout="visium", seed=1, n_markers=1, n_hotspots=1), outs)
    assert isinstance(open_source(outs.parent), VisiumSource) and isinstance(open_source(outs), VisiumSource)
    assert not VisiumHDSource.detect(outs) and not VisiumHDSource.detect(outs.parent)
