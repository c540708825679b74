"""Training on the whole frame at once (``mode="full"``, the reference)."""
from __future__ import annotations

import numpy as np

from .config import SpaSEGFit, _torch
from .merge import merge_outliers
from .steps import _bar, _merge_active, _optimiser, _step


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
        _step(opt, loss, hist, n_labels, bar)
        if n_labels <= config.min_label:
            stopped = True
            break
    bar.close()
    labels = target.reshape(B, H, W).cpu().numpy().astype(np.int64)
    emb = Y.detach().cpu().numpy().astype(np.float32)
    return SpaSEGFit(labels, emb, t, stopped, hist["n_labels"][-1], hist)
