"""GPU kernels (numba.cuda; they also run under ``NUMBA_ENABLE_CUDASIM=1``), one module per kernel family, each
with the signature and the results of its CPU variant; reached through :func:`stdask.backend.get_kernel`."""
