"""The cell-type interaction result of :func:`stdask.tl.cci.run_cci`: one class, :class:`CCIInteractions`,
which ``run_cci`` returns and stores, and which the plots (:mod:`stdask.pl`) and the report read, from a
dataset, a stdask AnnData export or stLearn's own ``uns`` layout."""
from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ...dataset import SpatialDataset

#: ``uns`` key prefix of the stored form (``uns['cci_interactions_<label>']``)
KEY_PREFIX = "cci_interactions_"


@dataclass
class CCIInteractions:
    """Cell-type interaction results of :func:`run_cci` for one label.

    Rows of every T x T matrix are the type of the significant (sender) spot, columns the type of its
    neighbour (receiver).

    Attributes
    ----------
    label
        ``use_label`` exactly as passed (the suffix of stLearn's keys).
    lrs
        (n_lr,) str: the tested LRs, in ``lr_summary`` order.
    types
        (T,) str: the cell types, in matrix order.
    raw
        (n_lr, T, T) int64 observed counts M (distinct spot pairs).
    sig
        (n_lr, T, T) int64 M with entries of p > ``p_cutoff`` set to 0.
    pvals
        (n_lr, T, T) float64 permutation p-values #{k : M^k >= M} / n_perms (1 where M = 0 or n_perms = 0).
    lr_summary
        ``lr_summary`` with int64 ``n_cci_sig_<label>``, ``n-spot_cci_<label>``, ``n-spot_cci_sig_<label>``.
    n_perms, seed, p_cutoff
        As passed.

    Read from stLearn's own ``uns`` (:meth:`from_stlearn`), ``raw`` / ``sig`` / ``pvals`` that stLearn did not
    store are ``None``, and so are ``lr_summary``, ``n_perms``, ``seed`` and ``p_cutoff``.
    stale
        True once ``adj_pvals`` changed the significance calls these counts were made from.
    params
        Provenance: reference, deviations, mode and the other arguments.
    """

    label: str
    lrs: np.ndarray
    types: np.ndarray
    raw: np.ndarray | None
    sig: np.ndarray | None
    pvals: np.ndarray | None
    lr_summary: pd.DataFrame | None
    n_perms: int | None
    seed: int | None
    p_cutoff: float | None
    stale: bool = False
    params: dict = field(default_factory=dict)

    # ---- reading -----------------------------------------------------------------------------------------
    @functools.cached_property
    def _pos(self) -> dict:
        return {str(lr): i for i, lr in enumerate(self.lrs)}

    def index(self, lr: str) -> int:
        """Position of ``lr``; raises ``KeyError`` as stLearn does when ``run_cci`` did not test it."""
        try:
            return self._pos[lr]
        except KeyError:
            raise KeyError(
                f"no significant interactions for LR {lr!r}: it is not in per_lr_cci_{self.label} (run_cci tests "
                f"only LRs with n_spots_sig > min_spots; {len(self.lrs)} LRs were tested)") from None

    def counts(self, sig: bool = True) -> np.ndarray:
        """(n_lr, T, T) ``sig`` (``sig=True``) or ``raw``; ``KeyError`` when that one is not stored."""
        arr = self.sig if sig else self.raw
        if arr is None:
            name = f"per_lr_cci_{self.label}" if sig else f"per_lr_cci_raw_{self.label}"
            raise KeyError(f"{name} is not stored; use sig_interactions={not sig}")
        return arr

    def matrix(self, lr: str, sig: bool = True) -> pd.DataFrame:
        """T x T DataFrame of one LR (index = sender, columns = receiver)."""
        return self._frame(self.counts(sig)[self.index(lr)])

    # ---- stLearn's views ---------------------------------------------------------------------------------
    def _frame(self, m: np.ndarray) -> pd.DataFrame:
        t = pd.Index(self.types.astype(str))
        return pd.DataFrame(m, index=t.copy(), columns=t.copy())

    @property
    def lr_cci(self) -> pd.DataFrame:
        """Sum over LRs of the significant counts (stLearn ``uns['lr_cci_<label>']``)."""
        return self._frame(self.sig.sum(axis=0).astype(np.int64))

    @property
    def lr_cci_raw(self) -> pd.DataFrame:
        """Sum over LRs of the raw counts (stLearn ``uns['lr_cci_raw_<label>']``)."""
        return self._frame(self.raw.sum(axis=0).astype(np.int64))

    def per_lr(self, kind: str = "sig") -> dict[str, pd.DataFrame]:
        """``{lr: T x T DataFrame}`` of ``kind`` = ``'sig'``, ``'raw'`` or ``'pvals'``."""
        arr = {"sig": self.sig, "raw": self.raw, "pvals": self.pvals}[kind]
        if arr is None:
            raise KeyError(f"per-LR {kind} interactions are not stored for label {self.label!r}")
        return {str(lr): self._frame(arr[i]) for i, lr in enumerate(self.lrs)}

    def stlearn_uns(self) -> dict[str, Any]:
        """stLearn's ``uns`` entries: ``lr_summary``, ``lr_cci_<label>``, ``lr_cci_raw_<label>``,
        ``per_lr_cci_<label>``, ``per_lr_cci_pvals_<label>`` and ``per_lr_cci_raw_<label>``."""
        lab = self.label
        return {"lr_summary": self.lr_summary,
                f"lr_cci_{lab}": self.lr_cci,
                f"lr_cci_raw_{lab}": self.lr_cci_raw,
                f"per_lr_cci_{lab}": self.per_lr("sig"),
                f"per_lr_cci_pvals_{lab}": self.per_lr("pvals"),
                f"per_lr_cci_raw_{lab}": self.per_lr("raw")}

    # ---- storage -----------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The stored form (``uns['cci_interactions_<label>']``)."""
        return {"lrs": np.asarray(self.lrs, dtype=str), "types": np.asarray(self.types, dtype=str),
                "raw": np.asarray(self.raw, dtype=np.int64), "sig": np.asarray(self.sig, dtype=np.int64),
                "pvals": np.asarray(self.pvals, dtype=np.float64), "n_perms": int(self.n_perms),
                "seed": int(self.seed), "p_cutoff": float(self.p_cutoff), "stale": bool(self.stale),
                "params": _plain(self.params)}

    @classmethod
    def from_dict(cls, label: str, d: dict, lr_summary: pd.DataFrame) -> "CCIInteractions":
        n_lr = len(d["lrs"])
        T = len(d["types"])
        shape = (n_lr, T, T)
        return cls(str(label), _strs(d["lrs"]), _strs(d["types"]),
                   np.asarray(d["raw"], dtype=np.int64).reshape(shape),
                   np.asarray(d["sig"], dtype=np.int64).reshape(shape),
                   np.asarray(d["pvals"], dtype=np.float64).reshape(shape), lr_summary, int(d["n_perms"]),
                   int(d["seed"]), float(d["p_cutoff"]), bool(d.get("stale", False)), dict(d.get("params", {})))

    @classmethod
    def from_stlearn(cls, label: str, sig: dict | None, raw: dict | None, pvals: dict | None,
                     lr_summary: pd.DataFrame | None = None) -> "CCIInteractions":
        """From stLearn's per-LR dicts ``per_lr_cci_<label>`` / ``per_lr_cci_raw_<label>`` /
        ``per_lr_cci_pvals_<label>`` (LR -> T x T DataFrame; ``None`` where not stored, at least one given)."""
        first = next(d for d in (sig, raw, pvals) if d is not None)
        lrs = _strs(list(first.keys()))
        types = _strs(pd.DataFrame(next(iter(first.values()))).index) if len(first) else np.empty(0, dtype=str)

        def stack(d, dtype):
            return None if d is None else _stack([d[k] for k in lrs], types, dtype)

        return cls(str(label), lrs, types, stack(raw, np.int64), stack(sig, np.int64), stack(pvals, np.float64),
                   lr_summary, None, None, None)

    def store(self, ds: SpatialDataset) -> None:
        """Attach to ``ds`` (written by ``ds.write()``): the updated ``uns['lr_summary']``, the two summed
        T x T DataFrames ``uns['lr_cci_<label>']`` / ``uns['lr_cci_raw_<label>']`` and the per-LR arrays
        ``uns['cci_interactions_<label>']`` (the AnnData export rebuilds stLearn's per-LR dicts from them).
        A result without ``lr_summary`` (``learned_graph_cci``) leaves ``uns['lr_summary']`` as it is."""
        if self.lr_summary is not None:
            ds.set_result("uns", "lr_summary", self.lr_summary)
        ds.set_result("uns", f"lr_cci_{self.label}", self.lr_cci)
        ds.set_result("uns", f"lr_cci_raw_{self.label}", self.lr_cci_raw)
        ds.set_result("uns", KEY_PREFIX + self.label, self.to_dict())

    @classmethod
    def load(cls, ds: SpatialDataset, use_label: str) -> "CCIInteractions":
        """Read results stored by :meth:`store` (pending or written); warns when they are stale."""
        try:
            d = ds.get_result("uns", KEY_PREFIX + use_label)
        except KeyError:
            raise KeyError(f"no run_cci results for use_label={use_label!r} in {ds.path}; run "
                           f"stdask.tl.cci.run_cci(ds, {use_label!r}) first") from None
        try:
            summary = ds.get_result("uns", "lr_summary")
        except KeyError:  # learned_graph_cci stores no lr_summary
            summary = None
        out = cls.from_dict(use_label, d, summary)
        if out.stale:
            warnings.warn(f"run_cci results for {use_label!r} are stale: adj_pvals changed the significance "
                          "calls they were computed from; re-run run_cci", stacklevel=2)
        return out


def _strs(a) -> np.ndarray:
    """A stored string array (numpy StringDType, object or unicode) as a unicode array."""
    return np.array([str(x) for x in np.asarray(a).tolist()], dtype=str)


def _stack(frames: list, types: np.ndarray, dtype) -> np.ndarray:
    """(n_lr, T, T) array of stLearn's per-LR DataFrames, each aligned to ``types``."""
    out = np.zeros((len(frames), len(types), len(types)), dtype=dtype)
    idx = pd.Index(types)
    for i, v in enumerate(frames):
        v = pd.DataFrame(v)
        if not (v.index.equals(idx) and v.columns.equals(idx)):
            v = v.rename(index=str, columns=str).reindex(index=idx, columns=idx, fill_value=0)
        out[i] = v.to_numpy()
    return out


def _plain(v):
    """Provenance values as types every store encoding accepts."""
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items() if x is not None}
    if isinstance(v, (list, tuple)):
        return np.asarray([str(x) for x in v], dtype=str)
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    return v


def interaction_keys(ds: SpatialDataset) -> list[str]:
    """``uns`` keys of run_cci results on ``ds`` (pending or stored)."""
    try:
        keys = set(ds.result_keys("uns"))
    except Exception:  # an unreadable uns group has no run_cci results we could mark
        keys = set(ds.result_keys("uns", stored=False))
    return sorted(k for k in keys if k.startswith(KEY_PREFIX))


def mark_stale(ds: SpatialDataset) -> list[str]:
    """Flag every run_cci result on ``ds`` as stale (pending until ``ds.write()``); returns their keys.

    Called by ``adj_pvals``: new significance calls invalidate the interaction counts (Q19).
    """
    keys = []
    for k in interaction_keys(ds):
        d = dict(ds.get_result("uns", k))
        if dict(d.get("params", {})).get("method") == "learned_graph_cci":
            continue  # counts of a learned graph do not depend on run's significance calls
        d["stale"] = True
        ds.set_result("uns", k, d)
        keys.append(k)
    return keys


def export_stlearn_interactions(ds, adata) -> None:
    """AnnData export: stLearn's ``lr_cci_*`` / ``per_lr_cci_*`` keys from stored run_cci results."""
    summary = adata.uns.get("lr_summary")
    for key in [k for k in list(adata.uns.keys()) if str(k).startswith(KEY_PREFIX)]:
        inter = CCIInteractions.from_dict(key[len(KEY_PREFIX):], adata.uns[key], summary)
        for k, v in inter.stlearn_uns().items():
            if k != "lr_summary":
                adata.uns[k] = v
