"""The row-parallel CSR product (the neighbour sums of the LR analysis) gives scipy's arrays byte for byte: the
same sums in the same order, entries in scipy's order per row, exact zero sums dropped, for any thread count."""
from __future__ import annotations

import numba
import numpy as np
import pytest
import scipy.sparse as sp

from stdask.backend.cpu.sparse import csr_product


def same_arrays(a: sp.csr_matrix, b: sp.csr_matrix) -> bool:
    return (a.shape == b.shape and np.array_equal(a.indptr, b.indptr) and np.array_equal(a.indices, b.indices)
            and np.array_equal(a.data, b.data))


@pytest.mark.parametrize("n,m,k", [(0, 4, 3), (1, 6, 5), (300, 400, 90), (1100, 800, 40)])
def test_equals_scipy_byte_for_byte(n, m, k):
    rng = np.random.default_rng(n + m + k)
    # weights and values of very different magnitudes: the order of each sum shows in its bits
    A = sp.random(n, m, density=0.03, format="csr", random_state=rng,
                  data_rvs=lambda s: rng.random(s) * 10.0 ** rng.integers(-6, 7, s))
    B = sp.random(m, k, density=0.3, format="csr", random_state=rng,
                  data_rvs=lambda s: rng.normal(size=s) * 10.0 ** rng.integers(-6, 7, s))
    ref = A @ B
    got = csr_product(A, B)
    assert same_arrays(got, ref)
    if n > 300:
        # the entries are not sorted (scipy's order is the reverse of first touch), so a sorted copy differs
        assert not np.array_equal(got.indices, ref.sorted_indices().indices)


def test_exact_zero_sums_are_dropped_as_scipy_drops_them():
    A = sp.csr_matrix(np.array([[1.0, 1.0, 0.0], [1.0, 0.0, 1.0], [0.0, 0.0, 0.0]]))
    B = sp.csr_matrix(np.array([[1.0, 2.0, 0.0], [-1.0, 3.0, 4.0], [-1.0, -2.0, 0.5]]))
    ref, got = A @ B, csr_product(A, B)
    assert same_arrays(got, ref) and got.nnz == 3  # 1 - 1 (row 0) and 1 - 1, 2 - 2 (row 1) are not stored
    np.testing.assert_array_equal(got.toarray(), A.toarray() @ B.toarray())


def test_same_arrays_for_any_thread_count():
    rng = np.random.default_rng(7)
    A = sp.random(2000, 2000, density=0.005, format="csr", random_state=rng)
    B = sp.random(2000, 60, density=0.2, format="csr", random_state=rng)
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = csr_product(A, B)
    finally:
        numba.set_num_threads(before)
    assert same_arrays(one, csr_product(A, B)) and same_arrays(one, A @ B)


def test_refuses_misaligned_or_non_float64():
    with pytest.raises(ValueError, match="do not align"):
        csr_product(sp.csr_matrix((2, 3)), sp.csr_matrix((4, 2)))
    with pytest.raises(TypeError, match="float64"):
        csr_product(sp.csr_matrix((2, 3), dtype=np.float32), sp.csr_matrix((3, 2)))
