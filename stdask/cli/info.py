"""``stdask info STORE``: summarise a store."""
from __future__ import annotations

import argparse


def add_parser(sub) -> argparse.ArgumentParser:
    """Add ``info`` to the sub-commands."""
    pf = sub.add_parser("info", help="summarise a store")
    pf.add_argument("store")
    pf.set_defaults(func=run)
    return pf


def run(args: argparse.Namespace) -> int:
    from ..dataset import read

    # the dataset's own summary (stdask.store.info.StoreInfo): shape, tiles, units, disk and memory sizes
    print(read(args.store).info())
    return 0
