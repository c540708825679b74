"""stdask.report.cci_report: the results folder (every listed file present and non-empty, atomic), the CLI."""
from __future__ import annotations

import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from stdask import cli  # noqa: E402
from stdask.report import cci_report  # noqa: E402
from test_pl import LABEL, REF, build_reference_adata, build_reference_store  # noqa: E402

FIGURES = ["lr_diagnostic_plots", "lr_significant_scatter", "lr_significant_bar", "celltype_lr_diagnostic_plots",
           f"CCI_network_plots_{LABEL}_all", f"CCI_chord_plots_{LABEL}_all", "CCI_heatmap_plots",
           f"CCI_map_{LABEL}_all", f"{LABEL}_spatial"]
TABLES = ["lr_summary.tsv", "lrfeatures.tsv", f"lr_cci_{LABEL}.tsv", f"lr_cci_raw_{LABEL}.tsv"]


def listed_files(folder: Path) -> list[str]:
    text = (folder / "README.md").read_text()
    return re.findall(r"`([^`\s]+\.(?:png|pdf|tsv))`", text)


def check_folder(folder: Path, top_lr: str) -> None:
    assert folder.is_dir() and (folder / "README.md").stat().st_size > 0
    listed = listed_files(folder)
    names = set(listed)
    for stem in FIGURES + [f"hotspot_{top_lr}", f"CCI_network_plots_{LABEL}_{top_lr}",
                           f"CCI_chord_plots_{LABEL}_{top_lr}"]:
        assert f"{stem}.png" in names and f"{stem}.pdf" in names, stem
    for t in TABLES + [f"per_lr/{top_lr}.tsv"]:
        assert t in names, t
    for name in listed:
        assert (folder / name).is_file() and (folder / name).stat().st_size > 0, name
    on_disk = {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}
    assert on_disk == names | {"README.md", ".stdask-report.json"}  # the README describes every file (and the marker)
    assert not [p for p in folder.parent.iterdir() if ".stdask-tmp-" in p.name]


@pytest.fixture(scope="module")
def adata():
    return build_reference_adata()


def test_report_from_stlearn_anndata(adata, tmp_path):
    out = cci_report(adata, tmp_path / "cci_report", n_top_lrs=1, verbose=False)
    top = adata.uns["lr_summary"].index[0]
    check_folder(out, top)
    summ = pd.read_csv(out / "lr_summary.tsv", sep="\t", index_col=0)
    assert list(summ.index) == list(adata.uns["lr_summary"].index)
    assert np.array_equal(summ["n_spots_sig"], adata.uns["lr_summary"]["n_spots_sig"])
    # the per-LR table is stLearn's run_cci result for that LR
    ref = pd.read_csv(REF / "per_lr_cci_cell_type_long.csv.gz")
    ref = ref[ref["lr"] == top].drop(columns="lr").reset_index(drop=True)
    got = pd.read_csv(out / "per_lr" / f"{top}.tsv", sep="\t")
    pd.testing.assert_frame_equal(got, ref, check_dtype=False)
    m = pd.read_csv(out / f"lr_cci_{LABEL}.tsv", sep="\t", index_col=0)
    assert np.array_equal(m.to_numpy(), adata.uns[f"lr_cci_{LABEL}"].to_numpy())
    with pytest.raises(FileExistsError, match="overwrite"):
        cci_report(adata, out, n_top_lrs=1, verbose=False)


def test_report_is_atomic(adata, tmp_path, monkeypatch):
    from stdask import pl

    def boom(*a, **k):
        raise RuntimeError("interrupted")

    monkeypatch.setattr(pl, "lr_diagnostics", boom)
    with pytest.raises(RuntimeError, match="interrupted"):
        cci_report(adata, tmp_path / "r", n_top_lrs=1, verbose=False)
    assert list(tmp_path.iterdir()) == []  # neither the folder nor a temporary sibling


def test_report_without_run_cci_results(adata, tmp_path):
    lr_only = adata.copy()
    for k in [k for k in lr_only.uns if "cci_" in k]:
        del lr_only.uns[k]
    lr_only.uns["lr_summary"] = lr_only.uns["lr_summary"][["n_spots", "n_spots_sig", "n_spots_sig_pval"]]
    del lr_only.uns["lrfeatures"]
    out = cci_report(lr_only, tmp_path / "lr_only", n_top_lrs=0, verbose=False)
    names = set(listed_files(out))
    assert names == {"lr_summary.tsv", "lr_significant_scatter.png", "lr_significant_scatter.pdf",
                     "lr_significant_bar.png", "lr_significant_bar.pdf"}
    assert "run_cci" in (out / "README.md").read_text()
    with pytest.raises(KeyError, match="run_cci"):
        cci_report(lr_only, tmp_path / "x", use_label=LABEL, verbose=False)


def test_cli_report_on_a_store(adata, tmp_path, capsys):
    store = tmp_path / "ref.zarr"
    build_reference_store(adata, store)
    out = tmp_path / "from_cli"
    assert cli.main(["report", str(store), str(out), "--n-top", "1", "--use-label", LABEL]) == 0
    check_folder(out, adata.uns["lr_summary"].index[0])
    # a second run refuses to replace the folder unless asked
    assert cli.main(["report", str(store), str(out), "--n-top", "1"]) == 2
    assert "overwrite" in capsys.readouterr().err
