"""stImpute's per-gene reliability score (spec ``stimpute.md`` §9, quirk I5).

An MLP ``F -> 2h -> h -> 1`` (ReLU) learns, from each *training* gene's predicted profile (P_gnn over the
training cells, the all-gene pass), that gene's uncentred cosine with its measured profile; it then scores the
target genes' P_gnn profiles. Full batch, MSE, Adam (lr, weight decay of the Trans network), ``reliability_epochs``
steps.

Two inputs (``features=``):

* ``"quantiles"`` (stdask default): a fixed-width summary of the profile: its ``n_quantiles`` quantiles over the
  cells and its mean, each divided by the profile's maximum (so the shape, not the level, is compared), plus
  ``log1p`` of the maximum and the fraction of cells above 1% of it; standardised by the training genes' means and
  standard deviations. Its width does not depend on the number of cells, so the model applies to a profile over
  any set of cells (any tile, any sample).
* ``"profile"`` (the reference): the raw profile itself, width N = the number of training cells. At 1,349,620 cells
  the reference's first layer would hold 86M weights; here N is the training sample.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from .config import StImputeConfig, _torch

__all__ = ["FEATURES", "N_QUANTILES", "Reliability", "profile_features", "train_reliability", "uncentred_cosine"]

FEATURES = ("quantiles", "profile")
N_QUANTILES = 64


def uncentred_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(G,) column-wise ``a.b / (||a|| ||b||)`` of two (N, G) arrays (0 where a column is all zero)."""
    a64, b64 = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    den = np.sqrt((a64 * a64).sum(0) * (b64 * b64).sum(0))
    return np.divide((a64 * b64).sum(0), den, out=np.zeros(a64.shape[1]), where=den > 0)


def profile_features(profiles: np.ndarray, features: str = "quantiles",
                     n_quantiles: int = N_QUANTILES) -> np.ndarray:
    """(G, F) float32 inputs of the reliability MLP for the (N, G) predicted profiles (cells x genes)."""
    p = np.asarray(profiles, dtype=np.float64)
    if features == "profile":
        return np.ascontiguousarray(p.T, dtype=np.float32)
    if features != "quantiles":
        raise ValueError(f"features must be one of {FEATURES}, got {features!r}")
    top = p.max(0)
    scale = np.where(top > 0, top, 1.0)
    q = np.quantile(p, np.linspace(0, 1, n_quantiles), axis=0).T / scale[:, None]
    spread = (p > 0.01 * top).mean(0)
    return np.column_stack([q, p.mean(0) / scale, np.log1p(np.maximum(top, 0)), spread]).astype(np.float32)


class Reliability(NamedTuple):
    """A trained reliability model.

    Attributes
    ----------
    model
        The torch MLP.
    features
        ``"quantiles"`` or ``"profile"``.
    center, scale
        (F,) standardisation of the inputs (from the training genes).
    losses
        Per-step training MSE.
    """

    model: Any
    features: str
    center: np.ndarray
    scale: np.ndarray
    losses: list[float]

    def score(self, profiles: np.ndarray) -> np.ndarray:
        """(G,) float64 predicted cosine of each gene of the (N, G) profiles."""
        torch = _torch()
        x = (profile_features(profiles, self.features) - self.center) / self.scale
        with torch.no_grad():
            return self.model(torch.as_tensor(x, dtype=torch.float32)).squeeze(-1).double().numpy()


def train_reliability(profiles: np.ndarray, measured: np.ndarray, config: StImputeConfig,
                      features: str = "quantiles") -> Reliability:
    """Fit the reliability MLP on the training genes.

    Parameters
    ----------
    profiles
        (N, G_train) float: P_gnn of the training genes over the training cells.
    measured
        (N, G_train) float: their measured normalised-log values.
    config
        Uses ``hidden``, ``lr``, ``weight_decay``, ``reliability_epochs`` and ``seed``.
    features
        See the module docstring.

    Returns
    -------
    Reliability
    """
    torch = _torch()
    if np.shape(profiles) != np.shape(measured):
        raise ValueError(f"profiles {np.shape(profiles)} and measured {np.shape(measured)} must have one shape")
    target = uncentred_cosine(profiles, measured)
    x = profile_features(profiles, features)
    center = x.mean(0)
    scale = x.std(0)
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    xt = torch.as_tensor((x - center) / scale, dtype=torch.float32)
    yt = torch.as_tensor(target, dtype=torch.float32)
    h = config.hidden
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(config.seed))
        nn = torch.nn
        model = nn.Sequential(nn.Linear(x.shape[1], 2 * h), nn.ReLU(), nn.Linear(2 * h, h), nn.ReLU(),
                              nn.Linear(h, 1))
    opt = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    losses = []
    for _ in range(config.reliability_epochs):
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.mse_loss(model(xt).squeeze(-1), yt)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    model.eval()
    return Reliability(model, features, center, scale, losses)
