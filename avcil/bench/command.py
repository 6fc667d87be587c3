"""`avcil bench KIND`: the benchmarks' command line."""

from __future__ import annotations

import argparse


def _bench(args: argparse.Namespace) -> int:
    return args.bench_func(args)


def add_parser(subparsers) -> argparse.ArgumentParser:
    from avcil.bench import (accuracy, correction, distributed, enrol, gpu, head_speed, latency, live_latency, load,
                             mqtt_outage, probes, readout_width, soak, speed, stream, update)
    from avcil.train.options import add_training_flags

    bench = subparsers.add_parser("bench", help="benchmarks that write JSON, a markdown table and a plot")
    kinds = bench.add_subparsers(dest="kind", metavar="KIND", required=True)
    acc = kinds.add_parser("accuracy", help="every method and the ablations on one benchmark, over seeds")
    add_training_flags(acc)
    accuracy.add_flags(acc)
    acc.set_defaults(func=_bench, bench_func=accuracy.run)
    for name, module, text in (
            ("head", head_speed, "training throughput of the head (default: the paper's dimensions)"),
            ("gpu", gpu, "every CUDA path (encoders per precision, head training, extraction) in one short run "
                         "within a time budget; --dry-run checks it on the CPU"),
            ("latency", latency, "per-stage latency of encoders and head for each backend and profile"),
            ("live-latency", live_latency, "decision latency of the live recognizer (lite) on paced clips, per stage"),
            ("probes", probes, "linear probes of the lite encoder options on AV-Digits: accuracy and ms per frame"),
            ("update", update, "field learning, both methods: time to learn a class, accuracy, decision gaps"),
            ("distributed", distributed, "clips/s of extraction and training with 1 and N processes (torchrun)"),
            ("load", load, "decision latency quiet and beside 1 and 2 CPU-bound competitor processes"),
            ("soak", soak, "live recognition for N minutes with field learning: RSS, fds, latency, gaps"),
            ("mqtt", mqtt_outage, "a Mosquitto broker killed and restarted during avcil run --mqtt: decision "
                                  "lateness and the events a subscriber got"),
            ("stream", stream, "event recall and false accepts per hour of background on AV-Digits streams, "
                               "through the live path (replayed)"),
            ("correction", correction, "what one 'that was not X' (avcil learn --not) costs in event recall and "
                                       "buys in false accepts, on the stream benchmark"),
            ("enrol", enrol, "event recall of a class learnt in the field from 1-40 clips, on the stream "
                             "benchmark; sets the default clip count"),
            ("speed", speed, "extraction and field encoding clips/s, replay speed and decision latency, with the "
                             "encoders in torch and in ONNX Runtime"),
            ("readout", readout_width, "the analytic readout's expansion width and ridge swept on the demo's "
                                       "model: closed-set accuracy, the stream benchmark, what each costs")):
        parser = kinds.add_parser(name, help=text)
        module.add_flags(parser)
        parser.set_defaults(func=_bench, bench_func=module.run)
    return bench
