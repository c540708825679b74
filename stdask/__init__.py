"""stdask: spatial transcriptomics at any scale (tiled zarr slices, dask compute)."""
__version__ = "0.1.0"

from .settings import settings  # noqa: E402
from .dataset import SpatialDataset, read  # noqa: E402
from .io.ingest import ingest  # noqa: E402
from . import pl  # noqa: E402

__all__ = ["SpatialDataset", "read", "ingest", "settings", "__version__"]
