"""`avcil bench stream`: the model in the open stream it lives in, through the live path.

Streams (avcil.data.streams): AV-Digits clips of the known classes at random moments between 4-9 s stretches of
background that holds none of them. Each stream is replayed (avcil.runtime.replay: the windows paced play would
cut, decided as fast as the CPU allows) through the model's encoders; the readout's inputs of every window are kept
(cached per stream and encoder profile), so that every decision rule, threshold and smoothing is then evaluated on
the same windows in milliseconds.

Per rule, on the `val` streams (AV-Digits' val clips, one third of every background pool) a threshold is chosen:
the one with the fewest false accepts per hour among those with an event recall of at least 90 % (of 90 % of the
highest recall any threshold reaches, where none reaches 90 %). It is then measured on the `test` streams
(AV-Digits' test clips, another third of the background): event recall, false accepts per hour of background,
wrong-class labels, the delay from an event's start to the end of the first window that labels it; per class too;
and a curve of recall against false accepts per hour over all thresholds, with the chosen point marked.

Definitions. A window (3 s for lite) is an event window of an event when it holds at least `EVENT_OVERLAP_S` of it,
a background window when it holds none of any event. An event is found when one of its windows is labelled its
class; it has a wrong-class label when one of its windows is labelled another known class. A false accept is a run
of consecutive background windows labelled a known class; false accepts per hour divide their count by the hours of
background.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from avcil.bench.report import DEFAULT_DIR, machine_load, markdown_table, write_report
from avcil.bench.stream_metrics import (DEFAULT_RULE, DEFAULT_THRESHOLD, EVENT_OVERLAP_S, TARGET_RECALL,
                                        StreamWindows, choose_threshold, event_metrics, rule_scores, sweep,
                                        window_accuracy)
from avcil.errors import InvalidInput
from avcil.modeldir.schema import ManifestKey
from avcil.runtime.decision import SCORES, HeadScores
from avcil.runtime.windows import WINDOW_CUT_VERSION

RULES = [{"score": s, "smoothing": k} for s in SCORES for k in (1, 2, 3)]
EVENT_SETTINGS = [(start, end) for start in (1, 2, 3) for end in (1, 2, 3)]  # the event tracker's hysteresis
EVENT_RECALL_SLACK = 0.02  # event settings within this of the best event recall compete on false events


def _key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def window_inputs(model_dir: Path, folder: Path, stream: dict, cache: Path, backend: str = "torch") -> dict:
    """The readout's inputs [n, in_dim] and the window ends [n] of one stream, replayed through the model's
    encoders (cached: they depend on the encoders, not on the head's version, for a pooled-feature readout)."""
    from avcil.model.readout import pooled_features
    from avcil.modeldir import ModelDir
    from avcil.runtime.recognizer import Recognizer
    from avcil.runtime.replay import replay

    manifest = ModelDir(model_dir).load(with_memory=False).manifest
    video, audio = folder / stream["video"], folder / stream["audio"]
    key = _key(manifest[ManifestKey.FEATURES].get("profile"), video.stat().st_size, audio.stat().st_size, str(video),
               backend, WINDOW_CUT_VERSION)
    path = cache / f"{video.stem}-{key}.npz"
    if path.is_file():
        with np.load(path) as f:
            return {"inputs": f["inputs"], "ends": f["ends"], "seconds": float(f["seconds"])}
    recognizer = Recognizer(model_dir, backend, watch=False, score="softmax", smoothing=1, threshold=0.0)
    inputs, ends = [], []

    def keep(decision: dict, window) -> None:
        audio_features, visual_features = recognizer.last_features
        inputs.append(pooled_features(torch.from_numpy(audio_features), torch.from_numpy(visual_features))[0].numpy())
        ends.append(window.end)

    try:
        timing = replay(recognizer, str(video), str(audio), keep)
    finally:
        recognizer.close()
    result = {"inputs": np.stack(inputs).astype(np.float32), "ends": np.array(ends), "seconds": timing["window_s"]}
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(path, **result)
    return result


def tracked_event_metrics(windows: StreamWindows, labelled: list[np.ndarray], scores: list[np.ndarray],
                          start_windows: int, end_windows: int) -> dict:
    """The labelled windows of every stream through the event tracker (avcil.runtime.events), measured as events:
    an event of the stream is found when a tracked event of its class overlaps it, has a wrong class when one of
    another class does; a tracked event that overlaps no event of the stream is a false event."""
    from avcil.runtime.decision import UNKNOWN
    from avcil.runtime.events import EventTracker

    names = windows.class_names
    found = wrong = false_events = events = 0
    delays = []
    for stream, labels, score in zip(windows.streams, labelled, scores):
        tracker = EventTracker(start_windows, end_windows)
        tracked = []
        for end, label, value in zip(stream["ends"], labels, score):
            tracked += tracker.feed({"label": names[label] if label >= 0 else UNKNOWN, "score": float(value),
                                     "window": [float(end) - stream["seconds"], float(end)]})
        tracked += tracker.close()
        record = [e for e in stream["record"]["events"] if e["label"] in names]
        for event in record:
            overlapping = [t for t in tracked if t["start"] < event["end"] and t["end"] > event["start"]]
            mine = [t for t in overlapping if t["label"] == event["label"]]
            events += 1
            found += bool(mine)
            wrong += any(t["label"] != event["label"] for t in overlapping)
            if mine:
                delays.append(min(t["opened_at"] for t in mine) - event["start"])
        false_events += sum(not any(t["start"] < e["end"] and t["end"] > e["start"] for e in record) for t in tracked)
    return {"start_windows": start_windows, "end_windows": end_windows, "events": events,
            "event_recall": found / max(1, events), "wrong_class_share": wrong / max(1, events),
            "false_events": false_events, "false_events_per_hour": false_events / windows.background_hours,
            "delay_s_median": float(np.median(delays)) if delays else None}


def event_settings(splits: dict, scored: dict) -> tuple[list[dict], dict]:
    """Every hysteresis setting on the test streams at the default rule (`scored`: its rule_scores per split), and
    the one chosen on the val streams."""
    measured = {}
    for split in ("val", "test"):
        labelled = [np.where(s >= DEFAULT_THRESHOLD, l, -1) for l, s in scored[split]]
        measured[split] = [tracked_event_metrics(splits[split], labelled, [s for _, s in scored[split]], start, end)
                           for start, end in EVENT_SETTINGS]
    best = max(m["event_recall"] for m in measured["val"])
    near = [m for m in measured["val"] if m["event_recall"] >= best - EVENT_RECALL_SLACK]
    chosen = min(near, key=lambda m: (m["false_events_per_hour"], m["start_windows"], m["end_windows"]))
    return measured["test"], {"start_windows": chosen["start_windows"], "end_windows": chosen["end_windows"]}


def load_split(model_dir: Path, streams_root: Path, av_digits: Path, split: str, hours: float, seed: int,
               cache: Path, class_names: list[str], backend: str) -> StreamWindows:
    from tqdm import tqdm

    from avcil.data.streams import build_streams

    index = build_streams(streams_root, av_digits, split, hours, seed)
    folder = Path(streams_root) / [p.parent.name for p in streams_root.glob(f"{split}-*/streams.json")
                                   if json.loads(p.read_text())["settings"] == index["settings"]][0]
    per_stream = [window_inputs(model_dir, folder, s, cache, backend)
                  for s in tqdm(index["streams"], desc=f"replay {split} streams", unit="stream", file=sys.stderr)]
    return StreamWindows(index, folder, per_stream, class_names)


def checked_inputs(model: str | Path, cache: str | Path | None, av_digits: bool = True) -> tuple[Path, Path]:
    """(model dir, cache) of a benchmark on the streams, refused with what to run first where the model dir or (with
    `av_digits`) the AV-Digits build is missing."""
    from avcil.fileio import default_cache

    model_dir = Path(model)
    if not (model_dir / "CURRENT").exists():
        raise InvalidInput(f"{model_dir}: not a model dir (run `avcil demo --out runs/demo` first for the default, "
                           f"or give --model)")
    cache = Path(cache) if cache else default_cache()
    if av_digits and not (cache / "av-digits" / "clips.csv").is_file():
        raise InvalidInput(f"{cache / 'av-digits'}: no AV-Digits build (run `avcil demo` or `avcil data av-digits` "
                           f"first)")
    return model_dir, cache


def run(args: argparse.Namespace) -> int:
    from avcil.bench.missing_modality import missing_modality_rows, missing_modality_table
    from avcil.model.encoders import profile_from_record
    from avcil.modeldir import ModelDir

    model_dir, cache = checked_inputs(args.model, args.cache)
    av_digits = cache / "av-digits"
    loaded = ModelDir(model_dir).load(with_memory=False)
    head = loaded.head.eval()
    scorer = HeadScores(head)
    if scorer.readout is None or head.config.readout.get("features") != "pooled":
        raise InvalidInput(f"{model_dir}: the stream benchmark evaluates models whose readout reads the pooled "
                           f"encoder features (the default analytic method)")
    started = time.perf_counter()
    load_before = machine_load()
    splits = {split: load_split(model_dir, cache / "streams", av_digits, split, hours, args.seed,
                                cache / "stream-windows", loaded.class_names, args.backend)
              for split, hours in (("val", args.val_hours), ("test", args.hours))}
    rows, curves = _rule_rows(scorer, splits)
    default_scored = {split: rule_scores(scorer, splits[split], DEFAULT_RULE) for split in splits}
    default = _default_row(splits["test"], default_scored["test"])
    rows.append(default)
    windows_right = window_accuracy(splits["test"], [labels for labels, _ in default_scored["test"]])
    tracked, chosen = event_settings(splits, default_scored)
    missing = missing_modality_rows(head, profile_from_record(loaded.manifest[ManifestKey.FEATURES].get("profile")),
                                    splits["test"], default)
    payload = {"model": str(model_dir), "model_version": loaded.version, "classes": loaded.class_names,
               "seed": args.seed, "backend": args.backend, "event_overlap_s": EVENT_OVERLAP_S,
               "target_recall": TARGET_RECALL, "load_before": load_before, "load_after": machine_load(),
               "seconds": round(time.perf_counter() - started, 1),
               "val_background_hours": splits["val"].background_hours,
               "background_hours": splits["test"].background_hours,
               "default_rule": default["rule"], "event_recall": default["event_recall"],
               "false_accepts_per_hour": default["false_accepts_per_hour"],
               "wrong_class_share": default["wrong_class_share"], "window_accuracy": windows_right, "rules": rows,
               "curves": curves,
               "event_settings": tracked, "event_settings_chosen_on_val": chosen, "missing_modality": missing}
    table = (f"Model {model_dir} ({loaded.version}, {len(loaded.class_names)} classes); test streams: "
             f"{splits['test'].background_hours:.2f} h of background, {rows[0]['events']} events; thresholds chosen "
             f"on val streams ({splits['val'].background_hours:.2f} h). Seed {args.seed}, backend {args.backend}, "
             f"machine load {load_before} before. Default rule: **{default['rule']}**.\n\n"
             + _window_accuracy_line(windows_right) + _rules_table(rows, default) + _events_table(tracked, chosen)
             + missing_modality_table(missing, default))
    paths = write_report(Path(args.out_dir), args.name, payload, table, "Stream benchmark: event recall and false "
                         "accepts per hour of background, through the live path",
                         lambda p: _plot(p, curves, rows))
    print(json.dumps({k: payload[k] for k in ("default_rule", "event_recall", "false_accepts_per_hour",
                                              "wrong_class_share", "background_hours")}) if args.json else
          f"wrote {paths['json']}, {paths['markdown']}, {paths['plot']}")
    return 0


def _rule_rows(scorer: HeadScores, splits: dict[str, StreamWindows]) -> tuple[list[dict], dict]:
    """Each rule of RULES at the threshold its val curve chooses, on the test streams; with its test curve."""
    rows, curves = [], {}
    for rule in RULES:
        name = f"{rule['score']} s{rule['smoothing']}"
        val_curve = sweep(splits["val"], rule_scores(scorer, splits["val"], rule))
        threshold = choose_threshold(val_curve)
        scored = rule_scores(scorer, splits["test"], rule)
        test = event_metrics(splits["test"], [np.where(s >= threshold, l, -1) for l, s in scored])
        curves[name] = sweep(splits["test"], scored)
        rows.append({"rule": name, **rule, "threshold": threshold, **test})
        print(f"{name:>16}: threshold {threshold:.3f}  recall {test['event_recall']:.3f}  "
              f"false accepts/h {test['false_accepts_per_hour']:.1f}  wrong {test['wrong_class_share']:.3f}",
              file=sys.stderr)
    return rows, curves


def _rules_table(rows: list[dict], default: dict) -> str:
    columns = [("rule", "rule"), ("threshold", "threshold (from val; the default's for the default)"),
               ("event_recall", "event recall"),
               ("false_accepts_per_hour", "false accepts / h"), ("wrong_class_share", "wrong-class events"),
               ("delay_s_median", "delay median s"), ("delay_s_p90", "delay p90 s")]
    return (markdown_table(rows, columns) + "\n\nPer class, default rule:\n\n"
            + markdown_table([{"class": c, **m} for c, m in default["per_class"].items()],
                             [("class", "class"), ("events", "events"), ("event_recall", "recall"),
                              ("wrong_class_share", "wrong-class"), ("delay_s_median", "delay median s")]))


def _window_accuracy_line(accuracy: dict) -> str:
    every, whole = accuracy["event_windows"], accuracy["whole_event_windows"]
    return (f"Best class of the event windows before any threshold, test streams: right in {every['accuracy']:.3f} "
            f"of {every['windows']} event windows, {whole['accuracy']:.3f} of the {whole['windows']} that hold a whole "
            f"event (with background before and after it); this bounds every rule below.\n\n")


def _default_row(test: StreamWindows, scored: list) -> dict:
    """What `avcil run` does out of the box, on the test streams (`scored`: the default rule's rule_scores)."""
    metrics = event_metrics(test, [np.where(s >= DEFAULT_THRESHOLD, l, -1) for l, s in scored])
    return {"rule": f"default: {DEFAULT_RULE['score']} s{DEFAULT_RULE['smoothing']}", **DEFAULT_RULE,
            "threshold": DEFAULT_THRESHOLD, **metrics}


def _events_table(tracked: list[dict], chosen: dict) -> str:
    """The event tracker's settings at the default rule, on the test streams."""
    from avcil.runtime.events import END_WINDOWS, START_WINDOWS

    rows = [{**m, "setting": f"open {m['start_windows']}, close {m['end_windows']}"
             + (" (default)" if (m["start_windows"], m["end_windows"]) == (START_WINDOWS, END_WINDOWS) else "")}
            for m in tracked]
    return (f"\n\nEvents (`avcil run --events`) at the default rule, test streams; the setting chosen on the val "
            f"streams (the fewest false events per hour within {EVENT_RECALL_SLACK:.0%} of the best event recall): "
            f"open {chosen['start_windows']}, close {chosen['end_windows']}.\n\n"
            + markdown_table(rows, [("setting", "windows to open, to close"), ("event_recall", "event recall"),
                                    ("false_events_per_hour", "false events / h"),
                                    ("wrong_class_share", "wrong-class events"),
                                    ("delay_s_median", "delay median s")]))


def _plot(path: Path, curves: dict, rows: list[dict]) -> None:
    from avcil.train.plots import plt

    fig, ax = plt.subplots(figsize=(7.5, 5))
    for name, curve in curves.items():
        if not name.endswith("s3") and not name.endswith("s1"):
            continue
        line, = ax.plot([max(p["false_accepts_per_hour"], 0.1) for p in curve], [p["event_recall"] for p in curve],
                        label=name, lw=1.2)
        row = next(r for r in rows if r["rule"] == name)
        ax.plot(max(row["false_accepts_per_hour"], 0.1), row["event_recall"], "o", color=line.get_color())
    default = rows[-1]  # what `avcil run` does out of the box
    ax.plot(max(default["false_accepts_per_hour"], 0.1), default["event_recall"], "*", color="black", ms=11,
            label=default["rule"])
    ax.set(xscale="log", xlabel="false accepts per hour of background (test streams)", ylabel="event recall",
           title="recall against false accepts; dots: thresholds chosen on val streams")
    ax.axhline(TARGET_RECALL, color="grey", lw=0.5, ls="--")
    ax.axvline(1.0, color="grey", lw=0.5, ls="--")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def add_stream_flags(parser: argparse.ArgumentParser, name: str, model_help: str, json_help: str) -> None:
    """The flags of every benchmark on the streams (stream, correction, enrol): model, cache, test hours, seed,
    backend, where the results go and their name, --json."""
    parser.add_argument("--model", default="runs/demo/train/model", help=model_help)
    parser.add_argument("--cache", help="AV-Digits, streams and window cache (default $AVCIL_CACHE or ~/.cache/avcil)")
    parser.add_argument("--hours", type=float, default=1.0, help="hours of background in the test streams")
    parser.add_argument("--seed", type=int, default=0, help="seed of the streams' layout and content")
    parser.add_argument("--backend", default="torch", choices=["torch", "onnxruntime"], help="encoders' backend")
    parser.add_argument("--out-dir", "--out", dest="out_dir", default=str(DEFAULT_DIR),
                        help="where the JSON, markdown and plot go")
    parser.add_argument("--name", default=name, help=f"file name of the results (default {name})")
    parser.add_argument("--json", action="store_true", help=json_help)


def add_flags(parser: argparse.ArgumentParser) -> None:
    add_stream_flags(parser, "stream-av-digits-lite", "model dir (default: the one `avcil demo --out runs/demo` "
                     "leaves, which knows digits 0-9)", "print the default rule's figures as one JSON object")
    parser.add_argument("--val-hours", type=float, default=0.25, help="hours of background in the val streams, on "
                        "which each rule's threshold is chosen")
