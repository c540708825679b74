"""SpaSEG: unsupervised CNN segmentation of a PCA "image" of spots (Bai et al., Genome Biology 2025).

The model sees a slice as a B x C x H x W image whose pixels hold z-scored principal components (empty
pixels are 0). Stage 1 (``t < pretrain_epochs``) trains the network to reconstruct its input (MSE); stage 2
trains it on its own per-pixel argmax labels (cross-entropy, weight ``sim_weight``) plus an L1
edge-strength continuity loss on the output (weight ``con_weight``); from ``merge_start`` on, an
outlier-merge rule may fold the closest pair of labels each iteration. Training stops at the first
iteration whose label count is ``<= min_label`` (and returns that iteration's labels, computed before its
optimiser step), or after ``iterations``.

Three ways to run the same algorithm (:func:`train`):

``mode="full"``
    The reference: one full-batch image per iteration (all pixels of all slices), PyTorch's own
    BatchNorm. Used when the frame fits (``max_pixels``).
``mode="tiled"``
    The frame as windows (tiles with a halo of ``n_conv + 1`` pixels: the network's receptive-field
    radius, plus the one-pixel neighbour the continuity loss compares edge pixels with),
    all windows in one batch per iteration. BatchNorm statistics are taken over every tile's own pixels
    and pixels outside the frame are zeroed before each 3 x 3 convolution, so each iteration computes
    what ``"full"`` computes (up to float summation order).
``mode="minibatch"``
    For frames too large for one image: each iteration trains on a random batch of windows (about
    ``batch_pixels`` pixels), BatchNorm statistics over the batch's own pixels. The label count for the
    stopping rule and the label means for the merge rule are global: the union of the latest labels of
    every tile, each tile refreshed when it is visited (a tile is visited once per epoch, a random
    permutation of the tiles drawn from ``seed``; no stop before every tile was seen). After training,
    BatchNorm statistics of the whole frame are computed exactly, layer by layer, over all tiles, and
    labels and embedding are predicted tile by tile with them -- equal to a whole-frame forward pass.

Memory: ``"full"`` and ``"tiled"`` hold the activations of the whole frame; ``"minibatch"`` holds one
batch of windows (plus the input frame and the outputs), whatever the slice size.

Differences from the reference
------------------------------
* S2: merging runs from ``merge_start`` (default 2000) until the end of training instead of only
  2000-2100, so ``iterations > 2101`` keeps updating the targets; identical for ``iterations <= 2101``.
* S3 (optional, off by default): ``mask_empty=True`` leaves empty pixels out of the cross-entropy, the
  label count and the merge means (the continuity loss still uses them).
* S7 kept: the returned labels are those of the stopping iteration, computed before its optimiser step
  (``"minibatch"``: a final prediction with the trained weights, see above).
* cuDNN stays enabled in deterministic mode (the reference disables it); ``torch`` deterministic
  algorithms are switched on for the run; the seed initialises the weights in a forked RNG, so the
  caller's global torch RNG is untouched.
* Tiled modes are stdask additions (the reference always trains on the full image).
"""
from .config import DEFAULT_BATCH_PIXELS, DEFAULT_TILE, MAX_PIXELS, MODES, SpaSEGConfig, SpaSEGFit
from .merge import label_sums, merge_decision, merge_outliers
from .net import build_net
from .runtime import PIXELS_PER_THREAD, auto_threads, deterministic, resolve_device
from .fit import train
from .windows import global_bn_stats, predict, predict_tiled

__all__ = ["MODES", "MAX_PIXELS", "DEFAULT_TILE", "DEFAULT_BATCH_PIXELS", "PIXELS_PER_THREAD", "SpaSEGConfig",
           "SpaSEGFit", "auto_threads", "build_net", "deterministic", "global_bn_stats", "label_sums",
           "merge_decision", "merge_outliers", "predict", "predict_tiled", "resolve_device", "train"]
