"""`avcil bench accuracy`: every method and the AV-CIL ablations on one benchmark, side by side."""

from __future__ import annotations

import argparse

from tqdm import tqdm

from avcil.bench.report import DEFAULT_DIR, markdown_table, write_report
from avcil.data.benchmarks import load_benchmark
from avcil.train.methods import METHODS
from avcil.train.options import config_from_args, method_from_args, protocol_kwargs
from avcil.train.plots import plot_step_accuracy
from avcil.train.protocol import run_protocol

ABLATIONS = (("instance",), ("class",), ("vad",))
COLUMNS = [("method", "method"), ("mean_accuracy", "mean acc"), ("mean_accuracy_excl_step0", "mean acc (excl. step 0)"),
           ("final_accuracy", "final acc"), ("mean_forgetting", "mean forgetting"), ("seconds", "seconds")]


def run(args: argparse.Namespace) -> int:
    benchmark = load_benchmark(args.data, args.avcil_release, args.steps, args.cache)
    config = config_from_args(args, benchmark)
    plan = [(name, ()) for name in args.methods] + ([("avcil", w) for w in ABLATIONS] if args.ablations else [])
    rows, runs = [], {}
    for name, without in tqdm(plan, desc="methods", unit="run"):
        method = method_from_args(args, benchmark, name, without)
        result = run_protocol(benchmark, method, config, **protocol_kwargs(args, benchmark), progress=False).results
        runs[method.name] = result
        rows.append({"method": method.name, "final_accuracy": result["step_accuracy"][-1],
                     **{k: result[k] for k in ("mean_accuracy", "mean_accuracy_excl_step0", "mean_forgetting",
                                               "seconds")}})
        tqdm.write(f"{method.name:32s} mean acc {result['mean_accuracy']:.3f}  "
                   f"forgetting {result['mean_forgetting'] or 0:.3f}  ({result['seconds']:.0f} s)")
    table = markdown_table(rows, COLUMNS)
    name = f"accuracy-{benchmark.name}"
    paths = write_report(
        args.out_dir, name, {"benchmark": benchmark.name, "rows": rows, "runs": runs}, table,
        f"Accuracy on {benchmark.name} ({len(benchmark.steps)} steps; mean accuracy includes step 0)",
        lambda p: plot_step_accuracy({k: v["step_accuracy"] for k, v in runs.items()}, p,
                                     f"{benchmark.name}: accuracy after each step"))
    print(table)
    print("wrote", ", ".join(str(p) for p in paths.values()))
    return 0


def add_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--no-ablations", dest="ablations", action="store_false",
                        help="skip AV-CIL without instance / class / VAD")
    parser.add_argument("--out-dir", default=DEFAULT_DIR, help="where the JSON, table and plot go")
