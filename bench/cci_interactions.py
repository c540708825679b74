"""Cell-type interaction benchmark (``run_cci``): stdask vs stLearn 1.2.2, then stdask at scale.

Prints one table. Each run happens in a child process (peak RSS measured with ``os.wait4``).

1. Side by side on the shipped 2,000-cell reference input (``tests/data/ref_N2000.h5ad``: 6 cell types,
   stLearn's own ``run`` results inside): stLearn ``run_cci`` on it as stored, stdask ``run_cci`` after its own
   ``run`` (n_pairs=1000, min_spots=20); ``n_perms=100``, the stLearn default. Both are warmed up first (JIT),
   and only ``run_cci`` is timed. stLearn comes from ``bench/out/stlearn-venv`` (made by ``bench/cci.py``'s
   helper on first use).
2. stdask alone: a 20,000-spot synthetic Visium slice with 15 cell types (``stdask.datasets.synthetic_slice``),
   hotspots from ``run`` (n_pairs=200, min_spots=20), then ``run_cci`` with ``n_perms=1000``.

Usage: ``.venv/bin/python bench/cci_interactions.py [--parts 1 2] [--n 20000] [--perms 1000]``
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from cci import OUT, child, stlearn_python  # noqa: E402  (the stLearn venv and child-process helpers)

REF = Path(__file__).resolve().parent.parent / "tests" / "data" / "ref_N2000.h5ad"

MAKE = r"""
import sys, json
from stdask.datasets import synthetic_slice
from stdask.datasets.h5ad import write_h5ad
n, types, path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
sl = synthetic_slice(n_obs=n, n_genes=2000, layout="visium", seed=1, n_cell_types=types, lr_fraction=0.5)
write_h5ad(sl, path, style="stlearn", normalize=True, counts_layer=False)
print(json.dumps({"n_obs": n}))
"""

STDASK = r"""
import sys, json, time, warnings
warnings.filterwarnings("ignore")
import stdask
from stdask.tl import cci
h5, store, n_pairs, n_perms = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
ds = stdask.read(stdask.ingest(h5, store, overwrite=True, progress=False))
t0 = time.perf_counter()
res = cci.run(ds, cci.load_lrs(), min_spots=20, n_pairs=n_pairs, progress=False, verbose=False)
t1 = time.perf_counter()
cci.run_cci(ds, "cell_type", result=res, n_perms=1, progress=False)  # warm-up (JIT, cluster start)
t2 = time.perf_counter()
inter = cci.run_cci(ds, "cell_type", result=res, n_perms=n_perms, progress=False)
t3 = time.perf_counter()
print(json.dumps({"run_s": t1 - t0, "run_cci_s": t3 - t2, "n_lr": len(inter.lrs), "n_types": len(inter.types),
                  "n_edges": inter.params["n_edges"], "n_obs": ds.n_obs}))
"""

STLEARN = r"""
import sys, json, time, warnings
warnings.filterwarnings("ignore")
import scanpy as sc, stlearn as st
h5, n_perms = sys.argv[1], int(sys.argv[2])
adata = sc.read_h5ad(h5)
warm = adata.copy()
st.tl.cci.run_cci(warm, 'cell_type', min_spots=90, n_perms=2, n_cpus=2, verbose=False)  # JIT warm-up
t0 = time.perf_counter()
st.tl.cci.run_cci(adata, 'cell_type', min_spots=3, spot_mixtures=False, cell_prop_cutoff=0.2, sig_spots=True,
                  n_perms=n_perms, n_cpus=2, verbose=False)
t1 = time.perf_counter()
print(json.dumps({"run_cci_s": t1 - t0, "n_lr": int((adata.uns['lr_summary']['n_spots_sig'] > 3).sum())}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--parts", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--types", type=int, default=15)
    ap.add_argument("--perms", type=int, default=1000)
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    rows = []
    if 1 in args.parts:
        stl = stlearn_python()
        sd, sd_rss = child(sys.executable, STDASK, REF, OUT / "cci_int_ref.zarr", 1000, 100)
        sl, sl_rss = child(stl, STLEARN, REF, 100)
        rows.append(("stdask", 2000, 6, sd["n_lr"], 100, sd["run_cci_s"], sd_rss))
        rows.append(("stLearn 1.2.2", 2000, 6, sl["n_lr"], 100, sl["run_cci_s"], sl_rss))
        print(rows[-2], rows[-1], flush=True)
    if 2 in args.parts:
        h5 = OUT / f"cci_int_{args.n}_{args.types}.h5ad"
        if not h5.exists():
            child(sys.executable, MAKE, args.n, args.types, h5)
        sd, rss = child(sys.executable, STDASK, h5, OUT / f"cci_int_{args.n}.zarr", 200, args.perms)
        rows.append(("stdask", sd["n_obs"], sd["n_types"], sd["n_lr"], args.perms, sd["run_cci_s"], rss))
        print(rows[-1], f"(run: {sd['run_s']:.1f} s, {sd['n_edges']:,} qualifying edges)", flush=True)
    print("\n| engine | cells | cell types | tested LRs | n_perms | run_cci s | peak RSS GiB |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for eng, n, t, nl, p, s, m in rows:
        print(f"| {eng} | {n:,} | {t} | {nl} | {p:,} | {s:.2f} | {m:.2f} |")
    if 1 in args.parts:
        print(f"\nstLearn / stdask run_cci time at 2,000 cells, 100 permutations: {rows[1][5] / rows[0][5]:.0f}x")


if __name__ == "__main__":
    main()
