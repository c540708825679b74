"""``stdask stague``: the command writes STAGUE's four results into a store with the right shapes and keys,
passes its options through, prints a summary that matches what it stored, and refuses bad arguments with one
clear line and exit code 2, leaving the store as it was."""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import stdask
from stdask.cli import main
from stdask.datasets import synthetic_slice
from stdask.io.memory import AnnDataSource

N_OBS = 240
FAST = ["--epochs", "2", "--threads", "1", "--no-progress"]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """A tiny layered Visium-like slice with three planted domains (raw counts: STAGUE normalises them)."""
    sl = synthetic_slice(n_obs=N_OBS, n_genes=60, layout="visium", n_domains=3, domain_shape="layers",
                         n_cell_types=3, n_markers=4, n_hotspots=0, seed=5)
    return stdask.ingest(AnnDataSource(sl.to_anndata(), unit="um", spot_diameter=55.0),
                         tmp_path_factory.mktemp("stague_cli") / "s.zarr", progress=False)


@pytest.fixture
def store(pristine, tmp_path):
    """A copy of the slice per test, so what one test writes never reaches another."""
    return Path(shutil.copytree(pristine, tmp_path / "s.zarr"))


def _printed(pattern: str, out: str) -> str:
    m = re.search(pattern, out)
    assert m, f"{pattern!r} not in the summary:\n{out}"
    return m.group(1)


def test_cli_writes_the_four_results_and_prints_the_summary(store, capsys):
    assert main(["stague", str(store), "--n-clusters", "3", *FAST, "--seed", "4", "--adj-weight", "0.3",
                 "--rep-dim", "16", "--a-k", "4", "--truth", "domain"]) == 0
    out = capsys.readouterr().out
    ds = stdask.read(store)  # reopened: everything below was written, not pending
    assert not ds.pending
    labels = ds.obs["stague"]
    assert isinstance(labels.dtype, pd.CategoricalDtype) and len(labels) == N_OBS
    assert labels.nunique() == 3 and list(labels.cat.categories) == ["0", "1", "2"]
    emb = np.asarray(ds.get_result("obsm", "stague_embedding"))
    assert emb.shape == (N_OBS, 16) and emb.dtype == np.float32 and np.isfinite(emb).all()
    raw = sp.csr_matrix(ds.get_result("obsp", "stague_adj_raw"))
    norm = sp.csr_matrix(ds.get_result("obsp", "stague_adj_normalized"))
    assert raw.shape == norm.shape == (N_OBS, N_OBS) and raw.nnz > 0
    assert abs(raw - raw.T).max() < 1e-6  # the learned graph is symmetrised
    assert raw.nnz < 0.25 * N_OBS ** 2  # only candidate pairs within d_cut, never dense
    info = ds.get_result("uns", "stague")
    params = info["params"]
    # the options reached the model
    assert (params["epochs"], params["seed"], params["adj_weight"], params["rep_dim"], params["a_k"]) == (
        2, 4, 0.3, 16, 4)
    assert params["n_clusters"] == 3 and params["cluster"] == "kmeans" and info["mode"] == "full"
    # the summary tells what was stored
    assert _printed(r"mode (\w+) on", out) == "full"
    assert float(_printed(r"d_cut ([0-9.e+-]+)", out)) == pytest.approx(info["d_cut"], rel=1e-3)
    assert float(_printed(r"loss at the last epoch ([0-9.e+-]+)", out)) == pytest.approx(
        info["history"]["loss"][-1], abs=1e-4)
    assert _printed(r"(\d+) epochs", out) == "2"
    sizes = dict(re.findall(r"(\d+): (\d+)", _printed(r"sizes (.*)", out)))
    assert {k: int(v) for k, v in sizes.items()} == labels.value_counts().to_dict()
    assert re.search(r"ARI -?[0-9.]+ against obs\['domain'\]", out)
    assert re.search(r"training [0-9.]+ s, total [0-9.]+ s", out)


def test_cli_minibatch_and_key(store, capsys):
    assert main(["stague", str(store), "--n-clusters", "2", *FAST, "--minibatch", "--batch-cells", "64",
                 "--key-added", "sg", "--cluster", "gmm"]) == 0
    assert "mode minibatch" in capsys.readouterr().out
    ds = stdask.read(store)
    assert ds.get_result("uns", "sg")["mode"] == "minibatch"
    assert ds.get_result("uns", "sg")["params"]["batch_cells"] == 64
    assert ds.obs["sg"].nunique() == 2 and "stague" not in ds.obs
    for key in ("sg_embedding",):
        assert ds.is_stored("obsm", key)
    for key in ("sg_adj_raw", "sg_adj_normalized"):
        assert ds.is_stored("obsp", key)


@pytest.mark.parametrize("argv, message", [
    (["--n-clusters", "0"], "argument --n-clusters: invalid integer >= 1 value: '0'"),
    (["--n-clusters", "three"], "argument --n-clusters: invalid integer >= 1 value: 'three'"),
    (["--n-clusters", "3", "--cluster", "dbscan"], "argument --cluster: invalid choice: 'dbscan'"),
    (["--n-clusters", "3", "--minibatch", "--full-batch"], "argument --full-batch: not allowed with argument"),
    (["--n-clusters", "3", "--batch-cells", "1"], "argument --batch-cells: invalid integer >= 2 value: '1'"),
    (["--n-clusters", "3", "--adj-weight", "x"], "argument --adj-weight: invalid float value: 'x'"),
    ([], "the following arguments are required: --n-clusters"),
])
def test_cli_usage_errors_exit_2(store, argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        main(["stague", str(store), *argv])
    assert e.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--n-clusters", str(N_OBS + 1)], f"n_clusters must be an integer in [1, {N_OBS}]"),
    (["--n-clusters", "3", "--adj-weight", "1.5"], "adj_weight must lie in [0, 1], got 1.5"),
    (["--n-clusters", "3", "--truth", "nope"], "no obs column 'nope' for --truth"),
    (["--n-clusters", "3", "--layer", "nope"], "no layer 'nope'"),
])
def test_cli_value_errors_one_line_exit_2_store_untouched(store, argv, message, capsys):
    assert main(["stague", str(store), *FAST, *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("stdask stague: error: ") and message in err and err.count("\n") == 1
    assert "Traceback" not in err
    ds = stdask.read(store)
    assert "stague" not in ds.obs and not ds.is_stored("uns", "stague")


def test_cli_missing_store(tmp_path, capsys):
    assert main(["stague", str(tmp_path / "absent.zarr"), "--n-clusters", "3"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("stdask stague: error: ") and "absent.zarr: no such store" in err
