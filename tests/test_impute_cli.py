"""``stdask impute``: the command writes the imputed table into the store with the genes asked for and the
settings given, prints a summary that matches the table; ``--cv`` prints the cross-validation table it also
writes; bad arguments and bad inputs end in one clear line and exit code 2, leaving the store as it was."""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import stdask
from stdask.cli import main
from stdask.datasets.paired import paired_synthetic, write_paired
from stdask.store.tables import table_names

N_SPATIAL, N_REFERENCE, N_GENES, N_PANEL = 600, 400, 300, 60
#: small model settings (the defaults train for minutes on these 2 cores); K <= the reference's cells
FAST = ["--k", "20", "--hidden", "16", "--e-epochs", "20", "--ae-epochs", "5", "--m-epochs", "2",
        "--reliability-epochs", "30", "--threads", "1", "--no-progress"]


@pytest.fixture(scope="module")
def paired(tmp_path_factory):
    """A tiny paired data set written as files, plus the reference with upper-cased gene names (human-style
    symbols against the panel's lower-case ones) and the spatial panel ingested into a store."""
    folder = tmp_path_factory.mktemp("impute_cli")
    data = paired_synthetic(N_SPATIAL, N_REFERENCE, N_GENES, N_PANEL, seed=3)
    paths = write_paired(data, folder)
    upper = data.reference.copy()
    upper.var_names = [g.upper() for g in upper.var_names]
    paths["upper"] = folder / "reference_upper.h5ad"
    upper.write_h5ad(paths["upper"])
    paths["store"] = stdask.ingest(paths["spatial"], folder / "s.zarr", progress=False, tile_size=200)
    return data, paths


@pytest.fixture
def store(paired, tmp_path):
    """A copy of the store per test, so what one test writes never reaches another."""
    return Path(shutil.copytree(paired[1]["store"], tmp_path / "s.zarr"))


def _printed(pattern: str, out: str) -> str:
    m = re.search(pattern, out)
    assert m, f"{pattern!r} not in the output:\n{out}"
    return m.group(1)


def test_cli_writes_the_table_and_prints_the_summary(paired, store, capsys):
    data, paths = paired
    assert main(["impute", str(store), "--reference", str(paths["reference"]), "--gene-embedding",
                 str(paths["gene_embedding"]), "--max-genes", "40", "--seed", "7", "--blend", "code", *FAST]) == 0
    out = capsys.readouterr().out
    assert table_names(store) == ["table", "imputed"]
    main_table = stdask.read(store)
    assert main_table.n_vars == N_PANEL  # the main table is untouched
    table = stdask.read(store, table="imputed")
    assert table.n_obs == N_SPATIAL and table.n_vars == 40
    assert list(table.obs_names) == list(main_table.obs_names)
    # 40 of the reference's genes outside the panel (the most variable: tested with the API)
    outside = set(data.reference.var_names) - set(data.panel)
    assert set(table.var_names) <= outside and table.var_names.is_unique
    X = table.to_anndata().X
    assert X.shape == (N_SPATIAL, 40) and X.dtype == np.float32 and np.isfinite(X).all() and X.max() > 0
    info = table.get_result("uns", "stimpute")
    config = info["config"]
    # the options reached the model
    assert (config["k"], config["hidden"], config["e_epochs"], config["ae_epochs"], config["m_epochs"],
            config["reliability_epochs"], config["seed"], config["blend"]) == (20, 16, 20, 5, 2, 30, 7, "code")
    assert info["graph_all"]  # the gene graph was built (the embedding file was read)
    # the summary tells what was stored
    assert _printed(r"table '(\w+)'", out) == "imputed"
    assert _printed(r"([\d,]+) obs x", out) == f"{N_SPATIAL}"
    assert _printed(r"x ([\d,]+) imputed genes", out) == "40"
    rel = table.var["reliability"].sort_values(ascending=False, kind="stable")
    top = re.findall(r"(\S+) ([0-9.]+)", _printed(r"top 5: (.*)", out))
    assert [g for g, _ in top] == list(rel.index[:5])
    assert [float(v) for _, v in top] == pytest.approx(rel.iloc[:5].to_numpy(), abs=1e-3)
    assert int(_printed(r"([\d,]+) genes marked reliable", out)) == int(table.var["reliable"].sum()) == 20
    assert re.search(r"training [0-9.]+ s, prediction [0-9.]+ s, total [0-9.]+ s", out)


def test_cli_named_genes_other_case_and_key(paired, store, tmp_path, capsys):
    data, paths = paired
    genes = sorted(set(data.reference.var_names) - set(data.panel))[:3][::-1]
    genes_file = tmp_path / "genes.txt"
    genes_file.write_text("\n".join(genes) + "\n\n")
    assert main(["impute", str(store), "--reference", str(paths["upper"]), "--case-insensitive",
                 "--genes-file", str(genes_file), "--key-added", "imp2", "--train-cells", "300", *FAST]) == 0
    assert "table 'imp2': 600 obs x 3 imputed genes" in capsys.readouterr().out
    assert table_names(store) == ["table", "imp2"]
    table = stdask.read(store, table="imp2")
    # in the order asked for, under the reference's (upper-cased) names
    assert list(table.var_names) == [g.upper() for g in genes]
    info = table.get_result("uns", "stimpute")
    assert info["n_train_cells"] == 300 and info["inputs"]["case_folded"] is True


def test_cli_cv_prints_and_writes_the_table(paired, store, tmp_path, capsys):
    _, paths = paired
    out_dir = tmp_path / "cv"
    assert main(["impute", str(store), "--reference", str(paths["reference"]), "--cv", "--folds", "2",
                 "--train-cells", "300", "--cv-out", str(out_dir), *FAST]) == 0
    out = capsys.readouterr().out
    assert table_names(store) == ["table"]  # the cross-validation writes nothing into the store
    summary = pd.read_csv(out_dir / "summary.csv", index_col=0)
    genes = pd.read_csv(out_dir / "genes.csv", index_col=0)
    cells = pd.read_csv(out_dir / "cells.csv.gz", index_col=0)
    assert list(summary.columns) == ["median", "mean", "knn_median", "knn_mean"]
    assert list(summary.index) == ["gene_cosine", "gene_mse", "cell_cosine", "cell_mse", "top50_cosine"]
    assert len(genes) == N_PANEL and sorted(genes["fold"].unique()) == [0, 1] and len(cells) == N_SPATIAL
    assert "2-fold cross-validation over 60 panel genes, 600 cells" in out
    # the printed table is the written one
    for metric, row in summary.iterrows():
        printed = [float(v) for v in _printed(rf"\n{metric}\s+(.*)", out).split()]
        assert printed == pytest.approx(row.to_numpy(), abs=1e-4), metric
    assert summary.loc["gene_cosine", "median"] == pytest.approx(genes["cosine"].median())
    better = int((genes["cosine"] > genes["knn_cosine"]).sum())
    assert f"above the kNN baseline's for {better} of 60 genes" in out


@pytest.mark.parametrize("argv, message", [
    ([], "the following arguments are required: --reference"),
    (["--reference", "r.h5ad", "--folds", "1"], "argument --folds: invalid integer >= 2 value: '1'"),
    (["--reference", "r.h5ad", "--k", "0"], "argument --k: invalid integer >= 1 value: '0'"),
    (["--reference", "r.h5ad", "--blend", "mean"], "argument --blend: invalid choice: 'mean'"),
    (["--reference", "r.h5ad", "--reliability", "x"], "argument --reliability: invalid choice: 'x'"),
    (["--reference", "r.h5ad", "--genes", "a", "--all-genes"], "argument --all-genes: not allowed with argument"),
])
def test_cli_usage_errors_exit_2(store, argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        main(["impute", str(store), *argv])
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def _bad_inputs(paths: dict, tmp_path: Path) -> list[tuple[list[str], str]]:
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    ref = ["--reference", str(paths["reference"])]
    return [
        (["--reference", str(tmp_path / "absent.h5ad")], "absent.h5ad' does not exist"),
        (["--reference", str(paths["upper"])], "the spatial and reference tables differ in gene-name case"),
        ([*ref, "--genes", "gene_0000,nope"], "requested genes are not in the reference: ['nope']"),
        ([*ref, "--genes-file", str(tmp_path / "absent.txt")], "absent.txt' does not exist"),
        ([*ref, "--genes-file", str(empty)], "names no gene"),
        ([*ref, "--genes", " , "], "--genes names no gene"),
        ([*ref, "--alpha", "1.5"], "StImputeConfig.alpha must be a number in [0, 1], got 1.5"),
        ([*ref, "--folds", "3"], "--folds does not apply without --cv"),
        ([*ref, "--cv", "--genes", "gene_0000", "--key-added", "x"], "--genes, --key-added do not apply with --cv"),
    ]


def test_cli_bad_inputs_one_line_exit_2_store_untouched(paired, store, tmp_path, capsys):
    for argv, message in _bad_inputs(paired[1], tmp_path):
        assert main(["impute", str(store), *FAST, *argv]) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("stdask impute: error: ") and message in err and err.count("\n") == 1, (argv, err)
        assert "Traceback" not in err
        assert table_names(store) == ["table"]


def test_cli_missing_store(paired, tmp_path, capsys):
    assert main(["impute", str(tmp_path / "absent.zarr"), "--reference", str(paired[1]["reference"])]) == 2
    err = capsys.readouterr().err
    assert err.startswith("stdask impute: error: ") and "absent.zarr: no such store" in err
