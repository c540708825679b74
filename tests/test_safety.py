"""Issue 13, "overwrite only what is ours" and "say what is surprising": --overwrite replaces only a stdask
store or report folder and never the input; cci.run warns on raw counts and log data, range-checks its
arguments and reports the database pairs it drops; the vague messages name the file and what is wrong."""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import stdask
from stdask.cli import main as cli
from stdask.io.base import InputError
from stdask.io.memory import AnnDataSource
from stdask.store.format import StoreFormatError
from stdask.store.markers import REPORT_MARKER, UnsafeOverwriteError, is_report, is_store
from stdask.tl import cci
from stdask.tl.cci.database import LRPairs, as_pairs, match_pairs
from stdask.tl.cci.scale_check import classify_scale

DATA = Path(__file__).parent / "data"


def small_adata(n_obs: int = 300, n_genes: int = 160, seed: int = 0, genes=None, normalize: bool = True):
    """A small slice on a grid: Poisson counts, ``normalize_total``-scaled (to 1e4) unless ``normalize=False``."""
    rng = np.random.default_rng(seed)
    counts = rng.poisson(rng.gamma(0.6, 1.5, n_genes), size=(n_obs, n_genes)).astype(np.float32)
    counts[:, 0] += 1  # no empty rows
    X = counts * (1e4 / counts.sum(1, keepdims=True)) if normalize else counts
    genes = genes if genes is not None else [f"G{i}" for i in range(n_genes)]
    a = ad.AnnData(sp.csr_matrix(X.astype(np.float32)), obs=pd.DataFrame(index=[f"c{i}" for i in range(n_obs)]),
                   var=pd.DataFrame(index=genes))
    side = int(np.ceil(np.sqrt(n_obs)))
    a.obsm["spatial"] = np.column_stack([np.arange(n_obs) % side, np.arange(n_obs) // side]).astype(np.float64) * 10
    return a


def store_of(a, path: Path) -> Path:
    return stdask.ingest(AnnDataSource(a), path, progress=False)


@pytest.fixture(scope="module")
def mtx_dir(tmp_path_factory):
    from stdask.datasets import synthetic_slice
    from stdask.datasets.tenx import write_mtx

    out = tmp_path_factory.mktemp("inputs") / "mtx"
    write_mtx(synthetic_slice(n_obs=300, n_genes=200, layout="cells", seed=2), out)
    return out


def listing(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


# ----------------------------------------------------------------------------------------------------
# overwrite only what is ours
# ----------------------------------------------------------------------------------------------------
def test_ingest_overwrite_refuses_a_users_folder_a_file_and_a_link(mtx_dir, tmp_path, capsys):
    user = tmp_path / "user"
    user.mkdir()
    (user / "notes.txt").write_text("weeks of notes")
    assert cli(["ingest", str(mtx_dir), str(user), "--overwrite", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"{user} is a folder holding 1 entry (notes.txt), not a stdask store" in err
    assert (user / "notes.txt").read_text() == "weeks of notes" and listing(user).keys() == {"notes.txt"}
    # an empty folder is not ours either (it has no marker)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UnsafeOverwriteError, match="an empty folder without a stdask marker"):
        stdask.ingest(mtx_dir, empty, overwrite=True, progress=False)
    f = tmp_path / "results.csv"
    f.write_text("a,b\n")
    with pytest.raises(UnsafeOverwriteError, match=r"results\.csv is a file, not a stdask store"):
        stdask.ingest(mtx_dir, f, overwrite=True, progress=False)
    assert f.read_text() == "a,b\n"
    # a link is refused even when it points at a store: replacing it would act on the link, not the store
    store = stdask.ingest(mtx_dir, tmp_path / "real.zarr", progress=False)
    for target in (user, store):
        link = tmp_path / f"link_to_{target.name}"
        link.symlink_to(target)
        with pytest.raises(UnsafeOverwriteError, match="is a symbolic link"):
            stdask.ingest(mtx_dir, link, overwrite=True, progress=False)
        assert link.is_symlink() and os.readlink(link) == str(target)
    assert listing(user).keys() == {"notes.txt"} and is_store(store)
    # no scratch sibling was left behind by any refusal
    assert not [p for p in tmp_path.iterdir() if ".stdask-tmp-" in p.name]


def test_ingest_never_replaces_its_input(mtx_dir, tmp_path, capsys):
    before = listing(mtx_dir)
    assert cli(["ingest", str(mtx_dir), str(mtx_dir), "--overwrite", "--no-progress"]) == 2
    assert f"{mtx_dir}: the output is the input itself" in capsys.readouterr().err
    with pytest.raises(UnsafeOverwriteError, match="the output contains the input"):
        stdask.ingest(mtx_dir, mtx_dir.parent, overwrite=True, progress=False)
    with pytest.raises(UnsafeOverwriteError, match="the output is inside the input"):
        stdask.ingest(mtx_dir, mtx_dir / "cells.zarr", progress=False)
    # the same path spelled another way, and through a link, is still the input
    with pytest.raises(UnsafeOverwriteError, match="the output is the input itself"):
        stdask.ingest(mtx_dir, mtx_dir / ".." / mtx_dir.name, overwrite=True, progress=False)
    link = tmp_path / "mtx_link"
    link.symlink_to(mtx_dir)
    with pytest.raises(UnsafeOverwriteError, match="the output is the input itself"):
        stdask.ingest(link, mtx_dir, overwrite=True, progress=False)
    assert listing(mtx_dir) == before


def test_overwrite_replaces_a_stdask_store(mtx_dir, tmp_path):
    store = stdask.ingest(mtx_dir, tmp_path / "s.zarr", progress=False)
    uuid = stdask.read(store).store.uuid
    with pytest.raises(FileExistsError, match="pass overwrite=True"):
        stdask.ingest(mtx_dir, store, progress=False)
    stdask.ingest(mtx_dir, store, overwrite=True, progress=False)
    assert stdask.read(store).store.uuid != uuid and is_store(store) and not is_report(store)


def test_subset_and_bin_overwrite_only_a_store_never_their_input(tmp_path):
    ds = stdask.read(store_of(small_adata(), tmp_path / "in.zarr"))
    keep = np.arange(ds.n_obs) % 2 == 0
    with pytest.raises(UnsafeOverwriteError, match="the output is the input itself"):
        stdask.pp.subset(ds, tmp_path / "in.zarr", obs=keep, overwrite=True, progress=False)
    user = tmp_path / "user"
    user.mkdir()
    (user / "keep.txt").write_text("x")
    with pytest.raises(UnsafeOverwriteError, match="not a stdask store"):
        stdask.pp.subset(ds, user, obs=keep, overwrite=True, progress=False)
    with pytest.raises(UnsafeOverwriteError, match="not a stdask store"):
        stdask.tl.grid(ds, n_row=4, n_col=4, out=user, overwrite=True, progress=False)
    assert (user / "keep.txt").read_text() == "x" and stdask.read(tmp_path / "in.zarr").n_obs == ds.n_obs
    sub = stdask.pp.subset(ds, tmp_path / "sub.zarr", obs=keep, progress=False)
    again = stdask.pp.subset(ds, tmp_path / "sub.zarr", obs=~keep, overwrite=True, progress=False)
    assert sub.n_obs == int(keep.sum()) and again.n_obs == int((~keep).sum())


@pytest.fixture(scope="module")
def cci_store(tmp_path_factory):
    """A store with LR results, for the report."""
    path = tmp_path_factory.mktemp("cci") / "s.zarr"
    ds = stdask.read(store_of(small_adata(seed=3), path))
    lrs = [f"G{i}_G{i + 1}" for i in range(0, 20, 2)]
    cci.run(ds, lrs, min_spots=3, n_pairs=100, distance=15.0, progress=False, verbose=False)
    ds.write()
    return path


def test_report_overwrite_only_a_report_folder(cci_store, tmp_path, capsys):
    out = tmp_path / "report"
    stdask.report.cci_report(cci_store, out, verbose=False)
    marker = json.loads((out / REPORT_MARKER).read_text())
    assert marker["stdask"] == "report" and marker["kind"] == "cci" and is_report(out)
    (out / "lr_summary.tsv").write_text("old")
    stdask.report.cci_report(cci_store, out, overwrite=True, verbose=False)  # ours: replaced
    assert (out / "lr_summary.tsv").read_text() != "old" and is_report(out)
    user = tmp_path / "figures"
    user.mkdir()
    (user / "fig1.png").write_bytes(b"png")
    assert cli(["report", str(cci_store), str(user), "--overwrite"]) == 2
    assert "is a folder holding 1 entry (fig1.png), not a stdask report folder" in capsys.readouterr().err
    assert listing(user) == {"fig1.png": b"png"}
    # a store is ours, but not a report folder; and the store reported on is never the output
    other = store_of(small_adata(seed=4), tmp_path / "other.zarr")
    with pytest.raises(UnsafeOverwriteError, match="is a stdask store, not a stdask report folder"):
        stdask.report.cci_report(cci_store, other, overwrite=True, verbose=False)
    with pytest.raises(UnsafeOverwriteError, match="the output is the input itself"):
        stdask.report.cci_report(cci_store, cci_store, overwrite=True, verbose=False)
    with pytest.raises(UnsafeOverwriteError, match="the output is inside the input"):
        stdask.report.cci_report(stdask.read(cci_store), cci_store / "report", verbose=False)
    assert is_store(other) and stdask.read(cci_store).is_stored("uns", "lr_summary")


def test_store_overwrite_refuses_a_report_folder(cci_store, mtx_dir, tmp_path):
    out = stdask.report.cci_report(cci_store, tmp_path / "report", verbose=False)
    with pytest.raises(UnsafeOverwriteError, match="is a stdask report folder, not a stdask store"):
        stdask.ingest(mtx_dir, out, overwrite=True, progress=False)
    assert is_report(out)


# ----------------------------------------------------------------------------------------------------
# say what is surprising: cci.run
# ----------------------------------------------------------------------------------------------------
def test_scale_classification():
    a = ad.read_h5ad(DATA / "ref_N2000.h5ad")  # normalize_total output, as the tutorial runs it
    X = sp.csr_matrix(a.X)
    assert classify_scale(X) is None
    assert classify_scale(X.log1p()) == "log"
    counts = sp.csr_matrix(small_adata(normalize=False).X)
    assert classify_scale(counts) == "counts"
    assert classify_scale(counts.log1p()) == "log"  # log1p of raw counts
    normalized = sp.csr_matrix(small_adata().X)
    assert classify_scale(normalized) is None
    assert classify_scale(normalized.log1p()) == "log"


def _run_until_pairs(ds, **kw):
    """cci.run up to its pair matching, which fails at once on a table with no gene in the data."""
    with pytest.raises(ValueError, match="none of the LR pairs"):
        cci.run(ds, ["NOPE_NADA"], distance=15.0, progress=False, verbose=False, **kw)


def test_run_warns_on_raw_counts_and_log_data_not_on_normalized(tmp_path):
    raw = stdask.read(store_of(small_adata(normalize=False), tmp_path / "raw.zarr"))
    with pytest.warns(UserWarning, match=r"matrix 'X' looks like raw counts .*sd\.pp\.normalize_total"):
        _run_until_pairs(raw)
    a = small_adata()
    a.X = a.X.log1p()
    logged = stdask.read(store_of(a, tmp_path / "log.zarr"))
    with pytest.warns(UserWarning, match=r"matrix 'X' looks log-transformed .*sd\.pp\.normalize_total"):
        _run_until_pairs(logged)
    for a in (small_adata(), ad.read_h5ad(DATA / "ref_N2000.h5ad")):
        ds = stdask.read(store_of(a, tmp_path / f"norm{a.n_obs}.zarr"))
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            _run_until_pairs(ds)


@pytest.mark.parametrize("kw, message", [
    ({"min_spots": -1}, r"min_spots=-1 \(CLI: --min-spots\) must be an integer >= 0"),
    ({"pval_adj_cutoff": 2.0}, r"pval_adj_cutoff=2\.0 \(CLI: --cutoff\) must be a p-value cutoff in \(0, 1\]"),
    ({"pval_adj_cutoff": 0.0}, r"pval_adj_cutoff=0\.0 .* in \(0, 1\]"),
    ({"n_pairs": 99}, r"n_pairs=99 is too small"),
])
def test_run_range_checks(tmp_path, kw, message):
    ds = stdask.read(store_of(small_adata(), tmp_path / "s.zarr"))
    with pytest.raises(ValueError, match=message):
        cci.run(ds, ["G0_G1"], progress=False, verbose=False, **kw)


def test_cli_range_checks(tmp_path, capsys):
    store = store_of(small_adata(), tmp_path / "s.zarr")
    assert cli(["cci", "run", str(store), "--min-spots", "-1", "--no-progress"]) == 2
    assert "min_spots=-1 (CLI: --min-spots) must be an integer >= 0" in capsys.readouterr().err
    assert cli(["cci", "run", str(store), "--cutoff", "2", "--no-progress"]) == 2
    assert "pval_adj_cutoff=2.0 (CLI: --cutoff) must be a p-value cutoff in (0, 1]" in capsys.readouterr().err


def test_dropped_pairs_counted_with_the_other_species_case():
    var = pd.Index(["Cxcl12", "Cxcr4", "Ccl2", "Ccr2", "VEGFA", "KDR"])
    pairs = LRPairs(np.array(["CXCL12", "CCL2", "VEGFA", "TGFB1"], dtype=object),
                    np.array(["CXCR4", "CCR2", "KDR", "TGFBR1"], dtype=object), "human")
    m = match_pairs(pairs, var)
    assert m.keep.tolist() == [False, False, True, False]
    assert (m.n_dropped, m.n_other_case, m.other_species) == (3, 2, "mouse")
    assert m.message() == ("3 of 4 pairs dropped: a gene is not in var_names (2 would match as mouse gene names: "
                           "pass species='mouse' to load_lrs (CLI: --species mouse))")
    # mouse-case pairs on human-case genes: the hint names human, never the species already passed
    mouse = LRPairs(np.array(["Vegfa", "Cxcl12"], dtype=object), np.array(["Kdr", "Cxcr4"], dtype=object), "mouse")
    m = match_pairs(mouse, var)
    assert (m.n_dropped, m.n_other_case, m.other_species) == (1, 1, "human")
    assert "species='human'" in m.message() and "species='mouse'" not in m.message()
    # species unknown (pairs given as strings): guessed from the symbols' case
    assert match_pairs(as_pairs(["CXCL12_CXCR4", "VEGFA_KDR"]), var).other_species == "mouse"


def test_species_hint_is_the_other_species(tmp_path):
    a = ad.read_h5ad(DATA / "ref_N2000.h5ad")  # human gene symbols
    ds = stdask.read(store_of(a, tmp_path / "ref.zarr"))
    with pytest.raises(ValueError, match=r"none of the LR pairs .* would match as human gene names: "
                                         r"pass species='human'") as e:
        cci.run(ds, cci.load_lrs(species="mouse"), progress=False, verbose=False)
    assert "species='mouse'" not in str(e.value)


def test_run_reports_and_records_dropped_pairs(tmp_path, capsys):
    genes = [f"G{i}" for i in range(150)] + ["Ligx", "Recx"]
    ds = stdask.read(store_of(small_adata(n_genes=152, genes=genes, seed=5), tmp_path / "s.zarr"))
    lrs = LRPairs(np.array(["G0", "G2", "G4", "LIGX", "MISSING"], dtype=object),
                  np.array(["G1", "G3", "G5", "RECX", "G7"], dtype=object), "human")
    res = cci.run(ds, lrs, min_spots=3, n_pairs=100, distance=15.0, progress=False, verbose=True)
    out = capsys.readouterr().out
    assert ("2 of 5 pairs dropped: a gene is not in var_names (1 would match as mouse gene names: pass "
            "species='mouse' to load_lrs (CLI: --species mouse))") in out
    assert out.index("pairs dropped") < out.index("valid L-R pair")
    p = res.params
    assert (p["pairs_in_table"], p["pairs_dropped"], p["pairs_dropped_other_case"]) == (5, 2, 1)
    ds.write()
    recorded = stdask.read(tmp_path / "s.zarr").to_anndata().uns["lr_cci"]["params"]
    assert int(recorded["pairs_dropped"]) == 2 and str(recorded["other_case_species"]) == "mouse"


# ----------------------------------------------------------------------------------------------------
# the vague messages
# ----------------------------------------------------------------------------------------------------
def test_h5ad_named_gem_and_other_binaries(tmp_path):
    a = small_adata(n_obs=20)
    a.write_h5ad(tmp_path / "slice.h5ad")
    gem = tmp_path / "chip.gem"
    gem.write_bytes((tmp_path / "slice.h5ad").read_bytes())
    with pytest.raises(InputError, match=r"chip\.gem: this is an HDF5 file, not a GEM text file; .*format='h5ad'"):
        stdask.ingest(gem, tmp_path / "s.zarr", bin_size=1, progress=False)
    import zipfile

    z = tmp_path / "zipped.gem"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("chip.gem", "geneID\tx\ty\tMIDCount\n")
    with pytest.raises(InputError, match=r"zipped\.gem: this is a zip archive, not a GEM text file; unzip it"):
        stdask.ingest(z, tmp_path / "z.zarr", bin_size=1, progress=False)
    b = tmp_path / "bin.gem"
    b.write_bytes(b"geneID\tx\ty\tMIDCount\n\x00\x01\x02")
    with pytest.raises(InputError, match=r"bin\.gem: binary data \(a NUL byte at offset 20\), not a GEM text file"):
        stdask.ingest(b, tmp_path / "b.zarr", bin_size=1, progress=False)
    assert not (tmp_path / "s.zarr").exists()


def test_chunk_size_zero(mtx_dir, tmp_path, capsys):
    assert cli(["ingest", str(mtx_dir), str(tmp_path / "s.zarr"), "--chunk-size", "0", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "chunk_size (CLI: --chunk-size) must be an integer >= 1" in err and "range()" not in err
    assert not (tmp_path / "s.zarr").exists()


def test_garbage_metadata_names_the_file(mtx_dir, tmp_path, capsys):
    store = stdask.ingest(mtx_dir, tmp_path / "s.zarr", progress=False)
    meta = store / "tables" / "table" / "X" / "data" / "zarr.json"
    meta.write_text("garbage{")
    assert cli(["info", str(store)]) != 0
    assert f"{meta}: unreadable zarr metadata" in capsys.readouterr().err
    with pytest.raises(StoreFormatError, match=r"X/data/zarr\.json: unreadable zarr metadata"):
        stdask.read(store).X


def test_nan_coordinate_printed_as_a_plain_float(tmp_path):
    a = small_adata(n_obs=20)
    a.obsm["spatial"][7, 1] = np.nan
    a.write_h5ad(tmp_path / "nan.h5ad")
    with pytest.raises(InputError) as e:
        stdask.ingest(tmp_path / "nan.h5ad", tmp_path / "s.zarr", progress=False)
    assert "observation 'c7' has coordinate (20.0, nan)" in str(e.value) and "np.float64" not in str(e.value)
    with pytest.raises(ValueError) as e:
        stdask.ingest(AnnDataSource(a), tmp_path / "m.zarr", progress=False)
    assert "y=nan" in str(e.value) and "np.float64" not in str(e.value)
