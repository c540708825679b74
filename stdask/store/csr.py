"""The CSR matrix element (AnnData ``csr_matrix`` encoding, version 0.1.0): sharded 1-D arrays written by
streaming, and contiguous row ranges read back.

A CSR element is a group with ``data``, ``indices`` and ``indptr`` and the attributes ``encoding-type``,
``encoding-version`` and ``shape``, exactly as anndata writes it, so ``anndata.read_zarr`` reads it.
:class:`CsrStreamWriter` appends row blocks through :class:`ShardedAppender`, which only ever writes whole
shards: no shard is read back and rewritten, and memory stays bounded by one shard per array.
Every shard is written and checksummed, and the element records its shards when it is closed
(:mod:`stdask.store.chunks`), so :func:`read_csr_range` refuses a missing or damaged one.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import zarr
from zarr.codecs import BloscCodec

from .chunks import WRITE_CONFIG, checksummed, read_checked, record_chunks
from .encoding import IOSpec

CSR_MATRIX = IOSpec("csr_matrix", "0.1.0")

#: target size of one inner (compressed) chunk, bytes
INNER_CHUNK_BYTES = 1 << 20
#: inner chunks per shard (32 x 1 MiB = 32 MiB shards before compression; a shard is encoded in memory
#: at once, so this bounds the writer's transient memory)
CHUNKS_PER_SHARD = 32


def compressor() -> BloscCodec:
    return BloscCodec(cname="zstd", clevel=5, shuffle="bitshuffle")


def compressors() -> list:
    """The byte codecs of every array stdask creates: :func:`compressor`, then a ``crc32c`` checksum."""
    return checksummed(compressor())


def index_dtype(n_vars: int) -> np.dtype:
    """Gene-index dtype: int32.

    DESIGN.md asked for uint16 when genes < 65,536, but scipy and anndata warn on (and re-cast) unsigned
    index arrays on every read, so every scverse user of the store would see a warning. With bitshuffle +
    zstd the always-zero high bytes of int32 indices compress away (measured in ``bench/ingest.py``).
    """
    if n_vars > np.iinfo(np.int32).max:
        raise ValueError(f"{n_vars} genes do not fit int32 indices")
    return np.dtype(np.int32)


def create_1d(group: zarr.Group, name: str, dtype: np.dtype, length: int = 0, chunk_elems: int | None = None):
    """A sharded, compressed, checksummed 1-D array with ~1 MiB inner chunks; every shard is written."""
    dtype = np.dtype(dtype)
    inner = chunk_elems or max(INNER_CHUNK_BYTES // dtype.itemsize, 1)
    return group.create_array(
        name, shape=(length,), dtype=dtype, chunks=(inner,), shards=(inner * CHUNKS_PER_SHARD,),
        compressors=compressors(), config=WRITE_CONFIG,
    )


class ShardedAppender:
    """Append a 1-D stream to a zarr array, writing only whole shards until :meth:`close`.

    Parameters
    ----------
    group
        Parent zarr group.
    name
        Array name.
    dtype
        Element dtype.
    """

    def __init__(self, group: zarr.Group, name: str, dtype: np.dtype) -> None:
        self.array = create_1d(group, name, dtype)
        self.dtype = np.dtype(dtype)
        self.shard = self.array.shards[0]
        self._buf: list[np.ndarray] = []
        self._buffered = 0
        self.length = 0  # elements written to the array so far

    def append(self, values: np.ndarray) -> None:
        if len(values) == 0:
            return
        self._buf.append(np.asarray(values, dtype=self.dtype))
        self._buffered += len(values)
        if self._buffered >= self.shard:
            self._flush(final=False)

    def _flush(self, final: bool) -> None:
        if not self._buffered:
            return
        data = np.concatenate(self._buf) if len(self._buf) > 1 else self._buf[0]
        n_write = len(data) if final else (len(data) // self.shard) * self.shard
        if n_write:
            start = self.length
            self.array.resize((start + n_write,))
            self.array[start : start + n_write] = data[:n_write]
            self.length += n_write
        rest = data[n_write:]
        self._buf = [rest] if len(rest) else []
        self._buffered = len(rest)

    def close(self) -> int:
        self._flush(final=True)
        return self.length


class CsrStreamWriter:
    """Write one CSR matrix (AnnData ``csr_matrix`` encoding) from row blocks appended in order."""

    def __init__(self, parent: zarr.Group, name: str, n_vars: int, dtype: np.dtype) -> None:
        self.group = parent.create_group(name)
        self.n_vars = int(n_vars)
        self.data = ShardedAppender(self.group, "data", dtype)
        self.indices = ShardedAppender(self.group, "indices", index_dtype(n_vars))
        self._indptr: list[np.ndarray] = [np.zeros(1, dtype=np.int64)]
        self.nnz = 0
        self.n_rows = 0
        self.max_value = 0

    def append(self, indptr: np.ndarray, indices: np.ndarray, data: np.ndarray) -> None:
        """Append rows given as a local CSR block (``indptr[0] == 0``)."""
        if len(indptr) <= 1:
            return
        self._indptr.append(np.asarray(indptr[1:], dtype=np.int64) + self.nnz)
        self.indices.append(indices)
        self.data.append(data)
        if len(data):
            self.max_value = max(self.max_value, data.max())
        self.nnz += int(indptr[-1])
        self.n_rows += len(indptr) - 1

    def close(self) -> None:
        assert self.data.close() == self.nnz and self.indices.close() == self.nnz
        indptr = np.concatenate(self._indptr)
        # int32 while it fits, like scipy: anndata hands the arrays to scipy unchecked, and scipy kernels
        # reject an int64 indptr next to int32 indices
        ptr_dtype = np.int32 if self.nnz <= np.iinfo(np.int32).max else np.int64
        indptr = indptr.astype(ptr_dtype)
        arr = create_1d(self.group, "indptr", ptr_dtype, length=len(indptr))
        arr[:] = indptr
        self.group.attrs.update({**CSR_MATRIX.attrs(), "shape": [self.n_rows, self.n_vars]})
        record_chunks(self.group)


def read_csr_range(g: zarr.Group, start: int, stop: int, n_vars: int) -> sp.csr_matrix:
    """Rows ``start:stop`` of the CSR element ``g`` as a CSR matrix (int32 indices); one contiguous read
    of ``indptr``, ``indices`` and ``data`` each, refused if a shard it touches is missing or damaged."""
    indptr = np.asarray(_read(g, "indptr", start, stop + 1), dtype=np.int64)
    a, b = int(indptr[0]), int(indptr[-1])
    indices = _read(g, "indices", a, b).astype(np.int32)
    data = _read(g, "data", a, b)
    return sp.csr_matrix((data, indices, indptr - a), shape=(stop - start, n_vars))


def _read(g: zarr.Group, name: str, start: int, stop: int) -> np.ndarray:
    return read_checked(g[name], slice(start, stop))
