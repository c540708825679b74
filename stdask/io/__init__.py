"""External formats in and out of a store: readers (:mod:`stdask.io.readers`) behind one interface."""
from stdask.io.base import (  # noqa: F401
    EntryChunk,
    InputError,
    PointChunk,
    RecordChunk,
    Source,
    open_source,
    register_source,
    source_formats,
)
from stdask.io import readers  # noqa: F401  (registers the input formats)
