"""Hashes of stdask's outputs, so a refactor can show it changed no number.

Runs the main analyses on the shipped stLearn reference input (``tests/data/ref_N2000.h5ad``) and on small
synthetic slices, and prints one ``name sha256`` line per output: an ingested store's bytes, LR hotspot
results (``lr_summary``, p-values, adjusted p-values, scores, ``adj_pvals`` along LRs), ``run_cci`` raw counts
and p-values, the spatial graph, normalize/log1p/HVG/PCA/kNN/Leiden and SpaSEG labels. Run it before and after
a change and ``diff`` the two outputs::

    .venv/bin/python bench/hashes.py > before.txt     # on the old commit
    .venv/bin/python bench/hashes.py > after.txt
    diff before.txt after.txt

Float arrays are hashed by their exact bytes (no rounding), tables by their CSV text at full precision.
Run both from the same folder (the repository root): a store records its input's absolute path, so the two
store-bytes hashes depend on where the inputs lie. ``hashes_6694ac6.txt`` is the baseline of the commit before
the house refactor, run from the repository root. Issue 13 then changed what a store holds on disk (crc32c in
every codec chain, chunk records, the sparse tile index), so the two ``*_store_bytes`` lines differ from it since;
every analysis line is unchanged.

``hashes_8d99e3b.txt`` is the baseline rerun in the environment of 2026-12-07 (numpy 2.4.6, scipy 1.17.1): there the
preprocessing lines (log1p, HVG, PCA, kNN connectivities) and the SpaSEG labels differ from ``hashes_6694ac6.txt``
for the same code (commit 8d99e3b run in both), from the libraries' floating point; compare a change against a
baseline made with the same libraries.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

import stdask
from stdask.settings import settings

DATA = Path(__file__).resolve().parent.parent / "tests" / "data"
#: store metadata that differs between two ingests of the same input (identity and timing, not content)
VOLATILE = {"uuid", "created", "seconds", "time", "timestamp", "elapsed_s", "ingest_seconds", "stdask_version",
            "version_info"}


def _h(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()[:16]


def h_array(a) -> str:
    if sp.issparse(a):
        a = sp.csr_matrix(a)
        a.sort_indices()
        return _h(b"".join(np.ascontiguousarray(x).tobytes() for x in (a.indptr, a.indices, a.data))
                  + str((a.shape, a.dtype)).encode())
    a = np.asarray(a)
    if a.dtype == object:
        return _h("\x1f".join(map(str, a.ravel())).encode() + str(a.shape).encode())
    return _h(np.ascontiguousarray(a).tobytes() + str((a.shape, a.dtype)).encode())


def h_frame(df: pd.DataFrame) -> str:
    return _h(df.to_csv(float_format="%.17g").encode())


def _scrub(obj):
    if isinstance(obj, dict):
        return {k: _scrub(v) for k, v in obj.items() if k not in VOLATILE}
    if isinstance(obj, list):
        return [_scrub(v) for v in obj]
    return obj


def h_store(path: Path) -> str:
    """The store's bytes: every chunk file as written, every zarr.json with identity/timing fields removed."""
    h = hashlib.sha256()
    for f in sorted(p for p in Path(path).rglob("*") if p.is_file()):
        rel = f.relative_to(path).as_posix()
        data = f.read_bytes()
        if f.name == "zarr.json":
            data = json.dumps(_scrub(json.loads(data)), sort_keys=True).encode()
        h.update(rel.encode() + b"\0" + data + b"\0")
    return h.hexdigest()[:16]


def _call(func, *args, **kwargs):
    """Call with ``write=True`` where the function still has that switch (the old convention)."""
    if "write" in inspect.signature(func).parameters:
        kwargs["write"] = True
    return func(*args, **kwargs)


def cci_hashes(tmp: Path) -> dict[str, str]:
    from stdask.tl import cci

    out = {}
    store = stdask.ingest(DATA / "ref_N2000.h5ad", tmp / "ref.zarr", progress=False, tile_size=1000)
    out["ingest_ref_store_bytes"] = h_store(store)
    ds = stdask.read(store)
    lrs = cci.load_lrs(["connectomeDB2020_lit"], species="human")
    res = _call(cci.run, ds, lrs, min_spots=20, distance=None, n_pairs=1000, seed=0, progress=False,
                scheduler="sync", verbose=False)
    out["lr_summary"] = h_frame(res.lr_summary)
    out["lrfeatures"] = h_frame(res.lrfeatures)
    for key in ("lr_scores", "p_vals", "p_adjs"):
        out[key] = h_array(res.dense(key))
    res_lr = res.adjusted("LR", 0.05, "fdr_bh")
    out["adj_pvals_LR_summary"] = h_frame(res_lr.lr_summary)
    out["adj_pvals_LR_p_adjs"] = h_array(res_lr.dense("p_adjs"))
    inter = _call(cci.run_cci, ds, "cell_type", result=res, n_perms=100, seed=0, progress=False, scheduler="sync")
    out["run_cci_lr_cci_raw"] = h_frame(inter.lr_cci_raw) if hasattr(inter, "lr_cci_raw") else "-"
    out["run_cci_lr_cci"] = h_frame(inter.lr_cci)
    per = inter.per_lr()
    keys = sorted(per)[:50]
    out["run_cci_per_lr_counts"] = _h("".join(h_frame(per[k]) for k in keys).encode())
    if hasattr(inter, "pvals"):
        out["run_cci_pvals"] = h_array(np.asarray(inter.pvals))
    uns = inter.stlearn_uns()
    out["run_cci_stlearn_uns"] = _h("".join(f"{k}:{h_frame(v) if isinstance(v, pd.DataFrame) else ''}"
                                           for k, v in sorted(uns.items()) for v in ([v] if not isinstance(v, dict) else
                                                                                      [v[x] for x in sorted(v)])).encode())
    return out


def graph_hashes(tmp: Path) -> dict[str, str]:
    from stdask.gr import spatial_neighbors

    ds = stdask.read(tmp / "ref.zarr")
    g = spatial_neighbors(ds, distance=None, progress=False, verbose=False, copy=True)
    return {"spatial_graph_connectivities": h_array(g.connectivities), "spatial_graph_distances": h_array(g.distances)}


def pp_hashes(tmp: Path) -> dict[str, str]:
    from stdask import cluster, pp
    from stdask.datasets import synthetic_slice
    from stdask.io.memory import AnnDataSource

    s = synthetic_slice(n_obs=3000, n_genes=600, layout="visium", seed=5, n_domains=4, n_hotspots=0)
    store = stdask.ingest(AnnDataSource(s.to_anndata(), unit="um", spot_diameter=55.0), tmp / "pp.zarr",
                          progress=False, tile_size=300)
    out = {"ingest_synthetic_store_bytes": h_store(store)}
    ds = stdask.read(store)
    pp.normalize_total(ds)
    pp.log1p(ds)
    hvg = pp.highly_variable_genes(ds, n_top_genes=200)
    pp.pca(ds, n_comps=20)
    pp.neighbors(ds)
    pp.leiden(ds)

    def get(slot, key):
        v = ds.get_result(slot, key)
        if hasattr(v, "dask"):
            (v,) = cluster.compute(v, progress=False)
        return v

    out["log1p"] = h_array(get("layers", "log1p"))
    out["hvg"] = h_frame(hvg)
    out["X_pca"] = h_array(get("obsm", "X_pca"))
    out["PCs"] = h_array(get("varm", "PCs"))
    out["pca_variance"] = h_array(ds.get_result("uns", "pca")["variance"])
    out["connectivities"] = h_array(get("obsp", "connectivities"))
    out["leiden"] = h_array(np.asarray(ds.obs["leiden"].astype(str)))
    return out


def spaseg_hashes(tmp: Path) -> dict[str, str]:
    from stdask.datasets import synthetic_slice
    from stdask.io.memory import AnnDataSource
    from stdask.tl import spaseg

    s = synthetic_slice(n_obs=1500, n_genes=500, layout="visium", seed=11, n_domains=4, domain_shape="layers",
                        n_hotspots=0)
    ds = stdask.read(stdask.ingest(AnnDataSource(s.to_anndata(), unit="um", spot_diameter=55.0),
                                   tmp / "sp.zarr", progress=False))
    res = spaseg(ds, n_domains=4, iterations=60, pretrain_epochs=20, merge_start=40, threads=1, progress=False)
    return {"spaseg_labels": h_array(np.asarray(res.labels))}


def main() -> None:
    settings.progress = False
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        out = {}
        for part in (cci_hashes, graph_hashes, pp_hashes, spaseg_hashes):
            out.update(part(tmp))
    for k, v in out.items():
        print(f"{k:32s} {v}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
