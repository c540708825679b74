"""The CPU background-count kernel (``background_counts``) against a direct NumPy count.

The kernel groups rows, compacts each LR's genes, reorders the pairs and divides neighbour sums as it reads
them; none of that may change a count. The reference here evaluates stLearn's score for every (entry, pair)
with NumPy in the reference's order and counts ``score >= observed``.
"""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

import stdask.backend.cpu.cci as kernels
from stdask.backend import get_kernel


def _reference(x, means, t_row, t_lr, t_obs, pl, pr, m):
    x, means = x.toarray(), means.toarray()
    out = np.empty(len(t_row), dtype=np.int64)
    for e, (i, j, s) in enumerate(zip(t_row, t_lr, t_obs)):
        xl, xr, ml, mr = x[i, pl[j]], x[i, pr[j]], means[i, pl[j]], means[i, pr[j]]
        with np.errstate(invalid="ignore"):
            score = ((xl * (mr > m) + (xl > m) * mr) + (xr * (ml > m) + (xr > m) * ml)) / 2.0
        out[e] = np.count_nonzero(score >= s)
    return out


def _case(seed: int, n_rows=70, n_cols=40, n_lr=6, n_pairs=60, odd_rows=False):
    rng = np.random.default_rng(seed)
    # values on a coarse grid, so that background scores tie with observed ones
    x = sp.random(n_rows, n_cols, density=0.3, random_state=rng, data_rvs=lambda k: rng.integers(1, 5, k) / 2.0)
    sums = sp.random(n_rows, n_cols, density=0.5, random_state=rng, data_rvs=lambda k: rng.integers(1, 13, k) / 2.0)
    x, sums = sp.csr_matrix(x), sp.csr_matrix(sums)
    if odd_rows:  # rows that leave the "finite, >= 0" fast path: negative, infinite and NaN values
        x.data[x.indptr[3]] = -1.5
        x.data[x.indptr[10]] = np.inf
        sums.data[sums.indptr[20]] = np.nan
    divisor = rng.integers(1, 7, n_rows).astype(np.float64)
    means = sp.csr_matrix(sums, copy=True)
    means.data = means.data / np.repeat(divisor, np.diff(means.indptr))
    pl = rng.integers(0, n_cols, (n_lr, n_pairs)).astype(np.int32)
    pr = rng.integers(0, n_cols, (n_lr, n_pairs)).astype(np.int32)
    # entries grouped by row, each LR at most once per row; observed scores taken from the background
    # scores themselves (exact ties) and from a continuous range
    t_row, t_lr = np.nonzero(rng.random((n_rows, n_lr)) < 0.4)
    t_obs = np.where(rng.random(len(t_row)) < 0.5, rng.integers(1, 16, len(t_row)) / 4.0,
                     rng.uniform(0.01, 6.0, len(t_row)))
    return x, sums, means, divisor, t_row.astype(np.int64), t_lr.astype(np.int64), t_obs, pl, pr


@pytest.mark.parametrize("m", [0.0, 1.0])
@pytest.mark.parametrize("odd_rows", [False, True])
def test_counts_equal_direct_count(m, odd_rows, monkeypatch):
    x, sums, means, divisor, t_row, t_lr, t_obs, pl, pr = _case(1 + int(odd_rows), odd_rows=odd_rows)
    want = _reference(x, means, t_row, t_lr, t_obs, pl, pr, m)
    assert want.min() < want.max()  # the case discriminates
    kernel = get_kernel("background_counts", "cpu")
    assert np.array_equal(kernel(x, means, t_row, t_lr, t_obs, pl, pr, m), want)
    # sums divided inside the kernel: the same one division per value
    assert np.array_equal(kernel(x, sums, t_row, t_lr, t_obs, pl, pr, m, divisor=divisor), want)
    # an explicit layout, and rows taken 16 at a time (several row groups)
    layout = kernels.pair_layout(pl, pr, x.shape[1])
    monkeypatch.setattr(kernels, "_GROUP_BYTES", 1)
    assert np.array_equal(kernel(x, means, t_row, t_lr, t_obs, None, None, m, layout=layout), want)


def test_layout_is_a_regrouping_of_the_pairs():
    _, _, _, _, _, _, _, pl, pr = _case(3)
    lay = kernels.pair_layout(pl, pr, 40)
    for j in range(len(pl)):
        cols = lay.g_col[lay.g_ptr[j]:lay.g_ptr[j + 1]]
        assert np.array_equal(cols, np.unique(np.concatenate([pl[j], pr[j]])))
        got = sorted(zip(cols[lay.lp[j]], cols[lay.rp[j]]))
        assert got == sorted(zip(pl[j], pr[j]))  # the same pairs, with multiplicity
        assert np.all(np.diff(lay.rp[j].astype(np.int64)) >= 0)  # grouped by receptor side


def test_layout_cache_follows_the_arrays():
    x, _, means, _, t_row, t_lr, t_obs, pl, pr = _case(4)
    kernel = get_kernel("background_counts", "cpu")
    first = kernel(x, means, t_row, t_lr, t_obs, pl, pr, 0.0)
    pl2 = np.ascontiguousarray(pl[:, ::-1])  # other pairs (reversed ligand sides) in new arrays
    assert np.array_equal(kernel(x, means, t_row, t_lr, t_obs, pl2, pr, 0.0),
                          _reference(x, means, t_row, t_lr, t_obs, pl2, pr, 0.0))
    assert np.array_equal(kernel(x, means, t_row, t_lr, t_obs, pl, pr, 0.0), first)
