"""`avcil bench distributed`: clips/s of `avcil extract` and `avcil train` with 1, 2, ... processes under torchrun
on this machine (gloo on CPU, nccl with --device cuda).

Each run is the real command started as a user starts it (`python -m torch.distributed.run --nproc-per-node N -m
avcil ...`), into a fresh store or run folder, so the numbers include what a user pays: process start, the
rendezvous, rank 0's merge. The CPU's cores are divided among the processes (threads = cores // N), so that 1 and N
processes use the same cores. Extraction reads the first --clips clips of a video list (default: the AV-Digits
clips, built offline and cached); training runs a method on the synthetic benchmark and reports the training
loop's own throughput (new clips + exemplars per second, summed over the steps) beside the wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import avcil
from avcil.bench.report import DEFAULT_DIR, markdown_table, write_report
from avcil.errors import StageFailed

TREE = Path(avcil.__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(processes: int, argv: list[str], threads: int, cwd: Path) -> float:
    """Wall seconds of one torchrun command; a failure is an error naming the command and its last output."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads),
           "PYTHONPATH": os.pathsep.join(p for p in (str(TREE), os.environ.get("PYTHONPATH")) if p)}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(processes),
               "--master-addr", "127.0.0.1", "--master-port", str(_free_port()), "-m", "avcil", *argv]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode not in (0, 1):  # extract exits 1 when some clip failed to decode: still a measurement
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        raise StageFailed(f"`{' '.join(command[2:])}` failed with status {done.returncode}: {' | '.join(tail)}")
    return seconds


def measure_extract(videos: Path, clips: int, processes: int, threads: int, profile: str, device: str,
                    work: Path) -> dict:
    out = work / f"store-{processes}"
    seconds = _torchrun(processes, ["extract", "--profile", profile, "--videos", str(videos), "--out", str(out),
                                    "--limit", str(clips), "--threads", str(threads), "--device", device,
                                    "--json", str(work / f"extract-{processes}.json")], threads, work)
    summary = json.loads((work / f"extract-{processes}.json").read_text())
    return {"stage": "extract", "processes": processes, "threads_per_process": threads, "clips": summary["extracted"],
            "wall_seconds": seconds, "clips_per_second": summary["extracted"] / seconds,
            "clips_per_second_after_start": summary["clips_per_second"]}


def measure_train(method: str, epochs: int, processes: int, threads: int, device: str, work: Path) -> dict:
    out = work / f"run-{processes}"
    seconds = _torchrun(processes, ["train", "--data", "synthetic", "--method", method, "--epochs", str(epochs),
                                    "--device", device, "--out", str(out)], threads, work)
    results = json.loads((out / "results.json").read_text())
    steps = results["steps"]
    clips = sum(s["train_clips_per_second"] * s["train_seconds"] for s in steps)
    return {"stage": f"train ({method}, {epochs} epochs)", "processes": processes, "threads_per_process": threads,
            "clips": round(clips), "wall_seconds": seconds,
            "clips_per_second": clips / max(sum(s["train_seconds"] for s in steps), 1e-9),
            "mean_accuracy": results["mean_accuracy"]}


def _default_videos(cache: Path | None) -> Path:
    from avcil.data.avdigits import build_av_digits
    from avcil.fileio import default_cache

    return build_av_digits((cache or default_cache()) / "av-digits")


def run(args: argparse.Namespace) -> int:
    videos = Path(args.videos) if args.videos else _default_videos(Path(args.cache) if args.cache else None)
    cores = os.cpu_count() or 1
    counts = [int(n) for n in args.processes.split(",")]
    load_before = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory(prefix="avcil-bench-distributed-") as tmp:
        for n in counts:
            threads = max(1, cores // n) if args.device == "cpu" else 1
            rows.append(measure_extract(videos, args.clips, n, threads, args.profile, args.device, Path(tmp)))
            rows.append(measure_train(args.method, args.epochs, n, threads, args.device, Path(tmp)))
            print(f"{n} process(es): extract {rows[-2]['clips_per_second']:.2f} clips/s, train "
                  f"{rows[-1]['clips_per_second']:.0f} clips/s", file=sys.stderr)
    load = {"cores": cores, "load_average_1_5_15_before": load_before, "load_average_1_5_15_after": os.getloadavg()}
    columns = [("stage", "stage"), ("processes", "processes"), ("threads_per_process", "threads each"),
               ("clips", "clips"), ("wall_seconds", "wall s"), ("clips_per_second", "clips / s")]
    table = markdown_table(rows, columns) + (
        f"\nDevice {args.device}; extraction: profile {args.profile}, the first {args.clips} clips of {videos.name}, "
        f"clips/s over the whole command (process start and rank 0's merge included); training: the synthetic "
        f"benchmark, clips/s of the training loop (new clips + exemplars), seed 42. {cores} cores, load average "
        f"{load_before[0]:.1f} before and {load['load_average_1_5_15_after'][0]:.1f} after (other work shares "
        f"this machine).\n")

    def plot(path):
        from avcil.train.plots import plt

        fig, axes = plt.subplots(1, 2, figsize=(8, 3.5))
        for ax, stage in zip(axes, ("extract", "train")):
            mine = [r for r in rows if r["stage"].startswith(stage)]
            ax.bar([str(r["processes"]) for r in mine], [r["clips_per_second"] for r in mine])
            ax.set(xlabel="processes", ylabel="clips / s", title=mine[0]["stage"])
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)

    paths = write_report(args.out_dir, f"distributed-{args.device.split(':')[0]}",
                         {"rows": rows, "load": load, "seed": 42, "videos": str(videos)}, table,
                         "Extraction and training over processes (torchrun)", plot)
    print(table)
    print(f"wrote {paths['json']}, {paths['markdown']}, {paths['plot']}", file=sys.stderr)
    return 0


def add_flags(parser: argparse.ArgumentParser) -> None:
    from avcil.model.encoders import PROFILES

    parser.add_argument("--processes", default="1,2", help="process counts to compare (default 1,2)")
    parser.add_argument("--videos", help="videos to extract (folder or CSV; default: the AV-Digits clips)")
    parser.add_argument("--cache", help="where AV-Digits is built and cached (default $AVCIL_CACHE or ~/.cache/avcil)")
    parser.add_argument("--clips", type=int, default=40, help="clips extracted per run")
    parser.add_argument("--profile", choices=PROFILES, default="lite")
    parser.add_argument("--method", default="icarl", help="training method (a gradient one: DDP is what is timed)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--device", default="cpu", help="cpu (gloo) or cuda (nccl, one GPU per process)")
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_DIR)
