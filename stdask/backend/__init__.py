"""The kernels: numpy + numba on CPU (the default), numba.cuda (and, to come, cupy array code) on GPU.

One module per kernel family and device (``cpu/cci.py``, ``gpu/cci.py``, ...); callers never import them
directly but ask :func:`get_kernel` by name, which picks the variant of :attr:`stdask.settings.backend` (or of
an explicit ``backend=``). A kernel without a GPU variant runs its CPU variant on either backend, so code
written against this registry keeps working while GPU variants are added one at a time.

GPU kernels are written with ``numba.cuda`` so that the CPU test suite runs the very same kernel code under
numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``); a GPU machine runs it compiled. Every GPU variant gives
the CPU variant's results exactly (integer counts and integer gram sums; floating-point steps in the CPU's
order, with products that NVVM must not fuse into an FMA written as ``__dmul_rn``); ``bench/gpu.py`` checks
this on a GPU and times both. Work that runs in tasks
reads the backend on the client and passes it to the tasks explicitly, so remote workers follow the caller's
choice. Kernels take arrays, never datasets: this layer sits below :mod:`stdask.dataset`.
"""
from __future__ import annotations

import functools
import importlib
from typing import Callable

from ..settings import BACKENDS, settings

#: kernel name -> ``"module:function"`` (relative to this package) of the CPU variant; every kernel has one
CPU: dict[str, str] = {
    # LR hotspots (stdask.tl.cci.run, SpaSEG's domain LR scoring)
    "pair_scores": "cpu.cci:pair_scores",
    "background_counts": "cpu.cci:background_counts",
    "background_counts_geometric": "cpu.cci:background_counts_geometric",
    "bh_segments": "cpu.cci:bh_segments",
    "canberra_topk": "cpu.cci:canberra_topk",
    "accept_pairs": "cpu.cci:accept_pairs",
    "sort_rows_inplace": "cpu.cci:sort_rows_inplace",
    "summary_counts": "cpu.cci:summary_counts",
    # cell-type interactions (stdask.tl.cci.run_cci)
    "build_edges": "cpu.interactions:build_edges",
    "discrete_batch": "cpu.interactions:discrete_batch",
    "sets_batch": "cpu.interactions:sets_batch",
    # exact reductions (stdask.blocks, stdask.pp.pca)
    "csr_moments": "cpu.exact:csr_moments",
    "normalise_limbs": "cpu.exact:normalise_limbs",
    "csr_bounds": "cpu.gram:csr_bounds",
    "csr_gram": "cpu.gram:csr_gram",
    "csr_xtxw": "cpu.gram:csr_xtxw",
    # sparse products (neighbour sums of stdask.tl.cci)
    "csr_product": "cpu.sparse:csr_product",
    # spatial graphs (stdask.gr)
    "cell_starts": "cpu.graph:cell_starts",
    "radius_scan": "cpu.graph:radius_scan",
}

#: kernel name -> ``"module:function"`` of the GPU variant, where one exists (same signature and results as
#: the CPU variant)
GPU: dict[str, str] = {
    "background_counts": "gpu.cci:background_counts",
    "discrete_batch": "gpu.interactions:discrete_batch",
    "sets_batch": "gpu.interactions:sets_batch",
    "csr_gram": "gpu.gram:csr_gram",
    "csr_xtxw": "gpu.gram:csr_xtxw",
}


@functools.lru_cache(maxsize=None)
def _load(target: str) -> Callable:
    module, _, name = target.partition(":")
    # imported on first use: the GPU modules import numba.cuda, which a CPU run never needs
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def get_kernel(name: str, backend: str | None = None) -> Callable:
    """The kernel ``name`` for ``backend`` (default :attr:`stdask.settings.backend`).

    Parameters
    ----------
    name
        A key of :data:`CPU`.
    backend
        ``"cpu"`` or ``"gpu"``; tasks receive the client's choice explicitly.

    Returns
    -------
    The GPU variant when ``backend="gpu"`` and one exists, else the CPU variant (both give the same results).
    """
    backend = settings.backend if backend is None else backend
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if name not in CPU:
        raise KeyError(f"no kernel {name!r}; kernels: {sorted(CPU)}")
    return _load(GPU[name] if backend == "gpu" and name in GPU else CPU[name])


__all__ = ["get_kernel", "CPU", "GPU"]
