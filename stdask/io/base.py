"""The one small interface every input format implements, and the chunk types it streams.

The ingest pipeline (:mod:`stdask.io.ingest`) knows only this interface (the xarray-backends pattern):
a format is a :class:`Source` subclass registered with :func:`register_source`.

Two kinds of sources exist:

* ``kind == "records"``: point-level records that still have to be aggregated into observations
  (Stereo-seq GEM / GEF DNB records). They stream :class:`RecordChunk`; the pipeline bins them
  (``binN``) or groups them by cell id (cell-bin).
* ``kind == "obs"``: the observations are known up front (10x MTX + locations, Visium, h5ad,
  cell-bin GEF). They expose ``obs`` / ``coords`` and stream the non-zero entries of the
  obs x gene matrix as :class:`EntryChunk` (COO, any order, duplicates summed).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Iterator, Sequence

import numpy as np
import pandas as pd

#: centre-to-centre distance of Stereo-seq DNBs (um) where the input does not record it
DNB_PITCH_UM = 0.5
#: largest count a record or entry may hold (counts stream as uint32)
COUNT_MAX = int(np.iinfo(np.uint32).max)


class InputError(ValueError):
    """Malformed input. The message names the file and the line, record or field that is wrong."""


@dataclass
class RecordChunk:
    """A chunk of DNB-level records.

    Attributes
    ----------
    x, y
        (n,) int64 DNB coordinates.
    gene
        (n,) int32 index into :attr:`Source.var` rows.
    count
        (n,) uint32 MID counts (> 0).
    cell
        (n,) int64 cell ids (0 = not in a cell) or ``None`` when the input has no cell column.
    exon
        (n,) uint32 exon counts or ``None``.
    """

    x: np.ndarray
    y: np.ndarray
    gene: np.ndarray
    count: np.ndarray
    cell: np.ndarray | None = None
    exon: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.x)


@dataclass
class EntryChunk:
    """A chunk of non-zero matrix entries (COO).

    Attributes
    ----------
    row
        (n,) int64 index into :attr:`Source.obs` rows.
    gene
        (n,) int32 index into :attr:`Source.var` rows.
    value
        (n,) uint32 counts, or float32 for non-count matrices (e.g. a normalised h5ad ``X``).
    layer
        ``None`` for the main matrix ``X``, else the name of an AnnData layer.
    """

    row: np.ndarray
    gene: np.ndarray
    value: np.ndarray
    layer: str | None = None

    def __len__(self) -> int:
        return len(self.row)


@dataclass
class PointChunk:
    """A chunk of molecule-level points (decoded transcripts), kept as the store's points element.

    Attributes
    ----------
    x, y
        (n,) float64 positions in :attr:`Source.unit`.
    feature
        (n,) object array of str: the feature (gene or control) each molecule was decoded as.
    columns
        Further (n,) columns to keep, by name (e.g. ``cell_id`` str, ``qv`` float32, ``z`` float32 um,
        ``transcript_id`` uint64); the same names and dtypes in every chunk.
    """

    x: np.ndarray
    y: np.ndarray
    feature: np.ndarray
    columns: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.x)


class Source(ABC):
    """An input file or folder, opened lazily. Subclasses set ``format_name`` and ``kind``."""

    format_name: ClassVar[str]
    kind: ClassVar[str]  # "records" or "obs"
    #: file-name suffixes / markers this format is guessed from (used by :meth:`detect`)
    suffixes: ClassVar[tuple[str, ...]] = ()
    #: whether ``ingest(..., bin_size=N)`` picks one of the input's resolutions (Visium HD's square_00Num
    #: folders) and is passed to the source as its ``bin_size`` option, rather than binning DNB records
    takes_bin_size: ClassVar[bool] = False
    #: name of the store's shapes element (one circle per observation) the table annotates
    shapes_name: ClassVar[str] = "cells"

    def __init__(self, path: str | Path, **options: Any) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"{self.path}: no such file or directory")
        self.options = options

    @classmethod
    def detect(cls, path: Path) -> bool:
        """Whether ``path`` looks like this format (by name; must not read the whole file)."""
        name = path.name.lower()
        return any(name.endswith(s) for s in cls.suffixes)

    # --- metadata -------------------------------------------------------------------------
    @property
    @abstractmethod
    def var(self) -> pd.DataFrame:
        """Genes: index = unique gene names (str), optional columns such as ``gene_ids``."""

    @property
    def unit(self) -> str:
        """Unit of the coordinates: ``"DNB"``, ``"um"``, ``"pixel"``..."""
        return "um"

    @property
    def microns_per_unit(self) -> float | None:
        """Micrometres per coordinate unit (the scale of the store's ``global`` coordinate system); ``None`` when
        the input does not say. Default: 1 for ``"um"`` coordinates."""
        return 1.0 if self.unit == "um" else None

    @property
    def spot_diameter(self) -> float | None:
        """Spot / cell diameter in coordinate units, if the format records one."""
        return None

    @property
    def uns(self) -> dict:
        """Extra metadata to keep (e.g. AnnData ``uns['spatial']``); must be AnnData-writable."""
        return {}

    @property
    def value_dtype(self) -> np.dtype:
        """dtype of ``X`` values: uint32 for counts, float32 otherwise."""
        return np.dtype(np.uint32)

    # --- obs sources ------------------------------------------------------------------------
    @property
    def obs(self) -> pd.DataFrame:
        """Observations (``kind == "obs"`` only): index = unique barcodes (str), extra columns kept."""
        raise TypeError(f"{self.format_name} streams records, not observations")

    @property
    def coords(self) -> np.ndarray:
        """(n_obs, 2) float64 x, y of each observation, in :attr:`unit` (``kind == "obs"`` only)."""
        raise TypeError(f"{self.format_name} streams records, not observations")

    @property
    def obs_columns(self) -> pd.DataFrame:
        """The columns of :attr:`obs` (rows in the same order); the index is the names, or a ``RangeIndex`` when
        the source makes its names on demand (:meth:`obs_names`; it then guarantees they are unique)."""
        return self.obs

    def obs_names(self, rows: np.ndarray) -> np.ndarray:
        """(len(rows),) str names of the observations at positions ``rows`` of :attr:`obs` (``kind == "obs"``).

        Ingest asks for the names a tile at a time. A source with many observations may give :attr:`obs` a
        ``RangeIndex`` and make the names here on demand (Visium HD's barcodes), so no whole-slice column of
        Python strings is ever held.
        """
        return np.asarray(self.obs.index.to_numpy()[rows], dtype=str)

    @property
    def layers(self) -> dict[str, np.dtype]:
        """Names and dtypes of extra matrices streamed as :class:`EntryChunk` with ``layer`` set."""
        return {}

    @property
    def obsm(self) -> dict[str, np.ndarray]:
        """Dense per-observation arrays to keep (rows in :attr:`obs` order), except ``spatial``."""
        return {}

    def iter_entries(self, chunk_size: int = 2_000_000) -> Iterator[EntryChunk]:
        """Stream the non-zero entries (``kind == "obs"``)."""
        raise TypeError(f"{self.format_name} streams records, not matrix entries")

    # --- record sources ---------------------------------------------------------------------
    def iter_records(self, chunk_size: int = 2_000_000) -> Iterator[RecordChunk]:
        """Stream DNB records (``kind == "records"``)."""
        raise TypeError(f"{self.format_name} streams matrix entries, not DNB records")

    @property
    def images(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Images the input holds (H&E / DAPI), written as the store's ``images/<name>``: name ->
        ((C, H, W) float32 pixels in [0, 1], (3, 3) affine from image pixel (y, x) to store units)."""
        return {}

    # --- molecule-level points (optional) ------------------------------------------------------------
    @property
    def points_name(self) -> str | None:
        """Name of the points element this input can keep (``"transcripts"``), or ``None`` if it has none."""
        return None

    def iter_points(self, chunk_size: int = 2_000_000) -> Iterator[PointChunk]:
        """Stream the molecule-level points (when :attr:`points_name` is not ``None``), in file order."""
        raise TypeError(f"{self.format_name} input has no molecule-level points")

    @property
    def bounds(self) -> tuple[int, int, int, int] | None:
        """(xmin, ymin, xmax, ymax) of the DNB records if the file header states them (lets ingest bin in
        one pass); ``None`` when unknown."""
        return None

    @property
    def size_hint(self) -> int | None:
        """Approximate number of records / entries, for progress bars (``None`` if unknown)."""
        return None


class TableSource(Source):
    """An observation source whose obs table and coordinates are read when it is opened.

    Subclasses set ``self._obs`` ((n_obs, ...) DataFrame) and ``self._coords`` ((n_obs, 2) float64) in
    ``__init__``; callers get copies, so a source can be ingested twice unchanged.
    """

    kind = "obs"
    _obs: pd.DataFrame
    _coords: np.ndarray

    @property
    def obs(self) -> pd.DataFrame:
        return self._obs.copy()

    @property
    def coords(self) -> np.ndarray:
        """(n_obs, 2) float64 x, y in :attr:`unit` (see the subclass for which coordinates); a read-only view
        (no copy of a whole-slice array; the source is left unchanged for a second ingest)."""
        view = self._coords.view()
        view.flags.writeable = False
        return view

    @property
    def obs_columns(self) -> pd.DataFrame:
        return self._obs  # ingest only reads it (every change it makes is to a copy)

    def obs_names(self, rows: np.ndarray) -> np.ndarray:
        return np.asarray(self._obs.index.to_numpy()[rows], dtype=str)


def median_disc_diameter(areas: Any, scale: float = 1.0) -> float | None:
    """Diameter of a disc with the median of ``areas`` (the cells' areas, non-numbers ignored) times ``scale``
    (e.g. um^2 per px^2); ``None`` when there is no positive median. What cell-segmented inputs record as the
    :attr:`Source.spot_diameter`."""
    values = pd.to_numeric(pd.Series(np.asarray(areas).ravel()), errors="coerce").to_numpy(np.float64)
    if not len(values) or not np.isfinite(values).any():
        return None
    area = float(np.nanmedian(values)) * scale
    return 2.0 * float(np.sqrt(area / np.pi)) if np.isfinite(area) and area > 0 else None


def make_unique(names: Sequence[str], join: str = "-") -> pd.Index:
    """Make names unique the way ``anndata.utils.make_index_unique`` (and scanpy's readers) do.

    The first occurrence keeps its name; later ones get ``-1``, ``-2``... skipping any name already
    present, so ``["A", "A", "A-1"]`` becomes ``["A", "A-2", "A-1"]``.
    """
    index = pd.Index(np.asarray(names, dtype=object), dtype=object)
    if index.is_unique:
        return index
    from anndata.utils import make_index_unique

    return pd.Index(make_index_unique(index, join=join), dtype=object)


_SOURCES: dict[str, type[Source]] = {}


def register_source(cls: type[Source]) -> type[Source]:
    """Class decorator: make a format known to :func:`open_source` under ``cls.format_name``."""
    _SOURCES[cls.format_name] = cls
    return cls


def source_formats() -> list[str]:
    return sorted(_SOURCES)


def open_source(path: str | Path, format: str | None = None, **options: Any) -> Source:
    """Open ``path`` with the named format, or the first registered format whose :meth:`Source.detect` accepts it."""
    path = Path(path)
    return source_class(path, format)(path, **options)


def source_class(path: str | Path, format: str | None = None) -> type[Source]:
    """The Source class of the named format, or of the first registered format whose :meth:`Source.detect`
    accepts ``path``."""
    path = Path(path)
    if format is not None:
        try:
            return _SOURCES[format]
        except KeyError:
            raise ValueError(f"unknown input format {format!r}; known: {', '.join(source_formats())}") from None
    for cls in list(_SOURCES.values()):  # a detect() may import (and so register) another format
        if cls.detect(path):
            return cls
    raise ValueError(
        f"{path}: cannot tell the input format from the name; pass --format / format= one of "
        f"{', '.join(source_formats())}"
    )
