"""`avcil train`: one protocol run from data to RUN/results.json, RUN/accuracy.png and RUN/model/; while it runs,
RUN/checkpoint.pt holds the state after the last finished step, so that a rerun of a run that stopped (a crash, a
rank that died under torchrun) goes on from there. It is removed once the run is written."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from avcil.data.clips import Benchmark
from avcil.errors import InvalidInput
from avcil.fileio import atomic_file
from avcil.modeldir import ModelDir
from avcil.train.plots import plot_run
from avcil.train.protocol import ProtocolResult


CHECKPOINT = "checkpoint.pt"


def save_checkpoint(out: Path, state: dict) -> None:
    Path(out).mkdir(parents=True, exist_ok=True)
    with atomic_file(Path(out) / CHECKPOINT) as f:
        torch.save(state, f)


def load_checkpoint(out: Path) -> dict | None:
    """The state a stopped run left in RUN, or None."""
    path = Path(out) / CHECKPOINT
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - truncated or foreign: say which file, never a traceback
        raise InvalidInput(f"{path}: unreadable checkpoint ({type(e).__name__}); delete it to train from the start")


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
    (out / CHECKPOINT).unlink(missing_ok=True)
    return {"results": out / "results.json", "plot": out / "accuracy.png", "model": out / "model", "version": version}
