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
from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field

import numpy as np

MODES = ("auto", "full", "tiled", "minibatch")
#: frames up to this many pixels (B x H x W) train as one image under ``mode="auto"``
MAX_PIXELS = 1 << 18
#: default tile side and pixels per minibatch
DEFAULT_TILE = 128
DEFAULT_BATCH_PIXELS = 1 << 16


def _torch():
    try:
        import torch
    except ImportError as e:  # pragma: no cover - torch is a dependency
        raise ImportError("SpaSEG needs PyTorch: pip install torch") from e
    return torch


@dataclass
class SpaSEGConfig:
    """Network and training settings (the reference's defaults for one slice).

    Attributes
    ----------
    n_channel
        Hidden channels nC; ``None`` = the input channels C (the reference's default).
    n_conv
        nConv: 1 + (nConv - 1) 3 x 3 convolutions, then a 1 x 1 one (nConv + 1 convolutions).
    lr, weight_decay
        Adam settings.
    pretrain_epochs
        Stage 1 (MSE) while ``t < pretrain_epochs``.
    iterations
        Upper bound on iterations.
    sim_weight, con_weight
        alpha (cross-entropy) and beta (continuity); 0.4 / 0.7 for one slice, 0.2 / 0.4 for several.
    min_label
        Stop at the first iteration with at most this many labels.
    merge_start
        First iteration of the outlier-merge rule (merging continues to the end; S2).
    merge_stop
        Last merge iteration; ``None`` = until the end. ``2100`` reproduces the reference's window.
    mask_empty
        Leave empty pixels out of the cross-entropy, label count and merge means (S3; off = reference).
    seed
        Seeds the weights (and the tile order of ``"minibatch"``).
    """

    n_channel: int | None = None
    n_conv: int = 2
    lr: float = 0.002
    weight_decay: float = 1e-5
    pretrain_epochs: int = 400
    iterations: int = 2100
    sim_weight: float = 0.4
    con_weight: float = 0.7
    min_label: int = 7
    merge_start: int = 2000
    merge_stop: int | None = None
    mask_empty: bool = False
    seed: int = 1029

    def validate(self) -> None:
        def pos_int(name, lo=1):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
                raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")

        pos_int("n_conv")
        pos_int("iterations")
        pos_int("pretrain_epochs", 0)
        pos_int("min_label")
        pos_int("merge_start", 0)
        pos_int("seed", 0)
        if self.n_channel is not None:
            pos_int("n_channel")
        for name in ("lr", "weight_decay", "sim_weight", "con_weight"):
            v = float(getattr(self, name))
            if not (np.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")


@dataclass
class SpaSEGFit:
    """What :func:`train` returns.

    Attributes
    ----------
    labels
        (B, H, W) int64 raw labels (argmax channel, after any merge) of every pixel.
    embedding
        (B, K, H, W) float32 network output Y.
    stop_iteration
        Iteration whose labels are returned.
    stopped
        Whether the ``min_label`` rule fired (else training ran all ``iterations``).
    n_labels
        Distinct labels counted at the stop (over the counted pixels).
    history
        ``{"loss": [...], "n_labels": [...], "merges": [(t, keep, absorbed), ...]}`` per iteration.
    mode, device
        How it ran.
    seconds
        Wall time of the training and prediction.
    net
        The trained network (on the CPU), for :func:`predict`.
    threads
        Torch threads used.
    """

    labels: np.ndarray
    embedding: np.ndarray
    stop_iteration: int
    stopped: bool
    n_labels: int
    history: dict = field(default_factory=dict)
    mode: str = "full"
    device: str = "cpu"
    seconds: float = 0.0
    net: object = None
    threads: int = 1


def _net_class():
    torch = _torch()
    nn = torch.nn

    class SpaSEGNet(nn.Module):
        """BN(C) -> Conv3x3(C->nC) -> BN -> LeakyReLU(0.2) -> [Conv3x3(nC->nC) -> BN -> LeakyReLU] x (nConv-1)
        -> Conv1x1(nC->K) -> BN(K). Modules are created in the reference's order inside one
        ``nn.Sequential`` named ``seq``, so a seed gives the reference's initial weights and state dicts are
        interchangeable."""

        def __init__(self, in_channels: int, n_channel: int, out_channels: int, n_conv: int) -> None:
            super().__init__()
            mods = [nn.BatchNorm2d(in_channels), nn.Conv2d(in_channels, n_channel, 3, 1, 1),
                    nn.BatchNorm2d(n_channel), nn.LeakyReLU(0.2)]
            for _ in range(n_conv - 1):
                mods += [nn.Conv2d(n_channel, n_channel, 3, 1, 1), nn.BatchNorm2d(n_channel), nn.LeakyReLU(0.2)]
            mods += [nn.Conv2d(n_channel, out_channels, 1, 1, 0), nn.BatchNorm2d(out_channels)]
            self.seq = nn.Sequential(*mods)
            self.n_conv = n_conv

        @property
        def bn_layers(self) -> list:
            return [m for m in self.seq if isinstance(m, nn.BatchNorm2d)]

        def forward(self, x):
            return self.seq(x)

        def forward_masked(self, x, inside, own, stats=None, stop_at_bn: int | None = None):
            """Forward pass over windows.

            ``inside`` (N, 1, s, s): pixel lies in the frame; outside pixels are zeroed before each 3 x 3
            convolution (the frame's zero padding). ``own`` (N, 1, s, s): BatchNorm statistics are taken
            over these pixels (biased variance, as in training mode), unless ``stats`` gives (mean, var)
            per BatchNorm layer. With ``stop_at_bn=k`` returns the input of BatchNorm layer k instead.
            """
            k = 0
            w = own.to(x.dtype)
            n = w.sum()
            ins = inside.to(x.dtype)
            for m in self.seq:
                if isinstance(m, nn.BatchNorm2d):
                    if stop_at_bn is not None and k == stop_at_bn:
                        return x
                    if stats is not None:
                        mean, var = stats[k]
                    else:
                        mean = (x * w).sum(dim=(0, 2, 3)) / n
                        var = (((x - mean[None, :, None, None]) ** 2) * w).sum(dim=(0, 2, 3)) / n
                    scale = m.weight / torch.sqrt(var + m.eps)
                    x = (x - mean[None, :, None, None]) * scale[None, :, None, None] + m.bias[None, :, None, None]
                    k += 1
                elif isinstance(m, nn.Conv2d) and m.kernel_size[0] > 1:
                    x = m(x * ins)
                else:
                    x = m(x)
            return x

    return SpaSEGNet


def build_net(in_channels: int, config: SpaSEGConfig):
    """The network, initialised under ``config.seed`` (PyTorch default initialisation) without touching
    the global torch RNG."""
    torch = _torch()
    Net = _net_class()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(config.seed))
        nc = config.n_channel or in_channels
        return Net(in_channels, nc, in_channels, config.n_conv)


# ----------------------------------------------------------------------------------------------------
# the outlier-merge rule
# ----------------------------------------------------------------------------------------------------
def merge_decision(means: np.ndarray) -> tuple[int, int] | None:
    """The reference's outlier-merge decision on label means.

    Parameters
    ----------
    means
        (n, C) mean input vector of each present label, rows in ascending label order.

    Returns
    -------
    ``(i, j)`` (row positions, i < j) when the closest pair of label means is an outlier -- label j is
    then relabelled i -- else ``None``.

    Rule: distances d over pairs (i < j) in row-major order; outliers are pairs with
    ``|d - mean(d)| > std(d)`` (population standard deviation); ``idx`` is the first pair of minimum
    distance; merge iff ``idx`` is an outlier.
    """
    means = np.asarray(means, dtype=np.float64)
    n = len(means)
    if n < 2:
        return None
    iu, ju = np.triu_indices(n, k=1)
    d = np.sqrt(((means[iu] - means[ju]) ** 2).sum(axis=1))
    out = np.abs(d - d.mean()) > d.std()
    idx = int(np.argmin(d))
    if out[idx]:
        return int(iu[idx]), int(ju[idx])
    return None


def label_sums(labels, features, mask, n_classes: int):
    """Per-label sums of feature vectors and pixel counts (torch, float64).

    ``labels`` (P,) int64, ``features`` (P, C), ``mask`` (P,) bool or None -> ((K, C) sums, (K,) counts).
    """
    torch = _torch()
    if mask is not None:
        labels = labels[mask]
        features = features[mask]
    C = features.shape[1]
    sums = torch.zeros((n_classes, C), dtype=torch.float64, device=features.device)
    sums.index_add_(0, labels, features.to(torch.float64))
    counts = torch.bincount(labels, minlength=n_classes).to(torch.float64)
    return sums, counts


def merge_outliers(labels, features, mask=None, n_classes: int | None = None):
    """Apply the merge rule to a label vector (torch).

    Parameters
    ----------
    labels
        (P,) int64 labels of all pixels.
    features
        (P, C) input vectors of the pixels.
    mask
        (P,) bool pixels whose vectors enter the label means (``None``: all, the reference).
    n_classes
        Number of possible labels K (default ``max(labels) + 1``).

    Returns
    -------
    (labels, merged): the relabelled vector (a copy when a merge happens) and ``(keep, absorbed)`` raw
    labels or ``None``.
    """
    K = int(n_classes or int(labels.max()) + 1)
    sums, counts = label_sums(labels, features, mask, K)
    return _apply_merge(labels, sums, counts)


def _apply_merge(labels, sums, counts):
    present = np.flatnonzero(counts.cpu().numpy() > 0)
    means = (sums[present] / counts[present, None]).cpu().numpy()
    dec = merge_decision(means)
    if dec is None:
        return labels, None
    keep, absorbed = int(present[dec[0]]), int(present[dec[1]])
    labels = labels.clone()
    labels[labels == absorbed] = keep
    return labels, (keep, absorbed)


# ----------------------------------------------------------------------------------------------------
# training
# ----------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def deterministic(threads: int | None = None):
    """Deterministic torch for the duration (restored afterwards); optionally a thread count."""
    torch = _torch()
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    old = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
           torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark, torch.get_num_threads())
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    if threads:
        torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(old[0], warn_only=old[1])
        torch.backends.cudnn.deterministic = old[2]
        torch.backends.cudnn.benchmark = old[3]
        torch.set_num_threads(old[4])


#: pixels per iteration per torch thread below which more threads cost more than they gain (15-channel
#: convolutions are small; on shared CPUs OpenMP threads also spin against other processes)
PIXELS_PER_THREAD = 100_000


def auto_threads(pixels: int) -> int:
    """Torch threads for an iteration over ``pixels`` pixels: ``min(torch.get_num_threads(),
    max(1, pixels // PIXELS_PER_THREAD))``. Measured on a 2-core machine: a 78 x 128 image trains at
    28 ms/iteration on 1 thread and 104 ms on 2; 256 x 256 at 130 vs 450 ms."""
    torch = _torch()
    return int(max(1, min(torch.get_num_threads(), pixels // PIXELS_PER_THREAD)))


def resolve_device(device: str | None = None) -> str:
    """``None``/``"auto"`` -> ``"cuda"`` when available, else ``"cpu"``."""
    torch = _torch()
    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device={device!r} requested but torch sees no CUDA device; use device='cpu'")
    return str(device)


def train(image: np.ndarray, occupied: np.ndarray | None = None, config: SpaSEGConfig | None = None, *,
          mode: str = "auto", device: str | None = None, tile: int = DEFAULT_TILE,
          batch_pixels: int = DEFAULT_BATCH_PIXELS, max_pixels: int = MAX_PIXELS, threads: int | None = None,
          progress: bool = True) -> SpaSEGFit:
    """Segment an image with SpaSEG.

    Parameters
    ----------
    image
        (B, C, H, W) float32 input (z-scored PCs per slice; 0 on empty pixels). Any array-like supporting
        ``image[b, :, r0:r1, c0:c1]`` works in ``"minibatch"`` mode (e.g. a stored raster), else numpy.
    occupied
        (B, H, W) bool pixels holding at least one observation (used by ``mask_empty``; default all).
    config
        :class:`SpaSEGConfig` (defaults: the reference's single-slice settings).
    mode
        ``"auto"`` (``"full"`` up to ``max_pixels`` pixels, else ``"minibatch"``), ``"full"``, ``"tiled"``
        or ``"minibatch"`` (module docstring).
    device
        ``None`` = CUDA when available, else CPU.
    tile, batch_pixels
        Tiled modes: tile side (pixels; the halo is ``n_conv + 1``) and pixels per minibatch.
    max_pixels
        Threshold of ``mode="auto"``.
    threads
        ``torch.set_num_threads`` for the run. ``None``: :func:`auto_threads` -- torch's setting, capped at
        one thread per ~100k pixels of an iteration (never more than torch's setting).
    progress
        Show a progress bar (and ``stdask.settings.progress``).

    Returns
    -------
    SpaSEGFit
    """
    config = config or SpaSEGConfig()
    config.validate()
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if len(image.shape) != 4:
        raise ValueError(f"image must be (B, C, H, W), got shape {tuple(image.shape)}")
    B, C, H, W = (int(v) for v in image.shape)
    if occupied is None:
        occupied = np.ones((B, H, W), dtype=bool)
    occupied = np.asarray(occupied, dtype=bool)
    if occupied.shape != (B, H, W):
        raise ValueError(f"occupied must be {(B, H, W)}, got {occupied.shape}")
    if mode == "auto":
        mode = "full" if B * H * W <= max_pixels else "minibatch"
    dev = resolve_device(device)
    if threads is None:
        threads = auto_threads(B * H * W if mode == "full" else min(B * H * W, batch_pixels))
    t0 = time.perf_counter()
    with deterministic(threads):
        net = build_net(C, config).to(dev)
        if mode == "full":
            fit = _train_full(net, np.asarray(image, dtype=np.float32), occupied, config, dev, progress)
        else:
            fit = _train_tiled(net, image, occupied, config, dev, tile, batch_pixels, mode, progress)
    fit.mode, fit.device, fit.seconds, fit.threads = mode, dev, time.perf_counter() - t0, int(threads)
    fit.net = net.cpu()
    return fit


def _optimiser(net, config):
    torch = _torch()
    return torch.optim.Adam(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)


def _merge_active(t: int, config: SpaSEGConfig) -> bool:
    return t >= config.merge_start and (config.merge_stop is None or t <= config.merge_stop)


def _bar(config, progress, desc):
    from ..progress import progress_bar

    return progress_bar(total=config.iterations, desc=desc, unit="it", disable=not progress)


def _train_full(net, image, occupied, config, dev, progress) -> SpaSEGFit:
    torch = _torch()
    F = torch.nn.functional
    B, C, H, W = image.shape
    X = torch.from_numpy(np.ascontiguousarray(image)).to(dev)
    Xf = X.permute(0, 2, 3, 1).reshape(-1, C)
    occ = torch.from_numpy(occupied.reshape(-1)).to(dev)
    counted = occ if config.mask_empty else None
    opt = _optimiser(net, config)
    net.train()
    hist = {"loss": [], "n_labels": [], "merges": []}
    stopped = False
    bar = _bar(config, progress, "spaseg")
    target = Y = None
    t = 0
    for t in range(config.iterations):
        opt.zero_grad()
        Y = net(X)
        K = Y.shape[1]
        Yf = Y.permute(0, 2, 3, 1).reshape(-1, K)
        with torch.no_grad():
            target = Yf.argmax(dim=1)
            if _merge_active(t, config):
                target, merged = merge_outliers(target, Xf, counted, K)
                if merged:
                    hist["merges"].append((t, *merged))
            n_labels = int(torch.unique(target if counted is None else target[counted]).numel())
        if t < config.pretrain_epochs:
            loss = F.mse_loss(Y, X)
        else:
            if counted is None:
                sim = F.cross_entropy(Yf, target)
            else:
                sim = F.cross_entropy(Yf[counted], target[counted])
            con = (Y[:, :, 1:, :] - Y[:, :, :-1, :]).abs().mean() + (Y[:, :, :, 1:] - Y[:, :, :, :-1]).abs().mean()
            loss = config.sim_weight * sim + config.con_weight * con
        loss.backward()
        opt.step()
        hist["loss"].append(float(loss.detach()))
        hist["n_labels"].append(n_labels)
        bar.update(1)
        if n_labels <= config.min_label:
            stopped = True
            break
    bar.close()
    labels = target.reshape(B, H, W).cpu().numpy().astype(np.int64)
    emb = Y.detach().cpu().numpy().astype(np.float32)
    return SpaSEGFit(labels, emb, t, stopped, hist["n_labels"][-1], hist)


class _Windows:
    """Windows of the frame (tiles with a halo) and their masks; inputs are read per batch, so only the
    batch's windows are ever copied out of the image (which may be a lazily read stored raster)."""

    def __init__(self, image, occupied, tile, halo):
        from ..raster.tiles import TileGrid

        B, C, H, W = (int(v) for v in image.shape)
        self.image = image
        self.grid = TileGrid((B, H, W), tile, halo)
        self.occupied = occupied
        self.masks = [self.grid.masks(w) for w in self.grid]
        self.C = C

    def __len__(self):
        return len(self.grid)

    def batch(self, idx, dev):
        torch = _torch()
        ws = [self.grid.windows[i] for i in idx]
        x = np.stack([self.grid.read(self.image, w) for w in ws])
        inside = np.stack([self.masks[i][0] for i in idx])
        own = np.stack([self.masks[i][1] for i in idx])
        occ = np.stack([self._occ(w) for w in ws])
        def to(a):
            return torch.from_numpy(np.ascontiguousarray(a)).to(dev)

        return ws, to(x), to(inside[:, None]), to(own[:, None]), to(occ)

    def _occ(self, w):
        s = w.size
        out = np.zeros((s, s), dtype=bool)
        _, H, W = self.occupied.shape
        a0, a1 = max(w.top, 0), min(w.top + s, H)
        b0, b1 = max(w.left, 0), min(w.left + s, W)
        out[a0 - w.top:a1 - w.top, b0 - w.left:b1 - w.left] = self.occupied[w.b, a0:a1, b0:b1]
        return out


def _train_tiled(net, image, occupied, config, dev, tile, batch_pixels, mode, progress) -> SpaSEGFit:
    torch = _torch()
    F = torch.nn.functional
    B, C, H, W = (int(v) for v in image.shape)
    # receptive-field radius n_conv (one pixel per 3 x 3 convolution), plus one so that the first halo
    # pixel's output -- the partner of the edge pixels in the continuity loss -- is exact too
    halo = config.n_conv + 1
    wins = _Windows(image, occupied, tile, halo)
    n_win = len(wins)
    if mode == "tiled":
        per_batch = n_win
    else:
        per_batch = int(min(n_win, max(1, batch_pixels // (wins.grid.tile ** 2))))
    full_cover = per_batch >= n_win
    rng = np.random.default_rng(int(config.seed))
    opt = _optimiser(net, config)
    net.train()
    K = None
    # per-tile state: latest label presence and label sums of the input (for the global count and merge)
    tile_present: list = [None] * n_win
    tile_sums: list = [None] * n_win
    tile_counts: list = [None] * n_win
    hist = {"loss": [], "n_labels": [], "merges": []}
    order = np.arange(n_win) if full_cover else rng.permutation(n_win)
    pos = 0
    stopped = False
    bar = _bar(config, progress, f"spaseg ({mode}, {n_win} tiles)")
    last = None
    t = 0
    for t in range(config.iterations):
        if full_cover:
            idx = order
        else:
            if pos + per_batch > n_win:
                order = np.concatenate([order[pos:], rng.permutation(n_win)])
                pos = 0
            idx = order[pos:pos + per_batch]
            pos += per_batch
        ws, x, inside, own, occ = wins.batch(idx, dev)
        opt.zero_grad()
        Y = net.forward_masked(x, inside, own)
        K = Y.shape[1]
        Yp = Y.permute(0, 2, 3, 1)  # (n, s, s, K)
        xp = x.permute(0, 2, 3, 1)
        own2 = own[:, 0]
        counted = own2 & occ if config.mask_empty else own2
        with torch.no_grad():
            target = Yp.argmax(dim=-1)  # (n, s, s)
            # refresh the per-tile state from this batch (before any merge: raw labels, as the reference
            # computes the means from the argmax labels)
            for k, i in enumerate(idx):
                m = counted[k]
                lab = target[k][m]
                s_, c_ = label_sums(lab, xp[k][m], None, K)
                tile_sums[i], tile_counts[i] = s_, c_
            merged = None
            if _merge_active(t, config) and all(s is not None for s in tile_sums):
                sums = torch.stack(tile_sums).sum(0)
                counts = torch.stack(tile_counts).sum(0)
                flat, merged = _apply_merge(target.reshape(-1), sums, counts)
                target = flat.reshape(target.shape)
                if merged:
                    hist["merges"].append((t, *merged))
                    keep, absorbed = merged
                    for i in idx:
                        # the batch's tiles now carry the merged labels
                        tile_counts[i] = tile_counts[i].clone()
                        tile_sums[i] = tile_sums[i].clone()
                        tile_counts[i][keep] += tile_counts[i][absorbed]
                        tile_sums[i][keep] += tile_sums[i][absorbed]
                        tile_counts[i][absorbed] = 0
                        tile_sums[i][absorbed] = 0
            for k, i in enumerate(idx):
                tile_present[i] = tile_counts[i] > 0
            if all(p is not None for p in tile_present):
                n_labels = int(torch.stack(tile_present).any(0).sum())
            else:
                n_labels = -1  # not every tile seen yet: no stop
        if t < config.pretrain_epochs:
            w = own.to(Y.dtype)
            loss = (((Y - x) ** 2) * w).sum() / (w.sum() * K)
        else:
            sim = F.cross_entropy(Yp[counted], target[counted])
            ins = inside[:, 0]
            v = own2[:, :-1, :] & ins[:, 1:, :]
            h = own2[:, :, :-1] & ins[:, :, 1:]
            dv = (Yp[:, 1:, :, :] - Yp[:, :-1, :, :]).abs()[v]
            dh = (Yp[:, :, 1:, :] - Yp[:, :, :-1, :]).abs()[h]
            con = dv.mean() + dh.mean()
            loss = config.sim_weight * sim + config.con_weight * con
        loss.backward()
        opt.step()
        hist["loss"].append(float(loss.detach()))
        hist["n_labels"].append(n_labels)
        bar.update(1)
        if full_cover:
            last = (ws, target.detach(), Y.detach())
        if 0 <= n_labels <= config.min_label:
            stopped = True
            break
    bar.close()
    if full_cover:
        # every window was in the last batch: its labels and outputs are the whole frame's (as "full")
        ws, target, Y = last
        labels = np.zeros((B, H, W), dtype=np.int64)
        emb = np.zeros((B, K, H, W), dtype=np.float32)
        tgt, out = target.cpu().numpy(), Y.cpu().numpy()
        for k, w in enumerate(ws):
            wins.grid.write(labels, w, tgt[k])
            wins.grid.write(emb, w, out[k])
        return SpaSEGFit(labels, emb, t, stopped, hist["n_labels"][-1], hist)
    labels, emb = predict_tiled(net, wins, dev, per_batch)
    if config.mask_empty:
        n_final = int(np.unique(labels[occupied]).size)
    else:
        n_final = int(np.unique(labels).size)
    hist["n_labels_final"] = n_final
    return SpaSEGFit(labels, emb, t, stopped, n_final, hist)


def global_bn_stats(net, wins: "_Windows", dev, per_batch: int) -> list:
    """Exact BatchNorm statistics of the whole frame (training-mode: mean and biased variance over every
    pixel of every slice), computed layer by layer over all tiles without holding the frame's
    activations: layer k's statistics are accumulated (float64) with layers < k already fixed."""
    torch = _torch()
    stats: list = []
    n_bn = len(net.bn_layers)
    chunks = [np.arange(i, min(i + per_batch, len(wins))) for i in range(0, len(wins), per_batch)]
    with torch.no_grad():
        for k in range(n_bn):
            s1 = s2 = None
            n = 0.0
            for idx in chunks:
                _, x, inside, own, _ = wins.batch(idx, dev)
                z = net.forward_masked(x, inside, own, stats=stats, stop_at_bn=k).to(torch.float64)
                w = own.to(torch.float64)
                a = (z * w).sum(dim=(0, 2, 3))
                b = (z * z * w).sum(dim=(0, 2, 3))
                s1 = a if s1 is None else s1 + a
                s2 = b if s2 is None else s2 + b
                n += float(w.sum())
            mean = s1 / n
            var = torch.clamp(s2 / n - mean * mean, min=0.0)
            stats.append((mean.to(torch.float32), var.to(torch.float32)))
    return stats


def predict_tiled(net, wins: "_Windows", dev, per_batch: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels (B, H, W) and embedding (B, K, H, W) of the whole frame, tile by tile, with the frame's
    exact BatchNorm statistics (:func:`global_bn_stats`): equal to a whole-frame training-mode forward."""
    torch = _torch()
    stats = global_bn_stats(net, wins, dev, per_batch)
    B, _, H, W = (int(v) for v in wins.image.shape)
    K = int(net.bn_layers[-1].num_features)
    labels = np.zeros((B, H, W), dtype=np.int64)
    emb = np.zeros((B, K, H, W), dtype=np.float32)
    with torch.no_grad():
        for i in range(0, len(wins), per_batch):
            idx = np.arange(i, min(i + per_batch, len(wins)))
            ws, x, inside, own, _ = wins.batch(idx, dev)
            Y = net.forward_masked(x, inside, own, stats=stats)
            lab = Y.argmax(dim=1).cpu().numpy()
            out = Y.cpu().numpy()
            for k, w in enumerate(ws):
                wins.grid.write(labels, w, lab[k])
                wins.grid.write(emb, w, out[k])
    return labels, emb


def predict(net, image: np.ndarray, *, tile: int | None = None, device: str | None = None,
            batch_pixels: int = DEFAULT_BATCH_PIXELS) -> tuple[np.ndarray, np.ndarray]:
    """Training-mode forward pass (batch statistics of the whole frame) of a trained network: whole frame
    when ``tile`` is None, else tile by tile with the exact frame statistics (same result)."""
    torch = _torch()
    dev = resolve_device(device)
    net = net.to(dev)
    if tile is None:
        with torch.no_grad():
            net.train()
            Y = net(torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).to(dev))
        return Y.argmax(dim=1).cpu().numpy().astype(np.int64), Y.cpu().numpy()
    B, C, H, W = image.shape
    wins = _Windows(image, np.ones((B, H, W), bool), tile, net.n_conv + 1)
    per_batch = int(max(1, batch_pixels // (wins.grid.tile ** 2)))
    return predict_tiled(net, wins, dev, per_batch)


__all__ = ["SpaSEGConfig", "SpaSEGFit", "train", "build_net", "merge_decision", "merge_outliers", "predict",
           "global_bn_stats", "predict_tiled", "resolve_device", "MODES"]
