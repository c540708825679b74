"""The on-disk slice: zarr v3 layout, element encodings (one registry), tiling, streaming writer (atomic
commit), lazy reader.

The element modules are imported here so that the encoding registry (:mod:`.encoding`) knows every
encoding whichever store module is imported first.
"""
from . import elements, raster, reader, tables, tile_index  # noqa: F401  (they register their encodings)
