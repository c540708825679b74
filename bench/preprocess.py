"""Benchmark: stdask out of core vs scanpy + squidpy in memory, on synthetic slices of growing size.

Pipeline: normalize_total -> log1p -> highly_variable_genes (seurat, 1,000 genes) -> pca (50 components,
X_pca materialised) -> spatial neighbour graph (radius R = 2 x the store's spot diameter, stdask's default,
passed explicitly to both tools). Each size and each tool runs in its own child process, which reports its
wall time and peak resident memory (``ru_maxrss``); the embedded dask cluster runs in-process (threads), so
stdask's peak covers the workers too.

* stdask runs in this interpreter, on the zarr store (``stdask.pp`` then ``stdask.gr.spatial_neighbors``).
* scanpy + squidpy run in a separate venv, ``bench/out/squidpy-venv``, created on first use
  (``pip install scanpy squidpy``; squidpy cannot live in stdask's environment, it downgrades dask). It
  reads an ``.h5ad`` exported once per size from the store by this interpreter (raw counts in X as float32,
  coordinates in ``obsm['spatial']``), so it never needs to read the zarr v3 store. Export and h5ad load
  times are reported but not part of either pipeline; the h5ad load is inside the child's peak RSS.
  The graph is ``squidpy.gr.spatial_neighbors(coord_type='generic', radius=R)``.

Both children report their graph's edge count (directed, no self loops: 2 x the undirected edges); the
table prints both and flags a mismatch.

Usage::

    python bench/preprocess.py                          # 250k, 500k, 1M cells x 2,000 genes
    python bench/preprocess.py --sizes 250000 --genes 2000 --workdir /tmp/stdask-bench

Stores (and their .h5ad exports) are built once per size in ``--workdir`` (ingest time is reported but not
part of the pipeline). The printed table is Markdown, ready to paste into a note.
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

import numpy as np

N_TOP_GENES = 1000
N_COMPS = 50
SQUIDPY_VENV = Path(__file__).resolve().parent / "out" / "squidpy-venv"


# ----------------------------------------------------------------------------------------------------
# children (each prints one JSON line)
# ----------------------------------------------------------------------------------------------------
def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _synthetic_source(n_obs: int, n_genes: int, layout: str = "cells", **kwargs):
    """A synthetic slice as an ingest source (obs and coordinates up front, counts streamed)."""
    from stdask.datasets import SyntheticSource, synthetic_slice

    return SyntheticSource(synthetic_slice(n_obs=n_obs, n_genes=n_genes, layout=layout, seed=0, **kwargs))


def child_make(store: Path, n_obs: int, n_genes: int) -> dict:
    import stdask

    t = time.perf_counter()
    if not store.exists():
        stdask.ingest(_synthetic_source(n_obs, n_genes), store, progress=False)
    ds = stdask.read(store)
    nnz = int(ds.store.table["X"]["indptr"][-1])
    from stdask.gr.neighbors import resolve_distance

    radius = resolve_distance(ds, None)  # stdask's default: 2 x spot diameter
    return {"ingest_s": time.perf_counter() - t, "nnz": nnz, "tiles": int(ds.n_tiles),
            "chunks": len(ds.X.chunks[0]), "spot_diameter": ds.spot_diameter, "radius": radius,
            "unit": ds.unit, "peak_mib": _peak_mib()}


def child_export(store: Path, h5ad: Path) -> dict:
    """The store's counts, obs/var names and coordinates as an .h5ad for the squidpy venv (made once)."""
    t = time.perf_counter()
    if not h5ad.exists():
        import anndata as ad

        import stdask

        ds = stdask.read(store)
        table = ad.read_zarr(str(store / "tables" / "table"))
        coords = np.asarray(ds.coords, dtype=np.float64)
        assert coords.shape == (table.n_obs, 2)
        X = table.X.tocsr() if hasattr(table.X, "tocsr") else table.X
        X = X.astype(np.float32)  # raw counts (integer-valued); scanpy would cast integers to float32 too
        out = ad.AnnData(X=X, obs=table.obs[[]].copy(), var=table.var[[]].copy())
        out.obsm["spatial"] = coords
        del table, X
        tmp = h5ad.with_suffix(".h5ad.tmp")
        out.write_h5ad(tmp)
        tmp.rename(h5ad)
    return {"export_s": time.perf_counter() - t, "path": str(h5ad), "peak_mib": _peak_mib()}


def child_stdask(store: Path, radius: float) -> dict:
    import stdask
    import stdask.pp as pp
    from stdask.cluster import compute
    from stdask.gr import spatial_neighbors

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
    t = time.perf_counter()
    spatial_neighbors(ds, distance=radius, progress=False, verbose=False)
    times["spatial_neighbors"] = time.perf_counter() - t
    total = time.perf_counter() - t0
    summary = ds.get_result("uns", "spatial_neighbors")["summary"]
    conn = ds.get_result("obsp", "spatial_connectivities")
    return {"total_s": total, "steps": times, "peak_mib": _peak_mib(),
            "variance_ratio_sum": float(ds.get_result("uns", "pca")["variance_ratio"].sum()),
            "X_pca_shape": list(X_pca.shape), "n_edges": int(summary["n_edges"]),
            "n_edges_offdiag": _offdiag_edges(conn), "median_neighbours": int(summary["median_neighbours"])}


def _offdiag_edges(conn) -> int:
    """Stored non-zero entries off the diagonal (a graph edge each, per direction)."""
    m = conn.tocoo()
    return int(((m.row != m.col) & (m.data != 0)).sum())


def child_scanpy(h5ad: Path, radius: float) -> dict:
    """Runs in the squidpy venv: reads the exported .h5ad, never the zarr store."""
    import warnings
    from importlib.metadata import version

    import anndata as ad
    import scanpy as sc
    import squidpy as sq

    warnings.filterwarnings("ignore")
    times = {}
    t = time.perf_counter()
    adata = ad.read_h5ad(str(h5ad))
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
    solver = "covariance_eigh"  # scanpy >= 1.10; older ones raise ValueError and use their default
    try:
        sc.pp.pca(adata, n_comps=N_COMPS, svd_solver=solver)
    except ValueError as e:
        if solver not in str(e):
            raise
        solver = None
        sc.pp.pca(adata, n_comps=N_COMPS)
    times["pca"] = time.perf_counter() - t
    t = time.perf_counter()
    sq.gr.spatial_neighbors(adata, coord_type="generic", radius=radius)
    times["spatial_neighbors"] = time.perf_counter() - t
    total = time.perf_counter() - t0
    conn = adata.obsp["spatial_connectivities"]
    nnz_per_row = np.diff(conn.indptr)
    return {"total_s": total, "steps": times, "peak_mib": _peak_mib(),
            "variance_ratio_sum": float(adata.uns["pca"]["variance_ratio"].sum()),
            "svd_solver": solver or "default", "n_edges": _offdiag_edges(conn), "nnz": int(conn.nnz),
            "median_neighbours": int(np.median(nnz_per_row)),
            "versions": {k: version(k) for k in ("scanpy", "squidpy", "anndata", "scikit-learn")}}


# ----------------------------------------------------------------------------------------------------
# driver
# ----------------------------------------------------------------------------------------------------
def squidpy_python() -> str:
    """The venv holding scanpy + squidpy, created on first use (squidpy would downgrade stdask's dask)."""
    py = SQUIDPY_VENV / "bin" / "python"
    check = [str(py), "-c", "import scanpy, squidpy, anndata"]
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(SQUIDPY_VENV)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", "scanpy", "squidpy"], check=True)
    if subprocess.run(check, capture_output=True).returncode != 0:
        # squidpy (via its dependencies) may still import pkg_resources, gone from setuptools >= 81
        subprocess.run([str(py), "-m", "pip", "install", "-q", "setuptools<81"], check=True)
        subprocess.run(check, check=True)
    return str(py)


def run_child(*args: str, timeout: float, python: str | None = None) -> dict:
    cmd = [python or sys.executable, __file__, "--child", *args]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {timeout:.0f} s"}
    if p.returncode != 0:
        text = (p.stderr or p.stdout).strip()
        why = text.splitlines()[-1] if text else ""
        if p.returncode < 0:  # killed by a signal: -9 is usually the OOM killer
            why = f"killed by signal {-p.returncode}" + (" (out of memory?)" if p.returncode == -9 else "") + \
                  (f": {why}" if why else "")
        return {"error": why or f"exit {p.returncode}"}
    return json.loads(p.stdout.strip().splitlines()[-1])


def _gib(mib: float) -> str:
    return f"{mib / 1024:.2f}"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[250_000, 500_000, 1_000_000])
    ap.add_argument("--genes", type=int, default=2000)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/stdask-bench"))
    ap.add_argument("--scanpy-max", type=int, default=1_000_000,
                    help="largest size also run with scanpy + squidpy (in memory); 0: none")
    ap.add_argument("--timeout", type=float, default=3600)
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        kind, path = a.child[0], Path(a.child[1])
        if kind == "make":
            out = child_make(path, int(a.child[2]), int(a.child[3]))
        elif kind == "export":
            out = child_export(path, Path(a.child[2]))
        elif kind == "stdask":
            out = child_stdask(path, float(a.child[2]))
        else:
            out = child_scanpy(path, float(a.child[2]))
        print(json.dumps(out))
        return

    a.workdir.mkdir(parents=True, exist_ok=True)
    sq_py = squidpy_python() if any(n <= a.scanpy_max for n in a.sizes) else None
    rows = []
    for n in a.sizes:
        store = a.workdir / f"synthetic_{n}x{a.genes}.zarr"
        made = run_child("make", str(store), str(n), str(a.genes), timeout=a.timeout)
        print(f"# {n:,} cells: store {made}", file=sys.stderr, flush=True)
        if "error" in made:
            rows.append((n, made, made, None))
            continue
        radius = repr(float(made["radius"]))
        st = run_child("stdask", str(store), radius, timeout=a.timeout)
        print(f"# stdask {st}", file=sys.stderr, flush=True)
        scp = None
        if n <= a.scanpy_max:
            h5ad = a.workdir / f"synthetic_{n}x{a.genes}.h5ad"
            ex = run_child("export", str(store), str(h5ad), timeout=a.timeout)
            print(f"# export {ex}", file=sys.stderr, flush=True)
            scp = ex if "error" in ex else run_child("scanpy", str(h5ad), radius, timeout=a.timeout, python=sq_py)
            print(f"# scanpy+squidpy {scp}", file=sys.stderr, flush=True)
        rows.append((n, made, st, scp))

    r0 = rows[0][1]
    versions = next((s["versions"] for *_, s in rows if s and "versions" in s), {})
    print(f"\nstdask vs scanpy + squidpy: normalize_total -> log1p -> HVG ({N_TOP_GENES}) -> PCA ({N_COMPS}) -> "
          f"spatial graph (radius {r0.get('radius', float('nan')):g} {r0.get('unit') or ''} = 2 x spot diameter); "
          f"{a.genes:,} genes, {os.cpu_count()} cores"
          + (f"; {', '.join(f'{k} {v}' for k, v in versions.items())}" if versions else "") + "\n")
    print("| cells | nnz | stdask wall s | stdask peak RSS GiB | scanpy+squidpy wall s (+load) "
          "| scanpy+squidpy peak RSS GiB | time ratio stdask/scanpy | RSS ratio stdask/scanpy "
          "| edges (stdask / squidpy) |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    mismatches = []
    for n, made, st, scp in rows:
        s_t = st.get("total_s", float("nan"))
        s_m = st.get("peak_mib", float("nan"))
        s_e = st.get("n_edges")
        std = f"{s_t:.1f} | {_gib(s_m)}" if "error" not in st else f"{st['error']} |"
        if scp and "error" not in scp:
            c_t, c_m, c_e = scp["total_s"], scp["peak_mib"], scp["n_edges"]
            scan = (f"{c_t:.1f} (+{scp['steps']['load']:.1f}) | {_gib(c_m)} | {s_t / c_t:.2f} | {s_m / c_m:.2f}")
            edges = f"{s_e:,} / {c_e:,}" if s_e is not None else f"- / {c_e:,}"
            if s_e is not None and s_e != c_e:
                edges += " **differ**"
                mismatches.append((n, s_e, c_e))
        else:
            scan = f"{(scp or {}).get('error', 'not run')} | | |"
            edges = f"{s_e:,} / -" if s_e is not None else "- / -"
        print(f"| {n:,} | {made.get('nnz', 0):,} | {std} | {scan} | {edges} |")
    if mismatches:
        for n, e1, e2 in mismatches:
            print(f"\nEDGE COUNTS DIFFER at {n:,} cells: stdask {e1:,}, squidpy {e2:,} ({e1 - e2:+,})")
    elif any(scp and "error" not in scp for *_, scp in rows):
        print("\nEdge counts (directed, no self loops) equal wherever both ran.")

    print("\nLinear-time check (wall s per 100k cells):")
    print("| cells | stdask | scanpy+squidpy |")
    print("|---:|---:|---:|")
    for n, _, st, scp in rows:
        per = lambda d: f"{d['total_s'] / n * 1e5:.2f}" if d and "total_s" in d else "-"  # noqa: E731
        print(f"| {n:,} | {per(st)} | {per(scp)} |")

    print("\nstdask steps (s):")
    for n, _, st, _ in rows:
        steps = ", ".join(f"{k} {v:.1f}" for k, v in st.get("steps", {}).items())
        print(f"  {n:,}: {steps or st.get('error')}")
    print("scanpy+squidpy steps (s; load not in the total):")
    for n, _, _, scp in rows:
        if scp:
            steps = ", ".join(f"{k} {v:.1f}" for k, v in scp.get("steps", {}).items())
            print(f"  {n:,}: {steps or scp.get('error')}")


if __name__ == "__main__":
    main()
