"""The notebooks execute cleanly on small data (so they never rot), and are stored without outputs."""
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK_DIR = Path(__file__).parent.parent / "notebooks"
#: every notebook we ship; a renamed or deleted one fails here instead of silently dropping out of the run
EXPECTED = ("01_quickstart.ipynb", "02_stereo_seq_out_of_core.ipynb", "03_spaseg.ipynb", "04_stague.ipynb",
            "05_impute.ipynb")
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))


def test_every_shipped_notebook_is_tested():
    assert set(EXPECTED) <= {p.name for p in NOTEBOOKS}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_is_stored_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    dirty = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and (c.outputs or c.execution_count)]
    assert not dirty, f"{path.name}: clear the outputs of cells {dirty} before committing"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_checks_what_it_computes(path):
    """A notebook that runs without error can still compute nonsense: each one asserts properties of its results
    (shapes, keys, a planted truth recovered), so test_notebook_runs fails when they stop holding."""
    nb = nbformat.read(path, as_version=4)
    checking = [c for c in nb.cells if c.cell_type == "code"
                and any(line.lstrip().startswith("assert ") for line in c.source.splitlines())]
    assert len(checking) >= 4, f"{path.name}: only {len(checking)} code cells assert anything"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path, monkeypatch):
    monkeypatch.setenv("STDASK_NB_N_OBS", "1500")
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)  # the notebooks run on the embedded default
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
