"""Ligand-receptor tables: the shipped connectomeDB2020 tables and user tables (stLearn ``load_lrs``)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from ...data import LR_DB_NAMES, lr_db_path

SPECIES = ("human", "mouse")


@dataclass(frozen=True)
class LRPairs:
    """Ordered ligand-receptor pairs; ligand and receptor are kept apart so gene names may contain ``_``.

    Attributes
    ----------
    ligand, receptor
        (n,) object arrays of gene symbols.
    species
        The case the symbols were loaded in (``'human'``: as in the tables, ``'mouse'``: first letter upper,
        the rest lower), ``None`` when not known (pairs given as strings or a DataFrame).
    """

    ligand: np.ndarray
    receptor: np.ndarray
    species: str | None = None

    @property
    def names(self) -> np.ndarray:
        """(n,) ``"L_R"`` display names (stLearn's pair names)."""
        return np.array([f"{l}_{r}" for l, r in zip(self.ligand, self.receptor)], dtype=object)

    def __len__(self) -> int:
        return len(self.ligand)

    def __iter__(self):
        return iter(zip(self.ligand, self.receptor))

    def __repr__(self) -> str:
        head = ", ".join(self.names[:3])
        return f"LRPairs({len(self)} pairs: {head}{', ...' if len(self) > 3 else ''})"

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame({"ligand": self.ligand, "receptor": self.receptor}, index=self.names)


def _mouse(symbol: str) -> str:
    # stLearn's conversion: first character kept, the rest lower-cased; no ortholog mapping
    return symbol[:1] + symbol[1:].lower()


def _from_rows(lig: Iterable[str], rec: Iterable[str], species: str) -> LRPairs:
    lig = np.asarray(list(lig), dtype=object)
    rec = np.asarray(list(rec), dtype=object)
    if species == "mouse":
        lig = np.array([_mouse(s) for s in lig], dtype=object)
        rec = np.array([_mouse(s) for s in rec], dtype=object)
    # de-duplicate and sort by the joined name in code-point order, as stLearn's np.unique does for human
    names = np.array([f"{l}_{r}" for l, r in zip(lig, rec)], dtype=str)
    _, first = np.unique(names, return_index=True)
    return LRPairs(lig[first], rec[first], species)


def read_table(path: str | Path) -> pd.DataFrame:
    """A user LR table: two columns (ligand, receptor; header optional) or one column of ``L_R`` strings."""
    path = Path(path)
    df = pd.read_csv(path, sep=None, engine="python", header=None, dtype=str, comment="#")
    if df.shape[1] == 1:
        parts = df.iloc[:, 0].str.split("_")
        bad = parts.str.len() != 2
        if bad.any():
            raise ValueError(f"{path}: line {int(np.flatnonzero(bad)[0]) + 1}: {df.iloc[np.flatnonzero(bad)[0], 0]!r} "
                             "is not 'LIGAND_RECEPTOR' (use a two-column table for genes containing '_')")
        df = pd.DataFrame({"ligand": parts.str[0], "receptor": parts.str[1]})
    elif df.shape[1] >= 2:
        df = df.iloc[:, :2]
        df.columns = ["ligand", "receptor"]
        if df.iloc[0, 0].strip().lower() in ("ligand", "ligand gene symbol", "l", "source"):
            df = df.iloc[1:]
    if df.isna().any().any():
        raise ValueError(f"{path}: empty ligand or receptor field")
    return df


def load_lrs(names: str | Sequence[str] | None = None, species: str = "human",
             table: pd.DataFrame | str | Path | Sequence[str] | None = None) -> LRPairs:
    """Load ligand-receptor pairs (stLearn ``st.tl.cci.load_lrs``).

    Parameters
    ----------
    names
        Shipped tables: ``'connectomeDB2020_lit'`` (2,293 pairs, the default, also for ``None``) and/or
        ``'connectomeDB2020_put'`` (4,071). Several are combined (union).
    species
        ``'human'`` or ``'mouse'``. Mouse converts each symbol to first letter + lower case (``CXCL12`` ->
        ``Cxcl12``), as stLearn does; there is no ortholog mapping.
    table
        Instead of (or in addition to) ``names``: a user table — a DataFrame with ``ligand``/``receptor``
        columns, a path to a two-column file or a one-column file of ``L_R`` strings, or a list of ``L_R``
        strings.

    Returns
    -------
    :class:`LRPairs`, de-duplicated and sorted by ``"L_R"`` name.

    Differences from stLearn 1.2.2
    ------------------------------
    Q9: mouse symbols are converted before de-duplication and the result is sorted (stLearn keeps file order
    and duplicates when tables are combined). Q15: gene names containing ``_`` are allowed in user tables
    with two columns (ligand and receptor are stored separately).
    """
    if species not in SPECIES:
        raise ValueError(f"species must be one of {SPECIES}, got {species!r}")
    ligs: list[str] = []
    recs: list[str] = []
    if table is None or names is not None:
        names = ["connectomeDB2020_lit"] if names is None else ([names] if isinstance(names, str) else list(names))
        for n in names:
            if n not in LR_DB_NAMES:
                raise ValueError(f"unknown LR database {n!r}; shipped: {', '.join(LR_DB_NAMES)} "
                                 "(or pass table= with your own pairs)")
            df = pd.read_csv(lr_db_path(n), sep="\t", dtype=str)
            ligs += df.iloc[:, 0].tolist()
            recs += df.iloc[:, 1].tolist()
    if table is not None:
        if isinstance(table, (str, Path)):
            df = read_table(table)
        elif isinstance(table, pd.DataFrame):
            cols = [c for c in ("ligand", "receptor") if c in table.columns]
            df = table[["ligand", "receptor"]] if len(cols) == 2 else table.iloc[:, :2].set_axis(["ligand", "receptor"], axis=1)
        else:
            items = list(table)
            bad = [s for s in items if len(str(s).split("_")) != 2]
            if bad:
                raise ValueError(f"LR names must be 'LIGAND_RECEPTOR' with exactly one '_': {bad[:3]} "
                                 "(pass a DataFrame with ligand/receptor columns for genes containing '_')")
            df = pd.DataFrame([str(s).split("_") for s in items], columns=["ligand", "receptor"])
        ligs += df["ligand"].astype(str).tolist()
        recs += df["receptor"].astype(str).tolist()
    if not ligs:
        raise ValueError("no ligand-receptor pairs: the tables given are empty")
    return _from_rows(ligs, recs, species)


def as_pairs(lrs) -> LRPairs:
    """Accept :class:`LRPairs`, a list/array of ``L_R`` strings (stLearn style) or a ligand/receptor DataFrame."""
    if isinstance(lrs, LRPairs):
        return lrs
    if isinstance(lrs, pd.DataFrame):
        return LRPairs(lrs["ligand"].to_numpy(object), lrs["receptor"].to_numpy(object))
    items = [str(s) for s in lrs]
    split = [s.split("_") for s in items]
    bad = [s for s, p in zip(items, split) if len(p) != 2]
    if bad:
        raise ValueError(f"LR names must be 'LIGAND_RECEPTOR' with exactly one '_': {bad[:3]}; pass an LRPairs "
                         "or a DataFrame with ligand/receptor columns for genes containing '_'")
    return LRPairs(np.array([p[0] for p in split], dtype=object), np.array([p[1] for p in split], dtype=object))


def _case_of(pairs: LRPairs) -> str:
    """The species case of the pairs' symbols: as loaded, else guessed (mostly upper case -> ``'human'``)."""
    if pairs.species is not None:
        return pairs.species
    genes = [str(g) for g in np.concatenate([pairs.ligand, pairs.receptor])]
    return "human" if 2 * sum(g == g.upper() for g in genes) >= len(genes) else "mouse"


@dataclass(frozen=True)
class PairMatch:
    """How a table's pairs matched a dataset's ``var_names`` (exact, case-sensitive).

    Attributes
    ----------
    keep
        (n,) bool: both genes of the pair are in ``var_names``.
    n_dropped
        Pairs with a gene missing.
    n_other_case, other_species
        Of the dropped pairs, how many would match with both symbols in ``other_species``' case (what
        ``load_lrs(..., species=other_species)`` would give).
    """

    keep: np.ndarray
    n_dropped: int
    n_other_case: int
    other_species: str

    @property
    def n_table(self) -> int:
        return len(self.keep)

    def hint(self) -> str:
        """What to do about the pairs the other species' case would match (empty when none would)."""
        if not self.n_other_case:
            return ""
        sp = self.other_species
        return (f"{self.n_other_case:,} would match as {sp} gene names: pass species='{sp}' to load_lrs "
                f"(CLI: --species {sp})")

    def message(self) -> str:
        """``"412 of 2,293 pairs dropped: a gene is not in var_names (186 would match as ...)"``."""
        hint = self.hint()
        return (f"{self.n_dropped:,} of {self.n_table:,} pairs dropped: a gene is not in var_names"
                + (f" ({hint})" if hint else ""))

    def params(self) -> dict:
        """The counts as recorded in a result's parameters."""
        return {"pairs_in_table": int(self.n_table), "pairs_dropped": int(self.n_dropped),
                "pairs_dropped_other_case": int(self.n_other_case), "other_case_species": self.other_species}


def match_pairs(pairs: LRPairs, var_names) -> PairMatch:
    """Which pairs have both genes in ``var_names``, and how many dropped ones the other species' case matches."""
    var = pd.Index(var_names)
    keep = (var.get_indexer(pairs.ligand) >= 0) & (var.get_indexer(pairs.receptor) >= 0)
    other = "mouse" if _case_of(pairs) == "human" else "human"
    convert = _mouse if other == "mouse" else str.upper
    lig = [convert(str(g)) for g in pairs.ligand[~keep]]
    rec = [convert(str(g)) for g in pairs.receptor[~keep]]
    n_other = int(((var.get_indexer(lig) >= 0) & (var.get_indexer(rec) >= 0)).sum()) if lig else 0
    return PairMatch(keep, int((~keep).sum()), n_other, other)
