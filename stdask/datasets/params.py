"""What defines a synthetic slice (:class:`SyntheticParams`, the arguments of
:func:`stdask.datasets.synthetic_slice`) and what was planted in it (:class:`SyntheticTruth`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ..data import lr_db_path
from .layouts import LAYOUTS

__all__ = ["DOMAIN_SHAPES", "SyntheticParams", "SyntheticTruth", "read_lr_pairs"]

DOMAIN_SHAPES = ("layers", "regions")


@dataclass(frozen=True)
class SyntheticParams:
    """Arguments of :func:`synthetic_slice` (see there)."""

    n_obs: int = 10_000
    n_genes: int = 2_000
    layout: str = "visium"
    seed: int = 0
    n_domains: int = 5
    domain_shape: str = "layers"
    n_cell_types: int = 6
    n_hotspots: int = 4
    lr_fraction: float = 0.5
    bin_size: int = 50
    zero_fraction: float = 0.9
    n_markers: int = 10
    lr_db: str = "connectomeDB2020_lit"

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad argument."""
        def integer(name: str, lo: int) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
                raise ValueError(f"{name} must be an integer >= {lo}, got {value!r}")

        integer("n_obs", 1)
        integer("n_genes", 1)
        integer("seed", 0)
        integer("n_domains", 1)
        integer("n_cell_types", 1)
        integer("n_hotspots", 0)
        integer("bin_size", 1)
        integer("n_markers", 0)
        if self.n_obs >= 2 ** 32:
            raise ValueError(f"n_obs must be below 2**32, got {self.n_obs}")
        if self.layout not in LAYOUTS:
            raise ValueError(f"unknown layout {self.layout!r}; choose one of {', '.join(LAYOUTS)}")
        if self.domain_shape not in DOMAIN_SHAPES:
            raise ValueError(f"unknown domain_shape {self.domain_shape!r}; choose one of {', '.join(DOMAIN_SHAPES)}")
        if not 0.0 <= float(self.lr_fraction) <= 1.0:
            raise ValueError(f"lr_fraction must lie in [0, 1], got {self.lr_fraction!r}")
        if not 0.0 < float(self.zero_fraction) < 1.0:
            raise ValueError(f"zero_fraction must lie in (0, 1), got {self.zero_fraction!r}")


@dataclass
class SyntheticTruth:
    """What was planted in a synthetic slice.

    Attributes
    ----------
    lr_pairs
        One row per hotspot: ``name`` (``"<ligand>_<receptor>"``, stLearn's pair naming), ``ligand``,
        ``receptor``, ``x``, ``y`` (disc centre) and ``radius``, in the slice's coordinate units.
    domain_markers
        Domain name -> its marker genes (up-regulated in that domain).
    cell_type_markers
        Cell-type name -> its marker genes (up-regulated in that type).
    composition
        (n_domains, n_cell_types) probabilities of each cell type in each domain.
    scale
        Calibrated expression scale (mean count of a unit gene at unit library size).
    """

    lr_pairs: pd.DataFrame
    domain_markers: dict[str, list[str]]
    cell_type_markers: dict[str, list[str]]
    composition: pd.DataFrame
    scale: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-able and AnnData-``uns``-able form (lists of str / float, nested dicts)."""
        return {
            "lr_pairs": {c: self.lr_pairs[c].tolist() for c in self.lr_pairs.columns},
            "domain_markers": {k: list(v) for k, v in self.domain_markers.items()},
            "cell_type_markers": {k: list(v) for k, v in self.cell_type_markers.items()},
            "composition": {
                "domains": list(self.composition.index),
                "cell_types": list(self.composition.columns),
                "values": self.composition.to_numpy().tolist(),
            },
            "scale": float(self.scale),
        }


def read_lr_pairs(name: str = "connectomeDB2020_lit") -> pd.DataFrame:
    """The packaged ligand-receptor table as a DataFrame with columns ``ligand``, ``receptor`` (file order)."""
    table = pd.read_csv(lr_db_path(name), sep="\t", dtype=str)
    table.columns = ["ligand", "receptor"]
    return table
