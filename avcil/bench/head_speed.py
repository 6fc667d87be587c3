"""`avcil bench head`: training throughput of the AV-CIL head (forward, teacher forward, backward, Adam) at
given feature dimensions — by default the paper's: audio 768, visual 8×196×768, batch 128 new + 128 exemplars.
`--precision bf16|fp16` runs the step under autocast (fp16 with a gradient scaler, as fp16 training needs)."""

from __future__ import annotations

import argparse
import copy
import resource
import time

import numpy as np
import torch

from avcil.bench.precision import PRECISIONS, autocast
from avcil.bench.report import DEFAULT_DIR, markdown_table, write_report
from avcil.features import FeatureShape
from avcil.model.head import FusionHead, HeadConfig
from avcil.model.losses import LossInputs
from avcil.train.methods import build_method
from avcil.train.plots import plt


def measure(shape: FeatureShape, new: int, exemplars: int, iterations: int, warmup: int, device: str,
            precision: str = "fp32") -> dict:
    """One training step (student and teacher forward, the AV-CIL losses, backward, Adam) timed `iterations` times
    after `warmup` untimed ones; the row holds each step's seconds and their median."""
    torch.manual_seed(0)
    classes = 14  # the second AVE step: 7 old classes, 7 new
    head = FusionHead(HeadConfig.for_shape(shape), num_classes=classes // 2)
    teacher = copy.deepcopy(head).eval().requires_grad_(False)
    head.add_classes(classes // 2)
    head.to(device), teacher.to(device)
    method = build_method("avcil")
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-3, weight_decay=1e-4)
    # fp16 gradients underflow without loss scaling; bf16 has fp32's range and needs none.
    scaler = torch.amp.GradScaler(device.split(":")[0], enabled=precision == "fp16")
    batch = new + exemplars
    audio = torch.randn(batch, shape.audio_dim, device=device)
    visual = torch.randn(batch, *shape.visual, device=device)
    labels = torch.cat([torch.randint(classes // 2, classes, (new,)), torch.randint(0, classes // 2, (exemplars,))])
    is_exemplar = torch.arange(batch) >= new
    seconds = []
    for i in range(warmup + iterations):
        start = time.perf_counter()
        with autocast(device, precision):
            out = head(audio, visual)
            with torch.no_grad():
                old = teacher(audio, visual)
            x = LossInputs(out, old, labels.to(device), is_exemplar.to(device), [(0, classes // 2)])
            loss = sum(t.weight * t(x) for t in method.terms)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        if i >= warmup:
            seconds.append(time.perf_counter() - start)
    per_iteration = float(np.median(seconds))
    return {"shape": shape.to_dict(), "batch_new": new, "batch_exemplars": exemplars, "device": device,
            "precision": precision, "iterations": iterations, "seconds": seconds,
            "seconds_per_iteration": per_iteration,
            "clips_per_second": batch / per_iteration,
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def run(args: argparse.Namespace) -> int:
    shape = FeatureShape(args.audio_dim, args.time, args.positions, args.visual_dim)
    row = measure(shape, args.batch_new, args.batch_exemplars, args.iterations, args.warmup, args.device,
                  args.precision)
    print(f"{row['clips_per_second']:.1f} clips/s ({row['seconds_per_iteration']:.2f} s per batch of "
          f"{args.batch_new}+{args.batch_exemplars}), peak RSS {row['peak_rss_gib']:.1f} GiB")
    table = markdown_table([{**row, "tokens": f"{shape.time}x{shape.positions}x{shape.visual_dim}"}],
                           [("tokens", "visual tokens"), ("batch_new", "new"), ("batch_exemplars", "exemplars"),
                            ("device", "device"), ("precision", "precision"), ("seconds_per_iteration", "s / batch"),
                            ("clips_per_second", "clips / s"), ("peak_rss_gib", "peak RSS (GiB)")])

    def plot(path):
        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.bar(["AV-CIL head training step"], [row["clips_per_second"]])
        ax.set(ylabel="clips / s", title=f"head training throughput ({args.device})")
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)

    suffix = "" if args.precision == "fp32" else f"-{args.precision}"  # fp32 keeps the report's existing name
    write_report(args.out_dir, f"head-training-{args.device.split(':')[0]}{suffix}", {"rows": [row]}, table,
                 "AV-CIL head training throughput", plot)
    print(table)
    return 0


def add_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--audio-dim", type=int, default=768)
    parser.add_argument("--time", type=int, default=8)
    parser.add_argument("--positions", type=int, default=196)
    parser.add_argument("--visual-dim", type=int, default=768)
    parser.add_argument("--batch-new", type=int, default=128)
    parser.add_argument("--batch-exemplars", type=int, default=128)
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", choices=list(PRECISIONS), default="fp32",
                        help="bf16/fp16: the step under autocast (fp16 with a gradient scaler)")
    parser.add_argument("--out-dir", default=DEFAULT_DIR)
