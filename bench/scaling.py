"""Scaling of the LR hotspot analysis (``stdask.tl.cci.run``) over dask workers, and memory per worker.

Prints two tables (markdown):

1. **Workers and threads.** One slice, the same run on ``distributed.LocalCluster`` layouts of this machine:
   1 worker x 1 thread, 1 worker x 2 threads, 2 workers x 1 thread, each with worker *processes* and with
   in-process (``processes=False``) workers. Wall time of ``cci.run`` (best of ``--repeat``) and speed-up
   over 1 worker x 1 thread of the same kind. ``NUMBA_NUM_THREADS`` is set so that a layout of w x t
   uses w x t cores in numba's parallel kernels too (by default each worker's kernels use every core,
   and "1 x 1" would not be one core). Results are checked equal across layouts.
2. **Memory as the slice grows** (default 20k, 80k, 320k cells): the run on 2 worker processes x 1 thread
   with a fixed ``rows_per_task``, so every task handles the same number of cells. Peak RSS of each worker
   process (``getrusage(RUSAGE_SELF).ru_maxrss``, read from the workers at the end: the true peak, no
   sampling) and of the driver (the process that calls ``cci.run`` and holds the result).

Every run happens in a fresh child process; clusters are started and warmed (stdask imported on every
worker) before the clock starts.
Data: synthetic Visium-like slices (``stdask.datasets.synthetic_slice``) written as h5ad (normalize_total
X, as the stLearn tutorial feeds) and ingested once into ``bench/out/scaling/``.

Figures on a shared machine are noisy (other jobs compete for the cores): read ratios, not digits.

Usage::

    .venv/bin/python bench/scaling.py            # 20k cells for part 1; 20k, 80k, 320k for part 2 (~10 min)
    .venv/bin/python bench/scaling.py --quick    # 10k; 5k, 20k, 80k (~3 min)
    .venv/bin/python bench/scaling.py --parts 2 --sizes 20000 80000 320000 1280000
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

OUT = Path(__file__).parent / "out" / "scaling"
#: tissue area per Visium spot: hexagonal lattice of 100 um pitch (rows 50 * sqrt(3) um apart)
VISIUM_SPOT_AREA_UM2 = 100.0 * 50.0 * math.sqrt(3.0)

MAKE = r"""
import sys, json, time
import stdask
from stdask.datasets import synthetic_slice
from stdask.datasets.h5ad import write_h5ad
n, genes, h5, store, tile = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], float(sys.argv[5])
t0 = time.perf_counter()
sl = synthetic_slice(n_obs=n, n_genes=genes, layout="visium", seed=1, n_hotspots=4)
write_h5ad(sl, h5, style="stlearn", normalize=True, counts_layer=False)
t1 = time.perf_counter()
ds = stdask.read(stdask.ingest(h5, store, overwrite=True, progress=False, tile_size=tile))
print(json.dumps({"n_obs": ds.n_obs, "n_tiles": int(ds.n_tiles), "write_s": t1 - t0,
                  "ingest_s": time.perf_counter() - t1}))
"""

RUN = r"""
import sys, json, time, resource, hashlib, warnings
warnings.filterwarnings("ignore")
import numpy as np
import dask
from distributed import LocalCluster, Client
import stdask
from stdask.settings import settings
from stdask.tl import cci

store, n_workers, threads, processes, n_pairs, rows_per_task, repeat = sys.argv[1:8]
n_workers, threads, processes = int(n_workers), int(threads), processes == "1"
n_pairs, rows_per_task, repeat = int(n_pairs), int(rows_per_task), int(repeat)
settings.progress = False
with dask.config.set({"distributed.logging.distributed": "error"}):
    # worker processes talk over loopback TCP; in-process workers over inproc:// (no host to give)
    where = {"host": "127.0.0.1"} if processes else {}
    cluster = LocalCluster(n_workers=n_workers, threads_per_worker=threads, processes=processes,
                           dashboard_address=None, memory_limit="6GiB", **where)
    client = Client(cluster)
    ds = stdask.read(store)
    lrs = cci.load_lrs()
    kw = dict(min_spots=20, n_pairs=n_pairs, seed=0, scheduler=client, progress=False, verbose=False,
              rows_per_task=rows_per_task or None)

    # warm-up: every worker imports stdask (numba's compiled kernels load from its on-disk cache)
    client.run(lambda: __import__("stdask.tl.cci"))
    times = []
    for _ in range(repeat):  # peak RSS below covers all repeats (the same tasks each time)
        t0 = time.perf_counter()
        res = cci.run(ds, lrs, **kw)
        times.append(time.perf_counter() - t0)
    h = hashlib.sha1()
    for m in (res.scores, res.counts, res.padj):
        for a in (m.indptr, m.indices, m.data):
            h.update(np.ascontiguousarray(a).tobytes())
    h.update(res.lr_summary.to_csv().encode())

    def peak_rss():
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    worker_peaks = list(client.run(peak_rss).values()) if processes else []
    client.close()
    cluster.close()
from stdask.tilemap import tile_batches
print(json.dumps({"times": times, "n_lr": len(res.lrs), "hash": h.hexdigest(), "worker_peak": worker_peaks,
                  "driver_peak": peak_rss(), "n_tasks": len(tile_batches(ds, kw["rows_per_task"]))}))
"""


def child(code: str, *args, numba_threads: int | None = None) -> dict:
    """Run ``code`` in a fresh interpreter; return its last stdout line, parsed as JSON.

    ``numba_threads``: ``NUMBA_NUM_THREADS`` of the child and of the worker processes it starts (they
    inherit its environment); numba's parallel kernels otherwise use every core in every worker.
    """
    env = dict(os.environ)
    if numba_threads is not None:
        env["NUMBA_NUM_THREADS"] = str(numba_threads)
    proc = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"child failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def make(n: int, genes: int, cells_per_tile: int) -> Path:
    """A slice of ``n`` Visium spots ingested in tiles of about ``cells_per_tile`` spots (made once)."""
    store = OUT / f"visium_{n}.zarr"
    stamp = OUT / f"visium_{n}.json"
    tile = math.sqrt(cells_per_tile * VISIUM_SPOT_AREA_UM2)
    if store.exists() and stamp.exists() and json.loads(stamp.read_text()).get("key") == [genes, tile]:
        return store
    t0 = time.perf_counter()
    info = child(MAKE, n, genes, OUT / f"visium_{n}.h5ad", store, tile)
    (OUT / f"visium_{n}.h5ad").unlink()
    stamp.write_text(json.dumps({**info, "key": [genes, tile]}))
    print(f"  made {n:,} cells x {genes} genes ({info['n_tiles']} tiles) in {time.perf_counter() - t0:.0f} s",
          flush=True)
    return store


def gib(b: float) -> str:
    return f"{b / 2**30:.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller slices (a few minutes)")
    ap.add_argument("--parts", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--n", type=int, help="cells of the part-1 slice (default 20,000; --quick 10,000)")
    ap.add_argument("--sizes", type=int, nargs="+",
                    help="part-2 slice sizes (default 20k 80k 320k; --quick 5k 20k 80k)")
    ap.add_argument("--genes", type=int, default=1000)
    ap.add_argument("--cells-per-tile", type=int, default=2500, help="tile size of the stores, in spots")
    ap.add_argument("--n-pairs", type=int, default=1000, help="background pairs per LR")
    ap.add_argument("--rows-per-task", type=int, default=None,
                    help="cells per task (default: part 1 n/16, part 2 10,000)")
    ap.add_argument("--repeat", type=int, default=None, help="timed runs per layout, best kept (default 2; --quick 1)")
    args = ap.parse_args()
    n = args.n or (10_000 if args.quick else 20_000)
    sizes = args.sizes or ([5_000, 20_000, 80_000] if args.quick else [20_000, 80_000, 320_000])
    repeat = args.repeat or (1 if args.quick else 2)
    OUT.mkdir(parents=True, exist_ok=True)
    print(f"machine: {os.cpu_count()} cores (dask sees {__import__('dask').system.CPU_COUNT}); "
          f"load average {os.getloadavg()[0]:.1f} at start", flush=True)

    if 1 in args.parts:
        store = make(n, args.genes, args.cells_per_tile)
        rpt = args.rows_per_task or max(1, n // 16)
        layouts = [("processes", 1, 1), ("processes", 1, 2), ("processes", 2, 1),
                   ("threads", 1, 1), ("threads", 1, 2), ("threads", 2, 1)]
        rows, hashes = [], set()
        for kind, w, t in layouts:
            # a layout uses w x t cores, numba's parallel kernels included: a worker process gets t numba
            # threads, an in-process cluster (one numba pool shared by its worker threads) w x t
            info = child(RUN, store, w, t, int(kind == "processes"), args.n_pairs, rpt, repeat,
                         numba_threads=t if kind == "processes" else w * t)
            hashes.add(info["hash"])
            rows.append((kind, w, t, min(info["times"]), info))
            print(f"  {kind:9s} {w} worker(s) x {t} thread(s): {min(info['times']):.1f} s "
                  f"(runs {', '.join(f'{x:.1f}' for x in info['times'])}; result {info['hash'][:12]})", flush=True)
        base = {kind: s for kind, w, t, s, _ in rows if (w, t) == (1, 1)}
        print(f"\nLR analysis, {n:,} cells x {args.genes} genes, {rows[0][4]['n_lr']} valid LR pairs, "
              f"n_pairs={args.n_pairs}, {rows[0][4]['n_tasks']} tasks per pass; best of {repeat}; "
              f"results identical in every layout: {len(hashes) == 1}\n")
        print("| workers | kind | workers x threads | wall s | speed-up vs 1 x 1 |")
        print("| ---: | --- | --- | ---: | ---: |")
        for kind, w, t, s, _ in rows:
            label = "worker processes" if kind == "processes" else "in-process (processes=False)"
            print(f"| {w} | {label} | {w} x {t} | {s:.1f} | {base[kind] / s:.2f}x |")

    if 2 in args.parts:
        rpt = args.rows_per_task or 10_000
        res = []
        for size in sizes:
            store = make(size, args.genes, args.cells_per_tile)
            t0 = time.perf_counter()
            info = child(RUN, store, 2, 1, 1, args.n_pairs, rpt, 1, numba_threads=1)
            res.append((size, info))
            print(f"  {size:,} cells: {min(info['times']):.1f} s, worker peaks "
                  f"{', '.join(gib(b) for b in info['worker_peak'])} GiB, driver {gib(info['driver_peak'])} GiB "
                  f"({time.perf_counter() - t0:.0f} s with start-up)", flush=True)
        print(f"\nMemory as the slice grows: 2 worker processes x 1 thread (1 numba thread each), "
              f"{rpt:,} cells per task, n_pairs={args.n_pairs}, {args.genes} genes\n")
        print("| cells | tasks per pass | valid LRs | wall s | s per 10k cells | peak RSS per worker GiB "
              "| driver peak RSS GiB |")
        print("| ---: | ---: | ---: | ---: | ---: | --- | ---: |")
        for size, info in res:
            s = min(info["times"])
            print(f"| {size:,} | {info['n_tasks']} | {info['n_lr']} | {s:.1f} | {s / size * 1e4:.2f} | "
                  f"{' / '.join(gib(b) for b in info['worker_peak'])} | {gib(info['driver_peak'])} |")


if __name__ == "__main__":
    main()
