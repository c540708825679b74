"""The ``stdask`` command line: ingest, info, verify, preprocess, cci (run, interactions), report, segment, stague,
impute, demo.

One module per sub-command, each with ``add_parser`` and ``run``; the sub-commands that compute share the
``--scheduler`` / ``--progress`` options of :func:`stdask.cli.common.runtime_options`.
"""
from __future__ import annotations

import argparse
import sys

from . import cci, demo, impute, info, ingest, preprocess, report, segment, stague, verify
from .common import runtime, runtime_options

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    """The ``stdask`` argument parser with every sub-command."""
    p = argparse.ArgumentParser(prog="stdask", description="Spatial transcriptomics at any scale.")
    sub = p.add_subparsers(dest="command", required=True)
    computes = [runtime_options()]
    ingest.add_parser(sub, computes)
    info.add_parser(sub)
    verify.add_parser(sub)
    preprocess.add_parser(sub, computes)
    cci.add_parser(sub, computes)
    report.add_parser(sub)
    segment.add_parser(sub, computes)
    stague.add_parser(sub, computes)
    impute.add_parser(sub, computes)
    demo.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run ``stdask`` with ``argv`` (default: the process's arguments); returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with runtime(args):
            return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, FileExistsError, KeyError, OSError, NotImplementedError) as e:
        # user-facing errors: one clear line, no traceback
        print(f"stdask {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
