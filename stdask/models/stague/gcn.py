"""GCN propagation with PyG ``GCNConv`` semantics on an adjacency that is already normalised (spec §5.1).

``GCN(H; A) = P (H W) + b`` with ``P = D~^-1/2 A~^T D~^-1/2``, ``A~ = A + I`` (diagonal set to 1) and
``D~`` the column sums of ``A~``. Written with index operations, so neither torch_sparse nor
torch_scatter is needed."""
from __future__ import annotations

import warnings

from .config import _torch


def gcn_propagate(x, index, value, n: int, renormalize: bool = True):
    """Apply P to node features.

    Parameters
    ----------
    x
        (n, d) float node features (already multiplied by W).
    index, value
        (2, E) int64 (row i, col j) and (E,) float entries ``A_ij``; may be asymmetric (after edge dropout).
    n
        Number of nodes.
    renormalize
        ``True``: add self loops (any stored diagonal entry is replaced by 1) and normalise by
        ``D~^-1/2 . D~^-1/2`` with in-degrees (column sums), as PyG does. ``False``: ``out = A^T x``.

    Returns
    -------
    (n, d) float: ``out_j = sum_i P_ji x_i``.
    """
    torch = _torch()
    row, col = index[0], index[1]
    if renormalize:
        off = row != col
        loop = torch.arange(n, device=x.device)
        row = torch.cat([row[off], loop])
        col = torch.cat([col[off], loop])
        w = torch.cat([value[off], torch.ones(n, dtype=value.dtype, device=value.device)])
        deg = torch.zeros(n, dtype=w.dtype, device=w.device).index_add(0, col, w)
        dinv = deg.pow(-0.5)
        dinv = torch.where(torch.isinf(dinv), torch.zeros_like(dinv), dinv)
        w = dinv[row] * w * dinv[col]
    else:
        w = value
    # a sparse (target, source) matrix product, not index_add over gathered rows: on the CPU it is 4x faster
    # forward and backward (measured: 2,000 nodes, 40,000 edges, 512 features, 1 thread: 0.07 vs 0.27 s)
    with warnings.catch_warnings():
        # torch warns once that invariant checks are off; the indices are in range by construction
        warnings.filterwarnings("ignore", "Sparse invariant checks", UserWarning)
        m = torch.sparse_coo_tensor(torch.stack([col, row]), w.to(x.dtype), (n, n), check_invariants=False)
    return torch.sparse.mm(m, x)


def gcn_layer_class():
    """The :class:`GCNLayer` module class (built lazily so importing the package does not import torch)."""
    torch = _torch()
    nn = torch.nn

    class GCNLayer(nn.Module):
        """One GCN layer: ``P (H W) + b``; W Glorot-uniform and b zero, as PyG's ``GCNConv``."""

        def __init__(self, in_dim: int, out_dim: int, renormalize: bool = True) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.empty(in_dim, out_dim))
            self.bias = nn.Parameter(torch.zeros(out_dim))
            self.renormalize = renormalize
            nn.init.xavier_uniform_(self.weight)

        def forward(self, x, adj):
            """``x``: (n, in_dim); ``adj``: (index, value, n). Returns (n, out_dim)."""
            index, value, n = adj
            return gcn_propagate(x @ self.weight, index, value, n, self.renormalize) + self.bias

    return GCNLayer
