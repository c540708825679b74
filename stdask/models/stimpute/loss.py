"""stImpute's training loss (spec ``stimpute.md`` §6, the reference code's form, quirk I9).

With Ŷ, Y (cells x training genes) and the *global* scalar means μ̂ = mean(Ŷ), μ = mean(Y):

    L = 2 * [ (1 - mean_i cos(Ŷ_i,: - μ̂, Y_i,: - μ))      cell-wise term
            + (1 - mean_g cos(Ŷ_:,g - μ̂, Y_:,g - μ)) ]    gene-wise term
        + MSE(Ŷ, Y)

``cos`` is :func:`torch.nn.functional.cosine_similarity` with eps 1e-8: x.y / (max(||x||, eps) max(||y||, eps)),
so a centred row or column that is all zero has cosine 0 (not NaN). The paper writes L_sim + L_res without the
factor 2 and with a summed squared error; the code's form is kept for parity.
"""
from __future__ import annotations

from .config import _torch

__all__ = ["COSINE_EPS", "loss_terms", "stimpute_loss"]

#: eps of the cosine similarities (the reference's ``CosineSimilarity`` default)
COSINE_EPS = 1e-8


def loss_terms(pred, target):
    """The three parts of the loss.

    Parameters
    ----------
    pred, target
        (cells, genes) float tensors Ŷ and Y of the same shape.

    Returns
    -------
    ``(cell, gene, mse)`` 0-d tensors: ``1 - mean_i cos`` over cells, ``1 - mean_g cos`` over genes, and
    ``mean((Ŷ - Y)^2)``.
    """
    torch = _torch()
    if pred.shape != target.shape or pred.ndim != 2:
        raise ValueError(f"pred and target must be (cells, genes) of one shape, got {tuple(pred.shape)} and "
                         f"{tuple(target.shape)}")
    cos = torch.nn.functional.cosine_similarity
    p, t = pred - pred.mean(), target - target.mean()
    cell = 1 - cos(p, t, dim=1, eps=COSINE_EPS).mean()
    gene = 1 - cos(p, t, dim=0, eps=COSINE_EPS).mean()
    return cell, gene, torch.nn.functional.mse_loss(pred, target)


def stimpute_loss(pred, target):
    """``2 * (cell + gene) + mse`` of :func:`loss_terms`: a 0-d tensor, differentiable in ``pred``."""
    cell, gene, mse = loss_terms(pred, target)
    return 2 * (cell + gene) + mse
