"""NanoString CosMx: the synthetic AtoMx flat-file writer (files agree as AtoMx's do) and the streaming reader
(values against pandas reads of the CSVs, transcripts, errors)."""
from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import stdask
from stdask.datasets.cosmx import write_cosmx
from stdask.io import InputError, open_source
from stdask.io.cosmx import COSMX_PIXEL_SIZE_UM, CosMxSource, control_group

PS = COSMX_PIXEL_SIZE_UM
RUN = "Run5001_S1"


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cosmx") / "flat"
    info = write_cosmx(out, n_cells=300, n_genes=40, seed=3, n_fovs=4, n_negprobes=5, n_falsecodes=3, chunk_size=110)
    assert info["n_cells"] == 300 and info["n_targets"] == 48 and info["n_fovs"] == 4
    return out


def read(folder: Path, kind: str) -> pd.DataFrame:
    path = next(folder.glob(f"*_{kind}.csv*"))
    return pd.read_csv(path, float_precision="round_trip", keep_default_na=False)


def expr_cells(folder: Path) -> pd.DataFrame:
    """The matrix's cell rows (cell_ID 0 dropped) indexed by '(fov, cell_ID)', read whole with pandas."""
    m = read(folder, "exprMat_file")
    return m[m["cell_ID"] != 0].set_index(["fov", "cell_ID"])


def copy(folder: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(folder, dst)
    return dst


def refused(folder: Path, tmp_path: Path, match: str) -> None:
    """Ingesting ``folder`` raises an InputError matching ``match`` and leaves no store behind."""
    with pytest.raises(InputError, match=match):
        stdask.ingest(folder, tmp_path / "bad.zarr", progress=False)
    assert not (tmp_path / "bad.zarr").exists() and not [p for p in tmp_path.iterdir() if "stdask-tmp" in p.name]


def test_written_files_agree(folder):
    m = read(folder, "exprMat_file")
    meta = read(folder, "metadata_file")
    tx = read(folder, "tx_file")
    fovs = read(folder, "fov_positions_file").set_index("FOV")
    targets = [c for c in m.columns if c not in ("fov", "cell_ID")]
    # one background row per FOV; cells numbered 1.. within each FOV; metadata cells = matrix cells
    assert sorted(m.loc[m["cell_ID"] == 0, "fov"]) == [1, 2, 3, 4] == sorted(fovs.index)
    cells = m[m["cell_ID"] != 0]
    assert set(zip(cells["fov"], cells["cell_ID"])) == set(zip(meta["fov"], meta["cell_ID"])) and len(meta) == 300
    for _f, ids in meta.groupby("fov")["cell_ID"]:
        assert sorted(ids) == list(range(1, len(ids) + 1))
    assert (meta["cell"] == "c_1_" + meta["fov"].astype(str) + "_" + meta["cell_ID"].astype(str)).all()
    # tx rows per (fov, cell, target) = the matrix, background rows included
    long = m.melt(id_vars=["fov", "cell_ID"], var_name="target", value_name="n")
    long = long[long["n"] > 0].set_index(["fov", "cell_ID", "target"])["n"].sort_index()
    from_tx = tx.groupby(["fov", "cell_ID", "target"]).size().sort_index()
    assert from_tx.index.equals(long.index) and np.array_equal(from_tx.to_numpy(), long.to_numpy())
    assert set(tx.loc[tx["cell_ID"] == 0, "CellComp"]) == {"None"}
    assert set(tx.loc[tx["cell_ID"] != 0, "CellComp"]) == {"Nuclear", "Cytoplasm", "Membrane"}
    # global px = FOV corner + local px, for cells and molecules; local px inside the FOV (a 2 x 2 grid: the
    # largest corner coordinate is the FOV side)
    side = fovs["x_global_px"].max()
    for frame, (x, y), (lx, ly) in ((meta, ("CenterX_global_px", "CenterY_global_px"),
                                     ("CenterX_local_px", "CenterY_local_px")),
                                    (tx, ("x_global_px", "y_global_px"), ("x_local_px", "y_local_px"))):
        corner = fovs.loc[frame["fov"], ["x_global_px", "y_global_px"]].to_numpy()
        assert np.allclose(frame[[x, y]].to_numpy(), corner + frame[[lx, ly]].to_numpy(), atol=1e-6, rtol=0)
        local = frame[[lx, ly]].to_numpy()
        assert (local >= 0).all() and (local < side).all()
    assert np.allclose(fovs["x_global_mm"], fovs["x_global_px"] * PS / 1000, atol=1e-6)
    # AtoMx's per-group counts are row sums of the matrix; cells are ~5 um discs (Area in px^2)
    by_key = cells.set_index(["fov", "cell_ID"]).loc[list(zip(meta["fov"], meta["cell_ID"]))]
    for col, names in (("nCount_RNA", targets[:40]), ("nCount_negprobes", targets[40:45]),
                       ("nCount_falsecode", targets[45:])):
        assert np.array_equal(by_key[names].sum(1).to_numpy(), meta[col].to_numpy())
    radius_um = np.sqrt(meta["Area"] * PS ** 2 / np.pi)
    assert radius_um.between(4.4, 5.6).all()


def test_ingest_round_trip(folder, tmp_path):
    assert isinstance(open_source(folder), CosMxSource)  # detected from the folder's files
    store = stdask.ingest(folder, tmp_path / "c.zarr", progress=False, chunk_size=500)
    t = ad.read_zarr(store / "tables" / "table")
    ref = expr_cells(folder)
    meta = read(folder, "metadata_file").set_index("cell")
    genes = [c for c in ref.columns if control_group(c) is None]
    assert len(genes) == 40 and list(t.var_names) == genes  # controls are not genes
    assert t.n_obs == 300 and set(t.obs_names) == set(meta.index)
    # X per gene and per cell, exactly, against pandas' read of the CSV (matched by (fov, cell_ID))
    keys = list(zip(t.obs["fov"], t.obs["cell_ID"]))
    x = ref.loc[keys, genes].to_numpy()
    assert np.array_equal(np.asarray(t.X.sum(0)).ravel(), x.sum(0))
    assert np.array_equal(np.asarray(t.X.sum(1)).ravel(), x.sum(1))
    assert t.X.dtype == np.uint32 and np.array_equal(t.X.toarray(), x)
    # the control groups' per-cell sums, and the metadata columns, in obs
    neg = [c for c in ref.columns if c.startswith("Negative")]
    false = [c for c in ref.columns if c.startswith("SystemControl")]
    assert np.array_equal(t.obs["negprobe_counts"].to_numpy(), ref.loc[keys, neg].sum(1).to_numpy())
    assert np.array_equal(t.obs["falsecode_counts"].to_numpy(), ref.loc[keys, false].sum(1).to_numpy())
    assert np.array_equal(t.obs["Area"].to_numpy(), meta.loc[t.obs_names, "Area"].to_numpy())
    # coordinates: global px x pixel size, in um, exactly
    px = meta.loc[t.obs_names, ["CenterX_global_px", "CenterY_global_px"]].to_numpy()
    assert np.array_equal(t.obsm["spatial"], px * PS)
    assert t.uns["cosmx"]["pixel_size_um"] == PS
    assert stdask.read(store).spot_diameter == pytest.approx(2 * np.sqrt(np.median(meta["Area"]) * PS ** 2 / np.pi))


def test_metadata_order_and_ids(folder, tmp_path):
    """Cells are matched by (fov, cell_ID), not by row order; without a 'cell' column the id is '<fov>_<cell_ID>'."""
    d = copy(folder, tmp_path)
    path = d / f"{RUN}_metadata_file.csv"
    meta = pd.read_csv(path).sample(frac=1.0, random_state=0).drop(columns=["cell"])
    meta.to_csv(path, index=False)
    src = CosMxSource(d)
    assert list(src.obs.index) == [f"{f}_{c}" for f, c in zip(meta["fov"], meta["cell_ID"])]
    ref = expr_cells(folder)
    x = np.zeros((len(meta), 40), np.int64)
    for ch in src.iter_entries():
        np.add.at(x, (ch.row, ch.gene), ch.value)
    assert np.array_equal(x, ref.loc[list(zip(meta["fov"], meta["cell_ID"])), list(src.var.index)].to_numpy())


def test_gzip_and_control_names(folder, tmp_path):
    """The gzipped export is the plain one compressed; early exports' NegPrb / FalseCode names are controls too."""
    gz_dir = tmp_path / "gz"
    write_cosmx(gz_dir, n_cells=300, n_genes=40, seed=3, n_fovs=4, n_negprobes=5, n_falsecodes=3, chunk_size=110,
                gzip=True)
    for p in folder.iterdir():
        assert gzip.decompress((gz_dir / (p.name + ".gz")).read_bytes()) == p.read_bytes()
    plain, packed = CosMxSource(folder), CosMxSource(gz_dir)
    assert plain.obs.equals(packed.obs) and np.array_equal(plain.coords, packed.coords)
    d = copy(folder, tmp_path)
    path = d / f"{RUN}_exprMat_file.csv"
    lines = path.read_text().split("\n", 1)
    path.write_text(lines[0].replace("Negative", "NegPrb").replace("SystemControl", "FalseCode") + "\n" + lines[1])
    renamed = CosMxSource(d)
    assert list(renamed.var.index) == list(plain.var.index)
    for col in ("negprobe_counts", "falsecode_counts"):
        assert np.array_equal(renamed.obs[col], plain.obs[col]) and plain.obs[col].sum() > 0


def test_points_stream_every_molecule(folder):
    src = CosMxSource(folder)
    assert src.points_name == "transcripts"
    tx = read(folder, "tx_file")
    chunks = list(src.iter_points(chunk_size=700))
    assert len(chunks) > 3 and max(len(c) for c in chunks) <= 700
    assert sum(len(c) for c in chunks) == len(tx)
    cat = {k: np.concatenate([c.columns[k] for c in chunks]) for k in chunks[0].columns}
    assert np.array_equal(np.concatenate([c.x for c in chunks]), tx["x_global_px"].to_numpy() * PS)
    assert np.array_equal(np.concatenate([c.y for c in chunks]), tx["y_global_px"].to_numpy() * PS)
    assert list(np.concatenate([c.feature for c in chunks])) == list(tx["target"])
    expected = np.where(tx["cell_ID"] == 0, "UNASSIGNED", tx["cell"])
    assert list(cat["cell_id"]) == list(expected) and set(cat["cell_id"]) - {"UNASSIGNED"} <= set(src.obs.index)
    assert cat["fov"].dtype == np.int32 and np.array_equal(cat["fov"], tx["fov"])
    assert cat["z"].dtype == np.float32 and np.array_equal(cat["z"], tx["z"].astype(np.float32))
    assert list(cat["CellComp"]) == list(tx["CellComp"])


def test_missing_metadata_column(folder, tmp_path):
    d = copy(folder, tmp_path)
    path = d / f"{RUN}_metadata_file.csv"
    pd.read_csv(path).drop(columns=["CenterY_global_px"]).to_csv(path, index=False)
    refused(d, tmp_path, r"metadata_file\.csv: no column\(s\) CenterY_global_px")


def test_matrix_cell_absent_from_metadata(folder, tmp_path):
    d = copy(folder, tmp_path)
    path = d / f"{RUN}_metadata_file.csv"
    meta = pd.read_csv(path)
    gone = meta.iloc[7]
    meta.drop(index=7).to_csv(path, index=False)
    line = 2 + int(np.flatnonzero((read(folder, "exprMat_file")[["fov", "cell_ID"]].to_numpy()
                                   == [gone["fov"], gone["cell_ID"]]).all(1))[0])
    refused(d, tmp_path, rf"exprMat_file\.csv: line {line}: cell fov {gone['fov']}, cell_ID {gone['cell_ID']} "
                         rf"has no row in .*metadata_file\.csv")
    # and the other way: a metadata cell without a matrix row names the metadata line
    meta.to_csv(path, index=False)
    expr = d / f"{RUN}_exprMat_file.csv"
    lines = expr.read_text().splitlines(keepends=True)
    expr.write_text("".join(lines[:line - 1] + lines[line:]))
    refused(d, tmp_path, rf"metadata_file\.csv: line 9: cell fov {gone['fov']}, cell_ID {gone['cell_ID']} has no "
                         rf"row in .*exprMat_file\.csv")


def test_bad_counts(folder, tmp_path):
    d = copy(folder, tmp_path)
    path = d / f"{RUN}_exprMat_file.csv"
    lines = path.read_text().splitlines()
    header = lines[0].split(",")
    for value, why in (("-3", "is -3; counts must be >= 0"), ("1.5", "'1.5' is not an integer")):
        edited = list(lines)
        fields = edited[9].split(",")
        fields[5] = value  # line 10, a gene column
        edited[9] = ",".join(fields)
        path.write_text("\n".join(edited) + "\n")
        refused(d, tmp_path, rf"exprMat_file\.csv: line 10: {header[5]} {why}")


def test_an_empty_folder_is_not_cosmx(tmp_path):
    from stdask.io.cosmx import CosMxSource

    assert not CosMxSource.detect(tmp_path)
    (tmp_path / "r_exprMat_file.csv").write_text("fov,cell_ID\n")
    assert not CosMxSource.detect(tmp_path)  # the metadata file is missing
    (tmp_path / "r_metadata_file.csv.gz").write_bytes(b"")
    assert CosMxSource.detect(tmp_path)
