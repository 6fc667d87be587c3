"""Training options shared by `avcil train` and `avcil bench accuracy`: flags, and how a benchmark's own
defaults fill the ones the user leaves out."""

from __future__ import annotations

import argparse

from avcil.data.clips import Benchmark
from avcil.train.learner import PRECISIONS as TRAIN_PRECISIONS, TrainConfig
from avcil.model.readout import FEATURES
from avcil.train.methods import (ABLATABLE, ANALYTIC_EXPANSION, ANALYTIC_FEATURES, ANALYTIC_RIDGE, Method,
                                  build_method)
from avcil.model.memory import PRECISIONS, SELECTIONS


def add_training_flags(parser: argparse.ArgumentParser) -> None:
    data = parser.add_argument_group("data")
    data.add_argument("--data", help="synthetic | av-digits | path of a feature store (from `avcil extract`)")
    data.add_argument("--avcil-release", metavar="DIR", help="the public AV-CIL feature release of AVE, "
                      "Kinetics-Sounds or VGGSound100 (split files + pretrained features)")
    data.add_argument("--steps", type=int, help="number of equal class steps (default: the benchmark's)")
    data.add_argument("--cache", help="where built-in data and features are cached (default $AVCIL_CACHE or "
                      "~/.cache/avcil)")
    t = parser.add_argument_group("training (defaults: the paper's, or the benchmark's where it sets them)")
    t.add_argument("--epochs", type=int, help="epochs per step (paper: 200)")
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--weight-decay", type=float, default=1e-4)
    t.add_argument("--batch-size", type=int, help="new-class clips per batch (paper: 128)")
    t.add_argument("--exemplar-batch-size", type=int, help="exemplars per batch (paper: 128)")
    t.add_argument("--seed", type=int, default=42)
    t.add_argument("--num-workers", type=int, default=0, help="processes that load features from disk")
    t.add_argument("--device", default="cpu", help="cpu or cuda")
    t.add_argument("--precision", choices=TRAIN_PRECISIONS, default="fp32", help="of the training forward: fp32 (the "
                   "paper's), bf16 autocast, or auto (bf16 where the hardware has it natively)")
    m = parser.add_argument_group("method")
    m.add_argument("--memory-budget", type=int, help="exemplar clips kept in total (AVE 340, K-S 500, VS100 1500)")
    m.add_argument("--memory-precision", choices=list(PRECISIONS), default="fp16")
    m.add_argument("--selection", choices=SELECTIONS, help="exemplar selection (default: the method's)")
    m.add_argument("--instance-weight", type=float, help="λ_I of D-AVSC instance (AVE 0.5, K-S/VS100 0.1)")
    m.add_argument("--class-weight", type=float, default=1.0, help="λ_C of D-AVSC class")
    m.add_argument("--class-normalise", choices=("batch", "positives"), default="batch",
                   help="D-AVSC class: divide by the batch size (public experiments) or the positive count (Eq. 7)")
    m.add_argument("--readout-features", choices=FEATURES, default=ANALYTIC_FEATURES, help="what the analytic "
                   "readout reads: the encoders' pooled features, the head's fused features (the head trained at the "
                   "base step), or both")
    m.add_argument("--expansion", type=int, default=ANALYTIC_EXPANSION, help="width of the analytic readout's random "
                   "ReLU expansion (0: ridge on the features themselves)")
    m.add_argument("--ridge", type=float, default=ANALYTIC_RIDGE, help="the analytic readout's ridge, relative to "
                   "the mean diagonal of its Gram matrix")
    m.add_argument("--analytic-base", choices=("ce", "avcil"), default="ce", help="what trains the head at the base "
                   "step when the analytic readout reads its fused features: CE, or CE + D-AVSC")
    m.add_argument("--fusion-dim", type=int, help="width D of the fused feature (default: the visual width)")
    m.add_argument("--modality", choices=("audio-visual", "audio", "visual"), default="audio-visual")


def method_from_args(args: argparse.Namespace, benchmark: Benchmark, name: str,
                     without: tuple[str, ...] = ()) -> Method:
    return build_method(
        name, instance_weight=_pick(args.instance_weight, benchmark, "instance_weight", 0.5),
        class_weight=args.class_weight, class_normalise=args.class_normalise, selection=args.selection,
        without=without, readout_features=args.readout_features, expansion=args.expansion, ridge=args.ridge,
        analytic_base=args.analytic_base, seed=args.seed, classifier=getattr(args, "classifier", None))


def config_from_args(args: argparse.Namespace, benchmark: Benchmark) -> TrainConfig:
    return TrainConfig(
        epochs=_pick(args.epochs, benchmark, "epochs", 200), lr=args.lr, weight_decay=args.weight_decay,
        batch_size=_pick(args.batch_size, benchmark, "batch_size", 128),
        exemplar_batch_size=_pick(args.exemplar_batch_size, benchmark, "exemplar_batch_size", 128),
        seed=args.seed, num_workers=args.num_workers, device=args.device, precision=args.precision)


def protocol_kwargs(args: argparse.Namespace, benchmark: Benchmark) -> dict:
    return {"memory_budget": _pick(args.memory_budget, benchmark, "memory_budget", 340),
            "fusion_dim": _pick(args.fusion_dim, benchmark, "fusion_dim", None),
            "modality": args.modality, "memory_precision": args.memory_precision}


def _pick(given, benchmark: Benchmark, key: str, fallback):
    return given if given is not None else benchmark.defaults.get(key, fallback)


def ablation(text: str) -> tuple[str, ...]:
    parts = tuple(p for p in text.split(",") if p)
    bad = [p for p in parts if p not in ABLATABLE]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown term(s) {bad}; removable: {', '.join(ABLATABLE)}")
    return parts
