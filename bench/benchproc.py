"""What the benches that measure one case per child process share: the child's peak RSS, starting a child
that prints one JSON line, and the driver's common command-line options."""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path


def peak_mib() -> float:
    """Peak resident memory of this process so far, MiB (``ru_maxrss``: KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_child(script: str, *args: str, timeout: float, env: dict | None = None,
              python_args: tuple[str, ...] = ()) -> dict:
    """Run ``python [python_args] script --child args`` and return the JSON of its last stdout line, or
    ``{"error": last stderr line}`` when it fails."""
    cmd = [sys.executable, *python_args, script, "--child", *args]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if p.returncode != 0:
        tail = (p.stderr or p.stdout).strip().splitlines()
        return {"error": tail[-1] if tail else f"exit {p.returncode}"}
    return json.loads(p.stdout.strip().splitlines()[-1])


def add_common_args(ap: argparse.ArgumentParser, timeout: float) -> None:
    """``--workdir``, ``--threads``, ``--timeout`` and the hidden ``--child``."""
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/stdask-bench"))
    ap.add_argument("--threads", type=int, default=2, help="CPU cores (torch threads, OMP, numba)")
    ap.add_argument("--timeout", type=float, default=timeout, help="seconds per child process")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)


def thread_env(threads: int) -> dict:
    """The environment of the children: OpenMP and numba limited to ``threads``."""
    import os

    return dict(os.environ, OMP_NUM_THREADS=str(threads), NUMBA_NUM_THREADS=str(threads))
