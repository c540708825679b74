"""Process-wide settings: which array backend, which scheduler, whether to show progress.

One module-level instance, :data:`settings`, holds them. Every assignment is validated, so a typo
fails where it is made rather than deep inside a computation::

    from stdask.settings import settings      # also reachable as ``stdask.settings``

    settings.scheduler = "tcp://10.0.0.5:8786"  # run on this cluster from now on
    settings.progress = False                  # no progress bars (batch jobs, tests)

    with settings.override(backend="gpu", n_workers=4):
        ...                                     # previous values come back on exit

Settings are read at the moment they are needed (``stdask.cluster.get_client`` reads ``scheduler`` on
each call), so changing one affects the next call, never a computation that is already running.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator
from typing import Any

__all__ = ["Settings", "settings", "BACKENDS"]

#: Names accepted by :attr:`Settings.backend`.
BACKENDS: tuple[str, ...] = ("cpu", "gpu")


def _check_gpu() -> None:
    """Raise a ``RuntimeError`` that says what to install when the GPU backend cannot work here.

    Checked when the backend is chosen, not when the first kernel runs, so a missing CUDA setup is
    reported before any work starts. It exercises what the GPU kernels use: numba.cuda must see a usable
    device and compile and launch a kernel (the NVVM compiler and the driver both work), and cupy must import
    and run an array operation on the device. Under numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``, how
    CI runs the GPU kernels on a CPU) the simulated kernel launch is checked and cupy, which has no simulator,
    is not needed.
    """
    simulated = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
    cupy = None
    if not simulated:
        try:
            import cupy
        except Exception as exc:  # ImportError, or a CUDA library that fails to load
            raise RuntimeError(
                "settings.backend='gpu' needs cupy, which could not be imported "
                f"({type(exc).__name__}: {exc}). Install the GPU extra (`pip install 'stdask[gpu]'`, "
                "cupy-cuda12x) on a machine with an NVIDIA GPU and CUDA 12, or keep backend='cpu'."
            ) from exc
    try:
        _launch_tiny_cuda_kernel()
    except Exception as exc:  # no driver, no device, no NVVM: numba raises several kinds of errors
        raise RuntimeError(
            f"settings.backend='gpu': numba.cuda cannot run a kernel here ({type(exc).__name__}: {exc}). "
            "Check the NVIDIA driver (`nvidia-smi`) and the CUDA toolkit numba uses "
            "(`python -c 'from numba import cuda; cuda.detect()'`), or keep backend='cpu'."
        ) from exc
    if cupy is None:
        return
    try:
        ok = int(cupy.arange(4, dtype=cupy.int64).sum()) == 6
    except Exception as exc:  # cupy imports on machines without a driver; the first operation fails
        raise RuntimeError(
            f"settings.backend='gpu': cupy is installed but cannot run on a CUDA device ({type(exc).__name__}: "
            f"{exc}). Check the NVIDIA driver (`nvidia-smi`) or keep backend='cpu'."
        ) from exc
    if not ok:
        raise RuntimeError("settings.backend='gpu': a cupy sum on the device gave a wrong result; keep backend='cpu'.")


def _launch_tiny_cuda_kernel() -> None:
    """Compile and launch a one-line numba.cuda kernel and check its output (raises on any failure)."""
    import numpy as np
    from numba import cuda

    if not cuda.is_available():
        raise RuntimeError("numba.cuda finds no usable CUDA device")

    @cuda.jit
    def _step(a):  # one thread; no thread-index look-up, so the simulator runs it as a closure too
        a[0] = 2 * a[0] + 1

    d = cuda.to_device(np.full(1, 20, dtype=np.int64))
    _step[1, 1](d)
    if int(d.copy_to_host()[0]) != 41:
        raise RuntimeError("a numba.cuda kernel gave a wrong result")


@dataclasses.dataclass
class Settings:
    """stdask's process-wide settings.

    Attributes
    ----------
    backend
        Array backend for kernels: ``"cpu"`` (numpy + numba) or ``"gpu"`` (cupy). Choosing ``"gpu"``
        raises ``RuntimeError`` at once when cupy cannot be imported or sees no CUDA device.
    scheduler
        Address of a dask.distributed scheduler (``"tcp://host:8786"``, ``"tls://host:8786"``) or
        the path of a scheduler file written by ``dask scheduler --scheduler-file``. ``None``: use
        the environment (``DASK_SCHEDULER_ADDRESS``), dask config, or the embedded local cluster;
        see :func:`stdask.cluster.get_client` for the full order.
    progress
        Show progress bars (tqdm, ``distributed.progress``). ``False`` silences all of them.
    n_workers
        Worker processes of the embedded local cluster. ``None`` (default): one in-process worker
        with a thread per core. Has no effect on a remote scheduler, nor on an embedded cluster
        that has already started (call :func:`stdask.cluster.shutdown` first).
    """

    backend: str = "cpu"
    scheduler: str | None = None
    progress: bool = True
    n_workers: int | None = None

    def __setattr__(self, name: str, value: Any) -> None:
        # Validate on every assignment, including those made by the dataclass __init__, so no
        # invalid value is ever stored.
        check = getattr(self, f"_check_{name}", None)
        if check is None:
            known = [f.name for f in dataclasses.fields(self)]
            raise AttributeError(f"stdask.settings has no setting {name!r}; known settings: {known}")
        object.__setattr__(self, name, check(value))

    @staticmethod
    def _check_backend(value: Any) -> str:
        if value not in BACKENDS:
            raise ValueError(f"settings.backend must be one of {BACKENDS}, got {value!r}")
        if value == "gpu":
            _check_gpu()
        return value

    @staticmethod
    def _check_scheduler(value: Any) -> str | None:
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise TypeError(
                "settings.scheduler must be None or a scheduler address such as 'tcp://host:8786' "
                f"(or a scheduler-file path), got {value!r}; to use a Client object pass it as "
                "stdask.cluster.get_client(client)"
            )
        return value.strip() if isinstance(value, str) else None

    @staticmethod
    def _check_progress(value: Any) -> bool:
        if not isinstance(value, bool):
            raise TypeError(f"settings.progress must be True or False, got {value!r}")
        return value

    @staticmethod
    def _check_n_workers(value: Any) -> int | None:
        # bool is an int subclass; True as a worker count is almost certainly a mistake.
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"settings.n_workers must be None or an integer >= 1, got {value!r}")
        return value

    @contextlib.contextmanager
    def override(self, **values: Any) -> Iterator[Settings]:
        """Set some settings for the duration of a ``with`` block, then restore the old values.

        Parameters
        ----------
        **values
            Setting names and their temporary values, e.g. ``backend="gpu", progress=False``.
            All are validated before any is changed, so a bad value leaves the settings untouched.

        Yields
        ------
        Settings
            This settings object.
        """
        known = [f.name for f in dataclasses.fields(self)]
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise AttributeError(f"stdask.settings has no setting {unknown}; known settings: {known}")
        for name, value in values.items():  # validate all first: no half-applied override
            getattr(self, f"_check_{name}")(value)
        old = {name: getattr(self, name) for name in values}
        try:
            for name, value in values.items():
                setattr(self, name, value)
            yield self
        finally:
            for name, value in old.items():
                object.__setattr__(self, name, value)  # restoring a value that was valid before


#: The process-wide settings object.
settings = Settings()
