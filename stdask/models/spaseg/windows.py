"""Tiles with halos as one batch of windows; exact whole-frame BatchNorm statistics and prediction tile by tile."""
from __future__ import annotations

import numpy as np

from .config import DEFAULT_BATCH_PIXELS, _torch
from .runtime import resolve_device


class _Windows:
    """Windows of the frame (tiles with a halo) and their masks; inputs are read per batch, so only the
    batch's windows are ever copied out of the image (which may be a lazily read stored raster)."""

    def __init__(self, image, occupied, tile, halo):
        from ...raster.tiles import TileGrid

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
