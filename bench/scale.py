"""Scale benchmark (issue 17): one synthetic Stereo-seq chip, from bin1 records to SpaSEG domains.

The chip is a ``"stereo"`` synthetic slice (:func:`stdask.datasets.synthetic_slice`) of ``n`` bins of
``--bin`` DNB (default bin20); its bin1 records are streamed from the generator
(:func:`stdask.datasets.dnb.iter_dnb_records`, no GEM file is written) into ``stdask.ingest(bin_size=...)``,
so binning gives exactly ``n`` observations. ``--zero-fraction`` 0.974 with 2,000 genes gives about 50 records
per bin: 5 x 10^8 records at 10^7 bins. The planted cell types and domains are then written as
``obs['cell_type']`` / ``obs['domain']`` (``run_cci`` needs a label; SpaSEG's ARI is reported against the
domains). Then, on the store: normalize_total -> log1p -> HVG (1,000 genes) -> PCA (50) -> spatial graph
-> LR hotspots (``cci.run``, connectomeDB2020_lit, n_pairs=1000, min_spots=20, on the normalised layer as
stLearn's tutorial) -> ``run_cci`` (cell_type, 1,000 permutations) -> SpaSEG (7 domains).

How it is measured
------------------
* **One fresh child process per step** (``bench/scale.py --child ...``): it opens the store, runs the step,
  then ``ds.write()`` (each step's results are stored, as the next step -- a new process -- needs them;
  ``cci.run`` even requires its layer to be stored). ``wall s`` covers the step and its write; ``write s``
  is the write alone. Imports, cluster start-up and worker warm-up happen before the clock.
* **Peak RSS** is the kernel's high-water mark ``VmHWM`` (``/proc/self/status``; ``ru_maxrss`` of a forked
  child would start from the parent's). It is reset by writing ``5`` to ``/proc/self/clear_refs`` right
  before the clock starts, in the driver (the child calling stdask) and in every worker process (through
  ``client.run``), so each number is the peak *during that step* (baseline -- imports, cluster -- included).
  In ``embedded`` mode the workers are threads of the driver, so the driver's peak covers them. External
  mode also reports the ``dask scheduler`` process's peak.
* **Tasks**: dask tasks the step ran (a scheduler plugin counts transitions processing -> memory/erred); 0
  where stdask ran the step inline (a small store on the embedded cluster: one batch, no graph).
* The bench process itself never loads results: children report hashes and a few numbers as JSON.

Cluster modes (``--cluster``): ``embedded`` (stdask's default, an in-process LocalCluster of threads),
``local`` (a ``distributed.LocalCluster`` of ``--workers`` processes x ``--worker-threads`` threads, started
in each step's child, which becomes dask's default client), ``external`` (``dask scheduler`` and ``--workers``
``dask worker --nworkers 1 --nthreads T`` processes on 127.0.0.1, started by this bench for the whole run and
torn down at the end; step children connect with ``distributed.Client(address)``). Worker processes get
``OMP_NUM_THREADS`` / ``NUMBA_NUM_THREADS`` = ``--worker-threads`` and the same ``memory_limit`` (machine
memory / workers) in both process modes. ``--compare`` runs all three at the first size (one ingest, a
copy of the store per mode) and checks that lr_summary, the LR p-values, run_cci's p-values and the SpaSEG
labels are identical (exit status 1 otherwise).

Disk: ingest spills every record (~24 B each: ~12 GB at 5 x 10^8) before binning; stores go in ``--workdir``
(``scale_<n>.zarr``: the ingested chip, reused when its parameters match; ``scale_<n>_<mode>.zarr``: the
copy each mode's steps write into), removed at the end unless ``--keep``.

Usage::

    .venv/bin/python bench/scale.py                                # 1e6, 3e6, 1e7 bins, embedded cluster
    .venv/bin/python bench/scale.py --sizes 1e6 --cluster external --workers 2
    .venv/bin/python bench/scale.py --compare --sizes 1e6          # embedded vs local vs external
    .venv/bin/python bench/scale.py --sizes 2e4 --steps lr cci     # a subset (missing prerequisites run first)
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from benchproc import add_common_args, run_child, thread_env

#: the pipeline, in order; each step names the steps whose stored results it reads
STEPS = ("ingest", "normalize", "log1p", "hvg", "pca", "spatial", "lr", "cci", "spaseg")
DEPS = {"ingest": (), "normalize": ("ingest",), "log1p": ("normalize",), "hvg": ("log1p",), "pca": ("hvg",),
        "spatial": ("ingest",), "lr": ("normalize",), "cci": ("lr",), "spaseg": ("ingest",)}
MODES = ("embedded", "local", "external")
N_TOP_GENES, N_COMPS, N_PAIRS, N_PERMS, N_DOMAINS = 1000, 50, 1000, 1000, 7
LR_DB = "connectomeDB2020_lit"
#: largest chip whose stored bin totals are checked against the generator's (one pass over X)
CHECK_MAX = 1_000_000
GIB = 2 ** 30


# ----------------------------------------------------------------------------------------------------
# memory of a process (run in the child and, through client.run, in each worker)
# ----------------------------------------------------------------------------------------------------
def hwm_bytes() -> int:
    """This process's peak resident memory (``VmHWM``), bytes."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM"))


def reset_hwm() -> None:
    """Reset this process's ``VmHWM`` to its current RSS (Linux >= 4.0: ``5`` into ``clear_refs``)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def digest(*parts) -> str:
    """Short SHA-1 of arrays (their bytes), sparse matrices (structure and values) and strings."""
    import numpy as np
    import scipy.sparse as sp

    h = hashlib.sha1()
    for p in parts:
        if sp.issparse(p):
            p = sp.csr_matrix(p)
            for a in (p.indptr, p.indices, p.data):
                h.update(np.ascontiguousarray(a).tobytes())
        elif isinstance(p, str):
            h.update(p.encode())
        else:
            h.update(np.ascontiguousarray(p).tobytes())
    return h.hexdigest()[:16]


def digest_matrices(res) -> str:
    """Short SHA-1 of an LR result's three matrices read a row block at a time (never whole): per matrix the
    per-row entry counts, column indices and values, each as one stream, so block boundaries do not change it."""
    import numpy as np

    hs = [hashlib.sha1() for _ in range(9)]
    for _, blocks in res.row_blocks(("count", "padj", "score")):
        for k, m in enumerate(blocks):
            for h, a in zip(hs[3 * k:3 * k + 3], (np.diff(m.indptr).astype(np.int64), m.indices.astype(np.int64),
                                                  m.data)):
                h.update(np.ascontiguousarray(a).tobytes())
    return digest(*(h.hexdigest() for h in hs))


# ----------------------------------------------------------------------------------------------------
# child: the chip's bin1 records, streamed into a store
# ----------------------------------------------------------------------------------------------------
def chip_source(sl, keep_totals: bool):
    """A record :class:`~stdask.io.base.Source` streaming the bin1 records of the ``"stereo"`` slice ``sl``.

    While streaming it fills (n_rows, n_cols) int16 grids of each bin's planted ``cell_type`` and ``domain``
    codes (lattice row, column), and with ``keep_totals`` an int64 grid of each bin's total count.
    """
    import numpy as np

    from stdask.io.base import DNB_PITCH_UM, RecordChunk, Source
    from stdask.datasets.dnb import iter_dnb_records

    class ChipRecords(Source):
        format_name = "synthetic-bin1"
        kind = "records"

        def __init__(self) -> None:  # no file behind it: Source.__init__ would check the path
            self.path, self.options = Path("<synthetic chip>"), {}
            shape = (sl.geometry.n_rows, sl.geometry.n_cols)
            self.cell_type = np.full(shape, -1, np.int16)
            self.domain = np.full(shape, -1, np.int16)
            self.totals = np.zeros(shape, np.int64) if keep_totals else None
            self.n_records = 0

        var = property(lambda self: sl.var)
        unit = property(lambda self: "DNB")
        microns_per_unit = property(lambda self: DNB_PITCH_UM)

        def iter_records(self, chunk_size: int = 2_000_000):
            parts, n = [], 0
            for _block, batch, rec in iter_dnb_records(sl):
                row, col = sl.geometry.row_col(batch.index)
                self.cell_type[row, col], self.domain[row, col] = batch.cell_type, batch.domain
                if self.totals is not None:
                    self.totals[row, col] = np.asarray(batch.counts.sum(axis=1)).ravel()
                parts.append(rec)
                n += len(rec)
                if n >= chunk_size:  # blocks hold ~25k records: yield ingest-sized chunks
                    yield self._chunk(parts)
                    parts, n = [], 0
            if parts:
                yield self._chunk(parts)

        def _chunk(self, parts) -> RecordChunk:
            cat = lambda name, dt: np.concatenate([getattr(p, name) for p in parts]).astype(dt, copy=False)  # noqa
            self.n_records += sum(len(p) for p in parts)
            return RecordChunk(x=cat("x", np.int64), y=cat("y", np.int64), gene=cat("gene", np.int32),
                               count=cat("count", np.uint32))

    return ChipRecords()


def child_ingest(store: Path, n: int, opts: dict) -> dict:
    """Ingest the chip into ``store`` (binned at ``opts['bin']``), then write its planted labels."""
    import numpy as np
    import pandas as pd

    import stdask
    from stdask.datasets import synthetic_slice

    b = int(opts["bin"])
    sl = synthetic_slice(n_obs=n, n_genes=opts["genes"], layout="stereo", seed=opts["seed"], bin_size=b,
                         zero_fraction=opts["zero_fraction"])
    src = chip_source(sl, keep_totals=n <= CHECK_MAX)
    reset_hwm()
    t0 = time.perf_counter()
    stdask.ingest(src, store, bin_size=b, overwrite=True, progress=False)
    t1 = time.perf_counter()
    out = {"ingest_s": t1 - t0, "ingest_peak": hwm_bytes(), "n_records": src.n_records}
    reset_hwm()
    ds = stdask.read(store)
    assert ds.n_obs == n, f"binning gave {ds.n_obs} observations, the chip has {n} bins"
    assert ds.provenance["n_records"] == src.n_records
    # bin (bx, by) of the store is lattice (column, row) of the generator: every bin has a count, so the
    # first bin centre lies at the records' origin + half a bin (ds.bounds)
    xy = np.asarray(ds.coords)
    col = np.rint((xy[:, 0] - ds.bounds[0]) / b).astype(np.int64)
    row = np.rint((xy[:, 1] - ds.bounds[1]) / b).astype(np.int64)
    del xy
    if src.totals is not None:  # independent check of the mapping: each bin's stored total = generated total
        stored = np.concatenate([np.asarray(ds.store.read_rows(*ds.tile_rows(t), "X").sum(axis=1)).ravel()
                                 for t in range(ds.n_tiles)])
        assert np.array_equal(stored, src.totals[row, col]), "bin totals differ from the generator's"
    ds.set_result("obs", "cell_type", pd.Categorical.from_codes(src.cell_type[row, col], sl.cell_type_names))
    ds.set_result("obs", "domain", pd.Categorical.from_codes(src.domain[row, col], sl.domain_names))
    ds.write()
    out.update(labels_s=time.perf_counter() - t1, labels_peak=hwm_bytes(), n_obs=n,
               totals_checked=src.totals is not None)
    return out


# ----------------------------------------------------------------------------------------------------
# child: one pipeline step on a store, where --cluster says
# ----------------------------------------------------------------------------------------------------
def run_step(step: str, ds, threads: int) -> dict:
    """Run ``step`` on ``ds`` (results pending, not written); return hashes and a few numbers (under
    ``"after"``, a function giving more, to call once the step's peak memory is read)."""
    import stdask.pp as pp
    from stdask.gr import spatial_neighbors
    from stdask.tl import cci

    if step == "normalize":
        return {"target_sum": pp.normalize_total(ds, progress=False)}
    if step == "log1p":
        pp.log1p(ds)
        return {}
    if step == "hvg":
        hvg = pp.highly_variable_genes(ds, n_top_genes=N_TOP_GENES, progress=False)
        return {"hvg": digest(hvg["highly_variable"].to_numpy())}
    if step == "pca":
        pp.pca(ds, n_comps=N_COMPS, progress=False)
        return {"pcs": digest(ds.get_result("varm", "PCs"))}
    if step == "spatial":
        spatial_neighbors(ds, progress=False, verbose=False)
        return {"n_edges": int(ds.get_result("uns", "spatial_neighbors")["summary"]["n_edges"])}
    if step == "lr":
        res = cci.run(ds, cci.load_lrs([LR_DB], species="human"), min_spots=20, n_pairs=N_PAIRS,
                      layer="normalized", progress=False, verbose=False)
        return {"n_lr": len(res.lr_summary), "n_sig": int(res.lr_summary["n_spots_sig"].sum()),
                "lr_summary": digest(res.lr_summary.to_csv()),
                "lr_pvals": digest_matrices(res)}
    if step == "cci":
        inter = cci.run_cci(ds, "cell_type", n_perms=N_PERMS, progress=False)
        return {"cci_pvals": digest(inter.pvals, inter.raw), "n_tested": len(inter.lrs)}
    if step == "spaseg":
        import torch

        from stdask.tl.metrics import ari
        from stdask.tl.spaseg import spaseg

        torch.set_num_threads(threads)
        labels = spaseg(ds, n_domains=N_DOMAINS, threads=threads, progress=False).labels
        # the ARI reads the whole obs table (names included: ~1 GB at 10^7 bins): after the peaks are read
        return {"labels": digest(labels.cat.codes.to_numpy(), "|".join(map(str, labels.cat.categories))),
                "n_domains": int(labels.nunique()), "after": lambda: {"ari": float(ari(ds.obs["domain"], labels))}}
    raise ValueError(f"unknown step {step!r}")


def connect(mode: str, opts: dict):
    """(client, cluster) for ``mode``; the client is where stdask computes (``stdask.cluster`` rules)."""
    import stdask.cluster as cl
    from distributed import Client, LocalCluster

    if mode == "embedded":
        return cl.get_client(), None
    if mode == "local":
        cluster = LocalCluster(n_workers=opts["workers"], threads_per_worker=opts["worker_threads"],
                               processes=True, host="127.0.0.1", dashboard_address=None,
                               memory_limit=opts["memory_limit"], env=worker_env(opts["worker_threads"]))
        return Client(cluster), cluster  # dask's default client from now on: stdask computes there
    client = Client(opts["address"])
    client.wait_for_workers(opts["workers"], timeout=300)
    return client, None


def count_tasks(client):
    """Register a scheduler plugin counting the tasks run from now on; returns a function reading it."""
    from distributed.diagnostics.plugin import SchedulerPlugin

    class TaskCounter(SchedulerPlugin):
        name = "stdask-bench-task-counter"

        def __init__(self) -> None:
            self.n = 0

        def transition(self, key, start, finish, *args, **kwargs) -> None:
            if start == "processing" and finish in ("memory", "erred"):
                self.n += 1

    client.register_plugin(TaskCounter(), name=TaskCounter.name)
    return lambda: client.run_on_scheduler(lambda dask_scheduler: dask_scheduler.plugins[TaskCounter.name].n)


def child_step(step: str, store: Path, mode: str, opts: dict) -> dict:
    """Run one step in this (fresh) process and report its time, peaks, task count and result hashes."""
    import warnings

    import dask

    import stdask
    import stdask.tl.cci  # noqa: F401  (imported before the clock: every step pays the same imports)

    warnings.filterwarnings("ignore")
    dask.config.set({"distributed.logging.distributed": "error"})
    stdask.settings.progress = False
    client, cluster = connect(mode, opts)
    processes = mode != "embedded"
    if processes:  # warm-up: the workers import stdask (numba kernels load from their cache) off the clock
        client.run(lambda: __import__("stdask.tl.cci") and None)
    n_tasks = count_tasks(client)
    ds = stdask.read(store)
    reset_hwm()
    if processes:
        client.run(reset_hwm)
    if mode == "external":
        client.run_on_scheduler(reset_hwm)
    t0 = time.perf_counter()
    info = run_step(step, ds, opts["threads"])
    t1 = time.perf_counter()
    ds.write()
    t2 = time.perf_counter()
    out = {"wall_s": t2 - t0, "write_s": t2 - t1, "driver_peak": hwm_bytes(), "tasks": n_tasks(), **info,
           "worker_peaks": sorted(client.run(hwm_bytes).values()) if processes else None,
           "scheduler_peak": client.run_on_scheduler(hwm_bytes) if mode == "external" else None}
    out.update(out.pop("after", lambda: {})())
    client.close()
    if cluster is not None:
        cluster.close()
    return out


# ----------------------------------------------------------------------------------------------------
# driver
# ----------------------------------------------------------------------------------------------------
def worker_env(threads: int) -> dict:
    """Environment of worker processes: OpenMP and numba use ``threads`` threads, as the dask worker does."""
    return {"OMP_NUM_THREADS": str(threads), "NUMBA_NUM_THREADS": str(threads)}


def machine_memory() -> int:
    """Physical memory of this machine, bytes (``MemTotal``)."""
    with open("/proc/meminfo") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemTotal"))


class ExternalCluster:
    """``dask scheduler`` + ``n`` x ``dask worker --nworkers 1`` on 127.0.0.1, for the ``with`` block."""

    def __init__(self, workdir: Path, n: int, threads: int, memory_limit: int) -> None:
        self.workdir, self.n, self.threads, self.memory_limit = workdir, n, threads, memory_limit
        self.procs: list[subprocess.Popen] = []
        self.address = ""

    def __enter__(self) -> "ExternalCluster":
        dask_cli = Path(sys.executable).with_name("dask")
        dask_cli = str(dask_cli) if dask_cli.exists() else shutil.which("dask")
        sched_file = self.workdir / "scale_scheduler.json"
        sched_file.unlink(missing_ok=True)
        log = open(self.workdir / "scale_cluster.log", "w")
        try:
            self.procs.append(subprocess.Popen(
                [dask_cli, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                 "--scheduler-file", str(sched_file)], stdout=log, stderr=log))
            deadline = time.time() + 120
            while not sched_file.exists() or not sched_file.stat().st_size:
                if time.time() > deadline or self.procs[0].poll() is not None:
                    log.flush()
                    tail = Path(log.name).read_text().strip().splitlines()[-5:]
                    raise RuntimeError("dask scheduler did not start:\n" + "\n".join(tail))
                time.sleep(0.2)
            time.sleep(0.2)  # the file is written in one go, but give it a moment to be complete
            self.address = json.loads(sched_file.read_text())["address"]
            env = dict(os.environ, **worker_env(self.threads))
            for i in range(self.n):
                self.procs.append(subprocess.Popen(
                    [dask_cli, "worker", self.address, "--nworkers", "1", "--nthreads", str(self.threads),
                     "--host", "127.0.0.1", "--no-dashboard", "--memory-limit", str(self.memory_limit),
                     "--name", f"bench-worker-{i}", "--local-directory", str(self.workdir / "scale_dask")],
                    stdout=log, stderr=log, env=env))
        except BaseException:
            self.__exit__()
            raise
        finally:
            log.close()
        return self

    def __exit__(self, *exc) -> None:
        for p in reversed(self.procs):  # workers first, the scheduler last
            p.terminate()
        for p in reversed(self.procs):
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.procs.clear()


def child(args: argparse.Namespace, *child_args: str, env: dict) -> dict:
    """A child of this script; ``{"error": ...}`` if it fails or runs past ``--timeout``."""
    try:
        return run_child(__file__, *child_args, timeout=args.timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {args.timeout:.0f} s"}


def chip_opts(args: argparse.Namespace) -> dict:
    """What defines the chip (its stamp: a kept store is reused only when these match)."""
    return {"bin": args.bin, "genes": args.genes, "seed": args.seed, "zero_fraction": args.zero_fraction}


def ensure_chip(args: argparse.Namespace, n: int) -> tuple[Path, dict]:
    """The ingested chip of ``n`` bins (made, or reused when its stamp matches); its ingest record."""
    store = args.workdir / f"scale_{n}.zarr"
    stamp = store.with_suffix(".json")
    opts = chip_opts(args)
    if store.exists() and stamp.exists():
        rec = json.loads(stamp.read_text())
        if rec.get("opts") == opts:
            return store, {**rec["result"], "reused": True}
    shutil.rmtree(store, ignore_errors=True)
    res = child(args, "ingest", str(store), str(n), json.dumps(opts), env=thread_env(args.threads))
    if "error" not in res:
        stamp.write_text(json.dumps({"opts": opts, "result": res}))
    print(f"[scale] {n:,} bins: ingest {res}", file=sys.stderr, flush=True)
    return store, res


def run_mode(args: argparse.Namespace, n: int, mode: str, chip: Path, address: str) -> list[tuple[str, dict]]:
    """The selected steps (and missing prerequisites) on ``mode``'s copy of the chip; (step, result) rows."""
    work = args.workdir / f"scale_{n}_{mode}.zarr"
    state = work.with_suffix(".json")
    selected = [s for s in STEPS if s in args.steps and s != "ingest"]
    # a kept copy (--keep) is reused: selected steps run again (replacing their results), missing
    # prerequisites run first; otherwise the steps write into a fresh copy of the chip
    done: list[str] = json.loads(state.read_text()) if work.exists() and state.exists() else []
    if not done:
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(chip, work)
        done = ["ingest"]
    opts = {"workers": args.workers, "worker_threads": args.worker_threads, "threads": args.threads,
            "memory_limit": machine_memory() // args.workers, "address": address}
    env = thread_env(args.threads)
    rows: list[tuple[str, dict]] = []

    def run(step: str, prerequisite: bool) -> bool:
        for dep in DEPS[step]:
            if dep not in done and not run(dep, True):
                return False
        res = child(args, "step", step, str(work), mode, json.dumps(opts), env=env)
        rows.append((step + (" (prerequisite)" if prerequisite else ""), res))
        print(f"[scale] {n:,} bins, {mode}: {step} {res}", file=sys.stderr, flush=True)
        if "error" in res:
            return False
        done.append(step)
        state.write_text(json.dumps(done))
        return True

    for step in selected:
        if not run(step, False):
            break
    return rows


def gib(b: float | None) -> str:
    """Bytes as GiB with two decimals; ``-`` for none."""
    return "-" if b is None else f"{b / GIB:.2f}"


def print_table(results: list[tuple[str, int, dict, list[tuple[str, dict]]]], args: argparse.Namespace) -> None:
    """One Markdown table: a row per (mode, size, step), then a total row per (mode, size)."""
    print(f"\nstdask scale bench: synthetic Stereo-seq chip, bin{args.bin}, {args.genes:,} genes, zero fraction "
          f"{args.zero_fraction}; {os.cpu_count()} cores, {machine_memory() / GIB:.0f} GiB; process modes: "
          f"{args.workers} workers x {args.worker_threads} thread(s); peaks = VmHWM during the step\n")
    print("| mode | bins (obs) | step | wall s | write s | driver peak GiB | worker peaks GiB | scheduler peak GiB "
          "| tasks | notes |")
    print("| --- | ---: | --- | ---: | ---: | ---: | --- | ---: | ---: | --- |")
    for mode, n, ing, rows in results:
        if ing:
            note = (f"{ing.get('n_records', 0):,} records; labels {ing.get('labels_s', 0):.1f} s, "
                    f"{gib(ing.get('labels_peak'))} GiB" + ("; reused store" if ing.get("reused") else ""))
            print(f"| {mode} | {n:,} | ingest | {ing['ingest_s']:.1f} | - | {gib(ing['ingest_peak'])} | - | - | - "
                  f"| {note} |" if "error" not in ing else f"| {mode} | {n:,} | ingest | error: {ing['error']} |")
        total, peak, wpeak = 0.0, 0, 0
        for step, r in rows:
            if "error" in r:
                print(f"| {mode} | {n:,} | {step} | error: {r['error']} | | | | | | |")
                continue
            total, peak = total + r["wall_s"], max(peak, r["driver_peak"])
            workers = " / ".join(gib(b) for b in r["worker_peaks"]) if r["worker_peaks"] else "in driver"
            wpeak = max([wpeak] + (r["worker_peaks"] or []))
            notes = ", ".join(f"{k} {r[k]:.3f}" if isinstance(r[k], float) else f"{k} {r[k]}"
                              for k in ("target_sum", "n_edges", "n_lr", "n_sig", "n_tested", "n_domains", "ari")
                              if r.get(k) is not None)
            print(f"| {mode} | {n:,} | {step} | {r['wall_s']:.1f} | {r['write_s']:.1f} | {gib(r['driver_peak'])} "
                  f"| {workers} | {gib(r['scheduler_peak'])} | {r['tasks']:,} | {notes} |")
        if rows:
            print(f"| {mode} | {n:,} | **total** (steps above, ingest excluded) | **{total:.1f}** | | **{gib(peak)}** "
                  f"| **{gib(wpeak) if wpeak else '-'}** | | | |")
    print(f"\nbench process (this driver) peak RSS: {gib(hwm_bytes())} GiB")


#: what --compare requires identical, and what it shows alongside
REQUIRED = {"lr_summary": "lr", "lr_pvals": "lr", "cci_pvals": "cci", "labels": "spaseg"}
SHOWN = {"hvg": "hvg", "pcs": "pca", "n_edges": "spatial"}


def print_compare(results: list[tuple[str, int, dict, list[tuple[str, dict]]]]) -> bool:
    """Hashes of each result per mode; True when every required one is present and equal across modes."""
    modes = [m for m, *_ in results]
    per_mode = {m: {k: r.get(k) for step, r in rows if "error" not in r for k in {**REQUIRED, **SHOWN}
                    if k in r} for m, _, _, rows in results}
    print(f"\nSame chip ({results[0][1]:,} bins) on each mode: result hashes (SHA-1 prefixes)\n")
    print("| result | step | " + " | ".join(modes) + " | identical |")
    print("| --- | --- | " + " | ".join("---" for _ in modes) + " | --- |")
    ok = True
    for key, step in {**REQUIRED, **SHOWN}.items():
        vals = [per_mode[m].get(key) for m in modes]
        same = None not in vals and len(set(map(str, vals))) == 1
        if key in REQUIRED:
            ok &= same
        print(f"| {key}{'' if key in REQUIRED else ' (shown only)'} | {step} | " + " | ".join(map(str, vals))
              + f" | {'yes' if same else '**NO**'} |")
    print("\nper-worker peak RSS during the LR step (GiB): " + "; ".join(
        f"{m}: " + next((" / ".join(gib(b) for b in r["worker_peaks"]) if r.get("worker_peaks") else
                         f"in driver ({gib(r['driver_peak'])})" for s, r in rows if s == "lr" and "error" not in r),
                        "-") for m, _, _, rows in results))
    print("identical lr_summary, LR p-values, run_cci p-values and SpaSEG labels on every mode:",
          "yes" if ok else "NO")
    return ok


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(ap, timeout=6 * 3600)
    ap.set_defaults(threads=os.cpu_count() or 1)
    ap.add_argument("--sizes", type=float, nargs="+", default=[1e6, 3e6, 1e7], help="bins (observations)")
    ap.add_argument("--cluster", choices=MODES, default="embedded")
    ap.add_argument("--workers", type=int, default=2, help="worker processes of local / external")
    ap.add_argument("--worker-threads", type=int, default=1, help="threads per worker process")
    ap.add_argument("--steps", nargs="+", choices=STEPS, default=list(STEPS))
    ap.add_argument("--compare", action="store_true",
                    help="embedded, local and external at the first size; exit 1 unless results are identical")
    ap.add_argument("--keep", action="store_true", help="keep the stores in --workdir")
    ap.add_argument("--bin", type=int, default=20, help="bin side in DNB")
    ap.add_argument("--genes", type=int, default=2000)
    ap.add_argument("--zero-fraction", type=float, default=0.974, help="sets records per bin (~50 at 0.974)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.child:
        kind, store = args.child[0], Path(args.child[2] if args.child[0] == "step" else args.child[1])
        if kind == "ingest":
            out = child_ingest(store, int(args.child[2]), json.loads(args.child[3]))
        else:
            out = child_step(args.child[1], store, args.child[3], json.loads(args.child[4]))
        print(json.dumps(out))
        return
    args.workdir.mkdir(parents=True, exist_ok=True)
    sizes = [int(s) for s in args.sizes][:1 if args.compare else None]
    modes = list(MODES) if args.compare else [args.cluster]
    results = []
    external = None
    try:
        if "external" in modes:
            external = ExternalCluster(args.workdir, args.workers, args.worker_threads,
                                       machine_memory() // args.workers).__enter__()
        for n in sizes:
            chip, ing = ensure_chip(args, n)
            for i, mode in enumerate(modes):
                rows = [] if "error" in ing else run_mode(args, n, mode, chip, external.address if external else "")
                shown = i == 0 and ("ingest" in args.steps or not ing.get("reused"))  # measured now: shown
                results.append((mode, n, ing if shown else None, rows))
    finally:
        if external is not None:
            external.__exit__()
        if not args.keep:
            # the stores, their stamps, the cluster's files and the stores' lock folders (.scale_*.stdask)
            for p in [*args.workdir.glob("scale_*"), *args.workdir.glob(".scale_*")]:
                shutil.rmtree(p) if p.is_dir() else p.unlink()
    print_table(results, args)
    if args.compare and not print_compare(results):
        sys.exit(1)


if __name__ == "__main__":
    main()
