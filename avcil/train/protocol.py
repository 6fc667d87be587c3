"""The class-incremental protocol (REFERENCE.md §6): steps in class order, train, update memory, test on all
classes seen so far, and the metrics of the accuracy matrix."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from avcil.errors import InvalidInput
from avcil.data.clips import Benchmark
from avcil.model.head import FusionHead, HeadConfig
from avcil.train import metrics
from avcil.train.learner import Learner, StepReport, TrainConfig, fit_readout, predict
from avcil.train.config import DEFAULT_MEMORY_BUDGET
from avcil.model.memory import ExemplarMemory
from avcil.train.methods import Method


@dataclass
class ProtocolResult:
    head: FusionHead
    memory: ExemplarMemory | None
    results: dict


def check_steps(benchmark: Benchmark) -> list[tuple[int, int]]:
    """The learner appends classifier rows in class order, so each step must be the next run of classes."""
    ranges, start = [], 0
    for step in benchmark.steps:
        if list(step) != list(range(start, start + len(step))):
            raise InvalidInput(f"benchmark {benchmark.name}: step classes {step} are not the next {len(step)} "
                             f"classes in order after {start}")
        ranges.append((start, start + len(step)))
        start += len(step)
    return ranges


def run_protocol(benchmark: Benchmark, method: Method, config: TrainConfig,
                 memory_budget: int = DEFAULT_MEMORY_BUDGET, fusion_dim: int | None = None,
                 modality: str = "audio-visual", memory_precision: str = "fp16",
                 progress: bool = True) -> ProtocolResult:
    ranges = check_steps(benchmark)
    both = [t.name for t in method.terms if getattr(t, "needs_both_modalities", False)]
    if modality != "audio-visual" and both:
        raise InvalidInput(f"method {method.name} uses {', '.join(both)}, which need both modalities; with modality "
                         f"{modality!r} remove them (--without {','.join(both)}) or pick another method")
    if memory_budget < len(benchmark.class_names) and method.memory:
        ExemplarMemory(memory_budget).quota(len(benchmark.class_names))  # fails early with the budget message
    torch.manual_seed(config.seed)
    head = FusionHead(HeadConfig.for_shape(benchmark.shape, fusion_dim, modality))
    memory = ExemplarMemory(memory_budget, method.memory, memory_precision, config.seed) if method.memory else None
    learner = Learner(method, config, progress)
    train, val, test = (benchmark.splits[s] for s in ("train", "val", "test"))
    task_of_class = np.concatenate([np.full(e - s, t) for t, (s, e) in enumerate(ranges)])
    matrix: list[list[float | None]] = []
    step_accuracy: list[float] = []
    reports: list[StepReport] = []
    start = time.perf_counter()
    for step, (first, end) in enumerate(tqdm(ranges, desc=f"{method.name} on {benchmark.name}", unit="step",
                                             disable=not progress)):
        teacher = copy.deepcopy(head) if step > 0 else None
        head.add_classes(end - first)
        seen = list(range(end))
        train_idx = benchmark.indices("train", seen if method.joint else range(first, end))
        report = learner.learn_step(
            head, teacher, ranges[:step], train, train_idx, memory,
            val, benchmark.indices("val", seen), step_name=f"step {step}")
        reports.append(report)
        new_idx = benchmark.indices("train", range(first, end))
        if memory is not None:
            labels = train.labels
            memory.update(train, {c: new_idx[labels[new_idx] == c] for c in range(first, end)},
                          embed=fused_embedder(head, config))
        update_classifier(head, method, train, new_idx, memory, config)
        test_idx = benchmark.indices("test", seen)
        predictions = predict(head, test, test_idx, config)
        labels = test.labels[test_idx]
        step_accuracy.append(float((predictions == labels).mean()))
        matrix.append(metrics.task_accuracies(predictions, labels, task_of_class, step + 1)
                      + [None] * (len(ranges) - step - 1))
    results = {
        "method": method.name,
        "dataset": benchmark.name,
        "accuracy_matrix": matrix,
        **metrics.summarise(matrix, step_accuracy),
        "steps": [{"classes": list(range(s, e)), "best_epoch": r.best_epoch, "best_val_accuracy": r.best_val_accuracy,
                   "train_seconds": r.seconds, "train_clips_per_second": r.clips_per_second}
                  for (s, e), r in zip(ranges, reports)],
        "seconds": time.perf_counter() - start,
        "config": {"train": config.to_dict(), "method": method.describe(), "memory_budget": memory_budget,
                   "memory_precision": memory_precision, "fusion_dim": head.config.fusion_dim,
                   "modality": modality, "benchmark": {"name": benchmark.name, "steps": benchmark.steps,
                                                       "classes": len(benchmark.class_names),
                                                       "shape": benchmark.shape.to_dict()}},
    }
    return ProtocolResult(head, memory, results)


def update_classifier(head: FusionHead, method: Method, new_clips, new_indices, memory: ExemplarMemory | None,
                      config: TrainConfig) -> None:
    """After a step's training: bring the method's readout up to date (nothing for the linear classifier). NME is
    rebuilt from the exemplars; NCM and the analytic readout add the new classes' clips to what they hold."""
    if method.readout is None:
        return
    if method.readout_from_exemplars:
        exemplars = memory.as_clip_set()
        fit_readout(head, method.readout, exemplars, range(len(exemplars.labels)), config, fresh=True)
    else:
        fit_readout(head, method.readout, new_clips, new_indices, config)


def fused_embedder(head: FusionHead, config: TrainConfig | None = None):
    """The head's fused feature of clips, as numpy: what herding ranks exemplars by."""
    device = config.device if config is not None else "cpu"

    @torch.no_grad()
    def embed(audio: np.ndarray, visual: np.ndarray) -> np.ndarray:
        head.eval()
        return head.features(torch.from_numpy(audio).to(device), torch.from_numpy(visual).to(device)).fused.cpu().numpy()
    return embed
