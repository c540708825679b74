"""The SpaSEG network (Bai et al. 2025): convolution blocks, BatchNorm, the 1 x 1 output layer."""
from __future__ import annotations

from .config import SpaSEGConfig, _torch


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
