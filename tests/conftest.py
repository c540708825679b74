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


#: the files that take longest (minutes each on this 2-core machine, measured with ``--durations``), run first:
#: ``make test`` hands whole files to its two workers in collection order, so a long file collected last
#: keeps one worker busy while the other has nothing left to do
FIRST = ("test_stague.py", "test_notebooks.py", "test_cci.py", "test_grid_bounds.py", "test_pp.py",
         "test_distributed.py", "test_run_cci.py", "test_impute.py", "test_spaseg.py", "test_front_door.py")


def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(FIRST)))  # stable: a file's own order is kept
