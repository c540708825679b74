"""Synthetic spatial transcriptomics data and writers of the native input formats stdask ingests.

* :func:`synthetic_slice` -- a slice of any size with planted domains, cell types and ligand-receptor
  hotspots, streamed chunk by chunk (:mod:`.synthetic`, :mod:`.layouts`, :mod:`.counts`; keyed streams
  from :mod:`stdask.random_streams`);
  :class:`SyntheticSource` ingests one into a store of any size in bounded memory (:mod:`.source`).
* Writers (all streaming except h5ad): Stereo-seq GEM / cell-bin GEM and big benchmark GEMs (:mod:`.gem`),
  square-bin and cell-bin GEF (:mod:`.gef`), 10x MTX + ``cell_locations.tsv`` and Space Ranger ``outs/``
  (:mod:`.tenx`), stLearn / scanpy ``.h5ad`` (:mod:`.h5ad`). DNB-level placement is in :mod:`.dnb`.
"""
from .gef import write_cellbin_gef, write_gef
from .gem import write_bin1_gem, write_gem
from .h5ad import write_h5ad
from .source import SyntheticSource
from .synthetic import SyntheticParams, SyntheticSlice, SyntheticTruth, read_lr_pairs, synthetic_slice
from .tenx import write_mtx, write_visium
from .cosmx import write_cosmx
from .merscope import write_merscope
from .visium_hd import write_visium_hd
from .xenium import write_xenium

__all__ = [
    "SyntheticParams",
    "SyntheticSlice",
    "SyntheticSource",
    "SyntheticTruth",
    "read_lr_pairs",
    "synthetic_slice",
    "write_bin1_gem",
    "write_cellbin_gef",
    "write_gef",
    "write_gem",
    "write_h5ad",
    "write_mtx",
    "write_visium",
    "write_cosmx",
    "write_merscope",
    "write_visium_hd",
    "write_xenium",
]
