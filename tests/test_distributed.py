"""stdask on a real dask cluster: a ``dask scheduler`` and ``dask worker`` processes started here.

* The command line (``stdask ingest``, ``stdask cci run``) given ``--scheduler tcp://...`` writes stores
  identical to the embedded default.
* A worker process killed with SIGKILL in the middle of an LR analysis, or of a store write, costs time,
  not results: the work finishes on the other workers with the numbers of an undisturbed run, and the
  store opens and validates afterwards.

Every process listens on 127.0.0.1 on a port the OS picks (``--port 0`` / scheduler file); the fixture's
finaliser terminates (then kills) every process it started, and each also stops itself if the finaliser
never runs (scheduler: idle timeout; workers: death timeout).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import anndata as ad
import dask
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from dask.utils import key_split
from distributed import Client

import stdask
import stdask.cluster as cl
import stdask.pp
from stdask.cli import main
from stdask.settings import settings
from stdask.store.format import TABLE_PATH
from stdask.tilemap import tile_batches
from stdask.tl import cci

LOOPBACK = "127.0.0.1"
#: the ``stdask`` console script of this environment (``python -m stdask.cli`` where it is not installed)
_SCRIPT = Path(sys.executable).with_name("stdask")
STDASK = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "stdask.cli"]
#: CCI arguments shared by every run here (small n_pairs: the point is equality, not statistics)
CCI = dict(n_pairs=200, min_spots=5, seed=3)


# ---------------------------------------------------------------------------------------------
# a cluster of real processes


def _env() -> dict[str, str]:
    env = {**os.environ, "DASK_DISTRIBUTED__LOGGING__DISTRIBUTED": "error", "PYTHONUNBUFFERED": "1"}
    env.pop("DASK_SCHEDULER_ADDRESS", None)  # the embedded runs must really be embedded
    return env


class ProcessCluster:
    """``dask scheduler`` plus ``dask worker --nthreads 1 --no-nanny`` processes on loopback.

    Workers run without a nanny, so a SIGKILL to a worker's pid kills the worker itself and nothing
    restarts it: the scheduler must finish the work on the remaining workers.
    """

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: dict[str, subprocess.Popen] = {}
        self.address = ""
        self.monitor: Client | None = None  # a side client that only watches (never the default)

    def start(self, n_workers: int) -> None:
        sched_file = self.workdir / "scheduler.json"
        self.procs["scheduler"] = subprocess.Popen(
            [sys.executable, "-m", "dask", "scheduler", "--host", LOOPBACK, "--port", "0",
             "--scheduler-file", str(sched_file), "--dashboard-address", f"{LOOPBACK}:0",
             "--idle-timeout", "300s"],
            env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while not (sched_file.exists() and sched_file.read_text().strip()):
            self._check_alive("scheduler")
            if time.monotonic() > deadline:
                raise TimeoutError("dask scheduler did not write its scheduler file in 60 s")
            time.sleep(0.1)
        self.address = json.loads(sched_file.read_text())["address"]
        self.monitor = Client(self.address, set_as_default=False, timeout=30)
        for i in range(n_workers):
            self.add_worker(f"w{i}", wait=False)
        self.wait_for_workers([f"w{i}" for i in range(n_workers)])

    def add_worker(self, name: str, wait: bool = True) -> subprocess.Popen:
        """Start a worker process; ``--preload`` imports stdask's CCI first, so a worker that has
        registered is ready to run tasks at once."""
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", "dask", "worker", self.address, "--name", name, "--nthreads", "1",
             "--no-nanny", "--host", LOOPBACK, "--no-dashboard", "--death-timeout", "60s",
             "--memory-limit", "2GiB", "--preload", "stdask.tl.cci"],
            env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        if wait:
            self.wait_for_workers([name])
        return self.procs[name]

    def wait_for_workers(self, names: list[str], timeout: float = 90) -> None:
        """Wait until the workers ``names`` have registered; fail early if one of their processes exits."""
        deadline = time.monotonic() + timeout
        while not set(names) <= set(self.workers()):
            for name in names:
                self._check_alive(name)
            self._check_alive("scheduler")
            if time.monotonic() > deadline:
                raise TimeoutError(f"workers {names} did not register in {timeout} s")
            time.sleep(0.1)

    def workers(self) -> dict[str, str]:
        """name -> address of the workers the scheduler knows now."""
        info = self.monitor.scheduler_info(n_workers=-1)["workers"]
        return {str(w["name"]): addr for addr, w in info.items()}

    def prefix_counts(self) -> dict[str, dict]:
        """Per task prefix: tasks that reached memory, and tasks marked suspicious (their worker died
        while running them). Cumulative over the scheduler's life."""
        def counts(dask_scheduler):
            return {k: {"memory": int(p.state_counts.get("memory", 0)), "suspicious": int(p.suspicious)}
                    for k, p in dask_scheduler.task_prefixes.items()}
        return self.monitor.run_on_scheduler(counts)

    def _check_alive(self, name: str) -> None:
        p = self.procs[name]
        if p.poll() is not None:
            raise RuntimeError(f"{name} exited with {p.returncode} during start-up")

    def stop(self) -> None:
        if self.monitor is not None:
            try:
                self.monitor.close(timeout=10)
            except Exception:  # the scheduler may already be gone
                pass
        procs = [p for name, p in self.procs.items() if name != "scheduler"]
        procs += [self.procs["scheduler"]] if "scheduler" in self.procs else []
        for p in procs:
            if p.poll() is None:
                p.terminate()
        deadline = time.monotonic() + 10  # a graceful close, or a kill
        for p in procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=10)


class Killer(threading.Thread):
    """SIGKILL worker ``name`` as soon as it is running a task (of ``prefix``, when given) and holds at
    least ``min_held`` finished results (of ``prefix``), so that an in-flight task and stored results
    are lost."""

    def __init__(self, cluster: ProcessCluster, name: str, prefix: str | None = None, min_held: int = 0,
                 timeout: float = 120) -> None:
        super().__init__(daemon=True)
        self.cluster, self.name, self.prefix, self.min_held, self.timeout = cluster, name, prefix, min_held, timeout
        self.proc = cluster.procs[name]
        self.address = cluster.workers()[name]
        self.lost: tuple[int, int] | None = None  # (tasks running, results held) at the kill
        self.error: BaseException | None = None
        self._done = threading.Event()

    def run(self) -> None:
        mon = self.cluster.monitor
        deadline = time.monotonic() + self.timeout
        try:
            while not self._done.is_set() and time.monotonic() < deadline:
                running = [k for k in mon.processing([self.address]).get(self.address, ()) if self._mine(k)]
                held = [k for k in mon.has_what([self.address]).get(self.address, ()) if self._mine(k)]
                if running and len(held) >= self.min_held:
                    os.kill(self.proc.pid, signal.SIGKILL)
                    self.lost = (len(running), len(held))
                    return
                time.sleep(0.01)
        except BaseException as e:  # reported by the test, not lost in a thread
            self.error = e

    def _mine(self, key) -> bool:
        return self.prefix is None or _prefix(key) == self.prefix

    def finish(self) -> None:
        self._done.set()
        self.join(timeout=10)
        if self.error is not None:
            raise self.error


def _prefix(key) -> str:
    """A task key's prefix as the scheduler names it (``_run_tiles-<token>`` -> ``run_tiles``)."""
    return key_split(key)


@pytest.fixture(autouse=True)
def nothing_configured(monkeypatch):
    """No scheduler from the environment; stdask's clients closed and dask's default restored after."""
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    with dask.config.set({"scheduler-address": None, "scheduler": dask.config.get("scheduler", None)}), \
            settings.override(scheduler=None, n_workers=None, progress=False):
        yield
    cl.shutdown()


@pytest.fixture(scope="module")
def proc_cluster(tmp_path_factory):
    c = ProcessCluster(tmp_path_factory.mktemp("cluster"))
    try:
        c.start(n_workers=2)
        yield c
    finally:
        c.stop()


# ---------------------------------------------------------------------------------------------
# data


@pytest.fixture(scope="module")
def gem(tmp_path_factory) -> Path:
    """A bin1 Stereo-seq GEM of a 1,200-bin (bin50) synthetic slice with planted LR hotspots."""
    from stdask.datasets import synthetic_slice
    from stdask.datasets.gem import write_gem

    path = tmp_path_factory.mktemp("gem") / "slice_bin1.gem.gz"
    sl = synthetic_slice(n_obs=1200, n_genes=500, layout="stereo", bin_size=50, seed=3, n_hotspots=4)
    write_gem(sl, path)
    return path


@pytest.fixture(scope="module")
def small_tiles(gem, tmp_path_factory) -> Path:
    """The GEM at bin50 in tiles of 7 x 7 bins (36 tiles): many small tasks, so a run lasts seconds."""
    return stdask.ingest(gem, tmp_path_factory.mktemp("tiles") / "bin50.zarr", bin_size=50, tile_size=350,
                         progress=False)


def _table(store: Path) -> ad.AnnData:
    return ad.read_zarr(str(Path(store) / TABLE_PATH))


def _assert_same_csr(a, b, what: str) -> None:
    a, b = sp.csr_matrix(a), sp.csr_matrix(b)
    assert a.shape == b.shape and a.dtype == b.dtype, what
    for f in ("indptr", "indices", "data"):
        assert np.array_equal(getattr(a, f), getattr(b, f)), f"{what}: {f} differs"


def _assert_same_result(a: cci.CCIResult, b: cci.CCIResult) -> None:
    pd.testing.assert_frame_equal(a.lr_summary, b.lr_summary)
    pd.testing.assert_frame_equal(a.lrfeatures, b.lrfeatures)
    for m in ("scores", "counts", "padj"):
        _assert_same_csr(getattr(a, m), getattr(b, m), m)


# ---------------------------------------------------------------------------------------------
# the command line on a scheduler


def _cli(*args: str, scheduler: str | None = None) -> subprocess.Popen:
    cmd = [*STDASK, *args] + (["--scheduler", scheduler] if scheduler else [])
    return subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(*procs: subprocess.Popen, timeout: float = 120) -> list[str]:
    """Wait for CLI processes; return their stderr; fail with it when one failed."""
    errs = []
    for p in procs:
        out, err = p.communicate(timeout=timeout)
        assert p.returncode == 0, f"{p.args} failed ({p.returncode}):\n{out[-3000:]}\n{err[-3000:]}"
        errs.append(err)
    return errs


@pytest.mark.filterwarnings("ignore:Port 8787 is already in use")  # the embedded dashboard moves aside
def test_cli_on_a_scheduler_matches_the_embedded_default(proc_cluster, gem, tmp_path, capsys):
    address = proc_cluster.address
    emb, dist = tmp_path / "embedded.zarr", tmp_path / "cluster.zarr"
    before = proc_cluster.prefix_counts()

    # ingest: on the scheduler (a CLI process) and, meanwhile, embedded (the same CLI code, in this process)
    common = [str(gem), "--bin", "50"]
    proc = _cli("ingest", common[0], str(dist), *common[1:], scheduler=address)
    assert main(["ingest", common[0], str(emb), *common[1:]]) == 0
    (err_dist,) = _finish(proc)
    assert f"connected to dask scheduler {address}" in err_dist
    assert "connected to dask" not in capsys.readouterr().err
    # ingest connects (the address is checked at once) but is a single-process stream: it runs no task
    assert proc_cluster.prefix_counts() == before

    # LR hotspots on each store, written back into it
    lr_args = ["--n-pairs", str(CCI["n_pairs"]), "--min-spots", str(CCI["min_spots"]), "--seed", str(CCI["seed"])]
    proc = _cli("cci", "run", str(dist), *lr_args, "--out", str(tmp_path / "dist.tsv"), scheduler=address)
    assert main(["cci", "run", str(emb), *lr_args, "--out", str(tmp_path / "emb.tsv")]) == 0
    (err_dist,) = _finish(proc)
    assert f"connected to dask scheduler {address}" in err_dist
    # the embedded default, really: nothing went to the remote scheduler (a single task runs in-process)
    assert "connected to dask" not in capsys.readouterr().err
    after = proc_cluster.prefix_counts()
    ran = after.get("run_tiles", {}).get("memory", 0) - before.get("run_tiles", {}).get("memory", 0)
    assert ran >= 2  # both passes ran as tasks on the cluster's workers

    # identical stores: counts, obs, coordinates, tiling, LR results; identical summary files
    a, b = _table(emb), _table(dist)
    _assert_same_csr(a.X, b.X, "X")
    pd.testing.assert_frame_equal(a.obs, b.obs)
    pd.testing.assert_frame_equal(a.var, b.var)
    assert np.array_equal(a.obsm["spatial"], b.obsm["spatial"])
    for k in ("tile_row_start", "tiling", "bounds", "spot_diameter", "unit"):
        np.testing.assert_equal(a.uns["stdask"][k], b.uns["stdask"][k], err_msg=k)
    for k in ("lr_scores", "lr_pval_counts", "p_adjs"):
        _assert_same_csr(a.obsm[k], b.obsm[k], k)
    pd.testing.assert_frame_equal(a.uns["lr_summary"], b.uns["lr_summary"])
    pd.testing.assert_frame_equal(a.uns["lrfeatures"], b.uns["lrfeatures"])
    assert len(a.uns["lr_summary"]) > 10 and a.obsm["lr_scores"].nnz > 0
    assert (tmp_path / "emb.tsv").read_bytes() == (tmp_path / "dist.tsv").read_bytes()
    # and the stores stay valid for stdask itself
    for store in (emb, dist):
        ds = stdask.read(store)
        assert ds.n_obs == 1200 and cci.CCIResult.load(ds).lr_summary.equals(a.uns["lr_summary"])


# ---------------------------------------------------------------------------------------------
# a worker killed mid-run


def test_lr_analysis_survives_a_killed_worker(proc_cluster, small_tiles, tmp_path):
    store = tmp_path / "bin50.zarr"
    shutil.copytree(small_tiles, store)
    lrs = cci.load_lrs()
    proc_cluster.add_worker("victim-cci", wait=False)  # starts while the reference runs
    # the undisturbed run, here without distributed at all
    ref = cci.run(stdask.read(small_tiles), lrs, **CCI, rows_per_task=1, scheduler="sync", progress=False,
                  verbose=False)
    proc_cluster.wait_for_workers(["victim-cci"])
    before = proc_cluster.prefix_counts().get("run_tiles", {"memory": 0})
    killer = Killer(proc_cluster, "victim-cci", "run_tiles", min_held=2)
    ds = stdask.read(store)
    n_tasks = len(tile_batches(ds, 1))  # per pass
    killer.start()
    try:
        res = cci.run(ds, lrs, **CCI, rows_per_task=1, scheduler=proc_cluster.address, verbose=False)
    finally:
        killer.finish()
    assert killer.lost is not None, "the victim never ran a task: nothing was killed"
    assert proc_cluster.procs["victim-cci"].wait(timeout=30) == -signal.SIGKILL
    assert "victim-cci" not in proc_cluster.workers()
    assert n_tasks >= 30
    # the results the victim held were lost with it (nothing had gathered them: one of its tasks was still
    # running), so the scheduler computed them again elsewhere: more task completions than tasks
    done = proc_cluster.prefix_counts()["run_tiles"]["memory"] - before["memory"]
    assert done >= 2 * n_tasks + killer.lost[1]

    _assert_same_result(res, ref)
    ds.write()
    # the store opens, validates, and holds the undisturbed numbers
    back = stdask.read(store)
    _assert_same_result(cci.CCIResult.load(back), ref)
    table = _table(store)
    assert table.obsm["lr_scores"].shape == (back.n_obs, len(ref.lrs))


def test_store_write_survives_a_killed_worker(proc_cluster, small_tiles, tmp_path):
    """``ds.write()`` streams a lazy layer through the cluster chunk by chunk; a worker killed while it
    computes chunks leaves a complete, correct layer."""
    store = tmp_path / "bin50.zarr"
    shutil.copytree(small_tiles, store)

    def lazy_layers(ds):
        stdask.pp.normalize_total(ds, target_sum=1e4, progress=False)
        stdask.pp.log1p(ds)
        return ds.get_result("layers", "normalized"), ds.get_result("layers", "log1p")

    proc_cluster.add_worker("victim-write", wait=False)  # starts while the reference runs
    # undisturbed: the same lazy layers computed here, without distributed
    expect = cl.compute(*lazy_layers(stdask.read(small_tiles, rows_per_chunk=1)), scheduler="sync", progress=False)
    proc_cluster.wait_for_workers(["victim-write"])
    ds = stdask.read(store, rows_per_chunk=1)  # one dask chunk per tile: 36 tasks per layer
    lazy_layers(ds)
    cl.get_client(proc_cluster.address)  # the default client from now on: ds.write() computes there
    before = proc_cluster.prefix_counts()
    killer = Killer(proc_cluster, "victim-write")  # at its first running task
    killer.start()
    try:
        ds.write()
    finally:
        killer.finish()
    assert killer.lost is not None, "the victim never ran a task: nothing was killed"
    assert proc_cluster.procs["victim-write"].wait(timeout=30) == -signal.SIGKILL
    # the scheduler saw the task that was running on the dead worker (and ran it again elsewhere)
    after = proc_cluster.prefix_counts()
    assert sum(v["suspicious"] for v in after.values()) > sum(v["suspicious"] for v in before.values())

    back = stdask.read(store)
    assert back.store.matrix_names() == ["X", "log1p", "normalized"]
    for name, want in zip(("normalized", "log1p"), expect):
        got = back.store.read_rows(0, back.n_obs, name)
        _assert_same_csr(got, want, name)
    table = _table(store)  # and anndata reads the written layers
    assert table.layers["log1p"].shape == (back.n_obs, back.n_vars)



# ---------------------------------------------------------------------------------------------
# the embedded default's dashboard link (what a notebook user clicks)


@pytest.mark.filterwarnings("ignore:Port 8787 is already in use")
def test_embedded_dashboard_link_names_loopback():
    """The embedded dashboard listens on 127.0.0.1 only: ``client.dashboard_link`` (also shown in the
    client's Jupyter summary) must name 127.0.0.1, not the machine's public IP."""
    client = cl.get_client()
    link = client.dashboard_link
    assert link.startswith("http://127.0.0.1:") and link.endswith("/status")
    assert link in client._repr_html_()
