"""``stdask cci run STORE`` and ``stdask cci interactions STORE``: stLearn's LR hotspots and cell-type
interactions on a store, results written into it."""
from __future__ import annotations

import argparse
from pathlib import Path

from .common import seed_option


def add_parser(sub, parents: list[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Add ``cci`` (with its ``run`` and ``interactions`` sub-commands) to the sub-commands."""
    pc = sub.add_parser("cci", help="cell-cell interaction analyses (stLearn's LR hotspots)")
    csub = pc.add_subparsers(dest="cci_command", required=True)
    seeded = [*parents, seed_option()]
    pcr = csub.add_parser("run", parents=seeded, help="LR hotspot analysis (stLearn st.tl.cci.run) on a store")
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
    pcr.add_argument("--layer", default="X", help="matrix to analyse (normalised counts, no log1p)")
    pcr.add_argument("--out", help="lr_summary.tsv path (default: next to the store)")
    pcr.set_defaults(func=run_hotspots)
    pci = csub.add_parser("interactions", parents=seeded, help="cell-type x cell-type interactions per LR "
                          "(stLearn run_cci) on a store with LR hotspot results")
    pci.add_argument("store")
    pci.add_argument("--use-label", required=True, help="obs column of cell types")
    pci.add_argument("--n-perms", type=int, default=100, help="label permutations (the tutorial uses 1000)")
    pci.add_argument("--min-spots", type=int, default=3)
    pci.add_argument("--all-spots", action="store_true", help="count all scored spots, not only significant ones")
    pci.add_argument("--mixtures", action="store_true", help="use the per-spot type proportions in uns[<label>]")
    pci.add_argument("--cell-prop-cutoff", type=float, default=0.2)
    pci.set_defaults(func=run_interactions)
    return pc


def run_hotspots(args: argparse.Namespace) -> int:
    from ..dataset import read
    from ..tl import cci

    ds = read(args.store)
    lrs = cci.load_lrs(args.lrs or None, species=args.species, table=args.lr_table)
    res = cci.run(ds, lrs, min_spots=args.min_spots, distance=args.distance, n_pairs=args.n_pairs,
                  min_expr=args.min_expr, adj_method=args.adj_method, pval_adj_cutoff=args.cutoff, seed=args.seed,
                  layer=args.layer, scheduler=args.scheduler)
    ds.write()
    out = Path(args.out) if args.out else Path(args.store).with_suffix("").parent / "lr_summary.tsv"
    res.lr_summary.to_csv(out, sep="\t", index_label="lr")
    top = res.lr_summary.head(10)
    print(top.to_string())
    print(f"{len(res.lr_summary)} valid LR pairs; results written to {args.store} and {out}")
    return 0


def run_interactions(args: argparse.Namespace) -> int:
    from ..dataset import read
    from ..tl import cci

    ds = read(args.store)
    inter = cci.run_cci(ds, args.use_label, min_spots=args.min_spots, sig_spots=not args.all_spots,
                        spot_mixtures=args.mixtures, cell_prop_cutoff=args.cell_prop_cutoff, n_perms=args.n_perms,
                        seed=args.seed, scheduler=args.scheduler)
    ds.write()
    print(inter.lr_cci.to_string())
    print(f"{len(inter.lrs)} LR pairs tested; results written to {args.store} (uns['lr_cci_{args.use_label}'], ...)")
    return 0
