"""``stdask preprocess STORE``: normalize -> log1p -> HVG -> PCA -> kNN -> leiden (+ spatial graph), results
written to the store."""
from __future__ import annotations

import argparse
import time


def add_parser(sub, parents: list[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Add ``preprocess`` to the sub-commands."""
    pp_ = sub.add_parser("preprocess", parents=parents,
                         help="normalize -> log1p -> HVG -> PCA -> kNN -> leiden -> spatial graph")
    pp_.add_argument("store")
    pp_.add_argument("--target-sum", type=float, default=None, help="normalize_total target (default: median)")
    pp_.add_argument("--n-top-genes", type=int, default=2000, help="highly variable genes (0 = use all genes)")
    pp_.add_argument("--hvg-flavor", default="seurat", choices=["seurat", "cell_ranger", "seurat_v3"])
    pp_.add_argument("--n-comps", type=int, default=50)
    pp_.add_argument("--n-neighbors", type=int, default=15, help="kNN in PCA space (0 = skip kNN and leiden)")
    pp_.add_argument("--no-leiden", dest="leiden", action="store_false")
    pp_.add_argument("--resolution", type=float, default=1.0)
    pp_.add_argument("--spatial-distance", type=float, default=None,
                     help="spatial graph radius in store units (default: 2 x spot diameter when known, else skipped)")
    pp_.set_defaults(func=run)
    return pp_


def run(args: argparse.Namespace) -> int:
    """normalize_total -> log1p -> HVG -> PCA -> kNN -> leiden (+ spatial graph), results written to the store."""
    from .. import pp
    from ..dataset import read
    from ..gr import spatial_neighbors

    ds = read(args.store)
    steps = []

    def done(name: str, t0: float) -> None:
        steps.append((name, time.perf_counter() - t0))
        print(f"[preprocess] {name}: {steps[-1][1]:.1f} s", flush=True)

    t0 = time.perf_counter()
    pp.normalize_total(ds, target_sum=args.target_sum)
    done("normalize_total -> layers['normalized']", t0)
    t0 = time.perf_counter()
    pp.log1p(ds)
    done("log1p -> layers['log1p']", t0)
    if args.n_top_genes:
        t0 = time.perf_counter()
        pp.highly_variable_genes(ds, n_top_genes=args.n_top_genes, flavor=args.hvg_flavor,
                                 layer="X" if args.hvg_flavor == "seurat_v3" else "log1p")
        done(f"highly_variable_genes ({args.hvg_flavor}, {args.n_top_genes})", t0)
    t0 = time.perf_counter()
    pp.pca(ds, n_comps=args.n_comps)
    done(f"pca ({args.n_comps}) -> obsm['X_pca']", t0)
    if args.n_neighbors:
        t0 = time.perf_counter()
        pp.neighbors(ds, n_neighbors=args.n_neighbors)
        done(f"neighbors (k={args.n_neighbors})", t0)
        if args.leiden:
            t0 = time.perf_counter()
            pp.leiden(ds, resolution=args.resolution)
            done("leiden -> obs['leiden']", t0)
    if args.spatial_distance is not None or ds.spot_diameter is not None:
        t0 = time.perf_counter()
        spatial_neighbors(ds, distance=args.spatial_distance)
        done("spatial_neighbors -> obsp['spatial_connectivities']", t0)
    t0 = time.perf_counter()
    ds.write()
    done(f"write results into {args.store}", t0)
    return 0
