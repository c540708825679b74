"""Damage is detected, not read as zeros: a missing or corrupted chunk raises an error naming the element
and the chunk on every read path, and ``stdask verify`` / ``stdask info --verify`` report it."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import scipy.sparse as sp

import stdask
from stdask.cli import main
from stdask.io.memory import AnnDataSource
from stdask.store import csr
from stdask.store.chunks import CHUNKS_ATTR
from stdask.store.format import StoreDamageError

from test_store import make_adata

X_DATA = "tables/table/X/data"


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> Path:
    """A store with results written by ``ds.write()``: obsm dense and CSR, a CSR and a dense layer, uns."""
    p = stdask.ingest(AnnDataSource(make_adata(n=1500, g=120)), tmp_path_factory.mktemp("v") / "s.zarr",
                      tile_size=250, progress=False)
    ds = stdask.read(p)
    rng = np.random.default_rng(1)
    ds.set_result("obsm", "emb", rng.normal(size=(ds.n_obs, 3)))
    ds.set_result("obsm", "nbr", sp.random(ds.n_obs, ds.n_obs, density=0.002, format="csr", random_state=1))
    ds.set_result("layers", "norm", ds.X.astype(np.float32) * 2)
    ds.set_result("layers", "dense", da.from_array(rng.normal(size=(ds.n_obs, ds.n_vars)), chunks=(500, -1)))
    ds.set_result("uns", "params", {"mask_var": None, "n": 3})  # anndata writes None as an array never filled
    ds.write()
    return p


@pytest.fixture
def store(clean, tmp_path) -> Path:
    """A private copy of the clean store, free to damage."""
    return Path(shutil.copytree(clean, tmp_path / "s.zarr"))


def cli(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    cap = capsys.readouterr()
    return code, cap.out + cap.err


def flip(f: Path, at: float = 0.5) -> None:
    """Invert one byte of ``f`` at the fraction ``at`` of its length."""
    b = bytearray(f.read_bytes())
    i = int(len(b) * at)
    b[i] ^= 0xFF
    f.write_bytes(bytes(b))


def test_clean_store_verifies_ok(clean, capsys):
    ds = stdask.read(clean)
    result = ds.verify()
    assert result.ok and result.problems == [] and not result.unrecorded, str(result)
    assert ds.get_result("uns", "params")["mask_var"] is None and ds.to_anndata().uns["params"]["n"] == 3
    assert result.arrays >= 20 and result.chunks >= result.arrays - 15  # scalars of uns hold one chunk each
    code, out = cli(capsys, "verify", str(clean))
    assert code == 0 and out.startswith("ok: ")
    code, out = cli(capsys, "info", str(clean), "--verify")
    assert code == 0 and out.startswith("ok: ") and "shape" in out


def test_every_array_records_its_grid_and_a_checksum(clean):
    for meta in clean.rglob("zarr.json"):
        m = json.loads(meta.read_text())
        if m["node_type"] != "array":
            continue
        assert CHUNKS_ATTR in m["attributes"], meta
        if m["attributes"][CHUNKS_ATTR].get("unwritten") == ["c"]:
            continue  # anndata's None: a scalar array never filled, so no chunk to checksum
        codecs = m["codecs"]
        if codecs[0]["name"] == "sharding_indexed":
            codecs = codecs[0]["configuration"]["codecs"]
        assert codecs[-1]["name"] == "crc32c", meta


@pytest.mark.parametrize("damage", ["deleted", "corrupted", "corrupted index"])
def test_damaged_x_chunk_is_an_error_on_every_read(store, damage, capsys):
    chunk = store / X_DATA / "c" / "0"
    if damage == "deleted":
        chunk.unlink()
    else:
        flip(chunk, 0.5 if damage == "corrupted" else 0.999)
    what = "missing" if damage == "deleted" else "damaged"
    named = rf"{X_DATA}: chunk c/0 is {what}"
    ds = stdask.read(store)
    with pytest.raises(StoreDamageError, match=named):
        ds.X.compute()
    with pytest.raises(StoreDamageError, match=named):
        ds.tile(int(np.argmax(np.diff(ds.store.tile_row_start))))
    with pytest.raises(StoreDamageError, match=named):
        ds.to_anndata()
    result = ds.verify()
    assert not result.ok and result.problems[0].startswith(f"{X_DATA}: chunk c/0 is {what}")
    code, out = cli(capsys, "verify", str(store))
    assert code == 1 and f"{X_DATA}: chunk c/0 is {what}" in out
    code, out = cli(capsys, "info", str(store), "--verify")
    assert code == 1 and f"{X_DATA}: chunk c/0 is {what}" in out and "shape" not in out


def test_reads_check_only_the_shards_they_touch(tmp_path, monkeypatch):
    # 64-byte inner chunks: X's arrays span many shards, so a tile reads a few of them
    monkeypatch.setattr(csr, "INNER_CHUNK_BYTES", 64)
    p = stdask.ingest(AnnDataSource(make_adata(n=600, g=50)), tmp_path / "s.zarr", tile_size=250, progress=False)
    shards = sorted((p / X_DATA / "c").iterdir(), key=lambda f: int(f.name))
    assert len(shards) > 4
    shards[-1].unlink()
    ds = stdask.read(p)
    shard = ds.store.table["X"]["data"].shards[0]
    indptr = np.asarray(ds.store.table["X"]["indptr"][:])
    first = np.diff(ds.store.tile_row_start) > 0
    t_first = int(np.argmax(first))  # the first occupied tile: its entries lie in the first shards
    assert indptr[ds.store.tile_row_start[t_first + 1]] <= (len(shards) - 1) * shard
    ds.tile(t_first)  # reads fine: the missing shard is not among those it touches
    t_last = len(first) - 1 - int(np.argmax(first[::-1]))
    with pytest.raises(StoreDamageError, match=rf"X/data: chunk c/{len(shards) - 1} is missing"):
        ds.tile(t_last)


@pytest.mark.parametrize("element", ["obsm/emb", "obsm/nbr/indices", "layers/norm/data", "layers/dense"])
def test_results_written_by_ds_write_are_covered(store, element, capsys):
    path = store / "tables/table" / element
    chunk = next(f for f in sorted((path / "c").rglob("*")) if f.is_file())
    key = chunk.relative_to(path).as_posix()
    chunk.unlink()
    ds = stdask.read(store)
    slot, name = element.split("/")[:2]
    named = rf"{element}: chunk {key} is missing"
    with pytest.raises(StoreDamageError, match=named):
        if slot == "layers":
            ds.stored_matrix(name).compute()
        else:
            ds.get_result(slot, name)
    with pytest.raises(StoreDamageError, match=named):
        ds.to_anndata()
    code, out = cli(capsys, "verify", str(store))
    assert code == 1 and f"{element}: chunk {key} is missing" in out


def test_corruption_the_compressor_misses_fails_its_checksum(store, clean, capsys):
    # random floats do not compress: zstd keeps them raw, so a flipped byte would decode silently to another
    # value without the crc32c codec
    element = "obsm/emb"
    chunk = store / "tables/table" / element / "c" / "0" / "0"
    flip(chunk, 0.5)
    with pytest.raises(StoreDamageError, match=rf"{element}: chunk c/0/0 is damaged"):
        stdask.read(store).get_result("obsm", "emb")
    code, out = cli(capsys, "verify", str(store))
    assert code == 1 and f"{element}: chunk c/0/0 is damaged" in out


def test_garbled_metadata_is_named(store, capsys):
    (store / X_DATA / "zarr.json").write_text("{not json")
    code, out = cli(capsys, "verify", str(store))
    assert code == 1 and f"{X_DATA}/zarr.json: not valid zarr metadata" in out


def test_store_without_chunk_records_still_opens_and_reads(store, clean, capsys):
    # a store written before arrays recorded their chunks
    for meta in store.rglob("zarr.json"):
        m = json.loads(meta.read_text())
        if m["node_type"] == "array":
            m["attributes"].pop(CHUNKS_ATTR)
            meta.write_text(json.dumps(m))
    old, new = stdask.read(store), stdask.read(clean)
    assert (old.X.compute() != new.X.compute()).nnz == 0
    assert np.array_equal(old.get_result("obsm", "emb"), new.get_result("obsm", "emb"))
    result = old.verify()
    assert result.ok and len(result.unrecorded) == result.arrays
    code, out = cli(capsys, "verify", str(store))
    assert code == 0 and "carry no chunk record" in out
    flip(store / X_DATA / "c" / "0")  # the checksum still guards its chunks
    code, out = cli(capsys, "verify", str(store))
    assert code == 1 and f"{X_DATA}: chunk c/0 is damaged" in out
