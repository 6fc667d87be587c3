"""`avcil bench accuracy` as a user runs it: rows of methods over seeds, written as JSON, markdown and a plot."""

import json

from avcil.cli import main


def test_accuracy_bench_reports_mean_and_std_over_seeds(tmp_path, capsys):
    argv = ["bench", "accuracy", "--data", "synthetic", "--epochs", "1", "--seeds", "2", "--only", "analytic",
            "simplecil", "--out-dir", str(tmp_path)]
    assert main(argv) == 0
    report = json.loads((tmp_path / "accuracy-synthetic.json").read_text())
    rows = {r["method"]: r for r in report["rows"]}
    assert set(rows) == {"analytic", "simplecil"} and report["seeds"] == [42, 43]
    assert rows["analytic"]["mean_accuracy"]["n"] == 2 and rows["analytic"]["mean_accuracy"]["std"] >= 0
    # The analytic readout (random expansion + ridge) beats nearest-class-mean on the same pooled features.
    assert rows["analytic"]["mean_accuracy"]["mean"] > rows["simplecil"]["mean_accuracy"]["mean"]
    table = (tmp_path / "accuracy-synthetic.md").read_text()
    assert "| analytic |" in table and " ± " in table
    assert (tmp_path / "accuracy-synthetic.png").stat().st_size > 10_000
