"""The ``stdask`` command line: ingest, info, preprocess, cci run, report, demo."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


def _cmd_ingest(args: argparse.Namespace) -> int:
    from .io.ingest import ingest

    options = {}
    if args.pixel_size is not None:
        options["pixel_size"] = args.pixel_size
    if args.spot_diameter is not None:
        options["spot_diameter"] = args.spot_diameter
    if args.scheduler:
        from .cluster import get_client

        get_client(args.scheduler)
    path = ingest(args.input, args.store, format=args.format, bin_size=args.bin, cellbin=args.cellbin,
                  tile_size=args.tile_size, overwrite=args.overwrite, chunk_size=args.chunk_size, **options)
    print(f"wrote {path}")
    return 0


def store_info(path: str | Path) -> dict:
    """Summary of a store: shape, nnz, tiles, units and the in-memory size of a few materialisations."""
    from .dataset import read

    ds = read(path)
    X = ds.store.table["X"]
    nnz = int(X["indptr"][-1])
    rows = np.diff(ds.tile_row_start)
    occ = rows[rows > 0]
    data_b = X["data"].dtype.itemsize
    disk = sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())
    return {
        "path": str(ds.path),
        "n_obs": ds.n_obs,
        "n_vars": ds.n_vars,
        "nnz": nnz,
        "density": nnz / max(1, ds.n_obs * ds.n_vars),
        "matrices": ds.store.matrix_names(),
        "unit": ds.unit,
        "spot_diameter": ds.spot_diameter,
        "tile_size": ds.tiling.tile_size,
        "tile_grid": (ds.tiling.ny, ds.tiling.nx),
        "tiles_occupied": int(len(occ)),
        "rows_per_tile": (int(occ.min()), int(np.median(occ)), int(occ.max())) if len(occ) else (0, 0, 0),
        "disk_bytes": disk,
        "csr_in_memory_bytes": nnz * (data_b + 4) + 8 * (ds.n_obs + 1),
        "dense_float32_bytes": 4 * ds.n_obs * ds.n_vars,
        "largest_tile_csr_bytes": int(occ.max() * (nnz / max(1, ds.n_obs)) * (data_b + 4)) if len(occ) else 0,
        "provenance": ds.provenance,
    }


def _human(n: float) -> str:
    for u in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024:
            return f"{n:.1f} {u}"
        n /= 1024
    return f"{n:.1f} PiB"


def _cmd_info(args: argparse.Namespace) -> int:
    i = store_info(args.store)
    print(f"store          {i['path']}")
    print(f"shape          {i['n_obs']:,} obs x {i['n_vars']:,} vars, nnz {i['nnz']:,} (density {i['density']:.4f})")
    print(f"matrices       {', '.join(i['matrices'])}")
    sd = f", spot diameter {i['spot_diameter']:g}" if i["spot_diameter"] else ""
    print(f"units          {i['unit']}{sd}")
    print(f"tiles          {i['tiles_occupied']} occupied of {i['tile_grid'][0]} x {i['tile_grid'][1]}, "
          f"side {i['tile_size']:g} {i['unit']}; rows per tile min/median/max {i['rows_per_tile']}")
    print(f"on disk        {_human(i['disk_bytes'])}")
    print(f"memory         whole CSR {_human(i['csr_in_memory_bytes'])}; dense float32 "
          f"{_human(i['dense_float32_bytes'])}; largest tile {_human(i['largest_tile_csr_bytes'])}")
    prov = i["provenance"]
    if prov:
        print("provenance     " + ", ".join(f"{k}={v}" for k, v in prov.items()))
    return 0


def _cmd_preprocess(args: argparse.Namespace) -> int:
    """normalize_total -> log1p -> HVG -> PCA -> kNN -> leiden (+ spatial graph), results written to the store."""
    import time

    from . import pp
    from .dataset import read
    from .gr import spatial_neighbors

    if args.scheduler:
        from .cluster import get_client

        get_client(args.scheduler)
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


def _cmd_cci_run(args: argparse.Namespace) -> int:
    from .dataset import read
    from .tl import cci

    if args.scheduler:
        from .cluster import get_client

        get_client(args.scheduler)
    ds = read(args.store)
    lrs = cci.load_lrs(args.lrs or None, species=args.species, table=args.lr_table)
    res = cci.run(ds, lrs, min_spots=args.min_spots, distance=args.distance, n_pairs=args.n_pairs,
                  min_expr=args.min_expr, adj_method=args.adj_method, pval_adj_cutoff=args.cutoff, seed=args.seed,
                  layer=args.layer, scheduler=args.scheduler, write=True)
    ds.write()
    out = Path(args.out) if args.out else Path(args.store).with_suffix("").parent / "lr_summary.tsv"
    res.lr_summary.to_csv(out, sep="\t", index_label="lr")
    top = res.lr_summary.head(10)
    print(top.to_string())
    print(f"{len(res.lr_summary)} valid LR pairs; results written to {args.store} and {out}")
    return 0


def _cmd_cci_interactions(args: argparse.Namespace) -> int:
    from .dataset import read
    from .tl import cci

    if args.scheduler:
        from .cluster import get_client

        get_client(args.scheduler)
    ds = read(args.store)
    inter = cci.run_cci(ds, args.use_label, min_spots=args.min_spots, sig_spots=not args.all_spots,
                        spot_mixtures=args.mixtures, cell_prop_cutoff=args.cell_prop_cutoff, n_perms=args.n_perms,
                        seed=args.seed, scheduler=args.scheduler, write=True)
    ds.write()
    print(inter.lr_cci.to_string())
    print(f"{len(inter.lrs)} LR pairs tested; results written to {args.store} (uns['lr_cci_{args.use_label}'], ...)")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from .tl.cci.report import report

    report(args.store, args.outdir, use_label=args.use_label, n_top_lrs=args.n_top, overwrite=args.overwrite)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(args.outdir, n_obs=args.n_obs, seed=args.seed)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .io.base import source_formats
    from . import io as _io  # noqa: F401  (registers the readers)

    p = argparse.ArgumentParser(prog="stdask", description="Spatial transcriptomics at any scale.")
    sub = p.add_subparsers(dest="command", required=True)

    pi = sub.add_parser("ingest", help="convert an input (GEM, GEF, MTX, Visium, h5ad) into a tiled store")
    pi.add_argument("input")
    pi.add_argument("store")
    pi.add_argument("--format", choices=source_formats(), help="input format (default: from the file name)")
    g = pi.add_mutually_exclusive_group()
    g.add_argument("--bin", type=int, metavar="N", help="square bins of N x N DNB (GEM/GEF), 1..200")
    g.add_argument("--cellbin", action="store_true", help="group DNB records by CellID (GEM/GEF)")
    pi.add_argument("--tile-size", type=float, help="tile side in store units (default: ~16-20k obs per tile)")
    pi.add_argument("--chunk-size", type=int, default=2_000_000, help="records per streamed chunk")
    pi.add_argument("--pixel-size", type=float, help="um per pixel for cell_locations.tsv (MTX input)")
    pi.add_argument("--spot-diameter", type=float, help="spot/cell diameter in store units")
    pi.add_argument("--overwrite", action="store_true", help="replace an existing store")
    pi.add_argument("--scheduler", help="dask scheduler address (default: embedded)")
    pi.set_defaults(func=_cmd_ingest)

    pf = sub.add_parser("info", help="summarise a store")
    pf.add_argument("store")
    pf.set_defaults(func=_cmd_info)

    pp_ = sub.add_parser("preprocess", help="normalize -> log1p -> HVG -> PCA -> kNN -> leiden -> spatial graph")
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
    pp_.add_argument("--scheduler", help="dask scheduler address (default: embedded)")
    pp_.set_defaults(func=_cmd_preprocess)

    pc = sub.add_parser("cci", help="cell-cell interaction analyses (stLearn's LR hotspots)")
    csub = pc.add_subparsers(dest="cci_command", required=True)
    pcr = csub.add_parser("run", help="LR hotspot analysis (stLearn st.tl.cci.run) on a store")
    pcr.add_argument("store")
    pcr.add_argument("--lrs", action="append", help="shipped LR table (repeatable): connectomeDB2020_lit | "
                     "connectomeDB2020_put (default: lit)")
    pcr.add_argument("--lr-table", help="a user LR table (two columns, or one column of L_R names)")
    pcr.add_argument("--species", default="human", choices=["human", "mouse"])
    pcr.add_argument("--n-pairs", type=int, default=1000, help="background pairs per LR (>= 100)")
    pcr.add_argument("--min-spots", type=int, default=10)
    pcr.add_argument("--distance", type=float, default=None,
                     help="radius in store units (default: 2 x spot diameter; 0 = within-spot)")
    pcr.add_argument("--min-expr", type=float, default=0.0)
    pcr.add_argument("--adj-method", default="fdr_bh")
    pcr.add_argument("--cutoff", type=float, default=0.05, help="p-value cutoff for significance")
    pcr.add_argument("--seed", type=int, default=0)
    pcr.add_argument("--layer", default="X", help="matrix to analyse (normalised counts, no log1p)")
    pcr.add_argument("--out", help="lr_summary.tsv path (default: next to the store)")
    pcr.add_argument("--scheduler", help="dask scheduler address (default: embedded)")
    pcr.set_defaults(func=_cmd_cci_run)
    pci = csub.add_parser("interactions", help="cell-type x cell-type interactions per LR (stLearn run_cci) on a "
                          "store with LR hotspot results")
    pci.add_argument("store")
    pci.add_argument("--use-label", required=True, help="obs column of cell types")
    pci.add_argument("--n-perms", type=int, default=100, help="label permutations (the tutorial uses 1000)")
    pci.add_argument("--min-spots", type=int, default=3)
    pci.add_argument("--all-spots", action="store_true", help="count all scored spots, not only significant ones")
    pci.add_argument("--mixtures", action="store_true", help="use the per-spot type proportions in uns[<label>]")
    pci.add_argument("--cell-prop-cutoff", type=float, default=0.2)
    pci.add_argument("--seed", type=int, default=0)
    pci.add_argument("--scheduler", help="dask scheduler address (default: embedded)")
    pci.set_defaults(func=_cmd_cci_interactions)

    prp = sub.add_parser("report", help="results folder of the CCI analyses (tables, stLearn plots, hotspot maps, "
                         "README.md)")
    prp.add_argument("store", help="a store (or an .h5ad in stLearn's layout) with stdask.tl.cci.run results")
    prp.add_argument("outdir")
    prp.add_argument("--use-label", help="label of the run_cci results (default: the only one stored)")
    prp.add_argument("--n-top", type=int, default=5, help="LR pairs with their own tables and plots")
    prp.add_argument("--overwrite", action="store_true", help="replace an existing OUTDIR")
    prp.set_defaults(func=_cmd_report)

    from .cli_segment import add_segment_parser

    add_segment_parser(sub)

    pd_ = sub.add_parser("demo", help="synthetic slice -> native files -> ingest -> analyses -> results folder")
    pd_.add_argument("outdir", nargs="?", default="demo_results")
    pd_.add_argument("--n-obs", type=int, default=20_000)
    pd_.add_argument("--seed", type=int, default=0)
    pd_.set_defaults(func=_cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, FileExistsError, KeyError, OSError, NotImplementedError) as e:
        # user-facing errors: one clear line, no traceback
        print(f"stdask {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
