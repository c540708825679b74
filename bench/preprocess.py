"""Benchmark: stdask.pp out of core vs scanpy in memory, on synthetic slices of growing size.

Pipeline: normalize_total -> log1p -> highly_variable_genes (seurat, 1,000 genes) -> pca (50 components,
X_pca materialised) [-> stdask.gr.spatial_neighbors, when that module exists]. Each size and each tool runs
in its own child process, which reports its wall time and peak resident memory (``ru_maxrss``); the
embedded dask cluster runs in-process (threads), so the child's peak covers the workers too.

Usage::

    python bench/preprocess.py                          # 250k, 500k, 1M cells x 2,000 genes
    python bench/preprocess.py --sizes 250000 --genes 2000 --workdir /tmp/stdask-bench

Stores are built once per size in ``--workdir`` (ingest time is reported but not part of the pipeline).
The printed table is Markdown, ready to paste into a note.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import numpy as np

N_TOP_GENES = 1000
N_COMPS = 50


# ----------------------------------------------------------------------------------------------------
# children (each prints one JSON line)
# ----------------------------------------------------------------------------------------------------
def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _synthetic_source(n_obs: int, n_genes: int, layout: str = "cells", **kwargs):
    """A synthetic slice as an ingest source (obs and coordinates up front, counts streamed)."""
    import pandas as pd

    from stdask.datasets import synthetic_slice
    from stdask.io.base import EntryChunk, Source

    sl = synthetic_slice(n_obs=n_obs, n_genes=n_genes, layout=layout, seed=0, **kwargs)

    class SyntheticSource(Source):
        format_name = "synthetic"
        kind = "obs"

        def __init__(self) -> None:
            self.path = Path("<synthetic>")
            self.options = {}
            # one pass for the observation table; the counts are regenerated (bit-identically) when streamed
            frames = []
            for batch in sl.iter_batches(100_000):
                frames.append(pd.DataFrame({"x": batch.x, "y": batch.y},
                                           index=sl.barcodes(batch.index, batch.x, batch.y)))
            self._obs = pd.concat(frames)

        @property
        def var(self):
            return sl.var

        @property
        def obs(self):
            return self._obs.drop(columns=["x", "y"])

        @property
        def coords(self):
            return self._obs[["x", "y"]].to_numpy()

        @property
        def unit(self):
            return sl.units

        @property
        def spot_diameter(self):
            return sl.spot_diameter

        def iter_entries(self, chunk_size: int = 2_000_000) -> Iterator[EntryChunk]:
            r0 = 0
            for _, counts in sl.iter_chunks(100_000):
                coo = counts.tocoo()
                yield EntryChunk(coo.row.astype(np.int64) + r0, coo.col.astype(np.int32), coo.data.astype(np.uint32))
                r0 += counts.shape[0]

    return SyntheticSource()


def child_make(store: Path, n_obs: int, n_genes: int) -> dict:
    import stdask

    t = time.perf_counter()
    if not store.exists():
        stdask.ingest(_synthetic_source(n_obs, n_genes), store, progress=False)
    ds = stdask.read(store)
    nnz = int(ds.store.table["X"]["indptr"][-1])
    return {"ingest_s": time.perf_counter() - t, "nnz": nnz, "tiles": int(ds.n_tiles),
            "chunks": len(ds.X.chunks[0]), "peak_mib": _peak_mib()}


def child_stdask(store: Path) -> dict:
    import stdask
    import stdask.pp as pp
    from stdask.cluster import compute

    stdask.settings.progress = False
    times = {}
    t0 = time.perf_counter()
    ds = stdask.read(store)
    t = time.perf_counter()
    pp.normalize_total(ds)
    pp.log1p(ds)
    times["normalize+log1p"] = time.perf_counter() - t
    t = time.perf_counter()
    pp.highly_variable_genes(ds, n_top_genes=N_TOP_GENES)
    times["hvg"] = time.perf_counter() - t
    t = time.perf_counter()
    pp.pca(ds, n_comps=N_COMPS)
    times["pca_fit"] = time.perf_counter() - t
    t = time.perf_counter()
    (X_pca,) = compute(ds.get_result("obsm", "X_pca"), progress=False)
    times["pca_project"] = time.perf_counter() - t
    # --- hook: the spatial graph (stdask.gr, written separately) joins the pipeline once it exists -----
    try:
        from stdask.gr import spatial_neighbors
    except ImportError:
        spatial_neighbors = None
    total = time.perf_counter() - t0
    peak = _peak_mib()
    if spatial_neighbors is not None:
        t = time.perf_counter()
        try:
            spatial_neighbors(ds)
            times["spatial_neighbors (not in total)"] = time.perf_counter() - t
        except Exception as e:  # the hook must not hide the pp numbers
            times[f"spatial_neighbors failed: {type(e).__name__}: {e}"] = time.perf_counter() - t
    return {"total_s": total, "steps": times, "peak_mib": peak, "peak_mib_with_spatial": _peak_mib(),
            "variance_ratio_sum": float(ds.get_result("uns", "pca")["variance_ratio"].sum()),
            "X_pca_shape": list(X_pca.shape)}


def child_scanpy(store: Path) -> dict:
    import warnings

    import anndata as ad
    import scanpy as sc

    warnings.filterwarnings("ignore")
    times = {}
    t = time.perf_counter()
    adata = ad.read_zarr(str(store / "tables" / "table"))
    times["load"] = time.perf_counter() - t
    t0 = time.perf_counter()
    t = time.perf_counter()
    sc.pp.normalize_total(adata)
    sc.pp.log1p(adata)
    times["normalize+log1p"] = time.perf_counter() - t
    t = time.perf_counter()
    sc.pp.highly_variable_genes(adata, n_top_genes=N_TOP_GENES)
    times["hvg"] = time.perf_counter() - t
    t = time.perf_counter()
    sc.pp.pca(adata, n_comps=N_COMPS, svd_solver="covariance_eigh")
    times["pca"] = time.perf_counter() - t
    return {"total_s": time.perf_counter() - t0, "steps": times, "peak_mib": _peak_mib(),
            "variance_ratio_sum": float(adata.uns["pca"]["variance_ratio"].sum())}


# ----------------------------------------------------------------------------------------------------
# driver
# ----------------------------------------------------------------------------------------------------
def run_child(*args: str, timeout: float) -> dict:
    cmd = [sys.executable, __file__, "--child", *args]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        return {"error": (p.stderr or p.stdout).strip().splitlines()[-1] if (p.stderr or p.stdout) else
                f"exit {p.returncode}"}
    return json.loads(p.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[250_000, 500_000, 1_000_000])
    ap.add_argument("--genes", type=int, default=2000)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/stdask-bench"))
    ap.add_argument("--scanpy-max", type=int, default=1_000_000,
                    help="largest size also run with scanpy (in memory)")
    ap.add_argument("--timeout", type=float, default=3600)
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        kind, store = a.child[0], Path(a.child[1])
        if kind == "make":
            out = child_make(store, int(a.child[2]), int(a.child[3]))
        elif kind == "stdask":
            out = child_stdask(store)
        else:
            out = child_scanpy(store)
        print(json.dumps(out))
        return

    a.workdir.mkdir(parents=True, exist_ok=True)
    rows = []
    for n in a.sizes:
        store = a.workdir / f"synthetic_{n}x{a.genes}.zarr"
        made = run_child("make", str(store), str(n), str(a.genes), timeout=a.timeout)
        print(f"# {n:,} cells: store {made}", file=sys.stderr, flush=True)
        st = run_child("stdask", str(store), timeout=a.timeout)
        print(f"# stdask {st}", file=sys.stderr, flush=True)
        scp = run_child("scanpy", str(store), timeout=a.timeout) if n <= a.scanpy_max else None
        if scp is not None:
            print(f"# scanpy {scp}", file=sys.stderr, flush=True)
        rows.append((n, made, st, scp))

    print(f"\nstdask.pp vs scanpy: normalize_total -> log1p -> HVG ({N_TOP_GENES}) -> PCA ({N_COMPS}); "
          f"{a.genes:,} genes, {os.cpu_count()} cores\n")
    print("| cells | nnz | stdask wall s | stdask peak RSS MiB | scanpy wall s (+load) | scanpy peak RSS MiB "
          "| time ratio stdask/scanpy | RSS ratio |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n, made, st, scp in rows:
        s_t = st.get("total_s", float("nan"))
        s_m = st.get("peak_mib", float("nan"))
        if scp and "error" not in scp:
            c_t, c_m = scp["total_s"], scp["peak_mib"]
            scan = f"{c_t:.1f} (+{scp['steps']['load']:.1f}) | {c_m:,.0f} | {s_t / c_t:.2f} | {s_m / c_m:.2f}"
        else:
            scan = f"{(scp or {}).get('error', 'not run')} | | |"
        print(f"| {n:,} | {made.get('nnz', 0):,} | {s_t:.1f} | {s_m:,.0f} | {scan} |")
    print("\nstdask steps (s):")
    for n, _, st, _ in rows:
        steps = ", ".join(f"{k} {v:.1f}" for k, v in st.get("steps", {}).items())
        print(f"  {n:,}: {steps or st.get('error')}")


if __name__ == "__main__":
    main()
