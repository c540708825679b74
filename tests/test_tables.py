"""Further tables of a store (``tables/<name>``): streamed dense writes committed atomically, opened with the main
table's observations and tiles, readable by anndata."""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import stdask
from stdask.cli import main as cli_main
from stdask.io.memory import AnnDataSource
from stdask.store.tables import table_names, write_table

from test_store import make_adata

N_GENES = 40
N_IMPUTED = 7


@pytest.fixture(scope="module")
def adata():
    return make_adata(n=600, g=N_GENES, seed=3)


@pytest.fixture(scope="module")
def weights():
    """(N_GENES, N_IMPUTED) float32: the 'imputed' genes are a fixed mix of the measured ones."""
    return np.random.default_rng(7).random((N_GENES, N_IMPUTED)).astype(np.float32)


@pytest.fixture(scope="module")
def ingested(adata, tmp_path_factory):
    return stdask.ingest(AnnDataSource(adata), tmp_path_factory.mktemp("t") / "s.zarr", tile_size=300,
                         progress=False)


@pytest.fixture
def store(ingested, tmp_path):
    """A fresh copy of the ingested store for each test (they write tables into it)."""
    return Path(shutil.copytree(ingested, tmp_path / "s.zarr"))


def var_table(seed: int = 0) -> pd.DataFrame:
    rel = np.random.default_rng(seed).random(N_IMPUTED)
    return pd.DataFrame({"reliability": rel}, index=[f"IMP{i}" for i in range(N_IMPUTED)])


def tile_blocks(ds, weights, rows_per_chunk: int = 120) -> list[np.ndarray]:
    """(rows, N_IMPUTED) float32 blocks, one per tile group of the main table, computed from its counts."""
    starts = ds.tile_row_start
    return [(ds.store.read_rows(int(starts[a]), int(starts[b])).toarray() @ weights).astype(np.float32)
            for a, b in ds.tile_groups(rows_per_chunk)]


def x_hash(path: Path) -> str:
    """Digest of every file of the main table's X."""
    h = hashlib.sha256()
    for f in sorted((Path(path) / "tables" / "table" / "X").rglob("*")):
        if f.is_file():
            h.update(f.relative_to(path).as_posix().encode())
            h.update(f.read_bytes())
    return h.hexdigest()


def write(store, blocks, *, var=None, name="imputed", **kw):
    ds = stdask.read(store)
    write_table(store, name, obs_names=ds.obs_names, var=var_table() if var is None else var, blocks=iter(blocks),
                **kw)


def test_round_trip_values_obs_var_and_tiles(store, weights):
    ds = stdask.read(store)
    blocks = tile_blocks(ds, weights)
    extra = pd.DataFrame({"quality": np.arange(ds.n_obs) % 3}, index=ds.obs_names)
    write(store, blocks, n_rows_per_block=[len(b) for b in blocks], uns={"stimpute": {"seed": 0, "k": 20}},
          obs=extra)
    assert table_names(store) == ["table", "imputed"]
    imp = stdask.read(store, table="imputed", rows_per_chunk=120)
    want = np.concatenate(blocks)
    assert imp.shape == (ds.n_obs, N_IMPUTED) and imp.X.dtype == np.float32
    assert imp.X.chunks[0] == tuple(int(ds.tile_row_start[b] - ds.tile_row_start[a]) for a, b in ds.tile_groups(120))
    np.testing.assert_array_equal(imp.X.compute(), want)
    np.testing.assert_array_equal(imp.stored_matrix("X").compute(), want)
    # observations, coordinates and tiles are the main table's; genes are the table's own
    assert imp.obs_names.equals(ds.obs_names) and np.array_equal(imp.coords, ds.coords)
    assert np.array_equal(imp.tile_row_start, ds.tile_row_start) and imp.tiling.n_tiles == ds.tiling.n_tiles
    pd.testing.assert_frame_equal(imp.var, var_table())
    assert list(imp.var_names) == [f"IMP{i}" for i in range(N_IMPUTED)] and imp.n_vars == N_IMPUTED
    assert list(imp.obs.columns[: len(ds.obs.columns)]) == list(ds.obs.columns)
    assert np.array_equal(imp.obs["quality"], extra["quality"])
    t = max(range(ds.n_tiles), key=lambda u: np.diff(ds.tile_rows(u))[0])
    tl, tm = imp.tile(t, halo=150.0), ds.tile(t, halo=150.0)
    assert np.array_equal(tl.rows, tm.rows) and tl.n_own == tm.n_own and tl.n_own < len(tl.rows)
    np.testing.assert_array_equal(tl.X, want[tl.rows])
    a = imp.to_anndata()
    assert a.X.dtype == np.float32 and np.array_equal(a.X, want) and a.obs_names.equals(ds.obs_names)
    assert np.array_equal(a.var["reliability"], var_table()["reliability"]) and "cell_type" in a.obs
    assert a.uns["stimpute"]["k"] == 20


def test_anndata_reads_the_table_alone(store, weights, capsys):
    ds = stdask.read(store)
    blocks = tile_blocks(ds, weights, rows_per_chunk=200)
    write(store, blocks)
    a = ad.read_zarr(str(Path(store) / "tables" / "imputed"))
    assert a.obs_names.equals(ds.obs_names) and np.array_equal(a.X, np.concatenate(blocks))
    assert np.array_equal(a.obs["x"], ds.coords[:, 0]) and np.array_equal(a.obs["y"], ds.coords[:, 1])
    assert np.array_equal(a.obs["tile"], ds.obs["tile"]) and np.array_equal(a.obsm["spatial"], ds.coords)
    assert list(a.var.columns) == ["reliability"]
    info = ds.info()
    assert info.tables == {"imputed": (ds.n_obs, N_IMPUTED)}
    assert f"tables         imputed {ds.n_obs:,} obs x {N_IMPUTED} vars" in str(info).splitlines()
    assert stdask.read(store).verify().ok
    assert cli_main(["info", str(store)]) == 0
    assert f"imputed {ds.n_obs:,} obs x {N_IMPUTED} vars" in capsys.readouterr().out


def raising_after(blocks, k):
    for i, b in enumerate(blocks):
        if i == k:
            raise RuntimeError("model failed")
        yield b


def test_failure_mid_stream_leaves_the_store_as_it_was(store, weights):
    ds = stdask.read(store)
    blocks = tile_blocks(ds, weights, rows_per_chunk=100)
    assert len(blocks) > 3
    main_x = x_hash(store)
    with pytest.raises(RuntimeError, match="model failed"):
        write(store, raising_after(blocks, 2))
    assert table_names(store) == ["table"] and x_hash(store) == main_x
    write(store, blocks)
    with pytest.raises(RuntimeError, match="model failed"):
        write(store, raising_after([b * 2 for b in blocks], 2), var=var_table(1))
    imp = stdask.read(store, table="imputed")
    np.testing.assert_array_equal(imp.X.compute(), np.concatenate(blocks))
    pd.testing.assert_frame_equal(imp.var, var_table())
    assert x_hash(store) == main_x and not list((Path(store).parent / ".s.zarr.stdask").glob("w-*"))


def test_writing_twice_replaces_and_main_table_is_unaffected(store, weights, adata):
    ds = stdask.read(store)
    before, main_x = ds.to_anndata(), x_hash(store)
    blocks = tile_blocks(ds, weights)
    write(store, blocks, obs=pd.DataFrame({"q": np.ones(ds.n_obs)}, index=ds.obs_names))
    v1 = stdask.read(store, table="imputed").store.version
    var2 = var_table(1).iloc[:3]
    write(store, [b[:, :3] + 1 for b in blocks], var=var2)
    imp = stdask.read(store, table="imputed")
    assert imp.store.version != v1
    np.testing.assert_array_equal(imp.X.compute(), np.concatenate(blocks)[:, :3] + 1)
    pd.testing.assert_frame_equal(imp.var, var2)
    assert "q" not in imp.obs  # the whole table was replaced, not merged
    after = stdask.read(store)
    assert x_hash(store) == main_x and after.n_vars == N_GENES
    assert (after.to_anndata().X != before.X).nnz == 0 and list(after.var_names) == list(adata.var_names)


def test_refusals(store, weights):
    ds = stdask.read(store)
    blocks = tile_blocks(ds, weights)
    with pytest.raises(ValueError, match="main table"):
        write(store, blocks, name="table")
    for bad in ("a/b", ".hidden", ""):
        with pytest.raises(ValueError, match="invalid table name"):
            write(store, blocks, name=bad)
    with pytest.raises(ValueError, match=f"{ds.n_obs - len(blocks[-1])} rows; the main table has {ds.n_obs}"):
        write(store, blocks[:-1])
    with pytest.raises(ValueError, match=f"sums to {ds.n_obs + 1} rows; the main table has {ds.n_obs}"):
        write(store, blocks, n_rows_per_block=[len(b) for b in blocks[:-1]] + [len(blocks[-1]) + 1])
    with pytest.raises(ValueError, match=f"more than {ds.n_obs} rows"):
        write(store, blocks + [blocks[0]])
    with pytest.raises(ValueError, match=f"shape .*; blocks are \\(rows, {N_IMPUTED}\\)"):
        write(store, [b[:, :2] for b in blocks])
    with pytest.raises(ValueError, match=f"obs_names has {ds.n_obs - 1} names; the main table has {ds.n_obs}"):
        write_table(store, "imputed", obs_names=ds.obs_names[1:], var=var_table(), blocks=iter(blocks))
    with pytest.raises(ValueError, match="differ from the main table's at row 0"):
        write_table(store, "imputed", obs_names=ds.obs_names[::-1], var=var_table(), blocks=iter(blocks))
    with pytest.raises(ValueError, match="NaN"):
        write(store, [b * np.nan for b in blocks])
    with pytest.raises(ValueError, match="uns\\['stdask'\\]"):
        write(store, blocks, uns={"stdask": 1})
    assert table_names(store) == ["table"]
    with pytest.raises(KeyError, match="no table 'imputed'.*\\['table'\\]"):
        stdask.read(store, table="imputed")
    write(store, blocks)
    with pytest.raises(KeyError, match="no table 'other'.*\\['table', 'imputed'\\]"):
        stdask.read(store, table="other")
    imp = stdask.read(store, table="imputed")
    imp.set_result("obs", "c", np.zeros(ds.n_obs))
    with pytest.raises(ValueError, match="not written into the store"):
        imp.write()


def test_any_tile_size_gives_the_same_table(adata, weights, tmp_path):
    tables = []
    for size in (150, 900):
        p = stdask.ingest(AnnDataSource(adata), tmp_path / f"t{size}.zarr", tile_size=size, progress=False)
        ds = stdask.read(p)
        write(p, tile_blocks(ds, weights))
        a = stdask.read(p, table="imputed").to_anndata()
        tables.append((ds.n_tiles, a[adata.obs_names]))
    (n_small, a), (n_large, b) = tables
    assert n_small > n_large
    assert not np.array_equal(a.obs["tile"], b.obs["tile"])  # the rows were written in different orders
    np.testing.assert_allclose(a.X, b.X, rtol=1e-6)
    np.testing.assert_allclose(a.X, (adata.X.toarray() @ weights), rtol=1e-5)
    pd.testing.assert_frame_equal(a.var, b.var)


def test_a_copy_keeps_the_table(store, weights):
    ds = stdask.read(store)
    write(store, tile_blocks(ds, weights))
    imp = stdask.read(store, table="imputed")
    c = imp.copy()
    assert c.table == "imputed" and c.n_vars == N_IMPUTED and np.array_equal(c.X.compute(), imp.X.compute())
