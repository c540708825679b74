"""What every computing sub-command shares: the ``--scheduler`` / ``--progress`` options (one parent parser)
and applying them around the command."""
from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator

from ..cluster import get_client
from ..settings import settings

__all__ = ["runtime_options", "runtime", "seed_option"]


def runtime_options() -> argparse.ArgumentParser:
    """The parent parser of the sub-commands that compute: where the work runs and whether it shows progress."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--scheduler", help="dask scheduler address (default: embedded)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="show progress bars (default: stdask.settings.progress)")
    return p


def seed_option(default: int = 0) -> argparse.ArgumentParser:
    """The parent parser of the sub-commands that draw random numbers: ``--seed`` (same seed, same result)."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--seed", type=int, default=default, help=f"random seed (default {default})")
    return p


@contextlib.contextmanager
def runtime(args: argparse.Namespace) -> Iterator[None]:
    """Apply :func:`runtime_options` for the duration of a command: connect to ``--scheduler`` (which stays the
    default client afterwards) and set ``settings.progress`` from ``--progress`` / ``--no-progress`` (restored
    on exit). Commands without these options run unchanged."""
    if getattr(args, "scheduler", None):
        get_client(args.scheduler)
    progress = getattr(args, "progress", None)
    with settings.override(progress=progress) if progress is not None else contextlib.nullcontext():
        yield


def at_least(lo: int):
    """An argparse type: an integer >= ``lo`` (argparse turns the ValueError into a usage error, exit 2)."""
    def parse(text: str) -> int:
        v = int(text)
        if v < lo:
            raise ValueError(text)
        return v

    parse.__name__ = f"integer >= {lo}"  # argparse names the type in its message
    return parse
