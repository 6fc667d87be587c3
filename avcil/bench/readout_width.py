"""`avcil bench readout`: the analytic readout's expansion width and ridge, swept, on the model the demo builds.

For each (width, ridge) the demo's model is rebuilt as `avcil demo` builds it, from the same features: digits 0-8
from their first 40 training clips, digit 9 learnt in closed form from its first 40 (as `avcil learn --files`), the
demo's background (as `avcil learn --background`); width 0 is ridge regression on the pooled features themselves.
The audio-visual readout alone is built (no per-modality readouts): its Gram matrix, update and Gaussians are what
the cost columns give; the default model has two more readouts of the same width beside it.
Each model is measured on:
- the closed set: accuracy on every AV-Digits test clip of digits 0-9, from the features;
- the stream benchmark (`avcil bench stream`): the default rule's score with its threshold chosen on the val streams
  as that benchmark chooses it, then event recall, false accepts per hour and wrong-class events on the test
  streams (the threshold moves with the width, so a fixed one would compare a different operating point each time);
- what it costs on a device: the Gram matrix's bytes, the seconds of the field update (the new class's sums and the
  solve) and of fitting the open-set score's Gaussians (what a reload pays).
It also gives the ridge that generalised cross-validation picks from the default width's final sums, and measures
the model at that ridge too: what choosing the ridge per update by GCV would give. GCV from the sums (G, C, the
counts, one eigendecomposition of G = V diag(λ) Vᵀ), over relative ridges from 1e-4 to 10:
    GCV(γ) = n · RSS(γ) / (n − Σᵢ λᵢ/(λᵢ+γ))²
    RSS(γ) = Σ|y|² − Σᵢ (2/(λᵢ+γ) − λᵢ/(λᵢ+γ)²) · |(VᵀC)ᵢ|²
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
from avcil.modeldir.schema import ManifestKey
from avcil.train.methods import ANALYTIC_EXPANSION as DEFAULT_WIDTH

WIDTHS = (0, 512, 1024, 2048, 4096)
RIDGES = (0.1, 0.3, 1.0, 3.0)
GCV_RIDGES = tuple(10.0 ** k for k in np.arange(-4.0, 1.5, 0.5))


def gcv_scores(readout, ridges=GCV_RIDGES) -> dict[float, float]:
    """{relative ridge: GCV} from the readout's sums (module docstring); rows = clips + background windows."""
    gram, cross = readout.gram.double(), readout.cross.double()
    rows = float(readout.count.sum() + readout.negative_count)
    targets = float(readout.count.sum())  # Σ|y|²: one 1 per clip, background rows all 0
    values, vectors = torch.linalg.eigh(gram)
    values = values.clamp_min(0)
    projected = (vectors.T @ cross).pow(2).sum(dim=1)
    mean_diagonal = float(gram.diagonal().mean())
    scores = {}
    for ridge in ridges:
        gamma = ridge * mean_diagonal
        rss = targets - float(((2 / (values + gamma) - values / (values + gamma) ** 2) * projected).sum())
        freedom = float((values / (values + gamma)).sum())
        scores[float(ridge)] = rows * rss / max(rows - freedom, 1e-9) ** 2
    return scores


def build(base_head, width: int, ridge: float, old: tuple, new: tuple, classes: list[dict], profile, cache: Path):
    """The demo's model at this width and ridge; returns (head, seconds of the new class's update)."""
    from avcil.bench.enrol import learn_demo_background
    from avcil.model.readout import readout_spec
    from avcil.runtime.class_space import readout_inputs_of

    head = copy.deepcopy(base_head)
    head.set_readout(readout_spec("analytic", "pooled", width, ridge, base_head.config.readout.get("seed", 0),
                                  per_modality=False))
    audio, visual, labels = old
    head.readout.accumulate(readout_inputs_of(head, audio, visual), torch.from_numpy(labels))
    head.readout.solve()
    learn_demo_background(head, profile, cache)
    head.add_classes(1)
    started = time.perf_counter()
    head.readout.accumulate(readout_inputs_of(head, *new), torch.full((len(new[0]),), len(classes)))
    head.readout.solve()
    return head.eval(), time.perf_counter() - started


def measure(head, test: tuple, splits: dict) -> dict:
    from avcil.bench.stream_metrics import DEFAULT_RULE, choose_threshold, event_metrics, rule_scores, sweep
    from avcil.runtime.class_space import readout_inputs_of
    from avcil.runtime.decision import HeadScores

    audio, visual, labels = test
    accuracy = float((head.readout(readout_inputs_of(head, audio, visual)).argmax(1).numpy() == labels).mean())
    scores = HeadScores(head)
    started = time.perf_counter()
    scores.prepare(DEFAULT_RULE["score"])
    prepare_seconds = time.perf_counter() - started
    scored = {split: rule_scores(scores, windows, DEFAULT_RULE) for split, windows in splits.items()}
    threshold = choose_threshold(sweep(splits["val"], scored["val"]))
    stream = event_metrics(splits["test"], [np.where(s >= threshold, l, -1) for l, s in scored["test"]])
    return {"closed_set_accuracy": accuracy, "threshold_from_val": threshold,
            **{k: stream[k] for k in ("event_recall", "false_accepts_per_hour", "wrong_class_share")},
            "gaussians_seconds": prepare_seconds}


def run(args: argparse.Namespace) -> int:
    from avcil.bench.stream import checked_inputs, load_split
    from avcil.data.clips import first_classes
    from avcil.model.encoders import profile_from_record
    from avcil.modeldir import ModelDir
    from avcil.train.benchmarks import av_digits_benchmark

    model_dir, cache = checked_inputs(args.model, args.cache)
    model = ModelDir(model_dir)
    base = model.load(model.list_versions()[0], with_memory=False)  # the demo's digits 0-8, before the field
    profile = profile_from_record(base.manifest[ManifestKey.FEATURES].get("profile"))
    benchmark = av_digits_benchmark(cache, progress=False)
    train = first_classes(benchmark, len(base.class_names), args.clips).splits["train"]
    everything = benchmark.splits["train"]
    new_label = len(base.class_names)
    new_rows = np.flatnonzero(everything.labels == new_label)[:args.clips]
    old = (*train.load(np.arange(len(train.labels))), np.asarray(train.labels))
    test = benchmark.splits["test"]
    test_rows = np.flatnonzero(test.labels <= new_label)
    test_set = (*test.load(test_rows), np.asarray(test.labels)[test_rows])
    names = benchmark.class_names[:new_label + 1]
    splits = {split: load_split(model_dir, cache / "streams", cache / "av-digits", split, hours, args.seed,
                                cache / "stream-windows", names, args.backend)
              for split, hours in (("val", args.val_hours), ("test", args.hours))}
    load_before, started = machine_load(), time.perf_counter()
    rows = []
    settings = [(w, 1.0) for w in args.widths] + [(DEFAULT_WIDTH, r) for r in args.ridges if r != 1.0]
    while settings:
        width, ridge = settings.pop(0)
        head, update_seconds = build(base.head, width, ridge, old, everything.load(new_rows),
                                     base.manifest[ManifestKey.CLASSES], profile, cache)
        row = {"width": width, "ridge": ridge, **measure(head, test_set, splits), "update_seconds": update_seconds,
               "gram_mb": len(head.readout.gram) ** 2 * 4 / 2 ** 20}
        if (width, ridge) == (DEFAULT_WIDTH, 1.0):  # the default's sums: what GCV would pick, measured too
            gcv = gcv_scores(head.readout)
            row["gcv_ridge"] = min(gcv, key=gcv.get)
            settings.append((DEFAULT_WIDTH, row["gcv_ridge"]))
        print(json.dumps(row), file=sys.stderr, flush=True)
        rows.append(row)
    payload = {"model": str(model_dir), "clips_per_class": args.clips, "seed": args.seed, "rows": rows,
               "load_before": load_before, "load_after": machine_load(),
               "seconds": round(time.perf_counter() - started, 1)}
    table = (f"The demo's model rebuilt per setting from {args.clips} training clips per digit (digit 9 learnt in "
             f"the field), with its background; stream seed {args.seed}; machine load {load_before} before (times "
             f"depend on it, accuracies do not). Threshold of the default score chosen on the val streams per row."
             f"\n\n" + markdown_table(rows, [
                 ("width", "width"), ("ridge", "ridge"), ("closed_set_accuracy", "closed-set accuracy"),
                 ("event_recall", "event recall"), ("false_accepts_per_hour", "false accepts / h"),
                 ("wrong_class_share", "wrong-class events"), ("threshold_from_val", "threshold"),
                 ("gram_mb", "Gram MB"), ("update_seconds", "update s"), ("gaussians_seconds", "Gaussians s"),
                 ("gcv_ridge", "GCV's ridge")]))
    paths = write_report(Path(args.out_dir), args.name, payload, table, "The analytic readout's width and ridge",
                         lambda path: _plot(path, rows))
    print(json.dumps(rows) if args.json else f"wrote {paths['json']}, {paths['markdown']}, {paths['plot']}")
    return 0


def _plot(path: Path, rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    widths = [r for r in rows if r["ridge"] == 1.0]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    labels = [str(r["width"]) for r in widths]
    for key, name in (("closed_set_accuracy", "closed-set accuracy"), ("event_recall", "event recall"),
                      ("wrong_class_share", "wrong-class events")):
        left.plot(labels, [r[key] for r in widths], marker="o", label=name)
    left.set_xlabel("expansion width (0: none)")
    left.legend()
    right.bar(labels, [r["false_accepts_per_hour"] for r in widths])
    right.set_xlabel("expansion width (0: none)")
    right.set_ylabel("false accepts / h at the val threshold")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def add_flags(parser: argparse.ArgumentParser) -> None:
    from avcil.bench.stream import add_stream_flags

    add_stream_flags(parser, "readout-width-av-digits-lite", "model dir whose first version is the demo's digits "
                     "0-8 (default: the one `avcil demo --out runs/demo` leaves)", "print the rows as one JSON list")
    parser.add_argument("--val-hours", type=float, default=0.25, help="hours of background in the val streams")
    parser.add_argument("--clips", type=int, default=40, help="training clips per digit, as the demo")
    parser.add_argument("--widths", type=int, nargs="+", default=list(WIDTHS), help="expansion widths (0: none)")
    parser.add_argument("--ridges", type=float, nargs="+", default=list(RIDGES), help="relative ridges, at 2048")
