"""stImpute: reference-based gene imputation for single-cell spatial data (Zeng et al., Commun. Biol. 2024;
cquzys/stImpute @ 5a096592, re-implemented from ``stimpute.md``; the reference has no licence, so no code or
embedding files of it are used).

So far: the gene graph (``gene_graph``, §4) over expression cosine, a user-supplied gene embedding
(:func:`stdask.io.gene_embedding.read_gene_embedding`) or the per-gene hybrid of both.
"""
from stdask.io.gene_embedding import EmbeddingMatch, GeneEmbedding, read_gene_embedding

from .gene_graph import (WEIGHTINGS, GeneGraph, cosine_from_gram, distance_code_graph, embedding_similarity,
                         expression_similarity, gene_graph, hybrid_similarity, rank_positive, topk_graph)

__all__ = ["WEIGHTINGS", "EmbeddingMatch", "GeneEmbedding", "GeneGraph", "cosine_from_gram",
           "distance_code_graph", "embedding_similarity", "expression_similarity", "gene_graph",
           "hybrid_similarity", "rank_positive", "read_gene_embedding", "topk_graph"]
