"""`stdask demo` (what `make demo` runs) produces its results folder, with counts preserved end to end."""
import json

from stdask.cli import main


def test_demo_end_to_end(tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", str(out), "--n-obs", "1500"]) == 0
    run = json.loads((out / "run.json").read_text())
    for name, c in run["checks"].items():
        assert c["store_total_counts"] == c["generator_total_counts"], name
    readme = (out / "README.md").read_text()
    listed = [line.split("`")[1] for line in readme.splitlines() if line.startswith("- `")]
    assert "lr_summary.tsv" in listed and len(listed) > 8
    for name in listed:
        assert (out / name.rstrip("/")).exists(), name
    report = (out / "cci_report" / "README.md").read_text()
    for name in ("lr_summary.tsv", "lr_diagnostic_plots.png", "CCI_heatmap_plots.pdf"):
        assert name in report and (out / "cci_report" / name).stat().st_size > 0, name
    for png in out.glob("*.png"):
        assert png.stat().st_size > 5_000
