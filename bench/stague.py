"""Benchmark: STAGUE (``stdask.tl.stague``) scaling on CPU, 4,000 to 1,000,000 cells: wall time and peak RSS.

Data: synthetic single-cell slices (``stdask.datasets.synthetic_slice``: ``layout="cells"``, 500 genes,
7 irregular regions, 6 cell types, no LR hotspots), built once per size into ``--workdir`` by streaming the
generator into ``stdask.ingest`` (bounded memory); that build is timed separately. 500 genes keep the input
of 10^6 cells small; STAGUE's input is then every gene (no HVG step below 3,000 genes), counts normalised to
the median total and log1p, as the reference does.

Runs (each in its own child process, which reports its wall time and peak RSS, ``ru_maxrss``; torch and the
embedded dask use ``--threads`` cores):

* ``4k-full150``: 4,000 cells, full batch (below ``max_full_batch`` = 10,000), the reference's 150 epochs.
* ``4k-mb``, ``50k``, ``200k``, ``1m``: 4,000 / 50,000 / 200,000 / 1,000,000 cells, mini-batch training (forced at 4,000),
  ``--epochs`` (default 1) passes over all batches. Full convergence is 150 epochs; at 10^6 cells on 2 cores
  that is many hours, so these rows measure the per-epoch cost, which must grow linearly with the cells.

Phases (wall seconds, from timers wrapped around ``tl.stague``'s steps in the child):
``input`` (the lazy normalised input made and spilled to a memory-mapped CSR), ``graph`` (anchor kNN,
``d_cut``, candidate pairs), ``setup`` (mini-batch: the union graph and the spatial batches; full batch: the
dense input rows), ``train`` (the epochs), ``predict`` (eval-mode embedding and learned graph,
batch by batch; inside the last epoch in full batch mode), ``cluster`` (k-means; mini-batch k-means above
200,000 cells), ``write`` (``ds.write()``: labels, embedding and both sparse learned graphs into the store).

The reference's dense need: spec ``stague.md`` §11 lists N x N float32 matrices for distances, cosine
similarity, spatial decay and the mask, plus the N x N NT-Xent similarity of every epoch: 5 matrices,
``5 x 4 N^2`` bytes (one matrix: 64 MB at 4k, 10 GB at 50k, 4 TB at 10^6).

Usage::

    python bench/stague.py                                   # 4k-full150, 4k-mb, 50k (about 10 min)
    python bench/stague.py --runs 1m --epochs 1              # the 10^6-cell row (see the module's notes)
    python bench/stague.py --runs 50k --profile              # cProfile of the 50k run's top functions

The printed table is Markdown.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from benchproc import add_common_args, peak_mib, run_child, thread_env

N_GENES = 500
#: name: (n_obs, epochs or None for --epochs, minibatch)
RUNS = {
    "4k-full150": (4_000, 150, False),
    "4k-mb": (4_000, None, True),
    "50k": (50_000, None, None),
    "200k": (200_000, None, None),
    "1m": (1_000_000, None, None),
}
DEFAULT_RUNS = ("4k-full150", "4k-mb", "50k")
#: N x N float32 matrices of the reference's dense path (spec §11: distances, cosine, decay, mask, NT-Xent sim)
DENSE_MATRICES = 5
N_DOMAINS = 7


def _slice(n_obs: int):
    from stdask.datasets import synthetic_slice

    return synthetic_slice(n_obs=n_obs, n_genes=N_GENES, layout="cells", n_domains=N_DOMAINS,
                           domain_shape="regions", n_hotspots=0, seed=3)


# ----------------------------------------------------------------------------------------------------
# children (each prints one JSON line)
# ----------------------------------------------------------------------------------------------------
def child_make(n_obs: int, store: Path) -> dict:
    import stdask
    from stdask.datasets import SyntheticSource

    t = time.perf_counter()
    if not store.exists():
        src = SyntheticSource(_slice(n_obs), obs_columns=("domain",), chunk_size=50_000)
        stdask.ingest(src, store, progress=False)
    ds = stdask.read(store)
    return {"build_s": time.perf_counter() - t, "n_obs": ds.n_obs, "n_vars": ds.n_vars,
            "nnz": int(ds.store.table["X"]["indptr"][-1]), "peak_mib": peak_mib()}


def _timed(module, name: str, phases: dict, phase: str) -> None:
    """Wrap ``module.name`` so its wall time adds to ``phases[phase]`` (a class is wrapped as its constructor)."""
    inner = getattr(module, name)

    def wrapper(*args, **kwargs):
        t = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            phases[phase] = phases.get(phase, 0.0) + time.perf_counter() - t

    setattr(module, name, wrapper)


def child_run(n_obs: int, store: Path, epochs: int, minibatch: bool | None, threads: int) -> dict:
    import stdask
    from stdask.models.stague import minibatch as mb
    from stdask.tl.metrics import ari
    # a from-import: ``import stdask.tl.stague.run`` fails, stdask.tl's attribute ``stague`` is the function
    from stdask.tl.stague import run

    stdask.settings.progress = False
    phases: dict[str, float] = {}
    # the bench reads tl.stague's steps by their module names; a renamed step simply drops out of the split
    for mod, name, phase in ((run, "model_input", "input"), (run, "SpilledRows", "input"),
                             (run, "spatial_inputs", "graph"), (run, "_train", "train+predict"),
                             (mb, "_predict", "predict"), (run, "_labels", "cluster")):
        if hasattr(mod, name):
            _timed(mod, name, phases, phase)
    t0 = time.perf_counter()
    ds = stdask.read(store)
    res = run.stague(ds, N_DOMAINS, epochs=epochs, seed=0, minibatch=minibatch, threads=threads, progress=False)
    t_fit = time.perf_counter()
    ds.write()
    phases["write"] = time.perf_counter() - t_fit
    total = time.perf_counter() - t0
    # fit's own clock (seconds_training) covers the epochs and the prediction; the rest of _train is setup
    # (mini-batch: the union graph and the spatial batches; full: the dense input rows)
    phases["setup"] = phases.pop("train+predict", 0.0) - res.info["seconds_training"]
    phases["train"] = res.info["seconds_training"] - phases.get("predict", 0.0)
    truth = stdask.read(store).obs["domain"]
    return {"total_s": total, "phases": phases, "mode": res.info["mode"], "epochs": epochs,
            "seconds_training": res.info["seconds_training"], "seconds_total": res.info["seconds_total"],
            "n_learned_edges": res.info["n_learned_edges"], "ARI": ari(truth, res.labels),
            "clustering": res.info["clustering"].get("estimator"), "peak_mib": peak_mib()}


# ----------------------------------------------------------------------------------------------------
# driver
# ----------------------------------------------------------------------------------------------------
def _dense(n: int) -> str:
    b = 4.0 * n * n
    unit = next((u, s) for u, s in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6)) if b >= s or u == "MB")
    return f"{b / unit[1]:.3g} {unit[0]} ({DENSE_MATRICES * b / unit[1]:.3g} {unit[0]})"


def _print_table(rows: list, threads: int, wall: float) -> None:
    print()
    print(f"STAGUE end to end on CPU ({threads} threads), synthetic single-cell slices ({N_GENES} genes, "
          f"{N_DOMAINS} regions), seed 0, reference defaults; script wall {wall / 60:.1f} min")
    print()
    print("| run | cells | mode | epochs | input (s) | graph (s) | setup (s) | train (s) | s / epoch "
          "| s / epoch / 1k cells | predict (s) | cluster (s) | write (s) | total (s) | peak RSS (GiB) "
          f"| reference dense, 1 matrix ({DENSE_MATRICES}) | ARI | store build (s) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, n, made, r in rows:
        if "error" in r:
            print(f"| {name} | {n:,} | error: {r['error']} |")
            continue
        p = r["phases"]
        per = p["train"] / r["epochs"]
        print(f"| {name} | {n:,} | {r['mode']} | {r['epochs']} | {p.get('input', 0):.1f} | {p.get('graph', 0):.1f} | "
              f"{p['setup']:.1f} | {p['train']:.1f} | {per:.2f} | {per / (n / 1000):.3f} | {p.get('predict', 0):.1f} | "
              f"{p.get('cluster', 0):.1f} | {p['write']:.1f} | {r['total_s']:.1f} | {r['peak_mib'] / 1024:.2f} | "
              f"{_dense(n)} | {r['ARI']:.3f} | {made.get('build_s', 0):.1f} |")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", nargs="+", default=list(DEFAULT_RUNS), choices=list(RUNS))
    ap.add_argument("--epochs", type=int, default=1, help="epochs of the per-epoch runs (4k-mb, 50k, 200k, 1m)")
    ap.add_argument("--profile", action="store_true", help="cProfile each run; print its top 25 functions")
    add_common_args(ap, timeout=4 * 3600)
    a = ap.parse_args(argv)
    if a.child:
        if a.child[0] == "make":
            out = child_make(int(a.child[1]), Path(a.child[2]))
        else:
            mbatch = {"None": None, "True": True, "False": False}[a.child[4]]
            out = child_run(int(a.child[1]), Path(a.child[2]), int(a.child[3]), mbatch, int(a.child[5]))
        print(json.dumps(out))
        return
    t0 = time.perf_counter()
    a.workdir.mkdir(parents=True, exist_ok=True)
    env = thread_env(a.threads)
    rows = []
    for name in a.runs:
        n, epochs, minibatch = RUNS[name]
        epochs = epochs or a.epochs
        store = a.workdir / f"stague_cells_{n}.zarr"
        made = run_child(__file__, "make", str(n), str(store), timeout=a.timeout, env=env)
        print(f"[bench] {name}: store {made}", flush=True)
        prof = a.workdir / f"stague_{name}.prof" if a.profile else None
        r = run_child(__file__, "run", str(n), str(store), str(epochs), str(minibatch), str(a.threads),
                      timeout=a.timeout, env=env, python_args=("-m", "cProfile", "-o", str(prof)) if prof else ())
        print(f"[bench] {name}: {r}", flush=True)
        if prof and prof.exists():
            import pstats

            pstats.Stats(str(prof)).sort_stats("cumulative").print_stats(25)
        rows.append((name, n, made, r))
    _print_table(rows, a.threads, time.perf_counter() - t0)


if __name__ == "__main__":
    main()
