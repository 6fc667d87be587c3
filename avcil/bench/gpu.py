"""`avcil bench gpu`: every CUDA path of avcil timed in one short run, for a GPU lent for minutes.

Rows, most wanted first, so that a spent `--budget-s` cuts the least wanted (the rest are written as skipped, never
overrun): the paper encoders (random weights; eager fp32 and bf16/fp16 autocast with SDPA attention, the torch
backend's fp16 with and without a CUDA graph) at batch 1 and a throughput batch; head training at the paper's
dimensions (clips/s per precision); paper extraction from decoded files, decode and encode apart
(avcil/bench/extract_speed.py); the lite encoders likewise; torch.compile last. A path that fails is one row with
its error, not the end of the run.

`--dry-run` runs the same code on the CPU with the tiny profile, tiny sizes and 2 iterations: it checks the paths
and the report's schema, its times mean nothing. Writes benchmarks/results/gpu-cuda-<gpu>.json/.md/.png (a dry
run: gpu-dry-run-cpu.* under --out, a temporary folder by default).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from avcil.bench import encoder_speed, extract_speed
from avcil.bench.latency import summarise
from avcil.bench.report import DEFAULT_DIR, cpu_model, markdown_table, write_report
from avcil.errors import InvalidInput

# The targets on a datacentre GPU (checked in the report, never asserted).
VIDEOMAE_FP16_MS, AUDIOMAE_FP16_MS, HEAD_CLIPS_PER_S = 4.0, 2.0, 2000.0
# Seconds a row is expected to need at most on an H100/H200: a row starts only with this much budget left.
NEED_S = {"encoder": 15.0, "head": 30.0, "extract": 60.0, "compile": 75.0}
ROW_KEYS = ("profile", "encoder", "path", "precision", "batch")


@dataclass(frozen=True)
class Settings:
    """What one run measures. `cuda()` is the GPU run, `dry_run()` the CPU check of the same code."""
    device: str
    profiles: tuple[str, ...]
    batches: tuple[int, ...]
    precisions: tuple[str, ...]
    encoder_paths: tuple[str, ...]
    compile: bool
    head_batch: tuple[int, int]  # new clips, exemplars
    clips: extract_speed.ClipSpec
    extract_batch: int
    extract_workers: int
    warmup: int
    iterations: int

    @classmethod
    def cuda(cls, args: argparse.Namespace) -> "Settings":
        return cls(device=args.device, profiles=tuple(args.profiles.split(",")),
                   batches=tuple(int(b) for b in args.batches.split(",")), precisions=("fp32", "bf16", "fp16"),
                   encoder_paths=("eager", "backend", "backend-graph"), compile=args.compile, head_batch=(128, 128),
                   clips=extract_speed.ClipSpec(count=args.clips), extract_batch=16,
                   extract_workers=args.extract_workers, warmup=args.warmup, iterations=args.iterations)

    @classmethod
    def dry_run(cls, args: argparse.Namespace) -> "Settings":
        return cls(device="cpu", profiles=("tiny",), batches=(1, 2), precisions=("fp32", "bf16"),
                   encoder_paths=("eager", "backend", "backend-graph"), compile=True, head_batch=(4, 4),
                   clips=extract_speed.ClipSpec(count=4, seconds=2.0, size="64x48", fps=10, sample_rate=16000),
                   extract_batch=2, extract_workers=2, warmup=1, iterations=2)


@dataclass
class Task:
    """One measurement: the row's identity, the budget it needs, and what returns its numbers (one dict per row;
    extraction returns three)."""
    row: dict
    need_s: float
    measure: Callable[[], list[dict]]


@dataclass
class Budget:
    seconds: float
    started: float = field(default_factory=time.monotonic)

    def left(self) -> float:
        return self.seconds - (time.monotonic() - self.started)


class Profiles:
    """Encoder profiles loaded once, on the run's device; a profile that cannot load (the lite weights packages
    missing) raises the same error for each of its rows."""

    def __init__(self, device: str):
        self.device = device
        self.loaded: dict[str, object] = {}

    def get(self, name: str):
        from avcil.model.encoders import load_profile_without_weights

        if name not in self.loaded:
            try:
                profile = load_profile_without_weights(name)
                self.loaded[name] = profile.to(self.device)
            except Exception as error:  # noqa: BLE001 - reported in every row of the profile
                self.loaded[name] = error
        if isinstance(self.loaded[name], Exception):
            raise self.loaded[name]
        return self.loaded[name]

    def attention(self) -> dict:
        """The attention kernel transformers chose for each loaded transformer encoder ('sdpa' is wanted)."""
        chosen = {}
        for name, profile in self.loaded.items():
            for encoder in ("audio", "visual") if not isinstance(profile, Exception) else ():
                configs = [m.config for m in getattr(profile, encoder).modules() if hasattr(m, "config")]
                if configs:
                    chosen[f"{name} {encoder}"] = getattr(configs[0], "_attn_implementation", None)
        return chosen


# The plan -------------------------------------------------------------------------------------------------------
def encoder_tasks(settings: Settings, profiles: Profiles, name: str, paths: tuple[str, ...],
                  batches: tuple[int, ...]) -> list[Task]:
    def task(encoder: str, path: str, precision: str, batch: int) -> Task:
        def run():
            profile = profiles.get(name)
            module = profile.audio if encoder == "audio" else profile.visual
            shape = profile.audio_input_shape if encoder == "audio" else profile.visual_input_shape
            return [encoder_speed.measure(module, shape, batch, path, precision, settings.device, settings.warmup,
                                          settings.iterations)]
        return Task({"profile": name, "encoder": encoder, "path": path, "precision": precision, "batch": batch},
                    NEED_S["compile" if path == "compile" else "encoder"], run)

    tasks = []
    for encoder in ("audio", "visual"):
        for batch in batches:
            for path in paths:
                # The backend runs its module in fp16 weights; eager and compile run each precision's autocast.
                precisions = ("fp16",) if path.startswith("backend") or path == "compile" else settings.precisions
                tasks += [task(encoder, path, precision, batch) for precision in precisions]
    return tasks


def head_tasks(settings: Settings, profiles: Profiles, name: str) -> list[Task]:
    from avcil.bench import head_speed

    def task(precision: str) -> Task:
        def run():
            new, exemplars = settings.head_batch
            measured = head_speed.measure(profiles.get(name).shape, new, exemplars, settings.iterations,
                                          settings.warmup, settings.device, precision)
            timing = summarise(measured["seconds"])
            return [{"p50_ms": timing["p50_ms"], "p95_ms": timing["p95_ms"], "iterations": timing["iterations"],
                     "clips_per_s": measured["clips_per_second"]}]
        return Task({"profile": name, "encoder": "head", "path": "train-step", "precision": precision,
                     "batch": sum(settings.head_batch)}, NEED_S["head"], run)

    return [task(precision) for precision in settings.precisions]


def extract_task(settings: Settings, profiles: Profiles, name: str, scratch: Path) -> Task:
    def run():
        profile = profiles.get(name)
        videos = extract_speed.make_clips(scratch / "clips", settings.clips)
        return extract_speed.measure(profile, videos, settings.extract_batch, settings.extract_workers,
                                     settings.device, settings.warmup, settings.iterations)
    return Task({"profile": name, "encoder": "extract", "path": "decode+encode", "precision": "fp32",
                 "batch": settings.extract_batch}, NEED_S["extract"], run)


def plan(settings: Settings, profiles: Profiles, scratch: Path) -> list[Task]:
    """Every row, most wanted first: the first profile's encoders, head training and extraction at its dimensions,
    the other profiles' encoders, then torch.compile."""
    first, *others = settings.profiles
    tasks = encoder_tasks(settings, profiles, first, settings.encoder_paths, settings.batches)
    tasks += head_tasks(settings, profiles, first)
    tasks.append(extract_task(settings, profiles, first, scratch))
    for name in others:
        tasks += encoder_tasks(settings, profiles, name, settings.encoder_paths, settings.batches)
    if settings.compile:
        tasks += encoder_tasks(settings, profiles, first, ("compile",), settings.batches[:1])
    return tasks


def run_tasks(tasks: list[Task], budget: Budget, on_cpu: bool, progress: Callable[[dict], None]) -> list[dict]:
    """Each task's rows, or one row saying why it has none: `skipped` (budget spent, or a CUDA-only path on the
    CPU) or `error` (what it raised)."""
    rows = []
    for task in tasks:
        if on_cpu and task.row["path"] in encoder_speed.CUDA_ONLY:
            results = [{"status": "skipped", "note": "CUDA only"}]
        elif budget.left() < task.need_s:
            results = [{"status": "skipped", "note": f"budget: {max(0.0, budget.left()):.0f} s left, row needs "
                                                     f"up to {task.need_s:.0f} s"}]
        else:
            try:
                results = [{"status": "ok", **r} for r in task.measure()]
            except Exception as error:  # noqa: BLE001 - one failed path is one row, the run goes on
                results = [{"status": "error", "note": f"{type(error).__name__}: {error}"[:400]}]
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
        for result in results:
            rows.append({**task.row, "p50_ms": None, "p95_ms": None, "clips_per_s": None, **result})
            progress(rows[-1])
    return rows


# The machine and the report -------------------------------------------------------------------------------------
def gpu_info(device: str) -> dict:
    """The GPU's name, driver, memory and compute capability, torch's CUDA and cuDNN, and the attention kernels
    SDPA may pick; on a CPU, the processor."""
    if not device.startswith("cuda"):
        return {"device": "cpu", "name": cpu_model()}
    index = torch.device(device).index or 0
    props = torch.cuda.get_device_properties(index)
    try:
        driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader", f"--id={index}"],
                                capture_output=True, text=True, timeout=30).stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        driver = None
    return {"device": device, "name": props.name, "driver": driver, "memory_gib": props.total_memory / 2**30,
            "compute_capability": f"{props.major}.{props.minor}", "multiprocessors": props.multi_processor_count,
            "torch_cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
            "float32_matmul_precision": torch.get_float32_matmul_precision(),  # 'highest': no TF32 in fp32 rows
            "sdpa": {"flash": torch.backends.cuda.flash_sdp_enabled(),
                     "mem_efficient": torch.backends.cuda.mem_efficient_sdp_enabled(),
                     "math": torch.backends.cuda.math_sdp_enabled()}}


def slug(name: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'nvidia-h100-80gb-hbm3'."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def _best(rows: list[dict], key: str, pick, **match):
    values = [r[key] for r in rows if r["status"] == "ok" and r.get(key) is not None
              and all(r.get(k) == v for k, v in match.items())]
    return pick(values) if values else None


def targets(rows: list[dict]) -> list[dict]:
    """The issue's targets, each with the best value measured (None: not measured in this run)."""
    videomae = _best(rows, "p50_ms", min, profile="paper", encoder="visual", precision="fp16", batch=1)
    audiomae = _best(rows, "p50_ms", min, profile="paper", encoder="audio", precision="fp16", batch=1)
    head = _best(rows, "clips_per_s", max, profile="paper", encoder="head")
    bound = next((r["bound_by"] for r in rows if r["profile"] == "paper" and r["path"] == "pipeline"
                  and r["status"] == "ok"), None)

    def target(text, value, met):
        return {"target": text, "value": value, "met": None if value is None else met}

    return [target(f"VideoMAE-base fp16 batch 1 p50 <= {VIDEOMAE_FP16_MS:g} ms", videomae,
                   videomae is not None and videomae <= VIDEOMAE_FP16_MS),
            target(f"AudioMAE fp16 batch 1 p50 <= {AUDIOMAE_FP16_MS:g} ms", audiomae,
                   audiomae is not None and audiomae <= AUDIOMAE_FP16_MS),
            target(f"head training at the paper's dimensions >= {HEAD_CLIPS_PER_S:g} clips/s", head,
                   head is not None and head >= HEAD_CLIPS_PER_S),
            target("paper extraction bound by decoding, not by the encoders", bound, bound == "decode")]


def note(row: dict) -> str | None:
    """The table's last column: why a row has no numbers, or what else it measured."""
    if row["status"] != "ok":
        return f"{row['status']}: {row.get('note', '')}"
    parts = []
    if "bound_by" in row:
        parts.append(f"bound by {row['bound_by']} (extract at {row['share_of_bound']:.0%} of it)")
    if "workers" in row:
        parts.append(f"{row['workers']} decoding threads")
    if "compile_s" in row:
        parts.append(f"compiled in {row['compile_s']:.0f} s")
    return "; ".join(parts) or None


def markdown(rows: list[dict], gpu: dict, settings: Settings, dry_run: bool, goals: list[dict]) -> str:
    header = [f"{'GPU' if 'memory_gib' in gpu else 'CPU'}: {gpu['name']}" + (f", driver {gpu.get('driver')}, {gpu['memory_gib']:.0f} GiB, compute "
                                       f"capability {gpu['compute_capability']}" if "memory_gib" in gpu else "")
              + f"; torch {torch.__version__}" + (f", CUDA {gpu['torch_cuda']}, cuDNN {gpu['cudnn']}"
                                                  if "torch_cuda" in gpu else "")]
    if dry_run:
        header.append("DRY RUN on the CPU with tiny sizes and 2 iterations: it checks the code paths and the "
                      "report; its times mean nothing.")
    header.append(f"Encoders with random weights (same speed as trained ones); p50/p95 over {settings.iterations} "
                  f"calls after {settings.warmup} warm-up, each followed by a device synchronisation. eager: "
                  f"the module, inputs and outputs on the device (bf16/fp16: autocast); backend(-graph): the torch "
                  f"backend in fp16 weights (with a CUDA graph), numpy in and out; head: one training step of "
                  f"{settings.head_batch[0]} new + {settings.head_batch[1]} exemplar clips; extract: decode = one "
                  f"clip's decoding and preprocessing (p50/p95) and clips/s with the threads named, encode = one "
                  f"batch through both encoders, pipeline = `avcil extract` on the same files.")
    table = markdown_table([{**r, "note": note(r)} for r in rows],
                           [("profile", "profile"), ("encoder", "encoder"), ("path", "path"),
                            ("precision", "precision"), ("batch", "batch"), ("p50_ms", "p50 (ms)"),
                            ("p95_ms", "p95 (ms)"), ("clips_per_s", "clips/s"), ("peak_cuda_mib", "peak CUDA (MiB)"),
                            ("note", "note")])
    lines = [f"- {g['target']}: " + ("not measured" if g["met"] is None else
                                      f"{g['value']:.3f} ({'met' if g['met'] else 'NOT met'})"
                                      if isinstance(g["value"], float) else
                                      f"{g['value']} ({'met' if g['met'] else 'NOT met'})") for g in goals]
    return "\n\n".join(header) + "\n\n" + table + "\nTargets of the issue:\n\n" + "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    """p50 of every encoder row that ran, one bar each, at the smallest batch."""
    from avcil.train.plots import plt

    shown = [r for r in rows if r["status"] == "ok" and r["encoder"] in ("audio", "visual")
             and r["batch"] == min(x["batch"] for x in rows)]
    fig, ax = plt.subplots(figsize=(7, max(2.5, 0.25 * len(shown) + 1)))
    ax.barh([f"{r['profile']} {r['encoder']} {r['path']} {r['precision']}" for r in shown],
            [r["p50_ms"] for r in shown])
    ax.set(xscale="log" if shown else "linear", xlabel="p50 latency (ms)",
           title=f"encoders at batch {min((r['batch'] for r in rows), default=1)}")
    ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# Command --------------------------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> int:
    budget = Budget(args.budget_s)
    if not args.dry_run and not torch.cuda.is_available():
        raise InvalidInput("no CUDA device here: `avcil bench gpu --dry-run` checks the same code on the CPU")
    settings = Settings.dry_run(args) if args.dry_run else Settings.cuda(args)
    out_dir = Path(args.out_dir or (tempfile.mkdtemp(prefix="avcil-gpu-dry-run-") if args.dry_run else DEFAULT_DIR))
    gpu = gpu_info(settings.device)
    print(f"avcil bench gpu on {gpu['name']}{' (dry run)' if args.dry_run else ''}, budget {args.budget_s:.0f} s",
          flush=True)

    def progress(row):
        numbers = (f"p50 {row['p50_ms']:.3f} ms " if row["p50_ms"] is not None else "") + (
            f"{row['clips_per_s']:.1f} clips/s" if row["clips_per_s"] is not None else "")
        print(f"  {' '.join(str(row[k]) for k in ROW_KEYS)}: {row['status']} {numbers}"
              f"{'' if row['status'] == 'ok' else row.get('note', '')}", flush=True)

    profiles = Profiles(settings.device)
    with tempfile.TemporaryDirectory(prefix="avcil-bench-gpu-") as scratch:
        tasks = plan(settings, profiles, Path(scratch))
        rows = run_tasks(tasks, budget, not settings.device.startswith("cuda"), progress)
    goals = targets(rows)
    name = "gpu-dry-run-cpu" if args.dry_run else f"gpu-cuda-{slug(gpu['name'])}"
    payload = {"dry_run": args.dry_run, "gpu": gpu,
               "settings": {"budget_s": args.budget_s, "seconds_used": args.budget_s - budget.left(),
                            "profiles": settings.profiles, "batches": settings.batches,
                            "precisions": settings.precisions, "warmup": settings.warmup,
                            "iterations": settings.iterations, "clips": vars(settings.clips),
                            "extract_workers": settings.extract_workers, "paper_weights": "random (speed only)",
                            "attention": profiles.attention()},
               "targets": goals, "rows": rows}
    table = markdown(rows, gpu, settings, args.dry_run, goals)
    paths = write_report(out_dir, name, payload, table, f"avcil bench gpu: {gpu['name']}", lambda path: plot(rows, path))
    counts = {s: sum(r["status"] == s for r in rows) for s in ("ok", "skipped", "error")}
    print(f"{counts['ok']} rows measured, {counts['skipped']} skipped, {counts['error']} failed in "
          f"{args.budget_s - budget.left():.0f} s")
    print(f"wrote {paths['json']}, {paths['markdown']}, {paths['plot']}")
    return 0


def add_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dry-run", action="store_true",
                        help="the same code on the CPU, tiny profile and sizes, 2 iterations: no timing claims")
    parser.add_argument("--budget-s", type=float, default=420.0,
                        help="whole run's seconds; rows that would start past it are written as skipped")
    parser.add_argument("--device", default="cuda", help="cuda or cuda:N")
    parser.add_argument("--profiles", default="paper,lite",
                        help="comma-separated; the first one's head training and extraction are measured too")
    parser.add_argument("--batches", default="1,32", help="encoder batch sizes: latency, then throughput")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                        help="time torch.compile of the first profile's encoders at the first batch, last")
    parser.add_argument("--clips", type=int, default=extract_speed.ClipSpec.count,
                        help="video files the extraction rows decode")
    parser.add_argument("--extract-workers", type=int, default=os.cpu_count() or 2,
                        help="decoding threads of the extraction rows (default: one per core)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--out-dir", "--out", dest="out_dir", default=None,
                        help=f"where the report goes (default: {DEFAULT_DIR}; a dry run: a temporary folder)")
