"""`avcil demo`: the embedded default, offline and without a camera, on real content (AV-Digits, lite encoders).

1. Train a lite model on digits 0-7 of AV-Digits (the project's protocol, one step, `train_clips` training
   clips per digit, bf16 where the CPU has it: about 75 s on two cores).
2. Recognise test clips of those digits played through the real file sources, paced in real time, one decision
   per clip (window = hop = the lite window, each clip given that slot).
3. Learn digit 9 in the field from its training clip files (`learn_class`, as `avcil learn --files` does) while
   the recognizer stays up.
4. The recognizer picks the new version up by itself; recognise test clips of 9 and of the old digits.
Decisions go to OUT/decisions.jsonl; a summary to OUT/summary.json and the console.
"""

from __future__ import annotations

import csv
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from avcil.data.clips import Benchmark

OLD_DIGITS = [str(d) for d in range(8)]
NEW_DIGIT = "9"


@dataclass
class _Subset:
    """Some rows of a clip set, as a clip set."""

    parent: object
    rows: np.ndarray

    def __post_init__(self) -> None:
        self.ids = [self.parent.ids[i] for i in self.rows]
        self.labels = self.parent.labels[self.rows]
        self.shape = self.parent.shape

    def load(self, indices: Sequence[int]):
        return self.parent.load(self.rows[np.asarray(indices, dtype=np.int64)])


def first_classes(benchmark: Benchmark, count: int, train_clips: int) -> Benchmark:
    """The benchmark cut down to its first `count` classes in one step, with at most `train_clips` training clips
    per class (val and test whole)."""
    splits = {}
    for name, clips in benchmark.splits.items():
        rows = np.flatnonzero(clips.labels < count)
        if name == "train":
            rows = np.concatenate([rows[clips.labels[rows] == c][:train_clips] for c in range(count)])
        splits[name] = _Subset(clips, rows)
    return Benchmark(f"{benchmark.name}-first-{count}", benchmark.class_names[:count], [list(range(count))], splits,
                     benchmark.shape, benchmark.defaults, benchmark.profile)


def clip_files(csv_path: Path) -> dict[tuple[str, str], list[Path]]:
    """{(split, label): [video files]} of an AV-Digits build."""
    files: dict[tuple[str, str], list[Path]] = {}
    with open(csv_path, newline="") as f:
        for row in csv.DictReader(f):
            files.setdefault((row["split"], row["label"]), []).append(csv_path.parent / row["path"])
    return files


def _play(recognizer, files: list[Path], labels: list[str], slot_s: float, sink) -> list[dict]:
    """One decision per file (window = hop = slot); returns rows of expected and decided label."""
    from avcil.runtime.recognizer import run_live

    decisions: list[dict] = []

    def keep(decision: dict, window) -> None:
        decisions.append(decision)
        sink(decision, window)

    paths = ",".join(str(p) for p in files)
    run_live(recognizer, paths, paths, keep, hop=slot_s, slot_s=slot_s)
    return [{"file": str(f.name), "expected": e, "decided": d["label"], "score": d["score"],
             "latency_ms": d["latency_ms"]["total"], "model_version": d["model_version"]}
            for f, e, d in zip(files, labels, decisions)]


def run_demo(out: str | Path, cache: str | Path | None = None, epochs: int = 12, clips_per_class: int = 2,
             train_clips: int = 40) -> dict:
    from avcil.data.avdigits import build_av_digits
    from avcil.data.benchmarks import av_digits_benchmark, default_cache
    from avcil.model.encoders import profile_from_record
    from avcil.runtime.field import FieldSettings, encode_files, learn_class
    from avcil.runtime.recognizer import DecisionWriter, Recognizer
    from avcil.runtime.windows import window_seconds
    from avcil.train.learner import TrainConfig
    from avcil.train.methods import build_method
    from avcil.train.protocol import run_protocol
    from avcil.train.run import write_run

    out, cache = Path(out), Path(cache) if cache else default_cache()
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    say = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731

    say("1/4 AV-Digits and its lite features (built once, then cached) ...")
    benchmark = av_digits_benchmark(cache)
    files = clip_files(build_av_digits(cache / "av-digits"))
    old = first_classes(benchmark, len(OLD_DIGITS), train_clips)
    say(f"    training a lite model on digits {', '.join(OLD_DIGITS)} ({train_clips} clips each) ...")
    outcome = run_protocol(old, build_method("avcil", instance_weight=0.5),
                           TrainConfig(epochs=epochs, batch_size=64, exemplar_batch_size=64, precision="auto"),
                           memory_budget=100, fusion_dim=256)
    model_dir = write_run(out / "train", old, outcome)["model"]
    say(f"    test accuracy on digits 0-7 (features): {outcome.results['step_accuracy'][-1] * 100:.1f} %")

    profile = profile_from_record(benchmark.profile)
    slot = window_seconds(profile.audio_prep)
    recognizer = Recognizer(model_dir, "torch", profile=profile, threshold=0.0, smoothing=1)
    writer = DecisionWriter(out / "decisions.jsonl", console=sys.stdout)
    try:
        say(f"2/4 live recognition of {clips_per_class} test clips per digit 0-7, paced in real time "
            f"({slot:.0f} s each) ...")
        old_tests = [(d, p) for d in OLD_DIGITS for p in files[("test", d)][:clips_per_class]]
        before = _play(recognizer, [p for _, p in old_tests], [d for d, _ in old_tests], slot, writer)

        say(f"3/4 learning digit {NEW_DIGIT} in the field from {train_clips} of its training clips (the "
            f"recognizer stays up) ...")
        features = encode_files(profile, files[("train", NEW_DIGIT)][:train_clips])
        learnt = learn_class(model_dir, NEW_DIGIT, *features, FieldSettings())  # as `avcil learn` does
        deadline = time.monotonic() + 10
        while recognizer.version != learnt["version"] and time.monotonic() < deadline:
            time.sleep(0.1)  # the recognizer's watcher swaps the new head in by itself

        say(f"4/4 live recognition with {recognizer.version}: test clips of {NEW_DIGIT} and of the old digits ...")
        new_tests = [(NEW_DIGIT, p) for p in files[("test", NEW_DIGIT)][:2 * clips_per_class]]
        new_tests += [(d, files[("test", d)][clips_per_class]) for d in OLD_DIGITS]
        after = _play(recognizer, [p for _, p in new_tests], [d for d, _ in new_tests], slot, writer)
    finally:
        writer.close()
        recognizer.close()

    def accuracy(rows: list[dict], digits: Sequence[str]) -> float | None:
        chosen = [r for r in rows if r["expected"] in digits]
        return sum(r["decided"] == r["expected"] for r in chosen) / len(chosen) if chosen else None

    summary = {
        "model": str(model_dir), "learnt": learnt,
        "before": {"old_digits_accuracy": accuracy(before, OLD_DIGITS), "decisions": before},
        "after": {"new_digit_accuracy": accuracy(after, [NEW_DIGIT]),
                  "old_digits_accuracy": accuracy(after, OLD_DIGITS), "decisions": after},
        "test_split_accuracy": {"old_digits": accuracy_on_test_split(model_dir, benchmark, OLD_DIGITS),
                                "new_digit": accuracy_on_test_split(model_dir, benchmark, [NEW_DIGIT])},
        "decision_latency_ms_p95": float(np.percentile([r["latency_ms"] for r in before + after], 95)),
        "seconds": round(time.perf_counter() - started, 1),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    split = summary["test_split_accuracy"]
    print(f"\nbefore learning: digits 0-7 recognised on {_pct(summary['before']['old_digits_accuracy'])} of "
          f"{len(before)} live clips\n"
          f"learnt digit {NEW_DIGIT} in {learnt['seconds']:.1f} s ({learnt['parent']} -> {learnt['version']})\n"
          f"after learning: digit {NEW_DIGIT} recognised on {_pct(summary['after']['new_digit_accuracy'])} of its "
          f"live clips, old digits on {_pct(summary['after']['old_digits_accuracy'])}\n"
          f"on all test clips (features): digits 0-7 {_pct(split['old_digits'][learnt['parent']])} before, "
          f"{_pct(split['old_digits'][learnt['version']])} after; digit {NEW_DIGIT} "
          f"{_pct(split['new_digit'][learnt['version']])}\n"
          f"decision latency p95 {summary['decision_latency_ms_p95']:.0f} ms; {summary['seconds']:.0f} s in all; "
          f"decisions in {out / 'decisions.jsonl'}")
    return summary


def accuracy_on_test_split(model_dir: Path, benchmark: Benchmark, digits: Sequence[str]) -> dict[str, float]:
    """Per version of the model dir, its accuracy on every test clip of `digits` from the cached features: the
    stable figure beside the few clips played live."""
    import torch

    from avcil.runtime.modeldir import ModelDir

    test = benchmark.splits["test"]
    names = np.asarray(benchmark.class_names)[test.labels]
    rows = np.flatnonzero(np.isin(names, list(digits)))
    audio, visual = (torch.from_numpy(x) for x in test.load(rows))
    model, result = ModelDir(model_dir), {}
    for version in model.list_versions():
        loaded = model.load(version, with_memory=False)
        with torch.no_grad():
            decided = loaded.head.eval()(audio, visual).logits.argmax(dim=1).numpy()
        result[version] = float(np.mean(np.asarray(loaded.class_names)[decided] == names[rows]))
    return result


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.0f} %"
