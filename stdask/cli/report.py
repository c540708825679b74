"""``stdask report STORE OUTDIR``: the results folder of the CCI analyses."""
from __future__ import annotations

import argparse


def add_parser(sub) -> argparse.ArgumentParser:
    """Add ``report`` to the sub-commands."""
    prp = sub.add_parser("report", help="results folder of the CCI analyses (tables, stLearn plots, hotspot maps, "
                         "README.md)")
    prp.add_argument("store", help="a store (or an .h5ad in stLearn's layout) with stdask.tl.cci.run results")
    prp.add_argument("outdir")
    prp.add_argument("--use-label", help="label of the run_cci results (default: the only one stored)")
    prp.add_argument("--n-top", type=int, default=5, help="LR pairs with their own tables and plots")
    prp.add_argument("--overwrite", action="store_true", help="replace an existing OUTDIR (only a stdask report folder is replaced)")
    prp.set_defaults(func=run)
    return prp


def run(args: argparse.Namespace) -> int:
    from ..report.cci import cci_report

    cci_report(args.store, args.outdir, use_label=args.use_label, n_top_lrs=args.n_top, overwrite=args.overwrite)
    return 0
