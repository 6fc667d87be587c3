"""How each version of a model dir decides a benchmark's test clips, from the cached features: the stable figure
beside the few clips the demo and the field benchmarks play live."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from avcil.data.clips import Benchmark
from avcil.modeldir import ModelDir


def split_decisions(model_dir: Path, version: str, benchmark: Benchmark,
                   classes: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(expected, decided) class names of every test clip of `classes`, by one version of the model dir, from the
    cached features: the stable figure beside the few clips played live."""
    import torch

    test = benchmark.splits["test"]
    names = np.asarray(benchmark.class_names)[test.labels]
    rows = np.flatnonzero(np.isin(names, list(classes)))
    audio, visual = (torch.from_numpy(x) for x in test.load(rows))
    loaded = ModelDir(model_dir).load(version, with_memory=False)
    with torch.no_grad():
        decided = loaded.head.eval()(audio, visual).logits.argmax(dim=1).numpy()
    return names[rows], np.asarray(loaded.class_names)[decided]


def split_accuracy(model_dir: Path, version: str, benchmark: Benchmark, classes: Sequence[str]) -> float:
    expected, decided = split_decisions(model_dir, version, benchmark, classes)
    return float(np.mean(expected == decided))


def accuracy_on_test_split(model_dir: Path, benchmark: Benchmark, classes: Sequence[str]) -> dict[str, float]:
    """Per version of the model dir, its accuracy on every test clip of `classes`."""
    return {v: split_accuracy(model_dir, v, benchmark, classes) for v in ModelDir(model_dir).list_versions()}


def old_clips_taken(model_dir: Path, benchmark: Benchmark, old: Sequence[str], new: str) -> float:
    """The share of the old classes' test clips that the current version decides as the new class."""
    _, decided = split_decisions(model_dir, ModelDir(model_dir).current(), benchmark, old)
    return float(np.mean(decided == new))
