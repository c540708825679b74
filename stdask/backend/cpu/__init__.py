"""CPU kernels (numpy + numba), one module per kernel family; reached through :func:`stdask.backend.get_kernel`."""
