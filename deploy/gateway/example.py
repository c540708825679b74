"""Run stdask on a cluster started through dask-gateway.

    python deploy/gateway/example.py --gateway https://gateway.example.org STORE.zarr [--workers 8]

dask-gateway starts a scheduler and workers (in the stdask image, if the gateway offers an ``image``
option) and hands back a ``distributed.Client`` that already carries the TLS credentials the gateway
made for this cluster. stdask is given that client, then computes on it like on any other cluster.

Needs ``pip install dask-gateway`` (same version as the gateway server) where this script runs; the
image has it. Authentication follows the gateway's configuration (``gateway.auth`` in dask config,
e.g. ``jupyterhub`` inside a JupyterHub, ``kerberos``, ``basic``). See README.md next to this file.
"""
from __future__ import annotations

import argparse

import numpy as np

import stdask
import stdask.cluster


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("store", help="a stdask store (zarr) that the workers can read at this path")
    parser.add_argument("--gateway", help="gateway address (default: dask config gateway.address)")
    parser.add_argument("--workers", type=int, default=4, help="workers to start (default: 4)")
    parser.add_argument("--image", help="container image, if the gateway offers an `image` option")
    parser.add_argument("--worker-cores", type=int, help="if the gateway offers `worker_cores`")
    parser.add_argument("--worker-memory", type=float, help="GiB, if the gateway offers `worker_memory`")
    args = parser.parse_args()

    from dask_gateway import Gateway  # imported here: only this example needs dask-gateway

    gateway = Gateway(args.gateway) if args.gateway else Gateway()
    # Cluster options are whatever the gateway's administrator exposed; set only those offered.
    options = gateway.cluster_options()
    for name, value in (("image", args.image), ("worker_cores", args.worker_cores),
                        ("worker_memory", args.worker_memory)):
        if value is not None:
            if name not in options:
                parser.error(f"this gateway offers no {name!r} option; it offers {sorted(options)}")
            options[name] = value

    # shutdown_on_close: the cluster stops when this script ends, even on an error.
    with gateway.new_cluster(options, shutdown_on_close=True) as cluster:
        cluster.scale(args.workers)
        client = cluster.get_client()  # a distributed.Client, also made dask's default client
        # Hand the client to stdask. Because it is dask's default client, every later stdask call
        # in this process (stdask.cluster.compute, dataset methods) runs on it without this line;
        # passing it makes the choice explicit and prints the dashboard link.
        stdask.cluster.get_client(client)
        client.wait_for_workers(1, timeout=600)

        ds = stdask.read(args.store)
        print(ds)
        # Counts per observation, computed tile group by tile group on the gateway's workers.
        per_obs = ds.X.map_blocks(_row_totals, drop_axis=1, dtype="float64", meta=np.empty(0))
        total, top = stdask.cluster.compute(per_obs.sum(), per_obs.max(), desc="counts per observation")
        print(f"{args.store}: {ds.n_obs} observations, {total:.0f} counts, at most {top:.0f} in one")


def _row_totals(block) -> np.ndarray:
    """(rows,) float64 sums of a CSR block's rows. Module-level so it pickles to the workers."""
    return np.asarray(block.sum(axis=1), dtype=np.float64).ravel()


if __name__ == "__main__":
    main()
