"""Training on windows (``mode="tiled"``: all windows per iteration; ``"minibatch"``: a random batch)."""
from __future__ import annotations

import numpy as np

from .config import SpaSEGFit, _torch
from .merge import _apply_merge, label_sums
from .steps import _bar, _merge_active, _optimiser, _step
from .windows import _Windows, predict_tiled


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
        _step(opt, loss, hist, n_labels, bar)
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
