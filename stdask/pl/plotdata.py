"""One read interface for the plots: stLearn-layout CCI tables from an AnnData or a SpatialDataset.

``PlotData(data)`` accepts

- an :class:`anndata.AnnData` in stLearn's layout (``uns['lr_summary']``, ``uns['lrfeatures']``,
  ``obsm['lr_scores' | 'p_vals' | 'p_adjs' | '-log10(p_adjs)' | 'lr_sig_scores']``, ``uns['lr_cci_<label>']``,
  ``uns['per_lr_cci_<label>']`` ...), e.g. real stLearn output or a stdask export;
- a :class:`~stdask.dataset.SpatialDataset` with stdask's storage: the sparse results of
  :func:`stdask.tl.cci.run` (``uns['lr_cci']``, ``obsm['lr_scores' | 'lr_pval_counts' | 'p_adjs']``) and the
  ``uns['cci_interactions_<label>']`` dict of :func:`stdask.tl.cci.run_cci` ({"lrs", "types", "raw", "sig",
  "pvals", ...} with (n_lr, T, T) arrays);

and gives the same tables either way. Per-cell matrices are never densified: one LR column or one gene
column is read at a time.
"""
from __future__ import annotations

import functools
import warnings

import dask
import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..store.row_parts import iter_blocks
from ..tl.cci.interaction_result import CCIInteractions

#: stLearn's five (n_obs, n_lr) per-cell result matrices
STLEARN_RESULTS = ("lr_scores", "p_vals", "p_adjs", "-log10(p_adjs)", "lr_sig_scores")
_MISSING = object()


class MissingResultError(KeyError):
    """A result the plot needs is absent; the message says which function produces it."""

    def __str__(self) -> str:  # KeyError would print the message with quotes
        return str(self.args[0]) if self.args else ""


class PlotData:
    """stLearn-layout, read-only access to an AnnData or a SpatialDataset (see the module docstring).

    Parameters
    ----------
    data
        AnnData, :class:`~stdask.dataset.SpatialDataset` or another ``PlotData`` (returned as is by
        :func:`as_plotdata`).
    """

    def __init__(self, data) -> None:
        from ..dataset import SpatialDataset

        self.data = data
        if isinstance(data, SpatialDataset):
            self.kind = "dataset"
        elif all(hasattr(data, a) for a in ("obs", "obsm", "uns", "var_names")):
            self.kind = "anndata"
        else:
            raise TypeError(f"expected an AnnData or a stdask SpatialDataset, got {type(data).__name__}")
        self._cache: dict = {}

    # ---- observations ------------------------------------------------------------------------------------
    @functools.cached_property
    def obs(self) -> pd.DataFrame:
        return self.data.obs

    @property
    def n_obs(self) -> int:
        return int(self.data.n_obs)

    @property
    def obs_names(self) -> pd.Index:
        return pd.Index(self.data.obs_names)

    @property
    def var_names(self) -> pd.Index:
        return pd.Index(self.data.var_names)

    @functools.cached_property
    def coords(self) -> np.ndarray:
        """(n_obs, 2) float64 x, y: store units for a dataset; ``obs['imagecol', 'imagerow']`` (stLearn's
        scaled-image pixels), else ``obsm['spatial']``, for an AnnData."""
        if self.kind == "dataset":
            return np.asarray(self.data.coords, dtype=np.float64)
        a = self.data
        if {"imagecol", "imagerow"} <= set(a.obs.columns):  # what stLearn plots and measures distances on
            return a.obs[["imagecol", "imagerow"]].to_numpy(dtype=np.float64)
        if "spatial" in a.obsm:
            return np.asarray(a.obsm["spatial"], dtype=np.float64)[:, :2]
        raise MissingResultError("no coordinates: the AnnData has neither obsm['spatial'] nor obs['imagecol', "
                                 "'imagerow']")

    @property
    def unit(self) -> str:
        return str(self.data.unit) if self.kind == "dataset" else "pixel"

    @property
    def spot_diameter(self) -> float | None:
        if self.kind == "dataset":
            return self.data.spot_diameter
        sp_ = self.data.uns.get("spatial") if hasattr(self.data.uns, "get") else None
        try:
            lib = next(iter(sp_.values()))
            q = lib.get("use_quality", "hires")
            sf = lib["scalefactors"]
            return float(sf["spot_diameter_fullres"]) * float(sf.get(f"tissue_{q}_scalef", 1.0))
        except Exception:
            return None

    # ---- uns -------------------------------------------------------------------------------------------
    def uns_keys(self) -> list[str]:
        if self.kind == "anndata":
            return list(self.data.uns.keys())
        return self.data.result_keys("uns")

    def has_uns(self, key: str) -> bool:
        if self.kind == "anndata":
            return key in self.data.uns
        return key in self.uns_keys()

    def uns(self, key: str, default=_MISSING):
        if ("uns", key) in self._cache:
            return self._cache[("uns", key)]
        if self.has_uns(key):
            value = self.data.uns[key] if self.kind == "anndata" else self.data.get_result("uns", key)
        elif default is _MISSING:
            raise KeyError(key)
        else:
            return default
        self._cache[("uns", key)] = value
        return value

    # ---- LR hotspot results (run) ------------------------------------------------------------------------
    def lr_summary(self) -> pd.DataFrame:
        return self._run_table("lr_summary", "LR hotspot results")

    def lrfeatures(self) -> pd.DataFrame:
        return self._run_table("lrfeatures", "LR expression features")

    def _run_table(self, key: str, what: str) -> pd.DataFrame:
        """``uns[key]``, a per-LR table written by ``stdask.tl.cci.run``, as a DataFrame indexed by str."""
        if not self.has_uns(key):
            raise MissingResultError(f"no {what} (uns['{key}']): run stdask.tl.cci.run(data, lrs) "
                                     "first (stLearn: st.tl.cci.run)")
        if key not in self._cache:
            table = pd.DataFrame(self.uns(key)).copy()
            table.index = pd.Index([str(i) for i in table.index], dtype=object)
            self._cache[key] = table
        return self._cache[key]

    def lr_position(self, lr: str) -> int:
        lrs = self.lr_summary().index
        loc = lrs.get_indexer([lr])[0]
        if loc < 0:
            raise MissingResultError(f"LR {lr!r} is not in lr_summary (not a valid pair of stdask.tl.cci.run); "
                                     f"first ones: {list(lrs[:5])}")
        return int(loc)

    def _has_sparse_result(self) -> bool:
        return self.kind == "dataset" and self.has_uns("lr_cci")

    def _sparse_column(self, key: str, j: int, fill: float, rows_per_read: int = 1 << 18) -> np.ndarray:
        """(n_obs,) column ``j`` of a stored sparse obsm matrix, streamed in row blocks (memory: one block),
        ``fill`` where no entry is stored."""
        if ("obsm", key) in self.data.pending:
            m = self.data.get_result("obsm", key)
            if dask.is_dask_collection(m):  # a run's pending matrix: its row blocks, one at a time
                return np.concatenate([_column(sp.csr_matrix(b), j, fill) for b in iter_blocks(m)])
            return _column(sp.csr_matrix(m), j, fill)
        return self.data.result_column("obsm", key, j, fill, rows_per_read)

    def _has_obsm(self, key: str) -> bool:
        if self.kind == "anndata":
            return key in self.data.obsm
        return self.data.has_result("obsm", key)

    def _obsm_column(self, key: str, j: int) -> np.ndarray:
        m = self.data.obsm[key] if self.kind == "anndata" else self.data.get_result("obsm", key)
        col = m[:, j]
        if sp.issparse(col):
            col = col.toarray()
        return np.asarray(col, dtype=np.float64).ravel()

    def lr_values(self, lr: str, use_result: str = "lr_sig_scores") -> np.ndarray:
        """(n_obs,) float64 values of one LR from one of stLearn's five per-cell matrices (one column read).

        ``use_result``: ``'lr_scores'``, ``'p_vals'``, ``'p_adjs'``, ``'-log10(p_adjs)'`` or ``'lr_sig_scores'``;
        untested cells have score 0 and p = 1, as in stLearn.
        """
        if use_result not in STLEARN_RESULTS:
            raise ValueError(f"use_result must be one of {STLEARN_RESULTS}, got {use_result!r}")
        j = self.lr_position(lr)
        if self._has_sparse_result():  # stdask's storage (CCIResult.store): only tested entries, read per block
            meta = self.uns("lr_cci")
            if use_result in ("lr_scores", "lr_sig_scores"):
                v = self._sparse_column("lr_scores", j, 0.0)
                if use_result == "lr_sig_scores":
                    v = np.where(self._sparse_column("p_adjs", j, 1.0) < float(meta["cutoff"]), v, 0.0)
                return v
            if use_result == "p_vals":
                c = self._sparse_column("lr_pval_counts", j, -1.0)
                return np.where(c >= 0, np.maximum(c, 1) / float(meta["n_pairs"]), 1.0)
            padj = self._sparse_column("p_adjs", j, 1.0)
            return padj if use_result == "p_adjs" else -np.log10(padj)
        if self._has_obsm(use_result):
            return self._obsm_column(use_result, j)
        if use_result == "-log10(p_adjs)" and self._has_obsm("p_adjs"):
            return -np.log10(self._obsm_column("p_adjs", j))
        if use_result == "lr_sig_scores" and self._has_obsm("lr_scores") and self._has_obsm("p_adjs"):
            cutoff = 0.05
            return np.where(self._obsm_column("p_adjs", j) < cutoff, self._obsm_column("lr_scores", j), 0.0)
        raise MissingResultError(f"no obsm[{use_result!r}]: run stdask.tl.cci.run(data, lrs) first "
                                 "(stLearn: st.tl.cci.run)")

    # ---- genes -------------------------------------------------------------------------------------------
    def gene_values(self, gene: str, layer: str | None = None) -> np.ndarray:
        """(n_obs,) float64 expression of one gene; for a dataset only that column is kept from each tile."""
        loc = self.var_names.get_indexer([gene])[0]
        if loc < 0:
            raise MissingResultError(f"gene {gene!r} not in var_names")
        if self.kind == "anndata":
            X = self.data.X if layer is None else self.data.layers[layer]
            col = X[:, loc]
            col = col.toarray() if sp.issparse(col) else np.asarray(col)
            return np.asarray(col, dtype=np.float64).ravel()
        from ..cluster import compute

        m = self.data.matrix(layer or "X")
        j = int(loc)
        colm = m.map_blocks(lambda b: np.asarray(b[:, [j]].toarray(), dtype=np.float64),
                            chunks=(m.chunks[0], (1,)), dtype=np.float64, meta=np.empty((0, 0)))
        (v,) = compute(colm, progress=False, create=False)
        return np.asarray(v, dtype=np.float64).ravel()

    # ---- labels ------------------------------------------------------------------------------------------
    def labels(self, use_label: str) -> pd.Categorical:
        """``obs[use_label]`` as a categorical (categories: the column's own, else the sorted unique values)."""
        if use_label not in self.obs.columns:
            raise MissingResultError(f"obs has no column {use_label!r}; columns: {list(self.obs.columns)}")
        col = self.obs[use_label]
        if isinstance(col.dtype, pd.CategoricalDtype):
            return pd.Categorical(col.astype(str).to_numpy(), categories=[str(c) for c in col.cat.categories])
        vals = col.astype(str).to_numpy()
        return pd.Categorical(vals, categories=sorted(set(vals)))

    def label_colors(self, use_label: str | None, categories) -> list:
        """Colours of ``categories``: ``uns['<label>_colors']`` (in ``obs[use_label]`` category order) when
        stored, else a default palette over the column's categories, so a type keeps its colour in every plot."""
        categories = [str(c) for c in categories]
        allcats = categories
        if use_label is not None and use_label in self.obs.columns:
            allcats = list(self.labels(use_label).categories)
            allcats += [c for c in categories if c not in allcats]
        stored = self.uns(f"{use_label}_colors", None) if use_label is not None else None
        if stored is not None and len(stored) >= len(self.labels(use_label).categories):
            lut = dict(zip(self.labels(use_label).categories, [_to_rgba(c) for c in stored]))
            pal = palette(len(allcats))
            return [lut.get(c, pal[allcats.index(c)]) for c in categories]
        pal = palette(len(allcats))
        return [pal[allcats.index(c)] for c in categories]

    # ---- cell-type interactions (run_cci) -------------------------------------------------------------------
    def cci_labels(self) -> list[str]:
        """Labels for which cell-type interaction results are stored."""
        found = []
        if self.has_uns("lr_summary"):
            found += [c[len("n_cci_sig_"):] for c in self.lr_summary().columns if c.startswith("n_cci_sig_")]
        for k in self.uns_keys():
            if k.startswith("cci_interactions_"):
                found.append(k[len("cci_interactions_"):])
            elif k.startswith("per_lr_cci_") and not k.startswith(("per_lr_cci_raw_", "per_lr_cci_pvals_")):
                found.append(k[len("per_lr_cci_"):])
        return list(dict.fromkeys(found))

    def resolve_label(self, use_label: str | None) -> str:
        if use_label is not None:
            return str(use_label)
        labels = self.cci_labels()
        if len(labels) == 1:
            return labels[0]
        if not labels:
            raise MissingResultError("no cell-type interaction results: run stdask.tl.cci.run_cci(data, use_label) "
                                     "first (stLearn: st.tl.cci.run_cci)")
        raise ValueError(f"results exist for several labels {labels}; pass use_label=")

    def interactions(self, use_label: str | None = None) -> CCIInteractions:
        label = self.resolve_label(use_label)
        key = ("interactions", label)
        if key in self._cache:
            return self._cache[key]
        stored = self.uns(f"cci_interactions_{label}", None)
        summary = self.uns("lr_summary", None)
        if stored is not None:
            it = CCIInteractions.from_dict(label, dict(stored), summary)
        elif self.has_uns(f"per_lr_cci_{label}") or self.has_uns(f"per_lr_cci_raw_{label}"):
            it = CCIInteractions.from_stlearn(label, self.uns(f"per_lr_cci_{label}", None),
                                              self.uns(f"per_lr_cci_raw_{label}", None),
                                              self.uns(f"per_lr_cci_pvals_{label}", None), summary)
        else:
            raise MissingResultError(f"no cell-type interaction results for use_label={label!r}: run "
                                     f"stdask.tl.cci.run_cci(data, {label!r}) first (stLearn: st.tl.cci.run_cci)")
        if it.stale:
            warnings.warn(f"the run_cci results for {label!r} predate the last adj_pvals (significance calls "
                          "changed); re-run stdask.tl.cci.run_cci", stacklevel=3)
        self._cache[key] = it
        return it

    def type_order(self, use_label: str | None, types) -> list[str]:
        """``obs[use_label].cat.categories`` that occur in ``types``, then any other type of ``types``."""
        types = [str(t) for t in types]
        cats = []
        if use_label is not None and use_label in self.obs.columns:
            cats = [c for c in self.labels(use_label).categories if c in set(types)]
        return cats + [t for t in types if t not in set(cats)]

    def cci_matrix(self, use_label: str | None = None, lr: str | None = None,
                   sig_interactions: bool = True) -> pd.DataFrame:
        """stLearn's "matrix" (spec §13): ``lr_cci_<label>`` / ``lr_cci_raw_<label>`` with ``lr=None``, else the
        LR's ``per_lr_cci_<label>`` / ``per_lr_cci_raw_<label>`` entry; rows and columns in category order."""
        label = self.resolve_label(use_label)
        if lr is None:
            key = f"lr_cci_{label}" if sig_interactions else f"lr_cci_raw_{label}"
            df = self.uns(key, None)
            if df is None:
                it = self.interactions(label)
                df = pd.DataFrame(_found(it.counts, sig_interactions).sum(axis=0), index=pd.Index(it.types),
                                  columns=pd.Index(it.types))
            df = pd.DataFrame(df).rename(index=str, columns=str)
        else:
            df = _found(self.interactions(label).matrix, lr, sig_interactions)
        order = self.type_order(label, df.index)
        return df.reindex(index=order, columns=order, fill_value=0)


def _found(read, *args):
    """``read(*args)``, with the ``KeyError`` of a result that is not stored raised as :class:`MissingResultError`."""
    try:
        return read(*args)
    except MissingResultError:
        raise
    except KeyError as exc:
        raise MissingResultError(exc.args[0] if exc.args else "") from None


def _column(m: sp.csr_matrix, j: int, fill: float) -> np.ndarray:
    c = m[:, j].tocoo()
    out = np.full(m.shape[0], fill, dtype=np.float64)
    out[c.row] = c.data
    return out


def _to_rgba(c):
    from matplotlib.colors import to_rgba

    return to_rgba(c)


def palette(n: int) -> list:
    """``n`` distinct RGBA colours: tab10 (n <= 10), tab20 (n <= 20), tab20 + tab20b + tab20c (n <= 60),
    else evenly spaced on turbo."""
    import matplotlib

    if n <= 10:
        cols = list(matplotlib.colormaps["tab10"].colors)
    elif n <= 20:
        cols = list(matplotlib.colormaps["tab20"].colors)
    elif n <= 60:
        cols = [c for name in ("tab20", "tab20b", "tab20c") for c in matplotlib.colormaps[name].colors]
    else:
        cmap = matplotlib.colormaps["turbo"]
        cols = [cmap(x) for x in np.linspace(0, 1, n)]
    return [_to_rgba(c) for c in cols[:n]]


def as_plotdata(data) -> PlotData:
    """``data`` wrapped once; pass a ``PlotData`` to several plots to share its caches (the report does)."""
    return data if isinstance(data, PlotData) else PlotData(data)
