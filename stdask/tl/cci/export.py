"""AnnData export in stLearn's layout, so stLearn users' downstream code and plots run unchanged (registered
with :func:`stdask.dataset.register_exporter` by the package's front door)."""
from __future__ import annotations

import numpy as np
import pandas as pd

from .result import CCIResult
from .interaction_result import export_stlearn_interactions


def export_stlearn(ds, adata) -> None:
    """Rewrite stored CCI results into stLearn's keys on an exported AnnData (no-op without results).

    ``obsm['lr_scores' | 'p_vals' | 'p_adjs' | '-log10(p_adjs)' | 'lr_sig_scores']`` become dense float64
    (columns in ``uns['lr_summary']`` order), ``uns['lr_summary']`` and ``uns['lrfeatures']`` DataFrames;
    a stored spatial graph becomes ``obsm['spot_neighbours']`` / ``obsm['spot_neigh_bcs']``.
    """
    if "lr_cci" in adata.uns:
        res = CCIResult.load(ds)
        for key, mat in res.stlearn_obsm().items():
            adata.obsm[key] = mat
        adata.obsm.pop("lr_pval_counts", None)
        adata.uns["lr_summary"] = res.lr_summary
        adata.uns["lrfeatures"] = res.lrfeatures
    export_stlearn_interactions(ds, adata)  # run_cci: stLearn's lr_cci_* / per_lr_cci_* keys
    conn = adata.obsp.get("spatial_connectivities") if hasattr(adata.obsp, "get") else None
    if conn is None and "spatial_connectivities" in adata.obsp:
        conn = adata.obsp["spatial_connectivities"]
    if conn is not None and "spot_neighbours" not in adata.obsm:
        conn = conn.tocsr()
        names = np.asarray(adata.obs_names)
        idx = [conn.indices[conn.indptr[i]:conn.indptr[i + 1]] for i in range(adata.n_obs)]
        adata.obsm["spot_neighbours"] = pd.DataFrame(
            {"neighbour_indices": [",".join(map(str, r)) for r in idx]}, index=adata.obs_names)
        adata.obsm["spot_neigh_bcs"] = pd.DataFrame(
            {"neighbour_bcs": [",".join(names[r]) for r in idx]}, index=adata.obs_names)
