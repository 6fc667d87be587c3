"""`avcil demo`: the embedded default, offline and without a camera, on real content (AV-Digits, lite encoders).

1. Train a lite model on digits 0-8 of AV-Digits with the default method (the project's protocol, one step,
   `train_clips` training clips per digit; the analytic method trains in seconds).
2. Recognise test clips of those digits played through the real file sources, paced in real time, one decision
   per clip (window = hop = the lite window, each clip given that slot).
3. Learn digit 9 in the field from its training clip files (`learn_class`, as `avcil learn --files` does) while
   the recognizer stays up.
4. The recognizer picks the new version up by itself; recognise test clips of 9 and of the old digits.
Decisions go to OUT/decisions.jsonl; a summary to OUT/summary.json (accuracy on every test clip from the features
before and after, the live clips, learning time, decision latency) and the console; OUT/confusion.png shows the
confusion matrices before and after learning, side by side.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from avcil.data.clips import Benchmark
from avcil.modeldir import ModelDir

OLD_DIGITS = [str(d) for d in range(9)]
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


def run_demo(out: str | Path, cache: str | Path | None = None, epochs: int = 12, clips_per_class: int = 1,
             train_clips: int = 40, method: str | None = None) -> dict:
    from avcil.data.avdigits import build_av_digits
    from avcil.train.benchmarks import av_digits_benchmark, default_cache
    from avcil.model.encoders import profile_from_record
    from avcil.runtime.field import FieldSettings, learn_class
    from avcil.runtime.recognizer import DecisionWriter, Recognizer
    from avcil.runtime.windows import window_seconds
    from avcil.train.config import given, protocol_settings, train_config
    from avcil.train.methods import DEFAULT_METHOD, build_method
    from avcil.train.protocol import run_protocol
    from avcil.train.run import write_run

    method = method or DEFAULT_METHOD
    out, cache = Path(out), Path(cache) if cache else default_cache()
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    say = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731

    say("1/4 AV-Digits and its lite features (built once, then cached) ...")
    benchmark = av_digits_benchmark(cache)
    files = clip_files(build_av_digits(cache / "av-digits"))
    old = first_classes(benchmark, len(OLD_DIGITS), train_clips)
    say(f"    training a lite model ({method}) on digits {OLD_DIGITS[0]}-{OLD_DIGITS[-1]} ({train_clips} clips each) ...")
    # AV-Digits' own settings (memory, loss weights, batch sizes), with the demo's epochs, in bf16 where native.
    outcome = run_protocol(old, build_method(method, **given({"instance_weight": old.defaults.instance_weight})),
                           train_config(old.defaults, epochs=epochs, precision="auto"),
                           **protocol_settings(old.defaults), progress=False)
    model_dir = write_run(out / "train", old, outcome)["model"]
    base_version = ModelDir(model_dir).current()
    base_accuracy = split_accuracy(model_dir, base_version, benchmark, OLD_DIGITS)
    say(f"    test accuracy on digits {OLD_DIGITS[0]}-{OLD_DIGITS[-1]}, every test clip (features): "
        f"{_pct(base_accuracy)}")

    profile = profile_from_record(benchmark.profile)
    slot = window_seconds(profile.audio_prep)
    recognizer = Recognizer(model_dir, "torch", profile=profile, threshold=0.0, smoothing=1)
    writer = DecisionWriter(out / "decisions.jsonl", console=sys.stdout)
    try:
        say(f"2/4 live recognition of {clips_per_class} test clip(s) per digit, paced in real time ({slot:.0f} s "
            f"each) ...")
        old_tests = [(d, p) for d in OLD_DIGITS for p in files[("test", d)][:clips_per_class]]
        before = _play(recognizer, [p for _, p in old_tests], [d for d, _ in old_tests], slot, writer)

        say(f"3/4 learning digit {NEW_DIGIT} in the field from {train_clips} of its training clip files, as "
            f"`avcil learn --files` does (the recognizer stays up) ...")
        encode_started = time.perf_counter()
        features = profile.encode_files(files[("train", NEW_DIGIT)][:train_clips])
        encode_seconds = time.perf_counter() - encode_started
        learnt = learn_class(model_dir, NEW_DIGIT, *features, FieldSettings(), progress=False, log=say)
        say(f"    learnt in {learnt['seconds']:.2f} s after {encode_seconds:.1f} s of encoding "
            f"({learnt['parent']} -> {learnt['version']})")
        deadline = time.monotonic() + 10
        while recognizer.version != learnt["version"] and time.monotonic() < deadline:
            time.sleep(0.05)  # the recognizer's watcher swaps the new head in by itself

        say(f"4/4 live recognition with {recognizer.version}: test clips of {NEW_DIGIT} and of the old digits ...")
        new_tests = [(NEW_DIGIT, p) for p in files[("test", NEW_DIGIT)][:2]]
        new_tests += [(d, files[("test", d)][clips_per_class]) for d in OLD_DIGITS]
        after = _play(recognizer, [p for _, p in new_tests], [d for d, _ in new_tests], slot, writer)
    finally:
        writer.close()
        recognizer.close()

    latencies = [r["latency_ms"] for r in before + after]
    summary = {
        "model": str(model_dir), "method": method,
        "base_test_accuracy": base_accuracy,
        "new_class_test_accuracy": split_accuracy(model_dir, learnt["version"], benchmark, [NEW_DIGIT]),
        "old_classes_test_accuracy_after": split_accuracy(model_dir, learnt["version"], benchmark, OLD_DIGITS),
        "old_clips_taken_by_new_class": old_clips_taken(model_dir, benchmark, OLD_DIGITS, NEW_DIGIT),
        "learn_seconds": learnt["seconds"], "encode_seconds": encode_seconds,
        "latency_ms_p50": float(np.percentile(latencies, 50)), "latency_ms_p95": float(np.percentile(latencies, 95)),
        "live": {"before": {"old_classes_accuracy": _share(before, OLD_DIGITS), "decisions": before},
                 "after": {"new_class_accuracy": _share(after, [NEW_DIGIT]),
                           "old_classes_accuracy": _share(after, OLD_DIGITS), "decisions": after}},
        "learnt": learnt,
    }
    plot_confusions(model_dir, [base_version, learnt["version"]], benchmark, out / "confusion.png")
    summary["seconds"] = round(time.perf_counter() - started, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"\non every test clip (features): digits {OLD_DIGITS[0]}-{OLD_DIGITS[-1]} {_pct(base_accuracy)} before, "
          f"{_pct(summary['old_classes_test_accuracy_after'])} after learning digit {NEW_DIGIT}; digit {NEW_DIGIT} "
          f"{_pct(summary['new_class_test_accuracy'])}\n"
          f"live: old digits {_pct(summary['live']['before']['old_classes_accuracy'])} of {len(before)} clips before, "
          f"{_pct(summary['live']['after']['old_classes_accuracy'])} after; digit {NEW_DIGIT} "
          f"{_pct(summary['live']['after']['new_class_accuracy'])} of its clips\n"
          f"learnt digit {NEW_DIGIT} in {learnt['seconds']:.2f} s ({method}); decision latency p50 "
          f"{summary['latency_ms_p50']:.0f} ms, p95 {summary['latency_ms_p95']:.0f} ms; {summary['seconds']:.0f} s in "
          f"all\nwrote {out / 'summary.json'}, {out / 'confusion.png'}, {out / 'decisions.jsonl'}")
    return summary


def _share(rows: list[dict], digits: Sequence[str]) -> float | None:
    chosen = [r for r in rows if r["expected"] in digits]
    return sum(r["decided"] == r["expected"] for r in chosen) / len(chosen) if chosen else None


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


def plot_confusions(model_dir: Path, versions: Sequence[str], benchmark: Benchmark, path: Path) -> None:
    """Confusion matrices of these versions on every test clip of the classes each knows, side by side."""
    from avcil.train.plots import plt

    fig, axes = plt.subplots(1, len(versions), figsize=(5.2 * len(versions), 4.6), squeeze=False)
    for ax, version in zip(axes[0], versions):
        known = ModelDir(model_dir).load(version, with_memory=False).class_names
        expected, decided = split_decisions(model_dir, version, benchmark, known)
        index = {name: i for i, name in enumerate(known)}
        matrix = np.zeros((len(known), len(known)), dtype=int)
        np.add.at(matrix, ([index[e] for e in expected], [index[d] for d in decided]), 1)
        ax.imshow(matrix, cmap="Blues")
        for (i, j), count in np.ndenumerate(matrix):
            if count:
                ax.text(j, i, str(count), ha="center", va="center", fontsize=7,
                        color="white" if count > matrix.max() / 2 else "black")
        ax.set(xticks=range(len(known)), yticks=range(len(known)), xticklabels=known, yticklabels=known,
               xlabel="decided", ylabel="true",
               title=f"{version}: {len(known)} classes, {np.trace(matrix) / matrix.sum():.0%} of test clips")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.0f} %"


def _demo(args: argparse.Namespace) -> int:
    run_demo(args.out, cache=args.cache, epochs=args.epochs, clips_per_class=args.clips_per_class,
             train_clips=args.train_clips, method=args.method)
    return 0


def add_parser(subparsers) -> None:
    demo = subparsers.add_parser(
        "demo", help="offline demo: train on AV-Digits, recognise paced clips, learn a digit in the field",
        description="The embedded default, offline and without a camera: a lite model trained on 9 of the 10 "
                    "AV-Digits classes, live recognition of test clips played through the real file sources, "
                    "the digit 9 learnt in the field from its clip files, then recognised. Writes OUT/summary.json "
                    "and OUT/confusion.png.")
    demo.add_argument("--out", default="avcil-demo", metavar="DIR", help="where the model and JSON lines go")
    demo.add_argument("--cache", help="AV-Digits and features cache (default $AVCIL_CACHE or ~/.cache/avcil)")
    demo.add_argument("--method", help="method of the base training (default: avcil train's; see avcil train --help)")
    demo.add_argument("--epochs", type=int, default=12, help="epochs of the base training, for a gradient method "
                      "(the field step uses avcil learn's settings)")
    demo.add_argument("--train-clips", type=int, default=40, help="training clips per digit (AV-Digits has 40)")
    demo.add_argument("--clips-per-class", type=int, default=1, help="test clips per digit played live before "
                      "learning (the accuracy over every test clip is computed from the features)")
    demo.set_defaults(func=_demo)
