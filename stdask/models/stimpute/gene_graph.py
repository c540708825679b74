"""stImpute's gene graph: the genes x genes aggregation matrix Ã of the GraphSAGE-style blocks. Spec:
``stimpute.md`` §4.

Similarity sources (§4.4)

* expression: cosine similarity between genes' expression vectors across the reference cells (the code's
  fallback when it has no embedding file);
* embedding: cosine similarity between user-supplied gene vectors (ESM-2 in the paper);
* hybrid (partial coverage, as the paper): embedding cosine where *both* genes have a vector, expression cosine
  for every other pair. The two sources can have different ranges (protein-embedding cosines of ESM-2 are
  typically all high, expression cosines of log counts spread over [0, 1]), so a combined row may favour one
  source; ``rank_transform=True`` replaces each source's positive values by their quantile among that source's
  positive pairs, putting both on (0, 1].

Weightings (§4.2, §4.3)

* ``"similarity_topk"`` (stdask default): w_gj = max(0, S_gj) for the k most similar genes j != g (k capped
  at G - 1; ties go to the lower gene index), rows normalised to sum 1, a row with no positive weight stays
  zero, no symmetrisation, no self term. scipy CSR float32.
* ``"distance_code"`` (the reference code, for parity): D = 1 - S (dense), r_g = sum_{j != g} D_gj - 1,
  Ã_gj = D_gj / (r_g + 1e-12) for j != g, Ã_gg = -1 / (r_g + 1e-12). Dissimilar genes weigh more and the
  self term is negative; r_g near 0 or below (small panels) gives huge or sign-flipped weights, as in the code.
  Dense float32.

Memory: the similarity matrices are dense float64, 8 G^2 bytes each (200 MB at G = 5,000; a hybrid holds two);
meant for G up to about 5,000. The expression Gram is accumulated over chunks of cells, so the reference
matrix is never densified whole.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import numpy as np
import scipy.sparse as sp
from scipy.stats import rankdata

from stdask.io.gene_embedding import EmbeddingMatch, GeneEmbedding, read_gene_embedding

__all__ = ["GeneGraph", "WEIGHTINGS", "cosine_from_gram", "distance_code_graph", "embedding_similarity",
           "expression_similarity", "gene_graph", "hybrid_similarity", "rank_positive", "topk_graph"]

WEIGHTINGS = ("similarity_topk", "distance_code")
#: the reference's guard against a zero row sum in the distance form
_EPS = 1e-12
#: float64 values per dense chunk (cells x genes for the Gram, rows x genes for the top-k sort): 32 MB
_CHUNK_VALUES = 1 << 22


class GeneGraph(NamedTuple):
    """The aggregation matrix and its provenance.

    Attributes
    ----------
    matrix
        (G, G) float32: scipy CSR for ``"similarity_topk"``, a dense ndarray for ``"distance_code"``. Row g
        holds the weights with which gene g aggregates the other genes (rows = targets).
    info
        JSON-serialisable provenance: ``weighting``, ``source`` ("expression" | "embedding" | "hybrid"),
        ``coverage`` (fraction of the G genes with a vector), ``n_genes``, ``n_covered``, ``k`` (effective,
        None for distance_code), ``k_requested``, ``rank_transform``, ``embedding`` (its source or None),
        ``case_insensitive``.
    """

    matrix: sp.csr_matrix | np.ndarray
    info: dict[str, Any]


def cosine_from_gram(gram: np.ndarray) -> np.ndarray:
    """Cosine similarity from a Gram matrix, in place.

    Parameters
    ----------
    gram
        (n, n) float64, gram[i, j] = <v_i, v_j>; overwritten.

    Returns
    -------
    (n, n) float64 in [-1, 1]. An item with a zero vector has similarity 0 to everything, itself included
    (it then gets no neighbours); every other diagonal entry is 1.
    """
    norms = np.sqrt(np.clip(np.diag(gram), 0.0, None))
    inv = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)
    gram *= inv[:, None]
    gram *= inv[None, :]
    np.clip(gram, -1.0, 1.0, out=gram)
    np.fill_diagonal(gram, (norms > 0).astype(np.float64))
    return gram


def expression_similarity(ref_expr: np.ndarray | sp.spmatrix | sp.sparray) -> np.ndarray:
    """Cosine similarity between genes' expression vectors across the reference cells.

    Parameters
    ----------
    ref_expr
        (M cells, G genes) float, dense or scipy sparse (normalised + log1p in stImpute). Columns are genes.

    Returns
    -------
    (G, G) float64 cosine similarity (not centred: the reference uses raw cosine). A gene never expressed has
    similarity 0 to every gene. Memory O(G^2) (8 G^2 bytes) plus one dense chunk of cells of about 32 MB;
    for G up to about 5,000.

    Raises
    ------
    ValueError
        a non-2-D input, or NaN / inf in the reference (the first one located).
    """
    x = ref_expr.tocsr() if sp.issparse(ref_expr) else np.asarray(ref_expr)
    if x.ndim != 2:
        raise ValueError(f"ref_expr must be 2-D (cells x genes), got shape {x.shape}")
    n_cells, n_genes = x.shape
    gram = np.zeros((n_genes, n_genes), dtype=np.float64)
    step = max(1, _CHUNK_VALUES // max(n_genes, 1))
    for start in range(0, n_cells, step):
        chunk = x[start:start + step]
        chunk = chunk.toarray() if sp.issparse(chunk) else chunk
        chunk = np.asarray(chunk, dtype=np.float64)
        bad = ~np.isfinite(chunk)
        if bad.any():
            cell, gene = np.argwhere(bad)[0]
            raise ValueError(f"ref_expr holds NaN or inf (first at cell {start + cell}, gene column {gene}); "
                             "remove or fix them before building the gene graph")
        gram += chunk.T @ chunk
    return cosine_from_gram(gram)


def embedding_similarity(vectors: np.ndarray) -> np.ndarray:
    """Cosine similarity between gene vectors.

    Parameters
    ----------
    vectors
        (G, d) float (a gene embedding's rows, finite).

    Returns
    -------
    (G, G) float64 cosine similarity (a zero vector has similarity 0 to everything).
    """
    v = np.asarray(vectors, dtype=np.float64)
    return cosine_from_gram(v @ v.T)


def rank_positive(values: np.ndarray) -> np.ndarray:
    """The per-source rank transform: positive values -> their quantile among the positives, others -> 0.

    Parameters
    ----------
    values
        (n,) float, one source's similarities.

    Returns
    -------
    (n,) float64 in [0, 1]: rank / n_positive (average rank for ties) for the positive entries, 0 elsewhere,
    so the order within the source and "no positive similarity -> no edge" are kept.
    """
    out = np.zeros(values.shape, dtype=np.float64)
    pos = values > 0
    if pos.any():
        out[pos] = rankdata(values[pos], method="average") / pos.sum()
    return out


def hybrid_similarity(expr_sim: np.ndarray | None, emb_sim: np.ndarray, covered: np.ndarray,
                      *, rank_transform: bool = False) -> np.ndarray:
    """Combine the two sources by replacement (the paper's S_gene || S_protein).

    Parameters
    ----------
    expr_sim
        (G, G) float64 expression cosine; may be None only when every gene is covered.
    emb_sim
        (C, C) float64 embedding cosine among the covered genes (C = covered.sum(), in gene order).
    covered
        (G,) bool, the genes with a vector.
    rank_transform
        apply :func:`rank_positive` to each source's off-diagonal pairs before combining.

    Returns
    -------
    (G, G) float64: emb_sim where both genes are covered, expr_sim elsewhere. The diagonal is left as the
    sources give it; the weightings ignore it.
    """
    covered = np.asarray(covered, dtype=bool)
    both = np.outer(covered, covered)
    if expr_sim is None:
        if not covered.all():
            raise ValueError("expr_sim is needed when some genes have no vector")
        sim = np.array(emb_sim, dtype=np.float64)
    else:
        sim = np.array(expr_sim, dtype=np.float64)
        sim[both] = np.asarray(emb_sim, dtype=np.float64).ravel()
    if rank_transform:
        off = ~np.eye(len(covered), dtype=bool)
        for mask in (both & off, ~both & off):
            sim[mask] = rank_positive(sim[mask])
    return sim


def topk_graph(sim: np.ndarray, k: int) -> sp.csr_matrix:
    """The §4.3 weighting: top-k positive similarities per row, rows normalised to sum 1.

    Parameters
    ----------
    sim
        (G, G) float similarity; the diagonal is ignored.
    k
        neighbours per gene (>= 1), capped at G - 1.

    Returns
    -------
    (G, G) CSR float32 with sorted indices: row g has at most k entries, all > 0, none on the diagonal,
    summing to 1 (float32 rounding), or no entry when none of its k most similar genes has similarity > 0.
    The k most similar are chosen among all j != g by similarity, ties to the lower index.
    """
    n = sim.shape[0]
    k = min(int(k), n - 1)
    if k <= 0:
        return sp.csr_matrix((n, n), dtype=np.float32)
    rows, cols, vals = [], [], []
    step = max(1, _CHUNK_VALUES // n)
    for start in range(0, n, step):
        block = np.array(sim[start:start + step], dtype=np.float64)
        local = np.arange(len(block))
        block[local, start + local] = -np.inf  # never choose the gene itself
        # a stable sort of the negated values puts equal similarities in gene-index order
        order = np.argsort(-block, axis=1, kind="stable")[:, :k]
        w = np.take_along_axis(block, order, axis=1)
        rows.append(np.repeat(start + local, k))
        cols.append(order.ravel())
        vals.append(np.maximum(w, 0.0).ravel())
    vals_all = np.concatenate(vals)
    keep = vals_all > 0
    mat = sp.csr_matrix((vals_all[keep], (np.concatenate(rows)[keep], np.concatenate(cols)[keep])),
                        shape=(n, n), dtype=np.float64)
    sums = np.asarray(mat.sum(axis=1)).ravel()
    inv = np.divide(1.0, sums, out=np.zeros_like(sums), where=sums > 0)
    mat = sp.diags(inv) @ mat
    mat = sp.csr_matrix(mat, dtype=np.float32)
    mat.sort_indices()
    return mat


def distance_code_graph(sim: np.ndarray) -> np.ndarray:
    """The reference code's aggregation matrix (§4.2), for parity.

    Parameters
    ----------
    sim
        (G, G) float cosine similarity.

    Returns
    -------
    (G, G) float32 dense: with D = 1 - sim (clipped to [0, 2], which only removes rounding) and
    r_g = sum_{j != g} D_gj - 1: Ã_gj = D_gj / (r_g + 1e-12) off the diagonal, Ã_gg = -1 / (r_g + 1e-12).
    """
    dist = np.clip(1.0 - np.asarray(sim, dtype=np.float64), 0.0, 2.0)
    np.fill_diagonal(dist, 0.0)
    denom = dist.sum(axis=1) - 1.0 + _EPS
    out = dist / denom[:, None]
    np.fill_diagonal(out, -1.0 / denom)
    return out.astype(np.float32)


def _resolve_embedding(genes: np.ndarray, embedding: Any, covered: Any,
                       case_insensitive: bool) -> tuple[np.ndarray | None, np.ndarray, str | None]:
    """(vectors (G, d) or None, covered (G,) bool, source label or None) for the accepted embedding inputs."""
    n = len(genes)
    if embedding is None:
        if covered is not None:
            raise ValueError("covered= is given without an embedding; pass the (G, d) vectors too")
        return None, np.zeros(n, dtype=bool), None
    if isinstance(embedding, (str, Path)):
        embedding = read_gene_embedding(embedding)
    if isinstance(embedding, (GeneEmbedding, EmbeddingMatch)) and covered is not None:
        raise ValueError("covered= is only for an embedding given as a (G, d) array; a GeneEmbedding or "
                         "EmbeddingMatch carries its own coverage")
    if isinstance(embedding, GeneEmbedding):
        embedding = embedding.match(genes, case_insensitive=case_insensitive)
    if isinstance(embedding, EmbeddingMatch):
        if len(embedding.genes) != n or (embedding.genes != genes).any():
            raise ValueError("the EmbeddingMatch was made for other genes; match the embedding to `genes`")
        return embedding.vectors, embedding.covered, embedding.source
    vectors = np.asarray(embedding, dtype=np.float64)
    if vectors.ndim != 2 or vectors.shape[0] != n:
        raise ValueError(f"embedding array must be (G={n}, d), got shape {vectors.shape}")
    mask = np.isfinite(vectors).all(axis=1) if covered is None else np.asarray(covered, dtype=bool)
    if mask.shape != (n,):
        raise ValueError(f"covered must be a (G={n},) bool mask, got shape {mask.shape}")
    if not np.isfinite(vectors[mask]).all():
        raise ValueError("embedding rows marked covered hold NaN or inf; fix them or mark them uncovered")
    return vectors, mask, "<array>"


def _check_expr(ref_expr: Any, n_genes: int) -> None:
    if ref_expr is None:
        raise ValueError("ref_expr (reference cells x genes) is needed: the embedding does not cover every "
                         "gene, so expression cosine supplies the other pairs")
    if len(ref_expr.shape) != 2 or ref_expr.shape[1] != n_genes:
        raise ValueError(f"ref_expr must be (cells, G={n_genes}) with columns in the order of `genes`, got "
                         f"shape {ref_expr.shape}")


def gene_graph(genes: Sequence[str], ref_expr: np.ndarray | sp.spmatrix | sp.sparray | None,
               embedding: str | Path | GeneEmbedding | EmbeddingMatch | np.ndarray | None = None, *,
               weighting: str = "similarity_topk", k: int = 10, covered: np.ndarray | None = None,
               case_insensitive: bool = False, rank_transform: bool = False) -> GeneGraph:
    """Build stImpute's gene aggregation matrix Ã over ``genes`` (§4).

    Parameters
    ----------
    genes
        (G,) gene symbols; the graph's row/column order.
    ref_expr
        (M cells, G) float reference expression (dense or scipy sparse, columns in the order of ``genes``,
        normalised + log1p). Needed unless the embedding covers every gene (then it may be None).
    embedding
        None (default): expression cosine. A path (read with :func:`read_gene_embedding`), a
        :class:`GeneEmbedding` (matched to ``genes``), an :class:`EmbeddingMatch` made for ``genes``, or a
        (G, d) array aligned with ``genes``.
    weighting
        ``"similarity_topk"`` (default, §4.3) or ``"distance_code"`` (the reference, §4.2). With partial
        coverage, distance_code uses the hybrid similarity (the reference has no hybrid).
    k
        neighbours per gene for ``similarity_topk`` (>= 1, capped at G - 1); a stdask choice.
    covered
        (G,) bool, only with an array ``embedding``: which rows hold vectors (default: the all-finite rows).
    case_insensitive
        match a file / GeneEmbedding by case-folded symbol where the exact symbol is missing.
    rank_transform
        ``similarity_topk`` only: put each source on a common (0, 1] scale (:func:`rank_positive`).

    Returns
    -------
    GeneGraph
        ``matrix`` (G, G) float32 (CSR for similarity_topk, dense for distance_code) and ``info``.

    Warns
    -----
    UserWarning
        an embedding that covers none of the genes (the expression graph is built instead).
    """
    genes = np.asarray([str(g) for g in genes], dtype=str)
    n = len(genes)
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    if weighting == "similarity_topk" and (isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1):
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    if rank_transform and weighting == "distance_code":
        raise ValueError("rank_transform is for weighting='similarity_topk'; distance_code reproduces the "
                         "reference, which has none")
    vectors, mask, label = _resolve_embedding(genes, embedding, covered, case_insensitive)
    n_cov = int(mask.sum())
    if label is not None and n_cov == 0:
        warnings.warn(f"gene embedding {label} covers none of the {n} genes (first: {genes[:3].tolist()}); the "
                      "gene graph uses expression cosine over the reference cells instead. Check the symbols "
                      "(species, case: case_insensitive=True)", UserWarning, stacklevel=2)
    source = "expression" if n_cov == 0 else "embedding" if n_cov == n else "hybrid"
    if source != "embedding" or ref_expr is not None:
        _check_expr(ref_expr, n)
    expr_sim = expression_similarity(ref_expr) if source != "embedding" else None
    if source == "expression":
        sim = hybrid_similarity(expr_sim, np.zeros((0, 0)), mask, rank_transform=rank_transform)
    else:
        sim = hybrid_similarity(expr_sim, embedding_similarity(vectors[mask]), mask, rank_transform=rank_transform)
    k_eff = min(int(k), max(n - 1, 0)) if weighting == "similarity_topk" else None
    matrix = topk_graph(sim, k) if weighting == "similarity_topk" else distance_code_graph(sim)
    info = {"weighting": weighting, "source": source, "coverage": n_cov / n if n else 0.0, "n_genes": n,
            "n_covered": n_cov, "k": k_eff, "k_requested": int(k) if weighting == "similarity_topk" else None,
            "rank_transform": bool(rank_transform), "embedding": label, "case_insensitive": bool(case_insensitive)}
    return GeneGraph(matrix, info)
