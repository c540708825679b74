"""Does the matrix given to :func:`stdask.tl.cci.run` look like ``normalize_total`` output?

stLearn's LR score is defined on ``normalize_total`` data (no log1p); raw counts or log-transformed values run
without error but give other results. This looks at the first rows of the matrix only (rows are stored
grouped by tile, so these are the first occupied tiles): a bounded read, whatever the size of the slice.

Within one observation, ``normalize_total`` multiplies the counts by one factor, so each value divided by
the row's smallest is (nearly always) an integer count ratio. After ``log1p`` that holds for ``expm1`` of
the values instead, and no longer for the values themselves: that is the log-like distribution looked for.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

#: rows read for the check (the first occupied tiles)
SAMPLE_ROWS = 2000
#: log1p of normalised counts stays below this (log1p(1e4) = 9.2; log1p(1e6) = 13.8)
LOG_MAX = 20.0
#: rows with two or more distinct values needed before calling a matrix log-transformed
MIN_ROWS = 10


def _ratios_integral(data: np.ndarray, indptr: np.ndarray) -> np.ndarray:
    """(n_rows,) bool: every value of the row divided by the row's smallest is an integer (float32 rounding
    allowed). Rows must be non-empty and positive."""
    starts = indptr[:-1]
    lengths = np.diff(indptr)
    ratio = data / np.repeat(np.minimum.reduceat(data, starts), lengths)
    ok = np.abs(ratio - np.rint(ratio)) <= 1e-4 + 1e-5 * ratio
    return np.logical_and.reduceat(ok, starts)


def classify_scale(X: sp.csr_matrix) -> str | None:
    """``"counts"`` (every value an integer), ``"log"`` (max below :data:`LOG_MAX` and each row's ``expm1``
    values, not the values, are integer multiples of the row's smallest), else ``None``.

    Parameters
    ----------
    X
        (n_rows, n_vars) sample of the matrix.
    """
    X = sp.csr_matrix(X, dtype=np.float64)
    X.eliminate_zeros()
    data = X.data
    if data.size == 0 or data.min() < 0 or not np.isfinite(data).all():
        return None  # nothing to judge; negative values are refused by run itself
    if np.array_equal(data, np.rint(data)):
        return "counts"
    if data.max() >= LOG_MAX:
        return None
    lengths = np.diff(X.indptr)
    rows = np.flatnonzero(lengths >= 2)
    if len(rows) < MIN_ROWS:
        return None
    sub = X[rows]
    spread = np.maximum.reduceat(sub.data, sub.indptr[:-1]) > np.minimum.reduceat(sub.data, sub.indptr[:-1])
    if spread.sum() < MIN_ROWS:
        return None
    linear = _ratios_integral(sub.data, sub.indptr)[spread].mean()
    logged = _ratios_integral(np.expm1(sub.data), sub.indptr)[spread].mean()
    return "log" if logged >= 0.9 and linear < 0.5 else None


def scale_warning(X: sp.csr_matrix, layer: str) -> str | None:
    """The warning for matrix ``layer`` whose first rows are ``X``, or ``None`` when it looks normalised."""
    kind = classify_scale(X)
    advice = ("stLearn's LR score expects normalize_total output without log1p: run sd.pp.normalize_total(ds) "
              "(then ds.write()) and pass layer='normalized'")
    if kind == "counts":
        return (f"matrix {layer!r} looks like raw counts (every value of its first {X.shape[0]:,} rows is an "
                f"integer); {advice}")
    if kind == "log":
        return (f"matrix {layer!r} looks log-transformed (max {X.max():.3g} < {LOG_MAX:g}, and expm1 of each row's "
                f"values, not the values, are multiples of the row's smallest); {advice}")
    return None


__all__ = ["SAMPLE_ROWS", "classify_scale", "scale_warning"]
