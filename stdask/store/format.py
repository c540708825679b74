"""Store layout constants and the store's format error.

The encodings of the store's elements and the versions this stdask reads are kept in one registry,
:mod:`stdask.store.encoding`.
"""
from __future__ import annotations

#: name and version of the whole-store layout (root attribute ``stdask``)
STORE_ENCODING = "stdask-slice"
STORE_VERSION = 1

TABLE = "table"  # name of the main table under tables/
TABLE_PATH = f"tables/{TABLE}"
IMAGES = "images"  # rasters: images/<name>


class StoreFormatError(ValueError):
    """The store is incomplete, corrupt, or written by a stdask version this one cannot read."""


class StoreDamageError(StoreFormatError):
    """A chunk the store recorded as written is missing, or fails its checksum: the store is damaged."""
