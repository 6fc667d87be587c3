"""`avcil bench gpu` and scripts/gpu-check.sh: the script's dry run here (the same steps on the CPU, the bench with
--dry-run) checks that every command and flag it names exists and that the report has its schema; the tests
marked `cuda` run the CUDA paths on a GPU and skip here."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from avcil.bench.gpu import ROW_KEYS, targets
from avcil.cli import main

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = [ROOT / "scripts" / "gpu-check.sh", ROOT / "scripts" / "gpu-wheels.sh"]
STATUSES = {"ok", "skipped", "error"}
DRY_REPORT = "gpu-dry-run-cpu"  # a dry run's report name, under --out


def read_report(folder: Path, name: str) -> dict:
    report = json.loads((folder / f"{name}.json").read_text())
    for row in report["rows"]:
        assert set(ROW_KEYS) | {"p50_ms", "p95_ms", "clips_per_s", "status"} <= set(row), row
        assert row["status"] in STATUSES and row["encoder"] in {"audio", "visual", "head", "extract"}
        assert (row["status"] == "ok") == (row["clips_per_s"] is not None), row
    return report


def rows_where(report: dict, **match) -> list[dict]:
    return [r for r in report["rows"] if all(r[k] == v for k, v in match.items())]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_are_valid_bash(script):
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.fixture(scope="module")
def dry_check(tmp_path_factory):
    """scripts/gpu-check.sh with DRY_RUN=1, its results and log in a temporary $OUT."""
    out = tmp_path_factory.mktemp("gpu-check")
    env = {**os.environ, "DRY_RUN": "1", "OUT": str(out), "PYTHON": sys.executable}
    result = subprocess.run(["bash", str(SCRIPTS[0])], capture_output=True, text=True, env=env, timeout=300, cwd="/")
    return result, out


def test_gpu_check_dry_run_runs_every_step(dry_check):
    result, out = dry_check
    log = (out / "gpu-check.log").read_text()
    assert result.returncode == 0, log[-3000:]
    steps = [line for line in log.splitlines() if line.startswith("== ")]
    assert [s.rsplit(" (", 1)[0] for s in steps] == ["== the GPU", "== packages", "== tests that need CUDA (pytest -m cuda)",
                                                 "== avcil bench gpu", "== done, exit 0"]
    # `-m cuda` selects the GPU tests of every file it names, this one's among them.
    for test in ("test_torch_cuda_graph_and_fp16_match_eager", "test_engine_build_runs_and_matches_torch",
                 "test_every_cuda_path_runs_on_the_tiny_profile"):
        assert test in log


def test_dry_run_report_has_every_row_and_the_schema(dry_check):
    _, out = dry_check
    report = read_report(out, DRY_REPORT)
    assert report["dry_run"] is True and report["gpu"]["device"] == "cpu" and "torch" in report["machine"]
    assert report["settings"]["attention"] == {"tiny audio": "sdpa", "tiny visual": "sdpa"}
    assert not rows_where(report, status="error"), rows_where(report, status="error")
    for encoder in ("audio", "visual"):
        for batch in (1, 2):
            assert {r["precision"] for r in rows_where(report, encoder=encoder, path="eager", batch=batch,
                                                       status="ok")} == {"fp32", "bf16"}
            # fp16 weights, CUDA graphs and torch.compile are CUDA paths: listed, skipped, saying so.
            for path in ("backend", "backend-graph"):
                assert [r["note"] for r in rows_where(report, encoder=encoder, path=path, batch=batch)] == ["CUDA only"]
        assert rows_where(report, encoder=encoder, path="compile", status="skipped")
    head = rows_where(report, encoder="head", status="ok")
    assert {r["precision"] for r in head} == {"fp32", "bf16"} and all(r["batch"] == 8 for r in head)
    extract = {r["path"]: r for r in rows_where(report, encoder="extract")}
    assert set(extract) == {"decode", "encode", "pipeline"}
    if shutil.which("ffmpeg"):
        assert all(r["status"] == "ok" for r in extract.values()), extract
        assert extract["pipeline"]["bound_by"] in ("decode", "encode") and extract["decode"]["workers"] == 2
    assert [t["met"] for t in report["targets"]] == [None] * 4  # tiny sizes: no target is measured
    markdown = (out / f"{DRY_REPORT}.md").read_text()
    assert "DRY RUN" in markdown and "| profile | encoder | path | precision | batch | p50 (ms)" in markdown
    assert (out / f"{DRY_REPORT}.png").stat().st_size > 0


def test_a_spent_budget_skips_the_rows_it_has_no_time_for(tmp_path, capsys):
    assert main(["bench", "gpu", "--dry-run", "--budget-s", "0", "--out", str(tmp_path)]) == 0
    report = read_report(tmp_path, DRY_REPORT)
    measured = [r for r in report["rows"] if r["note"] != "CUDA only"]
    assert measured and all(r["status"] == "skipped" and r["note"].startswith("budget") for r in measured)
    assert "0 rows measured" in capsys.readouterr().out


def test_targets_take_the_best_row_and_say_what_was_not_measured():
    def row(encoder, path, precision, batch, p50, clips, **extra):
        return {"profile": "paper", "encoder": encoder, "path": path, "precision": precision, "batch": batch,
                "p50_ms": p50, "clips_per_s": clips, "status": "ok", **extra}

    rows = [row("visual", "eager", "fp16", 1, 6.0, 166.0), row("visual", "backend-graph", "fp16", 1, 3.5, 285.0),
            row("visual", "eager", "fp32", 1, 2.0, 500.0),  # fp32 does not count for the fp16 target
            row("audio", "eager", "fp16", 1, 2.5, 400.0), row("head", "train-step", "bf16", 256, 100.0, 2560.0),
            {**row("extract", "pipeline", "fp32", 16, None, 30.0, bound_by="encode")}]
    goals = {g["target"].split(" ")[0]: g for g in targets(rows)}
    assert goals["VideoMAE-base"]["value"] == 3.5 and goals["VideoMAE-base"]["met"] is True
    assert goals["AudioMAE"]["met"] is False and goals["head"]["met"] is True
    assert goals["paper"]["value"] == "encode" and goals["paper"]["met"] is False
    assert [g["met"] for g in targets([])] == [None] * 4


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")
def test_every_cuda_path_runs_on_the_tiny_profile(tmp_path):
    # torch.compile is left to the bench's own run (last, within its budget): compiling takes a minute.
    assert main(["bench", "gpu", "--profiles", "tiny", "--batches", "1,2", "--clips", "4", "--warmup", "1",
                 "--iterations", "3", "--no-compile", "--budget-s", "100", "--out", str(tmp_path)]) == 0
    (path,) = tmp_path.glob("gpu-cuda-*.json")
    report = read_report(tmp_path, path.stem)
    assert report["gpu"]["name"] and report["gpu"]["torch_cuda"]
    assert set(report["settings"]["attention"].values()) == {"sdpa"}
    for encoder in ("audio", "visual"):
        for path_name in ("eager", "backend", "backend-graph"):
            rows = rows_where(report, encoder=encoder, path=path_name)
            assert rows and all(r["status"] == "ok" and r["peak_cuda_mib"] > 0 for r in rows), rows
    assert {r["precision"] for r in rows_where(report, encoder="head", status="ok")} == {"fp32", "bf16", "fp16"}
    extract = rows_where(report, encoder="extract")
    if shutil.which("ffmpeg"):
        assert [r["status"] for r in extract] == ["ok"] * 3, extract
    else:
        assert "ffmpeg" in extract[0]["note"]
