"""stImpute on datasets (``stdask.tl.impute``): imputation of unmeasured genes from an scRNA-seq reference,
streamed into a second table of the store (:func:`~.run.impute`), and the paper's gene cross-validation with a
kNN baseline (:func:`~.cv.impute_cv`). The network and training live in :mod:`stdask.models.stimpute`."""
from .cv import ImputeCV, impute_cv
from .run import MAX_GENES, impute

__all__ = ["ImputeCV", "MAX_GENES", "impute", "impute_cv"]
