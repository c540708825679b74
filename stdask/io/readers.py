"""Import every input-format reader so each registers itself with :func:`stdask.io.base.register_source`.

Registration order is the order :func:`stdask.io.base.open_source` tries ``detect``; the detectors do
not overlap (cell-bin GEF vs square-bin GEF are told apart by name and, for a plain ``.gef``, by the
``cellBin`` group), so the order only matters for speed.
"""
from __future__ import annotations

from stdask.io.gem import GemSource
from stdask.io.gef import CellbinGefSource, GefSource
from stdask.io.mtx import MtxSource
from stdask.io.visium import VisiumSource
from stdask.io.visium_hd import VisiumHDSource  # noqa: F401  (registers 'visium_hd')
from stdask.io.xenium import XeniumSource  # noqa: F401  (registers 'xenium')
from stdask.io.cosmx import CosMxSource  # noqa: F401  (registers 'cosmx')
from stdask.io.merscope import MerscopeSource  # noqa: F401  (registers 'merscope')
from stdask.io.xenium_transcripts import XeniumTranscriptsSource  # noqa: F401  (registers 'xenium_transcripts')
from stdask.io.spatialdata_zarr import SpatialDataZarrSource  # noqa: F401  (registers 'spatialdata')
from stdask.io.h5ad import H5adSource

__all__ = ["GemSource", "GefSource", "CellbinGefSource", "MtxSource", "VisiumSource", "H5adSource"]
