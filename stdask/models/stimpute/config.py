"""stImpute's run settings (:class:`StImputeConfig`), with the size rule of the reference (spec ``stimpute.md``,
default-parameter table and quirk I3)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from dataclasses import replace as dc_replace
from typing import Any

import numpy as np

from ..torch_import import require_torch
from .gene_graph import WEIGHTINGS

__all__ = ["BLENDS", "LARGE_DEFAULTS", "SIZE_RULE_CELLS", "SIZE_RULE_GENES", "SMALL_DEFAULTS", "StImputeConfig",
           "is_small_data"]

#: final blend forms (spec §8): eq. 12 of the paper (default), the code's per-gene maxima, global maxima
BLENDS = ("paper", "code", "global")
#: the size rule: "small" data means fewer than this many spatial cells AND fewer than SIZE_RULE_GENES
#: training genes
SIZE_RULE_CELLS = 10_000
SIZE_RULE_GENES = 500
#: the settings the size rule switches (spec table): small data / otherwise
SMALL_DEFAULTS = {"k": 50, "e_epochs": 10, "hidden": 256, "alpha": 0.7, "reliability_epochs": 100}
LARGE_DEFAULTS = {"k": 20, "e_epochs": 50, "hidden": 32, "alpha": 0.5, "reliability_epochs": 200}


def _torch():
    return require_torch("stImpute")


def is_small_data(n_spatial: int, n_train_genes: int) -> bool:
    """The reference's size rule: ``n_spatial < 10,000`` **and** ``n_train_genes < 500``."""
    return int(n_spatial) < SIZE_RULE_CELLS and int(n_train_genes) < SIZE_RULE_GENES


@dataclass
class StImputeConfig:
    """Network, neighbour and training settings. Defaults are the spec's "small data" column; use
    :meth:`for_size` to apply the size rule.

    Attributes
    ----------
    k
        K: reference neighbours per spatial cell, also the GS blocks' width (small 50 / otherwise 20).
    e_epochs
        Trans (E-step) steps per EM round (10 / 50; the paper states 10 / 32, the code's values are used).
    hidden
        h of the Trans MLP ``K -> 2h -> h -> 1`` and of the reliability MLP (256 / 32).
    alpha
        Blend weight of the GNN prediction (0.7 / 0.5).
    reliability_epochs
        Full-batch steps of the reliability MLP (100 / 200).
    ae_latent, ae_epochs, ae_batch_size, ae_lr, ae_weight_decay
        Autoencoder code width (100), pre-training epochs (30), mini-batch rows (512), Adam lr (1e-2) and
        weight decay (1e-4).
    gnn_layers
        GraphSAGE-style blocks, each K -> K (2).
    em_rounds, m_epochs
        EM rounds (2) and AE (M-step) steps per round (10).
    lr, weight_decay
        Adam of the Trans network and the reliability MLP (1e-2, 1e-2; full batch).
    seed
        Seeds weight initialisation and shuffling (42).
    weighting, topk
        Gene-graph weighting (``"similarity_topk"`` default, ``"distance_code"`` for parity) and its k (10).
    blend
        Final blend: ``"paper"`` (default), ``"code"`` or ``"global"`` (spec §8).
    exact_max_pairs
        Neighbour search is exact while ``n_spatial * n_reference`` is at most this (10^9: blocked brute force
        costs about 2 * 10^11 flops there), approximate (pynndescent) above. A stdask choice.
    size_rule
        Which branch of the size rule produced the settings (``None`` when built directly): ``{"branch":
        "small" | "large", "n_spatial", "n_train_genes", "rule", "overridden": [names]}``.
    """

    k: int = SMALL_DEFAULTS["k"]
    e_epochs: int = SMALL_DEFAULTS["e_epochs"]
    hidden: int = SMALL_DEFAULTS["hidden"]
    alpha: float = SMALL_DEFAULTS["alpha"]
    reliability_epochs: int = SMALL_DEFAULTS["reliability_epochs"]
    ae_latent: int = 100
    ae_epochs: int = 30
    ae_batch_size: int = 512
    ae_lr: float = 1e-2
    ae_weight_decay: float = 1e-4
    gnn_layers: int = 2
    em_rounds: int = 2
    m_epochs: int = 10
    lr: float = 1e-2
    weight_decay: float = 1e-2
    seed: int = 42
    weighting: str = "similarity_topk"
    topk: int = 10
    blend: str = "paper"
    exact_max_pairs: int = 10**9
    size_rule: dict[str, Any] | None = field(default=None)

    @classmethod
    def for_size(cls, n_spatial: int, n_train_genes: int, **overrides: Any) -> "StImputeConfig":
        """Settings for ``n_spatial`` spatial cells and ``n_train_genes`` training genes.

        Parameters
        ----------
        n_spatial, n_train_genes
            N and G_train; "small" iff ``N < 10,000 and G_train < 500`` (:func:`is_small_data`).
        **overrides
            Any field, applied after the rule (and listed in ``size_rule["overridden"]``).

        Returns
        -------
        StImputeConfig, validated, with ``size_rule`` recording the branch.
        """
        n, g = int(n_spatial), int(n_train_genes)
        if n < 1 or g < 1:
            raise ValueError(f"for_size needs n_spatial >= 1 and n_train_genes >= 1, got {n} and {g}")
        small = is_small_data(n, g)
        known = {f.name for f in fields(cls)} - {"size_rule"}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"StImputeConfig has no setting {unknown}; known: {sorted(known)}")
        rule = {"branch": "small" if small else "large", "n_spatial": n, "n_train_genes": g,
                "rule": f"small iff n_spatial < {SIZE_RULE_CELLS} and n_train_genes < {SIZE_RULE_GENES}",
                "overridden": sorted(overrides)}
        config = cls(**{**(SMALL_DEFAULTS if small else LARGE_DEFAULTS), **overrides}, size_rule=rule)
        config.validate()
        return config

    def replace(self, **changes: Any) -> "StImputeConfig":
        """A copy with ``changes`` applied (recorded in ``size_rule["overridden"]`` when there is one)."""
        out = dc_replace(self, **changes)
        if out.size_rule is not None:
            out.size_rule = {**out.size_rule,
                             "overridden": sorted(set(out.size_rule["overridden"]) | (set(changes) - {"size_rule"}))}
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable settings, for the provenance (``uns['stdask']['stimpute']``)."""
        return asdict(self)

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first setting out of range and the allowed range."""
        def integer(name: str, lo: int) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
                raise ValueError(f"StImputeConfig.{name} must be an integer >= {lo}, got {v!r}")

        for name in ("k", "e_epochs", "hidden", "reliability_epochs", "ae_latent", "ae_epochs", "ae_batch_size",
                     "gnn_layers", "em_rounds", "topk", "exact_max_pairs"):
            integer(name, 1)
        integer("m_epochs", 0)
        integer("seed", 0)
        alpha = self.alpha
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.floating)) or not 0 <= alpha <= 1:
            raise ValueError(f"StImputeConfig.alpha must be a number in [0, 1], got {alpha!r}")
        for name in ("ae_lr", "ae_weight_decay", "lr", "weight_decay"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float, np.floating)) or not (np.isfinite(v) and v >= 0):
                raise ValueError(f"StImputeConfig.{name} must be a finite number >= 0, got {v!r}")
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"StImputeConfig.weighting must be one of {WEIGHTINGS}, got {self.weighting!r}")
        if self.blend not in BLENDS:
            raise ValueError(f"StImputeConfig.blend must be one of {BLENDS}, got {self.blend!r}")
