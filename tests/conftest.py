"""Test-suite hygiene shared by every test module."""
from __future__ import annotations

import dask
import pytest


@pytest.fixture(autouse=True)
def _no_dangling_distributed_default():
    """A test that opens a default ``Client`` inside a ``dask.config.set`` block can leave dask's global
    ``scheduler`` pointing at ``dask.distributed`` after the client closed (the two contexts exit out of
    order), and a later plain ``dask.compute`` then fails with "no Client active". Reset it between tests."""
    yield
    if dask.config.get("scheduler", None) == "dask.distributed":
        from distributed import Client

        try:
            Client.current(allow_global=True)
        except ValueError:
            dask.config.set(scheduler=None)


@pytest.fixture(scope="module")
def quiet_progress():
    """Progress bars off for a test module (its module-level fixtures included); restored afterwards."""
    from stdask.settings import settings

    old = settings.progress
    settings.progress = False
    yield
    settings.progress = old
