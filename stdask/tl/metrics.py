"""Clustering metrics: agreement with a ground truth (ARI, NMI) and label-free scores (Calinski-Harabasz,
silhouette, Davies-Bouldin), as SpaSEG reports them (scikit-learn's definitions).

Label-free scores are computed on a feature matrix (SpaSEG: ``X_pca``). The silhouette is quadratic in
the number of observations, so above ``sample_size`` observations it is computed on a seeded random sample
(scikit-learn's ``sample_size``/``random_state``); the other two are linear and use every observation.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

#: observations above which the silhouette is estimated on a random sample
SILHOUETTE_SAMPLE = 10_000


def _paired(truth, pred) -> tuple[np.ndarray, np.ndarray]:
    t = pd.Series(np.asarray(truth, dtype=object))
    p = pd.Series(np.asarray(pred, dtype=object))
    if len(t) != len(p):
        raise ValueError(f"truth has {len(t)} labels, prediction {len(p)}")
    ok = t.notna().to_numpy() & p.notna().to_numpy()
    return pd.factorize(t[ok])[0], pd.factorize(p[ok])[0]


def ari(truth, pred) -> float:
    """Adjusted Rand index (observations with a missing label on either side are left out)."""
    from sklearn.metrics import adjusted_rand_score

    t, p = _paired(truth, pred)
    return float(adjusted_rand_score(t, p))


def nmi(truth, pred) -> float:
    """Normalised mutual information (arithmetic normalisation, scikit-learn's default)."""
    from sklearn.metrics import normalized_mutual_info_score

    t, p = _paired(truth, pred)
    return float(normalized_mutual_info_score(t, p))


def label_free(X, labels, *, sample_size: int = SILHOUETTE_SAMPLE, seed: int = 0) -> dict:
    """Calinski-Harabasz (``CHS``, higher is better), silhouette (``SC``, in [-1, 1]) and Davies-Bouldin
    (``DBS``, lower is better) of a labelling on features ``X`` ((n, d) array).

    All three need at least 2 labels and fewer labels than observations; otherwise they are NaN.
    """
    from sklearn.metrics import calinski_harabasz_score, davies_bouldin_score, silhouette_score

    X = np.asarray(X, dtype=np.float64)
    lab = pd.factorize(np.asarray(labels, dtype=object))[0]
    ok = lab >= 0
    X, lab = X[ok], lab[ok]
    k = len(np.unique(lab))
    if not 2 <= k < len(lab):
        return {"CHS": float("nan"), "SC": float("nan"), "DBS": float("nan")}
    sc_kw = {"sample_size": sample_size, "random_state": seed} if len(lab) > sample_size else {}
    return {"CHS": float(calinski_harabasz_score(X, lab)), "SC": float(silhouette_score(X, lab, **sc_kw)),
            "DBS": float(davies_bouldin_score(X, lab))}


def evaluate(ds, key: str, truth: str | None = None, use_rep: str | None = None, **kwargs) -> dict:
    """Scores of ``obs[key]`` of a dataset: ARI and NMI against ``obs[truth]`` when given, else the
    label-free scores on ``obsm[use_rep]`` (default ``f"{key}_pca"`` when present, else ``"X_pca"``)."""
    pred = ds.obs[key]
    if truth is not None:
        return {"ARI": ari(ds.obs[truth], pred), "NMI": nmi(ds.obs[truth], pred)}
    from ..cluster import compute

    rep = use_rep
    if rep is None:
        rep = f"{key}_pca"
        try:
            ds.get_result("obsm", rep)
        except KeyError:
            rep = "X_pca"
    X = ds.get_result("obsm", rep)
    if hasattr(X, "dask"):
        (X,) = compute(X, progress=False)
    return label_free(X, pred.to_numpy(), **kwargs)


__all__ = ["ari", "nmi", "label_free", "evaluate", "SILHOUETTE_SAMPLE"]
