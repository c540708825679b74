"""What each random stream of the synthetic generator draws: the ``purpose`` word of its key.

Every random number of a synthetic slice comes from :func:`stdask.random_streams.sequence_stream` (or, for
the count matrix, :func:`stdask.random_streams.sequence_key`) keyed by ``(seed, purpose, block)``, ``block``
being the index of a fixed-size block of observations. A stream never depends on how the caller chunks its
reads, so the same seed gives bit-identical data for any ``chunk_size``. The values are part of the keys:
changing one changes every dataset drawn with it.
"""
from __future__ import annotations

PARAMS = 0  #: global parameters: genes, markers, domains, hotspots
OBS = 1  #: per-observation values: cell type, library size, hotspot role
JITTER = 2  #: per-observation position jitter ("cells" layout)
DNB = 3  #: placement of molecules on DNBs (GEM / GEF writers)
COUNTS = 5  #: counter-based uniforms of the count matrix (:mod:`stdask.datasets.counts`)
PAIRED_MODEL = 6  #: paired spatial + reference data (:mod:`.paired`): programs, states, platform, embedding
PAIRED_CELLS = 7  #: paired data: per-cell states, activities, library sizes (block 0 spatial, 1 reference)
PAIRED_SPATIAL = 8  #: paired data: counter-based uniforms of the spatial counts, per block of cells
PAIRED_REFERENCE = 9  #: paired data: counter-based uniforms of the reference counts, per block of cells
XENIUM = 10  #: synthetic Xenium outs/ (:mod:`.xenium`): cell ids, transcript positions and qv, controls, per chunk
VISIUM_HD = 11  #: synthetic Visium HD outs/ (:mod:`.visium_hd`): tissue mask, 2 um counts, per band of rows
COSMX = 12  #: synthetic CosMx flat files (:mod:`.cosmx`): cell shapes, stains, controls, molecule positions per chunk
MERSCOPE = 13  #: synthetic MERSCOPE region (:mod:`.merscope`): entity ids, blanks, transcript positions per chunk
