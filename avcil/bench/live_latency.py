"""Decision latency of the live recogniser with the lite profile: from a window's end to its decision, on paced
AV-Digits clips (video and sound played in real time, as a camera and a microphone deliver them).

    avcil bench live-latency [--backend onnxruntime] [--clips 6] [--out-dir benchmarks/results]

The head is random (10 classes): the latency does not depend on what it learnt. The model dir is made in a
temporary folder, its encoders exported to ONNX for the onnxruntime backend. Writes
live-latency-cpu-BACKEND.{json,md,png} with p50/p95/p99 of the total and of each stage, the windows' speech windows
and frames left to encode after their end, and the 1-minute load average before and after (the machine may be
shared).
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import torch

from avcil.bench.report import DEFAULT_DIR, machine, percentiles, write_report


def lite_model(root: Path, backend: str):
    from avcil.model.encoders import load_profile
    from avcil.model.head import FusionHead, HeadConfig
    from avcil.modeldir import ModelDir

    profile = load_profile("lite")
    torch.manual_seed(0)
    head = FusionHead(HeadConfig.for_shape(profile.shape), num_classes=10)
    ModelDir(root).commit(head, None, [{"name": str(i), "step": 0} for i in range(10)],
                          {"shape": profile.shape.to_dict(), "profile": profile.describe()})
    if backend == "onnxruntime":
        from avcil.export.cached import export_once
        from avcil.fileio import default_cache

        export_once(root, profile, default_cache())
    return profile


def measure(backend: str, clips: list[Path], model: Path | None = None) -> dict:
    """Decisions on `clips` played paced, by a lite model with a random attention head (the encoders' cost) or by
    the model dir `model` with its own readout and default score (exported for onnxruntime), as `avcil run`."""
    from avcil.runtime.recognizer import Recognizer, run_live

    with tempfile.TemporaryDirectory(prefix="avcil-live-") as tmp:
        profile = lite_model(Path(tmp) / "model", backend) if model is None else None
        recognizer = Recognizer(model or Path(tmp) / "model", backend,
                                profile=profile if backend == "torch" else None, smoothing=1, watch=False)
        decisions: list[dict] = []
        load_before = os.getloadavg()
        paths = ",".join(str(p) for p in clips)
        try:
            summary = run_live(recognizer, paths, paths, lambda d, w: decisions.append(d))
        finally:
            recognizer.close()
    return summarise(backend, decisions, summary, load_before)


def summarise(backend: str, decisions: list[dict], summary: dict, load_before: tuple) -> dict:
    """Percentiles of each stage and of the total over a run's decisions, with its counts and load averages."""
    stages = sorted({k for d in decisions for k in d["latency_ms"]})
    return {"backend": backend, "decisions": len(decisions), "dropped_windows": summary["dropped_windows"],
            "hop_s": summary["hop_s"], "window_s": summary["window_s"],
            "latency": {stage: percentiles([d["latency_ms"][stage] for d in decisions], digits=2) for stage in stages},
            "speech_windows_after_end": [d.get("speech_windows_after_end") for d in decisions],
            "frames_encoded_after_end": [d["frames_encoded_after_end"] for d in decisions],
            "load_average_before": load_before, "load_average_after": os.getloadavg(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")}  # torch's threads on a shared machine (latency.py)


def run(args: argparse.Namespace) -> int:
    from avcil.data.avdigits import build_av_digits
    from avcil.fileio import default_cache

    if args.threads:
        torch.set_num_threads(args.threads)
    csv_path = Path(build_av_digits(default_cache() / "av-digits"))
    clips = sorted(csv_path.parent.glob("clips/test/*/*.mp4"))[::12][:args.clips]
    result = {"clips": [str(c) for c in clips], **measure(args.backend, clips)}
    text = describe(result, len(clips))
    write_report(args.out_dir, f"live-latency-cpu-{args.backend}", result, text,
                 f"Live decision latency, lite profile, {args.backend}", lambda path: plot(result, path))
    print(text)
    return 0


def describe(result: dict, clips: int) -> str:
    rows = "\n".join(f"| {stage} | {v.get('p50_ms')} | {v.get('p95_ms')} | {v.get('p99_ms')} |"
                     for stage, v in result["latency"].items())
    return (f"{result['decisions']} decisions on {clips} paced AV-Digits test clips, window {result['window_s']} s, "
            f"hop {result['hop_s']:.2f} s, {result['dropped_windows']} windows dropped; {machine()['threads']} "
            f"threads, OMP_WAIT_POLICY {result['omp_wait_policy'] or 'unset'}; 1-min load average "
            f"{result['load_average_before'][0]:.1f} before, {result['load_average_after'][0]:.1f} after (the "
            f"machine was shared).\n\n| stage | p50 (ms) | p95 (ms) | p99 (ms) |\n|---|---|---|---|\n{rows}\n\n"
            f"`total` is from the window's end to the decision. Speech windows embedded after the end, per "
            f"decision: {result['speech_windows_after_end']}; frames: {result['frames_encoded_after_end']}.\n")


def plot(result: dict, path: Path) -> None:
    """p50/p95/p99 of each stage, side by side."""
    from avcil.train.plots import plt

    stages = list(result["latency"])
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 * len(stages)), 3.5))
    for offset, key in zip((-0.25, 0.0, 0.25), ("p50_ms", "p95_ms", "p99_ms")):
        ax.bar([i + offset for i in range(len(stages))], [result["latency"][s][key] or 0 for s in stages], 0.25,
               label=key.split("_")[0])
    ax.set(xticks=range(len(stages)), xticklabels=stages, ylabel="latency (ms)",
           title=f"live decision latency, {result['backend']}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def add_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", default="onnxruntime", choices=("torch", "onnxruntime"))
    parser.add_argument("--clips", type=int, default=6, help="test clips played one after another (2 s each)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_DIR)
