"""Make squidpy's spatial graphs that ``tests/test_gr.py::test_graphs_match_squidpy`` compares stdask with.

squidpy is not a dependency of stdask (and must not be installed in its environment), so its outputs are made
once, in a side environment, and saved here:

    python3 -m venv /tmp/sqvenv && /tmp/sqvenv/bin/pip install squidpy 'setuptools<81'
    /tmp/sqvenv/bin/python tests/data/squidpy_graphs/make_fixtures.py

The inputs are rebuilt from numpy alone (lattices, and a seeded uniform cloud equal to ``test_gr.POINTS``) and
saved with the graphs, so the test can check that stdask's store holds exactly these coordinates. Rows and
columns are in input order (observation ``o{i}`` is row i). Writes ``squidpy_graphs.npz``: for each case,
``{case}/coords`` and the CSR arrays ``{case}/{conn,dist}_{indptr,indices,data}``, plus ``squidpy_version``.
"""
from __future__ import annotations

import warnings
from importlib.metadata import version
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

OUT = Path(__file__).with_name("squidpy_graphs.npz")


def hex_lattice(n: int = 12, pitch: float = 100.0) -> np.ndarray:
    """Pointy-top hexagonal lattice, every other row shifted by half a pitch (as ``test_gr.hex_lattice``)."""
    j, i = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    return np.column_stack([(i * pitch + (j % 2) * pitch / 2).ravel(), (j * pitch * np.sqrt(3) / 2).ravel()])


def square_lattice(n: int = 10, pitch: float = 50.0) -> np.ndarray:
    xs, ys = np.meshgrid(np.arange(n), np.arange(n))
    return np.column_stack([xs.ravel(), ys.ravel()]) * pitch


def cases() -> dict[str, tuple[np.ndarray, dict]]:
    """case name -> (coordinates, squidpy.gr.spatial_neighbors keyword arguments)."""
    points = np.random.default_rng(7).uniform(0, 1000, (1200, 2))  # test_gr.POINTS
    out = {}
    lattices = (("hex", hex_lattice(10), 6), ("square4", square_lattice(), 4), ("square8", square_lattice(), 8))
    for name, xy, k in lattices:
        for rings in (1, 2):
            out[f"grid_{name}_rings{rings}"] = (xy, {"coord_type": "grid", "n_neighs": k, "n_rings": rings})
    out["generic_delaunay"] = (points, {"coord_type": "generic", "delaunay": True})
    out["generic_knn6"] = (points, {"coord_type": "generic", "n_neighs": 6})
    out["generic_radius40"] = (points, {"coord_type": "generic", "radius": 40.0})
    return out


def main() -> None:
    import squidpy as sq

    arrays = {"squidpy_version": np.array(version("squidpy"))}
    for case, (xy, kw) in cases().items():
        a = ad.AnnData(obs=pd.DataFrame(index=[f"o{i}" for i in range(len(xy))]))
        a.obsm["spatial"] = xy
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sq.gr.spatial_neighbors(a, **kw)
        arrays[f"{case}/coords"] = xy
        for key, m in (("conn", a.obsp["spatial_connectivities"]), ("dist", a.obsp["spatial_distances"])):
            m = sp.csr_matrix(m)
            m.sort_indices()
            arrays[f"{case}/{key}_indptr"] = m.indptr.astype(np.int32)
            arrays[f"{case}/{key}_indices"] = m.indices.astype(np.int32)
            arrays[f"{case}/{key}_data"] = m.data
        print(f"{case}: {kw} -> {a.obsp['spatial_connectivities'].nnz} edges")
    np.savez_compressed(OUT, **arrays)
    print(f"wrote {OUT} ({OUT.stat().st_size / 1024:.0f} KiB) with squidpy {version('squidpy')}")


if __name__ == "__main__":
    main()
