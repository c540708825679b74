"""The front door: stLearn's tutorial and the scanpy idiom, typed as a newcomer types them in a fresh
interpreter, record stLearn's keys in the dataset; ``copy=True`` leaves the dataset untouched; the retired
``write=`` switch still works with a warning."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import stdask
from stdask.settings import settings

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def ref_store(tmp_path_factory):
    return stdask.ingest(DATA / "ref_N2000.h5ad", tmp_path_factory.mktemp("door") / "ref.zarr", progress=False,
                         tile_size=1000)


def run_fresh(code: str, tmp_path: Path) -> dict:
    """Run ``code`` in a fresh interpreter (nothing imported but what it imports); it prints one JSON line."""
    script = tmp_path / "session.py"
    script.write_text(textwrap.dedent(code))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600,
                         env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "MPLBACKEND": "Agg",
                              "DASK_DISTRIBUTED__WORKER__DAEMON": "False"})
    assert out.returncode == 0, out.stderr[-4000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_stlearn_tutorial_sequence_in_a_fresh_interpreter(ref_store, tmp_path):
    got = run_fresh(f"""
        import json
        import stdask as sd
        sd.settings.progress = False
        ds = sd.read({str(ref_store)!r})
        lrs = sd.tl.cci.load_lrs(["connectomeDB2020_lit"], species="human")
        res = sd.tl.cci.run(ds, lrs, min_spots=20, distance=None, n_pairs=1000, verbose=False)
        adj = sd.tl.cci.adj_pvals(ds, correct_axis="spot")
        inter = sd.tl.cci.run_cci(ds, "cell_type", n_perms=100)
        fig = sd.pl.lr_summary(ds)
        pending = sorted(f"{{s}}/{{k}}" for s, k in ds.pending)
        ds.write()
        a = sd.read({str(ref_store)!r}).to_anndata()
        print(json.dumps({{"pending": pending, "obsm": sorted(a.obsm), "uns": sorted(a.uns),
                          "n_lrs": int(len(res.lr_summary)), "summary_cols": list(a.uns["lr_summary"].columns),
                          "sig": int(a.uns["lr_summary"]["n_spots_sig"].sum()),
                          "sig_result": int(adj.lr_summary["n_spots_sig"].sum()),
                          "p_adjs_shape": list(a.obsm["p_adjs"].shape),
                          "lr_cci_sum": float(a.uns["lr_cci_cell_type"].to_numpy().sum()),
                          "lr_cci_sum_result": float(inter.lr_cci.to_numpy().sum()),
                          "per_lr": len(a.uns["per_lr_cci_cell_type"]), "drawn": len(fig.axes)}}))
        """, tmp_path)
    for key in ("lr_scores", "p_vals", "p_adjs", "-log10(p_adjs)", "lr_sig_scores"):
        assert key in got["obsm"], key
    for key in ("lr_summary", "lrfeatures", "lr_cci_cell_type", "lr_cci_raw_cell_type", "per_lr_cci_cell_type",
                "per_lr_cci_pvals_cell_type", "per_lr_cci_raw_cell_type"):
        assert key in got["uns"], key
    assert {"uns/lr_summary", "obsm/lr_scores", "obsm/p_adjs", "uns/lr_cci_cell_type"} <= set(got["pending"])
    assert got["p_adjs_shape"] == [2000, got["n_lrs"]] and got["n_lrs"] > 0
    # what was stored is what the calls returned
    assert got["sig"] == got["sig_result"] > 0
    assert got["lr_cci_sum"] == got["lr_cci_sum_result"] > 0
    assert got["per_lr"] > 0 and got["drawn"] >= 1
    assert {"n_spots", "n_spots_sig", "n_cci_sig_cell_type"} <= set(got["summary_cols"])


def test_scanpy_sequence_in_a_fresh_interpreter(tmp_path):
    got = run_fresh(f"""
        import json
        import stdask as sd
        from stdask.datasets import synthetic_slice
        from stdask.io.memory import AnnDataSource
        sd.settings.progress = False
        s = synthetic_slice(n_obs=900, n_genes=300, layout="visium", seed=3, n_domains=3, domain_shape="layers",
                            n_hotspots=0)
        ds = sd.read(sd.ingest(AnnDataSource(s.to_anndata(), unit="um", spot_diameter=55.0),
                               {str(tmp_path / "s.zarr")!r}, progress=False))
        sd.pp.normalize_total(ds); sd.pp.log1p(ds); sd.pp.pca(ds, n_comps=10)
        sd.gr.spatial_neighbors(ds, verbose=False)
        res = sd.tl.spaseg(ds, n_domains=3, iterations=30, pretrain_epochs=10, merge_start=20, threads=1)
        ds.write()
        a = sd.read({str(tmp_path / "s.zarr")!r}).to_anndata()
        print(json.dumps({{"layers": sorted(a.layers), "obsm": sorted(a.obsm), "obsp": sorted(a.obsp),
                          "obs": sorted(a.obs.columns), "uns": sorted(a.uns), "n_labels": int(a.obs["spaseg"].nunique()),
                          "same_labels": bool((a.obs["spaseg"].astype(str).to_numpy()
                                               == res.labels.astype(str).to_numpy()).all())}}))
        """, tmp_path)
    assert {"normalized", "log1p"} <= set(got["layers"])
    assert {"X_pca", "spaseg_embedding"} <= set(got["obsm"])
    assert {"spatial_connectivities", "spatial_distances"} <= set(got["obsp"])
    assert "spaseg" in got["obs"] and got["n_labels"] >= 2 and got["same_labels"]
    assert {"pca", "spatial_neighbors", "spaseg"} <= set(got["uns"])


def test_copy_leaves_the_dataset_untouched_and_gives_the_same_numbers(ref_store):
    settings.progress = False
    ds = stdask.read(ref_store)
    graph = stdask.gr.spatial_neighbors(ds, copy=True, verbose=False)
    assert ds.pending == []
    stdask.gr.spatial_neighbors(ds, verbose=False)
    # a pending radius graph is a dask array of row blocks (as a pending layer); result_csr reads it whole
    assert (ds.result_csr("obsp", "spatial_connectivities") != graph.connectivities).nnz == 0
    # scanpy's copy=True on a transform returns the copied dataset holding the result
    other = stdask.pp.normalize_total(ds, copy=True)
    assert other is not ds and ("layers", "normalized") in other.pending
    assert ("layers", "normalized") not in ds.pending
    assert ("obsp", "spatial_connectivities") in other.pending  # the copy sees what was pending before


def test_retired_write_switch_warns(ref_store):
    ds = stdask.read(ref_store)
    with pytest.warns(FutureWarning, match="copy=True"):
        stdask.gr.spatial_neighbors(ds, write=False, verbose=False)
    assert ds.pending == []
    with pytest.warns(FutureWarning):
        stdask.gr.spatial_neighbors(ds, write=True, verbose=False)
    assert ("obsp", "spatial_connectivities") in ds.pending


def test_every_public_analysis_follows_the_convention():
    """Each function of pp / gr / tl that records results takes the dataset first and has ``copy``."""
    import inspect

    names = {"pp": ["normalize_total", "log1p", "scale", "highly_variable_genes", "pca", "neighbors", "leiden",
                    "louvain", "calculate_qc_metrics", "filter_cells", "filter_genes"],
             "gr": ["spatial_neighbors"], "tl": ["spaseg", "svg", "lr_score"]}
    funcs = [getattr(getattr(stdask, ns), n) for ns, ns_names in names.items() for n in ns_names]
    funcs += [stdask.tl.cci.run, stdask.tl.cci.run_cci, stdask.tl.cci.adj_pvals]
    for f in funcs:
        params = inspect.signature(f).parameters
        assert "copy" in params and params["copy"].default is False, f.__qualname__
        assert "write" not in params, f.__qualname__
        assert next(iter(params)) in ("ds", "data"), f.__qualname__


def test_lazy_namespaces_do_not_import_torch():
    out = subprocess.run([sys.executable, "-c", "import sys, stdask as sd; sd.pp, sd.gr, sd.tl.cci, sd.pl, sd.io; "
                          "print('torch' in sys.modules, 'stdask.tl' in sys.modules)"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "True"]
    out = subprocess.run([sys.executable, "-c", "import sys, stdask; print('stdask.tl' in sys.modules)"],
                         capture_output=True, text=True, timeout=300)
    assert out.stdout.split() == ["False"], out.stderr
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        stdask.nope  # noqa: B018
    assert np.all([hasattr(stdask, n) for n in ("pp", "gr", "tl", "pl", "io", "datasets")])
