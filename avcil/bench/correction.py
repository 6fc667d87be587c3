"""`avcil bench correction`: what one "that was not X" costs and buys, on the stream benchmark's test streams.

Through the default rule, the model labels some windows of the test streams' background a class: false accepts,
in runs of consecutive windows. Each run is corrected on its own, as an operator would from the page: the run's
first window (the decision the operator saw) is kept as a correction of the class it was labelled
(`AnalyticReadout.add_rejections`, what `avcil learn --not` and the page's "not X" do), and the test streams are
decided again by the corrected model through the same scorer `avcil run` uses. Per correction: the change in event
recall and in false accepts per hour, whether the corrected window is now unknown, and the share of its run's
windows (the same content at other offsets) that are.

Side by side, the simple alternative: the same window learnt as background (`AnalyticReadout.accumulate_background`,
what `avcil learn --background --force` does with it), which moves the ridge and the Gaussians.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from avcil.bench.report import machine_load, markdown_table, write_report
from avcil.bench.stream import add_stream_flags, checked_inputs, load_split
from avcil.bench.stream_metrics import DEFAULT_RULE, DEFAULT_THRESHOLD, event_metrics, rule_scores
from avcil.errors import InvalidInput
from avcil.runtime.decision import HeadScores

WAYS = ("not", "background")  # the correction, and the simple alternative


def false_accept_runs(windows, labelled: list[np.ndarray]) -> list[tuple[int, np.ndarray]]:
    """(stream index, the window indices of the run) of every run of consecutive background windows labelled a
    class."""
    runs = []
    for s, (stream, labels) in enumerate(zip(windows.streams, labelled)):
        accepted = stream["background"] & (labels >= 0)
        starts = np.flatnonzero(accepted & ~np.concatenate([[False], accepted[:-1]]))
        for start in starts:
            end = start
            while end + 1 < len(accepted) and accepted[end + 1]:
                end += 1
            runs.append((s, np.arange(start, end + 1)))
    return runs


def corrected_labels(head, windows, way: str, inputs: torch.Tensor, class_index: int) -> list[np.ndarray]:
    """The default rule's labels of every stream after correcting `head` with one window `inputs` [1, in_dim]."""
    corrected = copy.deepcopy(head)
    readout = corrected.readout
    if way == "not":
        readout.add_rejections(inputs, class_index)
    else:
        readout.accumulate_background(inputs)
        readout.solve()
    return [np.where(s >= DEFAULT_THRESHOLD, l, -1) for l, s in rule_scores(HeadScores(corrected), windows,
                                                                          DEFAULT_RULE)]


def correction_row(head, test, run: tuple[int, np.ndarray], base_labels: list[np.ndarray], base: dict,
                   class_names: list[str]) -> dict:
    """One false-accept run corrected by its first window, each way on its own: what it changes on the streams."""
    s, members = run
    first = int(members[0])
    inputs = torch.from_numpy(test.streams[s]["inputs"][first:first + 1])
    class_index = int(base_labels[s][first])
    row = {"stream": s, "window": first, "run_windows": len(members), "class": class_names[class_index]}
    for way in WAYS:
        labels = corrected_labels(head, test, way, inputs, class_index)
        metrics = event_metrics(test, labels)
        row.update({f"{way}_recall_change": metrics["event_recall"] - base["event_recall"],
                    f"{way}_false_accepts_per_hour_change": (metrics["false_accepts_per_hour"]
                                                             - base["false_accepts_per_hour"]),
                    f"{way}_window_unknown": bool(labels[s][first] < 0),
                    f"{way}_run_unknown_share": float(np.mean(labels[s][members] < 0))})
    return row


def run(args: argparse.Namespace) -> int:
    from avcil.modeldir import ModelDir

    model_dir, cache = checked_inputs(args.model, args.cache, av_digits=False)
    loaded = ModelDir(model_dir).load(with_memory=False)
    head = loaded.head.eval()
    if HeadScores(head).readout is None or head.config.readout.get("features") != "pooled":
        raise InvalidInput(f"{model_dir}: corrections need the analytic readout on pooled features (the default)")
    started, load_before = time.perf_counter(), machine_load()
    test = load_split(model_dir, cache / "streams", cache / "av-digits", "test", args.hours, args.seed,
                      cache / "stream-windows", loaded.class_names, args.backend)
    base_labels = [np.where(s >= DEFAULT_THRESHOLD, l, -1) for l, s in rule_scores(HeadScores(head), test,
                                                                                 DEFAULT_RULE)]
    base = event_metrics(test, base_labels)
    runs = false_accept_runs(test, base_labels)
    if not runs:
        raise InvalidInput(f"{model_dir}: no false accept on the test streams to correct")
    picked = np.random.default_rng(args.seed).permutation(len(runs))[:args.corrections]
    rows = []
    for n, r in enumerate(picked, 1):
        rows.append(correction_row(head, test, runs[r], base_labels, base, loaded.class_names))
        print(f"correction {n}/{len(picked)}: not {rows[-1]['class']!r}: recall {rows[-1]['not_recall_change']:+.4f} "
              f"(as background {rows[-1]['background_recall_change']:+.4f})", file=sys.stderr, flush=True)
    summary = [_summary(way, rows) for way in WAYS]
    payload = {"model": str(model_dir), "model_version": loaded.version, "seed": args.seed, "backend": args.backend,
               "background_hours": test.background_hours, "events": base["events"],
               "event_recall_before": base["event_recall"],
               "false_accepts_per_hour_before": base["false_accepts_per_hour"],
               "false_accept_runs": len(runs), "corrections": len(rows), "load_before": load_before,
               "load_after": machine_load(), "seconds": round(time.perf_counter() - started, 1), "summary": summary,
               "per_correction": rows}
    table = (f"Model {model_dir} ({loaded.version}); test streams of `avcil bench stream` (seed {args.seed}): "
             f"{test.background_hours:.2f} h of background, {base['events']} events; default rule: event recall "
             f"{base['event_recall']:.3f}, {base['false_accepts_per_hour']:.1f} false accepts / h in "
             f"{len(runs)} runs. Each of {len(rows)} runs corrected on its own by its first window. Backend "
             f"{args.backend}, machine load {load_before} before.\n\n"
             + markdown_table(summary, [("way", "correction"), ("recall_change_mean", "event recall change, mean"),
                                        ("recall_change_worst", "worst"),
                                        ("false_accepts_per_hour_change_mean", "false accepts / h change, mean"),
                                        ("window_unknown_share", "corrected window unknown"),
                                        ("run_unknown_share_mean", "its run's windows unknown")]))
    paths = write_report(Path(args.out_dir), args.name, payload, table, "Corrections: one \"that was not X\" on the "
                         "stream benchmark", lambda p: _plot(p, rows))
    print(json.dumps({k: payload[k] for k in ("corrections", "summary")}) if args.json else
          f"wrote {paths['json']}, {paths['markdown']}, {paths['plot']}")
    return 0


def _summary(way: str, rows: list[dict]) -> dict:
    recall = np.array([r[f"{way}_recall_change"] for r in rows])
    return {"way": {"not": "not X (`learn --not`)", "background": "as background (`learn --background --force`)"}[way],
            "recall_change_mean": float(recall.mean()), "recall_change_worst": float(recall.min()),
            "false_accepts_per_hour_change_mean": float(np.mean([r[f"{way}_false_accepts_per_hour_change"]
                                                                  for r in rows])),
            "window_unknown_share": float(np.mean([r[f"{way}_window_unknown"] for r in rows])),
            "run_unknown_share_mean": float(np.mean([r[f"{way}_run_unknown_share"] for r in rows]))}


def _plot(path: Path, rows: list[dict]) -> None:
    from avcil.train.plots import plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for way, marker in zip(WAYS, "o^"):
        ax.plot([r[f"{way}_false_accepts_per_hour_change"] for r in rows],
                [100 * r[f"{way}_recall_change"] for r in rows], marker, alpha=0.6, label=_summary(way, rows)["way"])
    ax.axhline(-1.0, color="grey", lw=0.5, ls="--")
    ax.set(xlabel="change in false accepts per hour of background", ylabel="change in event recall (points)",
           title="one correction of a false accept, each on its own")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def add_flags(parser: argparse.ArgumentParser) -> None:
    add_stream_flags(parser, "correction-av-digits-lite", "model dir (default: the one `avcil demo --out runs/demo` "
                     "leaves)", "print the summary as one JSON object")
    parser.add_argument("--corrections", type=int, default=50, help="false-accept runs corrected, one at a time "
                        "(default 50, or all there are; picked with --seed)")
