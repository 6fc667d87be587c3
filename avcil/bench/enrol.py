"""`avcil bench enrol`: how many clips a class learnt in the field needs, measured as events on the stream benchmark.

The model: the version of the model dir before the new class was learnt (the demo's v0001, digits 0-8), with the
demo's background learnt (its 60 background clips, as `avcil learn --background` learns them). The new class
(digit 9) is learnt from 1, 3, 5, 10, 20 and 40 of its AV-Digits training clips (the first 40, the demo's; a
random subset per seed), in closed form as `avcil learn` does, in two views of a clip:
- `files`: whole clips, as `avcil learn --files` encodes them;
- `recorded`: one live window (3 s for lite) around the clip, as `avcil learn --camera` and the page record them
  (the clip in the middle, silence and the first or last frame around it).
Each model decides the test streams of `avcil bench stream` with the default rule: the new class's event recall,
the old classes' event recall (before: without the new class) and false accepts per hour of background. Mean and
standard deviation over seeds (the 40-clip point has one subset).

The default clip count of `avcil learn --camera` and of the page (avcil/runtime/field_settings.py DEFAULT_CLIPS) is
the smallest count whose recorded-view recall is within 5 points of 40 clips'.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np

from avcil.bench.report import machine_load, markdown_table, write_report
from avcil.bench.stream import add_stream_flags, checked_inputs, load_split
from avcil.bench.stream_metrics import DEFAULT_RULE, DEFAULT_THRESHOLD, event_metrics, rule_scores
from avcil.errors import InvalidInput
from avcil.modeldir.schema import ManifestKey
from avcil.runtime.decision import HeadScores

COUNTS = (1, 3, 5, 10, 20, 40)
VIEWS = ("files", "recorded")
WITHIN_POINTS = 0.05  # the default clip count: within this of 40 clips' event recall


def recorded_views(profile, paths: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """Features of one live window around each clip, the clip in its middle (the middle of 3 window views)."""
    from avcil.runtime.file_windows import window_views

    inputs = [profile.clip_inputs(w.waveform, w.rate, w.frames) for w in
              (window_views(path, profile, 3)[1] for path in paths)]
    return profile.encode_batch(*(np.stack(part) for part in zip(*inputs)))


def learnt(head, classes: list[dict], label: str, audio: np.ndarray, visual: np.ndarray):
    """A copy of `head` with class `label` learnt from these clips' features, as `avcil learn` does."""
    from avcil.data.clips import ArrayClipSet
    from avcil.runtime.field import FieldSettings, analytic_update

    head = copy.deepcopy(head)
    clips = ArrayClipSet([f"enrol/{i}" for i in range(len(audio))], np.full(len(audio), len(classes)), audio, visual)
    analytic_update(head, classes, clips, None, FieldSettings(), False, label, lambda text: None)
    return head.eval()


def stream_figures(head, windows, label: str) -> dict:
    """The default rule on the test streams: the new class's and the old classes' event recall, false accepts."""
    labels = [np.where(s >= DEFAULT_THRESHOLD, l, -1) for l, s in rule_scores(HeadScores(head), windows,
                                                                            DEFAULT_RULE)]
    metrics = event_metrics(windows, labels)
    old = {c: m for c, m in metrics["per_class"].items() if c != label}
    old_events = sum(m["events"] for m in old.values())
    return {"new_recall": metrics["per_class"][label]["event_recall"] if label in metrics["per_class"] else None,
            "new_wrong_class": metrics["per_class"].get(label, {}).get("wrong_class_share"),
            "old_recall": sum(m["event_recall"] * m["events"] for m in old.values()) / max(1, old_events),
            "false_accepts_per_hour": metrics["false_accepts_per_hour"]}


def learn_demo_background(head, profile, cache: Path) -> None:
    """The background `avcil demo` learns (BACKGROUND_CLIPS clips), into `head`'s readout."""
    from avcil.data.streams import BACKGROUND_CLIPS, build_background_clips
    from avcil.runtime.class_space import readout_inputs_of
    from avcil.runtime.file_windows import cached_window_views

    paths = build_background_clips(cache / "streams", BACKGROUND_CLIPS, progress=False)
    background, _ = cached_window_views(profile, paths, cache / "background-windows")
    head.readout.accumulate_background(readout_inputs_of(head, background["audio"], background["visual"]))
    head.readout.solve()


def enrolments(head, classes: list[dict], label: str, features: tuple, clips: int, count: int, seeds: int,
               windows) -> list[dict]:
    """The stream figures of `label` learnt from `count` of its `clips` clips (`features`: (audio, visual) of all of
    them), one random subset per seed (one run when `count` takes them all)."""
    runs = []
    for seed in range(seeds) if count < clips else range(1):
        pick = np.sort(np.random.default_rng(seed).permutation(clips)[:count])
        audio, visual = (part[pick] for part in features)
        runs.append(stream_figures(learnt(head, classes, label, audio, visual), windows, label))
    return runs


def run(args: argparse.Namespace) -> int:
    from avcil.data.avdigits import clip_files
    from avcil.data.streams import BACKGROUND_CLIPS
    from avcil.model.encoders import profile_from_record
    from avcil.modeldir import ModelDir

    model_dir, cache = checked_inputs(args.model, args.cache)
    model, csv = ModelDir(model_dir), cache / "av-digits" / "clips.csv"
    base_version = _version_before(model, args.label)
    loaded = model.load(base_version, with_memory=False)
    head, classes = loaded.head.eval(), loaded.manifest[ManifestKey.CLASSES]
    profile = profile_from_record(loaded.manifest[ManifestKey.FEATURES].get("profile"))
    started, load_before = time.perf_counter(), machine_load()
    say = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731
    if loaded.head.readout.negative_count == 0:
        say(f"learning the demo's background ({BACKGROUND_CLIPS} clips) into {base_version} ...")
        learn_demo_background(head, profile, cache)
    files = clip_files(csv)[("train", args.label)][:max(COUNTS)]
    say(f"encoding {len(files)} training clips of {args.label!r}, whole and as recorded windows ...")
    features = {"files": profile.encode_files(files, progress=False), "recorded": recorded_views(profile, files)}
    windows = load_split(model.root, cache / "streams", cache / "av-digits", "test", args.hours, args.seed,
                         cache / "stream-windows", loaded.class_names + [args.label], args.backend)
    before = stream_figures(head, windows, args.label)
    rows = []
    for view in VIEWS:
        for count in COUNTS:
            rows.append(_row(view, count, enrolments(head, classes, args.label, features[view], len(files), count,
                                                     args.seeds, windows)))
            say(f"{view:>8} {count:>2} clips: recall of {args.label!r} {rows[-1]['new_recall_mean']:.3f}, old "
                f"{rows[-1]['old_recall_mean']:.3f}, false accepts/h {rows[-1]['false_accepts_per_hour_mean']:.1f}")
    default = default_count(rows, "recorded")
    payload = {"model": str(model.root), "base_version": base_version, "label": args.label, "counts": COUNTS,
               "seeds": args.seeds, "stream_seed": args.seed, "backend": args.backend,
               "background_hours": windows.background_hours, "before": before, "rows": rows,
               "default_clips": default, "within_points": WITHIN_POINTS, "load_before": load_before,
               "load_after": machine_load(), "seconds": round(time.perf_counter() - started, 1)}
    table = (f"Model {model.root} at {base_version} ({len(loaded.class_names)} classes) with the demo's background; "
             f"class {args.label!r} learnt from its first 40 AV-Digits training clips or a random subset ("
             f"{args.seeds} seeds: mean ± std). Test streams of `avcil bench stream` (seed {args.seed}): "
             f"{windows.background_hours:.2f} h of background. Before: old classes' event recall "
             f"{before['old_recall']:.3f}, {before['false_accepts_per_hour']:.1f} false accepts / h. Default clip "
             f"count (recorded, within {WITHIN_POINTS:.0%} of 40 clips): **{default}**. Machine load {load_before}."
             "\n\n" + markdown_table([_shown(r) for r in rows], [
                 ("view", "clips as"), ("clips", "clips"), ("new_recall", f"event recall of {args.label!r}"),
                 ("old_recall", "old classes' event recall"), ("false_accepts_per_hour", "false accepts / h"),
                 ("new_wrong_class", f"{args.label!r} events with a wrong label")]))
    paths = write_report(Path(args.out_dir), args.name, payload, table, "Enrolment: event recall against clips learnt "
                         "from", lambda p: _plot(p, rows, before, args.label))
    print(json.dumps({"default_clips": default, "rows": rows}) if args.json else
          f"default clips {default}; wrote {paths['json']}, {paths['markdown']}, {paths['plot']}")
    return 0


def default_count(rows: list[dict], view: str) -> int:
    """The smallest count whose mean event recall of the new class is within WITHIN_POINTS of the largest count's."""
    mine = sorted((r for r in rows if r["view"] == view), key=lambda r: r["clips"])
    target = mine[-1]["new_recall_mean"] - WITHIN_POINTS
    return next(r["clips"] for r in mine if r["new_recall_mean"] >= target - 1e-12)


def _version_before(model, label: str) -> str:
    """The newest version whose classes do not hold `label`, before the first that does."""
    rows = sorted(model.describe_versions(), key=lambda r: r["version"])
    before = None
    for row in rows:
        if row["ok"] and label in row["classes"]:
            break
        if row["ok"]:
            before = row["version"]
    if before is None:
        raise InvalidInput(f"{model.root}: no version before class {label!r} was learnt (give a model dir whose "
                           f"history has one, as the demo's has)")
    return before


def _row(view: str, count: int, runs: list[dict]) -> dict:
    row = {"view": view, "clips": count, "subsets": len(runs)}
    for key in ("new_recall", "old_recall", "false_accepts_per_hour", "new_wrong_class"):
        values = np.array([r[key] for r in runs], float)
        row[f"{key}_mean"], row[f"{key}_std"] = float(values.mean()), float(values.std())
    return row


def _shown(row: dict) -> dict:
    shown = {"view": row["view"], "clips": row["clips"]}
    for key in ("new_recall", "old_recall", "false_accepts_per_hour", "new_wrong_class"):
        digits = 1 if key == "false_accepts_per_hour" else 3
        shown[key] = f"{row[key + '_mean']:.{digits}f} ± {row[key + '_std']:.{digits}f}"
    return shown


def _plot(path: Path, rows: list[dict], before: dict, label: str) -> None:
    from avcil.train.plots import plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for view, marker in zip(VIEWS, "os"):
        mine = [r for r in rows if r["view"] == view]
        counts = [r["clips"] for r in mine]
        left.errorbar(counts, [r["new_recall_mean"] for r in mine], [r["new_recall_std"] for r in mine],
                      marker=marker, capsize=3, label=f"{label!r}, clips as {view}")
        left.plot(counts, [r["old_recall_mean"] for r in mine], marker, ls="--", alpha=0.6,
                  label=f"old classes, clips as {view}")
        right.errorbar(counts, [r["false_accepts_per_hour_mean"] for r in mine],
                       [r["false_accepts_per_hour_std"] for r in mine], marker=marker, capsize=3, label=view)
    left.axhline(before["old_recall"], color="grey", lw=0.5, ls=":", label="old classes before")
    right.axhline(before["false_accepts_per_hour"], color="grey", lw=0.5, ls=":", label="before")
    left.set(xscale="log", xlabel="clips the class is learnt from", ylabel="event recall (test streams)")
    right.set(xscale="log", xlabel="clips the class is learnt from", ylabel="false accepts per hour of background")
    left.legend(fontsize=7)
    right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def add_flags(parser: argparse.ArgumentParser) -> None:
    add_stream_flags(parser, "enrol-av-digits-lite", "model dir whose history holds a version before --label was "
                     "learnt (default: the one `avcil demo --out runs/demo` leaves)",
                     "print the default count and the rows as JSON")
    parser.add_argument("--label", default="9", help="the class learnt in the field (default 9, the demo's)")
    parser.add_argument("--seeds", type=int, default=5, help="random clip subsets per count (default 5)")
