"""Where and how a SpaSEG run executes: device, torch threads, deterministic algorithms."""
from __future__ import annotations

import contextlib
import os

from .config import _torch


# ----------------------------------------------------------------------------------------------------
# training
# ----------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def deterministic(threads: int | None = None):
    """Deterministic torch for the duration (restored afterwards); optionally a thread count."""
    torch = _torch()
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    old = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
           torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark, torch.get_num_threads())
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    if threads:
        torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(old[0], warn_only=old[1])
        torch.backends.cudnn.deterministic = old[2]
        torch.backends.cudnn.benchmark = old[3]
        torch.set_num_threads(old[4])


#: pixels per iteration per torch thread below which more threads cost more than they gain (15-channel
#: convolutions are small; on shared CPUs OpenMP threads also spin against other processes)
PIXELS_PER_THREAD = 100_000


def auto_threads(pixels: int) -> int:
    """Torch threads for an iteration over ``pixels`` pixels: ``min(torch.get_num_threads(),
    max(1, pixels // PIXELS_PER_THREAD))``. Measured on a 2-core machine: a 78 x 128 image trains at
    28 ms/iteration on 1 thread and 104 ms on 2; 256 x 256 at 130 vs 450 ms."""
    torch = _torch()
    return int(max(1, min(torch.get_num_threads(), pixels // PIXELS_PER_THREAD)))


def resolve_device(device: str | None = None) -> str:
    """The torch device of a model: ``device`` as given; ``None``/``"auto"`` -> ``"cuda"`` when torch sees a
    CUDA device, else ``"cpu"``; ``None`` with ``stdask.settings.backend == "gpu"`` -> ``"cuda"``, an error when
    torch has no CUDA (a CPU build of torch would otherwise train on the CPU without a word)."""
    from ...settings import settings

    torch = _torch()
    if device is None and settings.backend == "gpu":
        device = "cuda"
    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device={device!r} requested but torch sees no CUDA device; use device='cpu'")
    return str(device)
