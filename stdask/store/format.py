"""Store format constants and the element-encoding registry.

Every stdask-specific element carries an ``encoding`` name and ``version``; readers look the pair up
here (the anndata ``IORegistry`` pattern) and an unknown version fails with a message naming the
element and the version, instead of misreading data written by a newer stdask.
"""
from __future__ import annotations

#: name and version of the whole-store layout (root attribute ``stdask``)
STORE_ENCODING = "stdask-slice"
STORE_VERSION = 1

#: element encodings this stdask understands: name -> supported versions
ENCODINGS: dict[str, tuple[int, ...]] = {
    STORE_ENCODING: (1,),
    "stdask-tiling": (1,),
    "stdask-raster": (1,),  # images/<name>: a tiled raster (stdask.raster.store)
}

TABLE = "table"  # name of the main table under tables/
TABLE_PATH = f"tables/{TABLE}"


class StoreFormatError(ValueError):
    """The store is incomplete, corrupt, or written by a stdask version this one cannot read."""


def check_encoding(element: str, encoding: str | None, version: int | None) -> None:
    """Raise :class:`StoreFormatError` unless (encoding, version) is one this stdask reads."""
    if encoding is None:
        raise StoreFormatError(f"{element}: no stdask encoding recorded; not a (complete) stdask store")
    if encoding not in ENCODINGS:
        raise StoreFormatError(f"{element}: unknown encoding {encoding!r} (known: {', '.join(ENCODINGS)})")
    if version not in ENCODINGS[encoding]:
        raise StoreFormatError(
            f"{element}: encoding {encoding!r} version {version!r} is not supported by this stdask "
            f"(supports {ENCODINGS[encoding]}); upgrade stdask to read it"
        )
