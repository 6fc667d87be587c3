"""The `avcil` command line. Each command's work lives in its stage's package; this file only wires flags."""

from __future__ import annotations

import argparse
import sys

from avcil import __version__
from avcil.train.methods import METHODS
from avcil.train.options import ablation, add_training_flags


def _train(args: argparse.Namespace) -> int:
    from avcil.data.benchmarks import load_benchmark
    from avcil.train.options import config_from_args, method_from_args, protocol_kwargs
    from avcil.train.protocol import run_protocol
    from avcil.train.run import write_run

    benchmark = load_benchmark(args.data, args.avcil_release, args.steps, args.cache)
    method = method_from_args(args, benchmark, args.method, args.without)
    config = config_from_args(args, benchmark)
    print(f"{method.name} on {benchmark.name}: {len(benchmark.class_names)} classes in {len(benchmark.steps)} steps, "
          f"{config.epochs} epochs per step", file=sys.stderr)
    outcome = run_protocol(benchmark, method, config, **protocol_kwargs(args, benchmark))
    written = write_run(args.out, benchmark, outcome)
    r = outcome.results
    print(f"step accuracy (%): {' '.join(f'{a * 100:.1f}' for a in r['step_accuracy'])}")
    print(f"mean accuracy {_percent(r['mean_accuracy'])} (excl. step 0: {_percent(r['mean_accuracy_excl_step0'])}), "
          f"mean forgetting {_percent(r['mean_forgetting'])}")
    print(f"wrote {written['results']}, {written['plot']}, {written['model']} ({written['version']})")
    return 0


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.2f} %"


def _bench(args: argparse.Namespace) -> int:
    return args.bench_func(args)


def build_parser() -> argparse.ArgumentParser:
    from avcil.bench import accuracy, head_speed, latency, update
    from avcil.data import avdigits, extract
    from avcil.export import command as export_command
    from avcil.runtime import commands as runtime_commands

    parser = argparse.ArgumentParser(
        prog="avcil", description="Audio-visual class-incremental recognition: train, extract, export, run live, learn "
                    "new classes in the field, benchmark.")
    parser.add_argument("--version", action="version", version=f"avcil {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    train = commands.add_parser(
        "train", help="run the class-incremental protocol and write RUN/results.json, accuracy.png, model/",
        description="Train a head step by step over a benchmark's classes (REFERENCE.md §6), test after each "
                    "step on all classes seen so far, and write RUN/results.json, RUN/accuracy.png and the final "
                    "model dir RUN/model/.")
    add_training_flags(train)
    train.add_argument("--method", default="avcil", choices=METHODS)
    train.add_argument("--without", type=ablation, default=(), metavar="TERMS",
                       help="AV-CIL ablation: comma-separated terms to remove (split, kd, instance, class, vad)")
    train.add_argument("--out", required=True, metavar="RUN", help="output folder of this run")
    train.set_defaults(func=_train)

    bench = commands.add_parser("bench", help="benchmarks that write JSON, a markdown table and a plot")
    kinds = bench.add_subparsers(dest="kind", metavar="KIND", required=True)
    acc = kinds.add_parser("accuracy", help="every method and the AV-CIL ablations on one benchmark")
    add_training_flags(acc)
    accuracy.add_flags(acc)
    acc.set_defaults(func=_bench, bench_func=accuracy.run)
    head = kinds.add_parser("head", help="training throughput of the head (default: the paper's dimensions)")
    head_speed.add_flags(head)
    head.set_defaults(func=_bench, bench_func=head_speed.run)
    lat = kinds.add_parser("latency", help="per-stage latency of encoders and head for each backend and profile")
    latency.add_flags(lat)
    lat.set_defaults(func=_bench, bench_func=latency.run)
    upd = kinds.add_parser("update", help="field learning: time to learn a class, decision gaps during an update")
    update.add_flags(upd)
    upd.set_defaults(func=_bench, bench_func=update.run)

    extract.add_parser(commands)
    avdigits.add_parser(commands)
    export_command.add_parser(commands)
    runtime_commands.add_parsers(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        # Bad input is reported as one clear line; a traceback is for bugs.
        print(f"avcil {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
