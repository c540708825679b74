"""Benchmark (acceptance): STAGUE mini-batch training against full batch on the same slice, ARI to the truth.

The spec's mini-batch acceptance: training on spatial blocks with a halo (``tl.stague(minibatch=True)``) ends
within 0.05 ARI of full-batch training, both well above k-means on PCA. Slices: Visium-like layered tissues
from :func:`stdask.datasets.synthetic_slice` (300 genes, planted ``domain`` column as the truth), the full
network (``STAGUEConfig`` defaults), ``lr=1e-3``, seed 1, one torch thread. Both modes run in this process
one after the other; the wall times are of ``tl.stague`` alone (the store is built first, not timed).

Cases (``--cases``):

* ``1500``: 1,500 spots, 5 domains, 80 epochs, ``batch_cells=600`` (the case the acceptance was set on:
  full batch about 60 s, mini-batch about 120 s here).
* ``700``: 700 spots, 4 domains, 50 epochs, ``batch_cells=300``: the case ``tests/test_stague.py`` runs.

Exits 1 when a case's ARI difference is over 0.05 or the full batch's ARI is not above 0.9.

Usage::

    python bench/stague_minibatch.py                 # both cases, about 4 minutes on 2 cores

The printed table is Markdown.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

#: name: (n_obs, n_domains, epochs, batch_cells)
CASES = {"1500": (1_500, 5, 80, 600), "700": (700, 4, 50, 300)}
TOLERANCE = 0.05
MIN_FULL_ARI = 0.9


def _store(n_obs: int, n_domains: int, path: Path):
    import stdask
    from stdask.datasets import synthetic_slice
    from stdask.io.memory import AnnDataSource

    adata = synthetic_slice(n_obs=n_obs, n_genes=300, layout="visium", seed=5, n_domains=n_domains,
                            domain_shape="layers", n_hotspots=0).to_anndata()
    src = AnnDataSource(adata, unit="um", spot_diameter=55.0)
    return stdask.read(stdask.ingest(src, path, progress=False))


def run_case(name: str, workdir: Path) -> dict:
    """Train both modes on case ``name``; their ARIs to the truth and wall seconds."""
    from stdask.tl.metrics import ari
    from stdask.tl.stague import stague

    n_obs, k, epochs, batch_cells = CASES[name]
    ds = _store(n_obs, k, workdir / f"case{name}.zarr")
    kw = dict(epochs=epochs, lr=1e-3, seed=1, threads=1, copy=True, progress=False)
    row = {"case": name, "n_obs": n_obs, "domains": k, "epochs": epochs, "batch_cells": batch_cells}
    for mode, minibatch in (("full", False), ("mini", True)):
        t = time.perf_counter()
        res = stague(ds, k, minibatch=minibatch, batch_cells=batch_cells, **kw)
        row[f"{mode}_s"] = time.perf_counter() - t
        row[f"{mode}_ari"] = ari(ds.obs["domain"], res.labels)
    row["ok"] = abs(row["full_ari"] - row["mini_ari"]) <= TOLERANCE and row["full_ari"] > MIN_FULL_ARI
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    a = ap.parse_args(argv)
    warnings.filterwarnings("ignore", category=FutureWarning)
    import stdask

    stdask.settings.progress = False
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in a.cases:
            rows.append(run_case(name, Path(tmp)))
    print("| case | spots | domains | epochs | batch_cells | full ARI | mini ARI | diff | full s | mini s | ok |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for r in rows:
        print(f"| {r['case']} | {r['n_obs']} | {r['domains']} | {r['epochs']} | {r['batch_cells']} | "
              f"{r['full_ari']:.3f} | {r['mini_ari']:.3f} | {abs(r['full_ari'] - r['mini_ari']):.3f} | "
              f"{r['full_s']:.1f} | {r['mini_s']:.1f} | {'yes' if r['ok'] else 'NO'} |")
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
