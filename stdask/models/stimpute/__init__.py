"""stImpute: reference-based gene imputation for single-cell spatial data (Zeng et al., Commun. Biol. 2024;
cquzys/stImpute @ 5a096592, re-implemented from ``stimpute.md``; the reference has no licence, so no code or
embedding files of it are used).

Modules: the gene graph (``gene_graph``, §4) over expression cosine, a user-supplied gene embedding
(:func:`stdask.io.gene_embedding.read_gene_embedding`) or the per-gene hybrid of both; the settings with the size
rule (``config``); the autoencoder and its pre-training (``autoencoder``, §2); neighbour retrieval and the
neighbour-feature gather (``neighbours``, §3); the GraphSAGE-style blocks and the Trans network (``blocks``, §5,
§6); the loss (``loss``, §6) and its full-batch gradient over tiles of cells (``twopass``); the EM training
(``fit``, §7); prediction of any tile of cells and the final blend (``predict``, §8); the reliability model
(``reliability``, §9). torch is imported only when a model is built or trained. The datasets-level pipeline is
:func:`stdask.tl.impute` / :func:`stdask.tl.impute_cv`.

The reference's quirks and what stdask does:

* I1 gene graph: the code's dense cosine *distance* with a negative self term -> top-k cosine *similarity*,
  row-normalised (the paper; ``weighting="distance_code"`` reproduces the code).
* I2 gene vectors: a user file gene -> vector (no ESM-2 weights can be downloaded), expression cosine as the
  fallback, per-gene hybrid for partial coverage (the code has no hybrid).
* I3 size rule (N < 10,000 and G_train < 500): the code's values (K 50/20, E steps 10/50, h 256/32, alpha
  0.7/0.5), recorded; N is the slice's cells, while training runs on a sample of them (``tl.impute``).
* I4 final blend: the paper's plain neighbour mean by default; ``blend="code"`` (per-gene maxima) and
  ``"global"``.
* I5 reliability: a fixed-width input (64 quantiles of the predicted profile, its mean, maximum and spread) by
  default, which applies to profiles over any cells; ``features="profile"`` keeps the code's N-wide input.
* I6 CUDA hard-coded -> CPU default, CUDA when torch sees it.
* I7 P_gnn and P_knn from different AE states: kept.
* I8 kNN weights undefined for n' = 1: weight 1; n' = 0 gives zeros; both counted.
* I9 loss ``2 (cell + gene cosine terms) + MSE``: the code's form.
* I10 medians (code) and means (paper): both reported by ``tl.impute_cv``.
* The AE skips a batch without spatial rows (the code's loss would be NaN there).
"""
from stdask.io.gene_embedding import EmbeddingMatch, GeneEmbedding, read_gene_embedding

from .autoencoder import AETraining, ae_optimizer, ae_step, encode, make_autoencoder, train_autoencoder
from .blocks import GS_NORMALIZE_EPS, aggregate, graph_tensor, gs_block, gs_block_class, make_trans, trans_for
from .config import BLENDS, SIZE_RULE_CELLS, SIZE_RULE_GENES, StImputeConfig, is_small_data
from .gene_graph import (WEIGHTINGS, GeneGraph, cosine_from_gram, distance_code_graph, embedding_similarity,
                         expression_similarity, gene_graph, hybrid_similarity, rank_positive, topk_graph)
from .loss import COSINE_EPS, loss_terms, stimpute_loss
from .fit import StImputeFit, fit, tile_cells_for, trans_predict
from .neighbours import CodeIndex, approximate_cosine_neighbours, cosine_neighbours, exact_cosine_neighbours, gather
from .predict import Predictor, TilePrediction, knn_weights
from .reliability import FEATURES, Reliability, profile_features, train_reliability, uncentred_cosine
from .twopass import TargetStats, target_stats, tile_slices, tiled_loss_backward

__all__ = ["AETraining", "BLENDS", "CodeIndex", "FEATURES", "Predictor", "Reliability", "StImputeFit", "TargetStats",
           "TilePrediction", "fit", "knn_weights", "profile_features", "target_stats", "tile_cells_for", "tile_slices",
           "tiled_loss_backward", "train_reliability", "trans_predict", "uncentred_cosine", "COSINE_EPS", "EmbeddingMatch", "GS_NORMALIZE_EPS", "GeneEmbedding", "GeneGraph",
           "SIZE_RULE_CELLS", "SIZE_RULE_GENES", "StImputeConfig", "WEIGHTINGS", "ae_optimizer", "ae_step",
           "aggregate", "approximate_cosine_neighbours", "cosine_from_gram", "cosine_neighbours",
           "distance_code_graph", "embedding_similarity", "encode", "exact_cosine_neighbours", "expression_similarity",
           "gather", "gene_graph", "graph_tensor", "gs_block", "gs_block_class", "hybrid_similarity", "is_small_data",
           "loss_terms", "make_autoencoder", "make_trans", "rank_positive", "read_gene_embedding", "stimpute_loss",
           "topk_graph", "train_autoencoder", "trans_for"]
