"""Preprocessing out of core, tile by tile, with scanpy's numbers (``stdask.pp``).

Each function takes the dataset first, reads a matrix named by ``layer=`` (``"X"`` = the stored counts, or a
layer: pending from an earlier step, or stored) and records its result under ``key_added=`` (lazily for
matrices; ``ds.write()`` stores everything). The default chain::

    stdask.pp.normalize_total(ds)              # X -> layers["normalized"]
    stdask.pp.log1p(ds)                        # -> layers["log1p"]
    stdask.pp.highly_variable_genes(ds, n_top_genes=2000)   # -> varm["hvg"] (highly_variable, ...)
    stdask.pp.scale(ds, max_value=10)          # optional: -> layers["scaled"] (dense per chunk)
    stdask.pp.pca(ds)                          # -> obsm["X_pca"], varm["PCs"], uns["pca"]
    stdask.pp.neighbors(ds)                    # -> obsp["distances"], obsp["connectivities"]
    stdask.pp.leiden(ds)                       # -> obs["leiden"]
"""
from .clustering import leiden, louvain
from .filter import filter_cells, filter_genes, subset
from .hvg import highly_variable_genes
from .neighbors import neighbors
from .normalize import log1p, normalize_total, scale
from .pca import pca
from .qc import calculate_qc_metrics

from .binning import bin  # noqa: A004  (scanpy-style name)
