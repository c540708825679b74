"""Readers and writers of the table's elements, registered in :mod:`stdask.store.encoding`.

AnnData encodings keep their AnnData names and versions and are read and written by anndata's own element
functions, so ``anndata.read_zarr`` reads every element stdask writes. Matrices that are too large to hold
arrive as :class:`RowBlocks` and are streamed: CSR row blocks into a ``csr_matrix`` element
(:class:`~stdask.store.csr.CsrStreamWriter`), dense ones into an ``array`` element, one block at a time.
Every element written here writes all its chunks with a ``crc32c`` checksum and records them when complete
(:mod:`stdask.store.chunks`).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .chunks import ANNDATA_KWARGS, WRITE_CONFIG, record_chunks, writing_every_chunk
from .csr import CSR_MATRIX, CsrStreamWriter, compressors
from .encoding import IOSpec, register_read, register_write

ARRAY = IOSpec("array", "0.2.0")
DATAFRAME = IOSpec("dataframe", "0.2.0")
DICT = IOSpec("dict", "0.1.0")
STRING_ARRAY = IOSpec("string-array", "0.2.0")
ANNDATA = IOSpec("anndata", "0.1.0")

#: every AnnData encoding stdask reads (through anndata); the ones above are those stdask writes itself
ANNDATA_SPECS = (
    CSR_MATRIX, ARRAY, DATAFRAME, DICT, STRING_ARRAY,
    IOSpec("csc_matrix", "0.1.0"), IOSpec("dataframe", "0.1.0"), IOSpec("categorical", "0.2.0"),
    IOSpec("nullable-integer", "0.1.0"), IOSpec("nullable-boolean", "0.1.0"),
    IOSpec("nullable-string-array", "0.1.0"), IOSpec("numeric-scalar", "0.2.0"), IOSpec("string", "0.2.0"),
    IOSpec("bytes", "0.2.0"), IOSpec("rec-array", "0.2.0"), IOSpec("awkward-array", "0.1.0"),
    IOSpec("null", "0.1.0"), ANNDATA, IOSpec("raw", "0.1.0"),
)


@register_read(*ANNDATA_SPECS)
def read_anndata(node) -> Any:
    """An AnnData-encoded element, read whole into memory by anndata."""
    from anndata.io import read_elem

    return read_elem(node)


def write_anndata(parent, key: str, value: Any) -> None:
    """Write ``value`` as ``parent[key]`` with anndata's element writer (it picks the encoding); every chunk
    is written with a ``crc32c`` checksum and recorded."""
    from anndata.io import write_elem

    with warnings.catch_warnings(), writing_every_chunk():
        # anndata's small elements (obs columns, uns) are unsharded on purpose; zarr's notice about
        # future default sharding is noise for users
        warnings.filterwarnings("ignore", message=".*autosharding.*")
        write_elem(parent, key, value, dataset_kwargs=ANNDATA_KWARGS)
    record_chunks(parent[key])


# anndata's choice for everything not registered below (scalars, strings, categoricals, string arrays, ...);
# registered first, so every later registration takes precedence
register_write(None, object)(write_anndata)
register_write(DICT, dict)(write_anndata)
register_write(DATAFRAME, pd.DataFrame)(write_anndata)
register_write(CSR_MATRIX, sp.csr_matrix, sp.csr_array)(write_anndata)
register_write(ARRAY, np.ndarray, when=lambda a: a.dtype.kind in "biufc")(write_anndata)


@dataclass
class RowBlocks:
    """A matrix that arrives as consecutive row blocks, to be streamed into one element.

    Attributes
    ----------
    shape
        Shape of the whole matrix (rows first).
    dtype
        Value dtype.
    sparse
        Whether the blocks are scipy sparse (written as ``csr_matrix``) or dense (written as ``array``).
    max_rows
        Rows of the largest block (bounds the dense element's chunk length).
    blocks
        The blocks in row order; an iterator may compute them as they are consumed.
    """

    shape: tuple[int, ...]
    dtype: np.dtype
    sparse: bool
    max_rows: int
    blocks: Iterable


@register_write(CSR_MATRIX, RowBlocks, when=lambda m: m.sparse)
def write_csr_blocks(parent, key: str, m: RowBlocks) -> None:
    w = CsrStreamWriter(parent, key, m.shape[1], m.dtype)
    for b in m.blocks:
        b = sp.csr_matrix(b)
        b.sort_indices()
        w.append(b.indptr, b.indices, b.data)
    w.close()


@register_write(ARRAY, RowBlocks, when=lambda m: not m.sparse)
def write_dense_blocks(parent, key: str, m: RowBlocks) -> None:
    dtype = np.dtype(m.dtype)
    row_bytes = max(1, dtype.itemsize * int(np.prod(m.shape[1:])))
    # ~1 MiB chunks of whole rows, never longer than a block
    rows = min(m.max_rows, max(1, (1 << 20) // row_bytes))
    z = parent.create_array(key, shape=m.shape, dtype=dtype, chunks=(rows,) + tuple(m.shape[1:]),
                            compressors=compressors(), config=WRITE_CONFIG)
    r0 = 0
    for b in m.blocks:
        z[r0 : r0 + len(b)] = np.asarray(b)
        r0 += len(b)
    z.attrs.update(ARRAY.attrs())
    record_chunks(z)


__all__ = ["ANNDATA", "ARRAY", "DATAFRAME", "DICT", "STRING_ARRAY", "CSR_MATRIX", "ANNDATA_SPECS", "RowBlocks",
           "read_anndata", "write_anndata", "write_csr_blocks", "write_dense_blocks"]
