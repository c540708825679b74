"""stdask: spatial transcriptomics at any scale (tiled zarr slices, dask compute).

The front door, as scanpy's::

    import stdask as sd
    ds = sd.read("slice.zarr")
    sd.pp.normalize_total(ds); sd.pp.log1p(ds); sd.pp.pca(ds)
    sd.gr.spatial_neighbors(ds)
    lrs = sd.tl.cci.load_lrs(["connectomeDB2020_lit"], species="human")
    sd.tl.cci.run(ds, lrs, min_spots=20, distance=None, n_pairs=1000)
    sd.pl.lr_summary(ds)
    ds.write()

The namespaces ``pp``, ``gr``, ``tl``, ``pl``, ``io``, ``datasets``, ``report`` (and ``models``, ``cluster``) are
bound on first use, so ``import stdask`` stays quick and never imports torch.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__
from .settings import settings
from .dataset import SpatialDataset, read, register_exporter
from .io.ingest import ingest

if TYPE_CHECKING:  # for type checkers and IDEs; at run time they are bound lazily by __getattr__
    from . import cluster, datasets, gr, io, models, pl, pp, raster, report, tl  # noqa: F401

#: subpackages bound as attributes on first access (PEP 562)
_NAMESPACES = ("pp", "gr", "tl", "pl", "io", "datasets", "report", "models", "cluster", "raster")

# exporters of stored results into other tools' layouts on ``ds.to_anndata()``, registered here (the one place
# that knows every layer) rather than as a side effect of importing the analysis that made them
register_exporter("stdask.tl.cci.export:export_stlearn")


def __getattr__(name: str) -> Any:
    if name in _NAMESPACES:
        module = importlib.import_module(f"{__name__}.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module 'stdask' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_NAMESPACES))


__all__ = ["SpatialDataset", "read", "ingest", "settings", "__version__", *_NAMESPACES]
