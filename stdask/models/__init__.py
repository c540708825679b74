"""Torch models fed by tile loaders (``spaseg``; STAGUE and stImpute to come). Imported lazily by the ``tl``
functions that train them, so importing stdask does not import torch."""
