"""The embedded cluster listens on loopback only: every socket it opens is bound to 127.0.0.1 or ::1.

The check lists the listening TCP sockets of this process (the in-process worker, scheduler and dashboard
live here) and of its child processes (nannies and worker processes with ``settings.n_workers``), so a
server added later by distributed is caught too, not only the ones stdask names.
"""
from __future__ import annotations

import os

import dask
import psutil
import pytest

import stdask.cluster as cl
from stdask.settings import settings

LOOPBACK = {"127.0.0.1", "::1"}


@pytest.fixture(autouse=True)
def nothing_configured(monkeypatch):
    """No scheduler configured, so the embedded cluster starts afresh (one an earlier test left running is
    closed first); stdask's clients closed afterwards."""
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    cl.shutdown()
    with dask.config.set({"scheduler-address": None}), settings.override(scheduler=None, n_workers=None):
        yield
    cl.shutdown()


def _listening(processes: list[psutil.Process]) -> list[tuple[int, str, int]]:
    """(pid, address, port) of every listening TCP socket (IPv4 and IPv6) of ``processes``."""
    found = []
    for proc in processes:
        for conn in proc.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN:
                found.append((proc.pid, conn.laddr.ip, conn.laddr.port))
    return found


def _before_and_after(start) -> list[tuple[int, str, int]]:
    """Listening sockets of this process tree opened by ``start()`` (pytest or other tests may hold some)."""
    me = psutil.Process(os.getpid())
    before = set(_listening([me]))
    start()
    tree = [me, *me.children(recursive=True)]
    return [s for s in _listening(tree) if s not in before]


def test_in_process_worker_listens_on_loopback_only():
    # The default: one in-process worker; its HTTP server (/health, /metrics, /sitemap.json) and the
    # scheduler's dashboard are the TCP listeners, the scheduler itself talks inproc://.
    sockets = _before_and_after(lambda: cl.compute(dask.delayed(sum)([1, 2, 3]), progress=False))
    assert len(sockets) >= 2, f"expected the dashboard and the worker's HTTP server, found {sockets}"
    public = [s for s in sockets if s[1] not in LOOPBACK]
    assert not public, f"the embedded cluster listens beyond loopback: {public}"


def test_worker_processes_and_nannies_listen_on_loopback_only():
    # With settings.n_workers: scheduler, nanny and worker processes talk TCP; all of it on loopback.
    with settings.override(n_workers=1):
        sockets = _before_and_after(lambda: cl.compute(dask.delayed(sum)([1, 2, 3]), progress=False))
    pids = {pid for pid, _, _ in sockets}
    assert len(pids) >= 2, f"expected listeners in this process and in the worker process, found {sockets}"
    public = [s for s in sockets if s[1] not in LOOPBACK]
    assert not public, f"the embedded cluster listens beyond loopback: {public}"
