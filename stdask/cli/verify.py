"""``stdask verify STORE``: check a whole store (metadata, every recorded chunk present and intact)."""
from __future__ import annotations

import argparse


def add_parser(sub) -> argparse.ArgumentParser:
    """Add ``verify`` to the sub-commands."""
    pf = sub.add_parser("verify", help="check that every chunk of a store is present and intact")
    pf.add_argument("store")
    pf.set_defaults(func=run)
    return pf


def report(store: str) -> int:
    """Print what is wrong with ``store`` (exit status 1) or ``ok`` (0)."""
    from ..store.verify import verify_store

    result = verify_store(store)
    print(result)
    return 0 if result.ok else 1


def run(args: argparse.Namespace) -> int:
    return report(args.store)
