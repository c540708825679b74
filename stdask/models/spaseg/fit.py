"""The entry point: :func:`train` picks the mode and device, builds the network and runs the loop."""
from __future__ import annotations

import time

import numpy as np

from .config import DEFAULT_BATCH_PIXELS, DEFAULT_TILE, MAX_PIXELS, MODES, SpaSEGConfig, SpaSEGFit
from .full import _train_full
from .net import build_net
from .runtime import auto_threads, deterministic, resolve_device
from .tiled import _train_tiled


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
