"""Training options shared by `avcil train` and `avcil bench accuracy`. The flags default to None: the command
line passes on only what the user gave, and each setting's default has one source, the object that owns it
(`TrainConfig`, the benchmark's `BenchmarkDefaults`, `run_protocol`, `build_method`)."""

from __future__ import annotations

import argparse
import inspect

from avcil.data.clips import Benchmark
from avcil.model.memory import PRECISIONS, SELECTIONS
from avcil.model.readout import FEATURES
from avcil.train.config import DEFAULT_MEMORY_BUDGET, TrainConfig, given, protocol_settings, train_config
from avcil.train.methods import ABLATABLE, Method, build_method
from avcil.train.precision import PRECISIONS as TRAIN_PRECISIONS

PAPER = TrainConfig()
METHOD_DEFAULTS = {name: p.default for name, p in inspect.signature(build_method).parameters.items()
                   if p.default is not inspect.Parameter.empty}
TRAIN_FLAGS = ("epochs", "lr", "weight_decay", "batch_size", "exemplar_batch_size", "seed", "num_workers", "device",
               "precision")
METHOD_FLAGS = ("instance_weight", "class_weight", "class_normalise", "selection", "readout_features", "expansion",
                "ridge", "analytic_base", "classifier")
PROTOCOL_FLAGS = ("memory_budget", "fusion_dim", "modality", "memory_precision")


def add_training_flags(parser: argparse.ArgumentParser) -> None:
    data = parser.add_argument_group("data")
    data.add_argument("--data", help="synthetic | av-digits | path of a feature store (from `avcil extract`)")
    data.add_argument("--avcil-release", metavar="DIR", help="the public AV-CIL feature release of AVE, "
                      "Kinetics-Sounds or VGGSound100 (split files + pretrained features)")
    data.add_argument("--steps", type=int, help="number of equal class steps (default: the benchmark's)")
    data.add_argument("--cache", help="where built-in data and features are cached (default $AVCIL_CACHE or "
                      "~/.cache/avcil)")
    t = parser.add_argument_group("training (defaults: the benchmark's where it sets them, else the paper's)")
    t.add_argument("--epochs", type=int, help=f"epochs per step (paper: {PAPER.epochs})")
    t.add_argument("--lr", type=float, help=f"(default {PAPER.lr:g})")
    t.add_argument("--weight-decay", type=float, help=f"(default {PAPER.weight_decay:g})")
    t.add_argument("--batch-size", type=int, help=f"new-class clips per batch (paper: {PAPER.batch_size})")
    t.add_argument("--exemplar-batch-size", type=int, help=f"exemplars per batch (paper: {PAPER.exemplar_batch_size})")
    t.add_argument("--seed", type=int, help=f"(default {PAPER.seed})")
    t.add_argument("--num-workers", type=int, help="processes that load features from disk (default "
                   f"{PAPER.num_workers})")
    t.add_argument("--device", help=f"cpu or cuda (default {PAPER.device})")
    t.add_argument("--precision", choices=TRAIN_PRECISIONS, help=f"of the training forward: fp32 (the paper's, the "
                   f"default: {PAPER.precision}), bf16 autocast, or auto (bf16 where the hardware has it natively)")
    m = parser.add_argument_group("method")
    m.add_argument("--memory-budget", type=int, help=f"exemplar clips kept in total (AVE {DEFAULT_MEMORY_BUDGET}, "
                   "K-S 500, VS100 1500)")
    m.add_argument("--memory-precision", choices=list(PRECISIONS), help="of the stored exemplars (default fp16)")
    m.add_argument("--selection", choices=SELECTIONS, help="exemplar selection (default: the method's)")
    m.add_argument("--instance-weight", type=float, help="λ_I of D-AVSC instance (AVE 0.5, K-S/VS100 0.1; default "
                   f"{METHOD_DEFAULTS['instance_weight']})")
    m.add_argument("--class-weight", type=float, help=f"λ_C of D-AVSC class (default {METHOD_DEFAULTS['class_weight']})")
    m.add_argument("--class-normalise", choices=("batch", "positives"),
                   help="D-AVSC class: divide by the batch size (public experiments, the default) or the positive "
                   "count (Eq. 7)")
    m.add_argument("--readout-features", choices=FEATURES, help="what the analytic readout reads: the encoders' "
                   "pooled features, the head's fused features (the head trained at the base step), or both "
                   f"(default {METHOD_DEFAULTS['readout_features']})")
    m.add_argument("--expansion", type=int, help="width of the analytic readout's random ReLU expansion (0: ridge on "
                   f"the features themselves; default {METHOD_DEFAULTS['expansion']})")
    m.add_argument("--ridge", type=float, help="the analytic readout's ridge, relative to the mean diagonal of its "
                   f"Gram matrix (default {METHOD_DEFAULTS['ridge']:g})")
    m.add_argument("--analytic-base", choices=("ce", "avcil"), help="what trains the head at the base step when the "
                   "analytic readout reads its fused features: CE (default), or CE + D-AVSC")
    m.add_argument("--fusion-dim", type=int, help="width D of the fused feature (default: the visual width)")
    m.add_argument("--modality", choices=("audio-visual", "audio", "visual"), help="(default audio-visual)")


def _given(args: argparse.Namespace, names: tuple[str, ...]) -> dict:
    return given({name: getattr(args, name, None) for name in names})


def config_from_args(args: argparse.Namespace, benchmark: Benchmark) -> TrainConfig:
    return train_config(benchmark.defaults, **_given(args, TRAIN_FLAGS))


def method_from_args(args: argparse.Namespace, benchmark: Benchmark, name: str,
                     without: tuple[str, ...] = ()) -> Method:
    chosen = {**given({"instance_weight": benchmark.defaults.instance_weight}), **_given(args, METHOD_FLAGS)}
    return build_method(name, without=without, seed=config_from_args(args, benchmark).seed, **chosen)


def protocol_kwargs(args: argparse.Namespace, benchmark: Benchmark) -> dict:
    return protocol_settings(benchmark.defaults, **_given(args, PROTOCOL_FLAGS))


def ablation(text: str) -> tuple[str, ...]:
    parts = tuple(p for p in text.split(",") if p)
    bad = [p for p in parts if p not in ABLATABLE]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown term(s) {bad}; removable: {', '.join(ABLATABLE)}")
    return parts
