"""Analyses on datasets (``stdask.tl``): ``cci`` (stLearn's LR hotspots, cell-type interactions, LR databases),
``spaseg`` (SpaSEG spatial domains), ``stague`` (STAGUE domains, embedding and learned cell graph),
``impute`` / ``impute_cv`` (stImpute: genes imputed from an scRNA-seq reference into a second table), ``svg`` (domain-specific spatially variable genes), ``grid`` and ``metrics``.
Each takes the dataset first and records its results in it (pending until ``ds.write()``; ``copy=True`` leaves
it untouched, :mod:`stdask.results`)."""
from . import cci, metrics
from .grid import grid
from .cci.domains import lr_score
from .spaseg import spa_seg, spaseg
from .stague import stague
from .impute import impute, impute_cv
from .svg import svg

__all__ = ["cci", "metrics", "grid", "spaseg", "spa_seg", "stague", "impute", "impute_cv", "lr_score", "svg"]
