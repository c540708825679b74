"""STAGUE on datasets (``stdask.tl.stague``): spatial domains, a cell embedding and a learned cell-cell graph
(:func:`~.run.stague`); the network and training live in :mod:`stdask.models.stague`."""
from .run import MAX_FULL_BATCH, STAGUEResult, stague

__all__ = ["MAX_FULL_BATCH", "STAGUEResult", "stague"]
