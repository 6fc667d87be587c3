"""What every benchmark shares: one percentile helper, and one command (`avcil bench KIND`) for each benchmark."""

from __future__ import annotations

import argparse

import pytest

from avcil.bench.report import percentiles


def test_percentiles_name_round_and_leave_empty_values_out():
    assert percentiles([1.0, 2.0, 3.0, 4.0]) == pytest.approx({"p50_ms": 2.5, "p95_ms": 3.85, "p99_ms": 3.97})
    assert percentiles([1.234, 2.0], (50,), digits=2) == {"p50_ms": 1.62}
    assert percentiles([], (50, 95), suffix="") == {"p50": None, "p95": None}
    assert percentiles([0.5, 1.5], (90,), suffix="_s") == {"p90_s": pytest.approx(1.4)}


def test_every_benchmark_is_a_kind_of_avcil_bench():
    from avcil.bench import command

    parser = argparse.ArgumentParser()
    bench = command.add_parser(parser.add_subparsers())
    kinds = next(a for a in bench._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert {"live-latency", "probes", "mqtt", "latency", "stream", "soak"} <= set(kinds)
    for name, kind in kinds.items():
        defaults = kind.parse_known_args(["--model", "m", "--clips", "c"] if name == "mqtt" else [])[0]
        assert callable(defaults.bench_func), name
