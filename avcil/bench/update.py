"""`avcil bench update`: field learning on the device, measured while live recognition runs, for both field
methods side by side.

Setting (lite profile, AV-Digits, this CPU): per field method, a model dir with digits 0-8 trained by the matching
base method (`analytic`: the default method; `avcil`: the gradient method, `--base-epochs` epochs) and an exemplar
memory under the AVE budget of 340 clips (37 per class); live recognition of paced AV-Digits test clips at the lite
window (3 s) and hop (1 s); after a quiet period, digit 9 is learnt from its 40 training clips in a separate Python
process that calls `learn_class` (LEARN_SCRIPT), not the `avcil learn` command: it takes `avcil learn`'s field
settings and priority drop (`--nice`, default 10), but runs torch with its default threads (all cores) unless
`--learn-threads` is given, where `avcil learn` caps torch and BLAS at 1 thread (`--threads`). Reported per method:
- decision latency (from a window's end to its decision) p50/p95, before and during the update;
- the time to learn the class (`learn_seconds`: load, update, memory update, up to but not including the commit), and
  the whole update process's wall time (`update_seconds`, commit and interpreter start included); and, beside it, the
  time to encode the class's clip files, which `avcil learn --files` spends first;
- accuracy on every test clip (from the features): the old digits before and after, the new digit after, and the
  share of old digits' clips the new class takes;
- the largest gap between two decisions while the update runs, in hops (a recognizer that never pauses keeps it
  at 1; a dropped window makes it 2).
Targets (issues 5 and 9): p95 <= 150 ms, `learn_seconds` <= 1 s once its clips are encoded (analytic; 60 s for
the gradient update), old digits down <= 2 points, largest gap <= 2 hops.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from avcil.bench.report import DEFAULT_DIR, markdown_table, percentiles, write_report
from avcil.runtime.field_settings import FIELD_METHODS
from avcil.train.config import DEFAULT_MEMORY_BUDGET
from avcil.train.plots import plt

TARGETS = {"latency_p95_ms": 150.0, "learn_seconds": {"analytic": 1.0, "avcil": 60.0}, "largest_gap_hops": 2.0,
           "old_accuracy_drop": 0.02}
OLD_DIGITS = 9

# The update as `learn_class` runs it, on features encoded beforehand, at `avcil learn`'s priority drop; torch's threads
# are capped only when --learn-threads is given (`avcil learn` caps torch and BLAS at 1 by default).
LEARN_SCRIPT = """
import json, os, numpy as np, torch
from avcil.runtime.field import FieldSettings, learn_class
os.nice({nice})
if {threads}:
    torch.set_num_threads({threads})
with np.load({features!r}) as f:
    audio, visual = f["audio"], f["visual"]
summary = learn_class({model!r}, "9", audio, visual, FieldSettings(**{settings!r}), progress=False,
                      method={method!r})
print(json.dumps(summary))
"""


def build_model(model_dir: Path, benchmark, method: str, epochs: int, digits: int = OLD_DIGITS) -> None:
    """A model dir with the first `digits` digits of AV-Digits (lite features; default 0-8), trained by `method`
    in one step, and a 340-clip-budget memory."""
    from avcil.data.clips import first_classes
    from avcil.train.learner import TrainConfig
    from avcil.train.methods import build_method
    from avcil.train.protocol import run_protocol
    from avcil.train.run import write_run

    old = first_classes(benchmark, digits, train_clips=40)
    config = TrainConfig(epochs=epochs, batch_size=64, exemplar_batch_size=64, precision="auto")
    outcome = run_protocol(old, build_method(method), config, DEFAULT_MEMORY_BUDGET, fusion_dim=256, progress=False)
    write_run(model_dir.parent, old, outcome)


def measure(args: argparse.Namespace) -> list[dict]:
    from avcil.data.avdigits import build_av_digits, clip_files
    from avcil.fileio import default_cache
    from avcil.train.benchmarks import av_digits_benchmark

    cache = Path(args.cache) if args.cache else default_cache()
    benchmark = av_digits_benchmark(cache)
    files = clip_files(build_av_digits(cache / "av-digits"))
    # The model dirs and features (hundreds of MB) live in a temporary folder, removed afterwards.
    with tempfile.TemporaryDirectory(prefix="avcil-bench-update-") as work:
        return [measure_method(args, Path(work) / method, benchmark, files, method) for method in args.methods]


def measure_method(args: argparse.Namespace, work: Path, benchmark, files: dict, method: str) -> dict:
    from avcil.model.encoders import profile_from_record
    from avcil.runtime.recognizer import Recognizer, run_live
    from avcil.train.version_accuracy import accuracy_on_test_split, old_clips_taken

    model_dir = work / "model"
    build_model(model_dir, benchmark, method, args.base_epochs)
    profile = profile_from_record(benchmark.profile)
    features = work / "digit9.npz"
    encode_start = time.perf_counter()
    audio, visual = profile.encode_files(files[("train", "9")])
    encode_seconds = time.perf_counter() - encode_start
    np.savez(features, audio=audio, visual=visual)

    if args.backend == "onnxruntime":
        from avcil.export.cached import export_once

        export_once(model_dir, profile, cache)
    recognizer = Recognizer(model_dir, args.backend, profile=profile, score="softmax", threshold=0.0, smoothing=1)  # the raw argmax
    decisions: list[dict] = []
    stop = threading.Event()
    playlist = ",".join(str(p) for d in range(OLD_DIGITS) for p in files[("test", str(d))][:1])
    worker = threading.Thread(target=run_live, args=(recognizer, playlist, playlist,
                                                     lambda d, w: decisions.append(d)),
                              kwargs={"hop": args.hop, "loop": True, "slot_s": 3.0, "stop": stop})
    worker.start()
    try:
        time.sleep(args.quiet_seconds)
        script = LEARN_SCRIPT.format(nice=args.nice, threads=args.learn_threads or 0, features=str(features),
                                     model=str(model_dir), settings=field_settings(args), method=method)
        update_start = time.time()
        learnt = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
        update_end = time.time()
        time.sleep(2 * args.hop)
    finally:
        stop.set()
        worker.join()
        recognizer.close()
    summary = json.loads(learnt.stdout.strip().splitlines()[-1])
    row = analyse(decisions, update_start, update_end, args.hop, summary, recognizer.reloads)
    old_digits, new_digit = [str(d) for d in range(OLD_DIGITS)], str(OLD_DIGITS)
    old_accuracy = accuracy_on_test_split(model_dir, benchmark, old_digits)
    row.update(method=method, encode_seconds=encode_seconds, encoded_clips=len(audio),
               old_accuracy_before=old_accuracy[summary["parent"]], old_accuracy_after=old_accuracy[summary["version"]],
               new_accuracy_after=accuracy_on_test_split(model_dir, benchmark, [new_digit])[summary["version"]],
               old_clips_taken_by_new=old_clips_taken(model_dir, benchmark, old_digits, new_digit))
    return row


def field_settings(args: argparse.Namespace) -> dict:
    """The update's settings: `avcil learn`'s defaults, with the flags given here."""
    given = {"epochs": args.epochs, "batch_size": args.batch_size, "exemplar_batch_size": args.exemplar_batch_size,
             "precision": args.precision}
    return {k: v for k, v in given.items() if v is not None}


def analyse(decisions: list[dict], update_start: float, update_end: float, hop: float, learnt: dict,
            reloads: list[dict]) -> dict:
    times = np.array([d["time"] for d in decisions])
    latency = np.array([d["latency_ms"]["total"] for d in decisions])
    quiet = times < update_start
    during = (times >= update_start) & (times <= update_end + hop)
    gaps = np.diff(times[(times >= update_start - hop) & (times <= update_end + hop)])

    row = {
        "latency_quiet_ms": {**percentiles(latency[quiet], (50, 95), suffix=""), "n": int(quiet.sum())},
        "latency_during_update_ms": {**percentiles(latency[during], (50, 95), suffix=""),
                                     "n": int(during.sum())},
        "stage_p95_ms": {k: percentiles([d["latency_ms"][k] for d in decisions], (95,), suffix="")["p95"]
                         for k in decisions[0]["latency_ms"]},
        "learn_seconds": learnt["seconds"],
        "memory_clips_after": learnt["memory_clips"],
        "largest_gap_hops": float(gaps.max() / hop) if gaps.size else None,
        "dropped_windows": decisions[-1]["dropped_windows"],
        "reloaded_to": reloads[0]["to"] if reloads else None,
        "hop_s": hop,
    }
    row["targets"] = {
        "latency_p95_ms": {"target": TARGETS["latency_p95_ms"], "quiet": row["latency_quiet_ms"]["p95"],
                           "during_update": row["latency_during_update_ms"]["p95"]},
        "learn_seconds": {"target": TARGETS["learn_seconds"][learnt["method"]], "measured": row["learn_seconds"]},
        "largest_gap_hops": {"target": TARGETS["largest_gap_hops"], "measured": row["largest_gap_hops"]},
    }
    row["timeline"] = [{"time": float(t - update_start), "latency_ms": float(v)} for t, v in zip(times, latency)]
    row["update_seconds"] = update_end - update_start
    return row


def run(args: argparse.Namespace) -> int:
    rows = measure(args)
    measures = [
        ("decision latency p95, quiet (ms)", lambda r: r["latency_quiet_ms"]["p95"], TARGETS["latency_p95_ms"]),
        ("decision latency p95, during the update (ms)", lambda r: r["latency_during_update_ms"]["p95"],
         TARGETS["latency_p95_ms"]),
        (f"time to learn one class from its encoded clips, memory {DEFAULT_MEMORY_BUDGET} (s)",
         lambda r: r["learn_seconds"], " / ".join(f"{m} {t:g}" for m, t in TARGETS["learn_seconds"].items())),
        ("old digits, test clips, before", lambda r: r["old_accuracy_before"], None),
        ("old digits, test clips, after", lambda r: r["old_accuracy_after"],
         f"drop <= {TARGETS['old_accuracy_drop']:g}"),
        ("new digit, test clips, after", lambda r: r["new_accuracy_after"], None),
        ("old digits' test clips taken by the new class", lambda r: r["old_clips_taken_by_new"], None),
        ("largest gap between decisions during the update (hops)", lambda r: r["largest_gap_hops"],
         TARGETS["largest_gap_hops"]),
        ("before it: encoding the class's 40 clip files (s)", lambda r: r["encode_seconds"], None),
    ]
    table_rows = [{"what": what, **{r["method"]: value(r) for r in rows}, "target": target}
                  for what, value, target in measures]
    columns = [("what", "measure"), *[(r["method"], r["method"]) for r in rows], ("target", "target")]
    table = markdown_table(table_rows, columns)

    def plot(path: Path) -> None:
        fig, axes = plt.subplots(1, len(rows), figsize=(6 * len(rows), 3.5), squeeze=False)
        for ax, row in zip(axes[0], rows):
            ax.plot([p["time"] for p in row["timeline"]], [p["latency_ms"] for p in row["timeline"]], ".-")
            ax.axvspan(0, max(row["update_seconds"], 0.2), alpha=0.2, label="field update running")
            ax.axhline(TARGETS["latency_p95_ms"], linestyle="--", color="grey", label="p95 target")
            ax.set(xlabel="seconds from the start of the update", ylabel="decision latency (ms)",
                   title=f"{row['method']}: live recognition while a class is learnt")
            ax.legend()
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)

    from dataclasses import asdict

    from avcil.runtime.field import FieldSettings

    settings = {"backend": args.backend, "field_settings": asdict(FieldSettings(**field_settings(args))),
                "learn_threads": args.learn_threads, "nice": args.nice, "hop_s": args.hop,
                "base_epochs": args.base_epochs, "methods": args.methods}
    write_report(args.out_dir, f"update-lite-cpu-{args.backend}", {"settings": settings, "rows": rows}, table,
                 "Field learning while recognising (lite, CPU): both field methods", plot)
    print(table)
    return 0


def add_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cache", help="AV-Digits and features cache (default $AVCIL_CACHE or ~/.cache/avcil)")
    parser.add_argument("--backend", choices=("torch", "onnxruntime"), default="torch",
                        help="runtime of the encoders (onnxruntime: exported first)")
    parser.add_argument("--hop", type=float, default=1.0, help="seconds between decisions (lite: a third of 3 s)")
    parser.add_argument("--quiet-seconds", type=float, default=15.0, help="recognition before the update starts")
    parser.add_argument("--methods", nargs="+", choices=FIELD_METHODS, default=list(FIELD_METHODS),
                        help="field methods to measure, each on a base model trained by the same method")
    parser.add_argument("--base-epochs", type=int, default=12, help="epochs of the gradient base model (the demo's)")
    parser.add_argument("--epochs", type=int, help="epochs of the gradient field update (default: avcil learn's)")
    parser.add_argument("--batch-size", type=int, help="new clips per batch (default: avcil learn's)")
    parser.add_argument("--exemplar-batch-size", type=int, help="exemplars per batch (default: avcil learn's)")
    parser.add_argument("--precision", choices=("fp32", "bf16", "auto"), help="of the update (default: avcil "
                        "learn's, auto)")
    parser.add_argument("--learn-threads", type=int, help="torch threads of the update (default: torch's own, all "
                        "cores; avcil learn uses 1)")
    parser.add_argument("--nice", type=int, default=10, help="CPU priority drop of the update (avcil learn's "
                        "default)")
    parser.add_argument("--out-dir", default=DEFAULT_DIR)
