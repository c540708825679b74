"""LR hotspot benchmark: stdask vs stLearn 1.2.2, then stdask alone at the tutorial's workload and beyond.

Prints a table per part. Each run happens in a child process so its peak RSS is measured (``os.wait4``).

1. stdask and stLearn on the same inputs (synthetic Visium-like slices, normalize_total X, connectomeDB2020_lit,
   n_pairs=1000, min_spots=20), N = 2,000 and 5,000: wall times and the ratio. stLearn is installed into its
   own virtual environment (``bench/out/stlearn-venv``: ``pip install stlearn==1.2.2``) on first use.
2. stdask alone: 20,000 cells, ~1,500 valid LR pairs (connectomeDB2020_put), n_pairs = 10,000 (the stLearn
   tutorial's workload).
3. stdask alone, larger slices (``--big 1000000``), out of core: wall time and peak RSS.

Usage: ``.venv/bin/python bench/cci.py [--parts 1 2 3] [--sizes 2000 5000] [--big 1000000]``
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

OUT = Path(__file__).parent / "out"

MAKE = r"""
import sys, json
from stdask.datasets import synthetic_slice
from stdask.datasets.h5ad import write_h5ad
n, genes, path, lr_fraction = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
sl = synthetic_slice(n_obs=n, n_genes=genes, layout="visium", seed=1, lr_fraction=lr_fraction,
                     lr_db="connectomeDB2020_put")
write_h5ad(sl, path, style="stlearn", normalize=True, counts_layer=False)
print(json.dumps({"n_obs": n}))
"""

# a large slice straight into a store (counts streamed from the generator, never a whole matrix in memory),
# then normalize_total as a stored layer: the input the stLearn tutorial feeds to run
MAKE_BIG = r"""
import sys, json, time, warnings
from pathlib import Path
warnings.filterwarnings("ignore")
sys.path.insert(0, "BENCH_DIR")
import stdask, stdask.pp as pp
from preprocess import _synthetic_source
n, genes, store = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
t0 = time.perf_counter()
if not Path(store).exists():
    stdask.ingest(_synthetic_source(n, genes, layout="visium", lr_fraction=0.5), store, progress=False)
    ds = stdask.read(store)
    pp.normalize_total(ds)
    ds.write()
print(json.dumps({"build_s": time.perf_counter() - t0}))
"""

STDASK = r"""
import sys, json, time, warnings
warnings.filterwarnings("ignore")
import stdask
from stdask.tl import cci
h5, store, n_pairs, db = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
t0 = time.perf_counter()
ds = stdask.read(h5 if h5.endswith(".zarr") else stdask.ingest(h5, store, overwrite=True, progress=False))
t1 = time.perf_counter()
layer = sys.argv[5] if len(sys.argv) > 5 else "X"
res = cci.run(ds, cci.load_lrs(db), min_spots=20, n_pairs=n_pairs, progress=False, verbose=False, layer=layer)
t2 = time.perf_counter()
warm = None
if len(sys.argv) > 6 and sys.argv[6] == "warm":  # a second call: numba's cached kernels already loaded
    cci.run(ds, cci.load_lrs(db), min_spots=20, n_pairs=n_pairs, progress=False, verbose=False, layer=layer)
    warm = time.perf_counter() - t2
print(json.dumps({"ingest_s": t1 - t0, "run_s": t2 - t1, "warm_s": warm, "n_lr": len(res.lrs), "n_obs": ds.n_obs}))
"""

STLEARN = r"""
import sys, json, time, warnings
warnings.filterwarnings("ignore")
import scanpy as sc, stlearn as st
h5, n_pairs = sys.argv[1], int(sys.argv[2])
adata = sc.read_h5ad(h5)
lrs = st.tl.cci.load_lrs(['connectomeDB2020_lit'], species='human')
t0 = time.perf_counter()
st.tl.cci.run(adata, lrs, min_spots=20, distance=None, n_pairs=n_pairs, n_cpus=2, verbose=False)
t1 = time.perf_counter()
print(json.dumps({"run_s": t1 - t0, "n_lr": int(adata.uns['lr_summary'].shape[0])}))
"""


def child(python: str, code: str, *args) -> tuple[dict, float]:
    proc = subprocess.Popen([python, "-c", code, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    out, err = proc.stdout.read(), proc.stderr.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(err[-3000:])
    return json.loads(out.strip().splitlines()[-1]), usage.ru_maxrss / 2**20


def stlearn_python() -> str:
    venv = OUT / "stlearn-venv"
    py = venv / "bin" / "python"
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", "stlearn==1.2.2"], check=True)
    return str(py)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--parts", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--sizes", type=int, nargs="+", default=[2000, 5000])
    ap.add_argument("--big", type=int, nargs="+", default=[1_000_000])
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    if 1 in args.parts:
        rows = []
        stl = stlearn_python()
        for n in args.sizes:
            h5 = OUT / f"cci_{n}.h5ad"
            child(sys.executable, MAKE, n, 2000, h5, 0.5)
            # warm stdask's numba cache once, then time
            child(sys.executable, STDASK, h5, OUT / f"cci_{n}.zarr", 1000, "connectomeDB2020_lit")
            sd, sd_rss = child(sys.executable, STDASK, h5, OUT / f"cci_{n}.zarr", 1000, "connectomeDB2020_lit", "X",
                               "warm")
            sl, sl_rss = child(stl, STLEARN, h5, 1000)
            rows.append((n, sd["n_lr"], sl["n_lr"], sd["run_s"], sd["warm_s"], sl["run_s"], sd_rss, sl_rss))
            print(rows[-1], flush=True)
        print("\nstdask first call = a fresh process (numba's cached kernels loaded from disk); warm = a second call.")
        print("stLearn's time includes its JIT compilation, as every stLearn process pays it.")
        print("| cells | LRs (stdask / stLearn) | stdask run s (first / warm) | stLearn run s | speed-up (first / warm) "
              "| RSS GiB (stdask / stLearn) |")
        print("| ---: | ---: | ---: | ---: | ---: | ---: |")
        for n, a, b, s1, w1, s2, m1, m2 in rows:
            print(f"| {n:,} | {a} / {b} | {s1:.2f} / {w1:.2f} | {s2:.1f} | {s2 / s1:.0f}x / {s2 / w1:.0f}x "
                  f"| {m1:.2f} / {m2:.2f} |")
    if 2 in args.parts:
        h5 = OUT / "cci_20000.h5ad"
        child(sys.executable, MAKE, 20_000, 6000, h5, 0.18)
        sd, rss = child(sys.executable, STDASK, h5, OUT / "cci_20000.zarr", 10_000, "connectomeDB2020_put")
        print("\n| cells | valid LRs | n_pairs | run s | peak RSS GiB |")
        print("| ---: | ---: | ---: | ---: | ---: |")
        print(f"| 20,000 | {sd['n_lr']} | 10,000 | {sd['run_s']:.1f} | {rss:.2f} |", flush=True)
    if 3 in args.parts:
        print("\n| cells | genes | valid LRs | n_pairs | store build s | run s | peak RSS GiB (run) |")
        print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for n in args.big:
            store = OUT / f"cci_big_{n}.zarr"
            built, _ = child(sys.executable, MAKE_BIG.replace("BENCH_DIR", str(Path(__file__).parent.resolve())), n,
                             2000, store)
            sd, rss = child(sys.executable, STDASK, store, store, 1000, "connectomeDB2020_lit", "normalized")
            print(f"| {n:,} | 2,000 | {sd['n_lr']} | 1,000 | {built['build_s']:.0f} | {sd['run_s']:.1f} | {rss:.2f} |",
                  flush=True)

if __name__ == "__main__":
    main()
