"""Where work runs: scheduler resolution, a real out-of-process cluster, TLS, progress.

Everything listens on 127.0.0.1 only; every process and cluster started here is bounded in time and
stopped by a fixture finaliser.
"""
from __future__ import annotations

import datetime
import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pytest
from distributed import Client, LocalCluster
from distributed.security import Security

import stdask.cluster as cl
from stdask.progress import TqdmCallback, progress_bar
from stdask.settings import Settings, settings

LOOPBACK = "127.0.0.1"


# ---------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(autouse=True)
def nothing_configured(monkeypatch):
    """Each test starts with no scheduler configured and ends with stdask's clients closed."""
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    # "scheduler" too: a client made default during a test sets it, and it must not outlive the test
    with dask.config.set({"scheduler-address": None, "scheduler": dask.config.get("scheduler", None)}), \
            settings.override(scheduler=None, n_workers=None, progress=True):
        yield
    cl.shutdown()


@pytest.fixture(scope="module")
def two_clusters():
    """Two small in-process clusters listening on loopback TCP (cheap: no worker processes)."""
    clusters = [
        LocalCluster(
            n_workers=1, threads_per_worker=1, processes=False, protocol="tcp://", host=LOOPBACK,
            dashboard_address=f"{LOOPBACK}:0",
        )
        for _ in range(2)
    ]
    yield clusters
    for c in clusters:
        c.close()


def _wait_for(path: Path, deadline: float, procs: list[subprocess.Popen]) -> None:
    while not path.exists() or not path.read_text().strip():
        for p in procs:
            if p.poll() is not None:
                raise RuntimeError(f"{p.args[:4]} exited with {p.returncode} before writing {path}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} not written in time")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def subprocess_cluster(tmp_path_factory):
    """``dask scheduler`` and ``dask worker --nthreads 1`` as real processes on 127.0.0.1.

    Yields (address, scheduler_file). Both processes also stop themselves if the finaliser never
    runs: the scheduler after 120 s idle, the worker 30 s after losing its scheduler.
    """
    tmp = tmp_path_factory.mktemp("sched")
    sched_file = tmp / "scheduler.json"
    procs: list[subprocess.Popen] = []
    env = {**os.environ, "DASK_DISTRIBUTED__LOGGING__DISTRIBUTED": "error"}
    env.pop("DASK_SCHEDULER_ADDRESS", None)

    def stop() -> None:
        for p in reversed(procs):
            if p.poll() is None:
                p.terminate()
        for p in reversed(procs):
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=10)

    try:
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "dask", "scheduler", "--host", LOOPBACK, "--port", "0",
                 "--scheduler-file", str(sched_file), "--dashboard-address", f"{LOOPBACK}:0", "--idle-timeout", "120s"],
                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
        )
        _wait_for(sched_file, time.monotonic() + 30, procs)
        address = json.loads(sched_file.read_text())["address"]
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "dask", "worker", address, "--nthreads", "1", "--host", LOOPBACK,
                 "--no-nanny", "--no-dashboard", "--death-timeout", "30s", "--memory-limit", "2GiB"],
                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
        )
        yield address, sched_file
    finally:
        stop()


def _arrays():
    """Collections whose float results would differ if chunks were combined differently."""
    x = da.random.default_rng(42).standard_normal((3000, 40), chunks=(250, 40)).astype(np.float32)
    return x.sum(axis=0), x.T @ x, x.std(), da.bincount((x[:, 0] > 0).astype(np.int64), minlength=2)


def _assert_same(a, b) -> None:
    assert len(a) == len(b)
    for u, v in zip(a, b):
        assert np.asarray(u).dtype == np.asarray(v).dtype
        np.testing.assert_array_equal(u, v)  # bitwise: same graph, same reduction order


# ---------------------------------------------------------------------------------------------
# settings


def test_settings_validate_and_override():
    import stdask

    assert stdask.settings is settings  # the package attribute is the one settings object
    s = Settings()
    assert (s.backend, s.scheduler, s.progress, s.n_workers) == ("cpu", None, True, None)
    with pytest.raises(ValueError, match="backend"):
        s.backend = "tpu"
    with pytest.raises(ValueError, match="n_workers"):
        s.n_workers = 0
    with pytest.raises(TypeError, match="progress"):
        s.progress = "yes"
    with pytest.raises(AttributeError, match="no setting 'schedular'"):
        s.schedular = "tcp://x:1"
    try:
        import cupy  # noqa: F401

        has_cupy = True
    except Exception:
        has_cupy = False
    if not has_cupy:
        with pytest.raises(RuntimeError, match="cupy"):
            s.backend = "gpu"
        assert s.backend == "cpu"

    with s.override(scheduler=" tcp://127.0.0.1:1 ", n_workers=2):
        assert s.scheduler == "tcp://127.0.0.1:1" and s.n_workers == 2
    assert s.scheduler is None and s.n_workers is None
    with pytest.raises(KeyError), s.override(progress=False):  # restored after an error too
        raise KeyError
    assert s.progress is True
    with pytest.raises(ValueError), s.override(progress=False, n_workers=-1):  # all or nothing
        pass
    assert s.progress is True


# ---------------------------------------------------------------------------------------------
# resolution


def test_explicit_address_connects_and_is_cached(two_clusters, capsys):
    a, _ = two_clusters
    client = cl.get_client(a.scheduler_address)
    assert client.scheduler.address == a.scheduler_address
    assert set(client.scheduler_info()["workers"]) == set(a.scheduler_info["workers"])
    assert cl.get_client(a.scheduler_address) is client
    err = capsys.readouterr().err
    assert err.count(a.scheduler_address) == 1 and "dashboard" in err  # announced once
    assert client.submit(sum, [1, 2, 3]).result(timeout=10) == 6


def test_resolution_order(two_clusters, monkeypatch):
    a, b = two_clusters
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", a.scheduler_address)
    assert cl.get_client().scheduler.address == a.scheduler_address  # environment
    assert cl.get_client(create=False).scheduler.address == a.scheduler_address
    settings.scheduler = b.scheduler_address
    assert cl.get_client().scheduler.address == b.scheduler_address  # settings beat environment
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS")
    settings.scheduler = None
    with dask.config.set({"scheduler-address": a.scheduler_address}):
        assert cl.get_client().scheduler.address == a.scheduler_address  # dask config
    assert not _has_default()  # none of these became dask's default client

    # A client the user made (and so the default) beats settings, environment and config.
    settings.scheduler = b.scheduler_address
    with Client(a.scheduler_address, timeout=10) as user:
        assert cl.get_client() is user
        assert cl.get_client(user) is user
    assert cl.get_client().scheduler.address == b.scheduler_address

    # An explicit address beats all, and (like Client(address)) stays in use for later calls:
    # this is how the CLI's --scheduler reaches every computation of a command.
    explicit = cl.get_client(a.scheduler_address)
    assert explicit.scheduler.address == a.scheduler_address
    assert cl.get_client() is explicit and Client.current() is explicit
    cl.shutdown()  # closes it; the configured scheduler applies again
    assert cl.get_client().scheduler.address == b.scheduler_address
    # A cluster object is accepted too.
    assert cl.get_client(a).scheduler.address == a.scheduler_address


def test_nothing_configured_create_false_returns_none():
    assert cl.get_client(create=False) is None
    x = da.arange(1000, chunks=100)
    assert cl.compute(x.sum(), create=False) == (499500,)  # threaded scheduler, no cluster started
    assert cl.get_client(create=False) is None


def test_embedded_default_is_reused_and_stays_local(capsys):
    client = cl.get_client()
    assert "started a local dask cluster" in capsys.readouterr().err
    assert cl.get_client() is client
    assert cl.get_client(create=False) is client  # existing embedded cluster is returned
    assert client.scheduler.address.startswith("inproc://")  # in-process: nothing listens on the network
    assert sum(client.nthreads().values()) == dask.system.CPU_COUNT
    assert not _has_default() or Client.current() is not client  # stdask never sets dask's default
    # Inside a task get_client gives None and compute runs inline (no cluster inside a worker).
    def nested():
        return cl.get_client(), cl.compute(da.arange(10, chunks=5).sum())[0]

    inner_client, inner_sum = client.submit(nested, pure=False).result(timeout=30)
    assert inner_client is None and inner_sum == 45
    cl.shutdown()
    assert cl.get_client(create=False) is None
    with settings.override(n_workers=2):
        c2 = cl.get_client()
    assert c2 is not client
    assert len(c2.nthreads()) == 2 and c2.scheduler.address.startswith("tcp://127.0.0.1:")


def _has_default() -> bool:
    try:
        Client.current(allow_global=True)
    except ValueError:
        return False
    return True


# ---------------------------------------------------------------------------------------------
# a real cluster in other processes


def test_subprocess_cluster_gives_same_numbers(subprocess_cluster):
    address, sched_file = subprocess_cluster
    assert address.startswith(f"tcp://{LOOPBACK}:")
    client = cl.get_client(address, timeout=30)
    client.wait_for_workers(1, timeout=30)
    worker_pids = set(client.run(os.getpid).values())
    assert worker_pids and os.getpid() not in worker_pids  # the work really runs elsewhere

    expected = dask.compute(*_arrays(), scheduler="threads")
    _assert_same(cl.compute(*_arrays(), scheduler=address), expected)
    # The scheduler file the CLI wrote works as an address too (HPC style).
    assert cl.get_client(str(sched_file)).scheduler.address == address
    settings.scheduler = address
    _assert_same(cl.compute(*_arrays(), progress=False), expected)


# ---------------------------------------------------------------------------------------------
# TLS


def _write_pki(d: Path) -> dict[str, str]:
    """A throwaway CA with one certificate for scheduler/worker/client, plus an untrusted CA's client."""
    try:
        return _pki_cryptography(d)
    except ImportError:
        if shutil.which("openssl") is None:
            pytest.skip("TLS test needs the `cryptography` package or the openssl command")
        return _pki_openssl(d)


def _pki_cryptography(d: Path) -> dict[str, str]:
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def write(name, key, cert):
        (d / f"{name}.key").write_bytes(
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        )
        (d / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))

    def issue(cn, ca=None):
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
        issuer_key, issuer = (key, subject) if ca is None else ca
        b = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False
            )
        )
        if ca is None:
            b = b.add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True).add_extension(
                x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
            )
        else:
            b = b.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True).add_extension(
                x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(LOOPBACK))]),
                critical=False,
            ).add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
            )
        return key, b.sign(issuer_key, hashes.SHA256()), subject

    ca_key, ca_cert, ca_name = issue("stdask test CA")
    write("ca", ca_key, ca_cert)
    key, cert, _ = issue("dask", (ca_key, ca_name))
    write("dask", key, cert)
    other_key, other_cert, other_name = issue("another CA")
    write("other-ca", other_key, other_cert)
    key, cert, _ = issue("intruder", (other_key, other_name))
    write("intruder", key, cert)
    return {n: str(d / n) for n in ("ca.pem", "dask.pem", "dask.key", "other-ca.pem", "intruder.pem", "intruder.key")}


def _pki_openssl(d: Path) -> dict[str, str]:
    """Same files with the openssl commands deploy/tls/README.md documents."""
    ext = d / "leaf.ext"
    ext.write_text(
        "basicConstraints=critical,CA:FALSE\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n"
        "extendedKeyUsage=serverAuth,clientAuth\n"
    )

    def run(*args):
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True, timeout=60)

    for ca, leaf in (("ca", "dask"), ("other-ca", "intruder")):
        run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", f"{ca}.key", "-out", f"{ca}.pem", "-days", "1", "-subj", f"/CN={ca}",
            "-addext", "basicConstraints=critical,CA:TRUE,pathlen:0",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature")
        run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", f"{leaf}.key", "-out", f"{leaf}.csr", "-subj", f"/CN={leaf}")
        run("x509", "-req", "-in", f"{leaf}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key", "-CAcreateserial",
            "-out", f"{leaf}.pem", "-days", "1", "-extfile", "leaf.ext")
    return {n: str(d / n) for n in ("ca.pem", "dask.pem", "dask.key", "other-ca.pem", "intruder.pem", "intruder.key")}


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory):
    pki = _write_pki(tmp_path_factory.mktemp("pki"))
    ca, cert, key = pki["ca.pem"], pki["dask.pem"], pki["dask.key"]
    sec = Security(
        tls_ca_file=ca,
        tls_scheduler_cert=cert, tls_scheduler_key=key,
        tls_worker_cert=cert, tls_worker_key=key,
        tls_client_cert=cert, tls_client_key=key,
        require_encryption=True,
    )
    cluster = LocalCluster(
        n_workers=1, threads_per_worker=1, processes=False, protocol="tls://", host=LOOPBACK,
        security=sec, dashboard_address=f"{LOOPBACK}:0",
    )
    yield cluster, pki
    cluster.close()


def test_tls_cluster_needs_the_right_certificates(tls_cluster):
    cluster, pki = tls_cluster
    address = cluster.scheduler_address
    assert address.startswith(f"tls://{LOOPBACK}:")
    expected = dask.compute(*_arrays(), scheduler="threads")

    # Right certificates, given as paths.
    client = cl.get_client(address, security=(pki["ca.pem"], pki["dask.pem"], pki["dask.key"]), timeout=10)
    _assert_same(cl.compute(*_arrays(), scheduler=client), expected)
    cl.shutdown()

    # Right certificates from dask config, the way a deployment configures it (deploy/tls).
    tls_config = {
        "distributed.comm.tls.ca-file": pki["ca.pem"],
        "distributed.comm.tls.client.cert": pki["dask.pem"],
        "distributed.comm.tls.client.key": pki["dask.key"],
    }
    with dask.config.set(tls_config), settings.override(scheduler=address):
        _assert_same(cl.compute(*_arrays()), expected)
    cl.shutdown()

    # No certificates: refused before any connection attempt, with a message that says what to set.
    with pytest.raises(ValueError, match="distributed.comm.tls.ca-file"):
        cl.get_client(address)

    # A certificate from a CA the cluster does not trust: the handshake fails.
    t0 = time.monotonic()
    with pytest.raises((OSError, TimeoutError)):
        cl.get_client(address, security=(pki["other-ca.pem"], pki["intruder.pem"], pki["intruder.key"]), timeout=3)
    # Trusting the cluster's CA does not help when the client's own certificate is not the CA's.
    with pytest.raises((OSError, TimeoutError)):
        cl.get_client(address, security=(pki["ca.pem"], pki["intruder.pem"], pki["intruder.key"]), timeout=3)
    # Plain TCP to the TLS port is refused too.
    with pytest.raises((OSError, TimeoutError)):
        cl.get_client(address.replace("tls://", "tcp://"), timeout=3)
    assert time.monotonic() - t0 < 30


# ---------------------------------------------------------------------------------------------
# compute and progress


def test_compute_results_do_not_depend_on_progress_or_path(two_clusters, capsys):
    a, _ = two_clusters
    expected = dask.compute(*_arrays(), scheduler="threads")
    for progress in (True, False):
        _assert_same(cl.compute(*_arrays(), scheduler=a.scheduler_address, progress=progress, desc="stats"), expected)
        shown = "100% Completed" in capsys.readouterr().out
        assert shown is progress  # distributed.progress text bar, only when asked
        _assert_same(cl.compute(*_arrays(), scheduler="threads", progress=progress), expected)
        _assert_same(cl.compute(*_arrays(), scheduler="sync", progress=progress), expected)
    with settings.override(progress=False):
        _assert_same(cl.compute(*_arrays(), scheduler=a.scheduler_address, progress=True), expected)
        assert "Completed" not in capsys.readouterr().out  # the global switch wins

    # Plain values and nested containers pass through as dask.compute returns them.
    x = da.arange(6, chunks=2)
    got = cl.compute(x.sum(), 7, [x.max(), "s"], scheduler=a.scheduler_address)
    assert got == dask.compute(x.sum(), 7, [x.max(), "s"], scheduler="sync") == (15, 7, [5, "s"])
    assert cl.compute(scheduler=a.scheduler_address) == ()

    # An error in a task surfaces as itself.
    def boom(block):
        raise ZeroDivisionError("in a task")

    with pytest.raises(ZeroDivisionError, match="in a task"):
        cl.compute(x.map_blocks(boom, dtype=x.dtype), scheduler=a.scheduler_address)


def test_tqdm_callback_counts_every_task():
    x = da.ones((100, 10), chunks=(10, 10))
    y = (x + 1).sum()
    n_tasks = len(y.__dask_graph__())
    buf = io.StringIO()
    with TqdmCallback(desc="ones", file=buf, delay=0, mininterval=0):
        assert y.compute(scheduler="threads") == 2000
    out = buf.getvalue()
    assert "ones" in out and "task" in out
    done = out.strip().split("\r")[-1]
    total = int(done.split("/")[1].split()[0].rstrip("[").strip("|"))
    assert 0 < total <= n_tasks and f"{total}/{total}" in done


def test_progress_bar_switches():
    assert list(progress_bar(range(5), desc="x")) == [0, 1, 2, 3, 4]
    assert not progress_bar(range(5), delay=0, file=io.StringIO()).disable
    assert progress_bar(range(1)).disable  # one item: nothing to watch
    with settings.override(progress=False):
        bar = progress_bar(range(5))
        assert bar.disable and list(bar) == [0, 1, 2, 3, 4]


def test_jupyter_gets_a_dashboard_link_and_a_fallback_bar(two_clusters, monkeypatch, capsys):
    """In a kernel the dashboard line is an HTML link; without ipywidgets the text bar is used."""
    import IPython.display

    shown = []
    monkeypatch.setattr(cl, "is_kernel", lambda: True)
    monkeypatch.setattr(IPython.display, "display", lambda *objs, **kw: shown.extend(objs))
    monkeypatch.setattr(cl, "_has_ipywidgets", lambda: False)
    _, b = two_clusters
    cl.get_client(b.scheduler_address)
    html = [o.data for o in shown if isinstance(o, IPython.display.HTML)]
    assert len(html) == 1 and '<a href="http://127.0.0.1:' in html[0] and b.scheduler_address in html[0]
    x = da.arange(100, chunks=10)
    assert cl.compute(x.sum(), scheduler=b.scheduler_address, desc="sum") == (4950,)
    assert "100% Completed" in capsys.readouterr().out
