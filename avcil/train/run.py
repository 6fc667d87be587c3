"""`avcil train`: one protocol run from data to RUN/results.json, RUN/accuracy.png and RUN/model/."""

from __future__ import annotations

import json
from pathlib import Path

from avcil.data.clips import Benchmark
from avcil.modeldir import ModelDir
from avcil.train.plots import plot_run
from avcil.train.protocol import ProtocolResult


def write_run(out: Path, benchmark: Benchmark, outcome: ProtocolResult) -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results = outcome.results
    (out / "results.json").write_text(json.dumps(results, indent=2))
    plot_run(results, out / "accuracy.png")
    step_of_class = {c: s for s, step in enumerate(benchmark.steps) for c in step}
    classes = [{"name": name, "step": step_of_class[c]} for c, name in enumerate(benchmark.class_names)]
    version = ModelDir(out / "model").commit(
        outcome.head, outcome.memory, classes,
        features={"shape": benchmark.shape.to_dict(), "profile": benchmark.profile},
        extra={"training": {"method": results["config"]["method"], "train": results["config"]["train"],
                            "dataset": benchmark.name}})
    return {"results": out / "results.json", "plot": out / "accuracy.png", "model": out / "model", "version": version}
