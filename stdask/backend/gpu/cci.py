"""GPU (numba.cuda) kernel of the LR background exceedance counts: the same arithmetic as the CPU kernel
:func:`stdask.backend.cpu.cci.background_counts`, one thread per tested (row, LR) entry.

Bit-identical to the CPU counts: every product in the score has a 0/1 indicator factor, so it is exact,
and a fused multiply-add of an exact product rounds like the separate multiply and add; the comparison is
the same ``>=``. Runs under ``NUMBA_ENABLE_CUDASIM=1`` on machines without a GPU (that is how CI tests it).
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from numba import cuda  # importing needs no GPU; kernels compile on first launch

_THREADS = 128


@cuda.jit
def _counts_kernel(xd, md, t_row, t_lr, t_obs, pl, pr, m, out):
    e = cuda.grid(1)
    if e < t_lr.shape[0]:
        i = t_row[e]
        j = t_lr[e]
        s = t_obs[e]
        c = 0
        for k in range(pl.shape[1]):
            l = pl[j, k]
            r = pr[j, k]
            xl = xd[i, l]
            ml = md[i, l]
            xr = xd[i, r]
            mr = md[i, r]
            a = xl * (mr > m) + (xl > m) * mr
            b = xr * (ml > m) + (xr > m) * ml
            if (a + b) / 2.0 >= s:
                c += 1
        out[e] = c


def background_counts(x: sp.csr_matrix, means: sp.csr_matrix, t_row: np.ndarray, t_lr: np.ndarray,
                      t_obs: np.ndarray, pl: np.ndarray, pr: np.ndarray, m: float,
                      block_rows: int = 4096) -> np.ndarray:
    """Background exceedance counts of tested entries on the GPU.

    Parameters
    ----------
    x, means
        (n_rows, n_cols) CSR float64 expression and neighbour means of the rows.
    t_row, t_lr, t_obs
        (n_entries,) tested entries: row, LR index and observed score; grouped by row (ascending).
    pl, pr
        (n_lr, n_pairs) integer columns of each LR's background pairs.
    m
        min_expr.
    block_rows
        Rows densified and sent to the device at a time ((block_rows, n_cols) float64, twice).

    Returns
    -------
    (n_entries,) int64 counts, equal to :func:`stdask.backend.cpu.cci.background_counts`.
    """
    kernel = _counts_kernel
    out = np.zeros(len(t_lr), dtype=np.int64)
    if len(t_lr) == 0:
        return out
    d_pl = cuda.to_device(np.ascontiguousarray(pl, dtype=np.int32))
    d_pr = cuda.to_device(np.ascontiguousarray(pr, dtype=np.int32))
    bounds = np.searchsorted(t_row, np.arange(0, x.shape[0] + block_rows, block_rows))
    for b, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
        if hi == lo:
            continue
        r0 = b * block_rows
        r1 = min(r0 + block_rows, x.shape[0])
        xd = cuda.to_device(np.ascontiguousarray(x[r0:r1].toarray(), dtype=np.float64))
        md = cuda.to_device(np.ascontiguousarray(means[r0:r1].toarray(), dtype=np.float64))
        n = hi - lo
        d_out = cuda.device_array(n, dtype=np.int64)
        kernel[(n + _THREADS - 1) // _THREADS, _THREADS](
            xd, md, cuda.to_device((t_row[lo:hi] - r0).astype(np.int64)), cuda.to_device(t_lr[lo:hi].astype(np.int64)),
            cuda.to_device(t_obs[lo:hi].astype(np.float64)), d_pl, d_pr, float(m), d_out)
        out[lo:hi] = d_out.copy_to_host()
    return out
