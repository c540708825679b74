"""Ingest benchmark: a synthetic bin1 Stereo-seq GEM to bin50 and bin20 stores.

Prints one row per (input size, bin): wall time, records/s and the peak RSS of the ingesting process
(measured in a child process per run with ``os.wait4``), plus the on-disk size of the store. Two input
sizes show whether memory depends on input size. Also reports the compressed size of the gene-index array
as int32 (what stdask writes) and as uint16, to back the choice recorded in ``stdask.store.csr``.

Usage: ``.venv/bin/python bench/ingest.py [--records 10000000 50000000] [--bins 50 20] [--workdir DIR]``
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CHILD = r"""
import sys, time, json
import stdask
t = time.perf_counter()
stdask.ingest(sys.argv[1], sys.argv[2], bin_size=int(sys.argv[3]), overwrite=True, progress=False)
print(json.dumps({"seconds": time.perf_counter() - t}))
"""


def run_child(gem: Path, store: Path, bin_size: int) -> tuple[float, float]:
    """(seconds, peak RSS GiB) of one ingest in a fresh process."""
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(gem), str(store), str(bin_size)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    out, err = proc.stdout.read(), proc.stderr.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"ingest failed:\n{err}")
    import json

    seconds = json.loads(out.strip().splitlines()[-1])["seconds"]
    return seconds, usage.ru_maxrss / 2**20  # ru_maxrss is KiB on Linux


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def index_compression(store: Path) -> tuple[int, int]:
    """Compressed bytes of the store's gene indices written as int32 and as uint16 (same codec)."""
    import zarr

    from stdask.store.csr import create_1d

    idx = zarr.open_group(str(store), mode="r")["tables/table/X/indices"][:]
    out = []
    with tempfile.TemporaryDirectory() as d:
        g = zarr.open_group(d, mode="w", zarr_format=3)
        for name, dt in (("i32", np.int32), ("u16", np.uint16)):
            a = create_1d(g, name, dt, length=len(idx))
            a[:] = idx.astype(dt)
            out.append(du(Path(d) / name))
    return out[0], out[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--records", type=float, nargs="+", default=[1e7, 5e7])
    ap.add_argument("--bins", type=int, nargs="+", default=[50, 20])
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    from stdask.datasets.gem import write_bin1_gem

    work = Path(args.workdir or tempfile.mkdtemp(prefix="stdask-bench-ingest-"))
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    try:
        for n in args.records:
            n = int(n)
            gem = work / f"bin1_{n}.gem"
            t = time.perf_counter()
            info = write_bin1_gem(gem, n, n_genes=2000, seed=0, bin_size=50)
            print(f"wrote {gem.name}: {n:,} records, {gem.stat().st_size / 2**30:.2f} GiB in "
                  f"{time.perf_counter() - t:.0f} s", flush=True)
            for b in args.bins:
                store = work / f"bin{b}_{n}.zarr"
                seconds, rss = run_child(gem, store, b)
                rows.append((n, b, seconds, n / seconds, rss, du(store) / 2**20))
                print(f"  bin{b}: {seconds:.1f} s, {n / seconds / 1e6:.2f} M records/s, peak RSS {rss:.2f} GiB",
                      flush=True)
            i32, u16 = index_compression(work / f"bin{args.bins[0]}_{n}.zarr")
            gem.unlink()
        print()
        print("| records | bin | wall s | records/s | peak RSS GiB | store MiB |")
        print("| ---: | ---: | ---: | ---: | ---: | ---: |")
        for n, b, s, rps, rss, mb in rows:
            print(f"| {n:,} | {b} | {s:.1f} | {rps:,.0f} | {rss:.2f} | {mb:.0f} |")
        print()
        print(f"gene indices of the last bin{args.bins[0]} store, compressed: int32 {i32 / 2**20:.2f} MiB, "
              f"uint16 {u16 / 2**20:.2f} MiB")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
