"""Ingest benchmark: synthetic inputs of each large format streamed into stores.

``--format gem`` (default): a bin1 Stereo-seq GEM to bin50 and bin20 stores. Prints one row per (input size,
bin): wall time, records/s and the peak RSS of the ingesting process (measured in a child process per run with
``os.wait4``), plus the on-disk size of the store. Also reports the compressed size of the gene-index array as
int32 (what stdask writes) and as uint16, to back the choice recorded in ``stdask.store.csr``.

``--format xenium``: a synthetic Xenium ``outs/`` (377 genes, ~200 transcripts per cell) ingested with every
transcript kept as the points element (``points=True``), at each ``--cells`` size; the store's point count is
checked against the file's. ``--format visium_hd``: a synthetic Visium HD slide read at 2 um, at each ``--hd-side``
(bins per slide side; about half the bins are in tissue). Two sizes each show whether memory grows with the slice.

Usage: ``.venv/bin/python bench/ingest.py [--format gem|xenium|visium_hd] [--records 1e7 5e7] [--bins 50 20]
[--cells 250000 1000000] [--hd-side 1600 3200] [--workdir DIR]``
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
stdask.ingest(sys.argv[1], sys.argv[2], overwrite=True, progress=False, **json.loads(sys.argv[3]))
seconds = time.perf_counter() - t
# the process's own high-water mark: ru_maxrss would start at the parent's RSS when the child was forked
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))
print(json.dumps({"seconds": seconds, "hwm_kib": hwm}))
"""


def run_child(source: Path, store: Path, bin_size: int | None = None, **options) -> tuple[float, float]:
    """(seconds, peak RSS GiB) of one ingest in a fresh process."""
    import json

    kwargs = json.dumps({"bin_size": bin_size, **options})
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(source), str(store), kwargs],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, status, _usage = os.wait4(proc.pid, 0)
    out, err = proc.stdout.read(), proc.stderr.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"ingest failed:\n{err}")
    import json

    result = json.loads(out.strip().splitlines()[-1])
    return result["seconds"], result["hwm_kib"] / 2**20


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


def bench_xenium(work: Path, sizes: list[float]) -> None:
    """Xenium outs/ with transcripts -> store with the points element, at each number of cells."""
    import stdask
    from stdask.datasets import write_xenium

    rows = []
    for n in (int(v) for v in sizes):
        outs = work / f"xenium_{n}" / "outs"
        info = write_xenium(outs, n_cells=n, n_genes=377, seed=0, zero_fraction=0.8, chunk_size=50_000)
        print(f"wrote {outs}: {n:,} cells, {info['n_transcripts']:,} transcripts, {info['nnz']:,} matrix entries "
              f"in {info['seconds']:.0f} s", flush=True)
        store = work / f"xenium_{n}.zarr"
        seconds, rss = run_child(outs, store, points=True)
        ds = stdask.read(store)
        assert ds.provenance["n_points"] == info["n_transcripts"], "points element lost transcripts"
        assert ds.n_obs == n
        records = info["n_transcripts"] + info["nnz"]
        rows.append((n, info["n_transcripts"], seconds, records / seconds, rss, du(store) / 2**20))
        print(f"  ingest: {seconds:.1f} s, peak RSS {rss:.2f} GiB", flush=True)
        shutil.rmtree(outs.parent)
        shutil.rmtree(store)
    print()
    print("| Xenium cells | transcripts (points kept) | wall s | records/s (transcripts + entries) | peak RSS GiB "
          "| store MiB |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for n, tx, s, rps, rss, mb in rows:
        print(f"| {n:,} | {tx:,} | {s:.1f} | {rps:,.0f} | {rss:.2f} | {mb:.0f} |")


def bench_visium_hd(work: Path, sides: list[float]) -> None:
    """Visium HD run -> store of its in-tissue 2 um bins, at each slide side (bins)."""
    import stdask
    from stdask.datasets import write_visium_hd

    rows = []
    for side in (int(v) for v in sides):
        run = work / f"hd_{side}"
        info = write_visium_hd(run, n_rows=side, n_cols=side, n_genes=1000, seed=0, bin_sizes=(2,),
                               tissue_fraction=0.49)
        n_bins, nnz = info["n_bins"][2], info["nnz"][2]
        print(f"wrote {run}: {info['n_positions'][2]:,} bins of 2 um, {n_bins:,} in tissue, {nnz:,} entries in "
              f"{info['seconds']:.0f} s", flush=True)
        store = work / f"hd_{side}.zarr"
        seconds, rss = run_child(run, store, bin_size=2)
        assert stdask.read(store).n_obs == n_bins
        rows.append((info["n_positions"][2], n_bins, nnz, seconds, n_bins / seconds, rss, du(store) / 2**20))
        print(f"  ingest: {seconds:.1f} s, peak RSS {rss:.2f} GiB", flush=True)
        shutil.rmtree(run)
        shutil.rmtree(store)
    print()
    print("| slide bins (2 um) | in-tissue bins | entries | wall s | bins/s | peak RSS GiB | store MiB |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for npos, n, nnz, s, bps, rss, mb in rows:
        print(f"| {npos:,} | {n:,} | {nnz:,} | {s:.1f} | {bps:,.0f} | {rss:.2f} | {mb:.0f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--format", choices=("gem", "xenium", "visium_hd"), default="gem")
    ap.add_argument("--records", type=float, nargs="+", default=[1e7, 5e7])
    ap.add_argument("--bins", type=int, nargs="+", default=[50, 20])
    ap.add_argument("--cells", type=float, nargs="+", default=[2.5e5, 1e6])
    ap.add_argument("--hd-side", type=float, nargs="+", default=[1600, 3200])
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    from stdask.datasets.gem import write_bin1_gem

    work = Path(args.workdir or tempfile.mkdtemp(prefix="stdask-bench-ingest-"))
    work.mkdir(parents=True, exist_ok=True)
    if args.format != "gem":
        try:
            (bench_xenium(work, args.cells) if args.format == "xenium" else bench_visium_hd(work, args.hd_side))
        finally:
            if not args.keep:
                shutil.rmtree(work, ignore_errors=True)
        return
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
