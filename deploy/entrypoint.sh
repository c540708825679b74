#!/bin/sh
# Entrypoint of the stdask image: the first argument picks the role.
#
#   scheduler [dask scheduler options]   scheduler on :8786, dashboard on :8787
#   worker    [dask worker options]      worker of the scheduler at $DASK_SCHEDULER_ADDRESS
#   jupyter   [jupyter lab options]      JupyterLab on :8888 (token: $JUPYTER_TOKEN, else printed)
#   anything else                        run as given: `stdask ingest ...`, `python x.py`, `bash`,
#                                        `dask-scheduler ...` / `dask-worker ...` (Helm chart, gateway)
#
# Settings (environment):
#   DASK_SCHEDULER_ADDRESS   worker: scheduler to join; jupyter: where stdask computes
#   STDASK_PROTOCOL          scheduler: tcp (default) or tls (certificates from dask config, see deploy/tls)
#   STDASK_WORKER_NTHREADS   worker: threads (default: the container's CPU limit, as dask counts it)
#   STDASK_WORKER_MEMORY     worker: memory limit, e.g. 14GiB (default: auto = the container's limit)
#   DASK_WORKER_NAME         worker: name shown on the dashboard (set by the dask Kubernetes operator)
#   DASK_*                   any dask config, e.g. DASK_DISTRIBUTED__COMM__TLS__CA_FILE
set -eu

role="${1:-jupyter}"
[ "$#" -gt 0 ] && shift

case "$role" in
  scheduler)
    exec dask scheduler \
      --host 0.0.0.0 --port 8786 \
      --protocol "${STDASK_PROTOCOL:-tcp}" \
      --dashboard-address :8787 \
      "$@"
    ;;
  worker)
    : "${DASK_SCHEDULER_ADDRESS:?set DASK_SCHEDULER_ADDRESS to the scheduler, e.g. tcp://scheduler:8786}"
    # The optional flags expand to nothing when their variable is unset.
    # shellcheck disable=SC2086
    exec dask worker "$DASK_SCHEDULER_ADDRESS" \
      ${STDASK_WORKER_NTHREADS:+--nthreads $STDASK_WORKER_NTHREADS} \
      --memory-limit "${STDASK_WORKER_MEMORY:-auto}" \
      ${DASK_WORKER_NAME:+--name $DASK_WORKER_NAME} \
      --dashboard-address :8788 \
      "$@"
    ;;
  jupyter)
    exec jupyter lab --ip 0.0.0.0 --port 8888 --no-browser \
      --ServerApp.root_dir=/data \
      "$@"
    ;;
  *)
    exec "$role" "$@"
    ;;
esac
