"""Pieces shared by the full-image and the tiled training loops."""
from __future__ import annotations

from ...memory import trim_heap
from .config import SpaSEGConfig, _torch


#: training iterations between two returns of free heap memory to the OS
TRIM_EVERY = 25


def _optimiser(net, config):
    torch = _torch()
    return torch.optim.Adam(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)


def _merge_active(t: int, config: SpaSEGConfig) -> bool:
    return t >= config.merge_start and (config.merge_stop is None or t <= config.merge_stop)


def _step(opt, loss, hist: dict, n_labels: int, bar) -> None:
    """One training step: back-propagate ``loss``, update the weights, and record the iteration's loss and
    label count in ``hist`` and on the progress bar."""
    loss.backward()
    opt.step()
    hist["loss"].append(float(loss.detach()))
    # each iteration's buffers leave glibc's heap fragmented: untrimmed, the resident size grows by ~6 MB per
    # iteration on a 10^7-pixel frame (+1.7 GB over a run); a trim costs ~0.1 s there, so every TRIM_EVERY
    if len(hist["loss"]) % TRIM_EVERY == 0:
        trim_heap()
    hist["n_labels"].append(n_labels)
    bar.update(1)


def _bar(config, progress, desc):
    from ...progress import progress_bar

    return progress_bar(total=config.iterations, desc=desc, unit="it", disable=not progress)
