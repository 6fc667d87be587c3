"""The stream benchmark's measures (`avcil bench stream`, avcil/bench/stream.py, says what they mean): the windows of
a set of streams with the event each holds, the labels a rule gives them, event recall, false accepts per hour and
wrong-class events, the curve over thresholds and the threshold chosen on it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from avcil.bench.report import percentiles
from avcil.runtime.decision import DEFAULT_SCORE, DEFAULT_SMOOTHING, DEFAULT_THRESHOLDS, REJECTED, HeadScores

EVENT_OVERLAP_S = 1.0
TARGET_RECALL = 0.9
DEFAULT_RULE = {"score": DEFAULT_SCORE, "smoothing": DEFAULT_SMOOTHING}  # what `avcil run` does out of the box
DEFAULT_THRESHOLD = DEFAULT_THRESHOLDS[DEFAULT_SCORE]


def smooth(values: np.ndarray, windows: int) -> np.ndarray:
    """The mean of each row and the `windows` - 1 rows before it (fewer at the start), as the recognizer does."""
    if windows <= 1:
        return values
    total = np.cumsum(np.concatenate([np.zeros((1, *values.shape[1:])), values]), axis=0)
    index = np.arange(1, len(values) + 1)
    low = np.maximum(index - windows, 0)
    counts = (index - low).reshape(-1, *([1] * (values.ndim - 1)))
    return (total[index] - total[low]) / counts


class StreamWindows:
    """Every window of a set of streams: ends, which event each holds (or background), and the readout inputs."""

    def __init__(self, index: dict, folder: Path, per_stream: list[dict], class_names: list[str]):
        self.class_names = class_names
        self.streams = []
        for stream, windows in zip(index["streams"], per_stream):
            ends = windows["ends"]
            starts = ends - windows["seconds"]
            event_of = np.full(len(ends), -1)
            background = np.ones(len(ends), bool)
            for e, event in enumerate(stream["events"]):
                overlap = np.minimum(ends, event["end"]) - np.maximum(starts, event["start"])
                event_of[overlap >= min(EVENT_OVERLAP_S, event["end"] - event["start"]) - 1e-6] = e
                background &= overlap <= 0
            self.streams.append({"record": stream, "ends": ends, "seconds": windows["seconds"], "event_of": event_of,
                                 "background": background, "inputs": windows["inputs"]})
        self.background_hours = sum(b["end"] - b["start"] for s in index["streams"] for b in s["background"]) / 3600


def rule_scores(scorer: HeadScores, windows: StreamWindows, rule: dict) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per stream: (label index per window before the threshold, -1 where a correction (`avcil learn --not`)
    rejects the window; smoothed open-set score per window)."""
    out = []
    for stream in windows.streams:
        ranking, scores = scorer.of_inputs(torch.from_numpy(stream["inputs"]), (rule["score"],))
        ranking = smooth(ranking, rule["smoothing"])
        score = smooth(scores[rule["score"]], rule["smoothing"])
        out.append((np.where(scores[REJECTED], -1, ranking.argmax(axis=1)), score))
    return out


def event_metrics(windows: StreamWindows, labelled: list[np.ndarray]) -> dict:
    """Metrics of one labelling (per window: class index, or -1 for unknown) of every stream."""
    names = windows.class_names
    found, wrong, delays, per_class, false_runs = 0, 0, [], {}, 0
    events = 0
    for stream, labels in zip(windows.streams, labelled):
        record = stream["record"]
        for e, event in enumerate(record["events"]):
            target = names.index(event["label"]) if event["label"] in names else None
            mine = np.flatnonzero(stream["event_of"] == e)
            if target is None or not len(mine):
                continue
            events += 1
            stats = per_class.setdefault(event["label"], {"events": 0, "found": 0, "wrong": 0, "delays": []})
            stats["events"] += 1
            hits = mine[labels[mine] == target]
            if len(hits):
                found += 1
                stats["found"] += 1
                delay = float(stream["ends"][hits[0]] - event["start"])
                delays.append(delay)
                stats["delays"].append(delay)
            if np.any((labels[mine] >= 0) & (labels[mine] != target)):
                wrong += 1
                stats["wrong"] += 1
        accepted = stream["background"] & (labels >= 0)
        # a run starts at an accepted background window whose predecessor is not one
        false_runs += int(np.sum(accepted & ~np.concatenate([[False], accepted[:-1]])))
    result = {"events": events, "event_recall": found / max(1, events), "wrong_class_share": wrong / max(1, events),
              "false_accepts": false_runs, "false_accepts_per_hour": false_runs / windows.background_hours,
              "background_hours": windows.background_hours,
              "delay_s_median": float(np.median(delays)) if delays else None,
              "delay_s_p90": percentiles(delays, (90,), suffix="_s")["p90_s"]}
    result["per_class"] = {
        label: {"events": s["events"], "event_recall": s["found"] / s["events"],
                "wrong_class_share": s["wrong"] / s["events"],
                "delay_s_median": float(np.median(s["delays"])) if s["delays"] else None}
        for label, s in sorted(per_class.items())}
    return result


def window_accuracy(windows: StreamWindows, best: list[np.ndarray]) -> dict:
    """Of the event windows, the share whose best class (`best`: per stream and window, before any threshold) is
    the event's: every event window, and those that hold the whole event. What the classes' readout makes of a
    window with background around the event, whatever the threshold: event recall and wrong-class labels cannot be
    better than it allows."""
    hits = {"event_windows": [], "whole_event_windows": []}
    for stream, labels in zip(windows.streams, best):
        starts = stream["ends"] - stream["seconds"]
        for i in np.flatnonzero(stream["event_of"] >= 0):
            event = stream["record"]["events"][stream["event_of"][i]]
            right = event["label"] in windows.class_names and labels[i] == windows.class_names.index(event["label"])
            hits["event_windows"].append(right)
            if starts[i] <= event["start"] + 1e-6 and stream["ends"][i] >= event["end"] - 1e-6:
                hits["whole_event_windows"].append(right)
    return {name: {"windows": len(h), "accuracy": float(np.mean(h)) if h else None} for name, h in hits.items()}


def sweep(windows: StreamWindows, scored: list[tuple[np.ndarray, np.ndarray]], points: int = 60) -> list[dict]:
    """Recall and false accepts per hour at thresholds spread over the scores' quantiles."""
    every = np.concatenate([s for _, s in scored])
    thresholds = np.unique(np.quantile(every, np.linspace(0.0, 1.0, points)))
    curve = []
    for threshold in thresholds:
        metrics = event_metrics(windows, [np.where(s >= threshold, l, -1) for l, s in scored])
        curve.append({"threshold": float(threshold), **{k: metrics[k] for k in (
            "event_recall", "false_accepts_per_hour", "wrong_class_share")}})
    return curve


def choose_threshold(curve: list[dict]) -> float:
    """The fewest false accepts per hour at an event recall of at least TARGET_RECALL (the highest such threshold
    on a tie). Where no threshold reaches it (events the model labels wrong at every threshold), the same at
    TARGET_RECALL of the highest recall any threshold reaches: lose at most a tenth of the events the classes can
    be found in at all, rather than take the lowest threshold and every false accept with it."""
    reachable = max(p["event_recall"] for p in curve)
    floor = TARGET_RECALL if reachable >= TARGET_RECALL else TARGET_RECALL * reachable
    good = [p for p in curve if p["event_recall"] >= floor - 1e-12]
    best = min(p["false_accepts_per_hour"] for p in good)
    return max(p["threshold"] for p in good if p["false_accepts_per_hour"] == best)
