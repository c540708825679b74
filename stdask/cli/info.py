"""``stdask info STORE [--verify]``: summarise a store, and with ``--verify`` check every chunk of it."""
from __future__ import annotations

import argparse


def add_parser(sub) -> argparse.ArgumentParser:
    """Add ``info`` to the sub-commands."""
    pf = sub.add_parser("info", help="summarise a store")
    pf.add_argument("store")
    pf.add_argument("--verify", action="store_true",
                    help="also check that every chunk is present and intact (reads the whole store); exit 1 if not")
    pf.set_defaults(func=run)
    return pf


def run(args: argparse.Namespace) -> int:
    from ..dataset import read
    from .verify import report

    if args.verify:
        # verified first: the summary reads X's row pointers, which a damaged store may not give
        status = report(args.store)
        if status:
            return status
    # the dataset's own summary (stdask.store.info.StoreInfo): shape, tiles, units, disk and memory sizes
    print(read(args.store).info())
    return 0
