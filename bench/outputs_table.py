"""Print the README's table of what each public analysis records in the dataset (keys, shapes, dtypes).

Every function runs on a small synthetic slice; the table lists what it added to the dataset's pending results,
so the README says what the code does::

    .venv/bin/python bench/outputs_table.py
"""
from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

import stdask as sd
from stdask.datasets import synthetic_slice
from stdask.io.memory import AnnDataSource

#: PCA components asked for (a size no other output has, so the table can name it)
N_COMPS = 23


def describe(value) -> tuple[str, str, str]:
    """(kind, shape, dtype) of a recorded value; obs columns are 1-D."""
    if hasattr(value, "dask"):
        kind = "dask CSR" if sp.issparse(value._meta) else "dask array"
        return kind, " x ".join(map(str, value.shape)), str(value.dtype)
    if sp.issparse(value):
        return "CSR", " x ".join(map(str, value.shape)), str(value.dtype)
    if isinstance(value, pd.DataFrame):
        return "DataFrame", f"{len(value)} rows: {', '.join(map(str, value.columns[:6]))}" + (
            ", ..." if value.shape[1] > 6 else ""), ""
    if isinstance(value, (pd.Categorical, pd.Series)) and isinstance(getattr(value, "dtype", None),
                                                                     pd.CategoricalDtype):
        return "categorical", str(len(value)), "category"
    if isinstance(value, dict):
        return "dict", ", ".join(list(map(str, value))[:6]) + (", ..." if len(value) > 6 else ""), ""
    a = np.asarray(value)
    return "array", " x ".join(map(str, a.shape)), str(a.dtype)


SYMBOLIC: dict[int, str] = {}


def symbolic(shape: str, names: dict[int, str]) -> str:
    """Sizes named as the README names them (``n_obs x n_lrs``), whole numbers only."""
    import re

    table = {**SYMBOLIC, **names}
    return re.sub(r"\b(\d+)\b", lambda m: table.get(int(m.group(1)), m.group(1)), shape)


def sizes(name: str, out) -> dict[int, str]:
    """Names of the sizes a step's outputs have, read off its result."""
    if name in ("tl.cci.run", "tl.cci.adj_pvals"):
        return {len(out.lr_summary): "n_lrs"}
    if name == "tl.cci.run_cci":
        return {len(out.types): "T", len(out.lr_summary): "n_lrs"}
    if name == "tl.lr_score":
        return {len(out.summary): "n_valid"}
    if name == "tl.svg":
        return {len(out): "n_svg"}
    if name == "tl.stague":
        return {out.embedding.shape[1]: "rep_dim"}
    if name == "tl.cci.learned_graph_cci":
        return {len(out.types): "T"}
    return {}


def main() -> None:
    sd.settings.progress = False
    warnings.simplefilter("ignore")
    with tempfile.TemporaryDirectory() as d:
        s = synthetic_slice(n_obs=1231, n_genes=617, layout="visium", seed=3, n_domains=3, domain_shape="layers",
                            n_hotspots=4)
        store = sd.ingest(AnnDataSource(s.to_anndata(), unit="um", spot_diameter=55.0), Path(d) / "s.zarr",
                          progress=False)
        ds = sd.read(store)
        SYMBOLIC.update({ds.n_obs: "n_obs", ds.n_vars: "n_vars", N_COMPS: "n_comps", 15: "n_pcs"})
        lrs = sd.tl.cci.load_lrs(["connectomeDB2020_lit"], species="human")
        label = "cell_type" if "cell_type" in ds.obs else "domain"
        steps = [
            ("pp.calculate_qc_metrics", lambda: sd.pp.calculate_qc_metrics(ds)),
            ("pp.filter_cells", lambda: sd.pp.filter_cells(ds, min_counts=1)),
            ("pp.filter_genes", lambda: sd.pp.filter_genes(ds, min_cells=1)),
            ("pp.normalize_total", lambda: sd.pp.normalize_total(ds)),
            ("pp.log1p", lambda: sd.pp.log1p(ds)),
            ("pp.highly_variable_genes", lambda: sd.pp.highly_variable_genes(ds, n_top_genes=200)),
            ("pp.scale", lambda: sd.pp.scale(ds, max_value=10)),
            ("pp.pca", lambda: sd.pp.pca(ds, n_comps=N_COMPS)),
            ("pp.neighbors", lambda: sd.pp.neighbors(ds)),
            ("pp.leiden", lambda: sd.pp.leiden(ds)),
            ("pp.louvain", lambda: sd.pp.louvain(ds)),
            ("gr.spatial_neighbors", lambda: sd.gr.spatial_neighbors(ds, verbose=False)),
            ("tl.cci.run", lambda: sd.tl.cci.run(ds, lrs, min_spots=5, n_pairs=200, verbose=False)),
            ("tl.cci.adj_pvals", lambda: sd.tl.cci.adj_pvals(ds, correct_axis="LR")),
            ("tl.cci.run_cci", lambda: sd.tl.cci.run_cci(ds, label, n_perms=20)),
            ("tl.spaseg", lambda: sd.tl.spaseg(ds, n_domains=3, iterations=20, pretrain_epochs=5, merge_start=10,
                                               threads=1)),
            ("tl.svg", lambda: sd.tl.svg(ds, "spaseg")),
            ("tl.lr_score", lambda: sd.tl.lr_score(ds, "spaseg", lrs, n_pairs=100, n_perms=50, min_spot=0)),
            ("tl.stague", lambda: sd.tl.stague(ds, 3, epochs=2, threads=1)),
            ("tl.cci.learned_graph_cci", lambda: sd.tl.cci.learned_graph_cci(ds, label, n_perms=20)),
        ]
        print("| function | slot[key] | kind | shape | dtype |")
        print("| --- | --- | --- | --- | --- |")
        for name, call in steps:
            before = dict(ds._pending)
            names = sizes(name, call())
            new = [(k, v) for k, v in ds._pending.items() if k not in before or before[k] is not v]
            for (slot, key), value in new:
                kind, shape, dtype = describe(value)
                print(f"| `{name}` | `{slot}[{key!r}]` | {kind} | {symbolic(shape, names)} | {dtype} |")


if __name__ == "__main__":
    main()
