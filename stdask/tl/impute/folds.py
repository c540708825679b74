"""The paper's cross-validation over genes (spec ``stimpute.md`` §11): ``KFold(5, shuffle=True, random_state=0)``
over the sorted shared genes; each fold's test genes are held out of training and predicted."""
from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["gene_folds"]


def gene_folds(shared_genes: Sequence[str], folds: int = 5, seed: int = 0) -> list[np.ndarray]:
    """Test genes of each fold, as scikit-learn's ``KFold(folds, shuffle=True, random_state=seed)`` splits the
    sorted gene names.

    Parameters
    ----------
    shared_genes
        (S,) unique gene names. The folds are drawn over the names sorted (the reference's order), so they do
        not depend on the order given; the returned positions index ``shared_genes`` as given (for the sorted
        ``GeneMatch.shared`` they are the KFold test indices themselves).
    folds
        Number of folds, ``2 <= folds <= S``.
    seed
        KFold's ``random_state``.

    Returns
    -------
    list of ``folds`` (n_f,) int64 arrays, ascending; together they hold every position once.

    Raises
    ------
    ValueError
        ``folds < 2``, fewer shared genes than folds, or duplicated names.
    """
    from sklearn.model_selection import KFold

    names = np.asarray([str(g) for g in shared_genes], dtype=object)
    folds = int(folds)
    if folds < 2:
        raise ValueError(f"folds must be at least 2 (cross-validation holds out 1/folds of the genes), got {folds}")
    if names.size < folds:
        raise ValueError(f"{names.size} shared genes cannot be split into {folds} folds: every fold needs at least "
                         f"one test gene; use folds <= {names.size} or a reference sharing more genes")
    if np.unique(names).size != names.size:
        raise ValueError("shared_genes holds duplicated names; each gene can be in one fold only")
    order = np.argsort(names, kind="stable")  # position in the input of the i-th sorted gene
    split = KFold(n_splits=folds, shuffle=True, random_state=int(seed)).split(np.arange(names.size))
    return [np.sort(order[test]).astype(np.int64) for _, test in split]
