"""10x Xenium transcripts as DNB-like records: re-bin the molecules into square bins, or re-assign them to cells.

``stdask.ingest(outs, store, format="xenium_transcripts", bin_size=N)`` makes ``N * pitch_um`` um square bins of
the transcripts; ``cellbin=True`` groups them by the cell XOA assigned each to (the cell-feature matrix again,
rebuilt from the molecules, so a changed ``min_qv`` or a new assignment gives a new matrix). The ingest pipeline's
records path does the binning; this module only streams ``transcripts.parquet`` as :class:`RecordChunk`.

Which transcripts count: the ``Gene Expression`` features of ``cell_feature_matrix.h5`` (the genes of the
:class:`~stdask.io.xenium.XeniumSource` ``var``, same index; also ``is_gene`` where XOA 3.x writes it), with
``qv >= min_qv`` (XOA's matrix threshold is 20). Control probes and codewords are never counted.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd

from stdask.io.base import InputError, RecordChunk, Source, register_source
from stdask.io.parquet import iter_parquet
from stdask.io.xenium import TRANSCRIPTS_FILE, XeniumSource, arrow_strings, transcript_columns

__all__ = ["XeniumTranscriptsSource", "QV_MIN"]

#: XOA counts a transcript in the cell-feature matrix when its qv is at least this
QV_MIN = 20.0


def _lookup(column, index: pd.Index) -> np.ndarray:
    """(n,) int64 position in ``index`` of each value of the pyarrow ``column`` (-1 when absent).

    The column is dictionary-encoded first, so the hash look-up costs its distinct values, not its rows.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    encoded = column if pa.types.is_dictionary(column.type) else column.dictionary_encode()
    found = index.get_indexer(arrow_strings(encoded.dictionary)).astype(np.int64)
    codes = pc.fill_null(encoded.indices, 0).to_numpy(zero_copy_only=False)
    out = found[codes] if len(found) else np.full(len(codes), -1, np.int64)
    if encoded.null_count:  # a null id is no cell / no feature
        out[~encoded.is_valid().to_numpy(zero_copy_only=False)] = -1
    return out


@register_source
class XeniumTranscriptsSource(Source):
    """The molecules of a Xenium ``outs/`` folder as records on a ``pitch_um`` grid.

    Parameters
    ----------
    path
        The ``outs`` folder (or the folder holding it): ``transcripts.parquet``, ``cells.parquet``,
        ``cell_feature_matrix.h5``, ``experiment.xenium``.
    pitch_um
        Record grid step in um: a transcript's record is at ``floor(x_location / pitch_um)``,
        ``floor(y_location / pitch_um)`` (int64); ``bin_size=N`` then makes ``N * pitch_um`` um bins.
    min_qv
        Transcripts with ``qv`` below this are dropped (XOA's matrix uses 20; 0 keeps every one).

    Notes
    -----
    * ``gene``: row of :attr:`var` (the gene features, as :class:`~stdask.io.xenium.XeniumSource` has them).
    * ``count``: 1 per transcript (uint32).
    * ``cell``: 1 + the row of the transcript's ``cell_id`` in ``cells.parquet`` (0 for ``UNASSIGNED``, XOA 1.x's
      ``-1``, or an id not in the table), so a cell-bin store's observation ``k`` is ``cells.parquet`` row
      ``k - 1``.
    * Coordinates are in units of ``pitch_um`` um (:attr:`microns_per_unit`); :attr:`unit` is ``"um"`` when the
      pitch is 1.
    """

    format_name = "xenium_transcripts"
    kind = "records"

    @classmethod
    def detect(cls, path: Path) -> bool:
        return False  # a Xenium folder ingests as cells by default; this reading is asked for by name

    def __init__(self, path: str | Path, *, pitch_um: float = 1.0, min_qv: float = QV_MIN) -> None:
        super().__init__(path, pitch_um=pitch_um, min_qv=min_qv)
        if isinstance(pitch_um, bool) or not (isinstance(pitch_um, (int, float)) and np.isfinite(pitch_um)
                                              and pitch_um > 0):
            raise ValueError(f"pitch_um must be a positive number of micrometres, got {pitch_um!r}")
        if isinstance(min_qv, bool) or not (isinstance(min_qv, (int, float)) and np.isfinite(min_qv)):
            raise ValueError(f"min_qv must be a finite number (XOA's matrix uses {QV_MIN:g}), got {min_qv!r}")
        self.pitch_um = float(pitch_um)
        self.min_qv = float(min_qv)
        # the cells and the gene features, read and checked exactly as the cell reader does
        self._xenium = XeniumSource(self.path)
        self._file = self._xenium.outs / TRANSCRIPTS_FILE
        if not self._file.is_file():
            raise InputError(f"{self._xenium.outs}: no {TRANSCRIPTS_FILE}; the xenium_transcripts format reads the "
                             "decoded molecules XOA writes there (use format='xenium' for the cell matrix)")
        self._names = transcript_columns(self._file)
        if self.min_qv > 0 and "qv" not in self._names:
            raise InputError(f"{self._file}: no column qv, needed to drop transcripts below min_qv={self.min_qv:g}; "
                             "pass min_qv=0 to keep every transcript")
        self._cells = pd.Index(self._xenium.obs.index, dtype=object)

    @property
    def var(self) -> pd.DataFrame:
        return self._xenium.var

    @property
    def unit(self) -> str:
        return "um" if self.pitch_um == 1.0 else f"{self.pitch_um:g} um"

    @property
    def microns_per_unit(self) -> float | None:
        return self.pitch_um

    @property
    def uns(self) -> dict:
        uns = self._xenium.uns
        uns["xenium"].update({"transcripts_pitch_um": self.pitch_um, "transcripts_min_qv": self.min_qv})
        return uns

    @property
    def size_hint(self) -> int | None:
        import pyarrow.parquet as pq

        return int(pq.ParquetFile(self._file).metadata.num_rows)

    def iter_records(self, chunk_size: int = 2_000_000) -> Iterator[RecordChunk]:
        """Stream the counted transcripts (genes, ``qv >= min_qv``) of ``chunk_size`` file rows at a time.

        Yields
        ------
        RecordChunk
            ``x``, ``y`` (n,) int64 grid positions (``pitch_um`` um steps); ``gene`` (n,) int32 row of
            :attr:`var`; ``count`` (n,) uint32 ones; ``cell`` (n,) int64 (0 = no cell).
        """
        genes = self.var.index
        columns = ["x_location", "y_location", "feature_name", "cell_id"] + \
            [c for c in ("qv", "is_gene") if c in self._names]
        if "cell_id" not in self._names:
            raise InputError(f"{self._file}: no column cell_id; columns found: {', '.join(self._names)}")
        offset = 0
        for batch in iter_parquet(self._file, chunk_size, columns):
            gene = _lookup(batch.column("feature_name"), genes)
            keep = gene >= 0  # a control probe or codeword is in no row of var
            if "is_gene" in columns:
                keep &= batch.column("is_gene").to_numpy(zero_copy_only=False).astype(bool)
            if "qv" in columns:
                # a null qv compares False: such a transcript is not counted (XOA never writes one)
                qv = batch.column("qv").to_numpy(zero_copy_only=False).astype(np.float64)
                keep &= qv >= self.min_qv
            idx = np.flatnonzero(keep)
            xy = [batch.column(c).to_numpy(zero_copy_only=False).astype(np.float64)[idx]
                  for c in ("x_location", "y_location")]
            bad = ~(np.isfinite(xy[0]) & np.isfinite(xy[1]))
            if bad.any():
                row = offset + int(idx[np.argmax(bad)])
                raise InputError(f"{self._file}: row {row}: x_location, y_location = {xy[0][bad][0]}, "
                                 f"{xy[1][bad][0]}; expected finite numbers (um)")
            cell = _lookup(batch.column("cell_id").take(idx), self._cells) + 1  # -1 (no cell) -> 0
            offset += batch.num_rows
            if len(idx) == 0:
                continue
            yield RecordChunk(x=np.floor(xy[0] / self.pitch_um).astype(np.int64),
                              y=np.floor(xy[1] / self.pitch_um).astype(np.int64),
                              gene=gene[idx].astype(np.int32), count=np.ones(len(idx), np.uint32), cell=cell)
