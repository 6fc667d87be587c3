"""`avcil bench soak --minutes N`: live recognition for N minutes with a field class learnt every few minutes,
watching what grows or stalls over hours.

Setting (lite profile, AV-Digits): a model dir with the first digits trained by the analytic method (a 340-clip
memory); the recognizer (in this process, the thread settings of avcil.runtime.threads) decides paced AV-Digits
test clips, one per digit 0-9 in a loop, 3 s each, at the lite window (3 s) and hop (0.96 s). Every
`--learn-every` minutes one of the remaining digits is learnt by a real `avcil learn --files` subprocess (its own
process, nice 10, its threads capped: its defaults) from 40 training clips; the recognizer picks the new version up
by its watcher. Up to 5 field digits (a 60-minute run at the default 10 minutes: digits 5-9 on a base of 0-4).

Recorded: the recognizer process's RSS and open file descriptors every `--sample-seconds`, with the load average;
per 5 minutes, decision latency p50/p95/p99, windows dropped, the largest gap between decisions (hops) and the
accuracy on windows that lie mostly (>= 2 of 3 s) in one digit's clip; the reloads; each field digit's accuracy
after it was learnt. The playlist's start is the first window's start (the schedule's first window begins where
the paced files begin). A partial JSON is rewritten every minute (`soak-...-partial.json`), so a run cut short
still leaves its numbers; `--replot JSON` writes the markdown and plot of such a file.
Targets (issue 12): RSS growth <= 5 % after the first 5 minutes, no dropped window on a quiet machine, no decision
gap over 2 hops, every field class recognised after it is learnt.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from avcil.bench.report import percentiles
from avcil.bench.report import DEFAULT_DIR, markdown_table, write_report

TARGETS = {"rss_growth_after_warmup": 0.05, "dropped_windows": 0, "largest_gap_hops": 2.0,
           "field_class_accuracy": 0.5}
DIGITS = 10
MAX_FIELD_DIGITS = 5
SLOT_S = 3.0  # one AV-Digits clip (2 s) held to the lite window
BUCKET_S = 300.0
WARMUP_S = 300.0  # RSS growth is measured from here: the first minutes fill caches and allocator pools


def process_resources(pid: int | str = "self") -> dict:
    """Resident memory (MB) and open file descriptors of a process, from /proc."""
    rss_kb = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                  if line.startswith("VmRSS:"))
    return {"rss_mb": rss_kb / 1024, "open_fds": len(os.listdir(f"/proc/{pid}/fd"))}


def field_plan(minutes: float, learn_every_min: float) -> tuple[int, list[tuple[float, str]]]:
    """(base digits, [(seconds from the start, digit to learn)]): one field digit per `learn_every_min` minutes
    that ends before the run does, at most MAX_FIELD_DIGITS, taken from the top."""
    count = min(MAX_FIELD_DIGITS, int(np.ceil(minutes / learn_every_min)) - 1)
    count = max(count, 0)
    base = DIGITS - count
    return base, [((i + 1) * learn_every_min * 60.0, str(base + i)) for i in range(count)]


def truth_of(window: list[float], playlist_start: float, playlist: list[str]) -> str | None:
    """The digit whose clip covers at least 2 of the window's 3 s, or None when the window straddles two."""
    offset = (window[0] - playlist_start) / SLOT_S
    slot = int(round(offset))
    if abs(offset - slot) * SLOT_S > SLOT_S / 3:
        return None
    return playlist[slot % len(playlist)]


def analyse(decisions: list[dict], samples: list[dict], learns: list[dict], reloads: list[dict], hop: float,
            playlist: list[str], field_digits: list[str], started: float, bucket_s: float = BUCKET_S,
            warmup_s: float = WARMUP_S) -> dict:
    """Everything the report shows, from compact decisions ({time, window, latency_ms, label, dropped_windows,
    model_version}), resource samples ({time, rss_mb, open_fds, ...}), the learns and the reloads. Accuracy counts
    the windows of digits the model knows at the time: the base digits, and each field digit once its version
    decides."""
    result: dict = {"decisions": len(decisions), "reloads": reloads, "learns": learns}
    if not decisions:
        return result
    times = np.array([d["time"] for d in decisions]) - started
    latency = np.array([d["latency_ms"] for d in decisions])
    dropped = np.array([d["dropped_windows"] for d in decisions])
    gaps = np.diff(times) / hop
    playlist_start = decisions[0]["window"][0]
    truths = [truth_of(d["window"], playlist_start, playlist) for d in decisions]
    correct = np.array([t is not None and d["label"] == t for d, t in zip(decisions, truths)])
    known_at = {digit: "v" + "9" * 8 for digit in field_digits}  # digit -> the version that first knows it
    known_at.update({learn["label"]: learn["version"] for learn in learns if learn.get("version")})
    known = np.array([t is not None and d["model_version"] >= known_at.get(t, "") for d, t in zip(decisions, truths)])
    buckets = []
    for low in np.arange(0.0, times[-1] + 1e-9, bucket_s):
        inside = (times >= low) & (times < low + bucket_s)
        if not inside.any():
            continue
        rows = np.flatnonzero(inside)
        bucket_gaps = gaps[rows[rows > 0] - 1]
        before = dropped[rows[0] - 1] if rows[0] > 0 else 0
        scored = inside & known
        buckets.append({"from_min": round(low / 60, 2), "to_min": round((low + bucket_s) / 60, 2),
                        "decisions": int(inside.sum()), **percentiles(latency[inside], digits=2),
                        "dropped_windows": int(dropped[rows[-1]] - before),
                        "largest_gap_hops": round(float(bucket_gaps.max()), 2) if bucket_gaps.size else None,
                        "accuracy": round(float(correct[scored].mean()), 3) if scored.any() else None})
    result["buckets"] = buckets
    result["latency_ms"] = percentiles(latency, digits=2)
    result["dropped_windows"] = int(dropped[-1])
    result["largest_gap_hops"] = round(float(gaps.max()), 2) if gaps.size else None
    result["gaps_over_2_hops"] = int((gaps > 2.0 + 0.05).sum())  # 5 %: a decision's own latency jitter
    result["field_classes"] = []
    for learn in learns:
        label, version = learn["label"], learn.get("version")
        after = np.array([t == label and version is not None and d["model_version"] >= version
                          for d, t in zip(decisions, truths)])
        accuracy = round(float(correct[after].mean()), 3) if after.any() else None
        result["field_classes"].append({"label": label, "version": version, "windows_after": int(after.sum()),
                                        "accuracy_after": accuracy,
                                        "recognised": accuracy is not None
                                        and accuracy >= TARGETS["field_class_accuracy"]})
    result["rss"] = rss_growth(samples, warmup_s)
    result["open_fds"] = {"first": samples[0]["open_fds"], "last": samples[-1]["open_fds"],
                          "max": max(s["open_fds"] for s in samples)} if samples else None
    return result


def rss_growth(samples: list[dict], warmup_s: float) -> dict | None:
    """RSS at the first sample after the warm-up, its largest value after, and the growth between them (the
    warm-up is cut to half the run for runs shorter than twice it)."""
    if not samples:
        return None
    span = samples[-1]["time"] - samples[0]["time"]
    warmup = min(warmup_s, span / 2)
    after = [s for s in samples if s["time"] - samples[0]["time"] >= warmup]
    base = after[0]["rss_mb"]
    peak = max(s["rss_mb"] for s in after)
    return {"warmup_s": warmup, "after_warmup_mb": round(base, 1), "max_after_mb": round(peak, 1),
            "last_mb": round(samples[-1]["rss_mb"], 1), "growth": round(peak / base - 1, 4)}


class Soak:
    """The run: the recognizer on a thread, `avcil learn` subprocesses on a timer, a sampler; `payload()` at any
    moment gives the numbers so far."""

    def __init__(self, args: argparse.Namespace, model_dir: Path, files: dict, profile):
        from avcil.runtime.recognizer import Recognizer

        self.args, self.model_dir, self.files = args, model_dir, files
        self.recognizer = Recognizer(model_dir, args.backend, profile=profile if args.backend == "torch" else None,
                                     score="softmax", threshold=0.0, smoothing=1)  # the raw argmax
        self.decisions: list[dict] = []
        self.samples: list[dict] = []
        self.learns: list[dict] = []
        self.playlist = [str(d) for d in range(DIGITS)]
        self.field_digits: list[str] = []
        self.stop = threading.Event()
        self.hop = None
        self.jsonl = open(args.out_dir / f"{name_of(args)}-decisions.jsonl", "w")

    def on_decision(self, decision: dict, window) -> None:
        self.jsonl.write(json.dumps(decision) + "\n")
        self.decisions.append({"time": decision["time"], "window": decision["window"],
                               "latency_ms": decision["latency_ms"]["total"], "label": decision["label"],
                               "dropped_windows": decision["dropped_windows"],
                               "model_version": decision["model_version"]})

    def sample(self) -> None:
        self.samples.append({"time": time.time(), **process_resources(), "load_average": os.getloadavg(),
                             "decisions": len(self.decisions)})

    def learn(self, digit: str) -> dict:
        command = [sys.executable, "-m", "avcil.cli", "learn", "--model", str(self.model_dir), "--label", digit,
                   "--json", "--files", *map(str, self.files[("train", digit)][:40])]
        began = time.time()
        done = subprocess.run(command, capture_output=True, text=True)
        row = {"label": digit, "start": began, "end": time.time(), "returncode": done.returncode}
        if done.returncode == 0:
            row.update(json.loads(done.stdout.strip().splitlines()[-1]))
        else:
            row["error"] = done.stderr.strip().splitlines()[-1:]
        return row

    def run(self, plan: list[tuple[float, str]], seconds: float) -> None:
        from avcil.runtime.recognizer import run_live

        playlist = ",".join(str(self.files[("test", d)][0]) for d in self.playlist)
        summary: dict = {}
        worker = threading.Thread(target=lambda: summary.update(run_live(
            self.recognizer, playlist, playlist, self.on_decision, loop=True, slot_s=SLOT_S, stop=self.stop)),
            name="recognition")
        self.started = time.time()
        worker.start()
        pending = list(plan)
        self.field_digits = [digit for _, digit in plan]
        next_partial = 60.0
        learner: threading.Thread | None = None  # one at a time, beside the sampling
        try:
            while (elapsed := time.time() - self.started) < seconds and worker.is_alive():
                self.sample()
                if pending and elapsed >= pending[0][0] and not (learner and learner.is_alive()):
                    digit = pending.pop(0)[1]
                    learner = threading.Thread(target=lambda: self.learns.append(self.learn(digit)), name="learn")
                    learner.start()
                if elapsed >= next_partial:
                    self.write_partial()
                    next_partial += 60.0
                time.sleep(self.args.sample_seconds)
        finally:
            if learner is not None:
                learner.join()
            self.stop.set()
            worker.join()
            self.recognizer.close()
            self.jsonl.close()
        self.hop = summary.get("hop_s")
        self.summary = summary

    def payload(self, complete: bool) -> dict:
        hop = self.hop or snap_hop_of(self.recognizer)
        return {"complete": complete, "settings": settings_of(self.args, hop), "threads": self.recognizer.threads,
                "started": self.started, "elapsed_s": round(time.time() - self.started, 1),
                "samples": self.samples,
                **analyse(self.decisions, self.samples, self.learns, self.recognizer.reloads, hop, self.playlist,
                          self.field_digits, self.started)}

    def write_partial(self) -> None:
        from avcil.fileio import atomic_write

        path = self.args.out_dir / f"{name_of(self.args)}-partial.json"
        atomic_write(path, json.dumps(self.payload(complete=False), indent=2).encode())  # whole, for a reader


def snap_hop_of(recognizer) -> float:
    from avcil.runtime.speech_stream import snap_hop
    from avcil.runtime.windows import HOP_SHARE, window_seconds

    hop = window_seconds(recognizer.audio_prep) * HOP_SHARE
    return snap_hop(hop, recognizer.audio_prep) if recognizer.speech is not None else hop


def name_of(args: argparse.Namespace) -> str:
    return f"soak-lite-cpu-{args.backend}-{args.minutes:g}min"


def settings_of(args: argparse.Namespace, hop: float) -> dict:
    return {"minutes": args.minutes, "learn_every_min": args.learn_every, "backend": args.backend, "hop_s": hop,
            "slot_s": SLOT_S, "sample_seconds": args.sample_seconds, "learner": "avcil learn defaults (nice 10, "
            "threads capped)"}


def bucket_load(payload: dict, bucket: dict) -> float | None:
    """The machine's mean 1-minute load average over a bucket's samples (other work shares the machine)."""
    inside = [s["load_average"][0] for s in payload["samples"]
              if bucket["from_min"] <= (s["time"] - payload["started"]) / 60 < bucket["to_min"]]
    return round(float(np.mean(inside)), 2) if inside else None


def report(payload: dict, out_dir: Path, name: str) -> dict:
    from avcil.train.plots import plt

    buckets = [{**b, "load": bucket_load(payload, b)} for b in payload.get("buckets", [])]
    table = markdown_table(buckets, [("from_min", "from (min)"), ("to_min", "to (min)"), ("load", "1-min load"),
                                     ("decisions", "decisions"),
                                     ("p50_ms", "p50 (ms)"), ("p95_ms", "p95 (ms)"), ("p99_ms", "p99 (ms)"),
                                     ("dropped_windows", "dropped"), ("largest_gap_hops", "largest gap (hops)"),
                                     ("accuracy", "accuracy")])
    rss = payload.get("rss") or {}
    field = "; ".join(f"{c['label']} ({c['version']}): accuracy {c['accuracy_after']} on {c['windows_after']} windows"
                      for c in payload.get("field_classes", []))
    loads = [s["load_average"][0] for s in payload["samples"]]
    text = (f"{'Complete' if payload['complete'] else 'PARTIAL (the run was still going or was cut short)'}: "
            f"{payload['elapsed_s'] / 60:.1f} of {payload['settings']['minutes']} minutes, "
            f"{payload['decisions']} decisions, backend {payload['settings']['backend']}, threads "
            f"{payload['threads']}.\n\n{table}\n"
            f"- RSS: {rss.get('after_warmup_mb')} MB after {rss.get('warmup_s', 0) / 60:.1f} min, max after "
            f"{rss.get('max_after_mb')} MB, growth {rss.get('growth')} (target <= "
            f"{TARGETS['rss_growth_after_warmup']})\n"
            f"- open file descriptors: {payload.get('open_fds')}\n"
            f"- windows dropped: {payload.get('dropped_windows')} (target 0 on a quiet machine)\n"
            f"- largest gap between decisions: {payload.get('largest_gap_hops')} hops, "
            f"{payload.get('gaps_over_2_hops')} gaps over 2 hops (target none)\n"
            f"- field classes after they were learnt: {field or 'none'} (target: each recognised, >= "
            f"{TARGETS['field_class_accuracy']})\n- reloads: {len(payload.get('reloads', []))}; learns: "
            + ", ".join(f"{row['label']} rc {row['returncode']} "
                        f"({row.get('learn_seconds', '-')} s learn, {row.get('encode_seconds', '-')} s encode)"
                        for row in payload.get("learns", []))
            + f"\n- 1-min load average over the run: min {min(loads, default=0):.2f}, max {max(loads, default=0):.2f}"
              f" (a shared 2-core machine: 'quiet' is not quiet)\n")

    def plot(path: Path) -> None:
        samples = payload["samples"]
        t0 = payload["started"]
        fig, axes = plt.subplots(3, 1, figsize=(9, 8), sharex=True)
        minutes = [(s["time"] - t0) / 60 for s in samples]
        axes[0].plot(minutes, [s["rss_mb"] for s in samples], label="RSS (MB)")
        axes[0].set_ylabel("RSS (MB)")
        ax_fd = axes[0].twinx()
        ax_fd.plot(minutes, [s["open_fds"] for s in samples], color="tab:orange", label="open fds")
        ax_fd.set_ylabel("open fds")
        middle = [(b["from_min"] + b["to_min"]) / 2 for b in buckets]
        for key in ("p50_ms", "p95_ms", "p99_ms"):
            axes[1].plot(middle, [b.get(key) for b in buckets], "o-", label=key)
        axes[1].set_ylabel("decision latency (ms)")
        axes[1].legend()
        axes[2].plot(minutes, loads, color="grey", label="1-min load average")
        axes[2].set(xlabel="minutes", ylabel="load average")
        for ax in axes:
            for learn in payload.get("learns", []):
                ax.axvline((learn["start"] - t0) / 60, color="green", alpha=0.4)
        axes[0].set_title("soak: resources, latency per 5 min, load (green: a class learnt)")
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)

    return write_report(out_dir, name, payload, text, f"Soak: live recognition for "
                        f"{payload['settings']['minutes']} minutes with field learning (lite, CPU)", plot)


def run(args: argparse.Namespace) -> int:
    args.out_dir = Path(args.out_dir)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    if args.replot:
        payload = json.loads(Path(args.replot).read_text())
        paths = report(payload, args.out_dir, Path(args.replot).stem)
        print(paths["markdown"].read_text())
        return 0
    from avcil.bench.update import build_model
    from avcil.data.avdigits import build_av_digits
    from avcil.data.avdigits import clip_files
    from avcil.model.encoders import profile_from_record
    from avcil.fileio import default_cache
    from avcil.train.benchmarks import av_digits_benchmark

    cache = Path(args.cache) if args.cache else default_cache()
    benchmark = av_digits_benchmark(cache)
    files = clip_files(build_av_digits(cache / "av-digits"))
    base, plan = field_plan(args.minutes, args.learn_every)
    with tempfile.TemporaryDirectory(prefix="avcil-soak-") as work:
        model_dir = Path(work) / "model"
        build_model(model_dir, benchmark, "analytic", epochs=1, digits=base)
        profile = profile_from_record(benchmark.profile)
        if args.backend == "onnxruntime":
            from avcil.export.cached import export_once

            export_once(model_dir, profile, cache)
        soak = Soak(args, model_dir, files, profile)
        soak.run(plan, args.minutes * 60.0)
        payload = soak.payload(complete=True)
    paths = report(payload, args.out_dir, name_of(args))
    (args.out_dir / f"{name_of(args)}-partial.json").unlink(missing_ok=True)
    print(paths["markdown"].read_text())
    return 0


def add_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--minutes", type=float, default=60.0, help="length of the run (default 60)")
    parser.add_argument("--learn-every", type=float, default=10.0, metavar="MIN",
                        help="minutes between two field classes (default 10; at most 5 are learnt)")
    parser.add_argument("--backend", choices=("torch", "onnxruntime"), default="torch")
    parser.add_argument("--sample-seconds", type=float, default=10.0, help="between two RSS/fd samples")
    parser.add_argument("--cache", help="AV-Digits and features cache (default $AVCIL_CACHE or ~/.cache/avcil)")
    parser.add_argument("--replot", metavar="JSON", help="only write the markdown and plot of a (partial) JSON")
    parser.add_argument("--out-dir", default=DEFAULT_DIR)
