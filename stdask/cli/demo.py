"""``stdask demo [OUTDIR]``: what ``make demo`` runs."""
from __future__ import annotations

import argparse

from .common import seed_option


def add_parser(sub) -> argparse.ArgumentParser:
    """Add ``demo`` to the sub-commands."""
    pd_ = sub.add_parser("demo", parents=[seed_option()],
                         help="synthetic slice -> native files -> ingest -> analyses -> results folder")
    pd_.add_argument("outdir", nargs="?", default="demo_results")
    pd_.add_argument("--n-obs", type=int, default=20_000)
    pd_.set_defaults(func=run)
    return pd_


def run(args: argparse.Namespace) -> int:
    from ..report.demo import run_demo

    run_demo(args.outdir, n_obs=args.n_obs, seed=args.seed)
    return 0
