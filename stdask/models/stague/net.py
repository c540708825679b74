"""STAGUE's cell encoder (MLP + BatchNorm) and graph encoder (GCN layers + projection head), spec §3 and §5.2."""
from __future__ import annotations

from .config import STAGUEConfig, _torch
from .gcn import gcn_layer_class


def cell_encoder(n_genes: int, config: STAGUEConfig):
    """``Linear(G -> exp_out) -> ReLU -> Linear(exp_out -> exp_out) -> ReLU -> BatchNorm1d(exp_out)``
    (no BatchNorm when ``config.batch_norm`` is off). Maps (N, G) float32 to (N, exp_out)."""
    nn = _torch().nn
    w = config.exp_out
    mods = [nn.Linear(n_genes, w), nn.ReLU(), nn.Linear(w, w), nn.ReLU()]
    if config.batch_norm:
        mods.append(nn.BatchNorm1d(w))
    return nn.Sequential(*mods)


def _encoder_class():
    torch = _torch()
    nn = torch.nn
    GCNLayer = gcn_layer_class()

    class GraphEncoder(nn.Module):
        """``z = GCN(Dropout(ReLU(GCN(F; A))); A)`` (in -> hidden [-> hidden ...] -> rep), and the projection
        ``p = Linear(rep -> proj) -> ReLU -> Linear(proj -> proj)`` of z."""

        def __init__(self, in_dim: int, config: STAGUEConfig) -> None:
            super().__init__()
            dims = [in_dim] + [config.hidden_dim] * (config.nlayers - 1) + [config.rep_dim]
            self.layers = nn.ModuleList(GCNLayer(a, b, config.renormalize) for a, b in zip(dims[:-1], dims[1:]))
            self.dropout = nn.Dropout(config.dropout)
            self.proj = nn.Sequential(nn.Linear(config.rep_dim, config.proj_dim), nn.ReLU(),
                                      nn.Linear(config.proj_dim, config.proj_dim))

        def forward(self, x, adj):
            """``x``: (N, in_dim) float32; ``adj``: (index, value, N). Returns (z (N, rep), p (N, proj))."""
            for layer in self.layers[:-1]:
                x = self.dropout(torch.relu(layer(x, adj)))
            z = self.layers[-1](x, adj)
            return z, self.proj(z)

    return GraphEncoder


def graph_encoder(in_dim: int, config: STAGUEConfig):
    """A :class:`GraphEncoder` for ``in_dim`` input features (``exp_out``)."""
    return _encoder_class()(in_dim, config)
