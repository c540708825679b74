"""Benchmark: SpaSEG spatial domains, end to end from a store, on CPU.

Cases (synthetic slices with planted domains, so ARI against the truth is reported too):

* ``dlpfc``: a DLPFC-size Visium slice (4,000 spots, 7 cortex-like layers, 3,000 genes) -- the reference
  reports 0.62 min per DLPFC slice; the target here is under 1 minute on CPU. Leiden on PCA (stdask.pp,
  best of three resolutions) is run on the same store for comparison.
* ``bin20``: a Stereo-seq bin20 slice of 526,716 bins (the reference's mouse-brain bin20 size; 7 irregular
  regions, 2,000 genes) -- the reference reports 12.1 min / 5.7 GB; the target is under 12 minutes and a
  peak RSS under 6 GiB on 2 CPU cores. The image (726 x 726 pixels) exceeds the whole-image limit, so it
  trains on random batches of 128-pixel tiles with a halo and predicts tile by tile.

"End to end" = open the store, preprocess (gene filter, normalize_total, log1p, PCA), rasterise, train,
predict, write labels and embedding back into the store. Building the store (synthetic generation +
ingest) is timed separately. Each measurement runs in its own child process, which reports its wall time
and peak resident memory (``ru_maxrss``; the embedded dask cluster runs in-process, so workers are
included).

Usage::

    python bench/spaseg.py                       # both cases
    python bench/spaseg.py --cases dlpfc --threads 2 --workdir /tmp/stdask-bench

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

import numpy as np

CASES = {
    "dlpfc": dict(n_obs=4000, n_genes=3000, layout="visium", n_domains=7, domain_shape="layers", seed=7),
    "bin20": dict(n_obs=526_716, n_genes=2000, layout="stereo", bin_size=20, n_domains=7, domain_shape="regions",
                  seed=8),
}


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _source(case: str):
    """The synthetic slice as an ingest source: obs (with the planted ``domain``) and coordinates up front,
    counts streamed (regenerated bit-identically), so the store is built in bounded memory."""
    from stdask.datasets import SyntheticSource, synthetic_slice

    sl = synthetic_slice(n_hotspots=0, **CASES[case])
    return SyntheticSource(sl, obs_columns=("domain", "array_row", "array_col"), chunk_size=50_000)


# ----------------------------------------------------------------------------------------------------
# children (each prints one JSON line)
# ----------------------------------------------------------------------------------------------------
def child_make(case: str, store: Path) -> dict:
    import stdask

    t = time.perf_counter()
    if not store.exists():
        stdask.ingest(_source(case), store, progress=False)
    ds = stdask.read(store)
    return {"build_s": time.perf_counter() - t, "n_obs": ds.n_obs, "n_vars": ds.n_vars,
            "nnz": int(ds.store.table["X"]["indptr"][-1]), "peak_mib": _peak_mib()}


def child_spaseg(case: str, store: Path, threads: int) -> dict:
    import torch

    import stdask
    from stdask.tl.metrics import ari, nmi
    from stdask.tl.spaseg import spaseg

    torch.set_num_threads(threads)
    stdask.settings.progress = False
    t0 = time.perf_counter()
    ds = stdask.read(store)
    res = spaseg(ds, n_domains=CASES[case]["n_domains"] + 1, key_added="spaseg", progress=False)
    t_fit = time.perf_counter()
    ds.write()
    total = time.perf_counter() - t0
    truth = stdask.read(store).obs["domain"]
    info = res.info
    return {"total_s": total, "write_s": time.perf_counter() - t_fit, "train_s": info["seconds_train"],
            "preprocess_and_raster_s": info["seconds"] - info["seconds_train"], "mode": info["mode"],
            "grid": f"{info['grid']['height']} x {info['grid']['width']}", "stop_iteration": info["stop_iteration"],
            "stopped": info["stopped"], "n_domains": info["n_domains_found"], "ARI": ari(truth, res.labels),
            "NMI": nmi(truth, res.labels), "collisions": info["collisions"]["n_colliding_obs"],
            "peak_mib": _peak_mib(), "torch_threads": info["threads"]}


def child_leiden(store: Path) -> dict:
    import stdask
    import stdask.pp as pp
    from stdask.tl.metrics import ari

    stdask.settings.progress = False
    t0 = time.perf_counter()
    ds = stdask.read(store)
    pp.normalize_total(ds)
    pp.log1p(ds)
    pp.pca(ds, n_comps=15, progress=False)
    pp.neighbors(ds, progress=False)
    best = (-1.0, None)
    for r in (0.3, 0.6, 1.0):
        lab = pp.leiden(ds, resolution=r, key_added="leiden")
        best = max(best, (ari(ds.obs["domain"], lab), r))
    return {"total_s": time.perf_counter() - t0, "ARI": best[0], "resolution": best[1], "peak_mib": _peak_mib()}


# ----------------------------------------------------------------------------------------------------
# driver
# ----------------------------------------------------------------------------------------------------
def run_child(*args: str, timeout: float, env: dict | None = None) -> dict:
    cmd = [sys.executable, __file__, "--child", *args]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if p.returncode != 0:
        tail = (p.stderr or p.stdout).strip().splitlines()
        return {"error": tail[-1] if tail else f"exit {p.returncode}"}
    return json.loads(p.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/stdask-bench"))
    ap.add_argument("--threads", type=int, default=2,
                    help="CPU cores the run may use (torch's thread limit; spaseg uses fewer on small images)")
    ap.add_argument("--timeout", type=float, default=3600)
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        kind = a.child[0]
        if kind == "make":
            out = child_make(a.child[1], Path(a.child[2]))
        elif kind == "spaseg":
            out = child_spaseg(a.child[1], Path(a.child[2]), int(a.child[3]))
        else:
            out = child_leiden(Path(a.child[1]))
        print(json.dumps(out))
        return
    a.workdir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), NUMBA_NUM_THREADS=str(a.threads))
    rows = []
    for case in a.cases:
        store = a.workdir / f"spaseg_{case}.zarr"
        made = run_child("make", case, str(store), timeout=a.timeout, env=env)
        print(f"[bench] {case}: store {made}", flush=True)
        res = run_child("spaseg", case, str(store), str(a.threads), timeout=a.timeout, env=env)
        print(f"[bench] {case}: spaseg {res}", flush=True)
        base = run_child("leiden", str(store), timeout=a.timeout, env=env) if case == "dlpfc" else {}
        if base:
            print(f"[bench] {case}: leiden {base}", flush=True)
        rows.append((case, made, res, base))
    print()
    print(f"SpaSEG end to end on CPU (up to {a.threads} threads), synthetic slices with planted domains")
    print()
    print("| case | obs x genes | grid | mode | stop it. | domains | ARI | NMI | Leiden ARI | preprocess + raster (s) "
          "| train + predict (s) | total (s) | peak RSS (GiB) | store build (s) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for case, made, res, base in rows:
        if "error" in res:
            print(f"| {case} | error: {res['error']} |")
            continue
        lb = f"{base['ARI']:.3f}" if base and "ARI" in base else "-"
        print(f"| {case} | {made.get('n_obs', 0):,} x {made.get('n_vars', 0):,} | {res['grid']} | {res['mode']} | "
              f"{res['stop_iteration']} | {res['n_domains']} | {res['ARI']:.3f} | {res['NMI']:.3f} | {lb} | "
              f"{res['preprocess_and_raster_s']:.1f} | {res['train_s']:.1f} | {res['total_s']:.1f} | "
              f"{res['peak_mib'] / 1024:.2f} | {made.get('build_s', 0):.1f} |")


if __name__ == "__main__":
    main()
