"""`avcil bench speed`: the throughputs and latencies a user of the lite profile waits on, in one run, with the
encoders in torch and in ONNX Runtime side by side:

- extraction: `avcil extract` of the first `--extract-clips` AV-Digits clips into a new store, in a process of its
  own: clips per second as it reports them (the profile's loading and, in ONNX Runtime, the encoders' export when
  the cache lacks it included) and with the process's start-up;
- field encoding: `--field-clips` clip files of one digit encoded as `avcil learn --files` encodes them: clips/s;
- replay: the live path at CPU speed (avcil/runtime/replay.py) over a stream of `--replay-clips` test clips one
  after another: seconds of stream decided per second of wall time, at the live hop (0.96 s, windows overlapping,
  as `avcil bench stream` runs it) and at a hop of one window with one clip a window (as the demo replays its test
  clips);
- decisions: from a window's end to its decision on paced clips, p50 and p95, as `avcil bench live-latency`
  measures them (`--paced-clips` 2 s clips per backend), by a lite model with a random attention head or, with
  `--model`, by a model dir with its readout and default score (the demo's, as `avcil run` decides).

Targets on two quiet cores: extraction >= 8 clips/s, 40 field clips in <= 8 s, replay >= 20x real time, decision
p95 <= 50 ms in ONNX Runtime and <= 70 ms in torch. Writes speed-lite-cpu.{json,md,png} with the machine and its
load average before and after each part (a shared machine shows there).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from avcil.bench.report import DEFAULT_DIR, machine, machine_load, markdown_table, write_report
from avcil.errors import StageFailed

BACKENDS = ("torch", "onnxruntime")
TARGETS = {"extract_clips_per_s": 8.0, "field_seconds_for_40": 8.0, "replay_real_time_factor": 20.0,
           "decision_p95_ms": {"onnxruntime": 50.0, "torch": 70.0}}


def _timed(part: str, work) -> dict:
    """`work()` (-> a dict of results), with its wall time and the load averages around it."""
    before = machine_load()
    started = time.perf_counter()
    result = work()
    return {"part": part, **result, "seconds": round(time.perf_counter() - started, 2), "load_before": before,
            "load_after": machine_load()}


def extraction(clips_csv: Path, count: int, backend: str, scratch: Path) -> dict:
    """`avcil extract` as a user runs it, in a process of its own: clips/s as it reports them (from the profile
    loaded to the last clip stored) and with the process's start-up (imports, the profile's weights)."""
    store, summary = scratch / f"store-{backend}", scratch / f"extract-{backend}.json"
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "avcil", "extract", "--videos", str(clips_csv), "--out", str(store),
                           "--limit", str(count), "--backend", backend, "--json", str(summary)],
                          capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise StageFailed(f"avcil extract --backend {backend} failed: {done.stderr.strip()[-400:]}")
    reported = json.loads(summary.read_text())
    return {"clips": reported["extracted"], "clips_per_s": reported["clips_per_second"],
            "clips_per_s_with_start_up": round(reported["extracted"] / seconds, 3)}


def field_encoding(files: list[Path], backend: str) -> dict:
    from avcil.export.cached import use_onnxruntime
    from avcil.fileio import default_cache
    from avcil.model.encoders import load_profile

    profile = load_profile("lite")
    use_onnxruntime(profile, default_cache(), when=backend)
    started = time.perf_counter()
    profile.encode_files(files, progress=False)
    seconds = time.perf_counter() - started
    return {"clips": len(files), "encode_seconds": round(seconds, 2), "clips_per_s": round(len(files) / seconds, 2)}


def replay_speed(clips: list[Path], backend: str, scratch: Path, slot_s: float | None = None) -> dict:
    """Replay `clips` one after another at the live hop, or with `slot_s` one clip a window of that length (window
    = hop = slot, the clip centred in it); the stream's seconds per second of wall time."""
    from avcil.bench.live_latency import lite_model
    from avcil.runtime.recognizer import Recognizer
    from avcil.runtime.replay import replay

    root = scratch / f"model-{backend}"
    profile = lite_model(root, backend)
    recognizer = Recognizer(root, backend, profile=profile if backend == "torch" else None, smoothing=1, watch=False)
    ends: list[float] = []
    paths = ",".join(str(p) for p in clips)
    try:
        started = time.perf_counter()
        replay(recognizer, paths, paths, lambda decision, window: ends.append(window.end),
               **({"hop": slot_s, "slot_s": slot_s} if slot_s else {}))
        seconds = time.perf_counter() - started
    finally:
        recognizer.close()
    return {"decisions": len(ends), "stream_seconds": round(ends[-1], 2),
            "real_time_factor": round(ends[-1] / seconds, 2)}


def spread(items: list, count: int) -> list:
    """`count` items spread evenly over `items` (all of them when there are no more)."""
    if count >= len(items):
        return list(items)
    return [items[round(i)] for i in np.linspace(0, len(items) - 1, count)]


def decisions(clips: list[Path], backend: str, model: Path | None = None) -> dict:
    from avcil.bench.live_latency import measure

    measured = measure(backend, clips, model)
    return {"decisions": measured["decisions"], "p50_ms": measured["latency"]["total"]["p50_ms"],
            "p95_ms": measured["latency"]["total"]["p95_ms"], "stages": measured["latency"]}


def run(args: argparse.Namespace) -> int:
    from avcil.data.avdigits import build_av_digits
    from avcil.fileio import default_cache
    from avcil.model.encoders.lite import AUDIO_WINDOW_SECONDS  # the window of the lite model replay_speed builds

    clips_csv = Path(build_av_digits(default_cache() / "av-digits"))
    tests = sorted(clips_csv.parent.glob("clips/test/*/*.mp4"))
    field = sorted(clips_csv.parent.glob("clips/train/9/*.mp4"))[:args.field_clips]
    rows = []
    with tempfile.TemporaryDirectory(prefix="avcil-speed-") as tmp:
        for backend in BACKENDS:
            rows.append({"backend": backend,
                         "extract": _timed("extract", lambda: extraction(clips_csv, args.extract_clips, backend,
                                                                         Path(tmp))),
                         "field": _timed("field", lambda: field_encoding(field, backend)),
                         "replay": _timed("replay", lambda: replay_speed(spread(tests, args.replay_clips), backend,
                                                                         Path(tmp))),
                         "replay_apart": _timed("replay_apart", lambda: replay_speed(
                             spread(tests, args.replay_clips), backend, Path(tmp), AUDIO_WINDOW_SECONDS)),
                         "decisions": _timed("decisions", lambda: decisions(spread(tests, args.paced_clips),
                                                                            backend, args.model))})
    result = {"targets": TARGETS, "rows": rows,
              "settings": {**{k: getattr(args, k) for k in ("extract_clips", "field_clips", "replay_clips",
                                                            "paced_clips")},
                           "decisions_by": str(args.model) if args.model else "a lite model with a random attention "
                                                                              "head"}}
    text = describe(result)
    paths = write_report(args.out_dir, "speed-lite-cpu", result, text, "Speed of the lite profile on this CPU",
                         lambda path: plot(result, path))
    print(text)
    print(f"wrote {paths['json']}, {paths['markdown']}, {paths['plot']}")
    return 0


def describe(result: dict) -> str:
    table = markdown_table([{
        "backend": r["backend"],
        "extract": f"{r['extract']['clips_per_s']} ({r['extract']['clips_per_s_with_start_up']} with start-up)",
        "field": f"{r['field']['clips_per_s']} ({r['field']['encode_seconds']} s for {r['field']['clips']})",
        "replay": f"{r['replay']['real_time_factor']} / {r['replay_apart']['real_time_factor']}",
        "p50": r["decisions"]["p50_ms"], "p95": r["decisions"]["p95_ms"],
        "load": f"{r['extract']['load_before'][0]} / {r['decisions']['load_after'][0]}"} for r in result["rows"]],
        [("backend", "encoders in"), ("extract", "extraction (clips/s)"), ("field", "field encoding (clips/s)"),
         ("replay", "replay (x real time): live hop / a clip a window"), ("p50", "decision p50 (ms)"),
         ("p95", "decision p95 (ms)"),
         ("load", "1-min load before / after")])
    targets = result["targets"]
    return (f"{machine()['processor']}, {machine()['threads']} threads. Settings: {result['settings']}.\n\n{table}\n\n"
            f"Targets on two quiet cores: extraction >= {targets['extract_clips_per_s']} clips/s, 40 field clips "
            f"in <= {targets['field_seconds_for_40']} s, replay >= {targets['replay_real_time_factor']}x real time, "
            f"decision p95 <= {targets['decision_p95_ms']['onnxruntime']} ms (ONNX Runtime) and <= "
            f"{targets['decision_p95_ms']['torch']} ms (torch). Extraction: clips/s as `avcil extract` reports them, "
            f"and with its process's start-up; field encoding quiet, in a fresh profile; decisions timed from a "
            f"window's end on paced clips.\n")


def plot(result: dict, path: Path) -> None:
    """Clips/s and real-time factor (left) and decision latency (right), per backend."""
    from avcil.train.plots import plt

    rows = result["rows"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9.5, 3.6))
    measures = [("extraction clips/s", lambda r: r["extract"]["clips_per_s"]),
                ("field clips/s", lambda r: r["field"]["clips_per_s"]),
                ("replay x real time", lambda r: r["replay"]["real_time_factor"]),
                ("replay, a clip a window", lambda r: r["replay_apart"]["real_time_factor"])]
    width = 0.8 / len(rows)
    for i, row in enumerate(rows):
        left.bar([m + i * width for m in range(len(measures))], [get(row) for _, get in measures], width,
                 label=row["backend"])
        right.bar([m + i * width for m in range(2)], [row["decisions"]["p50_ms"], row["decisions"]["p95_ms"]], width,
                  label=row["backend"])
    left.set(xticks=[m + width / 2 for m in range(len(measures))], xticklabels=[n for n, _ in measures],
             title="throughput (higher is better)")
    right.set(xticks=[width / 2, 1 + width / 2], xticklabels=["p50", "p95"], ylabel="ms",
              title="decision latency (lower is better)")
    left.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def add_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--extract-clips", type=int, default=300, help="AV-Digits clips extracted per backend")
    parser.add_argument("--field-clips", type=int, default=40, help="clip files encoded as avcil learn --files does")
    parser.add_argument("--replay-clips", type=int, default=30, help="test clips replayed one after another")
    parser.add_argument("--paced-clips", type=int, default=24, help="test clips played in real time per backend "
                        "(about two decisions each)")
    parser.add_argument("--model", type=Path, help="decide the paced clips with this model dir, its readout and its "
                        "default score, as `avcil run` does (e.g. the demo's runs/demo/train/model, exported for "
                        "onnxruntime; default: a lite model with a random attention head, the encoders' cost alone)")
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_DIR)
