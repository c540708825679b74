"""Data files shipped with stdask.

``lr_db/`` holds the connectomeDB2020 ligand-receptor tables exactly as stLearn distributes them
(see ``lr_db/README.md`` for their origin, licence and format).
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path

#: names of the shipped ligand-receptor tables (file stems in ``lr_db/``)
LR_DB_NAMES = ("connectomeDB2020_lit", "connectomeDB2020_put")


def lr_db_path(name: str = "connectomeDB2020_lit") -> Path:
    """Path of a shipped ligand-receptor table.

    Parameters
    ----------
    name
        One of :data:`LR_DB_NAMES` (with or without the ``.txt`` suffix).

    Returns
    -------
    Path
        The tab-separated table (header ``Ligand gene symbol<TAB>Receptor gene symbol``, one pair a line).
    """
    stem = name[:-4] if name.endswith(".txt") else name
    if stem not in LR_DB_NAMES:
        raise ValueError(f"unknown ligand-receptor table {name!r}; shipped tables: {', '.join(LR_DB_NAMES)}")
    path = resources.files(__name__).joinpath("lr_db", f"{stem}.txt")
    return Path(str(path))
