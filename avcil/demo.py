"""`avcil demo`: the embedded default, offline and without a camera, on real content (AV-Digits, lite encoders).

1. Train a lite model on digits 0-8 of AV-Digits with the default method (the project's protocol, one step,
   `train_clips` training clips per digit; the analytic method trains in seconds).
2. Recognise every test clip of those digits through the live path (the real file sources' windows, replayed at
   CPU speed; one decision per clip, window = hop = the lite window, each clip centred in that slot as its
   features centre it), and a few of them also paced in real time.
3. Learn digit 9 in the field from its training clip files (`learn_class`, as `avcil learn --files` does) while
   the recognizer stays up.
4. The recognizer picks the new version up by itself; recognise test clips of 9 and of the old digits.
Decisions go to OUT/decisions.jsonl; a summary to OUT/summary.json (accuracy on every test clip from the features
before and after, the live clips, learning time, decision latency) and the console; OUT/confusion.png shows the
confusion matrices before and after learning, side by side.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from avcil.data.clips import Benchmark, first_classes
from avcil.data.streams import BACKGROUND_CLIPS
from avcil.modeldir import ModelDir
from avcil.train.version_accuracy import old_clips_taken, split_accuracy, split_decisions

OLD_DIGITS = [str(d) for d in range(9)]
NEW_DIGIT = "9"
# Test clips paced in real time before and after learning: they show the real-time path and time its decisions
# (`avcil bench speed` times more); each costs its 3 s of waiting, and every clip is replayed through the same
# windows anyway.
PACED_CLIPS = 3


def _play(recognizer, files: list[Path], labels: list[str], slot_s: float, sink, paced: bool = True) -> list[dict]:
    """One decision per file (window = hop = slot), paced in real time through the live sources or replayed at
    CPU speed through the same windows (avcil.runtime.replay); returns rows of expected and decided label."""
    from avcil.runtime.recognizer import run_live
    from avcil.runtime.replay import replay

    decisions: list[dict] = []

    def keep(decision: dict, window) -> None:
        decisions.append(decision)
        sink(decision, window)

    paths = ",".join(str(p) for p in files)
    (run_live if paced else replay)(recognizer, paths, paths, keep, hop=slot_s, slot_s=slot_s)
    return [{"file": str(f.name), "expected": e, "decided": d["label"], "score": d["score"],
             # Replayed windows have no wall-clock end: their latency is the compute time of their stages.
             "latency_ms": d["latency_ms"].get("total", round(sum(d["latency_ms"].values()), 2)),
             "model_version": d["model_version"]}
            for f, e, d in zip(files, labels, decisions)]


def run_demo(out: str | Path, cache: str | Path | None = None, epochs: int = 12, paced_clips: int = PACED_CLIPS,
             train_clips: int = 40, method: str | None = None, background_clips: int = BACKGROUND_CLIPS) -> dict:
    from avcil.data.avdigits import build_av_digits, clip_files
    from avcil.export.cached import use_onnxruntime
    from avcil.fileio import default_cache
    from avcil.model.encoders import profile_from_record
    from avcil.train.benchmarks import av_digits_benchmark
    from avcil.train.methods import DEFAULT_METHOD

    method = method or DEFAULT_METHOD
    out, cache = Path(out), Path(cache) if cache else default_cache()
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    say("1/5 AV-Digits and its lite features (built once, then cached) ...")
    benchmark = av_digits_benchmark(cache)
    files = clip_files(build_av_digits(cache / "av-digits"))
    say(f"    training a lite model ({method}) on digits {OLD_DIGITS[0]}-{OLD_DIGITS[-1]} ({train_clips} clips each) ...")
    model_dir = _train_base(benchmark, method, epochs, train_clips, out)
    base_version = ModelDir(model_dir).current()
    base_accuracy = split_accuracy(model_dir, base_version, benchmark, OLD_DIGITS)
    say(f"    test accuracy on digits {OLD_DIGITS[0]}-{OLD_DIGITS[-1]}, every test clip (features): "
        f"{_pct(base_accuracy)}")
    profile = profile_from_record(benchmark.profile)
    use_onnxruntime(profile, cache)  # the field's clips encoded as `avcil learn --files` encodes them
    live = _live_and_field(model_dir, profile, files, cache, out, paced_clips, train_clips, background_clips)
    final = ModelDir(model_dir).current()
    summary = {"model": str(model_dir), "method": method, "base_test_accuracy": base_accuracy,
               **_test_split_after(model_dir, final, benchmark), **_field_summary(live)}
    plot_confusions(model_dir, [base_version, final], benchmark, out / "confusion.png")
    summary["seconds"] = round(time.perf_counter() - started, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    _print_summary(summary, out)
    return summary


def _live_and_field(model_dir: Path, profile, files: dict, cache: Path, out: Path, paced_clips: int,
                    train_clips: int, background_clips: int) -> dict:
    """Steps 2-5: the old digits live, the new digit and the background learnt in the field while the recognizer
    stays up, then every digit live with the version it picked up."""
    from avcil.export.cached import export_once
    from avcil.runtime.recognizer import DecisionWriter, Recognizer
    from avcil.runtime.windows import window_seconds

    slot = window_seconds(profile.audio_prep)
    # The encoders exported as `avcil export --format onnx` exports them (once per profile, then copied from the
    # cache), for the live path as a device runs it: ONNX Runtime encodes a window in a quarter of torch's time here.
    export_once(model_dir, profile, cache)
    # Closed-set figures (threshold 0: every window gets its best class), comparable with the features' accuracy;
    # the open-set behaviour is `avcil bench stream`'s.
    recognizer = Recognizer(model_dir, "onnxruntime", profile=profile, score="softmax", threshold=0.0,
                            smoothing=1)  # the raw argmax
    writer = DecisionWriter(out / "decisions.jsonl", console=None)
    tests = {d: files[("test", d)] for d in OLD_DIGITS + [NEW_DIGIT]}
    try:
        say(f"2/5 live recognition of every test clip of digits {OLD_DIGITS[0]}-{OLD_DIGITS[-1]} through the live "
            f"path ({slot:.0f} s windows, replayed), and {paced_clips} of them paced in real time ...")
        before = _live_rows(recognizer, tests, OLD_DIGITS, paced_clips, slot, writer)

        say(f"3/5 learning digit {NEW_DIGIT} in the field from {train_clips} of its training clip files, as "
            f"`avcil learn --files` does (the recognizer stays up) ...")
        learnt, encode_seconds = _learn_new_digit(model_dir, profile, files[("train", NEW_DIGIT)][:train_clips])
        say(f"    learnt in {learnt['seconds']:.2f} s after {encode_seconds:.1f} s of encoding "
            f"({learnt['parent']} -> {learnt['version']})")
        say(f"4/5 learning background from {background_clips} clips of scenes and sounds that hold no digit, as "
            f"`avcil learn --background --files` does ...")
        background = _learn_background(model_dir, profile, cache, background_clips) if background_clips else None
        _wait_for(recognizer, ModelDir(model_dir).current())

        say(f"5/5 live recognition with {recognizer.version}: every test clip of digits {OLD_DIGITS[0]}-{NEW_DIGIT} "
            f"(replayed), and {paced_clips} paced, digit {NEW_DIGIT}'s first ...")
        after = _live_rows(recognizer, tests, [NEW_DIGIT] + OLD_DIGITS, paced_clips, slot, writer)
    finally:
        writer.close()
        recognizer.close()
    return {"before": before, "after": after, "learnt": learnt, "encode_seconds": encode_seconds,
            "background": background}


def _test_split_after(model_dir: Path, version: str, benchmark: Benchmark) -> dict:
    """Every test clip, from the features, by the version after learning."""
    return {"new_class_test_accuracy": split_accuracy(model_dir, version, benchmark, [NEW_DIGIT]),
            "old_classes_test_accuracy_after": split_accuracy(model_dir, version, benchmark, OLD_DIGITS),
            "old_clips_taken_by_new_class": old_clips_taken(model_dir, benchmark, OLD_DIGITS, NEW_DIGIT)}


def _field_summary(live: dict) -> dict:
    before, after = live["before"], live["after"]
    return {"learn_seconds": live["learnt"]["seconds"], "encode_seconds": live["encode_seconds"],
            **_latency(before["paced"] + after["paced"]),
            "live": {"before": _live_summary(before, OLD_DIGITS, []),
                     "after": _live_summary(after, OLD_DIGITS, [NEW_DIGIT])},
            "learnt": live["learnt"], "background": live["background"]}


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _train_base(benchmark: Benchmark, method: str, epochs: int, train_clips: int, out: Path) -> Path:
    """The model of digits 0-8 (the project's protocol, one step); returns its model dir."""
    from avcil.train.config import given, protocol_settings, train_config
    from avcil.train.methods import build_method
    from avcil.train.protocol import run_protocol
    from avcil.train.run import write_run

    old = first_classes(benchmark, len(OLD_DIGITS), train_clips)
    # AV-Digits' own settings (memory, loss weights, batch sizes), with the demo's epochs, in bf16 where native.
    outcome = run_protocol(old, build_method(method, **given({"instance_weight": old.defaults.instance_weight})),
                           train_config(old.defaults, epochs=epochs, precision="auto"),
                           **protocol_settings(old.defaults), progress=False)
    return write_run(out / "train", old, outcome)["model"]


def _learn_new_digit(model_dir: Path, profile, paths: list[Path]) -> tuple[dict, float]:
    from avcil.runtime.field import FieldSettings, learn_class

    encode_started = time.perf_counter()
    features = profile.encode_files(paths, progress=False)  # whole clips, as `avcil learn --files` and training
    encode_seconds = time.perf_counter() - encode_started
    return learn_class(model_dir, NEW_DIGIT, *features, FieldSettings(), progress=False, log=say), encode_seconds


def _learn_background(model_dir: Path, profile, cache: Path, count: int) -> dict:
    from avcil.data.streams import build_background_clips
    from avcil.runtime.background import learn_background
    from avcil.runtime.file_windows import cached_window_views

    paths = build_background_clips(cache / "streams", count, progress=False)
    started = time.perf_counter()
    features, cached = cached_window_views(profile, paths, cache / "background-windows")
    encode_seconds = time.perf_counter() - started
    summary = learn_background(model_dir, features["audio"], features["visual"],
                               (features["probe_audio"], features["probe_visual"]), [str(p) for p in paths])
    encoded = "features read from the cache" if cached else f"after {encode_seconds:.1f} s of encoding"
    say(f"    learnt background from {len(paths)} clips ({summary['background_windows']} windows) in "
        f"{summary['seconds']:.2f} s, {encoded} ({summary['parent']} -> {summary['version']})")
    return {**summary, "encode_seconds": round(encode_seconds, 2), "features_cached": cached}


def _wait_for(recognizer, version: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while recognizer.version != version and time.monotonic() < deadline:
        time.sleep(0.05)  # the recognizer's watcher swaps the new head in by itself


def _live_rows(recognizer, tests: dict[str, list[Path]], digits: list[str], paced_clips: int, slot: float,
               writer) -> dict[str, list[dict]]:
    """Every test clip of `digits` replayed through the live path, and `paced_clips` of them paced in real time
    (the same windows, waited for): a clip of each of `paced_clips` digits spread over `digits`, from the first."""
    chosen = [(d, p) for d in digits for p in tests[d]]
    spread = [digits[round(i)] for i in np.linspace(0, len(digits) - 1, paced_clips)]
    paced = [(d, tests[d][spread[:k].count(d)]) for k, d in enumerate(spread)]  # a digit twice: its next clip
    return {"replayed": _play(recognizer, [p for _, p in chosen], [d for d, _ in chosen], slot, writer, paced=False),
            "paced": _play(recognizer, [p for _, p in paced], [d for d, _ in paced], slot, writer)}


def _live_summary(rows: dict[str, list[dict]], old: Sequence[str], new: Sequence[str]) -> dict:
    """Accuracies of the replayed (every test clip) and paced rows; `decisions`: the paced ones, as before."""
    summary = {"old_classes_accuracy": _share(rows["replayed"], old),
               "old_classes_accuracy_paced": _share(rows["paced"], old), "clips": len(rows["replayed"]),
               "decisions": rows["paced"], "replayed_decisions": rows["replayed"]}
    if new:
        summary.update(new_class_accuracy=_share(rows["replayed"], new),
                       new_class_accuracy_paced=_share(rows["paced"], new))
    return summary


def _latency(rows: list[dict]) -> dict:
    latencies = [r["latency_ms"] for r in rows]
    return {"latency_ms_p50": float(np.percentile(latencies, 50)), "latency_ms_p95": float(np.percentile(latencies, 95))}


def _print_summary(summary: dict, out: Path) -> None:
    before, after = summary["live"]["before"], summary["live"]["after"]
    print(f"\non every test clip, from the features: digits {OLD_DIGITS[0]}-{OLD_DIGITS[-1]} "
          f"{_pct(summary['base_test_accuracy'])} before, {_pct(summary['old_classes_test_accuracy_after'])} after "
          f"learning digit {NEW_DIGIT}; digit {NEW_DIGIT} {_pct(summary['new_class_test_accuracy'])}\n"
          f"on every test clip, through the live path: digits {OLD_DIGITS[0]}-{OLD_DIGITS[-1]} "
          f"{_pct(before['old_classes_accuracy'])} before, {_pct(after['old_classes_accuracy'])} after; digit "
          f"{NEW_DIGIT} {_pct(after['new_class_accuracy'])} ({before['clips']} and {after['clips']} clips)\n"
          f"paced in real time: old digits {_pct(before['old_classes_accuracy_paced'])} of "
          f"{len(before['decisions'])} clips before, {_pct(after['old_classes_accuracy_paced'])} after; digit "
          f"{NEW_DIGIT} {_pct(after['new_class_accuracy_paced'])}\n"
          f"learnt digit {NEW_DIGIT} in {summary['learn_seconds']:.2f} s ({summary['method']}); decision latency "
          f"p50 {summary['latency_ms_p50']:.0f} ms, p95 {summary['latency_ms_p95']:.0f} ms; {summary['seconds']:.0f} s "
          f"in all\nwrote {out / 'summary.json'}, {out / 'confusion.png'}, {out / 'decisions.jsonl'}")


def _share(rows: list[dict], digits: Sequence[str]) -> float | None:
    chosen = [r for r in rows if r["expected"] in digits]
    return sum(r["decided"] == r["expected"] for r in chosen) / len(chosen) if chosen else None


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
    from avcil.runtime.inputs import check_whole

    check_whole(args.paced_clips, "--paced-clips", 1)
    run_demo(args.out, cache=args.cache, epochs=args.epochs, paced_clips=args.paced_clips,
             train_clips=args.train_clips, method=args.method, background_clips=args.background_clips)
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
    demo.add_argument("--paced-clips", type=int, default=PACED_CLIPS, help="test clips also played paced in real "
                      f"time before and after learning, digits spread (default {PACED_CLIPS}; every test clip is "
                      "replayed through the live path in any case)")
    demo.add_argument("--background-clips", type=int, default=BACKGROUND_CLIPS, help="background clips learnt as "
                      f"background after the new digit (default {BACKGROUND_CLIPS}; 0: none)")
    demo.set_defaults(func=_demo)
