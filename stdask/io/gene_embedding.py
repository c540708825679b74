"""Gene embeddings from a user file: gene symbol -> d-dimensional vector (for stImpute's gene graph).

No ESM-2 weights can be downloaded where stdask runs, so protein-language-model vectors (in the reference
layout, the 2560-d mean representation of ``esm2_t36_3B_UR50D``) are computed elsewhere and handed in as a
file. Any dimension d works; the vectors are only compared by cosine similarity. Spec: ``stimpute.md`` §4.4.

Accepted layouts (one row per gene; the reference's pickles hold genes as *columns*: transpose them first)

* CSV (``.csv``) / TSV (``.tsv``, ``.tab``, ``.txt``), optionally gzipped: a header row, a gene column
  (the one named ``gene``, ``genes`` or ``symbol`` in any case, else the first column) and d numeric
  columns. ``pandas.DataFrame(vectors, index=genes).to_csv(path)`` writes this layout.
* Parquet (``.parquet``, ``.pq``): the same layout; a gene index written by pandas counts as the first column.
* NPZ (``.npz``): a 1-D string array ``genes`` and a 2-D numeric array ``vectors`` (n_genes, d).

Every error is an :class:`~stdask.io.base.InputError` that names the file, what is wrong and what to do.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence
import zipfile

import numpy as np
import pandas as pd

from stdask.io.base import InputError
from stdask.io.text import check_text

__all__ = ["GeneEmbedding", "EmbeddingMatch", "read_gene_embedding", "EMBEDDING_FORMATS"]

#: file suffix (after any ``.gz``) -> format name
EMBEDDING_FORMATS = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".txt": "tsv", ".parquet": "parquet",
                     ".pq": "parquet", ".npz": "npz"}
#: header spellings (case-folded) that mark the gene column of a table
_GENE_COLUMNS = ("gene", "genes", "symbol")
#: cell spellings read as missing in the numeric columns of a text table (then reported as non-finite)
_NA_TEXT = ["", "NA", "N/A", "NaN", "nan", "NULL", "null"]
#: how many names an error lists
_SHOW = 5


def _few(names: Sequence[str]) -> str:
    shown = ", ".join(repr(str(n)) for n in names[:_SHOW])
    return shown + (f", ... ({len(names)} in all)" if len(names) > _SHOW else "")


@dataclass(frozen=True, eq=False)  # arrays: no element-wise ==
class EmbeddingMatch:
    """A gene embedding aligned to a list of query genes (see :meth:`GeneEmbedding.match`).

    Attributes
    ----------
    genes
        (n_query,) str, the query genes in the order given.
    vectors
        (n_query, d) float32; the matched gene's vector, NaN rows where the gene has none (never zeros, so an
        uncovered gene cannot pass for a real vector).
    covered
        (n_query,) bool, whether the gene has a vector.
    index
        (n_query,) int64, the row of :attr:`GeneEmbedding.vectors` used, -1 where not covered.
    coverage
        fraction of query genes covered (0.0 for an empty query).
    source
        where the embedding came from (the file path).
    """

    genes: np.ndarray
    vectors: np.ndarray
    covered: np.ndarray
    index: np.ndarray
    coverage: float
    source: str

    @property
    def missing(self) -> list[str]:
        """The query genes without a vector, in query order."""
        return [str(g) for g in self.genes[~self.covered]]


@dataclass(frozen=True, eq=False)  # arrays: no element-wise ==
class GeneEmbedding:
    """Gene -> vector table, validated on construction.

    Attributes
    ----------
    genes
        (n_genes,) str, unique, non-empty symbols.
    vectors
        (n_genes, d) float32, finite, n_genes >= 1 and d >= 1.
    source
        where the table came from (a file path, or any label); named in every error.

    Raises
    ------
    InputError
        duplicate or empty gene names, non-finite values, a wrong shape.
    """

    genes: np.ndarray
    vectors: np.ndarray
    source: str = field(default="<arrays>")

    def __post_init__(self) -> None:
        genes, vectors = _validate(self.genes, self.vectors, self.source)
        object.__setattr__(self, "genes", genes)
        object.__setattr__(self, "vectors", vectors)

    @property
    def n_genes(self) -> int:
        return int(self.vectors.shape[0])

    @property
    def dim(self) -> int:
        """The vector dimension d."""
        return int(self.vectors.shape[1])

    def match(self, genes: Sequence[str], *, case_insensitive: bool = False) -> EmbeddingMatch:
        """Align the embedding to ``genes``.

        Parameters
        ----------
        genes
            (n_query,) gene symbols to look up (e.g. the training + test genes).
        case_insensitive
            False (default): exact symbol match only. True: a gene without an exact match takes the vector of
            the one embedding gene equal to it after ``str.casefold`` (``Gapdh`` <-> ``GAPDH``). Refused with an
            InputError when that is ambiguous: two embedding genes fold to the query's key, or two query genes
            would take the same vector.

        Returns
        -------
        EmbeddingMatch
            vectors (n_query, d) float32 (NaN rows where not covered), ``covered`` mask and ``coverage``.
        """
        query = np.asarray([str(g) for g in genes], dtype=str)
        lookup = pd.Index(self.genes)
        index = lookup.get_indexer(query).astype(np.int64)  # unique genes, so -1 only where absent
        if case_insensitive:
            index = _fold_match(query, index, self.genes, self.source)
        covered = index >= 0
        vectors = np.full((len(query), self.dim), np.nan, dtype=np.float32)
        vectors[covered] = self.vectors[index[covered]]
        coverage = float(covered.mean()) if len(query) else 0.0
        return EmbeddingMatch(query, vectors, covered, index, coverage, self.source)


def _fold_match(query: np.ndarray, index: np.ndarray, genes: np.ndarray, source: str) -> np.ndarray:
    """Fill the -1 entries of ``index`` by case-folded match, refusing ambiguous folds."""
    keys: dict[str, list[int]] = {}
    for row, g in enumerate(genes):
        keys.setdefault(g.casefold(), []).append(row)
    out = index.copy()
    for q in np.flatnonzero(index < 0):
        rows = keys.get(query[q].casefold(), [])
        if len(rows) > 1:
            raise InputError(f"{source}: gene {str(query[q])!r} matches {_few(genes[rows])} when case is ignored; "
                             "rename or drop all but one of them in the file, or match with case_insensitive=False")
        if rows:
            out[q] = rows[0]
    # a row reached by folding must serve one query only (repeated exact queries are the caller's business)
    used, counts = np.unique(out[out >= 0], return_counts=True)
    shared = np.isin(out, used[counts > 1]) & (index < 0) & (out >= 0)
    if shared.any():
        row = out[np.flatnonzero(shared)[0]]
        raise InputError(f"{source}: the query genes {_few(query[out == row])} all take the vector of "
                         f"{str(genes[row])!r} when case is ignored; pass only one of them, or match with "
                         "case_insensitive=False")
    return out


def _validate(genes: object, vectors: object, source: str) -> tuple[np.ndarray, np.ndarray]:
    """The checked (n_genes,) str and (n_genes, d) float32 arrays."""
    vec = np.asarray(vectors)
    if vec.ndim != 2:
        raise InputError(f"{source}: vectors must be 2-D (n_genes, d), got shape {vec.shape}; every gene needs "
                         "a vector of the same dimension d")
    if vec.dtype.kind not in "fiu":
        raise InputError(f"{source}: vectors must be numeric, got dtype {vec.dtype}")
    names = np.asarray(genes, dtype=object).ravel()
    if len(names) != vec.shape[0]:
        raise InputError(f"{source}: {len(names)} gene names but {vec.shape[0]} vectors; give one name per row")
    if vec.shape[0] == 0:
        raise InputError(f"{source}: contains no genes; give at least one gene with its vector")
    if vec.shape[1] == 0:
        raise InputError(f"{source}: the vectors have no values (d = 0); give at least one numeric column")
    empty = [i for i, g in enumerate(names) if g is None or (isinstance(g, float) and np.isnan(g)) or str(g) == ""]
    if empty:
        raise InputError(f"{source}: {len(empty)} gene names are empty (first at row {empty[0]}); "
                         "every row needs a gene symbol")
    names = np.asarray([str(g) for g in names], dtype=str)
    dup = pd.Index(names)
    dup = dup[dup.duplicated()].unique()
    if len(dup):
        raise InputError(f"{source}: gene names must be unique, but {_few(list(dup))} appear more than once; "
                         "keep one row per gene")
    with np.errstate(over="ignore", invalid="ignore"):
        out = vec.astype(np.float32)
    bad = ~np.isfinite(out)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise InputError(f"{source}: {int(bad.sum())} values are not finite (NaN, inf, or beyond float32's "
                         f"range); the first is gene {names[row]!r}, value {col}; fix or drop those genes")
    return names, out


def _format_of(path: Path, format: str | None) -> str:
    if format is not None:
        if format not in set(EMBEDDING_FORMATS.values()):
            raise InputError(f"{path}: unknown gene-embedding format {format!r}; use one of "
                             f"{sorted(set(EMBEDDING_FORMATS.values()))}")
        return format
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    fmt = EMBEDDING_FORMATS.get(suffixes[-1] if suffixes else "")
    if fmt is None:
        raise InputError(f"{path}: cannot tell the gene-embedding format from the name; use a suffix among "
                         f"{sorted(EMBEDDING_FORMATS)} (optionally + .gz for text) or pass format=")
    return fmt


def _gene_column(columns: Sequence[object], path: Path) -> object:
    named = [c for c in columns if str(c).strip().casefold() in _GENE_COLUMNS]
    if len(named) > 1:
        raise InputError(f"{path}: several gene columns {_few([str(c) for c in named])}; keep one")
    if named:
        return named[0]
    if not len(columns):
        raise InputError(f"{path}: no columns; expected a gene column and d numeric columns")
    return columns[0]


def _from_frame(df: pd.DataFrame, path: Path) -> GeneEmbedding:
    """A table with a gene column and numeric value columns -> GeneEmbedding."""
    gene_col = _gene_column(list(df.columns), path)
    values = df.drop(columns=[gene_col])
    genes = df[gene_col].to_numpy(dtype=object)
    for col in values.columns:
        _check_numeric(values[col], genes, gene_col, path)
    if len(values.columns) and all(_float_header(c) for c in values.columns) \
            and any(not float(c).is_integer() for c in values.columns):
        raise InputError(f"{path}: the first line looks like data, not a header; add a header row "
                         "(e.g. gene,0,1,...,d-1)")
    return GeneEmbedding(genes, values.to_numpy(dtype=np.float64), str(path))


def _check_numeric(column: pd.Series, genes: np.ndarray, gene_col: object, path: Path) -> None:
    """Refuse a value column that is not numbers, naming it and its first non-number."""
    if len(column) == 0 or (pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column)):
        return  # an empty table is refused later, as one with no genes
    if pd.api.types.is_bool_dtype(column):
        first = 0
    else:  # the first cell that is present but does not parse as a number
        bad = pd.to_numeric(column, errors="coerce").isna().to_numpy() & column.notna().to_numpy()
        first = int(np.flatnonzero(bad)[0]) if bad.any() else 0
    raise InputError(f"{path}: column {str(column.name)!r} is not numeric (gene {str(genes[first])!r} has "
                     f"{column.iloc[first]!r}); every column but the gene column {str(gene_col)!r} must hold numbers")


def _float_header(name: object) -> bool:
    try:
        float(str(name))
    except ValueError:
        return False
    return True


def _read_text(path: Path, sep: str) -> pd.DataFrame:
    check_text(path, "CSV/TSV gene-embedding")
    try:
        header = pd.read_csv(path, sep=sep, nrows=0).columns
        gene_col = _gene_column(list(header), path)
        # gene symbols such as 'NA' or 'nan' stay names; only numeric cells read the missing spellings
        return pd.read_csv(path, sep=sep, dtype={gene_col: str}, keep_default_na=False,
                           na_values={c: _NA_TEXT for c in header if c != gene_col})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read as a {'tab' if sep == chr(9) else 'comma'}-separated table "
                         f"({str(exc).strip()}); every row needs the gene and the same d values") from None


def _read_parquet(path: Path) -> pd.DataFrame:
    try:
        df = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several unrelated types for a damaged or foreign file
        raise InputError(f"{path}: cannot read as Parquet ({type(exc).__name__}: {exc}); check the file") from None
    # a pandas index (the genes of DataFrame(vectors, index=genes)) becomes the first column
    return df if isinstance(df.index, pd.RangeIndex) else df.reset_index()


def _read_npz(path: Path) -> GeneEmbedding:
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in ("genes", "vectors") if k not in npz.files]
            if missing:
                raise InputError(f"{path}: no array {' or '.join(map(repr, missing))} (it holds {npz.files}); "
                                 "save with np.savez(path, genes=genes, vectors=vectors)")
            genes, vectors = npz["genes"], npz["vectors"]
    except (ValueError, OSError, zipfile.BadZipFile) as exc:
        hint = ("save the gene names as a string array: np.asarray(genes, dtype=str)"
                if "allow_pickle" in str(exc) else "check the file")
        raise InputError(f"{path}: cannot read as NPZ ({exc}); {hint}") from None
    if genes.ndim != 1 or genes.dtype.kind not in "US":
        raise InputError(f"{path}: 'genes' must be a 1-D string array, got dtype {genes.dtype} and shape "
                         f"{genes.shape}")
    if genes.dtype.kind == "S":
        genes = np.char.decode(genes, "utf-8")
    return GeneEmbedding(genes, vectors, str(path))


def read_gene_embedding(path: str | Path, *, format: str | None = None) -> GeneEmbedding:
    """Read a gene -> vector file (layouts in the module docstring).

    Parameters
    ----------
    path
        a ``.csv``, ``.tsv`` (``.tab``, ``.txt``; text may be gzipped), ``.parquet`` (``.pq``) or ``.npz`` file.
    format
        ``"csv"``, ``"tsv"``, ``"parquet"`` or ``"npz"``; by default from the suffix.

    Returns
    -------
    GeneEmbedding
        genes (n_genes,) str, vectors (n_genes, d) float32, source = the path.

    Raises
    ------
    InputError
        unreadable file, non-numeric column (named), duplicate gene names (a few listed), non-finite values
        (count and first gene), ragged rows, no genes.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such gene-embedding file")
    fmt = _format_of(path, format)
    if fmt == "npz":
        return _read_npz(path)
    df = _read_parquet(path) if fmt == "parquet" else _read_text(path, "," if fmt == "csv" else "\t")
    return _from_frame(df, path)
