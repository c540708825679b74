"""``stdask demo``: synthetic slice -> native files -> ingest -> analyses -> a results folder.

The demo runs end to end on the embedded default (no configuration): it writes the input files users
bring (a bin1 Stereo-seq GEM, a 10x MTX folder with SeekSpace ``cell_locations.tsv``, an stLearn-style
h5ad), ingests each into a tiled store, checks that every count arrived, runs the analyses stdask has, and
writes figures and tables with a README saying what each file shows.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from ..cluster import compute
from ..dataset import read
from ..datasets import SyntheticSlice, synthetic_slice, write_gem, write_h5ad, write_mtx
from ..gr import spatial_neighbors
from ..io.ingest import ingest
from ..tl import cci
from .cci import cci_report
from .info import store_info

__all__ = ["run_demo"]


def _spatial_png(ds, values, title: str, path: Path, categorical: bool = False) -> None:
    """A rasterised scatter of one per-observation value (fast for millions of points)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = ds.coords
    fig, ax = plt.subplots(figsize=(6, 6), dpi=120)
    size = max(0.5, 2e4 / max(1, ds.n_obs))
    if categorical:
        cat = pd.Categorical(values)
        cmap = plt.get_cmap("tab20", max(1, len(cat.categories)))
        sc = ax.scatter(c[:, 0], c[:, 1], c=cat.codes, cmap=cmap, s=size, rasterized=True, linewidths=0)
        handles = [plt.Line2D([], [], marker="o", ls="", color=cmap(i), label=str(k))
                   for i, k in enumerate(cat.categories)]
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1, 1), fontsize=7, frameon=False)
    else:
        sc = ax.scatter(c[:, 0], c[:, 1], c=np.asarray(values, dtype=float), cmap="viridis", s=size,
                        rasterized=True, linewidths=0)
        fig.colorbar(sc, ax=ax, shrink=0.7)
    ax.set_aspect("equal")
    ax.invert_yaxis()
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(f"x ({ds.unit})")
    ax.set_ylabel(f"y ({ds.unit})")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _row_sums(ds, layer: str | None = None, **compute_kw) -> np.ndarray:
    """(n_obs,) float64 row sums of ``X`` (or of ``layer``), computed tile by tile."""
    m = ds.X if layer is None else ds.matrix(layer)
    sums = m.map_blocks(lambda b: np.asarray(b.sum(axis=1)).reshape(-1, 1).astype(np.float64),
                        chunks=(m.chunks[0], (1,)), dtype=np.float64, meta=np.empty((0, 0)))
    (s,) = compute(sums, **compute_kw)
    return np.asarray(s).ravel()


def _attach_truth(ds, slice_, by: str) -> None:
    truth = pd.concat([obs[["x", "y", "domain", "cell_type", "hotspot"]] for obs, _ in slice_.iter_chunks()])
    if by == "barcode":
        truth = truth.loc[ds.obs_names]
    else:
        gen = np.lexsort((truth["x"].to_numpy(), truth["y"].to_numpy()))
        mine = np.lexsort((ds.coords[:, 0], ds.coords[:, 1]))
        if len(gen) != len(mine):
            raise RuntimeError("bins of the store and the generator differ in number")
        aligned = truth.iloc[gen]
        truth = aligned.iloc[np.argsort(mine)]
    for col in ("domain", "cell_type", "hotspot"):
        ds.set_result("obs", col, pd.Categorical(truth[col].to_numpy()))
    ds.write()


class _Log:
    """The demo's record: timed steps and checks (``run.json``) and the README's file list."""

    def __init__(self, n_obs: int, seed: int) -> None:
        self.run: dict = {"n_obs": n_obs, "seed": seed, "steps": []}
        self.readme = ["# stdask demo results", "",
                       f"Synthetic slices of {n_obs:,} observations (seed {seed}), written as native files, "
                       "ingested into tiled zarr stores and analysed. Files:", ""]

    def step(self, name: str, t0: float, **info) -> None:
        info.update(step=name, seconds=round(time.perf_counter() - t0, 2))
        self.run["steps"].append(info)
        print(f"[demo] {name}: {info['seconds']} s", flush=True)

    def file(self, line: str) -> None:
        self.readme.append(line)


def _inputs_and_stores(out: Path, n_obs: int, seed: int, log: _Log) -> dict[str, tuple[SyntheticSlice, Path]]:
    """Write the three native inputs, ingest each into a store, attach the planted truth; name -> (slice, store)."""
    inputs, stores = out / "inputs", out / "stores"
    for d in (inputs, stores):
        d.mkdir(parents=True, exist_ok=True)
    # 1. Stereo-seq: a bin1 GEM of a bin50 slice, ingested back to bin50
    t0 = time.perf_counter()
    stereo = synthetic_slice(n_obs=n_obs, n_genes=2000, layout="stereo", bin_size=50, seed=seed,
                             domain_shape="regions")
    gem = inputs / "stereo_bin1.gem.gz"
    info = write_gem(stereo, gem)
    log.step("write bin1 GEM", t0, records=int(info["n_records"]))
    t0 = time.perf_counter()
    bin50 = ingest(gem, stores / "stereo_bin50.zarr", bin_size=50, overwrite=True)
    log.step("ingest GEM -> bin50", t0)

    # 2. single cells: 10x MTX + cell_locations.tsv (SeekSpace style)
    t0 = time.perf_counter()
    cells = synthetic_slice(n_obs=n_obs, n_genes=2000, layout="cells", seed=seed + 1)
    write_mtx(cells, inputs / "cells_mtx")
    cells_store = ingest(inputs / "cells_mtx", stores / "cells.zarr", overwrite=True)
    log.step("write + ingest MTX", t0)

    # 3. Visium, stLearn-style h5ad
    t0 = time.perf_counter()
    visium = synthetic_slice(n_obs=min(n_obs, 5000), n_genes=2000, layout="visium", seed=seed + 2)
    # X = normalize_total counts without log1p (what the stLearn CCI tutorial feeds), raw counts in a layer
    write_h5ad(visium, inputs / "visium_stlearn.h5ad", style="stlearn", normalize=True)
    visium_store = ingest(inputs / "visium_stlearn.h5ad", stores / "visium.zarr", overwrite=True)
    log.step("write + ingest h5ad", t0)

    # attach the planted truth to the stores (GEM and MTX carry no labels): by barcode for cells, by the
    # bin's position for Stereo-seq bins (both slices list bins in the same (y, x) lattice order)
    _attach_truth(read(cells_store), cells, by="barcode")
    _attach_truth(read(bin50), stereo, by="position")
    return {"stereo_bin50": (stereo, bin50), "cells": (cells, cells_store), "visium": (visium, visium_store)}


def _check_counts(out: Path, slices: dict[str, tuple[SyntheticSlice, Path]], log: _Log) -> dict:
    """Every count arrived (store totals equal the generator's); info, count and domain maps of each store."""
    checks = {}
    for name, (sl, store) in slices.items():
        ds = read(store)
        gen_total = sum(int(c.sum()) for _, c in sl.iter_chunks())
        got = _row_sums(ds, desc="row sums")
        # X is normalised in the Visium h5ad; the raw counts are its 'counts' layer
        raw = _row_sums(ds, "counts", progress=False) if name == "visium" else got
        checks[name] = {"n_obs": ds.n_obs, "generator_total_counts": gen_total,
                        "store_total_counts": int(raw.sum())}
        inf = store_info(store)
        (out / f"info_{name}.json").write_text(json.dumps(inf, indent=2, default=str))
        log.file(f"- `info_{name}.json`: `stdask info` of `stores/{name}.zarr` (shape, nnz, tiles, memory).")
        _spatial_png(ds, np.log1p(got), f"{name}: log1p total counts per observation", out / f"{name}_counts.png")
        log.file(f"- `{name}_counts.png`: log1p total counts per observation over the tissue.")
        if "domain" in ds.obs:
            _spatial_png(ds, ds.obs["domain"], f"{name}: planted domains (ground truth)",
                         out / f"{name}_domains.png", categorical=True)
            log.file(f"- `{name}_domains.png`: the planted spatial domains (ground truth).")
    return checks


def _cci(out: Path, visium: SyntheticSlice, store: Path, seed: int, log: _Log) -> None:
    """LR hotspots (stLearn's method) and cell-type interactions on the Visium slice, with their files."""
    t0 = time.perf_counter()
    vds = read(store)
    res = cci.run(vds, cci.load_lrs(["connectomeDB2020_lit"]), min_spots=20, n_pairs=1000, seed=seed)
    vds.write()
    res.lr_summary.to_csv(out / "lr_summary.tsv", sep="\t", index_label="lr")
    log.step("LR hotspots (Visium, n_pairs=1000)", t0, valid_pairs=len(res.lr_summary))
    log.file("- `lr_summary.tsv`: LR pairs ranked by spots with significant hotspots (stLearn's method; "
             "n_spots_sig uses per-spot BH-adjusted p-values < 0.05).")
    planted = {f"{l}_{r}" for l, r in zip(visium.truth.lr_pairs["ligand"], visium.truth.lr_pairs["receptor"])}
    ranks = {lr: int(np.flatnonzero(res.lrs == lr)[0]) + 1 for lr in planted if lr in set(res.lrs)}
    log.run["planted_lr_ranks"] = ranks
    for lr in list(res.lrs[:3]) + sorted(ranks, key=ranks.get)[:2]:
        j = int(np.flatnonzero(res.lrs == lr)[0])
        vals = -np.log10(res.padj[:, j].toarray().ravel().clip(min=1e-300))
        vals[res.scores[:, j].toarray().ravel() == 0] = 0.0
        fn = f"hotspot_{lr}.png"
        tag = " (planted)" if lr in planted else ""
        _spatial_png(vds, vals, f"{lr}{tag}: -log10 adjusted p (rank {j + 1})", out / fn)
        log.file(f"- `{fn}`: -log10 per-spot adjusted p-value of {lr}{tag} (rank {j + 1}).")
    # cell-type interactions (stLearn's run_cci, 1,000 label permutations as the tutorial) and the report
    t0 = time.perf_counter()
    inter = cci.run_cci(vds, "cell_type", result=res, n_perms=1000, seed=seed)
    vds.write()
    log.step("cell-type interactions (run_cci, n_perms=1000)", t0, tested_lrs=len(inter.lrs))
    t0 = time.perf_counter()
    cci_report(vds, out / "cci_report", use_label="cell_type", overwrite=True, verbose=False)
    log.step("CCI report", t0)
    log.file("- `cci_report/`: the CCI result folder (`stdask report`): tables, stLearn's diagnostic and "
             "interaction plots, hotspot maps; its README.md says what each file shows.")


def run_demo(outdir: str | Path = "demo_results", n_obs: int = 20_000, seed: int = 0) -> Path:
    """Run the demo and return the results folder.

    Parameters
    ----------
    outdir
        Results folder (created; inputs and stores go in sub-folders).
    n_obs
        Observations of each synthetic slice.
    seed
        Seed of the synthetic data.
    """
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    log = _Log(n_obs, seed)
    slices = _inputs_and_stores(out, n_obs, seed, log)
    checks = _check_counts(out, slices, log)
    log.run["checks"] = checks

    # spatial neighbour graph of the bins (radius 1.5 x pitch: the 8 surrounding bins)
    t0 = time.perf_counter()
    ds = read(slices["stereo_bin50"][1])
    spatial_neighbors(ds, distance=1.5 * 50, progress=False)
    ds.write()
    log.step("spatial graph (bin50, radius 75 DNB)", t0)

    _cci(out, *slices["visium"], seed, log)
    (out / "run.json").write_text(json.dumps(log.run, indent=2, default=str))
    log.readme += ["- `run.json`: steps, timings and the count checks (generator vs store totals).",
                   "- `inputs/`: the native files (GEM, MTX + cell_locations.tsv, h5ad).",
                   "- `stores/`: the tiled zarr stores (open with `stdask.read`, `anndata.read_zarr`, "
                   "`spatialdata.read_zarr`)."]
    (out / "README.md").write_text("\n".join(log.readme) + "\n")
    for name, c in checks.items():
        ok = c["store_total_counts"] is None or c["store_total_counts"] == c["generator_total_counts"]
        print(f"[demo] {name}: {c['n_obs']:,} obs; counts preserved: {ok}")
    print(f"[demo] results in {out}/ (see README.md)")
    return out
