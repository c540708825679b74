"""Importing torch for a model, with a clear error where it is missing (torch is imported only when a model runs,
so ``import stdask`` never pays for it)."""
from __future__ import annotations

from types import ModuleType


def require_torch(model: str) -> ModuleType:
    """The ``torch`` module, or an ImportError saying that ``model`` needs it."""
    try:
        import torch
    except ImportError as e:  # pragma: no cover - torch is a dependency
        raise ImportError(f"{model} needs PyTorch: pip install torch") from e
    return torch
