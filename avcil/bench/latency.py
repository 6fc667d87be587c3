"""`avcil bench latency`: latency of each stage of recognising one clip (audio preprocess, frame preprocess, audio
encoder, visual encoder, head) for every encoder profile and backend available here.

Per stage and batch size: p50/p95/p99 over `--iterations` timed calls after `--warmup` untimed ones, peak memory
(process RSS sampled during the calls; CUDA allocations on a GPU), FLOPs and the GFLOP/s achieved at the median.
Other processes on a small machine come and go, so the backends of a stage take turns call by call, and each turn
also times the yardstick, a 4096² fp32 torch matmul on the same threads: "% of peak" is the median over turns of
the backend's GFLOP/s over the matmul's in the same turn. FLOPs are counted on the PyTorch modules with
torch.utils.flop_counter: 2 per multiply-add of matmuls, convolutions and attention (softmax, norms and
elementwise ops not counted); the paper encoders come out at 97 and 361 GFLOP per clip
(docs/method.md#the-paper-encoders). Preprocessing runs in numpy once per clip of the batch.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from avcil.errors import InvalidInput
from avcil.bench.report import DEFAULT_DIR, markdown_table, percentiles, write_report
from avcil.train.plots import plt

STAGES = ("audio preprocess", "frame preprocess", "audio encoder", "visual encoder", "head")
ENCODER_STAGES = {"audio encoder": "audio", "visual encoder": "visual", "head": "head",
                  # lite: the audio encoder's parts a live stream runs (after a window's end: aiSFX and a speech
                  # window or two; the others are embedded while the window runs, avcil/runtime/speech_stream.py)
                  "audio sfx (live)": "audio_sfx", "speech window (live)": "speech_window"}
PEAK_TARGET = 0.85  # ONNX Runtime should reach this share of the matmul peak on the paper encoders
YARDSTICK = "fp32 matmul"
CLIP_SECONDS, MIC_RATE, CAMERA_SIZE = 10.0, 48000, (360, 640)  # what a live window hands the preprocessing
HEAD_CLASSES = 28  # AVE's class count


# Measuring -------------------------------------------------------------------------------------------------------
def matmul_yardstick(size: int = 4096) -> tuple[Callable[[], object], float]:
    """A call that multiplies two fp32 [size x size] matrices with torch, and its GFLOP."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    return partial(torch.mm, a, b), 2 * size**3 / 1e9


def matmul_peak(repeats: int = 5) -> float:
    """Best GFLOP/s of the yardstick matmul on torch's current threads."""
    call, gflop = matmul_yardstick()
    call()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - start)
    return gflop / best


def _cpu_attention_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


# torch's counter knows the CUDA attention kernels but not the CPU one that transformers' SDPA runs here.
_FLOP_MAPPING = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention_flops}


@torch.inference_mode()
def count_flops(module: torch.nn.Module, inputs: list[np.ndarray]) -> int:
    counter = FlopCounterMode(display=False, custom_mapping=_FLOP_MAPPING)
    with counter:
        module(*(torch.from_numpy(x) for x in inputs))
    return int(counter.get_total_flops())


class PeakMemory:
    """Peak resident memory of this process while the block runs, sampled every 2 ms from /proc, above what it was
    on entry; and the CUDA allocator's peak when a GPU is in use."""

    def __init__(self, cuda: bool):
        self.cuda = cuda
        self.baseline = self.peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, self._rss())

    def __enter__(self) -> "PeakMemory":
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())
        self.cuda_peak = torch.cuda.max_memory_allocated() if self.cuda else 0


def time_interleaved(calls: dict[str, Callable[[], object]], warmup: int, iterations: int,
                     cuda: bool) -> dict[str, tuple[list[float], dict]]:
    """Per call: seconds of each timed run and peak memory. The calls take turns, run by run, so that a load that
    comes and goes on this machine slows all of them alike and their comparison stays fair."""
    for call in calls.values():
        for _ in range(warmup):
            call()
    seconds = {name: [] for name in calls}
    memory = {name: {"peak_rss_mib": 0.0, "peak_extra_mib": 0.0} for name in calls}
    for _ in range(iterations):
        for name, call in calls.items():
            with PeakMemory(cuda) as sampled:
                start = time.perf_counter()
                call()
                if cuda:
                    torch.cuda.synchronize()
                seconds[name].append(time.perf_counter() - start)
            record = memory[name]
            record["peak_rss_mib"] = max(record["peak_rss_mib"], sampled.peak / 2**20)
            record["peak_extra_mib"] = max(record["peak_extra_mib"], (sampled.peak - sampled.baseline) / 2**20)
            if cuda:
                record["peak_cuda_mib"] = max(record.get("peak_cuda_mib", 0.0), sampled.cuda_peak / 2**20)
    return {name: (seconds[name], memory[name]) for name in calls}


def summarise(seconds: list[float]) -> dict:
    ms = np.asarray(seconds) * 1e3
    return {**percentiles(ms), "mean_ms": float(ms.mean()), "iterations": len(seconds),
            "seconds": [float(x) for x in seconds]}


# One profile -----------------------------------------------------------------------------------------------------
def stage_modules(profile):
    """`graph_modules` of the profile with a random audio-visual head of HEAD_CLASSES classes."""
    from avcil.model.graphs import graph_modules
    from avcil.model.head import FusionHead, HeadConfig

    torch.manual_seed(0)
    return graph_modules(profile, FusionHead(HeadConfig.for_shape(profile.shape), num_classes=HEAD_CLASSES).eval())


def open_backend(kind: str, name: str, module, spec, shapes, work_dir: Path, device: str, threads: int):
    """The graph on one backend; ONNX and engine files are made once in `work_dir`."""
    from avcil.export import tensorrt as engines
    from avcil.export.onnx import EXAMPLE_BATCH, export_graph, random_inputs
    from avcil.backends import load_backend

    if kind == "torch":
        return load_backend(module, "torch", device, input_names=spec.inputs, output_names=spec.outputs,
                            input_shapes=shapes)
    onnx_path = work_dir / spec.file
    if not onnx_path.is_file():
        example = [torch.from_numpy(x) for x in random_inputs(shapes, EXAMPLE_BATCH, np.random.default_rng(0))]
        export_graph(module, example, onnx_path, spec)
    if kind == "onnxruntime":
        return load_backend(onnx_path, "onnxruntime", device, threads=threads)
    engine_path = work_dir / f"{name}.engine"
    if not engine_path.is_file():
        engines.build_engine(onnx_path, engine_path, "fp16", engines.BatchRange(1, 1, 8))
    return load_backend(engine_path, "tensorrt", device)


def measure_profile(profile, kinds: list[str], batches: list[int], iterations: int, warmup: int, device: str,
                    threads: int, work_dir: Path, progress) -> list[dict]:
    rng = np.random.default_rng(0)
    cuda = device.startswith("cuda")
    rows = []
    waveform = rng.standard_normal(int(CLIP_SECONDS * MIC_RATE)).astype(np.float32) * 0.1
    frames = [rng.integers(0, 256, (*CAMERA_SIZE, 3), dtype=np.uint8) for _ in range(profile.frame_prep.count)]
    preprocess = {"audio preprocess": lambda: profile.preprocess_audio(waveform, MIC_RATE),
                  "frame preprocess": lambda: profile.preprocess_frames(frames)}
    for stage, one_clip in preprocess.items():
        for batch in batches:
            progress(f"{profile.name} {stage} batch {batch}")
            timed = time_interleaved({"numpy": lambda: [one_clip() for _ in range(batch)]}, warmup, iterations, False)
            seconds, memory = timed["numpy"]
            rows.append({"profile": profile.name, "backend": "numpy", "stage": stage, "batch": batch,
                         **summarise(seconds), **memory})
    modules = stage_modules(profile)
    yardstick, yardstick_gflop = matmul_yardstick()
    # Every graph is a per-clip computation, so its FLOPs grow linearly with the batch.
    flops = {name: count_flops(module, [rng.standard_normal((1, *s)).astype(np.float32) for s in shapes])
             for name, (module, _, shapes) in modules.items()}
    for stage, name in ENCODER_STAGES.items():
        if name not in modules:
            continue
        module, spec, shapes = modules[name]
        progress(f"{profile.name} {stage}: preparing {', '.join(kinds)}")
        opened = {kind: open_backend(kind, name, module, spec, shapes, work_dir, device, threads) for kind in kinds}
        for batch in batches:
            progress(f"{profile.name} {stage} batch {batch}")
            inputs = [rng.standard_normal((batch, *s)).astype(np.float32) for s in shapes]
            calls = {kind: partial(backend, *inputs) for kind, backend in opened.items()}
            timed = time_interleaved({**calls, YARDSTICK: yardstick}, warmup, iterations, cuda)
            matmul_rates = yardstick_gflop / np.asarray(timed[YARDSTICK][0])
            gflop = batch * flops[name] / 1e9
            for kind in calls:
                seconds, memory = timed[kind]
                timing = summarise(seconds)
                rates = gflop / np.asarray(seconds)
                rows.append({"profile": profile.name, "backend": kind, "stage": stage, "batch": batch, **timing,
                             "gflop": gflop, "gflops_per_s": gflop / (timing["p50_ms"] / 1e3),
                             "percent_of_peak": 100 * float(np.median(rates / matmul_rates)),
                             "matmul_gflops_per_s": float(np.median(matmul_rates)), **memory})
    return rows


def targets(rows: list[dict]) -> dict:
    """The issue's CPU targets: ONNX Runtime at >= 85 % of the matmul peak on the paper encoders, and ONNX Runtime
    no slower than torch for each profile's encoders."""
    by_key = {(r["profile"], r["backend"], r["stage"], r["batch"]): r for r in rows}
    share, versus = [], []
    for (profile, backend, stage, batch), row in by_key.items():
        if backend != "onnxruntime" or stage not in ("audio encoder", "visual encoder"):
            continue
        if profile == "paper":
            share.append({"stage": stage, "batch": batch, "percent_of_peak": row["percent_of_peak"],
                          "met": row["percent_of_peak"] >= 100 * PEAK_TARGET})
        reference = by_key.get((profile, "torch", stage, batch))
        if reference:
            # Both ran turn by turn: the ratio within each turn is what a passing load cannot bias.
            paired = float(np.median(np.asarray(reference["seconds"]) / np.asarray(row["seconds"])))
            versus.append({"profile": profile, "stage": stage, "batch": batch,
                           "onnxruntime_p50_ms": row["p50_ms"], "torch_p50_ms": reference["p50_ms"],
                           "p50_speedup": reference["p50_ms"] / row["p50_ms"], "speedup": paired,
                           "met": paired >= 1.0})
    return {"onnxruntime_share_of_peak": share, "onnxruntime_vs_torch": versus}


def kept_rows(previous: Path, measured: list[str]) -> list[dict]:
    """The rows of the profiles not measured now from the previous report, each marked with when it was measured."""
    import json

    if not previous.is_file():
        return []
    report = json.loads(previous.read_text())
    when = report.get("machine", {}).get("date")
    return [{**row, "measured": row.get("measured", when)} for row in report.get("rows", [])
            if row["profile"] not in measured]


# Command ---------------------------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from avcil.model.encoders import load_profile_without_weights
    from avcil.backends import available_kinds

    torch.set_num_threads(args.threads)
    kinds = args.backends.split(",") if args.backends else available_kinds()
    unknown = sorted(set(kinds) - set(available_kinds()))
    if unknown:
        raise InvalidInput(f"backends {unknown} are not available here (available: {available_kinds()})")
    batches = [int(b) for b in args.batches.split(",")]
    profiles = args.profiles.split(",")
    load_before = os.getloadavg()
    peak = matmul_peak()
    print(f"fp32 matmul peak on {args.threads} threads: {peak:.0f} GFLOP/s")
    rows = []
    bar = tqdm(total=len(profiles), unit="profile", desc="bench latency")
    with tempfile.TemporaryDirectory(prefix="avcil-latency-") as scratch:
        for name in profiles:
            profile = load_profile_without_weights(name)
            work_dir = Path(args.work_dir or scratch) / name
            work_dir.mkdir(parents=True, exist_ok=True)
            rows += measure_profile(profile, kinds, batches, args.iterations, args.warmup, args.device,
                                    args.threads, work_dir, bar.set_postfix_str)
            bar.update()
    bar.close()
    kept = kept_rows(Path(args.out_dir) / f"latency-{args.device.split(':')[0]}.json", profiles) if args.keep else []
    rows += kept
    peak = max([peak] + [r["matmul_gflops_per_s"] for r in rows if "matmul_gflops_per_s" in r])
    goals = targets(rows)
    table = describe(rows, goals, kept, peak, args)
    payload = {"settings": {"profiles": profiles, "backends": kinds, "batches": batches, "iterations": args.iterations,
                            "warmup": args.warmup, "device": args.device, "threads": args.threads,
                            "paper_weights": "random (speed only)",
                            # Other processes on the same cores slow every number down: keep the evidence.
                            "load_average_before": load_before, "load_average_after": os.getloadavg(),
                            # On oversubscribed cores OpenMP's default spinning slowed torch 20x (3.6 s vs 0.17 s
                            # for one Lite0 frame at load 5): PASSIVE was set for runs on a shared machine.
                            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")},
               "matmul_peak_gflops_per_s": peak, "targets": goals, "rows": rows}
    paths = write_report(args.out_dir, f"latency-{args.device.split(':')[0]}", payload, table,
                         "Per-stage latency", lambda path: plot(rows, batches[0], path))
    print(table)
    print(f"wrote {paths['json']}, {paths['markdown']}, {paths['plot']}")
    return 0


def describe(rows: list[dict], goals: dict, kept: list[dict], peak: float, args: argparse.Namespace) -> str:
    """The markdown table of every row, what its columns mean, and whether each target was met."""
    table = markdown_table(rows, [("profile", "profile"), ("stage", "stage"), ("backend", "backend"),
                                  ("batch", "batch"), ("p50_ms", "p50 (ms)"), ("p95_ms", "p95 (ms)"),
                                  ("p99_ms", "p99 (ms)"), ("gflop", "GFLOP"), ("gflops_per_s", "GFLOP/s"),
                                  ("matmul_gflops_per_s", "matmul GFLOP/s"), ("percent_of_peak", "% of matmul"),
                                  ("peak_extra_mib", "peak +RSS (MiB)")])
    table += (f"\nfp32 matmul (4096²) peak: {peak:.0f} GFLOP/s on {args.threads} threads, best seen in this run. "
              f"% of matmul: the stage's GFLOP/s over the matmul's timed in the same turn (median over turns). "
              f"Percentiles over {args.iterations} calls after {args.warmup} warm-up; FLOPs counted on the PyTorch "
              f"modules.\n")
    lines = [f"paper {g['stage']} batch {g['batch']}: onnxruntime at {g['percent_of_peak']:.0f} % of the matmul "
             f"(target {PEAK_TARGET:.0%}): {'met' if g['met'] else 'NOT met'}"
             for g in goals["onnxruntime_share_of_peak"]]
    lines += [f"{g['profile']} {g['stage']} batch {g['batch']}: onnxruntime {g['speedup']:.2f}x torch (median per "
              f"turn; p50 ratio {g['p50_speedup']:.2f}x): {'met' if g['met'] else 'NOT met'}"
              for g in goals["onnxruntime_vs_torch"]]
    table += "\n" + "".join(f"- {line}\n" for line in lines)
    if kept:
        table += (f"\nRows of {', '.join(sorted({r['profile'] for r in kept}))} are kept from the previous report "
                  f"(not measured in this run; its date is in their `measured` field of the JSON).\n")
    return table


def plot(rows: list[dict], batch: int, path: Path) -> None:
    """p50 per stage at one batch size: one group of bars per profile and stage, one bar per backend that ran it."""
    shown = {(r["profile"], r["stage"], r["backend"]): r["p50_ms"] for r in rows if r["batch"] == batch}
    groups = list(dict.fromkeys(key[:2] for key in shown))
    backends = list(dict.fromkeys(key[2] for key in shown))
    colours = {b: f"C{i}" for i, b in enumerate(backends)}
    width = 0.8 / len(backends)
    fig, ax = plt.subplots(figsize=(max(7, 0.9 * len(groups)), 4.5))
    for x, group in enumerate(groups):
        present = [b for b in backends if (*group, b) in shown]
        for j, backend in enumerate(present):
            ax.bar(x + (j - (len(present) - 1) / 2) * width, shown[(*group, backend)], width,
                   color=colours[backend], label=backend)
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    ax.legend(unique.values(), unique.keys(), fontsize=8)
    ax.set_xticks(range(len(groups)), [f"{p}\n" + s.replace(" ", "\n") for p, s in groups], fontsize=7)
    ax.set(yscale="log", ylabel="p50 latency (ms)", title=f"per-stage latency, batch {batch}")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def add_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profiles", default="lite,paper", help="comma-separated encoder profiles (paper: random "
                                                                 "weights, same speed)")
    parser.add_argument("--backends", default=None, help="comma-separated (default: every backend available here)")
    parser.add_argument("--batches", default="1,4", help="comma-separated batch sizes")
    parser.add_argument("--iterations", type=int, default=5, help="timed calls per measurement")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls before them")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="CPU threads (torch and ORT)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--work-dir", default=None, help="keep the exported ONNX/engine files here (default: a "
                                                         "temporary folder)")
    parser.add_argument("--out-dir", default=DEFAULT_DIR)
    parser.add_argument("--keep", action="store_true",
                        help="keep the rows of the profiles not measured now from the previous report (e.g. "
                             "--profiles lite --keep remeasures lite and keeps paper)")
