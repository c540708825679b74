"""One commit for a set of results: SIGKILLs during a write leave the old results or all the new ones, the next
writer removes dead writers' leftovers (not live ones'), a second writer waits for the store lock or fails
naming the holder, and keys that would name a group are refused."""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pytest

import stdask
from stdask.io.memory import AnnDataSource
from stdask.store import commit
from stdask.store.lock import StoreLockedError, meta_dir, owner_record, owner_tag
from test_store import make_adata

N_LRS = 40

#: a result set like tl.cci.run's (lr_summary + p_adjs + a larger obsm + an obs column), every part carrying
#: the generation number, so a mixture of two writes is visible as two different numbers
WRITE_RESULTS = textwrap.dedent("""
    import numpy as np, pandas as pd, scipy.sparse as sp
    import stdask

    def write_results(store, gen):
        ds = stdask.read(store)
        n = ds.n_obs
        ds.set_result("uns", "lr_summary", pd.DataFrame({"gen": np.full(N_LRS, gen)},
                                                        index=[f"L{i}_R{i}" for i in range(N_LRS)]))
        p = sp.random(n, N_LRS, density=0.2, format="csr", random_state=gen)
        p.data[:] = gen
        ds.set_result("obsm", "p_adjs", p)
        ds.set_result("obsm", "lr_scores", np.full((n, 200), gen, np.float32))
        ds.set_result("obs", "gen", np.full(n, gen))
        ds.write()
""").replace("N_LRS", str(N_LRS))

#: imports once, then forks one writer per request (fork before any zarr use: the children are real
#: processes that start in a few milliseconds); each child says "go <pid>" just before ds.write()
SERVER = WRITE_RESULTS + textwrap.dedent("""
    import os, sys
    for line in sys.stdin:
        store, gen = line.split()
        pid = os.fork()
        if pid == 0:
            try:
                print("go", os.getpid(), flush=True)
                write_results(store, int(gen))
                print("done", flush=True)
            finally:
                os._exit(0)
        _, status = os.waitpid(pid, 0)
        print("exit", pid, status, flush=True)
""")


def make_store(path: Path) -> Path:
    return stdask.ingest(AnnDataSource(make_adata(n=1500, g=60)), path, tile_size=200, progress=False)


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return make_store(tmp_path_factory.mktemp("commits") / "base.zarr")


@pytest.fixture
def store(base, tmp_path) -> Path:
    return Path(shutil.copytree(base, tmp_path / "s.zarr"))


def generation(store: Path) -> int:
    """The one generation every result element holds, read with stdask and with anndata (asserted equal)."""
    ds = stdask.read(store)
    gens = {
        "lr_summary": set(ds.get_result("uns", "lr_summary")["gen"]),
        "p_adjs": set(ds.get_result("obsm", "p_adjs").data),
        "lr_scores": set(np.unique(ds.get_result("obsm", "lr_scores"))),
        "obs": set(ds.obs["gen"]),
    }
    a = ad.read_zarr(store / "tables" / "table")
    gens["anndata"] = (set(a.uns["lr_summary"]["gen"]) | set(a.obsm["p_adjs"].data)
                       | set(np.unique(a.obsm["lr_scores"])) | set(a.obs["gen"]))
    assert all(len(v) == 1 for v in gens.values()) and len(set.union(*gens.values())) == 1, gens
    assert a.X.sum() == ds.store.read_rows(0, ds.n_obs).sum() > 0  # the counts are untouched by result commits
    return int(gens["obs"].pop())


def leftovers(store: Path) -> list[str]:
    meta = meta_dir(store)
    tmp = [p.name for p in store.parent.iterdir() if p.name.startswith(f".{store.name}.stdask-tmp-")]
    return sorted(p.name for p in meta.iterdir() if p.name != "lock") + tmp if meta.exists() else tmp


def test_killed_result_writes_leave_old_or_new_results_and_are_repaired(store):
    server = subprocess.Popen([sys.executable, "-c", SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, cwd=Path(__file__).parent.parent)

    def request(gen: int, kill_after: float | None) -> tuple[float, bool]:
        server.stdin.write(f"{store} {gen}\n")
        server.stdin.flush()
        line = server.stdout.readline().split()
        assert line[0] == "go", line
        t0 = time.monotonic()
        if kill_after is not None:
            time.sleep(kill_after)
            try:
                os.kill(int(line[1]), signal.SIGKILL)
            except ProcessLookupError:
                pass
        done = False
        while (line := server.stdout.readline().split())[0] != "exit":
            done |= line[0] == "done"
        return time.monotonic() - t0, done

    try:
        took, done = request(1, None)  # gen 1 committed
        assert done and generation(store) == 1 and leftovers(store) == []
        # how long one write takes, from a warm server: the first write also pays for imports and caches, and
        # kill times scaled by it landed after most writes had finished on a loaded machine
        took, done = request(2, None)
        assert done and generation(store) == 2 and leftovers(store) == []
        rng = random.Random(13)
        committed, mid_write, window, gen = 2, 0, 1.2 * took, 2
        # kills at random points of the write until 8 landed inside it (a work folder was left behind), so the
        # test tested something; on a loaded machine the window shrinks after a kill that came too late
        while mid_write < 8 and gen < 60:
            gen += 1
            _, done = request(gen, rng.uniform(0.0, window))
            mid_write += bool(leftovers(store))
            window *= 0.8 if done else 1.0
            now = generation(store)
            # the old results or all the new ones; a write that finished is never rolled back
            assert now in (committed, gen) and (now == gen or not done), (now, committed, gen, done)
            committed = now
        assert mid_write >= 8, (mid_write, gen)
        _, done = request(gen + 1, None)  # the next run repairs: its results, no leftovers of the killed ones
        assert done and generation(store) == gen + 1 and leftovers(store) == []
    finally:
        server.stdin.close()
        server.wait(timeout=30)


def test_a_second_writer_waits_for_the_lock_or_fails_naming_the_holder(store):
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from stdask.store.lock import store_lock
        with store_lock({str(store)!r}):
            print("locked", flush=True)
            time.sleep(float(sys.stdin.readline()))
        """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        ds = stdask.read(store)
        ds.set_result("obsm", "emb", np.ones((ds.n_obs, 2), np.float32))
        t0 = time.monotonic()
        with pytest.raises(StoreLockedError, match=rf"{store}.*pid {holder.pid} on .*waited 0.5 s"):
            ds.write(lock_timeout=0.5)
        assert time.monotonic() - t0 >= 0.5
        assert ds.pending == [("obsm", "emb")] and not stdask.read(store).is_stored("obsm", "emb")
        assert leftovers(store) == []  # the refused writer removed its own work folder
        holder.stdin.write("1.0\n")
        holder.stdin.flush()  # the holder lets go in about a second: a patient writer waits, then commits
        t0 = time.monotonic()
        ds.write(lock_timeout=30)
        assert 0.5 < time.monotonic() - t0 < 20 and stdask.read(store).is_stored("obsm", "emb")
    finally:
        holder.kill()
        holder.wait()


def _fake_work(store: Path, owner: dict) -> Path:
    """A work folder as a writer with this owner record leaves it."""
    w = meta_dir(store) / f"w-{owner_tag(owner)}-0123456789ab"
    (w / "new" / "tables").mkdir(parents=True)
    return w


def test_dead_writers_leftovers_are_removed_and_live_ones_kept(store):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        meta_dir(store).mkdir()
        dead = _fake_work(store, owner_record(gone.pid))
        other_boot = _fake_work(store, dict(owner_record(), boot_id="an earlier boot"))
        reused = _fake_work(store, dict(owner_record(live.pid), start="1"))  # its pid now runs another program
        alive = _fake_work(store, owner_record(live.pid))
        other_host = _fake_work(store, dict(owner_record(gone.pid), host="another-machine"))
        legacy = store.parent / f".{store.name}.stdask-tmp-{gone.pid}-abc"  # an older stdask's scratch sibling
        legacy.mkdir()
        ds = stdask.read(store)
        ds.set_result("uns", "x", {"a": 1})
        ds.write()
        assert not dead.exists() and not other_boot.exists() and not reused.exists() and not legacy.exists()
        assert leftovers(store) == sorted([alive.name, other_host.name])  # alive, or not known to be dead
        live.kill()
        live.wait()
        ds.set_result("uns", "x", {"a": 2})
        ds.write()
        assert leftovers(store) == [other_host.name] and stdask.read(store).get_result("uns", "x") == {"a": 2}
    finally:
        live.kill()
        live.wait()


def test_fallback_switch_killed_between_its_renames_is_rolled_forward(store, monkeypatch):
    # where the file system cannot exchange two names, the switch is two renames behind a journal
    monkeypatch.setattr(commit, "_EXCHANGE", None)
    ds = stdask.read(store)
    ds.set_result("obsm", "emb", np.full((ds.n_obs, 2), 3.0, np.float32))
    ds.write()
    assert stdask.read(store).get_result("obsm", "emb")[0, 0] == 3.0 and leftovers(store) == []
    # the state a writer killed between the two renames leaves: no table, a complete journalled stage
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    work = _fake_work(store, owner_record(gone.pid))
    table = store / "tables" / "table"
    shutil.copytree(table, work / "stage")
    (work / "stage" / "obsm" / "emb").rename(work / "emb-old")
    shutil.copytree(table / "obsm" / "spatial", work / "stage" / "obsm" / "emb")  # the "new" emb
    (work / "switch.json").write_text(json.dumps({"unit": "tables/table"}))
    table.rename(work / "previous")
    back = stdask.read(store)  # the open rolls the switch forward
    np.testing.assert_array_equal(back.get_result("obsm", "emb"), back.coords)
    assert ad.read_zarr(table).obsm["emb"].shape == (back.n_obs, 2)
    back.set_result("uns", "y", {"b": 1})
    back.write()  # the next write removes the dead writer's folder
    assert leftovers(store) == []


@pytest.mark.parametrize("key", ["", "a/b", "../obsm", ".hidden", "a\\b", "/"])
def test_empty_or_path_like_keys_are_refused(store, key):
    ds = stdask.read(store)
    for slot in ("obsm", "uns", "obs", "layers"):
        with pytest.raises(ValueError, match="invalid result key"):
            ds.set_result(slot, key, np.zeros((ds.n_obs, 2)))
    assert ds.pending == []
    from stdask.store.update import write_elements

    with pytest.raises(ValueError, match="invalid result key"):
        write_elements(store, [("tables/table/obsm", key, np.zeros((ds.n_obs, 2)))])
    back = stdask.read(store)
    assert back.result_keys("obsm") == ["spatial"] and back.coords.shape == (ds.n_obs, 2)
