"""Where work runs: the one place that picks a dask.distributed client, and computes on it.

Every stdask function that computes goes through :func:`compute` (or asks :func:`get_client`), so the
same code runs on a laptop with no configuration and, unchanged, on a cluster::

    import stdask.cluster as cl

    cl.compute(ds.X.sum(axis=0))                         # embedded local cluster, started on first use
    cl.get_client("tcp://10.0.0.5:8786")                  # or: export DASK_SCHEDULER_ADDRESS=...
    cl.compute(ds.X.sum(axis=0), scheduler="tcp://10.0.0.5:8786")

Where a scheduler comes from (first match wins, see :func:`get_client`):

1. the ``scheduler`` argument: an address, a ``distributed.Client`` or a cluster object;
2. dask's current default client (``distributed.default_client()``): one the user created, or one
   stdask opened on an explicit request (see below);
3. ``stdask.settings.scheduler``;
4. the environment variable ``DASK_SCHEDULER_ADDRESS``;
5. dask config ``scheduler-address`` (``~/.config/dask/*.yaml``);
6. the embedded default: a ``distributed.LocalCluster`` on this machine, started lazily, reused and
   closed at interpreter exit.

A scheduler named explicitly (``get_client(address)``, ``compute(..., scheduler=address)``, the CLI's
``--scheduler``) is connected to as ``distributed.Client(address)`` would: the client becomes dask's
default, so later calls without a scheduler (rule 2) and plain dask ``.compute()`` run there too, until
:func:`shutdown`. Clients found through rules 3-6 are *not* made default: they are looked up again on
each call, so changing ``settings.scheduler`` takes effect at once, and the embedded cluster never
changes where a user's other dask code runs. Code inside stdask computes through :func:`compute` /
:func:`get_client`, never a bare ``.compute()``, so that it follows these rules.

The embedded cluster is **one in-process worker with one thread per core** (``processes=False``),
or, when ``stdask.settings.n_workers`` is set, that many worker processes sharing the cores. Why
threads by default:

* stdask's heavy work (numpy, numba ``nogil`` kernels, zarr/Blosc I/O, torch) releases the GIL, so
  threads keep every core busy without pickling tiles between processes;
* the worker shares memory with the notebook: results and inputs are not copied between processes;
* it starts in under a second and needs no ``if __name__ == "__main__":`` guard in scripts
  (process workers are *spawned* and re-import the calling script);
* it still gives the dashboard, ``distributed.progress``, spilling to disk and memory pausing.

Set ``stdask.settings.n_workers`` for GIL-bound pure-Python work, where processes scale better.
"""
from __future__ import annotations

import atexit
import html
import os
import sys
import threading
import warnings
import weakref
from collections.abc import Sequence
from typing import Any, Union

import dask
import dask.system
import distributed
from distributed import Client, Future, LocalCluster
from distributed.deploy import Cluster
from distributed.security import Security
from distributed.utils import format_dashboard_link, is_kernel

from stdask.progress import TqdmCallback
from stdask.settings import settings

__all__ = ["get_client", "compute", "share", "shutdown", "configured_address", "runs_embedded", "LOCAL_SCHEDULERS"]

#: Names of dask's local schedulers; ``compute(scheduler=<one of these>)`` skips distributed.
LOCAL_SCHEDULERS: tuple[str, ...] = ("threads", "threading", "sync", "synchronous", "single-threaded", "processes")

#: What ``security=`` accepts: a ``Security`` or the paths ``(ca_file, client_cert, client_key)``.
SecurityLike = Union[Security, Sequence[Union[str, os.PathLike]], None]

_lock = threading.RLock()  # guards the two caches below against concurrent first calls
_embedded: tuple[LocalCluster, Client] | None = None  # the lazily started local cluster
_connected: dict[tuple[str, str, bool], Client] = {}  # (address, security, as default) -> client
_announced: weakref.WeakSet[Client] = weakref.WeakSet()  # clients whose dashboard line was shown


def configured_address() -> str | None:
    """Return the scheduler address configured outside the code, or ``None``.

    Looks at ``stdask.settings.scheduler``, then ``$DASK_SCHEDULER_ADDRESS``, then dask config
    ``scheduler-address``. The environment is read at each call (dask reads it only at import), so
    a variable set after ``import dask`` still counts.
    """
    for address in (
        settings.scheduler,
        os.environ.get("DASK_SCHEDULER_ADDRESS"),
        dask.config.get("scheduler-address", None),
    ):
        if address:
            return str(address).strip()
    return None


def runs_embedded(scheduler: str | Client | Cluster | None = None) -> bool:
    """Whether work would run in this process: no scheduler given, configured or made current by the user
    (so the embedded cluster, or a local dask scheduler, would run it)."""
    if scheduler is not None:
        return isinstance(scheduler, str) and scheduler in LOCAL_SCHEDULERS
    if _in_task():
        return True
    return _default_client() is None and configured_address() is None


def get_client(
    scheduler: str | Client | Cluster | None = None,
    *,
    create: bool = True,
    security: SecurityLike = None,
    timeout: float | str | None = None,
) -> Client | None:
    """Return the dask.distributed client that stdask work should run on.

    Parameters
    ----------
    scheduler
        Where to run, overriding every other source: a scheduler address (``"tcp://host:8786"``,
        ``"tls://host:8786"``, ``"host:8786"``), the path of a scheduler file
        (``dask scheduler --scheduler-file``), a ``distributed.Client`` (returned as is; e.g. one
        from dask-gateway) or a cluster object (``LocalCluster``, ``KubeCluster``, ``GatewayCluster``).
        A client opened for an address or cluster object becomes dask's default client, so later
        calls without ``scheduler`` use it too. ``None``: dask's current default client, then
        ``stdask.settings.scheduler``, ``$DASK_SCHEDULER_ADDRESS``, dask config
        ``scheduler-address``, then the embedded cluster.
    create
        Start the embedded local cluster if nothing else is configured. With ``False`` return
        ``None`` instead (an embedded cluster that is already running is still returned); callers
        then run small work on dask's threaded scheduler.
    security
        TLS credentials for ``tls://`` addresses: a ``distributed.security.Security``, or the paths
        ``(ca_file, client_cert, client_key)``. ``None``: ``Security()`` built from dask config
        ``distributed.comm.tls.{ca-file, client.cert, client.key}``.
    timeout
        Seconds (or a string like ``"10s"``) to wait for the scheduler when connecting;
        ``None``: dask config ``distributed.comm.timeouts.connect`` (30 s by default).

    Returns
    -------
    distributed.Client or None
        A connected client, cached: asking again for the same address returns the same client.
        ``None`` with ``create=False`` when nothing is configured, and when called from inside a
        running dask task (nested work then runs inline in that task instead of starting a cluster
        inside a worker or blocking a worker thread on its own scheduler).

    Raises
    ------
    ValueError
        A ``tls://`` address without certificates.
    OSError, TimeoutError
        The scheduler cannot be reached, or refused the connection, within ``timeout``.
    """
    if isinstance(scheduler, Client):
        _announce(scheduler, "using dask")
        return scheduler
    if isinstance(scheduler, Cluster) or (scheduler is not None and hasattr(scheduler, "scheduler_address")):
        return _connect_cluster(scheduler, timeout)
    if scheduler is not None:
        return _connect(os.fspath(scheduler).strip(), security, timeout, as_default=True)

    if _in_task():
        return None
    user_client = _default_client()
    if user_client is not None:
        _announce(user_client, "using dask")
        return user_client
    address = configured_address()
    if address:
        return _connect(address, security, timeout, as_default=False)
    return _embedded_client(create)


def compute(
    *collections: Any,
    scheduler: str | Client | Cluster | None = None,
    progress: bool = True,
    desc: str | None = None,
    create: bool = True,
) -> tuple[Any, ...]:
    """Compute dask collections where :func:`get_client` says, showing progress.

    Parameters
    ----------
    *collections
        Dask collections (arrays, dataframes, delayed) and plain values, as for ``dask.compute``.
    scheduler
        As for :func:`get_client`; additionally the name of a dask local scheduler
        (``"threads"``, ``"sync"``, ``"processes"``, see :data:`LOCAL_SCHEDULERS`) runs here,
        without distributed.
    progress
        Show progress: ``distributed.progress`` on a distributed client (a widget in Jupyter, a text
        bar in a terminal), a tqdm bar on a local scheduler. Shown only if ``stdask.settings.progress``
        is also true.
    desc
        Label for the progress display, e.g. ``"normalize_total"``.
    create
        Passed to :func:`get_client`: with ``False`` and nothing configured the work runs on dask's
        threaded scheduler instead of starting the embedded cluster (meant for small work).

    Returns
    -------
    tuple
        One computed result per argument, as ``dask.compute`` returns them. The numbers do not
        depend on the path taken (distributed or local, with or without progress).
    """
    show = bool(progress) and settings.progress
    if isinstance(scheduler, str) and scheduler in LOCAL_SCHEDULERS:
        return _compute_local(collections, scheduler, show, desc)
    client = get_client(scheduler, create=create)
    if client is None:
        # Inside a task the work is already on a worker: run it inline rather than start a thread
        # pool per worker thread.
        return _compute_local(collections, "sync" if _in_task() else "threads", show, desc)
    return _compute_distributed(client, collections, show, desc)


def share(*objects: Any, scheduler: str | Client | Cluster | None = None) -> list[Any]:
    """Large read-only inputs of tasks about to be computed with :func:`compute` (same ``scheduler``), as
    values to pass to ``dask.delayed`` functions.

    On a distributed client each object is scattered once (``client.scatter``; on the embedded cluster's
    in-process workers, by reference) and its future is returned, so the task graph holds a reference. A
    ``dask.delayed`` value would be pickled into the graph the client submits: an extra copy in the client,
    another in the scheduler (at 10^7 spots, run_cci's edge inputs made its peak 6.3 GiB this way). On a local
    scheduler, or inside a task, the objects are wrapped as ``dask.delayed`` values.
    """
    if not (isinstance(scheduler, str) and scheduler in LOCAL_SCHEDULERS):
        client = get_client(scheduler)
        if client is not None:
            # a list of one item each: a tuple or a list given is one object, not a sequence to split
            return [client.scatter([obj], hash=False)[0] for obj in objects]
    return [dask.delayed(obj, pure=True, traverse=False) for obj in objects]


def shutdown() -> None:
    """Close every client stdask opened and the embedded cluster; registered to run at exit.

    Clients the user created (passed in, or found as dask's default client) are left open. After
    this, the next :func:`get_client` connects or starts afresh (e.g. with new ``settings.n_workers``).
    """
    global _embedded
    with _lock:
        clients = list(_connected.values())
        _connected.clear()
        embedded, _embedded = _embedded, None
    for client in clients:
        _close_quietly(client)
    if embedded is not None:
        _close_quietly(embedded[1])
        _close_quietly(embedded[0])


atexit.register(shutdown)  # registered after distributed's own hooks, so it runs before them


# ---------------------------------------------------------------------------------------------
# resolution helpers


def _in_task() -> bool:
    """True when called from a task running on a dask.distributed worker."""
    try:
        distributed.get_worker()
    except ValueError:
        return False
    return True


def _default_client() -> Client | None:
    """The client the user made current (``Client(...)``, ``with client.as_current()``), if any."""
    try:
        client = Client.current(allow_global=True)
    except ValueError:
        return None
    return client if client.status == "running" else None


def _as_security(security: SecurityLike) -> Security:
    """Turn ``security=`` into a ``Security``; ``None`` reads dask config ``distributed.comm.tls``.

    Certificate paths may use ``~`` and ``$VARS`` (dask's config loader expands neither).
    """
    if security is None:
        sec = Security()
        for field in ("tls_ca_file", "tls_client_cert", "tls_client_key"):
            value = getattr(sec, field)
            if isinstance(value, str) and "\n" not in value:  # a path, not an in-memory PEM
                setattr(sec, field, _expand(value))
        return sec
    if isinstance(security, Security):
        return security
    if isinstance(security, Sequence) and not isinstance(security, str) and len(security) == 3:
        ca, cert, key = (_expand(os.fspath(p)) for p in security)
        return Security(tls_ca_file=ca, tls_client_cert=cert, tls_client_key=key, require_encryption=True)
    raise TypeError(
        f"security must be a distributed.security.Security or the paths (ca_file, cert, key), got {security!r}"
    )


def _expand(path: str) -> str:
    return os.path.expanduser(os.path.expandvars(path))


def _connect(address: str, security: SecurityLike, timeout: float | str | None, *, as_default: bool) -> Client:
    """Connect (once) to the scheduler at ``address`` or described by a scheduler file.

    ``as_default``: make the client dask's default (explicit requests), as ``Client(address)`` does.
    """
    sec = _as_security(security)
    if address.startswith("tls://") and not (sec.tls_ca_file and sec.tls_client_cert):
        raise ValueError(
            f"{address} is a TLS scheduler but no client certificate is configured: pass "
            "security=(ca_file, cert, key) to stdask.cluster.get_client, or set "
            "distributed.comm.tls.ca-file, distributed.comm.tls.client.cert and "
            "distributed.comm.tls.client.key in dask config (see deploy/tls/README.md)"
        )
    key = (address, repr(sec), as_default)
    with _lock:
        client = _connected.get(key)
        if client is not None and client.status == "running":
            return client
        kwargs: dict[str, Any] = {"security": sec, "set_as_default": as_default}
        if timeout is not None:  # Client(timeout=None) is an error, not "use the default"
            kwargs["timeout"] = timeout
        if "://" not in address and os.path.isfile(address):
            client = Client(scheduler_file=address, **kwargs)
        else:
            client = Client(address, **kwargs)
        _connected[key] = client
    _announce(client, "connected to dask")
    return client


def _connect_cluster(cluster: Any, timeout: float | str | None) -> Client:
    """Connect (once) to a cluster object (made default, as an explicit request); its own
    ``security`` (e.g. dask-gateway's) is used."""
    key = (str(cluster.scheduler_address), f"cluster-{id(cluster)}", True)
    with _lock:
        client = _connected.get(key)
        if client is None or client.status != "running":
            kwargs: dict[str, Any] = {"set_as_default": True}
            if timeout is not None:
                kwargs["timeout"] = timeout
            client = Client(cluster, **kwargs)
            _connected[key] = client
    _announce(client, "connected to dask")
    return client


def _embedded_client(create: bool) -> Client | None:
    """The embedded local cluster's client, started on first need when ``create``."""
    global _embedded
    with _lock:
        if _embedded is not None and _embedded[1].status == "running":
            return _embedded[1]
        if not create:
            return None
        cores = dask.system.CPU_COUNT  # honours cgroup / affinity limits, unlike os.cpu_count()
        n_workers = settings.n_workers
        # Nothing listens beyond loopback: threads talk in-process (inproc://), worker processes
        # and nannies over 127.0.0.1, and the dashboard is served on 127.0.0.1 only. Every worker
        # also runs an HTTP server (/health, /metrics, /sitemap.json): without an address it binds
        # every interface (0.0.0.0 and [::]), so it is given a loopback one (any free port).
        common = {"dashboard_address": "127.0.0.1:8787", "worker_dashboard_address": "127.0.0.1:0"}
        if n_workers is None:
            cluster = _LoopbackCluster(n_workers=1, threads_per_worker=cores, processes=False, **common)
        else:
            cluster = _LoopbackCluster(
                n_workers=n_workers,
                threads_per_worker=max(1, cores // n_workers),
                processes=True,
                host="127.0.0.1",
                **common,
            )
        client = Client(cluster, set_as_default=False)
        _embedded = (cluster, client)
    _announce(client, "started a local dask cluster:", link=cluster.dashboard_link or None)
    return client


class _LoopbackCluster(LocalCluster):
    """The embedded ``LocalCluster``, whose dashboard link names 127.0.0.1.

    distributed names an in-process scheduler's dashboard by the machine's public IP (the host part of
    ``inproc://<ip>/<pid>/<n>``), but the embedded dashboard listens on loopback only. The link is
    what ``client.dashboard_link`` and the client's Jupyter summary show, so it must be the address
    that works.
    """

    @property
    def dashboard_link(self) -> str:
        port = self.scheduler_info.get("services", {}).get("dashboard")
        return format_dashboard_link("127.0.0.1", port) if port else ""


def _close_quietly(obj: Client | LocalCluster) -> None:
    """Close a client or cluster; at interpreter exit a failure to close must not raise."""
    try:
        obj.close()
    except Exception:  # already closed, event loop gone at exit, scheduler unreachable
        pass


# ---------------------------------------------------------------------------------------------
# user-facing output


def _dashboard_link(client: Client) -> str | None:
    try:
        return client.dashboard_link or None
    except Exception:  # a remote scheduler without bokeh has no dashboard service
        return None


def _announce(client: Client, verb: str, link: str | None = None) -> None:
    """Show one line with the scheduler and its dashboard link, once per client."""
    with _lock:
        if client in _announced:
            return
        _announced.add(client)
    try:
        address = client.scheduler.address
    except AttributeError:
        address = "?"
    link = link or _dashboard_link(client)
    text = f"stdask: {verb} scheduler {address}; dashboard: {link or 'not available (the scheduler needs bokeh)'}"
    if is_kernel():
        from IPython.display import HTML, display

        dash = f'<a href="{html.escape(link)}" target="_blank">{html.escape(link)}</a>' if link else "none"
        display(HTML(f"stdask: {html.escape(verb)} scheduler <code>{html.escape(address)}</code>; dashboard: {dash}"))
    else:
        # stderr: a CLI's stdout may be data piped to another program.
        print(text, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# computing


def _compute_local(collections: Sequence[Any], scheduler: str, show: bool, desc: str | None) -> tuple[Any, ...]:
    """Run on a dask local scheduler, with a tqdm bar counting tasks."""
    if not show:
        return dask.compute(*collections, scheduler=scheduler)
    with TqdmCallback(desc=desc):
        return dask.compute(*collections, scheduler=scheduler)


def _compute_distributed(client: Client, collections: Sequence[Any], show: bool, desc: str | None) -> tuple[Any, ...]:
    """Submit to ``client``, show ``distributed.progress``, gather the results."""
    futures = client.compute(list(collections))  # plain values come back unchanged
    pending = [f for f in futures if isinstance(f, Future)]
    try:
        if show and pending:
            _show_distributed_progress(client, pending, desc)
        return tuple(client.gather(futures))
    except BaseException:
        # A Ctrl-C (or an error) must not leave the cluster busy: a traceback kept by Jupyter
        # would otherwise hold the futures, and so the running tasks, alive.
        client.cancel(pending)
        raise


def _show_distributed_progress(client: Client, futures: list[Future], desc: str | None) -> None:
    """A widget in Jupyter (returns at once), a text bar elsewhere (returns when work ends)."""
    notebook = is_kernel() and _has_ipywidgets()
    try:
        if notebook:
            from IPython.display import HTML, display

            if desc:
                display(HTML(f"<b>{html.escape(desc)}</b>"))
            # The widget updates itself from the scheduler while we block in gather().
            display(distributed.progress(futures, notebook=True, scheduler=client.scheduler.address))
        else:
            if desc:
                print(desc, flush=True)  # own line: the text bar rewrites its line with \r
            distributed.progress(futures, notebook=False, scheduler=client.scheduler.address)
    except Exception as exc:  # progress is a nicety: e.g. a scheduler with pickling disabled
        warnings.warn(f"stdask: no progress display ({type(exc).__name__}: {exc}); computing anyway", stacklevel=3)


def _has_ipywidgets() -> bool:
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        return False
    return True
