"""STAGUE: spatially informed graph structure learning (Nie et al., Adv. Sci. 2024; deepomicslab/STAGUE @
b3d8fb70), the torch core on arrays. Spec: ``stague.md``.

A cell encoder (MLP + BatchNorm) maps expression to F; a graph learner (GCN over the *initial* kNN anchor)
scores candidate pairs within ``d_cut`` by ``omega * cos + (1 - omega) * exp(-gamma (d/d_cut)^2)``; a GCN
encoder is trained on the anchor view and the learned-graph view (symmetric NT-Xent without the positive in
the denominator, plus a margin triplet loss against a feature-shuffled identity-graph view); the anchor is
bootstrapped towards the learned graph with ``tau``.

Decisions and differences from the reference
--------------------------------------------
* Always the sparse learner on explicit candidate pairs (never dense N x N); ``d_cut`` uses
  ``numpy.median`` (the reference's sparse path). Pairs at distance 0 are excluded (as the dense path).
* GCN propagation reproduces PyG ``GCNConv`` on the normalised adjacency (self loops re-added with weight
  1, any stored diagonal replaced, degrees on the target index); ``renormalize=False`` is a deviation.
* torch_sparse is not used: coalescing, mean-symmetrisation and scaling are torch index operations.
* Random draws: weights and dropout from the global torch RNG forked and seeded with ``seed``; masks,
  permutations and edge dropout from one seeded ``torch.Generator`` in the reference's draw order. The
  reference's numbers are therefore not reproduced bit for bit.
* Prediction (default) reuses F and the learned graph of the last epoch, as the reference;
  ``predict="recompute"`` recomputes them in eval mode.
"""
from .config import PREDICT_MODES, STAGUEConfig, STAGUEFit
from .fit import fit
from .gcn import gcn_layer_class, gcn_propagate
from .graph import anchor_edges, candidate_pairs, cutoff_distance
from .learner import graph_learner, spatial_prior
from .losses import nt_xent, triplet_loss
from .net import cell_encoder, graph_encoder
from .sparse import bootstrap, coalesce, dropout_edge, sym_normalize, symmetrize_mean
from .views import column_mask, permutation

__all__ = ["PREDICT_MODES", "STAGUEConfig", "STAGUEFit", "anchor_edges", "bootstrap", "candidate_pairs",
           "cell_encoder", "coalesce", "column_mask", "cutoff_distance", "dropout_edge", "fit",
           "gcn_layer_class", "gcn_propagate", "graph_encoder", "graph_learner", "nt_xent", "permutation",
           "spatial_prior", "sym_normalize", "symmetrize_mean", "triplet_loss"]
