"""`avcil train`: the class-incremental protocol from the command line."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace

from avcil.train.methods import ALIASES, DEFAULT_METHOD, METHODS
from avcil.train.options import ablation, add_training_flags


def _train(args: argparse.Namespace) -> int:
    from avcil.train import distributed
    from avcil.train.config import TrainConfig

    # Under torchrun: DDP over the ranks; else nothing changes.
    group = distributed.start(args.device or TrainConfig().device,
                              rerun="rerun the same command to go on after the last finished step")
    try:
        return _train_in(args, group)
    finally:
        distributed.stop()


def _train_in(args: argparse.Namespace, group) -> int:
    from avcil.train.benchmarks import load_benchmark
    from avcil.train.options import config_from_args, method_from_args, protocol_kwargs
    from avcil.train.protocol import run_protocol
    from avcil.train.run import load_checkpoint, save_checkpoint, write_run

    with group.main_first("prepare the data"):  # a built-in benchmark is built and cached once, by rank 0
        benchmark = load_benchmark(args.data, args.avcil_release, args.steps, args.cache, progress=group.is_main)
    method = method_from_args(args, benchmark, args.method, args.without)
    config = config_from_args(args, benchmark)
    config = replace(config, device=group.device(config.device))
    if group.is_main:
        print(f"{method.name} on {benchmark.name}: {len(benchmark.class_names)} classes in {len(benchmark.steps)} "
              f"steps, {config.epochs} epochs per step" + (f", {group.world} processes" if group.active else ""),
              file=sys.stderr)
    resume = load_checkpoint(args.out)
    # Every rank goes on from the same step, or none starts: RUN must be on a file system all machines share.
    group.agree(None if resume is None else resume["steps_done"], f"the steps done in {args.out}/checkpoint.pt")
    if resume is not None and group.is_main:
        print(f"{args.out}: going on after step {resume['steps_done'] - 1} of {len(benchmark.steps)}", file=sys.stderr)
    outcome = run_protocol(benchmark, method, config, progress=group.is_main, resume=resume,
                           on_step=(lambda state: save_checkpoint(args.out, state)) if group.is_main else None,
                           **protocol_kwargs(args, benchmark))
    if not group.is_main:  # the ranks hold the same head and results; rank 0 writes them
        return 0
    written = write_run(args.out, benchmark, outcome)
    r = outcome.results
    print(f"step accuracy (%): {' '.join(f'{a * 100:.1f}' for a in r['step_accuracy'])}")
    print(f"mean accuracy {_percent(r['mean_accuracy'])} (excl. step 0: {_percent(r['mean_accuracy_excl_step0'])}), "
          f"mean forgetting {_percent(r['mean_forgetting'])}")
    print(f"wrote {written['results']}, {written['plot']}, {written['model']} ({written['version']})")
    return 0


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.2f} %"


def add_parser(subparsers) -> argparse.ArgumentParser:
    train = subparsers.add_parser(
        "train", help="run the class-incremental protocol and write RUN/results.json, accuracy.png, model/",
        description="Train a head step by step over a benchmark's classes "
                    "(docs/method.md#the-protocol-and-its-metrics), test after each step on all classes seen so far, "
                    "and write RUN/results.json, RUN/accuracy.png and the final model dir RUN/model/.")
    add_training_flags(train)
    train.add_argument("--method", default=DEFAULT_METHOD, choices=[*METHODS, *ALIASES], help=f"default "
                       f"{DEFAULT_METHOD}: the best on the accuracy tables (README, 'Which method')")
    train.add_argument("--without", type=ablation, default=(), metavar="TERMS",
                       help="AV-CIL ablation: comma-separated terms to remove (split, kd, instance, class, vad)")
    train.add_argument("--out", required=True, metavar="RUN", help="output folder of this run")
    train.set_defaults(func=_train)
    return train
