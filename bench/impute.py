"""Benchmark: stImpute (``stdask.tl.impute_cv`` and ``stdask.tl.impute``) at the paper's Xenium-tonsil scale on CPU.

Cases (``--sizes``): 100,000, 400,000 and 1,349,620 spatial cells (the paper's Xenium tonsil) x a 377-gene panel,
and a 26,717-cell scRNA-seq reference over the 377 shared genes plus 2,000 unmeasured ones. Synthetic, from one
latent model (:mod:`stdask.datasets.paired`: gene programs, cell states, a platform effect between the
modalities), so imputing the unmeasured genes from the reference is meaningful: the model is drawn once per size
(:func:`~stdask.datasets.paired.paired_model`, seed 0); the spatial panel counts are generated a chunk of cells
at a time (:func:`~stdask.datasets.paired.spatial_panel_chunks`, never the all-gene truth) and streamed into a
store by ``stdask.ingest`` through a small :class:`~stdask.io.base.Source`; the reference
(:func:`~stdask.datasets.paired.paired_reference`, which does not depend on the spatial size) is written once as
h5ad. Both are cached in ``--workdir``; generation and store build are timed apart and are not measured steps.
The panel's counts cost the truth's draws (cells x 2,377 genes: a few minutes at 1.35M cells on 2 cores).

Measured steps (``--steps``), each in its own child process (wall time, peak RSS ``ru_maxrss``; torch, OpenMP and
numba on ``--threads`` cores):

* ``cv``: ``impute_cv(ds, reference, folds=5)``, the paper's 5-fold CV over the shared genes (five models, each
  predicting its held-out genes for every cell), with its summary (median gene-wise cosine, top-50%-reliable
  genes' median cosine) and the kNN-average baseline's median cosine from the same call.
* ``impute``: ``impute(ds, reference, genes=<the 2,000 unmeasured genes>)``, the full imputation streamed into
  the store's ``tables/imputed`` (cells x 2,000 float32: 10.8 GB before compression at 1.35M cells; a rerun
  replaces it).

Targets (issue 15): time linear in the cells (``s / 10^5 cells`` flat across sizes; the ``x smallest`` column is
that figure over the smallest size's), peak RSS under 4 GiB, and well under the paper's 961 min and 13.8 GB
for the 1.35M-cell case (i7-8700K, 256 GB RAM, 2 x RTX 4090; spec ``stimpute.md``).

Usage::

    python bench/impute.py --quick                                  # 3,000 cells, smoke run
    python bench/impute.py                                          # 100k, 400k, 1.35M; both steps (hours)
    python bench/impute.py --sizes 100000 --steps impute --train-cells 10000

The printed table is Markdown.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

from benchproc import add_common_args, peak_mib, run_child, thread_env

SIZES = (100_000, 400_000, 1_349_620)
N_REFERENCE = 26_717
N_PANEL = 377
N_UNMEASURED = 2_000
#: --quick: spatial cells, reference cells, panel genes, unmeasured genes
QUICK = (3_000, 1_000, 100, 200)
SEED = 0
FOLDS = 5
STEPS = ("cv", "impute")
#: cells per generated chunk of panel counts (the ingest's streaming unit)
CHUNK = 100_000
TARGET_GIB = 4.0
PAPER_CELLS, PAPER_MIN, PAPER_GB = 1_349_620, 961.0, 13.8


def _reference_path(workdir: Path, n_ref: int, n_panel: int, n_genes: int) -> Path:
    return workdir / f"reference_{n_ref}x{n_genes}_p{n_panel}_s{SEED}.h5ad"


def _store_path(workdir: Path, n: int, n_panel: int, n_genes: int) -> Path:
    return workdir / f"spatial_{n}_p{n_panel}_g{n_genes}_s{SEED}.zarr"


# ----------------------------------------------------------------------------------------------------
# children (each prints one JSON line)
# ----------------------------------------------------------------------------------------------------
def _panel_source(model, chunk: int):
    """A ``stdask.ingest`` source of the model's spatial panel: obs and coordinates up front, counts generated
    chunk by chunk as the ingest pulls them; ``source.generate_s`` accumulates the generation time."""
    import numpy as np
    import pandas as pd

    from stdask.datasets.paired import spatial_obs, spatial_panel_chunks
    from stdask.io.base import EntryChunk, TableSource

    class PanelSource(TableSource):
        format_name = "paired-panel"

        def __init__(self) -> None:
            self.path, self.options, self.generate_s = Path("<paired-panel>"), {}, 0.0
            self._obs, self._coords = spatial_obs(model), model.coords

        @property
        def var(self) -> pd.DataFrame:
            return pd.DataFrame(index=pd.Index(model.genes[model.panel_idx], name="gene"))

        @property
        def spot_diameter(self) -> float:
            return 10.0  # the "cells" layout's lattice pitch, um

        def iter_entries(self, chunk_size: int = 2_000_000):
            chunks = spatial_panel_chunks(model, chunk)
            while True:
                t = time.perf_counter()
                item = next(chunks, None)
                self.generate_s += time.perf_counter() - t
                if item is None:
                    return
                start, x = item
                coo = x.tocoo()
                yield EntryChunk(coo.row.astype(np.int64) + start, coo.col.astype(np.int32),
                                 coo.data.astype(np.uint32))

    return PanelSource()


def child_make(n: int, n_ref: int, n_panel: int, n_unmeasured: int, workdir: Path) -> dict:
    """Build (or find) the reference h5ad and the spatial store of one size; their timings, apart."""
    import stdask
    from stdask.datasets.paired import paired_model, paired_reference

    n_genes = n_panel + n_unmeasured
    ref_path, store = _reference_path(workdir, n_ref, n_panel, n_genes), _store_path(workdir, n, n_panel, n_genes)
    info_path = store.with_suffix(".json")
    if store.exists() and ref_path.exists() and info_path.exists():
        return {**json.loads(info_path.read_text()), "cached": True, "peak_mib": peak_mib()}
    t = time.perf_counter()
    model = paired_model(n, n_ref, n_genes, n_panel, seed=SEED)
    out = {"model_s": time.perf_counter() - t}
    if not ref_path.exists():
        t = time.perf_counter()
        tmp = ref_path.with_name(ref_path.name + ".tmp.h5ad")
        paired_reference(model).write_h5ad(tmp)
        tmp.rename(ref_path)  # atomic: a killed build leaves no half reference under the cached name
        out["reference_s"] = time.perf_counter() - t
    src = _panel_source(model, CHUNK)
    t = time.perf_counter()
    stdask.ingest(src, store, overwrite=True, progress=False)
    total = time.perf_counter() - t
    ds = stdask.read(store)
    out.update(generate_s=src.generate_s, store_s=total - src.generate_s, n_obs=ds.n_obs, n_vars=ds.n_vars,
               nnz=int(ds.store.table["X"]["indptr"][-1]))
    info_path.write_text(json.dumps(out))
    return {**out, "cached": False, "peak_mib": peak_mib()}


def child_cv(store: Path, reference: Path, train_cells: int | None, threads: int) -> dict:
    import stdask

    stdask.settings.progress = False
    t = time.perf_counter()
    res = stdask.tl.impute_cv(stdask.read(store), str(reference), folds=FOLDS, seed=0, train_cells=train_cells,
                              threads=threads, progress=False)
    wall = time.perf_counter() - t
    s = res.summary
    folds = res.info["fold_info"]
    return {"wall_s": wall, "peak_mib": peak_mib(), "gene_cosine": float(s.loc["gene_cosine", "median"]),
            "knn_gene_cosine": float(s.loc["gene_cosine", "knn_median"]),
            "top50_cosine": float(s.loc["top50_cosine", "median"]),
            "cell_cosine": float(s.loc["cell_cosine", "median"]),
            "knn_cell_cosine": float(s.loc["cell_cosine", "knn_median"]),
            "train_s": sum(f["seconds_train"] for f in folds), "predict_s": sum(f["seconds_predict"] for f in folds),
            "n_train_cells": folds[0]["n_train_cells"], "neighbours": folds[0]["neighbour_method"]}


def child_impute(store: Path, reference: Path, train_cells: int | None, threads: int) -> dict:
    import anndata as ad

    import stdask

    stdask.settings.progress = False
    ds = stdask.read(store)
    panel = set(map(str, ds.var_names))
    # only the gene names (backed mode leaves X on disk): not part of the measured step
    ref_genes = [str(g) for g in ad.read_h5ad(reference, backed="r").var_names]
    genes = [g for g in ref_genes if g not in panel]
    t = time.perf_counter()
    out = stdask.tl.impute(ds, str(reference), genes=genes, train_cells=train_cells, threads=threads,
                           progress=False)
    wall = time.perf_counter() - t
    prov = out.get_result("uns", "stimpute")
    seconds = prov.get("seconds", {})
    return {"wall_s": wall, "peak_mib": peak_mib(), "n_imputed": int(out.n_vars), "n_obs": int(out.n_obs),
            "train_s": seconds.get("train"), "predict_s": seconds.get("predict"),
            "n_train_cells": prov.get("n_train_cells"), "neighbours": prov.get("neighbour_method")}


# ----------------------------------------------------------------------------------------------------
# driver
# ----------------------------------------------------------------------------------------------------
def _note(step: str, r: dict) -> str:
    """The table's last column: quality (cv) and the split of the wall time."""
    split = f"train {r['train_s']:.0f} s, predict {r['predict_s']:.0f} s" if r.get("train_s") is not None else ""
    split += f"; {r['n_train_cells']:,} training cells, {r['neighbours']} kNN" if r.get("n_train_cells") else ""
    if step == "cv":
        return (f"median gene cosine {r['gene_cosine']:.3f} (kNN {r['knn_gene_cosine']:.3f}), top-50% reliable "
                f"{r['top50_cosine']:.3f}, median cell cosine {r['cell_cosine']:.3f} (kNN {r['knn_cell_cosine']:.3f}); "
                + split)
    return f"{r['n_imputed']:,} genes imputed; " + split


def _print_table(rows: list, made: dict, a: argparse.Namespace, shape: tuple, wall: float) -> None:
    n_ref, n_panel, n_unmeasured = shape
    print()
    print(f"stImpute on CPU ({a.threads} threads), synthetic paired data (seed {SEED}): spatial cells x {n_panel} "
          f"panel genes, a {n_ref:,}-cell reference x ({n_panel} shared + {n_unmeasured:,} unmeasured) genes; "
          f"training cells {a.train_cells or 'default'}; script wall {wall / 60:.1f} min")
    print()
    print("| cells | generate (s) | store build (s) |")
    print("|---|---|---|")
    for n, m in made.items():
        if "error" in m:
            print(f"| {n:,} | error: {m['error']} | |")
        else:
            print(f"| {n:,} | {m['model_s'] + m['generate_s']:.1f} | {m['store_s']:.1f}"
                  f"{' (cached)' if m.get('cached') else ''} |")
    print()
    print(f"| cells | step | wall (s) | s / 10^5 cells | x smallest | peak RSS (GiB) | < {TARGET_GIB:g} GiB "
          f"| paper, {PAPER_CELLS:,} cells: {PAPER_MIN:g} min, {PAPER_GB:g} GB | notes |")
    print("|---|---|---|---|---|---|---|---|---|")
    first: dict[str, float] = {}
    for n, step, r in rows:
        if "error" in r:
            print(f"| {n:,} | {step} | error: {r['error']} | | | | | | |")
            continue
        per = r["wall_s"] / (n / 1e5)
        first.setdefault(step, per)
        gib = r["peak_mib"] / 1024
        paper = ""
        if n == PAPER_CELLS:
            paper = f"{PAPER_MIN * 60 / r['wall_s']:.1f}x faster, {PAPER_GB * 1e9 / (gib * 2 ** 30):.1f}x less memory"
        print(f"| {n:,} | {step} | {r['wall_s']:.1f} | {per:.1f} | {per / first[step]:.2f} | {gib:.2f} | "
              f"{'yes' if gib < TARGET_GIB else 'NO'} | {paper} | {_note(step, r)} |")


def _run(a: argparse.Namespace, env: dict, *args) -> dict:
    """One child process's JSON, or ``{"error": ...}`` when it fails or runs past ``--timeout``."""
    try:
        return run_child(__file__, *map(str, args), timeout=a.timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"ran past --timeout {a.timeout:g} s"}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", nargs="+", type=int, default=list(SIZES), help="spatial cells per case")
    ap.add_argument("--steps", nargs="+", default=list(STEPS), choices=STEPS)
    ap.add_argument("--train-cells", type=int, default=None,
                    help="spatial cells the models train on (default: the library's, 20,000 or fewer)")
    ap.add_argument("--quick", action="store_true",
                    help=f"smoke run: {QUICK[0]:,} cells, {QUICK[1]:,}-cell reference, {QUICK[2]} + {QUICK[3]} genes")
    add_common_args(ap, timeout=12 * 3600)
    a = ap.parse_args(argv)
    if a.child:
        kind, args = a.child[0], a.child[1:]
        if kind == "make":
            out = child_make(*map(int, args[:4]), Path(args[4]))
        else:
            train = None if args[2] == "None" else int(args[2])
            out = (child_cv if kind == "cv" else child_impute)(Path(args[0]), Path(args[1]), train, int(args[3]))
        print(json.dumps(out))
        return
    shape = (N_REFERENCE, N_PANEL, N_UNMEASURED)
    if a.quick:
        a.sizes, shape = [QUICK[0]], QUICK[1:]
    t0 = time.perf_counter()
    a.workdir.mkdir(parents=True, exist_ok=True)
    env = thread_env(a.threads)
    n_ref, n_panel, n_unmeasured = shape
    ref = _reference_path(a.workdir, n_ref, n_panel, n_panel + n_unmeasured)
    made, rows = {}, []
    for n in a.sizes:
        made[n] = _run(a, env, "make", n, n_ref, n_panel, n_unmeasured, a.workdir)
        print(f"[bench] {n:,} cells: inputs {made[n]}", flush=True)
        if "error" in made[n]:
            continue
        store = _store_path(a.workdir, n, n_panel, n_panel + n_unmeasured)
        for step in a.steps:
            r = _run(a, env, step, store, ref, a.train_cells, a.threads)
            print(f"[bench] {n:,} cells, {step}: {r}", flush=True)
            rows.append((n, step, r))
    _print_table(rows, made, a, shape, time.perf_counter() - t0)


if __name__ == "__main__":
    main()
