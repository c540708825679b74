"""Array backends: numpy + numba kernels on CPU (the default) and numba.cuda kernels on GPU.

GPU kernels are written with ``numba.cuda`` so that the CPU test suite runs the very same kernel code
under numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``); a GPU machine runs it compiled. Which one runs
is chosen by :attr:`stdask.settings.backend`, read on the client and passed to tasks explicitly, so remote
workers follow the caller's choice.
"""
