"""The class-incremental protocol (docs/method.md#the-protocol-and-its-metrics): steps in class order, train,
update memory, test on all classes seen so far, and the metrics of the accuracy matrix."""

from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict, dataclass, replace
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from avcil.errors import InvalidInput
from avcil.data.clips import Benchmark
from avcil.model.head import FusionHead, HeadConfig, load_head
from avcil.model.encoders import audio_parts
from avcil.train import distributed, metrics
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
                 progress: bool = True, resume: dict | None = None,
                 on_step: Callable[[dict], None] | None = None) -> ProtocolResult:
    """`on_step(state)` after every step, with what `resume=state` needs to go on from the next step exactly as
    if the run had not stopped (each step seeds its own training; exemplar choice is seeded per class)."""
    ranges = check_steps(benchmark)
    _check_method(benchmark, method, memory_budget, modality)
    torch.manual_seed(config.seed)
    head = new_head(HeadConfig.for_shape(benchmark.shape, fusion_dim, modality,
                                         audio_parts(benchmark.profile, benchmark.shape.audio_dim)), method)
    memory = ExemplarMemory(memory_budget, method.memory, memory_precision, config.seed) if method.memory else None
    learner = Learner(method, config, progress)
    train, val, test = (benchmark.splits[s] for s in ("train", "val", "test"))
    task_of_class = np.concatenate([np.full(e - s, t) for t, (s, e) in enumerate(ranges)])
    matrix: list[list[float | None]] = []
    step_accuracy: list[float] = []
    reports: list[StepReport] = []
    record = {"train": config.to_dict(), "method": method.describe(), "memory_budget": memory_budget,
              "memory_precision": memory_precision, "fusion_dim": head.config.fusion_dim, "modality": modality,
              "benchmark": _benchmark_record(benchmark)}
    settings = _settings_key(record)
    done, earlier_seconds = 0, 0.0
    if resume is not None:
        head, memory, done, earlier_seconds = _restore(resume, settings, benchmark, method, matrix, step_accuracy,
                                                       reports)
    start = time.perf_counter()
    for step, (first, end) in enumerate(tqdm(ranges, desc=f"{method.name} on {benchmark.name}", unit="step",
                                             disable=not progress, initial=done)):
        if step < done:
            continue
        teacher = copy.deepcopy(head) if step > 0 else None
        head.add_classes(end - first)
        seen = list(range(end))
        train_idx = benchmark.indices("train", seen if method.joint else range(first, end))
        with distributed.current().guard(f"training step {step}"):  # a DDP all-reduce whose peer died
            report = learner.learn_step(
                head, teacher, ranges[:step], train, train_idx, memory,
                val, benchmark.indices("val", seen), step_name=f"step {step}")
        reports.append(report)
        new_idx = benchmark.indices("train", range(first, end))
        if memory is not None:
            labels = train.labels
            memory.update(train, {c: new_idx[labels[new_idx] == c] for c in range(first, end)},
                          embed=fused_embedder(head, config))
            distributed.current().agree({c: e.ids for c, e in memory.classes.items()}, f"the exemplars of step {step}")
        update_classifier(head, method, train, new_idx, memory, config)
        test_idx = benchmark.indices("test", seen)
        predictions = predict(head, test, test_idx, config)
        labels = test.labels[test_idx]
        step_accuracy.append(float((predictions == labels).mean()))
        matrix.append(metrics.task_accuracies(predictions, labels, task_of_class, step + 1)
                      + [None] * (len(ranges) - step - 1))
        if on_step is not None:
            on_step(_state(settings, step + 1, head, memory, matrix, step_accuracy, reports,
                           earlier_seconds + time.perf_counter() - start))
    results = {"method": method.name, "dataset": benchmark.name, "accuracy_matrix": matrix,
               **metrics.summarise(matrix, step_accuracy), "steps": _step_rows(ranges, reports),
               "seconds": earlier_seconds + time.perf_counter() - start, "config": record}
    return ProtocolResult(head, memory, results)


def new_head(config: HeadConfig, method: Method) -> FusionHead:
    """An untrained model for `method`: the fusion part where the method uses it (Method.uses_fusion), its readout
    installed later by `update_classifier`; else the method's readout alone, installed now, since it is all the
    model has."""
    if method.uses_fusion:
        return FusionHead(config)
    return FusionHead(replace(config, fusion=False, readout=method.readout))


def _check_method(benchmark: Benchmark, method: Method, memory_budget: int, modality: str) -> None:
    """Refuse, before any training, a method whose terms need a modality the run leaves out, or a memory budget
    too small for one exemplar per class."""
    both = [t.name for t in method.terms if getattr(t, "needs_both_modalities", False)]
    if modality != "audio-visual" and both:
        raise InvalidInput(f"method {method.name} uses {', '.join(both)}, which need both modalities; with modality "
                         f"{modality!r} remove them (--without {','.join(both)}) or pick another method")
    if memory_budget < len(benchmark.class_names) and method.memory:
        ExemplarMemory(memory_budget).quota(len(benchmark.class_names))  # fails early with the budget message


def _benchmark_record(benchmark: Benchmark) -> dict:
    return {"name": benchmark.name, "steps": benchmark.steps, "classes": len(benchmark.class_names),
            "shape": benchmark.shape.to_dict()}


def _step_rows(ranges: list[tuple[int, int]], reports: list[StepReport]) -> list[dict]:
    return [{"classes": list(range(s, e)), "best_epoch": r.best_epoch, "best_val_accuracy": r.best_val_accuracy,
             "train_seconds": r.seconds, "train_clips_per_second": r.clips_per_second}
            for (s, e), r in zip(ranges, reports)]


def _settings_key(record: dict) -> str:
    """What must match for a run to go on from another's state: all settings but where they run."""
    train = {k: v for k, v in record["train"].items() if k not in ("device", "num_workers")}
    return json.dumps({**record, "train": train}, sort_keys=True, default=str)


def _state(settings: str, steps_done: int, head: FusionHead, memory: ExemplarMemory | None, matrix: list,
           step_accuracy: list, reports: list[StepReport], seconds: float) -> dict:
    """Tensors and plain values only, so that it loads with torch.load(weights_only=True)."""
    arrays = memory.to_arrays() if memory is not None else {}
    return {"settings": settings, "steps_done": steps_done, "head_config": asdict(head.config),
            "num_classes": head.num_classes, "head": head.state_dict(),
            "memory": None if memory is None else {
                "settings": memory.settings(), "ids": [str(i) for i in arrays.get("ids", [])],
                **{k: torch.from_numpy(arrays[k]) for k in ("labels", "audio", "visual") if k in arrays}},
            "matrix": matrix, "step_accuracy": step_accuracy, "reports": [asdict(r) for r in reports],
            "seconds": seconds, "torch_rng": torch.get_rng_state()}  # the next step's new classifier rows draw from it


def _restore(state: dict, settings: str, benchmark: Benchmark, method: Method, matrix: list, step_accuracy: list,
             reports: list) -> tuple[FusionHead, ExemplarMemory | None, int, float]:
    if state["settings"] != settings:
        raise InvalidInput("the run's checkpoint was made with other settings (method, data or training flags); "
                           "rerun with those, or use another --out")
    # Matching settings: the run's method is the checkpoint's, and says whether it trains by gradient.
    head = load_head(state["head_config"], state["head"], state["num_classes"], bool(method.terms))
    memory = None
    if state["memory"] is not None:
        saved = state["memory"]
        arrays = {"ids": np.asarray(saved["ids"], dtype=str),
                  **{k: saved[k].numpy() for k in ("labels", "audio", "visual") if k in saved}}
        memory = ExemplarMemory.from_arrays(saved["settings"], arrays, benchmark.shape)
    matrix += state["matrix"]
    step_accuracy += state["step_accuracy"]
    reports += [StepReport(**r) for r in state["reports"]]
    torch.set_rng_state(state["torch_rng"])
    return head, memory, state["steps_done"], state["seconds"]


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
