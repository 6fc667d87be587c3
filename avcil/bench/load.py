"""`avcil bench load`: decision latency of the live recognizer quiet and beside CPU-bound competitors.

Per backend (torch, onnxruntime): the lite profile's recognizer (random 10-class head, as avcil.bench.live_latency;
the thread settings of avcil.runtime.threads, `--threads` to change them) decides paced AV-Digits test clips in a
loop for `--seconds` per phase: quiet, then beside 1 and 2 CPU-bound competitor processes (a busy Python loop each,
at the recognizer's priority) that the benchmark starts before the phase and kills after it. Reported per phase:
p50/p95/p99 of the total (window end -> decision) and of each stage, windows dropped, the ratio of p95 to the quiet
phase's, and the 1-minute load average just before the phase (the machine is shared: quiet is not quiet).
Targets (issue 12): p95 with one competitor <= 1.5x quiet, with two <= 2.5x, for both backends.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from avcil.bench.report import DEFAULT_DIR, markdown_table, write_report

TARGET_RATIO = {1: 1.5, 2: 2.5}
COMPETITOR = "while True: pass"
SETTLE_S = 3.0  # competitors running before a phase starts: the scheduler has settled, the load average rises


def start_competitors(count: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", COMPETITOR]) for _ in range(count)]


def stop_competitors(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        process.kill()
        process.wait()


def measure_backend(backend: str, clips: list[Path], seconds: float, competitors: list[int], threads) -> list[dict]:
    from avcil.bench.live_latency import lite_model, summarise
    from avcil.runtime.recognizer import Recognizer, run_live

    paths = ",".join(str(p) for p in clips)
    rows = []
    with tempfile.TemporaryDirectory(prefix="avcil-load-") as tmp:
        profile = lite_model(Path(tmp) / "model", backend)
        recognizer = Recognizer(Path(tmp) / "model", backend, profile=profile if backend == "torch" else None,
                                smoothing=1, watch=False, threads=threads)
        try:
            for count in competitors:
                processes = start_competitors(count)
                try:
                    time.sleep(SETTLE_S if count else 0.0)
                    load_before = os.getloadavg()
                    decisions: list[dict] = []
                    summary = run_live(recognizer, paths, paths, lambda d, w: decisions.append(d), loop=True,
                                       duration=seconds)
                finally:
                    stop_competitors(processes)
                rows.append({"competitors": count, "threads": recognizer.threads,
                             **summarise(backend, decisions, summary, load_before)})
        finally:
            recognizer.close()
    quiet = next((r for r in rows if r["competitors"] == 0), None)
    for row in rows:
        p95 = row["latency"]["total"]["p95_ms"]
        row["p95_ratio_to_quiet"] = round(p95 / quiet["latency"]["total"]["p95_ms"], 3) if quiet else None
        row["target_ratio"] = TARGET_RATIO.get(row["competitors"])
        row["met"] = None if row["target_ratio"] is None or row["p95_ratio_to_quiet"] is None else \
            row["p95_ratio_to_quiet"] <= row["target_ratio"]
    return rows


def run(args: argparse.Namespace) -> int:
    from avcil.data.avdigits import build_av_digits
    from avcil.runtime.threads import RuntimeThreads
    from avcil.fileio import default_cache
    from avcil.train.plots import plt

    csv_path = Path(build_av_digits(default_cache() / "av-digits"))
    clips = sorted(csv_path.parent.glob("clips/test/*/*.mp4"))[::12][:args.clips]
    rows = [row for backend in args.backends for row in measure_backend(
        backend, clips, args.seconds, args.competitors, RuntimeThreads(args.threads, backend=backend))]
    table_rows = [{"backend": r["backend"], "competitors": r["competitors"],
                   "load": round(r["load_average_before"][0], 2), "decisions": r["decisions"],
                   "dropped": r["dropped_windows"], **r["latency"]["total"], "ratio": r["p95_ratio_to_quiet"],
                   "target": r["target_ratio"], "met": r["met"]} for r in rows]
    table = markdown_table(table_rows, [
        ("backend", "backend"), ("competitors", "CPU-bound competitors"), ("load", "1-min load before"),
        ("decisions", "decisions"), ("dropped", "dropped"), ("p50_ms", "p50 (ms)"), ("p95_ms", "p95 (ms)"),
        ("p99_ms", "p99 (ms)"), ("ratio", "p95 / quiet p95"), ("target", "target ratio"), ("met", "met")])
    text = (f"{args.seconds:g} s per phase on {len(clips)} paced AV-Digits test clips in a loop; threads "
            f"{ {r['backend']: r['threads'] for r in rows} }; {os.cpu_count()} cores. The load average is the machine's, taken before each "
            f"phase (other work shares it).\n\n{table}")

    def plot(path: Path) -> None:
        fig, axes = plt.subplots(1, len(args.backends), figsize=(5 * len(args.backends), 3.5), squeeze=False)
        for ax, backend in zip(axes[0], args.backends):
            mine = [r for r in rows if r["backend"] == backend]
            for key in ("p50_ms", "p95_ms", "p99_ms"):
                ax.plot([r["competitors"] for r in mine], [r["latency"]["total"][key] for r in mine], "o-",
                        label=key.split("_")[0])
            ax.set(xlabel="CPU-bound competitor processes", ylabel="decision latency (ms)", title=backend,
                   xticks=args.competitors)
            ax.legend()
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)

    name = f"load-lite-cpu-threads{args.threads or '-default'}"
    write_report(args.out_dir, name, {"settings": {"seconds": args.seconds, "clips": [str(c) for c in clips],
                                                   "competitor": COMPETITOR, "settle_s": SETTLE_S},
                                      "rows": rows}, text, "Decision latency under CPU load (lite, CPU)", plot)
    print(text)
    return 0


def add_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backends", nargs="+", choices=("torch", "onnxruntime"), default=["torch", "onnxruntime"])
    parser.add_argument("--seconds", type=float, default=60.0, help="length of each phase (default 60)")
    parser.add_argument("--competitors", type=int, nargs="+", default=[0, 1, 2],
                        help="CPU-bound competitor processes per phase (default 0 1 2; 0 is the quiet phase)")
    parser.add_argument("--clips", type=int, default=6, help="test clips in the loop (2 s each)")
    parser.add_argument("--threads", type=int, default=0, help="recognizer intra-op threads (default: "
                        "avcil.runtime.threads' default)")
    parser.add_argument("--out-dir", default=DEFAULT_DIR)
