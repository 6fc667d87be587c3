"""`avcil bench accuracy`: every method, the AV-CIL ablations and the analytic variants on one benchmark, side by
side, over several seeds (mean ± std)."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
from tqdm import tqdm

from avcil.bench.report import DEFAULT_DIR, markdown_table, write_report
from avcil.train.benchmarks import load_benchmark
from avcil.train.methods import METHODS
from avcil.train.options import config_from_args, method_from_args, protocol_kwargs
from avcil.train.plots import plot_step_accuracy
from avcil.train.protocol import run_protocol

ABLATIONS = (("split",), ("instance",), ("class",), ("vad",))
# AV-CIL's training judged by iCaRL's classifier (nearest mean of exemplars): separates what the loss terms learn
# from the bias of a linear classifier trained on few exemplars.
CLASSIFIER_VARIANTS = ({"classifier": "nme"},)
# Which features the analytic readout should read, and what should train the head under them (issue 9).
ANALYTIC_VARIANTS = ({"readout_features": "fused"}, {"readout_features": "both"},
                     {"readout_features": "both", "analytic_base": "avcil"})
MEASURES = ("mean_accuracy", "mean_accuracy_excl_step0", "final_accuracy", "mean_forgetting", "seconds_per_step")
COLUMNS = [("method", "method"), ("mean_accuracy", "mean acc"), ("mean_accuracy_excl_step0", "mean acc (excl. step 0)"),
           ("final_accuracy", "final acc"), ("mean_forgetting", "mean forgetting"),
           ("seconds_per_step", "seconds / step")]


def plan(args: argparse.Namespace) -> list[tuple[str, tuple, dict]]:
    """(method, removed terms, readout options) of every run, one per row of the table."""
    runs = [(name, (), {}) for name in args.methods]
    if args.ablations:
        runs += [("avcil", without, {}) for without in ABLATIONS]
        runs += [("avcil", (), variant) for variant in CLASSIFIER_VARIANTS]
        runs += [("analytic", (), variant) for variant in ANALYTIC_VARIANTS]
    return runs


def row_name(entry: tuple) -> str:
    """A plan entry's row in the table: the method as build_method names it, plus the readout options."""
    name, without, variant = entry
    name = f"{name}-without-{'-'.join(without)}" if without else name
    name = f"{name}-{variant['classifier']}" if "classifier" in variant else name
    shown = {k: v for k, v in variant.items() if k != "classifier"}
    return name + "".join(f"-{v}" + ("-base" if k == "analytic_base" else "") for k, v in shown.items())


def run(args: argparse.Namespace) -> int:
    benchmark = load_benchmark(args.data, args.avcil_release, args.steps, args.cache)
    rows, runs = [], {}
    first = config_from_args(args, benchmark).seed
    seeds = list(range(first, first + args.seeds))
    if args.append:
        rows, runs = _earlier(args, benchmark.name)
    chosen = plan(args)
    if args.only:
        chosen = [entry for entry in chosen if row_name(entry) in args.only]
    for name, without, variant in tqdm(chosen, desc="methods", unit="method"):
        per_seed = []
        for seed in seeds:
            seeded = argparse.Namespace(**{**vars(args), **variant, "seed": seed})
            method = method_from_args(seeded, benchmark, name, without)
            config = config_from_args(seeded, benchmark)
            result = run_protocol(benchmark, method, config, **protocol_kwargs(seeded, benchmark),
                                  progress=False).results
            result["final_accuracy"] = result["step_accuracy"][-1]
            result["seconds_per_step"] = result["seconds"] / len(result["step_accuracy"])
            per_seed.append(result)
        label = row_name((name, without, variant))
        runs[label] = {"seeds": seeds, "results": per_seed}
        rows = [r for r in rows if r["method"] != label]
        rows.append({"method": label, **{k: _mean_std([r[k] for r in per_seed]) for k in MEASURES}})
        tqdm.write(f"{label:36s} mean acc {_fmt(rows[-1]['mean_accuracy'])}  forgetting "
                   f"{_fmt(rows[-1]['mean_forgetting'])}  ({sum(r['seconds'] for r in per_seed):.0f} s)")
        # Written after every method, so that a long run interrupted keeps the rows it finished.
        table, paths = _write(args, benchmark, seeds, rows, runs)
    print(table)
    print("wrote", ", ".join(str(p) for p in paths.values()))
    return 0


def _earlier(args: argparse.Namespace, benchmark: str) -> tuple[list[dict], dict]:
    """The rows of an earlier report of this benchmark (for --append), to which this run adds or replaces rows."""
    path = Path(args.out_dir) / f"accuracy-{benchmark}{args.suffix}.json"
    if not path.is_file():
        return [], {}
    earlier = json.loads(path.read_text())
    return earlier["rows"], earlier["runs"]


def _write(args: argparse.Namespace, benchmark, seeds: list[int], rows: list[dict], runs: dict):
    table = markdown_table([{k: _fmt(v) if isinstance(v, dict) else v for k, v in row.items()} for row in rows],
                           COLUMNS)
    config = config_from_args(args, benchmark)
    settings = {"benchmark": benchmark.name, "steps": len(benchmark.steps), "seeds": seeds,
                "train": dataclasses.asdict(config), **protocol_kwargs(args, benchmark)}
    paths = write_report(
        args.out_dir, f"accuracy-{benchmark.name}{args.suffix}", {**settings, "rows": rows, "runs": runs}, table,
        f"Accuracy on {benchmark.name} ({len(benchmark.steps)} steps, {config.epochs} epochs per step, seeds "
        f"{seeds[0]}-{seeds[-1]}: mean ± std; mean accuracy includes step 0)",
        lambda p: plot_step_accuracy({k: np.mean([r["step_accuracy"] for r in v["results"]], axis=0).tolist()
                                      for k, v in runs.items()}, p, f"{benchmark.name}: accuracy after each step"))
    return table, paths


def _mean_std(values: list) -> dict | None:
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"mean": float(np.mean(values)), "std": float(np.std(values)), "n": len(values)}


def _fmt(value: dict | None) -> str:
    if value is None:
        return "-"
    return f"{value['mean']:.3f}" if value["n"] == 1 else f"{value['mean']:.3f} ± {value['std']:.3f}"


def add_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--seeds", type=int, default=3, help="runs per method, seeds --seed, --seed + 1, ...")
    parser.add_argument("--no-ablations", dest="ablations", action="store_false",
                        help="skip AV-CIL without instance / class / VAD and the analytic readout variants")
    parser.add_argument("--only", nargs="+", metavar="ROW", help="run only these rows of the plan (by their names in "
                        "the table, e.g. avcil-nme analytic-both)")
    parser.add_argument("--append", action="store_true", help="add these rows to the existing report (replacing rows "
                        "of the same name) instead of starting a new one")
    parser.add_argument("--suffix", default="", help="added to the report's name (accuracy-BENCHMARK-SUFFIX...)")
    parser.add_argument("--out-dir", default=DEFAULT_DIR, help="where the JSON, table and plot go")
