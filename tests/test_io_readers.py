"""Input-format readers (stdask.io.gem / gef / mtx / visium / h5ad): values, coordinates, and errors.

Every fixture is generated here; each reader's per-observation and per-gene count sums are compared
with a computation straight from the generating arrays, and each malformed input must raise an
InputError that names the file and the line / record / field.
"""
from __future__ import annotations

import gzip
import json
import time
import warnings
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.io
import scipy.sparse as sp

from stdask.io import InputError, open_source
from stdask.io.gef import CellbinGefSource, GefSource
from stdask.io.gem import GemSource
from stdask.io.h5ad import H5adSource
from stdask.io.mtx import MtxSource
from stdask.io.visium import VisiumSource

DATA = Path(__file__).parent / "data"


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------
def collect_records(src, chunk_size=1000):
    chunks = list(src.iter_records(chunk_size=chunk_size))
    assert all(len(c) <= chunk_size for c in chunks)
    cat = {k: np.concatenate([getattr(c, k) for c in chunks]) if chunks and getattr(chunks[0], k) is not None
           else None for k in ("x", "y", "gene", "count", "cell", "exon")}
    for c in chunks:
        assert c.x.dtype == np.int64 and c.y.dtype == np.int64
        assert c.gene.dtype == np.int32 and c.count.dtype == np.uint32
        assert (c.count > 0).all()
    return cat


def collect_entries(src, chunk_size=1000, layer=None):
    rows, genes, vals = [], [], []
    for c in src.iter_entries(chunk_size=chunk_size):
        assert c.row.dtype == np.int64 and c.gene.dtype == np.int32
        if c.layer != layer:
            continue
        rows.append(c.row), genes.append(c.gene), vals.append(c.value)
    return np.concatenate(rows), np.concatenate(genes), np.concatenate(vals)


def dense_from_entries(src, chunk_size=1000, layer=None):
    r, g, v = collect_entries(src, chunk_size, layer)
    return sp.coo_matrix((v.astype(np.float64), (r, g)), shape=(len(src.obs), len(src.var))).toarray()


def sums_by(keys, values):
    """Sum of values per key (keys: an array, or an iterable of tuples), sorted by key."""
    if isinstance(keys, (np.ndarray, pd.Series)) and np.asarray(keys).dtype.kind in "iu":
        keys = np.asarray(keys).astype(np.int64)
    else:
        keys = [tuple(int(v) for v in k) if isinstance(k, tuple) else k for k in keys]
    s = pd.Series(np.asarray(values, dtype=np.float64)).groupby(pd.Series(list(keys))).sum()
    return s.sort_index()


def cut_gzip(path: Path, keep: float = 0.6):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


# --------------------------------------------------------------------------------------------------
# GEM
# --------------------------------------------------------------------------------------------------
def gem_frame(n=5000, n_genes=40, seed=0, cells=True):
    rng = np.random.default_rng(seed)
    gid = rng.integers(0, n_genes, n)
    df = pd.DataFrame({
        "geneID": [f"ENSG{g:05d}" for g in gid],
        # two ids share a symbol: var index must be made unique like scanpy
        "geneName": [f"Sym{min(g, n_genes - 2)}" for g in gid],
        "x": rng.integers(100, 600, n),
        "y": rng.integers(2000, 2500, n),
        "MIDCount": rng.integers(1, 9, n),
        "ExonCount": rng.integers(0, 3, n),
    })
    if cells:
        df["CellID"] = np.where(rng.random(n) < 0.3, 0, rng.integers(1, 60, n))
    return df


def write_gem(path: Path, df: pd.DataFrame, header="#FileFormat=GEMv0.1\n#OffsetX=17\n#OffsetY=-3\n"):
    text = header + df.to_csv(sep="\t", index=False)
    if str(path).endswith(".gz"):
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


@pytest.mark.parametrize("name", ["a.gem", "a.gem.gz"])
def test_gem_values(tmp_path, name):
    df = gem_frame()
    src = open_source(write_gem(tmp_path / name, df))
    assert isinstance(src, GemSource) and src.kind == "records" and src.unit == "DNB"
    with pytest.raises(RuntimeError):
        src.var  # not final before the stream has been read
    rec = collect_records(src, chunk_size=700)
    var = src.var
    assert len(rec["x"]) == len(df)
    # per gene (by geneID) and per DNB and per cell
    ids = var["gene_ids"].to_numpy()[rec["gene"]]
    pd.testing.assert_series_equal(sums_by(ids, rec["count"]), sums_by(df.geneID, df.MIDCount.to_numpy()))
    pd.testing.assert_series_equal(sums_by(zip(rec["x"], rec["y"]), rec["count"]),
                                   sums_by(zip(df.x, df.y), df.MIDCount.to_numpy()))
    pd.testing.assert_series_equal(sums_by(rec["cell"], rec["count"]), sums_by(df.CellID, df.MIDCount.to_numpy()))
    pd.testing.assert_series_equal(sums_by(ids, rec["exon"]), sums_by(df.geneID, df.ExonCount.to_numpy()))
    # genes in first-seen order; symbols made unique; ids kept
    assert list(var["gene_ids"]) == list(pd.unique(df.geneID))
    assert var.index.is_unique and set(var["gene_name"]) == set(df.geneName)
    assert any(n.endswith("-1") for n in var.index)
    assert src.uns["gem_header"] == {"FileFormat": "GEMv0.1", "OffsetX": 17, "OffsetY": -3}
    assert 0.5 * len(df) < src.size_hint < 2 * len(df)
    # a second pass gives the same numbering
    rec2 = collect_records(src, chunk_size=10_000)
    np.testing.assert_array_equal(rec2["gene"], rec["gene"])


def test_gem_spellings_and_blank_lines(tmp_path):
    """MIDCounts / UMICount spellings, no geneName (index = geneID), zero counts and blank lines skipped."""
    df = gem_frame(n=300, cells=False).drop(columns=["geneName", "ExonCount"]).rename(columns={"MIDCount": "UMICount"})
    df.loc[5, "UMICount"] = 0
    path = tmp_path / "b.gem"
    path.write_text("geneID\tx\ty\tUMICount\n" + df.to_csv(sep="\t", index=False, header=False) + "\n\n")
    src = GemSource(path)
    rec = collect_records(src)
    assert rec["cell"] is None and rec["exon"] is None
    assert len(rec["x"]) == len(df) - 1
    ids = src.var.index.to_numpy()[rec["gene"]]
    expected = sums_by(df.geneID, df.UMICount.to_numpy())
    pd.testing.assert_series_equal(sums_by(ids, rec["count"]), expected[expected > 0])
    path.write_text("geneID\tx\ty\tMIDCounts\ng1\t1\t2\t3\n")
    assert collect_records(GemSource(path))["count"].tolist() == [3]


def test_gem_options_and_empty_cell_ids(tmp_path):
    path = tmp_path / "c.gem"
    path.write_text("geneID\tgeneName\tx\ty\tMIDCount\tCellID\n"
                    "ENSG1\tActb\t1\t2\t3\t\nENSG2\tActb\t1\t3\t4\t5\nENSG1\tActb\t9\t9\t1\t0\n")
    src = GemSource(path, var_names="gene_id")
    rec = collect_records(src)
    assert rec["cell"].tolist() == [0, 5, 0]  # empty CellID = not in a cell
    assert list(src.var.index) == ["ENSG1", "ENSG2"] and list(src.var["gene_name"]) == ["Actb", "Actb"]
    src = GemSource(path)
    collect_records(src)
    assert list(src.var.index) == ["Actb", "Actb-1"]
    with pytest.raises(InputError, match="no geneName column"):
        GemSource(write_gem(tmp_path / "n.gem", gem_frame(n=10).drop(columns="geneName")), var_names="gene_name")


GEM_HEADER = "#FileFormat=GEMv0.1\ngeneID\tx\ty\tMIDCount\n"
GEM_GOOD = "g1\t1\t2\t3\ng2\t4\t5\t1\n"


@pytest.mark.parametrize("bad_line, needle", [
    ("g3\t7\t8\t-2", "MIDCount is negative"),
    ("g3\t7\t8\t2.5", "MIDCount '2.5' is not an integer"),
    ("g3\t7\tabc\t2", "y 'abc' is not an integer"),
    ("g3\tNaN\t8\t2", "x is empty or NaN"),
    ("g3\t\t8\t2", "x is empty or NaN"),
    ("g3\t7\t8\t", "MIDCount is empty or NaN"),
    ("\t7\t8\t2", "geneID is empty"),
    ("g3\t7\t8", "3 fields, expected 4"),
    ("g3\t7\t8\t2\t9", "5 fields, expected 4"),
])
@pytest.mark.parametrize("gz", [False, True])
def test_gem_errors_name_file_and_line(tmp_path, bad_line, needle, gz):
    # the bad line is line 5 (1 comment, header, 2 good lines) and the file continues after it
    text = GEM_HEADER + GEM_GOOD + bad_line + "\n" + GEM_GOOD * 3
    path = tmp_path / ("bad.gem.gz" if gz else "bad.gem")
    path.write_bytes(gzip.compress(text.encode()) if gz else text.encode())
    with pytest.raises(InputError) as err:
        collect_records(GemSource(path))
    msg = str(err.value)
    assert path.name in msg and "line 5" in msg and needle in msg, msg


def test_gem_error_line_in_a_later_block(tmp_path):
    """Line numbers stay exact across parse blocks (here ~1 MiB each, the file is ~2 MiB), and the
    first bad line is the one reported whichever check finds it."""
    df = gem_frame(n=100_000, cells=False).drop(columns=["geneName", "ExonCount"])
    df["MIDCount"] = df["MIDCount"].astype(object)
    path = tmp_path / "late.gem"

    def check(bad: dict, expected: str):
        d = df.copy()
        for row, value in bad.items():
            d.loc[row, "MIDCount"] = value
        write_gem(path, d, header="#a=1\n#b=2\n")  # row r is line r + 4
        with pytest.raises(InputError, match=expected):
            collect_records(GemSource(path), chunk_size=1000)

    check({75_432: "-4"}, r"late\.gem: line 75436: MIDCount is negative \(-4\)")  # vectorised check
    check({90_000: "x"}, r"late\.gem: line 90004: MIDCount 'x' is not an integer")  # Arrow rejects the block
    check({75_432: "-4", 75_440: "x"}, r"late\.gem: line 75436: MIDCount is negative \(-4\)")


def test_gem_missing_column_and_truncated_gzip(tmp_path):
    path = tmp_path / "nocount.gem"
    path.write_text("#x=1\ngeneID\tx\ty\tcounts\ng1\t1\t1\t1\n")
    with pytest.raises(InputError) as err:
        GemSource(path)
    msg = str(err.value)
    assert "nocount.gem" in msg and "line 2" in msg and "MIDCount" in msg and "geneID, x, y, counts" in msg

    path = write_gem(tmp_path / "cut.gem.gz", gem_frame(n=50_000))
    cut_gzip(path)
    with pytest.raises(InputError, match=r"cut\.gem\.gz: truncated or corrupt gzip"):
        collect_records(GemSource(path), chunk_size=5000)
    # cut inside the first lines: the header read already fails
    path.write_bytes(gzip.compress(b"#a=1\ngeneID\tx\ty\tMIDCount\ng1\t1\t1\t1\n" * 3)[:30])
    with pytest.raises(InputError, match=r"cut\.gem\.gz: truncated or corrupt gzip"):
        collect_records(GemSource(path))


def test_gem_multimember_gzip(tmp_path):
    """bgzip-style files (concatenated gzip members) read whole."""
    df = gem_frame(n=2000, cells=False)
    text = "geneID\tgeneName\tx\ty\tMIDCount\tExonCount\n" + df.to_csv(sep="\t", index=False, header=False)
    lines = text.splitlines(keepends=True)
    path = tmp_path / "m.gem.gz"
    path.write_bytes(gzip.compress("".join(lines[:700]).encode()) + gzip.compress("".join(lines[700:]).encode()))
    rec = collect_records(GemSource(path))
    assert len(rec["x"]) == len(df) and int(rec["count"].sum()) == int(df.MIDCount.sum())


@pytest.mark.slow
# --------------------------------------------------------------------------------------------------
# GEF
# --------------------------------------------------------------------------------------------------
def write_square_gef(path: Path, n_genes=12, seed=0, bin_levels=(1, 10)):
    """A square-bin GEF the way geftools writes it (gene-major expression, gene table offsets)."""
    rng = np.random.default_rng(seed)
    truth = {}
    with h5py.File(path, "w") as f:
        f.attrs["version"] = np.array([4], dtype=np.uint32)
        f.attrs["omics"] = np.array([b"Transcriptomics"])
        for level in bin_levels:
            grp = f.create_group(f"geneExp/bin{level}")
            exp_dtype = np.dtype([("x", "<i4"), ("y", "<i4"), ("count", "u1")])
            gene_dtype = np.dtype([("geneID", "S64"), ("geneName", "S64"), ("offset", "<u4"), ("count", "<u4")])
            recs, genes, exon = [], [], []
            offset = 0
            for g in range(n_genes):
                k = int(rng.integers(0, 400))  # some genes have no record
                xy = rng.choice(300 * 300, size=k, replace=False)
                r = np.zeros(k, dtype=exp_dtype)
                r["x"], r["y"], r["count"] = xy // 300 + 1000, xy % 300 + 50, rng.integers(1, 9, k)
                recs.append(r)
                exon.append(rng.integers(0, 3, k).astype(np.uint8))
                sym = f"S{g // 2}"  # duplicate symbols
                genes.append((f"ID{g}".encode(), sym.encode(), offset, k))
                offset += k
            recs = np.concatenate(recs)
            ds = grp.create_dataset("expression", data=recs)
            for key, val in (("minX", 1000), ("minY", 50), ("maxX", 1299), ("maxY", 349), ("resolution", 500)):
                ds.attrs[key] = np.array([val], dtype=np.int32)
            grp.create_dataset("gene", data=np.array(genes, dtype=gene_dtype))
            grp.create_dataset("exon", data=np.concatenate(exon))
            truth[level] = (recs, np.repeat(np.arange(n_genes), [g[3] for g in genes]), np.concatenate(exon))
    return truth


def test_gef_values(tmp_path):
    path = tmp_path / "chip.raw.gef"
    truth = write_square_gef(path)
    src = open_source(path)
    assert isinstance(src, GefSource) and src.unit == "DNB"
    recs, gene, exon = truth[1]
    out = collect_records(src, chunk_size=250)  # smaller than some genes: they are split
    assert len(out["x"]) == len(recs) == src.size_hint
    pd.testing.assert_series_equal(sums_by(out["gene"], out["count"]), sums_by(gene, recs["count"]))
    pd.testing.assert_series_equal(sums_by(zip(out["x"], out["y"]), out["count"]),
                                   sums_by(zip(recs["x"].astype(np.int64), recs["y"].astype(np.int64)), recs["count"]))
    pd.testing.assert_series_equal(sums_by(out["gene"], out["exon"]), sums_by(gene, exon))
    var = src.var
    assert list(var["gene_ids"]) == [f"ID{g}" for g in range(12)]
    assert list(var.index[:3]) == ["S0", "S0-1", "S1"]
    assert src.uns["gef_attrs"]["expression_resolution"] == 500

    # bin10 coordinates are bin indices in the file, DNB units in the records
    out10 = collect_records(GefSource(path, bin_level=10))
    recs10 = truth[10][0]
    np.testing.assert_array_equal(np.sort(out10["x"]), np.sort(recs10["x"].astype(np.int64) * 10))


def test_gef_errors(tmp_path):
    path = tmp_path / "chip.gef"
    write_square_gef(path, bin_levels=(1,))
    with pytest.raises(InputError, match=r"chip\.gef: no geneExp/bin50; bins in the file: bin1"):
        GefSource(path, bin_level=50)
    with h5py.File(path, "r+") as f:
        g = f["geneExp/bin1/gene"][()]
        g["offset"][3] = f["geneExp/bin1/expression"].shape[0] + 5
        f["geneExp/bin1/gene"][...] = g
    with pytest.raises(InputError, match=r"chip\.gef: gene 3: rows \[\d+, \d+\) lie outside"):
        GefSource(path)


def write_cellbin_gef(path: Path, n_cells=80, n_genes=15, seed=0):
    rng = np.random.default_rng(seed)
    cell_dtype = np.dtype([("id", "<u4"), ("x", "<i4"), ("y", "<i4"), ("offset", "<u4"), ("geneCount", "<u2"),
                           ("expCount", "<u2"), ("dnbCount", "<u2"), ("area", "<u2"), ("cellTypeID", "<u2"),
                           ("clusterID", "<u2")])
    cells = np.zeros(n_cells, dtype=cell_dtype)
    entries = []
    offset = 0
    for i in range(n_cells):
        k = int(rng.integers(0, 9))
        genes = np.sort(rng.choice(n_genes, size=k, replace=False))
        counts = rng.integers(1, 20, k)
        entries.append((genes, counts))
        cells[i] = (1000 + 3 * i, rng.integers(0, 5000), rng.integers(0, 5000), offset, k, counts.sum(),
                    rng.integers(10, 90), rng.integers(10, 90), rng.integers(0, 3), rng.integers(1, 6))
        offset += k
    exp = np.zeros(offset, dtype=[("geneID", "<u4"), ("count", "<u2")])
    exp["geneID"] = np.concatenate([e[0] for e in entries])
    exp["count"] = np.concatenate([e[1] for e in entries])
    gene = np.zeros(n_genes, dtype=[("geneName", "S64"), ("offset", "<u4"), ("cellCount", "<u4"),
                                    ("expCount", "<u4"), ("maxMIDcount", "<u2")])
    gene["geneName"] = [f"G{g}".encode() for g in range(n_genes)]
    with h5py.File(path, "w") as f:
        f.attrs["version"] = np.array([2], dtype=np.uint32)
        f.attrs["resolution"] = np.array([500], dtype=np.uint32)
        cb = f.create_group("cellBin")
        cb.create_dataset("cell", data=cells)
        cb.create_dataset("cellExp", data=exp)
        cb.create_dataset("gene", data=gene)
        border = np.full((n_cells, 32, 2), 32767, dtype=np.int16)
        border[:, :4] = rng.integers(-5, 5, (n_cells, 4, 2))
        cb.create_dataset("cellBorder", data=border)
        cb.create_dataset("cellTypeList", data=np.array([b"T", b"B", b"NK"]))
    dense = np.zeros((n_cells, n_genes))
    for i, (g, c) in enumerate(entries):
        dense[i, g] = c
    return cells, dense


def test_cellbin_gef_values(tmp_path):
    path = tmp_path / "chip.cellbin.gef"
    cells, dense = write_cellbin_gef(path)
    src = open_source(path)
    assert isinstance(src, CellbinGefSource) and src.kind == "obs" and src.unit == "DNB"
    got = dense_from_entries(src, chunk_size=20)
    np.testing.assert_array_equal(got, dense)
    assert list(src.obs.index[:2]) == ["1000", "1003"]
    np.testing.assert_array_equal(src.obs["area"].to_numpy(), cells["area"])
    np.testing.assert_array_equal(src.obs["clusterID"].to_numpy(), cells["clusterID"])
    assert list(src.obs["cell_type"].astype(str)[:3]) == [["T", "B", "NK"][t] for t in cells["cellTypeID"][:3]]
    np.testing.assert_array_equal(src.coords, np.column_stack([cells["x"], cells["y"]]).astype(float))
    assert src.obsm["cell_border"].shape == (80, 32, 2)
    assert list(src.var.index[:2]) == ["G0", "G1"]
    # a plain .gef name with only cellBin is detected as cell-bin too
    plain = tmp_path / "other.gef"
    plain.write_bytes(path.read_bytes())
    assert isinstance(open_source(plain), CellbinGefSource)


def test_cellbin_gef_errors(tmp_path):
    path = tmp_path / "bad.cellbin.gef"
    write_cellbin_gef(path)
    with h5py.File(path, "r+") as f:
        e = f["cellBin/cellExp"][()]
        e["geneID"][7] = 99
        f["cellBin/cellExp"][...] = e
    with pytest.raises(InputError, match=r"bad\.cellbin\.gef: cellBin/cellExp row 7: geneID 99 is out of range"):
        dense_from_entries(CellbinGefSource(path))
    with h5py.File(path, "r+") as f:
        c = f["cellBin/cell"][()]
        c["id"][5] = c["id"][2]
        f["cellBin/cell"][...] = c
    with pytest.raises(InputError, match=r"bad\.cellbin\.gef: cellBin/cell: cell id 1006 appears more than once"):
        CellbinGefSource(path)
    with pytest.raises(InputError, match="cell-bin GEF"):
        GefSource(path)


# --------------------------------------------------------------------------------------------------
# 10x MTX + cell locations
# --------------------------------------------------------------------------------------------------
def write_mtx_dir(folder: Path, n_cells=60, n_genes=25, seed=0, gz=True):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    m = sp.random(n_genes, n_cells, density=0.2, format="coo", random_state=seed,
                  data_rvs=lambda k: rng.integers(1, 50, k)).astype(np.int64)
    barcodes = [f"AAAC{i:04d}-1" for i in range(n_cells)]
    symbols = [f"Gene{g // 3 if g < 6 else g}" for g in range(n_genes)]  # Gene0 x3, Gene1 x3
    types = ["Gene Expression"] * (n_genes - 1) + ["Antibody Capture"]
    op = (lambda p: gzip.open(p, "wt")) if gz else (lambda p: open(p, "w"))
    sfx = ".gz" if gz else ""
    with op(folder / f"matrix.mtx{sfx}") as fh:
        fh.write("%%MatrixMarket matrix coordinate integer general\n%metadata_json: {}\n")
        fh.write(f"{n_genes} {n_cells} {m.nnz}\n")
        for i, j, v in zip(m.row, m.col, m.data):
            fh.write(f"{i + 1} {j + 1} {v}\n")
    with op(folder / f"features.tsv{sfx}") as fh:
        for g in range(n_genes):
            fh.write(f"ENSG{g:04d}\t{symbols[g]}\t{types[g]}\n")
    with op(folder / f"barcodes.tsv{sfx}") as fh:
        fh.write("\n".join(barcodes) + "\n")
    # locations: shuffled, with extra barcodes that are not in the matrix, and an extra column
    xy = rng.uniform(0, 5000, (n_cells, 2))
    loc = pd.DataFrame({"cell": barcodes, "x": xy[:, 0], "y": xy[:, 1], "umi": rng.integers(1, 9, n_cells)})
    extra = pd.DataFrame({"cell": ["TTTT-1", "GGGG-1"], "x": [1.0, 2.0], "y": [np.nan, 3.0], "umi": [1, 1]})
    loc = pd.concat([loc, extra]).sample(frac=1, random_state=seed)
    loc.to_csv(folder / "cell_locations.tsv", sep="\t", index=False)
    return m.toarray().T.astype(np.float64), barcodes, symbols, types, xy


@pytest.mark.parametrize("gz", [True, False])
def test_mtx_values(tmp_path, gz):
    dense, barcodes, symbols, types, xy = write_mtx_dir(tmp_path / "seekspace", gz=gz)
    src = open_source(tmp_path / "seekspace")
    assert isinstance(src, MtxSource) and src.unit == "um"
    assert list(src.obs.index) == barcodes
    # scanpy's var_names='gene_symbols' + make_unique, then gex_only
    assert list(src.var.index[:7]) == ["Gene0", "Gene0-1", "Gene0-2", "Gene1", "Gene1-1", "Gene1-2", "Gene6"]
    assert list(src.var.columns) == ["gene_ids", "feature_types"] and len(src.var) == len(symbols) - 1
    got = dense_from_entries(src, chunk_size=37)
    np.testing.assert_array_equal(got, dense[:, :-1])
    np.testing.assert_allclose(got.sum(1), dense[:, :-1].sum(1))
    np.testing.assert_allclose(src.coords, xy * 0.265385)
    assert src.obs["umi"].dtype.kind == "i"
    # all features, pixels
    src = MtxSource(tmp_path / "seekspace", gex_only=False, pixel_size=None, spot_diameter=10.0)
    assert src.unit == "pixel" and src.spot_diameter == 10.0
    np.testing.assert_allclose(src.coords, xy)
    np.testing.assert_array_equal(dense_from_entries(src), dense)


def _rewrite(path: Path, edit):
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as fh:
        lines = fh.read().splitlines()
    lines = edit(lines)
    with opener(path, "wt") as fh:
        fh.write("\n".join(lines) + "\n")


@pytest.mark.parametrize("edit, needle", [
    (lambda L: L[:3] + ["3 999 4"] + L[4:],
     r"matrix\.mtx\.gz: line 4: column \(barcode\) index 999 is out of range 1\.\.60"),
    (lambda L: L[:3] + ["0 1 4"] + L[4:], r"matrix\.mtx\.gz: line 4: row \(gene\) index 0 is out of range 1\.\.25"),
    (lambda L: L[:4] + ["3 1 -4"] + L[5:], r"matrix\.mtx\.gz: line 5: value is negative \(-4\)"),
    (lambda L: L[:4] + ["3 1 4.5"] + L[5:], r"matrix\.mtx\.gz: line 5: value '4\.5' is not an integer"),
    (lambda L: L[:4] + ["3 1"] + L[5:], r"matrix\.mtx\.gz: line 5: 2 fields, expected 3"),
    (lambda L: L[:-1], r"matrix\.mtx\.gz: \d+ entries, but line 3 declares \d+"),
    (lambda L: L + ["1 1 1"], r"matrix\.mtx\.gz: line \d+: more entries than the \d+ declared on line 3"),
    (lambda L: ["%%MatrixMarket matrix coordinate pattern general"] + L[1:],
     r"matrix\.mtx\.gz: line 1: MatrixMarket 'coordinate pattern general'"),
])
def test_mtx_matrix_errors(tmp_path, edit, needle):
    write_mtx_dir(tmp_path / "d")
    _rewrite(tmp_path / "d" / "matrix.mtx.gz", edit)
    with pytest.raises(InputError, match=needle):
        dense_from_entries(MtxSource(tmp_path / "d"))


def test_mtx_real_header(tmp_path):
    """R's writeMM writes 'real': accepted when every value is whole, else the line is named."""
    dense, *_ = write_mtx_dir(tmp_path / "r", gz=False)
    _rewrite(tmp_path / "r" / "matrix.mtx",
             lambda L: [L[0].replace("integer", "real")] + L[1:3] + [line + ".0" for line in L[3:]])
    np.testing.assert_array_equal(dense_from_entries(MtxSource(tmp_path / "r", gex_only=False)), dense)
    _rewrite(tmp_path / "r" / "matrix.mtx", lambda L: L[:6] + ["2 2 1.5"] + L[7:])
    with pytest.raises(InputError, match=r"matrix\.mtx: line 7: value 1\.5 is not a whole number"):
        dense_from_entries(MtxSource(tmp_path / "r"))


def test_mtx_table_errors(tmp_path):
    write_mtx_dir(tmp_path / "d")
    _rewrite(tmp_path / "d" / "features.tsv.gz", lambda L: L[:-2])
    with pytest.raises(InputError, match=r"features\.tsv\.gz: 23 features, but matrix\.mtx\.gz \(line 3\) has 25 rows"):
        MtxSource(tmp_path / "d")

    write_mtx_dir(tmp_path / "e")
    _rewrite(tmp_path / "e" / "barcodes.tsv.gz", lambda L: L[:10] + [L[3]] + L[11:])
    with pytest.raises(InputError, match=r"barcodes\.tsv\.gz: barcode 'AAAC0003-1' appears more than once"):
        MtxSource(tmp_path / "e")

    write_mtx_dir(tmp_path / "f")
    loc = pd.read_csv(tmp_path / "f" / "cell_locations.tsv", sep="\t")
    loc = loc[~loc.cell.isin(["AAAC0007-1", "AAAC0009-1"])]
    loc.to_csv(tmp_path / "f" / "cell_locations.tsv", sep="\t", index=False)
    with pytest.raises(InputError, match=r"cell_locations\.tsv: 2 of 60 matrix barcodes have no location, e\.g\. "
                                         r"'AAAC0007-1', 'AAAC0009-1'"):
        MtxSource(tmp_path / "f")

    write_mtx_dir(tmp_path / "g")
    loc = pd.read_csv(tmp_path / "g" / "cell_locations.tsv", sep="\t")
    loc.loc[loc.cell == "AAAC0011-1", "y"] = np.nan
    loc.to_csv(tmp_path / "g" / "cell_locations.tsv", sep="\t", index=False)
    with pytest.raises(InputError, match=r"cell_locations\.tsv: barcode 'AAAC0011-1': y is ''; .*NaN coordinate"):
        MtxSource(tmp_path / "g")

    write_mtx_dir(tmp_path / "h")
    (tmp_path / "h" / "cell_locations.tsv").unlink()
    with pytest.raises(InputError, match="no cell_locations.tsv"):
        MtxSource(tmp_path / "h")

    write_mtx_dir(tmp_path / "i")
    cut_gzip(tmp_path / "i" / "matrix.mtx.gz", keep=0.7)
    with pytest.raises(InputError, match=r"matrix\.mtx\.gz: truncated or corrupt gzip"):
        dense_from_entries(MtxSource(tmp_path / "i"))


# --------------------------------------------------------------------------------------------------
# Visium
# --------------------------------------------------------------------------------------------------
def write_visium(outs: Path, n_spots=50, n_genes=20, seed=0, h5=True, old_positions=False):
    rng = np.random.default_rng(seed)
    (outs / "spatial").mkdir(parents=True)
    m = sp.random(n_genes, n_spots, density=0.3, format="csc", random_state=seed,
                  data_rvs=lambda k: rng.integers(1, 30, k)).astype(np.int32)
    barcodes = [f"ACGT{i:04d}-1" for i in range(n_spots)]
    names = [f"G{g % 18}" for g in range(n_genes)]  # G0, G1 repeat
    if h5:
        with h5py.File(outs / "filtered_feature_bc_matrix.h5", "w") as f:
            f.attrs["library_ids"] = np.array([b"lib_A"])
            f.attrs["chemistry_description"] = "Spatial 3' v1"
            g = f.create_group("matrix")
            g["data"], g["indices"], g["indptr"] = m.data, m.indices.astype(np.int64), m.indptr.astype(np.int64)
            g["shape"] = np.array([n_genes, n_spots], dtype=np.int32)
            g["barcodes"] = np.array([b.encode() for b in barcodes])
            ft = g.create_group("features")
            ft["id"] = np.array([f"ENSG{i}".encode() for i in range(n_genes)])
            ft["name"] = np.array([n.encode() for n in names])
            ft["feature_type"] = np.array([b"Gene Expression"] * n_genes)
            ft["genome"] = np.array([b"GRCh38"] * n_genes)
    else:
        mtx = outs / "filtered_feature_bc_matrix"
        mtx.mkdir()
        scipy.io.mmwrite(mtx / "matrix.mtx", m.astype(np.int64), field="integer")
        feats = pd.DataFrame({"id": [f"ENSG{i}" for i in range(n_genes)], "name": names,
                              "t": ["Gene Expression"] * n_genes})
        feats.to_csv(mtx / "features.tsv", sep="\t", header=False, index=False)
        pd.Series(barcodes).to_csv(mtx / "barcodes.tsv", header=False, index=False)
    all_bc = barcodes + ["NOTINMATRIX-1"]
    pos = pd.DataFrame({"barcode": all_bc, "in_tissue": rng.integers(0, 2, len(all_bc)),
                        "array_row": rng.integers(0, 78, len(all_bc)), "array_col": rng.integers(0, 128, len(all_bc)),
                        "pxl_row_in_fullres": rng.uniform(0, 20000, len(all_bc)),
                        "pxl_col_in_fullres": rng.uniform(0, 20000, len(all_bc))}).sample(frac=1, random_state=1)
    if old_positions:
        pos.to_csv(outs / "spatial" / "tissue_positions_list.csv", header=False, index=False)
    else:
        pos.to_csv(outs / "spatial" / "tissue_positions.csv", index=False)
    sf = {"spot_diameter_fullres": 89.4, "tissue_hires_scalef": 0.15, "tissue_lowres_scalef": 0.045,
          "fiducial_diameter_fullres": 144.4}
    (outs / "spatial" / "scalefactors_json.json").write_text(json.dumps(sf))
    return m.toarray().T.astype(np.float64), barcodes, pos.set_index("barcode").loc[barcodes], sf


@pytest.mark.parametrize("h5, old", [(True, False), (False, True)])
def test_visium_values(tmp_path, h5, old):
    dense, barcodes, pos, sf = write_visium(tmp_path / "run" / "outs", h5=h5, old_positions=old)
    src = open_source(tmp_path / "run")  # the run folder: its outs/ is found
    assert isinstance(src, VisiumSource) and src.unit == "pixel"
    assert list(src.obs.index) == barcodes
    np.testing.assert_array_equal(dense_from_entries(src, chunk_size=40), dense)
    np.testing.assert_allclose(src.coords[:, 0], pos["pxl_col_in_fullres"])
    np.testing.assert_allclose(src.coords[:, 1], pos["pxl_row_in_fullres"])
    np.testing.assert_array_equal(src.obs["array_row"], pos["array_row"])
    assert src.spot_diameter == pytest.approx(89.4)
    lib = "lib_A" if h5 else "run"
    assert src.uns["spatial"][lib]["scalefactors"] == sf
    assert src.uns["spatial"][lib]["use_quality"] == "hires"
    assert list(src.var.index[:2]) == ["G0", "G1"] and "G0-1" in src.var.index


def test_visium_errors(tmp_path):
    write_visium(tmp_path / "a")
    p = tmp_path / "a" / "spatial" / "tissue_positions.csv"
    pos = pd.read_csv(p)
    pos[pos.barcode != "ACGT0004-1"].to_csv(p, index=False)
    with pytest.raises(InputError, match=r"tissue_positions\.csv: 1 of 50 matrix barcodes have no position, "
                                         r"e\.g\. 'ACGT0004-1'"):
        VisiumSource(tmp_path / "a")
    write_visium(tmp_path / "b")
    p = tmp_path / "b" / "spatial" / "tissue_positions.csv"
    pos = pd.read_csv(p)
    pos.loc[pos.barcode == "ACGT0008-1", "pxl_col_in_fullres"] = np.nan
    pos.to_csv(p, index=False)
    with pytest.raises(InputError, match=r"tissue_positions\.csv: barcode 'ACGT0008-1': pxl_col_in_fullres .*NaN"):
        VisiumSource(tmp_path / "b")
    write_visium(tmp_path / "c")
    with h5py.File(tmp_path / "c" / "filtered_feature_bc_matrix.h5", "r+") as f:
        f["matrix/indices"][3] = 500
    with pytest.raises(InputError, match=r"filtered_feature_bc_matrix\.h5: matrix/indices\[3\] = 500 is out of range"):
        dense_from_entries(VisiumSource(tmp_path / "c"))


# --------------------------------------------------------------------------------------------------
# h5ad
# --------------------------------------------------------------------------------------------------
def make_adata(n=120, g=30, seed=0, stlearn=False, fmt="csr", scalef=0.5):
    rng = np.random.default_rng(seed)
    X = sp.random(n, g, density=0.2, format="csr", random_state=seed,
                  data_rvs=lambda k: rng.integers(1, 40, k)).astype(np.int32)
    if fmt == "csc":
        X = X.tocsc()
    elif fmt == "dense":
        X = X.toarray()
    obs = pd.DataFrame({"cell_type": pd.Categorical(rng.choice(["a", "b", "c"], n)),
                        "score": rng.random(n)}, index=[f"c{i}" for i in range(n)])
    var = pd.DataFrame({"is_lr": rng.random(g) < 0.3}, index=[f"g{j}" for j in range(g)])
    a = ad.AnnData(X=X, obs=obs, var=var)
    xy = rng.uniform(0, 3000, (n, 2))
    a.layers["norm"] = sp.csr_matrix(np.asarray(sp.csr_matrix(X).multiply(0.5).toarray(), dtype=np.float32))
    a.obsm["X_pca"] = rng.random((n, 5)).astype(np.float32)
    sf = {"spot_diameter_fullres": 60.0, "tissue_hires_scalef": scalef, "tissue_lowres_scalef": 0.1}
    a.uns["spatial"] = {"libX": {"images": {}, "scalefactors": sf, "use_quality": "hires"}}
    if stlearn:
        a.obs["imagecol"], a.obs["imagerow"] = xy[:, 0], xy[:, 1]
    else:
        a.obsm["spatial"] = xy
    return a, xy


@pytest.mark.parametrize("fmt", ["csr", "csc", "dense"])
def test_h5ad_values(tmp_path, fmt):
    a, xy = make_adata(fmt=fmt)
    a.write_h5ad(tmp_path / "a.h5ad")
    src = open_source(tmp_path / "a.h5ad")
    assert isinstance(src, H5adSource) and src.value_dtype == np.uint32 and src.unit == "pixel"
    dense = np.asarray(sp.csr_matrix(a.X).toarray(), dtype=np.float64)
    np.testing.assert_array_equal(dense_from_entries(src, chunk_size=50), dense)
    np.testing.assert_allclose(dense_from_entries(src, layer="norm"), a.layers["norm"].toarray())
    assert src.layers == {"norm": np.dtype(np.float32)}
    np.testing.assert_allclose(src.coords, xy)
    assert isinstance(src.obs["cell_type"].dtype, pd.CategoricalDtype)
    assert list(src.obs.columns) == ["cell_type", "score"] and list(src.var.columns) == ["is_lr"]
    assert set(src.obsm) == {"X_pca"}
    assert src.uns["spatial"]["libX"]["scalefactors"]["spot_diameter_fullres"] == 60.0
    assert src.spot_diameter == 60.0  # obsm['spatial'] is full-resolution pixels


def test_h5ad_stlearn_coordinates_and_diameter(tmp_path):
    a, xy = make_adata(stlearn=True, scalef=0.5)
    a.write_h5ad(tmp_path / "st.h5ad")
    src = H5adSource(tmp_path / "st.h5ad")
    np.testing.assert_allclose(src.coords, xy)
    assert src.coordinate_source.startswith("obs[")
    assert src.spot_diameter == pytest.approx(30.0)  # 60 x tissue_hires_scalef
    # stLearn files often carry both: obsm['spatial'] (full-res) and imagecol = spatial x scalef
    a.obsm["spatial"] = xy / 0.5
    a.write_h5ad(tmp_path / "both.h5ad")
    src = H5adSource(tmp_path / "both.h5ad")
    np.testing.assert_allclose(src.coords, xy / 0.5)
    assert src.spot_diameter == pytest.approx(60.0)  # full-res units, same physical size
    assert H5adSource(tmp_path / "both.h5ad", coords="imagecol").spot_diameter == pytest.approx(30.0)


def test_h5ad_float_x(tmp_path):
    a, _ = make_adata()
    a.X = a.X.astype(np.float32)  # raw counts stored as float stay float32
    a.write_h5ad(tmp_path / "f.h5ad")
    src = H5adSource(tmp_path / "f.h5ad", layers=False)
    assert src.value_dtype == np.float32 and src.layers == {}
    r, g, v = collect_entries(src)
    assert v.dtype == np.float32 and v.sum() == pytest.approx(a.X.sum())


def test_h5ad_errors(tmp_path):
    a, _ = make_adata()
    a.obs_names = ["c0", "c1", "c2", "c1"] + list(a.obs_names[4:])
    with warnings.catch_warnings():  # anndata may warn about the non-unique names it writes
        warnings.simplefilter("ignore")
        a.write_h5ad(tmp_path / "dup.h5ad")
    with pytest.raises(InputError, match=r"dup\.h5ad: obs name 'c1' appears more than once"):
        H5adSource(tmp_path / "dup.h5ad")

    a, _ = make_adata()
    a.obsm["spatial"][7, 1] = np.nan
    a.write_h5ad(tmp_path / "nan.h5ad")
    with pytest.raises(InputError, match=r"nan\.h5ad: obsm\['spatial'\]: observation 'c7' .*NaN coordinate"):
        H5adSource(tmp_path / "nan.h5ad")

    a, _ = make_adata()
    del a.obsm["spatial"]
    a.write_h5ad(tmp_path / "nocoord.h5ad")
    with pytest.raises(InputError, match=r"nocoord\.h5ad: no coordinates: looked for obsm\['spatial'\] and for "
                                         r"obs\['imagecol'\] with obs\['imagerow'\]"):
        H5adSource(tmp_path / "nocoord.h5ad")

    a, _ = make_adata()
    a.X.data[0] = -3
    a.write_h5ad(tmp_path / "neg.h5ad")
    with pytest.raises(InputError, match=r"neg\.h5ad: X\['c\d+', 'g\d+'\] is -3; integer counts must be >= 0"):
        collect_entries(H5adSource(tmp_path / "neg.h5ad"))


def test_h5ad_stlearn_reference():
    """The stLearn reference input (2000 cells, imagecol/imagerow, spot_diameter_fullres 55, scale 1)."""
    path = DATA / "ref_N2000.h5ad"
    src = open_source(path)
    ref = ad.read_h5ad(path)
    assert src.spot_diameter == pytest.approx(55.0)
    assert src.value_dtype == np.float32
    np.testing.assert_allclose(src.coords, ref.obs[["imagecol", "imagerow"]].to_numpy())
    r, g, v = collect_entries(src, chunk_size=50_000)
    per_cell = np.bincount(r, weights=v, minlength=ref.n_obs)
    per_gene = np.bincount(g, weights=v, minlength=ref.n_vars)
    np.testing.assert_allclose(per_cell, np.asarray(ref.X.sum(1)).ravel(), rtol=1e-5)
    np.testing.assert_allclose(per_gene, np.asarray(ref.X.sum(0)).ravel(), rtol=1e-5)
    assert list(src.obs.index) == list(ref.obs_names) and list(src.var.index) == list(ref.var_names)
    assert isinstance(src.obs["cell_type"].dtype, pd.CategoricalDtype)
    assert src.uns["spatial"]["synthetic"]["scalefactors"]["spot_diameter_fullres"] == 55.0
    assert "spatial" not in src.obsm and "lr_scores" in src.obsm


def test_detection_by_name(tmp_path):
    assert GemSource.detect(Path("x.gem.gz")) and GemSource.detect(Path("x.GEM"))
    assert not GemSource.detect(Path("x.txt.gz"))
    assert CellbinGefSource.detect(Path("x.cellbin.gef")) and not GefSource.detect(Path("x.cellbin.gef"))
    assert GefSource.detect(Path("missing.tissue.gef"))
    with pytest.raises(ValueError, match="cannot tell the input format"):
        open_source(tmp_path)
    write_gem(tmp_path / "a.gem", gem_frame(n=5))
    with pytest.raises(TypeError, match="pixel_size"):  # an option of another format is not silently ignored
        open_source(tmp_path / "a.gem", pixel_size=0.5)
